//! Processor checkpoints: `PUT`/`GET /v1/groups/{g}/checkpoints/{t}/{p}`. A checkpoint is a
//! processor's state for a partition with the input offset it reflects; only the member that
//! owns the partition may store one.

use super::body::{content_length, too_large};
use super::groups::validate_group;
use super::{ApiError, AppState, blocking};
use crate::checkpoints::CheckpointWriter;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutCheckpointQuery {
    member_id: String,
    offset: u64,
    /// The generation of the member's assignment (a write from before the member lost and
    /// regained the partition is refused).
    #[serde(default)]
    generation: Option<u64>,
}

/// Stores a processor's state for a partition together with the input offset it reflects, and
/// commits that offset for the group (so lag shows). Only the member owning the partition may.
pub(super) async fn put_checkpoint(
    State(state): State<Arc<AppState>>,
    Path((group, topic, partition)): Path<(String, String, u32)>,
    query: Result<Query<PutCheckpointQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    validate_group(&group)?;
    state
        .coordinator()?
        .check_owner(&group, &q.member_id, &topic, partition, q.generation)?;
    // Only the owner gets this far: the body is read now, bounded by max_checkpoint_bytes,
    // counted against max_inflight_bytes like an ingest body, and streamed to disk in pieces
    // of at most STREAM_CHUNK_BYTES (never held whole).
    let limit = state.config.limits.max_checkpoint_bytes.get();
    let declared = content_length(&headers);
    let _permit = state.inflight_permit(declared.unwrap_or(limit).min(limit))?;
    if declared.is_some_and(|n| n > limit) {
        return Err(checkpoint_too_large(limit));
    }
    let offset = q.offset;
    let writer = {
        let checkpoints = state.checkpoints.clone();
        let (g, t) = (group.clone(), topic.clone());
        blocking(move || checkpoints.writer(&g, &t, partition, offset)).await??
    };
    let writer = stream_to(writer, body, limit).await?;
    // The body is in (not yet in place); now check again under the group's lock, held until
    // both writes are durable, so that the partition cannot change hands between the check and
    // the writes.
    let _group = state.group_locks.lock(&group).await;
    state
        .coordinator()?
        .check_owner(&group, &q.member_id, &topic, partition, q.generation)?;
    blocking(move || writer.finish()).await??;
    state
        .store()?
        .commit_offsets(&group, &[(topic, partition, offset)])
        .await
        .map_err(|e| ApiError::store(e, 1))?;
    metrics::counter!("ferry_collector_checkpoints_stored_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

/// Most bytes of a checkpoint body held in memory at once: pieces of it are written to disk as
/// they fill up.
const STREAM_CHUNK_BYTES: usize = 1 << 20;

fn checkpoint_too_large(limit: u64) -> ApiError {
    too_large(format!("checkpoint is over its limit of {limit} bytes"))
}

/// Writes `body` into `writer` as it arrives, a piece of up to [`STREAM_CHUNK_BYTES`] at a
/// time on the blocking pool; 413 as soon as it passes `limit` (the writer, dropped, leaves
/// nothing behind and the rest is not read).
async fn stream_to(
    mut writer: CheckpointWriter,
    mut body: Body,
    limit: u64,
) -> Result<CheckpointWriter, ApiError> {
    let mut piece: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let frame =
            body.frame().await.transpose().map_err(|e| {
                ApiError::bad_request(format!("could not read the checkpoint: {e}"))
            })?;
        let done = frame.is_none();
        if let Some(data) = frame.and_then(|f| f.into_data().ok()) {
            total += data.len() as u64;
            if total > limit {
                return Err(checkpoint_too_large(limit));
            }
            piece.extend_from_slice(&data);
        }
        if piece.len() >= STREAM_CHUNK_BYTES || (done && !piece.is_empty()) {
            let full = std::mem::take(&mut piece);
            writer = blocking(move || writer.write(&full).map(|()| writer)).await??;
        }
        if done {
            return Ok(writer);
        }
    }
}

/// The stored checkpoint: the state as the body, its input offset in `x-ferry-offset`.
pub(super) async fn get_checkpoint(
    State(state): State<Arc<AppState>>,
    Path((group, topic, partition)): Path<(String, String, u32)>,
) -> Result<Response, ApiError> {
    validate_group(&group)?;
    let checkpoints = state.checkpoints.clone();
    let (g, t) = (group.clone(), topic.clone());
    let found = blocking(move || checkpoints.get(&g, &t, partition)).await??;
    let Some(c) = found else {
        return Err(ApiError::not_found(format!(
            "no checkpoint for group {group} on {topic}/{partition}"
        )));
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-ferry-offset", HeaderValue::from(c.offset));
    Ok((headers, c.state).into_response())
}
