//! The `agent:` section of a ferry config, its defaults, its validation, and the quick form
//! built from `ferry agent` command-line flags.
//!
//! Everything here is plain data; [`AgentConfig::validate`] turns it into [`CompiledInput`]s
//! (globs and regexes compiled once) and says, naming the input, what is wrong when it cannot.

use ferry_core::batch::Codec;
use ferry_core::config::{ByteSize, Duration, Problem, Problems};
use ferry_core::record::Field;
use ferry_core::security::ClientSecurity;
use ferry_kafka::{Compression, KafkaConfig, KafkaTopicConfig};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use regex::bytes::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The agent's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Stable id of this agent, part of every batch's origin. Default: the id stored in the
    /// checkpoint file, else the host name.
    pub id: Option<String>,
    /// Where checkpoints live.
    pub data_dir: PathBuf,
    /// What to tail.
    pub inputs: Vec<InputConfig>,
    /// Syslog listeners (UDP and/or TCP): each ships the messages it receives to its topic.
    pub syslog: Vec<SyslogInputConfig>,
    /// When a batch is sealed.
    pub batch: BatchConfig,
    /// How sealed batches are compressed.
    pub compression: CompressionConfig,
    /// Where batches go.
    pub output: OutputConfig,
    /// Most bytes read but not yet acknowledged; when reached, reading pauses (the file is the
    /// buffer).
    pub buffer_bytes: ByteSize,
    /// How often every glob is expanded again and every file stat'ed, as a fallback for missed
    /// file events (NFS, queue overflow).
    pub rescan_interval: Duration,
    /// Most bytes read from one file per turn, so a busy file cannot starve quiet ones.
    pub read_budget_bytes: ByteSize,
    /// How often acknowledged offsets are written to the checkpoint file.
    pub checkpoint_interval: Duration,
    /// On shutdown, how long to wait for outstanding acknowledgements.
    pub shutdown_timeout: Duration,
    /// Most batches being delivered at once, over all files.
    pub max_in_flight: usize,
    /// Most batches of one file being delivered at once. The collector output keeps them in
    /// file order (each is sent as following its predecessor; the collector refuses one that
    /// arrives first, and it is sent again); the stdout and Kafka outputs always send one at a
    /// time.
    pub max_in_flight_per_file: usize,
    /// Most tail handles (open files) held at once. Default: what the process's open-files
    /// limit leaves after a reserve for outputs, the checkpoint and the metrics listener (the
    /// soft limit is raised to the hard one at start). Beyond it, idle files give their handle
    /// back and are reopened by path when they change, their identity checked again.
    pub max_open_files: Option<usize>,
    /// Heartbeats to the collector's registry of agents (`GET /v1/agents`, `ferry agents`).
    pub registry: RegistryConfig,
}

/// The agent's heartbeat to the collector's registry (collector output only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Report to the registry at all.
    pub enabled: bool,
    /// How often: the collector shows an agent as stale after its `agents.stale_after`
    /// (default 30s) without one.
    pub heartbeat_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// `buffer_bytes` when the config does not say.
pub const DEFAULT_BUFFER_BYTES: ByteSize = ByteSize::mib(8);

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: None,
            data_dir: PathBuf::from("data/agent"),
            inputs: Vec::new(),
            syslog: Vec::new(),
            batch: BatchConfig::default(),
            compression: CompressionConfig::default(),
            output: OutputConfig::default(),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            rescan_interval: Duration::from_secs(10),
            read_budget_bytes: ByteSize::mib(1),
            checkpoint_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            max_in_flight: 8,
            max_in_flight_per_file: 4,
            max_open_files: None,
            registry: RegistryConfig::default(),
        }
    }
}

/// Where to start in a file the agent has no checkpoint for, at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

/// One group of files tailed alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// Glob patterns (`*` stays within a directory, `**` crosses directories).
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// For files that exist when the agent starts and have no checkpoint. Files that appear
    /// while the agent runs are always read from their beginning.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Topic the lines are shipped to.
    pub topic: String,
    /// Static fields attached to every record of this input.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// Longer lines are cut to this many bytes, flagged truncated, and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// A last line without its newline is shipped as is after this long without new data.
    #[serde(default = "default_line_flush_timeout")]
    pub line_flush_timeout: Duration,
    /// Files written by a container runtime: `cri` (containerd, CRI-O), `docker` (json-file)
    /// or `auto` (per line). Each line is decoded, the pieces of a long line merged back into
    /// one record, `stream` kept as a field and the runtime's timestamp as the event time.
    /// Absent: lines are records as written.
    #[serde(default)]
    pub format: Option<crate::container::ContainerFormat>,
    /// With `format`: add `namespace`, `pod`, `pod_uid` and `container` from the kubelet's
    /// path of each file (`/var/log/pods/...`, `/var/log/containers/...`).
    #[serde(default)]
    pub kubernetes: bool,
    /// How long the content of a file truncated (or deleted) before its copy was seen is
    /// remembered: a copy (copytruncate) that appears within it is read on from where the
    /// original stopped; after it, what the original held unread is counted as lost.
    #[serde(default = "default_rotate_wait")]
    pub rotate_wait: Duration,
}

fn default_rotate_wait() -> Duration {
    Duration::from_secs(30)
}

/// Longest `rotate_wait` accepted: a copy is made within moments of its truncation.
const MAX_ROTATE_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn default_max_line_bytes() -> ByteSize {
    ByteSize::kib(256)
}

fn default_line_flush_timeout() -> Duration {
    Duration::from_secs(1)
}

