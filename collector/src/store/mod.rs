//! The embedded, durable topic log.
//!
//! Topics have partitions; each partition is a directory of segments named by their zero-padded
//! base offset, with a sparse offset index and a time index per segment. Records get Kafka-style
//! offsets: a stored batch of `n` records at base offset `b` holds offsets `b .. b + n`.
//!
//! ```text
//! DIR/
//!   groups.offsets                      consumer-group offsets (groups.rs)
//!   trash/                              deleted topics' directories, removed soon after
//!   topics/TOPIC/topic.meta             partition count, checksummed (this file)
//!   topics/TOPIC/P/00000000000000000000.log        segment (segment.rs)
//!   topics/TOPIC/P/00000000000000000000.index      sparse offset index (index.rs)
//!   topics/TOPIC/P/00000000000000000000.timeindex  time index (index.rs)
//!   topics/TOPIC/P/00000000000000004096.snapshot   dedup snapshot (dedup.rs)
//! ```
//!
//! - [`fs`]: the file-system trait every disk access goes through (fault injection in tests).
//! - [`handles`]: segments opened on demand behind a bounded cache (`max_open_files`), so the
//!   descriptors the store holds do not grow with the number of partitions.
//! - [`segment`]: segment files and batch framing; scanning with torn-tail / corruption handling.
//! - [`index`]: sparse offset and time indexes.
//! - [`partition`]: a partition's published view (for readers) and writer state.
//! - [`writer`]: the group-commit writer thread.
//! - [`recovery`]: opening a partition after a crash: verify, truncate, rebuild, report.
//! - [`dedup`]: per-origin highest stored file offset; replay drop and straddle trim.
//! - [`retention`]: deleting old segments by age, size and free disk.
//! - [`groups`]: consumer-group committed offsets.
//!
//! Threads: appends go to one writer thread (group commit); retention has its own thread;
//! `read`, `offset_for_timestamp` and `create_topic` do file I/O on the caller's thread, so an
//! async caller should run them under `spawn_blocking`. `append`, `commit_offsets` and `close`
//! are async and never do file I/O on the caller's tokio worker.
//!
//! # Topic metadata file `topics/TOPIC/topic.meta`
//!
//! | offset | size | field                          |
//! |-------:|-----:|--------------------------------|
//! | 0      | 4    | magic `FRYM`                   |
//! | 4      | 1    | version, currently 1           |
//! | 5      | 3    | reserved, zero                 |
//! | 8      | 8    | partition count                |
//! | 16     | 4    | CRC32C of bytes `[0, 16)`      |

pub mod config;
pub mod dedup;
pub mod error;
pub mod fs;
pub mod groups;
pub mod handles;
pub mod index;
pub mod partition;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod writer;

pub use config::{FsyncPolicy, RetentionConfig, StoreConfig};
pub use error::StoreError;
pub use recovery::{PartitionRecovery, RecoveryReport};
pub use retention::RetentionStats;
pub use segment::CorruptRange;

use bytes::Bytes;
use error::IoContext;
use ferry_core::batch::{BatchHeader, WireError};
use fs::{FileSystem, StdFs};
use partition::Partition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Semaphore, oneshot};

/// Largest batch accepted by `append`.
pub const MAX_BATCH_BYTES: usize = 256 << 20;
const TOPIC_META_MAGIC: [u8; 4] = *b"FRYM";
const TOPIC_META_FILE: &str = "topic.meta";
/// Where deleted topics' directories wait to be removed (`DIR/trash/`).
const TRASH_DIR: &str = "trash";
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the first stored record (the end offset at the time if none was stored).
    pub base_offset: u64,
    /// Records stored.
    pub stored: u32,
    /// Records dropped as replays of data already stored from the same origin.
    pub deduplicated: u32,
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub struct ReadBatches {
    pub batches: Vec<StoredBatch>,
    pub log_start: u64,
    pub end_offset: u64,
}

