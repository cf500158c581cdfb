//! Opening a partition directory: find the segments, check them, repair what a crash or a bad
//! disk left, and rebuild the in-memory state (indexes, end offset, dedup map).
//!
//! - Sealed segments were fsynced when rolled, so an invalid frame in one is corruption: it is
//!   reported and skipped, and the segment's other batches stay readable. Their index files are
//!   checked (header, order, consistency, and the frames after the last entry are verified); a
//!   missing or inconsistent index is rebuilt by scanning the segment.
//! - The active (newest) segment is where the last flushed point is: it is scanned whole and
//!   every frame's CRC verified. The first invalid frame starts a torn tail, which is cut off,
//!   logged, counted in `ferry_store_recovery_truncated_bytes_total` and reported.
//! - The dedup map comes from the newest valid snapshot plus a scan of every segment from the
//!   snapshot's offset on (or of every segment, without a snapshot).
//!
//! Nothing here panics on what it reads from disk.

use super::dedup::DedupMap;
use super::error::{IoContext, StoreError};
use super::fs::FileSystem;
use super::index::SparseIndex;
use super::partition::{Pending, SegView, View, WriterState};
use super::segment::{
    self, CorruptRange, FILE_HEADER_LEN, INDEX_EXT, LOG_EXT, SEGMENT_MAGIC, SNAPSHOT_EXT, ScanMode,
    TIME_INDEX_EXT, file_path,
};
use std::path::{Path, PathBuf};

/// What `Store::open` found and repaired, over all partitions.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// One entry per partition opened (in topic, partition order).
    pub partitions: Vec<PartitionRecovery>,
    /// Problems outside partitions (a topic without valid metadata, a corrupt groups file).
    pub notes: Vec<String>,
}

impl RecoveryReport {
    /// True if nothing had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.notes.is_empty() && self.partitions.iter().all(PartitionRecovery::is_clean)
    }

    /// Bytes of torn tails cut off, over all partitions.
    pub fn truncated_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.truncated_bytes).sum()
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionRecovery> {
        self.partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
    }
}

/// What was repaired in one partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionRecovery {
    pub topic: String,
    pub partition: u32,
    /// Bytes cut off the active segment's torn tail.
    pub truncated_bytes: u64,
    /// Where the torn tail started and why it was judged torn.
    pub truncation: Option<(PathBuf, u64, String)>,
    /// Index files rebuilt because they were missing or inconsistent.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Corrupt ranges of sealed segments, skipped (their batches are lost, the others kept).
    pub corrupt: Vec<CorruptRange>,
    /// Offset covered by the dedup snapshot used, if one was.
    pub dedup_snapshot: Option<u64>,
    /// Origins known to dedup after recovery.
    pub dedup_origins: usize,
}

impl PartitionRecovery {
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.truncation.is_none()
            && self.rebuilt_indexes.is_empty()
            && self.corrupt.is_empty()
    }
}

/// The recovered state of a partition.
pub(crate) struct Recovered {
    pub view: View,
    pub writer: WriterState,
    pub report: PartitionRecovery,
}

