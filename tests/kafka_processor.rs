//! `ferry processor` on Kafka as users run it: real `ferry processor` (and `ferry agent --kafka`)
//! processes against a real Kafka-protocol broker (tansu, memory storage): exact counts, kill -9
//! and restart, two members of one group splitting partitions and taking over from each other,
//! garbage in the topic, results into a Kafka topic.

mod util;
use ferry_core::record::{Field, Record};
use ferry_kafka::testing::Tansu;
use ferry_kafka::{KafkaConfig, KafkaSink};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use util::{Dir, Proc, Service, XorShift, ferry, free_addr, http_get, run, seed, wait_until};

/// One input record: its group-by key and its event time (ms after 2026-01-01T00:00:00Z).
#[derive(Clone)]
struct Event {
    key: String,
    at_ms: i64,
    seq: u64,
}

const EPOCH_2026_MS: i64 = 1_767_225_600_000;
/// Shards of a topic not keyed by the group-by field (see [`Event::record`]).
const SHARDS: u64 = 8;

impl Event {
    /// The record as ferry's producer sends it: the JSON line, the key as a field (the message
    /// key where one key's records share a partition) and a shard `seq % SHARDS` (the message
    /// key where a topic is not keyed by the group-by field: records of every key spread over
    /// every partition).
    fn record(&self) -> Record {
        let mut r = Record::from_line(self.line());
        r.fields.push(Field::new("level", self.key.as_str()));
        r.fields.push(Field::new(
            "shard",
            (self.seq % SHARDS).to_string().as_str(),
        ));
        r
    }

    fn line(&self) -> String {
        format!(
            "{{\"ts\":{},\"level\":\"{}\",\"seq\":{}}}",
            EPOCH_2026_MS + self.at_ms,
            self.key,
            self.seq
        )
    }
}

/// Events `from..to`, 10 per second of event time, cycling through `keys`.
fn events(from: u64, to: u64, keys: &[String]) -> Vec<Event> {
    (from..to)
        .map(|i| Event {
            key: keys[(i % keys.len() as u64) as usize].clone(),
            at_ms: (i * 100) as i64,
            seq: i,
        })
        .collect()
}

