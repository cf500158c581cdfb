pub mod config;
pub mod filter;
pub mod parse;
pub mod time;
