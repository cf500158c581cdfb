//! Tailing: which files, where in each, and what their lines become.
//!
//! [`Tailer`] is the synchronous core of the agent's reading side, modelled on Vector's file
//! server: it owns one [`watcher::FileWatcher`] per file (a state machine, no task per file), a
//! [`Joiner`] (multiline rule or container format) and a [`Batcher`] per file, and is driven in turns by the reader thread
//! ([`crate::reader`]): `scan` (rescan, or one path after an event) → `read_turn` (each file that
//! may have data, up to a byte budget, so busy files cannot starve quiet ones) →
//! `poll_timeouts` (partial lines, multiline records, batch linger, releasing rotated files).
//! What it produces — sealed batches and checkpoint facts — is collected with `take_output`.
//! Time is passed in, so tests drive it without sleeping.

pub mod fingerprint;
pub mod watcher;

use crate::batcher::{BatchLimits, Batcher, BuilderPool, SealedBatch};
use crate::checkpoint::{Checkpoints, FileCheckpoint, PendingCopy};
use crate::config::{CompiledInput, ReadFrom};
use crate::container::{Extra, Joiner};
use crate::discovery::{self, GlobRoot};
use crate::lines::Line;
use ferry_core::backoff::Backoff;
use ferry_core::record::FileId;
use fingerprint::Fingerprint;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use watcher::{FileWatcher, ReadOutcome, Reopened, StartAt};

/// (dev, inode).
pub type FileKey = (u64, u64);

/// What a checkpoint entry needs to know about a file, as of one batch or position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub key: FileKey,
    pub path: Arc<str>,
    pub fingerprint: Option<Fingerprint>,
    pub generation: u32,
    /// The identity its lines ship under when it is not the file's own: a copy made by
    /// copytruncate, read on from where the original stopped under the original's origin.
    pub origin: Option<FileId>,
    /// The last bytes before the position, hashed (see [`fingerprint::TailPrint`]).
    pub tail: Option<fingerprint::TailPrint>,
    /// Hash of the first line's content alone (no birth time): what a copy shares.
    pub head: Option<u64>,
    /// The contents the file had before its truncations, while their copies are waited for.
    pub pending: Vec<PendingCopy>,
    /// Birth time (ns; 0 where not recorded): an inode reused while the agent was stopped is
    /// another file.
    pub birth: u64,
    /// Without a whole first line: what it begins with (see [`FileWatcher::probe`]).
    pub probe: Option<(Fingerprint, u64)>,
}

impl FileState {
    /// The shipper's lane: batches of one origin are delivered in order, whichever file (the
    /// original, or its copy) they were read from.
    pub fn lane(&self) -> FileKey {
        self.origin.map_or(self.key, |o| (o.dev, o.inode))
    }
}

/// What the tailer hands to the shipping side, in order.
#[derive(Debug)]
pub enum Emitted {
    /// Records of one file, ready to compress and ship.
    Batch {
        input: usize,
        state: FileState,
        batch: SealedBatch,
    },
    /// A position to checkpoint without a batch (a file read from its end, or restarted at 0
    /// after a truncation). Applied after the file's earlier batches are acknowledged.
    Position { state: FileState, offset: u64 },
    /// The file was read to its end and closed: forget its checkpoint once its batches are
    /// acknowledged.
    Released { key: FileKey, lane: FileKey },
    /// The copy of `key`'s content before a truncation (the checkpoint's `pending`, with
    /// `origin`) was found, or its wait is over: clear it from the checkpoint, and count `lost`
    /// bytes as unread once the checkpoint that says so is written (so a crash in between
    /// neither loses nor repeats the count).
    CopyResolved {
        key: FileKey,
        lane: FileKey,
        origin: FileId,
        lost: u64,
        input: usize,
        path: Arc<str>,
    },
}

/// Per-input counts since the last `take_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputStats {
    pub lines: u64,
    pub bytes: u64,
    pub truncated: u64,
    pub unread_bytes: u64,
    /// Batches sealed when a file was read to its end after a backlog (`backlog_bytes`).
    pub sealed_after_backlog: u64,
}

/// Knobs of the tailer.
#[derive(Debug, Clone)]
pub struct TailerSettings {
    pub agent_id: String,
    /// Most bytes read from one file per turn.
    pub read_budget: u64,
    /// Size of one read.
    pub read_buffer: usize,
    pub limits: BatchLimits,
    /// A file read to its end after at least this many bytes since its last end (a backlog:
    /// a new file, a restart, the reader behind a burst) seals its open batch at once instead
    /// of letting it linger (`batch.backlog_bytes`).
    pub backlog_bytes: u64,
    /// Most tail handles open at once (`max_open_files`, see [`crate::fdlimit`]).
    pub max_open_files: usize,
}

/// A file found by a scan that has no handle yet: descriptors were scarce (the budget was
/// spent, or the process ran out), or opening it failed. Opened, in order, as handles free up;
/// failures are retried with backoff.
#[derive(Debug)]
struct Waiting {
    input: usize,
    key: FileKey,
    /// Where to start if there is no checkpoint for it, decided when it was found (a file
    /// present at startup with `read_from: end` starts at its end even if it is opened later).
    fresh: StartAt,
    /// The last attempt failed with an error other than "no descriptor": not before this time.
    retry_at: Option<Instant>,
    backoff: Backoff,
    error: Option<String>,
}

/// What the last "files waiting" report said, so the log gets one line when it changes
/// rather than one per file per attempt.
#[derive(Debug, Default)]
struct WaitReport {
    at: Option<Instant>,
    budget: usize,
    failed: usize,
}

/// A truncated (or deleted) file whose content may survive in a copy (copytruncate), looked
/// for until `until` (`rotate_wait` after the truncation was seen).
#[derive(Debug)]
struct CopyWanted {
    original: FileKey,
    /// What recognises the copy, where to read it on from, what is lost without one.
    print: PendingCopy,
    /// `print.until_ms` on this process's clock.
    until: Instant,
    dir: PathBuf,
    input: usize,
    path: Arc<str>,
    /// The print is in the checkpoint (the original's entry): its outcome is counted by the
    /// shipper once the checkpoint that clears it is written. Otherwise counted at once.
    persisted: bool,
}

impl CopyWanted {
    /// The lane the copy's lines, and the resolution, travel in (the origin's).
    fn lane(&self) -> FileKey {
        (self.print.origin.dev, self.print.origin.inode)
    }
}

/// The print of a file's content as of now, about to be truncated: its copy is read on from
/// `from` (the first byte not handed out); `lost` bytes past it are gone unless a copy holds them.
fn print_of(w: &FileWatcher, from: u64, lost: u64, wait: Duration) -> Option<PendingCopy> {
    // Nothing handed out yet: any copy holds the same (nothing) before where it starts.
    let tail = w
        .tail()
        .or((from == 0).then_some(fingerprint::TailPrint::EMPTY))?;
    print_with(w, tail, from, lost, wait)
}

/// [`print_of`] with the tail print a copy must match, taken before `from` moved.
fn print_with(
    w: &FileWatcher,
    tail: fingerprint::TailPrint,
    from: u64,
    lost: u64,
    wait: Duration,
) -> Option<PendingCopy> {
    Some(PendingCopy {
        origin: w.file_id().into(),
        head: w.head()?,
        head_len: w.fingerprint()?.len,
        tail,
        from,
        lost,
        until_ms: ferry_core::now_ms().saturating_add(wait.as_millis() as i64),
        birth: None,
    })
}

/// How long a new file whose first line is incomplete is held back from reading while it
/// may still turn out to be a copy being written.
const CLASSIFY_WAIT: Duration = Duration::from_secs(1);
/// New files found by one scan from which the descriptor table is grown for them at once
/// ([`crate::fdlimit::presize_table`]); fewer fit in the table a process starts with.
const PRESIZE_AT: usize = 32;

/// How often the waiting report repeats while nothing changes.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Tracked {
    input: usize,
    watcher: FileWatcher,
    /// Lines into records when they are not records as written (multiline rule, container
    /// format).
    multiline: Option<Joiner>,
    batcher: Batcher,
    /// The last read stopped at its budget: read again next turn.
    more: bool,
    /// Bytes read since the file was last read to its end: how far behind the reader was.
    behind: u64,
    /// A new file (no checkpoint, read from 0) not yet checked for being a copy of a tracked
    /// file: it is not read until it is.
    unclassified: bool,
    /// Found to be a copy of this tracked file (same first line, same bytes as far as both
    /// go): not read while the original is, since everything in it is in the original. If the
    /// original is truncated, the copy is read on from where the original stopped.
    parked: Option<FileKey>,
    /// Its first bytes say it is compressed: released without reading (and remembered, so
    /// that later scans do not open it again).
    compressed: Option<watcher::Compression>,
    /// An orphaned file at EOF is looked at again at this time (EOF backoff).
    next_poll: Option<Instant>,
    backoff: Duration,
    /// The order it was tracked in (the tailer's count of files tracked before it).
    found: u64,
}

