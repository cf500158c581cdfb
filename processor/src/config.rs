//! The `processor:` section of a ferry config.
//!
//! Everything that can be checked without running is checked while deserializing (expressions,
//! regexes, time formats, durations, cross-field rules), so `ferry check` reports a bad pipeline
//! as `file:line:col: message`. A pipeline's rules that span several of its keys stop the parse
//! at the first one; [`ProcessorCheckView`] reads the pipelines as written and records every
//! such problem at its own key, which is what `ferry check` and the components print.

use crate::filter::Filter;
use crate::time::TimeFormat;
use ferry_core::config::{Duration, Problems};
use serde::{Deserialize, Deserializer};

/// `processor:`: one or more independent pipelines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Each pipeline reads its topics, keeps its own windows and writes its own sinks.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// How often every pipeline makes its sinks durable and stores its checkpoints (also on
    /// hand-over and at shutdown). Shorter: less recomputed after a crash; longer: fewer writes.
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "checkpoint_interval"
    )]
    pub checkpoint_interval: Duration,
    /// The collector every collector-sourced pipeline reads from: URL, TLS and token.
    #[serde(default)]
    pub collector: Option<CollectorConnection>,
}

/// `processor.collector:` — where the collector is and how to reach it (`--collector` and the
/// security flags override these keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConnection {
    /// e.g. `https://collector.internal:7070` (default `http://127.0.0.1:7070`).
    #[serde(default)]
    pub url: Option<String>,
    /// PEM CA file that signs the collector's certificate.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// Bearer token (or `${ENV}`), or a file holding it.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

impl CollectorConnection {
    pub fn security(&self) -> ferry_core::security::ClientSecurity {
        ferry_core::security::ClientSecurity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
        }
    }

    fn check(&self, p: &mut Problems) {
        if let Some(u) = &self.url {
            match reqwest::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => p.add(
                    "url",
                    format!("collector URL {u:?}: use http:// or https://"),
                ),
                Err(e) => p.add_hint(
                    "url",
                    format!("collector URL {u:?} does not parse ({e})"),
                    "write e.g. https://collector:7070",
                ),
            }
        }
        self.security().check(p);
    }
}

fn checkpoint_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Duration::deserialize(d)?;
    if v.get() < std::time::Duration::from_millis(100) {
        return Err(serde::de::Error::custom(
            "checkpoint_interval must be at least 100ms (5s is the default)",
        ));
    }
    Ok(v)
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            pipelines: Vec::new(),
            checkpoint_interval: default_checkpoint_interval(),
            collector: None,
        }
    }
}

/// One pipeline: source → parse → filter → group → window → aggregate → sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPipeline")]
pub struct PipelineConfig {
    pub name: String,
    pub source: SourceConfig,
    pub parse: ParseConfig,
    /// Where the event time comes from; without it (or when the field is missing or unparsable)
    /// the record's own event time, then its ingest time, is used.
    pub event_time: Option<EventTimeConfig>,
    pub on_parse_error: OnParseError,
    pub filter: Option<Filter>,
    pub group_by: Vec<String>,
    pub window: WindowConfig,
    pub aggregates: Vec<AggregateConfig>,
    /// Most distinct keys one window holds; records of further keys are not aggregated and are
    /// counted (`ferry_processor_evicted_total` and the window's `evicted` count).
    pub max_keys: usize,
    pub sinks: Vec<SinkConfig>,
    pub alerts: Vec<AlertConfig>,
    /// Topic for records that arrived after their window closed; `None` only counts them.
    pub late_topic: Option<String>,
}

/// Names a result line uses itself; aggregates may not take them.
pub const RESERVED_NAMES: [&str; 6] = [
    "pipeline",
    "window_start",
    "window_end",
    "key",
    "early",
    "evicted",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    source: SourceConfig,
    #[serde(default)]
    parse: ParseConfig,
    #[serde(default)]
    event_time: Option<EventTimeConfig>,
    #[serde(default)]
    on_parse_error: OnParseErrorKind,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    group_by: Vec<String>,
    window: WindowConfig,
    aggregates: Vec<AggregateConfig>,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    sinks: Option<Vec<SinkConfig>>,
    #[serde(default)]
    alerts: Vec<AlertConfig>,
    #[serde(default)]
    late_topic: Option<String>,
}

