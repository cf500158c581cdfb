//! The agent's syslog input with util-linux `logger` as the real client: UDP and TCP, RFC 3164
//! and RFC 5424, newline framing and octet counting; every message once, with `host`, `app`,
//! `severity` and `facility` as fields.

mod util;
use std::time::Duration;
use util::{Dir, Service, consume_json, ferry, free_port, run, start_collector, wait_until};

/// `logger` from util-linux; scripts/test and .ci/run install it (package bsdutils) if missing.
fn logger(port: u16, mode: &[&str], tag: &str, prio: &str, lines: &str) {
    let port = port.to_string();
    let mut args = vec![
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "-t",
        tag,
        "-p",
        prio,
    ];
    args.extend_from_slice(mode);
    let mut cmd = std::process::Command::new("logger");
    cmd.args(&args);
    run(&mut cmd, lines.as_bytes(), 0);
}

/// Starts an agent whose only input is the syslog listener `listener` (YAML keys after
/// `name`, at the list item's indentation) shipping to `collector`; waits until it accepts TCP
/// connections on `port`.
fn start_syslog_agent(dir: &Dir, collector: &str, port: u16, listener: &str) -> Service {
    let config = format!(
        "agent:\n  data_dir: {data}\n  batch:\n    linger: 50ms\n  output:\n    type: collector\n    urls: [\"{collector}\"]\n  syslog:\n    - name: net\n{listener}",
        data = dir.join("agent-data").display(),
    );
    let path = dir.write("agent.yaml", &config);
    let path = path.display().to_string();
    let agent = Service::spawn("agent", dir, &["agent", "--config", &path]);
    wait_until(Duration::from_secs(30), "the syslog TCP listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    agent
}

#[test]
fn logger_over_udp_and_tcp_in_both_formats_arrives_once_with_fields() {
    let dir = Dir::new("syslog");
    let c = start_collector(&dir, "collector", None);
    let port = free_port();
    let listener = format!(
        "      udp: 127.0.0.1:{port}\n      tcp: 127.0.0.1:{port}\n      topic: syslog\n      fields:\n        site: lab\n"
    );
    let _agent = start_syslog_agent(&dir, &c.url(), port, &listener);

    let n = 100;
    let modes: [(&str, &[&str], &str, &str, &str); 4] = [
        (
            "udp3164",
            &["--udp", "--rfc3164"],
            "local3.warning",
            "local3",
            "warning",
        ),
        (
            "udp5424",
            &["--udp", "--rfc5424"],
            "user.info",
            "user",
            "info",
        ),
        (
            "tcp3164",
            &["--tcp", "--rfc3164"],
            "daemon.err",
            "daemon",
            "err",
        ),
        (
            "tcp5424oc",
            &["--tcp", "--rfc5424", "--octet-count"],
            "local7.debug",
            "local7",
            "debug",
        ),
    ];
    for (tag, mode, prio, _, _) in &modes {
        let lines: String = (0..n).map(|i| format!("{tag} message {i}\n")).collect();
        logger(port, mode, tag, prio, &lines);
    }
    let total = n * modes.len();
    let mut records = Vec::new();
    wait_until(Duration::from_secs(60), "every message stored", || {
        records = consume_json(&c.url(), "syslog");
        records.len() >= total
    });
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        let line = r["line"].as_str().expect("line");
        assert!(seen.insert(line.to_owned()), "{line:?} stored twice");
        let tag = line.split(' ').next().unwrap_or_default();
        let (_, _, _, facility, severity) = modes
            .iter()
            .find(|m| m.0 == tag)
            .unwrap_or_else(|| panic!("unexpected record {r}"));
        let f = &r["fields"];
        assert_eq!(f["app"], tag, "{r}");
        assert_eq!(f["facility"], *facility, "{r}");
        assert_eq!(f["severity"], *severity, "{r}");
        assert_eq!(f["site"], "lab", "{r}");
        assert!(f["host"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        if tag.contains("5424") {
            assert!(r["event_time_ms"].as_i64().is_some(), "{r}");
        }
    }
    assert_eq!(records.len(), total, "each message exactly once");
}

#[test]
fn a_bad_syslog_config_is_refused_with_where_and_why() {
    let dir = Dir::new("syslog-check");
    let path = dir.write(
        "agent.yaml",
        "agent:\n  syslog:\n    - name: s\n      udp: nowhere\n      topic: t\n      max_connections: 0\n",
    );
    let out = run(ferry().args(["check", &path.display().to_string()]), b"", 2);
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("agent.syslog[0].udp"), "{err}");
    assert!(err.contains("not host:port"), "{err}");
    assert!(err.contains("agent.syslog[0].max_connections"), "{err}");
}

#[test]
fn message_size_and_connection_count_are_bounded() {
    use std::io::Write;
    let dir = Dir::new("syslog-limits");
    let c = start_collector(&dir, "collector", None);
    let port = free_port();
    let listener = format!(
        "      tcp: 127.0.0.1:{port}\n      topic: limits\n      max_message_bytes: 1KiB\n      max_connections: 2\n"
    );
    // The readiness probe's connection is closed at once (its permit given back); then two
    // connections hold both permits.
    let _agent = start_syslog_agent(&dir, &c.url(), port, &listener);
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut first = connect();
    let long = format!("<13>1 - h app - - - {}", "x".repeat(5000));
    write!(first, "{} {long}", long.len()).expect("send");
    first.flush().expect("flush");
    let stored = |n: usize| consume_json(&c.url(), "limits").len() >= n;
    wait_until(Duration::from_secs(30), "the long message", || stored(1));
    let _second = connect();
    // A third connection waits in the backlog: accepted only once a permit is free.
    let mut third = connect();
    third
        .write_all(b"<13>1 - h app - - - from the third\n")
        .expect("send");
    third.flush().expect("flush");
    // The agent holds two connections and is not reading the third: in two full consume
    // rounds (each waits 2 s for records), nothing new arrives.
    assert_eq!(
        consume_json(&c.url(), "limits").len(),
        1,
        "a third connection was read"
    );
    assert_eq!(
        consume_json(&c.url(), "limits").len(),
        1,
        "a third connection was read"
    );
    drop(first);
    wait_until(
        Duration::from_secs(30),
        "the third connection's message",
        || stored(2),
    );
    let records = consume_json(&c.url(), "limits");
    let long_rec = &records[0];
    assert_eq!(long_rec["truncated"], true, "{long_rec}");
    assert_eq!(
        long_rec["line"].as_str().map(str::len),
        Some(1024 - 20),
        "{long_rec}"
    );
    assert_eq!(records[1]["line"], "from the third");
}

#[test]
fn sigterm_with_the_collector_gone_stops_within_the_shutdown_timeout() {
    use std::io::Write;
    let dir = Dir::new("syslog-stop");
    let mut c = start_collector(&dir, "collector", None);
    let port = free_port();
    let listener = format!("      tcp: 127.0.0.1:{port}\n      topic: stop\n");
    let mut agent = start_syslog_agent(&dir, &c.url(), port, &listener);
    c.kill9();
    // Messages the agent cannot deliver: it retries until SIGTERM, then for at most
    // shutdown_timeout (10 s by default), and exits. Sent in rounds further apart than the
    // 50 ms linger, so that they make more sealed batches than the shipper's queue holds.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for round in 0..10 {
        for i in 0..10 {
            writeln!(conn, "<13>1 - h app - - - undeliverable {round}.{i}").expect("send");
        }
        conn.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(120));
    }
    let started = std::time::Instant::now();
    let code = agent.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", agent.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
}
