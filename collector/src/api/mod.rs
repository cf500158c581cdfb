//! The HTTP API (DESIGN.md's contract), as an axum `Router` built by [`app`] so tests can call it
//! without a socket. One module per resource; the route table is here, whole.
//!
//! | route | what | module |
//! | --- | --- | --- |
//! | `POST /v1/topics/{topic}/records` | ingest; 200 once durable, with an [`IngestSummary`](crate::ingest::IngestSummary) | [`records`] |
//! | `GET /v1/topics/{topic}/partitions/{p}/records` | fetch: `offset`, `max_bytes`, `wait_ms` (long-poll), `format=batch\|json` | [`records`] |
//! | `GET /v1/topics/{topic}/partitions/{p}/offset` | `timestamp_ms` → first offset at or after it | [`records`] |
//! | `GET /v1/topics`, `GET /v1/topics/{topic}` | topics with partitions, offsets, sizes | [`topics`] |
//! | `PUT /v1/topics/{topic}` | create with `{"partitions": N}` | [`topics`] |
//! | `DELETE /v1/topics/{topic}` | delete the topic and its records | [`topics`] |
//! | `POST /v1/groups/{group}/join` · `heartbeat` · `leave` · `commit` | consumer groups | [`groups`] |
//! | `GET /v1/groups`, `GET /v1/groups/{group}/offsets` | groups with members and lag | [`groups`] |
//! | `PUT`/`GET /v1/groups/{g}/checkpoints/{t}/{p}` | processor checkpoints | [`checkpoints`] |
//! | `PUT /v1/agents/{id}`, `GET /v1/agents`, `GET /v1/collectors` | the registry of agents, the collectors to use | [`agents`] |
//! | `GET /healthz`, `GET /metrics`, `GET /` | liveness, Prometheus text, the console | here |
//!
//! Every route passes [`crate::auth::layer`] first (principals and the route → permission
//! table). Bodies are bounded per route ([`body`]): ingest by
//! `limits.max_body_bytes`, the JSON routes by [`MAX_JSON_BODY_BYTES`] ([`JsonBody`]),
//! checkpoints by `limits.max_checkpoint_bytes` and only after the ownership check. File-system
//! and CPU work runs on the blocking pool (`state::blocking`).
//!
//! Every error is an [`ApiError`] ([`error`]): a JSON `{"error": "..."}` with a status that says
//! whose problem it is: 400 malformed, 401/403 auth, 404 unknown, 409 not the owner, 413 too
//! large, 416 offset out of range, 429/503 over a limit (with `Retry-After`), 501 on the Kafka
//! backend for what Kafka serves itself. docs/collector.md has the table of which route answers
//! which status; collector/tests/api_status.rs calls each row.

mod agents;
mod body;
mod checkpoints;
mod error;
mod groups;
mod records;
mod state;
mod topics;

pub use body::{JsonBody, MAX_JSON_BODY_BYTES};
pub use error::ApiError;
pub use groups::{
    CommitRequest, GroupView, HeartbeatRequest, JoinRequest, LagView, LeaveRequest, MemberView,
    OffsetEntry,
};
pub use state::AppState;
pub use topics::{PartitionView, TopicView};

use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{any, get, post, put};
use state::blocking;
use std::sync::Arc;

/// The whole API.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let v1 = if state.ingest.store().is_none() {
        // Kafka backend: only ingest; everything else is answered by the cluster itself.
        registry_routes()
            .route("/v1/topics/{topic}/records", post(records::post_records))
            .route("/v1/{*rest}", any(|| async { ApiError::kafka_backend() }))
    } else {
        embedded_routes()
    };
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/", get(crate::console::page))
        .route("/console", get(crate::console::page))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route; see /v1/topics") })
        // Who may do what, for every route (the fallback included): one layer, one table.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::layer,
        ))
        .with_state(state)
}

/// The registry's routes, on either backend.
fn registry_routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/agents", get(agents::list_agents))
        .route("/v1/agents/{id}", put(agents::put_agent))
        .route("/v1/collectors", get(agents::list_collectors))
}

/// The `/v1` routes of the embedded store.
fn embedded_routes() -> axum::Router<Arc<AppState>> {
    registry_routes()
        .route("/v1/topics", get(topics::list_topics))
        .route(
            "/v1/topics/{topic}",
            get(topics::get_topic)
                .put(topics::create_topic)
                .delete(topics::delete_topic),
        )
        .route("/v1/topics/{topic}/records", post(records::post_records))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(records::fetch),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/offset",
            get(records::offset_for_time),
        )
        .route("/v1/groups", get(groups::list_groups))
        .route("/v1/groups/{group}/join", post(groups::join))
        .route("/v1/groups/{group}/heartbeat", post(groups::heartbeat))
        .route("/v1/groups/{group}/leave", post(groups::leave))
        .route("/v1/groups/{group}/commit", post(groups::commit))
        .route("/v1/groups/{group}/offsets", get(groups::group_offsets))
        .route(
            "/v1/groups/{group}/checkpoints/{topic}/{partition}",
            get(checkpoints::get_checkpoint).put(checkpoints::put_checkpoint),
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
