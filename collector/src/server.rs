//! The collector process: opens the store, serves the API, drains on shutdown.
//!
//! [`Collector::bind`] opens the store and binds the listener (so a caller such as `ferry up`
//! learns the address before serving); [`Collector::run`] serves until the shutdown fires, then
//! stops accepting, lets in-flight requests finish (up to `shutdown_timeout`), and closes the
//! store, which fsyncs everything.
//!
//! The accept loop is ours (not `axum::serve`) so that connections are bounded: a permit of
//! `max_connections` is taken for every accepted connection and moved into its task; past the
//! cap a connection gets a short `503` and is closed, counted and logged (rate-limited). Each
//! connection must send a request's headers within `header_read_timeout`, counted from when it
//! opened or from the end of its previous response, so slow-header clients and idle
//! keep-alive connections are closed alike. At start the open-files limit is raised to its
//! hard limit, and what it got is logged.
//!
//! With `tls:`, each connection's first byte is peeked: a TLS handshake is accepted (within
//! `header_read_timeout`) with the certificate in force at that moment, anything else is a
//! plain-HTTP client and gets a `400` saying to use https://. SIGHUP re-reads the certificate
//! files ([`crate::tls::TlsState::reload`]); open connections keep theirs. The verified client
//! certificate's CN goes into every request of its connection as a
//! [`crate::tls::PeerIdentity`], and the [`crate::auth`] layer wraps the whole API.

use crate::api::{AppState, app};
use crate::config::CollectorConfig;
use crate::config::LimitsConfig;
use crate::ingest::{Ingest, open_backend};
use crate::store::Store;
use crate::tls::{PeerIdentity, TlsState};
use anyhow::Context;
use ferry_core::shutdown::Shutdown;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub struct Collector {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    /// TLS of the listener, when configured.
    tls: Option<Arc<TlsState>>,
    /// The Kafka protocol listener (`kafka_listen`), when configured.
    kafka: Option<crate::kafka_listener::KafkaListener>,
}

impl Collector {
    /// Opens (and recovers) the store, creates the configured topics, binds the listener.
    pub async fn bind(config: CollectorConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("collector config: {e}"))?;
        let config = Arc::new(config);
        // Before the store opens: its default `max_open_files` is derived from the limit.
        raise_fd_limit(config.limits.max_connections);
        let backend = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open_backend(&config))
                .await
                .context("backend open task")??
        };
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(
                TlsState::new(t.clone()).map_err(|e| anyhow::anyhow!("collector.tls: {e}"))?,
            )),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let kafka = match &config.kafka_listen {
            Some(a) => Some(crate::kafka_listener::KafkaListener::bind(a).await?),
            None => None,
        };
        let state = Arc::new(AppState::new(Ingest::new(backend, config)));
        state.set_bound(addr);
        if let Some(tls) = &tls {
            watch_sighup(tls.clone())?;
        }
        Ok(Self {
            state,
            listener,
            addr,
            tls,
            kafka,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the Kafka listener is bound, when there is one.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().map(|k| k.local_addr())
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
            tls,
            kafka,
        } = self;
        let kafka = kafka.map(|k| tokio::spawn(k.run(state.clone(), shutdown.clone())));
        if state.ingest.store().is_some() {
            tracing::info!(%addr, tls = tls.is_some(), data_dir = %state.config.data_dir.display(), fsync = ?state.config.store.fsync, "collector listening");
        } else {
            tracing::info!(%addr, tls = tls.is_some(), into = %state.ingest.backend.describe(), "collector listening; storing into Kafka");
        }
        let expiry = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tick.tick() => {
                            state.expire_members();
                            state.tend_registry();
                        }
                    }
                }
            })
        };
        let drain_deadline = state.config.shutdown_timeout.get();
        let serve =
            Listener::new(listener, app(state.clone()), tls, &state.config).run(shutdown.clone());
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            () = &mut serve => {}
            _ = async {
                shutdown.wait().await;
                tokio::time::sleep(drain_deadline).await;
            } => tracing::warn!(?drain_deadline, "in-flight requests did not finish before the deadline"),
        }
        let _ = expiry.await;
        if let Some(k) = kafka {
            // Connections finish the request they are answering (a long poll ends at once).
            let _ = tokio::time::timeout(drain_deadline, k).await;
        }
        state.ingest.backend.close().await?;
        Ok(())
    }
}

