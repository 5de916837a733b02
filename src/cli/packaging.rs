//! `walbox completions SHELL` and `walbox man`: shell completion scripts and man pages,
//! generated from the same clap command as `--help`, so they list exactly the flags walbox
//! takes (hidden subcommands stay hidden).

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::config::Cli;

/// Print the completion script for `shell` on stdout.
pub(super) fn completions(shell: Shell) -> std::io::Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "walbox", &mut out);
    out.flush()
}

/// Print walbox.1 on stdout, or with `out` write it and one page per subcommand there.
pub(super) fn man(out: Option<&Path>) -> std::io::Result<()> {
    let command = Cli::command();
    let Some(dir) = out else {
        let mut stdout = std::io::stdout().lock();
        clap_mangen::Man::new(command).render(&mut stdout)?;
        return stdout.flush();
    };
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)
}
