//! Open files on demand, at most `max_open_files` at once: [`HandleCache`], a
//! [`FileSystem`] in front of another whose long-lived handles (each partition's active
//! segment, opened for appending, and every segment opened for reading) are opened when
//! used and closed again, least recently used first, when more than the bound are open.
//!
//! Without it a partition holds two descriptors for as long as the store runs (its active
//! segment's writer and reader) and one more per sealed segment: 10,000 partitions took
//! 20,000 descriptors, past the usual limit, and the collector then failed every accept and
//! every new segment with EMFILE. With it, what a store holds is bounded by the cache
//! (`store.max_open_files`, by default derived from `RLIMIT_NOFILE`), whatever the number of
//! partitions; a partition nobody writes or reads costs no descriptor.
//!
//! Reopening is by path: segments are never renamed while the store holds them (deletion moves
//! a whole topic out of the way only after its partitions are gone). A file removed by
//! retention while a reader still held its handle stays readable only if the handle is still
//! open; a reader that needs it after eviction gets `NotFound`, which the partition's read
//! treats as "retention moved the log start" (see `Partition::read`). An fsync after a reopen
//! flushes the file's data written through an earlier descriptor: Linux syncs the inode.
//!
//! Short-lived handles (`create`, directory and whole-file operations) pass straight through.

use super::fs::{FileSystem, ReadableFile, WritableFile};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The fewest handles the cache keeps open, whatever it is configured with: an append reads
/// and writes one partition's segment at once.
pub const MIN_OPEN_FILES: usize = 4;

/// Descriptors kept out of the cache's reach, at least: connections, the listener, the
/// checkpoint and group-offset files, the runtime.
pub const MIN_RESERVE: u64 = 64;
/// Descriptors kept out of the cache's reach, at most (a quarter of the limit up to this).
pub const MAX_RESERVE: u64 = 2048;
/// The default bound never exceeds this, however high the limit: every open file costs
/// kernel memory, and a partition's segment is reopened in microseconds.
pub const MAX_DEFAULT_OPEN_FILES: u64 = 4096;

/// The default `store.max_open_files`, like the agent's descriptor budget: the soft
/// `RLIMIT_NOFILE` (the collector raises it to the hard limit first) less a reserve of a
/// quarter of it (64 to 2,048) and the descriptors already open, at most
/// [`MAX_DEFAULT_OPEN_FILES`].
pub fn default_max_open_files() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    budget(soft, in_use)
}

fn budget(soft: Option<u64>, in_use: u64) -> usize {
    let n = match soft {
        Some(limit) => {
            let reserve = (limit / 4).clamp(MIN_RESERVE, MAX_RESERVE);
            limit.saturating_sub(reserve + in_use)
        }
        None => MAX_DEFAULT_OPEN_FILES,
    };
    usize::try_from(n.min(MAX_DEFAULT_OPEN_FILES))
        .unwrap_or(MIN_OPEN_FILES)
        .max(MIN_OPEN_FILES)
}

/// An open handle, kept by the cache.
#[derive(Clone)]
enum Open {
    Read(Arc<dyn ReadableFile>),
    /// A std mutex: held only for one write, fsync or truncate, never across an await.
    Write(Arc<Mutex<Box<dyn WritableFile>>>),
}

/// The cache's state: handles by id, and their last use.
#[derive(Default)]
struct Lru {
    /// Handle id → (the open file, the tick of its last use).
    open: HashMap<u64, (Open, u64)>,
    /// Tick of last use → handle id; the first entry is the least recently used.
    by_use: BTreeMap<u64, u64>,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, id: u64) -> Option<Open> {
        self.tick += 1;
        let tick = self.tick;
        let (open, last) = self.open.get_mut(&id)?;
        self.by_use.remove(last);
        *last = tick;
        self.by_use.insert(tick, id);
        Some(open.clone())
    }

    /// Inserts a handle, returning those evicted to stay within `max` (closed by the caller,
    /// outside the lock).
    fn insert(&mut self, id: u64, open: Open, max: usize) -> Vec<Open> {
        self.tick += 1;
        if let Some((_, last)) = self.open.insert(id, (open, self.tick)) {
            self.by_use.remove(&last);
        }
        self.by_use.insert(self.tick, id);
        let mut evicted = Vec::new();
        while self.open.len() > max {
            let Some((_, victim)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((o, _)) = self.open.remove(&victim) {
                evicted.push(o);
            }
        }
        evicted
    }

    fn remove(&mut self, id: u64) -> Option<Open> {
        let (open, last) = self.open.remove(&id)?;
        self.by_use.remove(&last);
        Some(open)
    }
}

