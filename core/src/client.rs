//! A client for the collector's HTTP API (DESIGN.md's contract), used by the CLI, the processor's
//! source and tests. Errors keep the collector's status and message, and whether (and when) a
//! retry makes sense.

use crate::batch::DecodeLimits;
use crate::fetch::{self, FetchedBatch};
use crate::security::{ClientSecurity, explain_tls};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("collector answered {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// From `Retry-After`, when the collector sent one.
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the collector at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("unexpected reply from the collector: {0}")]
    Decode(String),
    #[error("invalid collector URL {url:?}: {message}")]
    Url { url: String, message: String },
    /// The CA, client certificate or token could not be used.
    #[error("{0}")]
    Security(String),
    /// The TLS handshake failed on a certificate (wrong CA, expired, refused): trying again
    /// will not help until a certificate or the settings change.
    #[error("cannot reach the collector at {url}: {message}")]
    Tls { url: String, message: String },
}

impl ClientError {
    /// Whether sending the same request again later may succeed (the collector was down, busy,
    /// or over a limit), as opposed to a request that is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Http { status, .. } => *status == 429 || *status >= 500,
            ClientError::Transport { .. } => true,
            ClientError::Decode(_)
            | ClientError::Url { .. }
            | ClientError::Security(_)
            | ClientError::Tls { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The collector's reply to a post: how many records were stored, deduplicated, dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestReply {
    pub topic: String,
    pub records: u64,
    pub stored: u64,
    pub deduplicated: u64,
    pub dropped: u64,
    #[serde(default)]
    pub routed: std::collections::BTreeMap<String, u64>,
    pub fsync: String,
}

/// A group member's assignment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    #[serde(default)]
    pub segments: u32,
    #[serde(default)]
    pub last_append_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub records: u64,
    pub size_bytes: u64,
    pub partitions: Vec<PartitionInfo>,
}

/// A group as `GET /v1/groups` answers it (and `ferry groups` shows it): members and, per
/// partition, committed offset and lag. The collector serializes these very types.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupView {
    pub group: String,
    pub members: Vec<MemberView>,
    pub partitions: Vec<LagView>,
    pub lag_records: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub topics: Vec<String>,
    /// `(topic, partition)` pairs it is assigned.
    pub partitions: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LagView {
    pub topic: String,
    pub partition: u32,
    pub committed: u64,
    pub end_offset: u64,
    pub lag_records: u64,
    /// Age of the oldest record not yet committed, in seconds (0 with no lag).
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// One fetch: the batches and the partition's bounds at the time.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub log_start: u64,
    pub end_offset: u64,
    pub batches: Vec<FetchedBatch>,
}

/// A fetch reply before decoding: the framed batches as the collector sent them.
#[derive(Debug, Clone)]
pub struct RawFetch {
    pub log_start: u64,
    pub end_offset: u64,
    pub body: Bytes,
}

/// How long a request may take by default before the client gives up and says what it waited
/// for (a fetch may take its long-poll wait on top).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one collector.
#[derive(Debug, Clone)]
pub struct CollectorClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Every request's deadline, so that a collector that accepts a connection and never
    /// answers cannot hang a command.
    timeout: Duration,
}

