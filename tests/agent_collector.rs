//! The agent against the real collector: real `ferry agent` and `ferry collector` processes, real
//! files, real rotations, truncations, crashes and outages.
//!
//! Every line a test writes is unique (a tag, a sequence number, padding), and every test ends
//! the same way: it waits (polling the collector) until the topic holds as many records as were
//! written, stops the agent, consumes the topic from the beginning, and compares the multiset of
//! stored lines with the lines written — each must be stored exactly once. A failure lists the
//! missing and the duplicated lines.
//!
//! Where "exactly once" cannot be promised by any tailer (a line written between copytruncate's
//! copy and its truncation, which the agent may not have read before it vanished), the test says
//! what it asserts instead, next to the case.

mod util;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use util::{
    Dir, Service, ferry, free_addr, http_get, run, start_collector_on, strip_ansi,
    unread_bytes_counted,
};

const TOPIC: &str = "logs";

/// One collector and one agent tailing files under `DIR/logs`.
/// Fields drop in order: the processes are killed before the directory goes.
struct Rig {
    agent: Option<Service>,
    collector: Option<Service>,
    addr: SocketAddr,
    collector_config: Option<String>,
    agent_config: PathBuf,
    agent_starts: usize,
    dir: Dir,
}

/// An input tailing `glob` (relative to the logs dir) with extra YAML keys (indented 6).
fn input(name: &str, glob: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      include: [\"{{LOGS}}/{glob}\"]\n      topic: {TOPIC}\n{extra}"
    )
}

impl Rig {
    /// A rig whose collector runs with `collector_config`; started now if `start_collector`.
    fn new(name: &str, collector_config: Option<&str>, start_collector: bool) -> Self {
        let dir = Dir::new(name);
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir logs");
        let mut rig = Rig {
            addr: free_addr(),
            agent_config: dir.join("agent.yaml"),
            dir,
            collector_config: collector_config.map(str::to_owned),
            collector: None,
            agent: None,
            agent_starts: 0,
        };
        if start_collector {
            rig.start_collector();
        }
        rig
    }

    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs().join(name)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes the agent's config: `inputs` (see [`input`]) and extra `agent:` keys (indented 2).
    fn configure_agent(&self, inputs: &[String], extra: &str) {
        let logs = self.logs().display().to_string();
        let inputs: String = inputs.iter().map(|i| i.replace("{LOGS}", &logs)).collect();
        let yaml = format!(
            "agent:
  id: e2e-agent
  data_dir: {data}
  rescan_interval: 250ms
  checkpoint_interval: 200ms
  shutdown_timeout: 15s
{extra}  output:
    type: collector
    urls: [\"{url}\"]
    timeout: 5s
  inputs:
{inputs}",
            data = self.dir.join("agent-data").display(),
            url = self.url(),
        );
        std::fs::write(&self.agent_config, yaml).expect("write agent config");
    }

    fn start_collector(&mut self) {
        assert!(self.collector.is_none(), "collector already running");
        self.collector = Some(start_collector_on(
            &self.dir,
            "collector",
            self.collector_config.as_deref(),
            self.addr,
        ));
    }

    fn kill_collector(&mut self) {
        self.collector.as_mut().expect("collector running").kill9();
        self.collector = None;
    }

    fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        self.agent_starts += 1;
        let config = self.agent_config.display().to_string();
        self.agent = Some(Service::spawn_agent(
            "agent",
            &self.dir,
            &["agent", "--config", &config],
        ));
    }

    fn kill_agent(&mut self) {
        self.agent.as_mut().expect("agent running").kill9();
        self.agent = None;
    }

