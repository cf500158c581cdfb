//! The Kafka source against librdkafka's in-process mock cluster: exact counts, garbage in the
//! topic, a restart from the checkpoint topic, and broker failures injected on purpose. The real
//! broker and real processes are in the root `tests/kafka_processor.rs`.

#![allow(clippy::unwrap_used)]

use ferry_core::shutdown::Shutdown;
use ferry_processor::config::{PipelineConfig, ProcessorConfig};
use ferry_processor::kafka_source;
use ferry_processor::runner::{RunnerOptions, RunnerReport};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const LEVELS: [&str; 3] = ["info", "error", "warn"];

/// Event `i`: 10 per second of event time from 2026-01-01T00:00:00Z, cycling through the levels.
fn event(i: u64) -> String {
    let (sec, tenth) = (i / 10, i % 10);
    format!(
        "{{\"ts\":\"2026-01-01T{:02}:{:02}:{:02}.{tenth}00Z\",\"level\":\"{}\",\"seq\":{i}}}",
        sec / 3600,
        (sec / 60) % 60,
        sec % 60,
        LEVELS[(i % 3) as usize]
    )
}

/// What the 10-second counts of events `0..n` are, per (level, window start).
fn expected(n: u64) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let w = (i / 100) * 10;
        let ws = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            w / 3600,
            (w / 60) % 60,
            w % 60
        );
        *out.entry((LEVELS[(i % 3) as usize].to_owned(), ws))
            .or_insert(0) += 1;
    }
    out
}

/// The result lines of a file sink: (level, window start) → count, and the number of lines.
fn results(path: &Path) -> (BTreeMap<(String, String), u64>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["key"]["level"].as_str().unwrap().to_owned(),
            v["window_start"].as_str().unwrap().to_owned(),
        );
        let count = v["count"].as_u64().unwrap();
        if let Some(prev) = out.insert(key.clone(), count) {
            assert_eq!(prev, count, "result {key:?} changed between emissions");
        }
        lines += 1;
    }
    (out, lines)
}

fn pipeline(brokers: &str, group: &str, out: &Path, extra: &str) -> PipelineConfig {
    pipeline_with_session(brokers, group, out, extra, Duration::from_secs(6))
}

/// [`pipeline`] with the Kafka consumer's `session.timeout.ms` (the Kafka source's own
/// setting; `RunnerOptions::session_timeout` is the collector source's).
fn pipeline_with_session(
    brokers: &str,
    group: &str,
    out: &Path,
    extra: &str,
    session: Duration,
) -> PipelineConfig {
    let yaml = format!(
        r#"
pipelines:
  - name: levels
    source:
      topics: [app]
      group: {group}
      kafka: {{brokers: "{brokers}", message_timeout: 5s, options: {{session.timeout.ms: "{}"}}}}
    event_time: {{field: ts, format: rfc3339}}
    group_by: [level]
    window: {{tumbling: 10s, allowed_lateness: 0s, idle_timeout: 1h}}
    aggregates: [{{name: count, op: count}}]
    sinks: [{{file: {{path: "{}"}}}}]
{extra}"#,
        session.as_millis(),
        out.display()
    );
    let c: ProcessorConfig = ferry_core::config::load_str(&yaml, Path::new("mock.yaml")).unwrap();
    c.pipelines[0].clone()
}

fn opts() -> RunnerOptions {
    RunnerOptions {
        tick: Duration::from_millis(100),
        checkpoint_interval: Duration::from_millis(500),
        session_timeout: Duration::from_secs(6),
        ..RunnerOptions::default()
    }
}

