//! The writer thread: group commit.
//!
//! One thread owns every write to segment files. `Store::append` sends it a request over a
//! channel whose depth is bounded in bytes by a semaphore (`max_inflight_bytes`), then awaits a
//! oneshot reply. The thread takes the first request, keeps taking requests until the
//! `group_commit_window` has passed or `group_commit_bytes` are staged, writes each touched
//! partition's staged frames with one write, fsyncs each touched file once (in parallel, on a
//! few scoped threads, so 16 partitions do not cost 16 sequential fsyncs), publishes the frames
//! to readers and answers every waiter. A failed write or fsync is rolled back (the file cut
//! back to where the group started) and reported to exactly the appends of that group; after a
//! failed fsync the page cache can no longer be trusted, so the store stops accepting appends
//! (`StoreError::Closed`) until it is reopened, which re-verifies the files.
//!
//! Ordered appends (`Store::append_after`): a batch that must follow its origin's records up
//! to an offset the partition does not hold yet is *parked* (with its reply and permit) instead
//! of refused, and staged as soon as its predecessor is — in the same group when the two
//! arrive close together, so a sender's pipelined batches share fsyncs. A parked batch whose
//! predecessor does not come within [`PARK_WAIT`] is refused with `StoreError::OutOfOrder`.

use super::config::FsyncPolicy;
use super::error::StoreError;
use super::fs::FileSystem;
use super::partition::{Partition, Staged};
use super::{AppendOutcome, StoreConfig};
use bytes::Bytes;
use ferry_core::batch::BatchHeader;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most threads used to fsync the files of one group in parallel.
const MAX_SYNC_THREADS: usize = 16;
/// How long a batch waits for its predecessor before it is refused as out of order.
pub(crate) const PARK_WAIT: Duration = Duration::from_secs(1);

/// One append on its way to the writer.
pub(crate) struct Append {
    pub part: Arc<Partition>,
    pub header: BatchHeader,
    pub batch: Bytes,
    /// Store only if the origin's records up to this offset are stored or staged.
    pub after: Option<u64>,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

impl Append {
    fn origin(&self) -> Option<&ferry_core::record::OriginKey> {
        self.header.origin.as_ref().map(|o| &o.key)
    }
}

pub(crate) enum Request {
    Append(Append),
    /// Write and fsync everything, answer, and stop.
    Close {
        parts: Vec<Arc<Partition>>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

type CloseRequest = (Vec<Arc<Partition>>, oneshot::Sender<Result<(), StoreError>>);

/// An append waiting for its predecessor (see the module docs).
struct Parked {
    append: Append,
    /// The append's `after`.
    after: u64,
    deadline: Instant,
}

/// Appends gathered for one commit.
#[derive(Default)]
struct Group {
    touched: Vec<Arc<Partition>>,
    keys: HashSet<usize>,
    bytes: usize,
    close: Option<CloseRequest>,
}

pub(crate) struct Writer {
    pub rx: Receiver<Request>,
    pub fs: Arc<dyn FileSystem>,
    pub cfg: StoreConfig,
    /// Set after a failed fsync: every later append is refused.
    pub failed: Arc<AtomicBool>,
    /// Partitions with written but unsynced data (`interval` and `never`).
    dirty: Vec<Arc<Partition>>,
    dirty_keys: HashSet<usize>,
    /// Ordered appends waiting for their predecessor, oldest first.
    parked: Vec<Parked>,
}

impl Writer {
    pub fn new(
        rx: Receiver<Request>,
        fs: Arc<dyn FileSystem>,
        cfg: StoreConfig,
        failed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            rx,
            fs,
            cfg,
            failed,
            dirty: Vec::new(),
            dirty_keys: HashSet::new(),
            parked: Vec::new(),
        }
    }

    /// Refuses every parked append whose wait is over.
    fn expire_parked(&mut self) {
        if self.failed.load(Ordering::SeqCst) {
            self.refuse_parked(|| StoreError::Closed);
            return;
        }
        let now = Instant::now();
        if self.parked.iter().all(|p| p.deadline > now) {
            return;
        }
        let (due, keep): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.parked = keep;
        for p in due {
            let a = p.append;
            let high = a.origin().and_then(|k| a.part.writer().dedup.get(k));
            metrics::counter!("ferry_store_out_of_order_total", "topic" => a.part.topic.clone())
                .increment(1);
            let _ = a.reply.send(Err(StoreError::OutOfOrder {
                after: p.after,
                high,
            }));
        }
    }

    fn refuse_parked(&mut self, err: impl Fn() -> StoreError) {
        for p in self.parked.drain(..) {
            let _ = p.append.reply.send(Err(err()));
        }
    }

    /// When the next parked append expires.
    fn next_expiry(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.deadline).min()
    }

