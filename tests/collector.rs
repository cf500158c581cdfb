//! The collector as users meet it: a real `ferry collector` process, real HTTP, the real CLI.

mod util;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use util::{Dir, Service, ferry, free_port, produce, run};

fn start(dir: &Dir, name: &str, config: Option<&str>) -> Service {
    util::start_collector(dir, name, config)
}

/// Restarts a collector on the same address and data dir.
fn restart(dir: &Dir, old: &Service, name: &str) -> Service {
    let data = dir.join(format!("{name}-data"));
    let addr = old.addr.to_string();
    let args = [
        "collector",
        "--listen",
        &addr,
        "--data-dir",
        data.to_str().expect("utf8"),
    ];
    Service::start(name, dir, &args, old.addr)
}

fn consume(url: &str, topic: &str, extra: &[&str]) -> Vec<String> {
    let mut cmd = ferry();
    cmd.args(["consume", "--collector", url, topic, "--idle-timeout", "1s"]);
    cmd.args(extra);
    let out = run(&mut cmd, b"", 0);
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn numbered(from: u64, to: u64) -> String {
    (from..to).map(|i| format!("record-{i}\n")).collect()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

#[test]
fn produce_kill9_restart_consume_returns_exactly_what_was_acknowledged() {
    let dir = Dir::new("kill9");
    let mut c = start(&dir, "c", None);
    let url = c.url();
    for chunk in 0..5 {
        produce(&url, "orders", &numbered(chunk * 2000, (chunk + 1) * 2000));
    }
    c.kill9();
    let c = restart(&dir, &c, "c");
    let mut got = consume(&c.url(), "orders", &["--from-beginning"]);
    assert_eq!(got.len(), 10_000);
    got.sort_by_key(|l| l[7..].parse::<u64>().expect("seq"));
    let want: Vec<String> = (0..10_000).map(|i| format!("record-{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn one_group_splits_partitions_two_groups_each_see_all() {
    let dir = Dir::new("groups");
    let c = start(&dir, "c", Some("collector:\n  default_partitions: 4\n"));
    let url = c.url();
    // Create the topic, start two members of group "email", and wait until they have split its
    // partitions; then produce. Eight posts: batches without an origin are spread round-robin.
    run(
        ferry().args(["produce", "--collector", &url, "events"]),
        b"warm-up\n",
        0,
    );
    let spawn_member = |group: &str| {
        ferry()
            .args(["consume", "--collector", &url, "events", "--group", group])
            .args(["--idle-timeout", "4s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn consumer")
    };
    let a = spawn_member("email");
    let b = spawn_member("email");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(
            ferry().args(["groups", "--collector", &url, "--json"]),
            b"",
            0,
        );
        let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let split = groups.as_array().into_iter().flatten().any(|g| {
            g["group"] == "email"
                && g["members"].as_array().is_some_and(|m| {
                    m.len() == 2
                        && m.iter()
                            .all(|m| m["partitions"].as_array().is_some_and(|p| p.len() == 2))
                })
        });
        if split {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members never split the partitions: {groups}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for chunk in 0..8 {
        produce(&url, "events", &numbered(chunk * 500, (chunk + 1) * 500));
    }
    let out_a = a.wait_with_output().expect("a");
    let out_b = b.wait_with_output().expect("b");
    assert!(
        out_a.status.success(),
        "{}",
        String::from_utf8_lossy(&out_a.stderr)
    );
    assert!(
        out_b.status.success(),
        "{}",
        String::from_utf8_lossy(&out_b.stderr)
    );
    let lines_a: Vec<String> = String::from_utf8_lossy(&out_a.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let lines_b: Vec<String> = String::from_utf8_lossy(&out_b.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut all: Vec<&String> = lines_a.iter().chain(&lines_b).collect();
    assert_eq!(all.len(), 4000, "a={} b={}", lines_a.len(), lines_b.len());
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        4000,
        "a record was delivered twice within one group"
    );
    assert!(
        !lines_a.is_empty() && !lines_b.is_empty(),
        "the partitions were not split: a={} b={}",
        lines_a.len(),
        lines_b.len()
    );
    // The group committed everything: a new member finds nothing left.
    assert!(consume(&url, "events", &["--group", "email"]).is_empty());
    // Another group sees everything again, on its own.
    assert_eq!(
        consume(&url, "events", &["--group", "sms", "--from-beginning"]).len(),
        4001
    );
    // `ferry groups --json` shows both with zero lag.
    let out = run(
        ferry().args(["groups", "--collector", &url, "--json"]),
        b"",
        0,
    );
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for g in ["email", "sms"] {
        let view = groups
            .as_array()
            .expect("array")
            .iter()
            .find(|v| v["group"] == g)
            .expect("group listed");
        assert_eq!(view["lag_records"], 0, "{view}");
    }
}

#[test]
fn consume_max_commits_exactly_what_it_printed() {
    let dir = Dir::new("max");
    let c = start(&dir, "c", Some("collector:\n  default_partitions: 1\n"));
    let url = c.url();
    produce(&url, "q", &numbered(0, 100));
    let first = consume(
        &url,
        "q",
        &["--group", "w", "--from-beginning", "--max", "30"],
    );
    let second = consume(&url, "q", &["--group", "w", "--max", "1000"]);
    assert_eq!(first.len(), 30);
    assert_eq!(second.len(), 70);
    assert_eq!(first.last().map(String::as_str), Some("record-29"));
    assert_eq!(second.first().map(String::as_str), Some("record-30"));
}

#[test]
fn limits_answer_413_429_and_503_with_retry_after() {
    let dir = Dir::new("limits");
    let c = start(
        &dir,
        "c",
        Some(
            "collector:
  default_partitions: 1
  topics:
    sale:
      max_records: 100
  limits:
    max_body_bytes: 64KiB
    max_inflight_bytes: 64KiB
    max_line_bytes: 1KiB
    retry_after_secs: 2
",
        ),
    );
    let url = c.url();
    let client = http();
    let post = |topic: &str, body: Vec<u8>| {
        client
            .post(format!("{url}/v1/topics/{topic}/records"))
            .body(body)
            .send()
            .expect("post")
    };
    // 413: a body over max_body_bytes, and a line over max_line_bytes.
    let r = post("t", vec![b'x'; 100 * 1024]);
    assert_eq!(r.status(), 413);
    assert!(r.text().expect("text").contains("max_body_bytes"));
    let r = post(
        "t",
        [b"ok\n".to_vec(), vec![b'y'; 2000], b"\n".to_vec()].concat(),
    );
    assert_eq!(r.status(), 413);
    assert!(r.text().expect("text").contains("line 2"));
    // 429: the flash sale. 80 fit, the next 30 do not: refused whole, nothing silently dropped.
    assert_eq!(post("sale", numbered(0, 80).into_bytes()).status(), 200);
    let r = post("sale", numbered(80, 110).into_bytes());
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert!(r.text().expect("text").contains("is full"));
    assert_eq!(post("sale", numbered(80, 100).into_bytes()).status(), 200);
    assert_eq!(consume(&url, "sale", &["--from-beginning"]).len(), 100);
    // 503: a slow upload holds all in-flight bytes; the next request is refused, not queued.
    let mut slow = TcpStream::connect(c.addr).expect("connect");
    write!(
        slow,
        "POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let r = post("t", b"another\n".to_vec());
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    // Finishing the slow upload frees the bytes again.
    write!(slow, "0\r\n\r\n").expect("finish");
    let mut reply = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(post("t", b"another\n".to_vec()).status(), 200);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_the_service_stays_up() {
    let dir = Dir::new("bad");
    let c = start(
        &dir,
        "c",
        Some("collector:\n  default_partitions: 1\n  limits:\n    max_raw_bytes: 1MiB\n"),
    );
    let url = c.url();
    let client = http();
    produce(&url, "keep", &numbered(0, 10));
    let post = |topic: &str, ct: &str, ce: Option<&str>, body: Vec<u8>| {
        let mut rb = client
            .post(format!("{url}/v1/topics/{topic}/records"))
            .header("content-type", ct);
        if let Some(ce) = ce {
            rb = rb.header("content-encoding", ce);
        }
        let r = rb.body(body).send().expect("post");
        let status = r.status().as_u16();
        (status, r.text().expect("text"))
    };
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("gz");
        e.finish().expect("gz")
    };
    // Garbage in the batch content type.
    let (s, m) = post(
        "keep",
        "application/x-ferry-batch",
        None,
        b"\x00garbage bytes here, not a batch at all".to_vec(),
    );
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("magic"), "{m}");
    // Truncated gzip.
    let mut body = gz(b"line one\nline two\n");
    body.truncate(body.len() - 6);
    let (s, m) = post("keep", "text/plain", Some("gzip"), body);
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("gzip"), "{m}");
    // A gzip bomb: 64 MiB of newlines in a small body, over max_raw_bytes.
    let (s, m) = post(
        "keep",
        "text/plain",
        Some("gzip"),
        gz(&vec![b'\n'; 64 << 20]),
    );
    assert_eq!(s, 413, "{m}");
    // Unknown content encoding.
    let (s, m) = post("keep", "text/plain", Some("br"), b"x\n".to_vec());
    assert_eq!(s, 400, "{m}");
    // Illegal topic names.
    for bad in ["bad%2Fname", "__internal", "sp%20ace"] {
        let (s, m) = post(bad, "text/plain", None, b"x\n".to_vec());
        assert_eq!(s, 400, "{bad}: {m}");
        assert!(m.contains("topic name"), "{m}");
    }
    // Invalid UTF-8 is stored as bytes, not refused.
    let (s, m) = post("bytes", "text/plain", None, b"caf\xe9\n".to_vec());
    assert_eq!(s, 200, "{m}");
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            &url,
            "bytes",
            "--from-beginning",
            "--idle-timeout",
            "1s",
        ]),
        b"",
        0,
    );
    assert_eq!(out.stdout, b"caf\xe9\n");
    // Offsets out of range, and a bad query.
    let r = client
        .get(format!(
            "{url}/v1/topics/keep/partitions/0/records?offset=999"
        ))
        .send()
        .expect("get");
    assert_eq!(r.status(), 416);
    assert!(r.text().expect("text").contains("[0, 10)"));
    let r = client
        .get(format!(
            "{url}/v1/topics/keep/partitions/7/records?offset=0"
        ))
        .send()
        .expect("get");
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!(
            "{url}/v1/topics/keep/partitions/0/records?offset=minus-one"
        ))
        .send()
        .expect("get");
    assert_eq!(r.status(), 400);
    // A member heartbeating for a group it left; a commit for a partition it does not own.
    let join: serde_json::Value = client
        .post(format!("{url}/v1/groups/g/join"))
        .body(r#"{"topics":["keep"]}"#)
        .send()
        .expect("join")
        .json()
        .expect("json");
    let member = join["member_id"].as_str().expect("member").to_owned();
    let r = client
        .post(format!("{url}/v1/groups/g/commit"))
        .body(format!(
            r#"{{"member_id":"{member}","offsets":[{{"topic":"other","partition":0,"offset":1}}]}}"#
        ))
        .send()
        .expect("commit");
    assert_eq!(r.status(), 409);
    let r = client
        .post(format!("{url}/v1/groups/g/leave"))
        .body(format!(r#"{{"member_id":"{member}"}}"#))
        .send()
        .expect("leave");
    assert_eq!(r.status(), 204);
    let r = client
        .post(format!("{url}/v1/groups/g/heartbeat"))
        .body(format!(r#"{{"member_id":"{member}"}}"#))
        .send()
        .expect("hb");
    assert_eq!(r.status(), 404);
    assert!(r.text().expect("text").contains("join again"));
    // Wrong JSON types in a request body.
    let r = client
        .post(format!("{url}/v1/groups/g/join"))
        .body(r#"{"topics":"keep"}"#)
        .send()
        .expect("join");
    assert_eq!(r.status(), 400);
    // After all that, the stored records are intact and the service is up.
    assert_eq!(
        consume(&url, "keep", &["--from-beginning"]),
        numbered(0, 10)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );
    assert_eq!(util::http_get(c.addr, "/healthz").expect("healthz").0, 200);
    let (_, metrics) = util::http_get(c.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ferry_collector_http_errors_total"),
        "{metrics}"
    );
}

#[test]
fn routing_rules_copy_to_and_drop_and_count() {
    let dir = Dir::new("routes");
    let c = start(
        &dir,
        "c",
        Some(
            r#"collector:
  default_partitions: 2
  routes:
    - name: drop-debug
      match: { topic: app, fields: { level: debug } }
      drop: true
    - name: errors
      match: { topic: app, regex: '"level":"error"' }
      to: [errors]
    - name: audit
      match: { topic: app, fields: { user: root } }
      copy: [audit]
"#,
        ),
    );
    let url = c.url();
    let lines = [
        r#"{"level":"debug","msg":"d"}"#,
        r#"{"level":"error","msg":"e1"}"#,
        r#"{"level":"info","msg":"i1","user":"root"}"#,
        r#"{"level":"info","msg":"i2"}"#,
        r#"{"level":"error","msg":"e2","user":"root"}"#,
    ];
    let body = lines.join("\n") + "\n";
    let r = http()
        .post(format!("{url}/v1/topics/app/records"))
        .body(body)
        .send()
        .expect("post");
    assert_eq!(r.status(), 200);
    let summary: serde_json::Value = r.json().expect("json");
    assert_eq!(summary["records"], 5);
    assert_eq!(summary["dropped"], 1);
    assert_eq!(summary["routed"]["errors"], 2);
    assert_eq!(summary["routed"]["app"], 2);
    assert_eq!(summary["routed"]["audit"], 1);
    let mut app = consume(&url, "app", &["--from-beginning"]);
    app.sort();
    assert_eq!(app, vec![lines[2].to_owned(), lines[3].to_owned()]);
    assert_eq!(consume(&url, "errors", &["--from-beginning"]).len(), 2);
    assert_eq!(
        consume(&url, "audit", &["--from-beginning"]),
        vec![lines[2].to_owned()]
    );
    let (_, metrics) = util::http_get(c.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ferry_collector_route_matches_total{rule=\"drop-debug\"} 1"),
        "{metrics}"
    );
}

#[test]
fn sigterm_drains_and_restart_keeps_records_and_offsets() {
    let dir = Dir::new("drain");
    let mut c = start(&dir, "c", None);
    let url = c.url();
    produce(&url, "t", &numbered(0, 500));
    assert_eq!(
        consume(
            &url,
            "t",
            &["--group", "g", "--from-beginning", "--max", "200"]
        )
        .len(),
        200
    );
    assert_eq!(c.terminate(Duration::from_secs(15)), Some(0));
    assert!(c.stderr().contains("store closed"), "{}", c.stderr());
    let c = restart(&dir, &c, "c");
    let rest = consume(&c.url(), "t", &["--group", "g"]);
    assert_eq!(rest.len(), 300);
}

#[test]
fn cli_errors_name_the_problem() {
    let out = run(
        ferry().args(["produce", "--collector", "ftp://x", "t"]),
        b"",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
    let port = free_port();
    let out = run(
        Command::new(util::ferry_bin()).args([
            "topics",
            "--collector",
            &format!("http://127.0.0.1:{port}"),
        ]),
        b"",
        1,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the collector"));
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            "http://127.0.0.1:1",
            "t",
            "--format",
            "xml",
        ]),
        b"",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("raw or json"));
}

#[test]
fn processor_checkpoints_are_fenced_by_ownership_and_survive_restart() {
    let dir = Dir::new("ckpt");
    let mut c = start(&dir, "c", Some("collector:\n  default_partitions: 1\n"));
    let url = c.url();
    produce(&url, "in", &numbered(0, 10));
    let client = http();
    // Member ids are the collector's: each join without one gets a fresh, unguessable id.
    let join = || -> serde_json::Value {
        client
            .post(format!("{url}/v1/groups/p/join"))
            .body(r#"{"topics":["in"]}"#)
            .send()
            .expect("join")
            .json()
            .expect("json")
    };
    let joined = join();
    assert_eq!(joined["partitions"][0][0], "in");
    let a = joined["member_id"].as_str().expect("member id").to_owned();
    let put = |member: &str, offset: u64, body: &'static [u8]| {
        client
            .put(format!(
                "{url}/v1/groups/p/checkpoints/in/0?member_id={member}&offset={offset}"
            ))
            .body(body)
            .send()
            .expect("put")
            .status()
            .as_u16()
    };
    assert_eq!(put(&a, 7, b"window state at 7"), 204);
    // b joins: it is not the owner until a releases, so its write is refused.
    let b = join()["member_id"].as_str().expect("member id").to_owned();
    assert_eq!(put(&b, 9, b"zombie"), 409);
    assert_eq!(put("nobody", 9, b"zombie"), 404);
    let r = client
        .get(format!("{url}/v1/groups/p/checkpoints/in/0"))
        .send()
        .expect("get");
    assert_eq!(r.headers()["x-ferry-offset"], "7");
    assert_eq!(r.bytes().expect("body").as_ref(), b"window state at 7");
    // The checkpoint committed the group's offset too (lag is visible), and both survive kill -9.
    c.kill9();
    let c = restart(&dir, &c, "c");
    let r = client
        .get(format!("{}/v1/groups/p/checkpoints/in/0", c.url()))
        .send()
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ferry-offset"], "7");
    let offsets: serde_json::Value = client
        .get(format!("{}/v1/groups/p/offsets", c.url()))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(offsets[0]["offset"], 7);
    let r = client
        .get(format!("{}/v1/groups/p/checkpoints/in/3", c.url()))
        .send()
        .expect("get");
    assert_eq!(r.status(), 404);
}

/// An agent batch of `lines` lines of file `inode` starting at file offset `first`; returns the
/// encoded batch and its end offset.
fn file_batch(inode: u64, first: u64, tag: &str, lines: std::ops::Range<u64>) -> (Vec<u8>, u64) {
    use ferry_core::batch::{BatchBuilder, Codec};
    use ferry_core::record::{FileId, OriginKey};
    let mut b = BatchBuilder::with_origin(
        OriginKey {
            agent_id: "host-1".into(),
            file: FileId {
                dev: 1,
                inode,
                fingerprint: 7,
                generation: 0,
            },
        },
        first,
    );
    for i in lines {
        let l = format!("{tag}-{i:04}");
        b.push_line(l.as_bytes(), l.len() as u64 + 1);
    }
    let end = b.end_offset().expect("records");
    (b.finish(Codec::None, 0, 1).expect("encode"), end)
}

fn post_after(url: &str, topic: &str, body: Vec<u8>, after: Option<&str>) -> (u16, String) {
    let mut req = http()
        .post(format!("{url}/v1/topics/{topic}/records"))
        .header("content-type", ferry_core::batch::CONTENT_TYPE)
        .body(body);
    if let Some(a) = after {
        req = req.header(ferry_core::batch::AFTER_HEADER, a);
    }
    let resp = req.send().expect("post");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// `ferry-after` through real HTTP: a batch that overtakes its predecessor waits for it and is
/// stored behind it; one whose predecessor never comes is refused with 409 and nothing of it is
/// stored; the same on a routed topic (where the wait is for the predecessor to land whole);
/// bad header values and multi-batch bodies are 400. Stored uncompressed batches come back
/// intact (they are stored lz4-compressed by default).
#[test]
fn ordered_posts_are_stored_in_file_order_or_refused() {
    let dir = Dir::new("ordered");
    let c = start(
        &dir,
        "c",
        Some(
            "collector:\n  default_partitions: 1\n  routes:\n    - name: copy-errors\n      match: { topic: routed, regex: 'never-matches' }\n      copy: [elsewhere]\n",
        ),
    );
    let url = c.url();
    for topic in ["plain", "routed"] {
        let (b1, e1) = file_batch(1, 0, "a", 0..50);
        let (b2, e2) = file_batch(1, e1, "b", 0..50);
        let (b3, _) = file_batch(1, e2, "c", 0..50);
        // b3 first: its predecessor b2 never comes while it waits, so it is refused.
        let t0 = std::time::Instant::now();
        let (code, text) = post_after(&url, topic, b3.clone(), Some(&e2.to_string()));
        assert_eq!(code, 409, "{topic}: {text}");
        assert!(text.contains("out of order"), "{topic}: {text}");
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{topic}: {:?}",
            t0.elapsed()
        );
        // b2 overtakes b1: it waits, b1 arrives, both are stored in order.
        let early = {
            let (url, topic) = (url.clone(), topic.to_owned());
            let b2 = b2.clone();
            std::thread::spawn(move || post_after(&url, &topic, b2, Some(&e1.to_string())))
        };
        std::thread::sleep(Duration::from_millis(300));
        let (code, text) = post_after(&url, topic, b1.clone(), None);
        assert_eq!(code, 200, "{topic}: {text}");
        let (code, text) = early.join().expect("thread");
        assert_eq!(code, 200, "{topic}: {text}");
        let (code, text) = post_after(&url, topic, b3, Some(&e2.to_string()));
        assert_eq!(code, 200, "{topic}: {text}");
        // A replay of b1 with `after` is deduplicated, not refused.
        let (code, text) = post_after(&url, topic, b1, Some("0"));
        assert_eq!(code, 200, "{topic}: {text}");
        assert!(text.contains("\"deduplicated\":50"), "{topic}: {text}");
        let got = consume(&url, topic, &["--from-beginning"]);
        let want: Vec<String> = ["a", "b", "c"]
            .iter()
            .flat_map(|t| (0..50).map(move |i| format!("{t}-{i:04}")))
            .collect();
        assert_eq!(got, want, "{topic}");
    }
    let (b, _) = file_batch(2, 0, "x", 0..3);
    for bad in ["ten", "-1", "", "1.5"] {
        let (code, text) = post_after(&url, "plain", b.clone(), Some(bad));
        assert_eq!(code, 400, "{bad:?}: {text}");
        assert!(text.contains("ferry-after"), "{text}");
    }
    let mut two = b.clone();
    two.extend_from_slice(&file_batch(2, 100, "y", 0..3).0);
    let (code, text) = post_after(&url, "plain", two, Some("0"));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("exactly one batch"), "{text}");
    let (code, _) = http()
        .get(format!("{url}/healthz"))
        .send()
        .map(|r| (r.status().as_u16(), ()))
        .expect("healthz");
    assert_eq!(code, 200);
}
