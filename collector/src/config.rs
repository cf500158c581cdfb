//! The `collector:` section of a ferry config.

use crate::routing::RouteConfig;
use crate::store::StoreConfig;
use ferry_core::config::{ByteSize, Duration, Problems};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where records are stored: `embedded` (the store in `data_dir`, the default) or `kafka`
    /// (the `kafka:` section's brokers; nothing is written to `data_dir`).
    #[serde(default)]
    pub backend: BackendKind,
    /// The Kafka cluster, for `backend: kafka`.
    #[serde(default)]
    pub kafka: Option<ferry_kafka::KafkaConfig>,
    /// Where the embedded store keeps its topics.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The embedded store: fsync policy, segments, retention.
    #[serde(default)]
    pub store: StoreConfig,
    /// Create a topic the first time a record is posted to it.
    #[serde(default = "yes")]
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    #[serde(default = "default_partitions")]
    pub default_partitions: u32,
    /// Per-topic settings; topics listed here are created at start.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// Routing rules, evaluated in order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Consumer-group settings.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// The registry of agents (`GET /v1/agents`).
    #[serde(default)]
    pub agents: AgentsConfig,
    /// The URL agents should use for this collector, listed by `GET /v1/collectors` (default:
    /// `http://` and the address it listens on).
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// Other collectors agents may ship to (base URLs), listed by `GET /v1/collectors`, so an
    /// agent given one collector learns the rest: typically the collectors that share a Kafka
    /// backend, where every collector is interchangeable.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How a plain (newline-delimited) body is stored: `lz4` (the default: cheap to write and
    /// to read back, for consumers and processors), `gzip` (level 1: fewer bytes on disk, at
    /// several times the CPU both ways) or `none`.
    #[serde(default = "default_plain_codec")]
    pub plain_codec: ferry_core::batch::Codec,
    /// How an agent batch that arrives uncompressed is stored: `lz4` (the default: a few times
    /// fewer bytes to write and fsync, at about 1 GiB/s of one core), `gzip` (level 1) or
    /// `none` (as received). Batches that arrive compressed are stored as they are.
    #[serde(default = "default_store_codec")]
    pub store_codec: ferry_core::batch::Codec,
    /// Bearer tokens accepted on the API, each a principal with every permission (the
    /// `auth.principals` of before principals). Empty, with no principals: no authentication.
    #[serde(default)]
    pub auth_tokens: Vec<crate::auth::Secret>,
    /// Principals and their permissions (docs/security.md).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// TLS on the listener: `{cert, key, client_ca?}` (with `client_ca`: mutual TLS).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// How long a graceful shutdown may take to finish in-flight requests.
    #[serde(default = "default_drain")]
    pub shutdown_timeout: Duration,
    /// OTLP/HTTP logs (`POST /v1/logs`): which topic each log record goes to.
    #[serde(default)]
    pub otlp: OtlpConfig,
    /// Address of the Kafka protocol listener (`--kafka-listen`), serving the embedded store
    /// to any Kafka client (docs/kafka.md). Off when unset.
    #[serde(default)]
    pub kafka_listen: Option<String>,
    /// `HOST:PORT` the Kafka listener advertises in Metadata (where clients connect after
    /// bootstrapping); default: the address it is bound to.
    #[serde(default)]
    pub kafka_advertise: Option<String>,
}

/// The `collector.otlp:` section: where OTLP log records are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// A resource attribute whose value names the topic (e.g. `service.name`): each
    /// resource's records go to that topic. Records of a resource without it go to
    /// `default_topic`; a value that is not a valid topic name rejects that resource's records
    /// (counted in the response's `partial_success`).
    #[serde(default)]
    pub topic_attribute: Option<String>,
    /// The topic of records whose resource has no `topic_attribute` (or of every record when
    /// `topic_attribute` is not set).
    #[serde(default = "default_otlp_topic")]
    pub default_topic: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            topic_attribute: None,
            default_topic: default_otlp_topic(),
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            backend: BackendKind::Embedded,
            kafka: None,
            data_dir: default_data_dir(),
            store: StoreConfig::default(),
            auto_create_topics: true,
            default_partitions: default_partitions(),
            topics: BTreeMap::new(),
            routes: Vec::new(),
            limits: LimitsConfig::default(),
            groups: GroupsConfig::default(),
            agents: AgentsConfig::default(),
            advertise_url: None,
            peers: Vec::new(),
            plain_codec: default_plain_codec(),
            store_codec: default_store_codec(),
            auth_tokens: Vec::new(),
            auth: Default::default(),
            tls: None,
            shutdown_timeout: default_drain(),
            otlp: OtlpConfig::default(),
            kafka_listen: None,
            kafka_advertise: None,
        }
    }
}

