//! `ferry up`, the README's first command, as a newcomer runs it: in an empty folder, with no
//! config file around it (the built-in one), showing live results, stopped with Ctrl-C (SIGINT),
//! and run again.

mod util;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::{Dir, ferry, run, wait_until};

/// A running `ferry up` with stdout and stderr in files, so the test can watch the table appear.
struct Up {
    child: Option<Child>,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Up {
    fn start(dir: &Dir, run: usize, extra: &[&str]) -> Self {
        let stdout = dir.join(format!("up-{run}.stdout"));
        let stderr = dir.join(format!("up-{run}.stderr"));
        let child = ferry()
            .current_dir(dir.path())
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn ferry up");
        Up {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until all three tables show rows.
    fn wait_for_tables(&self) {
        wait_until(Duration::from_secs(60), "live tables from ferry up", || {
            let out = self.stdout();
            ["errors  [", "latency  [", "users  ["]
                .iter()
                .all(|t| out.contains(t))
                && out.contains("service=")
        });
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Waits for the exit; returns the exit code and how long it took.
    fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ferry up did not exit within {timeout:?}\n--- stderr\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ferry up stderr\n{}", self.stderr());
        }
    }
}

/// Log lines at WARN or ERROR level in ferry's human log format.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .collect()
}

#[test]
fn ctrl_c_in_an_empty_directory_exits_0_quietly_and_the_next_run_resumes() {
    let dir = Dir::new("up");
    for run_no in 1..=2 {
        let mut up = Up::start(&dir, run_no, &[]);
        up.wait_for_tables();
        up.signal("-INT");
        let (code, took) = up.wait_exit(Duration::from_secs(30));
        let stderr = up.stderr();
        assert_eq!(code, Some(0), "run {run_no}: exit code\n{stderr}");
        assert!(
            took < Duration::from_secs(2),
            "run {run_no}: Ctrl-C took {took:?} to exit\n{stderr}"
        );
        assert!(
            warnings(&stderr).is_empty(),
            "run {run_no}: warnings on Ctrl-C:\n{stderr}"
        );
        assert!(stderr.contains("ferry up: stopped"), "{stderr}");
    }
    // Everything went under ./ferry-data, nothing else in the folder.
    let data = dir.join("ferry-data");
    assert!(data.join("sample-logs/app.log").exists());
    assert!(data.join("collector").is_dir());
    assert!(data.join("agent").is_dir());

    // Read back what the two runs stored, with a collector on the same data.
    let addr = util::free_addr();
    let store = data.join("collector");
    let collector = util::Service::start(
        "reader",
        &dir,
        &[
            "collector",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            store.to_str().expect("utf-8"),
        ],
        addr,
    );
    let consume = |topic: &str| -> String {
        let out = run(
            ferry().args([
                "consume",
                "--collector",
                &collector.url(),
                topic,
                "--from-beginning",
                "--idle-timeout",
                "2s",
            ]),
            b"",
            0,
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let results = consume("results");
    let app = consume("app");
    check_results(&results, &app);
}

/// Every (pipeline, window, key) has at most one result; the `latency` pipeline's `requests`
/// equal the requests per endpoint and window counted from the stored `app` records; and no
/// window before the last one emitted is missing, across the restart.
fn check_results(results: &str, app: &str) {
    let mut seen = BTreeSet::new();
    let mut requests: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for line in results.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("result JSON");
        let id = (
            v["pipeline"].as_str().expect("pipeline").to_owned(),
            v["window_start"].as_str().expect("window_start").to_owned(),
            v["key"].to_string(),
        );
        assert!(seen.insert(id.clone()), "result repeated: {id:?}");
        if id.0 == "latency" {
            let start = rfc3339_ms(&id.1);
            let endpoint = v["key"]["endpoint"].as_str().expect("endpoint").to_owned();
            requests.insert((start, endpoint), v["requests"].as_u64().expect("requests"));
        }
    }
    assert!(!requests.is_empty(), "no latency results:\n{results}");
    let last_window = requests.keys().map(|k| k.0).max().expect("a window");
    let mut counted: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for line in app.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("app record JSON");
        let ts = rfc3339_ms(v["ts"].as_str().expect("ts"));
        let window = ts - ts.rem_euclid(5_000);
        if window <= last_window {
            let endpoint = v["endpoint"].as_str().expect("endpoint").to_owned();
            *counted.entry((window, endpoint)).or_default() += 1;
        }
    }
    // The last emitted window may have keys still open at the stop; compare the ones before it.
    counted.retain(|k, _| k.0 < last_window);
    requests.retain(|k, _| k.0 < last_window);
    assert!(
        requests.len() >= 4,
        "too few closed windows to compare: {requests:?}"
    );
    assert_eq!(
        requests, counted,
        "latency requests per (window, endpoint) differ from the stored app records"
    );
}

fn rfc3339_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .timestamp_millis()
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = Dir::new("up-twice");
    let mut up = Up::start(&dir, 1, &[]);
    up.wait_for_tables();
    up.signal("-INT");
    up.signal("-INT");
    let (code, took) = up.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(code, Some(0) | Some(130)),
        "exit code {code:?}\n{}",
        up.stderr()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn print_config_is_the_shipped_sample_and_checks_clean() {
    let out = run(ferry().args(["up", "--print-config"]), b"", 0);
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/local.yaml"))
            .expect("configs/local.yaml");
    assert_eq!(String::from_utf8_lossy(&out.stdout), shipped);
    let dir = Dir::new("up-print");
    let path = dir.write("printed.yaml", &out.stdout);
    let out = run(
        ferry().args(["check", path.to_str().expect("utf-8 path")]),
        b"",
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok (telemetry, collector, agent, processor, up)"),
        "{text}"
    );
}

#[test]
fn data_dir_and_config_flags_are_honoured() {
    let dir = Dir::new("up-flags");
    // A config of one's own: the sample with a faster refresh, run with its data elsewhere.
    let shipped = run(ferry().args(["up", "--print-config"]), b"", 0).stdout;
    let config = String::from_utf8(shipped)
        .expect("utf-8")
        .replace("refresh: 1s", "refresh: 500ms");
    let path = dir.write("mine.yaml", config);
    let data = dir.join("elsewhere");
    let mut up = Up::start(
        &dir,
        1,
        &[
            "--config",
            path.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    up.wait_for_tables();
    up.signal("-TERM");
    let (code, _) = up.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", up.stderr());
    assert!(data.join("sample-logs/app.log").exists());
    assert!(!Path::new(&dir.join("ferry-data")).exists());
}
