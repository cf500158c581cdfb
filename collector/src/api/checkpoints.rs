//! Processor checkpoints: `PUT`/`GET /v1/groups/{g}/checkpoints/{t}/{p}`. A checkpoint is a
//! processor's state for a partition with the input offset it reflects; only the member that
//! owns the partition may store one.

use super::body::{content_length, read_limited};
use super::groups::validate_group;
use super::{ApiError, AppState, blocking};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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
    // Only the owner gets this far: the body is read now, bounded by max_checkpoint_bytes and
    // counted against max_inflight_bytes like an ingest body.
    let limit = state.config.limits.max_checkpoint_bytes.as_usize();
    let declared = content_length(&headers);
    let _permit = state.inflight_permit(declared.unwrap_or(limit as u64).min(limit as u64))?;
    let blob = read_limited(body, declared, limit, "checkpoint").await?;
    // The body is in; now check again under the group's lock, held until both writes are
    // durable, so that the partition cannot change hands between the check and the writes.
    let _group = state.group_locks.lock(&group).await;
    state
        .coordinator()?
        .check_owner(&group, &q.member_id, &topic, partition, q.generation)?;
    let checkpoints = state.checkpoints.clone();
    let (g, t) = (group.clone(), topic.clone());
    let offset = q.offset;
    blocking(move || checkpoints.put(&g, &t, partition, offset, &blob)).await??;
    state
        .store()?
        .commit_offsets(&group, &[(topic, partition, offset)])
        .await
        .map_err(|e| ApiError::store(e, 1))?;
    metrics::counter!("ferry_collector_checkpoints_stored_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
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
