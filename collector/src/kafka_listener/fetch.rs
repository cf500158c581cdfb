//! Fetch and ListOffsets on the embedded store.
//!
//! Fetch reads whole stored batches from each partition's fetch offset and re-encodes their
//! records as Kafka record batches (format v2, uncompressed), dropping the records before
//! the fetch offset. It long-polls as Kafka does: when less than `min_bytes` is ready it
//! waits, up to `max_wait_ms`, for any of the partitions to grow, then reads again. Isolation
//! levels are the same here (nothing is transactional). Fetch sessions (KIP-227) are not
//! kept: every answer has session id 0, which tells the client to send full requests.

use super::allowed;
use super::records::{self, DEFAULT_KEY_FIELD};
use super::{Broker, code};
use crate::auth::{Permission, Principal};
use crate::store::StoreError;
use bytes::BytesMut;
use ferry_core::batch::{BatchHeader, DecodeLimits};
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
    /// The principal may consume the topic (else the partition answers
    /// TOPIC_AUTHORIZATION_FAILED).
    permitted: bool,
    topic_index: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

pub async fn fetch(
    broker: &Arc<Broker>,
    who: Option<&Principal>,
    req: FetchRequest,
    version: i16,
) -> FetchResponse {
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
        let permitted = allowed(who, Permission::Consume, t.topic.0.as_str());
        for p in &t.partitions {
            wants.push(Want {
                permitted,
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
    if !w.permitted {
        return base.with_error_code(code::TOPIC_AUTHORIZATION_FAILED);
    }
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
        let skip = offset.saturating_sub(b.base_offset) as usize;
        if skip >= b.record_count as usize {
            continue;
        }
        // Decompressed, then re-encoded in place: no record is materialised.
        let mark = buf.len();
        let encoded = BatchHeader::parse(&b.data)
            .and_then(|h| {
                let raw = ferry_core::batch::decompress(
                    b.data.slice(h.payload_start..h.total_len),
                    &h,
                    &limits,
                )?;
                Ok((h, raw))
            })
            .and_then(|(h, raw)| {
                records::encode_stored_raw(
                    &mut buf,
                    b.base_offset,
                    b.append_time_ms,
                    &raw,
                    h.record_count,
                    skip,
                    key_field,
                )
            });
        if let Err(e) = encoded {
            buf.truncate(mark);
            // The store verified the batch when it was written and CRC-checks reads; one that
            // still does not decode is skipped (the consumer moves past it) and counted.
            metrics::counter!("ferry_kafka_fetch_undecodable_batches_total").increment(1);
            tracing::warn!(topic = %w.topic, partition, offset = b.base_offset, error = %e, "kafka fetch: stored batch does not decode; skipped");
        }
    }
    base.with_records(Some(buf.freeze()))
}

pub fn list_offsets(
    broker: &Broker,
    who: Option<&Principal>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // The codec refuses fields a version does not have (leader epoch: v4+).
    let epoch = if version >= 4 { 0 } else { -1 };
    let store = broker.state.ingest.store();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.as_str().to_owned();
            let permitted = allowed(who, Permission::Consume, &name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_leader_epoch(epoch);
                    if !permitted {
                        return r
                            .with_offset(-1)
                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED);
                    }
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
                        ts => match offset_for_time(s, &name, i, ts) {
                            Ok(Some((o, at))) => r.with_offset(o as i64).with_timestamp(at),
                            Ok(None) => r.with_offset(-1),
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

/// Bytes a ListOffsets-by-time may read past where it started before it gives up.
const MAX_TIME_SCAN_BYTES: usize = 256 << 20;

/// The first offset whose record's timestamp (its event time, else its batch's append time:
/// what Fetch reports) is at or after `ts`, and that timestamp; `None` if there is none.
///
/// The store indexes append times. A record is appended after it happened, so a record with
/// a timestamp at or after `ts` was appended at or after `ts`: the scan starts where the
/// append-time index says and reads forward (at most [`MAX_TIME_SCAN_BYTES`]) to the first
/// record whose own timestamp qualifies. Records stamped in the future of their append are
/// the exception this can miss, as a broker with `message.timestamp.type=LogAppendTime`
/// would.
fn offset_for_time(
    store: &crate::store::Store,
    topic: &str,
    partition: u32,
    ts: i64,
) -> Result<Option<(u64, i64)>, StoreError> {
    let (_, end) = store.bounds(topic, partition)?;
    let mut at = store.offset_for_timestamp(topic, partition, ts)?;
    let limits = DecodeLimits {
        max_raw_bytes: u64::MAX,
        max_records: u64::MAX,
    };
    let mut scanned = 0usize;
    while at < end && scanned < MAX_TIME_SCAN_BYTES {
        let read = store.read(topic, partition, at, 1 << 20)?;
        if read.batches.is_empty() {
            break;
        }
        for b in &read.batches {
            scanned += b.data.len();
            let Ok(decoded) = ferry_core::batch::decode(&b.data, &limits) else {
                at = at.max(b.base_offset + u64::from(b.record_count));
                continue;
            };
            for (k, rec) in decoded.records.iter().enumerate() {
                let offset = b.base_offset + k as u64;
                let t = rec
                    .event_time_ms
                    .filter(|&t| t > 0)
                    .unwrap_or(b.append_time_ms);
                if offset >= at && t >= ts {
                    return Ok(Some((offset, t)));
                }
            }
            at = at.max(b.base_offset + u64::from(b.record_count));
        }
    }
    Ok(None)
}
