//! `ferry processor --config FILE [--collector URL | --kafka BROKERS]`: runs every pipeline of
//! the config's `processor:` section until SIGINT/SIGTERM, each on its source: the collector, or
//! Kafka for a pipeline whose `source` has a `kafka:` section (or every pipeline, with `--kafka`).

use crate::cli::UsageError;
use crate::config::FerryConfig;
use ferry_core::client::CollectorClient;
use ferry_core::security::ClientSecurity;
use ferry_core::shutdown::Shutdown;
use ferry_processor::runner::{self, RunnerOptions};
use std::path::PathBuf;

pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:7070";

pub struct Args {
    pub config: PathBuf,
    pub collector: Option<String>,
    pub kafka: Option<String>,
    pub metrics_listen: Option<String>,
    /// The flags' TLS and token, over `processor.collector`'s.
    pub security: ClientSecurity,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        config,
        collector,
        kafka,
        metrics_listen,
        security,
    } = args;
    ferry_core::telemetry::install_metrics();
    let file = FerryConfig::load(&config)?;
    let mut processor = file
        .processor
        .ok_or_else(|| UsageError(format!("{}: no `processor:` section", config.display())))?;
    if processor.pipelines.is_empty() {
        return Err(UsageError(format!(
            "{}: `processor.pipelines` is empty",
            config.display()
        ))
        .into());
    }
    if let Some(brokers) = kafka {
        if collector.is_some() {
            return Err(UsageError(
                "give either --collector URL or --kafka BROKERS, not both".into(),
            )
            .into());
        }
        use_kafka(&mut processor.pipelines, &brokers).map_err(UsageError)?;
    }
    let section = processor.collector.clone().unwrap_or_default();
    let url = collector
        .or(section.url.clone())
        .unwrap_or_else(|| DEFAULT_COLLECTOR.to_owned());
    let client = super::client(&url, &section.security().overlay(&security))?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    if let Some(addr) = metrics_listen.or(file.telemetry.metrics_listen) {
        crate::commands::metrics::serve(&addr, shutdown.clone()).await?;
    }
    let opts = RunnerOptions {
        checkpoint_interval: processor.checkpoint_interval.get(),
        ..RunnerOptions::default()
    };
    run_pipelines(client, processor.pipelines, opts, shutdown).await
}

/// `--kafka BROKERS`: every pipeline reads from Kafka at these brokers; a pipeline that already
/// has a `source.kafka` section keeps its other settings (topics, security), with these brokers.
pub fn use_kafka(
    pipelines: &mut [ferry_processor::config::PipelineConfig],
    brokers: &str,
) -> Result<(), String> {
    for p in pipelines {
        let mut k = p
            .source
            .kafka
            .take()
            .unwrap_or_else(|| ferry_kafka::KafkaConfig::new(brokers));
        k.brokers = brokers.to_owned();
        k.validate().map_err(|e| format!("--kafka: {e}"))?;
        p.source.kafka = Some(k);
    }
    Ok(())
}

/// Runs pipelines side by side, each on its source (Kafka when it has a `kafka:` section, else
/// the collector); the first failure stops the others.
pub async fn run_pipelines(
    client: CollectorClient,
    pipelines: Vec<ferry_processor::config::PipelineConfig>,
    opts: RunnerOptions,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for p in pipelines {
        let (client, opts, shutdown) = (client.clone(), opts.clone(), shutdown.clone());
        if p.source.kafka.is_some() {
            set.spawn(async move { ferry_processor::kafka_source::run(p, opts, shutdown).await });
        } else {
            set.spawn(async move { runner::run(client, p, opts, shutdown).await });
        }
    }
    let mut first_err = None;
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(report)) => {
                tracing::info!(
                    records = report.records,
                    checkpoints = report.checkpoints,
                    "pipeline stopped"
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pipeline failed");
                shutdown.trigger();
                first_err.get_or_insert(anyhow::Error::from(e));
            }
            Err(e) => {
                shutdown.trigger();
                first_err.get_or_insert(anyhow::anyhow!("pipeline task: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