/// A syslog listener (`agent.syslog[]`): RFC 5424 and RFC 3164 messages over UDP (one per
/// datagram) and TCP (octet counting, `LEN SP MSG`, or one per line), shipped to `topic` with
/// `host`, `app`, `severity` and `facility` as fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogInputConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// `host:port` to receive UDP datagrams on.
    #[serde(default)]
    pub udp: Option<String>,
    /// `host:port` to accept TCP connections on.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Topic the messages are shipped to.
    pub topic: String,
    /// Static fields attached to every record of this input.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Longest message: a longer one is cut to this many bytes, flagged truncated, and counted.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
    /// TCP connections held at once; more wait in the listen backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_message_bytes() -> ByteSize {
    ByteSize::kib(64)
}

fn default_max_connections() -> usize {
    256
}

impl SyslogInputConfig {
    /// Records every problem (paths relative to this listener).
    fn check(&self, names: &mut std::collections::HashSet<String>, p: &mut Problems) {
        let me = &self.name;
        if self.name.is_empty() {
            p.add("name", "a syslog input has an empty `name`");
        } else if !names.insert(self.name.clone()) {
            p.add("name", format!("input {me:?}: two inputs have this name"));
        }
        if self.udp.is_none() && self.tcp.is_none() {
            p.add_hint(
                "udp",
                format!("syslog input {me:?} listens nowhere"),
                "give `udp: 127.0.0.1:5514`, `tcp: 127.0.0.1:5514`, or both",
            );
        }
        for (key, addr) in [("udp", &self.udp), ("tcp", &self.tcp)] {
            if let Some(a) = addr
                && a.parse::<std::net::SocketAddr>().is_err()
            {
                p.add_hint(
                    key,
                    format!("syslog input {me:?}: {key} address {a:?} is not host:port"),
                    "write an IP address and a port, e.g. 0.0.0.0:514 or 127.0.0.1:5514",
                );
            }
        }
        if let Err(e) = ferry_core::topic::validate_name(&self.topic) {
            p.add("topic", format!("input {me:?}: {e}"));
        }
        let max = self.max_message_bytes.get();
        if !(64..=(16 << 20)).contains(&max) {
            p.add(
                "max_message_bytes",
                format!("syslog input {me:?}: `max_message_bytes` must be 64 bytes to 16MiB"),
            );
        }
        if self.max_connections == 0 {
            p.add(
                "max_connections",
                format!("syslog input {me:?}: `max_connections` must be at least 1"),
            );
        }
    }
}

/// Joins several lines into one record (e.g. a stack trace).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this starts a new record; other lines continue the current one.
    #[serde(default)]
    pub start_pattern: Option<String>,
    /// A line matching this continues the current record; other lines start a new one.
    #[serde(default)]
    pub continuation_pattern: Option<String>,
    /// Most lines in one record; more start a new record.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// A record is shipped after this long without a line that continues it.
    #[serde(default = "default_multiline_timeout")]
    pub timeout: Duration,
}

fn default_max_lines() -> usize {
    500
}

fn default_multiline_timeout() -> Duration {
    Duration::from_secs(1)
}

/// When a batch is sealed: whichever limit comes first.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Uncompressed payload size.
    pub max_bytes: ByteSize,
    pub max_records: u32,
    /// Age of the oldest record in the batch.
    pub linger: Duration,
    /// A file read to its end after at least this many bytes since its previous end — it had
    /// a backlog: found with content, caught up after a restart or a burst — seals its batch
    /// at once: those lines were waiting already, and lingering would only delay them. A file
    /// read as it is written reaches its end with a few lines each time, and its batches
    /// linger to fill up. `0`: every file's batch is sealed when its read reaches the end.
    pub backlog_bytes: ByteSize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::mib(1),
            max_records: 16_384,
            linger: Duration::from_millis(200),
            backlog_bytes: ByteSize::kib(64),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// `gzip`, `lz4` (several times faster, less compact) or `none`. Unset, it follows the
    /// output: lz4 to a collector (cheap for both ends: the collector checks every batch it
    /// stores, and stores lz4), gzip to Kafka (a remote cluster that keeps what it is given),
    /// none for `stdout` and `null`, where a batch would only be compressed to be decoded again.
    pub codec: Option<Codec>,
    /// gzip level, 0-9 (lz4 has none).
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            codec: None,
            level: 1,
        }
    }
}

impl AgentConfig {
    /// The batch codec: `compression.codec` if set, else what suits the output.
    pub fn codec(&self) -> Codec {
        self.compression.codec.unwrap_or(match self.output {
            OutputConfig::Stdout | OutputConfig::Null => Codec::None,
            OutputConfig::Collector(_) => Codec::Lz4,
            OutputConfig::Kafka(_) => Codec::Gzip,
        })
    }
}

/// Where batches go. In YAML, `type: collector` (with `urls`, optional `mode` and `timeout`),
/// `type: kafka` (with `brokers` and the other keys of the `kafka:` section, written flat next
/// to `type`: `compression`, `message_timeout`, `topic_prefix`, `topics`, the security keys,
/// `options`; see [`KafkaConfig`]), `type: stdout`, or `type: null` (YAML's null and the string
/// "null" both work; `discard` too).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawOutput")]
pub enum OutputConfig {
    Collector(CollectorOutputConfig),
    Kafka(Box<KafkaConfig>),
    Stdout,
    Null,
}

/// The `output:` mapping as written, before its `type` decides what it means. (A plain
/// internally tagged enum cannot take `type: null`, which YAML reads as null, not "null".)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    /// Absent: `None`; YAML null: `Some(None)`.
    #[serde(default, rename = "type", deserialize_with = "present")]
    kind: Option<Option<String>>,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    mode: Option<UrlMode>,
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde(default)]
    discover: Option<bool>,
    #[serde(default)]
    refresh_interval: Option<Duration>,
    // The collector output's TLS and token (`ClientSecurity`'s keys, flat).
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    // The kafka output: `KafkaConfig`'s keys, flat (serde's `flatten` cannot be combined with
    // `deny_unknown_fields`, and unknown keys must stay errors).
    #[serde(default)]
    brokers: Option<String>,
    #[serde(default)]
    compression: Option<Compression>,
    #[serde(default)]
    message_timeout: Option<Duration>,
    #[serde(default)]
    topic_prefix: Option<String>,
    #[serde(default)]
    topics: Option<BTreeMap<String, KafkaTopicConfig>>,
    #[serde(default)]
    security_protocol: Option<String>,
    #[serde(default)]
    sasl_mechanism: Option<String>,
    #[serde(default)]
    sasl_username: Option<String>,
    #[serde(default)]
    sasl_password: Option<String>,
    #[serde(default)]
    ssl_ca_location: Option<String>,
    #[serde(default)]
    ssl_certificate_location: Option<String>,
    #[serde(default)]
    ssl_key_location: Option<String>,
    #[serde(default)]
    ssl_key_password: Option<String>,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

