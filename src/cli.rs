//! The command line. Every subcommand of DESIGN.md's contract is declared here; errors from any
//! of them are mapped to exit codes in [`main`] and nowhere else: 0 success, 1 runtime failure,
//! 2 usage or config error.

use clap::{Parser, Subcommand};
use ferry_core::security::ClientSecurity;
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
        /// A config to run instead of the built-in one (see --print-config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the sample logs, the store and the checkpoints go; every relative path of the
        /// config is taken from here.
        #[arg(long, default_value = crate::up::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The collector's HTTP address, instead of the config's (`127.0.0.1:0`: a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Print the built-in config (or --config's file) and exit.
        #[arg(long)]
        print_config: bool,
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
        /// Also serve the Kafka protocol on this address (e.g. 127.0.0.1:9092): any Kafka
        /// client can produce to and consume from the embedded store (docs/kafka.md).
        #[arg(long, value_name = "ADDR")]
        kafka_listen: Option<String>,
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
        /// Ship stdin to `--topic` until EOF, then exit 0 once every line is acknowledged.
        #[arg(long, conflicts_with = "paths")]
        stdin: bool,
        /// TLS and token for the collector output (over `output`'s keys in --config).
        #[command(flatten)]
        security: ClientSecurity,
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
        /// TLS and token for the collector (over `processor.collector`'s keys).
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// Send one record per stdin line to a topic; exit 0 once all are acknowledged.
    Produce {
        #[arg(long)]
        collector: String,
        topic: String,
        #[command(flatten)]
        security: ClientSecurity,
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
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// List topics with their partitions and sizes (`ferry topics delete T` deletes one).
    Topics {
        #[arg(long, global = true)]
        collector: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<TopicsAction>,
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// List consumer groups with their lag.
    Groups {
        #[arg(long)]
        collector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// List the agents that report to the collector: host, status (running, stale,
    /// stopped), files, bytes behind, drops.
    Agents {
        #[arg(long)]
        collector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// A live sample of the records arriving on a topic, filtered and rate-limited, without
    /// joining any consumer group.
    Tap {
        #[arg(long)]
        collector: String,
        topic: String,
        /// Keep only records matching this expression (the processor's filter language),
        /// e.g. `level == "error" and latency_ms > 500`.
        #[arg(long)]
        filter: Option<String>,
        /// Most records printed per second; the rest are counted as skipped.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Stop after printing this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Stop after this long without a record (e.g. `5s`).
        #[arg(long)]
        idle_timeout: Option<String>,
        /// Start from the oldest records instead of the newest.
        #[arg(long)]
        from_beginning: bool,
        #[arg(long, default_value = "raw")]
        format: String,
        #[command(flatten)]
        security: ClientSecurity,
    },
    /// Topics, consumer groups and the collector's health in the terminal, refreshed in place;
    /// `q` or Ctrl-C quits.
    Top {
        #[arg(long)]
        collector: String,
        /// Time between refreshes.
        #[arg(long, default_value = "1s")]
        interval: String,
        /// Draw this many screens, then exit.
        #[arg(long)]
        iterations: Option<u64>,
        #[command(flatten)]
        security: ClientSecurity,
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
    let telemetry = telemetry_of(&cli.command);
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
            match err.downcast_ref::<ferry_core::config::ConfigError>() {
                // Several problems: one per line, as `file:line:col: …`, then how many.
                Some(c) if c.count() > 1 => {
                    eprintln!("{c}");
                    eprintln!("ferry: {} problems; nothing was started", c.count());
                }
                _ => eprintln!("ferry: {}", render_error(&err)),
            }
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // `check` needs no runtime: it reads one file.
        Command::Check { file } => check(&file),
        other => {
            if matches!(other, Command::Agent { .. } | Command::Up { .. }) {
                // Before the runtime's threads exist (see the function).
                ferry_agent::fdlimit::grow_table_early();
            }
            runtime()?.block_on(run_async(other))
        }
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
            kafka_listen,
        } => {
            commands::collector::run(commands::collector::Args {
                config,
                listen,
                data_dir,
                kafka,
                kafka_listen,
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
            stdin,
            security,
        } => {
            commands::agent::run(commands::agent::Args {
                security,
                stdin,
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
        Command::Up {
            config,
            data_dir,
            listen,
            print_config,
            run_for,
        } => {
            if print_config {
                return print_up_config(config.as_deref());
            }
            let run_for = duration_flag("--run-for", run_for.as_deref())?;
            crate::up::run(crate::up::UpArgs {
                config,
                data_dir: Some(data_dir),
                listen,
                run_for,
            })
            .await
        }
        Command::Processor {
            config,
            collector,
            kafka,
            metrics_listen,
            security,
        } => {
            commands::processor::run(commands::processor::Args {
                config,
                collector,
                kafka,
                metrics_listen,
                security,
            })
            .await
        }
        Command::Produce {
            collector,
            topic,
            security,
        } => commands::produce::run(commands::client(&collector, &security)?, &topic).await,
        Command::Consume {
            collector,
            kafka,
            topic,
            group,
            from_beginning,
            max,
            idle_timeout,
            format,
            security,
        } => {
            let json = json_format(&format)?;
            let idle_timeout = duration_flag("--idle-timeout", idle_timeout.as_deref())?;
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
                security,
                topic,
                group,
                from_beginning,
                max,
                idle_timeout,
                json,
            })
            .await
        }
        Command::Tap {
            collector,
            topic,
            filter,
            rate,
            max,
            idle_timeout,
            from_beginning,
            format,
            security,
        } => {
            let json = json_format(&format)?;
            let idle_timeout = duration_flag("--idle-timeout", idle_timeout.as_deref())?;
            commands::tap::run(commands::tap::Args {
                collector,
                security,
                topic,
                filter,
                rate,
                max,
                idle_timeout,
                from_beginning,
                json,
            })
            .await
        }
        Command::Top {
            collector,
            interval,
            iterations,
            security,
        } => {
            let interval = interval
                .parse::<ferry_core::config::Duration>()
                .map_err(|e| UsageError(format!("--interval: {e}")))?
                .get()
                .max(std::time::Duration::from_millis(100));
            commands::top::run(commands::top::Args {
                collector,
                security,
                interval,
                iterations,
            })
            .await
        }
        Command::Topics {
            collector,
            json,
            action,
            security,
        } => {
            let collector =
                collector.ok_or_else(|| UsageError("ferry topics needs --collector URL".into()))?;
            let client = commands::client(&collector, &security)?;
            match action {
                None => commands::admin::topics(&client, json).await,
                Some(TopicsAction::Delete { topic }) => {
                    commands::admin::delete_topic(&client, &topic).await
                }
            }
        }
        Command::Agents {
            collector,
            json,
            security,
        } => commands::admin::agents(&commands::client(&collector, &security)?, json).await,
        Command::Groups {
            collector,
            json,
            security,
        } => commands::admin::groups(&commands::client(&collector, &security)?, json).await,
        Command::Check { file } => check(&file),
    }
}

/// The `telemetry:` section of the config a command reads (the built-in one for `ferry up`
/// without --config), or the defaults. A config that does not load is reported by the command.
fn telemetry_of(c: &Command) -> ferry_core::telemetry::TelemetryConfig {
    use crate::config::FerryConfig;
    let loaded = match c {
        Command::Up { config: None, .. } => {
            ferry_core::config::load_str::<FerryConfig>(crate::up::BUILTIN_CONFIG, "up".as_ref())
                .ok()
        }
        Command::Up {
            config: Some(p), ..
        }
        | Command::Processor { config: p, .. } => ferry_core::config::load_file(p).ok(),
        Command::Collector {
            config: Some(p), ..
        }
        | Command::Agent {
            config: Some(p), ..
        } => ferry_core::config::load_file(p).ok(),
        _ => None,
    };
    loaded.map(|c: FerryConfig| c.telemetry).unwrap_or_default()
}

/// `--format raw|json` of the commands that print records: whether it is json.
fn json_format(format: &str) -> Result<bool, UsageError> {
    match format {
        "raw" => Ok(false),
        "json" => Ok(true),
        other => Err(UsageError(format!("--format {other:?}: use raw or json"))),
    }
}

/// A duration flag (`200ms`, `5s`), if given.
fn duration_flag(
    flag: &str,
    value: Option<&str>,
) -> Result<Option<std::time::Duration>, UsageError> {
    value
        .map(|s| s.parse::<ferry_core::config::Duration>().map(|d| d.get()))
        .transpose()
        .map_err(|e| UsageError(format!("{flag}: {e}")))
}

/// `ferry up --print-config`: the config `ferry up` would run, as written.
fn print_up_config(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = match config {
        None => crate::up::BUILTIN_CONFIG.to_owned(),
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| UsageError(format!("{}: cannot read: {e}", p.display())))?,
    };
    print!("{text}");
    Ok(())
}

/// An error with its causes, `: `-separated, leaving out a cause whose text the message already
/// holds (many errors include their source's text), so nothing is said twice.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
