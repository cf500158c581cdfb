//! [`KafkaSink`]: ferry batches into Kafka topics, acknowledged only when every record is.
//!
//! The producer is idempotent with `acks=all`: librdkafka retries a message until
//! `message.timeout.ms` without duplicating or reordering it within its partition. `send_batch`
//! enqueues every record of a batch (they travel together, compressed as configured), then
//! waits for every delivery report. It returns `Ok` only if all of them succeeded; one failure
//! is an error for the whole batch, and the caller must not acknowledge it (a retry may store
//! some records twice in Kafka: at-least-once, see docs/kafka.md).
//!
//! Keyless records of one file (a batch with an origin) all go to one partition, chosen from a
//! stable hash of the file's identity as the embedded store does, so one file's lines keep their
//! order; keyed records go where their key hashes; records without key or origin are spread by
//! librdkafka's sticky partitioner.
//!
//! A full local queue (`queue.buffering.max.*`) is back-pressure, not loss: the enqueue waits
//! for room, up to the message timeout, and then fails the batch.
//!
//! After a failed batch the sink replaces its producer (at most once per message timeout). A
//! broker that lost its producer state (a restart of a broker without durable state, a cluster
//! restored from backup) answers the old producer id with `UNKNOWN_PRODUCER_ID` forever, which
//! librdkafka retries until every message times out; a new producer gets a new id. Batches
//! already in flight on the old producer finish on it.

use crate::config::KafkaConfig;
use crate::error::KafkaError;
use crate::mapping;
use ferry_core::batch::Batch;
use ferry_core::record::OriginKey;
use ferry_core::topic::stable_hash;
use rdkafka::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a topic's partition count is trusted before it is asked again (partitions can be
/// added to a topic; a file then moves to its new partition once).
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(60);

/// How long an enqueue sleeps when the local queue is full before it tries again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// What Kafka acknowledged for one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub topic: String,
    /// Records acknowledged (all of the batch).
    pub records: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Per partition: (records, first offset, last offset).
    pub partitions: BTreeMap<i32, (u64, i64, i64)>,
}

pub struct KafkaSink {
    /// The librdkafka producer; its own thread polls delivery reports into the futures. A std
    /// lock, never held across an await: senders clone the handle (an `Arc` inside) and go.
    producer: RwLock<FutureProducer>,
    /// The configuration the producer was made from, to make a fresh one after a failure.
    client_config: ClientConfig,
    /// When the producer was last replaced (replacements are at most one per message timeout).
    rebuilt: Mutex<Instant>,
    /// Partition counts by topic and when they were learnt; a std mutex never held across an
    /// await.
    partition_counts: Mutex<HashMap<String, (i32, Instant)>>,
    /// Longest an enqueue waits for room in a full queue (the message timeout: after that the
    /// records would have failed anyway).
    queue_full_wait: Duration,
}