/// Counters of the cache, for metrics and tests.
#[derive(Debug, Default)]
pub struct HandleStats {
    /// Opens of a file whose handle had been closed by eviction.
    pub reopens: AtomicU64,
    /// Handles closed to stay within the bound.
    pub evictions: AtomicU64,
}

/// A [`FileSystem`] that keeps at most `max_open` long-lived handles of `inner` open.
pub struct HandleCache {
    inner: Arc<dyn FileSystem>,
    max_open: usize,
    lru: Mutex<Lru>,
    next_id: AtomicU64,
    pub stats: HandleStats,
}

impl HandleCache {
    pub fn new(inner: Arc<dyn FileSystem>, max_open: usize) -> Arc<Self> {
        Arc::new(Self {
            inner,
            max_open: max_open.max(MIN_OPEN_FILES),
            lru: Mutex::new(Lru::default()),
            next_id: AtomicU64::new(1),
            stats: HandleStats::default(),
        })
    }

    /// The bound.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// Handles open now.
    pub fn open_now(&self) -> usize {
        self.lru().open.len()
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        // The state stays consistent whatever panicked while holding it: take it back.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, id: u64, open: Open) {
        let (evicted, now) = {
            let mut lru = self.lru();
            let evicted = lru.insert(id, open, self.max_open);
            (evicted, lru.open.len())
        };
        metrics::gauge!("ferry_store_open_files").set(now as f64);
        if !evicted.is_empty() {
            self.stats
                .evictions
                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            metrics::counter!("ferry_store_file_handles_evicted_total")
                .increment(evicted.len() as u64);
        }
        // `evicted` is dropped here, outside the lock: closing is a syscall.
    }

    /// The handle `id`, reopened through `open` if it was evicted.
    fn get(&self, id: u64, open: impl FnOnce() -> io::Result<Open>) -> io::Result<Open> {
        if let Some(o) = self.lru().touch(id) {
            return Ok(o);
        }
        let o = open()?;
        self.stats.reopens.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ferry_store_file_handles_reopened_total").increment(1);
        self.keep(id, o.clone());
        Ok(o)
    }

    fn forget(&self, id: u64) {
        let (closed, now) = {
            let mut lru = self.lru();
            (lru.remove(id), lru.open.len())
        };
        metrics::gauge!("ferry_store_open_files").set(now as f64);
        drop(closed);
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A segment opened for reading, open while it is in the cache.
struct CachedReadable {
    cache: Arc<HandleCache>,
    id: u64,
    path: PathBuf,
}

impl CachedReadable {
    fn file(&self) -> io::Result<Arc<dyn ReadableFile>> {
        let open = self.cache.get(self.id, || {
            self.cache.inner.open_read(&self.path).map(Open::Read)
        })?;
        match open {
            Open::Read(f) => Ok(f),
            Open::Write(_) => Err(io::Error::other(
                "handle cache: a reader's id holds a writer",
            )),
        }
    }
}

impl ReadableFile for CachedReadable {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file()?.read_at(buf, pos)
    }
    fn size(&self) -> io::Result<u64> {
        self.file()?.size()
    }
}

impl Drop for CachedReadable {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

/// A segment opened for appending, open while it is in the cache.
struct CachedWritable {
    cache: Arc<HandleCache>,
    id: u64,
    path: PathBuf,
}

impl CachedWritable {
    fn with<T>(&mut self, f: impl FnOnce(&mut dyn WritableFile) -> io::Result<T>) -> io::Result<T> {
        let open = self.cache.get(self.id, || {
            self.cache
                .inner
                .open_append(&self.path, false)
                .map(|w| Open::Write(Arc::new(Mutex::new(w))))
        })?;
        match open {
            Open::Write(w) => {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                f(w.as_mut())
            }
            Open::Read(_) => Err(io::Error::other(
                "handle cache: a writer's id holds a reader",
            )),
        }
    }
}

impl WritableFile for CachedWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|w| w.write_all(buf))
    }
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        self.with(|w| w.write_all_vectored(bufs))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|w| w.sync_data())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.with(|w| w.truncate(len))
    }
}

