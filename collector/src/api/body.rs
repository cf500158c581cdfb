//! Request bodies, bounded per route: [`JsonBody`] for the JSON routes ([`MAX_JSON_BODY_BYTES`]),
//! [`read_limited`] for ingest and checkpoints (their own limits). A body declared too large
//! is refused before a byte of it is read; one that turns out too large is refused as soon as
//! it passes the limit, and the rest is never read.

use super::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;

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
        let mut de = serde_json::Deserializer::from_slice(&body);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let at = e.path().to_string();
            match at.as_str() {
                "" | "." => ApiError::bad_request(format!("invalid JSON body: {}", e.inner())),
                _ => ApiError::bad_request(format!("invalid JSON body at `{at}`: {}", e.inner())),
            }
        })?;
        de.end()
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        Ok(JsonBody(value))
    }
}

/// The request's `Content-Length`, if it sent a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// 413 for a body over `limit`, counted.
pub(super) fn too_large(message: String) -> ApiError {
    metrics::counter!("ferry_collector_refused_total", "reason" => "body_too_large").increment(1);
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
}

/// Reads a body of at most `limit` bytes. A body declared larger is refused before a byte of
/// it is read; one that turns out larger (chunked) is refused as soon as it passes the limit.
/// Either way the rest is never read: the connection is closed after the 413.
pub(super) async fn read_limited(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    let over = || too_large(format!("{what} is over its limit of {limit} bytes"));
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(over());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            over()
        } else {
            ApiError::bad_request(format!("could not read the {what}: {e}"))
        }
    })
}

/// Whether reading a body failed because it passed its length limit.
pub(super) fn is_length_limit(e: &axum::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("length limit")
}

/// Reads and drops up to `limit` bytes of a body, so that a client still sending sees the
/// answer instead of a connection reset mid-upload; past `limit`, the connection is closed.
pub(super) async fn drain(mut body: Body, limit: u64) {
    use http_body_util::BodyExt;
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
