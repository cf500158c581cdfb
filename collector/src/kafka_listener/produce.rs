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
use crate::auth::Principal;
use crate::ingest::IngestError;
use crate::store::StoreError;
use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, BatchHeader, Codec, DecodeLimits};
use ferry_core::record::OriginKey;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// Whether every batch of the request is an idempotent producer's (a producer id and a
/// sequence number), read from the batch headers without decoding the records.
pub fn idempotent(req: &ProduceRequest) -> bool {
    let mut batches = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .filter_map(|p| p.records.as_deref())
        .peekable();
    batches.peek().is_some() && batches.all(|d| records::producer_of(d).is_some())
}

/// Answers a Produce request; its partitions are stored concurrently.
pub async fn produce(
    broker: &Arc<Broker>,
    who: Option<&Principal>,
    req: ProduceRequest,
    _version: i16,
) -> ProduceResponse {
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
            let denied = who.and_then(|p| {
                crate::auth::may_produce(&broker.state, p, &name)
                    .err()
                    .map(|d| d.to_string())
            });
            tasks.spawn(async move {
                let index = part.index;
                let r = match denied {
                    Some(why) => Outcome::failed(code::TOPIC_AUTHORIZATION_FAILED, why),
                    None => {
                        produce_partition(&broker, &name, index, part.records, transactional).await
                    }
                };
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
    let look = ingest.needs_look(topic);
    // Stored as an agent's uncompressed batch is: with `store_codec` (lz4 by default; `none`
    // spends no CPU on it, for more bytes on disk).
    let codec = ingest.config.store_codec;
    let built =
        tokio::task::spawn_blocking(move || build(&data, max_raw, &key_field, look, codec)).await;
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

/// `look`: the topic has routing rules or a key field, so the store's path reads every
/// record: the batches come decoded. Otherwise only their headers are read there (see
/// [`crate::ingest::Ingest::ingest_to_partition`]) and the records are not materialised.
fn build(
    data: &Bytes,
    max_raw: usize,
    key_field: &str,
    look: bool,
    codec: Codec,
) -> Result<Built, Outcome> {
    let converted = records::convert(data, max_raw, key_field, |producer| match producer {
        Some((pid, seq)) => BatchBuilder::with_origin(kafka_origin(pid), seq as u64),
        None => BatchBuilder::new(),
    })
    .map_err(|(code, why)| Outcome::failed(code, why))?;
    let mut items = Vec::with_capacity(converted.len());
    let mut after = None;
    for (i, c) in converted.into_iter().enumerate() {
        if c.builder.record_count() == 0 {
            continue;
        }
        // Only the first batch of a request may need to wait for its predecessor; later ones
        // follow it in the same request.
        if let Some((pid, seq)) = c.producer
            && i == 0
            && seq > 0
        {
            after = Some((kafka_origin(pid), seq as u64));
        }
        let enc = c
            .builder
            .finish(codec, 1, ferry_core::now_ms())
            .map_err(|e| Outcome::failed(code::MESSAGE_TOO_LARGE, e.to_string()))?;
        let enc = Bytes::from(enc);
        let batch = if look {
            let limits = DecodeLimits {
                max_raw_bytes: (max_raw as u64).max(1 << 20) * 2,
                max_records: 1 << 24,
            };
            batch::decode(&enc, &limits)
                .map_err(|e| Outcome::failed(code::CORRUPT_MESSAGE, e.to_string()))?
        } else {
            Batch {
                header: BatchHeader::parse(&enc)
                    .map_err(|e| Outcome::failed(code::CORRUPT_MESSAGE, e.to_string()))?,
                records: Vec::new(),
            }
        };
        items.push((enc, batch));
    }
    Ok((items, after))
}

/// The store origin of an idempotent producer's records.
fn kafka_origin(producer_id: i64) -> OriginKey {
    ferry_core::topic::producer_origin(&format!("kafka-{producer_id}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record as KafkaRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn produced(producer_id: i64, first_seq: i32, n: usize) -> Bytes {
        let recs: Vec<KafkaRecord> = (0..n)
            .map(|i| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: first_seq + i as i32,
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("line {i}"))),
                headers: [(
                    StrBytes::from_string("h".into()),
                    Some(Bytes::from_static(b"v")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Lz4,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    /// The batch handed to the store is what decoding its bytes gives: the records are not
    /// decoded again on the produce path, so this is what keeps the two the same.
    #[test]
    fn built_batches_equal_their_decoded_bytes_with_and_without_a_producer() {
        let limits = ferry_core::batch::DecodeLimits::default();
        for (pid, seq, want_after) in [(-1, -1, None), (42, 0, None), (42, 500, Some(500))] {
            let (items, after) = match build(
                &produced(pid, seq, 7),
                1 << 20,
                "kafka.key",
                true,
                Codec::Lz4,
            ) {
                Ok(b) => b,
                Err(_) => panic!("producer {pid}: refused"),
            };
            assert_eq!(items.len(), 1);
            let (enc, built) = &items[0];
            let decoded = ferry_core::batch::decode(enc, &limits).expect("decodes");
            assert_eq!(built.records, decoded.records, "producer {pid}");
            assert_eq!(built.header.origin, decoded.header.origin);
            assert_eq!(after.map(|(_, a)| a), want_after);
            if pid >= 0 {
                let o = decoded.header.origin.as_ref().expect("origin");
                assert_eq!(o.key.agent_id, format!("producer/kafka-{pid}"));
                assert_eq!((o.first_offset, o.end_offset), (seq as u64, seq as u64 + 7));
            } else {
                assert!(decoded.header.origin.is_none());
            }
        }
    }

    #[test]
    fn idempotence_is_read_from_every_partitions_batch_header() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        let req = |batches: Vec<Bytes>| {
            ProduceRequest::default().with_topic_data(vec![
                TopicProduceData::default().with_partition_data(
                    batches
                        .into_iter()
                        .enumerate()
                        .map(|(i, b)| {
                            PartitionProduceData::default()
                                .with_index(i as i32)
                                .with_records(Some(b))
                        })
                        .collect(),
                ),
            ])
        };
        assert!(idempotent(&req(vec![produced(3, 0, 2), produced(3, 9, 2)])));
        assert!(!idempotent(&req(vec![
            produced(3, 0, 2),
            produced(-1, -1, 2)
        ])));
        assert!(!idempotent(&req(vec![Bytes::from_static(b"short")])));
        assert!(!idempotent(&req(vec![])));
    }
}