fn default_max_keys() -> usize {
    100_000
}

impl RawPipeline {
    /// The rules that span several keys of a pipeline, every problem recorded at the key it is
    /// about (paths relative to the pipeline).
    fn check(&self, pr: &mut Problems) {
        let p = &self.name;
        if self.name.trim().is_empty() {
            pr.add("name", "pipeline name must not be empty");
        }
        if self.aggregates.is_empty() {
            pr.add_hint(
                "aggregates",
                format!("pipeline {p}: `aggregates` is empty"),
                "add at least one, e.g. {name: count, op: count}",
            );
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, a) in self.aggregates.iter().enumerate() {
            let at = format!("aggregates[{i}].name");
            if RESERVED_NAMES.contains(&a.name.as_str()) {
                pr.add_hint(
                    &at,
                    format!(
                        "pipeline {p}: aggregate name {:?} is reserved for the result line",
                        a.name
                    ),
                    "choose another name",
                );
            } else if names.contains(&a.name.as_str()) {
                pr.add(
                    &at,
                    format!("pipeline {p}: two aggregates are named {:?}", a.name),
                );
            }
            names.push(&a.name);
        }
        for (i, g) in self.group_by.iter().enumerate() {
            if g.is_empty() {
                pr.add(
                    &format!("group_by[{i}]"),
                    format!("pipeline {p}: empty field name in group_by"),
                );
            }
        }
        if self.max_keys == 0 {
            pr.add(
                "max_keys",
                format!("pipeline {p}: max_keys must be at least 1"),
            );
        }
        match (self.on_parse_error, &self.dead_letter_topic) {
            (OnParseErrorKind::Skip, Some(_)) => pr.add_hint(
                "dead_letter_topic",
                format!("pipeline {p}: dead_letter_topic is set but on_parse_error is skip"),
                "set on_parse_error: dead_letter",
            ),
            (OnParseErrorKind::DeadLetter, t) if t.as_deref().is_none_or(str::is_empty) => pr.add(
                "on_parse_error",
                format!("pipeline {p}: on_parse_error: dead_letter needs dead_letter_topic"),
            ),
            _ => {}
        }
        if self.alerts.len() > 64 {
            pr.add(
                "alerts",
                format!("pipeline {p}: at most 64 alerts per pipeline"),
            );
        }
        for (i, alert) in self.alerts.iter().enumerate() {
            for f in alert.when.fields() {
                let known = names.contains(&f.as_str())
                    || self.group_by.iter().any(|g| g == f)
                    || f.strip_prefix("key.")
                        .is_some_and(|k| self.group_by.iter().any(|g| g == k));
                if !known {
                    pr.add(
                        &format!("alerts[{i}].when"),
                        format!(
                            "pipeline {p}: alert {:?} reads {f:?}, which is neither an aggregate ({}) nor a group_by field",
                            alert.name,
                            names.join(", ")
                        ),
                    );
                }
            }
        }
        if self.source.topics.is_empty() {
            pr.add(
                "source.topics",
                format!("pipeline {p}: source.topics is empty"),
            );
        }
        let sinks = self
            .sinks
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| (format!("sinks[{i}]"), s));
        let alert_sinks = self
            .alerts
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("alerts[{i}].sink"), &a.sink));
        for (at, s) in sinks.chain(alert_sinks) {
            if let SinkConfig::Kafka(k) = s {
                if let Err(e) = check_kafka_topic_name(&k.topic, "kafka sink topic") {
                    pr.add(&at, format!("pipeline {p}: {e}"));
                }
                match &k.cluster {
                    Some(c) => {
                        if let Err(e) = c.validate() {
                            pr.add(&at, format!("pipeline {p}: kafka sink cluster: {e}"));
                        }
                    }
                    None if self.source.kafka.is_none() => pr.add(
                        &at,
                        format!(
                            "pipeline {p}: the kafka sink to {:?} needs `cluster: {{brokers: ...}}` (the source is the collector, so there is no source.kafka to share)",
                            k.topic
                        ),
                    ),
                    None => {}
                }
            }
        }
    }
}

