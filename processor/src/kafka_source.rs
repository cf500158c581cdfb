//! Runs a pipeline on Kafka topics as a member of a Kafka consumer group, with exactly-once
//! results across restarts and rebalances: the Kafka twin of [`crate::runner`].
//!
//! The unit of state is the input partition: each partition this member is assigned gets its own
//! [`Pipeline`], whose checkpoint — the snapshot, which carries the input offset it reflects — is
//! stored in a Kafka topic ([`crate::kafka_checkpoints`]) where any member of the group finds it.
//!
//! - **Assigned** a partition: read its latest checkpoint (with `start: committed`), restore the
//!   pipeline, and start fetching at the checkpoint's offset; without a checkpoint, at the group's
//!   committed offset, else at the beginning. Records below the offset are skipped by the pipeline.
//! - **Revoked** (the classic, eager protocol revokes before anyone else is given the partition):
//!   pending results written, sinks made durable, the partition's checkpoint stored with
//!   `acks=all` and its delivery report awaited, the offset committed; only then does the
//!   rebalance go on. A partition *lost* (our session expired, so someone else may own it
//!   already) is dropped without a checkpoint: its new owner restores the previous one.
//! - **Every `checkpoint_interval` and at shutdown**: results written, sinks durable, then every
//!   partition's checkpoint, then the offsets committed to the group (for Kafka's lag tools; on
//!   restore the checkpoint wins).
//!
//! With `source.repartition` (the default, unless `partitioned_by_key`) the instances are
//! upstreams of the repartition hop instead of partials of one in-process merge: they ship
//! their deltas through a Kafka repartition topic, and this member also joins the merge group
//! and merges the partitions of that topic it owns (`kafka_repartition.rs`, the second
//! `impl Worker` below); both consumers are polled by the same thread.
//!
//! All of it runs on one dedicated thread that owns a [`BaseConsumer`]: librdkafka calls the
//! rebalance callback inside `poll`, on that thread, so the callback can reach the per-partition
//! state (kept in the consumer's context behind a mutex that is never held across `poll`) and
//! hand over exactly what was processed. Sinks and the checkpoint producer are async; the thread
//! drives them with the runtime's [`Handle::block_on`].
//!
//! Failures: a message error (a broker down, a TLS handshake refused) is logged and counted and
//! polling goes on (librdkafka reconnects); a record that does not parse is the pipeline's
//! `on_parse_error`; a Kafka or collector topic sink that fails is retried with capped, jittered
//! backoff, processing paused meanwhile; a checkpoint that fails is retried at the next turn. None
//! of these ends the run. What ends it: shutdown, or a sink that cannot succeed (a file that
//! cannot be written, a webhook that keeps refusing), as with the collector source.

use crate::config::{OnParseError, PipelineConfig, SinkConfig, StartAt};
use crate::driver::{Applied, Assigned, Driver};
use crate::kafka_checkpoints::{self, CheckpointStoreError, CheckpointTopic};
use crate::kafka_repartition::{self, RepartitionTopic};
use crate::pipeline::{Emission, PartitionId};
use crate::repartition;
use crate::runner::{FIRST_BACKOFF, MAX_BACKOFF, RunnerError, RunnerOptions, RunnerReport};
use crate::sink::{Outputs, SinkError, TopicProducer};
use bytes::Bytes;
use ferry_core::backoff::Backoff;
use ferry_core::record::Record;
use ferry_core::shutdown::Shutdown;
use ferry_kafka::{KafkaConfig, KafkaSink, StartPosition, mapping};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How long one `poll` waits when nothing is buffered.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Records processed per turn at most before ticks, sink writes and checkpoints get their turn.
const MAX_RECORDS_PER_TURN: usize = 50_000;
/// How long a revocation, or the stop, keeps retrying its checkpoint before it gives up. Giving
/// up is safe: the next owner restores the previous checkpoint and recomputes from there.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long shutdown waits for the source thread (final checkpoint, leaving the group).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a lag lookup (the partition's high watermark) may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a lookup of a topic's partition count may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a partition count that could not be learned is asked for again.
const METADATA_RETRY: Duration = Duration::from_secs(5);

/// The `topic` sink, `late_topic` and `dead_letter_topic` of a Kafka-source pipeline: produced
/// to the Kafka topic the source's `kafka:` section maps the ferry topic to, each line returning
/// only once Kafka acknowledged it.
pub struct KafkaTopicProducer {
    sink: KafkaSink,
    kafka: KafkaConfig,
}

impl KafkaTopicProducer {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, ferry_kafka::KafkaError> {
        Ok(Self {
            sink: KafkaSink::new(kafka)?,
            kafka: kafka.clone(),
        })
    }
}

impl TopicProducer for KafkaTopicProducer {
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        lines: Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let records: Vec<Record> = lines.into_iter().map(Record::from_line).collect();
            self.sink
                .send_records(
                    &self.kafka.kafka_topic(topic),
                    &records,
                    None,
                    ferry_core::now_ms(),
                )
                .await
                .map(|_| ())
                .map_err(|e| ferry_core::error_chain(&e))
        })
    }
}

/// Whether the pipeline writes to any topic (and so needs a [`TopicProducer`]).
fn needs_topic_producer(cfg: &PipelineConfig) -> bool {
    let topic_sink = |s: &SinkConfig| matches!(s, SinkConfig::Topic(_));
    cfg.sinks.iter().any(topic_sink)
        || cfg.alerts.iter().any(|a| topic_sink(&a.sink))
        || cfg.late_topic.is_some()
        || matches!(cfg.on_parse_error, OnParseError::DeadLetter(_))
}

