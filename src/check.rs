//! `ferry check FILE`: validates a config with the same types the components run with.

use crate::config::FerryConfig;
use std::path::Path;

/// What `ferry check` found in a valid file, for its one-line summary.
#[derive(Debug)]
pub struct CheckReport {
    pub sections: Vec<&'static str>,
}

/// Loads and validates `path`. The error names `file:line:col` and the problem.
pub fn check(path: &Path) -> Result<CheckReport, ferry_core::config::ConfigError> {
    let config = FerryConfig::load(path)?;
    Ok(CheckReport {
        sections: config.sections(),
    })
}