const ORPHAN_POLL_MIN: Duration = Duration::from_millis(50);
const ORPHAN_POLL_MAX: Duration = Duration::from_secs(1);
/// Retry of a file that could not be opened (permissions, say): capped backoff.
const OPEN_RETRY_MIN: Duration = Duration::from_millis(250);
const OPEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// The reading side's state: every tracked file and what is pending for it.
#[derive(Debug)]
pub struct Tailer {
    settings: TailerSettings,
    inputs: Arc<[CompiledInput]>,
    roots: Vec<GlobRoot>,
    files: HashMap<FileKey, Tracked>,
    /// Which file each live path names.
    paths: HashMap<PathBuf, FileKey>,
    /// Checkpoints read at startup, by file; an entry is consumed when its file is opened.
    resume: HashMap<FileKey, FileCheckpoint>,
    /// Paths the startup checkpoints name (a file found there under another inode was
    /// recreated while the agent was stopped).
    startup_paths: HashSet<String>,
    /// The first scan is done: `read_from` no longer applies.
    started: bool,
    /// Files found but not open yet (no descriptor to spare, or opening failed), by path, in
    /// the order they were found.
    waiting: BTreeMap<PathBuf, Waiting>,
    /// Tracked files whose handle was given back and that need it again to be read.
    want_handle: VecDeque<FileKey>,
    /// Tail handles open now (watchers with a file, tracked or not).
    open_handles: usize,
    last_wait_report: WaitReport,
    /// Truncated files whose copy (copytruncate) is to be looked for, after the current read.
    copies_wanted: Vec<CopyWanted>,
    /// Truncated or deleted files whose copy was not found yet: looked for again at each scan,
    /// when a new file appears next to them, and once more when their wait is over.
    pending_copies: Vec<CopyWanted>,
    /// Files skipped for being compressed, by identity, with the size they had: not opened
    /// again while they stay (a scan that no longer finds one forgets it).
    skipped: HashMap<FileKey, u64>,
    /// Files to read this turn (events, rescans).
    dirty: HashSet<FileKey>,
    /// Files with something time-driven pending (partial line, multiline record, open batch,
    /// orphaned), so timeouts do not visit every file.
    timed: HashSet<FileKey>,
    pool: BuilderPool,
    buf: Vec<u8>,
    sealed: Vec<SealedBatch>,
    out: Vec<Emitted>,
    stats: Vec<InputStats>,
    /// File bytes routed into open batches and not sealed yet.
    open_bytes: u64,
    /// File bytes read but not yet in a batch (incomplete lines, multiline records).
    held_bytes: u64,
    /// How many files were tracked so far: each tracked file's [`Tracked::found`].
    found: u64,
    /// Every file tracked unclassified, by [`Tracked::found`] (and maybe some classified or
    /// gone since: entries are checked against `files` where they are used). What
    /// [`Tailer::classify`] looks through for a new file's unclassified elders, instead of
    /// every tracked file for every new one (quadratic in a directory of thousands).
    unclassified: BTreeMap<u64, FileKey>,
}

impl Tailer {
    pub fn new(
        settings: TailerSettings,
        inputs: Arc<[CompiledInput]>,
        checkpoints: Checkpoints,
        pool: BuilderPool,
    ) -> Self {
        let roots = discovery::roots(&inputs);
        // Copies still waited for when the last run stopped: waited for on.
        let (now, now_ms) = (Instant::now(), ferry_core::now_ms());
        // (Those of files released since too.)
        let pending_copies = checkpoints
            .files
            .iter()
            .flat_map(|(key, cp)| {
                cp.pending
                    .iter()
                    .map(move |print| (*key, cp.path.as_str(), *print))
            })
            .chain(
                checkpoints
                    .waiting
                    .iter()
                    .map(|w| ((w.dev, w.inode), w.path.as_str(), w.print)),
            )
            .filter_map(|(key, path_str, print)| {
                let left = u64::try_from(print.until_ms.saturating_sub(now_ms)).unwrap_or(0);
                let path = Path::new(path_str);
                Some(CopyWanted {
                    original: key,
                    print,
                    until: now + Duration::from_millis(left),
                    dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                    input: discovery::owner(&inputs, path).or((!inputs.is_empty()).then_some(0))?,
                    path: Arc::from(path_str),
                    persisted: true,
                })
            })
            .collect();
        Self {
            pending_copies,
            buf: vec![0; settings.read_buffer.max(1)],
            stats: vec![InputStats::default(); inputs.len()],
            settings,
            inputs,
            roots,
            files: HashMap::new(),
            paths: HashMap::new(),
            startup_paths: checkpoints.files.values().map(|c| c.path.clone()).collect(),
            resume: checkpoints.files.into_iter().collect(),
            started: false,
            waiting: BTreeMap::new(),
            want_handle: VecDeque::new(),
            open_handles: 0,
            last_wait_report: WaitReport::default(),
            skipped: HashMap::new(),
            copies_wanted: Vec::new(),
            dirty: HashSet::new(),
            timed: HashSet::new(),
            pool,
            sealed: Vec::new(),
            out: Vec::new(),
            open_bytes: 0,
            held_bytes: 0,
            found: 0,
            unclassified: BTreeMap::new(),
        }
    }

    /// Directories to watch for events.
    pub fn roots(&self) -> &[GlobRoot] {
        &self.roots
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Tail handles open now.
    pub fn open_handles(&self) -> usize {
        self.open_handles
    }

    /// Files found but without a handle yet (waiting for a descriptor, or failing to open).
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// File bytes read and not yet sealed into a batch (part of the agent's buffer).
    pub fn open_bytes(&self) -> u64 {
        self.open_bytes + self.held_bytes
    }

    /// Whether some file is known to have more to read right now.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.files.values().any(|t| t.more)
    }