/// Refused connections (past `max_connections`) closed cleanly at once; beyond that they are
/// dropped right after their 503 (a courtesy, not something to queue for).
const MAX_REFUSING: usize = 256;
/// How often a repeated accept problem (refused at the cap, accept errors such as EMFILE) is
/// logged; the counters count every one.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after an accept error (EMFILE, ENFILE, ENOBUFS) before accepting again: the error
/// repeats at once otherwise, spinning a worker.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The accept loop: owns the listening socket and the connection tasks.
struct Listener {
    listener: tokio::net::TcpListener,
    /// The API; cloned into every connection.
    app: axum::Router,
    /// One permit per open connection (`max_connections`); a permit lives in its
    /// connection's task and is given back when the connection closes.
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// Permits to close refused connections cleanly ([`MAX_REFUSING`]).
    refusing: Arc<Semaphore>,
    header_read_timeout: Duration,
    /// TLS of the listener; `None`: plain HTTP.
    tls: Option<Arc<TlsState>>,
    /// Every connection task, awaited before `run` returns (the drain).
    tasks: JoinSet<()>,
    refused_log: RateLimitedLog,
    accept_error_log: RateLimitedLog,
}

impl Listener {
    fn new(
        listener: tokio::net::TcpListener,
        app: axum::Router,
        tls: Option<Arc<TlsState>>,
        config: &CollectorConfig,
    ) -> Self {
        let LimitsConfig {
            max_connections,
            header_read_timeout,
            ..
        } = &config.limits;
        let max_connections = (*max_connections).max(1) as usize;
        Self {
            listener,
            app,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            header_read_timeout: header_read_timeout.get(),
            tls,
            tasks: JoinSet::new(),
            refused_log: RateLimitedLog::new(),
            accept_error_log: RateLimitedLog::new(),
        }
    }

    /// Accepts until `shutdown` fires, then stops accepting (the socket is closed), tells every
    /// connection to finish its request in flight and close, and waits for them.
    async fn run(mut self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.admit(stream, peer, &shutdown),
                    Err(e) => {
                        metrics::counter!("ferry_collector_accept_errors_total").increment(1);
                        if let Some(suppressed) = self.accept_error_log.ready() {
                            tracing::error!(error = %e, suppressed, "accepting a connection failed (out of file descriptors?); retrying");
                        }
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
        drop(self.listener);
        while self.tasks.join_next().await.is_some() {}
    }

    fn admit(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr, shutdown: &Shutdown) {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                self.tasks.spawn(serve_connection(
                    stream,
                    permit,
                    self.app.clone(),
                    self.tls.clone(),
                    self.header_read_timeout,
                    shutdown.clone(),
                ));
                metrics::gauge!("ferry_collector_connections_open").increment(1.0);
            }
            Err(_) => {
                metrics::counter!("ferry_collector_connections_refused_total", "reason" => "max_connections")
                    .increment(1);
                if let Some(suppressed) = self.refused_log.ready() {
                    tracing::warn!(
                        %peer,
                        suppressed,
                        max_connections = self.max_connections,
                        "refusing connections: at max_connections"
                    );
                }
                // The answer goes out at once (a fresh socket's send buffer has room for it);
                // a task then closes the connection cleanly, if one may be spared.
                let _ = stream.try_write(REFUSAL);
                if let Ok(permit) = self.refusing.clone().try_acquire_owned() {
                    self.tasks.spawn(close_refused(stream, Some(permit)));
                }
            }
        }
    }
}

/// Serves one connection until it closes, or until shutdown lets its request in flight finish;
/// over TLS when the listener has it (the handshake first).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    app: axum::Router,
    tls: Option<Arc<TlsState>>,
    header_read_timeout: Duration,
    shutdown: Shutdown,
) {
    match tls {
        None => {
            serve_http(stream, app, None, header_read_timeout, shutdown).await;
        }
        Some(tls) => {
            let handshake = tokio::time::timeout(header_read_timeout, tls_accept(stream, &tls));
            match handshake.await {
                Ok(Some((stream, peer))) => {
                    serve_http(stream, app, Some(peer), header_read_timeout, shutdown).await;
                }
                Ok(None) => {}
                Err(_) => {
                    metrics::counter!("ferry_collector_connections_closed_total", "reason" => "tls_handshake_timeout").increment(1);
                }
            }
        }
    }
    metrics::gauge!("ferry_collector_connections_open").decrement(1.0);
}