impl TryFrom<RawPipeline> for PipelineConfig {
    type Error = String;
    /// Parsing stops at the first problem ([`ProcessorCheckView`] lists them all).
    fn try_from(r: RawPipeline) -> Result<Self, String> {
        let mut problems = Problems::new();
        r.check(&mut problems);
        if let Some(first) = problems.into_vec().into_iter().next() {
            return Err(first.message);
        }
        let on_parse_error = match (r.on_parse_error, r.dead_letter_topic) {
            (OnParseErrorKind::DeadLetter, Some(t)) => OnParseError::DeadLetter(t),
            _ => OnParseError::Skip,
        };
        Ok(PipelineConfig {
            source: r.source,
            parse: r.parse,
            event_time: r.event_time,
            on_parse_error,
            filter: r.filter,
            group_by: r.group_by,
            window: r.window,
            aggregates: r.aggregates,
            max_keys: r.max_keys,
            sinks: r.sinks.unwrap_or_else(|| vec![SinkConfig::Stdout]),
            alerts: r.alerts,
            late_topic: r.late_topic,
            name: r.name,
        })
    }
}

/// The `processor:` section with each pipeline as written, before its cross-key rules: what
/// `ferry check` reads, when the section does not parse, to list every pipeline's problems
/// (each at its key) instead of the first one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorCheckView {
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
    #[serde(default)]
    #[allow(dead_code)]
    checkpoint_interval: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    collector: Option<serde::de::IgnoredAny>,
}

impl ProcessorCheckView {
    /// Every problem of every pipeline, paths relative to `processor:`.
    pub fn check(&self, pr: &mut Problems) {
        for (i, r) in self.pipelines.iter().enumerate() {
            pr.nested(&format!("pipelines[{i}]"), |pr| r.check(pr));
        }
    }
}

impl ProcessorConfig {
    /// The rules between pipelines (each pipeline's own were checked as it parsed).
    pub fn check(&self, pr: &mut Problems) {
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            if !seen.insert(p.name.as_str()) {
                pr.add_hint(
                    &format!("pipelines[{i}].name"),
                    format!("two pipelines are named {:?}", p.name),
                    "each pipeline needs its own name (it is the default consumer group)",
                );
            }
        }
        if let Some(c) = &self.collector {
            pr.nested("collector", |p| c.check(p));
        }
    }
}

/// Where a pipeline reads from. The driver that fetches from the collector (or Kafka) owns the
/// connection; this says what to read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawSource")]
pub struct SourceConfig {
    /// ferry topics; on Kafka, mapped to Kafka topics by the `kafka:` section's `topic_prefix`
    /// and `topics.<t>.kafka_topic`, as the collector and agent map them.
    pub topics: Vec<String>,
    /// Consumer group; processors sharing one split the partitions. Defaults to the pipeline name.
    pub group: Option<String>,
    pub start: StartAt,
    /// Read from Kafka (these brokers and settings) instead of the collector.
    pub kafka: Option<ferry_kafka::KafkaConfig>,
    /// Kafka topic of this pipeline's checkpoints (a Kafka source only); default
    /// [`SourceConfig::checkpoint_topic`].
    pub checkpoint_topic: Option<String>,
    /// The topics are partitioned by the group-by fields (e.g. the collector topic's
    /// `key_field` is the one group-by field), so each key lives on one partition: a member
    /// holding some partitions emits their results. Otherwise (the default) a member emits only
    /// while it holds every partition of the topics, so that no partial result goes out as final.
    pub partitioned_by_key: bool,
    /// With the topics not partitioned by key: each input partition's partials go through the
    /// repartition topic (a collector topic, or a Kafka topic on a Kafka source), keyed by the
    /// group key, to the member owning the key's partition, so any number of members give one
    /// result per window and key (`repartition.rs`, `kafka_repartition.rs`). `false`: partials are merged in-process, and a member emits only
    /// while it holds every partition.
    pub repartition: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    topics: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    start: StartAt,
    #[serde(default)]
    kafka: Option<ferry_kafka::KafkaConfig>,
    #[serde(default)]
    checkpoint_topic: Option<String>,
    #[serde(default)]
    partitioned_by_key: bool,
    #[serde(default = "yes")]
    repartition: bool,
}

