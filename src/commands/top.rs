//! `ferry top --collector URL`: the collector's topics, consumer groups and health in the
//! terminal, refreshed in place (like `vector top`), until `q` or Ctrl-C.
//!
//! Each refresh reads `GET /v1/topics`, `GET /v1/groups`, `GET /v1/agents` and `GET /metrics`; rates are the
//! difference from the previous refresh. On a terminal, stdin is put in non-canonical mode
//! without echo so that a single `q` quits (Ctrl-C still signals); the mode is restored on
//! exit, whatever ends the loop. Without a terminal (a pipe), a line `q` quits.

use ferry_core::client::{CollectorClient, GroupView, TopicInfo};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

pub struct Args {
    pub collector: String,
    pub security: ferry_core::security::ClientSecurity,
    pub interval: Duration,
    /// Draw this many screens, then exit (for scripts; default: until `q`).
    pub iterations: Option<u64>,
}

/// One look at the collector.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub topics: Vec<TopicInfo>,
    pub groups: Vec<GroupView>,
    /// The registry of agents (empty from a collector without one).
    pub agents: Vec<ferry_core::registry::AgentView>,
    /// Selected series of `/metrics`, by name with labels.
    pub metrics: BTreeMap<String, f64>,
}

/// The series of `/metrics` that `top` shows, and the sums it needs.
fn pick_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        match base {
            // Buckets, summed over any other labels: `le` → cumulative count.
            "ferry_collector_ack_seconds_bucket" => {
                if let Some(le) = label(name, "le") {
                    *out.entry(format!("ack_le:{le}")).or_default() += v;
                }
            }
            "ferry_collector_refused_total"
            | "ferry_collector_records_dropped_total"
            | "ferry_collector_records_deduplicated_total"
            | "ferry_collector_http_errors_total" => {
                *out.entry(base.to_owned()).or_default() += v;
            }
            _ => {}
        }
    }
    out
}

/// The value of label `key` in a series name like `x{a="1",le="0.5"}`.
fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let inner = series.split_once('{')?.1.strip_suffix('}')?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The `q` quantile of the acknowledgement latency from its histogram buckets, interpolated
/// within the bucket as Prometheus' `histogram_quantile` does; `None` before any request.
pub fn ack_quantile(metrics: &BTreeMap<String, f64>, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("ack_le:")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_count) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let within = if count > prev_count {
                (rank - prev_count) / (count - prev_count)
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * within);
        }
        (prev_le, prev_count) = (le, count);
    }
    Some(prev_le)
}

async fn snapshot(client: &CollectorClient) -> anyhow::Result<Snapshot> {
    let (topics, groups, agents, metrics) = tokio::join!(
        client.topics(),
        client.groups(),
        client.agents(),
        client.metrics_text()
    );
    Ok(Snapshot {
        topics: topics?,
        groups: groups?,
        agents: agents.unwrap_or_default(),
        metrics: pick_metrics(&metrics?),
    })
}

fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The screen for `now`, with rates against `prev` taken `dt` earlier.
pub fn render(url: &str, now: &Snapshot, prev: Option<(&Snapshot, Duration)>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "ferry top — {url} — q or Ctrl-C to quit");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<32} {:>5} {:>12} {:>12} {:>12}",
        "TOPIC", "PARTS", "RECORDS", "BYTES", "IN rec/s"
    );
    for t in &now.topics {
        let rate = prev
            .and_then(|(p, dt)| {
                let before = p.topics.iter().find(|x| x.name == t.name)?.records;
                let secs = dt.as_secs_f64();
                (secs > 0.0).then(|| t.records.saturating_sub(before) as f64 / secs)
            })
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"));
        let _ = writeln!(
            s,
            "{:<32} {:>5} {:>12} {:>12} {:>12}",
            t.name,
            t.partitions.len(),
            t.records,
            human_bytes(t.size_bytes as f64),
            rate
        );
    }
    if now.topics.is_empty() {
        let _ = writeln!(s, "(no topics yet)");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>7} {:>12} {:>10}",
        "GROUP", "MEMBERS", "LAG rec", "LAG s"
    );
    for g in &now.groups {
        let lag_s = g
            .partitions
            .iter()
            .map(|p| p.lag_seconds)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            s,
            "{:<24} {:>7} {:>12} {:>10.1}",
            g.group,
            g.members.len(),
            g.lag_records,
            lag_s
        );
    }
    if now.groups.is_empty() {
        let _ = writeln!(s, "(no consumer groups)");
    }
    let _ = writeln!(s);
    let count = |st: ferry_core::registry::AgentStatus| {
        now.agents.iter().filter(|a| a.status == st).count()
    };
    use ferry_core::registry::AgentStatus;
    let _ = writeln!(
        s,
        "{:<24} {:<20} {:<8} {:>9} {:>6} {:>12} {:>8}   agents: {} running, {} stale, {} stopped",
        "AGENT",
        "HOST",
        "STATUS",
        "SILENT s",
        "FILES",
        "BEHIND",
        "DROPPED",
        count(AgentStatus::Running),
        count(AgentStatus::Stale),
        count(AgentStatus::Stopped)
    );
    // Stale agents first: those are what an operator looks for.
    let mut agents: Vec<_> = now.agents.iter().collect();
    agents.sort_by_key(|a| (a.status != AgentStatus::Stale, a.id.clone()));
    for a in agents.iter().take(20) {
        let _ = writeln!(
            s,
            "{:<24} {:<20} {:<8} {:>9.1} {:>6} {:>12} {:>8}",
            a.id,
            a.report.host,
            a.status.as_str(),
            a.silent_seconds,
            a.report.files_total,
            human_bytes(a.report.bytes_behind as f64),
            a.report.drops.values().sum::<u64>()
        );
    }
    if now.agents.len() > 20 {
        let _ = writeln!(s, "(and {} more: ferry agents)", now.agents.len() - 20);
    }
    if now.agents.is_empty() {
        let _ = writeln!(s, "(no agents have reported)");
    }
    let _ = writeln!(s);
    let q = |q: f64| {
        ack_quantile(&now.metrics, q)
            .map_or_else(|| "-".to_owned(), |v| format!("{:.1} ms", v * 1000.0))
    };
    let total = |name: &str| now.metrics.get(name).copied().unwrap_or(0.0);
    let _ = writeln!(
        s,
        "collector: ack p50 {}  p99 {}  refused {}  dropped {}  deduplicated {}  http errors {}",
        q(0.5),
        q(0.99),
        total("ferry_collector_refused_total"),
        total("ferry_collector_records_dropped_total"),
        total("ferry_collector_records_deduplicated_total"),
        total("ferry_collector_http_errors_total"),
    );
    s
}

/// Puts a terminal's stdin in non-canonical mode without echo; restores it on drop.
struct RawStdin {
    saved: Option<rustix::termios::Termios>,
}

impl RawStdin {
    fn enable() -> Self {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(orig) = &saved {
            let mut raw = orig.clone();
            raw.local_modes
                .remove(rustix::termios::LocalModes::ICANON | rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        Self { saved }
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if let Some(orig) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                orig,
            );
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = super::client(&args.collector, &args.security)?;
    let shutdown = ferry_core::shutdown::Shutdown::new();
    shutdown.on_signals();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let _raw = tty.then(RawStdin::enable);
    // `q` on stdin quits; the reader thread lives as long as stdin is open.
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::Builder::new()
        .name("ferry-top-keys".into())
        .spawn(move || {
            use std::io::Read;
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut byte) {
                if byte[0] == b'q' || byte[0] == b'Q' {
                    let _ = quit_tx.blocking_send(());
                    return;
                }
            }
        })?;
    let mut prev: Option<(Snapshot, Instant)> = None;
    let mut drawn = 0u64;
    let stdout = std::io::stdout();
    loop {
        let now = match snapshot(&client).await {
            Ok(s) => s,
            Err(e) => {
                // A collector that went away is shown, not fatal: it may come back.
                let mut out = stdout.lock();
                let _ = writeln!(
                    out,
                    "\x1b[H\x1b[2Jferry top — {} — cannot read the collector: {}",
                    args.collector,
                    crate::cli::render_error(&e)
                );
                let _ = out.flush();
                Snapshot::default()
            }
        };
        let screen = render(
            &args.collector,
            &now,
            prev.as_ref().map(|(p, at)| (p, at.elapsed())),
        );
        {
            let mut out = stdout.lock();
            // Home and clear, then the screen: refreshed in place.
            write!(out, "\x1b[H\x1b[2J{screen}")?;
            out.flush()?;
        }
        drawn += 1;
        prev = Some((now, Instant::now()));
        if args.iterations.is_some_and(|n| drawn >= n) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = quit_rx.recv() => break,
            _ = shutdown.wait() => break,
        }
    }
    // Leave the last screen visible and the cursor on a fresh line.
    println!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> ferry_core::client::MemberView {
        ferry_core::client::MemberView {
            member_id: "m".into(),
            topics: vec!["app".into()],
            partitions: vec![],
        }
    }