/// One stored batch, as stored.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: u64,
    pub record_count: u32,
    pub append_time_ms: i64,
    /// The ferry batch bytes as stored (`ferry_core::batch::decode` reads them).
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub segments: u32,
    pub last_append_ms: Option<i64>,
}

pub(crate) struct Topic {
    pub partitions: Vec<Arc<Partition>>,
}

type Topics = RwLock<BTreeMap<String, Arc<Topic>>>;

/// The store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cfg: StoreConfig,
    fs: Arc<dyn FileSystem>,
    /// The bounded cache of open segment handles behind `fs`.
    handles: Arc<handles::HandleCache>,
    /// Shared with the retention thread.
    topics: Arc<Topics>,
    /// Serializes topic creation (file I/O) without blocking lookups on `topics`.
    create_lock: Mutex<()>,
    /// To the writer thread. `std` mpsc so the writer can wait with a timeout; bounded in bytes
    /// by `inflight`.
    tx: std::sync::mpsc::Sender<writer::Request>,
    /// Permits are KiB of batches queued or awaiting their fsync.
    inflight: Arc<Semaphore>,
    inflight_kib: u32,
    closed: AtomicBool,
    /// Set by the writer after a failed fsync.
    failed: Arc<AtomicBool>,
    groups: Arc<groups::GroupOffsets>,
    report: RecoveryReport,
    next_key: AtomicUsize,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    retention_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    retention_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Holds an exclusive `flock` on `DIR/.lock` while the store is open, so that two stores
    /// (two collectors, or a test that forgot to drop one) never write the same files. The
    /// kernel releases it when the process dies, so a crash leaves no stale lock.
    _lock: std::fs::File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stop retention; the writer stops (after syncing) once `tx` is dropped with us.
        if let Ok(mut s) = self.retention_stop.lock() {
            s.take();
        }
    }
}

