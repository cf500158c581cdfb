//! One result per window and key over several input partitions: per-partition partials, merged.
//!
//! ```text
//!  partition 0 ─▶ Pipeline (partial) ─┐  closed windows, held    ┌────────────┐
//!  partition 1 ─▶ Pipeline (partial) ─┼────────────────────────▶ │   Merge    │ ─▶ one result per
//!  partition 2 ─▶ Pipeline (partial) ─┤  watermarks, activity     │ min(wm)    │    (window, key)
//!  partition 3 ─▶ Pipeline (partial) ─┘                           └────────────┘
//! ```
//!
//! Each input partition keeps its own [`Pipeline`] (made with [`Pipeline::into_partial`]): it
//! aggregates its records and decides by its **own** watermark which records are late, so that
//! decision depends on that partition's input alone and is the same when it is replayed from its
//! checkpoint. A window its watermark passes is not emitted but held, no longer taking records.
//!
//! The merge's watermark is the minimum of the partitions' watermarks, over the *active* ones: a
//! partition that delivered nothing for `idle_timeout` (counted from its last record, or from
//! when it was assigned) does not hold it back, and if every partition is idle, the maximum is
//! used. An active partition without any event time yet (just assigned, nothing read) holds it
//! where it is. The watermark never goes back. A window whose end plus grace it passes is taken
//! from every partition (an idle one first has its watermark raised to the merge's, so its
//! records for that window are late from then on, like everyone else's), the partials are merged
//! (every aggregate merges: [`crate::aggregate::AggState::merge`]) and one final result per key
//! is emitted, with the alert rules evaluated on the merged state.
//!
//! **Exactly once across crashes.** Each partition's checkpoint is written separately, so after a
//! crash the checkpoints of a member's partitions may be from different moments. A partition
//! restored from an older checkpoint still holds (part of) windows that were emitted since, with
//! its partial in them. So the merge remembers, per partition, the last window start emitted
//! with that partition's partial ([`Merge::emitted`]), and writes the whole map into *every*
//! partition's checkpoint ([`wrap_checkpoint`]); a member taking partitions reads the map from
//! every checkpoint of the topic ([`Merge::learn`]) and drops, instead of emitting again, a
//! partition's window at or before its entry. The claim in the map is always true (that partial
//! was emitted), so taking the maximum over all checkpoints is safe.
//!
//! With one member holding every partition, the result per (window, key) is the aggregate over
//! all of the topic's records. With several members, each merges the partitions it holds: one
//! result per window and key only if the topic is partitioned by the group-by key (the
//! collector topic's `key_field`); docs/processor.md says so.

use crate::codec::{Dec, Enc};
use crate::config::PipelineConfig;
use crate::pipeline::{Emission, PartitionId, Pipeline};
use crate::sink::FileMark;
use crate::state::StateError;
use crate::window::{ClosedWindow, KeyState, Window};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

/// One input partition's partial, as the merge sees it for one step.
pub struct Part<'a> {
    pub id: &'a PartitionId,
    pub pipeline: &'a mut Pipeline,
    /// Processing time (Unix ms) the partition was assigned to this member: it counts as
    /// active (holding the watermark) from then until `idle_timeout` without a record.
    pub since_ms: i64,
}

/// An input partition's pipeline as a member runs it: a partial of the member's merge, or,
/// with the topics partitioned by the group-by key (`source.partitioned_by_key`), a whole
/// pipeline that emits its partition's results itself — they are complete, and one merged
/// watermark over partitions taken over at different moments would make the records of one
/// that fell behind late.
pub fn as_part(p: Pipeline) -> Pipeline {
    if p.config().source.partitioned_by_key {
        p
    } else {
        p.into_partial()
    }
}

/// Whether a member holding `held` of its topics' `total` partitions may emit merged results
/// (`total` `None`: not known yet). A partial of the topics must not go out as a final result:
/// the windows wait (in the checkpoints) until one member holds every partition — e.g. until a
/// member that died loses its session. While they wait, a warning every 10 s (`warned` keeps
/// when) says why, with `hint` on what to change.
pub fn holds_all(
    pipeline: &str,
    held: usize,
    total: Option<u32>,
    warned: &mut Option<std::time::Instant>,
    hint: &str,
) -> bool {
    let Some(total) = total.filter(|&t| t > 0) else {
        return false;
    };
    if held >= total as usize {
        return true;
    }
    if warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
        tracing::warn!(
            pipeline,
            held,
            partitions = total,
            "results wait until this member holds every partition ({hint})"
        );
        *warned = Some(std::time::Instant::now());
    }
    false
}