/// Opens (creating if empty) the partition directory `dir`.
pub(crate) fn open_partition(
    fs: &dyn FileSystem,
    dir: &Path,
    topic: &str,
    partition: u32,
    index_interval: u64,
) -> Result<Recovered, StoreError> {
    fs.create_dir_all(dir).at(dir)?;
    let mut report = PartitionRecovery {
        topic: topic.to_owned(),
        partition,
        ..PartitionRecovery::default()
    };
    let entries = fs.list_dir(dir).at(dir)?;
    for p in &entries {
        if p.extension().is_some_and(|e| e == "tmp") {
            let _ = fs.remove_file(p);
        }
    }
    let mut bases: Vec<u64> = entries
        .iter()
        .filter_map(|p| segment::parse_base(p, LOG_EXT))
        .collect();
    bases.sort_unstable();
    if bases.is_empty() {
        let path = file_path(dir, 0, LOG_EXT);
        let mut f = fs.create(&path).at(&path)?;
        f.write_all(&segment::file_header(SEGMENT_MAGIC, 0))
            .and_then(|()| f.sync_data())
            .at(&path)?;
        fs.sync_dir(dir).at(dir)?;
        bases.push(0);
    }
    let active_base = bases[bases.len() - 1];

    // The newest valid dedup snapshot at or below the active segment's base.
    let mut snaps: Vec<u64> = entries
        .iter()
        .filter_map(|p| segment::parse_base(p, SNAPSHOT_EXT))
        // A snapshot's offset is a segment base (it is written at a roll); if retention has deleted
        // that segment since, every remaining segment is above it and gets scanned.
        .filter(|b| *b <= active_base && (bases.contains(b) || *b < bases[0]))
        .collect();
    snaps.sort_unstable();
    let mut dedup = DedupMap::default();
    let mut dedup_from = 0u64;
    for b in snaps.iter().rev() {
        let path = file_path(dir, *b, SNAPSHOT_EXT);
        match fs
            .read_file(&path)
            .map_err(|e| e.to_string())
            .and_then(|buf| DedupMap::decode_snapshot(&buf, *b))
        {
            Ok(m) => {
                dedup = m;
                dedup_from = *b;
                report.dedup_snapshot = Some(*b);
                break;
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring dedup snapshot");
            }
        }
    }

    let mut segments = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let active = i + 1 == bases.len();
        let next_base = bases.get(i + 1).copied();
        let seg = open_segment(
            fs,
            dir,
            base,
            active,
            next_base,
            base >= dedup_from,
            index_interval,
            &mut dedup,
            &mut report,
        )?;
        segments.push(seg);
    }
    let last_time = segments.iter().filter_map(|s| s.last_time_ms).max();
    let active = &segments[segments.len() - 1];
    let active_path = active.path.clone();
    let writer = WriterState {
        active: fs.open_append(&active_path, false).at(&active_path)?,
        active_base: active.base,
        active_path,
        active_first_time: active.index.entries.first().map(|e| e.time_ms),
        len: active.size,
        synced_len: active.size,
        next_offset: active.next_offset,
        last_time_ms: last_time.unwrap_or(i64::MIN),
        last_index_pos: active.index.entries.last().map(|e| e.pos),
        dedup,
        deleted: false,
        pending: Pending {
            start_offset: active.next_offset,
            start_len: active.size,
            start_last_index_pos: active.index.entries.last().map(|e| e.pos),
            start_first_time: active.index.entries.first().map(|e| e.time_ms),
            ..Pending::default()
        },
    };
    report.dedup_origins = writer.dedup.len();
    Ok(Recovered {
        view: View {
            segments,
            last_append_ms: last_time,
        },
        writer,
        report,
    })
}

