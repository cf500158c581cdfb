//! The tailer against a model: random writes, rename-rotations, copytruncates, truncations,
//! deletions and recreations are applied to real files in a temp dir, read by the real
//! [`Tailer`] (real watchers, real reads with tiny buffers and budgets), and to a model that
//! only remembers which lines were written to which file instance. After a final drain, every
//! written line must have come out exactly once, in order per file instance, and each file
//! identity's batches must cover its bytes contiguously from 0.

use super::*;
use crate::checkpoint::OriginV2;
use crate::config::{AgentConfig, InputConfig};
use ferry_core::batch::{Codec, DecodeLimits, decode};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
/// The agent's default `batch.backlog_bytes`.
fn default_backlog() -> u64 {
    crate::config::BatchConfig::default().backlog_bytes.get()
}

#[derive(Debug, Clone)]
enum Action {
    /// Append `lines` lines of `pad` extra bytes to the file at `path` (creating it if absent),
    /// first completing a line left incomplete by the previous write; with `partial`, end with
    /// the first part of one more line. `notify`: deliver a data event as inotify would.
    Write {
        path: usize,
        lines: usize,
        pad: usize,
        partial: bool,
        notify: bool,
    },
    /// logrotate `create`: rename to `.1` (replacing the previous `.1`), create a new file.
    Rotate {
        path: usize,
        scan: bool,
    },
    /// logrotate `copytruncate`: copy to `.1`, truncate in place.
    CopyTruncate {
        path: usize,
        scan: bool,
    },
    /// `> file`.
    Truncate {
        path: usize,
        scan: bool,
    },
    Delete {
        path: usize,
        scan: bool,
    },
    /// One reader turn, then time passes.
    Turn {
        advance_ms: u64,
    },
    Rescan,
}

fn action() -> impl Strategy<Value = Action> {
    let path = 0usize..2;
    prop_oneof![
        6 => (path.clone(), 0usize..6, 0usize..60, any::<bool>(), any::<bool>())
            .prop_map(|(path, lines, pad, partial, notify)| Action::Write { path, lines, pad, partial, notify }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, scan)| Action::Rotate { path, scan }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, scan)| Action::CopyTruncate { path, scan }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, scan)| Action::Truncate { path, scan }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, scan)| Action::Delete { path, scan }),
        4 => (0u64..3000).prop_map(|advance_ms| Action::Turn { advance_ms }),
        1 => Just(Action::Rescan),
    ]
}

/// What was written: per file instance (a file's content from creation or truncation on), the
/// number of lines. A line whose first part was written counts: if its file ends before the
/// rest is written, the tailer must still ship the part (never abandon readable bytes).
#[derive(Default)]
struct Model {
    written: Vec<u64>,
    /// Instances whose last line has no newline yet.
    open_line: HashSet<usize>,
    /// The instance each path's current file holds.
    current: [Option<usize>; 2],
}

struct Harness {
    dir: tempfile::TempDir,
    tailer: Tailer,
    now: Instant,
    out: Vec<Emitted>,
    model: Model,
    max_open_files: usize,
}

const NAMES: [&str; 2] = ["a.log", "b.log"];

impl Harness {
    fn new(read_buffer: usize, read_budget: u64, max_records: u32) -> Self {
        Self::with_handles(read_buffer, read_budget, max_records, usize::MAX)
    }

    /// With at most `max_open_files` tail handles (idle files give theirs back).
    fn with_handles(
        read_buffer: usize,
        read_budget: u64,
        max_records: u32,
        max_open_files: usize,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            inputs: vec![InputConfig {
                name: "model".into(),
                include: vec![format!("{}/*.log", dir.path().display())],
                exclude: vec![],
                read_from: ReadFrom::Beginning,
                topic: "t".into(),
                fields: Default::default(),
                multiline: None,
                max_line_bytes: ferry_core::config::ByteSize(4096),
                // Longer than all the time a case lets pass: an incomplete line waits for its
                // rest, and is shipped as is only when its file is released.
                line_flush_timeout: ferry_core::config::Duration::from_secs(3600),
                format: None,
                kubernetes: false,
                rotate_wait: ferry_core::config::Duration::from_secs(30),
            }],
            ..Default::default()
        };
        let inputs: Arc<[CompiledInput]> = cfg.validate().unwrap().into();
        let tailer = Tailer::new(
            TailerSettings {
                agent_id: "model".into(),
                read_budget,
                read_buffer,
                limits: BatchLimits {
                    max_bytes: 1 << 20,
                    max_records,
                    linger: Duration::from_millis(200),
                },
                backlog_bytes: default_backlog(),
                max_open_files,
            },
            inputs,
            Checkpoints::default(),
            BuilderPool::default(),
        );
        let mut h = Self {
            dir,
            tailer,
            now: Instant::now(),
            out: Vec::new(),
            model: Model::default(),
            max_open_files,
        };
        h.tailer.scan(h.now);
        h
    }

    fn path(&self, i: usize) -> PathBuf {
        self.dir.path().join(NAMES[i])
    }

    fn collect(&mut self) {
        self.out.extend(self.tailer.take_output());
    }

    fn notify(&mut self, i: usize, scan: bool) {
        if scan {
            self.tailer.scan(self.now);
        } else {
            let p = self.path(i);
            self.tailer.path_event(&p, self.now);
        }
        self.collect();
    }

    fn new_instance(&mut self, i: usize) {
        self.model.written.push(0);
        self.model.current[i] = Some(self.model.written.len() - 1);
    }

    /// Reads everything there is to read now (no time passes).
    fn read_all(&mut self) {
        self.tailer.scan(self.now);
        while self.tailer.read_turn(self.now, u64::MAX) > 0 || self.tailer.has_work() {}
        self.tailer.poll_timeouts(self.now);
        self.collect();
    }

    fn apply(&mut self, a: &Action) {
        match *a {
            Action::Write {
                path,
                lines,
                pad,
                partial,
                notify,
            } => {
                let p = self.path(path);
                if self.model.current[path].is_none() {
                    std::fs::File::create(&p).unwrap();
                    self.new_instance(path);
                    self.notify(path, false);
                }
                let inst = self.model.current[path].unwrap_or_default();
                let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                let mut text = String::new();
                if self.model.open_line.remove(&inst) {
                    text.push_str("rest\n");
                }
                for _ in 0..lines {
                    let seq = self.model.written[inst];
                    text.push_str(&format!("i{inst}-{seq}-{}\n", "x".repeat(pad)));
                    self.model.written[inst] += 1;
                }
                if partial {
                    let seq = self.model.written[inst];
                    text.push_str(&format!("i{inst}-{seq}-{}", "y".repeat(pad)));
                    self.model.written[inst] += 1;
                    self.model.open_line.insert(inst);
                }
                f.write_all(text.as_bytes()).unwrap();
                if notify {
                    self.tailer.data_event(&p);
                }
            }
            Action::Rotate { path, scan } => {
                if self.model.current[path].is_none() {
                    return;
                }
                if self.max_open_files != usize::MAX {
                    // A file that gave its handle back (or never got one: rotated files hold
                    // theirs for a while) and is renamed over by the next rotation before the
                    // agent looked again is gone with what it held past the last read
                    // (documented): the model is of a tailer that kept up.
                    self.catch_up();
                }
                let p = self.path(path);
                std::fs::rename(&p, p.with_extension("log.1")).unwrap();
                std::fs::File::create(&p).unwrap();
                self.new_instance(path);
                self.notify(path, scan);
            }
            Action::CopyTruncate { path, scan } | Action::Truncate { path, scan } => {
                if self.model.current[path].is_none() {
                    return;
                }
                // Lines written before a truncation and never read are gone for any tailer
                // (that race is inherent to copytruncate): the model is of a tailer that kept
                // up, and the harness drains first (with scarce handles, letting rotated files
                // give theirs back).
                if self.max_open_files == usize::MAX {
                    self.read_all();
                } else {
                    self.catch_up();
                }
                let p = self.path(path);
                if matches!(a, Action::CopyTruncate { .. }) {
                    // Like logrotate, the copy is a new file (older rotations were moved on).
                    let rotated = p.with_extension("log.1");
                    let _ = std::fs::remove_file(&rotated);
                    std::fs::copy(&p, &rotated).unwrap();
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&p)
                    .unwrap();
                self.new_instance(path);
                self.notify(path, scan);
            }
            Action::Delete { path, scan } => {
                if self.model.current[path].is_none() {
                    return;
                }
                if self.max_open_files != usize::MAX {
                    // The same for a file deleted while its handle was given back.
                    self.catch_up();
                }
                self.model.current[path] = None;
                std::fs::remove_file(self.path(path)).unwrap();
                self.notify(path, scan);
            }
            Action::Turn { advance_ms } => {
                self.tailer.read_turn(self.now, u64::MAX);
                self.tailer.poll_timeouts(self.now);
                self.collect();
                self.now += Duration::from_millis(advance_ms);
            }
            Action::Rescan => {
                self.tailer.scan(self.now);
                self.collect();
            }
        }
    }

    /// With scarce handles: reads what there is, lets rotated files be released (their
    /// handles go to files waiting for one), reads again.
    fn catch_up(&mut self) {
        self.read_all();
        self.now += Duration::from_secs(10);
        self.tailer.poll_timeouts(self.now);
        self.read_all();
    }

    /// Reads to the end, lets every timeout pass, releases everything.
    fn drain(&mut self) {
        for _ in 0..3 {
            self.read_all();
            self.now += Duration::from_secs(10);
            self.tailer.poll_timeouts(self.now);
            self.collect();
        }
        self.read_all();
        self.tailer.release_all(self.now);
        self.collect();
    }
}

/// Decodes what the tailer emitted into (instance, seq) per line, checking each identity's
/// batches are contiguous from 0.
fn shipped(out: &mut [Emitted]) -> Result<BTreeMap<usize, Vec<u64>>, TestCaseError> {
    let mut lines: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut next_offset: HashMap<FileId, u64> = HashMap::new();
    for e in out.iter_mut() {
        let Emitted::Batch { batch, .. } = e else {
            continue;
        };
        let want = next_offset.entry(batch.file).or_insert(0);
        prop_assert_eq!(
            batch.first_offset,
            *want,
            "gap or overlap in {:?}",
            batch.file
        );
        *want = batch.end_offset;
        let enc = batch.builder.finish(Codec::None, 0, 0).unwrap();
        let decoded = decode(&enc.into(), &DecodeLimits::default()).unwrap();
        let origin = decoded.header.origin.unwrap();
        prop_assert_eq!(origin.key.file, batch.file);
        for r in &decoded.records {
            let text = String::from_utf8_lossy(&r.line);
            let mut parts = text.splitn(3, '-');
            let parsed = (
                parts
                    .next()
                    .and_then(|s| s.get(1..))
                    .and_then(|s| s.parse::<usize>().ok()),
                parts.next().and_then(|s| s.parse::<u64>().ok()),
            );
            let (Some(inst), Some(seq)) = parsed else {
                return Err(TestCaseError::fail(format!(
                    "line {text:?} was not written as such (batch {:?} at {})",
                    batch.file, batch.first_offset
                )));
            };
            prop_assert!(!r.truncated);
            lines.entry(inst).or_default().push(seq);
        }
    }
    Ok(lines)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn tailer_ships_every_written_line_exactly_once_in_order(
        actions in proptest::collection::vec(action(), 1..40),
        read_buffer in 8usize..64,
        read_budget in 16u64..400,
        max_records in 1u32..8,
        max_open_files in prop_oneof![2 => Just(usize::MAX), 1 => 1usize..3],
        // Sealed when a read reaches a file's end after this many bytes: at every end, after
        // a few lines, or never in these small files (the default).
        backlog_bytes in prop_oneof![Just(0u64), 16u64..300, Just(default_backlog())],
    ) {
        let mut h = Harness::with_handles(read_buffer, read_budget, max_records, max_open_files);
        h.tailer.settings.backlog_bytes = backlog_bytes;
        for a in &actions {
            h.apply(a);
        }
        h.drain();
        let got = shipped(&mut h.out)?;
        for (inst, &n) in h.model.written.iter().enumerate() {
            let want: Vec<u64> = (0..n).collect();
            let empty = Vec::new();
            let have = got.get(&inst).unwrap_or(&empty);
            prop_assert_eq!(have, &want, "instance {} (actions {:?})", inst, actions);
        }
        prop_assert_eq!(got.keys().filter(|i| **i >= h.model.written.len()).count(), 0);
        prop_assert_eq!(h.tailer.file_count(), 0, "every file released after the drain");
        prop_assert_eq!(h.tailer.open_handles(), 0, "every handle given back");
        prop_assert_eq!(h.tailer.waiting_count(), 0, "no file left waiting");
        prop_assert_eq!(h.tailer.open_bytes(), 0, "buffer accounting returns to zero");
    }
}

