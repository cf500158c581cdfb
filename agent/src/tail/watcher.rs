//! One tailed file: a plain state machine, no task, no thread.
//!
//! A `FileWatcher` holds the open handle of one file (one dev+inode) and knows its identity,
//! where it reads next, and the incomplete line it waits on. The [`super::Tailer`] decides when
//! to call it: on a file event, after a rescan, or again next turn when its read budget ran out.
//!
//! States:
//! - **live**: the path it was found at still names it; read as data arrives.
//! - **orphaned**: the path now names another file or nothing (renamed away by rotation, or
//!   deleted). The handle stays open and is read to its end, then kept a little longer
//!   ([`ROTATE_WAIT`]) for a writer that still holds the old file, then released. Nothing
//!   readable is abandoned.
//!
//! Truncation (copytruncate, `> file`): the size drops below the read position, or the file's
//! first bytes no longer match its fingerprint (checked whenever its size or modification time
//! moved, so a file refilled up to or past the read position between two looks is caught too).
//! Everything read
//! so far is handed out, then reading restarts at 0 with `generation + 1`, so the new lines get
//! a new origin and the collector's dedup by (origin, offset) does not take them for replays.
//! Bytes written before the truncation that were never read cannot be read any more: they are
//! counted in `unread_bytes`.
//!
//! Invariant: `line_pos <= read_pos`, and `read_pos - line_pos` is the incomplete line held by
//! the splitter. Every byte in `[start, line_pos)` was handed out in exactly one line.

use super::fingerprint::{Fingerprint, TAIL_WINDOW, TailPrint, head_of};
use crate::checkpoint::PendingCopy;
use crate::lines::{Line, LineSplitter};
use ferry_core::record::FileId;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an orphaned file is kept open after it was last found to grow.
pub const ROTATE_WAIT: Duration = Duration::from_secs(5);

/// Where a newly opened file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning {
        generation: u32,
    },
    End,
    /// Resume from a checkpoint whose fingerprint was verified.
    Resume {
        fingerprint: Option<Fingerprint>,
        generation: u32,
        offset: u64,
    },
}

/// Where [`FileWatcher::reopen`] found the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopened {
    /// At its path.
    Same,
    /// Renamed while closed: found at this path, in the same directory.
    Moved(PathBuf),
    /// Neither: deleted, or moved out of its directory, while its handle was given back.
    Gone,
}

/// What one call to [`FileWatcher::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Read `bytes` and stopped at the budget: there may be more.
    More { bytes: u64 },
    /// Read `bytes` and reached the end of the file.
    Eof { bytes: u64 },
    /// The file is now shorter than the read position, or its first bytes changed: call
    /// [`FileWatcher::restart_after_truncation`] after handing out what is pending.
    Truncated,
    /// The file begins with the magic bytes of a compressed format (a rotated copy compressed
    /// by logrotate, whatever its name): not text; nothing was read.
    Compressed(Compression),
}

/// A compressed format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Xz => "xz",
        }
    }
}

/// Bytes [`sniff`] needs to decide.
pub const SNIFF_BYTES: usize = 10;

/// What the first bytes of a file say: `Some(Ok(format))` compressed, `Some(Err(()))` text (or
/// anything else), `None` too few bytes yet to tell (they begin like a magic number).
pub fn sniff(head: &[u8]) -> Option<Result<Compression, ()>> {
    // bzip2: "BZh", the block size '1'..'9', then the block magic (pi): text may well start
    // with "BZh", so all ten bytes must match.
    let bz2 = |b: &[u8]| {
        b.iter().enumerate().all(|(i, &c)| match i {
            0 => c == b'B',
            1 => c == b'Z',
            2 => c == b'h',
            3 => (b'1'..=b'9').contains(&c),
            _ => c == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59][i - 4],
        })
    };
    let magics: [(&[u8], Compression); 3] = [
        (&[0x1f, 0x8b, 0x08], Compression::Gzip),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Compression::Xz),
    ];
    let mut undecided = false;
    for (magic, kind) in magics {
        let n = head.len().min(magic.len());
        if head[..n] == magic[..n] {
            if n == magic.len() {
                return Some(Ok(kind));
            }
            undecided = true;
        }
    }
    let n = head.len().min(SNIFF_BYTES);
    if bz2(&head[..n]) {
        if n == SNIFF_BYTES {
            return Some(Ok(Compression::Bzip2));
        }
        undecided = true;
    }
    if undecided { None } else { Some(Err(())) }
}

