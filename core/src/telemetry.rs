//! Telemetry shared by every component: `tracing` logs to stderr (human or JSON), and one
//! Prometheus metrics registry per process that every service renders at `GET /metrics`.
//!
//! Components record with the `metrics` macros (`metrics::counter!(...)`); [`install_metrics`]
//! sets the process-wide recorder once, and [`render_metrics`] gives the Prometheus text.
//! `ferry up` runs several components in one process, so they share that one registry.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Human,
    /// One JSON object per line, for log shippers (ferry's own included).
    Json,
}

/// The `telemetry:` section every config may carry.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,ferry_agent=debug`. `RUST_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where the agent and the processor serve `GET /metrics` and `GET /healthz` (the collector
    /// serves them on its API address). Unset: no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// Installs the stderr log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_metrics() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (e.g. by a test harness); the
        // handle still renders what this recorder holds, which is then nothing.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render_metrics() -> String {
    install_metrics().render()
}

/// Content type of [`render_metrics`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[cfg(test)]
mod tests {
    #[test]
    fn counters_show_in_the_rendered_text() {
        super::install_metrics();
        metrics::counter!("ferry_test_events_total", "reason" => "unit").increment(3);
        let text = super::render_metrics();
        assert!(
            text.contains("ferry_test_events_total{reason=\"unit\"} 3"),
            "{text}"
        );
    }
}