/// Regression: a file renamed to a name the glob also matches keeps its position (no re-read).
#[test]
fn renamed_into_a_matched_name_keeps_position() {
    let mut h = Harness::new(64, 1 << 20, 100);
    let p = h.path(0);
    std::fs::write(&p, "i0-0-\ni0-1-\n").unwrap();
    h.model.written.push(2);
    h.read_all();
    std::fs::rename(&p, h.path(1)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(h.path(1))
        .unwrap();
    f.write_all(b"i0-2-\n").unwrap();
    h.model.written[0] = 3;
    h.tailer.path_event(&p, h.now);
    h.tailer.path_event(&h.path(1), h.now);
    h.apply(&Action::Delete {
        path: 0,
        scan: false,
    });
    eprintln!(
        "after delete: open {} waiting {} files {} out {}",
        h.tailer.open_handles(),
        h.tailer.waiting_count(),
        h.tailer.file_count(),
        h.out.len()
    );
    h.drain();
    let got = shipped(&mut h.out).unwrap();
    assert_eq!(got[&0], vec![0, 1, 2]);
}

/// Two files with the same first line are two files: different identities, all lines of both.
#[test]
fn same_first_line_in_two_files() {
    let mut h = Harness::new(64, 1 << 20, 100);
    std::fs::write(h.path(0), "i0-0-same\n").unwrap();
    std::fs::write(h.path(1), "i1-0-same\n").unwrap();
    h.drain();
    let ids: HashSet<FileId> = h
        .out
        .iter()
        .filter_map(|e| match e {
            Emitted::Batch { batch, .. } => Some(batch.file),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
}

/// Two files of one directory that begin with the same bytes (two workers' logs with the same
/// banner) look like a file and its copy while they are identical; once the second gets lines
/// the first does not have, it is read whole as itself: nothing is held back as a "copy" of a
/// file that was never truncated.
#[test]
fn a_file_that_began_like_another_is_read_whole_once_it_differs() {
    let mut h = harness_with(None);
    let (a, b) = (
        h.dir.path().join("worker-1.log"),
        h.dir.path().join("worker-2.log"),
    );
    std::fs::write(&a, "starting worker\nready\n").unwrap();
    h.catch_up();
    // The second worker starts: the same banner, for now all it holds.
    std::fs::write(&b, "starting worker\nready\n").unwrap();
    h.tailer.path_event(&b, h.now);
    h.catch_up();
    let mut f = std::fs::OpenOptions::new().append(true).open(&b).unwrap();
    f.write_all(b"job 2 done\n").unwrap();
    h.tailer.data_event(&b);
    h.catch_up();
    h.collect();
    let mut got: Vec<String> = line_texts(&mut h.out);
    got.sort();
    assert_eq!(
        got,
        [
            "job 2 done",
            "ready",
            "ready",
            "starting worker",
            "starting worker"
        ]
    );
}

fn harness_with(multiline: Option<crate::config::MultilineConfig>) -> Harness {
    harness_of("unit", "*.log", multiline, 1)
}

/// A harness of one input named `name` over `glob` in its directory (64-byte reads, batches
/// of at most 100 records with a 200 ms linger).
fn harness_of(
    name: &str,
    glob: &str,
    multiline: Option<crate::config::MultilineConfig>,
    line_flush_secs: u64,
) -> Harness {
    let mut h = Harness::new(64, 1 << 20, 100);
    let cfg = AgentConfig {
        inputs: vec![InputConfig {
            name: name.into(),
            include: vec![format!("{}/{glob}", h.dir.path().display())],
            exclude: vec![],
            read_from: ReadFrom::Beginning,
            topic: "t".into(),
            fields: Default::default(),
            multiline,
            max_line_bytes: ferry_core::config::ByteSize(4096),
            line_flush_timeout: ferry_core::config::Duration::from_secs(line_flush_secs),
            format: None,
            kubernetes: false,
            rotate_wait: ferry_core::config::Duration::from_secs(30),
        }],
        ..Default::default()
    };
    let inputs: Arc<[CompiledInput]> = cfg.validate().unwrap().into();
    h.tailer = Tailer::new(
        TailerSettings {
            agent_id: name.into(),
            read_budget: 1 << 20,
            read_buffer: 64,
            limits: BatchLimits {
                max_bytes: 1 << 20,
                max_records: 100,
                linger: Duration::from_millis(200),
            },
            backlog_bytes: default_backlog(),
            max_open_files: usize::MAX,
        },
        inputs,
        Checkpoints::default(),
        BuilderPool::default(),
    );
    h
}

/// Records (line, span, truncated, generation) of every batch emitted so far.
/// The lines of every batch in `out`, in order.
fn line_texts(out: &mut [Emitted]) -> Vec<String> {
    records(out).into_iter().map(|r| r.0).collect()
}

fn records(out: &mut [Emitted]) -> Vec<(String, u64, u32)> {
    spans_by_origin(out)
        .into_iter()
        .map(|(line, id, _, span)| (line, span, id.generation))
        .collect()
}

#[test]
fn partial_last_line_ships_after_its_flush_timeout() {
    let mut h = harness_with(None);
    std::fs::write(h.path(0), "whole\nhalf").unwrap();
    h.read_all();
    let t0 = h.now;
    h.tailer.poll_timeouts(t0 + Duration::from_millis(300));
    h.collect();
    assert_eq!(records(&mut h.out), vec![("whole".to_owned(), 6, 0)]);
    // 1 s after the last data the partial line joins a batch, which then lingers 200 ms.
    h.tailer.poll_timeouts(t0 + Duration::from_secs(1));
    h.tailer.poll_timeouts(t0 + Duration::from_millis(1200));
    h.collect();
    assert_eq!(records(&mut h.out)[1..], [("half".to_owned(), 4, 0)]);
}

#[test]
fn multiline_stack_trace_is_one_record_through_the_tailer() {
    let mut h = harness_with(Some(crate::config::MultilineConfig {
        start_pattern: Some(r"^\d{4}-".into()),
        continuation_pattern: None,
        max_lines: 100,
        timeout: ferry_core::config::Duration::from_secs(1),
    }));
    let p = h.path(0);
    std::fs::write(&p, "2026-01-01 ERROR boom\njava.lang.Ill").unwrap();
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"egalState\n\tat a.B(C.java:1)\n2026-01-01 INFO next\n")
        .unwrap();
    h.read_all();
    h.now += Duration::from_secs(5);
    h.tailer.poll_timeouts(h.now);
    h.tailer.poll_timeouts(h.now + Duration::from_secs(1));
    h.collect();
    let recs = records(&mut h.out);
    assert_eq!(
        recs[0].0,
        "2026-01-01 ERROR boom\njava.lang.IllegalState\n\tat a.B(C.java:1)"
    );
    assert_eq!(recs[1].0, "2026-01-01 INFO next");
    assert_eq!(recs[0].1 + recs[1].1, std::fs::metadata(&p).unwrap().len());
}

#[test]
fn truncation_counts_what_it_lost_and_starts_a_new_generation() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"never read\n").unwrap();
    h.tailer.scan(h.now); // a stat sees the 11 new bytes, nothing reads them
    std::fs::write(&p, "new\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX);
    h.tailer.release_all(h.now);
    h.collect();
    let recs = records(&mut h.out);
    assert_eq!(
        recs,
        vec![
            ("one".into(), 4, 0),
            ("two".into(), 4, 0),
            ("new".into(), 4, 1)
        ]
    );
    // The restart at 0 is checkpointed, under the new generation, with the old content's
    // print: the 11 bytes are pending, not counted yet (a copy may still appear).
    assert!(
        h.out
            .iter()
            .any(|e| matches!(e, Emitted::Position { state, offset: 0 }
            if state.generation == 1 && state.pending.iter().any(|p| p.lost == 11 && p.from == 8)))
    );
    assert_eq!(h.tailer.take_stats()[0].unread_bytes, 0);
    assert!(
        !h.out
            .iter()
            .any(|e| matches!(e, Emitted::CopyResolved { .. }))
    );
    // No copy within `rotate_wait` (30 s): the 11 bytes are lost, counted once the checkpoint
    // forgets the print.
    h.tailer.poll_timeouts(h.now + Duration::from_secs(29));
    h.collect();
    assert!(
        !h.out
            .iter()
            .any(|e| matches!(e, Emitted::CopyResolved { .. }))
    );
    h.tailer.poll_timeouts(h.now + Duration::from_secs(30));
    h.collect();
    let resolved: Vec<u64> = h
        .out
        .iter()
        .filter_map(|e| match e {
            Emitted::CopyResolved { lost, .. } => Some(*lost),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, [11]);
}

#[test]
fn read_turn_stays_within_the_buffer_allowance() {
    let mut h = harness_with(None);
    std::fs::write(h.path(0), "x".repeat(1000) + "\n").unwrap();
    h.tailer.scan(h.now);
    assert_eq!(h.tailer.read_turn(h.now, 100), 100);
    assert_eq!(h.tailer.read_turn(h.now, 0), 0);
    assert!(h.tailer.has_work(), "the rest waits for room");
    assert_eq!(h.tailer.read_turn(h.now, u64::MAX), 901);
}

/// Resume decisions at startup, from a checkpoint: same file → resume at its offset; same
/// file now shorter (truncated while stopped) → from 0 as the next generation, announced.
#[test]
fn startup_resumes_or_restarts_from_the_checkpoint() {
    use crate::checkpoint::FileCheckpoint;
    use std::os::unix::fs::MetadataExt;
    let h = harness_with(None);
    let (a, b) = (h.path(0), h.path(1));
    std::fs::write(&a, "one\ntwo\nthree\n").unwrap();
    std::fs::write(&b, "uno\ndos\ntres\n").unwrap();
    let entry = |p: &Path, offset: u64| {
        let f = std::fs::File::open(p).unwrap();
        let m = f.metadata().unwrap();
        let fp = fingerprint::Fingerprint::take(&f, m.len()).unwrap();
        FileCheckpoint {
            path: p.to_string_lossy().into_owned(),
            dev: m.dev(),
            inode: m.ino(),
            fingerprint: fp,
            generation: 4,
            offset,
            updated_ms: 0,
            origin: None,
            tail: None,
            head: None,
            pending: Vec::new(),
            birth: None,
            probe: None,
        }
    };
    let mut cps = Checkpoints::default();
    for e in [entry(&a, 8), entry(&b, 13)] {
        cps.files.insert((e.dev, e.inode), e);
    }
    // b is truncated while the agent is stopped, then gets new lines (same first bytes).
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&b)
        .unwrap();
    std::fs::write(&b, "uno\n").unwrap();
    let mut tailer = Tailer::new(
        TailerSettings {
            agent_id: "unit".into(),
            read_budget: 1 << 20,
            read_buffer: 64,
            limits: BatchLimits {
                max_bytes: 1 << 20,
                max_records: 100,
                linger: Duration::ZERO,
            },
            backlog_bytes: default_backlog(),
            max_open_files: usize::MAX,
        },
        h.tailer.inputs.clone(),
        cps,
        BuilderPool::default(),
    );
    let now = Instant::now();
    tailer.scan(now);
    tailer.read_turn(now, u64::MAX);
    tailer.poll_timeouts(now);
    let mut out: Vec<Emitted> = tailer.take_output().collect();
    let mut recs = records(&mut out);
    recs.sort();
    assert_eq!(recs, vec![("three".into(), 6, 4), ("uno".into(), 4, 5)]);
    assert!(
        out.iter()
            .any(|e| matches!(e, Emitted::Position { state, offset: 0 } if state.generation == 5))
    );
}

/// A writer that still holds a rotated (here: deleted) file keeps writing; the tailer keeps
/// looking (EOF backoff, no events needed) and reads it all before closing it.
#[test]
fn writer_still_holding_a_deleted_file_is_read_to_the_end() {
    let mut h = harness_with(None);
    let p = h.path(0);
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    writer.write_all(b"before\n").unwrap();
    h.read_all();
    std::fs::remove_file(&p).unwrap();
    h.tailer.path_event(&p, h.now);
    h.tailer.read_turn(h.now, u64::MAX);
    writer.write_all(b"after delete\n").unwrap();
    // Time passes in small steps, with no events and no rescans: the EOF backoff finds it.
    for _ in 0..20 {
        h.now += Duration::from_millis(100);
        h.tailer.read_turn(h.now, u64::MAX);
        h.tailer.poll_timeouts(h.now);
    }
    assert_eq!(h.tailer.file_count(), 1);
    // Written just before the rotate wait runs out, and no reading turn in between: the last
    // look before closing finds it, and the wait starts over.
    for _ in 0..25 {
        h.now += Duration::from_millis(100);
        h.tailer.poll_timeouts(h.now);
    }
    writer.write_all(b"just before close\n").unwrap();
    for _ in 0..100 {
        h.now += Duration::from_millis(100);
        h.tailer.poll_timeouts(h.now);
    }
    h.collect();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["before", "after delete", "just before close"]);
    assert_eq!(h.tailer.file_count(), 0, "released after its rotate wait");
}