impl CollectorClient {
    /// `url` is the collector's base URL, e.g. `http://127.0.0.1:7070`.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_security(url, &ClientSecurity::default())
    }

    /// A client for `url` (`http://` or `https://`) with a CA, a client certificate and a
    /// token as `security` says.
    pub fn with_security(url: &str, security: &ClientSecurity) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        let bad = |message: String| ClientError::Url {
            url: url.to_owned(),
            message,
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(bad(format!("scheme {other}:// is not http:// or https://"))),
        }
        let token = security
            .resolve_token()
            .map_err(|e| ClientError::Security(e.to_string()))?;
        let http = security
            .http_client()
            .map_err(|e| ClientError::Security(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            // Below the collector's 10 s idle close (`limits.header_read_timeout`), so a pooled
            // connection is not reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| bad(error_chain(&e)))?;
        Ok(Self {
            http,
            base,
            token,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Gives up on a request after `timeout` (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        self.send_within(rb, self.timeout).await
    }

    /// Sends with a deadline; a request that times out says what it waited for and how long.
    async fn send_within(
        &self,
        rb: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let req = rb.timeout(timeout).build().map_err(|e| ClientError::Url {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        let what = format!("{} {}", req.method(), req.url().path());
        let resp = self.http.execute(req).await.map_err(|e| {
            let url = self.base.clone();
            if e.is_timeout() {
                return ClientError::Transport {
                    url,
                    message: format!("no answer to {what} within {timeout:?}"),
                };
            }
            match explain_tls(&e) {
                Some(message) => ClientError::Tls { url, message },
                None => ClientError::Transport {
                    url,
                    message: error_chain(&e),
                },
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        Err(ClientError::Http {
            status: status.as_u16(),
            message,
            retry_after,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Posts newline-delimited lines (`body`), gzipped if `gzip`.
    pub async fn post_lines(
        &self,
        topic: &str,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<IngestReply, ClientError> {
        self.post_plain(topic, body, gzip, None).await
    }

    /// [`CollectorClient::post_lines`] as producer `producer_id`, the body's first line being
    /// number `first_seq` of that producer's lines ([`crate::batch::PRODUCER_ID_HEADER`]): a
    /// body resent after an error or a collector crash is then stored once.
    pub async fn post_lines_as(
        &self,
        topic: &str,
        body: Vec<u8>,
        gzip: bool,
        producer_id: &str,
        first_seq: u64,
    ) -> Result<IngestReply, ClientError> {
        self.post_plain(topic, body, gzip, Some((producer_id, first_seq)))
            .await
    }

    /// A plain-lines POST, with the producer headers when `producer` is given.
    async fn post_plain(
        &self,
        topic: &str,
        body: Vec<u8>,
        gzip: bool,
        producer: Option<(&str, u64)>,
    ) -> Result<IngestReply, ClientError> {
        let mut rb = self
            .req(
                reqwest::Method::POST,
                &format!("/v1/topics/{topic}/records"),
            )
            .header(reqwest::header::CONTENT_TYPE, "text/plain");
        if let Some((id, seq)) = producer {
            rb = rb
                .header(crate::batch::PRODUCER_ID_HEADER, id)
                .header(crate::batch::PRODUCER_SEQ_HEADER, seq);
        }
        let body = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body)
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            rb = rb.header(reqwest::header::CONTENT_ENCODING, "gzip");
            enc.finish()
                .map_err(|e| ClientError::Decode(e.to_string()))?
        } else {
            body
        };
        self.json(rb.body(body)).await
    }

    /// Posts encoded ferry batches (one, or several back to back).
    pub async fn post_batches(&self, topic: &str, body: Bytes) -> Result<IngestReply, ClientError> {
        let rb = self
            .req(
                reqwest::Method::POST,
                &format!("/v1/topics/{topic}/records"),
            )
            .header(reqwest::header::CONTENT_TYPE, crate::batch::CONTENT_TYPE)
            .body(body);
        self.json(rb).await
    }

    pub async fn topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/topics"))
            .await
    }

    /// The topic, or `None` if it does not exist.
    pub async fn topic(&self, topic: &str) -> Result<Option<TopicInfo>, ClientError> {
        match self
            .json(self.req(reqwest::Method::GET, &format!("/v1/topics/{topic}")))
            .await
        {
            Ok(t) => Ok(Some(t)),
            Err(ClientError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<TopicInfo, ClientError> {
        let rb = self
            .req(reqwest::Method::PUT, &format!("/v1/topics/{topic}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "partitions": partitions }).to_string());
        self.json(rb).await
    }

    /// Deletes a topic and its records (`DELETE /v1/topics/{topic}`).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/v1/topics/{topic}")))
            .await
            .map(drop)
    }

    /// Fetches stored batches of a partition from `offset`; waits up to `wait` for new ones if
    /// there are none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
        wait: Duration,
    ) -> Result<Fetch, ClientError> {
        let raw = self
            .fetch_body(
                topic,
                partition,
                offset,
                max_bytes,
                wait,
                &mut BytesMut::new(),
            )
            .await?;
        let batches = fetch::decode_frames(&raw.body, &DecodeLimits::default())
            .map_err(|e| ClientError::Decode(format!("fetch body: {e}")))?;
        Ok(Fetch {
            log_start: raw.log_start,
            end_offset: raw.end_offset,
            batches,
        })
    }

    /// [`CollectorClient::fetch`] without decoding: the body as received, for a caller that
    /// decodes it record by record ([`fetch::for_each_record`]). It is read into `buf`, which a
    /// caller that fetches in a loop keeps: once the previous body's bytes are all dropped
    /// (records of compressed batches do not hold them), its allocation is used again instead
    /// of a fresh one of megabytes, page-faulted in, per fetch.
    pub async fn fetch_body(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
        wait: Duration,
        buf: &mut BytesMut,
    ) -> Result<RawFetch, ClientError> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!(
                "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_bytes={max_bytes}&wait_ms={}",
                wait.as_millis()
            ),
        );
        let mut resp = self.send_within(rb, wait + self.timeout).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ClientError::Decode(format!("fetch reply without {name}")))
        };
        let log_start = header(fetch::HEADER_LOG_START)?;
        let end_offset = header(fetch::HEADER_END_OFFSET)?;
        buf.clear();
        // Within the asked-for size (a little more: the frames' headers); reclaims the
        // allocation when nothing else holds it any more.
        let expect = resp
            .content_length()
            .unwrap_or(0)
            .min(max_bytes.saturating_mul(2));
        buf.reserve(usize::try_from(expect).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })? {
            buf.extend_from_slice(&chunk);
        }
        let body = buf.split().freeze();
        Ok(RawFetch {
            log_start,
            end_offset,
            body,
        })
    }

    /// The first offset of a partition appended at or after `timestamp_ms`.
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct O {
            offset: u64,
        }
        let o: O = self
            .json(self.req(
                reqwest::Method::GET,
                &format!(
                    "/v1/topics/{topic}/partitions/{partition}/offset?timestamp_ms={timestamp_ms}"
                ),
            ))
            .await?;
        Ok(o.offset)
    }

    pub async fn join(
        &self,
        group: &str,
        member_id: Option<&str>,
        topics: &[String],
        session_timeout: Duration,
    ) -> Result<Assignment, ClientError> {
        let body = serde_json::json!({
            "member_id": member_id,
            "topics": topics,
            "session_timeout_ms": session_timeout.as_millis() as u64,
        });
        self.json(self.post_json(&format!("/v1/groups/{group}/join"), &body))
            .await
    }

    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        owned: &[(String, u32)],
    ) -> Result<Assignment, ClientError> {
        let body = serde_json::json!({ "member_id": member_id, "owned": owned });
        self.json(self.post_json(&format!("/v1/groups/{group}/heartbeat"), &body))
            .await
    }

    pub async fn leave(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({ "member_id": member_id });
        self.send(self.post_json(&format!("/v1/groups/{group}/leave"), &body))
            .await
            .map(|_| ())
    }

    /// Commits `offsets` (the next offset to read, per partition). With `member` (its id and
    /// the generation of the assignment the offsets were read in), the collector checks that
    /// the member owns each partition and has not lost and regained it since (409 if not), and
    /// writes in the same step.
    pub async fn commit(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        offsets: &[CommittedOffset],
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({
            "member_id": member.map(|m| m.0),
            "generation": member.map(|m| m.1),
            "offsets": offsets,
        });
        self.send(self.post_json(&format!("/v1/groups/{group}/commit"), &body))
            .await
            .map(|_| ())
    }

    pub async fn committed(&self, group: &str) -> Result<Vec<CommittedOffset>, ClientError> {
        self.json(self.req(reqwest::Method::GET, &format!("/v1/groups/{group}/offsets")))
            .await
    }

    /// Stores a processor checkpoint: `state` built from `topic/partition` up to (not including)
    /// `offset`. The collector accepts it only from the member owning the partition since
    /// `generation` (409).
    #[allow(clippy::too_many_arguments)] // the route's own parameters, each a path or query part
    pub async fn put_checkpoint(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        topic: &str,
        partition: u32,
        offset: u64,
        state: Vec<u8>,
    ) -> Result<(), ClientError> {
        let rb = self
            .req(
                reqwest::Method::PUT,
                &format!("/v1/groups/{group}/checkpoints/{topic}/{partition}?member_id={member_id}&generation={generation}&offset={offset}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(state);
        self.send(rb).await.map(|_| ())
    }

    /// The stored checkpoint (offset, state) of a group for a partition, if any.
    pub async fn get_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, Bytes)>, ClientError> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!("/v1/groups/{group}/checkpoints/{topic}/{partition}"),
        );
        let resp = match self.send(rb).await {
            Ok(r) => r,
            Err(ClientError::Http { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let offset = resp
            .headers()
            .get("x-ferry-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| ClientError::Decode("checkpoint reply without x-ferry-offset".into()))?;
        let state = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        Ok(Some((offset, state)))
    }

    /// Every group with its members and lag, as the collector reports it.
    pub async fn groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/groups"))
            .await
    }

    /// Reports an agent's state to the registry (`PUT /v1/agents/{id}`).
    pub async fn agent_heartbeat(
        &self,
        id: &str,
        report: &crate::registry::AgentHeartbeat,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(report).map_err(|e| ClientError::Decode(e.to_string()))?;
        let path = format!("/v1/agents/{id}");
        self.send(
            self.req(reqwest::Method::PUT, &path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await
        .map(drop)
    }

    /// Every agent the collector has heard from, with its status.
    pub async fn agents(&self) -> Result<Vec<crate::registry::AgentView>, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/agents"))
            .await
    }

    /// The collectors an agent may ship to, as this collector knows them.
    pub async fn collectors(&self) -> Result<Vec<crate::registry::CollectorView>, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/collectors"))
            .await
    }

    /// The collector's `/metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let resp = self
            .send(self.req(reqwest::Method::GET, "/metrics"))
            .await?;
        resp.text().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })
    }

    fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    }
}

/// reqwest's Display hides the cause ("error sending request"); users need the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}
