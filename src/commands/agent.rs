//! `ferry agent`: tail files and ship their lines.

use crate::cli::UsageError;
use crate::config::FerryConfig;
use ferry_agent::{Agent, AgentConfig, AgentError, QuickArgs};
use ferry_core::shutdown::Shutdown;
use std::path::PathBuf;

pub struct Args {
    pub config: Option<PathBuf>,
    pub collectors: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub topic: Option<String>,
    pub kafka: Option<String>,
    pub output: Option<String>,
    pub paths: Vec<String>,
    pub metrics_listen: Option<String>,
}

/// The `agent:` section of `--config` (if any) with the flags layered on top.
pub fn resolve(args: &Args) -> anyhow::Result<AgentConfig> {
    let base = match &args.config {
        Some(path) => Some(FerryConfig::load(path)?.agent.unwrap_or_default()),
        None => None,
    };
    let quick = QuickArgs {
        collectors: args.collectors.clone(),
        topic: args.topic.clone(),
        paths: args.paths.clone(),
        kafka: args.kafka.clone(),
        output: args.output.clone(),
        data_dir: args.data_dir.clone(),
    };
    let config = AgentConfig::from_quick(base, &quick).map_err(|e| UsageError(e.to_string()))?;
    if config.inputs.is_empty() {
        return Err(UsageError(
            "nothing to tail: give files or globs (ferry agent 'logs/*.log') or inputs in --config"
                .into(),
        )
        .into());
    }
    config.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ferry_core::telemetry::install_metrics();
    let config = resolve(&args)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let metrics_listen = args.metrics_listen.clone().or(match &args.config {
        Some(p) => FerryConfig::load(p)?.telemetry.metrics_listen,
        None => None,
    });
    if let Some(addr) = metrics_listen {
        crate::commands::metrics::serve(&addr, shutdown.clone()).await?;
    }
    let agent = Agent::new(config).map_err(|e| match e {
        AgentError::Config(c) => anyhow::Error::from(UsageError(c.to_string())),
        // librdkafka refused a setting of the kafka output: a config error, exit 2.
        AgentError::Kafka(k) => anyhow::Error::from(UsageError(format!("agent output: {k}"))),
        other => other.into(),
    })?;
    let stats = agent.stats();
    let report = agent.run(shutdown).await?;
    // The agent has no HTTP port: its totals go to the log when it stops (the same facts as
    // the ferry_agent_* metrics).
    let get = ferry_agent::AgentStats::get;
    tracing::info!(
        agent_id = report.agent_id,
        files = report.files,
        lines_read = get(&stats.lines_read),
        lines_truncated = get(&stats.lines_truncated),
        records_acked = get(&stats.records_acked),
        records_dropped = get(&stats.records_dropped),
        unread_bytes = get(&stats.unread_bytes),
        retries = get(&stats.retries),
        "agent stopped"
    );
    Ok(())
}
