//! File events: inotify on the glob roots' directories, for the reader thread.
//!
//! Only what can change what the tailer reads is asked for: writes (`IN_MODIFY`), names
//! coming and going (create, delete, both halves of a rename), attribute changes (a `touch`,
//! a `chmod`) and the watched directory itself moving or going. Not `IN_OPEN`,
//! `IN_ACCESS` or the closes: the `notify` crate used before asked for `IN_OPEN` too, so
//! every file the reader opened — a thousand at startup for a thousand files — woke its
//! thread, which took the CPU from the reader and sent an event back that the reader then
//! dropped (issue 20: 1,000 files read about 10 % slower with file events on than off). Any
//! other process opening a log file (a `grep`, `logrotate`) cost the same.
//!
//! Events are read on the agent's tokio runtime (no thread of its own) and passed to the
//! reader's channel; when the channel is full they are dropped and the `overflow` flag set,
//! which makes the reader rescan — as does the kernel's own queue overflowing.
//! Directories created below a recursive root are watched as they appear.

use crate::reader::ReaderEvent;
use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// What happened to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    /// The file was written to: read it.
    Data(PathBuf),
    /// The path was created, removed, renamed or changed its attributes: look at it again.
    Changed(PathBuf),
    /// Events may have been missed, for the reason given (the kernel's queue overflowed, or
    /// reading them failed): rescan.
    Lost(&'static str),
}

const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

#[derive(Debug, Default)]
struct Dirs {
    by_wd: HashMap<WatchDescriptor, (PathBuf, bool)>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
}

impl Dirs {
    fn insert(&mut self, wd: WatchDescriptor, dir: PathBuf, recursive: bool) {
        if let Some((old, _)) = self.by_wd.insert(wd.clone(), (dir.clone(), recursive))
            && old != dir
        {
            self.by_path.remove(&old);
        }
        self.by_path.insert(dir, wd);
    }

    fn remove(&mut self, wd: &WatchDescriptor) {
        if let Some((dir, _)) = self.by_wd.remove(wd)
            && self.by_path.get(&dir) == Some(wd)
        {
            self.by_path.remove(&dir);
        }
    }
}

/// The directories watched and the task reading their events; dropping it stops the task.
pub struct DirWatcher {
    watches: Watches,
    dirs: Arc<Mutex<Dirs>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DirWatcher {
    /// Starts reading events on `rt`; each is sent to `tx` as [`ReaderEvent::Fs`].
    pub fn start(
        rt: &tokio::runtime::Handle,
        tx: SyncSender<ReaderEvent>,
        overflow: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        let _guard = rt.enter();
        // Room for a few hundred events per read (an event is 16 bytes and its name).
        let mut stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
        let watches = stream.watches();
        let dirs = Arc::new(Mutex::new(Dirs::default()));
        let (task_dirs, mut task_watches) = (dirs.clone(), watches.clone());
        let task = rt.spawn(async move {
            let send = |ev: FsEvent| {
                if let Err(TrySendError::Full(_)) = tx.try_send(ReaderEvent::Fs(ev)) {
                    overflow.store(true, Ordering::Relaxed);
                }
            };
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading file events failed; rescanning");
                        send(FsEvent::Lost("read_error"));
                        continue;
                    }
                };
                if let Some(out) = translate(&task_dirs, &mut task_watches, ev.wd, ev.mask, ev.name)
                {
                    send(out);
                }
            }
        });
        Ok(Self {
            watches,
            dirs,
            task,
        })
    }

    /// Watches `dir` (and, if `recursive`, every directory below it) unless it already is.
    pub fn watch(&mut self, dir: &Path, recursive: bool) -> io::Result<()> {
        if self.is_watched(dir) {
            return Ok(());
        }
        add(&self.dirs, &mut self.watches, dir, recursive)
    }

    /// Whether `dir` has a live watch (one that went away with its directory does not).
    pub fn is_watched(&self, dir: &Path) -> bool {
        self.dirs
            .lock()
            .map(|d| d.by_path.contains_key(dir))
            .unwrap_or(false)
    }
}

fn add(dirs: &Mutex<Dirs>, watches: &mut Watches, dir: &Path, recursive: bool) -> io::Result<()> {
    let wd = watches.add(dir, MASK | WatchMask::ONLYDIR)?;
    if let Ok(mut d) = dirs.lock() {
        d.insert(wd, dir.to_path_buf(), recursive);
    }
    if recursive {
        // Subdirectories that exist now; those created later arrive as events.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let sub = e.path();
                    if let Err(err) = add(dirs, watches, &sub, true) {
                        tracing::debug!(dir = %sub.display(), error = %err, "cannot watch directory");
                    }
                }
            }
        }
    }
    Ok(())
}