/// Regression (found by the collector-outage e2e test): while the agent's buffer was full,
/// reading paused mid-line, and the line's flush timeout shipped its first part as a line of
/// its own; the rest became a second line. The timeout must wait while the file holds unread
/// bytes.
#[test]
fn partial_line_is_not_flushed_while_reading_is_paused() {
    let mut h = harness_with(None);
    let long = "x".repeat(200);
    std::fs::write(h.path(0), format!("first\n{long}\nlast\n")).unwrap();
    h.tailer.scan(h.now);
    assert_eq!(h.tailer.read_turn(h.now, 50), 50, "stops mid-line: no room");
    for s in 1..5 {
        h.tailer.poll_timeouts(h.now + Duration::from_secs(s));
    }
    h.now += Duration::from_secs(5);
    h.read_all();
    h.tailer.release_all(h.now);
    h.collect();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["first".to_owned(), long, "last".to_owned()]);
}

/// Same bug for multiline records: a stack trace whose continuation lines were still unread
/// (buffer full) timed out and was shipped in pieces.
#[test]
fn multiline_record_does_not_time_out_while_reading_is_paused() {
    let mut h = harness_with(Some(crate::config::MultilineConfig {
        start_pattern: Some(r"^\d{4}-".into()),
        continuation_pattern: None,
        max_lines: 100,
        timeout: ferry_core::config::Duration::from_secs(1),
    }));
    let trace = "2026-01-01 ERROR boom\n\tat a.B(B.java:1)\n\tat c.D(D.java:2)";
    std::fs::write(h.path(0), format!("{trace}\n2026-01-01 INFO next\n")).unwrap();
    h.tailer.scan(h.now);
    // The first line and a whole continuation line are read, then the buffer is full.
    assert_eq!(h.tailer.read_turn(h.now, 42), 42);
    for s in 1..5 {
        h.tailer.poll_timeouts(h.now + Duration::from_secs(s));
    }
    h.now += Duration::from_secs(5);
    h.read_all();
    h.tailer.release_all(h.now);
    h.collect();
    let recs: Vec<String> = line_texts(&mut h.out);
    assert_eq!(recs, [trace.to_owned(), "2026-01-01 INFO next".to_owned()]);
}

/// Regression (found by the 10 MiB-line e2e test): the skipped tail of an over-long line was
/// counted as held in the agent's buffer, so a line longer than the buffer stopped reading until
/// its flush timeout shipped it in two truncated pieces. Only the kept bytes take room.
#[test]
fn over_long_line_does_not_fill_the_buffer_with_bytes_it_skips() {
    let mut h = harness_with(None); // max_line_bytes 4096
    let p = h.path(0);
    std::fs::write(&p, "x".repeat(10_000)).unwrap();
    h.tailer.scan(h.now);
    let limit = 5_000u64;
    let mut read = 0;
    loop {
        let room = limit.saturating_sub(h.tailer.open_bytes());
        let n = if room > 0 {
            h.tailer.read_turn(h.now, room)
        } else {
            0
        };
        if n == 0 {
            break;
        }
        read += n;
    }
    assert_eq!(read, 10_000, "the skipped part of the line takes no room");
    assert!(h.tailer.open_bytes() <= 4096);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"\nnext\n").unwrap();
    h.read_all();
    h.tailer.release_all(h.now);
    h.collect();
    let recs = records(&mut h.out);
    assert_eq!(
        recs,
        vec![("x".repeat(4096), 10_001, 0), ("next".to_owned(), 5, 0)]
    );
}

/// copytruncate with lines the agent had not read yet: the copy (outside the glob) is found
/// after the truncation and read on from where the original stopped, under the original's
/// origin (dev, inode, fingerprint, generation 0), so nothing is lost and nothing repeated.
#[test]
fn copytruncate_copy_is_read_on_under_the_originals_origin() {
    let mut h = Harness::new(64, 1 << 20, 100);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\nfour\n").unwrap();
    // Not read yet: copied, then truncated, then the writer goes on.
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"five\n").unwrap();
    h.read_all();
    h.drain();
    let mut origins = Vec::new();
    for e in &h.out {
        if let Emitted::Batch { batch, .. } = e {
            origins.push((batch.file, batch.first_offset));
        }
    }
    let mut got: Vec<String> = line_texts(&mut h.out);
    // Across files there is no order (the copy and the new generation are read in turns).
    got.sort();
    assert_eq!(got, ["five", "four", "one", "three", "two"]);
    // "three" and "four" carry the original's identity, at the offsets they had there.
    let orig = origins[0].0;
    assert!(
        origins.iter().any(|(id, off)| *id == orig && *off == 8),
        "{origins:?}"
    );
    assert!(
        origins
            .iter()
            .any(|(id, _)| id.generation == 1 && id.inode == orig.inode)
    );
}

/// Regression (the pinned logrotate test, narrow glob, lost 1,000 lines once): the agent adopts
/// a copytruncate copy that no glob matches (`a.log.1` beside `*.log`) and is killed before the
/// copy's batch is acknowledged. The checkpoint holds the copy where the original stopped, under
/// the original's origin; the next run must read it on from there, not drop the entry because
/// its path is outside the glob.
#[test]
fn copy_outside_the_glob_is_read_on_after_a_restart() {
    let mut h = Harness::new(64, 1 << 20, 100);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.catch_up();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\nfour\n").unwrap();
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"five\n").unwrap();
    // The truncation is seen and the copy adopted; no time passes, so its batch is still open
    // when the agent dies: the checkpoint has what was acknowledged and the positions.
    h.read_all();
    // The checkpoint as the shipper keeps it: every fact in order, each batch acknowledged.
    let mut cps = Checkpoints::default();
    for e in &h.out {
        match e {
            Emitted::Batch { state, batch, .. } => {
                let cp = FileCheckpoint::of(state, batch.end_offset)
                    .keeping_tail_of(cps.files.get(&state.key));
                cps.files.insert(state.key, cp);
            }
            Emitted::Position { state, offset } => cps.advance(state, *offset),
            Emitted::Released { key, .. } => cps.release(*key),
            Emitted::CopyResolved {
                key, origin, lost, ..
            } => cps.copy_resolved(*key, *origin, *lost),
        }
    }
    assert!(
        cps.files
            .values()
            .any(|c| c.path.ends_with("a.log.1") && c.offset == 8),
        "the copy is in the checkpoint at where the original stopped: {:?}",
        cps.files
            .values()
            .map(|c| (&c.path, c.offset))
            .collect::<Vec<_>>()
    );
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.tailer.scan(h.now);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let lines: Vec<(&str, u32, u64)> = recs
        .iter()
        .map(|(l, id, off)| (l.as_str(), id.generation, *off))
        .collect();
    assert!(lines.contains(&("three", 0, 8)), "{lines:?}");
    assert!(lines.contains(&("four", 0, 14)), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.0 == "one" || l.0 == "two"),
        "{lines:?}"
    );
}

/// Regression (found by the property test with one handle): a file that gave its handle back
/// and was deleted frees its inode; a new file on that inode must not be taken for it (it was
/// read once as the old file's continuation, then again as itself). Reopening also compares
/// birth times.
#[test]
fn inode_of_a_closed_file_reused_by_a_new_one_is_not_taken_for_it() {
    for _ in 0..20 {
        let mut h = Harness::with_handles(8, 16, 1, 1);
        let acts = [
            Action::Write {
                path: 1,
                lines: 0,
                pad: 0,
                partial: false,
                notify: false,
            },
            Action::Write {
                path: 0,
                lines: 0,
                pad: 0,
                partial: false,
                notify: false,
            },
            Action::Write {
                path: 0,
                lines: 0,
                pad: 0,
                partial: false,
                notify: false,
            },
            Action::Delete {
                path: 0,
                scan: false,
            },
            Action::Delete {
                path: 1,
                scan: false,
            },
            Action::Write {
                path: 1,
                lines: 1,
                pad: 0,
                partial: false,
                notify: false,
            },
        ];
        for a in &acts {
            h.apply(a);
        }
        h.drain();
        let got = shipped(&mut h.out).unwrap();
        assert_eq!(got.get(&2), Some(&vec![0]), "the new file's line, once");
    }
}

/// A tailer on the harness's inputs, started from `checkpoints` (a restarted agent).
fn restarted(h: &Harness, checkpoints: Checkpoints) -> Tailer {
    Tailer::new(
        TailerSettings {
            agent_id: "unit".into(),
            read_budget: 1 << 20,
            read_buffer: 64,
            limits: BatchLimits {
                max_bytes: 1 << 20,
                max_records: 100,
                linger: Duration::ZERO,
            },
            backlog_bytes: default_backlog(),
            max_open_files: usize::MAX,
        },
        h.tailer.inputs.clone(),
        checkpoints,
        BuilderPool::default(),
    )
}

/// The agent killed with `cps` on disk and started again, run until it is done: the records
/// it emits, by line.
fn restart_and_drain(h: &mut Harness, cps: Checkpoints) -> Vec<(String, FileId, u64)> {
    h.out.clear();
    h.tailer = restarted(h, cps);
    h.drain();
    let mut recs = records_by_origin(&mut h.out);
    recs.sort_by(|a, b| a.0.cmp(&b.0));
    recs
}

fn append_to(p: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

/// Truncates `p` to nothing, as copytruncate does after its copy.
fn truncate_to_zero(p: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(0)
        .unwrap();
}

/// (line, identity it shipped under, its offset there) of every record emitted so far.
fn records_by_origin(out: &mut [Emitted]) -> Vec<(String, FileId, u64)> {
    spans_by_origin(out)
        .into_iter()
        .map(|(line, id, off, _)| (line, id, off))
        .collect()
}

/// The state and end offset of the first batch emitted (what its acknowledgement checkpoints).
fn first_batch_end(out: &[Emitted]) -> (FileState, u64) {
    out.iter()
        .find_map(|e| match e {
            Emitted::Batch { state, batch, .. } => Some((state.clone(), batch.end_offset)),
            _ => None,
        })
        .unwrap()
}

/// The bytes counted lost by `CopyResolved` facts emitted so far.
fn resolved_lost(out: &[Emitted]) -> Vec<u64> {
    out.iter()
        .filter_map(|e| match e {
            Emitted::CopyResolved { lost, .. } => Some(*lost),
            _ => None,
        })
        .collect()
}

/// `a.log` holds "one\ntwo\n" (read), then "three\nfour\n" (seen by a stat, not read); a
/// copy of all of it is made outside the directory, `a.log` is truncated and gets "five\n".
/// Returns the copy's path.
fn truncate_before_the_copy_appears(h: &mut Harness) -> PathBuf {
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\nfour\n").unwrap();
    h.tailer.scan(h.now);
    let aside = h.dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    let copy = aside.join("a.log.1");
    std::fs::copy(&p, &copy).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"five\n").unwrap();
    h.read_all();
    copy
}

/// The checkpoint a shipper keeps when everything emitted is acknowledged.
fn acknowledged_checkpoint(out: &[Emitted]) -> Checkpoints {
    let mut cps = Checkpoints::default();
    for e in out {
        apply_emitted(&mut cps, e);
    }
    cps
}

/// The rotation model's wide seed 540: a file truncated while its unread bytes' copy is still
/// waited for is deleted and released; the agent is killed before the wait is over. The wait
/// must outlive the file's checkpoint entry: the restarted agent waits on, and counts the bytes
/// as unread when no copy appears (before: the entry went, and the wait with it — the bytes
/// were never counted).
#[test]
fn copy_waited_for_of_a_file_released_since_is_waited_for_after_a_restart() {
    let mut h = harness_with(None);
    truncate_before_the_copy_appears(&mut h);
    assert_eq!(h.tailer.pending_copies.len(), 1, "the copy is waited for");
    std::fs::remove_file(h.path(0)).unwrap();
    for _ in 0..4 {
        h.now += Duration::from_secs(2);
        h.tailer.poll_timeouts(h.now);
        h.read_all();
    }
    assert!(
        h.out.iter().any(|e| matches!(e, Emitted::Released { .. })),
        "the deleted file is released"
    );
    assert!(resolved_lost(&h.out).is_empty(), "still waited for");
    let cps = acknowledged_checkpoint(&h.out);
    assert!(cps.files.is_empty(), "{cps:?}");
    assert_eq!(
        cps.waiting.iter().map(|w| w.print.lost).collect::<Vec<_>>(),
        [11]
    );
    let cps = Checkpoints::decode(&cps.encode()).unwrap();
    // Killed; restarted; no copy appears.
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.read_all();
    h.now += Duration::from_secs(31);
    h.tailer.poll_timeouts(h.now);
    h.read_all();
    assert_eq!(resolved_lost(&h.out), [11]);
    let cps = acknowledged_checkpoint(&h.out);
    assert!(cps.waiting.is_empty(), "{cps:?}");
}

