//! One partition: its segments as readers see them ([`View`]), and the state only the writer
//! thread touches ([`WriterState`]).
//!
//! Invariants:
//! - Readers only ever see published data: a frame is added to the view after it is durable
//!   per the fsync policy (after its fsync for `always`/`group`, after its write otherwise).
//! - The last segment of the view is the writer's active segment; every other one is sealed
//!   (fsynced, index files written) and immutable until retention deletes it.
//! - Locks are held for metadata only, never across file I/O of a read; the view lock is never
//!   held across an await.

use super::dedup::{Decision, DedupMap};
use super::error::{IoContext, StoreError};
use super::fs::{FileSystem, ReadableFile, WritableFile, write_file_atomic};
use super::index::{IndexEntry, SparseIndex};
use super::segment::{
    self, CorruptRange, FILE_HEADER_LEN, FrameMeta, INDEX_EXT, LOG_EXT, SEGMENT_MAGIC,
    SNAPSHOT_EXT, TIME_INDEX_EXT, file_path,
};
use super::{AppendOutcome, ReadBatches, StoreConfig, StoredBatch};
use bytes::Bytes;
use ferry_core::batch::BatchHeader;
use ferry_core::record::OriginKey;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::{oneshot, watch};

/// A segment as readers see it.
pub(crate) struct SegView {
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<dyn ReadableFile>,
    /// Bytes of the file that hold published frames.
    pub size: u64,
    /// Offset after the last published batch.
    pub next_offset: u64,
    pub index: SparseIndex,
    /// Append time of the last published batch.
    pub last_time_ms: Option<i64>,
}

/// The published state of a partition.
pub(crate) struct View {
    /// Non-empty; in base-offset order; the last one is active.
    pub segments: Vec<SegView>,
    pub last_append_ms: Option<i64>,
}

impl View {
    pub fn log_start(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base)
    }
    pub fn end_offset(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.next_offset)
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

