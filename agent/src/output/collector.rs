//! The `collector` output: HTTP POST of one encoded batch to a ferry collector.
//!
//! `POST {url}/v1/topics/{topic}/records` with `Content-Type: application/x-ferry-batch`.
//! The collector answers 200 once the records are durable, with a JSON summary such as
//! `{"stored":N,"deduplicated":M}`; 429 or 503 mean "over limits, come back after
//! `Retry-After`"; 413 means the batch must be split; other 5xx and connection errors are
//! retried (and, with several URLs in failover mode, move to the next collector); any other 4xx
//! is a refusal for good, dropped and counted by the shipper.

use super::retry::UrlSelector;
use super::{Ack, BatchMeta, Output, OutputError};
use crate::config::CollectorOutputConfig;
use bytes::Bytes;
use reqwest::{StatusCode, Url};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Ships to one or more collectors. The set can grow and change while the agent runs
/// ([`CollectorOutput::refresh`]): collectors learned from `GET /v1/collectors`, and one target
/// per address of a host name that resolves to several.
#[derive(Debug)]
pub struct CollectorOutput {
    /// The targets in use and the selector over them, swapped whole by `refresh`; a std lock
    /// never held across an await (a request clones the `Arc` and lets go).
    targets: std::sync::RwLock<Arc<Targets>>,
    /// Base URLs as configured: always kept, and asked first for the others.
    configured: Vec<Url>,
    cfg: CollectorOutputConfig,
    /// Sent as `Authorization: Bearer` with every batch.
    token: Option<String>,
}

/// One set of collectors to ship to.
#[derive(Debug)]
struct Targets {
    list: Vec<Target>,
    selector: UrlSelector,
}

/// One collector: a base URL, and the address its host name is pinned to when the name
/// resolves to several.
#[derive(Debug, Clone)]
struct Target {
    base: Url,
    addr: Option<SocketAddr>,
    client: reqwest::Client,
}

impl Target {
    fn key(&self) -> (String, Option<SocketAddr>) {
        (self.base.to_string(), self.addr)
    }

    /// The URL as shown in errors and the registry: the base, and the address it is pinned to.
    fn label(&self) -> String {
        match self.addr {
            Some(a) => format!("{} ({a})", self.base),
            None => self.base.to_string(),
        }
    }
}

/// The collector output could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CollectorOutputError {
    #[error("collector URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("collector output: {0}")]
    Security(#[from] ferry_core::security::SecurityError),
}

fn parse_base(u: &str) -> Result<Url, CollectorOutputError> {
    let url = Url::parse(u).map_err(|e| CollectorOutputError::Url {
        url: u.to_owned(),
        message: e.to_string(),
    })?;
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(CollectorOutputError::Url {
            url: u.to_owned(),
            message: "not a base URL".to_owned(),
        });
    }
    Ok(url)
}

impl CollectorOutput {
    pub fn new(cfg: &CollectorOutputConfig) -> Result<Self, CollectorOutputError> {
        let configured = cfg
            .urls
            .iter()
            .map(|u| parse_base(u))
            .collect::<Result<Vec<_>, _>>()?;
        let list = configured
            .iter()
            .map(|base| {
                Ok(Target {
                    base: base.clone(),
                    addr: None,
                    client: Self::client(cfg, None)?,
                })
            })
            .collect::<Result<Vec<_>, CollectorOutputError>>()?;
        Ok(Self {
            targets: std::sync::RwLock::new(Arc::new(Targets {
                selector: UrlSelector::new(list.len(), cfg.mode),
                list,
            })),
            configured,
            cfg: cfg.clone(),
            token: cfg.security.resolve_token()?,
        })
    }

    /// An HTTP client for one target; `pin` sends the host name's requests to one address.
    fn client(
        cfg: &CollectorOutputConfig,
        pin: Option<(&str, SocketAddr)>,
    ) -> Result<reqwest::Client, CollectorOutputError> {
        let mut b = cfg
            .security
            .http_client()?
            .timeout(cfg.timeout.get())
            .connect_timeout(cfg.timeout.get().min(Duration::from_secs(10)))
            // Below the collector's 10 s idle close, so a pooled connection is not reused as it closes.
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some((host, addr)) = pin {
            b = b.resolve(host, addr);
        }
        Ok(b.build()?)
    }