#[derive(Debug)]
pub struct FileWatcher {
    path: PathBuf,
    /// The path as text, shared with every batch's checkpoint info.
    path_str: Arc<str>,
    /// The open handle; `None` while the file gave it back (idle, descriptors scarce): it is
    /// reopened by path, and its identity checked again, before the next read.
    file: Option<File>,
    dev: u64,
    inode: u64,
    /// Fixed once the file has a whole first line; see [`super::fingerprint`].
    fingerprint: Option<Fingerprint>,
    /// Hash of the first line's content alone (what a copy of this file shares with it).
    head: Option<u64>,
    /// Birth time (0 where not recorded): with the handle given back, the inode may be freed
    /// and reused; a file found on it again must also have been born at the same time.
    birth: u64,
    /// Hash of the last bytes before `line_pos`, as of the last read that reached the end.
    tail: Option<TailPrint>,
    /// The identity lines ship under instead of this file's own: set for a copytruncate copy
    /// read on under its original's origin. Cleared by a truncation of the copy itself.
    origin: Option<FileId>,
    /// This file's previous content (before its last truncation) while its copy is waited
    /// for: kept in the checkpoint with the file, so a restarted agent still waits for it.
    pending: Vec<PendingCopy>,
    /// The origin's fingerprint field while there is no fingerprint ([`super::fingerprint::unfixed_id`]).
    unfixed_id: u64,
    /// While there is no fingerprint yet (first line incomplete): a checksum of the bytes read,
    /// to notice a truncation that was rewritten past the read position.
    probe: Option<Fingerprint>,
    /// The probe's bytes hashed alone (see [`Fingerprint::probe`]).
    probe_head: Option<u64>,
    generation: u32,
    /// Next byte to read.
    read_pos: u64,
    /// First byte not yet handed out in a line.
    line_pos: u64,
    splitter: LineSplitter,
    /// Size at the last stat.
    size: u64,
    /// Modification time at the last read: a file rewritten to the very size it had (truncated,
    /// then refilled up to the read position between two looks) changes only this.
    mtime: Option<std::time::SystemTime>,
    /// Largest size any stat saw since the last truncation (to count what a truncation lost).
    seen_size: u64,
    /// When the path stopped naming this file.
    orphaned_at: Option<Instant>,
    /// When bytes were last read (the partial-line flush timeout and rotate wait count from it).
    last_data_at: Instant,
    at_eof: bool,
    line_flush_timeout: Duration,
    /// Bytes that were in the file but could not be read (lost to a truncation).
    unread_bytes: u64,
    /// A stat saw the size change: verify the fingerprint at the next read.
    check_identity: bool,
    /// The first bytes still have to be checked for a compressed format (a file read from its
    /// beginning, until it holds enough bytes to tell).
    sniff: bool,
    /// The next read reads nothing: the tailer looked at the file before it was classified
    /// and found it empty; bytes that arrived since are the tailer's to look at first.
    hold: bool,
    /// A stat of its path saw it shorter than the read position while it was live.
    shrank_live: bool,
    /// Its last link is gone (deleted; the open handle is all that is left).
    deleted: bool,
    /// The pending incomplete line's flush timeout was due while the file held unread bytes
    /// (reading paused): not before this time.
    partial_not_before: Option<Instant>,
    /// The last thing handed out was an incomplete line shipped as is (flush timeout), or
    /// reading started in the middle of a line: a newline that comes next only ends a line that
    /// is already out (or was skipped), and is not an empty line of its own.
    mid_line: bool,
}

