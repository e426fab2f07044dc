//! Subcommands other than `run`, one file each (`top`, a file and a folder). Each returns an
//! [`ExitCode`]-like status and prints for an operator; `main.rs` only parses arguments and
//! dispatches.

pub mod check_config;
pub mod demo;
pub mod dlq;
pub mod queue;
pub mod simulate;
pub mod tail;
pub mod top;
pub mod validate;

/// Process exit statuses of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0: all good.
    Ok = 0,
    /// 1: a check failed.
    CheckFailed = 1,
    /// 2: usage or configuration error.
    Usage = 2,
}
