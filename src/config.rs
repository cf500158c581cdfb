//! The schema of a ferry config file.
//!
//! One file may configure any subset of the components: `ferry collector` reads `collector:`,
//! `ferry agent` reads `agent:`, `ferry processor` reads `processor:`, and `ferry up` reads all
//! of them. Unknown keys are errors everywhere, so a typo is caught by `ferry check`.

use ferry_core::telemetry::TelemetryConfig;
use serde::Deserialize;

/// A whole ferry config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryConfig {
    /// Logging for whichever component runs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

impl FerryConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ferry_core::config::ConfigError> {
        ferry_core::config::load_file(path)
    }
}
