//! The processor end to end: real collector, real `ferry processor` processes, kill -9.

mod util;
use std::collections::BTreeMap;
use std::time::Duration;
use util::{Dir, Proc, XorShift, produce, seed, start_collector, wait_until};

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
    let start = |name: &str, cfg: &std::path::Path| Proc::processor(&dir, name, cfg, &url);

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

    // The reference: one uninterrupted run over the same records, with the partials merged
    // in-process (`repartition: false`): the repartitioned, killed run must give the same.
    let ref_out = dir.join("reference.jsonl");
    let ref_yaml = pipeline_yaml("reference", &ref_out).replace(
        "start: committed }",
        "start: committed, repartition: false }",
    );
    assert!(ref_yaml.contains("repartition: false"));
    let ref_cfg = dir.write("ref.yaml", ref_yaml);
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

/// Waits until `ferry groups` shows `group` with two members of 2 of the 4 partitions each.
fn wait_for_split(url: &str, group: &str) {
    wait_until(
        Duration::from_secs(20),
        "two members sharing the partitions",
        || {
            let out = util::run(
                util::ferry().args(["groups", "--collector", url, "--json"]),
                b"",
                0,
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v.as_array().into_iter().flatten().any(|g| {
                g["group"] == group
                    && g["members"].as_array().is_some_and(|m| {
                        m.len() == 2
                            && m.iter()
                                .all(|m| m["partitions"].as_array().is_some_and(|p| p.len() == 2))
                    })
            })
        },
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
    // The topic is keyed by the group-by field, and the pipeline says so: each member emits the
    // results of the partitions it holds.
    let keyed = |yaml: String| {
        yaml.replace(
            "start: committed }",
            "start: committed, partitioned_by_key: true }",
        )
    };
    let cfg_a = dir.write("a.yaml", keyed(pipeline_yaml("shared", &out_a)));
    let cfg_b = dir.write("b.yaml", keyed(pipeline_yaml("shared", &out_b)));
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
    wait_for_split(&url, "shared");
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

/// Two members on a topic keyed by the group-by field (`partitioned_by_key: true`); one is
/// SIGKILLed after its checkpoint, and the other, whose own partitions have run far ahead
/// meanwhile, takes its partitions over. Each partition keeps its own watermark: the taken-over
/// partitions' records are not late (one merged watermark made them so), and every (window,
/// key) comes out exactly once across the two members' files.
#[test]
fn keyed_topic_taken_over_from_a_killed_member_loses_no_window() {
    let dir = Dir::new("proc-keyed-takeover");
    let c = start_collector(
        &dir,
        "c",
        Some("collector:\n  topics:\n    app: { partitions: 4, key_field: level }\n"),
    );
    let url = c.url();
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    let keyed = |out: &std::path::Path| {
        pipeline_yaml("keyed", out)
            .replace("processor:\n", "processor:\n  checkpoint_interval: 1s\n")
            .replace(
                "start: committed }",
                "start: committed, partitioned_by_key: true }",
            )
    };
    let cfg_a = dir.write("a.yaml", keyed(&out_a));
    let cfg_b = dir.write("b.yaml", keyed(&out_b));
    let start = |name: &str, cfg: &std::path::Path| Proc::processor(&dir, name, cfg, &url);
    let mut a = start("a", &cfg_a);
    let mut b = start("b", &cfg_b);
    for p in [&a, &b] {
        wait_until(Duration::from_secs(30), "both members to join", || {
            p.stderr().contains("joined its group")
        });
    }
    wait_for_split(&url, "keyed");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let closers = |ts: &str| -> String {
        keys.iter()
            .map(|k| format!("{{\"ts\":\"{ts}\",\"level\":\"{k}\"}}\n"))
            .collect()
    };
    let both = || {
        let mut all = results(&out_a);
        all.extend(results(&out_b));
        all
    };
    let lines = || {
        (std::fs::read_to_string(&out_a).unwrap_or_default()
            + &std::fs::read_to_string(&out_b).unwrap_or_default())
            .lines()
            .count()
    };
    // Phase 1: 150 s of events, then a closer per key at 150 s.
    produce(&url, "app", &keyed_events(0, 1500, &keys));
    produce(&url, "app", &closers("2026-01-01T00:02:30Z"));
    let want1 = keyed_expected(1500, &keys);
    wait_until(Duration::from_secs(60), "the phase-1 results", || {
        both() == want1
    });
    assert!(
        !results(&out_a).is_empty() && !results(&out_b).is_empty(),
        "both members worked"
    );
    // A checkpoint of a after its phase-1 results (every second), then a dies.
    std::thread::sleep(Duration::from_millis(2500));
    a.kill9();
    // Phase 2 at once: b's own partitions run far ahead while a's wait for its session to end.
    produce(&url, "app", &keyed_events(1600, 3000, &keys));
    produce(&url, "app", &closers("2026-01-02T00:00:00Z"));
    let mut want = keyed_expected(3000, &keys);
    for k in &keys {
        // The 150-160 s window holds only the phase-1 closer.
        want.insert(((*k).to_owned(), "2026-01-01T00:02:30Z".to_owned()), 1);
    }
    wait_until(
        Duration::from_secs(90),
        "every result after the take-over",
        || both() == want,
    );
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(both(), want);
    assert_eq!(lines(), want.len(), "a window result was emitted twice");
}

/// Issue 13: `parse: syslog` panicked on a month name with a multi-byte character, and the
/// processor exited 1 and crash-looped on every restart, `on_parse_error: skip` or not. The line
/// is now a parse error like any other: skipped, counted, and every other line is counted.
#[test]
fn syslog_line_with_a_multibyte_month_is_skipped_and_the_rest_counted() {
    let dir = Dir::new("proc-syslog");
    let c = start_collector(
        &dir,
        "c",
        Some("collector:\n  topics:\n    sys: { partitions: 1 }\n"),
    );
    let url = c.url();
    let out = dir.join("sys.jsonl");
    let cfg = dir.write(
        "sys.yaml",
        format!(
            r#"processor:
  pipelines:
    - name: sys
      source: {{ topics: [sys] }}
      parse: syslog
      on_parse_error: skip
      event_time: {{ field: timestamp, format: rfc3339 }}
      group_by: [severity]
      window: {{ tumbling: 10s, allowed_lateness: 0s, idle_timeout: 1h }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
            out.display()
        ),
    );
    let mut p = Proc::start(
        "processor",
        &dir,
        &[
            "processor",
            "--config",
            cfg.to_str().expect("utf8"),
            "--collector",
            &url,
        ],
    );
    wait_until(Duration::from_secs(30), "the processor to join", || {
        p.stderr().contains("joined its group")
    });
    // 30 good lines (severity from PRI 13: user.notice; 11: user.err) around the bad one, in
    // the window 00:00:00-00:00:10, then one that closes it.
    let mut lines = String::new();
    for i in 0..30 {
        let pri = if i % 3 == 0 { 11 } else { 13 };
        if i == 15 {
            lines.push_str("<13>Jaé 11 22:14:15 host t: m\n");
        }
        lines.push_str(&format!(
            "<{pri}>1 2026-01-01T00:00:0{}Z host app - - - line {i}\n",
            i % 10
        ));
    }
    lines.push_str("<13>1 2026-01-01T01:00:00Z host app - - - closer\n");
    produce(&url, "sys", &lines);
    wait_until(Duration::from_secs(30), "the window's results", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    });
    assert!(
        p.exited().is_none(),
        "the processor exited:\n{}",
        p.stderr()
    );
    let text = std::fs::read_to_string(&out).expect("results");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON result");
        counts.insert(
            v["key"]["severity"].as_str().unwrap_or("").to_owned(),
            v["count"].as_u64().unwrap_or(0),
        );
    }
    assert_eq!(
        counts,
        BTreeMap::from([("err".to_owned(), 10), ("notice".to_owned(), 20)])
    );
    assert!(!p.stderr().contains("panicked"), "{}", p.stderr());
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0));
}

