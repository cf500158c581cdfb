//! Where emissions go: stdout, an appended file, a webhook, a collector topic, or a Kafka topic.
//!
//! [`Outputs`] routes one pipeline's [`Emission`]s: results to its `sinks`, alerts to each alert's
//! `sink`, late and dead-letter records to their topics. The driver calls [`Outputs::write`] with
//! what `process`/`advance_time` produced, then [`Outputs::checkpoint`] (which fsyncs the files)
//! *before* it stores the pipeline snapshot: so a result is durable before the state that says it
//! was emitted. A crash between the two replays some results; each carries
//! (pipeline, key, window_start) so a sink can drop the duplicates.
//!
//! The `topic` sink (and late/dead-letter topics) produce through a [`TopicProducer`]: the
//! collector client for a collector source, Kafka for a Kafka source. Without a producer,
//! [`Outputs::new`] refuses a pipeline that needs one, naming the key.
//!
//! The `kafka` sink produces results with [`KafkaSink`] (acks=all, idempotent): a write returns
//! only once Kafka acknowledged every result, so its results are durable before any checkpoint
//! that follows. Each result is keyed by its `key` object (as JSON), so one key's results stay
//! in order in one partition.

use crate::config::{PipelineConfig, SinkConfig, WebhookSinkConfig};
use crate::pipeline::Emission;
use bytes::Bytes;
use ferry_core::record::{Field, Record};
use ferry_kafka::{KafkaConfig, KafkaSink};
use rand::Rng;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A sink that failed; the driver must not checkpoint past it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("file sink {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("webhook {url}: {message} (after {attempts} attempts)")]
    Webhook {
        url: String,
        attempts: u32,
        message: String,
    },
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error(
        "pipeline {pipeline}: {what} needs the collector client to produce to topic {topic:?}, and none was given"
    )]
    NoProducer {
        pipeline: String,
        what: &'static str,
        topic: String,
    },
    #[error("webhook {url}: only http:// URLs are supported by this build (no TLS)")]
    Https { url: String },
    #[error(
        "pipeline {pipeline}: the kafka sink to {topic:?} needs `cluster: {{brokers: ...}}` (the source is not Kafka)"
    )]
    NoKafkaCluster { pipeline: String, topic: String },
    #[error("kafka sink {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: Box<ferry_kafka::KafkaError>,
    },
}

impl SinkError {
    /// A sink that may take the same write later (a broker or collector down, busy or
    /// restarting): the driver retries with backoff instead of stopping.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Topic { .. } => true,
            SinkError::Kafka { source, .. } => {
                !matches!(**source, ferry_kafka::KafkaError::Config(_))
            }
            _ => false,
        }
    }
}

/// Produces lines to a collector (or Kafka) topic. Implemented by the collector client, which
/// returns only once the records are acknowledged (durable).
pub trait TopicProducer: Send + Sync {
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        lines: Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// One configured destination of JSON lines.
pub enum Sink {
    Stdout,
    File(FileSink),
    Webhook(WebhookSink),
    Topic {
        topic: String,
        producer: Arc<dyn TopicProducer>,
    },
    Kafka {
        topic: String,
        sink: Arc<KafkaSink>,
    },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Stdout => f.write_str("Stdout"),
            Sink::File(s) => write!(f, "File({})", s.path.display()),
            Sink::Webhook(w) => write!(f, "Webhook({})", w.cfg.url),
            Sink::Topic { topic, .. } => write!(f, "Topic({topic})"),
            Sink::Kafka { topic, .. } => write!(f, "Kafka({topic})"),
        }
    }
}

impl Sink {
    /// Opens the sink `cfg` of `pipeline`. `default_cluster` is the cluster a `kafka` sink
    /// without its own `cluster` produces to (the pipeline's `source.kafka`).
    pub async fn open(
        cfg: &SinkConfig,
        pipeline: &str,
        producer: Option<&Arc<dyn TopicProducer>>,
        default_cluster: Option<&KafkaConfig>,
    ) -> Result<Sink, SinkError> {
        Ok(match cfg {
            SinkConfig::Stdout => Sink::Stdout,
            SinkConfig::File(f) => Sink::File(FileSink::open(f.path.clone()).await?),
            SinkConfig::Webhook(w) => Sink::Webhook(WebhookSink::new(w.clone())?),
            SinkConfig::Topic(t) => Sink::Topic {
                topic: t.name.clone(),
                producer: producer.cloned().ok_or_else(|| SinkError::NoProducer {
                    pipeline: pipeline.to_owned(),
                    what: "a `topic` sink",
                    topic: t.name.clone(),
                })?,
            },
            SinkConfig::Kafka(k) => {
                let err = |source| SinkError::Kafka {
                    topic: k.topic.clone(),
                    source: Box::new(source),
                };
                let cluster = k.cluster.as_ref().or(default_cluster).ok_or_else(|| {
                    SinkError::NoKafkaCluster {
                        pipeline: pipeline.to_owned(),
                        topic: k.topic.clone(),
                    }
                })?;
                Sink::Kafka {
                    topic: k.topic.clone(),
                    sink: Arc::new(KafkaSink::new(cluster).map_err(err)?),
                }
            }
        })
    }

