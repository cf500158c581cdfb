//! The HTTP API (DESIGN.md's contract), as an axum `Router` built by [`app`] so tests can call it
//! without a socket.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/topics/{topic}/records` | ingest; 200 once durable, with an [`IngestSummary`] |
//! | `GET /v1/topics`, `GET /v1/topics/{topic}` | topics with partitions, offsets, sizes |
//! | `PUT /v1/topics/{topic}` | create with `{"partitions": N}` |
//! | `DELETE /v1/topics/{topic}` | delete the topic and its records |
//! | `GET /v1/topics/{topic}/partitions/{p}/records` | fetch: `offset`, `max_bytes`, `wait_ms` (long-poll), `format=batch\|json` |
//! | `GET /v1/topics/{topic}/partitions/{p}/offset` | `timestamp_ms` → first offset at or after it |
//! | `POST /v1/groups/{group}/join` · `heartbeat` · `leave` · `commit` | consumer groups |
//! | `GET /v1/groups`, `GET /v1/groups/{group}/offsets` | groups with members and lag |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus text |
//!
//! Bodies are bounded per route: ingest by `limits.max_body_bytes`, the JSON routes by
//! [`MAX_JSON_BODY_BYTES`] ([`JsonBody`]), checkpoints by `limits.max_checkpoint_bytes` and only
//! after the ownership check. File-system work runs on the blocking pool (`blocking`).
//!
//! Every error is a JSON `{"error": "..."}` with a status that says whose problem it is: 400
//! malformed, 401/403 auth, 404 unknown, 409 not the owner, 413 too large, 416 offset out of
//! range, 429/503 over a limit (with `Retry-After`).