/// rotate_wait: the truncation is seen before the copy exists; the unread bytes are held as
/// pending, not counted; the copy appears 10 s later (moved in under a name the glob does not
/// match, as with a glob on the live name only) and is read on from where the original
/// stopped, under the original's origin. Nothing is counted lost.
#[test]
fn copy_appearing_after_the_truncation_is_read_on_under_the_originals_origin() {
    let mut h = harness_with(None);
    let copy = truncate_before_the_copy_appears(&mut h);
    assert_eq!(h.tailer.pending_copies.len(), 1, "the copy is waited for");
    h.now += Duration::from_secs(10);
    h.tailer.poll_timeouts(h.now);
    let late = h.path(0).with_extension("log.1");
    std::fs::rename(&copy, &late).unwrap();
    h.tailer.path_event(&late, h.now); // the directory watch names it
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let orig = recs[0].1;
    let by_line: HashMap<&str, (FileId, u64)> = recs
        .iter()
        .map(|(l, id, off)| (l.as_str(), (*id, *off)))
        .collect();
    assert_eq!(recs.len(), 5, "{recs:?}");
    assert_eq!(
        by_line["three"],
        (orig, 8),
        "read on under the original's origin"
    );
    assert_eq!(by_line["four"], (orig, 14));
    assert_eq!(by_line["five"].0.generation, 1);
    assert_eq!(resolved_lost(&h.out), [0]);
    assert_eq!(h.tailer.take_stats()[0].unread_bytes, 0);
}

/// The same, with the agent restarted between the truncation and the copy's appearance: the
/// checkpoint keeps the old content's print with the file, and the new run reads the copy on
/// under the original's origin.
#[test]
fn copy_appearing_after_a_restart_is_read_on_from_the_checkpointed_print() {
    let mut h = harness_with(None);
    let copy = truncate_before_the_copy_appears(&mut h);
    // Run 1's checkpoint, as the shipper builds it from what the tailer emitted.
    let mut cps = Checkpoints::default();
    let mut ends: HashMap<FileKey, (FileState, u64)> = HashMap::new();
    for e in &h.out {
        match e {
            Emitted::Batch { state, batch, .. } => {
                ends.insert(state.key, (state.clone(), batch.end_offset));
            }
            Emitted::Position { state, offset } => {
                ends.insert(state.key, (state.clone(), *offset));
            }
            _ => {}
        }
    }
    for (key, (state, offset)) in ends {
        cps.files.insert(key, FileCheckpoint::of(&state, offset));
    }
    let entry = cps.files.values().next().unwrap();
    assert!(entry.pending.iter().any(|p| p.lost == 11), "{entry:?}");
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.now += Duration::from_secs(5);
    h.tailer.scan(h.now);
    let late = h.path(0).with_extension("log.1");
    std::fs::rename(&copy, &late).unwrap();
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let lines: Vec<(&str, u32, u64)> = recs
        .iter()
        .map(|(l, id, off)| (l.as_str(), id.generation, *off))
        .collect();
    assert!(lines.contains(&("three", 0, 8)), "{lines:?}");
    assert!(lines.contains(&("four", 0, 14)), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.0 == "one" || l.0 == "two"),
        "{lines:?}"
    );
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// After a restart whose checkpoint still waits for a copy that never comes: once the wait is
/// over (its deadline is wall-clock time, kept in the checkpoint), the bytes are counted lost.
#[test]
fn pending_copy_from_the_checkpoint_expires_and_counts_what_was_lost() {
    let mut h = harness_with(None);
    truncate_before_the_copy_appears(&mut h);
    let state = h
        .out
        .iter()
        .find_map(|e| match e {
            Emitted::Position { state, offset: 0 } if !state.pending.is_empty() => {
                Some(state.clone())
            }
            _ => None,
        })
        .unwrap();
    let mut cp = FileCheckpoint::of(&state, 0);
    if let Some(p) = cp.pending.first_mut() {
        p.until_ms = ferry_core::now_ms() + 2_000; // 2 s of the wait left
    }
    let mut cps = Checkpoints::default();
    cps.files.insert(state.key, cp);
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.tailer.scan(h.now);
    h.tailer.poll_timeouts(h.now + Duration::from_secs(1));
    h.collect();
    assert!(resolved_lost(&h.out).is_empty(), "still waiting");
    h.tailer.poll_timeouts(h.now + Duration::from_millis(2_100));
    h.collect();
    assert_eq!(resolved_lost(&h.out), [11]);
}

/// A copy of a file that was then deleted (rather than truncated), appearing after the
/// original was read to its end and released, under a name the glob matches: recognised, and
/// not read again from its first byte; what is appended to it later is read.
#[test]
fn copy_of_a_deleted_file_appearing_later_is_not_read_again() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    let aside = h.dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::copy(&p, aside.join("b.log")).unwrap();
    std::fs::remove_file(&p).unwrap();
    h.tailer.path_event(&p, h.now);
    // Read to its end, released after its rotate wait.
    for _ in 0..3 {
        h.now += Duration::from_secs(5);
        h.read_all();
    }
    assert_eq!(h.tailer.file_count(), 0);
    std::fs::rename(aside.join("b.log"), h.path(1)).unwrap();
    h.tailer.path_event(&h.path(1), h.now);
    h.read_all();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(h.path(1))
        .unwrap();
    f.write_all(b"three\n").unwrap();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three"]);
}

/// With a glob matching only the live name: a file renamed out of it while the agent was
/// stopped is found at start by its dev+inode in the same directory (its fingerprint checked),
/// read on from the checkpoint to its end under its own identity, then released.
#[test]
fn file_renamed_out_of_the_glob_while_stopped_is_read_on_from_the_checkpoint() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    h.tailer.release_all(h.now);
    h.collect();
    let (state, offset) = first_batch_end(&h.out);
    let first = records_by_origin(&mut h.out)[0].1;
    let mut cps = Checkpoints::default();
    cps.files
        .insert(state.key, FileCheckpoint::of(&state, offset));
    // While stopped: two more lines, then the rotation renames it away and a new file starts.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\nfour\n").unwrap();
    std::fs::rename(&p, p.with_extension("log.1")).unwrap();
    std::fs::write(&p, "new\n").unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let mut got: Vec<(&str, bool, u64)> = recs
        .iter()
        .map(|(l, id, off)| (l.as_str(), *id == first, *off))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("four", true, 14), ("new", false, 0), ("three", true, 8)]
    );
    assert_eq!(h.tailer.file_count(), 0, "released once read to its end");
}

/// Regression (found by the rotation model test, `app.log*`): lines written between the copy
/// and the truncation were read before the truncation, so the tail print lay past the copy's
/// end; the copy, held back as a copy, was then not recognised and was read again from its
/// first byte (every line of it stored twice).
#[test]
fn copy_shorter_than_what_was_read_before_the_truncation_is_not_read_again() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    std::fs::copy(&p, h.path(1)).unwrap(); // b.log: matched by the glob
    h.read_all(); // held back: a copy of a.log
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"between\n").unwrap();
    h.read_all(); // read; the tail print is now past b.log's end
    f.set_len(0).unwrap();
    f.write_all(b"after\n").unwrap();
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "between", "after"]);
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// Regression (found by the rotation model test): a file truncated and refilled past the old
/// size before the agent read again: a stat saw the new size and it was counted as bytes the
/// old content held unread (more lost than there ever was).
#[test]
fn truncation_refilled_before_the_next_read_counts_only_what_the_old_content_held() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"x\n").unwrap();
    h.tailer.scan(h.now); // seen: 10 bytes, 2 of them unread
    f.set_len(0).unwrap();
    f.write_all(b"a much longer line than before\n").unwrap();
    h.tailer.scan(h.now); // a stat sees 31 bytes of other content
    h.read_all();
    h.now += Duration::from_secs(31);
    h.tailer.poll_timeouts(h.now);
    h.collect();
    assert_eq!(resolved_lost(&h.out), [2]);
}

/// Regression (found by the rotation model test): a file seen by a stat but not read yet
/// (reading paused: the agent's buffer was full), truncated and refilled past its old size,
/// was read on as if it were the old content: the truncation went unnoticed and the bytes it
/// destroyed were not counted. Its first line is now fixed when it is first seen.
#[test]
fn truncation_of_a_file_not_read_yet_is_noticed_and_counted() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "first\n").unwrap();
    h.tailer.scan(h.now); // found and opened; nothing read (no room)
    std::fs::write(&p, "second, longer\n").unwrap();
    h.tailer.scan(h.now);
    h.read_all();
    h.now += Duration::from_secs(31);
    h.tailer.poll_timeouts(h.now);
    h.collect();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["second, longer"]);
    assert_eq!(resolved_lost(&h.out), [6]);
}

/// Regression (found by the rotation model test, `app.log*`): a deleted file's inode, still
/// in the checkpoint, was given to a new file (here: a copytruncate copy) while the agent was
/// stopped; the new file was taken for the old one truncated, read from 0 as its next
/// generation, and — not being held back as the copy it was — its lines were stored twice.
/// The birth time in the checkpoint tells the two apart.
#[test]
fn inode_reused_while_stopped_is_a_new_file_not_a_truncation() {
    use std::os::unix::fs::MetadataExt;
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "old one\nold two\n").unwrap();
    h.read_all();
    h.tailer.release_all(h.now);
    h.collect();
    let (state, offset) = first_batch_end(&h.out);
    if state.birth == 0 {
        eprintln!("no birth times on this file system: nothing to tell apart");
        return;
    }
    let mut cps = Checkpoints::default();
    cps.files
        .insert(state.key, FileCheckpoint::of(&state, offset));
    std::fs::remove_file(&p).unwrap();
    // Files until one gets the freed inode (tmpfs and ext4 reuse them promptly).
    let mut reused = None;
    for i in 0..200 {
        let q = h.dir.path().join(format!("n{i}.log"));
        std::fs::write(&q, format!("new {i}\n")).unwrap();
        if std::fs::metadata(&q).unwrap().ino() == state.key.1 {
            reused = Some(i);
            break;
        }
        std::fs::remove_file(&q).unwrap();
    }
    let Some(i) = reused else {
        eprintln!("the inode was not reused here");
        return;
    };
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let got: Vec<(&str, u32)> = recs
        .iter()
        .map(|(l, id, _)| (l.as_str(), id.generation))
        .collect();
    assert_eq!(got, [(format!("new {i}").as_str(), 0)]);
}

/// Regression (found by the pinned logrotate test, glob `app.log`, under load): a restarted
/// agent reading a file far behind never reached its end, so it had no tail print; the
/// copytruncate then found no copy, and what the original held past the position was lost.
/// A print is taken while reading on, and the checkpoint's is restored at start.
#[test]
fn truncation_of_a_file_never_read_to_its_end_finds_its_copy() {
    let mut h = harness_with(None);
    let p = h.path(0);
    let text: String = (0..20).map(|i| format!("line {i:02}\n")).collect();
    std::fs::write(&p, &text).unwrap();
    h.tailer.scan(h.now);
    assert_eq!(h.tailer.read_turn(h.now, 40), 40, "not to its end");
    std::fs::copy(&p, p.with_extension("log.1")).unwrap(); // outside the glob
    std::fs::write(&p, "after\n").unwrap();
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    let mut want: Vec<String> = (0..20).map(|i| format!("line {i:02}")).collect();
    want.push("after".into());
    let mut got = lines.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{lines:?}");
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// Regression (found by the rotation model test, `app.log*`): the copy was first looked at
/// after its original had been truncated and refilled (not noticed yet), and after the agent
/// had read past the copy's end: nothing to compare it with any more, so it was read as a new
/// file, every line of it a second time. A new file with the first line of a file truncated
/// under the agent is its copy.
#[test]
fn copy_first_seen_after_its_original_was_truncated_is_not_read_again() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    std::fs::copy(&p, h.path(1)).unwrap(); // b.log, not seen yet
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX); // read past the copy's end
    f.set_len(0).unwrap();
    f.write_all(b"four\n").unwrap();
    h.tailer.path_event(&h.path(1), h.now); // the copy appears, before the truncation is seen
    h.tailer.read_turn(h.now, u64::MAX);
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three", "four"]);
}