    /// Writes result lines, each with its key (`None` for lines that have none); only the
    /// `kafka` sink uses the keys.
    pub async fn write_keyed(
        &mut self,
        lines: &[String],
        keys: &[Option<String>],
    ) -> Result<(), SinkError> {
        match self {
            Sink::Kafka { topic, sink } => write_kafka(topic, sink, lines, keys).await,
            _ => self.write(lines).await,
        }
    }

    /// Writes JSON lines (without newlines).
    pub async fn write(&mut self, lines: &[String]) -> Result<(), SinkError> {
        if lines.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(joined(lines).as_bytes())
                    .await
                    .map_err(SinkError::Stdout)?;
                out.flush().await.map_err(SinkError::Stdout)
            }
            Sink::File(f) => f.write(lines).await,
            Sink::Webhook(w) => w.post(lines).await,
            Sink::Topic { topic, producer } => producer
                .produce(
                    topic,
                    lines.iter().map(|l| Bytes::from(l.clone())).collect(),
                )
                .await
                .map_err(|message| SinkError::Topic {
                    topic: topic.clone(),
                    message,
                }),
            Sink::Kafka { topic, sink } => write_kafka(topic, sink, lines, &[]).await,
        }
    }

    /// Makes everything written so far durable (files: fsync).
    pub async fn checkpoint(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::File(f) => f.sync().await,
            _ => Ok(()),
        }
    }
}

/// Produces result lines to `topic`, keyed by `keys` (missing keys: no key); returns once Kafka
/// acknowledged them all.
async fn write_kafka(
    topic: &str,
    sink: &KafkaSink,
    lines: &[String],
    keys: &[Option<String>],
) -> Result<(), SinkError> {
    if lines.is_empty() {
        return Ok(());
    }
    let records: Vec<Record> = lines
        .iter()
        .zip(keys.iter().chain(std::iter::repeat(&None)))
        .map(|(l, k)| {
            let mut r = Record::from_line(l.clone());
            if let Some(k) = k {
                r.fields.push(Field::new(RESULT_KEY_FIELD, k.as_str()));
            }
            r
        })
        .collect();
    sink.send_records(
        topic,
        &records,
        Some(RESULT_KEY_FIELD),
        ferry_core::now_ms(),
    )
    .await
    .map(|_| ())
    .map_err(|source| SinkError::Kafka {
        topic: topic.to_owned(),
        source: Box::new(source),
    })
}

fn joined(lines: &[String]) -> String {
    let mut s = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// The record field (and so the message key and header `ferry.f.key`) that carries a result's
/// `key` object, as JSON, in the `kafka` sink.
pub const RESULT_KEY_FIELD: &str = "key";

/// Where a results file stood when a checkpoint was stored. The file is named by its identity
/// (device and inode), not its path: two hosts may use one path for two files, and a file
/// replaced at that path is a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMark {
    pub dev: u64,
    pub ino: u64,
    /// Bytes in the file, all fsynced, when the checkpoint was stored.
    pub len: u64,
}

/// Appends JSON lines to a file; fsyncs on checkpoint.
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
    dev: u64,
    ino: u64,
    /// Bytes in the file: its length at open plus what was written since.
    len: u64,
    /// Something was written since the file was opened (then it is never rewound).
    written: bool,
}

