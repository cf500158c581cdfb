//! The agent as a library, end to end: real files, real reader thread and file events, real
//! compression workers, the real `stdout` output writing into a buffer, a real checkpoint dir.
//! A restart must resume at the checkpoint with nothing missing and nothing repeated.

#![allow(clippy::unwrap_used)]

use ferry_agent::checkpoint::Checkpointer;
use ferry_agent::config::{AgentConfig, InputConfig, OutputConfig, ReadFrom};
use ferry_agent::output::stdout::StdoutOutput;
use ferry_agent::{Agent, AgentStats};
use ferry_core::config::{ByteSize, Duration as CfgDuration};
use ferry_core::shutdown::Shutdown;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A writer the test can read back: what the stdout output printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

fn config(dir: &Path, read_from: ReadFrom) -> AgentConfig {
    let mut cfg = AgentConfig {
        id: Some("e2e".into()),
        data_dir: dir.join("data"),
        inputs: vec![InputConfig {
            name: "app".into(),
            include: vec![format!("{}/logs/*.log", dir.display())],
            exclude: vec![],
            read_from,
            topic: "app".into(),
            fields: Default::default(),
            multiline: None,
            max_line_bytes: ByteSize::kib(64),
            line_flush_timeout: CfgDuration::from_secs(60),
            format: None,
            kubernetes: false,
            rotate_wait: CfgDuration::from_secs(30),
        }],
        output: OutputConfig::Stdout,
        ..Default::default()
    };
    cfg.batch.linger = CfgDuration::from_millis(10);
    cfg.batch.max_records = 100;
    cfg.checkpoint_interval = CfgDuration::from_millis(50);
    cfg.rescan_interval = CfgDuration::from_secs(2);
    cfg.buffer_bytes = ByteSize::mib(2);
    cfg
}

struct Running {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<ferry_agent::AgentReport, ferry_agent::AgentError>>,
    out: Captured,
    stats: Arc<AgentStats>,
}

fn start(cfg: AgentConfig, events: bool) -> Running {
    let out = Captured::default();
    let mut agent =
        Agent::with_output(cfg, StdoutOutput::with_writer(Box::new(out.clone()))).unwrap();
    if !events {
        agent = agent.without_file_events();
    }
    let stats = agent.stats();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        out,
        stats,
    }
}

impl Running {
    async fn wait_lines(&self, n: usize) {
        self.wait_lines_within(n, Duration::from_secs(20)).await;
    }

    async fn wait_lines_within(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.out.lines().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} lines, have {}",
                self.out.lines().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
        self.out.lines()
    }
}

fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = String::new();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    f.write_all(text.as_bytes()).unwrap();
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("{prefix}-{i:05} {}", "x".repeat(i % 50)))
        .collect()
}