/// Regression (the rotation model test, seed 42 on CI): the same copy, shorter than what was
/// read, first seen *after* the truncation was: it was taken for a new file (its first line
/// matched, but no print of the original held its length) and read again from 0.
#[test]
fn short_copy_first_seen_after_the_truncation_is_not_read_again() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    std::fs::copy(&p, h.path(1)).unwrap(); // b.log, not seen yet
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX); // read past the copy's end
    f.set_len(0).unwrap();
    f.write_all(b"four\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX); // the truncation is seen; the copy not yet
    assert_eq!(h.tailer.pending_copies.len(), 1, "the copy is waited for");
    // The directory watch names the copy; no rescan comes before it is classified.
    h.tailer.path_event(&h.path(1), h.now);
    for _ in 0..3 {
        h.tailer.read_turn(h.now, u64::MAX);
        h.now += Duration::from_millis(600); // past the wait for a copy being written
        h.tailer.poll_timeouts(h.now);
    }
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three", "four"]);
    assert!(h.tailer.pending_copies.is_empty(), "the copy was found");
}

/// Regression (the rotation model test, seed 10 on CI, `app.log*`): a run restarted from a
/// checkpoint entry that holds no tail print (one written before any print was taken at that
/// offset) saw its file copied and truncated before it had read from it once: with no print
/// of the bytes it stopped at, the truncation looked for no copy, and the copy was read from 0
/// as a file of its own — every line of it a second time. A resumed file takes its tail print
/// at the checkpointed offset when it is opened (the fingerprint matched: those are the bytes
/// that were acknowledged).
#[test]
fn copy_made_before_a_resumed_file_was_first_read_is_not_read_again() {
    // The entry without a tail print; and without a fingerprint or head print either (its
    // first line was incomplete when it was written).
    for no_fingerprint in [false, true] {
        copy_made_before_a_resumed_file_was_first_read(no_fingerprint);
    }
}

fn copy_made_before_a_resumed_file_was_first_read(no_fingerprint: bool) {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
    h.read_all();
    h.drain();
    let mut cps = Checkpoints::default();
    for e in &h.out {
        if let Emitted::Batch { state, batch, .. } = e {
            let mut cp = FileCheckpoint::of(state, batch.end_offset);
            cp.tail = None; // as an entry written before any print was taken
            if no_fingerprint {
                cp.fingerprint = None;
                cp.head = None;
            }
            cps.files.insert(state.key, cp);
        }
    }
    assert_eq!(cps.files.values().next().map(|c| c.offset), Some(14));
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.tailer.scan(h.now); // resumed at 14, not read yet
    // copytruncate, then the writer goes on.
    std::fs::copy(&p, h.path(1)).unwrap(); // b.log, in the glob
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"four\n").unwrap();
    for _ in 0..3 {
        h.read_all();
        h.now += Duration::from_millis(600);
        h.tailer.poll_timeouts(h.now);
    }
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(
        lines,
        ["four"],
        "nothing of the copy is read again (no fingerprint: {no_fingerprint})"
    );
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// Regression (the rotation model test, seed 14 under CPU load, `app.log*`): lines were
/// appended after the copy was made, and the file was truncated right after the agent had read
/// them, before the read that found its end. That read retook the tail print at the new
/// position, could not (the file was shorter now), and left none: the truncation, noticed by
/// the next read, had no print to look for its copy by, and the copy — held back as a copy until
/// then — was read from 0 as a file of its own, every line of it a second time. A print that
/// cannot be taken of the content that was read leaves the last one in place.
#[test]
fn truncation_racing_the_read_that_finds_the_end_still_finds_the_copy() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all(); // to its end: a tail print at 8
    std::fs::copy(&p, h.path(1)).unwrap(); // b.log, in the glob: the copy
    h.read_all(); // held back: a copy of a.log
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\n").unwrap();
    // The writer truncates (and goes on) just after "three" was read, before the read at 14
    // that would have found the end.
    let (target, mut armed) = (p.clone(), true);
    watcher::hooks::set_before_read(move |path, at| {
        if path == target && at == 14 && std::mem::take(&mut armed) {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(0).unwrap();
            f.write_all(b"four\n").unwrap();
        }
    });
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX);
    watcher::hooks::clear_before_read();
    h.collect();
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three", "four"]);
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// The race of the rotation model's wide seed 14 on a content's first read: its lines are read
/// (no tail print yet), then the writer copies the file and truncates it before the read that
/// finds the end. A print taken by a second read of the file comes too late (it is shorter
/// now); the print of the bytes just read does not, and the copy is read on from where the
/// original stopped instead of from its first byte.
#[test]
fn copy_and_truncation_between_a_first_read_and_its_end_is_still_recognised() {
    let mut h = harness_with(None);
    let p = h.path(0);
    let copy = h.path(1);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    let (target, mut armed) = (p.clone(), true);
    watcher::hooks::set_before_read(move |path, at| {
        if path == target && at == 8 && std::mem::take(&mut armed) {
            std::fs::copy(path, &copy).unwrap();
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(0).unwrap();
            f.write_all(b"three\n").unwrap();
        }
    });
    h.read_all();
    watcher::hooks::clear_before_read();
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three"]);
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// The rotation model's wide seed 27: copytruncate creates the copy empty, and the agent
/// tracks it while it is (a scan between the copy's creation and its first bytes). The copy's
/// bytes arrive between the look that found it still empty and the read after it: that read
/// must not take the copy's lines as a file of its own (they are the original's, already
/// shipped), or they are stored twice — the copy is classified first, once it has bytes.
#[test]
fn copy_filled_between_its_empty_classification_and_its_read_is_not_read_as_its_own() {
    let mut h = harness_with(None);
    let p = h.path(0);
    let copy = h.path(1);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    std::fs::File::create(&copy).unwrap();
    let (target, original, mut armed) = (copy.clone(), p.clone(), true);
    watcher::hooks::set_before_read(move |path, at| {
        if path == target && at == 0 && std::mem::take(&mut armed) {
            std::fs::copy(&original, path).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&original)
                .unwrap();
            f.set_len(0).unwrap();
            f.write_all(b"three\n").unwrap();
        }
    });
    h.read_all();
    watcher::hooks::clear_before_read();
    h.tailer.data_event(&copy);
    h.tailer.data_event(&p);
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    assert_eq!(lines, ["one", "two", "three"]);
    assert_eq!(resolved_lost(&h.out), [0]);
}

/// The rotation model's narrow seed 109: a new file's lines are read and shipped but not
/// acknowledged (the collector is stopped), then copytruncate copies it outside the glob and
/// truncates it; the copy holds nothing past where the original was read. The agent is killed
/// before the acknowledgement. The lines are only in the copy now: the restarted agent must
/// read them from it (its checkpoint may not say the copy was read to its end before the
/// original's lines were acknowledged, and must tell the original's new content from the old).
#[test]
fn copy_holding_only_unacknowledged_lines_is_read_again_after_a_kill() {
    let mut h = harness_with(None);
    let p = h.path(0);
    // First seen empty: its entry (offset 0) has no fingerprint yet.
    std::fs::write(&p, "").unwrap();
    h.read_all();
    h.now += Duration::from_secs(2);
    h.tailer.poll_timeouts(h.now);
    h.read_all();
    // Lines, seen by an inotify event (no scan's stat first).
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX);
    h.collect();
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"three\n").unwrap();
    drop(f);
    h.read_all();
    h.now += Duration::from_millis(100);
    h.tailer.poll_timeouts(h.now);
    h.read_all();
    // Killed: nothing acknowledged.
    let cps = unacknowledged_checkpoint(&h.out);
    let entries: Vec<(String, u64)> = cps
        .files
        .values()
        .map(|c| (c.path.clone(), c.offset))
        .collect();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let mut lines: Vec<&str> = recs.iter().map(|(l, _, _)| l.as_str()).collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["one", "three", "two"],
        "after the restart; checkpoint entries at the kill: {entries:?}"
    );
}

/// A file recorded with half its first line (the checkpoint holds a probe of it, no
/// fingerprint); killed; while the agent is stopped the line is completed and copytruncate
/// copies the file out of the glob (`*.log`) and truncates it. The restarted agent must tell
/// the new content from the one it recorded (it no longer begins with the half line) and read
/// the old line from the copy — under a narrow glob the only place left that holds it — under
/// the identity a shipped line was stored with (its first line's fingerprint with the
/// original's birth time), so that the collector knows it for a replay.
/// `shipped`: the line was completed, read, shipped and acknowledged before the kill, and no
/// checkpoint write recorded its fingerprint (the gap the rotation model's `identified` wait
/// stepped around); else the kill came before the line was whole (narrow seed 367).
fn half_first_line_copytruncated_while_stopped(shipped: bool) {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "s367-000000-abc").unwrap();
    h.read_all();
    // The last checkpoint written before the kill.
    let cps = unacknowledged_checkpoint(&h.out);
    let entries: Vec<(String, u64, bool)> = cps
        .files
        .values()
        .map(|c| (c.path.clone(), c.offset, c.probe.is_some()))
        .collect();
    assert!(
        cps.files
            .values()
            .all(|c| c.fingerprint.is_none() && c.probe.is_some()),
        "{entries:?}"
    );
    append_to(&p, b"def\n");
    let mut first_run = Vec::new();
    if shipped {
        h.tailer.data_event(&p);
        h.tailer.read_turn(h.now, u64::MAX);
        h.now += Duration::from_millis(300);
        h.tailer.poll_timeouts(h.now);
        h.collect();
        first_run = records_by_origin(&mut h.out);
        assert_eq!(first_run.len(), 1);
    }
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    std::fs::write(&p, "s367-000001-new\n").unwrap();
    let recs = restart_and_drain(&mut h, cps);
    let lines: Vec<&str> = recs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        lines,
        ["s367-000000-abcdef", "s367-000001-new"],
        "after the restart; checkpoint entries at the kill: {entries:?}"
    );
    if shipped {
        assert_eq!(
            (recs[0].1, recs[0].2),
            (first_run[0].1, first_run[0].2),
            "the old line is read again under the origin and offset it was first shipped with"
        );
    }
}

#[test]
fn content_recorded_with_half_a_first_line_and_copytruncated_while_stopped_is_read_from_its_copy() {
    half_first_line_copytruncated_while_stopped(false);
}

#[test]
fn line_acknowledged_before_its_fingerprint_was_checkpointed_is_replayed_under_its_origin() {
    half_first_line_copytruncated_while_stopped(true);
}

/// The rotation model's wide seed 114: a file first recorded with half its first line (no
/// fingerprint in the checkpoint), then completed and read, not acknowledged; killed; while the
/// agent is stopped, copytruncate. The restarted agent must tell the new content from the old
/// (a new generation, not a resumption at 0 under the old identity) and read the old line from
/// the copy under the original's origin — once, the origin the collector knows it by.
#[test]
fn content_recorded_before_its_first_line_was_whole_is_told_from_its_successor_after_a_kill() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "s114-000000-abcdef").unwrap();
    h.read_all();
    h.now += Duration::from_millis(100);
    h.tailer.poll_timeouts(h.now);
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"ghij\n").unwrap();
    drop(f);
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX);
    h.now += Duration::from_millis(300);
    h.tailer.poll_timeouts(h.now);
    h.collect();
    let first_run = records_by_origin(&mut h.out);
    // Killed: nothing acknowledged.
    let cps = unacknowledged_checkpoint(&h.out);
    let entries: Vec<(String, u64, bool)> = cps
        .files
        .values()
        .map(|c| (c.path.clone(), c.offset, c.fingerprint.is_some()))
        .collect();
    // While stopped: copytruncate, then new lines.
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    std::fs::write(&p, "s114-000001-new\n").unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let mut lines: Vec<&str> = recs.iter().map(|(l, _, _)| l.as_str()).collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["s114-000000-abcdefghij", "s114-000001-new"],
        "after the restart; checkpoint entries at the kill: {entries:?}"
    );
    let old = recs
        .iter()
        .find(|r| r.0 == "s114-000000-abcdefghij")
        .unwrap();
    assert_eq!(
        (old.1, old.2),
        (first_run[0].1, first_run[0].2),
        "the old line is read again under the origin and offset it was first shipped with"
    );
}