impl FileSink {
    pub async fn open(path: PathBuf) -> Result<Self, SinkError> {
        // A crash mid-write leaves a torn last line; the results after the last checkpoint are
        // emitted again on restart, so cut the file back to its last complete line first.
        let p = path.clone();
        let cut = tokio::task::spawn_blocking(move || truncate_torn_tail(&p))
            .await
            .map_err(|e| SinkError::File {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| SinkError::File {
                path: path.clone(),
                source,
            })?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "results file ended in a torn line; cut it (it is emitted again)");
            metrics::counter!("ferry_processor_sink_torn_bytes_total").increment(cut);
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|source| SinkError::File {
                path: path.clone(),
                source,
            })?;
        let meta = file.metadata().await.map_err(|source| SinkError::File {
            path: path.clone(),
            source,
        })?;
        use std::os::unix::fs::MetadataExt as _;
        Ok(Self {
            path,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            written: false,
        })
    }

    /// Where the file stands (call after [`FileSink::sync`]).
    pub fn mark(&self) -> FileMark {
        FileMark {
            dev: self.dev,
            ino: self.ino,
            len: self.len,
        }
    }

    /// Cuts the file back to `len` bytes if it is longer and nothing was written since it was
    /// opened; returns the bytes removed. The results past the newest checkpoint's mark are
    /// emitted again after a crash, so cutting them keeps each in the file once.
    pub async fn rewind(&mut self, len: u64) -> Result<u64, SinkError> {
        if self.written || self.len <= len {
            return Ok(0);
        }
        let cut = self.len - len;
        let r = async {
            self.file.set_len(len).await?;
            self.file.sync_data().await
        }
        .await;
        r.map_err(|source| SinkError::File {
            path: self.path.clone(),
            source,
        })?;
        self.len = len;
        Ok(cut)
    }

    async fn write(&mut self, lines: &[String]) -> Result<(), SinkError> {
        let text = joined(lines);
        self.written = true;
        let r = async {
            self.file.write_all(text.as_bytes()).await?;
            self.file.flush().await
        }
        .await;
        if r.is_ok() {
            self.len += text.len() as u64;
        }
        r.map_err(|source| SinkError::File {
            path: self.path.clone(),
            source,
        })
    }

    async fn sync(&mut self) -> Result<(), SinkError> {
        let r = async {
            self.file.flush().await?;
            self.file.sync_data().await
        }
        .await;
        r.map_err(|source| SinkError::File {
            path: self.path.clone(),
            source,
        })
    }
}

/// Truncates `path` after its last newline; returns the bytes removed (0 if the file is absent,
/// empty, or ends with a newline).
fn truncate_torn_tail(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
                f.sync_data()?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
        f.sync_data()?;
    }
    Ok(len)
}

/// POSTs a JSON array of results; retries connection errors, 429 and 5xx with exponential
/// backoff (from 100ms, capped at `max_backoff`, each wait drawn from [half, full]).
pub struct WebhookSink {
    cfg: WebhookSinkConfig,
    client: reqwest::Client,
}