/// Runs `cfg` (whose source has a `kafka:` section) until `shutdown`, then writes its results,
/// checkpoints every partition and leaves the group.
pub async fn run(
    cfg: PipelineConfig,
    opts: RunnerOptions,
    shutdown: Shutdown,
) -> Result<RunnerReport, RunnerError> {
    let name = cfg.name.clone();
    let stopped = |message: String| RunnerError::Stopped {
        pipeline: name.clone(),
        message,
    };
    let kerr = |source| RunnerError::Kafka {
        pipeline: name.clone(),
        source: Box::new(source),
    };
    let kafka = cfg
        .source
        .kafka
        .clone()
        .ok_or_else(|| stopped("the source has no kafka: section".into()))?;
    let group = cfg.source.group_or(&cfg.name);
    let checkpoint_topic = cfg
        .source
        .checkpoint_topic(&group)
        .ok_or_else(|| stopped("the source has no kafka: section".into()))?;
    let producer: Option<Arc<dyn TopicProducer>> = if needs_topic_producer(&cfg) {
        Some(Arc::new(KafkaTopicProducer::new(&kafka).map_err(kerr)?))
    } else {
        None
    };
    let outputs = Outputs::new(&cfg, producer)
        .await
        .map_err(|source| RunnerError::Sink {
            pipeline: name.clone(),
            source,
        })?;
    let checkpoints = CheckpointTopic::new(&kafka, &checkpoint_topic, &group).map_err(kerr)?;
    let mut admin = kafka.client_config();
    kafka.apply_options(&mut admin);
    let topics: Vec<String> = cfg
        .source
        .topics
        .iter()
        .map(|t| kafka.kafka_topic(t))
        .collect();
    let mut client =
        ferry_kafka::consumer::group_client_config(&kafka, &group, StartPosition::Earliest);
    // The design (see the module docs), set after `options` on purpose.
    client.set("enable.partition.eof", "false");
    // A topic created after the processor started (the first producer auto-creates it) is
    // noticed within seconds, not librdkafka's default 5 minutes; `options` can change it.
    if !kafka
        .options
        .contains_key("topic.metadata.refresh.interval.ms")
    {
        client.set("topic.metadata.refresh.interval.ms", "5000");
    }
    let worker = Worker::new(
        cfg,
        topics.clone(),
        group.clone(),
        outputs,
        Cluster {
            kafka: kafka.clone(),
            admin: admin.clone(),
            checkpoints,
        },
        opts,
        shutdown.clone(),
    );
    let consumer: BaseConsumer<SourceContext> = client
        .create_with_context(SourceContext {
            worker: Mutex::new(worker),
        })
        .map_err(|e| kerr(ferry_kafka::KafkaError::Config(e)))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name(format!("kafka-{name}"))
        .spawn(move || {
            let _ = tx.send(start_and_drive(consumer, &topics, &admin, &thread_shutdown));
        })
        .map_err(|e| stopped(format!("cannot start the source thread: {e}")))?;
    tokio::pin!(rx);
    let outcome = tokio::select! {
        r = &mut rx => r,
        _ = shutdown.wait() => match tokio::time::timeout(STOP_TIMEOUT, &mut rx).await {
            Ok(r) => r,
            Err(_) => return Err(stopped(format!("did not stop within {STOP_TIMEOUT:?}"))),
        },
    };
    outcome.map_err(|_| stopped("the source thread ended without a result".into()))?
}

/// The source thread, first: the checkpoint topic made sure of (waiting for the brokers, as for
/// any outage), then the subscription; then [`drive`].
fn start_and_drive(
    consumer: BaseConsumer<SourceContext>,
    topics: &[String],
    admin: &rdkafka::ClientConfig,
    shutdown: &Shutdown,
) -> Result<RunnerReport, RunnerError> {
    let ctx = consumer.context().clone();
    let (name, group, checkpoint_topic) = {
        let w = ctx.worker();
        (
            w.cfg.name.clone(),
            w.group.clone(),
            w.checkpoints.topic().to_owned(),
        )
    };
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        let ready = {
            let w = ctx.worker();
            w.checkpoints.ensure_topic(admin, &w.rt)
        };
        match ready {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(pipeline = name, error = %ferry_core::error_chain(&e), "checkpoint topic not ready; retrying");
                metrics::counter!("ferry_processor_retries_total").increment(1);
                if !ctx.worker().sleep(backoff.next_delay(), None) {
                    return Ok(RunnerReport::default());
                }
            }
        }
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(|e| RunnerError::Kafka {
        pipeline: name.clone(),
        source: Box::new(ferry_kafka::KafkaError::Consumer(e)),
    })?;
    tracing::info!(
        pipeline = name,
        group,
        topics = ?topics,
        checkpoint_topic,
        "processor pipeline subscribed to kafka"
    );
    drive(consumer, shutdown)
}

/// The source thread: polls, processes, checkpoints; at shutdown stores the last checkpoints,
/// leaves the group and closes the consumer.
fn drive(
    consumer: BaseConsumer<SourceContext>,
    shutdown: &Shutdown,
) -> Result<RunnerReport, RunnerError> {
    let ctx = consumer.context().clone();
    let mut result = Ok(());
    // With repartition: the consumer of the merge group, made once the repartition topic is.
    let mut merge: Option<BaseConsumer<MergeContext>> = None;
    while !shutdown.is_triggered() {
        let mut wait = POLL_WAIT;
        for _ in 0..MAX_RECORDS_PER_TURN {
            // The worker is locked per message, never across `poll`: the rebalance callback
            // runs inside `poll` and locks it itself.
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => ctx.worker().process(&m),
                Some(Err(e)) => {
                    ctx.worker().poll_error(&e);
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if let Some(mc) = &merge {
            for _ in 0..MAX_RECORDS_PER_TURN {
                match mc.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => ctx.worker().apply_partial(&m),
                    Some(Err(e)) => {
                        ctx.worker().poll_error(&e);
                        break;
                    }
                }
            }
        }
        let mut w = ctx.worker();
        w.turn(&consumer, merge.as_ref());
        if let Some(e) = w.fatal.take() {
            result = Err(e);
            break;
        }
        if merge.is_none() && w.rep.is_some() {
            match w.merge_consumer(&ctx) {
                Ok(mc) => merge = Some(mc),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    let last = ctx.worker().stop(&consumer, merge.as_ref());
    let report = ctx.worker().report.clone();
    // Leaving the groups revokes the partitions inside the closes below; nothing is left to
    // hand over by then (stop dropped every instance and owner).
    if let Some(mc) = merge {
        mc.unsubscribe();
        drop(mc);
    }
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!(pipeline = ctx.worker().cfg.name, "left the kafka group");
    result?;
    last?;
    Ok(report)
}

/// The consumer's context: the worker, reachable from the rebalance callback.
struct SourceContext {
    /// Locked by the poll loop per message and per turn, and by the rebalance callback, all on
    /// the source thread: it is never contended, only shared with the callback.
    worker: Mutex<Worker>,
}

impl SourceContext {
    fn worker(&self) -> MutexGuard<'_, Worker> {
        self.worker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    /// Replaces rdkafka's default so that newly assigned partitions start at their checkpoint's
    /// offset (set in the list before it is assigned) and revoked ones are handed over first.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        rebalance(self, consumer, err, tpl);
    }
}

/// The merge consumer's context (repartition): its rebalances reach the same worker.
struct MergeContext {
    source: Arc<SourceContext>,
}

impl ClientContext for MergeContext {}

impl ConsumerContext for MergeContext {
    /// Owned repartition partitions: restored from their checkpoints (the offset set in the
    /// list), and checkpointed before they are handed over.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        rebalance(self, consumer, err, tpl);
    }
}

/// What a rebalance of one of the worker's two consumers does to the worker.
trait Side: ConsumerContext + Sized {
    /// Names the consumer in the logs.
    const WHAT: &'static str;
    fn worker(&self) -> MutexGuard<'_, Worker>;
    /// Sets up the partitions of `tpl` (their start offsets set in it).
    fn assign(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList);
    /// Hands the partitions of `tpl` over (unless the assignment was lost) and drops them.
    fn revoke(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList);
    /// Everything held.
    fn held(w: &Worker) -> TopicPartitionList;
    /// Drops the partitions of `tpl` without a hand-over.
    fn drop_state(w: &mut Worker, tpl: &TopicPartitionList);
}

impl Side for SourceContext {
    const WHAT: &'static str = "input";

    fn worker(&self) -> MutexGuard<'_, Worker> {
        SourceContext::worker(self)
    }

    fn assign(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        w.assign(consumer, tpl);
    }

    fn revoke(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        w.revoke(consumer, tpl);
    }

    fn held(w: &Worker) -> TopicPartitionList {
        w.held()
    }

    fn drop_state(w: &mut Worker, tpl: &TopicPartitionList) {
        let parts = partitions(tpl);
        let Worker {
            instances, driver, ..
        } = w;
        instances.retain(|i| {
            let gone = parts.contains(&(i.topic.clone(), i.partition));
            if gone {
                driver.revoke(&i.pid);
            }
            !gone
        });
    }
}

impl Side for MergeContext {
    const WHAT: &'static str = "repartition";

    fn worker(&self) -> MutexGuard<'_, Worker> {
        self.source.worker()
    }

    fn assign(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        w.assign_owners(consumer, tpl);
    }

    fn revoke(w: &mut Worker, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        w.revoke_owners(consumer.assignment_lost(), tpl);
    }

    fn held(w: &Worker) -> TopicPartitionList {
        w.owned()
    }

    fn drop_state(w: &mut Worker, tpl: &TopicPartitionList) {
        for (_, p) in partitions(tpl) {
            if let Ok(r) = u32::try_from(p) {
                w.driver.revoke_owner(r);
            }
        }
    }
}

