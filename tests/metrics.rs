//! Every service exposes Prometheus metrics: the collector on its API, the agent and the
//! processor on `--metrics-listen` (or `telemetry.metrics_listen`).

mod util;
use std::time::Duration;
use util::{Dir, Proc, free_port, http_get, start_collector, wait_until};

fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (status, body) = http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn agent_processor_and_collector_serve_their_counters() {
    let dir = Dir::new("metrics");
    let c = start_collector(
        &dir,
        "c",
        Some("collector:\n  topics:\n    app: { partitions: 1 }\n"),
    );
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let lines: String = (0..25)
        .map(|i| format!("{{\"ts\":\"2026-01-01T00:00:{i:02}Z\",\"level\":\"info\"}}\n"))
        .collect();
    std::fs::write(logs.join("a.log"), lines).expect("write");
    let agent_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let glob = format!("{}/*.log", logs.display());
    let data = dir.join("agent-data");
    let _agent = Proc::start(
        "agent",
        &dir,
        &[
            "agent",
            "--collector",
            &c.url(),
            "--topic",
            "app",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--metrics-listen",
            &agent_addr.to_string(),
            &glob,
        ],
    );
    wait_until(Duration::from_secs(20), "agent lines_read = 25", || {
        metric(agent_addr, "ferry_agent_lines_read_total") == Some(25.0)
    });
    wait_until(Duration::from_secs(20), "agent lines shipped = 25", || {
        metric(agent_addr, "ferry_agent_lines_shipped_total") == Some(25.0)
    });
    assert_eq!(http_get(agent_addr, "/healthz").expect("healthz").0, 200);

    let proc_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let cfg = dir.write(
        "p.yaml",
        "processor:\n  pipelines:\n    - name: p\n      source: { topics: [app] }\n      parse: json\n      event_time: { field: ts }\n      group_by: [level]\n      window: { tumbling: 10s, allowed_lateness: 0s }\n      aggregates: [{ name: count, op: count }]\n      sinks: [stdout]\n",
    );
    let _p = Proc::start(
        "processor",
        &dir,
        &[
            "processor",
            "--config",
            cfg.to_str().expect("utf8"),
            "--collector",
            &c.url(),
            "--metrics-listen",
            &proc_addr.to_string(),
        ],
    );
    wait_until(Duration::from_secs(20), "processor records_in = 25", || {
        metric(proc_addr, "ferry_processor_records_in_total") == Some(25.0)
    });
    assert!(metric(c.addr, "ferry_collector_records_received_total").is_some_and(|v| v >= 25.0));
}
