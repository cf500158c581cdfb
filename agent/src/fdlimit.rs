//! The process's file-descriptor budget: how many tail handles the agent may hold.
//!
//! A host with many logs meets the common default soft limit (`ulimit -n 1024`) on day one: an
//! agent that opens every file it finds takes the last descriptor, then cannot open a socket to
//! its output, and ships nothing. So, at start:
//!
//! 1. the soft `RLIMIT_NOFILE` is raised to the hard limit (the most an unprivileged process
//!    may ask for), and what was obtained is logged;
//! 2. a reserve is kept for everything that is not a tail handle: output connections, the
//!    checkpoint file, the metrics listener, the file-event watcher, a collector in the same
//!    process (`ferry up`), the transient handle of a file being identified;
//! 3. the rest, less the descriptors already open, is the default `max_open_files`: the most
//!    tail handles held at once. Files beyond it give their handle back when idle and are
//!    reopened by path when they change (see [`crate::tail`]).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors never given to tail handles, at least.
pub const MIN_RESERVE: u64 = 64;
/// Descriptors never given to tail handles, at most (a quarter of the limit up to this).
pub const MAX_RESERVE: u64 = 1024;
/// The fewest tail handles the agent works with, whatever the limit says.
pub const MIN_OPEN_FILES: usize = 4;

/// What the start-up step found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before the agent changed it (`None`: unlimited).
    pub soft_before: Option<u64>,
    /// The soft limit now in force.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
    /// Descriptors open when the budget was computed (stdio, the runtime, the log file...).
    pub in_use: u64,
}

impl FdLimit {
    /// Raises the soft limit to the hard one (best effort: a refusal leaves the soft limit as
    /// it was, and is reported in the log).
    pub fn raise() -> Self {
        let before = getrlimit(Resource::Nofile);
        let mut soft = before.current;
        if before.current != before.maximum {
            let want = Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => soft = getrlimit(Resource::Nofile).current,
                Err(e) => tracing::warn!(
                    soft = ?before.current,
                    hard = ?before.maximum,
                    error = %e,
                    "cannot raise the open-files limit to the hard limit; keeping the soft one"
                ),
            }
        }
        Self {
            soft_before: before.current,
            soft,
            hard: before.maximum,
            in_use: open_descriptors(),
        }
    }

    /// Descriptors kept out of the tail handles' reach.
    pub fn reserve(&self) -> u64 {
        match self.soft {
            Some(limit) => (limit / 4).clamp(MIN_RESERVE, MAX_RESERVE),
            None => MAX_RESERVE,
        }
    }

    /// The default `max_open_files`: the limit less the reserve and what is already open.
    pub fn default_max_open_files(&self) -> usize {
        match self.soft {
            Some(limit) => {
                let free = limit.saturating_sub(self.reserve() + self.in_use);
                usize::try_from(free)
                    .unwrap_or(usize::MAX)
                    .max(MIN_OPEN_FILES)
            }
            // No limit at all: still bounded, by what a kernel handles comfortably.
            None => 1 << 20,
        }
    }

    /// The tail-handle budget for a configured `max_open_files` (`None`: the default). A
    /// configured value above what the limit allows is lowered to it, with a warning: taking
    /// the reserve would starve the outputs.
    pub fn max_open_files(&self, configured: Option<usize>) -> usize {
        let allowed = self.default_max_open_files();
        match configured {
            None => allowed,
            Some(n) if n > allowed => {
                tracing::warn!(
                    configured = n,
                    allowed,
                    limit = ?self.soft,
                    reserve = self.reserve(),
                    "`max_open_files` is above what the open-files limit leaves after the reserve; using the lower value"
                );
                allowed
            }
            Some(n) => n.max(1),
        }
    }
}

/// Descriptors open in this process right now (0 if `/proc/self/fd` cannot be read).
pub fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Grows the process's descriptor table, once, to hold descriptor numbers up to `n` — ahead of
/// opening many files at once. The kernel grows the table by doubling as descriptors are
/// taken, and in a process with more than one thread each growth waits for an RCU grace
/// period: opening a thousand files grew it four times, and the reader spent 15 ms of a
/// 190 ms run asleep in those waits (`perf sched`, issue 20). One growth waits once. The table
/// is the size opening the files would have made it anyway. Best effort: above the limit, or
/// on any error, nothing is done.
pub fn presize_table(n: u64) {
    let Ok(n) = i32::try_from(n) else {
        return;
    };
    let Ok(probe) = std::fs::File::open("/dev/null") else {
        return;
    };
    // Taking descriptor `n - 1` (or the lowest free one above it) makes the table that large;
    // giving it back at once leaves the table as it is.
    let _ = rustix::io::fcntl_dupfd_cloexec(&probe, n.saturating_sub(1).max(0));
}

/// The descriptor table [`grow_table_early`] makes, at most: room for a thousand log files
/// and the rest of the process (32 KiB of kernel memory).
pub const EARLY_TABLE: u64 = 4096;

/// Grows the descriptor table to [`EARLY_TABLE`] slots (or the soft open-files limit, if
/// lower) while the process has one thread. Call it first thing, before a runtime or any
/// other thread is started: the kernel waits for an RCU grace period when it grows the table
/// of a process whose threads share it, and on this machine that single wait was 9-13 ms of
/// the reader's startup scan of a thousand files (`perf trace`: one `fcntl(F_DUPFD_CLOEXEC)`
/// in [`presize_table`], issue 20) — with one thread there is no one to wait for. A scan that
/// finds more files than that still grows it once more ([`presize_table`]).
pub fn grow_table_early() {
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    presize_table(soft.min(EARLY_TABLE));
}

/// Whether an open failed for want of descriptors (this process's limit, or the system's).
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::MFILE.raw_os_error() || c == rustix::io::Errno::NFILE.raw_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: Option<u64>, in_use: u64) -> FdLimit {
        FdLimit {
            soft_before: soft,
            soft,
            hard: soft,
            in_use,
        }
    }

    #[test]
    fn budget_leaves_a_reserve_under_the_common_default() {
        let l = limit(Some(1024), 20);
        assert_eq!(l.reserve(), 256);
        assert_eq!(l.default_max_open_files(), 1024 - 256 - 20);
        // Configured above what is allowed: lowered; below: kept.
        assert_eq!(l.max_open_files(Some(5000)), 748);
        assert_eq!(l.max_open_files(Some(100)), 100);
    }

    #[test]
    fn tiny_and_huge_limits() {
        assert_eq!(limit(Some(64), 30).default_max_open_files(), MIN_OPEN_FILES);
        assert_eq!(limit(Some(1 << 20), 10).reserve(), MAX_RESERVE);
        assert_eq!(limit(None, 10).default_max_open_files(), 1 << 20);
    }

    #[test]
    fn raise_reaches_the_hard_limit_here() {
        let l = FdLimit::raise();
        assert_eq!(
            l.soft, l.hard,
            "an unprivileged process may raise soft to hard"
        );
        assert_eq!(getrlimit(Resource::Nofile).current, l.soft);
        assert!(l.in_use >= 3, "stdio at least: {l:?}");
        // Presizing takes no descriptor for good.
        let before = open_descriptors();
        presize_table(4096);
        presize_table(u64::MAX);
        grow_table_early();
        assert_eq!(open_descriptors(), before);
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(is_out_of_descriptors(&emfile));
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            2
        )));
    }
}
