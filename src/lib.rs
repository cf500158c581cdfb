//! The `ferry` command: one binary for every component.
//!
//! - [`cli`]: the command line (clap) and the mapping of errors to exit codes, in one place.
//! - [`config`]: the schema of a ferry config file; each component's section is its own crate's
//!   config type, so `ferry check` validates every component with the same code that runs it.
//! - [`check`]: `ferry check FILE`.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod up;