/// A reply waiting for the group's fsync.
pub(crate) struct Waiter {
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    pub outcome: AppendOutcome,
    /// Held until the reply, so the in-flight byte budget covers queued and unsynced bytes.
    pub _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Frames staged in this group, not yet published, and how to undo them.
#[derive(Default)]
pub(crate) struct Pending {
    /// Each frame: its header and its batch (the bytes as they arrived: written with `writev`,
    /// never copied into one buffer first).
    pub frames: Vec<([u8; segment::FRAME_HEADER_LEN], Bytes)>,
    /// Bytes of `frames`.
    pub bytes: u64,
    pub index: Vec<IndexEntry>,
    pub undo: Vec<(OriginKey, Option<u64>)>,
    pub waiters: Vec<Waiter>,
    /// Writer state at the start of the group, to roll back to.
    pub start_offset: u64,
    pub start_len: u64,
    pub start_last_index_pos: Option<u64>,
    pub start_first_time: Option<i64>,
    /// `buf` was written to the file (but maybe not fsynced).
    pub written: bool,
}

/// What only the writer thread touches.
pub(crate) struct WriterState {
    pub active: Box<dyn WritableFile>,
    pub active_base: u64,
    pub active_path: PathBuf,
    /// Append time of the active segment's first batch (for rolling by age).
    pub active_first_time: Option<i64>,
    /// Bytes of the active file, pending writes excluded.
    pub len: u64,
    /// Bytes of the active file known durable.
    pub synced_len: u64,
    /// Next offset to assign (pending batches included).
    pub next_offset: u64,
    pub last_time_ms: i64,
    pub last_index_pos: Option<u64>,
    pub dedup: DedupMap,
    /// Set by `Store::delete_topic` (under this lock) before the topic's directory moves to
    /// the trash: from then on the partition does no file I/O. New appends are refused with
    /// `UnknownTopic` (before, one that rolled a segment created it in a directory no longer
    /// there, and that I/O error stopped the whole store); appends staged before the delete
    /// are answered as stored, as they were when their writes went to the moved file.
    pub deleted: bool,
    pub pending: Pending,
}

impl WriterState {
    pub fn has_pending(&self) -> bool {
        !self.pending.frames.is_empty() || !self.pending.waiters.is_empty()
    }
}

/// One partition of a topic.
pub(crate) struct Partition {
    pub topic: String,
    pub id: u32,
    pub dir: PathBuf,
    /// Unique in the store: identifies the partition in a commit group.
    pub key: usize,
    pub view: RwLock<View>,
    pub writer: Mutex<WriterState>,
    /// Published end offset, for long polls.
    pub end_watch: watch::Sender<u64>,
    /// Corrupt ranges found (on open or by reads), each logged and counted once.
    reported: Mutex<Reported>,
}

/// Corrupt ranges seen: a set to report each once, and the list in order found.
type Reported = (HashSet<(PathBuf, u64)>, Vec<CorruptRange>);

/// How a staged append ended.
pub(crate) enum Staged {
    /// Waits in `pending.waiters` for the group.
    Queued,
    /// Failed on its own; nothing staged.
    Failed(
        StoreError,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
}

impl Partition {
    pub fn new(topic: &str, id: u32, dir: PathBuf, key: usize, view: View, w: WriterState) -> Self {
        let end = view.end_offset();
        Self {
            topic: topic.to_owned(),
            id,
            dir,
            key,
            view: RwLock::new(view),
            writer: Mutex::new(w),
            end_watch: watch::Sender::new(end),
            reported: Mutex::new((HashSet::new(), Vec::new())),
        }
    }

    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one append to the group: dedup, maybe roll, frame into `pending`.
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        &self,
        w: &mut WriterState,
        fs: &dyn FileSystem,
        cfg: &StoreConfig,
        header: BatchHeader,
        batch: Bytes,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Staged {
        if w.deleted {
            return Staged::Failed(StoreError::UnknownTopic(self.topic.clone()), reply);
        }
        let decision = match w.dedup.decide(&header, &batch) {
            Ok(d) => d,
            Err(e) => return Staged::Failed(e.into(), reply),
        };
        // `as_received`: `data` is the batch `header` was parsed from.
        let (data, stored, dropped, as_received) = match decision {
            Decision::Store => (batch, header.record_count, 0, true),
            Decision::Drop(n) => (Bytes::new(), 0, n, false),
            Decision::Trim {
                batch,
                kept,
                dropped,
            } => (batch, kept, dropped, false),
        };
        if dropped > 0 {
            metrics::counter!("ferry_store_dedup_dropped_records_total", "topic" => self.topic.clone())
                .increment(u64::from(dropped));
        }
        if stored == 0 {
            let outcome = AppendOutcome {
                base_offset: w.next_offset,
                stored: 0,
                deduplicated: dropped,
            };
            w.pending.waiters.push(Waiter {
                reply,
                outcome,
                _permit: permit,
            });
            return Staged::Queued;
        }
        let frame_len = (segment::FRAME_HEADER_LEN + data.len()) as u64;
        let now = ferry_core::now_ms();
        let staged_len = w.len + w.pending.bytes;
        let full = staged_len > FILE_HEADER_LEN && staged_len + frame_len > cfg.segment_bytes();
        let old = w
            .active_first_time
            .is_some_and(|t| now.saturating_sub(t) >= cfg.segment_age.get().as_millis() as i64);
        if (full || old)
            && let Err(e) = self.roll(w, fs)
        {
            return Staged::Failed(e, reply);
        }
        let time = now.max(w.last_time_ms);
        let base = w.next_offset;
        let pos = w.len + w.pending.bytes;
        // The batch as received keeps the header this append checked: its frame's checksum and
        // its origin come from that header, without reading the batch again.
        let crc = if as_received {
            ferry_core::batch::whole_crc32c(&data, &header)
        } else {
            crc32c::crc32c(&data)
        };
        let head = segment::frame_header(base, time, stored, data.len(), crc);
        w.pending.bytes += frame_len;
        if w.last_index_pos
            .is_none_or(|p| pos >= p + cfg.index_interval_bytes.get().max(1))
        {
            w.pending.index.push(IndexEntry {
                offset: base,
                pos,
                time_ms: time,
            });
            w.last_index_pos = Some(pos);
        }
        // A trimmed batch was re-encoded here: its own header carries its origin.
        let trimmed = if as_received {
            None
        } else {
            BatchHeader::parse(&data).ok()
        };
        let origin = if as_received {
            header.origin.as_ref()
        } else {
            trimmed.as_ref().and_then(|h| h.origin.as_ref())
        };
        if let Some(o) = origin {
            let prev = w.dedup.observe(o);
            w.pending.undo.push((o.key.clone(), prev));
        }
        let data_len = data.len() as u64;
        w.pending.frames.push((head, data));
        w.next_offset += u64::from(stored);
        w.last_time_ms = time;
        if w.active_first_time.is_none() {
            w.active_first_time = Some(time);
        }
        w.pending.waiters.push(Waiter {
            reply,
            outcome: AppendOutcome {
                base_offset: base,
                stored,
                deduplicated: dropped,
            },
            _permit: permit,
        });
        metrics::counter!("ferry_store_appends_total", "topic" => self.topic.clone()).increment(1);
        metrics::counter!("ferry_store_append_bytes_total", "topic" => self.topic.clone())
            .increment(data_len);
        metrics::counter!("ferry_store_append_records_total", "topic" => self.topic.clone())
            .increment(u64::from(stored));
        Staged::Queued
    }