fn yes() -> bool {
    true
}

impl TryFrom<RawSource> for SourceConfig {
    type Error = String;
    fn try_from(r: RawSource) -> Result<Self, String> {
        if let Some(k) = &r.kafka {
            k.validate().map_err(|e| format!("source.{e}"))?;
        }
        match (&r.kafka, &r.checkpoint_topic) {
            (None, Some(_)) => {
                return Err(
                    "source.checkpoint_topic is for a Kafka source; add source.kafka: {brokers: ...} or remove it"
                        .into(),
                );
            }
            (Some(_), Some(t)) => check_kafka_topic_name(t, "source.checkpoint_topic")?,
            _ => {}
        }
        if r.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err("source.group is empty; remove it to use the pipeline name".into());
        }
        Ok(SourceConfig {
            topics: r.topics,
            group: r.group,
            start: r.start,
            kafka: r.kafka,
            checkpoint_topic: r.checkpoint_topic,
            partitioned_by_key: r.partitioned_by_key,
            repartition: r.repartition,
        })
    }
}

impl SourceConfig {
    /// The consumer group of a pipeline named `pipeline` with this source.
    pub fn group_or(&self, pipeline: &str) -> String {
        self.group.clone().unwrap_or_else(|| pipeline.to_owned())
    }

    /// The Kafka topic of the checkpoints of `group`: `checkpoint_topic` if set, else
    /// `<topic_prefix>ferry-checkpoints.<group>` with characters Kafka does not allow in topic
    /// names replaced by `_`. `None` for a collector source.
    pub fn checkpoint_topic(&self, group: &str) -> Option<String> {
        let k = self.kafka.as_ref()?;
        if let Some(t) = &self.checkpoint_topic {
            return Some(t.clone());
        }
        let safe: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut t = format!("{}ferry-checkpoints.{safe}", k.topic_prefix);
        t.truncate(249);
        Some(t)
    }
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_kafka_topic_name(t: &str, what: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {t:?} is not a valid Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
        ))
    }
}

/// Where a group with no committed offset (or `earliest`/`latest`/a time: always) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The group's committed offsets (the processor's own checkpoint wins over them), else earliest.
    #[default]
    Committed,
    Earliest,
    Latest,
    /// The first record at or after this time (Unix ms), from an RFC 3339 timestamp.
    Timestamp(i64),
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "committed" => StartAt::Committed,
            "earliest" => StartAt::Earliest,
            "latest" => StartAt::Latest,
            t => StartAt::Timestamp(crate::time::parse_rfc3339(t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid start {t:?}; expected committed, earliest, latest or an RFC 3339 time such as 2026-01-31T00:00:00Z"
                ))
            })?),
        })
    }
}

/// How a record's line becomes fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseConfig {
    /// A JSON object; nested objects are reached with dotted names (`http.status`).
    #[default]
    Json,
    /// `key=value key2="quoted value"`.
    Logfmt,
    /// A regex whose named captures become fields.
    Regex(RegexPattern),
    /// nginx's default `combined` log format.
    Nginx,
    /// Apache's combined log format (the same fields as nginx's).
    Apache,
    /// RFC 3164 or RFC 5424 syslog, detected per line.
    Syslog,
}

/// A regex validated at load time, with at least one named capture.
#[derive(Debug, Clone)]
pub struct RegexPattern(pub regex::Regex);

impl PartialEq for RegexPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for RegexPattern {}

impl<'de> Deserialize<'de> for RegexPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let re = regex::Regex::new(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid regex {s:?}: {}",
                e.to_string().lines().last().unwrap_or("")
            ))
        })?;
        if re.capture_names().flatten().next().is_none() {
            return Err(serde::de::Error::custom(format!(
                "regex {s:?} has no named capture; name fields with (?P<name>...)"
            )));
        }
        Ok(RegexPattern(re))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    pub field: String,
    #[serde(default)]
    pub format: TimeFormat,
}