/// Where the collector stores what it ingests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Partition count (default: `default_partitions`).
    #[serde(default)]
    pub partitions: Option<u32>,
    /// Records with the same value of this field go to the same partition (per-key order).
    #[serde(default)]
    pub key_field: Option<String>,
    /// Maximum records held (stored and not yet deleted by retention); past it, posts are
    /// refused with 429 — the flash-sale case.
    #[serde(default)]
    pub max_records: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body (compressed, as sent): 413 past it.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// Largest body after gzip decompression (guards against gzip bombs): 413 past it.
    #[serde(default = "default_max_raw")]
    pub max_raw_bytes: ByteSize,
    /// Longest line in a plain body: 413 naming the line past it.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: ByteSize,
    /// Request bytes being processed at once across all requests: 503 past it.
    #[serde(default = "default_inflight")]
    pub max_inflight_bytes: ByteSize,
    /// Requests in flight for one topic: 429 past it.
    #[serde(default = "default_topic_queue")]
    pub max_pending_per_topic: u32,
    /// `Retry-After` seconds sent with 429/503.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
    /// Largest fetch response a consumer may ask for.
    #[serde(default = "default_max_fetch")]
    pub max_fetch_bytes: ByteSize,
    /// Topics the collector holds at most; creating one more (auto-creation or
    /// `PUT /v1/topics/T`) is refused with 429 before anything touches the disk.
    #[serde(default = "default_max_topics")]
    pub max_topics: u32,
    /// Partitions a topic may have at most (`PUT /v1/topics/T`, `default_partitions`,
    /// `topics.T.partitions`). Each partition holds open files.
    #[serde(default = "default_max_partitions")]
    pub max_partitions_per_topic: u32,
    /// Topics auto-created per second at most (a burst of as many is allowed): a flood of
    /// posts to new names is refused with 429 instead of filling the disk with directories.
    #[serde(default = "default_creations_per_sec")]
    pub topic_creations_per_sec: u32,
    /// Open client connections at most; a connection past it is answered 503 and closed
    /// (counted in `ferry_collector_connections_refused_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Time a connection has to send a request's headers, counted from when it opened or its
    /// previous response was sent: closes slow-header clients and idle keep-alive connections.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Largest processor checkpoint (state of one partition): 413 past it. Read only after
    /// the sender is known to own the partition, and counted in `max_inflight_bytes`.
    #[serde(default = "default_max_checkpoint")]
    pub max_checkpoint_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_raw_bytes: default_max_raw(),
            max_line_bytes: default_max_line(),
            max_inflight_bytes: default_inflight(),
            max_pending_per_topic: default_topic_queue(),
            retry_after_secs: default_retry_after(),
            max_fetch_bytes: default_max_fetch(),
            max_checkpoint_bytes: default_max_checkpoint(),
            max_connections: default_max_connections(),
            max_topics: default_max_topics(),
            max_partitions_per_topic: default_max_partitions(),
            topic_creations_per_sec: default_creations_per_sec(),
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Default session timeout of a member that does not ask for one.
    #[serde(default = "default_session")]
    pub session_timeout: Duration,
    /// Smallest and largest session timeout a member may ask for.
    #[serde(default = "default_min_session")]
    pub min_session_timeout: Duration,
    #[serde(default = "default_max_session")]
    pub max_session_timeout: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            session_timeout: default_session(),
            min_session_timeout: default_min_session(),
            max_session_timeout: default_max_session(),
        }
    }
}

/// The registry of agents (`collector.agents`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// An agent silent for longer than this is shown as stale (three missed heartbeats at the
    /// agent's default `registry.heartbeat_interval` of 10s).
    #[serde(default = "default_stale_after")]
    pub stale_after: Duration,
    /// An agent silent for longer than this is forgotten.
    #[serde(default = "default_forget_after")]
    pub forget_after: Duration,
    /// Most agents the registry holds (a new one past it takes the place of the longest silent
    /// stale or stopped one, or is refused with 429).
    #[serde(default = "default_max_agents")]
    pub max_agents: u32,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            stale_after: default_stale_after(),
            forget_after: default_forget_after(),
            max_agents: default_max_agents(),
        }
    }
}

