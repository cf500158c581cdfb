//! The end-to-end test harness: real `ferry` processes, real files, real ports.
//!
//! - [`Dir`]: a unique temp directory per test, kept on failure for inspection.
//! - [`ferry`]: a `Command` for the `ferry` binary cargo built for this test run.
//! - [`run`]: runs a command to completion; on an unexpected exit status prints the command, its
//!   stdout and stderr.
//! - [`Service`]: a long-running `ferry` process on a free port; waits for `/healthz`, kills the
//!   process on drop, and prints its stderr if the test is failing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Dir {
    dir: Option<tempfile::TempDir>,
}

impl Dir {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-{name}-"))
            .tempdir()
            .expect("create temp dir");
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("dir exists")
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path().join(p)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write file");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test dir kept: {}", d.keep().display());
            }
        }
    }
}

/// The `ferry` binary built for these tests.
pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

pub fn ferry() -> Command {
    let mut c = Command::new(ferry_bin());
    c.env_remove("RUST_LOG");
    c
}

/// Runs `cmd` with `stdin` and returns its output; panics with everything it printed if its exit
/// code is not `expect_code`.
pub fn run(cmd: &mut Command, stdin: &[u8], expect_code: i32) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    if out.status.code() != Some(expect_code) {
        panic!(
            "\n{desc}\nexited with {:?}, expected {expect_code}\n--- stdout\n{}\n--- stderr\n{}\n",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A port nobody listens on right now (the OS may hand it out again, but not soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

/// A long-running ferry process with an HTTP port (collector; agent or processor with
/// `--metrics-listen`): a [`Proc`] that was waited for until `GET /healthz` answered.
pub struct Service {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl std::ops::Deref for Service {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Service {
    /// Starts `ferry ARGS` with stderr to a file in `dir`, and waits until `GET /healthz` on
    /// `addr` answers 200.
    pub fn start(name: &str, dir: &Dir, args: &[&str], addr: SocketAddr) -> Self {
        let mut svc = Service {
            proc: Proc::start(name, dir, args),
            addr,
        };
        svc.wait_healthy(Duration::from_secs(30));
        svc
    }

    /// Starts `ferry ARGS`, whose listener is given port 0 (the OS picks a free one, so no
    /// other process can take it first), finds the address it bound in the new part of its
    /// log — the text after `marker`, up to a space — and waits until it is healthy there.
    /// (A port picked free beforehand can be taken before ferry binds it; a `/healthz` on it
    /// may then even answer, from the other process.)
    #[allow(dead_code)]
    pub fn start_on_port_0(name: &str, dir: &Dir, args: &[&str], marker: &str) -> Self {
        let (proc, addr) = Proc::start_until(name, dir, args, "log its address", |new| {
            strip_ansi(new).lines().find_map(|l| {
                let (_, rest) = l.split_once(marker)?;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            })
        });
        let mut svc = Service { proc, addr };
        svc.wait_healthy(Duration::from_secs(30));
        svc
    }

    /// Starts `ferry ARGS` without waiting for anything: for processes with no HTTP port (the
    /// agent). `addr` is unused.
    pub fn spawn(name: &str, dir: &Dir, args: &[&str]) -> Self {
        Service {
            proc: Proc::start(name, dir, args),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// `ferry agent ARGS`, waiting until its reader has watched and scanned its directories
    /// (`tailing started` in the new part of its log): a line written after this returns is
    /// the agent's to ship, even in a file rotated away before the agent would have looked.
    #[allow(dead_code)]
    pub fn spawn_agent(name: &str, dir: &Dir, args: &[&str]) -> Self {
        let (proc, ()) = Proc::start_until(name, dir, args, "start tailing", |new| {
            new.contains("tailing started").then_some(())
        });
        Service {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            if matches!(http_get(self.addr, "/healthz"), Ok((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} not healthy after {timeout:?}:\n{}",
            self.name,
            self.stderr()
        );
    }
}

/// Starts `ferry collector` on `addr` with its data in `DIR/NAME-data` (kept across restarts
/// with the same name) and, if given, `config` written to `DIR/NAME.yaml`.
pub fn start_collector_on(
    dir: &Dir,
    name: &str,
    config: Option<&str>,
    addr: SocketAddr,
) -> Service {
    let data = dir.join(format!("{name}-data"));
    let mut args: Vec<String> = vec![
        "collector".into(),
        "--listen".into(),
        addr.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    if let Some(yaml) = config {
        let path = dir.write(&format!("{name}.yaml"), yaml);
        args.push("--config".into());
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::start(name, dir, &args, addr)
}

/// A free local address for a service.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A minimal HTTP/1.1 GET (no client library needed to probe readiness): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Starts `ferry collector` on a free port with its data in `dir/NAME-data`, and an optional
/// YAML config written to `dir/NAME.yaml`.
pub fn start_collector(dir: &Dir, name: &str, config: Option<&str>) -> Service {
    start_collector_on(dir, name, config, free_addr())
}

/// Every record of `topic` from its beginning, as the JSON objects `ferry consume --format json`
/// prints (it stops after 2 s without a new record).
pub fn consume_json(url: &str, topic: &str) -> Vec<serde_json::Value> {
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            url,
            topic,
            "--from-beginning",
            "--idle-timeout",
            "2s",
            "--format",
            "json",
        ]),
        b"",
        0,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Runs `ferry produce` with `lines` on stdin; panics unless all are acknowledged.
pub fn produce(url: &str, topic: &str, lines: &str) {
    run(
        ferry().args(["produce", "--collector", url, topic]),
        lines.as_bytes(),
        0,
    );
}

/// A long-running process that is not an HTTP service (agent, processor): stderr to a file,
/// killed on drop, stderr printed if the test fails.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn start(name: &str, dir: &Dir, args: &[&str]) -> Self {
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        let child = ferry()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ferry");
        Proc {
            name: name.to_owned(),
            child: Some(child),
            stderr_path,
        }
    }

    /// Starts `ferry ARGS` and waits until `found` finds what it looks for in the part of its
    /// log written since (checked every 10 ms, for 30 s; `what` names it in the panic).
    #[allow(dead_code)]
    pub fn start_until<T>(
        name: &str,
        dir: &Dir,
        args: &[&str],
        what: &str,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> (Self, T) {
        let log = dir.join(format!("{name}.stderr"));
        let before = std::fs::metadata(&log).map_or(0, |m| m.len()) as usize;
        let mut proc = Proc::start(name, dir, args);
        let start = Instant::now();
        loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(before..).unwrap_or_default());
            if let Some(t) = found(&new) {
                return (proc, t);
            }
            if let Some(status) = proc.exited() {
                panic!("{name} exited with {status} before it was ready:\n{new}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} did not {what} within 30s:\n{new}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ferry processor --config CFG --collector URL`, its stderr in `DIR/NAME.stderr`.
    pub fn processor(dir: &Dir, name: &str, cfg: &Path, url: &str) -> Self {
        Self::start(
            name,
            dir,
            &[
                "processor",
                "--config",
                cfg.to_str().expect("utf8"),
                "--collector",
                url,
            ],
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process exited on its own (and with what), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!(
            "{} did not exit within {timeout:?} of SIGTERM:\n{}",
            self.name,
            self.stderr()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- stderr of {}\n{}", self.name, self.stderr());
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; panics with `what` then.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Window results of a processor (JSON lines, from a file sink or `ferry consume`), keyed by
/// (the `level` group-by value, window start) → `count`, as a sink consumer deduplicates them:
/// a result repeated after a crash must repeat the same count (asserted). A last line without
/// its newline is still being written (or torn by a kill -9, and cut by the next start): not a
/// result yet.
pub fn window_results(text: &str) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in complete.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("result is JSON");
        let key = (
            v["key"]["level"].as_str().unwrap_or("").to_owned(),
            v["window_start"].as_str().unwrap_or("").to_owned(),
        );
        let count = v["count"].as_u64().expect("count");
        if let Some(prev) = out.insert(key.clone(), count) {
            assert_eq!(prev, count, "result for {key:?} changed between emissions");
        }
    }
    out
}

/// [`window_results`] of a file (empty if it does not exist yet).
pub fn window_results_in(path: &Path) -> std::collections::BTreeMap<(String, String), u64> {
    window_results(&std::fs::read_to_string(path).unwrap_or_default())
}

/// A log without its terminal colours.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes an agent counted as unread (`ferry_agent_unread_bytes_total`) over all its runs,
/// including those killed with SIGKILL: the WARN lines of its log, except those whose count
/// is in its checkpoint (`checkpointed=true`: logged after the checkpoint write, so a kill
/// between the two would lose the line), plus the checkpoint's lifetime `unread_bytes`.
pub fn unread_bytes_counted(log: &str, checkpoint: &std::path::Path) -> u64 {
    let in_checkpoint = std::fs::read_to_string(checkpoint)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["unread_bytes"].as_u64())
        .unwrap_or(0);
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("bytes could not be read") && !l.contains("checkpointed=true"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>()
        + in_checkpoint
}

/// JSON log line number `seq`: `ts` 100 ms apart (so 100 lines per 10 s window), `level`
/// cycling info/warn/error, the `seq` itself and some padding.
pub fn json_log_line(seq: u64) -> String {
    let t = seq / 10;
    format!(
        "{{\"ts\":\"2026-01-01T{:02}:{:02}:{:02}.{}00Z\",\"level\":\"{}\",\"seq\":{seq},\"pad\":\"{}\"}}",
        t / 3600,
        (t / 60) % 60,
        t % 60,
        seq % 10,
        ["info", "warn", "error"][(seq % 3) as usize],
        "x".repeat((seq % 50) as usize)
    )
}

/// A small deterministic generator for randomized tests (seeded by [`seed`]).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `FERRY_TEST_SEED`, else one from the clock; printed, so a failing run can be repeated.
pub fn seed() -> u64 {
    let s = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("seed: {s} (FERRY_TEST_SEED={s} repeats this run)");
    s
}
