//! One module per subcommand; each exposes an async `run`.
pub mod admin;
pub mod collector;
pub mod consume;
pub mod kafka;
pub mod produce;
