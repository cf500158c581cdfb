pub mod config;
pub mod filter;
pub mod time;
