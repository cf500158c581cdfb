//! Consumer groups: join, heartbeat, leave, commit, and the group views (members, committed
//! offsets, lag). Membership is the [`Coordinator`](crate::coordinator::Coordinator)'s;
//! committed offsets are the store's.

use super::{ApiError, AppState, JsonBody, blocking};
use crate::coordinator::{Assignment, Tp};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The wire contract's group views, shared with every client (`ferry groups` reads them typed).
pub use ferry_core::client::{GroupView, LagView, MemberView};

/// Group names follow the topic-name rules (they appear in file names and metrics).
pub(super) fn validate_group(group: &str) -> Result<(), ApiError> {
    ferry_core::topic::validate_name(group)
        .map_err(|e| ApiError::bad_request(e.replace("topic", "group")))
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

pub(super) async fn join(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<Assignment>, ApiError> {
    validate_group(&group)?;
    if req.topics.is_empty() {
        return Err(ApiError::bad_request("topics is empty"));
    }
    for t in &req.topics {
        ferry_core::topic::validate_name(t).map_err(ApiError::bad_request)?;
    }
    let g = &state.config.groups;
    let timeout = req
        .session_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(g.session_timeout.get())
        .clamp(g.min_session_timeout.get(), g.max_session_timeout.get());
    if state
        .kafka_groups
        .get()
        .is_some_and(|k| k.has_members(&group))
    {
        // One group, two coordinators that do not share members: refused rather than both
        // consuming the same partitions.
        metrics::counter!("ferry_collector_group_joins_refused_total", "reason" => "group_has_kafka_members").increment(1);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "group {group} has Kafka consumers (ferry groups shows them); an HTTP consumer cannot join it: use another group name"
            ),
        ));
    }
    let _group = state.group_locks.lock(&group).await;
    let now = state.now_ms();
    let parts = state.partitions_of();
    let a = state.coordinator()?.join(
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

/// The member's assignment now; 404 if it left or expired (it joins again).
pub(super) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<Assignment>, ApiError> {
    let _group = state.group_locks.lock(&group).await;
    let now = state.now_ms();
    let parts = state.partitions_of();
    let a = state
        .coordinator()?
        .heartbeat(&group, &req.member_id, &req.owned, now, &parts)?;
    Ok(Json(a))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    pub member_id: String,
}

/// The member's partitions move at once.
pub(super) async fn leave(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<LeaveRequest>,
) -> Result<StatusCode, ApiError> {
    let _group = state.group_locks.lock(&group).await;
    let parts = state.partitions_of();
    state.coordinator()?.leave(&group, &req.member_id, &parts)?;
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
    /// The generation of the member's assignment the offsets were read in: a commit from
    /// before the member lost and regained a partition is refused (409).
    #[serde(default)]
    pub generation: Option<u64>,
    pub offsets: Vec<OffsetEntry>,
}

/// Commits offsets (the next to read); with a member id, only for partitions it owns (409).
pub(super) async fn commit(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> Result<StatusCode, ApiError> {
    validate_group(&group)?;
    // Held until the offsets are durable: ownership cannot change between check and write.
    let _group = state.group_locks.lock(&group).await;
    if let Some(member) = &req.member_id {
        let c = state.coordinator()?;
        for o in &req.offsets {
            c.check_owner(&group, member, &o.topic, o.partition, req.generation)?;
        }
    }
    let store = state.store()?;
    for o in &req.offsets {
        let n = store
            .topic_partitions(&o.topic)
            .ok_or_else(|| ApiError::not_found(format!("unknown topic {:?}", o.topic)))?;
        if o.partition >= n {
            return Err(ApiError::not_found(format!(
                "topic {} has {n} partitions; there is no partition {}",
                o.topic, o.partition
            )));
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
        .map_err(|e| ApiError::store(e, 1))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn group_offsets(
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

pub(super) async fn list_groups(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<GroupView>>, ApiError> {
    state.store()?;
    // Lag in seconds reads a batch of every partition with lag: on the blocking pool.
    blocking(move || group_views(&state)).await?.map(Json)
}

fn group_views(state: &AppState) -> Result<Vec<GroupView>, ApiError> {
    let store = state.store()?;
    let mut names = store.groups();
    let mut members: Vec<(String, Vec<MemberView>)> = match state.coordinator.lock() {
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
    if let Some(kafka) = state.kafka_groups.get() {
        members.extend(crate::kafka_listener::member_views(kafka));
    }
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
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default(),
                group,
                partitions,
            }
        })
        .collect();
    Ok(views)
}