    /// Writes the staged frames to the active file (no fsync).
    pub fn write_pending(&self, w: &mut WriterState) -> Result<(), StoreError> {
        if w.pending.frames.is_empty() || w.pending.written || w.deleted {
            return Ok(());
        }
        let WriterState {
            active,
            pending,
            active_path,
            ..
        } = w;
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(pending.frames.len() * 2);
        for (head, batch) in &pending.frames {
            bufs.push(head);
            bufs.push(batch);
        }
        active.write_all_vectored(&bufs).at(active_path)?;
        pending.written = true;
        w.len += w.pending.bytes;
        Ok(())
    }

    /// fsyncs the active file if it holds unsynced bytes.
    pub fn sync(w: &mut WriterState) -> Result<(), StoreError> {
        if w.synced_len == w.len || w.deleted {
            return Ok(());
        }
        let started = std::time::Instant::now();
        w.active.sync_data().at(&w.active_path)?;
        metrics::counter!("ferry_store_fsyncs_total").increment(1);
        metrics::histogram!("ferry_store_fsync_seconds").record(started.elapsed().as_secs_f64());
        w.synced_len = w.len;
        Ok(())
    }

    /// Makes the group's frames visible and answers its waiters.
    pub fn publish(&self, w: &mut WriterState) {
        let p = std::mem::take(&mut w.pending);
        {
            let mut v = self.view_mut();
            let last_time = if p.frames.is_empty() {
                None
            } else {
                Some(w.last_time_ms)
            };
            if let Some(seg) = v.segments.last_mut() {
                seg.size = w.len;
                seg.next_offset = w.next_offset;
                seg.index.entries.extend(p.index);
                if last_time.is_some() {
                    seg.last_time_ms = last_time;
                }
            }
            if last_time.is_some() {
                v.last_append_ms = last_time;
            }
        }
        self.end_watch.send_replace(w.next_offset);
        for waiter in p.waiters {
            let _ = waiter.reply.send(Ok(waiter.outcome));
        }
        self.reset_pending(w);
    }

    fn reset_pending(&self, w: &mut WriterState) {
        w.pending.frames.clear();
        w.pending.bytes = 0;
        w.pending.start_offset = w.next_offset;
        w.pending.start_len = w.len;
        w.pending.start_last_index_pos = w.last_index_pos;
        w.pending.start_first_time = w.active_first_time;
        w.pending.written = false;
    }

    /// Undoes the group after a failed write or fsync: cuts the file back, restores offsets and
    /// dedup state, and fails every waiter with `err`. Returns false if the file could not be
    /// cut back (the partition must then stop accepting appends).
    pub fn rollback(&self, w: &mut WriterState, err: &StoreError) -> bool {
        let p = std::mem::take(&mut w.pending);
        let mut clean = true;
        if w.deleted {
            // Nothing to cut back: the files are gone with the topic.
        } else if p.written || w.len != p.start_len {
            clean = w.active.truncate(p.start_len).is_ok();
            w.len = p.start_len;
            w.synced_len = w.synced_len.min(p.start_len);
        } else if !p.frames.is_empty() {
            // A failed write may have left part of the buffer in the file.
            clean = w.active.truncate(p.start_len).is_ok();
        }
        w.next_offset = p.start_offset;
        w.last_index_pos = p.start_last_index_pos;
        w.active_first_time = p.start_first_time;
        for (key, prev) in p.undo.into_iter().rev() {
            w.dedup.undo(&key, prev);
        }
        metrics::counter!("ferry_store_append_errors_total").increment(p.waiters.len() as u64);
        for waiter in p.waiters {
            let _ = waiter.reply.send(Err(copy_error(err)));
        }
        self.reset_pending(w);
        clean
    }