/// A rebalance callback of either consumer: assigned partitions set up before they are
/// assigned, revoked ones handed over before they are unassigned (eager or cooperative).
fn rebalance<S: Side>(
    ctx: &S,
    consumer: &BaseConsumer<S>,
    err: RDKafkaRespErr,
    tpl: &mut TopicPartitionList,
) {
    let cooperative = matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    );
    let mut w = ctx.worker();
    let done = match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
            S::assign(&mut w, consumer, tpl);
            if cooperative {
                consumer.incremental_assign(tpl)
            } else {
                consumer.assign(tpl)
            }
        }
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
            S::revoke(&mut w, consumer, tpl);
            if cooperative {
                consumer.incremental_unassign(tpl)
            } else {
                consumer.unassign()
            }
        }
        other => {
            let code = rdkafka::error::RDKafkaErrorCode::from(other);
            tracing::warn!(pipeline = w.cfg.name, consumer = S::WHAT, error = %code, "kafka rebalance error; giving up the assignment");
            let all = S::held(&w);
            S::revoke(&mut w, consumer, &all);
            consumer.unassign()
        }
    };
    if let Err(e) = done {
        // librdkafka refused the (un)assignment: without it we fetch nothing for these
        // partitions, so drop their state rather than checkpoint it later.
        tracing::error!(pipeline = w.cfg.name, consumer = S::WHAT, error = %e, "kafka (un)assign failed");
        S::drop_state(&mut w, tpl);
    }
}

/// `(topic, partition)` of each element.
fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// One assigned partition: its Kafka names (its state is the driver's upstream `pid`).
struct Instance {
    topic: String,
    partition: i32,
    pid: PartitionId,
    /// Its checkpoint key (`group/topic/partition`).
    key: String,
}

/// Said while the in-process merge waits for every partition.
const HINT: &str = "on Kafka, several members of one group need the topic keyed by the group-by field: source.partitioned_by_key: true";