/// The merge of one pipeline's partials. See the module docs.
#[derive(Debug)]
pub struct Merge {
    /// Emits the merged results: the result shape, alert rules and result counters of the
    /// pipeline. Never given a record.
    head: Pipeline,
    /// `i64::MIN` until a partition had an event time. Never goes back.
    watermark: i64,
    /// Per partition, the start of the last window emitted with that partition's partial.
    emitted: BTreeMap<PartitionId, i64>,
    size_ms: i64,
    idle_timeout_ms: i64,
    /// Scratch for the windows taken from one partition.
    taken: Vec<(i64, Window)>,
}

impl Merge {
    pub fn new(cfg: PipelineConfig) -> Self {
        let head = Pipeline::new(cfg);
        Self {
            size_ms: head.windows.size_ms(),
            idle_timeout_ms: head.windows.idle_timeout_ms(),
            head,
            watermark: i64::MIN,
            emitted: BTreeMap::new(),
            taken: Vec::new(),
        }
    }

    /// The merged watermark (Unix ms), once any partition had an event time.
    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    /// The pipeline's aggregate operators, in config order.
    pub fn ops(&self) -> &[crate::config::AggOp] {
        self.head.windows.ops()
    }

    /// Per partition, the start of the last window emitted with its partial.
    pub fn emitted(&self) -> &BTreeMap<PartitionId, i64> {
        &self.emitted
    }

    /// Takes in a note read from a checkpoint: `partition`'s partial of the windows up to
    /// `start` was emitted.
    pub fn learn(&mut self, partition: PartitionId, start: i64) {
        let e = self.emitted.entry(partition).or_insert(start);
        *e = (*e).max(start);
    }

