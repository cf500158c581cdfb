//! ferry-core: what every ferry component shares.
//!
//! - [`record`]: the record (a line, its event time, its origin file and offset, its fields).
//! - [`batch`]: the versioned, CRC-checked, optionally gzipped batch format in which records
//!   travel from agent to collector and rest in the embedded store; its decoder never panics.
//! - [`config`]: YAML loading with `${ENV}` substitution, durations, byte sizes, and errors
//!   that name `file:line:col`.
//! - [`problems`]: every problem a component's checks find after parsing, located in the file.
//! - [`telemetry`]: `tracing` to stderr and the process's Prometheus registry.
//! - [`time`]: RFC 3339 timestamps to Unix milliseconds.
//! - [`syslog`]: RFC 5424 and RFC 3164 messages parsed into their parts; never panics.
//! - [`shutdown`]: the drain signal every long-lived loop listens to.
//! - [`registry`]: what agents report to the collector's registry, and what it shows of them.
//! - [`security`]: a client's CA, client certificate and token (flags and YAML keys alike).

pub mod backoff;
pub mod batch;
pub mod client;
pub mod config;
pub mod consumer;
pub mod crc;
pub mod fetch;
pub mod problems;
pub mod record;
pub mod registry;
pub mod security;
pub mod shutdown;
pub mod syslog;
pub mod telemetry;
pub mod time;
pub mod topic;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An error and all its causes, `: `-separated (what `{:#}` gives for anyhow errors).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
