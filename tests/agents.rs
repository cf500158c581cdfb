//! The registry of agents and address lookup, as an operator and a fleet of agents meet them:
//! real collectors, real agents tailing real files, `ferry agents` read back.

mod util;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use util::{Dir, Service, ferry, run, start_collector, wait_until};

/// The agent's config: `id`, a data dir, one input over `logs/*.log` to topic `app`, the
/// collector `urls`, heartbeats every 200 ms.
fn agent_config(dir: &Dir, id: &str, urls: &[String], extra_output: &str) -> std::path::PathBuf {
    let logs = dir.join(format!("{id}-logs"));
    std::fs::create_dir_all(&logs).expect("logs dir");
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    dir.write(
        &format!("{id}.yaml"),
        format!(
            "agent:
  id: {id}
  data_dir: {data}
  inputs:
    - name: main
      include: [\"{logs}/*.log\"]
      topic: app
  batch:
    linger: 50ms
  rescan_interval: 200ms
  registry:
    heartbeat_interval: 200ms
  output:
    type: collector
    urls: [{urls}]
    timeout: 5s
{extra_output}",
            data = dir.join(format!("{id}-data")).display(),
            logs = logs.display(),
            urls = urls.join(", "),
        ),
    )
}

fn write_lines(path: &Path, tag: &str, range: std::ops::Range<usize>) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    for i in range {
        writeln!(f, "{tag} line {i:06} some payload to make it longer").expect("write");
    }
    f.sync_all().expect("sync");
    std::fs::metadata(path).expect("stat").len()
}

fn agents(url: &str) -> BTreeMap<String, serde_json::Value> {
    let out = run(
        ferry().args(["agents", "--collector", url, "--json"]),
        b"",
        0,
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("agents json");
    list.into_iter()
        .map(|a| (a["id"].as_str().unwrap_or_default().to_owned(), a))
        .collect()
}

fn field(a: Option<&serde_json::Value>, key: &str) -> serde_json::Value {
    a.map(|a| a[key].clone()).unwrap_or_default()
}

fn consume(url: &str) -> Vec<String> {
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            url,
            "app",
            "--from-beginning",
            "--idle-timeout",
            "2s",
        ]),
        b"",
        0,
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_agents_register_then_a_killed_one_turns_stale_and_a_stopped_one_says_so() {
    let dir = Dir::new("agents-registry");
    let collector = start_collector(
        &dir,
        "c",
        Some("collector:\n  agents:\n    stale_after: 2s\n"),
    );
    let url = collector.url();

    let mut started = Vec::new();
    for (id, lines) in [("web-1", 3_000usize), ("web-2", 5_000)] {
        let cfg = agent_config(&dir, id, std::slice::from_ref(&url), "");
        let size = write_lines(&dir.join(format!("{id}-logs/app.log")), id, 0..lines);
        let agent = Service::spawn(id, &dir, &["agent", "--config", &cfg.display().to_string()]);
        started.push((id, lines as u64, size, agent));
    }

    // Both appear, running, with what each read and had acknowledged.
    wait_until(
        Duration::from_secs(60),
        "both agents reporting every line acknowledged",
        || {
            let a = agents(&url);
            started.iter().all(|(id, lines, _, _)| {
                let v = a.get(*id);
                field(v, "status") == "running" && field(v, "records_acked") == *lines
            })
        },
    );
    let a = agents(&url);
    for (id, lines, size, _) in &started {
        let v = a.get(*id);
        assert_eq!(field(v, "lines_read"), *lines, "{id}: {v:?}");
        assert_eq!(field(v, "bytes_read"), *size, "{id}: {v:?}");
        assert_eq!(field(v, "collector"), url.as_str(), "{id}");
        assert_eq!(field(v, "inputs"), serde_json::json!(["main"]), "{id}");
        assert_eq!(field(v, "unread_bytes"), 0, "{id}");
        assert_eq!(field(v, "drops"), serde_json::json!({}), "{id}");
    }
    // Files: acknowledged to their end, nothing behind (after the next rescan).
    wait_until(
        Duration::from_secs(20),
        "each agent's file acknowledged to its end",
        || {
            let a = agents(&url);
            started.iter().all(|(id, _, size, _)| {
                let files = field(a.get(*id), "files");
                files
                    .as_array()
                    .is_some_and(|f| f.len() == 1 && f[0]["acked"] == *size && f[0]["behind"] == 0)
                    && field(a.get(*id), "files_total") == 1
            })
        },
    );

    // The table names both.
    let table = run(ferry().args(["agents", "--collector", &url]), b"", 0);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("AGENT"), "{table}");
    for id in ["web-1", "web-2"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(id) && l.contains("running")),
            "{table}"
        );
    }

    // web-2 is killed: stale once silent for 2 s; web-1 goes on.
    started[1].3.kill9();
    wait_until(Duration::from_secs(20), "web-2 stale", || {
        let a = agents(&url);
        field(a.get("web-2"), "status") == "stale" && field(a.get("web-1"), "status") == "running"
    });
    wait_until(Duration::from_secs(10), "the stale gauge at 1", || {
        let metrics = util::http_get(collector.addr, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_collector_agents{status=\"stale\"} 1"))
    });

    // web-1 stops cleanly: its last heartbeat says so.
    assert_eq!(started[0].3.terminate(Duration::from_secs(10)), Some(0));
    let a = agents(&url);
    assert_eq!(field(a.get("web-1"), "status"), "stopped", "{a:?}");

    // Everything each agent acknowledged is stored once.
    let got = consume(&url);
    assert_eq!(got.len(), 8_000);
}