    /// Recomputes the merged watermark at processing time `now_ms` and emits the windows it
    /// passed, one result per key with the partials of `parts` merged. Call it after each batch
    /// of records and on every tick, with every partition this member holds, in a stable order.
    pub fn advance(&mut self, now_ms: i64, parts: &mut [Part<'_>], out: &mut Vec<Emission>) {
        let mut held = false;
        let mut active_min: Option<i64> = None;
        let mut all_max: Option<i64> = None;
        for p in parts.iter() {
            let w = &p.pipeline.windows;
            let last = w.last_active_ms().unwrap_or(i64::MIN).max(p.since_ms);
            let active = now_ms.saturating_sub(last) < self.idle_timeout_ms;
            match w.watermark() {
                Some(wm) => {
                    all_max = Some(all_max.map_or(wm, |m| m.max(wm)));
                    if active {
                        active_min = Some(active_min.map_or(wm, |m| m.min(wm)));
                    }
                }
                None => held |= active,
            }
        }
        if !held
            && let Some(wm) = active_min.or(all_max)
            && wm > self.watermark
        {
            self.watermark = wm;
            self.head.set_watermark_gauge(wm);
        }
        if self.watermark == i64::MIN {
            return;
        }
        let mut ready: BTreeMap<i64, Window> = BTreeMap::new();
        for p in parts.iter_mut() {
            p.pipeline.windows.raise_watermark(self.watermark);
            p.pipeline
                .windows
                .take_closed(self.watermark, &mut self.taken);
            let done = self.emitted.get(p.id).copied();
            for (start, w) in self.taken.drain(..) {
                if done.is_some_and(|d| start <= d) {
                    // Restored from a checkpoint older than the emission of this window, whose
                    // result had this partial in it already.
                    tracing::debug!(
                        pipeline = self.head.name(),
                        topic = p.id.topic,
                        partition = p.id.partition,
                        start,
                        "window already emitted; its replayed partial is dropped"
                    );
                    continue;
                }
                merge_window(ready.entry(start).or_default(), w);
            }
        }
        let Some(&last) = ready.keys().next_back() else {
            return;
        };
        for (start, w) in ready {
            let mut keys: Vec<(Box<[u8]>, KeyState)> = w.keys.into_iter().collect();
            keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.head.emit_closed(
                ClosedWindow {
                    start_ms: start,
                    end_ms: start + self.size_ms,
                    evicted: w.evicted,
                    keys,
                },
                out,
            );
        }
        for p in parts.iter() {
            self.learn(p.id.clone(), last);
        }
        self.head.report();
    }

    /// One step of a member's merge: [`Merge::advance`], and on a `tick` [`Merge::emit_early`].
    pub fn step(
        &mut self,
        now_ms: i64,
        tick: bool,
        parts: &mut [Part<'_>],
        out: &mut Vec<Emission>,
    ) {
        self.advance(now_ms, parts, out);
        if tick {
            self.emit_early(parts, out);
        }
    }

    /// With `emit: early`, emits the merged state of every (window, key) that changed in any
    /// partition since the last call, marked early. Call it on every tick.
    pub fn emit_early(&mut self, parts: &mut [Part<'_>], out: &mut Vec<Emission>) {
        if !self.head.is_early() {
            return;
        }
        let mut dirty: BTreeSet<(i64, Box<[u8]>)> = BTreeSet::new();
        for p in parts.iter_mut() {
            for (start, w) in p.pipeline.windows.open_mut() {
                for (k, ks) in &w.keys {
                    if ks.dirty {
                        dirty.insert((start, k.clone()));
                    }
                }
            }
        }
        for (start, key) in dirty {
            let mut merged: Option<KeyState> = None;
            let mut evicted = 0;
            for p in parts.iter_mut() {
                let Some(w) = p.pipeline.windows.window_mut(start) else {
                    continue;
                };
                evicted += w.evicted;
                if let Some(ks) = w.keys.get(&key) {
                    match &mut merged {
                        None => merged = Some(ks.clone()),
                        Some(m) => merge_key(m, ks),
                    }
                }
            }
            let Some(mut ks) = merged else { continue };
            self.head
                .emit_result(start, &key, &mut ks, true, evicted, out);
            // Alerts fire once per window and key: the merged bits go back to every partial.
            for p in parts.iter_mut() {
                if let Some(s) = p
                    .pipeline
                    .windows
                    .window_mut(start)
                    .and_then(|w| w.keys.get_mut(&key))
                {
                    s.alerted |= ks.alerted;
                    s.dirty = false;
                }
            }
        }
        self.head.report();
    }
}

fn merge_key(into: &mut KeyState, from: &KeyState) {
    for (a, b) in into.aggs.iter_mut().zip(&from.aggs) {
        a.merge(b);
    }
    into.alerted |= from.alerted;
    into.dirty |= from.dirty;
}

/// Merges `from` into `into`, key by key.
pub(crate) fn merge_window(into: &mut Window, from: Window) {
    into.evicted += from.evicted;
    for (k, ks) in from.keys {
        match into.keys.entry(k) {
            Entry::Occupied(mut e) => merge_key(e.get_mut(), &ks),
            Entry::Vacant(e) => {
                e.insert(ks);
            }
        }
    }
}

/// Magic of a merged pipeline's checkpoint (the emitted-windows note, then the partition's own
/// [`Pipeline::snapshot`]).
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"FRYM";
pub const CHECKPOINT_VERSION: u8 = 1;

/// A partition's checkpoint in a merged pipeline.
///
/// | size | field |
/// |---:|---|
/// | 4 | magic `FRYM` |
/// | 1 | version, currently 1 |
/// | 4 | `n`, entries of the note |
/// | … | `n` × (topic: u32 length + UTF-8, partition u32, last emitted window start i64) |
/// | 4 | `m`, results files |
/// | … | `m` × (device u64, inode u64, length u64): [`FileMark`]s |
/// | 4 | CRC32C of every byte of the note before it |
/// | … | the partition's pipeline snapshot (`FRYP`, see `state.rs`; its own CRC) |
///
/// Integers little-endian. A checkpoint that starts with `FRYP` (written before merging
/// existed) is read as a snapshot with an empty note.
pub fn wrap_checkpoint(note: &Note, snapshot: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(&CHECKPOINT_MAGIC);
    e.u8(CHECKPOINT_VERSION);
    e.len(note.emitted.len());
    for (p, start) in &note.emitted {
        e.str(&p.topic);
        e.u32(p.partition);
        e.i64(*start);
    }
    e.len(note.files.len());
    for f in &note.files {
        e.u64(f.dev);
        e.u64(f.ino);
        e.u64(f.len);
    }
    let crc = crc32c::crc32c(&e.buf);
    e.u32(crc);
    e.buf.extend_from_slice(snapshot);
    e.buf
}

/// What a merged pipeline's checkpoint says besides the partition's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    /// [`Merge::emitted`] when the checkpoint was stored.
    pub emitted: BTreeMap<PartitionId, i64>,
    /// Where the pipeline's results files stood then.
    pub files: Vec<FileMark>,
}

/// Splits a checkpoint into its note and the pipeline snapshot.
pub fn unwrap_checkpoint(bytes: &[u8]) -> Result<(Note, &[u8]), StateError> {
    if bytes.starts_with(&crate::state::MAGIC) {
        return Ok((Note::default(), bytes));
    }
    if !bytes.starts_with(&CHECKPOINT_MAGIC) {
        return Err(StateError::BadMagic);
    }
    let mut d = Dec::new(bytes);
    d.u32()?;
    let v = d.u8()?;
    if v != CHECKPOINT_VERSION {
        return Err(StateError::UnsupportedVersion(v));
    }
    let n = d.len(16)?;
    let mut note = Note::default();
    for _ in 0..n {
        let topic = d.str()?.to_owned();
        let partition = d.u32()?;
        let start = d.i64()?;
        note.emitted.insert(PartitionId { topic, partition }, start);
    }
    let n = d.len(24)?;
    for _ in 0..n {
        note.files.push(FileMark {
            dev: d.u64()?,
            ino: d.u64()?,
            len: d.u64()?,
        });
    }
    let rest = crate::state::check_block_crc(&mut d, bytes)?;
    Ok((note, &bytes[rest..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use ferry_core::record::Record;

    fn cfg(extra: &str) -> PipelineConfig {
        let yaml = format!(
            "pipelines:\n  - name: m\n    source: {{topics: [app]}}\n    event_time: {{field: ts, format: unix_ms}}\n    group_by: [k]\n    window: {{tumbling: 10ms, allowed_lateness: 0s, idle_timeout: 100ms{extra}}}\n    aggregates: [{{name: count, op: count}}]\n"
        );
        let c: ProcessorConfig =
            ferry_core::config::load_str(&yaml, std::path::Path::new("t.yaml")).unwrap();
        c.pipelines[0].clone()
    }

    struct Member {
        ids: Vec<PartitionId>,
        parts: Vec<Pipeline>,
        merge: Merge,
        next: Vec<u64>,
    }

    impl Member {
        fn new(n: u32, extra: &str) -> Self {
            Self {
                ids: (0..n).map(|i| PartitionId::new("app", i)).collect(),
                parts: (0..n)
                    .map(|_| Pipeline::new(cfg(extra)).into_partial())
                    .collect(),
                merge: Merge::new(cfg(extra)),
                next: vec![0; n as usize],
            }
        }

        fn feed(&mut self, p: usize, ts: i64, k: &str, now: i64, out: &mut Vec<Emission>) {
            let line = format!(r#"{{"ts":{ts},"k":"{k}"}}"#);
            let off = self.next[p];
            self.next[p] += 1;
            self.parts[p].process(&self.ids[p], off, &Record::from_line(line), 0, now, out);
            self.step(now, out);
        }

        fn step(&mut self, now: i64, out: &mut Vec<Emission>) {
            let mut parts: Vec<Part<'_>> = self
                .ids
                .iter()
                .zip(self.parts.iter_mut())
                .map(|(id, pipeline)| Part {
                    id,
                    pipeline,
                    since_ms: 0,
                })
                .collect();
            self.merge.advance(now, &mut parts, out);
            self.merge.emit_early(&mut parts, out);
        }
    }

    fn results(out: &[Emission]) -> Vec<(i64, String, bool)> {
        out.iter()
            .filter_map(|e| match e {
                Emission::Result(r) => Some((r.window_start_ms, r.to_json(), r.early)),
                _ => None,
            })
            .map(|(s, j, e)| {
                let v: serde_json::Value = serde_json::from_str(&j).unwrap();
                (
                    s,
                    format!("{}={}", v["key"]["k"].as_str().unwrap(), v["count"]),
                    e,
                )
            })
            .collect()
    }

    #[test]
    fn one_result_per_window_and_key_on_the_min_watermark() {
        let mut m = Member::new(3, "");
        let mut out = Vec::new();
        m.feed(0, 1, "a", 0, &mut out);
        m.feed(1, 2, "a", 0, &mut out);
        // Partition 2 has read nothing yet and was just assigned: it holds the watermark.
        m.feed(0, 25, "a", 0, &mut out);
        m.feed(1, 25, "b", 0, &mut out);
        assert!(results(&out).is_empty());
        m.feed(2, 3, "b", 0, &mut out);
        assert!(results(&out).is_empty(), "partition 2 is at 3");
        m.feed(2, 30, "a", 1, &mut out);
        assert_eq!(
            results(&out),
            [(0, "a=2".into(), false), (0, "b=1".into(), false)]
        );
        // A record of a closed window is late in its partition, not counted again.
        m.feed(1, 5, "a", 2, &mut out);
        assert_eq!(m.parts[1].stats().late, 1);
        assert_eq!(results(&out).len(), 2);
    }

    #[test]
    fn idle_partition_stops_holding_and_its_partial_is_merged() {
        let mut m = Member::new(2, "");
        let mut out = Vec::new();
        m.feed(0, 1, "a", 0, &mut out);
        m.feed(1, 2, "a", 0, &mut out);
        m.feed(0, 50, "a", 50, &mut out);
        assert!(results(&out).is_empty());
        m.step(99, &mut out);
        assert!(results(&out).is_empty());
        // Partition 1 silent for 100 ms: the watermark moves to partition 0's, and partition
        // 1's partial of [0, 10) is in the one result.
        m.step(100, &mut out);
        assert_eq!(results(&out), [(0, "a=2".into(), false)]);
        // Partition 1 now late for it, too.
        m.feed(1, 3, "a", 101, &mut out);
        assert_eq!(m.parts[1].stats().late, 1);
    }

    #[test]
    fn early_results_are_merged_too() {
        let mut m = Member::new(2, ", emit: early");
        let mut out = Vec::new();
        m.feed(0, 1, "a", 0, &mut out);
        m.feed(1, 2, "a", 0, &mut out);
        assert_eq!(
            results(&out),
            [(0, "a=1".into(), true), (0, "a=2".into(), true)]
        );
    }

    #[test]
    fn a_partial_restored_from_an_older_checkpoint_is_not_emitted_twice() {
        let mut m = Member::new(2, "");
        let mut out = Vec::new();
        m.feed(0, 1, "a", 0, &mut out);
        m.feed(1, 2, "a", 0, &mut out);
        // Partition 1's checkpoint is taken now; partition 0's after the window is emitted.
        let note = |m: &Member| Note {
            emitted: m.merge.emitted().clone(),
            files: Vec::new(),
        };
        let old1 = wrap_checkpoint(&note(&m), &m.parts[1].snapshot());
        m.feed(0, 20, "a", 0, &mut out);
        m.feed(1, 20, "a", 0, &mut out);
        assert_eq!(results(&out), [(0, "a=2".into(), false)]);
        let new0 = wrap_checkpoint(&note(&m), &m.parts[0].snapshot());
        // Crash; a new member restores both and learns from both notes.
        let mut r = Member::new(2, "");
        for (i, ck) in [(0, &new0), (1, &old1)] {
            let (note, snap) = unwrap_checkpoint(ck).unwrap();
            for (p, s) in note.emitted {
                r.merge.learn(p, s);
            }
            r.parts[i] = Pipeline::restore(cfg(""), snap).unwrap().into_partial();
        }
        r.next = vec![2, 1];
        let mut out = Vec::new();
        // Partition 1 replays its record at 20; [0, 10) closes there again and is dropped.
        r.feed(1, 20, "a", 0, &mut out);
        r.feed(0, 30, "a", 0, &mut out);
        r.feed(1, 30, "a", 0, &mut out);
        assert_eq!(results(&out), [(20, "a=2".into(), false)]);
    }

    #[test]
    fn checkpoint_wrapper_round_trips_and_reads_plain_snapshots() {
        let p = Pipeline::new(cfg(""));
        let snap = p.snapshot();
        let mut note = Note::default();
        note.emitted.insert(PartitionId::new("app", 3), 40);
        note.files.push(FileMark {
            dev: 1,
            ino: 2,
            len: 3,
        });
        let w = wrap_checkpoint(&note, &snap);
        let (n, s) = unwrap_checkpoint(&w).unwrap();
        assert_eq!(n, note);
        assert_eq!(s, &snap[..]);
        let (n, s) = unwrap_checkpoint(&snap).unwrap();
        assert_eq!(n, Note::default());
        assert_eq!(s, &snap[..]);
        let mut bad = w.clone();
        bad[6] ^= 1;
        assert!(unwrap_checkpoint(&bad).is_err());
        assert!(unwrap_checkpoint(b"nope").is_err());
        for cut in 0..w.len() - snap.len() {
            assert!(unwrap_checkpoint(&w[..cut]).is_err(), "{cut}");
        }
    }
}