impl RawOutput {
    /// Whether any key of the kafka output is present.
    fn has_kafka_keys(&self) -> bool {
        self.brokers.is_some()
            || self.compression.is_some()
            || self.message_timeout.is_some()
            || self.topic_prefix.is_some()
            || self.topics.is_some()
            || self.security_protocol.is_some()
            || self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
            || self.ssl_ca_location.is_some()
            || self.ssl_certificate_location.is_some()
            || self.ssl_key_location.is_some()
            || self.ssl_key_password.is_some()
            || self.options.is_some()
    }

    fn into_kafka(self) -> Result<KafkaConfig, String> {
        let brokers = self.brokers.ok_or_else(|| {
            "output type kafka needs `brokers` (host:port[,host:port...])".to_owned()
        })?;
        let mut k = KafkaConfig::new(brokers);
        if let Some(c) = self.compression {
            k.compression = c;
        }
        if let Some(t) = self.message_timeout {
            k.message_timeout = t;
        }
        k.topic_prefix = self.topic_prefix.unwrap_or_default();
        k.topics = self.topics.unwrap_or_default();
        k.security_protocol = self.security_protocol;
        k.sasl_mechanism = self.sasl_mechanism;
        k.sasl_username = self.sasl_username;
        k.sasl_password = self.sasl_password;
        k.ssl_ca_location = self.ssl_ca_location;
        k.ssl_certificate_location = self.ssl_certificate_location;
        k.ssl_key_location = self.ssl_key_location;
        k.ssl_key_password = self.ssl_key_password;
        k.options = self.options.unwrap_or_default();
        // Here as well as in `validate`, so `ferry check` catches it with the file position.
        k.validate().map_err(|e| format!("output: {e}"))?;
        Ok(k)
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl TryFrom<RawOutput> for OutputConfig {
    type Error = String;

    fn try_from(raw: RawOutput) -> Result<Self, String> {
        let collector_keys = raw.urls.is_some()
            || raw.mode.is_some()
            || raw.timeout.is_some()
            || raw.discover.is_some()
            || raw.refresh_interval.is_some()
            || raw.ca.is_some()
            || raw.cert.is_some()
            || raw.key.is_some()
            || raw.token.is_some()
            || raw.token_file.is_some();
        let kafka_keys = raw.has_kafka_keys();
        let kind = match &raw.kind {
            None => {
                return Err("output needs a `type`: collector, kafka, stdout or null".to_owned());
            }
            Some(None) => "null",
            Some(Some(k)) => k.as_str(),
        };
        match kind {
            "kafka" if collector_keys => Err(
                "output type kafka takes no `urls`, `mode`, `timeout`, `discover`, `refresh_interval`, \
                 `ca`, `cert`, `key`, `token` or `token_file` (those are for type collector; Kafka's \
                 are `message_timeout` and the ssl_*/sasl_* keys)"
                    .to_owned(),
            ),
            "kafka" => Ok(OutputConfig::Kafka(Box::new(raw.into_kafka()?))),
            "collector" | "stdout" | "null" | "discard" if kafka_keys => Err(format!(
                "output type {kind} takes no `brokers`, `compression`, `topics` or other Kafka keys \
                 (those are for type kafka)"
            )),
            "collector" => {
                let defaults = CollectorOutputConfig::default();
                Ok(OutputConfig::Collector(CollectorOutputConfig {
                    urls: raw.urls.unwrap_or(defaults.urls),
                    mode: raw.mode.unwrap_or(defaults.mode),
                    timeout: raw.timeout.unwrap_or(defaults.timeout),
                    discover: raw.discover.unwrap_or(defaults.discover),
                    refresh_interval: raw.refresh_interval.unwrap_or(defaults.refresh_interval),
                    security: ClientSecurity {
                        ca: raw.ca,
                        cert: raw.cert,
                        key: raw.key,
                        token: raw.token,
                        token_file: raw.token_file,
                    },
                }))
            }
            "stdout" | "null" | "discard" if collector_keys => Err(format!(
                "output type {kind} takes no `urls`, `mode`, `timeout`, `discover`, `refresh_interval` or TLS/token keys (those are for type collector)"
            )),
            "stdout" => Ok(OutputConfig::Stdout),
            "null" | "discard" => Ok(OutputConfig::Null),
            other => Err(format!(
                "unknown output type {other:?}: this agent ships to collector, kafka, stdout or null"
            )),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig::Collector(CollectorOutputConfig::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlMode {
    /// Use the first URL until it fails, then the next.
    #[default]
    Failover,
    /// Spread batches over every URL in turn.
    RoundRobin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorOutputConfig {
    pub urls: Vec<String>,
    #[serde(default)]
    pub mode: UrlMode,
    /// Per request.
    #[serde(default = "default_request_timeout")]
    pub timeout: Duration,
    /// Learn the other collectors from `GET /v1/collectors` of the ones configured (failover
    /// and round robin then include them).
    #[serde(default = "yes")]
    pub discover: bool,
    /// How often the collectors are asked again and host names resolved again (a name that
    /// resolves to several addresses is one collector per address).
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: Duration,
    /// CA, client certificate and token (written flat: `ca`, `cert`, `key`, `token`,
    /// `token_file`).
    #[serde(skip)]
    pub security: ClientSecurity,
}

fn yes() -> bool {
    true
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for CollectorOutputConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:7070".to_owned()],
            mode: UrlMode::Failover,
            timeout: default_request_timeout(),
            discover: true,
            refresh_interval: default_refresh_interval(),
            security: ClientSecurity::default(),
        }
    }
}

/// A config that parses but cannot work. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error(
        "agent: no inputs: add at least one under `agent.inputs` (or paths on the command line)"
    )]
    NoInputs,
    /// What [`AgentConfig::check`] found, every problem (paths relative to `agent:`).
    #[error("{}", render_problems(.0))]
    Problems(Vec<Problem>),
    #[error("agent: {0}")]
    Invalid(String),
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("agent.{p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A multiline rule with its regex compiled.
#[derive(Debug, Clone)]
pub enum MultilineMode {
    Start(Regex),
    Continuation(Regex),
}

#[derive(Debug, Clone)]
pub struct MultilineRule {
    pub mode: MultilineMode,
    pub max_lines: usize,
    pub timeout: std::time::Duration,
}

/// An input with its globs and regexes compiled.
#[derive(Debug, Clone)]
pub struct CompiledInput {
    pub name: String,
    pub include_patterns: Vec<String>,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub read_from: ReadFrom,
    pub topic: String,
    pub fields: Vec<Field>,
    pub multiline: Option<MultilineRule>,
    pub max_line_bytes: usize,
    pub line_flush_timeout: std::time::Duration,
    pub format: Option<crate::container::ContainerFormat>,
    pub kubernetes: bool,
    pub rotate_wait: std::time::Duration,
}

impl CompiledInput {
    /// Whether `path` belongs to this input.
    pub fn matches(&self, path: &Path) -> bool {
        self.include.is_match(path) && !self.exclude.is_match(path)
    }
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// Compiles `patterns` (the input's `key` list), recording a problem for each bad one.
fn glob_set(input: &str, key: &str, patterns: &[String], p: &mut Problems) -> Option<GlobSet> {
    let mut b = GlobSetBuilder::new();
    let mut ok = true;
    for (i, pat) in patterns.iter().enumerate() {
        match glob(pat) {
            Ok(g) => {
                b.add(g);
            }
            Err(e) => {
                ok = false;
                p.add(
                    &format!("{key}[{i}]"),
                    format!("input {input:?}: bad glob {pat:?}: {}", e.kind()),
                );
            }
        }
    }
    if !ok {
        return None;
    }
    match b.build() {
        Ok(set) => Some(set),
        Err(e) => {
            p.add(key, format!("input {input:?}: bad globs: {e}"));
            None
        }
    }
}

/// The parts of `ferry agent`'s command line that configure the agent.
#[derive(Debug, Clone, Default)]
pub struct QuickArgs {
    /// `--collector URL`, repeatable (failover in the order given).
    pub collectors: Vec<String>,
    pub topic: Option<String>,
    /// Files or globs.
    pub paths: Vec<String>,
    /// `--kafka BROKERS`: ship to Kafka at these brokers (other settings of a `type: kafka`
    /// output in the loaded config are kept).
    pub kafka: Option<String>,
    /// `collector`, `kafka`, `stdout` or `null`.
    pub output: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `--stdin`: no file is tailed, so having no inputs is fine.
    pub stdin: bool,
    /// `--ca`, `--cert`/`--key`, `--token`/`--token-file`: over the collector output's keys.
    pub security: ClientSecurity,
}

impl AgentConfig {
    /// A config from command-line flags alone, or flags layered over `base` (a loaded config):
    /// paths add one input named `cli`, the other flags replace what they name.
    pub fn from_quick(
        base: Option<AgentConfig>,
        args: &QuickArgs,
    ) -> Result<Self, AgentConfigError> {
        let mut cfg = base.unwrap_or_default();
        if let Some(dir) = &args.data_dir {
            cfg.data_dir = dir.clone();
        }
        if !args.paths.is_empty() {
            let include = args.paths.iter().map(|p| absolute(p)).collect::<Vec<_>>();
            cfg.inputs.push(InputConfig {
                name: "cli".to_owned(),
                include,
                exclude: Vec::new(),
                read_from: ReadFrom::Beginning,
                topic: args.topic.clone().unwrap_or_else(|| "logs".to_owned()),
                fields: BTreeMap::new(),
                multiline: None,
                max_line_bytes: default_max_line_bytes(),
                line_flush_timeout: default_line_flush_timeout(),
                format: None,
                kubernetes: false,
                rotate_wait: default_rotate_wait(),
            });
        } else if let Some(topic) = &args.topic {
            for input in &mut cfg.inputs {
                input.topic = topic.clone();
            }
        }
        let to_kafka = args.kafka.is_some() || args.output.as_deref() == Some("kafka");
        if to_kafka && !args.collectors.is_empty() {
            return Err(AgentConfigError::Invalid(
                "give either --collector URL or --kafka BROKERS / --output kafka, not both"
                    .to_owned(),
            ));
        }
        if args.kafka.is_some()
            && let Some(other) = args.output.as_deref().filter(|o| *o != "kafka")
        {
            return Err(AgentConfigError::Invalid(format!(
                "--kafka ships to Kafka, but --output says {other:?}"
            )));
        }
        match args.output.as_deref() {
            _ if to_kafka => {
                let mut k = match cfg.output {
                    OutputConfig::Kafka(k) => *k,
                    _ => match &args.kafka {
                        Some(brokers) => KafkaConfig::new(brokers.clone()),
                        None => {
                            return Err(AgentConfigError::Invalid(
                                "--output kafka needs brokers: give --kafka BROKERS, or an \
                                 `output: {type: kafka, brokers: ...}` in --config"
                                    .to_owned(),
                            ));
                        }
                    },
                };
                if let Some(brokers) = &args.kafka {
                    k.brokers = brokers.clone();
                }
                cfg.output = OutputConfig::Kafka(Box::new(k));
            }
            None | Some("collector") => {
                if !args.collectors.is_empty() {
                    let mut c = match cfg.output {
                        OutputConfig::Collector(c) => c,
                        _ => CollectorOutputConfig::default(),
                    };
                    c.urls = args.collectors.clone();
                    cfg.output = OutputConfig::Collector(c);
                } else if args.output.is_some() && !matches!(cfg.output, OutputConfig::Collector(_))
                {
                    cfg.output = OutputConfig::default();
                }
                if let OutputConfig::Collector(c) = &mut cfg.output {
                    c.security = c.security.overlay(&args.security);
                }
            }
            Some("stdout") => cfg.output = OutputConfig::Stdout,
            Some("null") | Some("discard") => cfg.output = OutputConfig::Null,
            Some(other) => {
                return Err(AgentConfigError::Invalid(format!(
                    "unknown output {other:?}: this agent ships to `collector`, `kafka`, `stdout` or `null`"
                )));
            }
        }
        if args.stdin {
            let mut problems = Problems::new();
            cfg.check(&mut problems);
            if !problems.is_empty() {
                return Err(AgentConfigError::Problems(problems.into_vec()));
            }
        } else {
            cfg.validate()?;
        }
        Ok(cfg)
    }

    /// Checks everything a parse cannot and compiles the inputs; the error lists every problem.
    pub fn validate(&self) -> Result<Vec<CompiledInput>, AgentConfigError> {
        if self.inputs.is_empty() && self.syslog.is_empty() {
            return Err(AgentConfigError::NoInputs);
        }
        let mut problems = Problems::new();
        let inputs = self.compile(&mut problems);
        if problems.is_empty() {
            Ok(inputs)
        } else {
            Err(AgentConfigError::Problems(problems.into_vec()))
        }
    }

    /// Records every problem of this section under paths relative to it (`inputs[0].include[1]`),
    /// for `ferry check` and the components to report with file positions. Having no inputs is
    /// not one: `ferry agent` may take its paths from the command line.
    pub fn check(&self, problems: &mut Problems) {
        let _ = self.compile(problems);
    }

    fn compile(&self, p: &mut Problems) -> Vec<CompiledInput> {
        if let Some(id) = &self.id
            && (id.is_empty() || id.len() > ferry_core::batch::MAX_AGENT_ID_LEN)
        {
            p.add("id", "`id` must be 1 to 1024 bytes");
        }
        if self.registry.enabled && self.registry.heartbeat_interval.get().is_zero() {
            p.add_hint(
                "registry.heartbeat_interval",
                "registry.heartbeat_interval must be more than 0s",
                "set `registry.enabled: false` to send no heartbeats",
            );
        }
        if self.batch.max_bytes.get() == 0 || self.batch.max_bytes.get() > (64 << 20) {
            p.add(
                "batch.max_bytes",
                "`batch.max_bytes` must be between 1 byte and 64MiB",
            );
        }
        if self.batch.max_records == 0 {
            p.add(
                "batch.max_records",
                "`batch.max_records` must be at least 1",
            );
        }
        if self.compression.level > 9 {
            p.add_hint(
                "compression.level",
                format!(
                    "`compression.level` is {}, gzip levels are 0 to 9",
                    self.compression.level
                ),
                "1 is fast, 6 is compact",
            );
        }
        if self.buffer_bytes.get() < self.batch.max_bytes.get() {
            p.add(
                "buffer_bytes",
                format!(
                    "`buffer_bytes` ({}) must be at least `batch.max_bytes` ({})",
                    self.buffer_bytes, self.batch.max_bytes
                ),
            );
        }
        if self.read_budget_bytes.get() == 0 {
            p.add(
                "read_budget_bytes",
                "`read_budget_bytes` must be at least 1",
            );
        }
        if self.rescan_interval.get().is_zero() {
            p.add("rescan_interval", "`rescan_interval` must be more than 0");
        }
        if self.max_in_flight == 0 {
            p.add("max_in_flight", "`max_in_flight` must be at least 1");
        }
        if self.max_open_files == Some(0) {
            p.add(
                "max_open_files",
                "`max_open_files` must be at least 1 (or left out for the default)",
            );
        }
        if self.max_in_flight_per_file == 0 {
            p.add(
                "max_in_flight_per_file",
                "`max_in_flight_per_file` must be at least 1",
            );
        }
        if let OutputConfig::Kafka(k) = &self.output
            && let Err(e) = k.validate()
        {
            p.add("output", format!("output: {e}"));
        }
        if let OutputConfig::Collector(c) = &self.output {
            if c.refresh_interval.get().is_zero() {
                p.add(
                    "output.refresh_interval",
                    "`output.refresh_interval` must be more than 0s",
                );
            }
            if c.urls.is_empty() {
                p.add_hint(
                    "output.urls",
                    "`output.urls` is empty",
                    "give at least one collector URL, e.g. http://127.0.0.1:7070",
                );
            }
            for (i, u) in c.urls.iter().enumerate() {
                let at = format!("output.urls[{i}]");
                match reqwest::Url::parse(u) {
                    Err(e) => p.add_hint(
                        &at,
                        format!("collector URL {u:?} does not parse ({e})"),
                        "write e.g. http://127.0.0.1:7070",
                    ),
                    Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                        p.add(&at, format!("collector URL {u:?}: use http:// or https://"))
                    }
                    Ok(_) => {}
                }
            }
        }
        if let OutputConfig::Collector(c) = &self.output {
            p.nested("output", |p| c.security.check(p));
        }
        let mut names = std::collections::HashSet::new();
        let mut compiled = Vec::with_capacity(self.inputs.len());
        for (i, input) in self.inputs.iter().enumerate() {
            if let Some(c) = p.nested(&format!("inputs[{i}]"), |p| input.compile(&mut names, p)) {
                compiled.push(c);
            }
        }
        for (i, input) in self.syslog.iter().enumerate() {
            p.nested(&format!("syslog[{i}]"), |p| input.check(&mut names, p));
        }
        compiled
    }
}

impl InputConfig {
    /// Compiles globs and regexes, recording every problem; `None` if there was one.
    fn compile(
        &self,
        names: &mut std::collections::HashSet<String>,
        p: &mut Problems,
    ) -> Option<CompiledInput> {
        let before = p.len();
        let me = &self.name;
        if self.name.is_empty() {
            p.add("name", "an input has an empty `name`");
        } else if !names.insert(self.name.clone()) {
            p.add("name", format!("input {me:?}: two inputs have this name"));
        }
        if self.include.is_empty() {
            p.add_hint(
                "include",
                format!("input {me:?}: `include` is empty"),
                "give at least one glob, e.g. /var/log/app/*.log",
            );
        }
        for (i, g) in self.include.iter().enumerate() {
            if !Path::new(g).is_absolute() {
                p.add_hint(
                    &format!("include[{i}]"),
                    format!("input {me:?}: include glob {g:?} is relative"),
                    "write an absolute path (the agent may run from any directory)",
                );
            }
        }
        if let Err(e) = ferry_core::topic::validate_name(&self.topic) {
            p.add("topic", format!("input {me:?}: {e}"));
        }
        if self.max_line_bytes.get() == 0 {
            p.add(
                "max_line_bytes",
                format!("input {me:?}: `max_line_bytes` must be at least 1"),
            );
        }
        if self.rotate_wait.get() > MAX_ROTATE_WAIT {
            p.add_hint(
                "rotate_wait",
                format!(
                    "input {me:?}: `rotate_wait` is {}, at most 24h",
                    self.rotate_wait
                ),
                "a copy appears within moments of its truncation; 30s (the default) is plenty",
            );
        }
        let multiline = self.multiline.as_ref().and_then(|m| {
            p.nested("multiline", |p| {
                let mut compile = |which: &'static str, pattern: &str| {
                    Regex::new(pattern)
                        .map_err(|e| {
                            p.add(
                                which,
                                format!(
                                    "input {me:?}: bad multiline {which} regex {pattern:?}: {}",
                                    one_line(&e.to_string())
                                ),
                            )
                        })
                        .ok()
                };
                let mode = match (&m.start_pattern, &m.continuation_pattern) {
                    (Some(s), None) => compile("start_pattern", s).map(MultilineMode::Start),
                    (None, Some(c)) => {
                        compile("continuation_pattern", c).map(MultilineMode::Continuation)
                    }
                    _ => {
                        p.add(
                            "",
                            format!(
                                "input {me:?}: multiline needs exactly one of `start_pattern` or `continuation_pattern`"
                            ),
                        );
                        None
                    }
                };
                if m.max_lines == 0 {
                    p.add(
                        "max_lines",
                        format!("input {me:?}: `multiline.max_lines` must be at least 1"),
                    );
                }
                mode.map(|mode| MultilineRule {
                    mode,
                    max_lines: m.max_lines,
                    timeout: m.timeout.get(),
                })
            })
        });
        if self.kubernetes && self.format.is_none() {
            p.add_hint(
                "kubernetes",
                format!("input {me:?}: `kubernetes: true` needs a container `format`"),
                "add `format: cri` (containerd, CRI-O), `docker` or `auto`",
            );
        }
        if self.format.is_some() && self.multiline.is_some() {
            p.add(
                "multiline",
                format!(
                    "input {me:?}: `multiline` cannot be combined with a container `format` yet (the runtime's partial lines are merged; join records in a processor)"
                ),
            );
        }
        let include = glob_set(me, "include", &self.include, p);
        let exclude = glob_set(me, "exclude", &self.exclude, p);
        if p.len() > before {
            return None;
        }
        Some(CompiledInput {
            name: self.name.clone(),
            include_patterns: self.include.clone(),
            include: include?,
            exclude: exclude?,
            read_from: self.read_from,
            topic: self.topic.clone(),
            fields: self
                .fields
                .iter()
                .map(|(k, v)| Field::new(k.as_str(), v.as_str()))
                .collect(),
            multiline,
            max_line_bytes: self.max_line_bytes.as_usize(),
            line_flush_timeout: self.line_flush_timeout.get(),
            format: self.format,
            kubernetes: self.kubernetes,
            rotate_wait: self.rotate_wait.get(),
        })
    }
}

/// The regex crate's errors draw a multi-line picture; one line is enough next to a position.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .unwrap_or(s)
        .to_owned()
}

fn absolute(p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        return p.to_owned();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(path).to_string_lossy().into_owned(),
        Err(_) => p.to_owned(),
    }
}

/// The host name, for the default agent id.
pub fn host_name() -> String {
    for source in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(source) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_owned();
            }
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "ferry-agent".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ferry_core::config::ConfigError> {
        ferry_core::config::load_str_with_env(text, Path::new("a.yaml"), &|_| None)
    }

