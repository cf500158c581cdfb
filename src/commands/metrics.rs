//! `GET /metrics` and `GET /healthz` for components without an HTTP API of their own (agent,
//! processor), on `telemetry.metrics_listen` or `--metrics-listen`.

use anyhow::Context;
use axum::routing::get;
use ferry_core::shutdown::Shutdown;

/// Binds `addr` and serves until `shutdown`; returns the bound address.
pub async fn serve(addr: &str, shutdown: Shutdown) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        ferry_core::telemetry::METRICS_CONTENT_TYPE,
                    )],
                    ferry_core::telemetry::render_metrics(),
                )
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics on /metrics");
    Ok(bound)
}