impl FileWatcher {
    /// Opens `path` (already stat'ed as `dev`/`inode` by the caller, who passes the metadata).
    pub fn open(
        path: &Path,
        start: StartAt,
        max_line_bytes: usize,
        line_flush_timeout: Duration,
        now: Instant,
    ) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        // The birth time came with the size (one `statx`); it never changes, so it is kept.
        let birth = super::fingerprint::birth_of(&meta);
        let (fingerprint, head, generation, pos) = match start {
            StartAt::Beginning { generation } => (None, None, generation, 0),
            StartAt::End => match Fingerprint::take_with_head(&file, size, birth)? {
                Some((fp, head)) => (Some(fp), Some(head), 0, size),
                None => (None, None, 0, size),
            },
            StartAt::Resume {
                fingerprint,
                generation,
                offset,
            } => {
                let head = match fingerprint {
                    Some(fp) => head_of(&file, fp.len)?,
                    None => None,
                };
                (fingerprint, head, generation, offset)
            }
        };
        let mid_line = pos > 0 && !follows_newline(&file, pos)?;
        let unfixed_id = super::fingerprint::unfixed_id(birth);
        let mut w = Self {
            path: path.to_owned(),
            path_str: Arc::from(path.to_string_lossy().as_ref()),
            birth,
            file: Some(file),
            head,
            tail: None,
            origin: None,
            pending: Vec::new(),
            dev: meta.dev(),
            inode: meta.ino(),
            fingerprint,
            unfixed_id,
            probe: None,
            probe_head: None,
            generation,
            read_pos: pos,
            line_pos: pos,
            splitter: LineSplitter::new(max_line_bytes),
            size,
            mtime: meta.modified().ok(),
            seen_size: size,
            orphaned_at: None,
            last_data_at: now,
            at_eof: false,
            line_flush_timeout,
            unread_bytes: 0,
            check_identity: false,
            hold: false,
            sniff: pos == 0,
            shrank_live: false,
            deleted: false,
            partial_not_before: None,
            mid_line,
        };
        // A resumed file whose checkpoint has no fingerprint (its first line was incomplete
        // then) fixes it now, as its first read would: a truncation seen before that read
        // still knows the first line its copy must begin with.
        if matches!(start, StartAt::Beginning { .. })
            || matches!(start, StartAt::Resume { fingerprint: None, offset, .. } if offset > 0)
        {
            w.fix_identity(size)?;
        }
        Ok(w)
    }

    /// (dev, inode): the key the tailer tracks files by.
    pub fn key(&self) -> (u64, u64) {
        (self.dev, self.inode)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> &Arc<str> {
        &self.path_str
    }

    /// The file was found under another name (renamed, e.g. `app.log` → `app.log.1` with a
    /// glob matching both): same file, same position.
    pub fn set_path(&mut self, path: &Path) {
        self.path = path.to_owned();
        self.path_str = Arc::from(path.to_string_lossy().as_ref());
        self.orphaned_at = None;
    }

    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// Without a whole first line: what the file began with when first looked at, with the
    /// same bytes hashed alone (see [`Fingerprint::probe`]).
    pub fn probe(&self) -> Option<(Fingerprint, u64)> {
        match (self.fingerprint, self.probe, self.probe_head) {
            (None, Some(p), Some(h)) => Some((p, h)),
            _ => None,
        }
    }

    pub fn tail(&self) -> Option<TailPrint> {
        self.tail
    }

    /// A print of the bytes before `offset`, if the handle is open and the file holds them.
    pub fn tail_at(&self, offset: u64) -> Option<TailPrint> {
        let file = self.file.as_ref()?;
        tail_print(file, self.birth, offset, self.fingerprint.or(self.probe))
            .ok()
            .flatten()
    }

    /// The tail print a checkpoint kept (a restarted agent recognises a copy by it until it
    /// takes its own).
    pub fn set_tail(&mut self, tail: Option<TailPrint>) {
        self.tail = tail;
    }

    /// Birth time in ns (0 where the file system keeps none).
    pub fn birth(&self) -> u64 {
        self.birth
    }

    pub fn origin(&self) -> Option<FileId> {
        self.origin
    }

    /// Ship this file's lines under `origin` (a copy read on under its original's identity).
    pub fn set_origin(&mut self, origin: Option<FileId>) {
        self.origin = origin;
    }

    pub fn pending(&self) -> &[PendingCopy] {
        &self.pending
    }

    /// Remember a previous content whose copy is waited for.
    pub fn add_pending(&mut self, print: PendingCopy) {
        if !self.pending.contains(&print) {
            self.pending.push(print);
        }
    }

    /// Forget a previous content's print (its copy was found, or its wait is over).
    pub fn remove_pending(&mut self, print: &PendingCopy) {
        self.pending.retain(|p| p != print);
    }

    /// The open handle, if any.
    pub fn handle(&self) -> Option<&File> {
        self.file.as_ref()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The identity batches of this file carry.
    pub fn file_id(&self) -> FileId {
        if let Some(o) = self.origin {
            return o;
        }
        self.own_id()
    }

    /// The file's own identity (whatever its lines ship under).
    pub fn own_id(&self) -> FileId {
        FileId {
            dev: self.dev,
            inode: self.inode,
            fingerprint: self.fingerprint.map_or(self.unfixed_id, |f| f.checksum),
            generation: self.generation,
        }
    }

    /// First byte not yet handed out as a line.
    pub fn line_pos(&self) -> u64 {
        self.line_pos
    }

    /// Bytes read and held as an incomplete line.
    pub fn pending_bytes(&self) -> u64 {
        self.read_pos - self.line_pos
    }

    /// Bytes of the incomplete line held in memory (the agent's buffer counts these).
    pub fn held_bytes(&self) -> u64 {
        self.splitter.held_bytes()
    }

    /// Bytes known to be in the file and not yet handed out (for the lag metric).
    pub fn lag_bytes(&self) -> u64 {
        self.size.saturating_sub(self.line_pos)
    }

    pub fn unread_bytes(&self) -> u64 {
        self.unread_bytes
    }

    /// Its last link is gone (deleted), as far as the watcher knows.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Found gone while its handle was given back (deleted, or moved out of its directory).
    pub fn mark_deleted(&mut self) {
        self.deleted = true;
    }

    pub fn is_orphaned(&self) -> bool {
        self.orphaned_at.is_some()
    }

    pub fn at_eof(&self) -> bool {
        self.at_eof
    }

    /// The path no longer names this file.
    pub fn orphan(&mut self, now: Instant) {
        if self.orphaned_at.is_none() {
            self.orphaned_at = Some(now);
        }
    }

    /// Whether a stat of the path (size and modification time, as hints) says there may be new
    /// data, or a truncation to look at. The recorded size and time are left to `read`, which
    /// compares against them.
    pub fn note_size(&mut self, size: u64, mtime: Option<std::time::SystemTime>) -> bool {
        let changed = size != self.size || (mtime.is_some() && mtime != self.mtime);
        if size < self.read_pos && self.orphaned_at.is_none() {
            self.shrank_live = true;
        }
        // Seen shrinking or moving: the next read verifies the content is still the same
        // even if the file has regrown to the same size by then.
        self.check_identity |= changed;
        // Only bytes of the content being read count as seen: a file truncated and refilled
        // since the last look (its first bytes changed) is a truncation for the next read to
        // handle, and its new size says nothing about what the old content held.
        let same = match (self.file.as_ref(), self.fingerprint.or(self.probe)) {
            (Some(f), Some(fp)) if changed => fp.matches_as(f, self.birth).unwrap_or(true),
            _ => true,
        };
        if same {
            self.seen_size = self.seen_size.max(size);
        }
        if changed
            && same
            && let Err(e) = self.fix_identity(size)
        {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot read the first bytes");
        }
        changed || size > self.read_pos
    }

    /// Fixes the fingerprint (and head) now if the file has a whole first line (see
    /// [`Self::fix_identity`]).
    pub fn identify_now(&mut self) {
        let size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        if let Some(size) = size
            && let Err(e) = self.fix_identity(size)
        {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot read the first bytes");
        }
    }

    /// Fixes the fingerprint (and head) as soon as the file has a whole first line, or else
    /// takes a probe of what it begins with — also before anything is read: bytes a stat saw
    /// and a truncation then destroyed unread are a truncation to notice and count (and to
    /// look for a copy of), even if the file is refilled past that size before the next read.
    fn fix_identity(&mut self, size: u64) -> io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        identify(
            file,
            self.birth,
            size,
            None,
            &mut self.fingerprint,
            &mut self.head,
            (&mut self.probe, &mut self.probe_head),
        )
    }

    /// An orphaned file read to its end and quiet for [`ROTATE_WAIT`] can be closed.
    pub fn is_done(&self, now: Instant) -> bool {
        match self.orphaned_at {
            Some(at) => {
                self.at_eof
                    && now.saturating_duration_since(at.max(self.last_data_at)) >= ROTATE_WAIT
            }
            None => false,
        }
    }

    /// Reads up to `budget` bytes using `buf`, handing each complete line to
    /// `emit(file_id, offset, line)`.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        budget: u64,
        now: Instant,
        emit: &mut impl FnMut(FileId, u64, Line<'_>),
    ) -> io::Result<ReadOutcome> {
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other(
                "file handle was given back; reopen it first",
            ));
        };
        #[cfg(test)]
        hooks::before_read(&self.path, self.read_pos);
        let meta = file.metadata()?;
        let size = meta.len();
        if meta.nlink() == 0 {
            self.deleted = true;
            self.orphaned_at.get_or_insert(now);
        }
        if size < self.read_pos {
            return Ok(ReadOutcome::Truncated);
        }
        // The size or the modification time moved since the last look: make sure the content is
        // still the one we started on (truncated and rewritten up to or past our position
        // between two looks). One pread of at most 1 KiB, only when the file changed.
        let mtime = meta.modified().ok();
        let touched = mtime != std::mem::replace(&mut self.mtime, mtime);
        if (size != self.size || touched || std::mem::take(&mut self.check_identity))
            && let Some(fp) = self.fingerprint.or(self.probe)
            && !fp.matches_as(file, self.birth)?
        {
            return Ok(ReadOutcome::Truncated);
        }
        self.size = size;
        self.seen_size = self.seen_size.max(size);
        if std::mem::take(&mut self.hold) {
            self.at_eof = size == 0;
            return Ok(if size == 0 {
                ReadOutcome::Eof { bytes: 0 }
            } else {
                ReadOutcome::More { bytes: 0 }
            });
        }
        if self.sniff {
            let mut head = [0u8; SNIFF_BYTES];
            let got = super::fingerprint::read_full_at(file, &mut head)?;
            match sniff(&head[..got]) {
                Some(Ok(kind)) => return Ok(ReadOutcome::Compressed(kind)),
                Some(Err(())) => self.sniff = false,
                // Begins like a magic number: wait for the bytes that tell.
                None => {
                    self.at_eof = true;
                    return Ok(ReadOutcome::Eof { bytes: 0 });
                }
            }
        }
        let mut total = 0u64;
        let mut part = None;
        while total < budget {
            let want = (budget - total).min(buf.len() as u64) as usize;
            #[cfg(test)]
            hooks::before_read(&self.path, self.read_pos);
            let n = match file.read_at(&mut buf[..want], self.read_pos) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.at_eof = true;
                // Keep the tail print current: a copy of this file, should it be truncated,
                // is recognised by it (one pread of at most 4 KiB, only when lines moved).
                // The file may have been truncated since the last bytes were read (nothing
                // more to read, then): no print of what was read can be taken any more, and
                // the last one stays — the truncation the next read notices looks for its
                // copy by it.
                if self.line_pos > 0
                    && self
                        .tail
                        .is_none_or(|t| t.offset != self.line_pos || t.is_part())
                    && let Some(tp) = tail_print(
                        file,
                        self.birth,
                        self.line_pos,
                        self.fingerprint.or(self.probe),
                    )?
                {
                    self.tail = Some(tp);
                }
                if self.tail.is_none() {
                    self.tail = part;
                }
                return Ok(ReadOutcome::Eof { bytes: total });
            }
            self.at_eof = false;
            self.last_data_at = now;
            if self.fingerprint.is_none() {
                let size = self.size.max(self.read_pos + n as u64);
                identify(
                    file,
                    self.birth,
                    size,
                    (self.read_pos == 0).then_some(&buf[..n]),
                    &mut self.fingerprint,
                    &mut self.head,
                    (&mut self.probe, &mut self.probe_head),
                )?;
            }
            let id = self.file_id();
            let line_pos = &mut self.line_pos;
            let mid_line = &mut self.mid_line;
            self.splitter.feed(&buf[..n], &mut |line| {
                let at = *line_pos;
                *line_pos += line.span;
                if std::mem::take(mid_line) && line.span == 1 && line.bytes.is_empty() {
                    return;
                }
                emit(id, at, line);
            });
            // The first print of this content, from the bytes just read when they hold its
            // window: a second read to take it could find the file truncated already (copied
            // and truncated between the two reads), and then no print would be taken at all —
            // the copy would not be recognised and would be read again from its first byte.
            // Not all of the window in this read (the content's first lines were read by
            // earlier ones): the part of it this read holds is kept, a print of last resort
            // should the file be truncated before a whole one can be taken from it.
            if self.tail.is_none() && self.line_pos > self.read_pos {
                let len = self.line_pos.min(TAIL_WINDOW);
                let start = self.line_pos - len;
                let end = (self.line_pos - self.read_pos) as usize;
                if start >= self.read_pos && end <= n {
                    let from = (start - self.read_pos) as usize;
                    self.tail = Some(TailPrint::of(&buf[from..end], self.line_pos));
                } else if end <= n {
                    part = Some(TailPrint::of_part(&buf[..end], self.line_pos));
                }
            }
            self.read_pos += n as u64;
            self.size = self.size.max(self.read_pos);
            total += n as u64;
        }
        // Read on without reaching the end (a file far behind, or written faster than it is
        // read): a tail print all the same, or a truncation now could not find its copy.
        if self.line_pos > 0 && self.tail.is_none_or(|t| t.is_part()) {
            self.tail = tail_print(
                file,
                self.birth,
                self.line_pos,
                self.fingerprint.or(self.probe),
            )?
            .or(self.tail)
            .or(part);
        }
        Ok(ReadOutcome::More { bytes: total })
    }

    /// When the pending incomplete line is due to be shipped as is.
    pub fn partial_deadline(&self) -> Option<Instant> {
        (self.splitter.pending_bytes() > 0).then(|| {
            let due = self.last_data_at + self.line_flush_timeout;
            self.partial_not_before.map_or(due, |t| t.max(due))
        })
    }

    /// Whether the file may hold bytes this watcher has not read: the last read stopped before
    /// the end (budget, or the agent's buffer was full), or the file is longer now. One fstat.
    pub fn has_unread(&self) -> bool {
        match &self.file {
            Some(f) => !self.at_eof || f.metadata().is_ok_and(|m| m.len() > self.read_pos),
            // Closed only at its end; a stat of its path since then may have seen it grow.
            None => !self.at_eof || self.seen_size > self.read_pos,
        }
    }

    /// Nothing is held and nothing is waiting in the file: a pending multiline record can
    /// only be continued by lines not written yet.
    pub fn is_idle(&self) -> bool {
        self.splitter.pending_bytes() == 0 && !self.has_unread()
    }

    /// Hands out the pending incomplete line if its flush timeout passed, or at once if `force`.
    ///
    /// The timeout means "the writer left the line unfinished": it does not apply while the
    /// file holds bytes not read yet (reading paused by a full buffer, say during a collector
    /// outage), which may well be the rest of the line. The flush then waits a timeout more.
    pub fn flush_partial(
        &mut self,
        now: Instant,
        force: bool,
        emit: &mut impl FnMut(FileId, u64, Line<'_>),
    ) -> bool {
        let due = force || self.partial_deadline().is_some_and(|d| now >= d);
        if !due {
            return false;
        }
        if !force && self.has_unread() {
            self.partial_not_before = Some(now + self.line_flush_timeout);
            return false;
        }
        self.partial_not_before = None;
        let id = self.file_id();
        let line_pos = &mut self.line_pos;
        // The print of what is handed out, from the bytes in hand: flushed because the file
        // was truncated, it cannot be taken from the file, and a checkpoint at the line's end
        // without one could not be told from another content's after a restart (its copy not
        // looked for, and read again as a file of its own: the copytruncate fuzz with kills,
        // seed 35).
        let mut print = None;
        let flushed = self.splitter.flush(&mut |line| {
            let at = *line_pos;
            *line_pos += line.span;
            let n = line.bytes.len() as u64;
            if !line.truncated && n == line.span && n > 0 {
                let end = at + n;
                print = Some(if at == 0 && n <= TAIL_WINDOW {
                    TailPrint::of(line.bytes, end)
                } else {
                    let keep = n.min(TAIL_WINDOW - 1) as usize;
                    TailPrint::of_part(&line.bytes[line.bytes.len() - keep..], end)
                });
            }
            emit(id, at, line);
        });
        if print.is_some() {
            self.tail = print;
        }
        self.mid_line |= flushed;
        flushed
    }

    /// Whether the watcher holds an open handle.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// The next read reads no byte (and tells whether any arrived): the file was found empty by
    /// a look that must see its first bytes before they are read.
    pub fn hold(&mut self) {
        self.hold = true;
    }

    /// Whether the handle may be given back now without abandoning anything: the file is live
    /// (a rotated-away file keeps its handle until it is read and released, since its path no
    /// longer leads to it) and was read to its end.
    pub fn can_close(&self) -> bool {
        self.file.is_some() && self.orphaned_at.is_none() && !self.has_unread()
    }

    /// Gives the handle back. The position, identity and any held incomplete line stay.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// When bytes were last read from the file.
    pub fn last_data_at(&self) -> Instant {
        self.last_data_at
    }

    /// Opens the file again after [`close`](Self::close): by its path if that still names the
    /// same dev+inode, else by a look through the path's directory for it (renamed while
    /// closed, e.g. `app.log` → `app.log.1` by a rotation, even to a name no glob matches).
    /// The next read verifies the content with the fingerprint (copytruncate while closed).
    pub fn reopen(&mut self) -> io::Result<Reopened> {
        if self.file.is_some() {
            return Ok(Reopened::Same);
        }
        if let Some(f) = self.open_if_same(&self.path.clone())? {
            self.file = Some(f);
            self.check_identity = true;
            return Ok(Reopened::Same);
        }
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reopened::Gone),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() && (meta.dev(), meta.ino()) == (self.dev, self.inode) {
                let path = entry.path();
                if let Some(f) = self.open_if_same(&path)? {
                    self.file = Some(f);
                    self.check_identity = true;
                    self.path_str = Arc::from(path.to_string_lossy().as_ref());
                    self.path = path.clone();
                    return Ok(Reopened::Moved(path));
                }
            }
        }
        Ok(Reopened::Gone)
    }

    /// `path` opened, if it still names this file's dev+inode.
    fn open_if_same(&self, path: &Path) -> io::Result<Option<File>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let same = (meta.dev(), meta.ino()) == (self.dev, self.inode)
            && super::fingerprint::birth_ns(&file) == self.birth;
        Ok(same.then_some(file))
    }

    /// Starts reading at `offset` instead (a copy read on from where its original stopped, or
    /// a copy whose content was all read from the original). Fixes the fingerprint first.
    pub fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other(
                "file handle was given back; reopen it first",
            ));
        };
        let size = file.metadata()?.len();
        if self.fingerprint.is_none()
            && let Some((fp, head)) = Fingerprint::take_with_head(file, size, self.birth)?
        {
            (self.fingerprint, self.head) = (Some(fp), Some(head));
        }
        self.mid_line = offset > 0 && !follows_newline(file, offset)?;
        self.splitter.clear();
        self.read_pos = offset;
        self.line_pos = offset;
        self.size = size;
        self.seen_size = self.seen_size.max(size);
        self.sniff = false;
        self.at_eof = false;
        Ok(())
    }

    /// Largest size any stat saw since the last truncation.
    pub fn seen_size(&self) -> u64 {
        self.seen_size
    }

    /// Whether a truncation reported by `read` is of this file's own stream, to be read again
    /// from 0: yes while the file is live, or deleted (only its writer can change it), or if it
    /// was seen shrinking while live. A file renamed away and then truncated is being reused for
    /// other content (say, the target of the next copytruncate): its own content is over.
    pub fn truncation_is_ours(&self) -> bool {
        self.orphaned_at.is_none() || self.deleted || self.shrank_live
    }

    /// After a truncation was reported and everything pending handed out: restart at 0 as a new
    /// generation, counting what was lost.
    pub fn restart_after_truncation(&mut self) {
        // Bytes seen in the file (by any stat) past what was read were never read.
        self.unread_bytes += self.seen_size.saturating_sub(self.read_pos);
        self.seen_size = 0;
        self.splitter.clear();
        self.generation = self.generation.wrapping_add(1);
        self.fingerprint = None;
        self.head = None;
        self.tail = None;
        self.origin = None;
        self.probe = None;
        self.probe_head = None;
        self.read_pos = 0;
        self.line_pos = 0;
        self.size = 0;
        self.at_eof = false;
        self.shrank_live = false;
        self.partial_not_before = None;
        self.mid_line = false;
        self.sniff = true;
    }
}