/// What to do with a line the parser rejects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnParseError {
    /// Count it (`ferry_processor_parse_errors_total`) and go on.
    #[default]
    Skip,
    /// Count it and send the line to this topic.
    DeadLetter(String),
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnParseErrorKind {
    #[default]
    Skip,
    DeadLetter,
}

/// `window:`: exactly one of `tumbling` or `hopping`, and the watermark settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawWindow")]
pub struct WindowConfig {
    /// Window length in ms.
    pub size_ms: i64,
    /// Distance between window starts in ms (= `size_ms` for tumbling windows).
    pub advance_ms: i64,
    /// Out-of-orderness: the watermark trails the highest event time by this much.
    pub allowed_lateness_ms: i64,
    /// A window stays open for late records this long after the watermark passes its end.
    pub grace_ms: i64,
    /// A partition with no record for this long (processing time) stops holding the watermark.
    pub idle_timeout_ms: i64,
    pub emit: Emit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    tumbling: Option<Duration>,
    #[serde(default)]
    hopping: Option<Hopping>,
    #[serde(default = "default_lateness")]
    allowed_lateness: Duration,
    #[serde(default)]
    grace: Duration,
    #[serde(default = "default_idle")]
    idle_timeout: Duration,
    #[serde(default)]
    emit: Emit,
}

fn default_lateness() -> Duration {
    Duration::from_secs(2)
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hopping {
    size: Duration,
    advance: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX / 4)
}

impl TryFrom<RawWindow> for WindowConfig {
    type Error = String;
    fn try_from(r: RawWindow) -> Result<Self, String> {
        let (size_ms, advance_ms) = match (r.tumbling, r.hopping) {
            (Some(t), None) => (ms(t), ms(t)),
            (None, Some(h)) => (ms(h.size), ms(h.advance)),
            (Some(_), Some(_)) => {
                return Err("window: set either tumbling or hopping, not both".into());
            }
            (None, None) => {
                return Err(
                    "window: set tumbling (e.g. `tumbling: 10s`) or hopping ({size, advance})"
                        .into(),
                );
            }
        };
        if size_ms < 1 || advance_ms < 1 {
            return Err("window: size and advance must be at least 1ms".into());
        }
        if advance_ms > size_ms {
            return Err(format!(
                "window: hopping advance ({advance_ms}ms) is longer than size ({size_ms}ms), which would skip records"
            ));
        }
        if size_ms / advance_ms > 1000 {
            return Err("window: a record would fall into more than 1000 hopping windows".into());
        }
        Ok(WindowConfig {
            size_ms,
            advance_ms,
            allowed_lateness_ms: ms(r.allowed_lateness),
            grace_ms: ms(r.grace),
            idle_timeout_ms: ms(r.idle_timeout).max(1),
            emit: r.emit,
        })
    }
}

/// When window results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// Once, when the watermark passes the window's end plus grace.
    #[default]
    Final,
    /// Also on every tick while the window is open, for keys that changed, marked `"early": true`.
    Early,
}

/// One aggregate: a result field named `name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawAggregate")]
pub struct AggregateConfig {
    pub name: String,
    pub op: AggOp,
    /// The field it reads; for `count`, optional (then every record counts, else records having it).
    pub field: Option<String>,
}

/// An aggregate operation with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggOp {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    /// Quantile `q` in [0, 1], from a DDSketch with 1% relative error.
    Percentile(f64),
    /// Distinct values, from a HyperLogLog (precision 14: ~0.8% standard error).
    Distinct,
    /// The `k` most frequent values with their counts (Space-Saving).
    TopK(usize),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    name: String,
    op: OpName,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    q: Option<f64>,
    #[serde(default)]
    k: Option<usize>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OpName {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Percentile,
    Distinct,
    Topk,
}

