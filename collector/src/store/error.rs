//! The store's error type: one enum for every failure a caller of [`super::Store`] can see.

use ferry_core::batch::WireError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown topic {0:?}; create it first")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error(
        "the store holds {max} topics, the most it may (limits.max_topics): delete one (DELETE /v1/topics/T, `ferry topics delete T`) or raise the limit"
    )]
    TooManyTopics { max: usize },
    #[error("topic {topic:?} already exists with {partitions} partitions")]
    TopicExists { topic: String, partitions: u32 },
    #[error(
        "offset {requested} out of range for {topic}/{partition}: the log holds [{log_start}, {end_offset})"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        requested: u64,
        log_start: u64,
        end_offset: u64,
    },
    #[error("invalid batch: {0}")]
    Batch(#[from] WireError),
    #[error("corruption in {path} at byte {position}: {reason}")]
    Corruption {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is closed (or stopped accepting appends after a failed fsync)")]
    Closed,
    /// The batch was sent as following its origin's records up to `after`, and those are not
    /// stored (nor staged ahead of it): storing it now would put a file's lines out of order
    /// and make the earlier batch look like a replay. The sender resends it later.
    #[error(
        "out of order: this batch follows offset {after} of its file, but the partition holds that file only up to {}",
        high.map_or_else(|| "nothing".to_owned(), |h| h.to_string())
    )]
    OutOfOrder { after: u64, high: Option<u64> },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(path, e))
    }
}
