//! The subcommands, one file each. Each takes validated configuration and returns a result
//! the entry point turns into an exit code.

pub mod config_check;
mod failover;
pub mod replay;
pub mod run;
pub mod setup;
pub mod status;
pub mod teardown;