    /// Seals the active segment and starts a new one at the next offset.
    ///
    /// Order matters for recovery: the old segment is fsynced (and what was pending in it is
    /// published) before its index files and the dedup snapshot are written, and all of that
    /// before the new segment file exists; so a segment that is not the newest is always whole.
    pub fn roll(&self, w: &mut WriterState, fs: &dyn FileSystem) -> Result<(), StoreError> {
        if let Err(e) = self.write_pending(w).and_then(|()| Self::sync(w)) {
            self.rollback(w, &e);
            return Err(e);
        }
        self.publish(w);
        let base = w.next_offset;
        let old_base = w.active_base;
        let index = {
            let v = self.view();
            v.segments
                .last()
                .map(|s| s.index.clone())
                .unwrap_or_default()
        };
        let idx_path = file_path(&self.dir, old_base, INDEX_EXT);
        write_file_atomic(fs, &idx_path, &index.encode_offsets(old_base)).at(&idx_path)?;
        let tix_path = file_path(&self.dir, old_base, TIME_INDEX_EXT);
        write_file_atomic(fs, &tix_path, &index.encode_times(old_base)).at(&tix_path)?;
        let snap_path = file_path(&self.dir, base, SNAPSHOT_EXT);
        write_file_atomic(fs, &snap_path, &w.dedup.encode_snapshot(base)).at(&snap_path)?;
        self.prune_snapshots(fs, base);

        let path = file_path(&self.dir, base, LOG_EXT);
        let mut file = fs.create(&path).at(&path)?;
        file.write_all(&segment::file_header(SEGMENT_MAGIC, base))
            .and_then(|()| file.sync_data())
            .at(&path)?;
        drop(file);
        fs.sync_dir(&self.dir).at(&self.dir)?;
        let active = fs.open_append(&path, false).at(&path)?;
        let reader = fs.open_read(&path).at(&path)?;
        w.active = active;
        w.active_base = base;
        w.active_path = path.clone();
        w.active_first_time = None;
        w.len = FILE_HEADER_LEN;
        w.synced_len = FILE_HEADER_LEN;
        w.last_index_pos = None;
        self.reset_pending(w);
        self.view_mut().segments.push(SegView {
            base,
            path,
            file: reader,
            size: FILE_HEADER_LEN,
            next_offset: base,
            index: SparseIndex::default(),
            last_time_ms: None,
        });
        metrics::counter!("ferry_store_segment_rolls_total").increment(1);
        tracing::debug!(topic = %self.topic, partition = self.id, base, "rolled segment");
        Ok(())
    }

    /// Keeps the two newest dedup snapshots.
    fn prune_snapshots(&self, fs: &dyn FileSystem, newest: u64) {
        let Ok(entries) = fs.list_dir(&self.dir) else {
            return;
        };
        let mut snaps: Vec<u64> = entries
            .iter()
            .filter_map(|p| segment::parse_base(p, SNAPSHOT_EXT))
            .filter(|b| *b <= newest)
            .collect();
        snaps.sort_unstable();
        let keep_from = snaps.len().saturating_sub(2);
        for b in &snaps[..keep_from] {
            let _ = fs.remove_file(&file_path(&self.dir, *b, SNAPSHOT_EXT));
        }
    }

