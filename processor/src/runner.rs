//! Runs a pipeline on collector topics, as a member of a consumer group, with exactly-once
//! results across restarts and rebalances.
//!
//! The state and every decision about it are the source-independent [`Driver`]'s (`driver.rs`,
//! shared with the Kafka source); this module does the collector's I/O around it.
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
//! of different moments emit nothing twice. That in-process merge is used with
//! `source.repartition: false` (a member emits only while it holds every partition) and with
//! `source.partitioned_by_key`.
//!
//! With repartition (the default), the instances are upstreams instead: every
//! `flush_interval` each one's deltas are stored with its checkpoint and then posted, keyed by
//! the group key, to the collector topic `{group}.{pipeline}.repartition`; this member also
//! joins the group `{group}.repartition` and, for each of that topic's partitions it owns, merges
//! the parts of every upstream with that partition's own [`Merge`] (`repartition.rs`, and the
//! second `impl Runner` below).

use crate::config::{PipelineConfig, StartAt};
use crate::driver::{Applied, Assigned, Driver};
use crate::pipeline::{Emission, PartitionId};
use crate::repartition::{self, Outbox};
use crate::sink::{Outputs, SinkError, TopicProducer};
use bytes::Bytes;
use ferry_core::backoff::Backoff;
use ferry_core::client::{ClientError, CollectorClient};
use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition, same_topic};
use ferry_core::shutdown::Shutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most records one poll hands to the pipelines: more than one fetch holds (4 MiB of stored
/// batches), so a poll takes what the consumer fetched and the two swap vectors instead of
/// moving records from one to the other.
const POLL_MAX: usize = 1 << 20;

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
    /// With repartition: how often each input partition's partials are shipped (each flush
    /// stores that partition's checkpoint first).
    pub flush_interval: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(500),
            checkpoint_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            flush_interval: Duration::from_secs(1),
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

/// The downstream half of a repartitioned pipeline: the merge group's consumer of the
/// repartition topic (the owners' state is the driver's).
struct Repart {
    topic: String,
    group: String,
    consumer: Consumer,
    /// Producer id per (upstream, target), computed once.
    producers: std::collections::HashMap<(PartitionId, u32), String>,
    pending_revoked: Vec<(String, u32)>,
    pending_assigned: Vec<((String, u32), u64)>,
}

struct Runner {
    client: CollectorClient,
    cfg: PipelineConfig,
    group: String,
    consumer: Consumer,
    outputs: Outputs,
    /// Every partition's state and every decision about it (`driver.rs`).
    driver: Driver,
    /// The results files were cut back to the newest checkpoint's marks (once, at the first
    /// assignment, before anything is written).
    rewound: bool,
    /// Revoked partitions not yet checkpointed and released (kept across a failed attempt).
    pending_revoked: Vec<(String, u32)>,
    /// Assigned partitions not yet restored (kept across a failed attempt).
    pending_assigned: Vec<((String, u32), u64)>,
    /// With repartition: the merge group's consumer, set up once the input topics exist.
    rep: Option<Repart>,
    last_rep_attempt: Option<Instant>,
    session_timeout: Duration,
    report: RunnerReport,
}

/// What one turn of the loop carries over to the next.
struct Turn {
    out: Vec<Emission>,
    /// The last poll's records; kept so each poll reuses its allocation.
    polled: Vec<ferry_core::consumer::ConsumedRecord>,
    last_tick: Instant,
    last_checkpoint: Instant,
    last_flush: Instant,
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
    let mut runner = Runner {
        client,
        driver: Driver::new(
            cfg.clone(),
            false,
            "several members of one group on one topic need it partitioned by the group-by key: source.partitioned_by_key",
        ),
        cfg,
        group,
        consumer,
        outputs,
        rewound: false,
        pending_revoked: Vec::new(),
        pending_assigned: Vec::new(),
        rep: None,
        last_rep_attempt: None,
        session_timeout: opts.session_timeout,
        report: RunnerReport::default(),
    };
    let result = runner.run_loop(&opts, &shutdown).await;
    // Whatever ended the loop, store what is consistent and leave, so partitions move on.
    let mut last = runner.flush_all().await;
    if last.is_ok() {
        last = runner.checkpoint_all().await;
    }
    let _ = runner.consumer.close().await;
    if let Some(rep) = runner.rep.take() {
        let _ = rep.consumer.close().await;
    }
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
            polled: Vec::new(),
            out: Vec::new(),
            last_tick: Instant::now(),
            last_checkpoint: Instant::now(),
            last_flush: Instant::now(),
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
        let repartition = self.driver.repartition();
        self.take_rebalance().await?;
        if repartition {
            self.ensure_repart(false).await?;
            self.take_merge_rebalance().await?;
        }
        let mut records = std::mem::take(&mut turn.polled);
        let polled = tokio::select! {
            r = self.consumer.poll_into(POLL_MAX, &mut records) => r,
            _ = shutdown.wait() => return Ok(()),
        };
        polled.map_err(|e| self.err_collector(e))?;
        let now = ferry_core::now_ms();
        // A poll returns each partition's records together: one instance lookup per run of
        // them, not per record.
        for run in
            records.chunk_by(|a, b| a.partition == b.partition && same_topic(&a.topic, &b.topic))
        {
            let first = &run[0];
            let pid = PartitionId::new(first.topic.to_string(), first.partition);
            // A partition assigned during this poll is set up (and sought back) next turn.
            let Some(u) = self.driver.upstream_mut(&pid) else {
                continue;
            };
            u.pipeline.process_run(
                &pid,
                run.iter().map(|r| (r.offset, &r.record, r.append_time_ms)),
                now,
                &mut turn.out,
            );
        }
        self.report.records += records.len() as u64;
        records.clear();
        turn.polled = records;
        let tick = turn.last_tick.elapsed() >= opts.tick;
        if tick {
            turn.last_tick = Instant::now();
        }
        if repartition {
            // An upstream whose watermark just closed a window ships it at once, not at the
            // next periodic flush: the window's result then waits only for the hop (its owner
            // merges once every upstream's watermark passed the window).
            for pid in self.driver.due(false) {
                self.flush_one(&pid).await?;
            }
            self.merge_poll(shutdown).await?;
        }
        self.driver
            .advance(ferry_core::now_ms(), tick, &mut turn.out);
        if !turn.out.is_empty() {
            let r = self.outputs.write(&turn.out).await;
            r.map_err(|e| self.err_sink(e))?;
            turn.out.clear();
        }
        if repartition && turn.last_flush.elapsed() >= opts.flush_interval {
            self.flush_all().await?;
            turn.last_flush = Instant::now();
        }
        if turn.last_checkpoint.elapsed() >= opts.checkpoint_interval {
            self.checkpoint_all().await?;
            turn.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    /// Reads the merge's note from every checkpoint of the pipeline's topics, so partitions
    /// restored from older checkpoints do not emit windows again (see `merge.rs`).
    async fn learn_notes(&mut self) -> Result<(), RunnerError> {
        let mut blobs = Vec::new();
        for topic in self.cfg.source.topics.clone() {
            let info = self
                .client
                .topic(&topic)
                .await
                .map_err(|e| self.err_collector(e))?;
            let partitions = info.map(|i| i.partitions).unwrap_or_default();
            self.driver
                .topic_partitions
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
                if let Some((_, blob)) = got {
                    blobs.push(blob);
                }
            }
        }
        let marks = self.driver.learn_input_notes(blobs.iter().map(|b| &b[..]));
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
        let repartition = self.driver.repartition();
        let revoked = self.pending_revoked.clone();
        if !revoked.is_empty() {
            let r = self.outputs.checkpoint().await;
            r.map_err(|e| self.err_sink(e))?;
            self.driver.marks = self.outputs.file_marks();
            for tp in &revoked {
                let pid = PartitionId::new(tp.0.clone(), tp.1);
                if repartition {
                    // Ships what it holds and stores its checkpoint (the flush does both).
                    self.flush_one(&pid).await?;
                } else {
                    self.checkpoint_one(&pid).await?;
                }
                self.driver.revoke(&pid);
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
        let gone: Vec<PartitionId> = self
            .driver
            .upstreams
            .keys()
            .filter(|p| !held.contains(&(p.topic.clone(), p.partition)))
            .cloned()
            .collect();
        for pid in gone {
            self.driver.revoke(&pid);
        }
        if !self.pending_assigned.is_empty() {
            if repartition {
                self.learn_partition_counts().await?;
            } else {
                self.learn_notes().await?;
            }
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
            let pid = PartitionId::new(tp.0.clone(), tp.1);
            // A partition still set up was assigned again: it is restored from its checkpoint
            // like any other (what it holds was handed over).
            self.driver.revoke(&pid);
            let stored_at = restored.as_ref().map(|(o, _)| *o);
            let how = self.driver.assign(
                pid.clone(),
                restored.as_ref().map(|(_, b)| &b[..]),
                Some(stored_at.unwrap_or(start)),
                since_ms,
            );
            let at = match how {
                Assigned::Restored(_) | Assigned::RestoredWithoutOffset => {
                    let offset = stored_at.unwrap_or(start);
                    tracing::info!(
                        pipeline = self.cfg.name,
                        topic = tp.0,
                        partition = tp.1,
                        offset,
                        "state restored from checkpoint"
                    );
                    offset
                }
                Assigned::Unreadable(e) => {
                    // A checkpoint this build cannot read (another version, damage) must not
                    // be silently replaced: say so loudly and start from the group offset.
                    tracing::error!(pipeline = self.cfg.name, topic = tp.0, partition = tp.1, error = %e, "checkpoint unreadable; starting from the group's committed offset");
                    metrics::counter!("ferry_processor_checkpoints_unreadable_total").increment(1);
                    if let Some(u) = self.driver.upstream_mut(&pid) {
                        u.start = Some(start);
                        u.flushed = Some(start);
                    }
                    start
                }
                Assigned::Fresh => {
                    tracing::info!(
                        pipeline = self.cfg.name,
                        topic = tp.0,
                        partition = tp.1,
                        offset = start,
                        "no checkpoint; starting from the group's position"
                    );
                    start
                }
            };
            // Records of this partition polled before it was set up were ignored; read them
            // again.
            self.consumer.seek(&tp, at);
            self.pending_assigned.remove(0);
        }
        Ok(())
    }

    /// Stores one partition's checkpoint in the collector.
    async fn checkpoint_one(&mut self, pid: &PartitionId) -> Result<(), RunnerError> {
        let Some((offset, snapshot)) = self.driver.checkpoint_of(pid) else {
            return Ok(());
        };
        let member = self.consumer.member_id().unwrap_or_default().to_owned();
        match self
            .client
            .put_checkpoint(
                &self.group,
                &member,
                self.consumer.generation(),
                &pid.topic,
                pid.partition,
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
                tracing::warn!(pipeline = self.cfg.name, topic = pid.topic, partition = pid.partition, %message, "checkpoint refused: partition no longer ours");
                Ok(())
            }
            Err(e) => Err(self.err_collector(e)),
        }
    }

    async fn checkpoint_all(&mut self) -> Result<(), RunnerError> {
        let r = self.outputs.checkpoint().await;
        r.map_err(|e| self.err_sink(e))?;
        self.driver.marks = self.outputs.file_marks();
        if self.driver.repartition() {
            // Upstream instances store theirs at each flush.
            let owned: Vec<u32> = self.driver.owners.keys().copied().collect();
            for r in owned {
                self.checkpoint_owner(r).await?;
            }
            return Ok(());
        }
        let pids: Vec<PartitionId> = self.driver.upstreams.keys().cloned().collect();
        for pid in pids {
            self.checkpoint_one(&pid).await?;
        }
        Ok(())
    }
}

/// The repartition path (`repartition.rs`): upstream flushes, and the downstream owners of the
/// repartition topic's partitions.
impl Runner {
    /// Refreshes the input topics' partition counts.
    async fn learn_partition_counts(&mut self) -> Result<(), RunnerError> {
        for topic in self.cfg.source.topics.clone() {
            let info = self
                .client
                .topic(&topic)
                .await
                .map_err(|e| self.err_collector(e))?;
            if let Some(i) = info {
                self.driver
                    .topic_partitions
                    .insert(topic.clone(), i.partitions.len() as u32);
            }
        }
        Ok(())
    }

    /// Once every input topic exists: creates the repartition topic (as many partitions as the
    /// input topics together) if needed and joins the merge group. Tried at most every 500 ms.
    async fn ensure_repart(&mut self, now: bool) -> Result<(), RunnerError> {
        if self.rep.is_some()
            || (!now
                && self
                    .last_rep_attempt
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(500)))
        {
            return Ok(());
        }
        self.last_rep_attempt = Some(Instant::now());
        self.learn_partition_counts().await?;
        // Its partition count is fixed when it is created: as many as the input topics that
        // exist by then have together.
        if self.driver.topic_partitions.is_empty() {
            return Ok(());
        }
        let group = self.cfg.source.group_or(&self.cfg.name);
        let topic = repartition::topic_name(&group, &self.cfg.name);
        let want: u32 = self.driver.topic_partitions.values().sum::<u32>().max(1);
        let info = match self
            .client
            .topic(&topic)
            .await
            .map_err(|e| self.err_collector(e))?
        {
            Some(i) => i,
            None => match self.client.create_topic(&topic, want).await {
                Ok(i) => i,
                // Another member created it meanwhile.
                Err(ClientError::Http { status: 409, .. }) => self
                    .client
                    .topic(&topic)
                    .await
                    .map_err(|e| self.err_collector(e))?
                    .ok_or_else(|| RunnerError::Stopped {
                        pipeline: self.cfg.name.clone(),
                        message: format!("repartition topic {topic} vanished"),
                    })?,
                Err(e) => return Err(self.err_collector(e)),
            },
        };
        let partitions = (info.partitions.len() as u32).max(1);
        let merge_group = repartition::merge_group(&group);
        let consumer = Consumer::connect(
            self.client.clone(),
            ConsumerConfig {
                topics: vec![topic.clone()],
                group: Some(merge_group.clone()),
                start: StartPosition::Earliest,
                reset_offsets: false,
                session_timeout: self.session_timeout,
                max_fetch_bytes: 4 << 20,
                // Never waits: the input's poll paces the loop (it waits when idle), and a
                // busy input must not wait on a quiet repartition topic.
                poll_wait: Duration::ZERO,
                manual_release: true,
            },
        )
        .await
        .map_err(|e| self.err_collector(e))?;
        tracing::info!(
            pipeline = self.cfg.name,
            topic,
            partitions,
            group = merge_group,
            member = consumer.member_id(),
            "repartition: joined the merge group"
        );
        self.driver.rep_partitions = Some(partitions);
        self.rep = Some(Repart {
            topic,
            group: merge_group,
            consumer,
            producers: std::collections::HashMap::new(),
            pending_revoked: Vec::new(),
            pending_assigned: Vec::new(),
        });
        // The results files are cut back now, before anything is written, also when this
        // member is assigned no repartition partition (more members than partitions): what it
        // emitted after its last checkpoint before a crash is emitted again by their owners.
        self.learn_merge_notes().await?;
        Ok(())
    }

    /// Ships every instance's partials (see [`Runner::flush_one`]).
    async fn flush_all(&mut self) -> Result<(), RunnerError> {
        if !self.driver.repartition() {
            return Ok(());
        }
        let pids: Vec<PartitionId> = self.driver.upstreams.keys().cloned().collect();
        for pid in pids {
            self.flush_one(&pid).await?;
        }
        Ok(())
    }

    /// One upstream flush ([`Driver::build_flush`]): its checkpoint stored, then its partials
    /// posted. A refused checkpoint means the partition is no longer ours: it is dropped, its
    /// partials unposted.
    async fn flush_one(&mut self, pid: &PartitionId) -> Result<(), RunnerError> {
        if !self.driver.upstreams.contains_key(pid) {
            return Ok(());
        }
        if self.rep.is_none() {
            // We hold a partition of every input topic... or its topic exists, at least.
            self.ensure_repart(true).await?;
        }
        if self.rep.is_none() {
            return Err(RunnerError::Stopped {
                pipeline: self.cfg.name.clone(),
                message: "the repartition topic cannot be set up: no input topic exists".into(),
            });
        }
        if !self.driver.build_flush(pid, false) {
            return Ok(());
        }
        if let Some((offset, blob)) = self.driver.unstored(pid).cloned() {
            let member = self.consumer.member_id().unwrap_or_default().to_owned();
            match self
                .client
                .put_checkpoint(
                    &self.group,
                    &member,
                    self.consumer.generation(),
                    &pid.topic,
                    pid.partition,
                    offset,
                    blob,
                )
                .await
            {
                Ok(()) => {
                    self.report.checkpoints += 1;
                    self.driver.stored(pid);
                }
                Err(ClientError::Http {
                    status: 404 | 409,
                    message,
                    ..
                }) => {
                    tracing::warn!(pipeline = self.cfg.name, topic = pid.topic, partition = pid.partition, %message, "checkpoint refused: partition no longer ours; its partials are not shipped");
                    self.driver.revoke(pid);
                    return Ok(());
                }
                Err(e) => return Err(self.err_collector(e)),
            }
        }
        let Some(outbox) = self.driver.to_post(pid).cloned() else {
            return Ok(());
        };
        self.post_outbox(pid, &outbox).await?;
        self.driver.posted(pid);
        Ok(())
    }

    /// Posts an outbox's lines to their targets, as the (upstream, target) producers.
    async fn post_outbox(&mut self, up: &PartitionId, outbox: &Outbox) -> Result<(), RunnerError> {
        let (Some(rep), Some(partitions)) = (self.rep.as_mut(), self.driver.rep_partitions) else {
            return Ok(());
        };
        let group = self.cfg.source.group_or(&self.cfg.name);
        for &target in outbox.lines.keys() {
            let id = rep
                .producers
                .entry((up.clone(), target))
                .or_insert_with(|| {
                    repartition::producer_id(&group, &self.cfg.name, up, target, partitions)
                })
                .clone();
            for (seq, body) in outbox.bodies(target) {
                self.client
                    .post_lines_as(&rep.topic, body, false, &id, seq)
                    .await
                    .map_err(|source| RunnerError::Collector {
                        pipeline: self.cfg.name.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Restores newly assigned repartition partitions; checkpoints and releases revoked ones.
    async fn take_merge_rebalance(&mut self) -> Result<(), RunnerError> {
        let Some(rep) = self.rep.as_mut() else {
            return Ok(());
        };
        rep.pending_revoked.extend(rep.consumer.take_revoked());
        rep.pending_assigned.extend(rep.consumer.take_assigned());
        let revoked = rep.pending_revoked.clone();
        if !revoked.is_empty() {
            let r = self.outputs.checkpoint().await;
            r.map_err(|e| self.err_sink(e))?;
            self.driver.marks = self.outputs.file_marks();
            for (_, r) in &revoked {
                self.checkpoint_owner(*r).await?;
                self.driver.revoke_owner(*r);
            }
            if let Some(rep) = self.rep.as_mut() {
                rep.consumer
                    .release(&revoked)
                    .await
                    .map_err(|source| RunnerError::Collector {
                        pipeline: self.cfg.name.clone(),
                        source,
                    })?;
                rep.pending_revoked.clear();
            }
            tracing::info!(pipeline = self.cfg.name, partitions = ?revoked, "repartition: partitions handed over");
        }
        let Some(rep) = self.rep.as_mut() else {
            return Ok(());
        };
        let held: std::collections::BTreeSet<u32> = rep
            .consumer
            .assignment()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let gone: Vec<u32> = self
            .driver
            .owners
            .keys()
            .filter(|r| !held.contains(r))
            .copied()
            .collect();
        for r in gone {
            self.driver.revoke_owner(r);
        }
        if rep.pending_assigned.is_empty() {
            return Ok(());
        }
        self.learn_merge_notes().await?;
        let since_ms = ferry_core::now_ms();
        loop {
            let Some(rep) = self.rep.as_ref() else {
                return Ok(());
            };
            let Some(((topic, r), start)) = rep.pending_assigned.first().cloned() else {
                break;
            };
            let got = self
                .client
                .get_checkpoint(&rep.group, &topic, r)
                .await
                .map_err(|e| self.err_collector(e))?;
            // A partition still owned was assigned again: restored from its checkpoint.
            self.driver.revoke_owner(r);
            let (next, how) = self.driver.assign_owner(
                r,
                got.as_ref().map(|(o, b)| (Some(*o), &b[..])),
                Some(start),
                since_ms,
            );
            match &how {
                Assigned::Restored(offset) => {
                    tracing::info!(
                        pipeline = self.cfg.name,
                        topic,
                        partition = r,
                        offset,
                        "repartition: state restored from checkpoint"
                    );
                }
                Assigned::Unreadable(e) => {
                    tracing::error!(pipeline = self.cfg.name, topic, partition = r, error = %e, "repartition checkpoint unreadable; starting from the group's committed offset");
                    metrics::counter!("ferry_processor_checkpoints_unreadable_total").increment(1);
                }
                _ => {}
            }
            let Some(rep) = self.rep.as_mut() else {
                return Ok(());
            };
            rep.consumer.seek(&(topic, r), next.unwrap_or(start));
            rep.pending_assigned.remove(0);
            // Every newly owned partition is checkpointed before it emits: the checkpoint
            // carries where the results files stand now, so a member killed before its next
            // checkpoint cuts them back to here and its results since are emitted once, by the
            // next owner — also when it never stored a checkpoint before (the model test in
            // processor/tests/windows_model.rs found that case).
            let r2 = self.outputs.checkpoint().await;
            r2.map_err(|e| self.err_sink(e))?;
            self.driver.marks = self.outputs.file_marks();
            self.checkpoint_owner(r).await?;
        }
        Ok(())
    }

    /// Reads the merge's note from every checkpoint of the repartition topic (windows emitted,
    /// results files' lengths), and at the first assignment cuts the results files back.
    async fn learn_merge_notes(&mut self) -> Result<(), RunnerError> {
        let (Some(rep), Some(n)) = (self.rep.as_ref(), self.driver.rep_partitions) else {
            return Ok(());
        };
        let (group, topic) = (rep.group.clone(), rep.topic.clone());
        let mut blobs = Vec::new();
        for p in 0..n {
            let got = self
                .client
                .get_checkpoint(&group, &topic, p)
                .await
                .map_err(|e| self.err_collector(e))?;
            if let Some((_, blob)) = got {
                blobs.push(blob);
            }
        }
        let marks = self.driver.learn_owner_notes(blobs.iter().map(|b| &b[..]));
        if !self.rewound {
            let r = self.outputs.rewind_files(&marks).await;
            r.map_err(|e| self.err_sink(e))?;
            self.rewound = true;
        }
        Ok(())
    }

    /// Reads the owned repartition partitions and merges each line into its upstream's part.
    async fn merge_poll(&mut self, shutdown: &Shutdown) -> Result<(), RunnerError> {
        let Some(rep) = self.rep.as_mut() else {
            return Ok(());
        };
        let polled = tokio::select! {
            r = rep.consumer.poll(50_000) => r,
            _ = shutdown.wait() => return Ok(()),
        };
        let records = polled.map_err(|source| RunnerError::Collector {
            pipeline: self.cfg.name.clone(),
            source,
        })?;
        let now = ferry_core::now_ms();
        for rec in &records {
            // The collector dropped replays already (per-producer dedup): no sequence.
            match self
                .driver
                .apply(rec.partition, rec.offset, &rec.record.line, None, now)
            {
                Applied::Merged { late } => {
                    if late > 0 {
                        metrics::counter!("ferry_processor_late_partials_total").increment(late);
                    }
                }
                Applied::Unreadable(e) => {
                    tracing::warn!(pipeline = self.cfg.name, topic = rep.topic, partition = rec.partition, offset = rec.offset, error = %e, "repartition: unreadable line skipped");
                    metrics::counter!("ferry_processor_repartition_unreadable_total").increment(1);
                }
                Applied::Duplicate | Applied::Skipped => {}
            }
        }
        Ok(())
    }

    /// Stores an owned repartition partition's checkpoint ([`Driver::owner_checkpoint`]).
    async fn checkpoint_owner(&mut self, r: u32) -> Result<(), RunnerError> {
        let Some(rep) = self.rep.as_ref() else {
            return Ok(());
        };
        let Some((offset, blob)) = self.driver.owner_checkpoint(r) else {
            return Ok(());
        };
        let member = rep.consumer.member_id().unwrap_or_default().to_owned();
        match self
            .client
            .put_checkpoint(
                &rep.group,
                &member,
                rep.consumer.generation(),
                &rep.topic,
                r,
                offset,
                blob,
            )
            .await
        {
            Ok(()) => {
                self.report.checkpoints += 1;
                Ok(())
            }
            Err(ClientError::Http {
                status: 404 | 409,
                message,
                ..
            }) => {
                tracing::warn!(pipeline = self.cfg.name, partition = r, %message, "repartition checkpoint refused: partition no longer ours");
                Ok(())
            }
            Err(e) => Err(self.err_collector(e)),
        }
    }
}