/// The rotation model's wide seed 254: the agent is not reading (its buffer is full: the
/// collector is down) when copytruncate copies a file into the glob and truncates it; the
/// copy is seen (a scan) before the truncation is. It is its copy all the same: read on from
/// where the original stopped, nothing counted as lost, nothing twice.
#[test]
fn copy_seen_while_the_original_is_not_being_read_is_adopted() {
    for first in ["one\n", ""] {
        for copy_seen_first in [false, true] {
            copy_seen_while_not_reading(first, copy_seen_first);
        }
    }
}

fn copy_seen_while_not_reading(first: &str, copy_seen_first: bool) {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, first).unwrap();
    h.read_all();
    h.now += Duration::from_secs(2);
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"two\nthree\n").unwrap();
    drop(f);
    // Seen by a scan (its size), not read.
    h.tailer.scan(h.now);
    h.collect();
    std::fs::copy(&p, h.path(1)).unwrap();
    if copy_seen_first {
        h.tailer.scan(h.now);
        h.collect();
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"four\n").unwrap();
    drop(f);
    h.tailer.scan(h.now);
    h.collect();
    h.now += Duration::from_millis(500);
    h.tailer.poll_timeouts(h.now);
    h.collect();
    h.read_all();
    h.drain();
    let lines = line_texts(&mut h.out);
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    let mut want = vec!["four", "three", "two"];
    if !first.is_empty() {
        want.push("one");
    }
    want.sort_unstable();
    assert_eq!(
        sorted, want,
        "first {first:?}, copy seen first: {copy_seen_first}: {lines:?}"
    );
    assert_eq!(
        resolved_lost(&h.out),
        [0],
        "first {first:?}, copy seen first: {copy_seen_first}"
    );
}

/// The checkpoint a shipper keeps when nothing is acknowledged: each lane's facts are applied
/// in order up to its first batch (in flight, never acknowledged); what follows it waits.
fn unacknowledged_checkpoint(out: &[Emitted]) -> Checkpoints {
    let mut cps = Checkpoints::default();
    let mut blocked: HashSet<FileKey> = HashSet::new();
    for e in out {
        let lane = match e {
            Emitted::Batch { state, .. } | Emitted::Position { state, .. } => state.lane(),
            Emitted::Released { lane, .. } | Emitted::CopyResolved { lane, .. } => *lane,
        };
        if blocked.contains(&lane) {
            continue;
        }
        match e {
            Emitted::Batch { .. } => {
                blocked.insert(lane);
            }
            Emitted::Position { state, offset } => {
                let cp =
                    FileCheckpoint::of(state, *offset).keeping_tail_of(cps.files.get(&state.key));
                cps.files.insert(state.key, cp);
            }
            Emitted::Released { key, .. } => {
                cps.files.remove(key);
            }
            Emitted::CopyResolved { key, origin, .. } => {
                if let Some(cp) = cps.files.get_mut(key) {
                    cp.pending.retain(|p| FileId::from(p.origin) != *origin);
                }
            }
        }
    }
    cps
}

/// The situation of the rotation model's seed 18 (glob `app.log`): a file first seen with only
/// part of its first line, completed, then renamed out of the glob (rename + create) before any
/// of its lines was acknowledged; the agent is killed, and while it is stopped a copytruncate
/// renames it further (`.1` → `.2`). Its checkpoint entry (offset 0, written when it was first
/// classified, with no fingerprint yet) is enough for the restarted agent to find it and read
/// its line. (The model lost the line when the agent was killed before that entry was written,
/// or when the file was compressed away before the restarted agent's first scan: neither is
/// knowable by the agent, so the model now waits for both.)
#[test]
fn file_first_seen_with_a_partial_line_renamed_away_before_any_ack_is_read_after_a_restart() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "s18-000000-abcdefghijklmnop").unwrap();
    h.read_all();
    h.now += Duration::from_millis(100);
    h.read_all();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"qrstuvwxyz\n").unwrap();
    drop(f);
    h.read_all();
    // rename + create, seen by the agent
    std::fs::rename(&p, p.with_extension("log.1")).unwrap();
    std::fs::File::create(&p).unwrap();
    h.read_all();
    h.now += Duration::from_millis(100);
    h.tailer.poll_timeouts(h.now);
    h.read_all();
    // Killed: nothing acknowledged.
    let cps = unacknowledged_checkpoint(&h.out);
    let entries: Vec<(String, u64)> = cps
        .files
        .values()
        .map(|c| (c.path.clone(), c.offset))
        .collect();
    // While stopped: copytruncate of the (empty) new file; the old one shifts to `.2`.
    std::fs::rename(p.with_extension("log.1"), p.with_extension("log.2")).unwrap();
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    std::fs::write(&p, "after\n").unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    let recs = records_by_origin(&mut h.out);
    let lines: Vec<&str> = recs.iter().map(|(l, _, _)| l.as_str()).collect();
    assert!(
        lines.contains(&"s18-000000-abcdefghijklmnopqrstuvwxyz"),
        "line 0 read after the restart: {lines:?}; checkpoint entries at the kill: {entries:?}"
    );
}

/// A harness whose glob also matches the rotated copies (`app.log*`, the usual one).
fn wide_harness() -> Harness {
    harness_of("wide", "app.log*", None, 3600)
}

/// One file-system step of a logrotate `copytruncate` with its shift of older copies, and the
/// events inotify would deliver for it.
enum FsOp {
    /// The tailer has looked at every file (a scan) before the next step: lines written and
    /// then destroyed by a truncation without any look at them are unknowable to any tailer.
    Seen,
    Rename(PathBuf, PathBuf),
    CreateEmpty(PathBuf),
    /// Fill the (empty) copy with what `from` holds now.
    Fill {
        from: PathBuf,
        to: PathBuf,
    },
    Truncate(PathBuf),
    Append(PathBuf, String),
}

/// Inotify's view of the steps: per step, (path, data event?) in order. A step's events come
/// together (a rename's two paths are one event of `notify`'s, handled one after the other).
type Events = Rc<RefCell<VecDeque<Vec<(PathBuf, bool)>>>>;

impl FsOp {
    fn name(&self) -> String {
        let f = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        match self {
            FsOp::Seen => "seen".into(),
            FsOp::Rename(a, b) => format!("rename {} {}", f(a), f(b)),
            FsOp::CreateEmpty(p) => format!("create {}", f(p)),
            FsOp::Fill { to, .. } => format!("fill {}", f(to)),
            FsOp::Truncate(p) => format!("truncate {}", f(p)),
            FsOp::Append(p, t) => format!("append {} {}", f(p), t.len()),
        }
    }

    fn apply(self, events: &Events) {
        let mut ev = events.borrow_mut();
        match self {
            FsOp::Seen => unreachable!("a scan, by the test's loop"),
            FsOp::Rename(a, b) => {
                std::fs::rename(&a, &b).unwrap();
                ev.push_back(vec![(a, false), (b, false)]);
            }
            FsOp::CreateEmpty(p) => {
                std::fs::File::create(&p).unwrap();
                ev.push_back(vec![(p, false)]);
            }
            FsOp::Fill { from, to } => {
                let bytes = std::fs::read(&from).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&to)
                    .unwrap()
                    .write_all(&bytes)
                    .unwrap();
                ev.push_back(vec![(to, true)]);
            }
            FsOp::Truncate(p) => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&p)
                    .unwrap();
                ev.push_back(vec![(p, true)]);
            }
            FsOp::Append(p, text) => {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                ev.push_back(vec![(p, true)]);
            }
        }
    }
}

/// logrotate's `copytruncate` under the usual glob (`app.log*`, copies matched too), every
/// file-system step of it — the shift of older copies, the copy created empty, then filled,
/// lines written between the copy and the truncation, the truncation, the writer going on —
/// taking place at a random moment relative to the tailer: between its reads (with no, little
/// or plenty of room in the agent's buffer), events, scans and timeouts (time jumping by up to
/// 8 s), or inside a read (between its stat and its data reads). Lines are longer than a read,
/// so a truncation can find one half read. Whatever the order, every byte is shipped
/// exactly once (a line half read when its file was truncated may be shipped in two parts),
/// except what a truncation destroyed unread, which is counted exactly. Seeded
/// (`FERRY_SEED=N` reruns one, `FERRY_SEEDS=N` runs seeds 0..N); a failure prints its seed and
/// steps.
///
/// Each seed runs twice: as above, and with agent kills (`FERRY_FUZZ_KILLS=0` or `=1` runs one
/// of them): a restart from the checkpoint on disk (what the killed agent had acknowledged,
/// on top of what was on disk when it started), the last few emissions in flight either
/// stored unacknowledged or lost with it; a batch reaches the collector only once the
/// checkpoint on disk holds its content's identity (the shipper writes it first); the
/// collector's per-origin dedup drops replays and keeps the rest of a line whose first part
/// it stored. With kills, what no surviving agent saw destroyed cannot be counted, and bytes
/// stored unacknowledged then destroyed are counted lost by the restarted agent: the check
/// allows exactly those. It found six faults (fixed, each with a unit test).
/// `FERRY_FUZZ_DEBUG=1` names what the tailer emitted, and the checkpoint at each kill, among
/// the steps.
#[test]
fn copytruncate_racing_the_tailer_at_every_step_ships_every_byte_once_or_counts_it() {
    let seeds: Vec<u64> = match std::env::var("FERRY_SEED") {
        Ok(s) => s.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => (0..std::env::var("FERRY_SEEDS").map_or(500, |n| n.parse().unwrap())).collect(),
    };
    // Each seed without kills and with them, unless `FERRY_FUZZ_KILLS` says which.
    let modes: &[bool] = match std::env::var("FERRY_FUZZ_KILLS").as_deref() {
        Ok("0") => &[false],
        Ok(_) => &[true],
        Err(_) => &[false, true],
    };
    let mut failed = Vec::new();
    for &kills in modes {
        for &seed in &seeds {
            if let Err(e) = racing_copytruncate(seed, kills) {
                let k = u8::from(kills);
                eprintln!("seed {seed} (rerun: FERRY_SEED={seed} FERRY_FUZZ_KILLS={k}): {e}");
                failed.push((seed, kills));
            }
        }
    }
    assert!(failed.is_empty(), "failed (seed, kills): {failed:?}");
}