    /// Expands every glob and stats every match: new files are opened, renamed ones followed,
    /// vanished or replaced ones orphaned, grown ones marked for reading.
    pub fn scan(&mut self, now: Instant) {
        let found = discovery::scan(&self.inputs, &self.roots);
        let gone: Vec<PathBuf> = self
            .paths
            .keys()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            self.observe(&p, None, now);
        }
        self.waiting.retain(|p, _| found.contains_key(p));
        let keys: HashSet<FileKey> = found
            .values()
            .map(|f| (f.meta.dev(), f.meta.ino()))
            .collect();
        self.skipped.retain(|k, _| keys.contains(k));
        // Many files to open at once (startup, a new directory of logs): grow the descriptor
        // table once for all of them rather than once per doubling.
        let new = found
            .keys()
            .filter(|p| !self.paths.contains_key(*p))
            .count();
        if new >= PRESIZE_AT {
            let more = new.min(
                self.settings
                    .max_open_files
                    .saturating_sub(self.open_handles),
            );
            crate::fdlimit::presize_table(crate::fdlimit::open_descriptors() + more as u64);
        }
        for (path, f) in &found {
            self.observe(path, Some((f.input, f.meta.clone())), now);
        }
        if !self.started {
            self.started = true;
            // Entries no file matched: those files are gone (or no longer matched). Files that
            // exist but are not open yet keep theirs for when they are.
            let waiting: HashSet<FileKey> = self.waiting.values().map(|w| w.key).collect();
            let unmatched: Vec<FileKey> = self
                .resume
                .keys()
                .filter(|k| !waiting.contains(k))
                .copied()
                .collect();
            for key in unmatched {
                self.startup_unmatched(key, now);
            }
            self.startup_paths.clear();
        }
        self.find_copies(now);
        self.retry_pending(now, None);
        self.give_back_idle(now);
        self.open_waiting(now);
        self.report_waiting(now);
        // Orphaned files get a look too (a rescan is the fallback for missed events).
        for (key, t) in &self.files {
            if t.watcher.is_orphaned() {
                self.dirty.insert(*key);
            }
        }
    }

    /// A checkpointed file no glob matched at start: renamed out of the glob while the agent
    /// was stopped (a rotation with a glob that matches only the live name), or deleted. A
    /// file on its dev+inode in the same directory is read on from the checkpoint (if it still
    /// begins with its fingerprint and holds the checkpointed offset; else from 0 as its next
    /// generation) to its end, then released like a file rotated away while the agent ran.
    /// Otherwise its content may survive in a copy (copytruncate, then the original deleted),
    /// looked for during `rotate_wait`.
    fn startup_unmatched(&mut self, key: FileKey, now: Instant) {
        let Some(cp) = self.resume.get(&key).cloned() else {
            return;
        };
        let old = Path::new(&cp.path);
        // A copy adopted outside every glob (copytruncate under `app.log`: the copy is
        // `app.log.1`) is read on under its original's origin (`cp.origin`): it belongs to the
        // input that tails its directory, and is read on to its end, as before the restart.
        let input = discovery::owner(&self.inputs, old).or_else(|| {
            let dir = old.parent()?;
            cp.origin.as_ref()?;
            self.inputs.iter().position(|i| {
                i.include_patterns
                    .iter()
                    .any(|p| GlobRoot::of(p).dir == dir)
            })
        });
        if let (Some(input), Some((path, meta))) = (input, find_renamed(&cp)) {
            match self.open_file(
                &path,
                input,
                &meta,
                StartAt::Beginning { generation: 0 },
                now,
            ) {
                Ok(()) => {
                    if let Some(t) = self.files.get_mut(&key) {
                        tracing::info!(from = %cp.path, to = %path.display(), offset = cp.offset, "file renamed out of the glob while the agent was stopped; reading it on to its end");
                        t.watcher.set_path(&path);
                        t.watcher.orphan(now);
                    }
                    self.timed.insert(key);
                    self.dirty.insert(key);
                    return;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open a file renamed while the agent was stopped");
                }
            }
        }
        self.forget_checkpointed(key, now);
    }

    /// A checkpointed file that is gone (deleted, moved away, or its inode now another file's):
    /// its entry is released, and what it held past the checkpoint is looked for in a copy
    /// during `rotate_wait` (copytruncate, then the original deleted).
    fn forget_checkpointed(&mut self, key: FileKey, now: Instant) {
        let Some(cp) = self.resume.remove(&key) else {
            return;
        };
        let old = Path::new(&cp.path);
        let input = discovery::owner(&self.inputs, old);
        let lane = cp.origin.map_or(key, |o| (o.dev, o.inode));
        self.out.push(Emitted::Released { key, lane });
        let (Some(input), Some(print)) = (input, checkpointed_print(&cp, Duration::ZERO)) else {
            return;
        };
        // Deleted (or moved away): what it held past the checkpoint survives only in a copy.
        let wait = self.inputs[input].rotate_wait;
        self.copies_wanted.push(CopyWanted {
            original: key,
            print: PendingCopy {
                until_ms: print.until_ms.saturating_add(wait.as_millis() as i64),
                ..print
            },
            until: now + wait,
            dir: old.parent().map(Path::to_path_buf).unwrap_or_default(),
            input,
            path: Arc::from(cp.path.as_str()),
            persisted: false,
        });
    }

    /// An event named `path`: re-check just that path. Returns false if the path is a
    /// directory (a full scan is then needed to find what is inside).
    pub fn path_event(&mut self, path: &Path, now: Instant) -> bool {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => return false,
            Ok(meta) if meta.is_file() => {
                let owner = discovery::owner(&self.inputs, path);
                if owner.is_none() {
                    // Maybe the copy of a truncated file, under a name no glob matches.
                    self.retry_pending(now, path.parent());
                }
                self.observe(path, owner.map(|i| (i, meta)), now);
            }
            _ => self.observe(path, None, now),
        }
        true
    }

    /// An event says `path` was written: read it next turn. Returns false if the path is not
    /// tracked (the caller then treats it as a path event).
    pub fn data_event(&mut self, path: &Path) -> bool {
        match self.paths.get(path) {
            Some(key) => {
                self.dirty.insert(*key);
                true
            }
            None => false,
        }
    }

    fn observe(&mut self, path: &Path, found: Option<(usize, fs::Metadata)>, now: Instant) {
        let new_key = found.as_ref().map(|(_, m)| (m.dev(), m.ino()));
        let old_key = self.paths.get(path).copied();
        if old_key.is_some() && old_key != new_key {
            self.paths.remove(path);
            if let Some(k) = old_key
                && let Some(t) = self.files.get_mut(&k)
                && t.watcher.path() == path
            {
                t.watcher.orphan(now);
                self.dirty.insert(k);
                self.timed.insert(k);
            }
        }
        let Some((input, meta)) = found else {
            return;
        };
        let Some(key) = new_key else {
            return;
        };
        if let Some(t) = self.files.get_mut(&key) {
            if t.watcher.path() != path {
                let old_path = t.watcher.path().to_path_buf();
                if self.paths.get(&old_path) == Some(&key) {
                    self.paths.remove(&old_path);
                }
                t.watcher.set_path(path);
                tracing::debug!(from = %old_path.display(), to = %path.display(), "file renamed; keeping its position");
            }
            if t.watcher.note_size(meta.len(), meta.modified().ok()) {
                self.dirty.insert(key);
            }
            self.paths.insert(path.to_path_buf(), key);
            return;
        }
        // Skipped as compressed, and not rewritten since (a smaller size: a new file on its
        // inode, or truncated to be reused).
        if let Some(size) = self.skipped.get(&key) {
            if meta.len() >= *size {
                return;
            }
            self.skipped.remove(&key);
        }
        // A new file: it waits for a handle (at once, if one is free).
        if let Some(w) = self.waiting.get_mut(path) {
            if w.key != key {
                // Replaced before it could be opened: the new file is read from its start.
                w.key = key;
                w.fresh = StartAt::Beginning { generation: 0 };
            }
            w.input = input;
        } else {
            let fresh = self.fresh_start(path, input);
            self.waiting.insert(
                path.to_path_buf(),
                Waiting {
                    input,
                    key,
                    fresh,
                    retry_at: None,
                    backoff: Backoff::new(OPEN_RETRY_MIN, OPEN_RETRY_MAX),
                    error: None,
                },
            );
        }
        self.try_open(path, now);
    }

    /// Where a file without a checkpoint starts, as of now.
    fn fresh_start(&self, path: &Path, input: usize) -> StartAt {
        // A path that had a checkpoint under another inode was recreated while the agent was
        // stopped: its lines are new, read them all.
        let recreated = self.startup_paths.contains(path.to_string_lossy().as_ref());
        if !self.started && self.inputs[input].read_from == ReadFrom::End && !recreated {
            StartAt::End
        } else {
            StartAt::Beginning { generation: 0 }
        }
    }

    /// Opens the waiting file at `path` if a handle is free and its retry time has come.
    /// Returns whether it is open now.
    fn try_open(&mut self, path: &Path, now: Instant) -> bool {
        let Some(w) = self.waiting.get(path) else {
            return false;
        };
        if w.retry_at.is_some_and(|t| now < t) || self.open_handles >= self.settings.max_open_files
        {
            return false;
        }
        let meta = match fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            // Gone (or no longer a file) since the scan: nothing to open.
            _ => {
                self.waiting.remove(path);
                return false;
            }
        };
        let (input, mut fresh) = (w.input, w.fresh);
        let key = (meta.dev(), meta.ino());
        if key != w.key {
            fresh = StartAt::Beginning { generation: 0 };
        }
        match self.open_file(path, input, &meta, fresh, now) {
            Ok(()) => {
                self.waiting.remove(path);
                self.paths.insert(path.to_path_buf(), key);
                self.dirty.insert(key);
                true
            }
            Err(e) if crate::fdlimit::is_out_of_descriptors(&e) => {
                self.out_of_descriptors();
                false
            }
            Err(e) => {
                if let Some(w) = self.waiting.get_mut(path) {
                    w.key = key;
                    w.retry_at = Some(now + w.backoff.next_delay());
                    w.error = Some(e.to_string());
                }
                false
            }
        }
    }

    /// The process ran out of descriptors below the tail-handle budget (something else holds
    /// more than the reserve allowed for): the budget shrinks to what is open now, once, with
    /// one warning.
    fn out_of_descriptors(&mut self) {
        let lowered = self.open_handles.max(1);
        if lowered < self.settings.max_open_files {
            tracing::warn!(
                max_open_files = self.settings.max_open_files,
                lowered,
                "out of file descriptors before `max_open_files` was reached; lowering it"
            );
            self.settings.max_open_files = lowered;
        }
    }

    /// Hands free handles out: first to tracked files that gave theirs back and have data to
    /// read, then to files waiting to be opened, in path order.
    fn open_waiting(&mut self, now: Instant) {
        while self.open_handles < self.settings.max_open_files
            && let Some(key) = self.want_handle.pop_front()
        {
            if self.reopen(key, now) {
                self.dirty.insert(key);
            }
        }
        let free = self
            .settings
            .max_open_files
            .saturating_sub(self.open_handles);
        if free == 0 || self.waiting.is_empty() {
            return;
        }
        let due: Vec<PathBuf> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.retry_at.is_none_or(|t| now >= t))
            .map(|(p, _)| p.clone())
            .take(free)
            .collect();
        for p in due {
            if self.open_handles >= self.settings.max_open_files {
                break;
            }
            self.try_open(&p, now);
        }
    }

    /// Whether some file waits for a handle (and could take one now).
    fn has_waiters(&self) -> bool {
        !self.want_handle.is_empty() || self.waiting.values().any(|w| w.retry_at.is_none())
    }

    /// When files wait for handles and none is free: idle files (live, read to their end) give
    /// theirs back, the longest idle first, as many as are waited for.
    fn give_back_idle(&mut self, now: Instant) {
        let wanted = self.want_handle.len()
            + self
                .waiting
                .values()
                .filter(|w| w.retry_at.is_none_or(|t| now >= t))
                .count();
        let free = self
            .settings
            .max_open_files
            .saturating_sub(self.open_handles);
        if wanted <= free {
            return;
        }
        let mut idle: Vec<(Instant, FileKey)> = self
            .files
            .iter()
            .filter(|(_, t)| !t.more && t.watcher.can_close())
            .map(|(k, t)| (t.watcher.last_data_at(), *k))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle.into_iter().take(wanted - free) {
            self.close(key);
        }
    }

    /// Gives `key`'s handle back.
    fn close(&mut self, key: FileKey) {
        if let Some(t) = self.files.get_mut(&key)
            && t.watcher.is_open()
        {
            t.watcher.close();
            self.open_handles -= 1;
        }
    }

    /// Gets a handle for a tracked file that gave its own back. Returns whether it is open now;
    /// if not, it waits for one (or was released: deleted or moved away while closed).
    fn reopen(&mut self, key: FileKey, now: Instant) -> bool {
        let Some(t) = self.files.get_mut(&key) else {
            return false;
        };
        if t.watcher.is_open() {
            return true;
        }
        if self.open_handles >= self.settings.max_open_files {
            if !self.want_handle.contains(&key) {
                self.want_handle.push_back(key);
            }
            return false;
        }
        let old_path = t.watcher.path().to_path_buf();
        match t.watcher.reopen() {
            Ok(Reopened::Same) => {
                self.open_handles += 1;
                true
            }
            Ok(Reopened::Moved(path)) => {
                self.open_handles += 1;
                if self.paths.get(&old_path) == Some(&key) {
                    self.paths.remove(&old_path);
                }
                if discovery::owner(&self.inputs, &path).is_some() {
                    t.watcher.set_path(&path);
                    self.paths.insert(path.clone(), key);
                } else {
                    t.watcher.orphan(now);
                    self.timed.insert(key);
                }
                tracing::debug!(from = %old_path.display(), to = %path.display(), "file renamed while its handle was given back; found it");
                true
            }
            Ok(Reopened::Gone) => {
                // Deleted (or moved out of its directory) while closed: what it held past the
                // last read cannot be read; releasing counts it.
                tracing::debug!(path = %old_path.display(), "file gone while its handle was given back");
                t.watcher.mark_deleted();
                t.watcher.orphan(now);
                self.poll_file(key, now, true);
                false
            }
            Err(e) if crate::fdlimit::is_out_of_descriptors(&e) => {
                self.out_of_descriptors();
                if !self.want_handle.contains(&key) {
                    self.want_handle.push_back(key);
                }
                false
            }
            Err(e) => {
                tracing::debug!(path = %old_path.display(), error = %e, "cannot reopen file; will retry");
                t.next_poll = Some(now + ORPHAN_POLL_MAX);
                self.timed.insert(key);
                false
            }
        }
    }

    /// A new file is checked, before anything is read from it, for being a copy of a file
    /// already tracked in the same directory (copytruncate copies before it truncates): same
    /// first line, and the same bytes as far as both go. A copy is parked (not read: the
    /// original holds everything in it) until the original is truncated, then read on from
    /// where the original stopped ([`Self::find_copy`]). Returns whether to read the file now.
    fn classify(&mut self, key: FileKey, now: Instant) -> bool {
        let Some(t) = self.files.get(&key) else {
            return false;
        };
        if !t.unclassified && t.parked.is_none() {
            return true;
        }
        // New files of its directory tracked before it (an application's new log, written to
        // since, or a file found and not read yet) are classified first: this one may be their
        // copy. Not classified yet, they would be no candidate original, and a copytruncate's
        // copy of a file the agent had not read yet (its buffer full, or no read turn since it
        // was found) would be read as a file of its own while the original's truncation waits
        // for a copy in vain, then counts what the copy held as lost (wide seed 254).
        if t.unclassified {
            let dir = t.watcher.path().parent();
            let (mut earlier, mut stale) = (Vec::new(), Vec::new());
            for (&found, k) in self.unclassified.range(..t.found) {
                match self.files.get(k) {
                    Some(o) if o.unclassified && o.found == found => {
                        if o.watcher.path().parent() == dir {
                            earlier.push(*k);
                        }
                    }
                    _ => stale.push(found),
                }
            }
            for found in stale {
                self.unclassified.remove(&found);
            }
            // Oldest first: each is classified after its own elders.
            for k in earlier {
                self.classify(k, now);
            }
        }
        let Some(t) = self.files.get(&key) else {
            return false;
        };
        // The copy of a file truncated (or deleted) before its copy appeared?
        if t.unclassified && !self.pending_copies.is_empty() {
            match self.match_pending(key, now) {
                Some(true) => return true,
                Some(false) => {
                    if let Some(t) = self.files.get_mut(&key) {
                        t.next_poll = Some(now + ORPHAN_POLL_MIN);
                    }
                    self.timed.insert(key);
                    return false;
                }
                None => {}
            }
        }
        let Some(t) = self.files.get(&key) else {
            return false;
        };
        let Some(file) = t.watcher.handle() else {
            return false;
        };
        let size = file.metadata().map_or(0, |m| m.len());
        let taken = Fingerprint::take_with_head(file, size, t.watcher.birth())
            .ok()
            .flatten();
        let Some((_, head)) = taken else {
            // No whole first line yet: maybe a copy being written, if what it holds so far is
            // how a tracked file in its directory begins (empty: nothing to read anyway).
            // Held back, but not for long.
            if size == 0 {
                // A read finds nothing (and lets the file count as idle); it stays to be
                // classified when it has bytes. That read must not take bytes written since
                // this look (copytruncate creates its copy empty, then fills it): they would be
                // read unclassified, as a file of its own, and the original's lines in them
                // shipped twice (the rotation model's wide seed 27). It reads none; bytes that
                // arrived make it look again.
                let t = self.files.get_mut(&key).expect("looked up above");
                t.watcher.hold();
                return true;
            }
            if self.begins_like_another(key, size)
                && now.saturating_duration_since(t.watcher.last_data_at()) < CLASSIFY_WAIT
            {
                let t = self.files.get_mut(&key).expect("looked up above");
                t.next_poll = Some(now + ORPHAN_POLL_MIN);
                self.timed.insert(key);
                return false;
            }
            return self.unpark(key);
        };
        let head = Some(head);
        let dir = t.watcher.path().parent().map(Path::to_path_buf);
        let wanted = t.parked;
        // Candidate originals: files with its first line in its directory, classified ones
        // first. A file found before it and not classified yet is one too — classified just
        // above, it was held back (found truncated to nothing before its first read: its
        // first line is the one it was opened with), and this is its copy.
        let mut candidates: Vec<(bool, u64, FileKey)> = self
            .files
            .iter()
            .filter(|(k, o)| {
                **k != key
                    && o.parked.is_none()
                    && (!o.unclassified || o.found < t.found)
                    && o.watcher.head().is_some()
                    && o.watcher.head() == head
                    && o.watcher.path().parent().map(Path::to_path_buf) == dir
                    && wanted.is_none_or(|w| w == **k)
            })
            .map(|(k, o)| (o.unclassified, o.found, *k))
            .collect();
        candidates.sort_unstable();
        let mut copy_of = None;
        for (_, _, k) in &candidates {
            let (k, o) = (k, &self.files[k]);
            let Some(orig) = o.watcher.handle() else {
                // The original's handle was given back (descriptor budget): the bytes before
                // where it was last read to its end are what a copy must hold at that place.
                if let Some(tp) = o.watcher.tail()
                    && size >= tp.offset
                    && tp.matches(file).unwrap_or(false)
                {
                    copy_of = Some(*k);
                    break;
                }
                continue;
            };
            // The original has been truncated (shorter than what was read, or other first
            // bytes) without the agent noticing yet: a file with its first line that appears
            // now (or was held back as its copy) is its copy; the original's next read notices
            // the truncation and reads the copy on from where the original stopped.
            // So has one that no longer holds the bytes it was last read to its end with
            // (truncated and refilled past that, with the same first line).
            let truncated = |orig: &fs::File| {
                orig.metadata().map_or(0, |m| m.len()) < o.watcher.line_pos()
                    || o.watcher
                        .fingerprint()
                        .is_some_and(|fp| !fp.matches(orig).unwrap_or(true))
                    || o.watcher
                        .tail()
                        .is_some_and(|tp| !tp.matches(orig).unwrap_or(true))
            };
            if truncated(orig) {
                copy_of = Some(*k);
                break;
            }
            // The original as it is: a copy holds what it holds, no more (a file longer than
            // an untruncated original, or with other bytes, is another file that began the
            // same way — two workers' logs with the same banner — and is read as itself).
            let osize = orig.metadata().map_or(0, |m| m.len());
            #[cfg(test)]
            watcher::hooks::before_read(o.watcher.path(), 0);
            let same = size <= osize
                && matches!(
                    (fingerprint::TailPrint::take(file, size), fingerprint::TailPrint::take(orig, size)),
                    (Ok(Some(a)), Ok(Some(b))) if a == b
                );
            // Or truncated while they were compared (copytruncate truncates right after it
            // copies): the bytes no longer there to compare were the copy's. Read as itself,
            // the copy shipped the original's lines again (the pinned 300,000-line regression,
            // under load: 40,000 duplicates, one copy's worth).
            if same || truncated(orig) {
                copy_of = Some(*k);
                break;
            }
        }
        match copy_of {
            Some(orig) => {
                let t = self.files.get_mut(&key).expect("looked up above");
                if t.parked.is_none() {
                    tracing::debug!(path = %t.watcher.path().display(), "new file is a copy of a tracked one; not reading it while the original is");
                }
                t.parked = Some(orig);
                t.unclassified = false;
                false
            }
            None if wanted.is_some() && !self.files.contains_key(&wanted.unwrap_or_default()) => {
                // Its original was read to its end and released: everything in the copy was
                // read from there. It goes on from its end, as itself.
                let t = self.files.get_mut(&key).expect("looked up above");
                t.parked = None;
                if t.watcher.skip_to(size).is_ok() {
                    self.out.push(Emitted::Position {
                        state: state_of(&t.watcher),
                        offset: size,
                    });
                }
                true
            }
            None => {
                if let Some(t) = self.files.get(&key) {
                    tracing::debug!(path = %t.watcher.path().display(), size, candidates = candidates.len(), "new file is no copy of a tracked one; reading it as itself");
                }
                self.unpark(key)
            }
        }
    }

    /// Whether the first `size` bytes of `key` (less than a first line) are also how another
    /// tracked, open file in the same directory begins.
    fn begins_like_another(&self, key: FileKey, size: u64) -> bool {
        let Some(t) = self.files.get(&key) else {
            return false;
        };
        let Some(file) = t.watcher.handle() else {
            return false;
        };
        let n = size.min(fingerprint::FINGERPRINT_WINDOW);
        let Ok(Some(mine)) = fingerprint::head_of(file, n) else {
            return false;
        };
        let dir = t.watcher.path().parent();
        self.files.iter().any(|(k, o)| {
            *k != key
                && !o.unclassified
                && o.parked.is_none()
                && o.watcher.path().parent() == dir
                && o.watcher
                    .handle()
                    .is_some_and(|f| fingerprint::head_of(f, n).ok().flatten() == Some(mine))
        })
    }

    /// Not a copy (or no longer one): read it as itself, from 0.
    fn unpark(&mut self, key: FileKey) -> bool {
        if let Some(t) = self.files.get_mut(&key) {
            // A new file read from its start is in the checkpoint from now on (its identity,
            // offset 0), not only once a batch of it is acknowledged: an agent killed before
            // that finds it again at start — renamed out of the glob, or truncated after a copy
            // was made, while the agent was stopped.
            if t.unclassified && t.watcher.line_pos() == 0 && t.watcher.generation() == 0 {
                // With its fingerprint if its first line is whole (opened empty, it has none
                // yet): a restart tells a truncation of this content by it, and looks for the
                // copy holding lines that were in flight (narrow seed 109).
                t.watcher.identify_now();
                self.out.push(Emitted::Position {
                    state: state_of(&t.watcher),
                    offset: 0,
                });
            }
            t.unclassified = false;
            t.parked = None;
        }
        true
    }

    /// After `w.original` was truncated (or deleted): its old content may survive in a copy
    /// in the same directory (copytruncate), under any name, in a glob or not. A copy is
    /// recognised by its first line and by the bytes before the original's last tail print;
    /// it is then read on from where the original stopped, under the original's origin, so
    /// that what the original had not read yet is not lost, and what it had is not shipped
    /// again. Not found yet: waited for until `w.until` (`rotate_wait`), then what the
    /// original held unread is counted as lost.
    fn find_copy(&mut self, w: CopyWanted, now: Instant) {
        // Adopted already: the agent was stopped after the checkpoint recorded the copy (read
        // under the original's origin) and before it recorded the wait's end. Over now,
        // counting only what the copy does not hold (not all the original held unread: the
        // copy's lines were read, and counting them lost said so wrongly).
        if let Some(size) = self.adopted_size(&w) {
            let lost = w
                .print
                .lost
                .saturating_sub(size.saturating_sub(w.print.from));
            self.resolve(w, lost);
            return;
        }
        match self.look_for_copy(&w) {
            Some((path, meta)) => self.adopt_copy(w, &path, &meta, now),
            None if now < w.until => {
                if !self.pending_copies.iter().any(|p| p.print == w.print) {
                    tracing::debug!(path = %w.path, "no copy of the truncated file yet; waiting for one");
                    self.pending_copies.push(w);
                }
            }
            None => {
                let lost = w.print.lost;
                self.resolve(w, lost);
            }
        }
    }

    /// The size of the copy of `w`'s content if one is tracked already (read under that
    /// content's origin).
    ///
    /// Device, inode and generation are not enough: a file deleted and a new one given its
    /// inode number both start at generation 0, and the old file's copy, read under the old
    /// file's origin, is no copy of the new one (taken for it, the new file's copy was read as
    /// a file of its own, and its lines shipped twice: the rotation model's wide seed 37). The
    /// fingerprint tells the contents apart, as [`copy_origin`] gives it to a copy.
    fn adopted_size(&self, w: &CopyWanted) -> Option<u64> {
        let o = w.print.origin;
        self.files
            .iter()
            .find(|(k, t)| {
                **k != w.original
                    && t.watcher.origin().is_some_and(|id| {
                        (id.dev, id.inode, id.generation) == (o.dev, o.inode, o.generation)
                            && (id.fingerprint == o.fingerprint
                                || t.watcher.handle().is_some_and(|f| {
                                    let size = f.metadata().map_or(0, |m| m.len());
                                    copy_origin(&w.print, f, size).fingerprint == id.fingerprint
                                }))
                    })
            })
            .map(|(_, t)| {
                t.watcher
                    .handle()
                    .and_then(|f| f.metadata().ok())
                    .map_or(t.watcher.seen_size(), |m| m.len())
            })
    }

    /// Reads the copy at `path` on from where the original stopped, under its origin.
    fn adopt_copy(&mut self, w: CopyWanted, path: &Path, meta: &fs::Metadata, now: Instant) {
        let ckey = (meta.dev(), meta.ino());
        let lost_all = w.print.lost;
        if !self.files.contains_key(&ckey) {
            if self
                .open_file(
                    path,
                    w.input,
                    meta,
                    StartAt::Beginning { generation: 0 },
                    now,
                )
                .is_err()
            {
                self.resolve(w, lost_all);
                return;
            }
            if discovery::owner(&self.inputs, path).is_some() {
                self.paths.insert(path.to_path_buf(), ckey);
            } else if let Some(t) = self.files.get_mut(&ckey) {
                // Outside every glob: read to its end, then released like a rotated file.
                t.watcher.orphan(now);
                self.timed.insert(ckey);
            }
        }
        let Some(t) = self.files.get_mut(&ckey) else {
            return;
        };
        t.unclassified = false;
        t.parked = None;
        let size = meta.len();
        let from = w.print.from;
        // Read on from where the original stopped, or from the copy's end if the original was
        // read past everything it holds. Under the original's origin either way: the copy's
        // position then travels in the original's lane, written to the checkpoint only once
        // the original's lines before it are acknowledged. (Written at once, as a file of its
        // own, it said "read to its end" while those lines were still in flight: an agent
        // killed then never read them again — the copy was the only place left that held
        // them; the rotation model's narrow seed 109.)
        let offset = from.min(size);
        let origin = Some(match fs::File::open(path) {
            Ok(file) => copy_origin(&w.print, &file, size),
            Err(_) => FileId::from(w.print.origin),
        });
        if t.watcher.skip_to(offset).is_err() {
            self.resolve(w, lost_all);
            return;
        }
        t.watcher.set_origin(origin);
        tracing::info!(path = %path.display(), original = %w.path, from = offset, "copy of a truncated file found; reading it on from where the original stopped");
        self.out.push(Emitted::Position {
            state: state_of(&t.watcher),
            offset,
        });
        self.dirty.insert(ckey);
        // What the original held past the copy's end and was never read is gone.
        let lost = lost_all.saturating_sub(size.saturating_sub(from));
        self.resolve(w, lost);
    }

    /// The wait for `w`'s copy is over (found, or timed out): the original forgets it, and
    /// `lost` bytes are counted — by the shipper once the checkpoint that forgets it is
    /// written, if it was in the checkpoint; at once otherwise.
    fn resolve(&mut self, w: CopyWanted, lost: u64) {
        if let Some(t) = self.files.get_mut(&w.original) {
            t.watcher.remove_pending(&w.print);
        }
        if w.persisted {
            self.out.push(Emitted::CopyResolved {
                key: w.original,
                lane: w.lane(),
                origin: w.print.origin.into(),
                lost,
                input: w.input,
                path: w.path,
            });
        } else if lost > 0 {
            self.stats[w.input].unread_bytes += lost;
            count_unread(&self.inputs[w.input].name, &w.path, lost, false);
        }
    }

    /// Looks for the copies still waited for once more; those whose wait is over after that
    /// are resolved as lost. With `dir`, only those of that directory.
    fn retry_pending(&mut self, now: Instant, dir: Option<&Path>) {
        if self.pending_copies.is_empty() {
            return;
        }
        let (mine, others): (Vec<CopyWanted>, Vec<CopyWanted>) =
            std::mem::take(&mut self.pending_copies)
                .into_iter()
                .partition(|w| dir.is_none_or(|d| w.dir == d));
        self.pending_copies = others;
        for w in mine {
            self.find_copy(w, now);
        }
    }

    /// Copies whose wait is over get a last look, then are resolved.
    fn expire_pending(&mut self, now: Instant) {
        if !self.pending_copies.iter().any(|w| now >= w.until) {
            return;
        }
        let (due, rest): (Vec<CopyWanted>, Vec<CopyWanted>) =
            std::mem::take(&mut self.pending_copies)
                .into_iter()
                .partition(|w| now >= w.until);
        self.pending_copies = rest;
        for w in due {
            self.find_copy(w, now);
        }
    }

    /// Whether a new file `key` (not read yet) is the copy of a truncated or deleted file
    /// whose copy is waited for: `Some(true)` it was adopted (read it on), `Some(false)` it
    /// may still become one (a copy being written: held back for a moment), `None` it is not.
    fn match_pending(&mut self, key: FileKey, now: Instant) -> Option<bool> {
        let t = self.files.get(&key)?;
        let file = t.watcher.handle()?;
        let dir = t.watcher.path().parent()?.to_path_buf();
        let meta = file.metadata().ok()?;
        let size = meta.len();
        let young = now.saturating_duration_since(t.watcher.last_data_at()) < CLASSIFY_WAIT;
        let mut hold = false;
        for i in 0..self.pending_copies.len() {
            let w = &self.pending_copies[i];
            if w.dir != dir {
                continue;
            }
            // Its first line decides, once it is whole (a copy's first write holds it: a copy
            // is not held back before that, and a new file need not wait).
            match Fingerprint::take(file, size).ok().flatten() {
                None => continue,
                Some(fp) => {
                    if fp.len != w.print.head_len
                        || fingerprint::head_of(file, fp.len).ok().flatten() != Some(w.print.head)
                    {
                        continue;
                    }
                }
            }
            let short = size < w.print.tail.offset;
            // Shorter than the tail print, with the original's first line, new and not read
            // yet: the original's lines written after the copy was made were read before the
            // truncation (as `look_for_copy` takes it at the next scan). Held back while it may
            // still be a copy being written; then taken as a copy that holds nothing unread,
            // never read again from 0.
            if (short && !young) || (!short && w.print.tail.matches(file).unwrap_or(false)) {
                let w = self.pending_copies.swap_remove(i);
                let path = self.files.get(&key)?.watcher.path().to_path_buf();
                self.adopt_copy(w, &path, &meta, now);
                return Some(true);
            }
            hold |= young && short;
        }
        hold.then_some(false)
    }

    /// A file in `w.dir` other than the original, not read as a file of its own yet, with the
    /// original's first line and tail print.
    fn look_for_copy(&self, w: &CopyWanted) -> Option<(PathBuf, fs::Metadata)> {
        let tail = w.print.tail;
        let entries = fs::read_dir(&w.dir).ok()?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let k = (meta.dev(), meta.ino());
            if !meta.is_file() || k == w.original {
                continue;
            }
            let tracked = self.files.get(&k);
            if let Some(t) = tracked
                && !(t.unclassified || t.parked == Some(w.original))
            {
                continue;
            }
            // Shorter than the tail print: the original's lines written after the copy was
            // made were read before the truncation. Such a copy is known only if the agent saw
            // it appear — held back as a copy of this original (its bytes compared while the
            // original was whole), or new and not read yet with the original's first line — and
            // holds nothing that was not read from the original.
            let short = meta.len() < tail.offset;
            if short && tracked.is_none() {
                continue;
            }
            let Ok(file) = fs::File::open(entry.path()) else {
                continue;
            };
            let head = fingerprint::head_of(&file, w.print.head_len).ok().flatten();
            if head == Some(w.print.head) && (short || tail.matches(&file).unwrap_or(false)) {
                return Some((entry.path(), meta));
            }
            tracing::debug!(path = %entry.path().display(), size = meta.len(), same_head = head == Some(w.print.head), short, tail = ?tail, "not a copy: other bytes");
        }
        None
    }

    /// One log line when the set of files waiting for a handle changes (or every
    /// [`WAIT_REPORT_EVERY`] while it does not), never one per file per attempt; the gauge
    /// `ferry_agent_files_waiting` says the same at every scan.
    fn report_waiting(&mut self, now: Instant) {
        let failed = self.waiting.values().filter(|w| w.error.is_some()).count();
        let budget = self.waiting.len() - failed;
        metrics::gauge!("ferry_agent_files_waiting").set(self.waiting.len() as f64);
        metrics::gauge!("ferry_agent_files_open").set(self.open_handles as f64);
        let last = &self.last_wait_report;
        let was = (last.budget, last.failed);
        if (budget, failed) == (0, 0) {
            if was != (0, 0) {
                tracing::info!("every file found is open");
                self.last_wait_report = WaitReport::default();
            }
            return;
        }
        let due = last
            .at
            .is_none_or(|t| now.saturating_duration_since(t) >= WAIT_REPORT_EVERY);
        // Repeat at once only when more files fail than before (a new problem to look at).
        if !due && failed <= last.failed && (was.0 > 0) == (budget > 0) {
            return;
        }
        if failed > 0 {
            let (path, error) = self
                .waiting
                .iter()
                .find_map(|(p, w)| w.error.as_ref().map(|e| (p, e)))
                .map_or((String::new(), String::new()), |(p, e)| {
                    (p.display().to_string(), e.clone())
                });
            tracing::warn!(
                files = failed,
                first = %path,
                error = %error,
                "files cannot be opened; retrying with backoff"
            );
        }
        if budget > 0 {
            tracing::info!(
                files = budget,
                open = self.open_handles,
                max_open_files = self.settings.max_open_files,
                "files wait for a descriptor; idle files give theirs back"
            );
        }
        self.last_wait_report = WaitReport {
            at: Some(now),
            budget,
            failed,
        };
    }

    fn open_file(
        &mut self,
        path: &Path,
        input: usize,
        meta: &fs::Metadata,
        fresh: StartAt,
        now: Instant,
    ) -> std::io::Result<()> {
        let key = (meta.dev(), meta.ino());
        // Its inode was freed and given to another file while the agent was stopped (another
        // birth time): that file is new, and the checkpointed one is gone.
        if let Some(cp) = self.resume.get(&key)
            && let Some(birth) = cp.birth
            && birth != fingerprint::birth_ns(&fs::File::open(path)?)
        {
            tracing::info!(path = %path.display(), was = %cp.path, "inode of a checkpointed file reused by a new file while the agent was stopped");
            self.forget_checkpointed(key, now);
        }
        let inp = &self.inputs[input];
        let mut announce = false;
        let mut print = None;
        let start = match self.resume.get(&key) {
            Some(cp) => {
                let same = match (cp.fingerprint, cp.probe) {
                    (Some(fp), _) => fp.matches(&fs::File::open(path)?)?,
                    // Recorded with half a first line: it must still begin with it (else it
                    // was truncated while the agent was stopped, and its copy holds the line;
                    // narrow seed 367).
                    (None, Some(p)) if cp.offset == 0 => Fingerprint {
                        len: p.len,
                        checksum: p.checksum,
                    }
                    .matches(&fs::File::open(path)?)?,
                    (None, _) => true,
                };
                if same && meta.len() >= cp.offset {
                    StartAt::Resume {
                        fingerprint: cp.fingerprint,
                        generation: cp.generation,
                        offset: cp.offset,
                    }
                } else {
                    // Truncated while the agent was stopped, or the inode now holds another
                    // file: from the beginning, as a new generation.
                    tracing::info!(path = %path.display(), "file changed while the agent was stopped; reading it from the beginning");
                    announce = true;
                    // Its old content may survive in a copy (copytruncate while stopped).
                    // What it held past the checkpoint is unknown (not counted); it is kept
                    // with the file's checkpoint while the copy is waited for.
                    if let Some(p) = checkpointed_print(cp, inp.rotate_wait) {
                        print = Some(p);
                        self.copies_wanted.push(CopyWanted {
                            original: key,
                            print: p,
                            until: now + inp.rotate_wait,
                            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                            input,
                            path: Arc::from(path.to_string_lossy().as_ref()),
                            persisted: true,
                        });
                    }
                    StartAt::Beginning {
                        generation: cp.generation.wrapping_add(1),
                    }
                }
            }
            None => {
                announce = fresh == StartAt::End;
                fresh
            }
        };
        let mut watcher =
            FileWatcher::open(path, start, inp.max_line_bytes, inp.line_flush_timeout, now)?;
        let unclassified = matches!(start, StartAt::Beginning { generation: 0 })
            && !self.resume.contains_key(&key);
        if let Some(cp) = self.resume.get(&key)
            && matches!(start, StartAt::Resume { .. })
        {
            watcher.set_origin(cp.origin.map(Into::into));
            // Checkpointed at 0 before its first line was whole (or before its first batch
            // was acknowledged): its first line, whole now, is its identity, fixed at once (as
            // the read from 0 would fix it, so lines in flight at the stop keep theirs). Until
            // it is, it is no candidate original: a copy made while the agent was stopped,
            // found in the same scan, would be read as a file of its own (the copytruncate
            // fuzz with kills, seed 65).
            if cp.offset == 0 && cp.fingerprint.is_none() {
                watcher.identify_now();
            }
            // The entry's tail print, or else one taken now at its offset (the fingerprint
            // matched and the file is that long: those are the bytes acknowledged): a copy
            // made and its original truncated before this run reads the file once is still
            // recognised by it.
            let tail = cp.tail.filter(|t| t.offset <= cp.offset).or_else(|| {
                (cp.offset > 0)
                    .then(|| watcher.tail_at(cp.offset))
                    .flatten()
            });
            watcher.set_tail(tail);
            // A copy of its content before an earlier truncation is still waited for.
            for p in &cp.pending {
                watcher.add_pending(*p);
            }
        }
        if let Some(p) = print {
            // Earlier contents still waited for stay with the file too.
            if let Some(cp) = self.resume.get(&key) {
                for p in &cp.pending {
                    watcher.add_pending(*p);
                }
            }
            watcher.add_pending(p);
        }
        self.resume.remove(&key);
        if announce {
            self.out.push(Emitted::Position {
                state: state_of(&watcher),
                offset: watcher.line_pos(),
            });
        }
        tracing::debug!(path = %path.display(), ?start, "tailing file");
        let multiline = Joiner::for_input(inp, path);
        self.found += 1;
        if unclassified {
            self.unclassified.insert(self.found, watcher.key());
        }
        self.files.insert(
            watcher.key(),
            Tracked {
                input,
                watcher,
                multiline,
                batcher: Batcher::new(self.settings.limits, self.pool.clone()),
                more: false,
                behind: 0,
                unclassified,
                parked: None,
                compressed: None,
                next_poll: None,
                backoff: ORPHAN_POLL_MIN,
                found: self.found,
            },
        );
        self.open_handles += 1;
        Ok(())
    }

    /// Reads every file that may have data, each up to the read budget and at most `allowance`
    /// bytes in all (the room left in the agent's buffer). Returns the bytes read.
    pub fn read_turn(&mut self, now: Instant, allowance: u64) -> u64 {
        if self.has_waiters() {
            self.give_back_idle(now);
            self.open_waiting(now);
        }
        let mut due: HashSet<FileKey> = self.dirty.drain().collect();
        for (k, t) in &self.files {
            if t.more || t.next_poll.is_some_and(|p| now >= p) {
                due.insert(*k);
            }
        }
        let keys: Vec<FileKey> = due.into_iter().collect();
        let mut total = 0;
        for (i, key) in keys.iter().enumerate() {
            if total >= allowance {
                // Out of room: remember the rest for when acknowledgements free some.
                self.dirty.extend(keys[i..].iter().copied());
                break;
            }
            let budget = self.settings.read_budget.min(allowance - total);
            total += self.read_file(*key, now, budget);
        }
        // Files read to their end gave their handles back: the waiting ones get them now
        // (and are marked to be read, so the caller's loop goes on).
        if self.has_waiters() {
            self.open_waiting(now);
        }
        total
    }

    fn read_file(&mut self, key: FileKey, now: Instant, budget: u64) -> u64 {
        if !self.reopen(key, now) {
            return 0;
        }
        if !self.classify(key, now) {
            // Held back (a copy parked, or being written): not read again until an event, its
            // poll time or its original's truncation says so.
            if let Some(t) = self.files.get_mut(&key) {
                t.more = false;
            }
            return 0;
        }
        let before = self.held_by(key);
        let (bytes, release) = self.read_file_inner(key, now, budget);
        if release {
            self.poll_file_inner(key, now, true);
        } else if self.has_waiters()
            && self
                .files
                .get(&key)
                .is_some_and(|t| !t.more && t.watcher.can_close())
        {
            // Read to its end while others wait for a handle: give this one back.
            self.close(key);
        }
        self.held_bytes = (self.held_bytes + self.held_by(key)).saturating_sub(before);
        self.find_copies(now);
        bytes
    }

    fn find_copies(&mut self, now: Instant) {
        for w in std::mem::take(&mut self.copies_wanted) {
            self.find_copy(w, now);
        }
    }

    /// Bytes read from `key` and held in memory before a batch: an incomplete line, a multiline
    /// record. Memory, not file span: the skipped tail of an over-long line is not held, and
    /// counting it filled the buffer with a 10 MiB line nobody kept, so reading stopped until
    /// the line's flush timeout cut it in two.
    fn held_by(&self, key: FileKey) -> u64 {
        self.files.get(&key).map_or(0, |t| {
            t.watcher.held_bytes() + t.multiline.as_ref().map_or(0, Joiner::held_bytes)
        })
    }

    fn poll_file(&mut self, key: FileKey, now: Instant, release_all: bool) {
        let before = self.held_by(key);
        self.poll_file_inner(key, now, release_all);
        self.held_bytes = (self.held_bytes + self.held_by(key)).saturating_sub(before);
    }

    /// Returns the bytes read and whether the file must be released now.
    fn read_file_inner(&mut self, key: FileKey, now: Instant, budget: u64) -> (u64, bool) {
        let Self {
            files,
            inputs,
            buf,
            sealed,
            out,
            stats,
            settings,
            timed,
            open_bytes,
            copies_wanted,
            ..
        } = self;
        let Some(t) = files.get_mut(&key) else {
            return (0, false);
        };
        let input = &inputs[t.input];
        let st = &mut stats[t.input];
        let mut total = 0;
        let mut release = false;
        for _attempt in 0..2 {
            let Tracked {
                watcher,
                multiline,
                batcher,
                ..
            } = t;
            let mut route = |id: FileId, off: u64, line: Line<'_>| {
                st.lines += 1;
                st.bytes += line.span;
                st.truncated += u64::from(line.truncated);
                route_line(
                    multiline,
                    batcher,
                    &settings.agent_id,
                    &input.fields,
                    id,
                    off,
                    line,
                    now,
                    sealed,
                    open_bytes,
                );
            };
            // A content whose first line was incomplete when it was put in the checkpoint (at
            // offset 0, without a fingerprint): the read that completes the line fixes its
            // fingerprint, and the checkpoint learns it at once (nothing of it was handed out
            // yet, so offset 0 skips nothing). Else a restart before the first
            // acknowledgement cannot tell this content from one written after a copytruncate
            // (wide seed 114): it would resume the new content as this one and read the copy
            // holding this one as a file of its own.
            let unidentified = watcher.fingerprint().is_none() && watcher.line_pos() == 0;
            let outcome = watcher.read(buf, budget, now, &mut route);
            if unidentified && watcher.fingerprint().is_some() {
                out.push(Emitted::Position {
                    state: state_of(watcher),
                    offset: 0,
                });
            }
            match outcome {
                Ok(ReadOutcome::Truncated) => {
                    // A copy of the old content may be next to it (copytruncate): it can be
                    // recognised if the file has a head and a tail print.
                    // (Nothing read from it: its copy is read from 0.)
                    // The print a copy must match: the last one of what was handed out, or
                    // none needed if nothing was — taken before the incomplete line is handed
                    // out below. (Taken after, a first line found half read had nothing
                    // printed, and its copy, not looked for, was read from 0: the half
                    // shipped twice.)
                    let tail = watcher
                        .tail()
                        .or((watcher.line_pos() == 0).then_some(fingerprint::TailPrint::EMPTY));
                    let copyable =
                        watcher.truncation_is_ours() && watcher.head().is_some() && tail.is_some();
                    // Hand out everything of the old content under its old identity first (an
                    // incomplete last line too: the copy, if found, is read on right after it).
                    watcher.flush_partial(now, true, &mut route);
                    if let Some(ml) = multiline.as_mut() {
                        let id = watcher.file_id();
                        ml.flush(&mut |o, rec, extra| {
                            push_batch(
                                batcher,
                                &settings.agent_id,
                                &input.fields,
                                id,
                                o,
                                rec,
                                extra,
                                now,
                                sealed,
                                open_bytes,
                            )
                        });
                    }
                    seal_open(batcher.flush(), open_bytes, sealed);
                    // Handed out with the old content's identity (fingerprint, head, its last
                    // tail print), while the watcher still has it: drained after the restart
                    // below, their checkpoint said "this generation, no identity", and an agent
                    // killed before the new generation's position was written resumed the new
                    // content as the old (or, shorter, could not look for the copy, and read
                    // it again from 0 as a file of its own).
                    drain_sealed(sealed, out, t.input, watcher);
                    if !watcher.truncation_is_ours() {
                        // A rotated-away file being truncated is being reused for other content
                        // (e.g. the next copytruncate's copy): its own content is done.
                        tracing::debug!(path = %watcher.path().display(), "rotated file truncated; releasing it");
                        release = true;
                        break;
                    }
                    let before = watcher.unread_bytes();
                    let from = watcher.line_pos();
                    let print = tail
                        .filter(|_| copyable)
                        .and_then(|tail| print_with(watcher, tail, from, 0, input.rotate_wait));
                    watcher.restart_after_truncation();
                    let lost = watcher.unread_bytes() - before;
                    if let Some(mut print) = print {
                        print.lost = lost;
                        // Counted once it is known what the copy holds (kept with the file's
                        // checkpoint meanwhile, so a restart still waits for the copy).
                        watcher.add_pending(print);
                        copies_wanted.push(CopyWanted {
                            original: key,
                            print,
                            until: now + input.rotate_wait,
                            dir: watcher
                                .path()
                                .parent()
                                .map(Path::to_path_buf)
                                .unwrap_or_default(),
                            input: t.input,
                            path: watcher.path_str().clone(),
                            persisted: true,
                        });
                    } else if lost > 0 {
                        st.unread_bytes += lost;
                        count_unread(&input.name, watcher.path_str(), lost, false);
                    }
                    tracing::info!(path = %watcher.path().display(), generation = watcher.generation(), "file truncated; reading it again from the start");
                    out.push(Emitted::Position {
                        state: state_of(watcher),
                        offset: 0,
                    });
                    t.more = true;
                    continue;
                }
                Ok(ReadOutcome::More { bytes }) => {
                    total += bytes;
                    t.behind += bytes;
                    t.more = true;
                    t.next_poll = None;
                }
                Ok(ReadOutcome::Compressed(kind)) => {
                    tracing::debug!(path = %watcher.path().display(), format = kind.name(), "compressed file; skipping it");
                    t.compressed = Some(kind);
                    release = true;
                }
                Ok(ReadOutcome::Eof { bytes }) => {
                    total += bytes;
                    t.more = false;
                    // Caught up with a backlog: its last batch holds lines that were waiting
                    // already, and lingering would only delay them (for a file found with
                    // content, 200 ms on top of its read). A file read as it is written
                    // reaches its end with a few lines each time, and those batches linger
                    // to fill up as before.
                    let behind = std::mem::take(&mut t.behind) + bytes;
                    if behind >= settings.backlog_bytes
                        && seal_open(batcher.flush(), open_bytes, sealed)
                    {
                        st.sealed_after_backlog += 1;
                    }
                    // A live file is read again on its next event or rescan. An orphaned one
                    // gets no events of its own any more: look again with EOF backoff until
                    // its rotate wait is over.
                    t.next_poll = None;
                    if watcher.is_orphaned() {
                        t.backoff = if bytes > 0 {
                            ORPHAN_POLL_MIN
                        } else {
                            (t.backoff * 2).min(ORPHAN_POLL_MAX)
                        };
                        t.next_poll = Some(now + t.backoff);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %watcher.path().display(), error = %e, "read failed; will retry");
                    t.more = false;
                    t.next_poll = Some(now + ORPHAN_POLL_MAX);
                    timed.insert(key);
                }
            }
            break;
        }
        drain_sealed(sealed, out, t.input, &t.watcher);
        if t.watcher.is_orphaned()
            || t.watcher.partial_deadline().is_some()
            || t.batcher.deadline().is_some()
            || t.multiline.as_ref().is_some_and(|m| m.deadline().is_some())
        {
            timed.insert(key);
        }
        (total, release)
    }

    /// Ships what timed out (partial lines, multiline records, lingering batches) and releases
    /// orphaned files that were read to their end and stayed quiet.
    pub fn poll_timeouts(&mut self, now: Instant) {
        self.expire_pending(now);
        let keys: Vec<FileKey> = self.timed.iter().copied().collect();
        for key in keys {
            // One last read before closing a rotated file: its writer may have added lines
            // since the last look. If it did, the file is not done yet.
            if self.files.get(&key).is_some_and(|t| t.watcher.is_done(now)) {
                self.read_file(key, now, self.settings.read_budget);
            }
            self.poll_file(key, now, false);
        }
    }

    fn poll_file_inner(&mut self, key: FileKey, now: Instant, release_all: bool) {
        let Self {
            files,
            paths,
            inputs,
            sealed,
            out,
            settings,
            timed,
            open_bytes,
            stats,
            open_handles,
            skipped,
            pending_copies,
            ..
        } = self;
        let Some(t) = files.get_mut(&key) else {
            timed.remove(&key);
            return;
        };
        let input = &inputs[t.input];
        let release = release_all || t.watcher.is_done(now);
        {
            let Tracked {
                watcher,
                multiline,
                batcher,
                ..
            } = t;
            let st = &mut stats[t.input];
            let mut route = |id: FileId, off: u64, line: Line<'_>| {
                st.lines += 1;
                st.bytes += line.span;
                st.truncated += u64::from(line.truncated);
                route_line(
                    multiline,
                    batcher,
                    &settings.agent_id,
                    &input.fields,
                    id,
                    off,
                    line,
                    now,
                    sealed,
                    open_bytes,
                );
            };
            watcher.flush_partial(now, release, &mut route);
            if let Some(ml) = multiline.as_mut() {
                let id = watcher.file_id();
                let mut push = |o: u64, rec: Line<'_>, extra: Extra<'_>| {
                    push_batch(
                        batcher,
                        &settings.agent_id,
                        &input.fields,
                        id,
                        o,
                        rec,
                        extra,
                        now,
                        sealed,
                        open_bytes,
                    )
                };
                if release {
                    ml.flush(&mut push);
                } else if ml.deadline().is_some_and(|d| now >= d) && !watcher.is_idle() {
                    // Lines that may continue the record are still in the file (or held as an
                    // incomplete line): it has not timed out, reading is behind.
                    ml.defer(now);
                } else {
                    ml.poll(now, &mut push);
                }
            }
            let s = if release {
                batcher.flush()
            } else {
                batcher.poll(now)
            };
            seal_open(s, open_bytes, sealed);
            drain_sealed(sealed, out, t.input, watcher);
        }
        if release {
            let unread = if t.compressed.is_some() {
                0
            } else {
                t.watcher.lag_bytes()
            };
            if let Some(kind) = t.compressed {
                metrics::counter!("ferry_agent_files_skipped_total", "reason" => "compressed", "input" => input.name.clone(), "format" => kind.name())
                    .increment(1);
                skipped.insert(key, t.watcher.lag_bytes());
            }
            // Deleted: its content may survive in a copy (copied, then the original deleted),
            // which may appear within `rotate_wait`; what it held unread is counted then.
            let print = (t.compressed.is_none() && t.watcher.is_deleted())
                .then(|| print_of(&t.watcher, t.watcher.line_pos(), unread, input.rotate_wait))
                .flatten();
            if let Some(print) = print {
                let w = CopyWanted {
                    original: key,
                    print,
                    until: now + input.rotate_wait,
                    dir: t
                        .watcher
                        .path()
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    input: t.input,
                    path: t.watcher.path_str().clone(),
                    persisted: false,
                };
                if !pending_copies.iter().any(|p| p.print == w.print) {
                    pending_copies.push(w);
                }
            } else if unread > 0 {
                stats[t.input].unread_bytes += unread;
                count_unread(&input.name, t.watcher.path_str(), unread, false);
            }
            tracing::debug!(path = %t.watcher.path().display(), "released file");
            // Its lag gauge would otherwise keep its last value.
            metrics::gauge!("ferry_agent_file_lag_bytes", "input" => input.name.clone(), "path" => t.watcher.path_str().to_string())
                .set(0.0);
            let lane = t.watcher.origin().map_or(key, |o| (o.dev, o.inode));
            out.push(Emitted::Released { key, lane });
            if paths.get(t.watcher.path()) == Some(&key) {
                paths.remove(t.watcher.path());
            }
            if t.watcher.is_open() {
                *open_handles -= 1;
            }
            files.remove(&key);
            timed.remove(&key);
            return;
        }
        let pending = t.watcher.is_orphaned()
            || t.watcher.partial_deadline().is_some()
            || t.batcher.deadline().is_some()
            || t.multiline.as_ref().is_some_and(|m| m.deadline().is_some());
        if !pending {
            timed.remove(&key);
        }
    }

    /// The earliest time something pending times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending_copies.iter().map(|w| w.until).min();
        self.timed
            .iter()
            .filter_map(|k| self.files.get(k))
            .flat_map(|t| {
                [
                    t.watcher.partial_deadline(),
                    t.batcher.deadline(),
                    t.multiline.as_ref().and_then(|m| m.deadline()),
                    t.next_poll,
                ]
            })
            .flatten()
            .chain(pending)
            .min()
    }

    /// Seals every open batch (shutdown, or the buffer is full of open batches). Incomplete lines and multiline records are left to be
    /// read again after a restart, since the checkpoint stops before them.
    /// Returns how many it sealed.
    pub fn flush_batches(&mut self) -> usize {
        let mut n = 0;
        for t in self.files.values_mut() {
            if seal_open(t.batcher.flush(), &mut self.open_bytes, &mut self.sealed) {
                n += 1;
            }
            drain_sealed(&mut self.sealed, &mut self.out, t.input, &t.watcher);
        }
        n
    }

    /// Reads everything and ships everything, releasing files, as if every timeout had passed.
    /// Used by tests and benchmarks to reach a quiescent state.
    pub fn release_all(&mut self, now: Instant) {
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        for key in keys {
            self.poll_file(key, now, true);
        }
    }

    /// Takes what was produced since the last call, in order.
    pub fn take_output(&mut self) -> std::vec::Drain<'_, Emitted> {
        self.out.drain(..)
    }

    /// Takes the per-input counts since the last call.
    pub fn take_stats(&mut self) -> Vec<InputStats> {
        let n = self.stats.len();
        std::mem::replace(&mut self.stats, vec![InputStats::default(); n])
    }

    pub fn inputs(&self) -> &[CompiledInput] {
        &self.inputs
    }

    /// (input, path, lag bytes) of every tracked file, for the lag gauges.
    pub fn lags(&self) -> impl Iterator<Item = (usize, &Arc<str>, u64)> {
        self.files
            .values()
            .map(|t| (t.input, t.watcher.path_str(), t.watcher.lag_bytes()))
    }

    /// (input, path, size) of every file live at its path, its size as the last stat or read
    /// saw it: for the size gauge (what a truncation now would count as unread is this less
    /// what was read).
    pub fn sizes(&self) -> impl Iterator<Item = (usize, &Arc<str>, u64)> {
        self.files
            .values()
            .filter(|t| !t.watcher.is_orphaned())
            .map(|t| (t.input, t.watcher.path_str(), t.watcher.seen_size()))
    }
}