    /// The thread's loop; returns on `Close` or when every sender is gone.
    pub fn run(mut self) {
        let policy = self.cfg.fsync;
        let interval = self.cfg.fsync_interval.get().max(Duration::from_millis(1));
        let mut next_sync = Instant::now() + interval;
        loop {
            self.expire_parked();
            let wake = match (policy == FsyncPolicy::Interval, self.next_expiry()) {
                (true, Some(e)) => Some(e.min(next_sync)),
                (true, None) => Some(next_sync),
                (false, e) => e,
            };
            let first = if let Some(wake) = wake {
                match self
                    .rx
                    .recv_timeout(wake.saturating_duration_since(Instant::now()))
                {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            if policy == FsyncPolicy::Interval && Instant::now() >= next_sync {
                self.sync_dirty();
                next_sync = Instant::now() + interval;
            }
            let Some(first) = first else { continue };
            let mut group = Group::default();
            self.handle(first, &mut group);
            if policy != FsyncPolicy::Always {
                self.gather(&mut group);
            }
            self.commit(&mut group);
            if let Some((parts, reply)) = group.close.take() {
                self.refuse_parked(|| StoreError::Closed);
                let _ = reply.send(self.close(&parts));
                return;
            }
        }
        // The store was dropped without close(): leave nothing unsynced.
        self.refuse_parked(|| StoreError::Closed);
        self.sync_dirty();
    }

    /// Takes more requests for the group, up to the byte budget: first everything already
    /// queued; then, for `group`, if nothing was queued (light load), whatever arrives within
    /// the window. Under load the appends that queued during the previous fsync already make a
    /// group, and waiting the window on top would only add latency (as PostgreSQL's
    /// `commit_delay` only waits when other transactions are active).
    fn gather(&mut self, group: &mut Group) {
        let window = if self.cfg.fsync == FsyncPolicy::Group {
            self.cfg.group_commit_window.get()
        } else {
            Duration::ZERO
        };
        let budget = self.cfg.group_commit_bytes.as_usize().max(1);
        let mut queued = 0usize;
        while group.bytes < budget && group.close.is_none() {
            match self.rx.try_recv() {
                Ok(req) => {
                    self.handle(req, group);
                    queued += 1;
                }
                Err(_) => break,
            }
        }
        if queued > 0 {
            return;
        }
        let deadline = Instant::now() + window;
        while group.bytes < budget && group.close.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                self.rx
                    .try_recv()
                    .map_err(|e| e == TryRecvError::Disconnected)
            } else {
                self.rx
                    .recv_timeout(left)
                    .map_err(|e| e == RecvTimeoutError::Disconnected)
            };
            match next {
                Ok(req) => self.handle(req, group),
                Err(_) => break,
            }
        }
    }

    fn handle(&mut self, req: Request, group: &mut Group) {
        match req {
            Request::Append(a) => {
                if self.failed.load(Ordering::SeqCst) {
                    let _ = a.reply.send(Err(StoreError::Closed));
                    return;
                }
                if let (Some(after), Some(origin)) = (a.after, a.origin()) {
                    let high = a.part.writer().dedup.get(origin);
                    if high.is_none_or(|h| h < after) {
                        self.parked.push(Parked {
                            append: a,
                            after,
                            deadline: Instant::now() + PARK_WAIT,
                        });
                        return;
                    }
                }
                self.stage(a, group);
            }
            Request::Close { parts, reply } => group.close = Some((parts, reply)),
        }
    }

