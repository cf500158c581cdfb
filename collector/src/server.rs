//! The collector process: opens the store, serves the API, drains on shutdown.
//!
//! [`Collector::bind`] opens the store and binds the listener (so a caller such as `ferry up`
//! learns the address before serving); [`Collector::run`] serves until the shutdown fires, then
//! stops accepting, lets in-flight requests finish (up to `shutdown_timeout`), and closes the
//! store, which fsyncs everything.

use crate::api::{AppState, app};
use crate::config::CollectorConfig;
use crate::ingest::Ingest;
use crate::store::Store;
use anyhow::Context;
use ferry_core::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Collector {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Collector {
    /// Opens (and recovers) the store, creates the configured topics, binds the listener.
    pub async fn bind(config: CollectorConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("collector config: {e}"))?;
        let dir = config.data_dir.clone();
        let store_cfg = config.store.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, store_cfg))
            .await
            .context("store open task")?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        for (name, t) in &config.topics {
            let n = t.partitions.unwrap_or(config.default_partitions);
            store
                .create_topic(name, n)
                .with_context(|| format!("creating topic {name}"))?;
        }
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let config = Arc::new(config);
        let state = Arc::new(AppState::new(Ingest::new(store, config)));
        Ok(Self {
            state,
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Store {
        &self.state.ingest.store
    }

    /// Serves until `shutdown` fires, then drains and closes the store.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Collector {
            state,
            listener,
            addr,
        } = self;
        tracing::info!(%addr, data_dir = %state.config.data_dir.display(), fsync = ?state.config.store.fsync, "collector listening");
        let expiry = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tick.tick() => state.expire_members(),
                    }
                }
            })
        };
        let drain_deadline = state.config.shutdown_timeout.get();
        let serve = axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown({
                let shutdown = shutdown.clone();
                async move { shutdown.wait().await }
            })
            .into_future();
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            r = &mut serve => r.context("serving HTTP")?,
            _ = async {
                shutdown.wait().await;
                tokio::time::sleep(drain_deadline).await;
            } => tracing::warn!(?drain_deadline, "in-flight requests did not finish before the deadline"),
        }
        let _ = expiry.await;
        state
            .ingest
            .store
            .close()
            .await
            .context("closing the store")?;
        tracing::info!("collector stopped; store closed");
        Ok(())
    }
}
