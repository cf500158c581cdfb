//! ferry on Kafka as users meet it: a real `ferry collector --kafka`, real `ferry produce` and
//! `ferry consume --kafka` processes, and a real Kafka-protocol broker (tansu, memory storage).

mod util;
use ferry_kafka::testing::Tansu;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::{Dir, Service, ferry, free_port, http_get, run};

fn collector(dir: &Dir, name: &str, brokers: &str, yaml: Option<&str>) -> Service {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args: Vec<String> = vec![
        "collector".into(),
        "--listen".into(),
        addr.to_string(),
        "--kafka".into(),
        brokers.into(),
    ];
    if let Some(yaml) = yaml {
        args.push("--config".into());
        args.push(
            dir.write(&format!("{name}.yaml"), yaml)
                .display()
                .to_string(),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::start(name, dir, &args, addr)
}

fn numbered(prefix: &str, from: u64, to: u64) -> String {
    (from..to).map(|i| format!("{prefix}-{i}\n")).collect()
}

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn consume(brokers: &str, topic: &str, extra: &[&str]) -> Vec<String> {
    let mut cmd = ferry();
    cmd.args(["consume", "--kafka", brokers, topic]).args(extra);
    lines(&run(&mut cmd, b"", 0).stdout)
}

#[test]
fn collector_kafka_produce_then_consume_kafka_gives_exactly_what_was_acknowledged() {
    let dir = Dir::new("kafka-e2e");
    let broker = Tansu::start();
    let c = collector(&dir, "c", &broker.brokers(), None);
    let sent = numbered("order", 0, 5000);
    run(
        ferry().args(["produce", "--collector", &c.url(), "orders"]),
        sent.as_bytes(),
        0,
    );
    let got = consume(
        &broker.brokers(),
        "orders",
        &["--from-beginning", "--idle-timeout", "3s"],
    );
    assert_eq!(
        got.len(),
        5000,
        "exactly the acknowledged records, none twice"
    );
    let want: BTreeSet<String> = sent.lines().map(str::to_owned).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    // The JSON form names where each record is; --max stops early.
    let json = consume(
        &broker.brokers(),
        "orders",
        &["--from-beginning", "--max", "3", "--format", "json"],
    );
    assert_eq!(json.len(), 3);
    for l in &json {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        assert_eq!(v["topic"], "orders");
        assert!(v["line"].as_str().is_some_and(|s| s.starts_with("order-")));
        assert!(v["partition"].as_i64().is_some_and(|p| (0..4).contains(&p)));
    }
    // Reading endpoints point at Kafka instead of answering from an empty store.
    let (status, body) = http_get(c.addr, "/v1/topics").expect("get");
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("ferry consume --kafka"), "{body}");
}

/// The broker dies (and, with memory storage, forgets everything): posts are refused with
/// 503 and never acknowledged; after a restart, posts succeed again and every record
/// acknowledged after the restart is readable.
#[test]
fn broker_down_refuses_posts_and_after_restart_acknowledged_records_are_readable() {
    let dir = Dir::new("kafka-restart");
    let mut broker = Tansu::start();
    let port = broker.port;
    let brokers = broker.brokers();
    let c = collector(
        &dir,
        "c",
        &brokers,
        Some(
            "collector:\n  backend: kafka\n  kafka:\n    brokers: unused\n    message_timeout: 2s\n",
        ),
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let post = |body: String| {
        http.post(format!("{}/v1/topics/events/records", c.url()))
            .body(body)
            .send()
            .expect("post")
    };
    let r = post(numbered("before", 0, 100));
    assert_eq!(r.status(), 200);

    broker.kill();
    let started = Instant::now();
    let r = post(numbered("down", 0, 100));
    assert_eq!(r.status(), 503, "{:?}", r.text());
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused within the message timeout, took {:?}",
        started.elapsed()
    );

    let broker = Tansu::start_on(port);
    // The producer reconnects with backoff: retry like a client that got 503 does.
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..5 {
        let body = numbered(&format!("after{round}"), 0, 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = post(body.clone());
            if r.status() == 200 {
                acknowledged.extend(body.lines().map(str::to_owned));
                break;
            }
            assert_eq!(r.status(), 503, "only 503 while recovering");
            assert!(Instant::now() < deadline, "no recovery after 30s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let got: BTreeSet<String> = consume(
        &broker.brokers(),
        "events",
        &["--from-beginning", "--idle-timeout", "3s"],
    )
    .into_iter()
    .collect();
    for line in &acknowledged {
        assert!(got.contains(line), "acknowledged {line} is missing");
    }
    // Nothing appears that was never posted (refused posts may show up: at-least-once).
    for line in &got {
        assert!(
            line.starts_with("after") || line.starts_with("down-"),
            "unexpected {line}"
        );
    }
}

/// A `ferry consume --kafka --group` process with its stderr (JSON logs) in a file and its
/// stdout collected by a thread.
struct Member {
    child: Child,
    stderr: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(dir: &Dir, name: &str, brokers: &str, topic: &str, group: &str) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = ferry()
            .args([
                "--log-format",
                "json",
                "consume",
                "--kafka",
                brokers,
                topic,
                "--group",
                group,
                "--from-beginning",
                "--idle-timeout",
                "60s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn consume");
        let mut child = child;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                sink.lock().expect("lines").push(l);
            }
        });
        Member {
            child,
            stderr,
            lines,
        }
    }

    fn got(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Partitions in this member's latest assignment, from its log.
    fn assigned(&self) -> Option<usize> {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["message"] == "kafka partitions assigned")
            .and_then(|v| v["count"].as_u64())
            .map(|n| n as usize)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_group_members_split_partitions_and_together_see_every_record_once() {
    let dir = Dir::new("kafka-group");
    let broker = Tansu::start();
    // Keyed by a field of the JSON lines: 50 keys spread over the 4 partitions.
    let c = collector(
        &dir,
        "c",
        &broker.brokers(),
        Some(
            "collector:\n  backend: kafka\n  kafka: { brokers: unused }\n  topics: { split: { key_field: user } }\n",
        ),
    );
    // Create the topic (4 partitions, auto-created) before the members subscribe.
    run(
        ferry().args(["produce", "--collector", &c.url(), "split"]),
        b"seed\n",
        0,
    );
    let a = Member::start(&dir, "a", &broker.brokers(), "split", "g");
    let b = Member::start(&dir, "b", &broker.brokers(), "split", "g");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(a.assigned() == Some(2) && b.assigned() == Some(2)) {
        assert!(
            Instant::now() < deadline,
            "group did not settle to 2+2 partitions: a={:?} b={:?}\n--- a\n{}\n--- b\n{}",
            a.assigned(),
            b.assigned(),
            std::fs::read_to_string(&a.stderr).unwrap_or_default(),
            std::fs::read_to_string(&b.stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Members read from the beginning (a "latest" start races with the first records: its
    // position is looked up lazily). The seed may be read twice while the group forms (the
    // first member reads it, the partition moves before its commit lands): it is left out of
    // the exactly-once check, which is about the records sent to the settled group.
    let sent: String = (0..2000)
        .map(|i| format!("{{\"user\":\"u{}\",\"n\":{i}}}\n", i % 50))
        .collect();
    run(
        ferry().args(["produce", "--collector", &c.url(), "split"]),
        sent.as_bytes(),
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.got().len() + b.got().len() < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A duplicate would show up now, if any.
    std::thread::sleep(Duration::from_secs(1));
    let (out_a, out_b) = (a.got(), b.got());
    assert!(
        !out_a.is_empty() && !out_b.is_empty(),
        "both members got records"
    );
    let (out_a, out_b): (Vec<String>, Vec<String>) = (
        out_a.into_iter().filter(|l| l != "seed").collect(),
        out_b.into_iter().filter(|l| l != "seed").collect(),
    );
    let (na, nb) = (out_a.len(), out_b.len());
    let mut all: Vec<String> = out_a.into_iter().chain(out_b).collect();
    all.sort();
    let total = all.len();
    let got: BTreeSet<String> = all.iter().cloned().collect();
    let want: BTreeSet<String> = sent.lines().map(str::to_owned).collect();
    let missing: Vec<&String> = want.difference(&got).take(5).collect();
    let extra: Vec<&String> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && total == want.len(),
        "every record exactly once across the group: a={na} b={nb} total={total} distinct={} missing (first 5) {missing:?} extra {extra:?}",
        got.len()
    );
}

/// A counter's value summed over its labels, from Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn agent_metric(agent: &Service, name: &str) -> u64 {
    http_get(agent.addr, "/metrics").map_or(0, |(_, body)| metric_sum(&body, name))
}

fn wait_metric(agent: &Service, name: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = agent_metric(agent, name);
        if v >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {v}, waited for {n}:\n{}",
            std::fs::read_to_string(&agent.stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ferry agent --kafka` as users run it: a real agent process tails a real file that is
/// rotated by rename (the old handle writes one more line after the rename, as real writers
/// do) into a real broker; `ferry consume --kafka` then prints exactly the lines written, each
/// once.
#[test]
fn agent_kafka_tails_a_rotated_file_and_consume_gives_exactly_the_lines() {
    use std::io::Write;
    let dir = Dir::new("kafka-agent");
    let broker = Tansu::start();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let log = logs.join("app.log");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let data = dir.join("agent-data");
    let mut agent = Service::start(
        "agent",
        &dir,
        &[
            "agent",
            "--kafka",
            &broker.brokers(),
            "--topic",
            "app",
            "--data-dir",
            &data.display().to_string(),
            "--metrics-listen",
            &addr.to_string(),
            &log.display().to_string(),
        ],
        addr,
    );
    let mut written: Vec<String> = Vec::new();
    let mut write = |f: &mut std::fs::File, tag: &str, n: usize| {
        let from = written.len();
        let text: String = (from..from + n)
            .map(|i| format!("{tag}-{i:05} {}\n", "x".repeat(i % 40)))
            .collect();
        f.write_all(text.as_bytes()).expect("write");
        written.extend(text.lines().map(str::to_owned));
    };
    let mut old = std::fs::File::create(&log).expect("create app.log");
    write(&mut old, "first", 1000);
    // The agent has the file open (it read these lines) before it is rotated.
    wait_metric(
        &agent,
        "ferry_agent_lines_read_total",
        1000,
        Duration::from_secs(20),
    );
    write(&mut old, "first", 500);
    std::fs::rename(&log, logs.join("app.log.1")).expect("rotate");
    write(&mut old, "late", 1);
    drop(old);
    let mut new = std::fs::File::create(&log).expect("create new app.log");
    write(&mut new, "second", 1000);
    drop(new);
    let total = written.len();
    wait_metric(
        &agent,
        "ferry_agent_lines_shipped_total",
        total as u64,
        Duration::from_secs(20),
    );
    assert_eq!(agent.terminate(Duration::from_secs(15)), Some(0));

    let got = consume(
        &broker.brokers(),
        "app",
        &["--from-beginning", "--idle-timeout", "3s"],
    );
    let want: BTreeSet<String> = written.iter().cloned().collect();
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    let missing: Vec<&String> = want.difference(&distinct).take(5).collect();
    let extra: Vec<&String> = distinct.difference(&want).take(5).collect();
    assert!(
        got.len() == total && missing.is_empty() && extra.is_empty(),
        "exactly the {total} lines written, each once: got {} ({} distinct), missing (first 5) {missing:?}, extra {extra:?}",
        got.len(),
        distinct.len()
    );
}

/// Every record of a Kafka topic with its origin, read with a throw-away group from the start
/// until `n` arrived and nothing more came for a second.
fn read_with_origin(brokers: &str, topic: &str, n: usize) -> Vec<ferry_kafka::ConsumedRecord> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let source = ferry_kafka::KafkaSource::new(
            &ferry_kafka::KafkaConfig::new(brokers),
            &ferry_kafka::SourceConfig {
                topics: vec![topic.to_owned()],
                group: format!("test-reader-{}", std::process::id()),
                start: ferry_kafka::StartPosition::Earliest,
            },
        )
        .expect("source");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = source
                .poll(10_000, Duration::from_secs(1))
                .await
                .expect("poll");
            if got.is_empty() && (out.len() >= n || Instant::now() > deadline) {
                break;
            }
            out.extend(got);
        }
        source.close(Duration::from_secs(5)).await;
        out
    })
}

/// At-least-once across an agent crash, and why the origin headers are there: an agent killed
/// (-9) after Kafka acknowledged its lines but before it wrote its checkpoint sends them again
/// on restart. Kafka keeps both copies; dropping records whose (agent, file, offset) was seen
/// leaves exactly the lines written.
#[test]
fn agent_killed_before_its_checkpoint_replays_and_origin_headers_deduplicate() {
    use std::io::Write;
    let dir = Dir::new("kafka-agent-crash");
    let broker = Tansu::start();
    let log = dir.join("app.log");
    let lines: Vec<String> = (0..1000).map(|i| format!("crash-{i:05}")).collect();
    let mut f = std::fs::File::create(&log).expect("create");
    f.write_all(
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_bytes(),
    )
    .expect("write");
    drop(f);
    // No checkpoint while it runs (the first, at start, has nothing acknowledged yet).
    let config = dir.write(
        "agent.yaml",
        format!(
            "agent:\n  id: crash-agent\n  checkpoint_interval: 3600s\n  output: {{type: kafka, brokers: \"{}\"}}\n  inputs: [{{name: app, include: [\"{}\"], topic: replay}}]\n",
            broker.brokers(),
            log.display()
        ),
    );
    let data = dir.join("agent-data");
    let start_agent = |name: &str| {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let agent = Service::start(
            name,
            &dir,
            &[
                "agent",
                "--config",
                &config.display().to_string(),
                "--data-dir",
                &data.display().to_string(),
                "--metrics-listen",
                &addr.to_string(),
            ],
            addr,
        );
        wait_metric(
            &agent,
            "ferry_agent_lines_shipped_total",
            1000,
            Duration::from_secs(20),
        );
        agent
    };
    let mut first = start_agent("agent-1");
    first.kill9();
    let mut second = start_agent("agent-2");
    assert_eq!(second.terminate(Duration::from_secs(15)), Some(0));

    let got = read_with_origin(&broker.brokers(), "replay", 2000);
    assert_eq!(
        got.len(),
        2000,
        "every line twice: delivered, then replayed"
    );
    let mut seen = BTreeSet::new();
    let mut deduplicated = Vec::new();
    for r in &got {
        let origin = r.origin.as_ref().expect("origin headers");
        assert_eq!(origin.agent_id, "crash-agent");
        let offset = r.record.offset.expect("offset header");
        if seen.insert((origin.file, offset)) {
            deduplicated.push(String::from_utf8_lossy(&r.record.line).into_owned());
        }
    }
    deduplicated.sort();
    assert_eq!(
        deduplicated, lines,
        "deduplicated by origin: exactly the lines written"
    );
}

/// Appends numbered lines to `path` (10 every 20 ms) until `stop`; returns them.
fn steady_writer(
    path: PathBuf,
    tag: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    use std::io::Write;
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).expect("create log");
        let mut written = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let from = written.len();
            let text: String = (from..from + 10)
                .map(|i| format!("{tag}-{i:06} {}\n", "y".repeat(i % 30)))
                .collect();
            f.write_all(text.as_bytes()).expect("write");
            written.extend(text.lines().map(str::to_owned));
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    })
}

/// The lines of a topic with repeats of one origin (agent, file, offset) dropped, sorted.
fn deduplicated_lines(brokers: &str, topic: &str, at_least: usize) -> (Vec<String>, usize) {
    let got = read_with_origin(brokers, topic, at_least);
    let mut seen = BTreeSet::new();
    let mut lines = Vec::new();
    for r in &got {
        let origin = r.origin.as_ref().expect("origin headers");
        let offset = r.record.offset.expect("offset header");
        if seen.insert((origin.agent_id.clone(), origin.file, offset)) {
            lines.push(String::from_utf8_lossy(&r.record.line).into_owned());
        }
    }
    lines.sort();
    (lines, got.len())
}

/// The broker stopped (SIGSTOP: it answers nothing, its data stays) for 30 s and resumed,
/// while two files keep growing: one tailed by `ferry agent --kafka`, one by an agent shipping
/// to `ferry collector --kafka`. The agents keep the files as their buffer; once the broker is
/// back, every line written reaches Kafka — none lost; repeats (at-least-once) are only those
/// an origin already had.
#[test]
fn broker_stopped_30s_while_agents_write_loses_no_line() {
    let dir = Dir::new("kafka-outage");
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let c = collector(
        &dir,
        "c",
        &brokers,
        Some(
            "collector:\n  backend: kafka\n  kafka:\n    brokers: unused\n    message_timeout: 5s\n",
        ),
    );
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let start_agent = |name: &str, out: &[&str], topic: &str, file: &str| {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let data = dir.join(format!("{name}-data"));
        let log = logs.join(file);
        let mut args = vec!["agent"];
        args.extend_from_slice(out);
        let (data, addr_s, log) = (
            data.display().to_string(),
            addr.to_string(),
            log.display().to_string(),
        );
        args.extend_from_slice(&[
            "--topic",
            topic,
            "--data-dir",
            &data,
            "--metrics-listen",
            &addr_s,
            &log,
        ]);
        Service::start(name, &dir, &args, addr)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let direct_writer = steady_writer(logs.join("direct.log"), "direct", stop.clone());
    let via_writer = steady_writer(logs.join("via.log"), "via", stop.clone());
    let curl = c.url();
    let mut direct = start_agent(
        "agent-direct",
        &["--kafka", &brokers],
        "direct",
        "direct.log",
    );
    let mut via = start_agent("agent-via", &["--collector", &curl], "via", "via.log");
    wait_metric(
        &direct,
        "ferry_agent_lines_shipped_total",
        200,
        Duration::from_secs(30),
    );
    wait_metric(
        &via,
        "ferry_agent_lines_shipped_total",
        200,
        Duration::from_secs(30),
    );

    broker.pause();
    let paused_at = (
        agent_metric(&direct, "ferry_agent_lines_shipped_total"),
        agent_metric(&via, "ferry_agent_lines_shipped_total"),
    );
    std::thread::sleep(Duration::from_secs(30));
    // Nothing is acknowledged while the broker is away (a batch in flight at the pause may be).
    let during = (
        agent_metric(&direct, "ferry_agent_lines_shipped_total"),
        agent_metric(&via, "ferry_agent_lines_shipped_total"),
    );
    broker.resume();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let direct_lines = direct_writer.join().expect("writer");
    let via_lines = via_writer.join().expect("writer");
    for (agent, n) in [(&direct, direct_lines.len()), (&via, via_lines.len())] {
        wait_metric(
            agent,
            "ferry_agent_lines_shipped_total",
            n as u64,
            Duration::from_secs(120),
        );
    }
    assert!(
        during.0 < direct_lines.len() as u64 && during.1 < via_lines.len() as u64,
        "the outage held the agents back: shipped {during:?} at its end (from {paused_at:?} at its start)"
    );
    assert_eq!(direct.terminate(Duration::from_secs(15)), Some(0));
    assert_eq!(via.terminate(Duration::from_secs(15)), Some(0));
    for (topic, written) in [("direct", direct_lines), ("via", via_lines)] {
        let mut want = written;
        want.sort();
        let (got, raw) = deduplicated_lines(&brokers, topic, want.len());
        eprintln!(
            "{topic}: {} lines written, {raw} messages in Kafka",
            want.len()
        );
        let missing: Vec<&String> = want
            .iter()
            .filter(|l| got.binary_search(l).is_err())
            .take(5)
            .collect();
        assert!(missing.is_empty(), "{topic}: lines lost, e.g. {missing:?}");
        assert_eq!(
            got, want,
            "{topic}: exactly the lines written, after dropping repeats by origin"
        );
    }
}