/// One event per key and shard at `at_ms`: moves every partition's watermark there (keyed by
/// the key or by the shard), closing the windows before it. Counted like any event.
fn closers(keys: &[String], at_ms: i64) -> Vec<Event> {
    keys.iter()
        .flat_map(|k| {
            (0..SHARDS).map(move |s| Event {
                key: k.clone(),
                at_ms,
                seq: u64::MAX - s,
            })
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// RFC 3339 of a window start, as results print it.
fn window_start(at_ms: i64) -> String {
    let s = (at_ms / 10_000) * 10;
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// The 10-second counts per (key, window start) of `events`, for windows that end at or before
/// `closed_before_ms` (the windows the watermark has passed).
fn expected(events: &[Event], closed_before_ms: i64) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for e in events {
        if (e.at_ms / 10_000) * 10_000 + 10_000 <= closed_before_ms {
            *out.entry((e.key.clone(), window_start(e.at_ms)))
                .or_insert(0) += 1;
        }
    }
    out
}

fn parse_results(text: &str) -> BTreeMap<(String, String), u64> {
    util::window_results(text)
}

fn results(path: &Path) -> BTreeMap<(String, String), u64> {
    util::window_results_in(path)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Produces `events` to a Kafka topic through ferry's producer (acks=all), keyed by the
/// event's key so that one key's records share a partition; returns once all are acknowledged.
fn produce(brokers: &str, topic: &str, events: &[Event]) {
    let records: Vec<Record> = events.iter().map(Event::record).collect();
    produce_records(brokers, topic, &records, Some("level"));
}

fn produce_records(brokers: &str, topic: &str, records: &[Record], key_field: Option<&str>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sink = KafkaSink::new(&KafkaConfig::new(brokers)).expect("producer");
        sink.send_records(topic, records, key_field, ferry_core::now_ms())
            .await
            .expect("records acknowledged");
    });
}

/// A processor config: count by `level` in 10 s windows of `ts` (Unix ms), results to a file
/// (and `extra_sinks`), reading `topic` from Kafka as a member of `group`.
fn processor_yaml(brokers: &str, group: &str, results: &Path, extra: &str) -> String {
    format!(
        r#"processor:
  checkpoint_interval: 1s
  pipelines:
    - name: levels
      source:
        topics: [app]
        group: {group}
        # Quicker group joins and take-overs than the 6 s default session.
        kafka: {{ brokers: "{brokers}", options: {{ session.timeout.ms: "3000", heartbeat.interval.ms: "500" }} }}
      event_time: {{ field: ts, format: unix_ms }}
      group_by: [level]
      window: {{ tumbling: 10s, allowed_lateness: 0s, idle_timeout: 1h }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
{extra}"#,
        results.display()
    )
}

/// `ferry processor --config CFG` with JSON logs (so the test can read them) and, if given, a
/// metrics endpoint.
fn start_processor(dir: &Dir, name: &str, cfg: &Path, metrics: Option<SocketAddr>) -> Proc {
    let mut args: Vec<String> = vec![
        "--log-format".into(),
        "json".into(),
        "processor".into(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    if let Some(m) = metrics {
        args.push("--metrics-listen".into());
        args.push(m.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(name, dir, &args)
}

/// Log events of a process with JSON logs whose message is `message`.
fn logged(p: &Proc, message: &str) -> Vec<serde_json::Value> {
    p.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Partitions the member holds after its latest assignment.
fn held(p: &Proc) -> Option<u64> {
    logged(p, "kafka partitions assigned")
        .last()
        .and_then(|v| v["partitions"].as_u64())
}

/// A counter from a Prometheus text endpoint, summed over its labels.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let Ok((_, body)) = http_get(addr, "/metrics") else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `ferry agent --kafka` tails a file of JSON lines (and garbage lines) into Kafka; another
/// producer adds records without ferry headers, some of them garbage too. `ferry processor`
/// counts exactly the good records, counts every bad one as a parse error and stays up, and its
/// `kafka` sink puts the same results into a Kafka topic that `ferry consume --kafka` reads.
#[test]
fn agent_to_kafka_to_processor_counts_exactly_skips_garbage_and_writes_results_to_kafka() {
    let dir = Dir::new("kproc-exact");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let keys = keys(3);
    // The file: 2000 events with garbage lines among them, then far-ahead closers.
    let evs = events(0, 2000, &keys);
    let mut text = String::new();
    let garbage_lines = [
        "this is not json",
        "{\"ts\": 1, \"level\": ",
        "[\"an\",\"array\"]",
        "17",
    ];
    for (i, e) in evs.iter().enumerate() {
        text.push_str(&e.line());
        text.push('\n');
        if i % 500 == 250 {
            text.push_str(garbage_lines[i / 500]);
            text.push('\n');
        }
    }
    let far = 24 * 3600 * 1000;
    for c in closers(&keys, far) {
        text.push_str(&c.line());
        text.push('\n');
    }
    let log = dir.write("logs/app.log", &text);
    let agent_addr = free_addr();
    let mut agent = Service::start(
        "agent",
        &dir,
        &[
            "agent",
            "--kafka",
            &brokers,
            "--topic",
            "app",
            "--data-dir",
            &dir.join("agent-data").display().to_string(),
            "--metrics-listen",
            &agent_addr.to_string(),
            &log.display().to_string(),
        ],
        agent_addr,
    );
    let file_lines = evs.len() + garbage_lines.len() + keys.len() * SHARDS as usize;
    wait_until(
        Duration::from_secs(30),
        "the agent to ship the file",
        || metric(agent_addr, "ferry_agent_lines_shipped_total") >= file_lines as u64,
    );
    assert_eq!(agent.terminate(Duration::from_secs(15)), Some(0));
    // Plain records from another producer: no ferry headers; binary and empty values.
    let foreign: Vec<Record> = vec![
        Record::from_line(&b"\xff\xfe binary \x00"[..]),
        Record::from_line(""),
    ];
    produce_records(&brokers, "app", &foreign, None);

    let out = dir.join("results.jsonl");
    let cfg = dir.write(
        "p.yaml",
        processor_yaml(
            &brokers,
            "exact",
            &out,
            "        - kafka: { topic: level-counts }\n      on_parse_error: skip\n",
        )
        // The agent ships the file into one partition; the topic has 4: the three empty ones
        // hold the merged watermark only this long.
        .replace("idle_timeout: 1h", "idle_timeout: 2s"),
    );
    let metrics = free_addr();
    let mut p = start_processor(&dir, "processor", &cfg, Some(metrics));
    let want = expected(&evs, far);
    wait_until(Duration::from_secs(60), "every window result", || {
        results(&out) == want
    });
    let bad = (garbage_lines.len() + 2) as u64;
    wait_until(Duration::from_secs(10), "the parse errors counted", || {
        metric(metrics, "ferry_processor_parse_errors_total") == bad
    });
    assert!(p.exited().is_none(), "the processor stays up");
    assert_eq!(
        metric(metrics, "ferry_processor_records_in_total"),
        (file_lines + 2) as u64
    );
    assert_eq!(lines(&out), want.len(), "each result once");
    wait_until(Duration::from_secs(20), "a checkpoint stored", || {
        metric(metrics, "ferry_processor_checkpoints_total") > 0
    });
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));

    // The kafka sink: the same results, each once, readable by any Kafka consumer.
    let consumed = run(
        ferry().args([
            "consume",
            "--kafka",
            &brokers,
            "level-counts",
            "--from-beginning",
            "--idle-timeout",
            "3s",
        ]),
        b"",
        0,
    );
    let text = String::from_utf8_lossy(&consumed.stdout).into_owned();
    assert_eq!(text.lines().count(), want.len());
    assert_eq!(parse_results(&text), want);
}

/// A processor killed with SIGKILL at varying moments while records arrive, and restarted each
/// time, ends with exactly the results of one uninterrupted run: its state and input offset
/// come back together from the checkpoint topic, so nothing is counted twice or missed.
#[test]
fn processor_killed_9_and_restarted_gives_the_results_of_an_uninterrupted_run() {
    let dir = Dir::new("kproc-kill");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let keys = keys(3);
    let n = 4000u64;
    let slices = 25u64;
    let far = 24 * 3600 * 1000;
    let mut all = events(0, n, &keys);
    all.extend(closers(&keys, far));
    let want = expected(&all, far);
    // The topic exists (4 partitions) before anyone subscribes.
    produce(&brokers, "app", &all[..1]);
    let producer = {
        let (brokers, all) = (brokers.clone(), all.clone());
        std::thread::spawn(move || {
            // The first event went already; the rest in slices over ~10 s.
            let rest = &all[1..];
            let per = rest.len().div_ceil(slices as usize);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let sink = KafkaSink::new(&KafkaConfig::new(brokers)).expect("producer");
            for chunk in rest.chunks(per) {
                let records: Vec<Record> = chunk.iter().map(Event::record).collect();
                // Not keyed by the group-by field: each window's count is merged from all
                // four partitions.
                rt.block_on(sink.send_records(
                    "app",
                    &records,
                    Some("shard"),
                    ferry_core::now_ms(),
                ))
                .expect("records acknowledged");
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let out = dir.join("killed.jsonl");
    let cfg = dir.write("killed.yaml", processor_yaml(&brokers, "killed", &out, ""));
    let mut kills = 0;
    let mut i = 0u64;
    while !producer.is_finished() || kills < 3 {
        let mut p = start_processor(&dir, &format!("killed-{i}"), &cfg, None);
        // A member joins in seconds (longer while the killed one's session still counts);
        // kill it at a varying moment after it got its partitions, mostly after a checkpoint
        // or two (every second), sometimes before any.
        wait_until(Duration::from_secs(40), "the member's assignment", || {
            held(&p).is_some()
        });
        std::thread::sleep(Duration::from_millis(500 + (i * 977) % 2500));
        p.kill9();
        kills += 1;
        i += 1;
    }
    producer.join().expect("producer");
    let mut p = start_processor(&dir, "killed-final", &cfg, None);
    wait_until(Duration::from_secs(90), "the killed run's results", || {
        results(&out).len() == want.len()
    });
    wait_until(Duration::from_secs(40), "the last run's assignment", || {
        held(&p).is_some()
    });
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let restored = (0..i)
        .map(|k| dir.join(format!("killed-{k}.stderr")))
        .chain([dir.join("killed-final.stderr")])
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .filter(|t| t.contains("state restored from checkpoint"))
        .count();
    assert!(restored >= 2, "restarts restored checkpoints ({restored})");

    // The reference: one uninterrupted run, in its own group, over the same records.
    let ref_out = dir.join("reference.jsonl");
    let ref_cfg = dir.write(
        "ref.yaml",
        processor_yaml(&brokers, "reference", &ref_out, ""),
    );
    let mut r = start_processor(&dir, "reference", &ref_cfg, None);
    wait_until(
        Duration::from_secs(60),
        "the reference run's results",
        || results(&ref_out).len() == want.len(),
    );
    wait_until(
        Duration::from_secs(40),
        "the reference run's assignment",
        || held(&r).is_some(),
    );
    assert_eq!(r.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(results(&ref_out), want);
    assert_eq!(lines(&ref_out), want.len());
    assert_eq!(
        results(&out),
        want,
        "results after {kills} kill -9s differ from the uninterrupted run"
    );
}

/// Two processors in one group split a 4-partition topic keyed by the group-by field
/// (`partitioned_by_key: true`): every (key, window) result comes from exactly one of them, once. Then one is killed with SIGKILL: the other takes its partitions
/// over from their checkpoints, and the results over both phases are exactly the expected ones.
#[test]
fn two_processors_in_one_group_split_partitions_and_one_takes_over_after_kill_9() {
    let dir = Dir::new("kproc-group");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let keys = keys(12);
    // Creates the topic with the broker's default of 4 partitions.
    let phase1_end_ms = 150_000;
    let mut first = events(0, 1500, &keys);
    first.extend(closers(&keys, phase1_end_ms));
    produce(&brokers, "app", &first[..1]);
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    // The topic is keyed by the group-by field (each level's records in one partition), and
    // the pipeline says so: each member emits the results of the partitions it holds.
    let keyed = |out: &Path| {
        processor_yaml(&brokers, "shared", out, "").replace(
            "        group: shared\n",
            "        group: shared\n        partitioned_by_key: true\n",
        )
    };
    let cfg_a = dir.write("a.yaml", keyed(&out_a));
    let cfg_b = dir.write("b.yaml", keyed(&out_b));
    let a_metrics = free_addr();
    let mut a = start_processor(&dir, "a", &cfg_a, Some(a_metrics));
    let mut b = start_processor(&dir, "b", &cfg_b, None);
    wait_until(
        Duration::from_secs(60),
        "the group to settle on 2 + 2 partitions",
        || held(&a) == Some(2) && held(&b) == Some(2),
    );
    produce(&brokers, "app", &first[1..]);
    let want1 = expected(&first, phase1_end_ms);
    let both = |a: &Path, b: &Path| {
        std::fs::read_to_string(a).unwrap_or_default()
            + &std::fs::read_to_string(b).unwrap_or_default()
    };
    wait_until(Duration::from_secs(60), "every phase-1 result", || {
        parse_results(&both(&out_a, &out_b)) == want1
    });
    let (ra, rb) = (results(&out_a), results(&out_b));
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "both members worked: a={} b={}",
        ra.len(),
        rb.len()
    );
    for k in ra.keys() {
        assert!(!rb.contains_key(k), "{k:?} was emitted by both members");
    }
    assert_eq!(
        lines(&out_a) + lines(&out_b),
        want1.len(),
        "a window result was emitted twice"
    );

    // Kill a once it stored a checkpoint after its phase-1 results; b takes its partitions over
    // (once a's session expires) from those checkpoints.
    let stored = metric(a_metrics, "ferry_processor_checkpoints_total");
    wait_until(
        Duration::from_secs(20),
        "a checkpoint of a after phase 1",
        || metric(a_metrics, "ferry_processor_checkpoints_total") > stored,
    );
    a.kill9();
    let far = 24 * 3600 * 1000;
    let mut second = events(1600, 3000, &keys);
    second.extend(closers(&keys, far));
    produce(&brokers, "app", &second);
    let mut all = first.clone();
    all.extend(second);
    let want = expected(&all, far);
    wait_until(
        Duration::from_secs(90),
        "every result after the take-over",
        || parse_results(&both(&out_a, &out_b)) == want,
    );
    assert_eq!(held(&b), Some(4), "b holds every partition");
    // b's last assignment restored all four partitions: its own two and a's two.
    let restored: Vec<u64> = logged(&b, "state restored from checkpoint")
        .iter()
        .filter_map(|v| v["partition"].as_u64())
        .collect();
    let mut last4: Vec<u64> = restored.iter().rev().take(4).copied().collect();
    last4.sort();
    assert_eq!(
        last4,
        vec![0, 1, 2, 3],
        "b restored a's partitions from their checkpoints:\n{}",
        b.stderr()
    );
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
}

/// Topic `app` not keyed by the group-by field: records of every key spread over every
/// partition by their shard (`Event::record`).
struct Unkeyed {
    brokers: String,
    keys: Vec<String>,
}

impl Unkeyed {
    fn spread(&self, evs: &[Event]) {
        let records: Vec<Record> = evs.iter().map(Event::record).collect();
        produce_records(&self.brokers, "app", &records, Some("shard"));
    }

    /// Events `from..to` of every key, then one closer per key and shard at `close_at` (every
    /// partition's watermark moves there).
    fn phase(&self, from: u64, to: u64, close_at: i64) -> Vec<Event> {
        let mut evs = events(from, to, &self.keys);
        evs.extend(closers(&self.keys, close_at));
        evs
    }
}

/// The sample setup on Kafka scaled out without keying the topic, with the in-process merge
/// only (`source.repartition: false`): records of every key on all four partitions, two members
/// of one group, and one member SIGKILLed twice (restarted in between). While the members split
/// the partitions, neither emits a partial as a final result (each waits, and says why);
/// whenever one holds them all, it emits the merged result of every window that closed. Over
/// the whole run every (window, key) is emitted exactly once, with the count of all its records.
#[test]
fn without_repartition_two_members_on_an_unkeyed_topic_emit_each_window_once_across_two_kill_9s() {
    let dir = Dir::new("kproc-unkeyed");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let topic = Unkeyed {
        brokers: brokers.clone(),
        keys: keys(5),
    };
    let spread = |evs: &[Event]| topic.spread(evs);
    let phase = |from: u64, to: u64, close_at: i64| topic.phase(from, to, close_at);
    // Creates the topic with the broker's default of 4 partitions.
    let first = phase(0, 1000, 100_000);
    spread(&first[..1]);
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    let in_process = |yaml: String| {
        yaml.replace(
            "group: split\n",
            "group: split\n        repartition: false\n",
        )
    };
    let cfg_a = dir.write(
        "a.yaml",
        in_process(processor_yaml(&brokers, "split", &out_a, "")),
    );
    let cfg_b = dir.write(
        "b.yaml",
        in_process(processor_yaml(&brokers, "split", &out_b, "")),
    );
    let both = || {
        std::fs::read_to_string(&out_a).unwrap_or_default()
            + &std::fs::read_to_string(&out_b).unwrap_or_default()
    };
    let lines_of = |text: &str| text.lines().count();
    let mut a = start_processor(&dir, "a-0", &cfg_a, None);
    let mut b = start_processor(&dir, "b", &cfg_b, None);
    let split = |a: &Proc, b: &Proc| held(a) == Some(2) && held(b) == Some(2);
    wait_until(
        Duration::from_secs(60),
        "the members to split 2 + 2",
        || split(&a, &b),
    );
    spread(&first[1..]);
    let mut all = first.clone();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        lines_of(&both()),
        0,
        "a partial of the topic went out as a final result"
    );
    assert!(
        !logged(&b, "results wait until this member holds every partition (on Kafka, several members of one group need the topic keyed by the group-by field: source.partitioned_by_key: true)").is_empty(),
        "b says why its results wait:\n{}",
        b.stderr()
    );
    let far = 24 * 3600 * 1000;
    for (round, (from, to, close_at)) in [(1000u64, 2000u64, 200_000i64), (2000, 3000, far)]
        .into_iter()
        .enumerate()
    {
        // a dies; b takes its partitions over (once a's session expires) and emits every
        // window closed so far, merged over the four partitions.
        a.kill9();
        let want = expected(&all, all.iter().map(|e| e.at_ms).max().unwrap_or(0));
        wait_until(Duration::from_secs(60), "b's merged results", || {
            parse_results(&both()) == want
        });
        assert_eq!(lines_of(&both()), want.len(), "a result was emitted twice");
        // a comes back: the partitions are split again, and the next records arrive.
        a = start_processor(&dir, &format!("a-{}", round + 1), &cfg_a, None);
        wait_until(
            Duration::from_secs(60),
            "the members to split again",
            || split(&a, &b),
        );
        let next = phase(from, to, close_at);
        spread(&next);
        all.extend(next);
        std::thread::sleep(Duration::from_secs(2));
    }
    // The last kill: b holds everything again and emits the rest.
    a.kill9();
    let want = expected(&all, far);
    wait_until(Duration::from_secs(60), "every result", || {
        parse_results(&both()) == want
    });
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(
        lines_of(&both()),
        want.len(),
        "each (window, key) emitted exactly once across both members"
    );
}

/// Issue 13 on Kafka, the default setup scaled out: the sample pipeline (repartition on, as
/// by default) on a topic not keyed by the group-by field — records of every key on all four
/// partitions — and two members of one group, each writing its own results file. The partials
/// go through the Kafka repartition topic to the member owning each key, so results come out
/// while the members split the partitions. One member is SIGKILLed twice, each time at a random
/// moment after new records, and restarted: every (window, key) is emitted exactly once across
/// both files, equal to the count of its records.
#[test]
fn two_members_on_an_unkeyed_topic_merge_through_the_repartition_topic_across_two_kill_9s() {
    let mut rng = XorShift(seed());
    let dir = Dir::new("kproc-hop");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let topic = Unkeyed {
        brokers: brokers.clone(),
        keys: keys(5),
    };
    let spread = |evs: &[Event]| topic.spread(evs);
    let phase = |from: u64, to: u64, close_at: i64| topic.phase(from, to, close_at);
    // Creates the topic with the broker's default of 4 partitions.
    let first = phase(0, 1000, 100_000);
    spread(&first[..1]);
    let out_a = dir.join("a.jsonl");
    let out_b = dir.join("b.jsonl");
    let cfg_a = dir.write("a.yaml", processor_yaml(&brokers, "hop", &out_a, ""));
    let cfg_b = dir.write("b.yaml", processor_yaml(&brokers, "hop", &out_b, ""));
    let both = || {
        std::fs::read_to_string(&out_a).unwrap_or_default()
            + &std::fs::read_to_string(&out_b).unwrap_or_default()
    };
    let lines_of = |text: &str| text.lines().count();
    let merging = |p: &Proc| !logged(p, "repartition partitions assigned").is_empty();
    let mut a = start_processor(&dir, "a-0", &cfg_a, None);
    let mut b = start_processor(&dir, "b", &cfg_b, None);
    let split = |a: &Proc, b: &Proc| held(a) == Some(2) && held(b) == Some(2);
    wait_until(
        Duration::from_secs(60),
        "the members to split 2 + 2 and to merge",
        || split(&a, &b) && merging(&a) && merging(&b),
    );
    spread(&first[1..]);
    let mut all = first.clone();
    let want = expected(&all, 100_000);
    wait_until(
        Duration::from_secs(90),
        "merged results while the members split the partitions",
        || parse_results(&both()) == want,
    );
    assert_eq!(lines_of(&both()), want.len(), "a result was emitted twice");
    for (round, (from, to, close_at)) in [(1000u64, 2000u64, 200_000i64), (2000, 3000, 300_000)]
        .into_iter()
        .enumerate()
    {
        // New records, and a dies while they are on their way through both hops.
        let next = phase(from, to, close_at);
        spread(&next);
        all.extend(next);
        std::thread::sleep(Duration::from_millis(rng.next() % 1500));
        a.kill9();
        let want = expected(&all, close_at);
        wait_until(
            Duration::from_secs(90),
            "b's results once a's partitions moved to it",
            || parse_results(&both()) == want,
        );
        // a comes back and cuts its file back to its last checkpoint (b emitted again what a
        // emitted after it): each result once across the files.
        a = start_processor(&dir, &format!("a-{}", round + 1), &cfg_a, None);
        wait_until(
            Duration::from_secs(60),
            "the members to split again and a to merge",
            || split(&a, &b) && merging(&a),
        );
        // A result a emitted after its last checkpoint and b has not emitted again yet comes
        // from whoever owns its partition now.
        wait_until(
            Duration::from_secs(60),
            "each result once across the files after a's restart",
            || {
                let text = both();
                parse_results(&text) == want && lines_of(&text) == want.len()
            },
        );
    }
    let far = 24 * 3600 * 1000;
    let last = phase(3000, 4000, far);
    spread(&last);
    all.extend(last);
    let want = expected(&all, far);
    wait_until(Duration::from_secs(90), "every result", || {
        parse_results(&both()) == want
    });
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(
        lines_of(&both()),
        want.len(),
        "each (window, key) emitted exactly once across both members"
    );
    let stderr = a.stderr() + &b.stderr();
    eprintln!(
        "repartition restores in the last runs: {}, duplicates dropped: see ferry_processor_repartition_duplicates_total",
        stderr
            .matches("repartition: state restored from checkpoint")
            .count()
    );
}

/// TLS really on: a broker reachable only over TLS (tansu behind a TLS-terminating proxy; see
/// `ferry_kafka::testing::TlsTansu` for why a proxy). `ferry agent` ships into it and `ferry
/// processor` counts from it, both with `security_protocol: ssl` and the test CA; a processor
/// that trusts another CA is refused at the handshake, says so in its log, produces nothing,
/// and stays up.
#[test]
fn tls_broker_agent_and_processor_with_ssl_and_a_wrong_ca_is_refused_clearly() {
    let dir = Dir::new("kproc-tls");
    let tls = ferry_kafka::testing::TlsTansu::start();
    let brokers = tls.brokers();
    let ca = tls.certs.ca.display().to_string();
    let keys = keys(3);
    let far = 24 * 3600 * 1000;
    let mut evs = events(0, 1000, &keys);
    evs.extend(closers(&keys, far));
    let text: String = evs.iter().map(|e| e.line() + "\n").collect();
    let log = dir.write("logs/app.log", &text);
    let agent_cfg = dir.write(
        "agent.yaml",
        format!(
            "agent:\n  id: tls-agent\n  output: {{type: kafka, brokers: \"{brokers}\", security_protocol: ssl, ssl_ca_location: \"{ca}\"}}\n  inputs: [{{name: app, include: [\"{}\"], topic: app}}]\n",
            log.display()
        ),
    );
    let agent_addr = free_addr();
    let mut agent = Service::start(
        "agent",
        &dir,
        &[
            "agent",
            "--config",
            &agent_cfg.display().to_string(),
            "--data-dir",
            &dir.join("agent-data").display().to_string(),
            "--metrics-listen",
            &agent_addr.to_string(),
        ],
        agent_addr,
    );
    wait_until(
        Duration::from_secs(30),
        "the agent to ship over TLS",
        || metric(agent_addr, "ferry_agent_lines_shipped_total") >= evs.len() as u64,
    );
    assert_eq!(agent.terminate(Duration::from_secs(15)), Some(0));

    let tls_source = |ca: &str| {
        format!(
            "        kafka: {{ brokers: \"{brokers}\", security_protocol: ssl, ssl_ca_location: \"{ca}\", options: {{ session.timeout.ms: \"3000\", heartbeat.interval.ms: \"500\" }} }}"
        )
    };
    let yaml = |group: &str, out: &Path, ca: &str| {
        processor_yaml("unused", group, out, "")
            .replace(
                "        # Quicker group joins and take-overs than the 6 s default session.\n",
                "",
            )
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("kafka: {") {
                    tls_source(ca)
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let out = dir.join("tls.jsonl");
    // The agent shipped the file into one of the topic's 4 partitions: the three empty ones
    // hold the merged watermark only this long.
    let cfg = dir.write(
        "tls.yaml",
        yaml("tls", &out, &ca).replace("idle_timeout: 1h", "idle_timeout: 2s"),
    );
    let mut p = start_processor(&dir, "processor", &cfg, None);
    let want = expected(&evs, far);
    wait_until(Duration::from_secs(60), "every result over TLS", || {
        results(&out) == want
    });
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));

    // The wrong CA: refused at the TLS handshake, named in the log, nothing consumed.
    let wrong_out = dir.join("wrong.jsonl");
    let wrong_ca = tls.certs.wrong_ca.display().to_string();
    let cfg = dir.write("wrong.yaml", yaml("wrong", &wrong_out, &wrong_ca));
    let mut w = start_processor(&dir, "wrong-ca", &cfg, None);
    wait_until(
        Duration::from_secs(30),
        "the handshake failure in the log",
        || w.stderr().contains("certificate verify failed"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        w.exited().is_none(),
        "a refused handshake is retried, not fatal"
    );
    assert!(
        !wrong_out.exists() || lines(&wrong_out) == 0,
        "nothing read without trust"
    );
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
}
