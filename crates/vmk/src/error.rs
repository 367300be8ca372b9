//! The error type of every subcommand.

/// The error type of every subcommand: printed as `vmk: error: ...`, exit status 1.
pub type CmdError = Box<dyn std::error::Error>;