#[allow(clippy::too_many_arguments)]
fn open_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    active: bool,
    next_base: Option<u64>,
    need_dedup_scan: bool,
    index_interval: u64,
    dedup: &mut DedupMap,
    report: &mut PartitionRecovery,
) -> Result<SegView, StoreError> {
    let path = file_path(dir, base, LOG_EXT);
    let file = fs.open_read(&path).at(&path)?;
    let mut len = file.size().at(&path)?;
    let mut head = [0u8; FILE_HEADER_LEN as usize];
    let header_ok = len >= FILE_HEADER_LEN
        && file.read_exact_at(&mut head, 0).is_ok()
        && segment::check_file_header(&head, SEGMENT_MAGIC, base).is_ok();
    if !header_ok {
        if active {
            // A segment whose creation was torn: start it afresh.
            truncate_to(fs, &path, 0)?;
            let mut w = fs.open_append(&path, false).at(&path)?;
            w.write_all(&segment::file_header(SEGMENT_MAGIC, base))
                .and_then(|()| w.sync_data())
                .at(&path)?;
            note_truncation(report, &path, 0, len, "segment header invalid".into());
            len = FILE_HEADER_LEN;
            let file = fs.open_read(&path).at(&path)?;
            return Ok(SegView {
                base,
                path,
                file,
                size: len,
                next_offset: base,
                index: SparseIndex::default(),
                last_time_ms: None,
            });
        }
        report.corrupt.push(CorruptRange {
            path: path.clone(),
            position: 0,
            length: len,
            reason: "segment header invalid".into(),
        });
        return Ok(SegView {
            base,
            path,
            file,
            size: len,
            next_offset: next_base.unwrap_or(base),
            index: SparseIndex::default(),
            last_time_ms: None,
        });
    }

    // Sealed segment with a good index and no dedup scan needed: verify the tail only.
    if !active && !need_dedup_scan {
        let idx_path = file_path(dir, base, INDEX_EXT);
        let tix_path = file_path(dir, base, TIME_INDEX_EXT);
        let loaded = fs
            .read_file(&idx_path)
            .and_then(|o| fs.read_file(&tix_path).map(|t| (o, t)))
            .map_err(|e| e.to_string())
            .and_then(|(o, t)| SparseIndex::decode(&o, &t, base, len));
        match loaded {
            Ok(index) => {
                let (from, expect) = index
                    .entries
                    .last()
                    .map_or((FILE_HEADER_LEN, base), |e| (e.pos, e.offset));
                let out = segment::scan(
                    &*file,
                    &path,
                    len,
                    from,
                    expect,
                    ScanMode::SkipCorrupt,
                    |_, _| {},
                )
                .at(&path)?;
                if out.corrupt.is_empty() || out.corrupt[0].position != from {
                    report.corrupt.extend(out.corrupt);
                    let last_time = out
                        .last_time_ms
                        .or_else(|| index.entries.last().map(|e| e.time_ms));
                    return Ok(SegView {
                        base,
                        path,
                        file,
                        size: len,
                        next_offset: out.next_offset,
                        index,
                        last_time_ms: last_time,
                    });
                }
                tracing::warn!(path = %idx_path.display(), "last index entry points at no frame; rebuilding");
            }
            Err(reason) => {
                tracing::warn!(path = %idx_path.display(), %reason, "index missing or invalid; rebuilding");
            }
        }
    }

    // Full scan: verify every frame, rebuild the index, feed dedup.
    let mode = if active {
        ScanMode::TruncateTail
    } else {
        ScanMode::SkipCorrupt
    };
    let mut index = SparseIndex::default();
    let out = segment::scan(
        &*file,
        &path,
        len,
        FILE_HEADER_LEN,
        base,
        mode,
        |m, batch| {
            index.maybe_add(m, index_interval);
            dedup.observe_stored(batch);
        },
    )
    .at(&path)?;
    report.corrupt.extend(out.corrupt);
    if active {
        if out.valid_len < len {
            truncate_to(fs, &path, out.valid_len)?;
            let reason = out.torn.unwrap_or_else(|| "torn tail".into());
            note_truncation(report, &path, out.valid_len, len - out.valid_len, reason);
            len = out.valid_len;
        }
    } else {
        let idx_path = file_path(dir, base, INDEX_EXT);
        let tix_path = file_path(dir, base, TIME_INDEX_EXT);
        let existing = fs
            .read_file(&idx_path)
            .and_then(|o| fs.read_file(&tix_path).map(|t| (o, t)))
            .ok()
            .and_then(|(o, t)| SparseIndex::decode(&o, &t, base, len).ok());
        if existing.as_ref().map(|e| &e.entries) != Some(&index.entries) {
            super::fs::write_file_atomic(fs, &idx_path, &index.encode_offsets(base))
                .at(&idx_path)?;
            super::fs::write_file_atomic(fs, &tix_path, &index.encode_times(base)).at(&tix_path)?;
            metrics::counter!("ferry_store_recovery_rebuilt_indexes_total").increment(1);
            report.rebuilt_indexes.push(idx_path);
        }
    }
    Ok(SegView {
        base,
        path,
        file,
        size: len,
        next_offset: out.next_offset,
        index,
        last_time_ms: out.last_time_ms,
    })
}

fn truncate_to(fs: &dyn FileSystem, path: &Path, len: u64) -> Result<(), StoreError> {
    let mut w = fs.open_append(path, false).at(path)?;
    w.truncate(len).and_then(|()| w.sync_data()).at(path)
}

fn note_truncation(
    report: &mut PartitionRecovery,
    path: &Path,
    at: u64,
    bytes: u64,
    reason: String,
) {
    metrics::counter!("ferry_store_recovery_truncations_total").increment(1);
    metrics::counter!("ferry_store_recovery_truncated_bytes_total").increment(bytes);
    tracing::warn!(
        topic = %report.topic, partition = report.partition, path = %path.display(),
        position = at, bytes, %reason, "truncated torn tail of the active segment"
    );
    report.truncated_bytes += bytes;
    report.truncation = Some((path.to_owned(), at, reason));
}
