//! ferry-collector: the central service of DESIGN.md's picture.
//!
//! - [`store`]: the embedded, durable topic log (segments, indexes, recovery, retention, dedup).
//! - [`routing`]: YAML routing rules (to / copy / drop), a pure router.
//! - [`ingest`]: request body → verified batches → routed, partitioned sub-batches → appends.
//! - [`otlp`]: OTLP logs (`POST /v1/logs`, protobuf or JSON) → records per topic, and the reply.
//! - [`checkpoints`]: processor checkpoints (state + offset per group and partition), fenced.
//! - [`kafka_listener`]: the Kafka protocol on the embedded store (`--kafka-listen`).
//! - [`registry`]: the registry of agents (heartbeats, stale and stopped agents), bounded.
//! - [`coordinator`]: consumer-group membership and server-side partition assignment.
//! - [`api`]: the HTTP API as an axum `Router` (`app(state)`), a module per resource, errors as
//!   one `ApiError`.
//! - [`auth`]: principals, the route → permission table, the one layer that enforces it.
//! - [`tls`]: TLS on the listener (rustls), reloaded on SIGHUP; the client certificate's CN.
//! - [`console`]: the web console at `/`, a static page over the JSON API.
//! - [`server`]: the process: bind, serve, drain, close.
//! - [`config`]: the `collector:` config section.

pub mod api;
pub mod auth;
pub mod checkpoints;
pub mod config;
pub mod console;
pub mod coordinator;
pub mod ingest;
pub mod kafka_listener;
pub mod otlp;
pub mod registry;
pub mod routing;
pub mod server;
pub mod store;
pub mod tls;

pub use config::CollectorConfig;
pub use server::Collector;
