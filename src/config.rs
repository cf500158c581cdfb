//! The schema of a ferry config file.
//!
//! One file may configure any subset of the components: `ferry collector` reads `collector:`,
//! `ferry agent` reads `agent:`, `ferry processor` reads `processor:`, and `ferry up` reads all
//! of them. Each section's type lives in its component's crate, so `ferry check` validates a
//! file with the very types that run it. Unknown keys are errors everywhere.

use ferry_agent::AgentConfig;
use ferry_collector::CollectorConfig;
use ferry_core::config::ConfigError;
use ferry_core::telemetry::TelemetryConfig;
use ferry_processor::config::ProcessorConfig;
use serde::Deserialize;
use std::path::Path;

/// A whole ferry config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryConfig {
    /// Logging for whichever component runs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The central service.
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
    /// The file tailer and shipper.
    #[serde(default)]
    pub agent: Option<AgentConfig>,
    /// Windowed aggregation pipelines.
    #[serde(default)]
    pub processor: Option<ProcessorConfig>,
    /// `ferry up`'s sample-log generator.
    #[serde(default)]
    pub up: Option<crate::up::UpConfig>,
}

impl FerryConfig {
    /// Loads and validates a file: syntax and types (with file:line:col), then each section's
    /// own rules (named by section).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: FerryConfig = ferry_core::config::load_file(path)?;
        if let Some(c) = &config.collector {
            c.validate()
                .map_err(|message| section_error(path, "collector", message))?;
        }
        Ok(config)
    }

    /// The sections present in the file, for `ferry check`'s summary.
    pub fn sections(&self) -> Vec<&'static str> {
        let mut s = vec!["telemetry"];
        if self.collector.is_some() {
            s.push("collector");
        }
        if self.agent.is_some() {
            s.push("agent");
        }
        if self.processor.is_some() {
            s.push("processor");
        }
        if self.up.is_some() {
            s.push("up");
        }
        s
    }
}

/// A semantic error in a section: points at the section's line in the file.
fn section_error(path: &Path, section: &str, message: String) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .position(|l| l.starts_with(&format!("{section}:")))
        .map(|i| i as u64 + 1)
        .unwrap_or(1);
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column: 1,
        message: format!("{section}: {message}"),
    }
}