fn logs(dir: &Path) -> PathBuf {
    let p = dir.join("logs");
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_at_the_checkpoint_nothing_missing_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    let mut want = numbered("a", 0..1000);
    append(&log, want.clone());

    // Run 1: the existing lines, lines appended while running, and a last line still without
    // its newline at shutdown (it must not ship half, nor be lost).
    let run = start(config(dir.path(), ReadFrom::Beginning), true);
    run.wait_lines(1000).await;
    let more = numbered("b", 0..500);
    append(&log, more.clone());
    want.extend(more);
    run.wait_lines(1500).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"half a line")
        .unwrap();
    let first = run.stop().await;
    assert_eq!(
        first, want,
        "run 1 ships every complete line once, in order"
    );

    // While stopped: the line is completed, more lines arrive.
    append(&log, [" completed".to_owned()]);
    want.push("half a line completed".to_owned());
    let stopped = numbered("c", 0..700);
    append(&log, stopped.clone());
    want.extend(stopped);

    // Run 2: resumes; then a rename rotation while running.
    let run = start(config(dir.path(), ReadFrom::Beginning), true);
    run.wait_lines(701).await;
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    let rotated = numbered("d", 0..300);
    append(&log, rotated.clone());
    want.extend(rotated);
    run.wait_lines(1001).await;
    let second = run.stop().await;
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(
        all.len(),
        want.len(),
        "no line missing or repeated across the restart"
    );
    assert_eq!(all, want);

    // The checkpoint names the new file at its end.
    let cps = Checkpointer::new(&dir.path().join("data"))
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(cps.agent_id.as_deref(), Some("e2e"));
    // (The rotated file may still have its own entry, under its last matched path: it is
    // released after its rotate wait, or dropped at the next start when nothing matches it.)
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&log).unwrap();
    let entry = &cps.files[&(meta.dev(), meta.ino())];
    assert_eq!(entry.path, log.to_string_lossy());
    assert_eq!(entry.offset, meta.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_end_skips_what_was_there_but_not_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    append(&log, numbered("old", 0..100));
    let run = start(config(dir.path(), ReadFrom::End), true);
    // Ready once the start position is checkpointed.
    let cp = Checkpointer::new(&dir.path().join("data")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cp.load().unwrap().files.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no start checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = numbered("new", 0..50);
    append(&log, new.clone());
    run.wait_lines(50).await;
    let first = run.stop().await;
    assert_eq!(first, new);
    // Restarted, the file has a checkpoint now: nothing is skipped or repeated.
    let later = numbered("later", 0..20);
    append(&log, later.clone());
    let run = start(config(dir.path(), ReadFrom::End), true);
    run.wait_lines(20).await;
    assert_eq!(run.stop().await, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_alone_find_new_files_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.rescan_interval = CfgDuration::from_millis(50);
    let run = start(cfg, false);
    let a = numbered("a", 0..10);
    append(&logs.join("one.log"), a.clone());
    run.wait_lines(10).await;
    let b = numbered("b", 0..10);
    append(&logs.join("one.log"), b.clone());
    run.wait_lines(20).await;
    let stats = run.stats.clone();
    let got = run.stop().await;
    assert_eq!(got, [a, b].concat());
    assert_eq!(AgentStats::get(&stats.records_acked), 20);
}

/// With rescans out of the way (a minute apart), file events alone must find a file in
/// directories made after startup below a `**` glob's root, and each line written to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_alone_find_files_in_directories_made_after_startup() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.inputs[0].include = vec![format!("{}/**/*.log", pods.display())];
    cfg.rescan_interval = CfgDuration::from_secs(60);
    let run = start(cfg, true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two levels made at once: the inner one exists before the outer's watch is added.
    let web = pods.join("shop/web-1");
    std::fs::create_dir_all(&web).unwrap();
    // Whatever rescan the new directories asked for has run before the file appears.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = numbered("a", 0..10);
    append(&web.join("0.log"), a.clone());
    run.wait_lines_within(10, Duration::from_secs(10)).await;
    let b = numbered("b", 0..10);
    append(&web.join("0.log"), b.clone());
    run.wait_lines_within(20, Duration::from_secs(10)).await;
    let got = run.stop().await;
    assert_eq!(got, [a, b].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_truncated_counted_and_the_file_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.inputs[0].max_line_bytes = ByteSize(100);
    append(
        &log,
        ["short".to_owned(), "y".repeat(10_000), "after".to_owned()],
    );
    let run = start(cfg, true);
    run.wait_lines(3).await;
    let stats = run.stats.clone();
    let got = run.stop().await;
    assert_eq!(
        got,
        vec!["short".to_owned(), "y".repeat(100), "after".to_owned()]
    );
    assert_eq!(AgentStats::get(&stats.lines_truncated), 1);
    assert_eq!(AgentStats::get(&stats.bytes_acked), 6 + 10_001 + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_published_under_ferry_agent_names() {
    ferry_core::telemetry::install_metrics();
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    append(&log, numbered("m", 0..10));
    let run = start(config(dir.path(), ReadFrom::Beginning), true);
    run.wait_lines(10).await;
    // Acks are counted as they arrive; wait for the shipper to have counted them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while AgentStats::get(&run.stats.records_acked) < 10 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.stop().await;
    let text = ferry_core::telemetry::render_metrics();
    for name in [
        "ferry_agent_lines_read_total{input=\"app\"}",
        "ferry_agent_bytes_read_total{input=\"app\"}",
        "ferry_agent_lines_shipped_total{input=\"app\"}",
        "ferry_agent_bytes_shipped_total{input=\"app\"}",
        "ferry_agent_checkpoint_age_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// A file deleted and recreated at the same path while the agent was stopped is new content:
/// it is read from its beginning even with `read_from: end`, under a new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_recreated_while_stopped_is_read_from_its_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    append(&log, numbered("first", 0..30));
    let run = start(config(dir.path(), ReadFrom::Beginning), true);
    run.wait_lines(30).await;
    assert_eq!(run.stop().await.len(), 30);

    std::fs::remove_file(&log).unwrap();
    let recreated = numbered("second", 0..40);
    append(&log, recreated.clone());
    let run = start(config(dir.path(), ReadFrom::End), true);
    run.wait_lines(40).await;
    assert_eq!(run.stop().await, recreated);
}

/// With the collector unreachable nothing is acknowledged, so nothing is checkpointed: the
/// shutdown deadline passes, and the next run ships every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_advances_only_on_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    let lines = numbered("l", 0..50);
    append(&log, lines.clone());

    // A port that was just free: connections are refused, every delivery retries.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.output = OutputConfig::Collector(ferry_agent::config::CollectorOutputConfig {
        urls: vec![format!("http://127.0.0.1:{port}")],
        mode: Default::default(),
        timeout: CfgDuration::from_secs(1),
        ..Default::default()
    });
    cfg.shutdown_timeout = CfgDuration::from_millis(300);
    let agent = Agent::new(cfg).unwrap();
    let stats = agent.stats();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while AgentStats::get(&stats.lines_read) < 50 || AgentStats::get(&stats.retries) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent did not read and retry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_eq!(AgentStats::get(&stats.records_acked), 0);
    let cps = Checkpointer::new(&dir.path().join("data"))
        .unwrap()
        .load()
        .unwrap();
    assert!(
        cps.files.values().all(|c| c.offset == 0),
        "nothing acknowledged, nothing checkpointed: {cps:?}"
    );

    let run = start(config(dir.path(), ReadFrom::Beginning), true);
    run.wait_lines(50).await;
    assert_eq!(run.stop().await, lines);
}

/// When the output does not acknowledge, reading stops at `buffer_bytes`: the file is the
/// buffer, memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_pauses_when_the_buffer_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("app.log");
    append(&log, numbered("big", 0..40_000)); // about 2.5 MiB
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.output = OutputConfig::Collector(ferry_agent::config::CollectorOutputConfig {
        urls: vec![format!("http://127.0.0.1:{port}")],
        mode: Default::default(),
        timeout: CfgDuration::from_secs(1),
        ..Default::default()
    });
    cfg.batch.max_bytes = ByteSize::kib(64);
    cfg.batch.max_records = 100_000;
    cfg.buffer_bytes = ByteSize::kib(256);
    cfg.shutdown_timeout = CfgDuration::from_millis(100);
    let agent = Agent::new(cfg).unwrap();
    let stats = agent.stats();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    // Three retries take a few hundred milliseconds: ample time to read the whole file at
    // disk speed, were reading not paused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while AgentStats::get(&stats.retries) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let read = AgentStats::get(&stats.bytes_read);
    assert!(
        read > 0 && read <= 256 << 10,
        "read {read} bytes with a 256 KiB buffer"
    );
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

/// Many files present at start, each smaller than a batch: every read ends in an open batch,
/// and open batches count against the buffer. Once they fill half of it, they are sealed at
/// once rather than after the linger, so the agent never waits on a timer while holding the
/// very bytes that block it; only the last batches (the files' tails) wait out their linger.
/// Each line arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_filling_the_buffer_do_not_wait_out_the_linger() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let mut want = Vec::new();
    for f in 0..80 {
        let lines = numbered(&format!("f{f:02}"), 0..2_000); // about 72 KiB each
        append(&logs.join(format!("f{f:02}.log")), lines.iter().cloned());
        want.extend(lines);
    }
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    cfg.batch.linger = CfgDuration::from_secs(5);
    cfg.batch.max_bytes = ByteSize::kib(512);
    cfg.batch.max_records = 100_000;
    cfg.buffer_bytes = ByteSize::mib(1);
    // Each file is a backlog that would be sealed at its end anyway: only room seals here.
    cfg.batch.backlog_bytes = ByteSize::mib(1024);
    let run = start(cfg, true);
    // 5.8 MiB through a 1 MiB buffer: were full buffers left to linger, that would be about six
    // lingers (30 s); sealed for room, it is one (the tails) and the reading.
    let t = std::time::Instant::now();
    run.wait_lines_within(want.len(), Duration::from_secs(40))
        .await;
    let took = t.elapsed();
    let mut got = run.stop().await;
    assert!(took < Duration::from_secs(15), "took {took:?}");
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "every line exactly once");
    assert!(got == want, "the lines shipped are the lines written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_ships_at_once_and_lines_written_one_by_one_still_linger() {
    ferry_core::telemetry::install_metrics();
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    // Three files found with content (about 110 KiB each, over `backlog_bytes`), and a fourth
    // with a few lines (under it).
    let mut want = Vec::new();
    for f in 0..3 {
        let lines = numbered(&format!("big{f}"), 0..3_000);
        append(&logs.join(format!("big{f}.log")), lines.iter().cloned());
        want.extend(lines);
    }
    let small = numbered("small", 0..10);
    append(&logs.join("small.log"), small.iter().cloned());
    let mut cfg = config(dir.path(), ReadFrom::Beginning);
    let linger = Duration::from_secs(4);
    cfg.batch.linger = CfgDuration::from_secs(4);
    cfg.batch.max_records = 100_000;
    cfg.batch.max_bytes = ByteSize::mib(1);
    cfg.batch.backlog_bytes = ByteSize::kib(64);
    let t = std::time::Instant::now();
    let run = start(cfg, true);
    run.wait_lines_within(want.len(), Duration::from_secs(20))
        .await;
    let took = t.elapsed();
    assert!(
        took < linger / 2,
        "the backlogs were sealed when read to their end, not after the {linger:?} linger: {took:?}"
    );
    assert!(
        !run.out.lines().iter().any(|l| l.starts_with("small")),
        "ten lines are no backlog: they linger"
    );
    // Lines written one at a time to a file being read as it grows: each read ends with a
    // line or two, and the batch waits out its linger to gather them.
    let live = logs.join("big0.log");
    let mut trickle = Vec::new();
    for i in 0..5 {
        let line = format!("live-{i}");
        append(&live, [line.clone()]);
        trickle.push(line);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !run.out.lines().iter().any(|l| l.starts_with("live-")),
        "lines read as they are written linger"
    );
    want.extend(small);
    want.extend(trickle);
    run.wait_lines_within(want.len(), Duration::from_secs(20))
        .await;
    let mut got = run.stop().await;
    got.sort();
    want.sort();
    assert_eq!(got, want, "every line exactly once");
    let text = ferry_core::telemetry::render_metrics();
    assert!(
        text.lines()
            .any(|l| l == "ferry_agent_batches_sealed_caught_up_total{input=\"app\"} 3"),
        "one batch sealed at the end of each of the three backlogs:\n{text}"
    );
}
