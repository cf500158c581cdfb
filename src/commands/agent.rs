//! `ferry agent`: tail files and ship their lines.

use crate::cli::UsageError;
use crate::config::FerryConfig;
use ferry_agent::{Agent, AgentConfig, AgentError, QuickArgs};
use ferry_core::shutdown::Shutdown;
use std::path::PathBuf;

pub struct Args {
    /// Ship stdin instead of tailing files.
    pub stdin: bool,
    pub config: Option<PathBuf>,
    pub collectors: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub topic: Option<String>,
    pub kafka: Option<String>,
    pub output: Option<String>,
    pub paths: Vec<String>,
    pub metrics_listen: Option<String>,
    /// TLS and token flags, over the collector output's keys.
    pub security: ferry_core::security::ClientSecurity,
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
        stdin: args.stdin,
        security: args.security.clone(),
    };
    let config = AgentConfig::from_quick(base, &quick).map_err(|e| UsageError(e.to_string()))?;
    if args.stdin {
        // Checked by from_quick; the inputs of --config are not tailed.
        return Ok(config);
    }
    if config.inputs.is_empty() && config.syslog.is_empty() {
        return Err(UsageError(
            "nothing to tail: give files or globs (ferry agent 'logs/*.log') or inputs (or syslog listeners) in --config"
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
    if args.stdin {
        return run_stdin(&args, config).await;
    }
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

/// `ferry agent --stdin --topic T`: ships stdin until EOF (or a signal), exit 0 once every line
/// read is acknowledged.
async fn run_stdin(args: &Args, config: AgentConfig) -> anyhow::Result<()> {
    let topic = args
        .topic
        .clone()
        .ok_or_else(|| UsageError("--stdin needs --topic T: the topic to ship to".into()))?;
    ferry_core::topic::validate_name(&topic).map_err(|e| UsageError(format!("--topic: {e}")))?;
    let output = ferry_agent::agent::output_of(&config).map_err(|e| match e {
        AgentError::Kafka(k) => anyhow::Error::from(UsageError(format!("agent output: {k}"))),
        other => other.into(),
    })?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let stats = std::sync::Arc::new(ferry_agent::AgentStats::default());
    let started = std::time::Instant::now();
    let report = ferry_agent::stdin::ship(
        &config,
        output,
        &topic,
        std::io::stdin(),
        stats,
        shutdown.clone(),
    )
    .await?;
    eprintln!(
        "ferry agent: {} lines ({} bytes) from stdin, {} acknowledged ({} deduplicated), {} dropped, to {topic} in {:.2}s",
        report.lines,
        report.bytes,
        report.acknowledged,
        report.deduplicated,
        report.dropped,
        started.elapsed().as_secs_f64()
    );
    if report.dropped > 0 {
        anyhow::bail!("{} lines were refused by the output", report.dropped);
    }
    Ok(())
}