/// A test's hand in a read: a writer racing the reader, at an exact point of it.
#[cfg(test)]
pub(crate) mod hooks {
    use std::cell::RefCell;
    use std::path::Path;

    type Hook = Box<dyn FnMut(&Path, u64)>;

    thread_local! {
        static BEFORE_READ: RefCell<Option<Hook>> = RefCell::new(None);
    }

    /// `f(path, offset)` runs before every read of file data on this thread (until cleared).
    pub fn set_before_read(f: impl FnMut(&Path, u64) + 'static) {
        BEFORE_READ.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub fn clear_before_read() {
        BEFORE_READ.with(|h| *h.borrow_mut() = None);
    }

    pub(crate) fn before_read(path: &Path, at: u64) {
        BEFORE_READ.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(path, at);
            }
        });
    }
}

/// Fixes `fingerprint` (and `head`) of `file`, `size` bytes long, if its first line is whole;
/// else takes a `probe` of what it begins with, once.
///
/// `first`: the bytes a read just took from the file's start. They decide when they hold the
/// first line (or a full window), and are what a probe is of: a second read of the file's start
/// could find it truncated already (copytruncate between the two reads) — the content would
/// then have no identity, its truncation would not look for its copy, and the copy, holding
/// lines already shipped, would be read as a file of its own.
fn identify(
    file: &File,
    birth: u64,
    size: u64,
    first: Option<&[u8]>,
    fingerprint: &mut Option<Fingerprint>,
    head: &mut Option<u64>,
    (probe, probe_head): (&mut Option<Fingerprint>, &mut Option<u64>),
) -> io::Result<()> {
    if fingerprint.is_some() || size == 0 {
        return Ok(());
    }
    if let Some(bytes) = first {
        let window = &bytes[..bytes
            .len()
            .min(super::fingerprint::FINGERPRINT_WINDOW as usize)];
        let len = match memchr::memchr(b'\n', window) {
            Some(nl) => Some(nl + 1),
            None if window.len() as u64 == super::fingerprint::FINGERPRINT_WINDOW => {
                Some(window.len())
            }
            None => None,
        };
        if let Some(len) = len {
            *fingerprint = Some(Fingerprint::of(&bytes[..len], birth));
            *head = Some(Fingerprint::of(&bytes[..len], 0).checksum);
            return Ok(());
        }
    }
    let taken = Fingerprint::take_with_head(file, size, birth)?;
    *fingerprint = taken.map(|(fp, _)| fp);
    match taken {
        Some((_, h)) => *head = Some(h),
        None if probe.is_none() => match first {
            Some(bytes) if !bytes.is_empty() => {
                let w = &bytes[..bytes
                    .len()
                    .min(super::fingerprint::FINGERPRINT_WINDOW as usize)];
                (*probe, *probe_head) = (
                    Some(Fingerprint::of(w, birth)),
                    Some(Fingerprint::of(w, 0).checksum),
                );
            }
            _ => {
                if let Some((p, h)) = Fingerprint::probe(file, size, birth)? {
                    (*probe, *probe_head) = (Some(p), Some(h));
                }
            }
        },
        None => {}
    }
    Ok(())
}

