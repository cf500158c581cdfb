//! Topics: list, describe, create (`PUT {"partitions": N}`), delete.

use super::{ApiError, AppState, JsonBody, blocking};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

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

fn unknown_topic(topic: &str) -> ApiError {
    ApiError::not_found(format!("unknown topic {topic:?}"))
}

pub(super) async fn list_topics(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TopicView>>, ApiError> {
    topic_views(&state).map(Json)
}

pub(super) async fn get_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    topic_views(&state)?
        .into_iter()
        .find(|t| t.name == topic)
        .map(Json)
        .ok_or_else(|| unknown_topic(&topic))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTopic {
    partitions: u32,
}

/// 201 created, 200 when it exists; bounded by `max_partitions_per_topic` and `max_topics`
/// before anything touches the disk.
pub(super) async fn create_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    JsonBody(req): JsonBody<CreateTopic>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let limits = &state.config.limits;
    let max = limits.max_partitions_per_topic;
    if req.partitions == 0 || req.partitions > max {
        return Err(ApiError::bad_request(format!(
            "partitions must be between 1 and {max} (limits.max_partitions_per_topic)"
        )));
    }
    let store = state.store()?.clone();
    let max_topics = limits.max_topics as usize;
    let name = topic.clone();
    let created = blocking(move || store.create_topic_bounded(&name, req.partitions, max_topics))
        .await?
        .map_err(|e| ApiError::store(e, state.config.limits.retry_after_secs))?;
    let view = topic_views(&state)?
        .into_iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "topic vanished"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// Deletes a topic and all its records: 204, or 404 if there is none.
pub(super) async fn delete_topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store()?.clone();
    let name = topic.clone();
    let deleted = blocking(move || store.delete_topic(&name))
        .await?
        .map_err(|e| ApiError::store(e, 1))?;
    if !deleted {
        return Err(unknown_topic(&topic));
    }
    metrics::counter!("ferry_collector_topics_deleted_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}
