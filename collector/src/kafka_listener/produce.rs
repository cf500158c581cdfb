//! Produce: each partition's record batches become ferry batches stored through the
//! collector's ingest path ([`crate::ingest::Ingest::ingest_to_partition`]): routing rules,
//! `max_records`, per-topic limits and the fsync policy apply as to HTTP ingest, and a
//! partition is answered only once its records are durable (acks=0 gets no answer; acks=1
//! and acks=all are the same here: one copy, durable before the answer).
//!
//! An idempotent producer (a producer id and a base sequence on its batch) is the store's
//! per-origin dedup, with the sequence numbers as offsets: origin `producer/kafka-<id>`,
//! record `i` of a batch at offset `base_sequence + i`. A resent batch is dropped as a replay
//! and answered as stored (what Kafka does for a duplicate), a batch whose predecessors are
//! missing is refused with `OUT_OF_ORDER_SEQUENCE_NUMBER`, and the state survives a crash
//! because the store recovers it from the data.

use super::records::{self, DEFAULT_KEY_FIELD};
use super::{Broker, code};
use crate::ingest::IngestError;
use crate::store::StoreError;
use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, Codec, DecodeLimits};
use ferry_core::record::OriginKey;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// Answers a Produce request; its partitions are stored concurrently.
pub async fn produce(broker: &Arc<Broker>, req: ProduceRequest, _version: i16) -> ProduceResponse {
    let mut tasks = tokio::task::JoinSet::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for (ti, topic) in req.topic_data.into_iter().enumerate() {
        let name = topic.name.0.as_str().to_owned();
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(Vec::with_capacity(topic.partition_data.len())),
        );
        for part in topic.partition_data {
            let broker = broker.clone();
            let name = name.clone();
            let transactional = req.transactional_id.is_some();
            tasks.spawn(async move {
                let index = part.index;
                let r = produce_partition(&broker, &name, index, part.records, transactional).await;
                (ti, r.into_response(index))
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((ti, p)) => responses[ti].partition_responses.push(p),
            Err(e) => tracing::error!(error = %e, "kafka produce task failed"),
        }
    }
    for t in &mut responses {
        t.partition_responses.sort_by_key(|p| p.index);
    }
    ProduceResponse::default().with_responses(responses)
}

/// What storing one partition's data came to.
enum Outcome {
    Stored { base_offset: i64, log_start: i64 },
    Failed { error: i16, message: String },
}

impl Outcome {
    fn failed(error: i16, message: impl Into<String>) -> Self {
        Outcome::Failed {
            error,
            message: message.into(),
        }
    }

    fn into_response(self, index: i32) -> PartitionProduceResponse {
        match self {
            Outcome::Stored {
                base_offset,
                log_start,
            } => PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(base_offset)
                .with_log_start_offset(log_start),
            Outcome::Failed { error, message } => {
                metrics::counter!("ferry_kafka_produce_refused_total", "error" => error.to_string())
                    .increment(1);
                tracing::debug!(partition = index, error, %message, "kafka produce refused");
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(error)
                    .with_base_offset(-1)
                    .with_error_message(Some(StrBytes::from_string(message)))
            }
        }
    }
}

async fn produce_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
    data: Option<Bytes>,
    transactional: bool,
) -> Outcome {
    let ingest = &broker.state.ingest;
    if transactional {
        return Outcome::failed(
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported by ferry's Kafka listener (idempotent producers are)",
        );
    }
    let partitions = match ingest.ensure_topic(topic) {
        Ok(n) => n,
        Err(e) => return refused(e),
    };
    let Ok(partition) = u32::try_from(partition)
        .map_err(drop)
        .and_then(|p| if p < partitions { Ok(p) } else { Err(()) })
    else {
        return Outcome::failed(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("topic {topic} has {partitions} partitions, not {partition}"),
        );
    };
    let key_field = ingest
        .config
        .topics
        .get(topic)
        .and_then(|t| t.key_field.clone())
        .unwrap_or_else(|| DEFAULT_KEY_FIELD.to_owned());
    let max_raw = ingest.config.limits.max_raw_bytes.as_usize();
    let data = data.unwrap_or_default();
    // Decompressing and re-encoding burn CPU: on the blocking pool.
    let built = tokio::task::spawn_blocking(move || build(&data, max_raw, &key_field)).await;
    let (items, after) = match built {
        Ok(Ok(b)) => b,
        Ok(Err(o)) => return o,
        Err(e) => return Outcome::failed(code::UNKNOWN_SERVER_ERROR, e.to_string()),
    };
    if items.is_empty() {
        return Outcome::Stored {
            base_offset: -1,
            log_start: -1,
        };
    }
    match ingest
        .ingest_to_partition(topic, partition, items, after)
        .await
    {
        Ok(summary) => {
            let base = summary
                .offsets
                .iter()
                .find(|(t, p, _)| t == topic && *p == partition)
                .map_or(-1, |(_, _, o)| *o as i64);
            let log_start = ingest
                .store()
                .and_then(|s| s.bounds(topic, partition).ok())
                .map_or(-1, |(start, _)| start as i64);
            metrics::counter!("ferry_kafka_produced_records_total").increment(summary.stored);
            Outcome::Stored {
                base_offset: base,
                log_start,
            }
        }
        Err(e) => refused(e),
    }
}

