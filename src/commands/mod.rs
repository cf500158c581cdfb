//! One module per subcommand; each exposes an async `run`.
pub mod admin;
pub mod agent;
pub mod collector;
pub mod consume;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod produce;