/// Why a checkpoint was not stored.
#[derive(Debug, thiserror::Error)]
enum CheckpointFailure {
    #[error("results could not be written to the sinks")]
    Unwritten,
    #[error("sinks could not be made durable: {0}")]
    NotDurable(#[source] Box<SinkError>),
    #[error("a sink failed for good (the run ends)")]
    SinkFailed,
    #[error("the assignment was lost (session expired)")]
    Lost,
    #[error("partials not acknowledged by the repartition topic: {0}")]
    Post(String),
    #[error(transparent)]
    Store(#[from] CheckpointStoreError),
}

/// Everything the source thread keeps between polls (see the module docs).
struct Worker {
    cfg: PipelineConfig,
    /// The Kafka topics subscribed to.
    topics: Vec<String>,
    next_metadata: Instant,
    /// Every decision about the partitions' state (`driver.rs`); its `topic_partitions` are
    /// learned at each assignment (and retried every [`METADATA_RETRY`] while unknown).
    driver: Driver,
    /// The results files were cut back to the checkpoints' marks (once, at the first assignment).
    rewound: bool,
    group: String,
    opts: RunnerOptions,
    shutdown: Shutdown,
    /// Drives the async sinks and the checkpoint producer from this (non-runtime) thread.
    rt: Handle,
    /// The assigned partitions. Few per member, so a vector searched linearly (with the last
    /// hit tried first) beats a map keyed by owned strings.
    instances: Vec<Instance>,
    last_hit: usize,
    outputs: Outputs,
    checkpoints: CheckpointTopic,
    /// Emissions not yet written to the sinks.
    out: Vec<Emission>,
    last_tick: Instant,
    next_checkpoint: Instant,
    checkpoint_backoff: Backoff,
    /// A sink failure that ends the run, set wherever it happens (also inside the callback).
    fatal: Option<RunnerError>,
    report: RunnerReport,
    /// Cached metric handles.
    consumed: metrics::Counter,
    stored: metrics::Counter,
    checkpoint_errors: metrics::Counter,
    retries: metrics::Counter,
    /// The cluster (for the repartition topic and the merge consumer) and its admin config.
    kafka: KafkaConfig,
    admin: rdkafka::ClientConfig,
    /// With repartition: the repartition topic (`kafka_repartition.rs`), set up once every
    /// input topic's partition count is known.
    rep: Option<Rep>,
    next_rep_attempt: Instant,
    last_flush: Instant,
}

/// The downstream half of a repartitioned pipeline on Kafka.
struct Rep {
    topic: RepartitionTopic,
    /// The merge group (`repartition::merge_group`).
    group: String,
}

/// What the worker reaches the cluster with: its config (for the repartition topic and the
/// merge consumer), the admin client's config, and the group's checkpoint topic.
struct Cluster {
    kafka: KafkaConfig,
    admin: rdkafka::ClientConfig,
    checkpoints: CheckpointTopic,
}

impl Worker {
    fn new(
        cfg: PipelineConfig,
        topics: Vec<String>,
        group: String,
        outputs: Outputs,
        cluster: Cluster,
        opts: RunnerOptions,
        shutdown: Shutdown,
    ) -> Self {
        let Cluster {
            kafka,
            admin,
            checkpoints,
        } = cluster;
        let pipeline = cfg.name.clone();
        Self {
            rep: None,
            next_rep_attempt: Instant::now(),
            last_flush: Instant::now(),
            kafka,
            admin,
            consumed: metrics::counter!("ferry_kafka_records_consumed_total"),
            stored: metrics::counter!("ferry_processor_checkpoints_total", "pipeline" => pipeline.clone()),
            checkpoint_errors: metrics::counter!("ferry_processor_checkpoint_errors_total", "pipeline" => pipeline),
            retries: metrics::counter!("ferry_processor_retries_total"),
            next_checkpoint: Instant::now() + opts.checkpoint_interval,
            driver: {
                let mut d = Driver::new(cfg.clone(), true, HINT);
                d.topics = topics.clone();
                d
            },
            cfg,
            topics,
            next_metadata: Instant::now(),
            rewound: false,
            group,
            opts,
            shutdown,
            rt: Handle::current(),
            instances: Vec::new(),
            last_hit: 0,
            outputs,
            checkpoints,
            out: Vec::new(),
            last_tick: Instant::now(),
            checkpoint_backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            fatal: None,
            report: RunnerReport::default(),
        }
    }

    fn find(&mut self, topic: &str, partition: i32) -> Option<usize> {
        let hit = |i: &Instance| i.partition == partition && i.topic == topic;
        if self.instances.get(self.last_hit).is_some_and(hit) {
            return Some(self.last_hit);
        }
        let i = self.instances.iter().position(hit)?;
        self.last_hit = i;
        Some(i)
    }

    /// The partitions held now, as a list (for an error rebalance that gives them all up).
    fn held(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for i in &self.instances {
            tpl.add_partition(&i.topic, i.partition);
        }
        tpl
    }

    /// One record: decoded (any message is a record), then the partition's pipeline.
    fn process(&mut self, m: &BorrowedMessage<'_>) {
        let Some(i) = self.find(m.topic(), m.partition()) else {
            // Not set up (an assignment made while a checkpoint could not be read at
            // shutdown): never processed, never checkpointed, so its next owner reads it.
            tracing::debug!(
                topic = m.topic(),
                partition = m.partition(),
                "record of a partition without state; skipped"
            );
            return;
        };
        let Ok(offset) = u64::try_from(m.offset()) else {
            return;
        };
        let ts = m.timestamp().to_millis();
        let decoded = mapping::decode(m.payload(), ts, m.headers());
        if decoded.malformed_headers > 0 {
            metrics::counter!("ferry_kafka_malformed_headers_total")
                .increment(u64::from(decoded.malformed_headers));
        }
        let now = ferry_core::now_ms();
        // The message timestamp is the record's event time when the pipeline has none of its
        // own (`decode` puts it there); it is also the fallback "ingest" time.
        let ingest = ts.unwrap_or(now);
        let pid = &self.instances[i].pid;
        let Some(u) = self.driver.upstream_mut(pid) else {
            return;
        };
        u.pipeline
            .process(pid, offset, &decoded.record, ingest, now, &mut self.out);
        self.report.records += 1;
        self.consumed.increment(1);
    }

    fn poll_error(&mut self, e: &rdkafka::error::KafkaError) {
        let kind = e
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |c| format!("{c:?}"));
        metrics::counter!("ferry_processor_kafka_errors_total", "pipeline" => self.cfg.name.clone(), "kind" => kind)
            .increment(1);
        tracing::warn!(pipeline = self.cfg.name, error = %e, "kafka consumer error; still polling");
    }

    /// After each poll: ticks, results out, a checkpoint when one is due.
    fn turn(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        merge: Option<&BaseConsumer<MergeContext>>,
    ) {
        let now = ferry_core::now_ms();
        let tick = self.last_tick.elapsed() >= self.opts.tick;
        if tick {
            self.last_tick = Instant::now();
        }
        if self
            .topics
            .iter()
            .any(|t| !self.driver.topic_partitions.contains_key(t))
            && Instant::now() >= self.next_metadata
        {
            self.learn_partition_counts(consumer);
        }
        self.driver.advance(now, tick, &mut self.out);
        if self.driver.repartition() {
            if self.rep.is_none() && Instant::now() >= self.next_rep_attempt {
                self.ensure_rep();
            }
            self.ship_due(consumer);
        }
        if !self.flush(None) {
            return;
        }
        if Instant::now() < self.next_checkpoint {
            return;
        }
        let done = if self.driver.repartition() {
            // Upstreams store theirs at each flush; the owners' are due.
            let lost = merge.is_some_and(|m| m.assignment_lost());
            let r = self.checkpoint_owners(lost, None, None);
            if r.is_ok()
                && let Some(m) = merge
            {
                kafka_repartition::commit_for_lag(m, &self.owner_offsets());
            }
            r
        } else {
            self.checkpoint(consumer, None, CommitMode::Async, None)
        };
        match done {
            Ok(_) => {
                self.next_checkpoint = Instant::now() + self.opts.checkpoint_interval;
                self.checkpoint_backoff.reset();
                self.update_lag();
            }
            Err(e) => {
                tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), "checkpoint not stored; retrying");
                self.checkpoint_errors.increment(1);
                self.next_checkpoint = Instant::now() + self.checkpoint_backoff.next_delay();
            }
        }
    }

    /// Asks the brokers how many partitions each subscribed topic has (a topic not created yet
    /// stays unknown, and results wait).
    fn learn_partition_counts(&mut self, consumer: &BaseConsumer<SourceContext>) {
        self.next_metadata = Instant::now() + METADATA_RETRY;
        for topic in self.topics.clone() {
            match consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT) {
                Ok(md) => {
                    let n = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len() as u32);
                    if n > 0 {
                        self.driver.topic_partitions.insert(topic, n);
                    }
                }
                Err(e) => {
                    tracing::debug!(pipeline = self.cfg.name, topic, error = %e, "partition count not known yet");
                }
            }
        }
    }

    /// Writes pending emissions. A sink that may recover is retried with capped, jittered
    /// backoff until it does, until `deadline` if given, else until shutdown; one that cannot
    /// sets `fatal`. Returns whether everything was written.
    fn flush(&mut self, deadline: Option<Instant>) -> bool {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        while !self.out.is_empty() {
            let r = self.rt.block_on(self.outputs.write(&self.out));
            match r {
                Ok(()) => self.out.clear(),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), "sink unavailable; retrying");
                    self.retries.increment(1);
                    let give_up = match deadline {
                        Some(d) => Instant::now() >= d,
                        None => self.shutdown.is_triggered(),
                    };
                    if give_up || !self.sleep(backoff.next_delay(), deadline) {
                        return false;
                    }
                }
                Err(source) => {
                    self.fatal.get_or_insert(RunnerError::Sink {
                        pipeline: self.cfg.name.clone(),
                        source,
                    });
                    return false;
                }
            }
        }
        true
    }

    /// Sleeps `d` in short steps; false if shutdown (without a deadline) or the deadline cut it.
    fn sleep(&self, d: Duration, deadline: Option<Instant>) -> bool {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            match deadline {
                Some(dl) if now >= dl => return false,
                None if self.shutdown.is_triggered() => return false,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(50).min(until - now));
        }
    }

    /// Results written, sinks durable, then the checkpoints of `only` (or of every partition)
    /// stored and acknowledged, then their offsets committed to the group. Returns how many
    /// checkpoints were stored.
    fn checkpoint(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        only: Option<&[(String, i32)]>,
        commit: CommitMode,
        deadline: Option<Instant>,
    ) -> Result<usize, CheckpointFailure> {
        self.make_durable(deadline)?;
        // A member whose session expired may still be running: it must not overwrite what the
        // partition's new owner stores (see docs/kafka.md on zombies).
        if consumer.assignment_lost() {
            return Err(CheckpointFailure::Lost);
        }
        let mut items = Vec::new();
        let mut offsets = TopicPartitionList::new();
        for inst in &self.instances {
            if only.is_some_and(|o| {
                !o.iter()
                    .any(|(t, p)| *t == inst.topic && *p == inst.partition)
            }) {
                continue;
            }
            // Nothing processed since it was set up: its stored checkpoint (if any) still holds.
            let Some((next, blob)) = self.driver.checkpoint_of(&inst.pid) else {
                continue;
            };
            items.push((inst.key.clone(), blob));
            if let Ok(o) = i64::try_from(next) {
                let _ =
                    offsets.add_partition_offset(&inst.topic, inst.partition, Offset::Offset(o));
            }
        }
        if items.is_empty() {
            return Ok(0);
        }
        let r = self.rt.block_on(self.checkpoints.store(&items));
        r?;
        self.report.checkpoints += items.len() as u64;
        self.stored.increment(items.len() as u64);
        if let Err(e) = consumer.commit(&offsets, commit) {
            // Only lag tools read these; the checkpoint just stored is what a restore uses.
            tracing::debug!(pipeline = self.cfg.name, error = %e, "offset commit failed");
        }
        Ok(items.len())
    }

    /// Results written and the sinks made durable; `marks` then says where the files stand.
    fn make_durable(&mut self, deadline: Option<Instant>) -> Result<(), CheckpointFailure> {
        if !self.flush(deadline) {
            return Err(if self.fatal.is_some() {
                CheckpointFailure::SinkFailed
            } else {
                CheckpointFailure::Unwritten
            });
        }
        let r = self.rt.block_on(self.outputs.checkpoint());
        match r {
            Ok(()) => {
                self.driver.marks = self.outputs.file_marks();
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(CheckpointFailure::NotDurable(Box::new(e))),
            Err(source) => {
                self.fatal.get_or_insert(RunnerError::Sink {
                    pipeline: self.cfg.name.clone(),
                    source,
                });
                Err(CheckpointFailure::SinkFailed)
            }
        }
    }

    /// `ferry_processor_kafka_lag{pipeline,topic,partition}`: records behind the partition's
    /// end, looked up once per checkpoint (one request for all partitions).
    fn update_lag(&self) {
        let held: Vec<(String, i32, u64)> = self
            .instances
            .iter()
            .filter_map(|i| {
                let next = self.driver.upstreams.get(&i.pid)?.next_offset()?;
                Some((i.topic.clone(), i.partition, next))
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let parts: Vec<(String, i32)> = held.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let Ok(ends) = self.checkpoints.end_offsets(&parts, LAG_TIMEOUT) else {
            return;
        };
        for ((topic, partition, next), end) in held.into_iter().zip(ends) {
            let Some(end) = end else {
                continue;
            };
            let lag = (end - i64::try_from(next).unwrap_or(end)).max(0);
            metrics::gauge!("ferry_processor_kafka_lag", "pipeline" => self.cfg.name.clone(), "topic" => topic, "partition" => partition.to_string())
                .set(lag as f64);
        }
    }

    /// Sets up newly assigned partitions: restores each from its checkpoint and sets the offset
    /// it starts from in `tpl` (which is then assigned).
    fn assign(&mut self, consumer: &BaseConsumer<SourceContext>, tpl: &mut TopicPartitionList) {
        let parts = partitions(tpl);
        let keys: Vec<String> = parts
            .iter()
            .map(|(t, p)| kafka_checkpoints::key(&self.group, t, *p))
            .collect();
        self.learn_partition_counts(consumer);
        // Every partition's checkpoint, not only the assigned ones': their notes say which
        // windows were emitted with which partition's partial (so that a partition restored
        // from an older checkpoint emits nothing twice) and where the results files stood.
        let mut wanted = keys.clone();
        for (topic, n) in &self.driver.topic_partitions {
            for p in 0..*n {
                let k = kafka_checkpoints::key(&self.group, topic, p as i32);
                if !wanted.contains(&k) {
                    wanted.push(k);
                }
            }
        }
        let restored = if self.cfg.source.start == StartAt::Committed {
            match self.load_retrying(&wanted) {
                Some(r) => r,
                None => {
                    tracing::warn!(
                        pipeline = self.cfg.name,
                        "stopping before the checkpoints could be read; the partitions stay untouched"
                    );
                    return;
                }
            }
        } else {
            Default::default()
        };
        let repartition = self.driver.repartition();
        // With repartition the owners' checkpoints carry the notes (`assign_owners`).
        if !repartition {
            let marks = self
                .driver
                .learn_input_notes(restored.values().map(Vec::as_slice));
            if !self.rewound && self.cfg.source.start == StartAt::Committed {
                // Before anything is written: results emitted after the last checkpoint are
                // emitted again, so the files are cut back to where that checkpoint saw them.
                let r = self.rt.block_on(self.outputs.rewind_files(&marks));
                match r {
                    Ok(_) => self.rewound = true,
                    Err(source) => {
                        self.fatal.get_or_insert(RunnerError::Sink {
                            pipeline: self.cfg.name.clone(),
                            source,
                        });
                    }
                }
            }
        }
        let since_ms = ferry_core::now_ms();
        for ((topic, partition), key) in parts.into_iter().zip(keys) {
            let pid = PartitionId::new(topic.clone(), u32::try_from(partition).unwrap_or(0));
            let held = self.find(&topic, partition).is_some();
            let how = self.driver.assign(
                pid.clone(),
                restored.get(&key).map(Vec::as_slice),
                None,
                since_ms,
            );
            let at = match how {
                Assigned::Restored(o) => {
                    if !held {
                        tracing::info!(
                            pipeline = self.cfg.name,
                            topic,
                            partition,
                            offset = o,
                            "state restored from checkpoint"
                        );
                    }
                    i64::try_from(o).map_or(Offset::Stored, Offset::Offset)
                }
                // Still held (a cooperative rebalance keeps what it does not move), or a
                // checkpoint stored before anything was processed.
                Assigned::RestoredWithoutOffset => Offset::Stored,
                Assigned::Fresh if held => Offset::Stored,
                Assigned::Fresh => {
                    let at = self.start_offset(consumer, &topic, partition);
                    tracing::info!(pipeline = self.cfg.name, topic, partition, start = ?at, "no checkpoint; starting from the group's position");
                    at
                }
                Assigned::Unreadable(e) => {
                    // A checkpoint this build cannot read (another version, another window
                    // config, damage) must not be silently replaced.
                    tracing::error!(pipeline = self.cfg.name, topic, partition, error = %e, "checkpoint unreadable; starting from the group's committed offset");
                    metrics::counter!("ferry_processor_checkpoints_unreadable_total").increment(1);
                    Offset::Stored
                }
            };
            let _ = tpl.set_partition_offset(&topic, partition, at);
            if !held {
                self.instances.push(Instance {
                    topic,
                    partition,
                    pid,
                    key,
                });
            }
        }
        if repartition && self.rep.is_none() {
            self.ensure_rep();
        }
        tracing::info!(
            pipeline = self.cfg.name,
            partitions = self.instances.len(),
            "kafka partitions assigned"
        );
    }

    /// Where a partition without a checkpoint starts.
    fn start_offset(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        topic: &str,
        partition: i32,
    ) -> Offset {
        match self.cfg.source.start {
            // The group's committed offset, else (auto.offset.reset) the beginning.
            StartAt::Committed => Offset::Stored,
            StartAt::Earliest => Offset::Beginning,
            StartAt::Latest => Offset::End,
            StartAt::Timestamp(t) => {
                let mut q = TopicPartitionList::new();
                let _ = q.add_partition_offset(topic, partition, Offset::Offset(t));
                let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
                loop {
                    match consumer.offsets_for_times(q.clone(), Duration::from_secs(10)) {
                        Ok(r) => {
                            return r
                                .find_partition(topic, partition)
                                .map(|e| e.offset())
                                .filter(|o| o.to_raw().is_some_and(|x| x >= 0))
                                .unwrap_or(Offset::End);
                        }
                        Err(e) if !self.shutdown.is_triggered() => {
                            tracing::warn!(pipeline = self.cfg.name, topic, partition, error = %e, "offset lookup by time failed; retrying");
                            self.sleep(backoff.next_delay(), None);
                        }
                        Err(_) => return Offset::End,
                    }
                }
            }
        }
    }

    /// Reads checkpoints, retrying (a broker outage) until it works or shutdown.
    fn load_retrying(&self, keys: &[String]) -> Option<std::collections::HashMap<String, Vec<u8>>> {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            match self.checkpoints.load(keys) {
                Ok(m) => return Some(m),
                Err(e) => {
                    tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), "checkpoints not readable; retrying");
                    self.retries.increment(1);
                    if self.shutdown.is_triggered() || !self.sleep(backoff.next_delay(), None) {
                        return None;
                    }
                }
            }
        }
    }

    /// Hands over revoked partitions: checkpointed (unless lost), then dropped.
    fn revoke(&mut self, consumer: &BaseConsumer<SourceContext>, tpl: &TopicPartitionList) {
        let held: Vec<(String, i32)> = partitions(tpl)
            .into_iter()
            .filter(|(t, p)| {
                self.instances
                    .iter()
                    .any(|i| i.topic == *t && i.partition == *p)
            })
            .collect();
        if held.is_empty() {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(pipeline = self.cfg.name, partitions = ?held, "kafka partitions lost (session expired): not checkpointed; their new owner restores the last checkpoint");
            metrics::counter!("ferry_processor_partitions_lost_total", "pipeline" => self.cfg.name.clone())
                .increment(held.len() as u64);
        } else {
            let deadline = Instant::now() + HANDOVER_DEADLINE;
            let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            loop {
                let done = if self.driver.repartition() {
                    // Ships what it holds and stores its checkpoint (the flush does both).
                    self.ship_all(consumer, Some(&held))
                } else {
                    self.checkpoint(consumer, Some(&held), CommitMode::Sync, Some(deadline))
                };
                match done {
                    Ok(n) => {
                        tracing::info!(pipeline = self.cfg.name, partitions = ?held, checkpoints = n, "partitions handed over");
                        break;
                    }
                    Err(e) => {
                        self.checkpoint_errors.increment(1);
                        let retry =
                            matches!(e, CheckpointFailure::Store(_) | CheckpointFailure::Post(_))
                                && self.fatal.is_none()
                                && self.sleep(backoff.next_delay(), Some(deadline));
                        if !retry {
                            tracing::error!(pipeline = self.cfg.name, partitions = ?held, error = %ferry_core::error_chain(&e), "handing partitions over without a checkpoint: their next owner restores the previous one and recomputes from there (nothing is counted twice)");
                            break;
                        }
                        tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), "hand-over checkpoint failed; retrying");
                    }
                }
            }
        }
        let driver = &mut self.driver;
        self.instances.retain(|i| {
            let gone = held.iter().any(|(t, p)| *t == i.topic && *p == i.partition);
            if gone {
                driver.revoke(&i.pid);
            }
            !gone
        });
        self.last_hit = 0;
    }

    /// At shutdown: results out, sinks durable, every partition checkpointed (retried until
    /// [`HANDOVER_DEADLINE`]), offsets committed; then the state is dropped.
    fn stop(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        merge: Option<&BaseConsumer<MergeContext>>,
    ) -> Result<(), RunnerError> {
        let deadline = Instant::now() + HANDOVER_DEADLINE;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let outcome = loop {
            if self.fatal.is_some() {
                break Err("a sink failed".to_owned());
            }
            let done = if self.driver.repartition() {
                let lost = merge.is_some_and(|m| m.assignment_lost());
                self.ship_all(consumer, None)
                    .and_then(|_| self.checkpoint_owners(lost, None, Some(deadline)))
            } else {
                self.checkpoint(consumer, None, CommitMode::Sync, Some(deadline))
            };
            match done {
                Ok(_) => break Ok(()),
                Err(e) => {
                    let msg = ferry_core::error_chain(&e);
                    let retry =
                        matches!(e, CheckpointFailure::Store(_) | CheckpointFailure::Post(_))
                            && self.sleep(backoff.next_delay(), Some(deadline));
                    if !retry {
                        break Err(msg);
                    }
                    tracing::warn!(
                        pipeline = self.cfg.name,
                        error = msg,
                        "final checkpoint failed; retrying"
                    );
                }
            }
        };
        for i in self.instances.drain(..) {
            self.driver.revoke(&i.pid);
        }
        let owned: Vec<u32> = self.driver.owners.keys().copied().collect();
        for r in owned {
            self.driver.revoke_owner(r);
        }
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        outcome.map_err(|message| RunnerError::Stopped {
            pipeline: self.cfg.name.clone(),
            message: format!(
                "final checkpoint not stored ({message}); the next start resumes from the previous one"
            ),
        })
    }
}

