//! End to end, line written → window result (issue 13's latency target): a real `ferry
//! collector` and a real `ferry processor` (release binaries, their own processes) on a topic
//! with the default 4 partitions.
//!
//! `cargo bench --bench e2e_latency` (about a minute). A writer in this process posts a few
//! JSON lines every 5 ms, each stamped with the wall clock (`ts`, Unix ms) and one of four
//! levels; the processor counts them by level in tumbling windows of [`WINDOW_MS`] with no
//! allowed lateness, results to a file that this process watches (every 2 ms). A line's latency
//! is the time its (window, level) result appeared minus the time the line was posted; the
//! target is p99 ≤ window + allowed_lateness + 500 ms, i.e. a result out within 500 ms of its
//! window's end. Both the default (repartition on: partials through the collector's
//! repartition topic) and `repartition: false` (merged in-process; one member) are measured,
//! one after the other, each with its own collector.
//!
//! `FERRY_BENCH_SECS` sets how long the writer runs per case (default 20);
//! `FERRY_BENCH_CASE=on|off` runs one case only.

use ferry_core::client::CollectorClient;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WINDOW_MS: i64 = 2_000;
const LEVELS: [&str; 4] = ["info", "warn", "error", "debug"];
const LINES_PER_POST: u64 = 4;
const POST_EVERY: Duration = Duration::from_millis(5);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ferry collector` on a free port; returns it and its URL.
fn start_collector(dir: &Path) -> (Proc, String) {
    let log = dir.join("collector.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["collector", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("ferry collector");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.split_once("listening on http://").map(|(_, a)| a.trim()))
        {
            return (Proc(child), format!("http://{addr}"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "collector did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_processor(dir: &Path, url: &str, results: &Path, repartition: bool) -> Proc {
    let cfg = dir.join("processor.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"processor:
  pipelines:
    - name: latency
      source: {{ topics: [app], repartition: {repartition} }}
      parse: json
      event_time: {{ field: ts, format: unix_ms }}
      group_by: [level]
      window: {{ tumbling: {WINDOW_MS}ms, allowed_lateness: 0s, idle_timeout: 5s }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
            results.display()
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["processor", "--config"])
        .arg(&cfg)
        .args(["--collector", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("processor.log")).expect("log"))
        .spawn()
        .expect("ferry processor");
    Proc(child)
}

/// Window start (Unix ms) of an RFC 3339 `window_start` as results print it.
fn parse_start(s: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_millis())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Outcome {
    lines: usize,
    p50: i64,
    p99: i64,
    max: i64,
    after_end_p50: i64,
    after_end_p99: i64,
    missing: usize,
}

fn run_case(root: &Path, repartition: bool, secs: u64) -> Outcome {
    let dir = tempfile::tempdir_in(root).expect("temp dir");
    let (_collector, url) = start_collector(dir.path());
    let results = dir.path().join("results.jsonl");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = CollectorClient::new(&url).expect("client");
    // The topic (default partitions) exists before the processor subscribes.
    rt.block_on(client.post_lines("app", b"{\"level\":\"warmup\",\"ts\":0}\n".to_vec(), false))
        .expect("first post");
    let _processor = start_processor(dir.path(), &url, &results, repartition);
    std::thread::sleep(Duration::from_secs(3));

    // Results watcher: when each (window start, level) first appeared.
    let seen: Arc<Mutex<HashMap<(i64, String), Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop, results) = (seen.clone(), stop.clone(), results.clone());
        std::thread::spawn(move || {
            let mut pos = 0u64;
            let mut partial = String::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::File::open(&results)
                    && f.seek(SeekFrom::Start(pos)).is_ok()
                {
                    let mut r = BufReader::new(f);
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        pos += line.len() as u64;
                        partial.push_str(&line);
                        line.clear();
                        if !partial.ends_with('\n') {
                            continue;
                        }
                        let at = Instant::now();
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&partial)
                            && let (Some(ws), Some(level)) =
                                (v["window_start"].as_str(), v["key"]["level"].as_str())
                            && let Some(start) = parse_start(ws)
                        {
                            seen.lock()
                                .expect("seen")
                                .entry((start, level.to_owned()))
                                .or_insert(at);
                        }
                        partial.clear();
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    // Warm-up (not measured): lines until the first window result is out, so the groups are
    // joined (and, with repartition, the repartition topic made and its group joined).
    let warm = Instant::now() + Duration::from_secs(60);
    while seen.lock().expect("seen").is_empty() && Instant::now() < warm {
        let body = format!("{{\"ts\":{},\"level\":\"warmup\"}}\n", now_ms());
        rt.block_on(client.post_lines("app", body.into_bytes(), false))
            .expect("post");
        std::thread::sleep(POST_EVERY);
    }
    std::thread::sleep(Duration::from_millis(WINDOW_MS as u64));
    // Writer: LINES_PER_POST lines every POST_EVERY, stamped now; remembers when each went.
    let mut written: Vec<(i64, usize, Instant)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut i = 0usize;
    let mut next = Instant::now();
    while Instant::now() < until {
        let ts = now_ms();
        let at = Instant::now();
        let mut body = String::new();
        for _ in 0..LINES_PER_POST {
            let level = i % LEVELS.len();
            body.push_str(&format!(
                "{{\"ts\":{ts},\"level\":\"{}\",\"n\":{i}}}\n",
                LEVELS[level]
            ));
            written.push((ts, level, at));
            i += 1;
        }
        rt.block_on(client.post_lines("app", body.into_bytes(), false))
            .expect("post");
        next += POST_EVERY;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    // Lines of the last window close only with a later line: keep writing (not measured)
    // until the results of every measured window are out.
    let last_start = written.last().map_or(0, |w| (w.0 / WINDOW_MS) * WINDOW_MS);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = {
            let s = seen.lock().expect("seen");
            LEVELS
                .iter()
                .all(|l| s.contains_key(&(last_start, (*l).to_owned())))
        };
        if done {
            break;
        }
        let body = format!("{{\"ts\":{},\"level\":\"closer\"}}\n", now_ms());
        rt.block_on(client.post_lines("app", body.into_bytes(), false))
            .expect("post");
        std::thread::sleep(POST_EVERY);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");
    let seen = seen.lock().expect("seen");
    // Per line: result seen − written; per window: result seen − the window's end (wall clock,
    // measured from the moment this process knew the window was over).
    let t0 = Instant::now();
    let now = now_ms();
    let mut lat = Vec::with_capacity(written.len());
    let mut missing = 0;
    let mut after_end: BTreeMap<(i64, usize), i64> = BTreeMap::new();
    for (ts, level, at) in &written {
        let start = (ts / WINDOW_MS) * WINDOW_MS;
        match seen.get(&(start, LEVELS[*level].to_owned())) {
            Some(got) => {
                lat.push(got.saturating_duration_since(*at).as_millis() as i64);
                // The window's end as an Instant: t0 − (now − end).
                let end = start + WINDOW_MS;
                let end_at = t0.checked_sub(Duration::from_millis((now - end).max(0) as u64));
                if let Some(end_at) = end_at {
                    let d = got.saturating_duration_since(end_at).as_millis() as i64;
                    after_end.insert((start, *level), d);
                }
            }
            None => missing += 1,
        }
    }
    lat.sort_unstable();
    let mut ends: Vec<i64> = after_end.into_values().collect();
    ends.sort_unstable();
    Outcome {
        lines: written.len(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or(0),
        after_end_p50: percentile(&ends, 0.5),
        after_end_p99: percentile(&ends, 0.99),
        missing,
    }
}

fn main() {
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let root = std::env::var_os("FERRY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    println!(
        "line written -> window result; tumbling {WINDOW_MS} ms, allowed_lateness 0; target p99 <= {} ms",
        WINDOW_MS + 500
    );
    println!();
    println!(
        "| case | lines | p50 ms | p99 ms | max ms | after window end: p50 ms | p99 ms | lines without a result |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let only = std::env::var("FERRY_BENCH_CASE").ok();
    for (name, repartition) in [
        ("repartition on (default), 4 partitions", true),
        ("repartition off (in-process merge), 4 partitions", false),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| o != if repartition { "on" } else { "off" })
        {
            continue;
        }
        let o = run_case(&root, repartition, secs);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            o.lines, o.p50, o.p99, o.max, o.after_end_p50, o.after_end_p99, o.missing
        );
    }
}
