//! The record: one log line and what ferry knows about where it came from.
//!
//! A record is the unit users think in (one line of a log file, one message on a topic). It is
//! carried between components inside a [`crate::batch`], which shares the parts that are the same
//! for every line of one read (the origin's agent and file, the ingest time) so that a record costs
//! a few bytes of metadata, not a struct of strings.

use bytes::Bytes;
use std::fmt;

/// Which file, on which host, a run of lines was read from.
///
/// The pair (`agent_id`, `file`) is the key the collector deduplicates on: for each such key and
/// partition it remembers the highest byte offset stored and drops replays at or below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginKey {
    /// Stable id of the agent (configured, or derived from the host name and data dir).
    pub agent_id: String,
    /// Identity of the file the lines were read from.
    pub file: FileId,
}

/// Identity of one file's content stream as the agent sees it.
///
/// `dev`/`inode` name the file on its host; `fingerprint` is a checksum of its first bytes, so a
/// reused inode with other content is a different file; `generation` counts truncations of the
/// same file, so offsets that restart at 0 after a copytruncate are not taken for replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
    pub fingerprint: u64,
    pub generation: u32,
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}:{:x}:{:016x}:{}",
            self.dev, self.inode, self.fingerprint, self.generation
        )
    }
}

/// The origin of a batch: one contiguous byte range `[first_offset, end_offset)` of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOrigin {
    pub key: OriginKey,
    /// Byte offset in the file of the first record's first byte.
    pub first_offset: u64,
    /// Byte offset just past the last record (where the agent resumes reading).
    pub end_offset: u64,
}

/// A named string attached to a record: static fields from the agent's input config, or fields a
/// processor parsed. Values are strings so that every tool (Kafka headers, JSON) can carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub key: Box<str>,
    pub value: Box<str>,
}

impl Field {
    pub fn new(key: impl Into<Box<str>>, value: impl Into<Box<str>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// One record as decoded from a batch.
///
/// `line` is a slice of the batch's decompressed buffer: decoding does not copy lines.
/// Lines are bytes, not strings: invalid UTF-8 in a log file is kept exactly as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The line as written, without its trailing newline.
    pub line: Bytes,
    /// Event time in milliseconds since the Unix epoch, when the producer knew it.
    pub event_time_ms: Option<i64>,
    /// Byte offset of this record in its origin file (`None` for records without an origin).
    pub offset: Option<u64>,
    /// Source bytes this record consumed in its file: the line, its newline, and for a truncated
    /// or multiline record everything it stands for. Sums to the batch's byte range.
    pub span: u64,
    /// The line was cut at the agent's `max_line_bytes`; the rest of it was skipped and counted.
    pub truncated: bool,
    /// Static or parsed key/value fields.
    pub fields: Vec<Field>,
}

impl Record {
    /// A plain record with no origin, as `ferry produce` or an HTTP client sends.
    pub fn from_line(line: impl Into<Bytes>) -> Self {
        Self {
            line: line.into(),
            event_time_ms: None,
            offset: None,
            span: 0,
            truncated: false,
            fields: Vec::new(),
        }
    }
}