/// The repartition hop on Kafka (`kafka_repartition.rs`): upstream flushes, and the owners of
/// the repartition topic's partitions (the merge group).
impl Worker {
    /// Once every input topic's partition count is known: the repartition topic (created with
    /// as many partitions as the input topics together, unless it exists). Retried every
    /// [`METADATA_RETRY`] until it works.
    fn ensure_rep(&mut self) {
        self.next_rep_attempt = Instant::now() + METADATA_RETRY;
        if self.rep.is_some()
            || !self
                .topics
                .iter()
                .all(|t| self.driver.topic_partitions.contains_key(t))
        {
            return;
        }
        let want: u32 = self.driver.topic_partitions.values().sum::<u32>().max(1);
        let name = self
            .kafka
            .kafka_topic(&repartition::topic_name(&self.group, &self.cfg.name));
        match RepartitionTopic::open(&self.kafka, &self.admin, &self.rt, &name, want) {
            Ok(topic) => {
                tracing::info!(
                    pipeline = self.cfg.name,
                    topic = name,
                    partitions = topic.partitions(),
                    group = repartition::merge_group(&self.group),
                    "repartition topic ready"
                );
                self.driver.rep_partitions = Some(topic.partitions());
                self.rep = Some(Rep {
                    topic,
                    group: repartition::merge_group(&self.group),
                });
            }
            Err(e) => {
                tracing::warn!(
                    pipeline = self.cfg.name,
                    topic = name,
                    error = e,
                    "repartition topic not ready; retrying"
                );
                self.retries.increment(1);
            }
        }
    }