impl TryFrom<RawAggregate> for AggregateConfig {
    type Error = String;
    fn try_from(r: RawAggregate) -> Result<Self, String> {
        let n = &r.name;
        if n.is_empty() {
            return Err("aggregate name must not be empty".into());
        }
        if r.op != OpName::Count && r.field.is_none() {
            return Err(format!("aggregate {n:?}: this op needs `field`"));
        }
        if r.q.is_some() && r.op != OpName::Percentile {
            return Err(format!("aggregate {n:?}: `q` is only for op: percentile"));
        }
        if r.k.is_some() && r.op != OpName::Topk {
            return Err(format!("aggregate {n:?}: `k` is only for op: topk"));
        }
        let op = match r.op {
            OpName::Count => AggOp::Count,
            OpName::Sum => AggOp::Sum,
            OpName::Min => AggOp::Min,
            OpName::Max => AggOp::Max,
            OpName::Avg => AggOp::Avg,
            OpName::Distinct => AggOp::Distinct,
            OpName::Percentile => match r.q {
                Some(q) if (0.0..=1.0).contains(&q) => AggOp::Percentile(q),
                Some(q) => {
                    return Err(format!(
                        "aggregate {n:?}: q = {q} is outside [0, 1]; write 0.99 for p99"
                    ));
                }
                None => return Err(format!("aggregate {n:?}: percentile needs q, e.g. q: 0.99")),
            },
            OpName::Topk => match r.k {
                Some(k) if (1..=1000).contains(&k) => AggOp::TopK(k),
                _ => return Err(format!("aggregate {n:?}: topk needs k between 1 and 1000")),
            },
        };
        Ok(AggregateConfig {
            name: r.name,
            op,
            field: r.field,
        })
    }
}

/// Where results (or alerts) go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkConfig {
    /// One JSON object per line on standard output.
    Stdout,
    /// Appended as JSON lines; fsynced at every checkpoint.
    File(FileSinkConfig),
    /// Produced to a collector topic (needs the collector client; see `sink::TopicProducer`).
    Topic(TopicSinkConfig),
    /// POSTed as a JSON array per flush, retried with capped, jittered backoff.
    Webhook(WebhookSinkConfig),
    /// Produced to a Kafka topic (acks=all, idempotent), each result keyed by its `key` object.
    Kafka(Box<KafkaSinkConfig>),
}

/// `kafka: {topic, cluster}`: results into a Kafka topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The Kafka topic, exactly (no `topic_prefix` is applied).
    pub topic: String,
    /// The cluster to produce to; default: the pipeline's `source.kafka`.
    #[serde(default)]
    pub cluster: Option<ferry_kafka::KafkaConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSinkConfig {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Duration,
    /// Attempts after the first before the flush fails.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// Cap of the exponential backoff between attempts.
    #[serde(default = "default_webhook_backoff")]
    pub max_backoff: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_webhook_retries() -> u32 {
    5
}
fn default_webhook_backoff() -> Duration {
    Duration::from_secs(10)
}

/// A rule evaluated on every final window result; fires at most once per window and key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub name: String,
    /// An expression over the result: aggregate names and group-by fields (also as `key.NAME`).
    pub when: Filter,
    #[serde(default = "default_alert_sink")]
    pub sink: SinkConfig,
}