impl Drop for CachedWritable {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

/// The cache as the store's file system: a handle for `inner`'s `open_read` and
/// `open_append` is opened at once (so a missing file fails where it is opened), kept in the
/// cache, and reopened by path whenever it was evicted.
#[derive(Clone)]
pub struct CachedFs(pub Arc<HandleCache>);

impl FileSystem for CachedFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.0.inner.list_dir(path)
    }
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>> {
        let w = self.0.inner.open_append(path, create)?;
        let id = self.0.new_id();
        self.0.keep(id, Open::Write(Arc::new(Mutex::new(w))));
        Ok(Box::new(CachedWritable {
            cache: self.0.clone(),
            id,
            path: path.to_owned(),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.0.inner.create(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>> {
        let r = self.0.inner.open_read(path)?;
        let id = self.0.new_id();
        self.0.keep(id, Open::Read(r));
        Ok(Arc::new(CachedReadable {
            cache: self.0.clone(),
            id,
            path: path.to_owned(),
        }))
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.inner.read_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.inner.sync_dir(path)
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        self.0.inner.free_bytes(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::StdFs;

    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    #[test]
    fn the_default_bound_leaves_a_reserve_and_is_capped() {
        assert_eq!(budget(Some(1024), 20), 1024 - 256 - 20);
        assert_eq!(budget(Some(100), 10), 100 - 64 - 10);
        assert_eq!(budget(Some(4096), 10), 4096 - 1024 - 10);
        assert_eq!(budget(Some(20_000), 0), 4096);
        assert_eq!(budget(Some(1 << 20), 50), 4096);
        assert_eq!(budget(None, 50), 4096);
        assert_eq!(budget(Some(10), 50), MIN_OPEN_FILES);
    }

    #[test]
    fn at_most_max_open_handles_are_open_and_evicted_ones_reopen() {
        let dir = tempfile::tempdir().expect("test setup");
        let cache = HandleCache::new(Arc::new(StdFs), 8);
        let fs = CachedFs(cache.clone());
        let before = fds();
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for i in 0..100 {
            let p = dir.path().join(format!("{i}.log"));
            let mut w = fs.open_append(&p, true).expect("open");
            w.write_all(format!("file {i}\n").as_bytes())
                .expect("write");
            writers.push(w);
            readers.push(fs.open_read(&p).expect("open"));
        }
        assert_eq!(cache.open_now(), 8);
        // Other tests of this binary open files too: allow for them.
        assert!(fds() <= before + 8 + 16, "{} fds open", fds() - before);
        // Every handle works again after eviction, and writes land at the end.
        for (i, (w, r)) in writers.iter_mut().zip(&readers).enumerate() {
            w.write_all(b"more\n").expect("write after eviction");
            w.sync_data().expect("sync after eviction");
            let want = format!("file {i}\nmore\n");
            assert_eq!(r.size().expect("size"), want.len() as u64);
            let mut buf = vec![0; want.len()];
            r.read_exact_at(&mut buf, 0).expect("read");
            assert_eq!(String::from_utf8_lossy(&buf), want);
        }
        assert!(cache.stats.reopens.load(Ordering::Relaxed) >= 180);
        assert_eq!(cache.open_now(), 8);
        drop(writers);
        drop(readers);
        assert_eq!(cache.open_now(), 0);
    }
}