/// The sample `configs/processor.yaml` as it is, except that results go to a file (which a
/// restart cuts back to its last complete line) and checkpoints are taken every second.
fn sample_config(results: &std::path::Path) -> String {
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/processor.yaml"),
    )
    .expect("configs/processor.yaml");
    let sinks = "      sinks:\n        - stdout\n";
    assert!(sample.contains(sinks), "the sample's sinks changed");
    let sample = sample.replace(
        sinks,
        &format!(
            "      sinks:\n        - file: {{ path: \"{}\" }}\n",
            results.display()
        ),
    );
    format!("{sample}  checkpoint_interval: 1s\n")
}

/// `n` records of the sample's shape, 100 per second of event time from 2026-01-01T00:00:00Z,
/// each up to 2 s earlier than its place in the stream, levels skewed; and the count per
/// (level, window start) they must give.
fn sample_input(rng: &mut XorShift, n: u64) -> (Vec<String>, BTreeMap<(String, String), u64>) {
    let levels = ["info", "info", "info", "warn", "error", "debug"];
    let base_ms: i64 = 1_767_225_600_000;
    let mut lines = Vec::with_capacity(n as usize);
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..n {
        let ts = base_ms + i as i64 * 10 - (rng.next() % 2000) as i64;
        let level = levels[(rng.next() % levels.len() as u64) as usize];
        let window = ts - ts.rem_euclid(10_000);
        let ws = ferry_processor::time::format_rfc3339(window);
        *want.entry((level.to_owned(), ws)).or_default() += 1;
        let t = ferry_processor::time::format_rfc3339(ts);
        lines.push(format!(
            "{{\"ts\":\"{t}\",\"level\":\"{level}\",\"seq\":{i}}}\n"
        ));
    }
    (lines, want)
}