use crate::config::CollectorConfig;
use crate::coordinator::{Assignment, CoordError, Coordinator, Tp};
use crate::ingest::{Ingest, IngestError, IngestSummary, Producer};
use crate::store::{Store, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use ferry_core::batch::{
    AFTER_HEADER as FERRY_AFTER, DecodeLimits, PRODUCER_ID_HEADER as PRODUCER_ID,
    PRODUCER_SEQ_HEADER as PRODUCER_SEQ,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Longest long-poll a fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// What every handler shares.
pub struct AppState {
    /// The ingest path (and through it the store); an `Arc` so that a request's blocking
    /// steps can take it to the blocking pool.
    pub ingest: Arc<Ingest>,
    /// Group membership; a std mutex never held across an await.
    pub coordinator: Mutex<Coordinator>,
    /// Origin of the coordinator's monotonic clock.
    pub started: Instant,
    /// Request bytes in flight, in KiB permits (`max_inflight_bytes`).
    pub inflight: Semaphore,
    /// Total permits of `inflight` (a request never asks for more than all of them).
    pub inflight_kib: u32,
    pub config: Arc<CollectorConfig>,
    /// Processor checkpoints (state + offset per group and partition).
    pub checkpoints: crate::checkpoints::Checkpoints,
}

impl AppState {
    pub fn new(ingest: Ingest) -> Self {
        let config = ingest.config.clone();
        let kib = (config.limits.max_inflight_bytes.get() / 1024).clamp(1, u64::from(u32::MAX));
        Self {
            ingest: Arc::new(ingest),
            coordinator: Mutex::new(Coordinator::new()),
            started: Instant::now(),
            inflight: Semaphore::new(kib as usize),
            inflight_kib: kib as u32,
            checkpoints: crate::checkpoints::Checkpoints::new(&config.data_dir),
            config,
        }
    }

    /// Counts `bytes` of a request body against `max_inflight_bytes` for as long as the permit
    /// lives; 503 when the collector is at the limit.
    fn inflight_permit(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        let kib = (bytes / 1024 + 1).min(u64::from(self.inflight_kib)) as u32;
        self.inflight.try_acquire_many(kib).map_err(|_| {
            metrics::counter!("ferry_collector_refused_total", "reason" => "inflight_bytes")
                .increment(1);
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "collector is at max_inflight_bytes; retry later".into(),
                retry_after: Some(self.config.limits.retry_after_secs),
            }
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn partitions_of(&self) -> impl Fn(&str) -> Option<u32> + '_ {
        |t| self.ingest.store().and_then(|s| s.topic_partitions(t))
    }

    /// The embedded store, or the answer every read/group endpoint gives on the Kafka backend.
    pub fn store(&self) -> Result<&Store, ApiError> {
        self.ingest.store().ok_or_else(kafka_backend_error)
    }

    /// Removes group members whose session expired (called periodically by the server).
    pub fn expire_members(&self) {
        let now = self.now_ms();
        let parts = self.partitions_of();
        if let Ok(mut c) = self.coordinator.lock() {
            for (group, member) in c.expire(now, &parts) {
                tracing::info!(group, member, "group member expired");
                metrics::counter!("ferry_collector_group_members_expired_total").increment(1);
            }
        }
    }
}

/// The API's error: a status and a message safe to show the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, error = %self.message, "request refused");
        }
        metrics::counter!("ferry_collector_http_errors_total", "status" => self.status.as_u16().to_string())
            .increment(1);
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

fn store_error(e: StoreError, retry_after: u32) -> ApiError {
    let status = match &e {
        StoreError::UnknownTopic(_) | StoreError::UnknownPartition { .. } => StatusCode::NOT_FOUND,
        StoreError::InvalidTopicName { .. } | StoreError::Batch(_) => StatusCode::BAD_REQUEST,
        StoreError::TopicExists { .. } | StoreError::OutOfOrder { .. } => StatusCode::CONFLICT,
        StoreError::OffsetOutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        StoreError::TooManyTopics { .. } => StatusCode::TOO_MANY_REQUESTS,
        StoreError::Closed | StoreError::Io { .. } | StoreError::Corruption { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let message = match &e {
        // The details (file paths, OS errors) are the operator's: they go to the log, the
        // client gets what it can act on.
        StoreError::Io { source, .. } => {
            tracing::error!(error = %e, "store I/O error");
            format!(
                "the collector could not store or read the data ({}); retry later, details are in the collector's log",
                source.kind()
            )
        }
        StoreError::Corruption { .. } => {
            tracing::error!(error = %e, "store corruption");
            "the collector found corrupt data; details are in the collector's log".to_owned()
        }
        _ => e.to_string(),
    };
    let mut err = ApiError::new(status, message);
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        err.retry_after = Some(retry_after);
    }
    err
}

impl From<(IngestError, u32)> for ApiError {
    fn from((e, retry): (IngestError, u32)) -> Self {
        match e {
            IngestError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            IngestError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            e @ IngestError::UnknownTopic(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            e @ (IngestError::TopicFull { .. } | IngestError::Busy(_)) => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: e.to_string(),
                retry_after: Some(retry),
            },
            IngestError::Store(s) => store_error(s, retry),
            e @ IngestError::Kafka(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(retry),
            },
        }
    }
}

/// What the topic, fetch and group endpoints answer when the collector stores into Kafka.
fn kafka_backend_error() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this collector stores records in Kafka; consume from Kafka directly: `ferry consume --kafka BROKERS TOPIC` (topics, offsets and groups live in the Kafka cluster)",
    )
}

fn coord_error(e: CoordError) -> ApiError {
    let status = match e {
        CoordError::UnknownMember { .. } | CoordError::UnknownGroup(_) => StatusCode::NOT_FOUND,
        CoordError::NotOwner { .. } => StatusCode::CONFLICT,
    };
    ApiError::new(status, e.to_string())
}

/// The whole API.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let v1 = if state.ingest.store().is_none() {
        // Kafka backend: only ingest; everything else is answered by the cluster itself.
        axum::Router::new()
            .route("/v1/topics/{topic}/records", post(post_records))
            .route(
                "/v1/{*rest}",
                axum::routing::any(|| async { kafka_backend_error() }),
            )
    } else {
        embedded_routes()
    };
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/", get(crate::console::page))
        .route("/console", get(crate::console::page))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route; see /v1/topics")
        })
        .with_state(state)
}