    /// Reads whole stored batches from `offset` on, up to `max_bytes` (at least one).
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        slack: u64,
    ) -> Result<ReadBatches, StoreError> {
        let mut attempt = 0;
        loop {
            match self.read_once(offset, max_bytes, slack) {
                // A segment retention removed after this read planned it, whose handle the
                // cache had closed (see `store::handles`): plan again from the view, which
                // no longer has it (the answer is then 416 or the data after it).
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 2 =>
                {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn read_once(
        &self,
        offset: u64,
        max_bytes: usize,
        slack: u64,
    ) -> Result<ReadBatches, StoreError> {
        struct Plan {
            file: Arc<dyn ReadableFile>,
            path: PathBuf,
            from: u64,
            to: u64,
        }
        let (plans, log_start, end_offset) = {
            let v = self.view();
            let (log_start, end_offset) = (v.log_start(), v.end_offset());
            if offset < log_start || offset > end_offset {
                return Err(StoreError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    requested: offset,
                    log_start,
                    end_offset,
                });
            }
            if offset == end_offset {
                return Ok(ReadBatches {
                    batches: Vec::new(),
                    log_start,
                    end_offset,
                });
            }
            let first = v
                .segments
                .partition_point(|s| s.base <= offset)
                .saturating_sub(1);
            let plans: Vec<Plan> = v.segments[first..]
                .iter()
                .enumerate()
                .map(|(i, s)| Plan {
                    file: s.file.clone(),
                    path: s.path.clone(),
                    from: if i == 0 {
                        s.index.lookup(offset).map_or(FILE_HEADER_LEN, |e| e.pos)
                    } else {
                        FILE_HEADER_LEN
                    },
                    to: s.size,
                })
                .collect();
            (plans, log_start, end_offset)
        };
        let mut frames = Vec::new();
        let mut corrupt = Vec::new();
        let mut taken = 0usize;
        for (i, plan) in plans.iter().enumerate() {
            if taken > 0 && taken >= max_bytes {
                break;
            }
            let before = frames.len();
            let budget = if taken == 0 {
                max_bytes
            } else {
                max_bytes - taken
            };
            let (got, full) = segment::read_frames(
                &*plan.file,
                &plan.path,
                plan.from,
                plan.to,
                offset,
                budget,
                slack,
                &mut frames,
                &mut corrupt,
            )
            .at(&plan.path)?;
            // An index entry that points past the wanted batch (a damaged index): rescan the
            // segment from its start.
            let overshot = frames
                .get(before)
                .is_some_and(|(m, _): &(FrameMeta, Bytes)| m.header.base_offset > offset);
            if i == 0 && plan.from != FILE_HEADER_LEN && overshot {
                frames.truncate(before);
                let (got, full) = segment::read_frames(
                    &*plan.file,
                    &plan.path,
                    FILE_HEADER_LEN,
                    plan.to,
                    offset,
                    budget,
                    slack,
                    &mut frames,
                    &mut corrupt,
                )
                .at(&plan.path)?;
                taken += got;
                if full {
                    break;
                }
                continue;
            }
            taken += got;
            if full {
                break;
            }
        }
        self.report_corrupt(&corrupt);
        let batches = frames
            .into_iter()
            .map(|(m, bytes)| StoredBatch {
                base_offset: m.header.base_offset,
                record_count: m.header.record_count,
                append_time_ms: m.header.append_time_ms,
                data: bytes.slice(segment::FRAME_HEADER_LEN..),
            })
            .collect();
        Ok(ReadBatches {
            batches,
            log_start,
            end_offset,
        })
    }

    /// Logs and counts corruption found while serving a read, once per range.
    pub fn report_corrupt(&self, corrupt: &[CorruptRange]) {
        if corrupt.is_empty() {
            return;
        }
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        for c in corrupt {
            if seen.0.insert((c.path.clone(), c.position)) {
                seen.1.push(c.clone());
                metrics::counter!("ferry_store_corrupt_batches_total").increment(1);
                tracing::error!(
                    topic = %self.topic, partition = self.id, path = %c.path.display(),
                    position = c.position, length = c.length, reason = %c.reason,
                    "corrupt batch skipped; the partition's other batches stay readable"
                );
            }
        }
    }

    /// Every corrupt range found so far (on open and by reads).
    pub fn corrupt_ranges(&self) -> Vec<CorruptRange> {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// First offset whose batch was appended at or after `ts` (the end offset if none).
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<u64, StoreError> {
        let (file, path, from, to, fallback) = {
            let v = self.view();
            let Some(seg) = v
                .segments
                .iter()
                .find(|s| s.last_time_ms.is_some_and(|t| t >= ts))
            else {
                return Ok(v.end_offset());
            };
            let from = seg.index.lookup_time(ts).map_or(FILE_HEADER_LEN, |e| e.pos);
            (
                seg.file.clone(),
                seg.path.clone(),
                from,
                seg.size,
                seg.next_offset,
            )
        };
        let mut pos = from;
        while pos < to {
            let Some(h) = segment::header_at(&*file, pos).at(&path)? else {
                break;
            };
            if h.frame_len() > to - pos || h.len < ferry_core::batch::FIXED_HEADER_LEN as u32 {
                break;
            }
            if h.append_time_ms >= ts {
                return Ok(h.base_offset);
            }
            pos += h.frame_len();
        }
        Ok(fallback)
    }
}

/// Copies an error for each waiter of a failed group.
pub(crate) fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::Corruption {
            path,
            position,
            reason,
        } => StoreError::Corruption {
            path: path.clone(),
            position: *position,
            reason: reason.clone(),
        },
        _ => StoreError::Closed,
    }
}

/// Paths of a segment's files, for deletion.
pub(crate) fn segment_files(dir: &Path, base: u64) -> [PathBuf; 3] {
    [
        file_path(dir, base, LOG_EXT),
        file_path(dir, base, INDEX_EXT),
        file_path(dir, base, TIME_INDEX_EXT),
    ]
}
