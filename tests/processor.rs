//! The processor end to end: real collector, real `ferry processor` processes, kill -9.

mod util;
use std::collections::BTreeMap;
use std::time::Duration;
use util::{Dir, Proc, produce, start_collector, wait_until};

/// `n` JSON records over 10-second windows starting at 2026-01-01T00:00:00Z, 10 per second of
/// event time, cycling through three levels; then one record far ahead to close every window.
fn events(from: u64, to: u64) -> String {
    keyed_events(from, to, &["info", "error", "warn"])
}

fn keyed_events(from: u64, to: u64, levels: &[&str]) -> String {
    let mut s = String::new();
    for i in from..to {
        let (sec, tenth) = (i / 10, i % 10);
        s.push_str(&format!(
            "{{\"ts\":\"2026-01-01T{:02}:{:02}:{:02}.{tenth}00Z\",\"level\":\"{}\",\"seq\":{i}}}\n",
            sec / 3600,
            (sec / 60) % 60,
            sec % 60,
            levels[(i % levels.len() as u64) as usize]
        ));
    }
    s
}

const CLOSER: &str = "{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"closer\"}\n";

fn pipeline_yaml(group: &str, results: &std::path::Path) -> String {
    format!(
        r#"processor:
  pipelines:
    - name: levels
      source: {{ topics: [app], group: {group}, start: committed }}
      parse: json
      event_time: {{ field: ts, format: rfc3339 }}
      group_by: [level]
      window: {{ tumbling: 10s, allowed_lateness: 0s, idle_timeout: 1h }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
        results.display()
    )
}

fn results(path: &std::path::Path) -> BTreeMap<(String, String), u64> {
    util::window_results_in(path)
}

/// What the results must be, computed directly from the events.
fn expected(n: u64) -> BTreeMap<(String, String), u64> {
    keyed_expected(n, &["info", "error", "warn"])
}

fn keyed_expected(n: u64, levels: &[&str]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let w = (i / 100) * 10;
        let ws = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            w / 3600,
            (w / 60) % 60,
            w % 60
        );
        *out.entry((levels[(i % levels.len() as u64) as usize].to_owned(), ws))
            .or_insert(0) += 1;
    }
    out
}

#[test]
fn processor_killed_9_in_a_loop_gives_the_same_results_as_an_uninterrupted_run() {
    let dir = Dir::new("proc-kill");
    let c = start_collector(
        &dir,
        "c",
        Some("collector:\n  topics:\n    app: { partitions: 1 }\n"),
    );
    let url = c.url();
    let n = 6000;
    let slices = 30;
    let want = expected(n);
    let start = |name: &str, cfg: &std::path::Path| {
        Proc::start(
            name,
            &dir,
            &[
                "processor",
                "--config",
                cfg.to_str().expect("utf8"),
                "--collector",
                &url,
            ],
        )
    };

    // The pipeline under test runs while the records arrive, in slices over ~5 s, and is killed
    // with SIGKILL at varying moments and restarted each time.
    let out = dir.join("killed.jsonl");
    let cfg = dir.write("killed.yaml", pipeline_yaml("killed", &out));
    let producer = {
        let url = url.clone();
        std::thread::spawn(move || {
            for s in 0..slices {
                produce(&url, "app", &events(s * n / slices, (s + 1) * n / slices));
                std::thread::sleep(Duration::from_millis(150));
            }
            produce(&url, "app", CLOSER);
        })
    };
    let mut kills = 0;
    let mut i = 0u64;
    while !producer.is_finished() {
        let mut p = start(&format!("killed-{i}"), &cfg);
        std::thread::sleep(Duration::from_millis(300 + (i * 373) % 600));
        p.kill9();
        kills += 1;
        i += 1;
    }
    producer.join().expect("producer");
    let mut p = start("killed-final", &cfg);
    wait_until(Duration::from_secs(60), "the killed run's results", || {
        results(&out).len() == want.len()
    });
    wait_until(
        Duration::from_secs(30),
        "the last run to join its group",
        || p.stderr().contains("joined its group"),
    );
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0));
    assert!(kills >= 4, "only {kills} kills");

    // The reference: one uninterrupted run over the same records.
    let ref_out = dir.join("reference.jsonl");
    let ref_cfg = dir.write("ref.yaml", pipeline_yaml("reference", &ref_out));
    let mut p = start("reference", &ref_cfg);
    wait_until(
        Duration::from_secs(60),
        "the reference run's results",
        || results(&ref_out).len() == want.len(),
    );
    wait_until(
        Duration::from_secs(30),
        "the reference run to join its group",
        || p.stderr().contains("joined its group"),
    );
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(results(&ref_out), want);
    assert_eq!(
        results(&out),
        want,
        "results after {kills} kill -9s differ from the uninterrupted run"
    );
}

#[test]
fn two_processors_in_one_group_emit_each_window_result_once() {
    let dir = Dir::new("proc-group");
    // Partitioned by the group-by key: each level lives on one partition, so each (level,
    // window) is computed by exactly one member.
    let c = start_collector(
        &dir,
        "c",
        Some("collector:\n  topics:\n    app: { partitions: 4, key_field: level }\n"),
    );
    let url = c.url();
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    let cfg_a = dir.write("a.yaml", pipeline_yaml("shared", &out_a));
    let cfg_b = dir.write("b.yaml", pipeline_yaml("shared", &out_b));
    let mut a = Proc::start(
        "a",
        &dir,
        &[
            "processor",
            "--config",
            cfg_a.to_str().expect("utf8"),
            "--collector",
            &url,
        ],
    );
    let mut b = Proc::start(
        "b",
        &dir,
        &[
            "processor",
            "--config",
            cfg_b.to_str().expect("utf8"),
            "--collector",
            &url,
        ],
    );
    // Wait until the two members have split the 4 partitions.
    wait_until(
        Duration::from_secs(20),
        "two members sharing the partitions",
        || {
            let out = util::run(
                util::ferry().args(["groups", "--collector", &url, "--json"]),
                b"",
                0,
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v.as_array().into_iter().flatten().any(|g| {
                g["group"] == "shared"
                    && g["members"].as_array().is_some_and(|m| {
                        m.len() == 2
                            && m.iter()
                                .all(|m| m["partitions"].as_array().is_some_and(|p| p.len() == 2))
                    })
            })
        },
    );
    // Twelve keys over four partitions: both members get some (the split is by key hash).
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let n = 3000;
    produce(&url, "app", &keyed_events(0, n, &keys));
    // A closer only closes the windows of its own partition: send one per key. Their own
    // window (the next day) stays open, so it adds no result.
    for level in &keys {
        produce(
            &url,
            "app",
            &format!("{{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"{level}\"}}\n"),
        );
    }
    let want = keyed_expected(n, &keys);
    let total = || {
        let text = std::fs::read_to_string(&out_a).unwrap_or_default()
            + &std::fs::read_to_string(&out_b).unwrap_or_default();
        text.lines().count()
    };
    wait_until(Duration::from_secs(60), "every window result", || {
        total() >= want.len()
    });
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
    let ra = results(&out_a);
    let rb = results(&out_b);
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "one member did all the work: a={} b={}",
        ra.len(),
        rb.len()
    );
    for k in ra.keys() {
        assert!(!rb.contains_key(k), "{k:?} was emitted by both members");
    }
    let mut all = ra;
    all.extend(rb);
    assert_eq!(all, want);
    assert_eq!(total(), want.len(), "a window result was emitted twice");
}
