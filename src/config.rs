//! The schema of a ferry config file.
//!
//! One file may configure any subset of the components: `ferry collector` reads `collector:`,
//! `ferry agent` reads `agent:`, `ferry processor` reads `processor:`, and `ferry up` reads all
//! of them. Each section's type lives in its component's crate, so `ferry check` validates a
//! file with the very types that run it. Unknown keys are errors everywhere.

use ferry_agent::AgentConfig;
use ferry_collector::CollectorConfig;
use ferry_core::config::{ConfigError, Problems};
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
    /// Loads a file and runs every component's checks on it: a parse error stops at its
    /// position; the checks' problems are all reported, each at its own `file:line:col`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::load_str(&text, path)
    }

    /// [`FerryConfig::load`] on a text (the built-in `ferry up` config); `name` is for messages.
    pub fn load_str(text: &str, name: &Path) -> Result<Self, ConfigError> {
        match ferry_core::config::load_str_checked(text, name, |c: &FerryConfig, p| c.check(p)) {
            Err(parse @ ConfigError::Invalid { .. }) => {
                Err(every_pipeline_problem(text, name).unwrap_or(parse))
            }
            other => other,
        }
    }

    /// What each component checks at start, for every section present. A file with an `up:`
    /// section is `ferry up`'s: its relative paths are taken from the data directory, as
    /// `ferry up` does, so they are checked that way.
    pub fn check(&self, p: &mut Problems) {
        if let Some(pr) = &self.processor {
            p.nested("processor", |p| pr.check(p));
        }
        if let Some(c) = &self.collector {
            p.nested("collector", |p| c.check(p));
        }
        if self.up.is_some() {
            if self.agent.is_none() {
                p.add_hint(
                    "up",
                    "ferry up needs an `agent:` section",
                    "see `ferry up --print-config` for a complete one",
                );
            }
            let mut placed = FerryConfig {
                agent: self.agent.clone(),
                up: self.up.clone(),
                ..FerryConfig::default()
            };
            crate::up::place_under(&mut placed, Path::new("/ferry-data"));
            if let Some(a) = &placed.agent {
                p.nested("agent", |p| a.check(p));
            }
        } else if let Some(a) = &self.agent {
            p.nested("agent", |p| a.check(p));
        }
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

/// A processor pipeline's cross-key rules stop the parse at the first one; when that is what
/// failed, the file is read again with the pipelines as written, to list every pipeline's
/// problems at their keys. `None` when that reading fails too (the error is elsewhere).
fn every_pipeline_problem(text: &str, name: &Path) -> Option<ConfigError> {
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct View {
        telemetry: Option<IgnoredAny>,
        collector: Option<IgnoredAny>,
        agent: Option<IgnoredAny>,
        processor: Option<ferry_processor::config::ProcessorCheckView>,
        up: Option<IgnoredAny>,
    }
    ferry_core::config::load_str_checked(text, name, |v: &View, p| {
        if let Some(pr) = &v.processor {
            p.nested("processor", |p| pr.check(p));
        }
    })
    .err()
    .filter(|e| matches!(e, ConfigError::Problems { .. }))
}
