//! Configuration of the embedded store, as read from the collector's YAML (`store:` section).

use ferry_core::config::{ByteSize, Duration};

/// When an append is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every append is written and fsynced on its own before it is acknowledged.
    Always,
    /// Appends that arrive within `group_commit_window` (or until `group_commit_bytes`) are
    /// written together; each touched file is fsynced once; then every one is acknowledged.
    #[default]
    Group,
    /// Appends are acknowledged once written to the OS; dirty files are fsynced every
    /// `fsync_interval`. A machine crash can lose up to that interval.
    Interval,
    /// Appends are acknowledged once written to the OS; files are fsynced only when a segment
    /// rolls and on close.
    Never,
}

/// Settings of the store. Every field has a default, so an empty `store: {}` is valid.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Durability policy of appends (default `group`).
    pub fsync: FsyncPolicy,
    /// How long the writer waits for more appends after the first one of a group (default 2ms).
    pub group_commit_window: Duration,
    /// A group is closed early once it holds this many bytes (default 4MiB).
    pub group_commit_bytes: ByteSize,
    /// Period of the background fsync for the `interval` policy (default 1s).
    pub fsync_interval: Duration,
    /// A segment is rolled once it would grow past this size (default 256MiB, at most 2GiB).
    pub segment_bytes: ByteSize,
    /// A segment is rolled on the next append once it is this old (default 1d).
    pub segment_age: Duration,
    /// What is deleted, and when.
    pub retention: RetentionConfig,
    /// How often the retention thread checks (default 30s).
    pub retention_check_interval: Duration,
    /// One sparse index entry per this many bytes of segment (default 4KiB).
    pub index_interval_bytes: ByteSize,
    /// Bytes of appends accepted but not yet written; further `append` calls wait (default
    /// 64MiB). This bounds the writer's queue in bytes.
    pub max_inflight_bytes: ByteSize,
    /// Segment files held open at most (for appending and reading, over all partitions);
    /// more are opened on demand and the least recently used closed. Default: derived from
    /// the open-files limit (`RLIMIT_NOFILE`), a quarter of it (64 to 2,048) kept for
    /// connections and everything else, at most 4,096 (see `store::handles`).
    pub max_open_files: Option<usize>,
}

/// Retention: the oldest sealed segments of a partition are deleted when any limit is exceeded.
/// The active segment is never deleted.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete a sealed segment once its newest batch is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while a partition is larger than this.
    pub max_bytes: Option<ByteSize>,
    /// Delete the oldest sealed segments (of any partition) while the file system holding the
    /// store has less free space than this.
    pub min_free_disk: Option<ByteSize>,
}

/// Largest segment: positions in the index are 32-bit.
pub(crate) const MAX_SEGMENT_BYTES: u64 = 2 << 30;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Group,
            group_commit_window: Duration::from_millis(2),
            group_commit_bytes: ByteSize::mib(4),
            fsync_interval: Duration::from_secs(1),
            segment_bytes: ByteSize::mib(256),
            segment_age: Duration::from_secs(24 * 3600),
            retention: RetentionConfig {
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                max_bytes: None,
                min_free_disk: None,
            },
            retention_check_interval: Duration::from_secs(30),
            index_interval_bytes: ByteSize::kib(4),
            max_inflight_bytes: ByteSize::mib(64),
            max_open_files: None,
        }
    }
}

impl StoreConfig {
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_bytes.get().clamp(4096, MAX_SEGMENT_BYTES)
    }
}