    /// The merge group's consumer, subscribed to the repartition topic.
    fn merge_consumer(
        &self,
        ctx: &Arc<SourceContext>,
    ) -> Result<BaseConsumer<MergeContext>, RunnerError> {
        let kerr = |source| RunnerError::Kafka {
            pipeline: self.cfg.name.clone(),
            source: Box::new(source),
        };
        let Some(rep) = self.rep.as_ref() else {
            return Err(RunnerError::Stopped {
                pipeline: self.cfg.name.clone(),
                message: "no repartition topic".into(),
            });
        };
        let mut client = ferry_kafka::consumer::group_client_config(
            &self.kafka,
            &rep.group,
            StartPosition::Earliest,
        );
        client.set("enable.partition.eof", "false");
        let consumer: BaseConsumer<MergeContext> = client
            .create_with_context(MergeContext {
                source: ctx.clone(),
            })
            .map_err(|e| kerr(ferry_kafka::KafkaError::Config(e)))?;
        consumer
            .subscribe(&[rep.topic.topic()])
            .map_err(|e| kerr(ferry_kafka::KafkaError::Consumer(e)))?;
        tracing::info!(
            pipeline = self.cfg.name,
            topic = rep.topic.topic(),
            group = rep.group,
            "repartition: joined the merge group"
        );
        Ok(consumer)
    }

