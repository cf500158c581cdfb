//! `ferry up`: the whole pipeline in one process on a local sample.
//!
//! - [`generator`]: writes realistic, rotating sample logs for the agent to tail.
pub mod generator;
