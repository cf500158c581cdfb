//! The collector process: opens the store, serves the API, drains on shutdown.
//!
//! [`Collector::bind`] opens the store and binds the listener (so a caller such as `ferry up`
//! learns the address before serving); [`Collector::run`] serves until the shutdown fires, then
//! stops accepting, lets in-flight requests finish (up to `shutdown_timeout`), and closes the
//! store, which fsyncs everything.

use crate::api::{AppState, app};
use crate::config::CollectorConfig;
use crate::ingest::{Backend, Ingest, open_backend};
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
        let config = Arc::new(config);
        let backend = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open_backend(&config))
                .await
                .context("backend open task")??
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState::new(Ingest::new(backend, config)));
        Ok(Self {
            state,
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The embedded store; `None` on the Kafka backend.
    pub fn store(&self) -> Option<&Store> {
        self.state.ingest.store()
    }

    /// Serves until `shutdown` fires, then drains and closes the store.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Collector {
            state,
            listener,
            addr,
        } = self;
        match &state.ingest.backend {
            Backend::Embedded(_) => {
                tracing::info!(%addr, data_dir = %state.config.data_dir.display(), fsync = ?state.config.store.fsync, "collector listening");
            }
            Backend::Kafka(k) => {
                tracing::info!(%addr, brokers = %k.config.brokers, "collector listening; storing into Kafka");
            }
        }
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
        match &state.ingest.backend {
            Backend::Embedded(store) => {
                store.close().await.context("closing the store")?;
                tracing::info!("collector stopped; store closed");
            }
            Backend::Kafka(kafka) => {
                // Every acknowledged request already waited for its records; this only settles
                // what requests cut off by the drain deadline left in flight.
                if let Err(e) = kafka.sink.flush(Duration::from_secs(5)).await {
                    tracing::warn!(error = %e, "kafka producer did not flush");
                }
                tracing::info!("collector stopped; kafka producer flushed");
            }
        }
        Ok(())
    }
}
