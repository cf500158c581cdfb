//! `ferry consume --kafka BROKERS TOPIC`: prints records of a Kafka topic, as `ferry consume
//! --collector` does (same flags, same raw and JSON output).
//!
//! `--idle-timeout` counts from when the consumer got its partitions (a group join takes a few
//! seconds), then from the last record.
//!
//! Without `--group` the consumer joins a group of its own (`ferry-consume-<random>`) and
//! commits nothing, like Kafka's console consumer; with one, it commits after printing.

use ferry_kafka::{KafkaConfig, KafkaSource, SourceConfig, StartPosition};
use std::io::Write;
use std::time::{Duration, Instant};

/// How long `--idle-timeout` waits for a first assignment before it starts counting.
const JOIN_GRACE: Duration = Duration::from_secs(30);

pub struct Args {
    pub brokers: String,
    pub topic: String,
    pub group: Option<String>,
    pub from_beginning: bool,
    pub max: Option<u64>,
    pub idle_timeout: Option<Duration>,
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = KafkaConfig::new(args.brokers.clone());
    config.validate().map_err(crate::cli::UsageError)?;
    let (group, commit) = match &args.group {
        Some(g) => (g.clone(), true),
        None => (
            format!("ferry-consume-{:08x}", rand::random::<u32>()),
            false,
        ),
    };
    let source = KafkaSource::new(
        &config,
        &SourceConfig {
            topics: vec![args.topic.clone()],
            group,
            start: if args.from_beginning {
                StartPosition::Earliest
            } else {
                StartPosition::Latest
            },
        },
    )?;
    let shutdown = ferry_core::shutdown::Shutdown::new();
    shutdown.on_signals();
    let result = print_loop(&source, &args, commit, &shutdown).await;
    source.close(Duration::from_secs(5)).await;
    result
}

async fn print_loop(
    source: &KafkaSource,
    args: &Args,
    commit: bool,
    shutdown: &ferry_core::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let started = Instant::now();
    let mut last_record = Instant::now();
    // Joining a Kafka group takes seconds: --idle-timeout counts from the first assignment.
    let mut assigned = false;
    loop {
        if !assigned && source.assignment().is_ok_and(|a| !a.is_empty()) {
            assigned = true;
            last_record = Instant::now();
        }
        let want = args
            .max
            .map(|m| (m - printed) as usize)
            .unwrap_or(10_000)
            .min(10_000);
        if want == 0 || shutdown.is_triggered() {
            break;
        }
        let records = match source.poll(want, Duration::from_millis(200)).await {
            Ok(r) => r,
            Err(e) => {
                // Usually passing (a topic not created yet, a broker reconnecting): say so
                // and keep polling, as Kafka's console consumer does; --idle-timeout still
                // ends a consumer that never gets anything.
                tracing::warn!(error = %e, "kafka consumer error; still polling");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::new()
            }
        };
        if records.is_empty() {
            // Until partitions are assigned, idle time does not count (up to JOIN_GRACE: a
            // topic that does not exist yet never gets any).
            let waiting_for_join = !assigned && started.elapsed() < JOIN_GRACE;
            if !waiting_for_join
                && args
                    .idle_timeout
                    .is_some_and(|t| last_record.elapsed() >= t)
            {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            crate::commands::consume::print_record(
                &mut out,
                args.json,
                &r.topic,
                u32::try_from(r.partition).unwrap_or(0),
                u64::try_from(r.offset).unwrap_or(0),
                r.timestamp_ms,
                &r.record,
            )?;
        }
        out.flush()?;
        printed += records.len() as u64;
        // Printed, then committed: at-least-once.
        if commit && let Err(e) = source.commit_consumed(&records).await {
            // A commit refused during a rebalance only means these records may be read again
            // by the next owner of their partition.
            tracing::warn!(error = %e, "kafka commit failed; records may be delivered again");
        }
    }
    out.flush()?;
    Ok(())
}
