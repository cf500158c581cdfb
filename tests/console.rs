//! The collector's web console in a real headless browser (Debian's chromium): the page loads
//! without a console message, shows a topic just produced to, its group's lag and the agent
//! shipping to it, and the lag falls after a consumer reads. A screenshot is written to the
//! test's directory.

mod util;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use util::{Dir, Service, produce, run, start_collector, wait_until};

/// Loads `url` in headless chromium, lets the page run for five seconds of virtual time, and
/// returns the DOM and the browser's log.
fn load(dir: &Dir, url: &str, screenshot: Option<&Path>) -> (String, String) {
    let profile = tempfile::tempdir_in(dir.path()).expect("profile dir");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1280,800",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .expect("chromium is needed for this test (apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text of the table row whose first cell is `name` in `table`.
fn row(dom: &str, table: &str, name: &str) -> String {
    let start = dom
        .find(&format!("id=\"{table}\""))
        .unwrap_or_else(|| panic!("no table {table} in:\n{dom}"));
    let t = &dom[start..];
    let t = &t[..t.find("</table>").unwrap_or(t.len())];
    let at = t
        .find(&format!("<tr><td>{name}</td>"))
        .unwrap_or_else(|| panic!("no row {name} in table {table}:\n{t}"));
    let r = &t[at..];
    r[..r.find("</tr>").unwrap_or(r.len())].to_owned()
}

fn console_messages(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("CONSOLE")).collect()
}

#[test]
fn console_shows_topics_and_group_lag_live_in_a_browser() {
    let dir = Dir::new("console");
    let c = start_collector(&dir, "collector", None);
    let lines: String = (0..500).map(|i| format!("order {i}\n")).collect();
    produce(&c.url(), "orders", &lines);
    let consume = |n: &str| {
        run(
            util::ferry().args([
                "consume",
                "--collector",
                &c.url(),
                "orders",
                "--group",
                "billing",
                "--from-beginning",
                "--max",
                n,
            ]),
            b"",
            0,
        )
    };
    consume("100");
    // An agent shipping to it, registered.
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    std::fs::write(logs.join("app.log"), "hello\nworld\n").expect("log");
    let cfg = dir.write(
        "agent.yaml",
        format!(
            "agent:\n  id: edge-7\n  data_dir: {}\n  inputs:\n    - name: main\n      include: [\"{}/*.log\"]\n      topic: app\n  registry:\n    heartbeat_interval: 200ms\n  output:\n    type: collector\n    urls: [\"{}\"]\n",
            dir.join("agent-data").display(),
            logs.display(),
            c.url()
        ),
    );
    let _agent = Service::spawn(
        "agent",
        &dir,
        &["agent", "--config", &cfg.display().to_string()],
    );
    wait_until(Duration::from_secs(30), "the agent registered", || {
        util::http_get(c.addr, "/v1/agents").is_ok_and(|(_, b)| b.contains("\"records_acked\":2"))
    });
    let url = format!("{}/", c.url());
    let (dom, log) = load(&dir, &url, None);
    assert!(console_messages(&log).is_empty(), "console:\n{log}");
    assert!(dom.contains("live — updated"), "{dom}");
    let orders = row(&dom, "topics", "orders");
    assert!(orders.contains(">500<"), "{orders}");
    let billing = row(&dom, "groups", "billing");
    assert!(
        billing.contains(">400<"),
        "lag 400 before reading: {billing}"
    );
    let agent = row(&dom, "agents", "edge-7");
    assert!(agent.contains(">running<"), "{agent}");
    // The ingest requests above were acknowledged: the latency has a value.
    assert!(
        dom.contains(" ms</b>ack p50") && dom.contains(" ms</b>ack p99"),
        "{dom}"
    );

    consume("400");
    let (dom, log) = load(&dir, &url, None);
    assert!(console_messages(&log).is_empty(), "console:\n{log}");
    let billing = row(&dom, "groups", "billing");
    assert!(billing.contains(">0<"), "lag 0 after reading: {billing}");

    let shot = dir.join("console.png");
    load(&dir, &url, Some(&shot));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
}