/// The print of a checkpointed file's content (a copy of it is read on from the checkpoint),
/// waited for `wait` from now; what it held past the checkpoint is unknown (not counted).
/// The identity a copy of `print`'s content ships its lines under: the original's, with the
/// fingerprint of the copy's first line taken with the original's birth time when that is
/// known (what the original's own fingerprint is, for a copy that holds its first line).
fn copy_origin(print: &PendingCopy, copy: &fs::File, size: u64) -> FileId {
    let mut origin = FileId::from(print.origin);
    if let Some(birth) = print.birth
        && let Ok(Some(fp)) = Fingerprint::take_as(copy, size, birth)
    {
        origin.fingerprint = fp.checksum;
    }
    origin
}

/// Puts a batch just sealed (`Batcher::flush`, `Batcher::poll`), if any, into `sealed`; its
/// bytes leave `open_bytes`.
fn seal_open(s: Option<SealedBatch>, open_bytes: &mut u64, sealed: &mut Vec<SealedBatch>) -> bool {
    let Some(s) = s else {
        return false;
    };
    *open_bytes -= s.span_bytes();
    sealed.push(s);
    true
}

fn checkpointed_print(cp: &FileCheckpoint, wait: Duration) -> Option<PendingCopy> {
    if cp.fingerprint.is_none()
        && cp.offset == 0
        && let Some(p) = cp.probe
    {
        // Nothing of it acknowledged, and its first line was not whole: the copy begins with
        // what it began with, and is read from 0 under the identity its lines shipped under if
        // any did (the line completed, shipped and acknowledged before a kill the checkpoint
        // did not hear of): its first line's fingerprint with the original's birth time, taken
        // from the copy (`birth`). Or, without a whole first line in the copy either, under
        // the birth time's identity alone.
        return Some(PendingCopy {
            origin: cp.origin.unwrap_or(crate::checkpoint::OriginV2 {
                dev: cp.dev,
                inode: cp.inode,
                fingerprint: cp.birth.map_or(0, |b| Fingerprint::of(&[], b).checksum),
                generation: cp.generation,
            }),
            head: p.head,
            head_len: p.len,
            tail: fingerprint::TailPrint::EMPTY,
            from: 0,
            lost: 0,
            until_ms: ferry_core::now_ms().saturating_add(wait.as_millis() as i64),
            birth: cp.origin.is_none().then_some(cp.birth.unwrap_or(0)),
        });
    }
    let fp = cp.fingerprint?;
    Some(PendingCopy {
        origin: cp.origin.unwrap_or(crate::checkpoint::OriginV2 {
            dev: cp.dev,
            inode: cp.inode,
            fingerprint: fp.checksum,
            generation: cp.generation,
        }),
        head: cp.head?,
        head_len: fp.len,
        // Nothing acknowledged yet: any copy holds the same (nothing) before offset 0.
        tail: cp
            .tail
            .or((cp.offset == 0).then_some(fingerprint::TailPrint::EMPTY))?,
        from: cp.offset,
        lost: 0,
        until_ms: ferry_core::now_ms().saturating_add(wait.as_millis() as i64),
        birth: None,
    })
}