fn racing_copytruncate(seed: u64, kills: bool) -> Result<(), String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = wide_harness();
    let dir = h.dir.path().to_path_buf();
    let app = dir.join("app.log");
    let events: Events = Rc::default();
    let ops: Rc<RefCell<VecDeque<FsOp>>> = Rc::default();
    let mut written: Vec<String> = Vec::new();
    let mut lines = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
        let mut text = String::new();
        for _ in 0..n {
            let pad = rng.random_range(0..120);
            let line = format!("s{seed}-{:04}-{}", written.len(), "x".repeat(pad));
            text.push_str(&line);
            text.push('\n');
            written.push(line);
        }
        text
    };
    // While armed with n, the (n+1)th look at a file (its stat, or a read of its data) takes
    // the next step first.
    let armed: Rc<RefCell<Option<u32>>> = Rc::default();
    let hooked: Rc<RefCell<Vec<String>>> = Rc::default();
    {
        let (ops, events, armed, hooked) =
            (ops.clone(), events.clone(), armed.clone(), hooked.clone());
        watcher::hooks::set_before_read(move |_, _| {
            let mut a = armed.borrow_mut();
            match *a {
                Some(0) => {
                    *a = None;
                    let seen = matches!(ops.borrow().front(), Some(FsOp::Seen));
                    if !seen && let Some(op) = ops.borrow_mut().pop_front() {
                        hooked
                            .borrow_mut()
                            .push(format!("in a read: {}", op.name()));
                        op.apply(&events);
                    }
                }
                Some(n) => *a = Some(n - 1),
                None => {}
            }
        });
    }
    let deliver = |h: &mut Harness, k: usize| {
        for _ in 0..k {
            let Some(step) = events.borrow_mut().pop_front() else {
                return;
            };
            for (p, data) in step {
                if !(data && h.tailer.data_event(&p)) {
                    h.tailer.path_event(&p, h.now);
                }
            }
        }
    };
    let mut trace: Vec<String> = Vec::new();
    // Lines written between a copy and its truncation.
    let mut destroyable: Vec<String> = Vec::new();
    // Bytes counted lost by agents killed since.
    let mut counted_by_the_dead = 0;
    // Bytes of batches stored but not acknowledged before a kill: the restarted agent cannot
    // know they were, and counts them lost if a truncation destroyed them meanwhile.
    let mut stored_unacknowledged = 0;
    // The checkpoint on disk at the last kill, and where the running agent's emissions begin
    // in `h.out` (what an earlier one shipped unacknowledged lies before it).
    let mut on_disk = Checkpoints::default();
    let mut started = 0;
    // `FERRY_FUZZ_DEBUG=1`: the steps name what the tailer emitted, too.
    let debug = std::env::var_os("FERRY_FUZZ_DEBUG").is_some();
    let mut shown = 0;
    let n = rng.random_range(1..5);
    let first = lines(&mut rng, n);
    ops.borrow_mut().push_back(FsOp::Append(app.clone(), first));
    for round in 0..rng.random_range(1..=4) {
        let mut q = ops.borrow_mut();
        let n = rng.random_range(0..4);
        if n > 0 {
            q.push_back(FsOp::Append(app.clone(), lines(&mut rng, n)));
        }
        for k in (1..=round).rev() {
            q.push_back(FsOp::Rename(
                dir.join(format!("app.log.{k}")),
                dir.join(format!("app.log.{}", k + 1)),
            ));
        }
        let copy = dir.join("app.log.1");
        q.push_back(FsOp::CreateEmpty(copy.clone()));
        q.push_back(FsOp::Fill {
            from: app.clone(),
            to: copy,
        });
        if rng.random_bool(0.3) {
            // Not in the copy: shipped if read before the truncation, else counted as lost.
            let n = rng.random_range(1..3);
            let text = lines(&mut rng, n);
            destroyable.extend(text.lines().map(str::to_owned));
            q.push_back(FsOp::Append(app.clone(), text));
            q.push_back(FsOp::Seen);
        }
        q.push_back(FsOp::Truncate(app.clone()));
        let n = rng.random_range(1..4);
        q.push_back(FsOp::Append(app.clone(), lines(&mut rng, n)));
        drop(q);
        while !ops.borrow().is_empty() {
            let seen = matches!(ops.borrow().front(), Some(FsOp::Seen));
            if seen {
                ops.borrow_mut().pop_front();
                h.tailer.scan(h.now);
                trace.push("seen (scan)".into());
            } else if rng.random_bool(0.3) {
                *armed.borrow_mut() = Some(rng.random_range(0..3));
                trace.push("arm".into());
            } else {
                let op = ops.borrow_mut().pop_front().unwrap();
                trace.push(op.name());
                op.apply(&events);
            }
            for _ in 0..rng.random_range(0..4) {
                if kills && rng.random_bool(0.03) {
                    // SIGKILL and restart: the checkpoint on disk is what was acknowledged
                    // (what was emitted but the last few items, in flight at the kill; never
                    // less than at the last kill); what was in flight either reached the
                    // collector unacknowledged (and replays of it are dropped by its
                    // per-origin dedup) or was lost.
                    h.collect();
                    if debug {
                        for e in &h.out[shown.min(h.out.len())..] {
                            trace.push(describe(e));
                        }
                    }
                    let least = h.out.len().saturating_sub(6).max(started);
                    let acked = rng.random_range(least..=h.out.len());
                    let mut cps = on_disk.clone();
                    for e in &h.out[started..acked] {
                        apply_emitted(&mut cps, e);
                    }
                    if rng.random_bool(0.5) {
                        h.out.truncate(acked);
                    }
                    stored_unacknowledged += h.out[acked..]
                        .iter()
                        .map(|e| match e {
                            Emitted::Batch { batch, .. } => batch.end_offset - batch.first_offset,
                            _ => 0,
                        })
                        .sum::<u64>();
                    // A batch is sent once the checkpoint on disk holds its content's identity
                    // (the shipper writes it first, with everything before it in its lane):
                    // those that reached the collector did.
                    for i in acked..h.out.len() {
                        if let Emitted::Batch { state, batch, .. } = &h.out[i]
                            && !identity_on_disk(&cps, state)
                        {
                            let lane = state.lane();
                            let before: Vec<&Emitted> = h.out[acked..i]
                                .iter()
                                .filter(|e| lane_of(e) == lane)
                                .collect();
                            for e in before {
                                apply_emitted(&mut cps, e);
                            }
                            identity_written(&mut cps, state, batch.first_offset);
                        }
                    }
                    // Past the acknowledged prefix, only batches left the dead agent (stored
                    // unacknowledged): its positions died with it, and a count of bytes lost
                    // the checkpoint carries (`CopyResolved`) is made once that checkpoint is
                    // written — in flight, it never was. (Other counts were made at once.)
                    let mut i = acked;
                    while i < h.out.len() {
                        if !matches!(h.out[i], Emitted::Batch { .. }) {
                            h.out.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                    counted_by_the_dead += h
                        .tailer
                        .take_stats()
                        .iter()
                        .map(|s| s.unread_bytes)
                        .sum::<u64>();
                    // The new process watches the directory from its start (the events of
                    // what happened before are not its own) and scans first.
                    events.borrow_mut().clear();
                    on_disk = cps.clone();
                    started = h.out.len();
                    h.tailer = restarted(&h, cps.clone());
                    h.tailer.scan(h.now);
                    trace.push(format!("kill, {acked} acknowledged"));
                    if debug {
                        let mut files: Vec<String> = cps
                            .files
                            .values()
                            .map(|c| {
                                format!(
                                    "ino {} gen {} fp {} at {} pending {}",
                                    c.inode % 1000,
                                    c.generation,
                                    c.fingerprint.map_or(0, |f| f.checksum % 1000),
                                    c.offset,
                                    c.pending.len()
                                )
                            })
                            .collect();
                        files.sort();
                        trace.push(format!("{{on disk: {}}}", files.join("; ")));
                    }
                    shown = h.out.len();
                    continue;
                }
                match rng.random_range(0..4) {
                    0 => {
                        let k = rng.random_range(0..=events.borrow().len());
                        deliver(&mut h, k);
                        trace.push(format!("events {k}"));
                    }
                    1 => {
                        // The room left in the agent's buffer: none, a little, or plenty.
                        let room = [0, 1, 100, u64::MAX][rng.random_range(0..4)];
                        h.tailer.read_turn(h.now, room);
                        trace.push(format!("read {room}"));
                        trace.append(&mut hooked.borrow_mut());
                    }
                    2 => {
                        h.tailer.scan(h.now);
                        trace.push("scan".into());
                    }
                    _ => {
                        h.now += Duration::from_millis(if rng.random_bool(0.2) {
                            rng.random_range(1000..8000)
                        } else {
                            rng.random_range(0..400)
                        });
                        h.tailer.poll_timeouts(h.now);
                        trace.push("timeouts".into());
                    }
                }
                h.collect();
                if debug {
                    for e in &h.out[shown.min(h.out.len())..] {
                        trace.push(describe(e));
                    }
                    shown = h.out.len();
                }
            }
            // Armed, but nothing looked at a file: the step takes place now.
            if armed.borrow_mut().take().is_some()
                && let Some(op) = ops.borrow_mut().pop_front()
            {
                trace.push(op.name());
                op.apply(&events);
            }
        }
        // The events arrive, and the tailer catches up before the next rotation.
        deliver(&mut h, usize::MAX);
        h.read_all();
        trace.push("caught up".into());
        if debug {
            for e in &h.out[shown.min(h.out.len())..] {
                trace.push(describe(e));
            }
            shown = h.out.len();
        }
    }
    watcher::hooks::clear_before_read();
    h.drain();
    let counted: u64 = h
        .tailer
        .take_stats()
        .iter()
        .map(|s| s.unread_bytes)
        .sum::<u64>()
        + resolved_lost(&h.out).iter().sum::<u64>()
        + counted_by_the_dead;
    // The collector's per-origin dedup: a record below what its origin already stored is a
    // replay, dropped; one that ends past it keeps its bytes past it, if it is a plain line
    // (collector/src/store/dedup.rs).
    let mut stored: HashMap<FileId, u64> = HashMap::new();
    let recs: Vec<(String, FileId, u64, u64)> = spans_by_origin(&mut h.out)
        .into_iter()
        .filter_map(|(line, id, off, span)| {
            let end = stored.entry(id).or_default();
            let high = *end;
            *end = high.max(off + span);
            if off >= high {
                return Some((line, id, off, span));
            }
            let skip = (high - off) as usize;
            (span == line.len() as u64 + 1 && skip < line.len())
                .then(|| (line[skip..].to_string(), id, high, off + span - high))
        })
        .collect();
    let mut whole: HashMap<&str, usize> = HashMap::new();
    for (l, ..) in &recs {
        *whole.entry(l.as_str()).or_default() += 1;
    }
    let twice: Vec<&String> = written
        .iter()
        .filter(|l| whole.get(l.as_str()).copied().unwrap_or(0) > 1)
        .collect();
    // Parts: pieces of lines not shipped whole.
    let strays: Vec<&&str> = whole
        .keys()
        .filter(|r| !written.iter().any(|w| w == **r))
        .filter(|r| {
            !written
                .iter()
                .any(|w| !whole.contains_key(w.as_str()) && w.contains(**r))
        })
        .collect();
    let bytes_written: u64 = written.iter().map(|l| l.len() as u64 + 1).sum();
    let bytes_shipped: u64 = recs.iter().map(|(_, _, _, span)| span).sum();
    // A line's first part handed out whole but for its newline: the newline alone, read from
    // the copy, is no record (one byte per part unshipped).
    let parts = recs
        .iter()
        .filter(|(l, _, _, span)| *span == l.len() as u64 || !written.contains(l))
        .count() as u64;
    let unshipped = bytes_written.checked_sub(bytes_shipped + counted);
    // With kills, bytes a truncation destroyed that no surviving agent saw (a stat by an agent
    // killed before its checkpoint said so) cannot be counted: lost uncounted, and only those.
    // And bytes stored unacknowledged before a kill, then destroyed, are counted lost by the
    // restarted agent, which cannot know they were stored: counted too many, and only those.
    let uncountable: u64 = if kills {
        destroyable
            .iter()
            .filter(|l| !whole.contains_key(l.as_str()))
            .map(|l| l.len() as u64 + 1)
            .sum()
    } else {
        0
    };
    let bytes_ok = match unshipped {
        Some(n) => n <= parts + uncountable,
        None => bytes_shipped + counted - bytes_written <= stored_unacknowledged,
    };
    if twice.is_empty() && strays.is_empty() && bytes_ok {
        return Ok(());
    }
    // Every record of the lines concerned: (first 10 bytes, identity, offset).
    let first10 = |l: &str| l[..l.len().min(10)].to_string();
    let ids: HashSet<String> = twice.iter().map(|l| first10(l)).collect();
    let shipped: Vec<String> = recs
        .iter()
        .filter(|(l, ..)| ids.contains(&first10(l)) || !written.contains(l))
        .map(|(l, id, off, span)| format!("{} ({span} bytes) from {id:?} at {off}", first10(l)))
        .collect();
    Err(format!(
        "{} lines shipped whole twice, {} parts of no line, {bytes_written} bytes written, \
         {bytes_shipped} shipped, {counted} counted lost; records of them: {shipped:#?}; \
         steps: {}",
        twice.len(),
        strays.len(),
        trace.join(", ")
    ))
}

fn identity_on_disk(cps: &Checkpoints, state: &FileState) -> bool {
    let wanted = (
        state.generation,
        state.fingerprint,
        state.origin.map(OriginV2::from),
    );
    cps.files
        .get(&state.key)
        .is_some_and(|cp| (cp.generation, cp.fingerprint, cp.origin) == wanted)
}

fn lane_of(e: &Emitted) -> FileKey {
    match e {
        Emitted::Batch { state, .. } | Emitted::Position { state, .. } => state.lane(),
        Emitted::Released { lane, .. } | Emitted::CopyResolved { lane, .. } => *lane,
    }
}

fn apply_emitted(cps: &mut Checkpoints, e: &Emitted) {
    match e {
        Emitted::Batch { state, batch, .. } => cps.advance(state, batch.end_offset),
        Emitted::Position { state, offset } => cps.advance(state, *offset),
        Emitted::Released { key, .. } => cps.release(*key),
        Emitted::CopyResolved {
            key, origin, lost, ..
        } => cps.copy_resolved(*key, *origin, *lost),
    }
}

/// What the shipper writes before it sends a batch of a content whose identity the checkpoint
/// on disk does not hold (`Shipper::identity_unwritten`).
fn identity_written(cps: &mut Checkpoints, state: &FileState, first_offset: u64) {
    let wanted = (
        state.generation,
        state.fingerprint,
        state.origin.map(OriginV2::from),
    );
    match cps.files.get(&state.key) {
        Some(cp) if (cp.generation, cp.fingerprint, cp.origin) == wanted => {}
        Some(cp)
            if cp.generation == state.generation
                && cp.origin == wanted.2
                && cp.fingerprint.is_none()
                && cp.offset == first_offset =>
        {
            cps.advance(state, first_offset)
        }
        None if first_offset == 0 && state.origin.is_none() => cps.advance(state, 0),
        _ => {}
    }
}

/// One emission, short (for the fuzz's steps under `FERRY_FUZZ_DEBUG`).
fn describe(e: &Emitted) -> String {
    let st = |s: &FileState| {
        format!(
            "ino {} gen {} fp {} origin {:?} tail {:?} pending {}",
            s.key.1 % 1000,
            s.generation,
            s.fingerprint.map_or(0, |f| f.checksum % 1000),
            s.origin.map(|o| (o.inode % 1000, o.generation)),
            s.tail.as_ref().map(|t| (t.offset, t.len)),
            s.pending.len()
        )
    };
    match e {
        Emitted::Batch { state, batch, .. } => format!(
            "[batch {}..{} {}]",
            batch.first_offset,
            batch.end_offset,
            st(state)
        ),
        Emitted::Position { state, offset } => format!("[position {offset} {}]", st(state)),
        Emitted::Released { key, .. } => format!("[released ino {}]", key.1 % 1000),
        Emitted::CopyResolved {
            key, origin, lost, ..
        } => format!(
            "[copy resolved ino {} origin {:?} lost {lost}]",
            key.1 % 1000,
            (origin.inode % 1000, origin.generation)
        ),
    }
}

/// Every record emitted: (line, identity, offset, span).
fn spans_by_origin(out: &mut [Emitted]) -> Vec<(String, FileId, u64, u64)> {
    let mut v = Vec::new();
    for e in out.iter_mut() {
        if let Emitted::Batch { batch, .. } = e {
            let enc = batch.builder.finish(Codec::None, 0, 0).unwrap();
            let mut off = batch.first_offset;
            for r in decode(&enc.into(), &DecodeLimits::default())
                .unwrap()
                .records
            {
                v.push((
                    String::from_utf8_lossy(&r.line).into_owned(),
                    batch.file,
                    off,
                    r.span,
                ));
                off += r.span;
            }
        }
    }
    v
}

/// Lines read and still in an open batch when their file is found truncated are handed out
/// with the content's identity (fingerprint, head, a tail print at most at the batch's end):
/// their checkpoint entry must let a restart tell that content from the next one. Handed out
/// after the watcher moved to the next generation, the entry had none — an agent killed before
/// the next generation's position was written resumed the new content as the old, or (shorter)
/// could not look for the copy and read it again from 0 as a file of its own (the copytruncate
/// fuzz with kills, seed 12).
#[test]
fn batch_open_at_a_truncation_is_checkpointed_with_the_old_contents_identity() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    // Read, not shipped yet (the batch lingers).
    h.tailer.scan(h.now);
    h.tailer.read_turn(h.now, u64::MAX);
    h.collect();
    assert!(
        !h.out.iter().any(|e| matches!(e, Emitted::Batch { .. })),
        "the batch is still open"
    );
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"three\n").unwrap();
    h.tailer.data_event(&p);
    h.tailer.read_turn(h.now, u64::MAX);
    h.collect();
    let old: Vec<&FileState> = h
        .out
        .iter()
        .filter_map(|e| match e {
            Emitted::Batch { state, batch, .. } if batch.file.generation == 0 => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(old.len(), 1, "the old content's batch");
    assert_eq!(old[0].generation, 0);
    assert!(old[0].fingerprint.is_some(), "{:?}", old[0]);
    assert!(old[0].head.is_some(), "{:?}", old[0]);
    // Its checkpoint, as if the agent were killed right after its acknowledgement.
    let until = h
        .out
        .iter()
        .position(|e| matches!(e, Emitted::Batch { batch, .. } if batch.file.generation == 0))
        .unwrap();
    let cps = acknowledged_checkpoint(&h.out[..=until]);
    let cp = cps.files.values().next().unwrap();
    assert_eq!((cp.generation, cp.offset), (0, 8));
    assert!(cp.fingerprint.is_some() && cp.head.is_some(), "{cp:?}");
}

/// The agent is killed after the checkpoint recorded a copytruncate copy as read under its
/// original's origin, but before it recorded that the wait for that copy was over. The
/// restarted agent finds the wait in the checkpoint and the copy already tracked under that
/// origin: the wait is over at once, counting nothing the copy holds as lost (before: it waited
/// `rotate_wait` for a copy it no longer recognised, then counted everything the original held
/// unread as lost — lines that were shipped).
#[test]
fn wait_for_a_copy_adopted_before_a_kill_ends_without_counting_its_lines_lost() {
    let mut h = harness_with(None);
    let p = h.path(0);
    std::fs::write(&p, "one\ntwo\n").unwrap();
    h.read_all();
    append_to(&p, b"three\nfour\n");
    h.tailer.scan(h.now);
    // Copied (outside the glob, as a copytruncate under `*.log`), then truncated, all unread.
    std::fs::copy(&p, p.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    h.read_all();
    let resolved = h
        .out
        .iter()
        .position(|e| matches!(e, Emitted::CopyResolved { .. }))
        .expect("the copy is found");
    let cps = acknowledged_checkpoint(&h.out[..resolved]);
    assert!(
        cps.files.values().any(|c| !c.pending.is_empty()),
        "the wait is still in the checkpoint: {cps:?}"
    );
    assert!(
        cps.files.values().any(|c| c.origin.is_some()),
        "the copy is recorded: {cps:?}"
    );
    let original = std::fs::metadata(&p).unwrap().ino();
    let cps = Checkpoints::decode(&cps.encode()).unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.drain();
    assert_eq!(resolved_lost(&h.out), [0]);
    // The copy's lines (not acknowledged before the kill) are read on from where the original
    // stopped, under its origin, as before the kill: replays the collector drops if it had them.
    let recs = records_by_origin(&mut h.out);
    let got: Vec<(&str, u64, u64)> = recs
        .iter()
        .map(|(l, id, off)| (l.as_str(), id.inode, *off))
        .collect();
    assert_eq!(got, [("three", original, 8), ("four", original, 14)]);
}

/// A file checkpointed at 0 before its first line was whole (its identity not fixed), then
/// read and shipped, the agent killed before that batch was acknowledged; copytruncate's copy
/// made while it was stopped. The restarted agent fixes the file's identity from its first
/// line at once, so the copy, found in the same scan, is parked as its copy, not read (and
/// checkpointed) as a file of its own — which, after the truncation, shipped its lines again
/// under another identity, past the collector's dedup (the copytruncate fuzz with kills, seed
/// 65).
#[test]
fn copy_found_at_start_of_a_file_checkpointed_without_identity_is_its_copy() {
    // Which of the two files the restarted agent looks at first is up to hash order: tried
    // with a fresh tailer (fresh hash keys) a few times.
    for _ in 0..16 {
        copy_found_at_start_of_a_file_checkpointed_without_identity();
    }
}

fn copy_found_at_start_of_a_file_checkpointed_without_identity() {
    let mut h = wide_harness();
    let app = h.dir.path().join("app.log");
    let copy = h.dir.path().join("app.log.1");
    std::fs::write(&app, "on").unwrap();
    h.read_all();
    let cps = acknowledged_checkpoint(&h.out);
    assert!(
        cps.by_path(&app.to_string_lossy())
            .is_some_and(|c| c.offset == 0 && c.fingerprint.is_none()),
        "checkpointed at 0 without identity"
    );
    // Read and shipped, not acknowledged.
    append_to(&app, b"e 1234567890\ntwo 1234567890\n");
    h.read_all();
    h.now += Duration::from_secs(1);
    h.tailer.poll_timeouts(h.now);
    h.collect();
    let mut stored = records_by_origin(&mut h.out);
    assert_eq!(stored.len(), 2, "both lines shipped before the kill");
    // Stopped: the copy made.
    std::fs::copy(&app, &copy).unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps.clone());
    h.tailer.scan(h.now);
    h.tailer.read_turn(h.now, 1);
    h.collect();
    let mut acked = cps;
    for e in &h.out {
        apply_emitted(&mut acked, e);
    }
    stored.extend(records_by_origin(&mut h.out));
    // Killed again (all acknowledged), the original truncated meanwhile.
    truncate_to_zero(&app);
    append_to(&app, b"four 1234567890\n");
    stored.extend(restart_and_drain(&mut h, acked));
    // The collector's per-origin dedup drops replays.
    let mut end: HashMap<FileId, u64> = HashMap::new();
    let mut lines: Vec<String> = Vec::new();
    for (l, id, off) in stored {
        let e = end.entry(id).or_default();
        if off >= *e {
            *e = off + l.len() as u64 + 1;
            lines.push(l);
        }
    }
    lines.sort();
    assert_eq!(
        lines,
        ["four 1234567890", "one 1234567890", "two 1234567890"],
        "each line stored once"
    );
}

/// copytruncate truncates right after it copies: the original truncated while a new file's
/// bytes are compared with it (after its size was taken, before its bytes were read). The new
/// file is its copy all the same, not a file of its own read from 0 (the pinned 300,000-line
/// regression under load: 40,000 duplicates, one copy's worth).
#[test]
fn original_truncated_while_a_copy_is_compared_with_it_is_still_its_copy() {
    let mut h = wide_harness();
    let app = h.dir.path().join("app.log");
    let copy = h.dir.path().join("app.log.1");
    let text: String = (0..20)
        .map(|i| format!("line {i:02} of the original\n"))
        .collect();
    std::fs::write(&app, &text).unwrap();
    h.read_all();
    std::fs::write(&copy, &text).unwrap();
    let armed = Rc::new(RefCell::new(true));
    {
        let (app, armed) = (app.clone(), armed.clone());
        watcher::hooks::set_before_read(move |path, at| {
            if path == app && at == 0 && armed.replace(false) {
                truncate_to_zero(&app);
            }
        });
    }
    h.read_all();
    watcher::hooks::clear_before_read();
    assert!(
        !*armed.borrow(),
        "the original was truncated during the comparison"
    );
    append_to(&app, b"after the truncation\n");
    h.drain();
    let mut lines: Vec<String> = records_by_origin(&mut h.out)
        .into_iter()
        .map(|r| r.0)
        .collect();
    lines.sort();
    let mut want: Vec<String> = text.lines().map(str::to_owned).collect();
    want.push("after the truncation".into());
    want.sort();
    assert_eq!(lines, want, "each line once");
}

/// The rotation model's wide seed 37: a file deleted, and a new file given its inode number; a
/// copytruncate of the new file. The copy of the *old* file, read earlier under the old file's
/// origin — the same device, inode and generation — is not the new file's copy: its lines are
/// other lines (its fingerprint says so). Taken for it, the wait for the new file's copy ended
/// at once ("adopted already"), and the real copy, parked, was later read as a file of its own:
/// the new file's lines shipped twice. (Inode reuse cannot be forced here: the checkpoint gives
/// the old copy the origin it would have had.)
#[test]
fn the_copy_of_a_file_that_had_this_inode_before_is_not_its_copy() {
    let mut h = wide_harness();
    let app = h.dir.path().join("app.log");
    let old_copy = h.dir.path().join("app.log.1");
    std::fs::write(&app, "old one\nold two\n").unwrap();
    h.read_all();
    // Copied and truncated: the copy is read on under the old file's origin (nothing left).
    std::fs::copy(&app, &old_copy).unwrap();
    truncate_to_zero(&app);
    h.read_all();
    std::fs::remove_file(&app).unwrap();
    h.read_all();
    let mut cps = acknowledged_checkpoint(&h.out);
    let copy_ino = std::fs::metadata(&old_copy).unwrap().ino();
    // A new app.log, and the old copy's origin as if the new file had been given its inode.
    std::fs::write(&app, "new one\nnew two\n").unwrap();
    let new_ino = std::fs::metadata(&app).unwrap().ino();
    let entry = cps
        .files
        .values_mut()
        .find(|c| c.inode == copy_ino)
        .expect("the old copy is checkpointed");
    let origin = entry
        .origin
        .as_mut()
        .expect("read under the old file's origin");
    assert_eq!(origin.generation, 0);
    origin.inode = new_ino;
    let cps = Checkpoints::decode(&cps.encode()).unwrap();
    h.out.clear();
    h.tailer = restarted(&h, cps);
    h.read_all();
    // copytruncate of the new file.
    std::fs::copy(&app, h.dir.path().join("app.log.2")).unwrap();
    truncate_to_zero(&app);
    append_to(&app, b"new three\n");
    h.drain();
    let mut lines: Vec<String> = records_by_origin(&mut h.out)
        .into_iter()
        .map(|(l, _, _)| l)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["new one", "new three", "new two"],
        "each line of the new file once"
    );
}
