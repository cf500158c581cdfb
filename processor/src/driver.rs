//! The async loop around a [`Pipeline`]: input batches in, emissions out to the sinks, periodic
//! ticks and checkpoints. The source driver (collector or Kafka consumer) feeds the channel and
//! resumes from [`Pipeline::offsets`] of the restored pipeline; after each checkpoint the driver
//! publishes the checkpointed offsets on `committed`, for the source to commit to its group.
//!
//! Order at a checkpoint: sinks made durable (file fsync), then the snapshot stored; so anything
//! the checkpoint says was emitted is on disk. A crash in between replays results that carry
//! (pipeline, key, window_start) for deduplication.

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::pipeline::{Emission, PartitionId, Pipeline};
use crate::sink::{Outputs, SinkError};
use ferry_core::record::Record;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Records of one partition, consecutive from `first_offset`.
#[derive(Debug, Clone)]
pub struct InputBatch {
    pub partition: PartitionId,
    pub first_offset: u64,
    pub records: Vec<Record>,
    /// When the collector ingested them (Unix ms): the fallback event time.
    pub ingest_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint task failed: {0}")]
    Join(String),
}

/// How often the driver ticks and checkpoints.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Idle-partition checks and early results.
    pub tick: Duration,
    /// Sinks synced and state stored at least this often (and at shutdown).
    pub checkpoint_interval: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

/// Processing time in Unix ms, driven by tokio's clock (so tests can pause it).
struct Clock {
    base_ms: i64,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            base_ms: ferry_core::now_ms(),
            base: tokio::time::Instant::now(),
        }
    }
    fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }
}

/// Runs until `input` closes or `shutdown` completes, then checkpoints and returns the pipeline.
pub async fn run(
    mut pipeline: Pipeline,
    mut outputs: Outputs,
    checkpointer: Option<Checkpointer>,
    mut input: mpsc::Receiver<InputBatch>,
    opts: DriverOptions,
    committed: Option<watch::Sender<Vec<(PartitionId, u64)>>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Pipeline, DriverError> {
    let clock = Clock::new();
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut out: Vec<Emission> = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            batch = input.recv() => match batch {
                Some(b) => {
                    pipeline.process_batch(&b.partition, b.first_offset, &b.records, b.ingest_ms, clock.now_ms(), &mut out);
                }
                None => break,
            },
            _ = tick.tick() => {
                pipeline.advance_time(clock.now_ms(), &mut out);
            }
            _ = &mut shutdown => break,
        }
        if !out.is_empty() {
            outputs.write(&out).await?;
            out.clear();
        }
        if last_checkpoint.elapsed() >= opts.checkpoint_interval {
            checkpoint(
                &pipeline,
                &mut outputs,
                checkpointer.as_ref(),
                committed.as_ref(),
            )
            .await?;
            last_checkpoint = tokio::time::Instant::now();
        }
    }
    checkpoint(
        &pipeline,
        &mut outputs,
        checkpointer.as_ref(),
        committed.as_ref(),
    )
    .await?;
    Ok(pipeline)
}

async fn checkpoint(
    pipeline: &Pipeline,
    outputs: &mut Outputs,
    checkpointer: Option<&Checkpointer>,
    committed: Option<&watch::Sender<Vec<(PartitionId, u64)>>>,
) -> Result<(), DriverError> {
    outputs.checkpoint().await?;
    if let Some(c) = checkpointer {
        let snap = pipeline.snapshot();
        let c = c.clone();
        tokio::task::spawn_blocking(move || c.store(&snap))
            .await
            .map_err(|e| DriverError::Join(e.to_string()))??;
    }
    if let Some(tx) = committed {
        tx.send_replace(pipeline.offsets());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use std::path::Path;

    fn cfg(out: &Path) -> crate::config::PipelineConfig {
        let yaml = format!(
            "pipelines:\n  - name: d\n    source: {{topics: [app]}}\n    event_time: {{field: t, format: unix_ms}}\n    group_by: [k]\n    window: {{tumbling: 100ms, allowed_lateness: 0s, idle_timeout: 1s}}\n    aggregates: [{{name: count, op: count}}]\n    sinks: [{{file: {{path: {}}}}}]\n",
            out.display()
        );
        let c: ProcessorConfig = ferry_core::config::load_str(&yaml, Path::new("d.yaml")).unwrap();
        c.pipelines[0].clone()
    }

    fn batch(first: u64, ts: &[i64]) -> InputBatch {
        InputBatch {
            partition: PartitionId::new("app", 0),
            first_offset: first,
            records: ts
                .iter()
                .map(|t| Record::from_line(format!(r#"{{"t":{t},"k":"a"}}"#)))
                .collect(),
            ingest_ms: 0,
        }
    }

    /// Runs one driver over `batches` until they are consumed, then shuts it down.
    async fn run_once(
        cfg: crate::config::PipelineConfig,
        ck: &Checkpointer,
        batches: Vec<InputBatch>,
    ) -> Vec<(PartitionId, u64)> {
        let pipeline = ck.open_pipeline(cfg.clone()).unwrap();
        let outputs = Outputs::new(&cfg, None).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (ctx, crx) = watch::channel(Vec::new());
        let opts = DriverOptions {
            tick: Duration::from_millis(100),
            checkpoint_interval: Duration::from_millis(500),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(run(
            pipeline,
            outputs,
            Some(ck.clone()),
            rx,
            opts,
            Some(ctx),
            async {
                let _ = stop_rx.await;
            },
        ));
        for b in batches {
            tx.send(b).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(());
        h.await.unwrap().unwrap();
        crx.borrow().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn restart_from_checkpoint_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("results.jsonl");
        let cfg = cfg(&out);
        let ck = Checkpointer::new(dir.path(), "d");
        let committed = run_once(cfg.clone(), &ck, vec![batch(0, &[10, 20, 150])]).await;
        assert_eq!(committed, vec![(PartitionId::new("app", 0), 3)]);
        // The source replays from an older offset after the restart: 0..3 again, then new records.
        run_once(
            cfg.clone(),
            &ck,
            vec![batch(0, &[10, 20, 150]), batch(3, &[160, 250])],
        )
        .await;
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let counts: Vec<(String, u64)> = lines
            .iter()
            .map(|l| {
                (
                    l["window_start"].as_str().unwrap().to_owned(),
                    l["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                ("1970-01-01T00:00:00Z".to_owned(), 2),
                ("1970-01-01T00:00:00.100Z".to_owned(), 2),
            ]
        );
        assert!(ck.path().exists());
    }
}
