//! Runs a pipeline on collector topics, as a member of a consumer group, with exactly-once
//! results across restarts and rebalances.
//!
//! The unit of state is the input partition: each partition this member is assigned gets its own
//! [`Pipeline`] instance, and its checkpoint — the instance's snapshot, which carries the input
//! offset it reflects — is stored in the collector (`PUT /v1/groups/{g}/checkpoints/...`), where
//! any member can restore it. The collector accepts a checkpoint only from the partition's owner.
//!
//! - **Assigned** a partition: restore its checkpoint (if the pipeline starts from `committed`)
//!   and seek to the checkpoint's offset; records below it are skipped by the pipeline itself.
//! - **Revoked**: sinks made durable, the partition's checkpoint stored, then the partition
//!   released; only then does the collector grant it to another member.
//! - **Every `checkpoint_interval` and at shutdown**: sinks made durable, then every instance's
//!   checkpoint stored. A crash between the two replays results that carry (pipeline, key,
//!   window_start), so a sink can drop the repeat; no record is counted twice in any state.
//!
//! The partitions' instances are partials of one [`Merge`]: windows close on the minimum
//! watermark over this member's partitions and each (window, key) is emitted once, with every
//! partition's partial merged (`merge.rs`). Every checkpoint carries the merge's note of which
//! windows were emitted with which partition's partial, so partitions restored from checkpoints
//! of different moments emit nothing twice. With several members, each merges what it holds:
//! one result per window and key across the topic then needs the input partitioned by the
//! group-by key (the collector topic's `key_field`). docs/processor.md says so.

use crate::config::{PipelineConfig, StartAt};
use crate::merge::{Merge, Note, Part, unwrap_checkpoint, wrap_checkpoint};
use crate::pipeline::{Emission, PartitionId, Pipeline};
use crate::sink::{Outputs, SinkError, TopicProducer};
use bytes::Bytes;
use ferry_core::backoff::Backoff;
use ferry_core::client::{ClientError, CollectorClient};
use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition};
use ferry_core::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("pipeline {pipeline}: collector")]
    Collector {
        pipeline: String,
        #[source]
        source: ClientError,
    },
    #[error("pipeline {pipeline}: sink")]
    Sink {
        pipeline: String,
        #[source]
        source: SinkError,
    },
    #[error("pipeline {pipeline}: kafka")]
    Kafka {
        pipeline: String,
        #[source]
        source: Box<ferry_kafka::KafkaError>,
    },
    #[error("pipeline {pipeline}: {message}")]
    Stopped { pipeline: String, message: String },
}

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Idle-partition checks and early results.
    pub tick: Duration,
    /// Sinks synced and checkpoints stored at least this often (and at shutdown).
    pub checkpoint_interval: Duration,
    /// Group session timeout.
    pub session_timeout: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(500),
            checkpoint_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunnerReport {
    pub records: u64,
    pub checkpoints: u64,
}

/// The `topic` sink (and late / dead-letter topics) through the collector's HTTP API.
pub struct CollectorTopicProducer {
    client: CollectorClient,
}

impl CollectorTopicProducer {
    pub fn new(client: CollectorClient) -> Self {
        Self { client }
    }
}