    /// Stages one append into `group`, then any parked appends it was the predecessor of.
    fn stage(&mut self, append: Append, group: &mut Group) {
        let mut next = Some(append);
        while let Some(a) = next.take() {
            let origin = a.origin().cloned();
            let len = a.batch.len();
            let part = a.part;
            let mut w = part.writer();
            match part.stage(
                &mut w,
                &*self.fs,
                &self.cfg,
                a.header,
                a.batch,
                a.reply,
                Some(a.permit),
            ) {
                Staged::Queued => {
                    let high = origin.as_ref().and_then(|k| w.dedup.get(k));
                    drop(w);
                    group.bytes += len;
                    if group.keys.insert(part.key) {
                        group.touched.push(part.clone());
                    }
                    // A parked follower of this origin in this partition can go now.
                    if let (Some(key), Some(high)) = (origin, high)
                        && let Some(i) = self.parked.iter().position(|p| {
                            p.append.part.key == part.key
                                && p.after <= high
                                && p.append.origin() == Some(&key)
                        })
                    {
                        next = Some(self.parked.remove(i).append);
                    }
                }
                Staged::Failed(e, reply) => {
                    drop(w);
                    if matches!(e, StoreError::Io { .. }) {
                        // Only a segment roll does I/O while staging; its fsync may have
                        // failed, after which the page cache cannot be trusted.
                        tracing::error!(topic = %part.topic, partition = part.id, error = %e, "segment roll failed");
                        self.fail("a segment roll failed");
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Writes, fsyncs (per policy), publishes and answers one group.
    fn commit(&mut self, group: &mut Group) {
        let mut written = Vec::with_capacity(group.touched.len());
        for p in group.touched.drain(..) {
            let mut w = p.writer();
            if let Err(e) = p.write_pending(&mut w) {
                tracing::error!(topic = %p.topic, partition = p.id, error = %e, "segment write failed; appends of this group rolled back");
                if !p.rollback(&mut w, &e) {
                    self.fail("could not cut a failed write back");
                }
                continue;
            }
            drop(w);
            written.push(p);
        }
        group.keys.clear();
        if matches!(self.cfg.fsync, FsyncPolicy::Always | FsyncPolicy::Group) {
            let results = sync_parallel(&written);
            for (p, r) in written.iter().zip(results) {
                let mut w = p.writer();
                match r {
                    Ok(()) => p.publish(&mut w),
                    Err(e) => {
                        tracing::error!(topic = %p.topic, partition = p.id, error = %e, "fsync failed; appends of this group rolled back");
                        p.rollback(&mut w, &e);
                        self.fail("an fsync failed");
                    }
                }
            }
        } else {
            for p in written {
                let mut w = p.writer();
                p.publish(&mut w);
                let dirty = w.len > w.synced_len;
                drop(w);
                if dirty && self.dirty_keys.insert(p.key) {
                    self.dirty.push(p);
                }
            }
        }
    }

    fn fail(&self, why: &str) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            metrics::counter!("ferry_store_failed_total").increment(1);
            tracing::error!("store stops accepting appends: {why}; reopen it to recover");
        }
    }

    /// fsyncs every dirty partition (`interval`, and before stopping).
    fn sync_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        self.dirty_keys.clear();
        for (p, r) in dirty.iter().zip(sync_parallel(&dirty)) {
            if let Err(e) = r {
                tracing::error!(topic = %p.topic, partition = p.id, error = %e, "background fsync failed");
                self.fail("a background fsync failed");
            }
        }
    }

    fn close(&mut self, parts: &[Arc<Partition>]) -> Result<(), StoreError> {
        let mut first_err = None;
        for p in parts {
            let mut w = p.writer();
            if w.has_pending() {
                match p.write_pending(&mut w) {
                    Ok(()) => {}
                    Err(e) => {
                        p.rollback(&mut w, &e);
                        first_err.get_or_insert(e);
                        continue;
                    }
                }
            }
            drop(w);
        }
        for (p, r) in parts.iter().zip(sync_parallel(parts)) {
            let mut w = p.writer();
            match r {
                Ok(()) => {
                    if w.has_pending() {
                        p.publish(&mut w);
                    }
                }
                Err(e) => {
                    p.rollback(&mut w, &e);
                    first_err.get_or_insert(e);
                }
            }
        }
        self.dirty.clear();
        self.dirty_keys.clear();
        first_err.map_or(Ok(()), Err)
    }
}

/// fsyncs the active files of `parts`, on up to [`MAX_SYNC_THREADS`] threads.
fn sync_parallel(parts: &[Arc<Partition>]) -> Vec<Result<(), StoreError>> {
    let one = |p: &Arc<Partition>| Partition::sync(&mut p.writer());
    if parts.len() <= 1 {
        return parts.iter().map(one).collect();
    }
    let chunk = parts.len().div_ceil(MAX_SYNC_THREADS.min(parts.len()));
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .chunks(chunk)
            .map(|c| {
                (
                    c.len(),
                    s.spawn(move || c.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| {
                h.join()
                    .unwrap_or_else(|_| (0..n).map(|_| Err(StoreError::Closed)).collect())
            })
            .collect()
    })
}
