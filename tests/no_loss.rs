//! The guarantee, end to end: agent, collector and processor as separate processes on rotating
//! log files with unique sequence numbers; each component is killed with SIGKILL at random
//! moments while lines are written; at the end every line written is stored exactly once, and
//! the processor's final counts equal the counts computed directly from the files.

mod util;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use util::json_log_line as line;
use util::{Dir, Proc, Service, ferry, run, wait_until};

/// Writes `total` lines to `dir/app.log` in bursts, rotating by rename every `rotate_every`
/// lines (app.log → app.log.N), like logrotate.
fn writer(
    dir: PathBuf,
    total: u64,
    rotate_every: u64,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let path = dir.join("app.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut rotations = 0;
    for seq in 0..total {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        writeln!(f, "{}", line(seq))?;
        if seq % 200 == 199 {
            std::thread::sleep(Duration::from_millis(70));
        }
        if seq % rotate_every == rotate_every - 1 {
            rotations += 1;
            std::fs::rename(&path, dir.join(format!("app.log.{rotations}")))?;
            f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
        }
    }
    Ok(())
}

fn start_collector(dir: &Dir, addr: std::net::SocketAddr) -> Service {
    let cfg = dir.write(
        "collector.yaml",
        "collector:\n  topics:\n    app: { partitions: 1 }\n",
    );
    let data = dir.join("collector-data");
    Service::start(
        "collector",
        dir,
        &[
            "collector",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            data.to_str().expect("utf8"),
            "--config",
            cfg.to_str().expect("utf8"),
        ],
        addr,
    )
}

fn start_agent(dir: &Dir, url: &str, n: u32) -> Proc {
    let logs = dir.join("logs");
    let cfg = dir.write(
        "agent.yaml",
        format!(
            "agent:\n  id: host-1\n  data_dir: {}\n  rescan_interval: 500ms\n  inputs:\n    - name: app\n      include: [\"{}/app.log*\"]\n      topic: app\n  batch:\n    linger: 100ms\n  output:\n    type: collector\n    urls: [\"{url}\"]\n",
            dir.join("agent-data").display(),
            logs.display()
        ),
    );
    Proc::start(
        &format!("agent-{n}"),
        dir,
        &["agent", "--config", cfg.to_str().expect("utf8")],
    )
}

fn start_processor(dir: &Dir, url: &str, n: u32) -> Proc {
    let cfg = dir.write(
        "processor.yaml",
        format!(
            r#"processor:
  pipelines:
    - name: levels
      source: {{ topics: [app], group: levels }}
      parse: json
      event_time: {{ field: ts, format: rfc3339 }}
      group_by: [level]
      # Lines of a rotated file still being read arrive after newer lines of its successor
      # (per-file order holds, cross-file order does not), so allow disorder up to the whole
      # run: windows then close only when the closer line arrives.
      window: {{ tumbling: 10s, allowed_lateness: 1h, idle_timeout: 1h }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
            dir.join("results.jsonl").display()
        ),
    );
    Proc::processor(dir, &format!("processor-{n}"), &cfg, url)
}

/// Every stored line's sequence number, with how often it is stored.
fn stored(url: &str) -> BTreeMap<u64, u32> {
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            url,
            "app",
            "--from-beginning",
            "--idle-timeout",
            "1s",
        ]),
        b"",
        0,
    );
    let mut seen = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).expect("stored line is the JSON written");
        *seen.entry(v["seq"].as_u64().expect("seq")).or_insert(0) += 1;
    }
    seen
}

/// Window results by (level, window_start), deduplicated as a sink consumer would; a replayed
/// emission must repeat the same value.
fn results(path: &Path) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("result is one JSON line");
        let k = (
            v["key"]["level"].as_str().unwrap_or("").to_owned(),
            v["window_start"].as_str().unwrap_or("").to_owned(),
        );
        let c = v["count"].as_u64().expect("count");
        if let Some(prev) = out.insert(k.clone(), c) {
            assert_eq!(prev, c, "result for {k:?} changed between emissions");
        }
    }
    out
}

/// The counts computed directly from the log files on disk.
fn counts_from_files(logs: &Path) -> (u64, BTreeMap<(String, String), u64>) {
    let mut lines = 0;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(logs).expect("logs") {
        let text = std::fs::read_to_string(e.expect("entry").path()).expect("read");
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let ts = v["ts"].as_str().expect("ts");
            // Window start: the timestamp cut to its 10-second boundary.
            let ws = format!("{}0Z", &ts[..18]);
            let level = v["level"].as_str().expect("level").to_owned();
            if level == "closer" {
                continue;
            }
            lines += 1;
            *out.entry((level, ws)).or_insert(0) += 1;
        }
    }
    (lines, out)
}

#[test]
fn every_line_once_and_exact_counts_with_each_component_killed_9() {
    let dir = Dir::new("no-loss");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", util::free_port())
        .parse()
        .expect("addr");
    let url = format!("http://{addr}");
    let mut collector = start_collector(&dir, addr);
    let mut agent = start_agent(&dir, &url, 0);
    let mut processor = start_processor(&dir, &url, 0);

    let total = 24_000;
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (logs, stop) = (logs.clone(), stop.clone());
        std::thread::spawn(move || writer(logs, total, 5_000, stop))
    };
    // Kill one component at a time, at varying moments, while the writer runs.
    let mut kills = BTreeMap::new();
    let mut i = 0u32;
    while !w.is_finished() {
        std::thread::sleep(Duration::from_millis(500 + u64::from(i * 397 % 700)));
        i += 1;
        match i % 3 {
            0 => {
                agent.kill9();
                agent = start_agent(&dir, &url, i);
                *kills.entry("agent").or_insert(0) += 1;
            }
            1 => {
                processor.kill9();
                processor = start_processor(&dir, &url, i);
                *kills.entry("processor").or_insert(0) += 1;
            }
            _ => {
                collector.kill9();
                collector = start_collector(&dir, addr);
                *kills.entry("collector").or_insert(0) += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer").expect("writer io");
    assert!(
        kills.len() == 3,
        "not every component was killed: {kills:?}"
    );

    // Every line written reaches the collector exactly once.
    wait_until(Duration::from_secs(60), "all lines stored", || {
        stored(&url).len() as u64 >= total
    });
    let seen = stored(&url);
    let missing: Vec<u64> = (0..total)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    let dups: Vec<(u64, u32)> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing lines (first 10): {missing:?}; kills {kills:?}"
    );
    assert!(
        dups.is_empty(),
        "duplicated lines (first 10): {dups:?}; kills {kills:?}"
    );
    assert_eq!(seen.len() as u64, total);

    // A line far ahead in event time closes every window; then the processor's counts must be
    // exactly those computed from the files.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("app.log"))
        .expect("open");
    writeln!(
        f,
        "{{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"closer\",\"seq\":{total}}}"
    )
    .expect("write");
    drop(f);
    let (lines, want) = counts_from_files(&logs);
    assert_eq!(lines, total);
    let results_path = dir.join("results.jsonl");
    wait_until(Duration::from_secs(60), "every window result", || {
        results(&results_path).len() >= want.len()
    });
    assert_eq!(
        results(&results_path),
        want,
        "processor counts differ from the files; kills {kills:?}"
    );
    processor.terminate(Duration::from_secs(20));
    agent.terminate(Duration::from_secs(20));
    drop(collector);
}