fn embedded_routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/topics", get(list_topics))
        .route(
            "/v1/topics/{topic}",
            get(get_topic).put(create_topic).delete(delete_topic),
        )
        .route("/v1/topics/{topic}/records", post(post_records))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(fetch),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/offset",
            get(offset_for_time),
        )
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{group}/join", post(join))
        .route("/v1/groups/{group}/heartbeat", post(heartbeat))
        .route("/v1/groups/{group}/leave", post(leave))
        .route("/v1/groups/{group}/commit", post(commit))
        .route("/v1/groups/{group}/offsets", get(group_offsets))
        .route(
            "/v1/groups/{group}/checkpoints/{topic}/{partition}",
            get(get_checkpoint).put(put_checkpoint),
        )
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            ferry_core::telemetry::METRICS_CONTENT_TYPE,
        )],
        ferry_core::telemetry::render_metrics(),
    )
}

async fn post_records(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    let started = Instant::now();
    let limits = &state.config.limits;
    let retry = limits.retry_after_secs;
    let max_body = limits.max_body_bytes.get();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > max_body
    {
        metrics::counter!("ferry_collector_refused_total", "reason" => "body_too_large")
            .increment(1);
        // Read (and discard) what the client is sending, so it sees the 413 instead of a
        // connection reset mid-upload; past a bound, the connection is simply closed.
        drain(body, max_body.saturating_mul(4)).await;
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is {n} bytes, over max_body_bytes ({max_body})"),
        ));
    }
    let _permit = state.inflight_permit(declared.unwrap_or(max_body))?;
    let body = axum::body::to_bytes(body, max_body as usize)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is over max_body_bytes ({max_body})"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("could not read body: {e}"))
            }
        })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ce = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let after = match headers.get(FERRY_AFTER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{FERRY_AFTER} must be a file offset (an unsigned integer), got {v:?}"
                        ),
                    )
                })?,
        ),
    };
    let producer = match (headers.get(PRODUCER_ID), headers.get(PRODUCER_SEQ)) {
        (None, None) => None,
        (Some(id), Some(seq)) => Some(
            Producer::parse(
                id.to_str().unwrap_or("(not ASCII)"),
                seq.to_str().unwrap_or("(not ASCII)"),
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{PRODUCER_ID} and {PRODUCER_SEQ} go together: send both or neither"),
            ));
        }
    };
    let bytes_in = body.len() as u64;
    let summary = state
        .ingest
        .ingest(&topic, ct, ce, body, after, producer)
        .await
        .map_err(|e| ApiError::from((e, retry)))?;
    metrics::counter!("ferry_collector_bytes_received_total").increment(bytes_in);
    metrics::histogram!("ferry_collector_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(summary))
}

/// Reads and drops up to `limit` bytes of a body.
async fn drain(body: Body, limit: u64) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen += d.len() as u64;
            if seen > limit {
                break;
            }
        }
    }
}

/// The wire contract's topic views, shared with every client (`ferry_core::client`).
pub use ferry_core::client::{PartitionInfo as PartitionView, TopicInfo as TopicView};

fn topic_views(state: &AppState) -> Result<Vec<TopicView>, ApiError> {
    Ok(state
        .store()?
        .topics()
        .into_iter()
        .map(|t| TopicView {
            records: t
                .partitions
                .iter()
                .map(|p| p.end_offset - p.log_start)
                .sum(),
            size_bytes: t.partitions.iter().map(|p| p.size_bytes).sum(),
            name: t.name,
            partitions: t
                .partitions
                .into_iter()
                .map(|p| PartitionView {
                    partition: p.partition,
                    log_start: p.log_start,
                    end_offset: p.end_offset,
                    size_bytes: p.size_bytes,
                    segments: p.segments,
                    last_append_ms: p.last_append_ms,
                })
                .collect(),
        })
        .collect())
}

async fn list_topics(State(state): State<Arc<AppState>>) -> Result<Json<Vec<TopicView>>, ApiError> {
    topic_views(&state).map(Json)
}

async fn get_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    topic_views(&state)?
        .into_iter()
        .find(|t| t.name == topic)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown topic {topic:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    partitions: u32,
}

