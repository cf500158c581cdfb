//! The agent as a whole: wiring the reader thread, the compression workers and the shipper.
//!
//! ```text
//!  reader thread ──(bounded, round robin)──▶ N compression threads ──(bounded)──▶ shipper task
//!  (Tailer: discover,                           (encode + gzip)                   (deliver, ack,
//!   read, lines, multiline, batch)                                                 checkpoint)
//!        ▲                                                                              │
//!        └──────────────── wake: acknowledgements freed buffer room ◀───────────────────┘
//! ```
//!
//! Shutdown drains in order: the shipper tells the reader to stop; the reader seals its open
//! batches and hangs up; the workers finish and hang up; the shipper delivers what is left
//! until the deadline, then writes the checkpoint.

use crate::batcher::{BatchLimits, BuilderPool};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::config::{AgentConfig, AgentConfigError, CompiledInput, OutputConfig, host_name};
use crate::output::collector::{CollectorOutput, CollectorOutputError};
use crate::output::kafka::KafkaOutput;
use crate::output::null::NullOutput;
use crate::output::stdout::StdoutOutput;
use crate::output::{AnyOutput, Output};
use crate::reader::{EVENT_QUEUE, Reader, ReaderEvent};
use crate::shipper::{RetryPolicy, Shipper, ShipperParts};
use crate::tail::{Tailer, TailerSettings};
use crate::{AgentStats, Buffer};
use ferry_core::shutdown::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// Why the agent could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] AgentConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Output(#[from] CollectorOutputError),
    /// The Kafka output's producer could not be created (librdkafka refused a setting).
    #[error(transparent)]
    Kafka(#[from] ferry_kafka::KafkaError),
    #[error("agent {what} thread failed: {message}")]
    Thread { what: &'static str, message: String },
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub agent_id: String,
    /// Files with a checkpoint at exit.
    pub files: usize,
}

/// Bytes read per `read()` call.
const READ_BUFFER: usize = 256 << 10;
/// Items each worker channel holds: a little slack between threads, bounded.
const WORKER_QUEUE: usize = 4;

/// A configured agent, ready to run.
pub struct Agent<O = AnyOutput> {
    config: AgentConfig,
    inputs: Arc<[CompiledInput]>,
    output: Arc<O>,
    stats: Arc<AgentStats>,
    use_events: bool,
}

impl Agent<AnyOutput> {
    /// An agent shipping to the output its config names.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let output = output_of(&config)?;
        Self::with_output(config, output)
    }
}

/// The output a config names, ready to send.
pub fn output_of(config: &AgentConfig) -> Result<AnyOutput, AgentError> {
    Ok(match &config.output {
        OutputConfig::Null => AnyOutput::Null(NullOutput::new()),
        OutputConfig::Stdout => AnyOutput::Stdout(StdoutOutput::new()),
        OutputConfig::Collector(c) => AnyOutput::Collector(CollectorOutput::new(c)?),
        OutputConfig::Kafka(k) => AnyOutput::Kafka(Box::new(KafkaOutput::new(k)?)),
    })
}

impl<O: Output> Agent<O> {
    /// An agent shipping to `output` (the config's `output` section is then not used).
    pub fn with_output(config: AgentConfig, output: O) -> Result<Self, AgentError> {
        let inputs: Arc<[CompiledInput]> = config.validate()?.into();
        Ok(Self {
            config,
            inputs,
            output: Arc::new(output),
            stats: Arc::new(AgentStats::default()),
            use_events: true,
        })
    }

    /// Live counters (for benchmarks, tests and `ferry up`'s status line).
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// The output, e.g. to read the null output's byte count after a run.
    pub fn output(&self) -> Arc<O> {
        self.output.clone()
    }

    /// Turns file events off, leaving only rescans (to test the fallback path).
    pub fn without_file_events(mut self) -> Self {
        self.use_events = false;
        self
    }