    fn lag(seconds: f64) -> ferry_core::client::LagView {
        ferry_core::client::LagView {
            topic: "app".into(),
            partition: 0,
            committed: 0,
            end_offset: 21,
            lag_records: 21,
            lag_seconds: seconds,
        }
    }

    #[test]
    fn screen_shows_topics_rates_groups_and_health() {
        let topic = |records| TopicInfo {
            name: "app".into(),
            records,
            size_bytes: 3 << 20,
            partitions: vec![],
        };
        let prev = Snapshot {
            topics: vec![topic(1_000)],
            ..Default::default()
        };
        let now = Snapshot {
            topics: vec![topic(3_000)],
            groups: vec![GroupView {
                group: "errors".into(),
                members: vec![member(), member()],
                partitions: vec![lag(1.5), lag(0.2)],
                lag_records: 42,
            }],
            agents: vec![ferry_core::registry::AgentView {
                id: "web-9".into(),
                status: ferry_core::registry::AgentStatus::Stale,
                last_seen_ms: 0,
                silent_seconds: 45.0,
                report: ferry_core::registry::AgentHeartbeat {
                    host: "web-9.example".into(),
                    files_total: 3,
                    bytes_behind: 2 << 20,
                    ..Default::default()
                },
            }],
            metrics: pick_metrics(
                "# HELP x\nferry_collector_ack_seconds_bucket{le=\"0.001\"} 0\n\
                 ferry_collector_ack_seconds_bucket{le=\"0.0025\"} 100\n\
                 ferry_collector_ack_seconds_bucket{le=\"0.01\"} 190\n\
                 ferry_collector_ack_seconds_bucket{le=\"0.025\"} 200\n\
                 ferry_collector_ack_seconds_bucket{le=\"+Inf\"} 200\n\
                 ferry_collector_refused_total{reason=\"topic_full\"} 3\n\
                 ferry_collector_refused_total{reason=\"inflight_bytes\"} 4\n",
            ),
        };
        let s = render("http://c", &now, Some((&prev, Duration::from_secs(2))));
        assert!(s.contains("app"), "{s}");
        assert!(s.contains("3.0 MiB"), "{s}");
        assert!(s.contains(" 1000\n"), "rate of 2,000 records in 2 s:\n{s}");
        assert!(
            s.contains("errors") && s.contains(" 42 ") && s.contains("1.5"),
            "{s}"
        );
        // p50: rank 100 ends the (1, 2.5] ms bucket; p99: rank 198 is 8/10 into (10, 25] ms.
        assert!(s.contains("p50 2.5 ms") && s.contains("p99 22.0 ms"), "{s}");
        assert!(s.contains("refused 7"), "{s}");
        assert!(s.contains("0 running, 1 stale, 0 stopped"), "{s}");
        assert!(
            s.lines()
                .any(|l| l.starts_with("web-9") && l.contains("stale") && l.contains("2.0 MiB")),
            "{s}"
        );
    }
}