    #[test]
    fn full_config_parses_and_validates() {
        let cfg = load(
            r#"
id: web-1
data_dir: /var/lib/ferry
inputs:
  - name: app
    include: ["/var/log/app/*.log"]
    exclude: ["/var/log/app/debug*.log"]
    read_from: end
    topic: app
    fields: {env: prod}
    multiline:
      start_pattern: '^\d{4}-'
      max_lines: 50
      timeout: 2s
    max_line_bytes: 64KiB
batch: {max_bytes: 512KiB, max_records: 1000, linger: 100ms, backlog_bytes: 128KiB}
compression: {codec: none, level: 0}
output:
  type: collector
  urls: ["http://c1:7070", "http://c2:7070"]
  mode: round_robin
  timeout: 5s
buffer_bytes: 8MiB
rescan_interval: 30s
read_budget_bytes: 256KiB
max_open_files: 500
"#,
        )
        .unwrap();
        let inputs = cfg.validate().unwrap();
        assert_eq!(inputs[0].read_from, ReadFrom::End);
        assert!(inputs[0].matches(Path::new("/var/log/app/a.log")));
        assert!(!inputs[0].matches(Path::new("/var/log/app/debug1.log")));
        assert!(!inputs[0].matches(Path::new("/var/log/app/sub/a.log")));
        assert_eq!(inputs[0].max_line_bytes, 64 << 10);
        assert!(matches!(
            &cfg.output,
            OutputConfig::Collector(c) if c.mode == UrlMode::RoundRobin && c.urls.len() == 2
        ));
        assert_eq!(cfg.codec(), Codec::None);
        assert_eq!(cfg.max_open_files, Some(500));
        assert_eq!(cfg.batch.backlog_bytes, ByteSize::kib(128));
        assert_eq!(
            load("id: a\n").unwrap().batch.backlog_bytes,
            ByteSize::kib(64)
        );
    }