impl KafkaSink {
    /// Creates the producer. Nothing is sent until the first record: a wrong broker list shows
    /// as delivery errors, not here.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut c = config.client_config();
        c.set("compression.type", config.compression.as_librdkafka())
            .set(
                "message.timeout.ms",
                config.message_timeout.get().as_millis().to_string(),
            )
            .set("linger.ms", "5");
        config.apply_options(&mut c);
        // The guarantee rests on these two: set last, whatever `options` said.
        for (k, v) in [("acks", "all"), ("enable.idempotence", "true")] {
            if c.get(k).is_some_and(|old| old != v) {
                tracing::warn!(
                    key = k,
                    "kafka.options tried to change {k}; ferry keeps {k}={v} (its delivery guarantee needs it)"
                );
            }
            c.set(k, v);
        }
        let producer: FutureProducer = c.create().map_err(KafkaError::Config)?;
        Ok(Self {
            producer: RwLock::new(producer),
            client_config: c,
            rebuilt: Mutex::new(Instant::now()),
            partition_counts: Mutex::new(HashMap::new()),
            queue_full_wait: config.message_timeout.get(),
        })
    }

    /// The current producer (metadata, flush).
    pub fn producer(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the producer after a failed batch, unless that was done within the last
    /// message timeout.
    fn replace_producer(&self) {
        let Ok(mut last) = self.rebuilt.lock() else {
            return;
        };
        if last.elapsed() < self.queue_full_wait {
            return;
        }
        *last = Instant::now();
        match self.client_config.create::<FutureProducer>() {
            Ok(fresh) => {
                if let Ok(mut p) = self.producer.write() {
                    *p = fresh;
                    metrics::counter!("ferry_kafka_producer_replaced_total").increment(1);
                    tracing::warn!("kafka batch failed; replaced the producer (new producer id)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not create a new kafka producer"),
        }
    }

    /// Produces every record of `batch` to `topic` and returns once all are acknowledged by all
    /// in-sync replicas; any failure is an error and nothing of the batch may be acknowledged.
    pub async fn send_batch(
        &self,
        topic: &str,
        batch: &Batch,
        key_field: Option<&str>,
    ) -> Result<DeliveryReport, KafkaError> {
        let origin = batch.header.origin.as_ref().map(|o| &o.key);
        self.send(
            topic,
            origin,
            batch.header.created_ms,
            &batch.records,
            key_field,
        )
        .await
    }

    /// [`KafkaSink::send_batch`] for records that come from no file (no origin headers), e.g.
    /// a processor's results: each record keyed by its `key_field` field, if any; a record
    /// without event time gets `created_ms` as its timestamp.
    pub async fn send_records(
        &self,
        topic: &str,
        records: &[ferry_core::record::Record],
        key_field: Option<&str>,
        created_ms: i64,
    ) -> Result<DeliveryReport, KafkaError> {
        self.send(topic, None, created_ms, records, key_field).await
    }

    async fn send(
        &self,
        topic: &str,
        origin: Option<&OriginKey>,
        created_ms: i64,
        records: &[ferry_core::record::Record],
        key_field: Option<&str>,
    ) -> Result<DeliveryReport, KafkaError> {
        let producer = self.producer();
        let result = self
            .send_with(&producer, topic, origin, created_ms, records, key_field)
            .await;
        if result.is_err() {
            self.replace_producer();
        }
        result
    }

    async fn send_with(
        &self,
        producer: &FutureProducer,
        topic: &str,
        origin_key: Option<&OriginKey>,
        created: i64,
        records: &[ferry_core::record::Record],
        key_field: Option<&str>,
    ) -> Result<DeliveryReport, KafkaError> {
        let origin_file = origin_key.map(|o| o.file.to_string());
        let origin =
            origin_key
                .zip(origin_file.as_deref())
                .map(|(o, file)| mapping::OriginHeaders {
                    agent: &o.agent_id,
                    file,
                });
        // One file's keyless records all go to one partition, so they keep their order (as in
        // the embedded store); keyed records follow their key.
        let file_partition = match origin_key {
            Some(o) => self.partition_for_origin(producer, topic, o).await,
            None => None,
        };
        let mut pending: Vec<(DeliveryFuture, u64)> = Vec::with_capacity(records.len());
        let mut enqueue_error = None;
        let inflight = metrics::gauge!("ferry_kafka_records_in_flight");
        for rec in records {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .payload(&rec.line[..])
                .timestamp(mapping::timestamp_of(rec, created))
                .headers(mapping::headers_with(origin.as_ref(), rec));
            match mapping::key_of(rec, key_field) {
                Some(k) => record = record.key(k),
                None => {
                    if let Some(p) = file_partition {
                        record = record.partition(p);
                    }
                }
            }
            match self.enqueue(producer, topic, record).await {
                Ok(f) => {
                    inflight.increment(1.0);
                    pending.push((f, rec.line.len() as u64));
                }
                Err(e) => {
                    enqueue_error = Some(e);
                    break;
                }
            }
        }
        // Wait for every report, also after an enqueue error: the records already enqueued are
        // on their way, and the in-flight gauge must come back down.
        let mut report = DeliveryReport {
            topic: topic.to_owned(),
            ..DeliveryReport::default()
        };
        let mut failed = 0u64;
        let mut first = None;
        let sent = pending.len() as u64;
        for (f, bytes) in pending {
            let outcome = f.await;
            inflight.decrement(1.0);
            match outcome {
                Ok(Ok(d)) => {
                    report.records += 1;
                    report.bytes += bytes;
                    let e = report
                        .partitions
                        .entry(d.partition)
                        .or_insert((0, d.offset, d.offset));
                    e.0 += 1;
                    e.1 = e.1.min(d.offset);
                    e.2 = e.2.max(d.offset);
                }
                Ok(Err((e, _msg))) => {
                    failed += 1;
                    metrics::counter!("ferry_kafka_delivery_errors_total", "kind" => error_kind(&e))
                        .increment(1);
                    first.get_or_insert(e);
                }
                Err(_canceled) => {
                    // The producer dropped the report (it is shutting down): not delivered.
                    failed += 1;
                    metrics::counter!("ferry_kafka_delivery_errors_total", "kind" => "canceled")
                        .increment(1);
                    first.get_or_insert(rdkafka::error::KafkaError::Canceled);
                }
            }
        }
        metrics::counter!("ferry_kafka_records_produced_total", "topic" => topic.to_owned())
            .increment(report.records);
        metrics::counter!("ferry_kafka_bytes_produced_total").increment(report.bytes);
        if let Some(e) = enqueue_error {
            metrics::counter!("ferry_kafka_delivery_errors_total", "kind" => e.kind()).increment(1);
            return Err(e);
        }
        if let Some(first) = first {
            return Err(KafkaError::Delivery {
                topic: topic.to_owned(),
                records: sent,
                failed,
                first,
            });
        }
        Ok(report)
    }

    /// The partition for keyless records of one file: a stable hash of the file's identity
    /// modulo the topic's partition count (the embedded store's rule). `None` when the count is
    /// unknown (metadata failed): librdkafka's partitioner decides, and order is per partition.
    async fn partition_for_origin(
        &self,
        producer: &FutureProducer,
        topic: &str,
        origin: &OriginKey,
    ) -> Option<i32> {
        let n = self.partition_count(producer, topic).await?;
        let f = &origin.file;
        let h = stable_hash(&[
            origin.agent_id.as_bytes(),
            &f.dev.to_le_bytes(),
            &f.inode.to_le_bytes(),
            &f.fingerprint.to_le_bytes(),
        ]);
        i32::try_from(h % u64::try_from(n).ok()?).ok()
    }

    /// A topic's partition count, from a cache refreshed every [`PARTITION_COUNT_TTL`]. A
    /// metadata request for a missing topic lets the brokers create it (when they allow it).
    async fn partition_count(&self, producer: &FutureProducer, topic: &str) -> Option<i32> {
        if let Ok(cache) = self.partition_counts.lock()
            && let Some((n, at)) = cache.get(topic)
            && at.elapsed() < PARTITION_COUNT_TTL
        {
            return Some(*n);
        }
        let timeout = (self.queue_full_wait / 2).min(Duration::from_secs(5));
        let (p, t) = (producer.clone(), topic.to_owned());
        let md = tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&t), timeout))
            .await
            .ok()?;
        let md = match md {
            Ok(md) => md,
            Err(e) => {
                tracing::debug!(topic, error = %e, "no partition count for the topic");
                return None;
            }
        };
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n > 0)?;
        if let Ok(mut cache) = self.partition_counts.lock() {
            cache.insert(topic.to_owned(), (n, Instant::now()));
        }
        Some(n)
    }

    /// Enqueues one record, waiting (bounded) while the local queue is full.
    async fn enqueue<'a>(
        &self,
        producer: &FutureProducer,
        topic: &str,
        mut record: FutureRecord<'a, str, [u8]>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let started = Instant::now();
        loop {
            match producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    if started.elapsed() >= self.queue_full_wait {
                        return Err(KafkaError::QueueFull {
                            topic: topic.to_owned(),
                            waited: started.elapsed(),
                        });
                    }
                    metrics::counter!("ferry_kafka_queue_full_waits_total").increment(1);
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => {
                    return Err(KafkaError::Enqueue {
                        topic: topic.to_owned(),
                        source: e,
                    });
                }
            }
        }
    }

    /// Waits (blocking, on a blocking thread) until everything enqueued is delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| KafkaError::Timeout {
                what: "flush",
                timeout,
            })?
            .map_err(|_| KafkaError::Timeout {
                what: "flush",
                timeout,
            })
    }
}

/// A metrics label for a delivery error: librdkafka's error code name.
fn error_kind(e: &rdkafka::error::KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "other".into(),
    }
}