/// First retry delay; doubled per attempt up to the configured cap.
const WEBHOOK_FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl WebhookSink {
    pub fn new(cfg: WebhookSinkConfig) -> Result<Self, SinkError> {
        if !cfg.url.starts_with("http://") {
            return Err(SinkError::Https { url: cfg.url });
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .build()
            .map_err(|e| SinkError::Webhook {
                url: cfg.url.clone(),
                attempts: 0,
                message: e.to_string(),
            })?;
        Ok(Self { cfg, client })
    }

    /// The delay before retry number `attempt` (1-based), before jitter.
    pub fn backoff(attempt: u32, cap: Duration) -> Duration {
        let exp = WEBHOOK_FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exp.min(cap)
    }

    async fn post(&mut self, lines: &[String]) -> Result<(), SinkError> {
        let body = format!("[{}]", lines.join(","));
        let attempts = self.cfg.max_retries + 1;
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                let full = Self::backoff(attempt - 1, self.cfg.max_backoff.get());
                let wait = full.mul_f64(rand::rng().random_range(0.5..=1.0));
                tokio::time::sleep(wait).await;
            }
            let r = self
                .client
                .post(&self.cfg.url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let s = resp.status();
                    last = format!("HTTP {s}");
                    if !(s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408) {
                        return Err(SinkError::Webhook {
                            url: self.cfg.url.clone(),
                            attempts: attempt,
                            message: last,
                        });
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(url = %self.cfg.url, attempt, error = %last, "webhook delivery failed");
        }
        Err(SinkError::Webhook {
            url: self.cfg.url.clone(),
            attempts,
            message: last,
        })
    }
}

/// All destinations of one pipeline.
#[derive(Debug)]
pub struct Outputs {
    results: Vec<Sink>,
    /// Index = alert index in the config.
    alerts: Vec<Sink>,
    late: Option<Sink>,
    dead_letter: Option<Sink>,
}

impl Outputs {
    pub async fn new(
        cfg: &PipelineConfig,
        producer: Option<Arc<dyn TopicProducer>>,
    ) -> Result<Self, SinkError> {
        let p = producer.as_ref();
        let cluster = cfg.source.kafka.as_ref();
        let mut results = Vec::new();
        for s in &cfg.sinks {
            results.push(Sink::open(s, &cfg.name, p, cluster).await?);
        }
        let mut alerts = Vec::new();
        for a in &cfg.alerts {
            alerts.push(Sink::open(&a.sink, &cfg.name, p, cluster).await?);
        }
        let topic_sink = |topic: &str, what: &'static str| -> Result<Sink, SinkError> {
            Ok(Sink::Topic {
                topic: topic.to_owned(),
                producer: p.cloned().ok_or_else(|| SinkError::NoProducer {
                    pipeline: cfg.name.clone(),
                    what,
                    topic: topic.to_owned(),
                })?,
            })
        };
        let late = match &cfg.late_topic {
            Some(t) => Some(topic_sink(t, "late_topic")?),
            None => None,
        };
        let dead_letter = match &cfg.on_parse_error {
            crate::config::OnParseError::DeadLetter(t) => Some(topic_sink(t, "dead_letter_topic")?),
            crate::config::OnParseError::Skip => None,
        };
        Ok(Self {
            results,
            alerts,
            late,
            dead_letter,
        })
    }

    /// Writes emissions to their sinks (each sink gets one write per call).
    pub async fn write(&mut self, emissions: &[Emission]) -> Result<(), SinkError> {
        // Keys only for the kafka sink: computed when one is configured.
        let keyed = self.results.iter().any(|s| matches!(s, Sink::Kafka { .. }))
            || self.alerts.iter().any(|s| matches!(s, Sink::Kafka { .. }));
        let key = |r: &crate::pipeline::WindowResult| keyed.then(|| r.key_json());
        let mut results = Vec::new();
        let mut result_keys = Vec::new();
        let mut alerts: Vec<(Vec<String>, Vec<Option<String>>)> =
            vec![(Vec::new(), Vec::new()); self.alerts.len()];
        let mut late = Vec::new();
        let mut dead = Vec::new();
        for e in emissions {
            match e {
                Emission::Result(r) => {
                    results.push(r.to_json());
                    result_keys.push(key(r));
                }
                Emission::Alert {
                    index,
                    name,
                    result,
                } => {
                    if let Some((v, k)) = alerts.get_mut(*index) {
                        v.push(result.to_json_with(Some(name)));
                        k.push(key(result));
                    }
                }
                Emission::Late { line, .. } => {
                    late.push(String::from_utf8_lossy(line).into_owned())
                }
                Emission::DeadLetter { line, .. } => {
                    dead.push(String::from_utf8_lossy(line).into_owned())
                }
            }
        }
        for s in &mut self.results {
            s.write_keyed(&results, &result_keys).await?;
        }
        for (s, (lines, keys)) in self.alerts.iter_mut().zip(&alerts) {
            s.write_keyed(lines, keys).await?;
        }
        if let Some(s) = &mut self.late {
            s.write(&late).await?;
        }
        if let Some(s) = &mut self.dead_letter {
            s.write(&dead).await?;
        }
        Ok(())
    }

    /// Makes all written output durable; call before storing the pipeline's snapshot.
    pub async fn checkpoint(&mut self) -> Result<(), SinkError> {
        for s in self.results.iter_mut().chain(self.alerts.iter_mut()) {
            s.checkpoint().await?;
        }
        Ok(())
    }

    /// Where each results file stands (after [`Outputs::checkpoint`]), for the checkpoint.
    pub fn file_marks(&self) -> Vec<FileMark> {
        self.results
            .iter()
            .chain(&self.alerts)
            .filter_map(|s| match s {
                Sink::File(f) => Some(f.mark()),
                _ => None,
            })
            .collect()
    }

    /// At start, before anything is written: cuts each results file back to its newest mark
    /// among `marks` (read from the checkpoints), so that the results emitted after the last
    /// checkpoint, which are emitted again, are in the file once. Returns the bytes cut.
    pub async fn rewind_files(&mut self, marks: &[FileMark]) -> Result<u64, SinkError> {
        let mut cut = 0;
        for s in self.results.iter_mut().chain(self.alerts.iter_mut()) {
            let Sink::File(f) = s else { continue };
            let newest = marks
                .iter()
                .filter(|m| m.dev == f.dev && m.ino == f.ino)
                .map(|m| m.len)
                .max();
            if let Some(len) = newest {
                let n = f.rewind(len).await?;
                if n > 0 {
                    tracing::info!(path = %f.path.display(), bytes = n, "results file cut back to the last checkpoint (those results are emitted again)");
                    metrics::counter!("ferry_processor_sink_rewound_bytes_total").increment(n);
                }
                cut += n;
            }
        }
        Ok(cut)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn torn_tail_is_cut_back_to_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        assert_eq!(truncate_torn_tail(&p).unwrap(), 0);
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(truncate_torn_tail(&p).unwrap(), 5);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert_eq!(truncate_torn_tail(&p).unwrap(), 0);
        std::fs::write(&p, "no newline at all").unwrap();
        assert_eq!(truncate_torn_tail(&p).unwrap(), 17);
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        // A torn line longer than one 64 KiB read.
        let long = format!("{{\"ok\":1}}\n{}", "x".repeat(200_000));
        std::fs::write(&p, &long).unwrap();
        assert_eq!(truncate_torn_tail(&p).unwrap(), 200_000);
    }

    use super::*;
    use crate::config::FileSinkConfig;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn file_sink_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let cfg = SinkConfig::File(FileSinkConfig { path: path.clone() });
        for batch in [
            vec!["{\"a\":1}".to_owned()],
            vec!["{\"a\":2}".to_owned(), "{\"a\":3}".to_owned()],
        ] {
            let mut s = Sink::open(&cfg, "p", None, None).await.unwrap();
            s.write(&batch).await.unwrap();
            s.checkpoint().await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }

    #[tokio::test]
    async fn topic_sink_without_producer_is_refused() {
        let cfg = SinkConfig::Topic(crate::config::TopicSinkConfig { name: "out".into() });
        let e = Sink::open(&cfg, "p", None, None).await.unwrap_err();
        assert!(e.to_string().contains("needs the collector client"), "{e}");
    }

    /// Serves `statuses` in order, one per connection, and returns the request bodies.
    async fn server(statuses: Vec<u16>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for status in statuses {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = c.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            bodies.push(text[i + 4..i + 4 + len].to_owned());
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                c.write_all(resp.as_bytes()).await.unwrap();
                c.shutdown().await.ok();
            }
            bodies
        });
        (url, h)
    }

    fn webhook(url: &str, retries: u32) -> Sink {
        Sink::Webhook(
            WebhookSink::new(WebhookSinkConfig {
                url: url.to_owned(),
                timeout: ferry_core::config::Duration::from_secs(5),
                max_retries: retries,
                max_backoff: ferry_core::config::Duration::from_millis(200),
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn webhook_retries_server_errors_then_delivers() {
        let (url, h) = server(vec![503, 500, 200]).await;
        let mut s = webhook(&url, 3);
        s.write(&["{\"n\":1}".into(), "{\"n\":2}".into()])
            .await
            .unwrap();
        let bodies = h.await.unwrap();
        assert_eq!(bodies, vec!["[{\"n\":1},{\"n\":2}]"; 3]);
    }

    #[tokio::test]
    async fn webhook_gives_up() {
        let (url, h) = server(vec![503, 503]).await;
        let mut s = webhook(&url, 1);
        let e = s.write(&["{}".into()]).await.unwrap_err();
        assert!(e.to_string().contains("after 2 attempts"), "{e}");
        h.await.unwrap();
        // A client error is not retried.
        let (url, h) = server(vec![400]).await;
        let e = webhook(&url, 5).write(&["{}".into()]).await.unwrap_err();
        assert!(e.to_string().contains("after 1 attempts"), "{e}");
        h.await.unwrap();
    }

    #[test]
    fn backoff_is_capped() {
        let cap = Duration::from_secs(10);
        assert_eq!(WebhookSink::backoff(1, cap), Duration::from_millis(100));
        assert_eq!(WebhookSink::backoff(4, cap), Duration::from_millis(800));
        assert_eq!(WebhookSink::backoff(30, cap), cap);
        assert!(
            WebhookSink::new(WebhookSinkConfig {
                url: "https://x".into(),
                timeout: ferry_core::config::Duration::from_secs(1),
                max_retries: 0,
                max_backoff: ferry_core::config::Duration::from_secs(1),
            })
            .is_err()
        );
    }
}
