//! Records: ingest (`POST /v1/topics/{t}/records`), fetch
//! (`GET /v1/topics/{t}/partitions/{p}/records`) and the offset for a time
//! (`GET /v1/topics/{t}/partitions/{p}/offset`).

use super::body::{content_length, drain, is_length_limit, too_large};
use super::{ApiError, AppState, blocking};
use crate::ingest::{IngestSummary, Producer};
use crate::store::{ReadBatches, Store};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::batch::{
    AFTER_HEADER as FERRY_AFTER, DecodeLimits, PRODUCER_ID_HEADER as PRODUCER_ID,
    PRODUCER_SEQ_HEADER as PRODUCER_SEQ,
};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest long-poll a fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Ingest: 200 with an [`IngestSummary`] once every record is durable.
pub(super) async fn post_records(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    let started = Instant::now();
    let limits = &state.config.limits;
    let retry = limits.retry_after_secs;
    let max_body = limits.max_body_bytes.get();
    let declared = content_length(&headers);
    if let Some(n) = declared
        && n > max_body
    {
        let err = too_large(format!(
            "body is {n} bytes, over max_body_bytes ({max_body})"
        ));
        // Read (and discard) what the client is sending, so it sees the 413 instead of a
        // connection reset mid-upload; past a bound, the connection is simply closed.
        drain(body, max_body.saturating_mul(4)).await;
        return Err(err);
    }
    let _permit = state.inflight_permit(declared.unwrap_or(max_body))?;
    let body = axum::body::to_bytes(body, max_body as usize)
        .await
        .map_err(|e| {
            if is_length_limit(&e) {
                too_large(format!("body is over max_body_bytes ({max_body})"))
            } else {
                ApiError::bad_request(format!("could not read body: {e}"))
            }
        })?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (ct, ce) = (
        header(header::CONTENT_TYPE),
        header(header::CONTENT_ENCODING),
    );
    let after = after_header(&headers)?;
    let producer = producer_headers(&headers)?;
    let bytes_in = body.len() as u64;
    let summary = state
        .ingest
        .ingest(&topic, ct, ce, body, after, producer)
        .await
        .map_err(|e| ApiError::ingest(e, retry))?;
    metrics::counter!("ferry_collector_bytes_received_total").increment(bytes_in);
    metrics::histogram!("ferry_collector_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(summary))
}

/// `ferry-after: OFFSET`, the predecessor an agent's batch must follow.
fn after_header(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(FERRY_AFTER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{FERRY_AFTER} must be a file offset (an unsigned integer), got {v:?}"
            ))
        })
}

/// `ferry-producer-id` and `ferry-producer-seq`: both or neither.
fn producer_headers(headers: &HeaderMap) -> Result<Option<Producer>, ApiError> {
    match (headers.get(PRODUCER_ID), headers.get(PRODUCER_SEQ)) {
        (None, None) => Ok(None),
        (Some(id), Some(seq)) => Producer::parse(
            id.to_str().unwrap_or("(not ASCII)"),
            seq.to_str().unwrap_or("(not ASCII)"),
        )
        .map(Some)
        .map_err(ApiError::bad_request),
        _ => Err(ApiError::bad_request(format!(
            "{PRODUCER_ID} and {PRODUCER_SEQ} go together: send both or neither"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchQuery {
    offset: u64,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    format: Option<String>,
}

/// Fetch: stored batches from `offset`, long-polling up to `wait_ms` when there is nothing yet.
pub(super) async fn fetch(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<FetchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let json = match q.format.as_deref() {
        None | Some("batch") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?} (batch or json)"
            )));
        }
    };
    let max_fetch = state.config.limits.max_fetch_bytes.get();
    let max_bytes = q.max_bytes.unwrap_or(1 << 20).min(max_fetch) as usize;
    let store = state.store()?;
    let mut read = read_blocking(store, &topic, partition, q.offset, max_bytes).await?;
    if read.batches.is_empty()
        && let Some(wait) = q.wait_ms.filter(|w| *w > 0)
    {
        let wait = Duration::from_millis(wait).min(MAX_WAIT);
        store.wait_for_data(&topic, partition, q.offset, wait).await;
        read = read_blocking(store, &topic, partition, q.offset, max_bytes).await?;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        ferry_core::fetch::HEADER_LOG_START,
        HeaderValue::from(read.log_start),
    );
    headers.insert(
        ferry_core::fetch::HEADER_END_OFFSET,
        HeaderValue::from(read.end_offset),
    );
    metrics::counter!("ferry_collector_fetch_batches_total").increment(read.batches.len() as u64);
    let (content_type, out) = if json {
        ("application/x-ndjson", json_lines(&read, q.offset)?)
    } else {
        let mut out = Vec::with_capacity(read.batches.iter().map(|b| b.data.len() + 20).sum());
        for b in &read.batches {
            ferry_core::fetch::put_frame(&mut out, b.base_offset, b.append_time_ms, &b.data);
        }
        (ferry_core::fetch::CONTENT_TYPE, out)
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((headers, out).into_response())
}

/// `format=json`: one JSON object per record at or after `from`.
fn json_lines(read: &ReadBatches, from: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let limits = DecodeLimits::default();
    for b in &read.batches {
        let batch = ferry_core::batch::decode(&b.data, &limits).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "stored batch at offset {} is unreadable: {e}",
                    b.base_offset
                ),
            )
        })?;
        for (i, r) in batch.records.iter().enumerate() {
            let offset = b.base_offset + i as u64;
            if offset < from {
                continue;
            }
            let fields: serde_json::Map<String, serde_json::Value> = r
                .fields
                .iter()
                .map(|f| (f.key.to_string(), serde_json::Value::from(&*f.value)))
                .collect();
            let v = serde_json::json!({
                "offset": offset,
                "line": String::from_utf8_lossy(&r.line),
                "truncated": r.truncated,
                "event_time_ms": r.event_time_ms,
                "append_time_ms": b.append_time_ms,
                "fields": fields,
            });
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Store reads touch files: they run on the blocking pool, never on the async workers.
async fn read_blocking(
    store: &Store,
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: usize,
) -> Result<ReadBatches, ApiError> {
    let store = store.clone();
    let topic = topic.to_owned();
    blocking(move || store.read(&topic, partition, offset, max_bytes))
        .await?
        .map_err(|e| ApiError::store(e, 1))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeQuery {
    timestamp_ms: i64,
}

/// The first offset appended at or after `timestamp_ms`.
pub(super) async fn offset_for_time(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<TimeQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let store = state.store()?.clone();
    let offset = blocking(move || store.offset_for_timestamp(&topic, partition, q.timestamp_ms))
        .await?
        .map_err(|e| ApiError::store(e, 1))?;
    Ok(Json(serde_json::json!({ "offset": offset })))
}