impl AgentsConfig {
    pub fn limits(&self) -> crate::registry::RegistryLimits {
        crate::registry::RegistryLimits {
            stale_after: self.stale_after.get(),
            forget_after: self.forget_after.get(),
            max_agents: self.max_agents as usize,
        }
    }
}

impl CollectorConfig {
    /// The collectors agents may ship to: this one first (its advertised URL, or `http://` and
    /// the address it is bound to), then its peers.
    pub fn collector_urls(&self, bound: Option<std::net::SocketAddr>) -> Vec<String> {
        // With `tls:`, this collector speaks https (an http:// URL would get the 400 of the
        // TLS port).
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let own = self.advertise_url.clone().unwrap_or_else(|| match bound {
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://{}", self.listen),
        });
        let own = own.trim_end_matches('/').to_owned();
        let mut urls = vec![own];
        for p in &self.peers {
            let p = p.trim_end_matches('/').to_owned();
            if !urls.contains(&p) {
                urls.push(p);
            }
        }
        urls
    }

    /// Checks what serde cannot: route actions, topic names, limits that contradict each other.
    /// The error lists every problem, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::new();
        self.check(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.to_lines())
        }
    }

    /// The Kafka listener serves the embedded store (with the same TLS and principals as the
    /// HTTP API: SASL_SSL / SSL when `tls:` is set, SASL when principals are).
    fn check_kafka_listen(&self, p: &mut Problems) {
        let Some(addr) = &self.kafka_listen else {
            if self.kafka_advertise.is_some() {
                p.add_hint(
                    "kafka_advertise",
                    "kafka_advertise is set but kafka_listen is not",
                    "add `kafka_listen: 127.0.0.1:9092` to serve the Kafka protocol",
                );
            }
            return;
        };
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            p.add(
                "kafka_listen",
                format!("kafka_listen must be HOST:PORT, got {addr:?}"),
            );
        }
        if let Some(a) = &self.kafka_advertise
            && a.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        {
            p.add(
                "kafka_advertise",
                format!("kafka_advertise must be HOST:PORT, got {a:?}"),
            );
        }
        if self.backend == BackendKind::Kafka {
            p.add_hint(
                "kafka_listen",
                "kafka_listen serves the embedded store, and backend is kafka",
                "point Kafka clients at the Kafka cluster itself, or use backend: embedded",
            );
        }
    }

    /// Records every problem under paths relative to `collector:` (for `ferry check`).
    pub fn check(&self, p: &mut Problems) {
        if let Some(tls) = &self.tls {
            p.nested("tls", |p| tls.check(p));
        }
        crate::auth::Authorizer::resolve(self, p);
        for (i, r) in self.routes.iter().enumerate() {
            p.nested(&format!("routes[{i}]"), |p| crate::routing::check(r, p));
        }
        for (name, t) in &self.topics {
            let at = format!("topics.{name}");
            if let Err(e) = ferry_core::topic::validate_name(name) {
                p.add(&at, e);
            }
            if t.partitions == Some(0) {
                p.add(
                    &format!("{at}.partitions"),
                    format!("topic {name}: partitions must be at least 1"),
                );
            }
        }
        match (self.backend, &self.kafka) {
            (BackendKind::Kafka, None) => p.add(
                "backend",
                "backend: kafka needs a kafka: section with at least `brokers`",
            ),
            (BackendKind::Kafka, Some(k)) => {
                if let Err(e) = k.validate() {
                    p.add("kafka", e);
                }
                for (name, _) in self.topics.iter().filter(|(_, t)| t.max_records.is_some()) {
                    p.add_hint(
                        &format!("topics.{name}.max_records"),
                        format!("topic {name}: max_records is a limit of the embedded store"),
                        "with backend: kafka use the brokers' retention and quotas instead",
                    );
                }
            }
            (BackendKind::Embedded, Some(_)) => p.add_hint(
                "kafka",
                "a kafka: section is set but backend is embedded",
                "add `backend: kafka` to store into Kafka",
            ),
            (BackendKind::Embedded, None) => {}
        }
        self.check_kafka_listen(p);
        if self.default_partitions == 0 {
            p.add(
                "default_partitions",
                "default_partitions must be at least 1",
            );
        }
        let max_parts = self.limits.max_partitions_per_topic;
        if max_parts == 0 || max_parts > crate::store::MAX_PARTITIONS {
            p.add(
                "limits.max_partitions_per_topic",
                format!(
                    "limits.max_partitions_per_topic must be 1 to {}",
                    crate::store::MAX_PARTITIONS
                ),
            );
        }
        if self.default_partitions > max_parts {
            p.add(
                "default_partitions",
                format!(
                    "default_partitions ({}) is over limits.max_partitions_per_topic ({max_parts})",
                    self.default_partitions
                ),
            );
        }
        for (name, t) in &self.topics {
            if let Some(n) = t.partitions.filter(|&n| n > max_parts) {
                p.add(
                    &format!("topics.{name}.partitions"),
                    format!(
                        "topic {name}: partitions ({n}) is over limits.max_partitions_per_topic ({max_parts})"
                    ),
                );
            }
        }
        if self.topics.len() > self.limits.max_topics as usize {
            p.add(
                "topics",
                format!(
                    "{} topics are configured, over limits.max_topics ({})",
                    self.topics.len(),
                    self.limits.max_topics
                ),
            );
        }
        if let Err(e) = ferry_core::topic::validate_name(&self.otlp.default_topic) {
            p.add("otlp.default_topic", e);
        }
        if self.otlp.topic_attribute.as_deref() == Some("") {
            p.add_hint(
                "otlp.topic_attribute",
                "otlp.topic_attribute is empty",
                "name a resource attribute such as service.name, or leave the key out",
            );
        }
        for (at, url) in self
            .advertise_url
            .iter()
            .map(|u| ("advertise_url".to_owned(), u))
            .chain(
                self.peers
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("peers[{i}]"), u)),
            )
        {
            match url.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() => {}
                _ => p.add_hint(
                    &at,
                    format!("{url:?} is not a collector URL"),
                    "write it as http://HOST:PORT or https://HOST:PORT",
                ),
            }
        }
        if self.agents.max_agents == 0 {
            p.add("agents.max_agents", "agents.max_agents must be at least 1");
        }
        if self.agents.stale_after.get().is_zero() {
            p.add(
                "agents.stale_after",
                "agents.stale_after must be more than 0s",
            );
        }
        if self.limits.max_connections == 0 {
            p.add(
                "limits.max_connections",
                "limits.max_connections must be at least 1",
            );
        }
        if self.limits.header_read_timeout.get().is_zero() {
            p.add(
                "limits.header_read_timeout",
                "limits.header_read_timeout must be more than 0s",
            );
        }
        if self.limits.max_inflight_bytes < self.limits.max_body_bytes {
            p.add(
                "limits.max_inflight_bytes",
                format!(
                    "limits.max_inflight_bytes ({}) is smaller than limits.max_body_bytes ({}): no request could ever be accepted",
                    self.limits.max_inflight_bytes, self.limits.max_body_bytes
                ),
            );
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:7070".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data/collector")
}
fn default_partitions() -> u32 {
    4
}
fn default_plain_codec() -> ferry_core::batch::Codec {
    ferry_core::batch::Codec::Lz4
}
fn default_store_codec() -> ferry_core::batch::Codec {
    ferry_core::batch::Codec::Lz4
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_otlp_topic() -> String {
    "otlp".into()
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(16)
}
fn default_max_raw() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_line() -> ByteSize {
    ByteSize::mib(1)
}
fn default_inflight() -> ByteSize {
    ByteSize::mib(256)
}
fn default_topic_queue() -> u32 {
    256
}
fn default_retry_after() -> u32 {
    1
}
fn default_max_fetch() -> ByteSize {
    ByteSize::mib(16)
}
fn default_max_topics() -> u32 {
    1000
}
fn default_max_partitions() -> u32 {
    256
}
fn default_creations_per_sec() -> u32 {
    20
}
fn default_max_connections() -> u32 {
    1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_checkpoint() -> ByteSize {
    ByteSize::mib(64)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(30)
}
fn default_forget_after() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_agents() -> u32 {
    10_000
}
fn default_session() -> Duration {
    Duration::from_secs(10)
}
fn default_min_session() -> Duration {
    Duration::from_millis(500)
}
fn default_max_session() -> Duration {
    Duration::from_secs(300)
}
