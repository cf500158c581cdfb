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

/// The topic the pipelines of the built-in config write their results to, which the live table
/// reads back through the collector like any consumer.
pub const RESULTS_TOPIC: &str = "results";

/// `ferry up`'s built-in config: configs/local.yaml, compiled in, so `ferry up` needs no file
/// around it (`ferry up --print-config` prints it).
pub const BUILTIN_CONFIG: &str = include_str!("../../configs/local.yaml");

/// Where `ferry up` keeps its data when `--data-dir` is not given, relative to where it runs.
pub const DEFAULT_DATA_DIR: &str = "ferry-data";

/// What `ferry up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct UpArgs {
    /// A config that replaces the built-in one.
    pub config: Option<PathBuf>,
    /// Every relative path of the config is taken from here.
    pub data_dir: Option<PathBuf>,
    /// Replaces `collector.listen` (e.g. `127.0.0.1:0` for a free port).
    pub listen: Option<String>,
    /// Stop by itself after this long, draining as on Ctrl-C (for tests and demos).
    pub run_for: Option<Duration>,
}

/// The config `ferry up` runs: `--config FILE`, or the built-in one.
pub fn load_config(args: &UpArgs) -> Result<FerryConfig, ferry_core::config::ConfigError> {
    match &args.config {
        Some(path) => FerryConfig::load(path),
        None => FerryConfig::load_str(BUILTIN_CONFIG, Path::new("<built-in ferry up config>")),
    }
}

/// Makes every relative path of `ferry up`'s sections absolute under `data_dir`: the sample
/// logs, the collector's and the agent's data directories, and the agent's globs. `ferry check`
/// runs the same on a placeholder directory, so it checks what `ferry up` will run.
pub fn place_under(file: &mut FerryConfig, data_dir: &Path) {
    let under = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = data_dir.join(&*p);
        }
    };
    let up = file.up.get_or_insert_with(UpConfig::default);
    under(&mut up.generator.dir);
    if let Some(c) = &mut file.collector {
        under(&mut c.data_dir);
    }
    if let Some(a) = &mut file.agent {
        under(&mut a.data_dir);
        for input in &mut a.inputs {
            for g in input.include.iter_mut().chain(input.exclude.iter_mut()) {
                if Path::new(g.as_str()).is_relative() {
                    *g = data_dir.join(&*g).display().to_string();
                }
            }
        }
    }
}

/// Runs collector, agent, processor and the sample generator in one process, printing live
/// window results until SIGINT/SIGTERM (or `run_for`), then drains in order: the generator
/// stops; the agent (stop reading, ship, checkpoint) and the processor (close, sink, checkpoint)
/// drain side by side while the collector still serves them; then the collector stops
/// accepting, finishes what is in flight and fsyncs. A second signal exits at once.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    ferry_core::telemetry::install_metrics();
    let mut file = load_config(&args)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let data_dir = cwd.join(
        args.data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR)),
    );
    place_under(&mut file, &data_dir);
    let up = file.up.clone().unwrap_or_default();
    let mut collector_cfg: CollectorConfig = file.collector.clone().unwrap_or_default();
    if let Some(listen) = &args.listen {
        collector_cfg.listen = listen.clone();
    }
    let agent_cfg: AgentConfig = file.agent.clone().ok_or_else(|| {
        crate::cli::UsageError("ferry up needs an `agent:` section in its config".to_owned())
    })?;
    let processor = file.processor.clone().unwrap_or_default();
    // With `collector.tls`, the agent and pipelines speak https to it, with the processor
    // section's CA, certificate and token (the agent's are its output's).
    let tls = collector_cfg.tls.is_some();
    let client_security = processor
        .collector
        .as_ref()
        .map(|c| c.security())
        .unwrap_or_default();
    let checkpoint_interval = processor.checkpoint_interval.get();
    let pipelines = processor.pipelines;
    // The signal only stops the table; each part has its own token so that the drain goes in
    // order, the collector last.
    let signals = Shutdown::new();
    signals.on_signals();

    // 1. The collector, on the configured address (port 0 picks a free one).
    let listen = collector_cfg.listen.clone();
    let collector = Collector::bind(collector_cfg).await.map_err(|e| {
        let in_use = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        });
        if in_use {
            anyhow::anyhow!(
                "{listen} is in use (another ferry up or collector?); `ferry up --listen 127.0.0.1:0` picks a free port"
            )
        } else {
            e
        }
    })?;
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", collector.local_addr());
    let collector_shutdown = Shutdown::new();
    let collector_task = tokio::spawn(collector.run(collector_shutdown.clone()));
    let client = CollectorClient::with_security(&url, &client_security)?;
    eprintln!(
        "ferry up: collector on {url}; data in {}; sample logs in {}",
        data_dir.display(),
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
    let agent_cfg = AgentConfig::from_quick(
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
            flush_interval: Duration::from_millis(250),
        },
        proc_shutdown.clone(),
    ));

    // 5. The live table, fed by the results topic.
    let refresh = up
        .refresh
        .map(|d| d.get())
        .unwrap_or(Duration::from_secs(2));
    let started = Instant::now();
    let table_result = show_results(
        &client,
        &agent_stats,
        refresh,
        &signals,
        args.run_for,
        started,
    )
    .await;

    // Drain in order: what is written is read and shipped, what is stored is processed and
    // checkpointed, and only then does the collector stop.
    eprintln!("ferry up: draining…");
    let drain_started = Instant::now();
    stop_gen.store(true, Ordering::Relaxed);
    let generated = tokio::task::spawn_blocking(move || generator.join())
        .await
        .context("generator thread")?
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    agent_shutdown.trigger();
    proc_shutdown.trigger();
    let (agent_done, proc_done) = tokio::join!(agent_task, proc_task);
    collector_shutdown.trigger();
    let collector_done = collector_task.await.context("collector task");
    let agent_report = agent_done.context("agent task")??;
    proc_done.context("processor task")??;
    collector_done??;
    eprintln!(
        "ferry up: stopped in {:.1}s. {generated} requests generated, {} lines read, {} records acknowledged, {} files checkpointed",
        drain_started.elapsed().as_secs_f64(),
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
