//! The registry of agents and the collectors they may use ([`crate::registry`]):
//! `PUT /v1/agents/{id}` (an agent's heartbeat), `GET /v1/agents`, `GET /v1/collectors`.
//! Served on both backends: every collector keeps the registry of the agents that report to it.

use super::{ApiError, AppState, JsonBody};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferry_core::registry::{AgentHeartbeat, AgentView, CollectorView, validate_agent_id};
use std::sync::Arc;

/// `PUT /v1/agents/{id}`: 204 once recorded; 400 for a bad id or report, 429 when the registry
/// is full of running agents.
pub(super) async fn put_agent(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(report): JsonBody<AgentHeartbeat>,
) -> Result<StatusCode, ApiError> {
    validate_agent_id(&id).map_err(ApiError::bad_request)?;
    if let Some(p) = report.problem() {
        return Err(ApiError::bad_request(format!("agent report: {p}")));
    }
    let now = ferry_core::now_ms().max(0) as u64;
    let mut registry = state.registry()?;
    registry.heartbeat(&id, report, now).map_err(|e| {
        metrics::counter!("ferry_collector_refused_total", "reason" => "max_agents").increment(1);
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            .retry_after(state.config.limits.retry_after_secs)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/agents`: every agent heard from, by id, with its status.
pub(super) async fn list_agents(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let now = ferry_core::now_ms().max(0) as u64;
    Ok(Json(state.registry()?.views(now)))
}

/// `GET /v1/collectors`: this collector first, then its configured peers.
pub(super) async fn list_collectors(
    State(state): State<Arc<AppState>>,
) -> Json<Vec<CollectorView>> {
    let urls = state.collector_urls();
    Json(
        urls.iter()
            .enumerate()
            .map(|(i, url)| CollectorView {
                url: url.clone(),
                is_self: i == 0,
            })
            .collect(),
    )
}
