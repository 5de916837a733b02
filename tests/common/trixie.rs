//! The private PostgreSQL 17 and RabbitMQ 4.0 servers of scripts/trixie-servers.sh, as
//! tests/ha.rs and tests/stream.rs find and drive them: ports from `WALBOX_HA_PORT_BASE`
//! (default 46000, the script's own default), the script's subcommands, counts from the
//! environment.

use std::process::{Command, Stdio};

/// The servers' port base: `WALBOX_HA_PORT_BASE`, as the script reads it.
pub fn base() -> u16 {
    std::env::var("WALBOX_HA_PORT_BASE")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(46000)
}

pub fn primary_port() -> u16 {
    base() + 432
}

pub fn standby_port() -> u16 {
    base() + 433
}

/// Both PostgreSQL servers, primary first: libpq's multi-host form.
pub fn multi_host_url(database: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        primary_port(),
        standby_port()
    )
}

/// A count from the environment variable `var`, `default` when it is unset or not a number.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// Run a subcommand of scripts/trixie-servers.sh; it must succeed.
pub fn servers(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/trixie-servers.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run trixie-servers.sh");
    assert!(
        output.status.success(),
        "trixie-servers.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
