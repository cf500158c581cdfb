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
use std::time::Duration;

#[derive(Debug)]
pub struct CollectorOutput {
    client: reqwest::Client,
    /// Base URLs, as configured.
    urls: Vec<Url>,
    selector: UrlSelector,
    /// Sent as `Authorization: Bearer` with every batch.
    token: Option<String>,
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

impl CollectorOutput {
    pub fn new(cfg: &CollectorOutputConfig) -> Result<Self, CollectorOutputError> {
        let urls = cfg
            .urls
            .iter()
            .map(|u| {
                let url = Url::parse(u).map_err(|e| CollectorOutputError::Url {
                    url: u.clone(),
                    message: e.to_string(),
                })?;
                if url.cannot_be_a_base() {
                    return Err(CollectorOutputError::Url {
                        url: u.clone(),
                        message: "not a base URL".to_owned(),
                    });
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = cfg.security.resolve_token()?;
        let client = cfg
            .security
            .http_client()?
            .timeout(cfg.timeout.get())
            .connect_timeout(cfg.timeout.get().min(Duration::from_secs(10)))
            // Below the collector's 10 s idle close, so a pooled connection is not reused as it closes.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            client,
            selector: UrlSelector::new(urls.len(), cfg.mode),
            urls,
            token,
        })
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

impl Output for CollectorOutput {
    async fn send(&self, topic: &str, batch: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
        let index = self.selector.pick();
        let Some(base) = self.urls.get(index) else {
            return Err(OutputError::Rejected {
                reason: "no collector URL configured".to_owned(),
            });
        };
        let url = Self::records_url(base, topic);
        let mut request = self.client.post(url.clone()).header(
            reqwest::header::CONTENT_TYPE,
            ferry_core::batch::CONTENT_TYPE,
        );
        if let Some(after) = meta.after {
            request = request.header(ferry_core::batch::AFTER_HEADER, after);
        }
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let sent = request.body(batch).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.selector.failed(index);
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
            self.selector.failed(index);
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

    /// The collector stores a file's batches in order however requests race (`ferry-after`).
    fn max_in_flight_per_file(&self) -> usize {
        usize::MAX
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
            security: Default::default(),
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
        assert_eq!(out.selector.pick(), 1);
    }
}