/// Checks a user topic name.
pub fn validate_topic_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidTopicName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 249 {
        return bad("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be \".\" or \"..\"");
    }
    if name.starts_with("__") {
        return bad("names starting with \"__\" are reserved for internal topics");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

impl Store {
    /// Opens the store in `dir` (creating it if needed), recovering every partition.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Self::open_with_fs(dir, config, Arc::new(StdFs))
    }

    /// Like [`Store::open`], with every disk access going through `fs`.
    pub fn open_with_fs(
        dir: &Path,
        config: StoreConfig,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Store, StoreError> {
        let max_open = config
            .max_open_files
            .unwrap_or_else(handles::default_max_open_files);
        let handles = handles::HandleCache::new(fs, max_open);
        tracing::info!(
            max_open_files = handles.max_open(),
            "store: segments are opened on demand, at most this many at once"
        );
        let fs: Arc<dyn FileSystem> = Arc::new(handles::CachedFs(handles.clone()));
        let topics_dir = dir.join("topics");
        fs.create_dir_all(&topics_dir).at(&topics_dir)?;
        let lock = lock_dir(dir)?;
        empty_trash(&*fs, &dir.join(TRASH_DIR));
        let mut report = RecoveryReport::default();
        let mut topics = BTreeMap::new();
        let next_key = AtomicUsize::new(0);
        let mut names: Vec<PathBuf> = fs.list_dir(&topics_dir).at(&topics_dir)?;
        names.sort();
        for tdir in names {
            let Some(name) = tdir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let meta = tdir.join(TOPIC_META_FILE);
            let read = fs.read_file(&meta);
            if read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                // The metadata file is written last and a topic takes appends only after it:
                // without it, this is a creation cut off by a crash, holding no records.
                let note = format!(
                    "{}: topic {name:?} was never fully created (no {TOPIC_META_FILE}); removed",
                    tdir.display()
                );
                tracing::warn!("{note}");
                report.notes.push(note);
                if let Err(e) = fs.remove_dir_all(&tdir) {
                    tracing::warn!(dir = %tdir.display(), error = %e, "could not remove an incomplete topic");
                }
                continue;
            }
            let count = match read
                .map_err(|e| e.to_string())
                .and_then(|b| decode_meta(&b))
            {
                Ok(n) => n,
                Err(reason) => {
                    let note = format!("{}: {reason}; topic {name:?} skipped", meta.display());
                    tracing::error!("{note}");
                    report.notes.push(note);
                    continue;
                }
            };
            let mut parts = Vec::with_capacity(count as usize);
            for p in 0..count {
                let r = recovery::open_partition(
                    &*fs,
                    &tdir.join(p.to_string()),
                    &name,
                    p,
                    config.index_interval_bytes.get().max(1),
                )?;
                let part = Partition::new(
                    &name,
                    p,
                    tdir.join(p.to_string()),
                    next_key.fetch_add(1, Ordering::Relaxed),
                    r.view,
                    r.writer,
                );
                part.report_corrupt(&r.report.corrupt);
                report.partitions.push(r.report);
                parts.push(Arc::new(part));
            }
            topics.insert(name, Arc::new(Topic { partitions: parts }));
        }
        let (groups, note) = groups::GroupOffsets::open(fs.clone(), dir)?;
        report.notes.extend(note);
        if !report.is_clean() {
            tracing::warn!(
                truncated_bytes = report.truncated_bytes(),
                "store recovered with repairs: {report:?}"
            );
        }

        let (tx, rx) = std::sync::mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let w = writer::Writer::new(rx, fs.clone(), config.clone(), failed.clone());
        let writer_thread = std::thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::io(dir, e))?;
        let inflight_kib = u32::try_from((config.max_inflight_bytes.get() >> 10).max(1024))
            .unwrap_or(u32::MAX >> 4);
        let topics = Arc::new(RwLock::new(topics));
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let retention_thread = {
            let topics = topics.clone();
            let cfg = config.clone();
            let fs = fs.clone();
            let rdir = dir.to_owned();
            std::thread::Builder::new()
                .name("ferry-store-retention".into())
                .spawn(move || {
                    let every = cfg
                        .retention_check_interval
                        .get()
                        .max(std::time::Duration::from_millis(10));
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stop_rx.recv_timeout(every)
                    {
                        let parts = all_partitions(&topics);
                        retention::run_once(&parts, &cfg, &*fs, &rdir, ferry_core::now_ms());
                    }
                })
                .map_err(|e| StoreError::io(dir, e))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                cfg: config,
                fs,
                handles,
                topics,
                create_lock: Mutex::new(()),
                tx,
                inflight: Arc::new(Semaphore::new(inflight_kib as usize)),
                inflight_kib,
                closed: AtomicBool::new(false),
                failed,
                groups: Arc::new(groups),
                report,
                next_key,
                writer_thread: Mutex::new(Some(writer_thread)),
                retention_stop: Mutex::new(Some(stop_tx)),
                retention_thread: Mutex::new(Some(retention_thread)),
                _lock: lock,
            }),
        })
    }

    /// What `open` repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a topic; `Ok(false)` if it exists with the same partition count.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<bool, StoreError> {
        self.create_topic_bounded(topic, partitions, usize::MAX)
    }

    /// [`Store::create_topic`], refused with [`StoreError::TooManyTopics`] when the store
    /// already holds `max_topics` topics. Checked before anything touches the disk; a creation
    /// that fails half-way (no space, out of file descriptors) removes what it made, so a
    /// refused topic leaves nothing behind. Blocking (mkdir, fsync): call it from the
    /// blocking pool.
    pub fn create_topic_bounded(
        &self,
        topic: &str,
        partitions: u32,
        max_topics: usize,
    ) -> Result<bool, StoreError> {
        validate_topic_name(topic)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(StoreError::InvalidTopicName {
                name: topic.to_owned(),
                reason: "partition count must be 1 to 10000",
            });
        }
        let _creating = self
            .inner
            .create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.topic_partitions(topic) {
            return if existing == partitions {
                Ok(false)
            } else {
                Err(StoreError::TopicExists {
                    topic: topic.to_owned(),
                    partitions: existing,
                })
            };
        }
        if self.topic_count() >= max_topics {
            return Err(StoreError::TooManyTopics { max: max_topics });
        }
        let tdir = self.inner.dir.join("topics").join(topic);
        let parts = match self.make_topic(topic, partitions, &tdir) {
            Ok(parts) => parts,
            Err(e) => {
                // Nothing of a topic that was not created stays on disk: its partitions'
                // files are closed (dropped with the error path) and its directory removed.
                if let Err(rm) = self.inner.fs.remove_dir_all(&tdir)
                    && rm.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(topic, dir = %tdir.display(), error = %rm, "could not remove a topic that failed to be created");
                }
                return Err(e);
            }
        };
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), Arc::new(Topic { partitions: parts }));
        tracing::info!(topic, partitions, "created topic");
        Ok(true)
    }

    fn make_topic(
        &self,
        topic: &str,
        partitions: u32,
        tdir: &Path,
    ) -> Result<Vec<Arc<Partition>>, StoreError> {
        let fs = &*self.inner.fs;
        fs.create_dir_all(tdir).at(tdir)?;
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let pdir = tdir.join(p.to_string());
            let r = recovery::open_partition(
                fs,
                &pdir,
                topic,
                p,
                self.inner.cfg.index_interval_bytes.get().max(1),
            )?;
            parts.push(Arc::new(Partition::new(
                topic,
                p,
                pdir,
                self.inner.next_key.fetch_add(1, Ordering::Relaxed),
                r.view,
                r.writer,
            )));
        }
        // The metadata file is written last: a topic without it was never fully created.
        let meta = tdir.join(TOPIC_META_FILE);
        fs::write_file_atomic(fs, &meta, &encode_meta(partitions)).at(&meta)?;
        let parent = self.inner.dir.join("topics");
        fs.sync_dir(&parent).at(&parent)?;
        Ok(parts)
    }

    /// Deletes a topic and its records; `Ok(false)` if there is no such topic. The topic
    /// leaves the store at once (later appends and reads get [`StoreError::UnknownTopic`]);
    /// its directory is moved to `DIR/trash` (one rename, so a crash leaves the topic either
    /// whole or gone) and removed from there, here or at the next open. Committed group
    /// offsets of the topic are kept. Blocking: call it from the blocking pool.
    pub fn delete_topic(&self, topic: &str) -> Result<bool, StoreError> {
        let _creating = self
            .inner
            .create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let removed = self
            .inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        let Some(removed) = removed else {
            return Ok(false);
        };
        // Before the files move: the writer does no more I/O on them (see
        // `WriterState::deleted`).
        for p in &removed.partitions {
            p.writer().deleted = true;
        }
        let fs = &*self.inner.fs;
        let topics_dir = self.inner.dir.join("topics");
        let tdir = topics_dir.join(topic);
        let trash = self.inner.dir.join(TRASH_DIR);
        fs.create_dir_all(&trash).at(&trash)?;
        let gone = trash.join(format!(
            "{}-{}",
            ferry_core::now_ms(),
            self.inner.next_key.fetch_add(1, Ordering::Relaxed)
        ));
        fs.rename(&tdir, &gone).at(&tdir)?;
        fs.sync_dir(&topics_dir).at(&topics_dir)?;
        // The partitions' files close as the last reader or pending append lets them go.
        drop(removed);
        if let Err(e) = fs.remove_dir_all(&gone) {
            tracing::warn!(topic, dir = %gone.display(), error = %e, "deleted topic's files not removed yet; retried at the next start");
        }
        tracing::info!(topic, "deleted topic");
        Ok(true)
    }

    /// Topics the store holds.
    /// Segment handles open now, and the most that may be (`max_open_files`).
    pub fn open_files(&self) -> (usize, usize) {
        (self.inner.handles.open_now(), self.inner.handles.max_open())
    }

    pub fn topic_count(&self) -> usize {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn topic_partitions(&self, topic: &str) -> Option<u32> {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).map(|t| t.partitions.len() as u32)
    }

    pub fn topics(&self) -> Vec<TopicInfo> {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .iter()
            .map(|(name, t)| TopicInfo {
                name: name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| {
                        let v = p.view();
                        PartitionInfo {
                            partition: p.id,
                            log_start: v.log_start(),
                            end_offset: v.end_offset(),
                            size_bytes: v.size_bytes(),
                            segments: v.segments.len() as u32,
                            last_append_ms: v.last_append_ms,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, StoreError> {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        let t = topics
            .get(topic)
            .ok_or_else(|| StoreError::UnknownTopic(topic.to_owned()))?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| StoreError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
    }

    /// Appends one encoded ferry batch; returns once it is durable per the fsync policy.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_after(topic, partition, batch, None).await
    }

    /// [`Store::append`] for a batch that must follow its origin's records up to `after`
    /// (its file offset): if the partition does not hold them, nor has them staged ahead of
    /// this batch in the same commit, the append fails with [`StoreError::OutOfOrder`] and
    /// nothing is stored. This is what lets a sender keep several batches of one file in
    /// flight: they are stored in file order or refused, never stored out of order (which the
    /// origin dedup would then take for a replay). A batch without an origin ignores `after`.
    pub async fn append_after(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        after: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        let part = self.partition(topic, partition)?;
        if batch.len() > MAX_BATCH_BYTES {
            return Err(WireError::TooLarge {
                declared: batch.len() as u64,
                limit: MAX_BATCH_BYTES as u64,
            }
            .into());
        }
        let header = BatchHeader::parse(&batch)?;
        if batch.len() != header.total_len {
            return Err(WireError::TrailingBytes {
                trailing: batch.len() - header.total_len,
            }
            .into());
        }
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let started = std::time::Instant::now();
        let kib = u32::try_from(batch.len() >> 10)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let permit = self
            .inner
            .inflight
            .clone()
            .acquire_many_owned(kib.min(self.inner.inflight_kib))
            .await
            .map_err(|_| StoreError::Closed)?;
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Request::Append(writer::Append {
                part,
                header,
                batch,
                after,
                reply,
                permit,
            }))
            .map_err(|_| StoreError::Closed)?;
        let out = rx.await.map_err(|_| StoreError::Closed)?;
        metrics::histogram!("ferry_store_append_seconds").record(started.elapsed().as_secs_f64());
        out
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst) || self.inner.failed.load(Ordering::SeqCst)
    }

    /// A partition's first readable offset and end offset (the next offset to be written).
    pub fn bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), StoreError> {
        let part = self.partition(topic, partition)?;
        let v = part.view();
        Ok((v.log_start(), v.end_offset()))
    }

    /// Reads whole stored batches, starting with the one that holds `offset`.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, StoreError> {
        let slack = self.inner.cfg.index_interval_bytes.get() + (64 << 10);
        self.partition(topic, partition)?
            .read(offset, max_bytes, slack)
    }

    /// First offset whose batch was appended at or after `ts_ms` (the end offset if none).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        ts_ms: i64,
    ) -> Result<u64, StoreError> {
        self.partition(topic, partition)?
            .offset_for_timestamp(ts_ms)
    }

    /// Waits until the partition's end offset is past `offset`, or `timeout`.
    pub async fn wait_for_data(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: std::time::Duration,
    ) {
        let Ok(part) = self.partition(topic, partition) else {
            return;
        };
        let mut rx = part.end_watch.subscribe();
        drop(part);
        let _ = tokio::time::timeout(timeout, rx.wait_for(|end| *end > offset)).await;
    }

    /// Stores committed offsets `(topic, partition, next offset to read)` for `group`; durable
    /// before it returns.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if group.is_empty() || group.len() > 1024 {
            return Err(StoreError::InvalidTopicName {
                name: group.to_owned(),
                reason: "a group name must be 1 to 1024 bytes",
            });
        }
        for (topic, partition, _) in offsets {
            self.partition(topic, *partition)?;
        }
        let groups = self.inner.groups.clone();
        let group = group.to_owned();
        let offsets = offsets.to_vec();
        tokio::task::spawn_blocking(move || groups.commit(&group, &offsets))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    pub fn committed_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.inner.groups.committed(group)
    }

    pub fn groups(&self) -> Vec<String> {
        self.inner.groups.groups()
    }

    /// Corrupt ranges of a partition found so far, on open or while serving reads. Their
    /// batches are skipped; the partition's other batches stay readable.
    pub fn corrupt_batches(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<CorruptRange>, StoreError> {
        Ok(self.partition(topic, partition)?.corrupt_ranges())
    }

    /// Runs one retention pass now (it also runs every `retention_check_interval`).
    pub fn run_retention(&self) -> RetentionStats {
        let parts = all_partitions(&self.inner.topics);
        retention::run_once(
            &parts,
            &self.inner.cfg,
            &*self.inner.fs,
            &self.inner.dir,
            ferry_core::now_ms(),
        )
    }

    /// Writes and fsyncs everything, stops the writer and retention threads. Later appends get
    /// [`StoreError::Closed`]; reads keep working.
    pub async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner
            .retention_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let parts = all_partitions(&self.inner.topics);
        let (reply, rx) = oneshot::channel();
        let sent = self
            .inner
            .tx
            .send(writer::Request::Close { parts, reply })
            .is_ok();
        let result = if sent {
            rx.await.unwrap_or(Err(StoreError::Closed))
        } else {
            Ok(())
        };
        let writer = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let retention = self
            .inner
            .retention_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(h) = writer {
                let _ = h.join();
            }
            if let Some(h) = retention {
                let _ = h.join();
            }
        })
        .await;
        tracing::info!(dir = %self.inner.dir.display(), "store closed");
        result
    }
}

