//! What a release ships besides the binary's behaviour: `walbox --version` names the version
//! and the commit, shell completions and man pages come from the same command line as
//! `--help`, and the version, CHANGELOG.md and LICENSE agree with Cargo.toml.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn walbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walbox"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run walbox")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The subcommands a user sees.
const SUBCOMMANDS: [&str; 8] = [
    "setup",
    "run",
    "replay",
    "status",
    "teardown",
    "config",
    "completions",
    "man",
];

#[test]
fn version_names_the_release_and_the_commit() {
    let text = stdout(&walbox(&["--version"]));
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.starts_with(&format!("walbox {version} (commit ")),
        "{text}"
    );
    // In a git checkout the commit is HEAD's, abbreviated; without .git (a source tarball, the
    // container build) it says so instead of failing the build.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    match (head, std::env::var("WALBOX_BUILD_COMMIT")) {
        (_, Ok(commit)) if !commit.is_empty() => assert!(text.contains(&commit), "{text}"),
        // The binary may be a commit behind when the test runs right after a commit without a
        // rebuild in between; a hash is there either way.
        (Some(_), _) => {
            let commit = text
                .split("(commit ")
                .nth(1)
                .unwrap()
                .trim_end_matches([')', '\n']);
            assert!(
                commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                "{text}"
            );
        }
        (None, _) => assert!(text.contains("(commit unknown)"), "{text}"),
    }
}

#[test]
fn completions_cover_every_subcommand_and_parse() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&walbox(&["completions", shell]));
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
        assert!(script.contains("postgres-url"), "{shell}");
    }
    // bash itself reads the bash script without a syntax error.
    let script = stdout(&walbox(&["completions", "bash"]));
    let checked = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .expect("bash");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(walbox(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_pages_cover_every_subcommand_and_option() {
    let page = stdout(&walbox(&["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH walbox 1"),
        "{page}"
    );
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "walbox.1 lacks {sub}");
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("man1");
    let _ = std::fs::remove_dir_all(&dir);
    stdout(&walbox(&["man", "--out", dir.to_str().unwrap()]));
    let run = std::fs::read_to_string(dir.join("walbox-run.1")).expect("walbox-run.1");
    // Every flag of `walbox run --help` is in its page (roff escapes '-' as '\-').
    let help = stdout(&walbox(&["run", "--help"]));
    for flag in help
        .split_whitespace()
        .filter(|word| word.starts_with("--") && word.len() > 2)
    {
        let flag = flag.trim_end_matches([',', '.', ';', ')', ':']);
        let flag = flag.split(['=', '<']).next().unwrap();
        assert!(
            run.contains(&flag.replace('-', "\\-")),
            "walbox-run.1 lacks {flag}"
        );
    }
}

#[test]
fn changelog_and_licence_agree_with_cargo_toml() {
    let version = env!("CARGO_PKG_VERSION");
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains(&format!("## [{version}]")),
        "CHANGELOG.md has no section for the version in Cargo.toml ({version}); a release \
         moves the Unreleased entries under it"
    );
    assert!(changelog.contains("## [Unreleased]"));
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""));
    assert!(read("LICENSE").contains("Apache License\n                           Version 2.0"));
}
