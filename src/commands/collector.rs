//! `ferry collector`: the central service.

use crate::cli::UsageError;
use crate::config::FerryConfig;
use ferry_collector::config::BackendKind;
use ferry_collector::{Collector, CollectorConfig};
use ferry_core::shutdown::Shutdown;
use ferry_kafka::KafkaConfig;
use std::path::PathBuf;

pub struct Args {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub kafka: Option<String>,
    pub kafka_listen: Option<String>,
}

/// The collector section of `--config` (or defaults), with flags applied on top.
pub fn resolve(args: &Args) -> anyhow::Result<CollectorConfig> {
    let mut config = match &args.config {
        Some(path) => FerryConfig::load(path)?.collector.unwrap_or_default(),
        None => CollectorConfig::default(),
    };
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(k) = &args.kafka_listen {
        config.kafka_listen = Some(k.clone());
    }
    if let Some(brokers) = &args.kafka {
        // --kafka BROKERS: store into Kafka; a kafka: section in --config keeps its other
        // settings (topics, security), with these brokers.
        let mut kafka = config
            .kafka
            .take()
            .unwrap_or_else(|| KafkaConfig::new(brokers.clone()));
        kafka.brokers = brokers.clone();
        config.kafka = Some(kafka);
        config.backend = BackendKind::Kafka;
    }
    config.validate().map_err(UsageError)?;
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ferry_core::telemetry::install_metrics();
    let config = resolve(&args)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let collector = Collector::bind(config).await?;
    eprintln!(
        "ferry collector listening on http://{}",
        collector.local_addr()
    );
    if let Some(addr) = collector.kafka_addr() {
        eprintln!("ferry kafka listener on {addr}");
    }
    collector.run(shutdown).await
}
