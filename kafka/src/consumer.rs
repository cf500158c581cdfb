//! [`KafkaSource`]: records from Kafka topics, as a member of a consumer group.
//!
//! The shape mirrors `ferry_core::consumer::Consumer`: `poll` hands out records with their
//! topic, partition and offset; `commit` stores positions. Auto-commit is off: a position is
//! committed only when the caller says so, after it has done what it needed with the records
//! (processors keep their own checkpoint and commit to Kafka for lag tools).
//!
//! Only the classic group protocol is used (KIP-848's `group.protocol=consumer` is not
//! supported by every broker ferry is tested against). Group timings default to values that
//! make joins take seconds, not tens of seconds (`session.timeout.ms=6000`,
//! `heartbeat.interval.ms=1000`, `max.poll.interval.ms` well above a processing step); any of
//! them can be overridden through `kafka.options`.

use crate::config::KafkaConfig;
use crate::error::KafkaError;
use crate::mapping;
use ferry_core::record::{OriginKey, Record};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Where a partition without a committed offset starts (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Kafka topic names.
    pub topics: Vec<String>,
    /// The consumer group (`group.id`).
    pub group: String,
    pub start: StartPosition,
}

/// A record as consumed: where Kafka stored it, and what it is.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message timestamp (also the record's event time), when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub record: Record,
    pub origin: Option<OriginKey>,
}

/// Logs assignments and revocations, so an operator (and a test) can see the group settle.
pub struct GroupLogger;

impl ClientContext for GroupLogger {}

impl ConsumerContext for GroupLogger {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = describe(tpl);
                tracing::info!(partitions = %parts, count = tpl.count(), "kafka partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "kafka partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The client settings of a consumer-group member: brokers and security from `config`, the
/// group, manual commits only, fast group timings, the classic protocol; then `options`.
pub fn group_client_config(
    config: &KafkaConfig,
    group: &str,
    start: StartPosition,
) -> rdkafka::ClientConfig {
    let mut c = config.client_config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match start {
                StartPosition::Earliest => "earliest",
                StartPosition::Latest => "latest",
            },
        )
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("group.protocol", "classic");
    config.apply_options(&mut c);
    c
}

pub struct KafkaSource {
    /// Shared with blocking threads for commit and close (librdkafka calls that block).
    consumer: Arc<StreamConsumer<GroupLogger>>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the topics; the group join happens in the
    /// background and the first `poll` waits for it.
    pub fn new(config: &KafkaConfig, source: &SourceConfig) -> Result<Self, KafkaError> {
        let c = group_client_config(config, &source.group, source.start);
        let consumer: StreamConsumer<GroupLogger> = c
            .create_with_context(GroupLogger)
            .map_err(KafkaError::Config)?;
        let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(KafkaError::Consumer)?;
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }

    /// Waits up to `wait` for a first record, then returns it and whatever else is ready right
    /// away, up to `max` records. An empty result means nothing arrived in time.
    pub async fn poll(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ConsumedRecord>, KafkaError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(r) => out.push(self.convert(&r.map_err(KafkaError::Consumer)?)),
        }
        while out.len() < max {
            // Take what is already buffered without waiting.
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(m)) => out.push(self.convert(&m)),
                Ok(Err(e)) => return Err(KafkaError::Consumer(e)),
                Err(_) => break,
            }
        }
        metrics::counter!("ferry_kafka_records_consumed_total").increment(out.len() as u64);
        Ok(out)
    }

    fn convert(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedRecord {
        let ts = m.timestamp().to_millis();
        let d = mapping::decode(m.payload(), ts, m.headers());
        if d.malformed_headers > 0 {
            metrics::counter!("ferry_kafka_malformed_headers_total")
                .increment(u64::from(d.malformed_headers));
            tracing::debug!(
                topic = m.topic(),
                partition = m.partition(),
                offset = m.offset(),
                "malformed ferry headers ignored"
            );
        }
        ConsumedRecord {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: ts,
            record: d.record,
            origin: d.origin,
        }
    }

    /// The partitions assigned to this member now.
    pub fn assignment(&self) -> Result<Vec<(String, i32)>, KafkaError> {
        let tpl = self.consumer.assignment().map_err(KafkaError::Consumer)?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect())
    }

    /// Commits positions: per (topic, partition), the offset of the next record to read.
    pub async fn commit(&self, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(KafkaError::Consumer)?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|_| KafkaError::Timeout {
                what: "commit",
                timeout: Duration::ZERO,
            })?
            .map_err(KafkaError::Consumer)
    }

    /// Commits the positions just past `records` (the highest offset per partition, plus one).
    pub async fn commit_consumed(&self, records: &[ConsumedRecord]) -> Result<(), KafkaError> {
        self.commit(&next_offsets(records)).await
    }

    /// Leaves the group and closes the consumer. librdkafka's close can hang (rust-rdkafka
    /// #509), so it runs on its own thread and is waited for at most `timeout`; past that the
    /// thread is left behind (the process is usually exiting).
    pub async fn close(self, timeout: Duration) {
        let consumer = self.consumer;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                consumer.unsubscribe();
                drop(consumer);
                let _ = tx.send(());
            });
        if spawned.is_ok() && tokio::time::timeout(timeout, rx).await.is_err() {
            tracing::warn!(?timeout, "kafka consumer did not close in time; leaving it");
        }
    }
}

/// Per (topic, partition), the offset after the highest one in `records`.
pub fn next_offsets(records: &[ConsumedRecord]) -> BTreeMap<(String, i32), i64> {
    let mut out: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in records {
        let e = out.entry((r.topic.clone(), r.partition)).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    out
}
