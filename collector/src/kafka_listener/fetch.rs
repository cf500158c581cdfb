//! Fetch and ListOffsets on the embedded store.
//!
//! Fetch reads whole stored batches from each partition's fetch offset and re-encodes their
//! records as Kafka record batches (format v2, uncompressed), dropping the records before
//! the fetch offset. It long-polls as Kafka does: when less than `min_bytes` is ready it
//! waits, up to `max_wait_ms`, for any of the partitions to grow, then reads again. Isolation
//! levels are the same here (nothing is transactional). Fetch sessions (KIP-227) are not
//! kept: every answer has session id 0, which tells the client to send full requests.

use super::records::{self, DEFAULT_KEY_FIELD};
use super::{Broker, code};
use crate::store::StoreError;
use bytes::BytesMut;
use ferry_core::batch::DecodeLimits;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest long poll, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One partition a fetch reads: where, and from which offset.
#[derive(Debug, Clone)]
struct Want {
    topic_index: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

pub async fn fetch(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let limit = broker.state.config.limits.max_fetch_bytes.as_usize();
    let max_total = if version >= 3 && req.max_bytes > 0 {
        (req.max_bytes as usize).min(limit)
    } else {
        limit
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let mut wants = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        for p in &t.partitions {
            wants.push(Want {
                topic_index: ti,
                topic: t.topic.0.as_str().to_owned(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let names: Vec<_> = req.topics.iter().map(|t| t.topic.clone()).collect();
    loop {
        let read = {
            let broker = broker.clone();
            let wants = wants.clone();
            tokio::task::spawn_blocking(move || read_all(&broker, &wants, max_total)).await
        };
        let (parts, bytes) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "kafka fetch task failed");
                return FetchResponse::default().with_error_code(code::UNKNOWN_SERVER_ERROR);
            }
        };
        let now = Instant::now();
        if bytes >= min_bytes.max(1) || now >= deadline || broker.shutdown.is_triggered() {
            metrics::counter!("ferry_kafka_fetched_bytes_total").increment(bytes as u64);
            return respond(&names, parts);
        }
        wait_for_any(broker, &wants, deadline - now).await;
    }
}

fn respond(
    names: &[kafka_protocol::messages::TopicName],
    parts: Vec<(usize, PartitionData)>,
) -> FetchResponse {
    let mut topics: Vec<FetchableTopicResponse> = names
        .iter()
        .map(|n| FetchableTopicResponse::default().with_topic(n.clone()))
        .collect();
    for (ti, p) in parts {
        topics[ti].partitions.push(p);
    }
    FetchResponse::default().with_responses(topics)
}

/// Waits until any wanted partition has data past its fetch offset, `timeout`, or shutdown.
async fn wait_for_any(broker: &Broker, wants: &[Want], timeout: Duration) {
    let Some(store) = broker.state.ingest.store() else {
        return;
    };
    let mut set = tokio::task::JoinSet::new();
    for w in wants {
        let (Ok(p), Ok(o)) = (u32::try_from(w.partition), u64::try_from(w.offset)) else {
            continue;
        };
        let store = store.clone();
        let topic = w.topic.clone();
        set.spawn(async move { store.wait_for_data(&topic, p, o, timeout).await });
    }
    if set.is_empty() {
        tokio::time::sleep(timeout).await;
        return;
    }
    tokio::select! {
        _ = set.join_next() => {}
        _ = broker.shutdown.wait() => {}
    }
    set.abort_all();
}

/// Reads every wanted partition (blocking I/O): the partition answers and the record bytes.
fn read_all(
    broker: &Broker,
    wants: &[Want],
    max_total: usize,
) -> (Vec<(usize, PartitionData)>, usize) {
    let mut total = 0usize;
    let mut out = Vec::with_capacity(wants.len());
    for w in wants {
        // KIP-74: past the total, partitions answer empty; the first batch always goes.
        let room = if total == 0 {
            w.max_bytes.max(1)
        } else {
            w.max_bytes.min(max_total.saturating_sub(total))
        };
        let p = read_partition(broker, w, room);
        total += p.records.as_ref().map_or(0, |r| r.len());
        out.push((w.topic_index, p));
    }
    (out, total)
}

fn read_partition(broker: &Broker, w: &Want, max_bytes: usize) -> PartitionData {
    let base = PartitionData::default()
        .with_partition_index(w.partition)
        .with_aborted_transactions(Some(Vec::new()))
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1));
    let Some(store) = broker.state.ingest.store() else {
        return base.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let (Ok(partition), Ok(offset)) = (u32::try_from(w.partition), u64::try_from(w.offset)) else {
        return base.with_error_code(code::OFFSET_OUT_OF_RANGE);
    };
    let Ok((log_start, end)) = store.bounds(&w.topic, partition) else {
        return base.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let base = base
        .with_high_watermark(end as i64)
        .with_last_stable_offset(end as i64)
        .with_log_start_offset(log_start as i64);
    if max_bytes == 0 || offset == end {
        return base.with_records(Some(Default::default()));
    }
    let read = match store.read(&w.topic, partition, offset, max_bytes) {
        Ok(r) => r,
        Err(StoreError::OffsetOutOfRange { .. }) => {
            return base.with_error_code(code::OFFSET_OUT_OF_RANGE);
        }
        Err(e) => {
            tracing::warn!(topic = %w.topic, partition, error = %e, "kafka fetch: read failed");
            return base.with_error_code(code::KAFKA_STORAGE_ERROR);
        }
    };
    let key_field = broker
        .state
        .config
        .topics
        .get(&w.topic)
        .and_then(|t| t.key_field.as_deref())
        .unwrap_or(DEFAULT_KEY_FIELD);
    let limits = DecodeLimits {
        max_raw_bytes: u64::MAX,
        max_records: u64::MAX,
    };
    let mut buf = BytesMut::new();
    for b in &read.batches {
        if !buf.is_empty() && buf.len() >= max_bytes {
            break;
        }
        let decoded = match ferry_core::batch::decode(&b.data, &limits) {
            Ok(d) => d,
            Err(e) => {
                // The store verified it when it was written and CRC-checks reads; a batch
                // that still does not decode is skipped and counted.
                metrics::counter!("ferry_kafka_fetch_undecodable_batches_total").increment(1);
                tracing::warn!(topic = %w.topic, partition, offset = b.base_offset, error = %e, "kafka fetch: stored batch does not decode; skipped");
                continue;
            }
        };
        let skip = offset.saturating_sub(b.base_offset) as usize;
        if skip >= decoded.records.len() {
            continue;
        }
        if let Err(e) = records::encode_stored(
            &mut buf,
            b.base_offset + skip as u64,
            b.append_time_ms,
            &decoded.records[skip..],
            key_field,
        ) {
            tracing::error!(error = %e, "kafka fetch: could not encode a record batch");
            return base.with_error_code(code::UNKNOWN_SERVER_ERROR);
        }
    }
    base.with_records(Some(buf.freeze()))
}

pub fn list_offsets(broker: &Broker, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    // The codec refuses fields a version does not have (leader epoch: v4+).
    let epoch = if version >= 4 { 0 } else { -1 };
    let store = broker.state.ingest.store();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.as_str().to_owned();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_leader_epoch(epoch);
                    let bounds = store.and_then(|s| {
                        u32::try_from(p.partition_index)
                            .ok()
                            .and_then(|i| s.bounds(&name, i).ok().map(|b| (s, i, b)))
                    });
                    let Some((s, i, (start, end))) = bounds else {
                        return r
                            .with_offset(-1)
                            .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    match p.timestamp {
                        -2 => r.with_offset(start as i64),
                        -1 => r.with_offset(end as i64),
                        -3 => r.with_offset(end.saturating_sub(1).max(start) as i64),
                        ts => match s.offset_for_timestamp(&name, i, ts) {
                            Ok(o) if o < end => {
                                let at = s
                                    .read(&name, i, o, 1)
                                    .ok()
                                    .and_then(|r| r.batches.first().map(|b| b.append_time_ms))
                                    .unwrap_or(ts);
                                r.with_offset(o as i64).with_timestamp(at)
                            }
                            Ok(_) => r.with_offset(-1),
                            Err(_) => r.with_offset(-1).with_error_code(code::KAFKA_STORAGE_ERROR),
                        },
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
