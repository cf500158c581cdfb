//! `ferry up`: the whole pipeline in one process on a local sample.
//!
//! - [`generator`]: writes realistic, rotating sample logs for the agent to tail.
pub mod generator;

/// The `up:` section of `ferry up`'s config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpConfig {
    /// The sample-log generator the agent tails.
    #[serde(default)]
    pub generator: generator::GeneratorConfig,
    /// How often the live table is redrawn.
    #[serde(default)]
    pub refresh: Option<ferry_core::config::Duration>,
}