async fn create_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    JsonBody(req): JsonBody<CreateTopic>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let limits = &state.config.limits;
    let max = limits.max_partitions_per_topic;
    if req.partitions == 0 || req.partitions > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("partitions must be between 1 and {max} (limits.max_partitions_per_topic)"),
        ));
    }
    let store = state.store()?.clone();
    let max_topics = limits.max_topics as usize;
    let name = topic.clone();
    let created = blocking(move || store.create_topic_bounded(&name, req.partitions, max_topics))
        .await?
        .map_err(|e| store_error(e, state.config.limits.retry_after_secs))?;
    let view = topic_views(&state)?
        .into_iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "topic vanished"))?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(view),
    ))
}

/// Deletes a topic and all its records: 204, or 404 if there is none.
async fn delete_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store()?.clone();
    let name = topic.clone();
    let deleted = blocking(move || store.delete_topic(&name))
        .await?
        .map_err(|e| store_error(e, 1))?;
    if deleted {
        metrics::counter!("ferry_collector_topics_deleted_total").increment(1);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown topic {topic:?}"),
        ))
    }
}

/// Runs file-system work on the blocking pool, never on the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the collector log",
        )
    })
}

/// Parses a JSON request body, answering 400 with serde's message (which names the field).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Largest body of a JSON route (topic creation, join, heartbeat, leave, commit): their
/// requests are a few hundred bytes; a larger body is refused (413) after at most this many
/// bytes were read.
pub const MAX_JSON_BODY_BYTES: usize = 64 << 10;

/// A JSON request body of at most [`MAX_JSON_BODY_BYTES`], parsed: 413 past the limit (without
/// reading the rest), 400 naming the field when it does not parse.
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let declared = content_length(req.headers());
        let body =
            read_limited(req.into_body(), declared, MAX_JSON_BODY_BYTES, "JSON body").await?;
        parse_json(&body).map(JsonBody)
    }
}

/// The request's `Content-Length`, if it sent a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body of at most `limit` bytes. A body declared larger is refused before a byte of
/// it is read; one that turns out larger (chunked) is refused as soon as it passes the limit.
/// Either way the rest is never read: the connection is closed after the 413.
async fn read_limited(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        metrics::counter!("ferry_collector_refused_total", "reason" => "body_too_large")
            .increment(1);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is over its limit of {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the {what}: {e}"),
            )
        }
    })
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("length limit")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchQuery {
    offset: u64,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    format: Option<String>,
}

async fn fetch(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<FetchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let json = match q.format.as_deref() {
        None | Some("batch") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?} (batch or json)"),
            ));
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
    if json {
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
                if offset < q.offset {
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
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return Ok((headers, out).into_response());
    }
    let mut out = Vec::with_capacity(read.batches.iter().map(|b| b.data.len() + 20).sum());
    for b in &read.batches {
        ferry_core::fetch::put_frame(&mut out, b.base_offset, b.append_time_ms, &b.data);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ferry_core::fetch::CONTENT_TYPE),
    );
    Ok((headers, out).into_response())
}

