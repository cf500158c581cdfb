//! Pipeline checkpoints kept in a Kafka topic, where any member of the group can restore them.
//!
//! One message per checkpoint, all in partition 0 of the checkpoint topic (one partition keeps
//! the key → partition mapping fixed forever, whatever happens to the topic later):
//!
//! | part  | content |
//! |-------|---------|
//! | key   | `<group>/<topic>/<partition>` (UTF-8; Kafka topic names cannot contain `/`) |
//! | value | the pipeline snapshot ([`crate::state`]): open windows, watermark, counters and the input offset it reflects |
//!
//! The topic is created if missing (via the admin API) with `cleanup.policy=compact` and short
//! segments, so the brokers keep about one message per key; a topic created by an operator
//! works as long as partition 0 exists. Checkpoints are produced with `acks=all` and the
//! idempotent producer, and [`CheckpointTopic::store`] returns only when every one of them is
//! acknowledged.
//!
//! [`CheckpointTopic::load`] finds the latest value of some keys by reading the partition
//! backwards from its end, in windows that double, until every key is found or the log start is
//! reached. Every owner of a partition writes its checkpoint every few seconds, so the latest
//! checkpoints of a group sit near the end: a load usually reads about one message per partition
//! of the group, not the whole history.

use ferry_kafka::{KafkaConfig, KafkaError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The partition every checkpoint goes to.
const PARTITION: i32 = 0;

/// Longest a metadata, watermark or admin request may take. Short, so that the thread asking
/// (which is also the one that notices shutdown) is never stuck for long on an unreachable
/// cluster; the caller retries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest snapshot the checkpoint producer sends (and the topic accepts, when ferry creates it).
pub const MAX_CHECKPOINT_BYTES: usize = 64 << 20;

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    #[error("checkpoint topic {topic}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("checkpoint topic {topic}: {what} did not finish within {timeout:?}")]
    Timeout {
        topic: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("checkpoint topic {topic} could not be created ({create}) and does not exist")]
    Missing { topic: String, create: String },
    #[error(
        "checkpoint of {key} is {bytes} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint may have; lower max_keys or shorten the window"
    )]
    TooLarge { key: String, bytes: usize },
}

/// The checkpoint key of one input partition.
pub fn key(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}/{topic}/{partition}")
}

/// Reads and writes one group's checkpoints in its checkpoint topic.
pub struct CheckpointTopic {
    topic: String,
    /// Writes checkpoints: `acks=all`, idempotent, no linger.
    producer: FutureProducer,
    /// Reads the checkpoint partition by assignment (never subscribes, never commits).
    reader: BaseConsumer,
    /// Longest reading one window of checkpoints, or waiting for room in the producer's queue,
    /// may take.
    timeout: Duration,
}

