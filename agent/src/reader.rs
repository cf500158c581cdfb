//! The reader thread: drives the [`Tailer`] with file events, rescans and timeouts.
//!
//! One OS thread owns every file. Each turn is a few named phases:
//! 1. `take_events`: drain the file events of the directory watches ([`crate::fsevents`])
//!    without blocking; a data event marks its file for reading, any other event re-checks
//!    its path;
//! 2. `rescan_if_due`: every `rescan_interval` (or after events were lost), expand the
//!    globs again and stat everything — the fallback for missed events;
//! 3. `read`: read the files that may have data, each up to the read budget, within the room
//!    left in the agent's buffer (bytes read but not acknowledged);
//! 4. `poll_timeouts`: partial lines, multiline records, batch linger, rotated files;
//! 5. `forward`: hand sealed batches to the compression workers, in groups;
//! 6. `wait`: when nothing was read, block on the event channel until an event, an ack that
//!    frees buffer room, or the next deadline. With nothing changing, the thread sleeps: no
//!    per-file polling, whatever the number of files.

use crate::fsevents::{DirWatcher, FsEvent};
use crate::tail::{Emitted, Tailer};
use crate::{AgentStats, Buffer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// What wakes the reader.
#[derive(Debug)]
pub enum ReaderEvent {
    Fs(FsEvent),
    /// Acknowledgements freed buffer room, or shutdown began.
    Wake,
}

/// Capacity of the event channel; an overflow means "rescan everything".
pub const EVENT_QUEUE: usize = 16_384;

pub struct Reader {
    pub tailer: Tailer,
    pub events: Receiver<ReaderEvent>,
    /// Kept to start the file-event watcher (it sends here).
    pub events_tx: SyncSender<ReaderEvent>,
    /// Where the watcher reads its events.
    pub runtime: tokio::runtime::Handle,
    /// Set when the event channel was full: events were lost.
    pub overflow: Arc<AtomicBool>,
    pub workers: Vec<SyncSender<Vec<Emitted>>>,
    /// Raw batch bytes handed to one worker at once (see [`crate::compress`]).
    pub group_bytes: u64,
    pub buffer: Arc<Buffer>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<AgentStats>,
    pub rescan_interval: Duration,
    /// Whether to use file events at all (tests of the rescan path turn them off).
    pub use_events: bool,
}

struct State {
    watcher: Option<DirWatcher>,
    last_scan: Instant,
    rescan_now: bool,
    next_worker: usize,
}

impl Reader {
    /// Runs until told to stop, then seals open batches and hands them over.
    pub fn run(mut self) {
        let mut st = State {
            watcher: None,
            last_scan: Instant::now(),
            rescan_now: false,
            next_worker: 0,
        };
        if self.use_events {
            match DirWatcher::start(&self.runtime, self.events_tx.clone(), self.overflow.clone()) {
                Ok(w) => st.watcher = Some(w),
                Err(e) => tracing::warn!(error = %e, "file events unavailable; relying on rescans"),
            }
        }
        self.watch_roots(&mut st);
        self.tailer.scan(Instant::now());
        // From here on a file that appears is seen (an event, or the next rescan): a user (or a
        // test) that starts writing after this line loses nothing to the agent's startup.
        tracing::info!(
            files = self.tailer.file_count(),
            directories = self.tailer.roots().len(),
            events = st.watcher.is_some(),
            "tailing started"
        );
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            self.take_events(&mut st, now);
            self.rescan_if_due(&mut st, now);
            let room = self.buffer.room(self.tailer.open_bytes());
            let read = if room > 0 {
                self.tailer.read_turn(now, room)
            } else {
                0
            };
            self.tailer.poll_timeouts(now);
            self.seal_for_room();
            if !self.forward(&mut st) {
                return;
            }
            self.publish_stats();
            let busy = room > 0 && (read > 0 || self.tailer.has_work());
            if !busy {
                self.wait(&mut st);
            }
        }
        let _ = self.tailer.flush_batches();
        self.forward(&mut st);
        self.publish_stats();
    }

    fn watch_roots(&mut self, st: &mut State) {
        let Some(w) = st.watcher.as_mut() else {
            return;
        };
        for root in self.tailer.roots() {
            if w.is_watched(&root.dir) || !root.dir.is_dir() {
                continue;
            }
            if let Err(e) = w.watch(&root.dir, root.recursive()) {
                tracing::warn!(dir = %root.dir.display(), error = %e, "cannot watch directory; relying on rescans")
            }
        }
    }

    fn take_events(&mut self, st: &mut State, now: Instant) {
        while let Ok(ev) = self.events.try_recv() {
            self.handle_event(st, ev, now);
        }
        if self.overflow.swap(false, Ordering::Relaxed) {
            metrics::counter!("ferry_agent_file_events_lost_total", "why" => "queue_full")
                .increment(1);
            tracing::warn!("file event queue overflowed; rescanning");
            st.rescan_now = true;
        }
    }

    fn handle_event(&mut self, st: &mut State, ev: ReaderEvent, now: Instant) {
        match ev {
            ReaderEvent::Wake => {}
            ReaderEvent::Fs(FsEvent::Lost(why)) => {
                metrics::counter!("ferry_agent_file_events_lost_total", "why" => why).increment(1);
                st.rescan_now = true;
            }
            ReaderEvent::Fs(FsEvent::Data(p)) => {
                if !self.tailer.data_event(&p) && !self.tailer.path_event(&p, now) {
                    st.rescan_now = true;
                }
            }
            ReaderEvent::Fs(FsEvent::Changed(p)) => {
                if !self.tailer.path_event(&p, now) {
                    st.rescan_now = true;
                }
            }
        }
    }

    fn rescan_if_due(&mut self, st: &mut State, now: Instant) {
        if !st.rescan_now && now.duration_since(st.last_scan) < self.rescan_interval {
            return;
        }
        st.rescan_now = false;
        st.last_scan = now;
        self.watch_roots(st);
        self.tailer.scan(now);
        let inputs = self.tailer.inputs();
        let mut seen = crate::FileTable::new();
        for (input, path, lag) in self.tailer.lags() {
            metrics::gauge!("ferry_agent_file_lag_bytes", "input" => inputs[input].name.clone(), "path" => path.to_string())
                .set(lag as f64);
            seen.insert(
                path.clone(),
                crate::FileRow {
                    input,
                    acked: 0,
                    behind: lag,
                },
            );
        }
        if let Ok(mut files) = self.stats.files.lock() {
            for (path, row) in &mut seen {
                row.acked = files.get(path).map_or(0, |r| r.acked);
            }
            *files = seen;
        }
        for (input, path, size) in self.tailer.sizes() {
            metrics::gauge!("ferry_agent_file_size_bytes", "input" => inputs[input].name.clone(), "path" => path.to_string())
                .set(size as f64);
        }
        metrics::gauge!("ferry_agent_files_tracked").set(self.tailer.file_count() as f64);
    }

    /// Bytes in open batches count against the buffer, yet nothing can acknowledge them until
    /// they are sealed. When they hold half the buffer and no room is left, waiting out the
    /// linger only stalls reading: with many files each ends its read in a small open batch (a
    /// thousand files of 150 KiB filled the 8 MiB buffer fifty files at a time, then waited
    /// 200 ms, and ran at a third of the single-file speed). Seal them now; the files go on
    /// into new batches once acknowledgements free room.
    fn seal_for_room(&mut self) {
        let open = self.tailer.open_bytes();
        if open > 0 && open.saturating_mul(2) >= self.buffer.limit() && self.buffer.room(open) == 0
        {
            let n = self.tailer.flush_batches();
            metrics::counter!("ferry_agent_batches_sealed_for_room_total").increment(n as u64);
        }
    }

    /// Hands what the tailer produced to the workers, round robin, in groups of up to
    /// `group_bytes` of batches. False if they are gone.
    fn forward(&mut self, st: &mut State) -> bool {
        let (mut group, mut bytes) = (Vec::new(), 0u64);
        for item in self.tailer.take_output() {
            if let Emitted::Batch { batch, .. } = &item {
                self.buffer.take(batch.span_bytes());
                bytes += batch.builder.raw_len() as u64;
            }
            group.push(item);
            if bytes >= self.group_bytes {
                if !hand_over(&self.workers, st, std::mem::take(&mut group)) {
                    return false;
                }
                bytes = 0;
            }
        }
        group.is_empty() || hand_over(&self.workers, st, group)
    }

    fn publish_stats(&mut self) {
        let stats = self.tailer.take_stats();
        for (i, s) in stats.iter().enumerate() {
            if s.lines == 0 && s.unread_bytes == 0 && s.sealed_after_backlog == 0 {
                continue;
            }
            let name = self.tailer.inputs()[i].name.clone();
            metrics::counter!("ferry_agent_lines_read_total", "input" => name.clone())
                .increment(s.lines);
            metrics::counter!("ferry_agent_bytes_read_total", "input" => name.clone())
                .increment(s.bytes);
            if s.sealed_after_backlog > 0 {
                metrics::counter!("ferry_agent_batches_sealed_caught_up_total", "input" => name.clone())
                    .increment(s.sealed_after_backlog);
            }
            if s.truncated > 0 {
                metrics::counter!("ferry_agent_truncated_lines_total", "input" => name.clone())
                    .increment(s.truncated);
            }
            self.stats.lines_read.fetch_add(s.lines, Ordering::Relaxed);
            self.stats.bytes_read.fetch_add(s.bytes, Ordering::Relaxed);
            self.stats
                .lines_truncated
                .fetch_add(s.truncated, Ordering::Relaxed);
            self.stats
                .unread_bytes
                .fetch_add(s.unread_bytes, Ordering::Relaxed);
        }
    }

    fn wait(&mut self, st: &mut State) {
        let now = Instant::now();
        let mut until = st.last_scan + self.rescan_interval;
        if let Some(d) = self.tailer.next_deadline() {
            until = until.min(d);
        }
        let timeout = until.saturating_duration_since(now);
        if timeout.is_zero() {
            return;
        }
        match self.events.recv_timeout(timeout) {
            Ok(ev) => self.handle_event(st, ev, Instant::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
        }
    }
}

/// Sends `group` to the next of the `workers` in turn. False if they are gone.
fn hand_over(workers: &[SyncSender<Vec<Emitted>>], st: &mut State, group: Vec<Emitted>) -> bool {
    let sent = workers[st.next_worker].send(group).is_ok();
    st.next_worker = (st.next_worker + 1) % workers.len();
    sent
}
