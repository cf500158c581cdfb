//! OTLP/HTTP logs: `POST /v1/logs` (protobuf or JSON, optionally gzip), what OpenTelemetry SDKs
//! and collectors export to. The mapping to records is [`crate::otlp`]'s; here the body is read
//! under the ingest limits (`max_body_bytes`, `max_inflight_bytes`, `max_raw_bytes` once
//! inflated) and each topic's records go through [`crate::ingest::Ingest::ingest_records`], so
//! routing, admission (`max_records`, `max_pending_per_topic`, topic creation) and the append are
//! those of `POST /v1/topics/{t}/records`.
//!
//! The answer follows OTLP/HTTP: 200 with an `ExportLogsServiceResponse` in the request's
//! encoding once every stored record is durable, its `partial_success` counting the records
//! refused for good (a topic attribute that names no valid topic, a body over `max_line_bytes`,
//! a topic that does not exist with `auto_create_topics: false`); those are not to be resent.
//! With principals (auth), each topic needs `produce` (and `auto_create` to be created): a
//! topic not allowed refuses the whole request with 403 before anything is stored.
//! 400 for a body that does not decode, 415 for another content type, 413 past a size limit;
//! 429 or 503 with `Retry-After` when a limit is reached for now: the exporter resends the whole
//! request, so records of the request's other topics that were already stored are stored again
//! (OTLP carries no origin for ferry to deduplicate on: at least once).

use super::records::read_ingest_body;
use super::{ApiError, AppState, blocking};
use crate::ingest::IngestError;
use crate::otlp::{self, Encoding};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

pub(super) async fn post_logs(
    State(state): State<Arc<AppState>>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let retry = state.config.limits.retry_after_secs;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = header(header::CONTENT_TYPE);
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?} is not OTLP/HTTP: send application/x-protobuf or application/json",
                content_type.unwrap_or("")
            ),
        ));
    };
    let content_encoding = header(header::CONTENT_ENCODING).map(str::to_owned);
    let (_permit, body) = read_ingest_body(&state, &headers, body).await?;
    let bytes_in = body.len() as u64;
    let config = state.config.clone();
    // Inflating and decoding burn CPU: on the blocking pool.
    let mut converted = blocking(move || {
        let limits = &config.limits;
        let request = otlp::decode(
            encoding,
            content_encoding.as_deref(),
            body,
            limits.max_raw_bytes.get(),
        )?;
        Ok::<_, IngestError>(otlp::convert(
            request,
            &config.otlp,
            limits.max_line_bytes.as_usize(),
        ))
    })
    .await?
    .map_err(|e| ApiError::ingest(e, retry))?;
    let topics = std::mem::take(&mut converted.topics);
    // With principals configured, the auth layer leaves the check to here, where the topics
    // are known: each needs `produce` (and `auto_create` to be created); nothing is stored
    // unless all are allowed.
    if let Some(axum::Extension(p)) = &principal {
        for topic in topics.keys() {
            if let Err(denied) = crate::auth::may_produce(&state, p, topic) {
                return Ok(denied.into_response());
            }
        }
    }
    for (topic, records) in topics {
        let n = records.len() as u64;
        match state.ingest.ingest_records(&topic, records).await {
            Ok(_) => {}
            // Refused for good: counted, the rest of the request stands.
            Err(
                e @ (IngestError::BadRequest(_)
                | IngestError::TooLarge(_)
                | IngestError::UnknownTopic(_)),
            ) => converted.reject(n, format!("topic {topic}: {e}")),
            // Refused for now: the exporter retries the whole request.
            Err(e) => return Err(ApiError::ingest(e, retry)),
        }
    }
    if converted.rejected > 0 {
        metrics::counter!("ferry_collector_otlp_records_rejected_total")
            .increment(converted.rejected);
    }
    metrics::counter!("ferry_collector_bytes_received_total").increment(bytes_in);
    metrics::histogram!("ferry_collector_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok((
        [(header::CONTENT_TYPE, encoding.content_type())],
        otlp::response(encoding, converted.rejected, &converted.message),
    )
        .into_response())
}
