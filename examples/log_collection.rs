//! Log collection and processing: one `ferry agent` per simulated host (its own `id` and log
//! directory) tails that host's log into the collector; a `ferry processor` counts the records
//! by host and level in one-minute event-time windows. The example then checks the processor's
//! counts against the counts in the log files.
//!
//! ```sh
//! cargo build                                  # the example starts target/debug/ferry
//! cargo run -- collector                       # in another terminal
//! cargo run --bin example-log-collection -- --collector http://127.0.0.1:7070
//! ```

#[path = "common/mod.rs"]
mod common;

use anyhow::Context;
use clap::Parser;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];
/// Far ahead of every line's event time (they start at 2026-01-01T00:00:00Z): the processor's
/// watermark passes every window's end and it emits them all.
const CLOSER: &str = "{\"ts\":\"2026-01-02T00:00:00Z\",\"level\":\"closer\"}\n";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Simulated hosts, one agent each.
    #[arg(long, value_delimiter = ',', default_value = "web-1,web-2,db-1")]
    hosts: Vec<String>,
    /// Lines each host writes (half before its agent starts, half while it runs).
    #[arg(long, default_value_t = 600)]
    lines: u32,
    /// The ferry binary (default: the one built next to this example).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Where host logs, agent checkpoints, configs and results go (recreated).
    #[arg(long, default_value = "data/examples/log-collection")]
    dir: PathBuf,
}

/// Appends lines `from..to` of `host`'s log and counts them by level into `counts`.
fn write_log(
    path: &Path,
    host: &str,
    from: u32,
    to: u32,
    rng: &mut rand::rngs::SmallRng,
    counts: &mut BTreeMap<(String, String), u64>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = String::new();
    for i in from..to {
        // Weighted like real logs: mostly info, few errors.
        let level = LEVELS[match rng.random_range(0..100) {
            0..20 => 0,
            20..80 => 1,
            80..93 => 2,
            _ => 3,
        }];
        let sec = i / 5; // five lines per second of event time, over a few minutes
        text.push_str(&format!(
            "{{\"ts\":\"2026-01-01T00:{:02}:{:02}Z\",\"level\":\"{level}\",\"msg\":\"request {i}\"}}\n",
            sec / 60,
            sec % 60
        ));
        *counts
            .entry((host.to_owned(), level.to_owned()))
            .or_default() += 1;
    }
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    Ok(())
}

fn agent_yaml(host: &str, dir: &Path, topic: &str, url: &str) -> String {
    format!(
        r#"telemetry: {{ log_level: warn }}
agent:
  id: {host}                  # part of every batch's origin: dedup is per agent and file
  data_dir: "{data}"
  inputs:
    - name: app
      include: ["{logs}/*.log"]
      topic: {topic}
      fields: {{ host: {host} }}   # added to every record; the processor groups by it
  batch: {{ linger: 100ms }}
  output: {{ type: collector, urls: ["{url}"] }}
"#,
        data = dir.join("agents").join(host).display(),
        logs = dir.join("hosts").join(host).display(),
    )
}

fn processor_yaml(topic: &str, group: &str, results: &Path) -> String {
    format!(
        r#"telemetry: {{ log_level: warn }}
processor:
  pipelines:
    - name: by-host-level
      source: {{ topics: [{topic}], group: {group}, start: earliest }}
      parse: json
      event_time: {{ field: ts, format: rfc3339 }}
      group_by: [host, level]
      # Hosts ship at their own pace, so event times interleave: allow 10 minutes.
      window: {{ tumbling: 1m, allowed_lateness: 10m, idle_timeout: 1h }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
        results.display()
    )
}

/// Window results summed per (host, level); a result repeated after a restart counts once.
fn results(path: &Path) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let mut windows: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a result line")?;
        let level = v["key"]["level"].as_str().unwrap_or_default().to_owned();
        if level == "closer" {
            continue;
        }
        let host = v["key"]["host"].as_str().unwrap_or_default().to_owned();
        let start = v["window_start"].as_str().unwrap_or_default().to_owned();
        windows.insert((host, level, start), v["count"].as_u64().unwrap_or(0));
    }
    let mut out = BTreeMap::new();
    for ((host, level, _), n) in windows {
        *out.entry((host, level)).or_default() += n;
    }
    Ok(out)
}

