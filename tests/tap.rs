//! `ferry tap` as an operator uses it: a live, filtered, rate-limited sample of a topic that
//! leaves every consumer group alone.

mod util;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use util::{Dir, ferry, produce, run, start_collector, wait_until};

struct Tap {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Tap {
    fn start(dir: &Dir, name: &str, args: &[&str]) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = ferry()
            .arg("tap")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout"))
            .stderr(std::fs::File::create(&stderr).expect("stderr"))
            .spawn()
            .expect("spawn tap");
        let tap = Tap {
            child,
            stdout,
            stderr,
        };
        wait_until(Duration::from_secs(20), "the tap to start", || {
            tap.stderr().contains("ferry tap: sampling")
        });
        tap
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn wait(mut self) -> (i32, String, String) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                return (s.code().unwrap_or(-1), out, self.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "tap did not stop:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn groups(url: &str) -> serde_json::Value {
    let out = run(
        ferry().args(["groups", "--collector", url, "--json"]),
        b"",
        0,
    );
    serde_json::from_slice(&out.stdout).expect("groups json")
}

/// The committed offsets of every group, without the parts that move by themselves (lag).
fn committed(groups: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for g in groups.as_array().into_iter().flatten() {
        for p in g["partitions"].as_array().into_iter().flatten() {
            v.push((
                g["group"].to_string(),
                p["partition"].to_string(),
                p["committed"].to_string(),
            ));
        }
    }
    v.sort();
    v
}

fn lines(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            let level = if i % 3 == 0 { "error" } else { "info" };
            format!("{{\"level\":\"{level}\",\"seq\":{i}}}\n")
        })
        .collect()
}

#[test]
fn tap_shows_only_matching_records_and_leaves_groups_untouched() {
    let dir = Dir::new("tap");
    let c = start_collector(
        &dir,
        "collector",
        Some("collector:\n  topics:\n    app: {partitions: 2}\n"),
    );
    produce(&c.url(), "app", &lines(0, 300));
    // A group that has read everything so far and committed.
    run(
        ferry().args([
            "consume",
            "--collector",
            &c.url(),
            "app",
            "--group",
            "readers",
            "--from-beginning",
            "--max",
            "300",
        ]),
        b"",
        0,
    );
    let before = groups(&c.url());
    assert!(!committed(&before).is_empty(), "{before}");

    let tap = Tap::start(
        &dir,
        "tap",
        &[
            "--collector",
            &c.url(),
            "app",
            "--filter",
            "level == \"error\" and seq >= 300",
            "--max",
            "20",
        ],
    );
    produce(&c.url(), "app", &lines(300, 300));
    let (code, out, err) = tap.wait();
    assert_eq!(code, 0, "{err}");
    let shown: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record line"))
        .collect();
    assert_eq!(shown.len(), 20, "{out}\n{err}");
    let mut seqs: Vec<u64> = shown
        .iter()
        .map(|v| {
            assert_eq!(v["level"], "error", "{v}");
            v["seq"].as_u64().expect("seq")
        })
        .collect();
    assert!(seqs.iter().all(|&s| s >= 300), "{seqs:?}");
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 20, "a record shown twice");

    // No group moved, none was added.
    let after = groups(&c.url());
    assert_eq!(committed(&before), committed(&after), "{before}\n{after}");
    assert_eq!(
        before.as_array().map(Vec::len),
        after.as_array().map(Vec::len)
    );
}

#[test]
fn tap_rate_limit_skips_and_counts_the_rest() {
    let dir = Dir::new("tap-rate");
    let c = start_collector(&dir, "collector", None);
    produce(&c.url(), "app", &lines(0, 1));
    let tap = Tap::start(
        &dir,
        "tap",
        &[
            "--collector",
            &c.url(),
            "app",
            "--rate",
            "5",
            "--idle-timeout",
            "2s",
        ],
    );
    let started = Instant::now();
    produce(&c.url(), "app", &lines(1, 2_000));
    let (code, out, err) = tap.wait();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{err}");
    let shown = out.lines().count() as f64;
    assert!(shown >= 5.0, "shown {shown}\n{err}");
    assert!(
        shown <= 5.0 + 5.0 * (elapsed + 1.0),
        "shown {shown} in {elapsed:.1}s at --rate 5"
    );
    assert!(
        err.contains(&format!("2000 records seen, {shown} shown")),
        "{err}"
    );
    assert!(err.contains("skipped by the rate limit"), "{err}");
}

#[test]
fn tap_refuses_a_bad_filter_and_a_missing_topic() {
    let dir = Dir::new("tap-bad");
    let c = start_collector(&dir, "collector", None);
    let out = run(
        ferry().args([
            "tap",
            "--collector",
            &c.url(),
            "app",
            "--filter",
            "level ==",
        ]),
        b"",
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--filter: column"), "{err}");
    let out = run(
        ferry().args(["tap", "--collector", &c.url(), "nope"]),
        b"",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