/// The file a checkpoint entry names, found on its dev+inode in the directory it was in
/// (renamed). Whether it is still the same content (its fingerprint, its size) is for
/// [`Tailer::open_file`] to say, as for any checkpointed file: truncated while the agent was
/// stopped and then renamed, it is read from 0 as its next generation, and its old content's
/// copy looked for.
fn find_renamed(cp: &FileCheckpoint) -> Option<(PathBuf, fs::Metadata)> {
    let dir = Path::new(&cp.path).parent()?;
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        (meta.is_file() && (meta.dev(), meta.ino()) == (cp.dev, cp.inode))
            .then(|| (entry.path(), meta))
    })
}

/// Bytes of one file that could not be read, by input and path (rare, so the path label's
/// cardinality is harmless).
/// Counts `bytes` destroyed before they were read: a WARN line and
/// `ferry_agent_unread_bytes_total`. `checkpointed`: the count is already in the checkpoint just
/// written (its lifetime `unread_bytes`), so a reader of the log can tell such lines from counts
/// kept nowhere else.
pub(crate) fn count_unread(input: &str, path: &str, bytes: u64, checkpointed: bool) {
    tracing::warn!(
        input,
        path,
        bytes,
        checkpointed,
        "bytes could not be read before the file changed under them"
    );
    metrics::counter!("ferry_agent_unread_bytes_total", "input" => input.to_owned(), "path" => path.to_owned())
        .increment(bytes);
}