    /// Runs until `shutdown` fires, then drains (see the module docs).
    pub async fn run(self, shutdown: Shutdown) -> Result<AgentReport, AgentError> {
        let cfg = &self.config;
        let checkpointer = Checkpointer::new(&cfg.data_dir)?;
        let mut checkpoints = {
            let c = checkpointer.clone();
            tokio::task::spawn_blocking(move || c.load())
                .await
                .map_err(|e| AgentError::Thread {
                    what: "checkpoint",
                    message: e.to_string(),
                })??
        };
        let agent_id = cfg
            .id
            .clone()
            .or_else(|| checkpoints.agent_id.clone())
            .unwrap_or_else(host_name);
        checkpoints.agent_id = Some(agent_id.clone());
        tracing::info!(agent_id, inputs = self.inputs.len(), data_dir = %cfg.data_dir.display(), files = checkpoints.files.len(), "agent starting");

        // Bound first: an address in use fails the start, before any file is read.
        let mut syslog_inputs = Vec::with_capacity(cfg.syslog.len());
        for s in &cfg.syslog {
            syslog_inputs.push(crate::syslog::SyslogInput::bind(s.clone()).await?);
        }
        let mut syslog_tasks = tokio::task::JoinSet::new();
        for input in syslog_inputs {
            let limits = BatchLimits {
                max_bytes: cfg.batch.max_bytes.as_usize(),
                max_records: cfg.batch.max_records,
                linger: cfg.batch.linger.get(),
            };
            syslog_tasks.spawn(input.run(
                agent_id.clone(),
                limits,
                cfg.codec(),
                cfg.compression.level,
                self.output.clone(),
                self.stats.clone(),
                shutdown.clone(),
                cfg.shutdown_timeout.get(),
            ));
        }

        let fds = crate::fdlimit::FdLimit::raise();
        let max_open_files = fds.max_open_files(cfg.max_open_files);
        tracing::info!(
            soft_before = ?fds.soft_before,
            soft = ?fds.soft,
            hard = ?fds.hard,
            in_use = fds.in_use,
            reserve = fds.reserve(),
            max_open_files,
            "open-files limit"
        );

        let pool = BuilderPool::with_limit(cfg.buffer_bytes.as_usize());
        let buffer = Arc::new(Buffer::new(cfg.buffer_bytes.get()));
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = std::sync::mpsc::sync_channel::<ReaderEvent>(EVENT_QUEUE);

        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let mut worker_tx = Vec::with_capacity(workers);
        let mut ship_rx = Vec::with_capacity(workers);
        let mut threads = Vec::new();
        for i in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(WORKER_QUEUE);
            let (stx, srx) = mpsc::channel(WORKER_QUEUE);
            worker_tx.push(tx);
            ship_rx.push(srx);
            let (codec, level, pool) = (cfg.codec(), cfg.compression.level, pool.clone());
            threads.push(spawn_thread(format!("ferry-compress-{i}"), move || {
                crate::compress::run_worker(rx, stx, codec, level, pool)
            })?);
        }

        let tailer = Tailer::new(
            TailerSettings {
                agent_id: agent_id.clone(),
                read_budget: cfg.read_budget_bytes.get(),
                read_buffer: READ_BUFFER.min(cfg.read_budget_bytes.as_usize().max(4096)),
                limits: BatchLimits {
                    max_bytes: cfg.batch.max_bytes.as_usize(),
                    max_records: cfg.batch.max_records,
                    linger: cfg.batch.linger.get(),
                },
                backlog_bytes: cfg.batch.backlog_bytes.get(),
                max_open_files,
            },
            self.inputs.clone(),
            checkpoints.clone(),
            pool,
        );
        let reader = Reader {
            tailer,
            events,
            events_tx: events_tx.clone(),
            overflow: Arc::new(AtomicBool::new(false)),
            workers: worker_tx,
            group_bytes: cfg.batch.max_bytes.get(),
            buffer: buffer.clone(),
            stop: stop.clone(),
            stats: self.stats.clone(),
            rescan_interval: cfg.rescan_interval.get(),
            use_events: self.use_events,
            runtime: tokio::runtime::Handle::current(),
        };
        threads.push(spawn_thread("ferry-reader".to_owned(), move || {
            reader.run()
        })?);