/// One inotify event as the reader's event, if it is one the reader needs.
fn translate(
    dirs: &Mutex<Dirs>,
    watches: &mut Watches,
    wd: WatchDescriptor,
    mask: EventMask,
    name: Option<std::ffi::OsString>,
) -> Option<FsEvent> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Some(FsEvent::Lost("kernel_queue_overflow"));
    }
    if mask.contains(EventMask::IGNORED) {
        // The watch is gone with its directory (removed, or its file system unmounted). Its
        // files went first, each with its own event. The reader looks at the path: nothing
        // there, nothing to do (a pod's log directory removed needs no rescan); a directory
        // there again (made anew at once) makes it rescan, which watches a root again.
        let gone = dirs.lock().ok().and_then(|mut d| {
            let dir = d.by_wd.get(&wd).map(|(p, _)| p.clone());
            d.remove(&wd);
            dir
        });
        return gone.map(FsEvent::Changed);
    }
    let (dir, recursive) = dirs.lock().ok().and_then(|d| d.by_wd.get(&wd).cloned())?;
    let path = match name {
        Some(n) => dir.join(n),
        None => dir,
    };
    if mask.contains(EventMask::ISDIR) {
        if recursive
            && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
            && let Err(e) = add(dirs, watches, &path, true)
        {
            tracing::debug!(dir = %path.display(), error = %e, "cannot watch new directory");
        }
        // A directory's name changed: the reader rescans to see what is in it.
        return Some(FsEvent::Changed(path));
    }
    if mask.contains(EventMask::MODIFY) {
        return Some(FsEvent::Data(path));
    }
    Some(FsEvent::Changed(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::time::{Duration, Instant};

    fn next(rx: &Receiver<ReaderEvent>, within: Duration) -> Option<FsEvent> {
        match rx.recv_timeout(within) {
            Ok(ReaderEvent::Fs(ev)) => Some(ev),
            Ok(ReaderEvent::Wake) => None,
            Err(_) => None,
        }
    }

    /// Everything that arrives within `within` of the last event.
    fn drain(rx: &Receiver<ReaderEvent>, within: Duration) -> Vec<FsEvent> {
        let mut out = Vec::new();
        while let Some(ev) = next(rx, within) {
            out.push(ev);
        }
        out
    }

    fn start() -> (tokio::runtime::Runtime, DirWatcher, Receiver<ReaderEvent>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = sync_channel(1024);
        let w = DirWatcher::start(rt.handle(), tx, Arc::new(AtomicBool::new(false))).unwrap();
        (rt, w, rx)
    }

    #[test]
    fn writes_names_and_renames_are_reported_opens_and_reads_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (_rt, mut w, rx) = start();
        let log = dir.path().join("app.log");
        std::fs::write(&log, b"before\n").unwrap();
        w.watch(dir.path(), false).unwrap();
        assert!(w.is_watched(dir.path()));

        // Reading a file (what the reader does with every file it tails) is no event.
        for _ in 0..50 {
            let mut s = String::new();
            std::fs::File::open(&log)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
        }
        assert_eq!(drain(&rx, Duration::from_millis(200)), vec![]);

        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"line\n").unwrap();
        assert_eq!(
            next(&rx, Duration::from_secs(5)),
            Some(FsEvent::Data(log.clone()))
        );
        drop(f);
        let rotated = dir.path().join("app.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        std::fs::write(&log, b"new\n").unwrap();
        let evs = drain(&rx, Duration::from_millis(300));
        assert!(evs.contains(&FsEvent::Changed(log.clone())), "{evs:?}");
        assert!(evs.contains(&FsEvent::Changed(rotated.clone())), "{evs:?}");
        std::fs::remove_file(&rotated).unwrap();
        let evs = drain(&rx, Duration::from_millis(300));
        assert!(evs.contains(&FsEvent::Changed(rotated)), "{evs:?}");
    }

    #[test]
    fn directories_made_below_a_recursive_root_are_watched_as_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let (_rt, mut w, rx) = start();
        w.watch(dir.path(), true).unwrap();
        assert!(w.is_watched(&dir.path().join("old")));

        let deep = dir.path().join("pods/web-1");
        std::fs::create_dir_all(&deep).unwrap();
        // The new directories are watched once their creation is read.
        let t = Instant::now();
        while !w.is_watched(&deep) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "new directory not watched"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drain(&rx, Duration::from_millis(100));
        let log = deep.join("0.log");
        std::fs::write(&log, b"x\n").unwrap();
        let evs = drain(&rx, Duration::from_millis(300));
        assert!(evs.contains(&FsEvent::Changed(log.clone())), "{evs:?}");
        assert!(evs.contains(&FsEvent::Data(log)), "{evs:?}");
        // Not recursive: a subdirectory's files are not reported.
        let flat = tempfile::tempdir().unwrap();
        std::fs::create_dir(flat.path().join("sub")).unwrap();
        w.watch(flat.path(), false).unwrap();
        std::fs::write(flat.path().join("sub/a.log"), b"x\n").unwrap();
        assert_eq!(drain(&rx, Duration::from_millis(200)), vec![]);
    }

    #[test]
    fn a_removed_directory_loses_its_watch_and_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let (_rt, mut w, rx) = start();
        w.watch(&sub, false).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        // The directory named (the reader looks: nothing there), no rescan asked for.
        let evs = drain(&rx, Duration::from_millis(300));
        assert!(evs.contains(&FsEvent::Changed(sub.clone())), "{evs:?}");
        assert!(
            !evs.iter().any(|e| matches!(e, FsEvent::Lost(_))),
            "{evs:?}"
        );
        assert!(!w.is_watched(&sub));
        // Back again: watched again by the next call (the reader's rescan makes it).
        std::fs::create_dir(&sub).unwrap();
        w.watch(&sub, false).unwrap();
        std::fs::write(sub.join("a.log"), b"x\n").unwrap();
        let evs = drain(&rx, Duration::from_millis(300));
        assert!(evs.contains(&FsEvent::Data(sub.join("a.log"))), "{evs:?}");
    }
}