/// Every (level, window) of `want` printed exactly once, with its count.
fn assert_each_printed_once(
    got: &BTreeMap<(String, String), Vec<u64>>,
    want: &BTreeMap<(String, String), u64>,
) {
    let mut wrong = Vec::new();
    for (k, counts) in got {
        let w = want.get(k).copied().unwrap_or(0);
        if counts.iter().any(|c| *c != w) {
            wrong.push(format!("{k:?}: printed {counts:?}, input has {w}"));
        }
    }
    assert!(wrong.is_empty(), "wrong results:\n{}", wrong.join("\n"));
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(missing.is_empty(), "no result for {missing:?}");
    let repeated: Vec<_> = got.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(repeated.is_empty(), "printed more than once: {repeated:?}");
}

/// Every result line of a file, as (level, window start) → the counts printed for it.
fn printed(path: &std::path::Path) -> BTreeMap<(String, String), Vec<u64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for line in complete.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("result is JSON");
        out.entry((
            v["key"]["level"].as_str().unwrap_or("").to_owned(),
            v["window_start"].as_str().unwrap_or("").to_owned(),
        ))
        .or_default()
        .push(v["count"].as_u64().expect("count"));
    }
    out
}

/// Issue 13: the sample pipeline on a topic with the default 4 partitions printed each (window,
/// level) three or four times, each a partial count. Now one member holding every partition
/// merges them: one result per window and level, equal to the count in the input, across a
/// SIGKILL of the processor in the middle and a restart.
#[test]
fn sample_pipeline_on_a_default_topic_prints_one_exact_result_per_window_and_key_across_kill_9() {
    let mut rng = XorShift(seed());
    let dir = Dir::new("proc-merge");
    // No topic config: `app` is created on first produce with the default partition count.
    let c = start_collector(&dir, "c", None);
    let url = c.url();
    let out = dir.join("results.jsonl");
    let cfg = dir.write("processor.yaml", sample_config(&out));
    let start = |name: &str| {
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

    // 60,000 records, 100 per second of event time from 2026-01-01T00:00:00Z, each up to 2 s
    // earlier than its place in the stream (allowed_lateness is 2s), levels skewed.
    let (lines, want) = sample_input(&mut rng, 60_000);
    // Closers, far ahead, in one batch per partition (batches are spread round-robin), so
    // every partition's watermark passes the last window. Their own window stays open.
    let closers: Vec<String> = (0..4)
        .map(|_| "{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"closer\"}\n".to_owned())
        .collect();

    let mut p = start("processor-1");
    wait_until(Duration::from_secs(30), "the processor to join", || {
        p.stderr().contains("joined its group")
    });
    // The records arrive in 60 batches of 1,000 over ~6 s while the processor runs.
    let chunks: Vec<String> = lines.chunks(1000).map(|c| c.concat()).collect();
    let producer = {
        let url = url.clone();
        std::thread::spawn(move || {
            for chunk in &chunks {
                produce(&url, "app", chunk);
                std::thread::sleep(Duration::from_millis(60));
            }
            for closer in &closers {
                produce(&url, "app", closer);
            }
        })
    };
    // Mid-way, three times: (1) once results are coming out and a checkpoint was stored, at a
    // random moment between two checkpoints (every second); (2) the next processor as soon as
    // it joined, so that a dead member still holds partitions while the third gets only some of
    // them; (3) the third just after it took over, while it catches up. Each kill -9 is followed
    // by a new start at once.
    let mut stderr = String::new();
    wait_until(Duration::from_secs(60), "results to come out", || {
        printed(&out).len() >= 10
    });
    std::thread::sleep(Duration::from_millis(1000 + rng.next() % 1000));
    p.kill9();
    stderr.push_str(&p.stderr());
    p = start("processor-2");
    wait_until(
        Duration::from_secs(30),
        "the second processor to join",
        || p.stderr().contains("joined its group"),
    );
    p.kill9();
    stderr.push_str(&p.stderr());
    p = start("processor-3");
    wait_until(
        Duration::from_secs(60),
        "the third processor to take over",
        || {
            let e = p.stderr();
            e.contains("state restored from checkpoint") || e.contains("no checkpoint;")
        },
    );
    std::thread::sleep(Duration::from_millis(rng.next() % 500));
    p.kill9();
    stderr.push_str(&p.stderr());
    p = start("processor-4");
    producer.join().expect("producer");
    wait_until(Duration::from_secs(120), "every window's result", || {
        printed(&out).len() >= want.len()
    });
    wait_until(
        Duration::from_secs(30),
        "the last processor to join",
        || p.stderr().contains("joined its group"),
    );
    wait_until(
        Duration::from_secs(30),
        "the last processor to join",
        || p.stderr().contains("joined its group"),
    );
    stderr.push_str(&p.stderr());
    eprintln!(
        "{} restores from checkpoints, results files cut back {} times",
        stderr.matches("state restored from checkpoint").count(),
        stderr.matches("results file cut back").count()
    );
    assert!(
        stderr.contains("state restored from checkpoint"),
        "the restarted processors restored no checkpoint:\n{stderr}"
    );
    // A duplicate or a stray partial would come out with the windows around it; those are out.
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0));
    let got = printed(&out);
    assert_each_printed_once(&got, &want);
}