/// The TLS handshake of a new connection, with the config in force now; `None` when the
/// connection is not TLS (it was told so) or the handshake failed (counted and logged).
async fn tls_accept(
    mut stream: tokio::net::TcpStream,
    tls: &TlsState,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    PeerIdentity,
)> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == crate::tls::TLS_HANDSHAKE => {}
        Ok(1) => {
            metrics::counter!("ferry_collector_connections_closed_total", "reason" => "plain_http_on_tls").increment(1);
            tracing::debug!("plain HTTP on the TLS port: answered 400");
            let _ = stream.write_all(crate::tls::PLAIN_ON_TLS_PORT).await;
            close_refused(stream, None).await;
            return None;
        }
        _ => return None,
    }
    match tls.acceptor().accept(stream).await {
        Ok(s) => {
            let cert_cn = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::common_name(c));
            Some((s, PeerIdentity { cert_cn }))
        }
        Err(e) => {
            metrics::counter!("ferry_collector_connections_closed_total", "reason" => "tls_handshake").increment(1);
            tracing::info!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// HTTP/1.1 on an accepted (and, with TLS, handshaken) connection.
async fn serve_http<I>(
    io: I,
    app: axum::Router,
    peer: Option<PeerIdentity>,
    header_read_timeout: Duration,
    shutdown: Shutdown,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = WithPeer {
        app,
        peer: peer.map(Arc::new),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics::counter!("ferry_collector_connections_closed_total", "reason" => "header_timeout").increment(1);
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.wait(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The API as a hyper service that puts the connection's [`PeerIdentity`] (if any) into every
/// request's extensions.
#[derive(Clone)]
struct WithPeer {
    app: axum::Router,
    peer: Option<Arc<PeerIdentity>>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(PeerIdentity::clone(peer));
        }
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, req)
    }
}

/// Re-reads the TLS files on every SIGHUP, for as long as the process runs.
fn watch_sighup(tls: Arc<TlsState>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => {
                    metrics::counter!("ferry_collector_tls_reloads_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(
                        "SIGHUP: TLS certificate and key reloaded; new connections use them"
                    );
                }
                Err(e) => {
                    metrics::counter!("ferry_collector_tls_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the certificate in force");
                }
            }
        }
    });
    Ok(())
}

/// The answer to a connection past `max_connections`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 67\r\n\r\n{\"error\":\"the collector is at max_connections; retry in a moment\"}\n";

/// Closes a refused connection (its 503, or the 400 of plain HTTP on the TLS port, already
/// sent) without resetting it: our side is shut down, and what the client still sends is read
/// and dropped for up to a second, so that the client reads the answer instead of a reset.
/// `_permit`, if any, is one of [`MAX_REFUSING`], given back when the connection is closed.
async fn close_refused(mut stream: tokio::net::TcpStream, _permit: Option<OwnedSemaphorePermit>) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Logs a repeated event at most once per [`LOG_EVERY`], saying how many were not logged.
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events suppressed since the last log)` when this one should be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Raises the soft open-files limit to the hard limit and logs what it got: every connection,
/// segment and index is a file descriptor, and the default soft limit (often 1,024) is reached
/// long before memory or CPU run out.
fn raise_fd_limit(max_connections: u32) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut want = before;
    want.current = before.maximum;
    let after = match setrlimit(Resource::Nofile, want) {
        Ok(()) => getrlimit(Resource::Nofile),
        Err(e) => {
            tracing::warn!(error = %e, soft = ?before.current, hard = ?before.maximum, "could not raise the open-files limit");
            before
        }
    };
    let soft = after.current.unwrap_or(u64::MAX);
    tracing::info!(
        soft = ?after.current,
        hard = ?after.maximum,
        was = ?before.current,
        "open-files limit (RLIMIT_NOFILE)"
    );
    if soft < u64::from(max_connections).saturating_mul(2) {
        tracing::warn!(
            soft,
            max_connections,
            "the open-files limit is less than twice max_connections: connections may take the descriptors that partitions need; lower limits.max_connections or raise the limit"
        );
    }
}
