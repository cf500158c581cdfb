//! The API's one error type. Every handler answers `Result<_, ApiError>`; every failure of a
//! layer below (store, ingest, coordinator, checkpoints) becomes one through a `From` here, so
//! the mapping to a status lives in one place.
//!
//! The client gets `{"error": "..."}`, a status that says whose problem it is, and
//! `Retry-After` on 429/503. What only the operator needs (file paths, OS errors) is the
//! error's `detail`: logged when the response is made, never sent.

use crate::checkpoints::CheckpointError;
use crate::coordinator::CoordError;
use crate::ingest::IngestError;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API error: a status and a message safe to show the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// What the client reads: what happened and what to do; never a server path.
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503 over a limit or while the store fails).
    pub retry_after: Option<u32>,
    /// The operator's details (paths, OS errors): logged, not sent.
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            detail: None,
        }
    }

    /// The same error, answered with `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same error, with details for the log only.
    pub fn detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A failure of ours the client cannot act on; `detail` goes to the log.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the collector log",
        )
        .detail(detail)
    }

    /// The coordinator's lock was poisoned by a panic.
    pub fn coordinator_poisoned() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "coordinator poisoned")
    }

    /// What the topic, fetch and group endpoints answer when the collector stores into Kafka.
    pub fn kafka_backend() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "this collector stores records in Kafka; consume from Kafka directly: `ferry consume --kafka BROKERS TOPIC` (topics, offsets and groups live in the Kafka cluster)",
        )
    }

    /// A store error; `retry_after` is given with 429 and 503.
    pub fn store(e: StoreError, retry_after: u32) -> Self {
        let status = match &e {
            StoreError::UnknownTopic(_) | StoreError::UnknownPartition { .. } => {
                StatusCode::NOT_FOUND
            }
            StoreError::InvalidTopicName { .. } | StoreError::Batch(_) => StatusCode::BAD_REQUEST,
            StoreError::TopicExists { .. } | StoreError::OutOfOrder { .. } => StatusCode::CONFLICT,
            StoreError::OffsetOutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            StoreError::TooManyTopics { .. } => StatusCode::TOO_MANY_REQUESTS,
            StoreError::Closed | StoreError::Io { .. } | StoreError::Corruption { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        // The details (file paths, OS errors) are the operator's: they go to the log, the
        // client gets what it can act on.
        let err = match &e {
            StoreError::Io { source, .. } => ApiError::new(
                status,
                format!(
                    "the collector could not store or read the data ({}); retry later, details are in the collector's log",
                    source.kind()
                ),
            )
            .detail(format_args!("store I/O error: {e}")),
            StoreError::Corruption { .. } => ApiError::new(
                status,
                "the collector found corrupt data; details are in the collector's log",
            )
            .detail(format_args!("store corruption: {e}")),
            _ => ApiError::new(status, e.to_string()),
        };
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            err.retry_after(retry_after)
        } else {
            err
        }
    }

    /// An ingest error; `retry_after` is given with 429 and 503.
    pub fn ingest(e: IngestError, retry_after: u32) -> Self {
        match e {
            IngestError::BadRequest(m) => ApiError::bad_request(m),
            IngestError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            e @ IngestError::UnknownTopic(_) => ApiError::not_found(e.to_string()),
            e @ (IngestError::TopicFull { .. } | IngestError::Busy(_)) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).retry_after(retry_after)
            }
            IngestError::Store(s) => ApiError::store(s, retry_after),
            e @ IngestError::Kafka(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .retry_after(retry_after)
            }
        }
    }

    /// A checkpoint that could not be written or read: the path and OS error go to the log,
    /// the client learns what kind of failure it was.
    pub fn checkpoint(e: CheckpointError) -> Self {
        let message = match &e {
            CheckpointError::Io { source, .. } => format!(
                "the collector could not store or read the checkpoint ({}); retry later, details are in the collector's log",
                source.kind()
            ),
            CheckpointError::Corrupt { reason, .. } => {
                format!(
                    "the stored checkpoint is corrupt ({reason}); details are in the collector's log"
                )
            }
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .retry_after(1)
            .detail(format_args!("checkpoint: {e}"))
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        let status = match e {
            CoordError::UnknownMember { .. } | CoordError::UnknownGroup(_) => StatusCode::NOT_FOUND,
            CoordError::NotOwner { .. } | CoordError::StaleGeneration { .. } => {
                StatusCode::CONFLICT
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<CheckpointError> for ApiError {
    fn from(e: CheckpointError) -> Self {
        ApiError::checkpoint(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(detail) = &self.detail {
            tracing::error!(status = %self.status, error = %self.message, detail, "request failed");
        } else if self.status.is_server_error() {
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
