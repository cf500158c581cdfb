//! ferry-agent: tails log files and ships their lines, none lost, none duplicated.
//!
//! Module map, in the order a line travels:
//! - [`config`]: the `agent:` config section, its validation, the quick form from CLI flags.
//! - [`discovery`]: glob expansion and the directories to watch.
//! - [`fdlimit`]: the open-files limit raised at start, and the tail-handle budget under it.
//! - [`tail`]: the [`tail::Tailer`] (all files, in turns) and per file a
//!   [`tail::watcher::FileWatcher`] state machine and its [`tail::fingerprint`] identity.
//! - [`lines`]: splitting reads into lines (memchr, no per-line allocation, long-line cut).
//! - [`container`]: CRI and docker json-file lines, their partial pieces merged; Kubernetes
//!   metadata from the kubelet's paths.
//! - [`multiline`]: joining lines into records (stack traces).
//! - [`batcher`]: sealing records into batches by bytes, records and linger.
//! - [`reader`]: the reader thread driving the tailer with file events and rescans.
//! - [`compress`]: worker threads that encode and gzip batches.
//! - [`shipper`]: delivery with retries, splitting and drops; acknowledgements; checkpoints.
//! - [`output`]: the `null`, `stdout`, `collector` and `kafka` outputs.
//! - [`checkpoint`]: the acknowledged offset per file, written atomically.
//! - [`stdin`]: `ferry agent --stdin`, a pipe shipped to its end with the same origins and acks.
//! - [`syslog`]: the syslog input: UDP and TCP listeners (RFC 5424 and 3164, octet counting
//!   or newline framing), shipped like stdin.
//! - [`registry`]: heartbeats to the collector's registry of agents.
//! - [`agent`]: [`Agent::new`] / [`Agent::run`], the wiring of all of the above.
//!
//! # Metrics (`metrics` crate, rendered by the process's Prometheus registry)
//!
//! | name | labels | meaning |
//! |------|--------|---------|
//! | `ferry_agent_lines_read_total` | input | lines read from files |
//! | `ferry_agent_bytes_read_total` | input | file bytes handed out as lines |
//! | `ferry_agent_truncated_lines_total` | input | lines cut at `max_line_bytes` |
//! | `ferry_agent_lines_shipped_total` | input | records acknowledged by the output |
//! | `ferry_agent_bytes_shipped_total` | input | file bytes whose batches were acknowledged or dropped |
//! | `ferry_agent_deduplicated_records_total` | input | records the collector already had (replays after a restart) |
//! | `ferry_agent_dropped_records_total` | reason, input | records given up on: `rejected` (4xx), `too_large` (a single record over the collector's limit), `encode` |
//! | `ferry_agent_retries_total` | | delivery attempts that will be retried |
//! | `ferry_agent_unread_bytes_total` | input, path | bytes that could not be read (lost to a truncation before they were read) |
//! | `ferry_agent_file_lag_bytes` | input, path | bytes in the file not yet read (gauge, updated at each rescan) |
//! | `ferry_agent_files_tracked` | | files being tailed (gauge) |
//! | `ferry_agent_files_open` | | tail handles open now, at most `max_open_files` (gauge) |
//! | `ferry_agent_files_waiting` | | files found but not open yet: waiting for a descriptor, or failing to open and retried with backoff (gauge) |
//! | `ferry_agent_files_skipped_total` | reason, format, input | files not read: `compressed` (gzip, zstd, bzip2, xz by magic bytes) |
//! | `ferry_agent_syslog_unparsed_total` | input | syslog messages that were not RFC 5424 or 3164, shipped as they came |
//! | `ferry_agent_syslog_framing_errors_total` | input | TCP syslog connections closed on a bad octet count |
//! | `ferry_agent_checkpoint_age_seconds` | | time since the checkpoint file was last written (gauge) |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_agent::{Agent, AgentConfig, QuickArgs};
//! let config = AgentConfig::from_quick(None, &QuickArgs {
//!     paths: vec!["/var/log/app/*.log".into()],
//!     output: Some("stdout".into()),
//!     data_dir: Some("/tmp/ferry-agent".into()),
//!     ..Default::default()
//! })?;
//! let shutdown = ferry_core::shutdown::Shutdown::new();
//! shutdown.on_signals();
//! Agent::new(config)?.run(shutdown).await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod batcher;
pub mod checkpoint;
pub mod compress;
pub mod config;
pub mod container;
pub mod discovery;
pub mod fdlimit;
pub mod fsevents;
pub mod lines;
pub mod multiline;
pub mod output;
pub mod reader;
pub mod registry;
pub mod shipper;
pub mod stdin;
pub mod syslog;
pub mod tail;

pub use agent::{Agent, AgentError, AgentReport};
pub use config::{AgentConfig, AgentConfigError, QuickArgs};

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a running agent. Metrics carry the same facts with labels; these are for
/// code in the same process (benchmarks, tests, status lines).
#[derive(Debug, Default)]
pub struct AgentStats {
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub lines_truncated: AtomicU64,
    pub unread_bytes: AtomicU64,
    pub records_acked: AtomicU64,
    pub records_dropped: AtomicU64,
    /// File bytes whose batches were acknowledged (or dropped and counted).
    pub bytes_acked: AtomicU64,
    pub batches_acked: AtomicU64,
    pub retries: AtomicU64,
    /// Batches the output answered "out of order" (sent again behind their predecessor).
    pub out_of_order: AtomicU64,
    pub checkpoint_writes: AtomicU64,
    /// When the output last acknowledged a batch, in ms since the Unix epoch (0: never).
    pub last_ack_ms: AtomicU64,
    /// Records given up on, by reason (what `ferry_agent_dropped_records_total` counts).
    /// A std mutex, never held across an await.
    pub drops: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Per file: its acknowledged offset and the bytes not yet read (for the registry).
    pub files: std::sync::Mutex<FileTable>,
}

impl AgentStats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// What the agent knows of each file it tails, by path: the reader sets `behind` at each
/// rescan (and forgets the files it no longer tails), the shipper sets `acked` as batches are
/// acknowledged. Read by the registry heartbeat.
pub type FileTable = std::collections::BTreeMap<std::sync::Arc<str>, FileRow>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileRow {
    pub input: usize,
    pub acked: u64,
    pub behind: u64,
}

/// The agent's buffer: file bytes read but not yet acknowledged. When it is full the reader
/// stops reading (the file is the buffer) until acknowledgements free room.
#[derive(Debug)]
pub struct Buffer {
    used: AtomicU64,
    limit: u64,
}

impl Buffer {
    pub fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Bytes that may still be read, given `open` bytes held in not yet sealed batches.
    pub fn room(&self, open: u64) -> u64 {
        self.limit
            .saturating_sub(self.used.load(Ordering::Acquire).saturating_add(open))
    }

    pub fn take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}