/// Store reads touch files: they run on the blocking pool, never on the async workers.
async fn read_blocking(
    store: &crate::store::Store,
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: usize,
) -> Result<crate::store::ReadBatches, ApiError> {
    let store = store.clone();
    let topic = topic.to_owned();
    blocking(move || store.read(&topic, partition, offset, max_bytes))
        .await?
        .map_err(|e| store_error(e, 1))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeQuery {
    timestamp_ms: i64,
}

async fn offset_for_time(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<TimeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let store = state.store()?.clone();
    let offset = blocking(move || store.offset_for_timestamp(&topic, partition, q.timestamp_ms))
        .await?
        .map_err(|e| store_error(e, 1))?;
    Ok(Json(serde_json::json!({ "offset": offset })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    #[serde(default)]
    pub member_id: Option<String>,
    pub topics: Vec<String>,
    #[serde(default)]
    pub session_timeout_ms: Option<u64>,
}

async fn join(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<Assignment>, ApiError> {
    validate_group(&group)?;
    if req.topics.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "topics is empty"));
    }
    for t in &req.topics {
        ferry_core::topic::validate_name(t)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    let g = &state.config.groups;
    let timeout = req
        .session_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(g.session_timeout.get())
        .clamp(g.min_session_timeout.get(), g.max_session_timeout.get());
    let now = state.now_ms();
    let parts = state.partitions_of();
    let mut c = state
        .coordinator
        .lock()
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned"))?;
    let a = c.join(
        &group,
        req.member_id.as_deref(),
        req.topics,
        timeout.as_millis() as u64,
        now,
        &parts,
    );
    tracing::info!(
        group,
        member = a.member_id,
        generation = a.generation,
        "member joined"
    );
    Ok(Json(a))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub member_id: String,
    #[serde(default)]
    pub owned: Vec<Tp>,
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<Assignment>, ApiError> {
    let now = state.now_ms();
    let parts = state.partitions_of();
    let mut c = state
        .coordinator
        .lock()
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned"))?;
    c.heartbeat(&group, &req.member_id, &req.owned, now, &parts)
        .map(Json)
        .map_err(coord_error)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    pub member_id: String,
}

async fn leave(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<LeaveRequest>,
) -> Result<StatusCode, ApiError> {
    let parts = state.partitions_of();
    let mut c = state
        .coordinator
        .lock()
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned"))?;
    c.leave(&group, &req.member_id, &parts)
        .map_err(coord_error)?;
    tracing::info!(group, member = req.member_id, "member left");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    #[serde(default)]
    pub member_id: Option<String>,
    pub offsets: Vec<OffsetEntry>,
}

async fn commit(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> Result<StatusCode, ApiError> {
    validate_group(&group)?;
    if let Some(member) = &req.member_id {
        let c = state.coordinator.lock().map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned")
        })?;
        for o in &req.offsets {
            c.check_owner(&group, member, &o.topic, o.partition)
                .map_err(coord_error)?;
        }
    }
    let store = state.store()?;
    for o in &req.offsets {
        let n = store.topic_partitions(&o.topic).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown topic {:?}", o.topic),
            )
        })?;
        if o.partition >= n {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "topic {} has {n} partitions; there is no partition {}",
                    o.topic, o.partition
                ),
            ));
        }
    }
    let offsets: Vec<(String, u32, u64)> = req
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    store
        .commit_offsets(&group, &offsets)
        .await
        .map_err(|e| store_error(e, 1))?;
    Ok(StatusCode::NO_CONTENT)
}

fn validate_group(group: &str) -> Result<(), ApiError> {
    // Group names follow the topic-name rules (they appear in file names and metrics).
    ferry_core::topic::validate_name(group)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.replace("topic", "group")))
}

async fn group_offsets(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
) -> Result<Json<Vec<OffsetEntry>>, ApiError> {
    Ok(Json(
        state
            .store()?
            .committed_offsets(&group)
            .into_iter()
            .map(|(topic, partition, offset)| OffsetEntry {
                topic,
                partition,
                offset,
            })
            .collect(),
    ))
}

/// The wire contract's group views, shared with every client (`ferry groups` reads them typed).
pub use ferry_core::client::{GroupView, LagView, MemberView};

async fn list_groups(State(state): State<Arc<AppState>>) -> Result<Json<Vec<GroupView>>, ApiError> {
    state.store()?;
    // Lag in seconds reads a batch of every partition with lag: on the blocking pool.
    blocking(move || group_views(&state)).await?.map(Json)
}