/// The print of `file`'s bytes before `offset`, if they are still those of the content that
/// was read (`id`: its fingerprint, or probe). The writer may truncate the file at any moment,
/// also between the last read and this one: the print is taken first, then the file is checked
/// to still hold `offset` bytes and to still begin as it did. Without the check a print taken
/// after a truncation is missing (shorter file) or of the new content's bytes (refilled past
/// `offset`), and the old content's copy is not recognised by it.
fn tail_print(
    file: &File,
    birth: u64,
    offset: u64,
    id: Option<Fingerprint>,
) -> io::Result<Option<TailPrint>> {
    let Some(tp) = TailPrint::take(file, offset)? else {
        return Ok(None);
    };
    let same = file.metadata()?.len() >= offset
        && match id {
            Some(fp) => fp.matches_as(file, birth)?,
            None => true,
        };
    Ok(same.then_some(tp))
}

/// Whether the byte before `pos` is a newline, i.e. `pos` starts a line.
fn follows_newline(file: &File, pos: u64) -> io::Result<bool> {
    let mut b = [0u8; 1];
    loop {
        match file.read_at(&mut b, pos - 1) {
            Ok(0) => return Ok(true),
            Ok(_) => return Ok(b[0] == b'\n'),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn read_all(w: &mut FileWatcher, now: Instant) -> (Vec<(FileId, u64, String)>, ReadOutcome) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 7];
        let outcome = w
            .read(&mut buf, 1 << 20, now, &mut |id, off, l| {
                out.push((id, off, String::from_utf8_lossy(l.bytes).into_owned()))
            })
            .unwrap();
        (out, outcome)
    }

    /// A watcher on `p` from its beginning (generation 0, 100-byte lines, 1 s flush timeout).
    fn open_from_start(p: &Path, t: Instant) -> FileWatcher {
        FileWatcher::open(
            p,
            StartAt::Beginning { generation: 0 },
            100,
            Duration::from_secs(1),
            t,
        )
        .unwrap()
    }

    #[test]
    fn truncation_restarts_at_zero_with_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"one\ntwo\n");
        let t = Instant::now();
        let mut w = open_from_start(&p, t);
        let (lines, _) = read_all(&mut w, t);
        assert_eq!(
            lines.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        let gen0 = lines[0].0;
        std::fs::write(&p, b"x\n").unwrap();
        assert_eq!(read_all(&mut w, t).1, ReadOutcome::Truncated);
        w.restart_after_truncation();
        let (lines, _) = read_all(&mut w, t);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].1, lines[0].2.as_str()), (0, "x"));
        assert_eq!(lines[0].0.generation, gen0.generation + 1);
        assert_ne!(lines[0].0.fingerprint, gen0.fingerprint);
    }

    #[test]
    fn partial_line_waits_for_newline_then_flushes_after_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"done\nhalf");
        let t0 = Instant::now();
        let mut w = FileWatcher::open(
            &p,
            StartAt::Beginning { generation: 0 },
            100,
            Duration::from_secs(1),
            t0,
        )
        .unwrap();
        let (lines, _) = read_all(&mut w, t0);
        assert_eq!(lines.len(), 1);
        assert_eq!(w.partial_deadline(), Some(t0 + Duration::from_secs(1)));
        let mut out = Vec::new();
        let mut emit = |_: FileId, off: u64, l: Line<'_>| out.push((off, l.bytes.to_vec(), l.span));
        assert!(!w.flush_partial(t0 + Duration::from_millis(999), false, &mut emit));
        // The newline arrives in time: one whole line.
        append(&p, b" more\n");
        let (lines, _) = read_all(&mut w, t0 + Duration::from_millis(500));
        assert_eq!((lines[0].1, lines[0].2.as_str()), (5, "half more"));
        // A new partial line that never gets its newline ships after the timeout.
        append(&p, b"tail");
        let t1 = t0 + Duration::from_secs(2);
        read_all(&mut w, t1);
        let mut out = Vec::new();
        let mut emit = |_: FileId, off: u64, l: Line<'_>| out.push((off, l.bytes.to_vec(), l.span));
        assert!(w.flush_partial(t1 + Duration::from_secs(1), false, &mut emit));
        assert_eq!(out, vec![(15, b"tail".to_vec(), 4)]);
        assert_eq!(w.line_pos(), 19);
    }

    /// Regression (found by the tiny-files e2e test): a line shipped without its newline after
    /// the flush timeout, whose newline came later, was followed by a spurious empty record —
    /// also after a restart that resumed right behind the shipped part.
    #[test]
    fn newline_ending_a_flushed_partial_line_is_not_an_empty_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"half");
        let t0 = Instant::now();
        let start = StartAt::Beginning { generation: 0 };
        let mut w = FileWatcher::open(&p, start, 100, Duration::from_secs(1), t0).unwrap();
        read_all(&mut w, t0);
        let mut out = Vec::new();
        let mut emit = |_: FileId, off: u64, l: Line<'_>| out.push((off, l.bytes.to_vec()));
        assert!(w.flush_partial(t0 + Duration::from_secs(2), false, &mut emit));
        assert_eq!(out, vec![(0, b"half".to_vec())]);
        append(&p, b"\nnext\n\n");
        let (lines, _) = read_all(&mut w, t0 + Duration::from_secs(3));
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.1, l.2.as_str())).collect();
        // A real empty line (the last one) is still a line.
        assert_eq!(got, [(5, "next"), (10, "")]);
        assert_eq!(w.line_pos(), 11);
        // A restart resuming right behind "half" (its checkpoint) knows it is mid-line.
        let resume = StartAt::Resume {
            fingerprint: None,
            generation: 0,
            offset: 4,
        };
        let mut r = FileWatcher::open(&p, resume, 100, Duration::from_secs(1), t0).unwrap();
        let (lines, _) = read_all(&mut r, t0);
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.1, l.2.as_str())).collect();
        assert_eq!(got, [(5, "next"), (10, "")]);
    }

    /// Regression (found by the copytruncate e2e test): a file truncated and refilled to exactly
    /// the size the watcher had last seen looked unchanged, and its new lines were not read.
    #[test]
    fn truncated_and_refilled_to_the_same_size_is_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"old-1\nold-2\n");
        let t = Instant::now();
        let start = StartAt::Beginning { generation: 0 };
        let mut w = FileWatcher::open(&p, start, 100, Duration::from_secs(1), t).unwrap();
        assert_eq!(read_all(&mut w, t).0.len(), 2);
        // mtime granularity is at worst the kernel tick: make sure it moves.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, b"new-1\nnew-2\n").unwrap();
        assert_eq!(read_all(&mut w, t).1, ReadOutcome::Truncated);
        w.restart_after_truncation();
        let (lines, _) = read_all(&mut w, t);
        let got: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
        assert_eq!(got, ["new-1", "new-2"]);
    }

    #[test]
    fn deleted_file_is_read_to_its_end_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"a\n");
        let t = Instant::now();
        let mut w = open_from_start(&p, t);
        append(&p, b"b\n");
        std::fs::remove_file(&p).unwrap();
        let (lines, outcome) = read_all(&mut w, t);
        assert_eq!(lines.len(), 2);
        assert!(matches!(outcome, ReadOutcome::Eof { bytes: 4 }));
        assert!(w.is_orphaned());
        assert!(!w.is_done(t + Duration::from_secs(1)));
        assert!(w.is_done(t + ROTATE_WAIT));
    }

    #[test]
    fn compressed_formats_are_recognised_by_their_magic_bytes() {
        assert_eq!(
            sniff(&[0x1f, 0x8b, 0x08, 0, 0]),
            Some(Ok(Compression::Gzip))
        );
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Some(Ok(Compression::Zstd))
        );
        assert_eq!(
            sniff(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0]),
            Some(Ok(Compression::Xz))
        );
        assert_eq!(sniff(b"BZh91AY&SY\x00"), Some(Ok(Compression::Bzip2)));
        assert_eq!(
            sniff(b"BZh9 is a line\n"),
            Some(Err(())),
            "text starting like bzip2"
        );
        assert_eq!(sniff(b"hello\n"), Some(Err(())));
        assert_eq!(sniff(&[0x1f]), None, "too short to tell");
        assert_eq!(sniff(b"BZh"), None);
        assert_eq!(sniff(b""), None, "empty: nothing to tell yet");
    }

    #[test]
    fn compressed_file_is_not_read_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log.2");
        append(&p, &[0x1f]);
        let t = Instant::now();
        let mut w = open_from_start(&p, t);
        let (lines, outcome) = read_all(&mut w, t);
        assert!(lines.is_empty());
        assert_eq!(
            outcome,
            ReadOutcome::Eof { bytes: 0 },
            "waits for the bytes that tell"
        );
        append(&p, &[0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, b'\n']);
        let (lines, outcome) = read_all(&mut w, t);
        assert!(lines.is_empty());
        assert_eq!(outcome, ReadOutcome::Compressed(Compression::Gzip));
    }

    #[test]
    fn read_from_end_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"old\n");
        let t = Instant::now();
        let mut w = FileWatcher::open(&p, StartAt::End, 100, Duration::from_secs(1), t).unwrap();
        append(&p, b"new\n");
        let (lines, _) = read_all(&mut w, t);
        assert_eq!((lines[0].1, lines[0].2.as_str()), (4, "new"));
        let fp = w.fingerprint();
        assert_eq!(fp.map(|f| f.len), Some(4));
        let mut r = FileWatcher::open(
            &p,
            StartAt::Resume {
                fingerprint: fp,
                generation: 3,
                offset: 4,
            },
            100,
            Duration::from_secs(1),
            t,
        )
        .unwrap();
        let (lines, _) = read_all(&mut r, t);
        assert_eq!(
            lines[0].0,
            FileId {
                generation: 3,
                ..w.file_id()
            }
        );
        assert_eq!(lines[0].2, "new");
    }
}