/// A partition's data as verified ferry batches, and what an idempotent producer's batch
/// must follow.
type Built = (Vec<(Bytes, Batch)>, Option<(OriginKey, u64)>);

fn build(data: &Bytes, max_raw: usize, key_field: &str) -> Result<Built, Outcome> {
    let sets = records::decode_batches(data, max_raw)
        .map_err(|e| Outcome::failed(code::CORRUPT_MESSAGE, e))?;
    let mut items = Vec::with_capacity(sets.len());
    let mut after = None;
    for (i, set) in sets.iter().enumerate() {
        let recs = records::to_ferry(set, key_field)
            .map_err(|e| Outcome::failed(code::INVALID_RECORD, e))?;
        if recs.is_empty() {
            continue;
        }
        let first = set.records.first();
        let producer = first.filter(|r| r.producer_id >= 0 && r.sequence >= 0);
        if first.is_some_and(|r| r.transactional) {
            return Err(Outcome::failed(
                code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "transactional batches are not supported by ferry's Kafka listener",
            ));
        }
        let mut b = match producer {
            Some(r) => {
                let origin =
                    ferry_core::topic::producer_origin(&format!("kafka-{}", r.producer_id));
                let seq = r.sequence as u64;
                // Only the first batch of a request may need to wait for its predecessor;
                // later ones follow it in the same request.
                if i == 0 && seq > 0 {
                    after = Some((origin.clone(), seq));
                }
                BatchBuilder::with_origin(origin, seq)
            }
            None => BatchBuilder::new(),
        };
        for r in &recs {
            b.push(&r.line, 1, r.event_time_ms, false, &r.fields);
        }
        let enc = b
            .finish(Codec::Lz4, 0, ferry_core::now_ms())
            .map_err(|e| Outcome::failed(code::MESSAGE_TOO_LARGE, e.to_string()))?;
        let enc = Bytes::from(enc);
        let decoded = batch::decode(
            &enc,
            &DecodeLimits {
                max_raw_bytes: (max_raw as u64).max(1 << 20) * 2,
                max_records: 1 << 24,
            },
        )
        .map_err(|e| Outcome::failed(code::CORRUPT_MESSAGE, e.to_string()))?;
        items.push((enc, decoded));
    }
    Ok((items, after))
}

/// Kafka's error for an ingest refusal.
fn refused(e: IngestError) -> Outcome {
    let msg = e.to_string();
    let error = match &e {
        IngestError::BadRequest(_) => code::INVALID_TOPIC_EXCEPTION,
        IngestError::TooLarge(_) => code::MESSAGE_TOO_LARGE,
        IngestError::UnknownTopic(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        IngestError::TopicFull { .. } => code::POLICY_VIOLATION,
        // Retriable: the client backs off and resends (REQUEST_TIMED_OUT is retried by every
        // client).
        IngestError::Busy(_) => code::REQUEST_TIMED_OUT,
        IngestError::Store(StoreError::OutOfOrder { .. }) => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        IngestError::Store(StoreError::UnknownTopic(_) | StoreError::UnknownPartition { .. }) => {
            code::UNKNOWN_TOPIC_OR_PARTITION
        }
        IngestError::Store(StoreError::TooManyTopics { .. }) => code::THROTTLING_QUOTA_EXCEEDED,
        IngestError::Store(_) | IngestError::Kafka(_) => code::KAFKA_STORAGE_ERROR,
    };
    Outcome::failed(error, msg)
}