    /// Ships each upstream that is due ([`Driver::due`]).
    fn ship_due(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let periodic = self.last_flush.elapsed() >= self.opts.flush_interval;
        for pid in self.driver.due(periodic) {
            if let Err(e) = self.ship(consumer, &pid, false) {
                tracing::warn!(pipeline = self.cfg.name, topic = pid.topic, partition = pid.partition, error = %ferry_core::error_chain(&e), "partials not shipped; retrying");
                self.checkpoint_errors.increment(1);
                break;
            }
        }
        if periodic {
            self.last_flush = Instant::now();
        }
    }

    /// Ships every upstream (of `only`, if given), also one whose repartition topic is not
    /// there yet (then its windows stay in its checkpoint). Returns how many stored a checkpoint.
    fn ship_all(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        only: Option<&[(String, i32)]>,
    ) -> Result<usize, CheckpointFailure> {
        let pids: Vec<PartitionId> = self
            .instances
            .iter()
            .filter(|i| {
                only.is_none_or(|o| o.iter().any(|(t, p)| *t == i.topic && *p == i.partition))
            })
            .map(|i| i.pid.clone())
            .collect();
        let mut n = 0;
        for pid in pids {
            n += usize::from(self.ship(consumer, &pid, true)?);
        }
        Ok(n)
    }

    /// One upstream flush ([`Driver::build_flush`]): its checkpoint stored (with `acks=all`),
    /// then its partials posted. Returns whether a checkpoint was stored.
    fn ship(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        pid: &PartitionId,
        force: bool,
    ) -> Result<bool, CheckpointFailure> {
        if !self.driver.build_flush(pid, force) {
            return Ok(false);
        }
        let mut stored = false;
        if let Some((next, blob)) = self.driver.unstored(pid) {
            // A member whose session expired must not store (see docs/kafka.md on zombies),
            // nor post what it would have stored.
            if consumer.assignment_lost() {
                return Err(CheckpointFailure::Lost);
            }
            let Some(i) = self.instances.iter().find(|i| i.pid == *pid) else {
                return Ok(false);
            };
            let (topic, partition, next) = (i.topic.clone(), i.partition, *next);
            let items = [(i.key.clone(), blob.clone())];
            self.rt.block_on(self.checkpoints.store(&items))?;
            self.driver.stored(pid);
            stored = true;
            self.report.checkpoints += 1;
            self.stored.increment(1);
            if let Ok(o) = i64::try_from(next) {
                let mut offsets = TopicPartitionList::new();
                let _ = offsets.add_partition_offset(&topic, partition, Offset::Offset(o));
                kafka_repartition::commit_for_lag(consumer, &offsets);
            }
        }
        if let Some(outbox) = self.driver.to_post(pid) {
            let r = match self.rep.as_ref() {
                Some(rep) => self.rt.block_on(rep.topic.post(outbox)),
                None => Err("no repartition topic".to_owned()),
            };
            r.map_err(CheckpointFailure::Post)?;
            self.driver.posted(pid);
        }
        Ok(stored)
    }

    /// One message of an owned repartition partition, into its owner.
    fn apply_partial(&mut self, m: &BorrowedMessage<'_>) {
        let (Ok(r), Ok(offset)) = (u32::try_from(m.partition()), u64::try_from(m.offset())) else {
            return;
        };
        let now = ferry_core::now_ms();
        let seq = kafka_repartition::seq_of(m);
        match self
            .driver
            .apply(r, offset, m.payload().unwrap_or_default(), seq, now)
        {
            Applied::Merged { late } => {
                if late > 0 {
                    metrics::counter!("ferry_processor_late_partials_total").increment(late);
                }
            }
            Applied::Duplicate => {
                metrics::counter!("ferry_processor_repartition_duplicates_total").increment(1);
            }
            Applied::Skipped => {}
            Applied::Unreadable(e) => {
                tracing::warn!(
                    pipeline = self.cfg.name,
                    topic = m.topic(),
                    partition = r,
                    offset,
                    error = e,
                    "repartition: unreadable message skipped"
                );
                metrics::counter!("ferry_processor_repartition_unreadable_total").increment(1);
            }
        }
    }

    /// The owned repartition partitions, as a list.
    fn owned(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Some(rep) = &self.rep {
            for r in self.driver.owners.keys() {
                tpl.add_partition(rep.topic.topic(), *r as i32);
            }
        }
        tpl
    }