/// Produces `(key, value)` messages and waits for every delivery report.
async fn produce(brokers: &str, topic: &str, messages: &[(Option<String>, Vec<u8>)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for (k, v) in messages {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(v.as_slice());
        if let Some(k) = k {
            r = r.key(k.as_str());
        }
        pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Message keys: records are spread over every partition (not keyed by the group-by field, as
/// a user's topic often is not), so each window's count is merged from several partitions.
const SHARDS: u64 = 8;
/// Closers per run: one per level and shard, so that every partition gets one.
const CLOSERS: u64 = 3 * SHARDS;

/// Events `from..to`, keyed `s0`..`s7` (so every partition gets some of each level), then, with
/// `closers`, one closer per level and key far ahead, which closes every earlier window.
fn keyed(from: u64, to: u64, closers: bool) -> Vec<(Option<String>, Vec<u8>)> {
    let mut v: Vec<(Option<String>, Vec<u8>)> = (from..to)
        .map(|i| (Some(format!("s{}", i % SHARDS)), event(i).into_bytes()))
        .collect();
    if closers {
        for l in LEVELS {
            for s in 0..SHARDS {
                v.push((
                    Some(format!("s{s}")),
                    format!("{{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"{l}\"}}").into_bytes(),
                ));
            }
        }
    }
    v
}

/// Every value of `topic` (all partitions), read from the beginning for `within`.
/// The values of `topic` from the beginning: read until `expect` have come (or `within` has
/// passed, a slow machine), then for half a second more, so that one too many shows too.
fn read_values(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expect: usize,
    within: Duration,
) -> Vec<Vec<u8>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut enough_at: Option<Instant> = None;
    while start.elapsed() < within
        && enough_at.is_none_or(|t| t.elapsed() < Duration::from_millis(500))
    {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
        if out.len() >= expect && enough_at.is_none() {
            enough_at = Some(Instant::now());
        }
    }
    out
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to the test's output (shown when it fails); `RUST_LOG` picks the level.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs the pipeline in a task: stop it with the returned `Shutdown`, then await its report.
fn start(cfg: PipelineConfig) -> (Shutdown, tokio::task::JoinHandle<RunnerReport>) {
    start_with(cfg, opts())
}

fn start_with(
    cfg: PipelineConfig,
    opts: RunnerOptions,
) -> (Shutdown, tokio::task::JoinHandle<RunnerReport>) {
    logs();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let h = tokio::spawn(async move { kafka_source::run(cfg, opts, s).await.unwrap() });
    (shutdown, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_dead_letters_garbage_and_resumes_from_its_checkpoint() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("app", 2, 1).unwrap();
    mock.create_topic("bad", 1, 1).unwrap();
    // The mock has no CreateTopics: the source finds the topic made here instead.
    mock.create_topic("ferry-checkpoints.g1", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let cfg = pipeline(
        &brokers,
        "g1",
        &out,
        "    on_parse_error: dead_letter\n    dead_letter_topic: bad\n",
    );

    // Garbage any producer could write: not JSON, not UTF-8, a JSON array, a number, empty.
    let garbage: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x9f],
        b"[1,2,3]".to_vec(),
        b"42".to_vec(),
        Vec::new(),
    ];
    let mut first = keyed(0, 1500, false);
    for (i, g) in garbage.iter().enumerate() {
        first.insert(200 * i + 7, (Some(LEVELS[i % 3].to_owned()), g.clone()));
    }
    produce(&brokers, "app", &first).await;

    let (stop, h) = start(cfg.clone());
    // Windows before the last one of each level close while the first run reads.
    let want_first: BTreeMap<_, _> = expected(1500)
        .into_iter()
        .filter(|((_, ws), _)| ws.as_str() < "2026-01-01T00:02:20Z")
        .collect();
    wait_for(
        "the first run's closed windows",
        Duration::from_secs(30),
        || results(&out).0 == want_first,
    )
    .await;
    stop.trigger();
    let report = h.await.unwrap();
    assert_eq!(report.records, 1500 + garbage.len() as u64);
    assert!(report.checkpoints > 0);

    // The second run restores the open windows from the checkpoint topic and goes on.
    produce(&brokers, "app", &keyed(1500, 3000, true)).await;
    let (stop, h) = start(cfg);
    let want = expected(3000);
    wait_for("every window", Duration::from_secs(30), || {
        results(&out).0 == want
    })
    .await;
    stop.trigger();
    let report = h.await.unwrap();
    assert_eq!(
        report.records,
        1500 + CLOSERS,
        "only the new records are read again"
    );
    let (got, lines) = results(&out);
    assert_eq!(got, want);
    assert_eq!(lines, want.len(), "a window result was emitted twice");

    let mut dead = read_values(&brokers, "bad", 1, garbage.len(), Duration::from_secs(30));
    // A dead-letter line is the record's line as text (invalid UTF-8 replaced).
    let mut want_dead: Vec<Vec<u8>> = garbage
        .iter()
        .map(|g| String::from_utf8_lossy(g).into_owned().into_bytes())
        .collect();
    dead.sort();
    want_dead.sort();
    assert_eq!(dead, want_dead, "every garbage record dead-lettered once");
}

/// A pipeline of group `group` on a mock cluster's 2-partition topic `app`, running with `opts`.
struct Running {
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    dir: tempfile::TempDir,
    out: std::path::PathBuf,
    stop: Shutdown,
    h: tokio::task::JoinHandle<RunnerReport>,
}

/// The first 1,000 events produced and the pipeline started, once its first results are out.
async fn first_results(group: &str, opts: RunnerOptions) -> Running {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("app", 2, 1).unwrap();
    mock.create_topic(&format!("ferry-checkpoints.{group}"), 1, 1)
        .unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let cfg = pipeline_with_session(&brokers, group, &out, "", opts.session_timeout);
    produce(&brokers, "app", &keyed(0, 1000, false)).await;
    let (stop, h) = start_with(cfg, opts);
    wait_for("the first results", Duration::from_secs(30), || {
        !results(&out).0.is_empty()
    })
    .await;
    Running {
        mock,
        brokers,
        dir,
        out,
        stop,
        h,
    }
}

/// The broker down for `outage` (the pipeline must keep running), then up, then events
/// 1,000..2,000 and a closer per level: returns how long after the broker came back every
/// window's count was right.
async fn outage_then_the_rest(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: &str,
    out: &Path,
    h: &tokio::task::JoinHandle<RunnerReport>,
    outage: Duration,
) -> Duration {
    mock.broker_down(1).unwrap();
    tokio::time::sleep(outage).await;
    assert!(
        !h.is_finished(),
        "the source must not stop on a broker outage"
    );
    mock.broker_up(1).unwrap();
    let back = Instant::now();
    produce(brokers, "app", &keyed(1000, 2000, true)).await;
    let want = expected(2000);
    wait_for(
        "every window after the outage",
        Duration::from_secs(60),
        || results(out).0 == want,
    )
    .await;
    back.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_checkpoints_and_a_broker_outage_are_retried_and_nothing_is_lost() {
    // A session that outlasts the outage even on a loaded machine: this test is about retries
    // while the member keeps its partitions (losing them is the next test). It reaches the
    // Kafka consumer as `session.timeout.ms` (it once did not: the consumer kept librdkafka's
    // 6 s, and a loaded run lost its session, re-reading 1,000 records from the checkpoint).
    let opts = RunnerOptions {
        session_timeout: Duration::from_secs(30),
        ..opts()
    };
    let Running {
        mock,
        brokers,
        dir: _dir,
        out,
        stop,
        h,
    } = first_results("g2", opts).await;

    // Checkpoints refused for a while (the only produce requests of this pipeline).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    // Then the broker goes away and comes back.
    outage_then_the_rest(&mock, &brokers, &out, &h, Duration::from_secs(3)).await;
    let want = expected(2000);
    stop.trigger();
    let report = h.await.unwrap();
    assert_eq!(report.records, 2000 + CLOSERS);
    let (_, lines) = results(&out);
    assert_eq!(lines, want.len(), "a window result was emitted twice");
}

/// A broker outage longer than the session: the member loses its partitions without a
/// checkpoint, rejoins when the broker is back, and restores the last stored checkpoint. It is
/// back within seconds (errors queued during the outage in the checkpoint reader once cost a
/// backoff each, half a minute in all), and every window is there with its exact count. The
/// results emitted after the last stored checkpoint may be emitted again (docs/processor.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_in_a_broker_outage_is_rejoined_promptly_and_nothing_is_lost() {
    let Running {
        mock,
        brokers,
        dir: _dir,
        out,
        stop,
        h,
    } = first_results("g5", opts()).await;
    // Past the 6 s session timeout of `opts()`.
    let took = outage_then_the_rest(&mock, &brokers, &out, &h, Duration::from_secs(9)).await;
    eprintln!("back after {took:?}");
    stop.trigger();
    let report = h.await.unwrap();
    // Each count is exact (a result emitted again carries the same count); the records of the
    // first half may have been read twice, none of the second.
    assert!(
        (2000 + CLOSERS..=3000 + CLOSERS).contains(&report.records),
        "{} records",
        report.records
    );
    // About 9 s here (reconnect and rejoin); a backoff per queued error took over 30 s.
    assert!(took < Duration::from_secs(25), "back after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_event_time_the_message_timestamp_places_records_in_windows() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("app", 1, 1).unwrap();
    mock.create_topic("ferry-checkpoints.g3", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    // The pipeline of the other tests, without `event_time`.
    let yaml = format!(
        "pipelines:\n  - name: levels\n    source: {{topics: [app], group: g3, kafka: {{brokers: \"{brokers}\"}}}}\n    group_by: [level]\n    window: {{tumbling: 10s, allowed_lateness: 0s, idle_timeout: 1h}}\n    aggregates: [{{name: count, op: count}}]\n    sinks: [{{file: {{path: \"{}\"}}}}]\n",
        out.display()
    );
    let c: ProcessorConfig = ferry_core::config::load_str(&yaml, Path::new("ts.yaml")).unwrap();
    // One record per second of message time (CreateTime) from 2026-01-01T00:00:00Z, then one
    // 100 s later that closes the first three windows; the lines carry no time at all.
    let base = 1_767_225_600_000i64;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for at in (0..30).map(|s| base + s * 1000).chain([base + 100_000]) {
        let r: FutureRecord<'_, str, str> = FutureRecord::to("app")
            .payload("{\"level\":\"info\"}")
            .timestamp(at);
        p.send(r, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let (stop, h) = start(c.pipelines[0].clone());
    let want: BTreeMap<(String, String), u64> = ["00", "10", "20"]
        .iter()
        .map(|s| (("info".to_owned(), format!("2026-01-01T00:00:{s}Z")), 10))
        .collect();
    wait_for("windows of message time", Duration::from_secs(30), || {
        results(&out).0 == want
    })
    .await;
    stop.trigger();
    assert_eq!(h.await.unwrap().records, 31);
}