    fn current(&self) -> Arc<Targets> {
        match self.targets.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The base URLs in use now (with the address a name is pinned to), in selector order.
    pub fn targets(&self) -> Vec<String> {
        self.current().list.iter().map(Target::label).collect()
    }

    /// Learns the collectors again: the configured ones, those they list on
    /// `GET /v1/collectors` (with `discover`), each host name resolved (one target per address
    /// when it has several). Keeps the targets as they are when nothing changed, and keeps the
    /// one failover is on when it is still there.
    pub async fn refresh(&self) {
        let mut bases = self.configured.clone();
        if self.cfg.discover {
            for url in self.discovered().await {
                if !bases.contains(&url) {
                    bases.push(url);
                }
            }
        }
        let mut wanted: Vec<(Url, Option<SocketAddr>)> = Vec::new();
        for base in bases {
            for addr in resolve_all(&base).await {
                wanted.push((base.clone(), addr));
            }
        }
        let now = self.current();
        let same = wanted.len() == now.list.len()
            && wanted
                .iter()
                .zip(&now.list)
                .all(|((b, a), t)| (b.to_string(), *a) == t.key());
        if same || wanted.is_empty() {
            return;
        }
        let mut list = Vec::with_capacity(wanted.len());
        for (base, addr) in wanted {
            let existing = now
                .list
                .iter()
                .find(|t| t.key() == (base.to_string(), addr));
            let target = match existing {
                Some(t) => t.clone(),
                None => {
                    let pin = match (addr, base.host_str()) {
                        (Some(a), Some(h)) => Some((h, a)),
                        _ => None,
                    };
                    match Self::client(&self.cfg, pin) {
                        Ok(client) => Target { base, addr, client },
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot build a client for a collector; skipping it");
                            continue;
                        }
                    }
                }
            };
            list.push(target);
        }
        let selector = UrlSelector::new(list.len(), self.cfg.mode);
        // Failover stays on the collector it was on, if that one is still listed.
        let on = now.list.get(now.selector.pick_peek()).map(Target::key);
        if let Some(i) = on.and_then(|k| list.iter().position(|t| t.key() == k)) {
            selector.set(i);
        }
        let labels: Vec<String> = list.iter().map(Target::label).collect();
        tracing::info!(collectors = ?labels, "collectors to ship to");
        metrics::gauge!("ferry_agent_collectors").set(list.len() as f64);
        let next = Arc::new(Targets { list, selector });
        match self.targets.write() {
            Ok(mut t) => *t = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The collectors the configured ones list (the first that answers), as base URLs.
    async fn discovered(&self) -> Vec<Url> {
        let now = self.current();
        for t in &now.list {
            let mut url = t.base.clone();
            if let Ok(mut segs) = url.path_segments_mut() {
                segs.pop_if_empty().extend(["v1", "collectors"]);
            }
            let mut request = t
                .client
                .get(url)
                .timeout(self.cfg.timeout.get().min(Duration::from_secs(5)));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let reply = request.send().await;
            let Ok(resp) = reply else { continue };
            if !resp.status().is_success() {
                continue;
            }
            let Ok(body) = resp.bytes().await else {
                continue;
            };
            let Ok(views) =
                serde_json::from_slice::<Vec<ferry_core::registry::CollectorView>>(&body)
            else {
                continue;
            };
            return views
                .into_iter()
                .filter_map(|v| parse_base(&v.url).ok())
                .collect();
        }
        Vec::new()
    }

    /// `{base}/v1/topics/{topic}/records`, the topic percent-encoded as one path segment.
    pub fn records_url(base: &Url, topic: &str) -> Url {
        let mut url = base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty()
                .extend(["v1", "topics", topic, "records"]);
        }
        url
    }
}

/// Maps a collector's reply to the output's answer.
pub fn classify(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Ack, OutputError> {
    let text = || {
        let s = String::from_utf8_lossy(&body[..body.len().min(512)]);
        format!("HTTP {status}: {}", s.trim())
    };
    match status.as_u16() {
        200..=299 => Ok(parse_ack(body)),
        413 => Err(OutputError::TooLarge),
        409 => Err(OutputError::OutOfOrder { reason: text() }),
        429 | 503 => Err(OutputError::Retryable {
            reason: text(),
            retry_after: retry_after.and_then(parse_retry_after),
        }),
        500..=599 => Err(OutputError::Retryable {
            reason: text(),
            retry_after: None,
        }),
        // 408 (request timeout) is worth another try; every other 4xx will not change.
        408 => Err(OutputError::Retryable {
            reason: text(),
            retry_after: None,
        }),
        _ => Err(OutputError::Rejected { reason: text() }),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by ferry's collector; it falls
/// back to the backoff).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

fn parse_ack(body: &[u8]) -> Ack {
    #[derive(serde::Deserialize)]
    struct Summary {
        stored: Option<u64>,
        deduplicated: Option<u64>,
    }
    match serde_json::from_slice::<Summary>(body) {
        Ok(s) => Ack {
            stored: s.stored,
            deduplicated: s.deduplicated,
        },
        Err(_) => Ack::default(),
    }
}

/// Batches back to back as one request body, sent from the batches' own buffers (no copy into
/// one; a request of several holds no second copy of them). Its exact size is known, so the
/// request carries a `Content-Length` like a single batch's.
struct Frames {
    parts: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.parts.pop_front().map(|b| {
            this.left -= b.len() as u64;
            Ok(http_body::Frame::data(b))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

impl CollectorOutput {
    /// One `POST` of `body` (one batch or several back to back) to the current collector.
    async fn post(
        &self,
        topic: &str,
        body: impl Into<reqwest::Body>,
        after: Option<u64>,
    ) -> Result<Ack, OutputError> {
        let targets = self.current();
        let index = targets.selector.pick();
        let Some(target) = targets.list.get(index) else {
            return Err(OutputError::Rejected {
                reason: "no collector URL configured".to_owned(),
            });
        };
        let url = Self::records_url(&target.base, topic);
        let mut request = target.client.post(url.clone()).header(
            reqwest::header::CONTENT_TYPE,
            ferry_core::batch::CONTENT_TYPE,
        );
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(after) = after {
            request = request.header(ferry_core::batch::AFTER_HEADER, after);
        }
        let sent = request.body(body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                targets.selector.failed(index);
                // A certificate problem does not mend by itself, but the operator may fix it
                // (a new CA file, a SIGHUP'd collector): retried, and said plainly in the log.
                let reason = ferry_core::security::explain_tls(&e)
                    .unwrap_or_else(|| ferry_core::error_chain(&e));
                return Err(OutputError::Retryable {
                    reason: format!("{url}: {reason}"),
                    retry_after: None,
                });
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            targets.selector.failed(index);
        }
        classify(status, retry_after.as_deref(), &body).map_err(|e| match e {
            OutputError::Retryable {
                reason,
                retry_after,
            } => OutputError::Retryable {
                reason: format!("{url}: {reason}"),
                retry_after,
            },
            OutputError::Rejected { reason } => OutputError::Rejected {
                reason: format!("{url}: {reason}"),
            },
            OutputError::OutOfOrder { reason } => OutputError::OutOfOrder {
                reason: format!("{url}: {reason}"),
            },
            other => other,
        })
    }
}

impl Output for CollectorOutput {
    async fn send(&self, topic: &str, batch: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
        self.post(topic, batch, meta.after).await
    }

    /// The collector takes a body of several batches, stores each under its own origin (its
    /// deduplication is per batch as for one), and answers once all are durable.
    fn coalesces(&self) -> bool {
        true
    }

    async fn send_many(
        &self,
        topic: &str,
        batches: &[(Bytes, BatchMeta)],
    ) -> Result<Ack, OutputError> {
        let body = Frames {
            left: batches.iter().map(|(b, _)| b.len() as u64).sum(),
            parts: batches.iter().map(|(b, _)| b.clone()).collect(),
        };
        self.post(topic, reqwest::Body::wrap(body), None).await
    }

    /// The collector stores a file's batches in order however requests race (`ferry-after`).
    fn max_in_flight_per_file(&self) -> usize {
        usize::MAX
    }

    async fn refresh(&self) {
        CollectorOutput::refresh(self).await;
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.cfg.refresh_interval.get())
    }

    fn current_url(&self) -> Option<String> {
        let t = self.current();
        t.list
            .get(t.selector.pick_peek())
            .map(|t| t.base.as_str().trim_end_matches('/').to_owned())
    }
}

/// Every address of the base URL's host when it is a name with several (one target each);
/// `[None]` for an IP literal, a name with one address, or one that does not resolve now (the
/// client resolves it again per connection).
async fn resolve_all(base: &Url) -> Vec<Option<SocketAddr>> {
    let (Some(host), Some(port)) = (base.host_str(), base.port_or_known_default()) else {
        return vec![None];
    };
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return vec![None];
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.len() > 1 {
                addrs.into_iter().map(Some).collect()
            } else {
                vec![None]
            }
        }
        Err(e) => {
            tracing::debug!(host, error = %e, "cannot resolve a collector's host name now");
            vec![None]
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_ack_retry_split_or_drop() {
        let ok = classify(StatusCode::OK, None, br#"{"stored":5,"deduplicated":2}"#).unwrap();
        assert_eq!((ok.stored, ok.deduplicated), (Some(5), Some(2)));
        assert_eq!(classify(StatusCode::OK, None, b"").unwrap(), Ack::default());
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some("3"), b"slow down"),
            Err(OutputError::Retryable {
                reason: "HTTP 429 Too Many Requests: slow down".into(),
                retry_after: Some(Duration::from_secs(3)),
            })
        );
        assert!(matches!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("Wed, 21 Oct 2026 07:28:00 GMT"),
                b""
            ),
            Err(OutputError::Retryable {
                retry_after: None,
                ..
            })
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, b""),
            Err(OutputError::Retryable { .. })
        ));
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None, b""),
            Err(OutputError::TooLarge)
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None, b"bad crc"),
            Err(OutputError::Rejected { reason }) if reason.contains("bad crc")
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, None, b""),
            Err(OutputError::Rejected { .. })
        ));
    }

    #[test]
    fn records_url_encodes_the_topic() {
        let base = Url::parse("http://c1:7070/").unwrap();
        assert_eq!(
            CollectorOutput::records_url(&base, "app logs").as_str(),
            "http://c1:7070/v1/topics/app%20logs/records"
        );
        let base = Url::parse("http://c1:7070/prefix").unwrap();
        assert_eq!(
            CollectorOutput::records_url(&base, "t").as_str(),
            "http://c1:7070/prefix/v1/topics/t/records"
        );
    }

    #[tokio::test]
    async fn only_a_name_with_several_addresses_is_split_into_targets() {
        for url in [
            "http://127.0.0.1:7070",
            "http://[::1]:7070",
            "https://10.1.2.3",
        ] {
            assert_eq!(
                resolve_all(&Url::parse(url).unwrap()).await,
                vec![None],
                "{url}"
            );
        }
        // A name: one target per address when it has several, else one resolved again by
        // the client per connection.
        use std::net::ToSocketAddrs;
        let mut addrs: Vec<SocketAddr> = ("localhost", 7070).to_socket_addrs().unwrap().collect();
        addrs.sort();
        addrs.dedup();
        let want: Vec<Option<SocketAddr>> = if addrs.len() > 1 {
            addrs.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let got = resolve_all(&Url::parse("http://localhost:7070").unwrap()).await;
        assert_eq!(got, want);
        // Does not resolve now: kept as it is, so it is tried (and fails over) like any other.
        let none = resolve_all(&Url::parse("http://no-such-host.invalid:7070").unwrap()).await;
        assert_eq!(none, vec![None]);
    }

    /// A refused connection is a retryable error and moves failover to the next URL. (The
    /// first URL's port was just bound and released, so nothing listens there.)
    #[tokio::test]
    async fn connection_refused_is_retryable_and_fails_over() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let out = CollectorOutput::new(&CollectorOutputConfig {
            urls: vec![
                format!("http://127.0.0.1:{port}"),
                "http://127.0.0.1:9".into(),
            ],
            mode: crate::config::UrlMode::Failover,
            timeout: ferry_core::config::Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap();
        let meta = BatchMeta {
            records: 0,
            first_offset: 0,
            end_offset: 0,
            after: None,
        };
        let err = out
            .send("t", Bytes::from_static(b"x"), &meta)
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::Retryable { .. }), "{err}");
        assert_eq!(out.current().selector.pick(), 1);
    }
}
