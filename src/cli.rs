//! The command line. Every subcommand of DESIGN.md's contract is declared here; errors from any
//! of them are mapped to exit codes in [`main`] and nowhere else: 0 success, 1 runtime failure,
//! 2 usage or config error.

use clap::{Parser, Subcommand};
use ferry_core::telemetry::LogFormat;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ship log lines from files to topics to aggregates, without losing or duplicating one."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, env = "FERRY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `debug,hyper=info` (RUST_LOG overrides).
    #[arg(long, global = true, env = "FERRY_LOG")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run collector (embedded store), agent and processor in one process on a local sample.
    Up {
        #[arg(long, default_value = "configs/local.yaml")]
        config: PathBuf,
        /// Stop by itself after this long (e.g. `30s`), draining as on Ctrl-C.
        #[arg(long)]
        run_for: Option<String>,
    },
    /// Run the central service: ingest, routing, the topic store, consumer groups.
    Collector {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Store into Kafka at these brokers instead of the embedded store.
        #[arg(long)]
        kafka: Option<String>,
    },
    /// Tail files and ship their lines.
    Agent {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Collector URL; repeat for failover.
        #[arg(long)]
        collector: Vec<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        topic: Option<String>,
        /// Ship straight to Kafka at these brokers.
        #[arg(long)]
        kafka: Option<String>,
        /// collector, kafka, stdout or null.
        #[arg(long)]
        output: Option<String>,
        /// Serve /metrics and /healthz here (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Files or globs to tail.
        paths: Vec<String>,
    },
    /// Consume topics and compute windowed aggregates.
    Processor {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        collector: Option<String>,
        /// Read every pipeline's topics from Kafka at these brokers (a consumer group per
        /// pipeline, checkpoints in a Kafka topic).
        #[arg(long)]
        kafka: Option<String>,
        /// Serve /metrics and /healthz here (e.g. 127.0.0.1:9101).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Send one record per stdin line to a topic; exit 0 once all are acknowledged.
    Produce {
        #[arg(long)]
        collector: String,
        topic: String,
    },
    /// Print records of a topic.
    Consume {
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        kafka: Option<String>,
        topic: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        from_beginning: bool,
        #[arg(long)]
        max: Option<u64>,
        #[arg(long)]
        idle_timeout: Option<String>,
        #[arg(long, default_value = "raw")]
        format: String,
    },
    /// List topics with their partitions and sizes (`ferry topics delete T` deletes one).
    Topics {
        #[arg(long, global = true)]
        collector: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<TopicsAction>,
    },
    /// List consumer groups with their lag.
    Groups {
        #[arg(long)]
        collector: String,
        #[arg(long)]
        json: bool,
    },
    /// Validate a ferry config; a bad one exits 2 naming file:line:col.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Delete a topic and all its records.
    Delete { topic: String },
}

/// An error that is the user's to fix (bad flags, bad config): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses arguments, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    // Flags win over the config's `telemetry:` section, which wins over the defaults.
    let telemetry = config_path(&cli.command)
        .and_then(|p| crate::config::FerryConfig::load(p).ok())
        .map(|c| c.telemetry)
        .unwrap_or_default();
    ferry_core::telemetry::init_logging(
        cli.log_format.unwrap_or(telemetry.log_format),
        cli.log_level.as_deref().or(telemetry.log_level.as_deref()),
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let usage = err.downcast_ref::<UsageError>().is_some()
                || err
                    .downcast_ref::<ferry_core::config::ConfigError>()
                    .is_some();
            eprintln!("ferry: {err:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // `check` needs no runtime: it reads one file.
        Command::Check { file } => check(&file),
        other => runtime()?.block_on(run_async(other)),
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let report = crate::check::check(file)?;
    println!("{}: ok ({})", file.display(), report.sections.join(", "));
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run_async(command: Command) -> anyhow::Result<()> {
    use crate::commands;
    match command {
        Command::Collector {
            config,
            listen,
            data_dir,
            kafka,
        } => {
            commands::collector::run(commands::collector::Args {
                config,
                listen,
                data_dir,
                kafka,
            })
            .await
        }
        Command::Agent {
            config,
            collector,
            data_dir,
            topic,
            kafka,
            output,
            paths,
            metrics_listen,
        } => {
            commands::agent::run(commands::agent::Args {
                metrics_listen,
                config,
                collectors: collector,
                data_dir,
                topic,
                kafka,
                output,
                paths,
            })
            .await
        }
        Command::Up { config, run_for } => {
            let run_for = run_for
                .map(|s| s.parse::<ferry_core::config::Duration>().map(|d| d.get()))
                .transpose()
                .map_err(|e| UsageError(format!("--run-for: {e}")))?;
            crate::up::run(&config, run_for).await
        }
        Command::Processor {
            config,
            collector,
            kafka,
            metrics_listen,
        } => commands::processor::run(config, collector, kafka, metrics_listen).await,
        Command::Produce { collector, topic } => commands::produce::run(&collector, &topic).await,
        Command::Consume {
            collector,
            kafka,
            topic,
            group,
            from_beginning,
            max,
            idle_timeout,
            format,
        } => {
            let json = match format.as_str() {
                "raw" => false,
                "json" => true,
                other => {
                    return Err(UsageError(format!("--format {other:?}: use raw or json")).into());
                }
            };
            let idle_timeout = idle_timeout
                .map(|s| s.parse::<ferry_core::config::Duration>().map(|d| d.get()))
                .transpose()
                .map_err(|e| UsageError(format!("--idle-timeout: {e}")))?;
            if let Some(brokers) = kafka {
                if collector.is_some() {
                    return Err(UsageError(
                        "give either --collector URL or --kafka BROKERS, not both".into(),
                    )
                    .into());
                }
                return commands::kafka::run(commands::kafka::Args {
                    brokers,
                    topic,
                    group,
                    from_beginning,
                    max,
                    idle_timeout,
                    json,
                })
                .await;
            }
            let collector = collector
                .ok_or_else(|| UsageError("give --collector URL or --kafka BROKERS".into()))?;
            commands::consume::run(commands::consume::Args {
                collector,
                topic,
                group,
                from_beginning,
                max,
                idle_timeout,
                json,
            })
            .await
        }
        Command::Topics {
            collector,
            json,
            action,
        } => {
            let collector =
                collector.ok_or_else(|| UsageError("ferry topics needs --collector URL".into()))?;
            match action {
                None => commands::admin::topics(&collector, json).await,
                Some(TopicsAction::Delete { topic }) => {
                    commands::admin::delete_topic(&collector, &topic).await
                }
            }
        }
        Command::Groups { collector, json } => commands::admin::groups(&collector, json).await,
        Command::Check { file } => check(&file),
    }
}

/// The config file a command reads, if any.
fn config_path(c: &Command) -> Option<&std::path::Path> {
    match c {
        Command::Up { config, .. } | Command::Processor { config, .. } => Some(config),
        Command::Collector { config, .. } | Command::Agent { config, .. } => config.as_deref(),
        _ => None,
    }
}