fn spawn(
    ferry: &Path,
    name: &str,
    args: &[&str],
    dir: &Path,
) -> anyhow::Result<common::ChildGuard> {
    let stderr = std::fs::File::create(dir.join(format!("{name}.stderr")))?;
    let child = Command::new(ferry)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {name} ({})", ferry.display()))?;
    Ok(common::ChildGuard::new(name, child))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::interruptible(scenario(Args::parse())).await
}

async fn scenario(args: Args) -> anyhow::Result<()> {
    let ferry = common::ferry_binary(args.ferry.clone())?;
    let client = common::connect(&args.collector).await?;
    common::fresh_dir(&args.dir)?;
    let dir = std::path::absolute(&args.dir)?;
    let run = common::run_id();
    // A topic per run, with one partition: every host's lines meet in one ordered log, and a
    // rerun on the same collector starts clean.
    let topic = format!("logs-{run}");
    common::ensure_topic(&client, &topic, 1).await?;

    let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let half = args.lines / 2;
    let mut children = Vec::new();
    for host in &args.hosts {
        let logs = dir.join("hosts").join(host);
        std::fs::create_dir_all(&logs)?;
        write_log(&logs.join("app.log"), host, 0, half, &mut rng, &mut counts)?;
        let cfg = dir.join(format!("agent-{host}.yaml"));
        std::fs::write(&cfg, agent_yaml(host, &dir, &topic, &args.collector))?;
        let cfg = cfg.display().to_string();
        children.push(spawn(
            &ferry,
            &format!("agent-{host}"),
            &["agent", "--config", &cfg],
            &dir,
        )?);
    }
    let results_path = dir.join("results.jsonl");
    let cfg = dir.join("processor.yaml");
    std::fs::write(
        &cfg,
        processor_yaml(&topic, &format!("counts-{run}"), &results_path),
    )?;
    let cfg = cfg.display().to_string();
    children.push(spawn(
        &ferry,
        "processor",
        &[
            "processor",
            "--config",
            &cfg,
            "--collector",
            &args.collector,
        ],
        &dir,
    )?);
    // The hosts keep logging while their agents tail.
    for host in &args.hosts {
        let log = dir.join("hosts").join(host).join("app.log");
        write_log(&log, host, half, args.lines, &mut rng, &mut counts)?;
    }
    let total: u64 = counts.values().sum();
    println!(
        "{} hosts ({}) wrote {total} lines; one ferry agent each ships them to topic {topic}",
        args.hosts.len(),
        args.hosts.join(", ")
    );

    // Once every line is stored, one record far ahead in event time closes every window.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let stored = client.topic(&topic).await?.map_or(0, |t| t.records);
        if stored >= total {
            break;
        }
        for c in &mut children {
            if let Some(status) = c.exited() {
                anyhow::bail!(
                    "{} exited ({status}); see {}",
                    c.name,
                    dir.join(format!("{}.stderr", c.name)).display()
                );
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {stored} of {total} lines arrived in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "collector stored all {total} lines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    client
        .post_lines(&topic, CLOSER.as_bytes().to_vec(), false)
        .await?;
    let got = loop {
        let got = results(&results_path)?;
        if got.values().sum::<u64>() >= total {
            break got;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processor counted {} of {total} lines in 90 s",
            got.values().sum::<u64>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(children);

    println!("processor counts by host and level (files / processor):");
    let mut ok = got == counts;
    for host in &args.hosts {
        let row: Vec<String> = LEVELS
            .iter()
            .map(|l| {
                let key = (host.clone(), l.to_string());
                let (want, have) = (
                    counts.get(&key).copied().unwrap_or(0),
                    got.get(&key).copied().unwrap_or(0),
                );
                ok &= want == have;
                format!("{l} {want}/{have}")
            })
            .collect();
        println!("  {host:<8} {}", row.join("  "));
    }
    println!(
        "processor counts {} the files; results in {}",
        if ok { "equal" } else { "DIFFER FROM" },
        results_path.display()
    );
    anyhow::ensure!(ok, "the processor's counts differ from the files");
    Ok(())
}