        let wake_tx = events_tx.clone();
        let stop_tx = events_tx;
        let parts = ShipperParts {
            output: self.output.clone(),
            topics: self
                .inputs
                .iter()
                .map(|i| Arc::from(i.topic.as_str()))
                .collect(),
            input_names: self.inputs.iter().map(|i| i.name.clone()).collect(),
            checkpointer,
            checkpoints,
            checkpoint_interval: cfg.checkpoint_interval.get(),
            shutdown_timeout: cfg.shutdown_timeout.get(),
            max_in_flight: cfg.max_in_flight,
            max_in_flight_per_file: cfg.max_in_flight_per_file,
            policy: RetryPolicy::default(),
            gzip_level: cfg.compression.level,
            // Several files' batches in one request up to a full batch's bytes: what one busy
            // file's request carries anyway.
            coalesce_bytes: if self.output.coalesces() {
                cfg.batch.max_bytes.as_usize()
            } else {
                0
            },
            buffer,
            stats: self.stats.clone(),
            stop_reader: Box::new(move || {
                stop.store(true, Ordering::Relaxed);
                let _ = stop_tx.try_send(ReaderEvent::Wake);
            }),
            wake_reader: Box::new(move || {
                let _ = wake_tx.try_send(ReaderEvent::Wake);
            }),
        };
        // The registry heartbeat runs beside the shipper and says goodbye after it.
        let heartbeat = match (&cfg.output, cfg.registry.enabled) {
            (OutputConfig::Collector(c), true) => crate::registry::Heartbeat::new(
                &c.urls,
                c.security.clone(),
                {
                    let output = self.output.clone();
                    Box::new(move || output.current_url())
                },
                agent_id.clone(),
                self.inputs.iter().map(|i| i.name.clone()).collect(),
                self.stats.clone(),
                cfg.registry.heartbeat_interval.get(),
            ),
            _ => None,
        }
        .map(|hb| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            (stop, tokio::spawn(hb.run(stopped)))
        });

        // The output learns its destinations again now and then (collectors listed by
        // `GET /v1/collectors`, host names resolved again).
        let refresher = self.output.refresh_interval().map(|every| {
            let output = self.output.clone();
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tick.tick() => output.refresh().await,
                    }
                }
            });
            (stop, task)
        });

        let final_cps = Shipper::new(parts, ship_rx).run(shutdown).await;
        while let Some(done) = syslog_tasks.join_next().await {
            match done {
                Ok(Ok(report)) => tracing::info!(?report, "syslog input stopped"),
                Ok(Err(e)) => tracing::error!(error = %e, "syslog input failed"),
                Err(e) => tracing::error!(error = %e, "syslog input panicked"),
            }
        }
        if let Some((stop, task)) = refresher {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some((stop, task)) = heartbeat {
            let _ = stop.send(());
            let _ = task.await;
        }

        // The shipper returns once every channel closed (threads done) or at the deadline
        // (threads finishing their last item; the shipper's receivers are dropped, so they do).
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| ()))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| AgentError::Thread {
            what: "join",
            message: e.to_string(),
        })?;
        if joined.iter().any(Result::is_err) {
            return Err(AgentError::Thread {
                what: "reader or compression",
                message: "panicked (see the log above)".to_owned(),
            });
        }
        tracing::info!(agent_id, files = final_cps.files.len(), "agent stopped");
        Ok(AgentReport {
            agent_id,
            files: final_cps.files.len(),
        })
    }
}

fn spawn_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, AgentError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| AgentError::Thread {
            what: "spawn",
            message: e.to_string(),
        })
}