    /// The owned partitions' next offsets (for the merge group's lag).
    fn owner_offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Some(rep) = &self.rep {
            for (r, o) in &self.driver.owners {
                if let Some(n) = o.next_offset.and_then(|n| i64::try_from(n).ok()) {
                    let _ =
                        tpl.add_partition_offset(rep.topic.topic(), *r as i32, Offset::Offset(n));
                }
            }
        }
        tpl
    }

    /// Sets up newly owned repartition partitions: every owner checkpoint's note learned (and,
    /// at the first assignment, the results files cut back), each restored from its checkpoint
    /// and started at its offset (set in `tpl`); one never checkpointed is checkpointed at once.
    fn assign_owners(
        &mut self,
        consumer: &BaseConsumer<MergeContext>,
        tpl: &mut TopicPartitionList,
    ) {
        let Some(rep) = self.rep.as_ref() else {
            return;
        };
        let (topic, group, n) = (
            rep.topic.topic().to_owned(),
            rep.group.clone(),
            rep.topic.partitions(),
        );
        let keys: Vec<String> = (0..n)
            .map(|r| kafka_checkpoints::key(&group, &topic, r as i32))
            .collect();
        let Some(restored) = self.load_retrying(&keys) else {
            tracing::warn!(
                pipeline = self.cfg.name,
                "stopping before the repartition checkpoints could be read"
            );
            return;
        };
        let marks = self
            .driver
            .learn_owner_notes(restored.values().map(Vec::as_slice));
        let since_ms = ferry_core::now_ms();
        let mut fresh = Vec::new();
        for (t, p) in partitions(tpl) {
            let Ok(r) = u32::try_from(p) else {
                continue;
            };
            let held = self.driver.owners.contains_key(&r);
            let key = kafka_checkpoints::key(&group, &t, p);
            let (next, how) = self.driver.assign_owner(
                r,
                restored.get(&key).map(|b| (None, b.as_slice())),
                None,
                since_ms,
            );
            match how {
                Assigned::Restored(offset) if !held => {
                    tracing::info!(
                        pipeline = self.cfg.name,
                        topic = t,
                        partition = r,
                        offset,
                        "repartition: state restored from checkpoint"
                    );
                }
                Assigned::Unreadable(e) => {
                    tracing::error!(pipeline = self.cfg.name, topic = t, partition = r, error = %e, "repartition checkpoint unreadable; reading the partition from its beginning");
                    metrics::counter!("ferry_processor_checkpoints_unreadable_total").increment(1);
                }
                _ => {}
            }
            if !held {
                fresh.push(r);
            }
            let at = next
                .and_then(|o| i64::try_from(o).ok())
                .map_or(Offset::Beginning, Offset::Offset);
            let _ = tpl.set_partition_offset(&t, p, at);
        }
        if !self.rewound {
            // Before anything is written: results emitted after the last checkpoint are
            // emitted again, so the files are cut back to where that checkpoint saw them.
            let r = self.rt.block_on(self.outputs.rewind_files(&marks));
            match r {
                Ok(_) => self.rewound = true,
                Err(source) => {
                    self.fatal.get_or_insert(RunnerError::Sink {
                        pipeline: self.cfg.name.clone(),
                        source,
                    });
                }
            }
        }
        if !fresh.is_empty() {
            // Every newly owned partition is checkpointed before it emits: the checkpoint
            // carries where the results files stand now, so a member killed before its next
            // checkpoint cuts them back to here and its results since are emitted once, by the
            // next owner — also when it never stored a checkpoint before.
            let deadline = Instant::now() + HANDOVER_DEADLINE;
            if let Err(e) =
                self.checkpoint_owners(consumer.assignment_lost(), Some(&fresh), Some(deadline))
            {
                tracing::warn!(pipeline = self.cfg.name, error = %ferry_core::error_chain(&e), "first repartition checkpoint not stored; retried at the next one");
            }
        }
        tracing::info!(
            pipeline = self.cfg.name,
            partitions = self.driver.owners.len(),
            "repartition partitions assigned"
        );
    }

    /// Hands over owned repartition partitions: results written, sinks durable, checkpointed
    /// (unless lost), then dropped.
    fn revoke_owners(&mut self, lost: bool, tpl: &TopicPartitionList) {
        let held: Vec<u32> = partitions(tpl)
            .into_iter()
            .filter_map(|(_, p)| u32::try_from(p).ok())
            .filter(|r| self.driver.owners.contains_key(r))
            .collect();
        if held.is_empty() {
            return;
        }
        if lost {
            tracing::warn!(pipeline = self.cfg.name, partitions = ?held, "repartition partitions lost (session expired): not checkpointed; their new owner restores the last checkpoint");
            metrics::counter!("ferry_processor_partitions_lost_total", "pipeline" => self.cfg.name.clone())
                .increment(held.len() as u64);
        } else {
            let deadline = Instant::now() + HANDOVER_DEADLINE;
            let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            loop {
                match self.checkpoint_owners(false, Some(&held), Some(deadline)) {
                    Ok(n) => {
                        tracing::info!(pipeline = self.cfg.name, partitions = ?held, checkpoints = n, "repartition: partitions handed over");
                        break;
                    }
                    Err(e) => {
                        self.checkpoint_errors.increment(1);
                        let retry = matches!(e, CheckpointFailure::Store(_))
                            && self.fatal.is_none()
                            && self.sleep(backoff.next_delay(), Some(deadline));
                        if !retry {
                            tracing::error!(pipeline = self.cfg.name, partitions = ?held, error = %ferry_core::error_chain(&e), "handing repartition partitions over without a checkpoint: their next owner restores the previous one");
                            break;
                        }
                    }
                }
            }
        }
        for r in held {
            self.driver.revoke_owner(r);
        }
    }

    /// Results written, sinks durable, then the checkpoints of the owned partitions (of `only`,
    /// if given), as [`Driver::owner_checkpoint`] makes them. Returns how many were stored.
    fn checkpoint_owners(
        &mut self,
        lost: bool,
        only: Option<&[u32]>,
        deadline: Option<Instant>,
    ) -> Result<usize, CheckpointFailure> {
        self.make_durable(deadline)?;
        if lost {
            return Err(CheckpointFailure::Lost);
        }
        let Some(rep) = self.rep.as_ref() else {
            return Ok(0);
        };
        let items: Vec<(String, Vec<u8>)> = self
            .driver
            .owners
            .keys()
            .filter(|r| only.is_none_or(|o| o.contains(r)))
            .filter_map(|r| {
                let (_, blob) = self.driver.owner_checkpoint(*r)?;
                Some((
                    kafka_checkpoints::key(&rep.group, rep.topic.topic(), *r as i32),
                    blob,
                ))
            })
            .collect();
        if items.is_empty() {
            return Ok(0);
        }
        let r = self.rt.block_on(self.checkpoints.store(&items));
        r?;
        self.report.checkpoints += items.len() as u64;
        self.stored.increment(items.len() as u64);
        Ok(items.len())
    }
}
