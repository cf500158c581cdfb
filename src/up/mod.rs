//! `ferry up`: the whole pipeline in one process on a local sample.
//!
//! - [`generator`]: writes realistic, rotating sample logs for the agent to tail.
pub mod generator;

/// The `up:` section of `ferry up`'s config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpConfig {
    /// The sample-log generator the agent tails.
    #[serde(default)]
    pub generator: generator::GeneratorConfig,
    /// How often the live table is redrawn.
    #[serde(default)]
    pub refresh: Option<ferry_core::config::Duration>,
}

pub mod table;

use crate::config::FerryConfig;
use anyhow::Context;
use ferry_agent::{Agent, AgentConfig};
use ferry_collector::{Collector, CollectorConfig};
use ferry_core::client::CollectorClient;
use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition};
use ferry_core::shutdown::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The topic the pipelines of `configs/local.yaml` write their results to, which the live table
/// reads back through the collector like any consumer.
pub const RESULTS_TOPIC: &str = "results";

/// Runs collector, agent, processor and the sample generator in one process, printing live
/// window results until SIGINT/SIGTERM (or `run_for`, for tests), then drains in order:
/// generator, agent (flush and checkpoint), processor (checkpoint), collector (fsync).
pub async fn run(config_path: &Path, run_for: Option<Duration>) -> anyhow::Result<()> {
    ferry_core::telemetry::install_metrics();
    let file = FerryConfig::load(config_path)?;
    let up = file.up.clone().unwrap_or_default();
    let collector_cfg: CollectorConfig = file.collector.clone().unwrap_or_default();
    let mut agent_cfg: AgentConfig = file.agent.clone().ok_or_else(|| {
        crate::cli::UsageError(format!("{}: no `agent:` section", config_path.display()))
    })?;
    let processor = file.processor.clone().unwrap_or_default();
    let checkpoint_interval = processor.checkpoint_interval.get();
    let pipelines = processor.pipelines;
    let shutdown = Shutdown::new();
    shutdown.on_signals();

    // 1. The collector, on the configured address (port 0 picks a free one).
    let collector = Collector::bind(collector_cfg).await?;
    let url = format!("http://{}", collector.local_addr());
    let collector_task = tokio::spawn(collector.run(shutdown.child()));
    let client = CollectorClient::new(&url)?;
    eprintln!(
        "ferry up: collector on {url}; sample logs in {}",
        up.generator.dir.display()
    );

    // 2. The generator writes sample logs on its own thread.
    let stop_gen = Arc::new(AtomicBool::new(false));
    let generator = {
        let cfg = up.generator.clone();
        let stop = stop_gen.clone();
        std::thread::Builder::new()
            .name("sample-generator".into())
            .spawn(move || generator::run(&cfg, &stop))
            .context("starting the sample generator")?
    };

    // 3. The agent tails them into the collector.
    let cwd = std::env::current_dir()?;
    for input in &mut agent_cfg.inputs {
        for g in input.include.iter_mut().chain(input.exclude.iter_mut()) {
            if Path::new(g.as_str()).is_relative() {
                *g = cwd.join(&*g).display().to_string();
            }
        }
    }
    agent_cfg = AgentConfig::from_quick(
        Some(agent_cfg),
        &ferry_agent::QuickArgs {
            collectors: vec![url.clone()],
            ..Default::default()
        },
    )?;
    let agent = Agent::new(agent_cfg).context("starting the agent")?;
    let agent_stats = agent.stats();
    let agent_shutdown = Shutdown::new();
    let agent_task = tokio::spawn(agent.run(agent_shutdown.clone()));

    // 4. The processor's pipelines read the collector.
    let proc_shutdown = Shutdown::new();
    let proc_task = tokio::spawn(crate::commands::processor::run_pipelines(
        client.clone(),
        pipelines,
        ferry_processor::runner::RunnerOptions {
            tick: Duration::from_millis(250),
            checkpoint_interval,
            session_timeout: Duration::from_secs(10),
        },
        proc_shutdown.clone(),
    ));

    // 5. The live table, fed by the results topic.
    let refresh = up
        .refresh
        .map(|d| d.get())
        .unwrap_or(Duration::from_secs(2));
    let started = Instant::now();
    let table_result =
        show_results(&client, &agent_stats, refresh, &shutdown, run_for, started).await;

    // Drain in order: what is written is read, shipped, processed, stored.
    eprintln!("ferry up: draining…");
    stop_gen.store(true, Ordering::Relaxed);
    let generated = generator
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    agent_shutdown.trigger();
    let agent_report = agent_task.await.context("agent task")??;
    proc_shutdown.trigger();
    proc_task.await.context("processor task")??;
    shutdown.trigger();
    collector_task.await.context("collector task")??;
    eprintln!(
        "ferry up: stopped. {generated} requests generated, {} lines read, {} records acknowledged, {} files checkpointed",
        agent_stats.lines_read.load(Ordering::Relaxed),
        agent_stats.records_acked.load(Ordering::Relaxed),
        agent_report.files
    );
    table_result
}

async fn show_results(
    client: &CollectorClient,
    agent: &ferry_agent::AgentStats,
    refresh: Duration,
    shutdown: &Shutdown,
    run_for: Option<Duration>,
    started: Instant,
) -> anyhow::Result<()> {
    // The results topic exists before the pipelines write to it, so the table reads from its
    // start without missing the first results.
    if client.topic(RESULTS_TOPIC).await?.is_none() {
        client.create_topic(RESULTS_TOPIC, 1).await?;
    }
    let mut config = ConsumerConfig::new(vec![RESULTS_TOPIC.to_owned()]);
    config.start = StartPosition::Latest;
    config.poll_wait = Duration::from_millis(200);
    let mut consumer = Consumer::connect(client.clone(), config).await?;
    let mut table = table::Table::default();
    let mut last_draw = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        if shutdown.is_triggered() || run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let records = tokio::select! {
            r = consumer.poll(10_000) => r?,
            _ = shutdown.wait() => break,
        };
        for r in records {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.record.line) {
                table.add(v);
            }
        }
        if last_draw.elapsed() >= refresh {
            let status = format!(
                "ferry up — {:.0}s — agent: {} lines read, {} acknowledged — Ctrl-C to stop",
                started.elapsed().as_secs_f64(),
                agent.lines_read.load(Ordering::Relaxed),
                agent.records_acked.load(Ordering::Relaxed),
            );
            print!("{}", table.render(&status, tty));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last_draw = Instant::now();
        }
    }
    Ok(())
}

/// `data/...` paths in the default config are relative to where `ferry up` runs.
pub fn default_config() -> PathBuf {
    PathBuf::from("configs/local.yaml")
}