#[test]
fn bad_heartbeats_are_refused_with_the_reason_and_the_registry_stays_bounded() {
    let dir = Dir::new("agents-bad");
    let collector = start_collector(
        &dir,
        "c",
        Some("collector:\n  agents:\n    max_agents: 2\n"),
    );
    let put = |id: &str, body: &str| -> (u16, String) {
        let client = reqwest::blocking::Client::new();
        let r = client
            .put(format!("{}/v1/agents/{id}", collector.url()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("put");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let ok = serde_json::json!({
        "host": "h", "version": "0", "inputs": [], "collector": "", "started_ms": 0,
        "state": "running", "lines_read": 0, "bytes_read": 0, "records_acked": 0,
        "bytes_acked": 0, "bytes_behind": 0, "unread_bytes": 0, "last_ack_ms": null,
        "drops": {}, "files_total": 0, "files": []
    })
    .to_string();
    assert_eq!(put("a", &ok).0, 204);
    // Garbage, wrong types, a truncated body, an unknown field, a bad id.
    let (s, m) = put("a", "{not json");
    assert_eq!(s, 400, "{m}");
    let (s, m) = put(
        "a",
        &ok.replace("\"lines_read\":0", "\"lines_read\":\"many\""),
    );
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("lines_read"), "{m}");
    let (s, m) = put("a", &ok[..ok.len() / 2]);
    assert_eq!(s, 400, "{m}");
    let (s, m) = put("a", &ok.replace("\"host\"", "\"hostname\""));
    assert_eq!(s, 400, "{m}");
    let (s, m) = put("a%20b", &ok);
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("agent id"), "{m}");
    let long_host = ok.replace(
        "\"host\":\"h\"",
        &format!("\"host\":\"{}\"", "h".repeat(2000)),
    );
    let (s, m) = put("a", &long_host);
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("host is longer"), "{m}");
    // A body over the JSON routes' limit is refused before it is read.
    let (s, _) = put("a", &"x".repeat(1 << 20));
    assert_eq!(s, 413);
    // Bounded: a third running agent is refused with 429 until one goes stale.
    assert_eq!(put("b", &ok).0, 204);
    let (s, m) = put("c", &ok);
    assert_eq!(s, 429, "{m}");
    assert!(m.contains("max_agents"), "{m}");
    // The registry still answers, with the two it holds.
    let a = agents(&collector.url());
    assert_eq!(a.keys().collect::<Vec<_>>(), ["a", "b"]);
}

/// An agent given one collector learns the other from `GET /v1/collectors` and fails over to
/// it when the first stops; every line is stored once across the two.
#[test]
fn an_agent_given_one_collector_learns_its_peer_and_fails_over_to_it() {
    let dir = Dir::new("agents-failover");
    let b = start_collector(&dir, "b", None);
    let a_cfg = format!("collector:\n  peers: [\"{}\"]\n", b.url());
    let mut a = start_collector(&dir, "a", Some(&a_cfg));
    let (a_url, b_url) = (a.url(), b.url());

    // /v1/collectors: itself first, then its peer.
    let (status, body) = util::http_get(a.addr, "/v1/collectors").expect("collectors");
    assert_eq!(status, 200, "{body}");
    let views: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        views,
        serde_json::json!([{"url": a_url, "self": true}, {"url": b_url, "self": false}])
    );

    let cfg = agent_config(
        &dir,
        "edge",
        std::slice::from_ref(&a_url),
        "    refresh_interval: 200ms\n",
    );
    let log = dir.join("edge-logs/app.log");
    write_lines(&log, "edge", 0..2_000);
    let agent = Service::spawn(
        "edge",
        &dir,
        &["agent", "--config", &cfg.display().to_string()],
    );
    wait_until(
        Duration::from_secs(60),
        "the first 2,000 lines acknowledged by a",
        || field(agents(&a_url).get("edge"), "records_acked") == 2_000,
    );

    // a stops (cleanly, so nothing it acknowledged is lost and nothing is half-stored); the
    // agent moves to b, which it only knows from a's list.
    assert_eq!(a.terminate(Duration::from_secs(10)), Some(0));
    write_lines(&log, "edge", 2_000..5_000);
    wait_until(
        Duration::from_secs(60),
        "the agent reporting to b with every line acknowledged",
        || {
            let v = agents(&b_url);
            field(v.get("edge"), "collector") == b_url.as_str()
                && field(v.get("edge"), "records_acked") == 5_000
        },
    );
    drop(agent);

    let a = start_collector(&dir, "a", Some(&a_cfg));
    let mut all = consume(&a.url());
    let on_a = all.len();
    all.extend(consume(&b_url));
    let mut want: Vec<String> = (0..5_000)
        .map(|i| format!("edge line {i:06} some payload to make it longer"))
        .collect();
    all.sort();
    want.sort();
    assert_eq!(
        all.len(),
        want.len(),
        "{on_a} on a, {} on b",
        all.len() - on_a
    );
    assert!(all == want, "every line once across a and b");
    assert!(on_a >= 2_000 && on_a < 5_000, "{on_a} on a");
}