    #[test]
    fn null_and_stdout_outputs_parse() {
        for (text, null) in [
            ("output: {type: \"null\"}\n", true),
            ("output:\n  type: null\n", true),
            ("output: {type: discard}\n", true),
            ("output: {type: stdout}\n", false),
        ] {
            let cfg = load(text).unwrap();
            assert_eq!(matches!(cfg.output, OutputConfig::Null), null, "{text}");
        }
    }

    #[test]
    fn unknown_output_type_or_key_is_refused() {
        let err = load("output: {type: kafka}\n").unwrap_err().to_string();
        assert!(err.contains("needs `brokers`"), "{err}");
        let err = load("output: {type: carrier_pigeon}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown output type \"carrier_pigeon\""),
            "{err}"
        );
        assert!(load("output: {type: kafka, brokers: a, urls: [\"http://c\"]}\n").is_err());
        assert!(load("output: {type: kafka, brokers: a, linger: 5}\n").is_err());
        assert!(load("output: {type: collector, brokers: a}\n").is_err());
        assert!(load("output: {type: collector, urls: [\"http://c\"], retries: 3}\n").is_err());
        assert!(load("output: {type: stdout, urls: [\"http://c\"]}\n").is_err());
        assert!(
            load("output: {urls: [\"http://c\"]}\n")
                .unwrap_err()
                .to_string()
                .contains("needs a `type`")
        );
        let cfg = load("output: {type: collector, urls: [\"ftp://c\"]}\ninputs: [{name: a, include: [/x], topic: t}]\n").unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("use http:// or https://")
        );
        // The collector output's TLS and token keys, flat next to `urls`; checked for a cert
        // without its key, and files that cannot be read.
        let cfg = load("output: {type: collector, urls: [\"https://c\"], ca: /nonexistent/ca.pem, cert: /x.pem, token: t}\ninputs: [{name: a, include: [/x], topic: t}]\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("output.ca") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        assert!(
            err.contains("output.cert") && err.contains("needs its private key"),
            "{err}"
        );
        assert!(load("output: {type: stdout, token: t}\n").is_err());
    }

    #[test]
    fn compression_follows_the_output_unless_set() {
        let codec = |yaml: &str| load(yaml).expect("config").codec();
        assert_eq!(codec("output: {type: stdout}\n"), Codec::None);
        assert_eq!(codec("output: {type: null}\n"), Codec::None);
        assert_eq!(codec("output: {type: collector}\n"), Codec::Lz4);
        assert_eq!(codec(""), Codec::Lz4);
        assert_eq!(
            codec("output: {type: kafka, brokers: \"k:9092\"}\n"),
            Codec::Gzip
        );
        assert_eq!(
            codec("output: {type: stdout}\ncompression: {codec: gzip}\n"),
            Codec::Gzip
        );
        assert_eq!(
            codec("output: {type: collector}\ncompression: {codec: lz4}\n"),
            Codec::Lz4
        );
    }

    #[test]
    fn empty_config_takes_defaults_but_needs_inputs() {
        let cfg = load("").unwrap();
        assert_eq!(cfg.batch.max_bytes, ByteSize::mib(1));
        assert!(matches!(cfg.validate(), Err(AgentConfigError::NoInputs)));
    }

    #[test]
    fn unknown_key_is_refused_with_its_place() {
        let err = load("inputs:\n  - name: a\n    include: [/x]\n    topic: t\n    tpoic: u\n")
            .unwrap_err();
        assert_eq!(err.location().map(|l| l.0), Some(5), "{err}");
    }

    #[test]
    fn rotate_wait_defaults_to_30s_and_is_bounded() {
        let cfg = load("inputs:\n  - name: a\n    include: [/x]\n    topic: t\n").unwrap();
        assert_eq!(
            cfg.validate().unwrap()[0].rotate_wait,
            std::time::Duration::from_secs(30)
        );
        let cfg =
            load("inputs:\n  - name: a\n    include: [/x]\n    topic: t\n    rotate_wait: 0s\n")
                .unwrap();
        assert!(cfg.validate().unwrap()[0].rotate_wait.is_zero());
        let cfg =
            load("inputs:\n  - name: a\n    include: [/x]\n    topic: t\n    rotate_wait: 2d\n")
                .unwrap();
        let mut problems = Problems::new();
        cfg.check(&mut problems);
        let v = problems.into_vec();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "inputs[0].rotate_wait");
        assert!(v[0].message.contains("at most 24h"), "{v:?}");
    }

    #[test]
    fn bad_regex_names_input_and_pattern() {
        let cfg = load(
            "inputs:\n  - name: java\n    include: [/x/*.log]\n    topic: t\n    multiline: {start_pattern: '(unclosed'}\n",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("\"java\"") && err.contains("(unclosed"),
            "{err}"
        );
    }

    #[test]
    fn bad_glob_and_relative_glob_are_refused() {
        let mut cfg = load("inputs:\n  - name: a\n    include: ['/x/[a']\n    topic: t\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("bad glob"));
        cfg.inputs[0].include = vec!["x/*.log".into()];
        assert!(cfg.validate().unwrap_err().to_string().contains("relative"));
    }

    #[test]
    fn quick_args_build_a_working_config() {
        let cfg = AgentConfig::from_quick(
            None,
            &QuickArgs {
                collectors: vec!["http://c:7070".into()],
                topic: Some("web".into()),
                paths: vec!["/var/log/*.log".into()],
                output: None,
                data_dir: Some("/tmp/d".into()),
                kafka: None,
                stdin: false,
                security: Default::default(),
            },
        )
        .unwrap();
        assert_eq!(cfg.inputs[0].topic, "web");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/d"));
        assert!(matches!(&cfg.output, OutputConfig::Collector(c) if c.urls == ["http://c:7070"]));
        let null = AgentConfig::from_quick(
            None,
            &QuickArgs {
                paths: vec!["/a".into()],
                output: Some("null".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(null.output, OutputConfig::Null));
        let bad = AgentConfig::from_quick(
            None,
            &QuickArgs {
                paths: vec!["/a".into()],
                output: Some("kafak".into()),
                ..Default::default()
            },
        );
        assert!(bad.unwrap_err().to_string().contains("kafak"));
    }

    #[test]
    fn kafka_output_parses_flat_and_validates() {
        let cfg = load(
            "inputs: [{name: a, include: [/x], topic: web}]\n\
             output:\n  type: kafka\n  brokers: k1:9092,k2:9092\n  compression: zstd\n  \
             message_timeout: 5s\n  topic_prefix: 'ferry.'\n  \
             topics: {web: {kafka_topic: www, key_field: host}}\n  \
             security_protocol: sasl_ssl\n  sasl_mechanism: PLAIN\n  sasl_username: u\n  \
             sasl_password: p\n  options: {linger.ms: '20'}\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let OutputConfig::Kafka(k) = &cfg.output else {
            panic!("{:?}", cfg.output)
        };
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.compression, Compression::Zstd);
        assert_eq!(k.message_timeout.get(), std::time::Duration::from_secs(5));
        assert_eq!(k.kafka_topic("web"), "www");
        assert_eq!(k.kafka_topic("other"), "ferry.other");
        assert_eq!(k.key_field("web"), Some("host"));
        assert_eq!(k.sasl_password.as_deref(), Some("p"));
        assert_eq!(k.options.get("linger.ms").map(String::as_str), Some("20"));
        // Defaults are KafkaConfig's.
        let cfg = load("output: {type: kafka, brokers: k:1}\n").unwrap();
        assert!(matches!(&cfg.output, OutputConfig::Kafka(k) if **k == KafkaConfig::new("k:1")));
        // What KafkaConfig::validate refuses, the agent refuses (already when parsing, so
        // `ferry check` says so too).
        let err = load("output: {type: kafka, brokers: ' '}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokers is empty"), "{err}");
        let mut cfg = load("inputs: [{name: a, include: [/x], topic: t}]\n").unwrap();
        let mut k = KafkaConfig::new("a:1");
        k.message_timeout = Duration::from_millis(0);
        cfg.output = OutputConfig::Kafka(Box::new(k));
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("message_timeout")
        );
        assert!(load("output: {type: kafka, brokers: a, compression: brotli}\n").is_err());
    }

    #[test]
    fn quick_kafka_flags() {
        let paths = vec!["/a".to_owned()];
        let quick = |kafka: Option<&str>, output: Option<&str>, collectors: &[&str]| QuickArgs {
            paths: paths.clone(),
            topic: Some("t".into()),
            kafka: kafka.map(str::to_owned),
            output: output.map(str::to_owned),
            collectors: collectors.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        let cfg = AgentConfig::from_quick(None, &quick(Some("k:9092"), None, &[])).unwrap();
        assert!(matches!(&cfg.output, OutputConfig::Kafka(k) if k.brokers == "k:9092"));
        let cfg =
            AgentConfig::from_quick(None, &quick(Some("k:9092"), Some("kafka"), &[])).unwrap();
        assert!(matches!(&cfg.output, OutputConfig::Kafka(_)));
        // --output kafka takes the brokers (and the rest) from the config; --kafka replaces
        // only the brokers.
        let base = load("output: {type: kafka, brokers: cfg:1, topic_prefix: p.}\n").unwrap();
        let cfg =
            AgentConfig::from_quick(Some(base.clone()), &quick(None, Some("kafka"), &[])).unwrap();
        assert!(matches!(&cfg.output, OutputConfig::Kafka(k) if k.brokers == "cfg:1"));
        let cfg =
            AgentConfig::from_quick(Some(base.clone()), &quick(Some("cli:2"), None, &[])).unwrap();
        assert!(
            matches!(&cfg.output, OutputConfig::Kafka(k) if k.brokers == "cli:2" && k.topic_prefix == "p.")
        );
        // A kafka output in the config stays when no flag names another.
        let cfg = AgentConfig::from_quick(Some(base), &quick(None, None, &[])).unwrap();
        assert!(matches!(&cfg.output, OutputConfig::Kafka(_)));
        let err = AgentConfig::from_quick(None, &quick(None, Some("kafka"), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kafka BROKERS"), "{err}");
        let err = AgentConfig::from_quick(None, &quick(Some("k:1"), Some("stdout"), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stdout"), "{err}");
        let err = AgentConfig::from_quick(None, &quick(Some("k:1"), None, &["http://c:1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = AgentConfigError::to_string(
            &AgentConfig::from_quick(None, &quick(None, Some("kafka"), &["http://c:1"]))
                .unwrap_err(),
        );
        assert!(err.contains("not both"), "{err}");
    }
}