fn state_of(w: &FileWatcher) -> FileState {
    FileState {
        key: w.key(),
        path: w.path_str().clone(),
        fingerprint: w.fingerprint(),
        generation: w.generation(),
        origin: w.origin(),
        tail: w.tail(),
        head: w.head(),
        pending: w.pending().to_vec(),
        birth: w.birth(),
        probe: w.probe(),
    }
}

fn drain_sealed(
    sealed: &mut Vec<SealedBatch>,
    out: &mut Vec<Emitted>,
    input: usize,
    w: &FileWatcher,
) {
    for batch in sealed.drain(..) {
        let mut state = state_of(w);
        // A batch sealed before a truncation carries the identity it was read under.
        if batch.file != w.file_id() {
            state.generation = batch.file.generation;
            state.fingerprint = None;
            state.tail = None;
            state.head = None;
            state.pending = Vec::new();
            state.origin = ((batch.file.dev, batch.file.inode) != state.key).then_some(batch.file);
        } else if state.tail.is_none_or(|t| t.offset > batch.end_offset) {
            // The checkpoint of this batch's end gets a tail print at that very offset (one
            // pread of at most 4 KiB per batch, and a check that the file is still the content
            // read — none if it was truncated since): a restart that finds the file truncated
            // recognises its copy by it, however far reading ran ahead of acknowledgements.
            state.tail = w.tail_at(batch.end_offset);
        }
        out.push(Emitted::Batch {
            input,
            state,
            batch,
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn route_line(
    multiline: &mut Option<Joiner>,
    batcher: &mut Batcher,
    agent_id: &str,
    fields: &[ferry_core::record::Field],
    id: FileId,
    off: u64,
    line: Line<'_>,
    now: Instant,
    sealed: &mut Vec<SealedBatch>,
    open_bytes: &mut u64,
) {
    match multiline {
        Some(ml) => ml.push(off, line, now, &mut |o, rec, extra| {
            push_batch(
                batcher, agent_id, fields, id, o, rec, extra, now, sealed, open_bytes,
            )
        }),
        None => push_batch(
            batcher,
            agent_id,
            fields,
            id,
            off,
            line,
            Extra::default(),
            now,
            sealed,
            open_bytes,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn push_batch(
    batcher: &mut Batcher,
    agent_id: &str,
    fields: &[ferry_core::record::Field],
    id: FileId,
    off: u64,
    rec: Line<'_>,
    extra: Extra<'_>,
    now: Instant,
    sealed: &mut Vec<SealedBatch>,
    open_bytes: &mut u64,
) {
    let before = sealed.len();
    // A joiner's own fields (a container line's stream and pod) come after the input's.
    let joined: Vec<ferry_core::record::Field>;
    let fields = if extra.fields.is_empty() {
        fields
    } else {
        joined = fields.iter().chain(extra.fields).cloned().collect();
        &joined
    };
    let line = crate::batcher::Line {
        line: rec.bytes,
        span: rec.span,
        event_time_ms: extra.event_time_ms,
        truncated: rec.truncated,
        fields,
    };
    batcher.push_line(agent_id, id, off, line, now, sealed);
    *open_bytes += rec.span;
    for s in &sealed[before..] {
        *open_bytes -= s.span_bytes();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