fn default_alert_sink() -> SinkConfig {
    SinkConfig::Stdout
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::{ConfigError, load_str};
    use std::path::Path;

    fn load(text: &str) -> Result<ProcessorConfig, ConfigError> {
        load_str(text, Path::new("p.yaml"))
    }

    const GOOD: &str = r#"
pipelines:
  - name: errors
    source: {topics: [app], group: g1, start: "2026-01-01T00:00:00Z"}
    parse: {regex: '(?P<level>\w+) (?P<msg>.*)'}
    event_time: {field: ts, format: "%Y-%m-%d %H:%M:%S"}
    on_parse_error: dead_letter
    dead_letter_topic: bad
    filter: 'level == "error" or msg =~ "fail"'
    group_by: [level]
    window:
      hopping: {size: 1m, advance: 10s}
      allowed_lateness: 5s
      grace: 1s
      idle_timeout: 10s
      emit: early
    aggregates:
      - {name: count, op: count}
      - {name: p99, op: percentile, field: latency, q: 0.99}
      - {name: users, op: distinct, field: user}
      - {name: top, op: topk, field: path, k: 3}
    max_keys: 10
    sinks:
      - stdout
      - file: {path: /tmp/x.jsonl}
      - webhook: {url: "http://localhost:1/hook"}
      - topic: {name: results}
    alerts:
      - {name: many, when: "count > 100 and key.level == \"error\"", sink: stdout}
    late_topic: late
"#;

    #[test]
    fn full_config_loads() {
        let c = load(GOOD).unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.source.start, StartAt::Timestamp(1_767_225_600_000));
        assert!(matches!(p.parse, ParseConfig::Regex(_)));
        assert_eq!(p.on_parse_error, OnParseError::DeadLetter("bad".into()));
        assert_eq!(p.window.size_ms, 60_000);
        assert_eq!(p.window.advance_ms, 10_000);
        assert_eq!(p.window.emit, Emit::Early);
        assert_eq!(p.aggregates[1].op, AggOp::Percentile(0.99));
        assert_eq!(p.aggregates[3].op, AggOp::TopK(3));
        assert_eq!(p.sinks.len(), 4);
        assert_eq!(p.max_keys, 10);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(
            "pipelines:\n  - name: a\n    source: {topics: [app]}\n    window: {tumbling: 10s}\n    aggregates: [{name: count, op: count}]\n",
        )
        .unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.parse, ParseConfig::Json);
        assert_eq!(p.sinks, vec![SinkConfig::Stdout]);
        assert_eq!(p.window.allowed_lateness_ms, 2000);
        assert_eq!(p.source.start, StartAt::Committed);
    }

    fn err_at(text: &str) -> (u64, u64, String) {
        let e = load(text).expect_err(text);
        let (l, c) = e.location().unwrap_or((0, 0));
        (l, c, e.to_string())
    }

    #[test]
    fn bad_filter_names_file_line_and_column() {
        let text = GOOD.replace(
            r#"filter: 'level == "error" or msg =~ "fail"'"#,
            r#"filter: 'level = "error"'"#,
        );
        let (l, c, msg) = err_at(&text);
        assert_eq!((l, c), (9, 13), "{msg}");
        assert!(msg.starts_with("p.yaml:9:13: "), "{msg}");
        assert!(msg.contains("column 7 of the expression"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_place() {
        let cases: Vec<(String, u64, &str)> = vec![
            (
                GOOD.replace(r"(?P<level>\w+)", r"(?P<level>\w+"),
                5,
                "invalid regex",
            ),
            (GOOD.replace("%Y-%m-%d", "%Y-%Q"), 6, "strftime"),
            (
                GOOD.replace("advance: 10s", "advance: often"),
                12,
                "invalid duration",
            ),
            (
                GOOD.replace("emit: early", "emit: sometimes"),
                16,
                "sometimes",
            ),
            (GOOD.replace("q: 0.99", "q: 99"), 19, "outside [0, 1]"),
            (GOOD.replace("max_keys: 10", "max_key: 10"), 22, "max_key"),
            (GOOD.replace("group: g1", "grup: g1"), 4, "grup"),
            (GOOD.replace("- stdout\n", "- stdot\n"), 24, "stdot"),
            (
                GOOD.replace("start: \"2026-01-01T00:00:00Z\"", "start: yesterday"),
                4,
                "invalid start",
            ),
            (
                GOOD.replace("count > 100", "cuont > 100"),
                3,
                "neither an aggregate",
            ),
        ];
        for (text, line, needle) in cases {
            let (l, _c, msg) = err_at(&text);
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert_eq!(l, line, "{needle}: {msg}");
        }
    }

    const KAFKA: &str = r#"
pipelines:
  - name: levels
    source:
      topics: [app]
      group: "team a/levels"
      kafka:
        brokers: "k1:9092,k2:9092"
        topic_prefix: "ferry."
        security_protocol: ssl
        ssl_ca_location: /etc/ca.pem
        options: {session.timeout.ms: "10000"}
    window: {tumbling: 10s}
    aggregates: [{name: count, op: count}]
    sinks:
      - kafka: {topic: level-counts}
      - kafka: {topic: elsewhere, cluster: {brokers: "other:9092"}}
"#;

    #[test]
    fn kafka_source_and_sinks_load() {
        let c = load(KAFKA).unwrap();
        assert_eq!(
            c.checkpoint_interval.get(),
            std::time::Duration::from_secs(5)
        );
        let p = &c.pipelines[0];
        let k = p.source.kafka.as_ref().unwrap();
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.security_protocol.as_deref(), Some("ssl"));
        assert_eq!(k.kafka_topic("app"), "ferry.app");
        let group = p.source.group_or(&p.name);
        // Characters Kafka refuses in topic names become `_`; the prefix applies.
        assert_eq!(
            p.source.checkpoint_topic(&group).as_deref(),
            Some("ferry.ferry-checkpoints.team_a_levels")
        );
        let SinkConfig::Kafka(s) = &p.sinks[1] else {
            panic!("{:?}", p.sinks[1]);
        };
        assert_eq!(s.topic, "elsewhere");
        assert_eq!(s.cluster.as_ref().unwrap().brokers, "other:9092");
        let explicit = KAFKA.replace(
            "      kafka:\n",
            "      checkpoint_topic: my-checkpoints\n      kafka:\n",
        );
        let c = load(&explicit).unwrap();
        assert_eq!(
            c.pipelines[0].source.checkpoint_topic("x").as_deref(),
            Some("my-checkpoints")
        );
        // A collector source has no checkpoint topic.
        let c = load(GOOD).unwrap();
        assert_eq!(c.pipelines[0].source.checkpoint_topic("g1"), None);
    }

    #[test]
    fn kafka_mistakes_name_their_place() {
        let cases: Vec<(String, &str)> = vec![
            (KAFKA.replace("topic_prefix", "topic_prefx"), "topic_prefx"),
            (KAFKA.replace("k1:9092,k2:9092", ""), "brokers is empty"),
            (
                KAFKA.replace(
                    "      kafka:\n",
                    "      checkpoint_topic: \"a b\"\n      kafka:\n",
                ),
                "not a valid Kafka topic name",
            ),
            (
                KAFKA.replace("{topic: level-counts}", "{topic: \"\"}"),
                "not a valid Kafka topic name",
            ),
            (
                KAFKA.replace("cluster: {brokers: \"other:9092\"}", "cluster: {broker: x}"),
                "broker",
            ),
            (
                GOOD.replace(
                    "      - topic: {name: results}",
                    "      - kafka: {topic: results}",
                ),
                "needs `cluster: {brokers: ...}`",
            ),
            (
                GOOD.replace("group: g1,", "group: g1, checkpoint_topic: c,"),
                "checkpoint_topic is for a Kafka source",
            ),
            (
                format!("checkpoint_interval: 10ms\n{KAFKA}"),
                "at least 100ms",
            ),
        ];
        for (text, needle) in cases {
            let (l, c, msg) = err_at(&text);
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert!(l > 0 && c > 0, "{needle}: no position in {msg}");
            assert!(msg.starts_with(&format!("p.yaml:{l}:{c}: ")), "{msg}");
        }
    }

    #[test]
    fn cross_field_rules() {
        for (from, to, needle) in [
            (
                "    dead_letter_topic: bad\n",
                "",
                "needs dead_letter_topic",
            ),
            (
                "hopping: {size: 1m, advance: 10s}",
                "hopping: {size: 1s, advance: 10s}",
                "skip",
            ),
            (
                "      hopping: {size: 1m, advance: 10s}\n",
                "",
                "set tumbling",
            ),
            (
                "{name: users, op: distinct, field: user}",
                "{name: users, op: distinct}",
                "needs `field`",
            ),
            (
                "{name: users, op: distinct, field: user}",
                "{name: count, op: sum, field: x}",
                "two aggregates",
            ),
            (
                "{name: users, op: distinct, field: user}",
                "{name: key, op: sum, field: x}",
                "reserved",
            ),
            ("k: 3", "k: 0", "topk needs k"),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let (l, c, msg) = err_at(&text);
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert!(l > 0 && c > 0, "{msg}");
        }
    }
}