impl TopicProducer for CollectorTopicProducer {
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        lines: Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for l in &lines {
                body.extend_from_slice(l);
                body.push(b'\n');
            }
            self.client
                .post_lines(topic, body, false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// One partition's pipeline (a partial of the merge) and where it started.
struct Instance {
    id: PartitionId,
    pipeline: Pipeline,
    /// Offset reading started from (the checkpoint's, or the group's start).
    start: u64,
    /// Processing time the partition was assigned (for the merge's idle timeout).
    since_ms: i64,
}

struct Runner {
    client: CollectorClient,
    cfg: PipelineConfig,
    group: String,
    consumer: Consumer,
    outputs: Outputs,
    instances: BTreeMap<(String, u32), Instance>,
    /// Merges the instances' partials into one result per window and key.
    merge: Merge,
    /// Where the results files stood at the last sink checkpoint (for the checkpoints' note).
    marks: Vec<crate::sink::FileMark>,
    /// Partition count of each input topic, as of the last assignment.
    topic_partitions: BTreeMap<String, u32>,
    /// The last "waiting for every partition" warning (logged at most every 10 s).
    warned_incomplete: Option<Instant>,
    /// The results files were cut back to the newest checkpoint's marks (once, at the first
    /// assignment, before anything is written).
    rewound: bool,
    /// Revoked partitions not yet checkpointed and released (kept across a failed attempt).
    pending_revoked: Vec<(String, u32)>,
    /// Assigned partitions not yet restored (kept across a failed attempt).
    pending_assigned: Vec<((String, u32), u64)>,
    report: RunnerReport,
}

/// What one turn of the loop carries over to the next.
struct Turn {
    out: Vec<Emission>,
    last_tick: Instant,
    last_checkpoint: Instant,
}

impl RunnerError {
    /// The collector was unreachable, restarting or busy: worth retrying.
    fn is_retryable(&self) -> bool {
        match self {
            RunnerError::Collector { source, .. } => source.is_retryable(),
            // A Kafka or collector topic sink that is down: its emissions stay in the turn's
            // output and are written again on the next attempt.
            RunnerError::Sink { source, .. } => source.is_retryable(),
            RunnerError::Kafka { .. } | RunnerError::Stopped { .. } => false,
        }
    }
}

/// First retry delay after a retryable failure; doubled up to `MAX_BACKOFF`.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `cfg` until `shutdown`, then checkpoints every partition and leaves the group.
pub async fn run(
    client: CollectorClient,
    cfg: PipelineConfig,
    opts: RunnerOptions,
    shutdown: Shutdown,
) -> Result<RunnerReport, RunnerError> {
    let name = cfg.name.clone();
    let collector = |source| RunnerError::Collector {
        pipeline: name.clone(),
        source,
    };
    let group = cfg.source.group.clone().unwrap_or_else(|| cfg.name.clone());
    let (start, reset) = match cfg.source.start {
        StartAt::Committed => (StartPosition::Earliest, false),
        StartAt::Earliest => (StartPosition::Earliest, true),
        StartAt::Latest => (StartPosition::Latest, true),
        StartAt::Timestamp(t) => (StartPosition::Timestamp(t), true),
    };
    let producer: Arc<dyn TopicProducer> = Arc::new(CollectorTopicProducer::new(client.clone()));
    let outputs = Outputs::new(&cfg, Some(producer))
        .await
        .map_err(|source| RunnerError::Sink {
            pipeline: name.clone(),
            source,
        })?;
    let consumer = Consumer::connect(
        client.clone(),
        ConsumerConfig {
            topics: cfg.source.topics.clone(),
            group: Some(group.clone()),
            start,
            reset_offsets: reset,
            session_timeout: opts.session_timeout,
            max_fetch_bytes: 4 << 20,
            poll_wait: Duration::from_millis(100),
            manual_release: true,
        },
    )
    .await
    .map_err(collector)?;
    tracing::info!(
        pipeline = name,
        group,
        member = consumer.member_id(),
        "processor pipeline joined its group"
    );
    let merge = Merge::new(cfg.clone());
    let mut runner = Runner {
        client,
        cfg,
        group,
        consumer,
        outputs,
        instances: BTreeMap::new(),
        merge,
        marks: Vec::new(),
        topic_partitions: BTreeMap::new(),
        warned_incomplete: None,
        rewound: false,
        pending_revoked: Vec::new(),
        pending_assigned: Vec::new(),
        report: RunnerReport::default(),
    };
    let result = runner.run_loop(&opts, &shutdown).await;
    // Whatever ended the loop, store what is consistent and leave, so partitions move on.
    let last = runner.checkpoint_all().await;
    let _ = runner.consumer.close().await;
    result?;
    last?;
    Ok(runner.report)
}

impl Runner {
    fn err_collector(&self, source: ClientError) -> RunnerError {
        RunnerError::Collector {
            pipeline: self.cfg.name.clone(),
            source,
        }
    }

    fn err_sink(&self, source: SinkError) -> RunnerError {
        RunnerError::Sink {
            pipeline: self.cfg.name.clone(),
            source,
        }
    }

    /// Runs [`Runner::step`] until shutdown; a retryable failure (the collector restarting, down
    /// or busy) is retried with capped, jittered backoff; anything else ends the run.
    async fn run_loop(
        &mut self,
        opts: &RunnerOptions,
        shutdown: &Shutdown,
    ) -> Result<(), RunnerError> {
        let mut turn = Turn {
            out: Vec::new(),
            last_tick: Instant::now(),
            last_checkpoint: Instant::now(),
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        while !shutdown.is_triggered() {
            match self.step(opts, shutdown, &mut turn).await {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_retryable() => {
                    let wait = backoff.next_delay();
                    tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), ?wait, "collector unavailable; retrying");
                    metrics::counter!("ferry_processor_retries_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One turn: pending rebalance work, a poll, processing, ticks, sink writes, and a
    /// checkpoint when one is due.
    async fn step(
        &mut self,
        opts: &RunnerOptions,
        shutdown: &Shutdown,
        turn: &mut Turn,
    ) -> Result<(), RunnerError> {
        self.take_rebalance().await?;
        let polled = tokio::select! {
            r = self.consumer.poll(50_000) => r,
            _ = shutdown.wait() => return Ok(()),
        };
        let records = polled.map_err(|e| self.err_collector(e))?;
        let now = ferry_core::now_ms();
        for r in &records {
            let key = (r.topic.clone(), r.partition);
            // A partition assigned during this poll is set up (and sought back) next turn.
            let Some(inst) = self.instances.get_mut(&key) else {
                continue;
            };
            let pid = PartitionId::new(r.topic.clone(), r.partition);
            inst.pipeline.process(
                &pid,
                r.offset,
                &r.record,
                r.append_time_ms,
                now,
                &mut turn.out,
            );
        }
        self.report.records += records.len() as u64;
        let tick = turn.last_tick.elapsed() >= opts.tick;
        if tick {
            for inst in self.instances.values_mut() {
                inst.pipeline.advance_time(now, &mut turn.out);
            }
            turn.last_tick = Instant::now();
        }
        self.merge_step(now, tick, &mut turn.out);
        if !turn.out.is_empty() {
            let r = self.outputs.write(&turn.out).await;
            r.map_err(|e| self.err_sink(e))?;
            turn.out.clear();
        }
        if turn.last_checkpoint.elapsed() >= opts.checkpoint_interval {
            self.checkpoint_all().await?;
            turn.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    /// Emits what the merged watermark closed (and, on a tick, early results), once this
    /// member holds every partition of its topics (or the topics are partitioned by key).
    fn merge_step(&mut self, now_ms: i64, tick: bool, out: &mut Vec<Emission>) {
        if !self.cfg.source.partitioned_by_key {
            let total: u32 = self.topic_partitions.values().sum();
            if total == 0 || self.instances.len() < total as usize {
                // A partial of the topic must not go out as a final result: hold the windows
                // (they are in the checkpoints) until one member has them all — e.g. a member
                // that died still holds some until its session expires.
                if total > 0
                    && self
                        .warned_incomplete
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        pipeline = self.cfg.name,
                        held = self.instances.len(),
                        partitions = total,
                        "results wait until this member holds every partition (several members of one group on one topic need it partitioned by the group-by key: source.partitioned_by_key)"
                    );
                    self.warned_incomplete = Some(Instant::now());
                }
                return;
            }
        }
        let mut parts: Vec<Part<'_>> = self
            .instances
            .values_mut()
            .map(|i| Part {
                id: &i.id,
                pipeline: &mut i.pipeline,
                since_ms: i.since_ms,
            })
            .collect();
        self.merge.advance(now_ms, &mut parts, out);
        if tick {
            self.merge.emit_early(&mut parts, out);
        }
    }

    /// Reads the merge's note from every checkpoint of the pipeline's topics, so partitions
    /// restored from older checkpoints do not emit windows again (see `merge.rs`).
    async fn learn_notes(&mut self) -> Result<(), RunnerError> {
        let mut marks = Vec::new();
        for topic in self.cfg.source.topics.clone() {
            let info = self
                .client
                .topic(&topic)
                .await
                .map_err(|e| self.err_collector(e))?;
            let partitions = info.map(|i| i.partitions).unwrap_or_default();
            self.topic_partitions
                .insert(topic.clone(), partitions.len() as u32);
            if self.cfg.source.start != StartAt::Committed {
                continue;
            }
            for p in partitions {
                let got = self
                    .client
                    .get_checkpoint(&self.group, &topic, p.partition)
                    .await
                    .map_err(|e| self.err_collector(e))?;
                if let Some((_, blob)) = got
                    && let Ok((note, _)) = unwrap_checkpoint(&blob)
                {
                    for (pid, start) in note.emitted {
                        self.merge.learn(pid, start);
                    }
                    marks.extend(note.files);
                }
            }
        }
        if !self.rewound && self.cfg.source.start == StartAt::Committed {
            let r = self.outputs.rewind_files(&marks).await;
            r.map_err(|e| self.err_sink(e))?;
            self.rewound = true;
        }
        Ok(())
    }

    /// Restores newly assigned partitions; checkpoints and releases revoked ones.
    async fn take_rebalance(&mut self) -> Result<(), RunnerError> {
        // Pending lists survive a failed attempt, so a retry finishes the hand-over.
        self.pending_revoked.extend(self.consumer.take_revoked());
        self.pending_assigned.extend(self.consumer.take_assigned());
        let revoked = self.pending_revoked.clone();
        if !revoked.is_empty() {
            let r = self.outputs.checkpoint().await;
            r.map_err(|e| self.err_sink(e))?;
            self.marks = self.outputs.file_marks();
            for tp in &revoked {
                self.checkpoint_one(tp).await?;
                self.instances.remove(tp);
            }
            self.consumer
                .release(&revoked)
                .await
                .map_err(|e| self.err_collector(e))?;
            tracing::info!(pipeline = self.cfg.name, partitions = ?revoked, "partitions handed over");
            self.pending_revoked.clear();
        }
        // Partitions lost with an expired session are neither ours nor revoking: drop them.
        let held: std::collections::BTreeSet<(String, u32)> =
            self.consumer.assignment().into_iter().collect();
        self.instances.retain(|tp, _| held.contains(tp));
        if !self.pending_assigned.is_empty() {
            self.learn_notes().await?;
        }
        let since_ms = ferry_core::now_ms();
        while let Some((tp, start)) = self.pending_assigned.first().cloned() {
            let restored = if self.cfg.source.start == StartAt::Committed {
                self.client
                    .get_checkpoint(&self.group, &tp.0, tp.1)
                    .await
                    .map_err(|e| self.err_collector(e))?
            } else {
                None
            };
            let id = PartitionId::new(tp.0.clone(), tp.1);
            let inst = match restored {
                Some((offset, state)) => match unwrap_checkpoint(&state)
                    .and_then(|(_, snap)| Pipeline::restore(self.cfg.clone(), snap))
                {
                    Ok(p) => {
                        self.consumer.seek(&tp, offset);
                        tracing::info!(
                            pipeline = self.cfg.name,
                            topic = tp.0,
                            partition = tp.1,
                            offset,
                            "state restored from checkpoint"
                        );
                        Instance {
                            id,
                            pipeline: p.into_partial(),
                            start: offset,
                            since_ms,
                        }
                    }
                    Err(e) => {
                        self.consumer.seek(&tp, start);
                        // A checkpoint this build cannot read (another version, damage) must not
                        // be silently replaced: say so loudly and start from the group offset.
                        tracing::error!(pipeline = self.cfg.name, topic = tp.0, partition = tp.1, error = %e, "checkpoint unreadable; starting from the group's committed offset");
                        metrics::counter!("ferry_processor_checkpoints_unreadable_total")
                            .increment(1);
                        Instance {
                            id,
                            pipeline: Pipeline::new(self.cfg.clone()).into_partial(),
                            start,
                            since_ms,
                        }
                    }
                },
                None => {
                    tracing::info!(
                        pipeline = self.cfg.name,
                        topic = tp.0,
                        partition = tp.1,
                        offset = start,
                        "no checkpoint; starting from the group's position"
                    );
                    // Records of this partition polled before it was set up were ignored;
                    // read them again.
                    self.consumer.seek(&tp, start);
                    Instance {
                        id,
                        pipeline: Pipeline::new(self.cfg.clone()).into_partial(),
                        start,
                        since_ms,
                    }
                }
            };
            self.instances.insert(tp, inst);
            self.pending_assigned.remove(0);
        }
        Ok(())
    }

    /// Stores one partition's checkpoint in the collector.
    async fn checkpoint_one(&mut self, tp: &(String, u32)) -> Result<(), RunnerError> {
        let Some(inst) = self.instances.get(tp) else {
            return Ok(());
        };
        let pid = PartitionId::new(tp.0.clone(), tp.1);
        let offset = inst
            .pipeline
            .offsets()
            .into_iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, o)| o)
            .unwrap_or(inst.start);
        let note = Note {
            emitted: self.merge.emitted().clone(),
            files: self.marks.clone(),
        };
        let snapshot = wrap_checkpoint(&note, &inst.pipeline.snapshot());
        let member = self.consumer.member_id().unwrap_or_default().to_owned();
        match self
            .client
            .put_checkpoint(
                &self.group,
                &member,
                self.consumer.generation(),
                &tp.0,
                tp.1,
                offset,
                snapshot,
            )
            .await
        {
            Ok(()) => {
                self.report.checkpoints += 1;
                Ok(())
            }
            // We lost the partition (session expired): its new owner restores the last
            // checkpoint; what we computed since is recomputed there, not lost.
            Err(ClientError::Http {
                status: 404 | 409,
                message,
                ..
            }) => {
                tracing::warn!(pipeline = self.cfg.name, topic = tp.0, partition = tp.1, %message, "checkpoint refused: partition no longer ours");
                Ok(())
            }
            Err(e) => Err(self.err_collector(e)),
        }
    }

    async fn checkpoint_all(&mut self) -> Result<(), RunnerError> {
        let r = self.outputs.checkpoint().await;
        r.map_err(|e| self.err_sink(e))?;
        self.marks = self.outputs.file_marks();
        let keys: Vec<(String, u32)> = self.instances.keys().cloned().collect();
        for tp in keys {
            self.checkpoint_one(&tp).await?;
        }
        Ok(())
    }
}