impl CheckpointTopic {
    /// Clients for `topic` on the cluster `kafka`. Nothing is sent yet.
    pub fn new(kafka: &KafkaConfig, topic: &str, group: &str) -> Result<Self, KafkaError> {
        let mut p = kafka.client_config();
        p.set("compression.type", kafka.compression.as_librdkafka())
            .set(
                "message.timeout.ms",
                kafka.message_timeout.get().as_millis().to_string(),
            )
            .set("message.max.bytes", MAX_CHECKPOINT_BYTES.to_string())
            .set("linger.ms", "0");
        kafka.apply_options(&mut p);
        // What the guarantee rests on, whatever `options` said.
        p.set("acks", "all").set("enable.idempotence", "true");
        let producer: FutureProducer = p.create().map_err(KafkaError::Config)?;
        let mut r = kafka.client_config();
        // librdkafka needs a group to assign partitions; this one never joins or commits.
        r.set("group.id", format!("{group}.ferry-checkpoint-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false");
        kafka.apply_options(&mut r);
        let reader: BaseConsumer = r.create().map_err(KafkaError::Config)?;
        Ok(Self {
            topic: topic.to_owned(),
            producer,
            reader,
            timeout: kafka
                .message_timeout
                .get()
                .clamp(Duration::from_secs(5), Duration::from_secs(60)),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn err(&self, source: rdkafka::error::KafkaError) -> CheckpointStoreError {
        CheckpointStoreError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }

    /// Creates the topic (compacted, one partition) unless it exists. `admin_config` is the
    /// cluster's client config (brokers, security, options). Blocking: call it from a thread
    /// that may block, with a runtime `rt` for the admin client's future.
    pub fn ensure_topic(
        &self,
        admin_config: &ClientConfig,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), CheckpointStoreError> {
        // Asked first: most starts find it, and some clusters refuse (or, like librdkafka's
        // mock, do not know) the admin request.
        if self.exists()? {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            admin_config.create().map_err(|e| self.err(e))?;
        let max_bytes = MAX_CHECKPOINT_BYTES.to_string();
        // -1: the brokers' default replication factor (Kafka 2.4 and later).
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact")
            .set("max.message.bytes", &max_bytes)
            // Roll segments often and clean early, so the log stays near one value per key.
            .set("segment.ms", "600000")
            .set("min.cleanable.dirty.ratio", "0.1");
        let opts = AdminOptions::new()
            .operation_timeout(Some(REQUEST_TIMEOUT))
            .request_timeout(Some(REQUEST_TIMEOUT));
        tracing::debug!(
            topic = self.topic,
            "creating the checkpoint topic unless it exists"
        );
        let outcome = match rt.block_on(admin.create_topics([&topic], &opts)) {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(
                        topic = self.topic,
                        "created the checkpoint topic (compacted)"
                    );
                    return Ok(());
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
                Some(Err((_, code))) => format!("{code}"),
                None => "no answer".to_owned(),
            },
            Err(e) => e.to_string(),
        };
        // Not allowed to create topics, or a broker without the admin API: fine if it exists.
        if self.exists()? {
            tracing::info!(topic = self.topic, reason = %outcome, "checkpoint topic not created by ferry; using the existing one");
            return Ok(());
        }
        Err(CheckpointStoreError::Missing {
            topic: self.topic.clone(),
            create: outcome,
        })
    }

    /// Whether the topic exists with its partition 0 (a metadata request that cannot create it).
    fn exists(&self) -> Result<bool, CheckpointStoreError> {
        let md = self
            .reader
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(|e| self.err(e))?;
        Ok(md.topics().iter().any(|t| {
            t.name() == self.topic
                && t.error().is_none()
                && t.partitions().iter().any(|p| p.id() == PARTITION)
        }))
    }

    /// Stores checkpoints `(key, snapshot)`; returns once every one is acknowledged by all
    /// in-sync replicas, or with the first error (some may be stored then: each is whole).
    pub async fn store(&self, items: &[(String, Vec<u8>)]) -> Result<(), CheckpointStoreError> {
        let mut pending = Vec::with_capacity(items.len());
        for (key, value) in items {
            if value.len() > MAX_CHECKPOINT_BYTES {
                return Err(CheckpointStoreError::TooLarge {
                    key: key.clone(),
                    bytes: value.len(),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .partition(PARTITION)
                .key(key.as_str())
                .payload(value.as_slice());
            let f = self.enqueue(record).await?;
            pending.push(f);
        }
        let mut first = None;
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first.get_or_insert(e);
                }
                Err(_canceled) => {
                    first.get_or_insert(rdkafka::error::KafkaError::Canceled);
                }
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(self.err(e)),
        }
    }

    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, str, [u8]>,
    ) -> Result<rdkafka::producer::DeliveryFuture, CheckpointStoreError> {
        let started = Instant::now();
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    if started.elapsed() > self.timeout {
                        return Err(self.err(e));
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.err(e)),
            }
        }
    }

    /// The end offset (high watermark) of each partition, in one request. Asked through the
    /// reader, whose connection is idle: the group consumer's is usually parked in a fetch
    /// long-poll, which a broker answers before any request queued behind it.
    pub fn end_offsets(
        &self,
        parts: &[(String, i32)],
        timeout: Duration,
    ) -> Result<Vec<Option<i64>>, CheckpointStoreError> {
        let mut q = TopicPartitionList::new();
        for (t, p) in parts {
            // Timestamp -1 asks for the latest offset.
            q.add_partition_offset(t, *p, Offset::End)
                .map_err(|e| self.err(e))?;
        }
        let r = self
            .reader
            .offsets_for_times(q, timeout)
            .map_err(|e| self.err(e))?;
        Ok(parts
            .iter()
            .map(|(t, p)| {
                r.find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
            })
            .collect())
    }

    /// The latest checkpoint of each of `keys`, read backwards from the end of the partition.
    /// A key never checkpointed (or deleted with a tombstone) is absent. Blocking.
    pub fn load(&self, keys: &[String]) -> Result<HashMap<String, Vec<u8>>, CheckpointStoreError> {
        let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let (low, high) = self
            .reader
            .fetch_watermarks(&self.topic, PARTITION, REQUEST_TIMEOUT)
            .map_err(|e| self.err(e))?;
        // Found keys, with `None` for a tombstone (stop looking further back for it).
        let mut found: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut end = high;
        let mut window = (2 * wanted.len()).max(16) as i64;
        while end > low && found.len() < wanted.len() {
            let start = (end - window).max(low);
            let latest = self.read_window(start, end, &wanted)?;
            for (k, v) in latest {
                // Windows go backwards: what an earlier (later-in-log) window found wins.
                found.entry(k).or_insert(v);
            }
            end = start;
            window = window.saturating_mul(2);
        }
        Ok(found
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Reads offsets `[start, end)` and returns, for each wanted key seen, its last value there.
    fn read_window(
        &self,
        start: i64,
        end: i64,
        wanted: &HashSet<&str>,
    ) -> Result<HashMap<String, Option<Vec<u8>>>, CheckpointStoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, PARTITION, Offset::Offset(start))
            .map_err(|e| self.err(e))?;
        self.reader.assign(&tpl).map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        let deadline = Instant::now() + self.timeout;
        let result = loop {
            if Instant::now() > deadline {
                break Err(CheckpointStoreError::Timeout {
                    topic: self.topic.clone(),
                    what: "reading checkpoints",
                    timeout: self.timeout,
                });
            }
            match self.reader.poll(Duration::from_millis(200)) {
                None => continue,
                // The watermarks said the log holds `end - 1`, and a log's last record is never
                // compacted away: an end of partition before it is stale (left in the queue
                // from before an outage) or early (a leader that has not caught up), not the
                // end. Reading goes on, bounded by the deadline.
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => continue,
                // Connection trouble the client retries by itself, often reported long ago:
                // the reader is polled only here, so every error of an outage waits in its
                // queue. Failing the read on each cost a backoff per queued error (half a
                // minute after a few seconds of outage); the deadline still bounds the read.
                Some(Err(e)) if client_retries(&e) => continue,
                Some(Err(e)) => break Err(self.err(e)),
                Some(Ok(m)) => {
                    if m.offset() >= end {
                        break Ok(());
                    }
                    if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok())
                        && wanted.contains(k)
                    {
                        out.insert(k.to_owned(), m.payload().map(<[u8]>::to_vec));
                    }
                    if m.offset() >= end - 1 {
                        break Ok(());
                    }
                }
            }
        };
        let _ = self.reader.unassign();
        result.map(|()| out)
    }
}

/// Errors librdkafka reports about connections it keeps retrying on its own (a broker down,
/// refused or unresolvable, a request timed out): not a reason to give up a read.
fn client_retries(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}