/// Removes what deleted topics left in `trash` (a crash between the rename and the removal).
fn empty_trash(fs: &dyn FileSystem, trash: &Path) {
    let Ok(entries) = fs.list_dir(trash) else {
        return;
    };
    for e in entries {
        if let Err(err) = fs.remove_dir_all(&e) {
            tracing::warn!(dir = %e.display(), error = %err, "could not remove a deleted topic's files");
        }
    }
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        StoreError::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "the store in {} is already open ({e}); is another collector running on it?",
                    dir.display()
                ),
            ),
        )
    })?;
    Ok(file)
}

fn all_partitions(topics: &Topics) -> Vec<Arc<Partition>> {
    let topics = topics.read().unwrap_or_else(|p| p.into_inner());
    topics
        .values()
        .flat_map(|t| t.partitions.iter().cloned())
        .collect()
}

fn encode_meta(partitions: u32) -> Vec<u8> {
    let mut out = segment::file_header(TOPIC_META_MAGIC, u64::from(partitions)).to_vec();
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_meta(buf: &[u8]) -> Result<u32, String> {
    if buf.len() != 20 {
        return Err(format!("metadata is {} bytes, expected 20", buf.len()));
    }
    if crc32c::crc32c(&buf[..16]) != segment::u32_at(buf, 16) {
        return Err("metadata checksum mismatch".into());
    }
    if buf[..4] != TOPIC_META_MAGIC || buf[4] != segment::FILE_VERSION {
        return Err("bad magic or version".into());
    }
    let n = segment::u64_at(buf, 8);
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| format!("invalid partition count {n}"))
}