    /// SIGTERM: the agent drains (delivers what it read, writes its checkpoint) and exits 0.
    fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("agent running");
        let code = agent.terminate(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "agent did not exit cleanly:\n{}",
            agent.stderr()
        );
    }

    fn agent_stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.stderr")).unwrap_or_default()
    }

    /// Records stored in the topic (0 while it does not exist or the collector is down).
    fn stored(&self) -> u64 {
        match http_get(self.addr, &format!("/v1/topics/{TOPIC}")) {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["records"].as_u64())
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Polls until the topic holds at least `n` records. Returns false at the deadline (the
    /// final comparison then says what is missing). Fails at once if the agent died.
    fn wait_stored(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stored() >= n as u64 {
                return true;
            }
            if let Some(agent) = self.agent.as_mut()
                && let Some(status) = agent.exited()
            {
                panic!("agent exited with {status}:\n{}", agent.stderr());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "only {} of {n} records stored after {timeout:?}",
                    self.stored()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every record of the topic, from the beginning, as `ferry consume` prints it (raw).
    fn consume(&self) -> Vec<String> {
        let out = run(
            ferry().args([
                "consume",
                "--collector",
                &self.url(),
                TOPIC,
                "--from-beginning",
                "--idle-timeout",
                "2s",
            ]),
            b"",
            0,
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every record of the topic as `ferry consume --format json` prints it.
    fn consume_json(&self) -> Vec<serde_json::Value> {
        let out = run(
            ferry().args([
                "consume",
                "--collector",
                &self.url(),
                TOPIC,
                "--from-beginning",
                "--idle-timeout",
                "2s",
                "--format",
                "json",
            ]),
            b"",
            0,
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json record"))
            .collect()
    }

    /// Waits for `expected.len()` records, stops the agent cleanly, and asserts every line
    /// written is stored exactly once.
    fn finish(&mut self, expected: &[String], timeout: Duration) {
        self.wait_stored(expected.len(), timeout);
        if self.agent.is_some() {
            self.stop_agent();
        }
        let got = self.consume();
        assert_exactly_once(expected, &got, &self.agent_stderr());
    }

    /// A total from the agent's last "agent stopped" log line (`name=N`).
    fn agent_total(&self, name: &str) -> u64 {
        let log = strip_ansi(&self.agent_stderr());
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("agent stopped") && l.contains(" lines_read="))
            .unwrap_or_else(|| panic!("no final totals in the agent's log:\n{log}"))
            .to_owned();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
    }

    /// A counter from the collector's `/metrics` (summed over labels matching `filter`).
    fn collector_metric(&self, name: &str, filter: &str) -> f64 {
        let Ok((200, body)) = http_get(self.addr, "/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Compares multisets: every expected line once, nothing else.
fn assert_exactly_once(expected: &[String], got: &[String], agent_log: &str) {
    let mut diff: BTreeMap<&str, i64> = BTreeMap::new();
    for l in expected {
        *diff.entry(l).or_default() += 1;
    }
    for l in got {
        *diff.entry(l).or_default() -= 1;
    }
    let missing: Vec<(&str, i64)> = diff
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(l, n)| (*l, *n))
        .collect();
    let extra: Vec<(&str, i64)> = diff
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(l, n)| (*l, -*n))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return;
    }
    let show = |v: &[(&str, i64)]| {
        v.iter()
            .take(20)
            .map(|(l, n)| format!("  {n} x {}", short(l)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tail: String = agent_log
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    panic!(
        "written {}, stored {}: {} lines missing, {} lines duplicated or unexpected\n\
         --- missing (first 20)\n{}\n--- duplicated/unexpected (first 20)\n{}\n\
         --- agent log (last 60 lines)\n{tail}",
        expected.len(),
        got.len(),
        missing.iter().map(|m| m.1).sum::<i64>(),
        extra.iter().map(|m| m.1).sum::<i64>(),
        show(&missing),
        show(&extra),
    );
}

fn short(l: &str) -> String {
    if l.len() > 80 {
        format!("{}… ({} bytes)", &l[..80], l.len())
    } else {
        l.to_owned()
    }
}

fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log for append")
}

/// A unique line: `TAG-SEQ-` and padding to about 64 bytes.
fn line(tag: &str, seq: usize) -> String {
    format!("{tag}-{seq:08}-{}", "p".repeat(48))
}

/// Writes `lines` to `file`, each with its newline, recording them in `written`.
fn write_lines(
    file: &mut File,
    tag: &str,
    seqs: std::ops::Range<usize>,
    written: &mut Vec<String>,
) {
    let mut buf = String::new();
    for s in seqs {
        let l = line(tag, s);
        buf.push_str(&l);
        buf.push('\n');
        written.push(l);
    }
    file.write_all(buf.as_bytes()).expect("write log");
}

/// How the background writer rotates `app.log`.
#[derive(Clone, Copy)]
struct WriterPlan {
    /// Lines per write call.
    chunk: usize,
    /// Pause between writes.
    pause: Duration,
    /// Rename `app.log` to `app.log.N` and create a new `app.log` after this many lines
    /// (0: never).
    rotate_every: usize,
    /// Stop after this many lines (or when told to stop).
    total: usize,
}

/// A writer thread appending unique lines to `logs/app.log`, rotating by rename + create. Its
/// progress is readable while it runs; `join` returns every line written.
struct Writer {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
    rotations: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl Writer {
    fn start(logs: PathBuf, tag: &'static str, plan: WriterPlan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let rotations = Arc::new(AtomicUsize::new(0));
        let (s, p, r) = (stop.clone(), progress.clone(), rotations.clone());
        let handle = std::thread::spawn(move || {
            let path = logs.join("app.log");
            let mut file = append_file(&path);
            let mut written = Vec::new();
            let mut since_rotation = 0;
            while written.len() < plan.total && !s.load(Ordering::Relaxed) {
                let n = plan.chunk.min(plan.total - written.len());
                let from = written.len();
                write_lines(&mut file, tag, from..from + n, &mut written);
                since_rotation += n;
                p.store(written.len(), Ordering::Relaxed);
                if plan.rotate_every > 0 && since_rotation >= plan.rotate_every {
                    let k = r.fetch_add(1, Ordering::Relaxed) + 1;
                    std::fs::rename(&path, logs.join(format!("app.log.{k}"))).expect("rotate");
                    // A writer keeps its old handle for a moment after the rename (as real
                    // ones do until they reopen): one more line goes to the rotated file.
                    let from = written.len();
                    write_lines(&mut file, tag, from..from + 1, &mut written);
                    file = append_file(&path);
                    since_rotation = 0;
                }
                if !plan.pause.is_zero() {
                    std::thread::sleep(plan.pause);
                }
            }
            file.sync_all().ok();
            written
        });
        Writer {
            stop,
            progress,
            rotations,
            handle: Some(handle),
        }
    }

    fn written(&self) -> usize {
        self.progress.load(Ordering::Relaxed)
    }

    fn wait_written(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.written() < n {
            assert!(
                Instant::now() < deadline,
                "writer stuck at {}",
                self.written()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn join(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("writer thread")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Case 1: Rotation (rename + create) under a burst of writes while the collector is slow: it starts
/// only after the burst is well under way (every delivery until then fails and is retried), and
/// it allows one request per topic at a time (429 with `Retry-After` for the others).
#[test]
fn rotation_under_a_burst_while_the_collector_is_late_and_refusing() {
    let collector_cfg = "collector:
  limits:
    max_body_bytes: 256KiB
    max_inflight_bytes: 256KiB
    max_pending_per_topic: 1
    retry_after_secs: 1
";
    let mut rig = Rig::new("rotate-slow", Some(collector_cfg), false);
    // Only `app.log` is tailed: a rotated file is followed by its open handle (orphaned), read
    // to its end, then released.
    rig.configure_agent(
        &[input("app", "app.log", "")],
        "  batch:\n    max_bytes: 16KiB\n    linger: 20ms\n",
    );
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "burst",
        WriterPlan {
            chunk: 200,
            pause: Duration::from_millis(2),
            rotate_every: 4000,
            total: 24_000,
        },
    );
    writer.wait_written(9_000);
    rig.start_collector();
    let written = writer.join();
    rig.finish(&written, Duration::from_secs(60));
    eprintln!(
        "collector refused {} requests (limits)",
        rig.collector_metric("ferry_collector_refused_total", "")
    );
    assert!(
        rig.agent_total("retries") > 0,
        "the agent never had to retry: the collector was not slow"
    );
}

/// Case 2: SIGTERM and kill -9 of the agent while files are being rotated. The glob matches the
/// rotated names too (`app.log*`), so a file rotated while the agent is down is found again
/// under its new name and resumed from its checkpoint.
#[test]
fn agent_sigterm_and_kill9_during_rotation() {
    let mut rig = Rig::new("restart-rotate", None, true);
    rig.configure_agent(&[input("app", "app.log*", "")], "");
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "rr",
        WriterPlan {
            chunk: 10,
            pause: Duration::from_millis(5),
            rotate_every: 1500,
            total: 16_000,
        },
    );
    writer.wait_written(3_000);
    rig.stop_agent();
    // Rotations happen while it is stopped.
    let r = writer.rotations.load(Ordering::Relaxed);
    while writer.rotations.load(Ordering::Relaxed) < r + 1 && writer.written() < 16_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.start_agent();
    writer.wait_written(8_000);
    rig.kill_agent();
    let r = writer.rotations.load(Ordering::Relaxed);
    while writer.rotations.load(Ordering::Relaxed) < r + 1 && writer.written() < 16_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.start_agent();
    writer.wait_written(12_000);
    rig.kill_agent();
    rig.start_agent();
    let written = writer.join();
    rig.finish(&written, Duration::from_secs(60));
}

/// Whether process `pid` holds an open handle on `path` (deleted or not).
fn holds_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let want = path.display().to_string();
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|t| t.display().to_string().starts_with(&want))
            .unwrap_or(false)
    })
}

/// Creates empty files `cand.N` next to `path` until the file system hands out `ino`, then
/// renames that one to `path`. ext4 gives a new file the lowest free inode of its group, and
/// other tests running in parallel free inodes too: the candidates that got another inode are
/// kept until the end (each takes one lower free inode out of the way), then deleted. Returns
/// whether `ino` was reused.
fn create_on_inode(path: &Path, ino: u64, content: &[u8], timeout: Duration) -> bool {
    let dir = path.parent().expect("parent");
    let deadline = Instant::now() + timeout;
    let mut kept = Vec::new();
    let mut reused = false;
    for i in 0..5000 {
        if Instant::now() >= deadline {
            break;
        }
        let cand = dir.join(format!("cand.{i}"));
        let mut f = append_file(&cand);
        if f.metadata().expect("stat").ino() == ino {
            f.write_all(content).expect("write");
            drop(f);
            std::fs::rename(&cand, path).expect("rename into place");
            reused = true;
            break;
        }
        kept.push(cand);
    }
    for c in kept {
        std::fs::remove_file(c).expect("rm candidate");
    }
    reused
}

/// Case 3: Inode reuse while the agent runs and while it is stopped: a file is deleted and a new file
/// created on the very same inode (ext4 and tmpfs reuse a freed inode at once; the test loops
/// until it sees the same `st_ino`), beginning with the same header line as the old one. The
/// new file's lines are new lines: all must be stored, none taken for replays.
#[test]
fn inode_reuse_while_running_and_while_stopped() {
    let mut rig = Rig::new("inode-reuse", None, true);
    rig.configure_agent(&[input("app", "*.log", "")], "");
    rig.start_agent();
    let mut written = Vec::new();
    let header = "header-shared-by-every-generation".to_owned();

    // Generation 1, read and stored.
    let p = rig.log("a.log");
    let mut f = append_file(&p);
    f.write_all(format!("{header}\n").as_bytes()).expect("w");
    written.push(header.clone());
    write_lines(&mut f, "ino1", 0..300, &mut written);
    drop(f);
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));

    // While running: delete it; once the agent has let go of it (read to its end, then kept
    // open for its rotate wait), a new file takes its inode. Other tests running in parallel
    // create files too and may take the freed inode first: then the recreated file (a new
    // inode) is one more generation, and the test tries again, up to 4 times.
    let pid = rig.agent.as_ref().and_then(|s| s.pid()).expect("agent pid");
    let mut reused_running = false;
    for attempt in 0..4 {
        let ino = std::fs::metadata(&p).expect("stat").ino();
        std::fs::remove_file(&p).expect("rm");
        let deadline = Instant::now() + Duration::from_secs(30);
        while holds_open(pid, &p) {
            assert!(
                Instant::now() < deadline,
                "the agent never closed the deleted file:\n{}",
                rig.agent_stderr()
            );
            std::thread::yield_now();
        }
        let mut content = format!("{header}\n");
        let mut new_lines = vec![header.clone()];
        for s in 0..500 {
            let l = line(&format!("ino2.{attempt}"), s);
            content.push_str(&l);
            content.push('\n');
            new_lines.push(l);
        }
        reused_running = create_on_inode(&p, ino, content.as_bytes(), Duration::from_secs(2));
        if !reused_running {
            // Not reused: still a deleted-and-recreated file at the same path.
            std::fs::write(&p, &content).expect("write");
        }
        written.extend(new_lines);
        assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
        if reused_running {
            break;
        }
        eprintln!("attempt {attempt}: the freed inode went to another file; again");
    }

    // While stopped.
    rig.stop_agent();
    let ino = std::fs::metadata(&p).expect("stat").ino();
    std::fs::remove_file(&p).expect("rm");
    let mut content = format!("{header}\n");
    let mut new_lines = vec![header.clone()];
    // More bytes than the old file had: resuming at the old offset would skip real lines.
    for s in 0..900 {
        let l = line("ino3", s);
        content.push_str(&l);
        content.push('\n');
        new_lines.push(l);
    }
    let reused_stopped = create_on_inode(&p, ino, content.as_bytes(), Duration::from_secs(5));
    if !reused_stopped {
        std::fs::write(&p, &content).expect("write");
    }
    written.extend(new_lines);
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(30));
    assert!(
        reused_running && reused_stopped,
        "the file system did not hand the inode out again (running: {reused_running}, stopped: {reused_stopped}); the case was not exercised"
    );
}

/// Case 4: Two files whose first line (and more: the first 1 KiB fingerprint window) is the same.
#[test]
fn two_files_with_the_same_first_line() {
    let mut rig = Rig::new("same-first", None, true);
    rig.configure_agent(&[input("app", "*.log", "")], "");
    let mut written = Vec::new();
    let header = format!("same-first-line-{}", "h".repeat(1100));
    let mut files: Vec<File> = ["a.log", "b.log"]
        .iter()
        .map(|n| append_file(&rig.log(n)))
        .collect();
    for f in &mut files {
        f.write_all(format!("{header}\n").as_bytes()).expect("w");
        written.push(header.clone());
    }
    rig.start_agent();
    for round in 0..5 {
        for (i, f) in files.iter_mut().enumerate() {
            let tag = if i == 0 { "sa" } else { "sb" };
            write_lines(f, tag, round * 200..(round + 1) * 200, &mut written);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A restart must resume both, each at its own offset.
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    rig.stop_agent();
    for (i, f) in files.iter_mut().enumerate() {
        let tag = if i == 0 { "sa" } else { "sb" };
        write_lines(f, tag, 1000..1100, &mut written);
    }
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(30));
}

/// Case 5: Empty and tiny files: a file that stays empty, one that is empty at first and gets lines
/// later, a 1-byte file without a newline (shipped as is after `line_flush_timeout`; its newline
/// arrives later, while the agent is stopped), a line without its newline that gets it in time
/// (one line), one that gets it after its flush timeout (the part shipped, then the next line:
/// no empty record), and a 2-byte file that grows across an agent restart.
#[test]
fn empty_and_tiny_files() {
    let mut rig = Rig::new("tiny", None, true);
    rig.configure_agent(
        &[
            input(
                "late",
                "late-newline.log",
                "      line_flush_timeout: 30s\n",
            ),
            input("app", "[!l]*.log", "      line_flush_timeout: 1s\n"),
        ],
        "",
    );
    let mut written: Vec<String> = Vec::new();
    std::fs::write(rig.log("empty.log"), b"").expect("w");
    std::fs::write(rig.log("empty-then-lines.log"), b"").expect("w");
    std::fs::write(rig.log("one-byte.log"), b"x").expect("w");
    written.push("x".into());
    std::fs::write(rig.log("two.log"), b"y\n").expect("w");
    written.push("y".into());
    let mut late = append_file(&rig.log("late-newline.log"));
    late.write_all(b"no-newline-yet").expect("w");
    rig.start_agent();
    // The 1-byte file is shipped once its flush timeout passes; the two-byte one at once.
    assert!(rig.wait_stored(2, Duration::from_secs(20)));
    let mut f = append_file(&rig.log("empty-then-lines.log"));
    write_lines(&mut f, "etl", 0..100, &mut written);
    late.write_all(b"-and-now-it-has-one\n").expect("w");
    written.push("no-newline-yet-and-now-it-has-one".into());
    assert!(rig.wait_stored(written.len(), Duration::from_secs(20)));
    // A line shipped as is after its flush timeout, whose newline comes later: the newline
    // ends the shipped line, it is not an empty line of its own.
    let mut gap = append_file(&rig.log("newline-after-timeout.log"));
    gap.write_all(b"shipped-before-its-newline").expect("w");
    written.push("shipped-before-its-newline".into());
    assert!(rig.wait_stored(written.len(), Duration::from_secs(20)));
    gap.write_all(b"\nafter-the-late-newline\n").expect("w");
    written.push("after-the-late-newline".into());
    assert!(rig.wait_stored(written.len(), Duration::from_secs(20)));
    rig.stop_agent();
    let mut two = append_file(&rig.log("two.log"));
    write_lines(&mut two, "two", 0..50, &mut written);
    write_lines(&mut f, "etl", 100..150, &mut written);
    // The 1-byte file gets its newline while the agent is stopped: resumed behind the shipped
    // "x", the agent must know it is in the middle of a line.
    let mut one = append_file(&rig.log("one-byte.log"));
    one.write_all(b"\nz\n").expect("w");
    written.push("z".into());
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(30));
}

/// Case 6: copytruncate: `cp app.log app.log.N`, a line `L` written to `app.log` after the copy,
/// then `truncate app.log`, while the writer keeps its handle (O_APPEND) and goes on writing.
///
/// What "exactly once" can mean here: only `app.log` is tailed (tailing the copies too would
/// store everything twice: the copy is another file holding the same lines). `L` is in the
/// original only (the copy was taken before it), so it can be stored only if the agent read it
/// before the truncation erased it; no tailer can do better. Rounds 0-2 make that deterministic
/// by waiting until `L` is stored before truncating, and assert that every line, `L` included,
/// is stored exactly once. Rounds 3-5 truncate at once: each such `L` must be stored at most
/// once (the agent may count it as unread bytes, but only if a stat saw it before the
/// truncation, so that is not asserted), and every other line exactly once.
#[test]
fn copytruncate_with_a_line_written_between_copy_and_truncate() {
    let mut rig = Rig::new("copytruncate", None, true);
    rig.configure_agent(&[input("app", "app.log", "")], "");
    rig.start_agent();
    let p = rig.log("app.log");
    let mut f = append_file(&p);
    let mut written = Vec::new();
    let mut racy = Vec::new();
    for round in 0..6 {
        write_lines(&mut f, &format!("ct{round}"), 0..400, &mut written);
        assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
        std::fs::copy(&p, rig.log(&format!("app.log.{round}"))).expect("copy");
        let l = format!("between-copy-and-truncate-{round}");
        f.write_all(format!("{l}\n").as_bytes()).expect("w");
        if round < 3 {
            written.push(l);
            assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
        } else {
            racy.push(l);
        }
        f.set_len(0).expect("truncate");
        // The writer keeps appending (O_APPEND: at the new end).
    }
    write_lines(&mut f, "ct-after", 0..200, &mut written);
    let expected_min = written.len();
    rig.wait_stored(expected_min, Duration::from_secs(30));
    rig.stop_agent();
    let got = rig.consume();
    let log = rig.agent_stderr();
    let mut strict = Vec::new();
    for l in &racy {
        let n = got.iter().filter(|g| *g == l).count();
        assert!(n <= 1, "{l} stored {n} times");
        if n == 1 {
            strict.push(l.clone());
        }
    }
    eprintln!(
        "copytruncate: {} of {} lines written just before an immediate truncation were read in time",
        strict.len(),
        racy.len()
    );
    let mut expected = written;
    expected.extend(strict);
    assert_exactly_once(&expected, &got, &log);
}

/// Case 7: Truncation while the agent is stopped: one file truncated and rewritten shorter than the
/// checkpoint's offset, one rewritten longer (only the first bytes tell it changed).
#[test]
fn truncation_while_the_agent_is_stopped() {
    let mut rig = Rig::new("trunc-stopped", None, true);
    rig.configure_agent(&[input("app", "*.log", "")], "");
    let mut written = Vec::new();
    let mut short = append_file(&rig.log("short.log"));
    let mut long = append_file(&rig.log("long.log"));
    write_lines(&mut short, "s1", 0..300, &mut written);
    write_lines(&mut long, "l1", 0..300, &mut written);
    rig.start_agent();
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    rig.stop_agent();
    short.set_len(0).expect("truncate");
    long.set_len(0).expect("truncate");
    write_lines(&mut short, "s2", 0..20, &mut written);
    write_lines(&mut long, "l2", 0..900, &mut written);
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(30));
}

/// Case 8: kill -9 of the agent at random moments, seven times, with the writer (rotating) running
/// the whole time.
#[test]
fn agent_kill9_at_random_moments_while_writing() {
    use rand::Rng;
    let mut rig = Rig::new("kill9-loop", None, true);
    rig.configure_agent(&[input("app", "app.log*", "")], "");
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "k9",
        WriterPlan {
            chunk: 20,
            pause: Duration::from_millis(4),
            rotate_every: 5000,
            total: usize::MAX,
        },
    );
    let mut rng = rand::rng();
    for i in 0..7 {
        let up = rng.random_range(200..1500);
        let down = if rng.random_bool(0.5) {
            rng.random_range(0..500)
        } else {
            0
        };
        // Printed so that a failing run can be replayed by hand.
        eprintln!("kill {i}: after {up} ms up, {down} ms down");
        std::thread::sleep(Duration::from_millis(up));
        rig.kill_agent();
        std::thread::sleep(Duration::from_millis(down));
        rig.start_agent();
    }
    let written = writer.join();
    eprintln!(
        "kill9 loop: {} lines written, {} agent starts",
        written.len(),
        rig.agent_starts
    );
    rig.finish(&written, Duration::from_secs(60));
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Case 9: The collector killed (-9) mid-stream and down for 30 s while the writer keeps writing
/// more than the agent's buffer: the agent stops reading (the file is the buffer), its RSS stays
/// bounded, and once the collector is back nothing is lost and nothing duplicated.
#[test]
fn collector_down_30s_with_bounded_agent_memory() {
    let mut rig = Rig::new("outage", None, true);
    rig.configure_agent(&[input("app", "app.log*", "")], "");
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "out",
        WriterPlan {
            chunk: 150,
            pause: Duration::from_millis(15),
            rotate_every: 40_000,
            total: usize::MAX,
        },
    );
    writer.wait_written(5_000);
    rig.kill_collector();
    let pid = rig.agent.as_ref().and_then(|s| s.pid()).expect("agent pid");
    let down_at = Instant::now();
    let mut max_rss = 0;
    while down_at.elapsed() < Duration::from_secs(30) {
        max_rss = max_rss.max(rss_kib(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let during_outage = writer.written();
    rig.start_collector();
    writer.wait_written(during_outage + 3_000);
    let written = writer.join();
    let hwm = rss_kib(pid, "VmHWM:").unwrap_or(0);
    let bytes: usize = written.iter().map(|l| l.len() + 1).sum();
    eprintln!(
        "outage: {} lines written ({} MiB), agent max VmRSS {} KiB, VmHWM {} KiB",
        written.len(),
        bytes >> 20,
        max_rss,
        hwm
    );
    assert!(
        bytes > 12 << 20,
        "the writer must outrun the agent's 8 MiB buffer for this test to mean anything"
    );
    assert!(hwm < 64 << 10, "agent VmHWM {hwm} KiB over 64 MiB");
    // The agent's retry backoff is capped at 30 s, so it may take that long to notice.
    rig.finish(&written, Duration::from_secs(90));
}

/// Plus: kill -9 of the collector mid-stream and an immediate restart, three times: batches
/// stored but not acknowledged are sent again, and the collector's origin dedup (rebuilt from
/// the data after the crash) drops them.
#[test]
fn collector_kill9_mid_stream_no_duplicates_after_restart() {
    let mut rig = Rig::new("collector-kill9", None, true);
    rig.configure_agent(
        &[input("app", "app.log*", "")],
        "  batch:\n    max_bytes: 8KiB\n    linger: 10ms\n",
    );
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "ck",
        WriterPlan {
            chunk: 20,
            pause: Duration::from_millis(3),
            rotate_every: 6000,
            total: usize::MAX,
        },
    );
    for i in 1..=3 {
        writer.wait_written(i * 4_000);
        rig.kill_collector();
        rig.start_collector();
    }
    let written = writer.join();
    rig.finish(&written, Duration::from_secs(60));
}

/// Issue 20: with many files each batch is small, and the agent sends the batches of several
/// files in one request (the collector takes a body of batches back to back) rather than a
/// request each. Every line must still be stored exactly once: with the collector killed -9
/// while such requests are in flight (the agent then sends each of their batches on its own,
/// some already stored: the collector deduplicates them), and the agent killed -9 and
/// restarted from its checkpoint. The kill moments come from a seed, printed.
#[test]
fn many_files_share_requests_and_every_line_is_stored_once_across_kills() {
    const FILES: usize = 600;
    let mut rig = Rig::new("coalesced", None, true);
    let mut written = Vec::new();
    let mut files: Vec<File> = (0..FILES)
        .map(|i| append_file(&rig.log(&format!("f{i:03}.log"))))
        .collect();
    for (i, f) in files.iter_mut().enumerate() {
        write_lines(f, &format!("f{i:03}"), 0..40, &mut written);
    }
    // Default batch, linger and in-flight settings: what a user runs.
    rig.configure_agent(&[input("many", "f*.log", "")], "");
    rig.start_agent();
    assert!(
        rig.wait_stored(written.len(), Duration::from_secs(60)),
        "the first round"
    );
    let requests = rig.collector_metric("ferry_collector_ack_seconds_count", "");
    assert!(
        requests > 0.0 && requests < (FILES / 3) as f64,
        "{FILES} files' first batches took {requests} requests: not sent together"
    );
    // A second round, the collector killed while it ships, then the agent — each at a moment
    // drawn from the printed seed.
    let mut rng = util::XorShift(util::seed());
    let mut ms = |lo: u64, hi: u64| Duration::from_millis(lo + rng.next() % (hi - lo));
    let (ship, down, settle) = (ms(5, 80), ms(50, 500), ms(10, 120));
    eprintln!(
        "collector killed {ship:?} into the round, down {down:?}; agent killed {settle:?} after the third writes"
    );
    for (i, f) in files.iter_mut().enumerate() {
        write_lines(f, &format!("f{i:03}"), 40..80, &mut written);
    }
    std::thread::sleep(ship);
    rig.kill_collector();
    std::thread::sleep(down);
    rig.start_collector();
    for (i, f) in files.iter_mut().enumerate().step_by(3) {
        write_lines(f, &format!("f{i:03}"), 80..90, &mut written);
    }
    std::thread::sleep(settle);
    rig.kill_agent();
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(90));
}

/// Case 10: A 10 MiB line without a newline, then its newline and more lines: stored cut at
/// `max_line_bytes` and flagged truncated, and the file keeps flowing.
#[test]
fn ten_mib_line_is_truncated_flagged_and_the_file_keeps_flowing() {
    let mut rig = Rig::new("long-line", None, true);
    rig.configure_agent(
        &[input(
            "app",
            "app.log",
            "      max_line_bytes: 64KiB\n      line_flush_timeout: 10s\n",
        )],
        "",
    );
    rig.start_agent();
    let mut f = append_file(&rig.log("app.log"));
    let mut before = Vec::new();
    write_lines(&mut f, "before", 0..100, &mut before);
    let chunk = vec![b'x'; 1 << 20];
    f.write_all(b"huge-").expect("w");
    for _ in 0..10 {
        f.write_all(&chunk).expect("w");
        std::thread::sleep(Duration::from_millis(50));
    }
    f.write_all(b"\n").expect("w");
    let mut after = Vec::new();
    write_lines(&mut f, "after", 0..100, &mut after);
    let total = before.len() + 1 + after.len();
    rig.wait_stored(total, Duration::from_secs(30));
    rig.stop_agent();
    let recs = rig.consume_json();
    let truncated: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["truncated"] == true).collect();
    assert_eq!(truncated.len(), 1, "exactly one record flagged truncated");
    let cut = truncated[0]["line"].as_str().expect("line");
    assert_eq!(cut.len(), 64 << 10, "cut at max_line_bytes");
    assert!(cut.starts_with("huge-xxx"));
    // Counted: the agent logs its totals when it stops (it has no metrics port).
    assert_eq!(rig.agent_total("lines_truncated"), 1);
    let lines: Vec<String> = recs
        .iter()
        .filter(|r| r["truncated"] != true)
        .map(|r| r["line"].as_str().expect("line").to_owned())
        .collect();
    let mut expected = before;
    expected.extend(after);
    assert_exactly_once(&expected, &lines, &rig.agent_stderr());
}

fn multiline_input(glob: &str) -> String {
    input(
        "ml",
        glob,
        "      line_flush_timeout: 5s\n      multiline:\n        start_pattern: '^evt-'\n        timeout: 2s\n",
    )
}

/// Case 11: A multiline stack trace written in pieces with pauses (split mid-line and across reads)
/// arrives as one record.
#[test]
fn multiline_trace_split_across_reads_is_one_record() {
    let mut rig = Rig::new("multiline-split", None, true);
    rig.configure_agent(&[multiline_input("app.log")], "");
    rig.start_agent();
    let mut f = append_file(&rig.log("app.log"));
    let pieces: [&[u8]; 6] = [
        b"evt-1 java.lang.IllegalStateException: bo",
        b"om\n\tat com.example.A.run(A.ja",
        b"va:10)\n",
        b"\tat com.example.B.call(B.java:20)\n\tat com.exa",
        b"mple.C.main(C.java:30)\n",
        b"evt-2 next event\n",
    ];
    for p in pieces {
        f.write_all(p).expect("w");
        std::thread::sleep(Duration::from_millis(400));
    }
    // evt-2 is followed by nothing: it is shipped after the multiline timeout.
    rig.wait_stored(2, Duration::from_secs(20));
    rig.stop_agent();
    let lines: Vec<String> = rig
        .consume_json()
        .iter()
        .map(|r| r["line"].as_str().expect("line").to_owned())
        .collect();
    let expected = vec![
        "evt-1 java.lang.IllegalStateException: boom\n\tat com.example.A.run(A.java:10)\n\tat com.example.B.call(B.java:20)\n\tat com.example.C.main(C.java:30)".to_owned(),
        "evt-2 next event".to_owned(),
    ];
    assert_exactly_once(&expected, &lines, &rig.agent_stderr());
}

/// Case 12: The last multiline event, with no line after it, is shipped once its timeout passes —
/// while the agent keeps running (not only at shutdown).
#[test]
fn last_multiline_event_is_flushed_after_the_timeout() {
    let mut rig = Rig::new("multiline-last", None, true);
    rig.configure_agent(&[multiline_input("app.log")], "");
    rig.start_agent();
    let mut f = append_file(&rig.log("app.log"));
    f.write_all(b"evt-1 first\n\tat x(X.java:1)\nevt-2 last\n\tat y(Y.java:2)\n\tat z(Z.java:3)\n")
        .expect("w");
    let written_at = Instant::now();
    assert!(
        rig.wait_stored(2, Duration::from_secs(20)),
        "the last event was not shipped while the agent ran"
    );
    let waited = written_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "shipped after {waited:?}, before its 2 s timeout could have passed"
    );
    rig.stop_agent();
    let lines: Vec<String> = rig
        .consume_json()
        .iter()
        .map(|r| r["line"].as_str().expect("line").to_owned())
        .collect();
    let expected = vec![
        "evt-1 first\n\tat x(X.java:1)".to_owned(),
        "evt-2 last\n\tat y(Y.java:2)\n\tat z(Z.java:3)".to_owned(),
    ];
    assert_exactly_once(&expected, &lines, &rig.agent_stderr());
}

/// Several batches of one file in flight at once (4 KiB batches, up to 8 per file): the
/// collector stores them in file order or refuses the one that overtook its predecessor
/// (`ferry-after`, 409) and the agent sends it again. Through a kill -9 of the agent and one of
/// the collector, every line is stored exactly once and, per file, in the order written.
#[test]
fn pipelined_batches_of_one_file_stay_in_file_order() {
    const ROTATE: usize = 15_000;
    let mut rig = Rig::new("pipelined", None, true);
    rig.configure_agent(
        &[input("app", "app.log*", "")],
        "  max_in_flight: 16\n  max_in_flight_per_file: 8\n  batch:\n    max_bytes: 4KiB\n    linger: 5ms\n",
    );
    rig.start_agent();
    let writer = Writer::start(
        rig.logs(),
        "pl",
        WriterPlan {
            chunk: 100,
            pause: Duration::from_millis(2),
            rotate_every: ROTATE,
            total: 45_000,
        },
    );
    writer.wait_written(10_000);
    rig.kill_agent();
    rig.start_agent();
    writer.wait_written(25_000);
    rig.kill_collector();
    std::thread::sleep(Duration::from_millis(300));
    rig.start_collector();
    let written = writer.join();
    rig.wait_stored(written.len(), Duration::from_secs(90));
    let refused = rig.collector_metric("ferry_store_out_of_order_total", "");
    rig.stop_agent();
    let got = rig.consume();
    assert_exactly_once(&written, &got, &rig.agent_stderr());
    // Each file's lines in the order written. A file holds ROTATE lines plus the one the
    // writer adds through its old handle after the rename.
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    for l in &got {
        let seq: usize = l
            .split('-')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {l:?}"));
        let file = seq / (ROTATE + 1);
        if let Some(prev) = last.insert(file, seq) {
            assert!(
                seq > prev,
                "file {file}: line {seq} stored after line {prev}"
            );
        }
    }
    eprintln!(
        "pipelined: {} lines, {} batches refused as out of order by the restarted collector",
        got.len(),
        refused
    );
}

/// Starts the rig's agent under `prlimit --nofile=SOFT:HARD` (util-linux), as a shell's
/// `ulimit -n` would: `prlimit` sets the limit and execs the agent, so the pid is the agent's.
fn start_agent_with_nofile(rig: &mut Rig, soft: u64, hard: u64) {
    assert!(rig.agent.is_none(), "agent already running");
    rig.agent_starts += 1;
    let stderr_path = rig.dir.join("agent.stderr");
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .expect("stderr file");
    let child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg(util::ferry_bin())
        .args(["agent", "--config", &rig.agent_config.display().to_string()])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn prlimit (util-linux) with ferry agent");
    rig.agent = Some(Service {
        proc: util::Proc {
            name: "agent".into(),
            child: Some(child),
            stderr_path,
        },
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    });
}

/// Descriptors process `pid` holds now.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Regression (issue 12): under the common default `ulimit -n 1024`, an agent tailing 2,000
/// files opened 1,024 of them, then could not open a socket to the collector: nothing was
/// shipped, and the log filled with a WARN per file per attempt. Now: 5,000 files under a soft
/// limit of 512 and a hard one of 1,024 (raised at start), every line stored exactly once, the
/// agent's descriptors stay under the limit, files whose handle was given back are reopened
/// when they grow, one renamed away while closed (to a name the glob does not match) is found
/// and read to its end, and the log stays short.
#[test]
fn five_thousand_files_within_a_1024_descriptor_limit() {
    const FILES: usize = 5_000;
    const HARD: u64 = 1024;
    let mut rig = Rig::new("fd-limit", None, true);
    let mut written = Vec::new();
    for i in 0..FILES {
        let mut f = append_file(&rig.log(&format!("f{i:04}.log")));
        write_lines(&mut f, &format!("f{i:04}"), 0..2, &mut written);
    }
    rig.configure_agent(&[input("many", "f*.log", "")], "");
    start_agent_with_nofile(&mut rig, 512, HARD);
    let pid = rig.agent.as_ref().and_then(|a| a.pid()).expect("agent pid");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(fd_count(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    assert!(
        rig.wait_stored(written.len(), Duration::from_secs(120)),
        "the first lines of every file"
    );
    // A file read long ago gave its handle back (the budget is far below 5,000): it grows,
    // is renamed away by a rotation (its writer adds one more line to it), and a new file takes
    // its name.
    let rotated = rig.log("f0007.log");
    assert!(
        !holds_open(pid, &rotated),
        "f0007.log should have given its handle back"
    );
    let mut f = append_file(&rotated);
    write_lines(&mut f, "f0007", 2..3, &mut written);
    std::fs::rename(&rotated, rig.log("f0007.log.1")).expect("rotate");
    write_lines(&mut f, "f0007", 3..4, &mut written);
    drop(f);
    let mut f = append_file(&rotated);
    write_lines(&mut f, "f0007-new", 0..2, &mut written);
    // Many closed files grow: each is reopened by path.
    for i in (100..FILES).step_by(17) {
        let mut f = append_file(&rig.log(&format!("f{i:04}.log")));
        write_lines(&mut f, &format!("f{i:04}"), 2..3, &mut written);
    }
    rig.finish(&written, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("fd sampler");
    let peak = peak.load(Ordering::Relaxed);
    let log = strip_ansi(&rig.agent_stderr());
    assert!(
        peak < HARD as usize,
        "agent held {peak} descriptors, limit {HARD}"
    );
    // The soft limit was raised and the budget came from the raised one: more handles than
    // the soft limit it started with were in use at some point.
    assert!(
        log.contains("open-files limit") && log.contains("soft=Some(1024)"),
        "{log}"
    );
    assert!(peak > 512, "peak {peak}: the raised limit was not used");
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    let lines = log.lines().count();
    eprintln!(
        "{FILES} files, {} lines stored once each; peak {peak} descriptors (limit {HARD}); {lines} log lines",
        written.len()
    );
    assert!(
        warns == 0 && lines <= 30,
        "{lines} log lines, {warns} warnings:\n{log}"
    );
}

/// The sum of an agent metric's samples (`name{...labels matching filter} value`).
fn metric_sum(addr: SocketAddr, name: &str, filter: &str) -> f64 {
    let Ok((200, body)) = http_get(addr, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Compressed rotations matched by the glob (`app.log*` also matches `app.log.2.gz`) are
/// recognised by their magic bytes, whatever their name, skipped and counted: never shipped as
/// garbage lines. Made with the real tools: gzip, zstd, bzip2, xz (one renamed to a name
/// without an extension).
#[test]
fn compressed_rotations_are_skipped_and_counted() {
    let mut rig = Rig::new("compressed", None, true);
    let mut written = Vec::new();
    write_lines(
        &mut append_file(&rig.log("app.log")),
        "cur",
        0..50,
        &mut written,
    );
    write_lines(
        &mut append_file(&rig.log("app.log.1")),
        "rot",
        0..50,
        &mut written,
    );
    let mut unused = Vec::new();
    for (i, (tool, args)) in [
        ("gzip", &[][..]),
        ("zstd", &["-q", "--rm"][..]),
        ("bzip2", &[][..]),
        ("xz", &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let p = rig.log(&format!("app.log.{}", i + 2));
        write_lines(&mut append_file(&p), tool, 0..200, &mut unused);
        let status = std::process::Command::new(tool)
            .args(args)
            .arg(&p)
            .status()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(status.success(), "{tool} failed");
    }
    std::fs::rename(rig.log("app.log.5.xz"), rig.log("app.log.5")).expect("rename");
    rig.configure_agent(&[input("app", "app.log*", "")], "");
    let metrics = free_addr();
    let config = rig.agent_config.display().to_string();
    rig.agent = Some(Service::start(
        "agent",
        &rig.dir,
        &[
            "agent",
            "--config",
            &config,
            "--metrics-listen",
            &metrics.to_string(),
        ],
        metrics,
    ));
    let skipped = || {
        metric_sum(
            metrics,
            "ferry_agent_files_skipped_total",
            "reason=\"compressed\"",
        )
    };
    util::wait_until(
        Duration::from_secs(30),
        "4 compressed files skipped",
        || skipped() >= 4.0,
    );
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    // Several rescans later (every 250 ms), still counted once each.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(skipped(), 4.0);
    for format in ["gzip", "zstd", "bzip2", "xz"] {
        assert_eq!(
            metric_sum(
                metrics,
                "ferry_agent_files_skipped_total",
                &format!("format=\"{format}\"")
            ),
            1.0,
            "{format}"
        );
    }
    rig.finish(&written, Duration::from_secs(30));
}

/// Shifts `app.log.N` to `app.log.N+1` (oldest first), as logrotate does before a rotation.
fn shift_rotated(logs: &Path) {
    let mut n = 1;
    while logs.join(format!("app.log.{n}")).exists() {
        n += 1;
    }
    for k in (1..n).rev() {
        std::fs::rename(
            logs.join(format!("app.log.{k}")),
            logs.join(format!("app.log.{}", k + 1)),
        )
        .expect("shift rotated file");
    }
}

/// The scenario of issue 12, through real processes: an application writes 300,000 numbered
/// lines to `logs/app.log` while logrotate alternates `rename` (create) and `copytruncate`
/// every 40,000 lines (4 renames, 3 copytruncates), and the agent is killed with SIGKILL now
/// and then. Before: with `app.log*` every copy was read again from its first byte (120,000
/// duplicates). Now the copy is recognised (its first line and the bytes before where the
/// original stopped) and read on from there under the original's origin.
///
/// With the glob `app.log*`: every line stored exactly once. With `app.log` alone: no line
/// stored twice, and lines are missing only where no tailer can read them from a matched path
/// — the tail of a file renamed away while the agent was down (the rename rotation, with the
/// agent killed between the last read and the rename) — their number is printed.
fn logrotate_alternating_rename_and_copytruncate_with_kill9(glob: &str, strict: bool) {
    const TOTAL: usize = 300_000;
    const EVERY: usize = 40_000;
    const CHUNK: usize = 1_000;
    let mut rig = Rig::new("logrotate-mix", None, true);
    rig.configure_agent(&[input("app", glob, "")], "");
    rig.start_agent();
    let logs = rig.logs();
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let writer = std::thread::spawn(move || {
        let path = logs.join("app.log");
        let mut file = append_file(&path);
        let mut written = Vec::with_capacity(TOTAL);
        let mut rotations = 0;
        while written.len() < TOTAL {
            let from = written.len();
            write_lines(&mut file, "lr", from..from + CHUNK, &mut written);
            p.store(written.len(), Ordering::Relaxed);
            if written.len() % EVERY == 0 && written.len() < TOTAL {
                rotations += 1;
                shift_rotated(&logs);
                if rotations % 2 == 1 {
                    std::fs::rename(&path, logs.join("app.log.1")).expect("rename");
                    file = append_file(&path);
                } else {
                    std::fs::copy(&path, logs.join("app.log.1")).expect("copy");
                    file.set_len(0).expect("truncate");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    });
    let mut rng = 0x9e37_79b9_u64;
    let mut kills = 0;
    while progress.load(Ordering::Relaxed) < TOTAL {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(700 + rng % 1500));
        if progress.load(Ordering::Relaxed) >= TOTAL {
            break;
        }
        rig.kill_agent();
        rig.start_agent();
        kills += 1;
    }
    let written = writer.join().expect("writer");
    rig.wait_stored(written.len(), Duration::from_secs(90));
    rig.stop_agent();
    let got = rig.consume();
    let mut seen = std::collections::HashSet::with_capacity(got.len());
    let dups: Vec<&String> = got.iter().filter(|l| !seen.insert(l.as_str())).collect();
    let missing = written
        .iter()
        .filter(|l| !seen.contains(l.as_str()))
        .count();
    eprintln!(
        "glob {glob}: {} written, {} stored, {} duplicates, {missing} missing, {kills} kills",
        written.len(),
        got.len(),
        dups.len()
    );
    if strict {
        assert_exactly_once(&written, &got, &rig.agent_stderr());
    } else {
        assert!(
            dups.is_empty(),
            "{} duplicates, e.g. {:?}",
            dups.len(),
            dups.first()
        );
    }
}

#[test]
fn logrotate_rename_and_copytruncate_with_kill9_wide_glob() {
    logrotate_alternating_rename_and_copytruncate_with_kill9("app.log*", true);
}

#[test]
fn logrotate_rename_and_copytruncate_with_kill9_narrow_glob() {
    logrotate_alternating_rename_and_copytruncate_with_kill9("app.log", true);
}

/// Two files whose first 10 lines are the same header, then different content: both stored
/// whole. The second one appears while the first is tracked and, while it holds only the
/// header, looks like a copy of the first (held back); once it differs it is read as itself.
#[test]
fn same_ten_line_header_then_different_content() {
    let mut rig = Rig::new("same-header", None, true);
    let header: String = (0..10).map(|i| format!("# header line {i}\n")).collect();
    let mut written: Vec<String> = Vec::new();
    let mut a = append_file(&rig.log("a.log"));
    a.write_all(header.as_bytes()).expect("header");
    written.extend(header.lines().map(str::to_owned));
    write_lines(&mut a, "a", 0..100, &mut written);
    rig.configure_agent(&[input("app", "*.log*", "")], "");
    rig.start_agent();
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    let mut b = append_file(&rig.log("b.log"));
    b.write_all(header.as_bytes()).expect("header");
    written.extend(header.lines().map(str::to_owned));
    std::thread::sleep(Duration::from_millis(300));
    write_lines(&mut b, "b", 0..100, &mut written);
    rig.finish(&written, Duration::from_secs(30));
}

/// Bytes the records stand for in the files: a line with its newline, except the first part
/// of a line a truncation cut while the agent was reading it (shipped without a newline; the
/// rest comes from the copy as a record of its own).
fn stored_bytes(written: &[String], got: &[String]) -> u64 {
    let whole: std::collections::HashSet<&str> = written.iter().map(String::as_str).collect();
    got.iter()
        .map(|r| {
            let cut =
                !whole.contains(r.as_str()) && written.iter().any(|l| l.starts_with(r.as_str()));
            r.len() as u64 + u64::from(!cut)
        })
        .sum()
}

/// Like [`assert_exactly_once`], where a line a truncation cut while the agent was reading it
/// may be stored as two records (its first part, then the rest read on from the copy).
fn assert_exactly_once_allowing_cuts(expected: &[String], got: &[String], log: &str) {
    let mut got: Vec<String> = got.to_vec();
    let have: std::collections::HashSet<String> = got.iter().cloned().collect();
    for l in expected.iter().filter(|l| !have.contains(*l)) {
        let cut = got
            .iter()
            .position(|r| r.len() < l.len() && l.starts_with(r.as_str()));
        if let Some(i) = cut {
            let rest = l[got[i].len()..].to_owned();
            if let Some(j) = got.iter().position(|r| *r == rest) {
                got[i] = l.clone();
                got.remove(j);
            }
        }
    }
    assert_exactly_once(expected, &got, log);
}

/// The agent with `--metrics-listen` (for its gauges); returns the metrics address.
fn start_agent_with_metrics(rig: &mut Rig) -> SocketAddr {
    assert!(rig.agent.is_none(), "agent already running");
    rig.agent_starts += 1;
    let metrics = free_addr();
    let config = rig.agent_config.display().to_string();
    rig.agent = Some(Service::start(
        "agent",
        &rig.dir,
        &[
            "agent",
            "--config",
            &config,
            "--metrics-listen",
            &metrics.to_string(),
        ],
        metrics,
    ));
    metrics
}

/// SIGSTOP / SIGCONT of the collector (it stops answering; the agent's buffer fills).
fn signal_collector(rig: &Rig, sig: &str) {
    let pid = rig.collector.as_ref().and_then(|c| c.pid()).expect("pid");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig}");
}

/// The agent's checkpoint as JSON (null while there is none).
fn agent_checkpoint(rig: &Rig) -> serde_json::Value {
    std::fs::read_to_string(rig.dir.join("agent-data/checkpoints.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Bytes the agent counted as unread, over all its runs.
fn unread_in_log(rig: &Rig) -> u64 {
    unread_bytes_counted(
        &rig.agent_stderr(),
        &rig.dir.join("agent-data/checkpoints.json"),
    )
}

/// `app.log` holds `a` (stored) and `b` (seen by the agent, most of it not read: the
/// collector is stopped and the agent's buffer is 2 KiB); it is copied aside, truncated and
/// gets `c`; the agent's checkpoint records the truncation with the old content's print; the
/// agent is killed. Returns (lines written, the copy's path).
fn truncated_before_the_copy_appears(rig: &mut Rig, tag: &str) -> (Vec<String>, PathBuf) {
    let metrics = start_agent_with_metrics(rig);
    let p = rig.log("app.log");
    let mut f = append_file(&p);
    let mut written = Vec::new();
    write_lines(&mut f, &format!("{tag}-a"), 0..50, &mut written);
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    signal_collector(rig, "-STOP");
    write_lines(&mut f, &format!("{tag}-b"), 0..200, &mut written);
    let size = f.metadata().expect("meta").len() as f64;
    let label = format!("path=\"{}\"", p.display());
    util::wait_until(
        Duration::from_secs(30),
        "the agent to see app.log's size",
        || metric_sum(metrics, "ferry_agent_file_size_bytes", &label) == size,
    );
    let copy = rig.dir.join("app.log.copy");
    std::fs::copy(&p, &copy).expect("copy aside");
    f.set_len(0).expect("truncate");
    write_lines(&mut f, &format!("{tag}-c"), 0..20, &mut written);
    signal_collector(rig, "-CONT");
    util::wait_until(
        Duration::from_secs(30),
        "the checkpoint to keep the truncated content's print",
        || {
            agent_checkpoint(rig)["files"]
                .as_array()
                .is_some_and(|fs| fs.iter().any(|f| f["pending"].is_array()))
        },
    );
    rig.kill_agent();
    (written, copy)
}

/// rotate_wait, through real processes, glob `app.log` (the copy is never matched): the
/// truncation is seen before its copy exists; the agent is killed and restarted; then the copy
/// appears (`app.log.1`) and is read on from where `app.log` stopped, under its origin. Every
/// byte is stored exactly once (a line the truncation cut while the agent was reading it, as
/// two records), no line twice, nothing counted as unread.
#[test]
fn copy_appearing_after_the_truncation_and_a_restart_is_read_on() {
    let mut rig = Rig::new("late-copy", None, true);
    rig.configure_agent(
        &[input("app", "app.log", "      rotate_wait: 60s\n")],
        "  buffer_bytes: 2KiB\n  batch: {max_bytes: 1KiB}\n",
    );
    let (written, copy) = truncated_before_the_copy_appears(&mut rig, "late");
    rig.start_agent();
    std::thread::sleep(Duration::from_millis(300)); // the copy is not there at start
    std::fs::rename(&copy, rig.log("app.log.1")).expect("copy appears");
    let total: u64 = written.iter().map(|l| l.len() as u64 + 1).sum();
    util::wait_until(Duration::from_secs(30), "every byte stored", || {
        stored_bytes(&written, &rig.consume()) == total
    });
    rig.stop_agent();
    assert_exactly_once_allowing_cuts(&written, &rig.consume(), &rig.agent_stderr());
    assert_eq!(unread_in_log(&rig), 0, "nothing lost");
}

/// rotate_wait passes without a copy: exactly the bytes of `b` that were not read are counted
/// as unread (the rest of `b` and all of `a` and `c` stored once).
#[test]
fn no_copy_within_rotate_wait_counts_exactly_what_was_lost() {
    let mut rig = Rig::new("no-copy", None, true);
    rig.configure_agent(
        &[input("app", "app.log", "      rotate_wait: 2s\n")],
        "  buffer_bytes: 2KiB\n  batch: {max_bytes: 1KiB}\n",
    );
    let (written, _copy) = truncated_before_the_copy_appears(&mut rig, "gone");
    rig.start_agent();
    let total: u64 = written.iter().map(|l| l.len() as u64 + 1).sum();
    util::wait_until(
        Duration::from_secs(30),
        "stored and counted bytes to add up",
        || stored_bytes(&written, &rig.consume()) + unread_in_log(&rig) == total,
    );
    rig.stop_agent();
    let got = rig.consume();
    let mut seen = std::collections::HashSet::new();
    assert!(got.iter().all(|l| seen.insert(l.clone())), "no line twice");
    let lost = unread_in_log(&rig);
    assert!(lost > 0, "some of b was not read before the truncation");
    eprintln!(
        "written {} lines ({total} bytes), stored {}, counted unread {lost} bytes",
        written.len(),
        got.len()
    );
}

/// With the glob `app.log`, a rotation by rename while the agent is stopped: the renamed file
/// is found at start by its dev+inode, its tail past the checkpoint read, then released.
#[test]
fn file_renamed_out_of_a_narrow_glob_while_stopped_is_read_on() {
    let mut rig = Rig::new("renamed-stopped", None, true);
    rig.configure_agent(&[input("app", "app.log", "")], "");
    rig.start_agent();
    let p = rig.log("app.log");
    let mut f = append_file(&p);
    let mut written = Vec::new();
    write_lines(&mut f, "before", 0..300, &mut written);
    assert!(rig.wait_stored(written.len(), Duration::from_secs(30)));
    rig.kill_agent();
    write_lines(&mut f, "while-stopped", 0..300, &mut written);
    std::fs::rename(&p, rig.log("app.log.1")).expect("rotate");
    write_lines(&mut f, "old-handle", 0..5, &mut written);
    let mut g = append_file(&p);
    write_lines(&mut g, "new-file", 0..100, &mut written);
    rig.start_agent();
    rig.finish(&written, Duration::from_secs(30));
}
