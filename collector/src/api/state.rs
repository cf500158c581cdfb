//! What every handler shares ([`AppState`]), and the two ways a handler leaves the async
//! workers' hands: [`blocking`] for file-system and CPU work, [`AppState::inflight_permit`] for
//! request bytes held in memory.

use super::ApiError;
use crate::config::CollectorConfig;
use crate::coordinator::Coordinator;
use crate::ingest::Ingest;
use crate::store::Store;
use axum::http::StatusCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Semaphore;

/// What every handler shares.
pub struct AppState {
    /// The ingest path (and through it the store); an `Arc` so that a request's blocking
    /// steps can take it to the blocking pool.
    pub ingest: Arc<Ingest>,
    /// Group membership; a std mutex never held across an await.
    pub coordinator: Mutex<Coordinator>,
    /// Origin of the coordinator's monotonic clock.
    pub started: Instant,
    /// Request bytes in flight, in KiB permits (`max_inflight_bytes`).
    pub inflight: Semaphore,
    /// Total permits of `inflight` (a request never asks for more than all of them).
    pub inflight_kib: u32,
    pub config: Arc<CollectorConfig>,
    /// Processor checkpoints (state + offset per group and partition).
    pub checkpoints: crate::checkpoints::Checkpoints,
    /// Makes "check the owner, write the commit or checkpoint" one step per group.
    pub group_locks: crate::coordinator::GroupLocks,
    /// The registry of agents; a std mutex never held across an await.
    pub registry: Mutex<crate::registry::Registry>,
    /// What `GET /v1/collectors` lists: this collector first, then its peers. Set once the
    /// listener is bound ([`AppState::set_bound`]); until then from the config alone.
    collectors: std::sync::OnceLock<Vec<String>>,
    /// Principals and their permissions (tokens resolved from files and the environment at
    /// start; the config was checked before, so problems here were already reported).
    pub auth: crate::auth::Authorizer,
    /// The Kafka listener's group coordinator, once it serves (`ferry groups` lists its
    /// members with the HTTP groups').
    pub kafka_groups: std::sync::OnceLock<Arc<crate::kafka_listener::groups::GroupCoordinator>>,
}

impl AppState {
    pub fn new(ingest: Ingest) -> Self {
        let config = ingest.config.clone();
        let kib = (config.limits.max_inflight_bytes.get() / 1024).clamp(1, u64::from(u32::MAX));
        Self {
            ingest: Arc::new(ingest),
            coordinator: Mutex::new(Coordinator::new()),
            started: Instant::now(),
            inflight: Semaphore::new(kib as usize),
            inflight_kib: kib as u32,
            checkpoints: crate::checkpoints::Checkpoints::new(&config.data_dir),
            registry: Mutex::new(crate::registry::Registry::new(config.agents.limits())),
            collectors: std::sync::OnceLock::new(),
            auth: crate::auth::Authorizer::resolve(
                &config,
                &mut ferry_core::problems::Problems::new(),
            ),
            group_locks: Default::default(),
            kafka_groups: std::sync::OnceLock::new(),
            config,
        }
    }

    /// Records the address the listener is bound to (for `GET /v1/collectors`).
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let _ = self.collectors.set(self.config.collector_urls(Some(addr)));
    }

    /// This collector's URL, then its peers'.
    pub fn collector_urls(&self) -> Vec<String> {
        match self.collectors.get() {
            Some(urls) => urls.clone(),
            None => self.config.collector_urls(None),
        }
    }

    /// The registry, locked; never held across an await.
    pub(super) fn registry(&self) -> Result<MutexGuard<'_, crate::registry::Registry>, ApiError> {
        self.registry
            .lock()
            .map_err(|_| ApiError::internal("the registry's lock was poisoned"))
    }

    /// Forgets long-silent agents and counts agents by status (called periodically).
    pub fn tend_registry(&self) {
        let now = ferry_core::now_ms().max(0) as u64;
        if let Ok(mut r) = self.registry.lock() {
            r.forget_old(now);
            for (status, n) in r.counts(now) {
                metrics::gauge!("ferry_collector_agents", "status" => status.as_str())
                    .set(n as f64);
            }
        }
    }

    /// Counts `bytes` of a request body against `max_inflight_bytes` for as long as the permit
    /// lives; 503 when the collector is at the limit.
    pub(super) fn inflight_permit(
        &self,
        bytes: u64,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        let kib = (bytes / 1024 + 1).min(u64::from(self.inflight_kib)) as u32;
        self.inflight.try_acquire_many(kib).map_err(|_| {
            metrics::counter!("ferry_collector_refused_total", "reason" => "inflight_bytes")
                .increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "collector is at max_inflight_bytes; retry later",
            )
            .retry_after(self.config.limits.retry_after_secs)
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How many partitions a topic has (the coordinator's view of the store).
    pub(super) fn partitions_of(&self) -> impl Fn(&str) -> Option<u32> + '_ {
        |t| self.ingest.store().and_then(|s| s.topic_partitions(t))
    }

    /// The coordinator, locked; never held across an await.
    pub(super) fn coordinator(&self) -> Result<MutexGuard<'_, Coordinator>, ApiError> {
        self.coordinator
            .lock()
            .map_err(|_| ApiError::coordinator_poisoned())
    }

    /// The embedded store, or the answer every read/group endpoint gives on the Kafka backend.
    pub fn store(&self) -> Result<&Store, ApiError> {
        self.ingest.store().ok_or_else(ApiError::kafka_backend)
    }

    /// Removes group members whose session expired (called periodically by the server).
    pub fn expire_members(&self) {
        let now = self.now_ms();
        let parts = self.partitions_of();
        let busy = |g: &str| self.group_locks.is_locked(g);
        if let Ok(mut c) = self.coordinator.lock() {
            for (group, member) in c.expire(now, &parts, &busy) {
                tracing::info!(group, member, "group member expired");
                metrics::counter!("ferry_collector_group_members_expired_total").increment(1);
            }
        }
    }
}

/// Runs file-system or CPU work on the blocking pool, never on the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format_args!("blocking task failed: {e}")))
}