/// Issue 13: two processors in one group on an unkeyed topic. A member holding only some of the
/// default 4 partitions held its windows forever; now each input partition's partials go
/// through the repartition topic to the member owning their key. The sample pipeline, two
/// members each writing its own results file, one of them killed with SIGKILL twice and
/// restarted each time: every (window, level) is printed exactly once across both files, equal
/// to the count in the input.
#[test]
fn sample_pipeline_on_two_members_prints_each_window_and_key_once_across_two_kill_9s() {
    let mut rng = XorShift(seed());
    let dir = Dir::new("proc-repart");
    let c = start_collector(&dir, "c", None);
    let url = c.url();
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    let cfg_a = dir.write("a.yaml", sample_config(&out_a));
    let cfg_b = dir.write("b.yaml", sample_config(&out_b));
    let start = |name: &str, cfg: &std::path::Path| Proc::processor(&dir, name, cfg, &url);

    // 40,000 records, 100 per second of event time, up to 2 s out of order, levels skewed.
    let (lines, want) = sample_input(&mut rng, 40_000);
    let closers: Vec<String> = (0..4)
        .map(|_| "{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"closer\"}\n".to_owned())
        .collect();

    let mut a = start("a", &cfg_a);
    let mut b = start("b-1", &cfg_b);
    for p in [&a, &b] {
        wait_until(Duration::from_secs(30), "both members to join", || {
            p.stderr().contains("joined its group")
        });
    }
    let chunks: Vec<String> = lines.chunks(1000).map(|c| c.concat()).collect();
    let producer = {
        let url = url.clone();
        std::thread::spawn(move || {
            for chunk in &chunks {
                produce(&url, "app", chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
            for closer in &closers {
                produce(&url, "app", closer);
            }
        })
    };
    let union = |a: &std::path::Path, b: &std::path::Path| {
        let mut all = printed(a);
        for (k, mut v) in printed(b) {
            all.entry(k).or_default().append(&mut v);
        }
        all
    };
    // (1) Once both members' results are coming out, at a random moment between checkpoints.
    wait_until(Duration::from_secs(90), "results from both members", || {
        !printed(&out_a).is_empty() && !printed(&out_b).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500 + rng.next() % 1500));
    b.kill9();
    let mut stderr = b.stderr();
    // (2) The restarted member, once it holds repartition partitions again (its state restored
    // while the survivor may still be replaying what the first one shipped).
    b = start("b-2", &cfg_b);
    wait_until(
        Duration::from_secs(60),
        "the restarted member to merge again",
        || {
            b.stderr()
                .contains("repartition: state restored from checkpoint")
        },
    );
    std::thread::sleep(Duration::from_millis(rng.next() % 1500));
    b.kill9();
    stderr.push_str(&b.stderr());
    b = start("b-3", &cfg_b);
    producer.join().expect("producer");
    wait_until(Duration::from_secs(120), "every window's result", || {
        union(&out_a, &out_b).len() >= want.len()
    });
    wait_until(Duration::from_secs(60), "the last member to merge", || {
        b.stderr().contains("repartition: joined the merge group")
    });
    stderr.push_str(&b.stderr());
    stderr.push_str(&a.stderr());
    eprintln!(
        "{} repartition restores, results files cut back {} times",
        stderr
            .matches("repartition: state restored from checkpoint")
            .count(),
        stderr.matches("results file cut back").count()
    );
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
    let (pa, pb) = (printed(&out_a), printed(&out_b));
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "one member did all the work: a={} b={}",
        pa.len(),
        pb.len()
    );
    let got = union(&out_a, &out_b);
    assert_each_printed_once(&got, &want);
}