fn group_views(state: &AppState) -> Result<Vec<GroupView>, ApiError> {
    let store = state.store()?;
    let mut names = store.groups();
    let members: Vec<(String, Vec<MemberView>)> = match state.coordinator.lock() {
        Ok(c) => c
            .group_names()
            .into_iter()
            .map(|g| {
                let m = c
                    .describe(&g)
                    .into_iter()
                    .map(|m| MemberView {
                        member_id: m.member_id,
                        topics: m.topics,
                        partitions: m.partitions,
                    })
                    .collect();
                (g, m)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    for (g, _) in &members {
        if !names.contains(g) {
            names.push(g.clone());
        }
    }
    names.sort();
    let topics = store.topics();
    let now = ferry_core::now_ms();
    let views = names
        .into_iter()
        .map(|group| {
            let mut partitions = Vec::new();
            for (topic, partition, committed) in store.committed_offsets(&group) {
                let Some(info) = topics
                    .iter()
                    .find(|t| t.name == topic)
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                else {
                    continue;
                };
                let lag_records = info.end_offset.saturating_sub(committed);
                let lag_seconds = if lag_records == 0 {
                    0.0
                } else {
                    store
                        .read(&topic, partition, committed.max(info.log_start), 1)
                        .ok()
                        .and_then(|r| r.batches.first().map(|b| b.append_time_ms))
                        .map(|t| (now - t).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0)
                };
                metrics::gauge!("ferry_collector_group_lag_records", "group" => group.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(lag_records as f64);
                partitions.push(LagView {
                    topic,
                    partition,
                    committed,
                    end_offset: info.end_offset,
                    lag_records,
                    lag_seconds,
                });
            }
            GroupView {
                lag_records: partitions.iter().map(|p| p.lag_records).sum(),
                members: members
                    .iter()
                    .find(|(g, _)| *g == group)
                    .map(|(_, m)| {
                        m.iter()
                            .map(|m| MemberView {
                                member_id: m.member_id.clone(),
                                topics: m.topics.clone(),
                                partitions: m.partitions.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                group,
                partitions,
            }
        })
        .collect();
    Ok(views)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCheckpointQuery {
    member_id: String,
    offset: u64,
}

/// Stores a processor's state for a partition together with the input offset it reflects, and
/// commits that offset for the group (so lag shows). Only the member owning the partition may.
async fn put_checkpoint(
    State(state): State<Arc<AppState>>,
    Path((group, topic, partition)): Path<(String, String, u32)>,
    query: Result<Query<PutCheckpointQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    validate_group(&group)?;
    {
        let c = state.coordinator.lock().map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned")
        })?;
        c.check_owner(&group, &q.member_id, &topic, partition)
            .map_err(coord_error)?;
    }
    // Only the owner gets this far: the body is read now, bounded by max_checkpoint_bytes and
    // counted against max_inflight_bytes like an ingest body.
    let limit = state.config.limits.max_checkpoint_bytes.as_usize();
    let declared = content_length(&headers);
    let _permit = state.inflight_permit(declared.unwrap_or(limit as u64).min(limit as u64))?;
    let blob = read_limited(body, declared, limit, "checkpoint").await?;
    let checkpoints = state.checkpoints.clone();
    let (g, t) = (group.clone(), topic.clone());
    let offset = q.offset;
    blocking(move || checkpoints.put(&g, &t, partition, offset, &blob))
        .await?
        .map_err(checkpoint_error)?;
    state
        .store()?
        .commit_offsets(&group, &[(topic, partition, offset)])
        .await
        .map_err(|e| store_error(e, 1))?;
    metrics::counter!("ferry_collector_checkpoints_stored_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

/// A checkpoint that could not be written or read: the path and OS error go to the log, the
/// client learns what kind of failure it was.
fn checkpoint_error(e: crate::checkpoints::CheckpointError) -> ApiError {
    tracing::error!(error = %e, "checkpoint");
    let message = match &e {
        crate::checkpoints::CheckpointError::Io { source, .. } => format!(
            "the collector could not store or read the checkpoint ({}); retry later, details are in the collector's log",
            source.kind()
        ),
        crate::checkpoints::CheckpointError::Corrupt { reason, .. } => {
            format!(
                "the stored checkpoint is corrupt ({reason}); details are in the collector's log"
            )
        }
    };
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message,
        retry_after: Some(1),
    }
}

/// The stored checkpoint: the state as the body, its input offset in `x-ferry-offset`.
async fn get_checkpoint(
    State(state): State<Arc<AppState>>,
    Path((group, topic, partition)): Path<(String, String, u32)>,
) -> Result<Response, ApiError> {
    validate_group(&group)?;
    let checkpoints = state.checkpoints.clone();
    let (g, t) = (group.clone(), topic.clone());
    let found = blocking(move || checkpoints.get(&g, &t, partition))
        .await?
        .map_err(checkpoint_error)?;
    match found {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no checkpoint for group {group} on {topic}/{partition}"),
        )),
        Some(c) => {
            let mut headers = HeaderMap::new();
            headers.insert("x-ferry-offset", HeaderValue::from(c.offset));
            Ok((headers, c.state).into_response())
        }
    }
}
