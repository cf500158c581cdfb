//! The source-independent core of a running pipeline: what a member keeps per input partition
//! and per owned repartition partition, and every decision about them — restore, process,
//! close windows, merge, build a flush, write a checkpoint, drop a replay. No I/O and no
//! runtime: the two sources ([`crate::runner`] on the collector, [`crate::kafka_source`] on
//! Kafka) fetch, store and post what this core hands them and tell it what happened, and the
//! model test (`processor/tests/driver_model.rs`) drives it over in-memory partitions, members
//! and SIGKILLs.
//!
//! ```text
//!  source (collector or Kafka)                 Driver
//!  ───────────────────────────                 ──────────────────────────────────────────────
//!  partition assigned + its checkpoint ──────▶ assign: restore the upstream (offset to seek)
//!  records of a partition ───────────────────▶ upstream(id).pipeline.process_run
//!  every turn ───────────────────────────────▶ advance: ticks, the in-process merge or the
//!                                              owners' merges → emissions (to the sinks)
//!  repartition, a flush due ─────────────────▶ build_flush → checkpoint (offset, blob) to store,
//!     stored ────────────────────────────────▶ stored → outbox to post → posted
//!  no repartition, a checkpoint due ─────────▶ checkpoint_of → (offset, blob) to store
//!  partition revoked ────────────────────────▶ (flush or checkpoint first) revoke
//!  repartition partition assigned + its cp ──▶ assign_owner (offset to seek)
//!  a repartition message ────────────────────▶ apply (a replay is dropped by its sequence)
//!  owners' checkpoints due ──────────────────▶ owner_checkpoint → (offset, blob) to store
//! ```

use crate::config::PipelineConfig;
use crate::merge::{Merge, Note, Part, as_part, holds_all, unwrap_checkpoint, wrap_checkpoint};
use crate::pipeline::{Emission, PartitionId, Pipeline};
use crate::repartition::{self, Outbox};
use crate::sink::FileMark;
use crate::state::StateError;
use std::collections::BTreeMap;
use std::time::Instant;

/// One input partition's pipeline: a partial of the in-process merge, or an upstream of the
/// repartition hop (or, partitioned by key, a pipeline emitting its own results).
pub struct Upstream {
    pub id: PartitionId,
    pub pipeline: Pipeline,
    /// Offset reading started from, where the source knows it (the collector does; on Kafka a
    /// partition without a checkpoint starts at a symbolic position).
    pub start: Option<u64>,
    /// Processing time it was assigned: the merge's idle timeout counts from then.
    pub since_ms: i64,
    /// With repartition: the last flush's partials until every target acknowledged them.
    pub outbox: Option<Outbox>,
    /// With repartition: the checkpoint (offset, bytes) holding `outbox`, until stored; the
    /// outbox is not posted before (a member that lost the partition must not post).
    pub unstored: Option<(u64, Vec<u8>)>,
    /// With repartition: the input offset of the last flush built (or restored).
    pub flushed: Option<u64>,
}

impl Upstream {
    /// The input offset it has consumed up to (the start until a record was processed).
    pub fn next_offset(&self) -> Option<u64> {
        self.pipeline
            .offsets()
            .into_iter()
            .find(|(p, _)| *p == self.id)
            .map(|(_, o)| o)
            .or(self.start)
    }

    /// A flush or a post of this upstream is not through yet.
    pub fn pending(&self) -> bool {
        self.outbox.is_some() || self.unstored.is_some()
    }
}

/// How an assigned partition was set up.
#[derive(Debug)]
pub enum Assigned {
    /// From its checkpoint: read on from this offset.
    Restored(u64),
    /// From a checkpoint that holds no offset yet (nothing processed when it was stored).
    RestoredWithoutOffset,
    /// No checkpoint: from the source's start position.
    Fresh,
    /// A checkpoint this build cannot read (another version, damage): from the source's start
    /// position, said loudly by the caller.
    Unreadable(StateError),
}

/// One owned partition of the repartition topic.
pub struct Owner {
    /// Its own merge: its watermark is the minimum over *its* parts, so a partition taken over
    /// mid-stream (its parts behind) never closes a window early.
    pub merge: Merge,
    /// Per upstream input partition: its part's name in the merge and its merged partials.
    pub parts: BTreeMap<PartitionId, (PartitionId, Pipeline)>,
    /// Per upstream: the highest line sequence applied (used where the repartition topic does
    /// not drop replays itself: Kafka).
    pub seqs: BTreeMap<PartitionId, u64>,
    /// Offset in the repartition partition to read from next (`None`: its beginning).
    pub next_offset: Option<u64>,
    /// Processing time it was assigned (a part silent since then for `idle_timeout` is idle).
    pub since_ms: i64,
}

/// What applying one repartition message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Its deltas merged (this many were late).
    Merged { late: u64 },
    /// A replay of a line applied before (its sequence is not above its upstream's).
    Duplicate,
    /// Read before (below the owner's offset), or of a partition not owned.
    Skipped,
    /// Not a repartition line.
    Unreadable(String),
}

impl Owner {
    pub fn new(cfg: &PipelineConfig, since_ms: i64) -> Self {
        Self {
            merge: Merge::new(cfg.clone()),
            parts: BTreeMap::new(),
            seqs: BTreeMap::new(),
            next_offset: None,
            since_ms,
        }
    }

    /// Restores the owner of partition `r` from its checkpoint ([`Owner::checkpoint`]);
    /// `offset`: the one stored beside it, where the store keeps it (the collector).
    pub fn restore(
        cfg: &PipelineConfig,
        r: u32,
        bytes: &[u8],
        offset: Option<u64>,
        since_ms: i64,
    ) -> Result<Self, StateError> {
        let (_, rest) = unwrap_checkpoint(bytes)?;
        let (next, seqs, parts) = match repartition::split_seqs(rest) {
            Ok((next, seqs, parts)) => (Some(next), seqs, parts),
            Err(StateError::BadMagic) => (offset, BTreeMap::new(), rest),
            Err(e) => return Err(e),
        };
        let parts = repartition::decode_parts(cfg, parts)?;
        let mut o = Self::new(cfg, since_ms);
        o.next_offset = next;
        o.seqs = seqs;
        o.parts = parts
            .into_iter()
            .map(|(up, p)| (up.clone(), (repartition::part_id(r, &up), p)))
            .collect();
        Ok(o)
    }

    /// Gives every upstream in `upstreams` a part (an empty one if it has none yet), so that
    /// one that has shipped nothing holds the watermark until `idle_timeout`.
    pub fn cover(&mut self, cfg: &PipelineConfig, r: u32, upstreams: &[PartitionId]) {
        for up in upstreams {
            self.parts.entry(up.clone()).or_insert_with(|| {
                (
                    repartition::part_id(r, up),
                    Pipeline::new(cfg.clone()).into_partial(),
                )
            });
        }
    }

    /// The checkpoint: `note`, then (with `seqs`) the offset to read from next with the
    /// sequences ([`repartition::encode_seqs`]), then the parts ([`repartition::encode_parts`]).
    /// Without `seqs` (the collector, which keeps the offset beside the checkpoint and drops
    /// replays itself) the layout of the first version.
    pub fn checkpoint(&self, note: &Note, seqs: bool) -> Vec<u8> {
        let mut body = Vec::new();
        if seqs {
            body = repartition::encode_seqs(self.next_offset.unwrap_or(0), &self.seqs);
        }
        let parts: Vec<(&PartitionId, &Pipeline)> =
            self.parts.iter().map(|(up, (_, p))| (up, p)).collect();
        body.extend_from_slice(&repartition::encode_parts(&parts));
        wrap_checkpoint(note, &body)
    }

    /// Applies the message at `offset` of partition `r` with `payload` and, where the topic does
    /// not drop replays itself, its `seq`.
    pub fn apply(
        &mut self,
        cfg: &PipelineConfig,
        r: u32,
        offset: u64,
        payload: &[u8],
        seq: Option<u64>,
        now_ms: i64,
    ) -> Applied {
        if self.next_offset.is_some_and(|n| offset < n) {
            return Applied::Skipped;
        }
        self.next_offset = Some(offset + 1);
        let line = match repartition::decode_line(payload, self.merge.ops()) {
            Ok(l) => l,
            Err(e) => return Applied::Unreadable(e.to_string()),
        };
        if let Some(seq) = seq {
            if self.seqs.get(&line.upstream).is_some_and(|&s| seq <= s) {
                return Applied::Duplicate;
            }
            self.seqs.insert(line.upstream.clone(), seq);
        }
        let (_, part) = self.parts.entry(line.upstream.clone()).or_insert_with(|| {
            (
                repartition::part_id(r, &line.upstream),
                Pipeline::new(cfg.clone()).into_partial(),
            )
        });
        Applied::Merged {
            late: repartition::absorb(part, line, now_ms),
        }
    }
}

/// The core of one pipeline in one member. See the module docs.
pub struct Driver {
    cfg: PipelineConfig,
    /// Partials go through the repartition topic (`source.repartition`, not partitioned by key).
    repartition: bool,
    /// The owners' checkpoints carry their sequences (the repartition topic drops no replays).
    owner_seqs: bool,
    /// Said while the in-process merge waits for every partition.
    hint: &'static str,
    pub upstreams: BTreeMap<PartitionId, Upstream>,
    /// The in-process merge (without repartition).
    merge: Merge,
    /// The input topics by the source's names for them (Kafka's may carry a prefix): the
    /// in-process merge waits until their partition counts are known.
    pub topics: Vec<String>,
    /// Partition count of each input topic, as learned by the source.
    pub topic_partitions: BTreeMap<String, u32>,
    warned_incomplete: Option<Instant>,
    /// Where the results files stood at the last durable point (the sinks' marks).
    pub marks: Vec<FileMark>,
    /// The repartition topic's partition count, once it is known.
    pub rep_partitions: Option<u32>,
    pub owners: BTreeMap<u32, Owner>,
    /// Windows emitted per part, read from every owner's checkpoint: each owner's merge learns
    /// its own parts' entries, and every checkpoint carries them all (with every owner's own),
    /// so the note and the files' marks always agree.
    learned: BTreeMap<PartitionId, i64>,
    /// Results files' marks read from the owners' checkpoints: carried into ours, so that a
    /// member whose partitions moved while it was down still finds its file's mark.
    learned_marks: Vec<FileMark>,
}

impl Driver {
    /// `owner_seqs`: the repartition topic does not drop replays by itself (Kafka); `hint`:
    /// what to change, said while the in-process merge waits for every partition.
    pub fn new(cfg: PipelineConfig, owner_seqs: bool, hint: &'static str) -> Self {
        Self {
            repartition: cfg.source.repartition && !cfg.source.partitioned_by_key,
            owner_seqs,
            hint,
            merge: Merge::new(cfg.clone()),
            topics: cfg.source.topics.clone(),
            cfg,
            upstreams: BTreeMap::new(),
            topic_partitions: BTreeMap::new(),
            warned_incomplete: None,
            marks: Vec::new(),
            rep_partitions: None,
            owners: BTreeMap::new(),
            learned: BTreeMap::new(),
            learned_marks: Vec::new(),
        }
    }

    pub fn cfg(&self) -> &PipelineConfig {
        &self.cfg
    }

    pub fn repartition(&self) -> bool {
        self.repartition
    }

    // ----- input partitions -----

    /// Learns the note of every input checkpoint of the group (without repartition): which
    /// windows were emitted with which partition's partial. Returns the results files' marks
    /// they hold (to cut the files back to, once, before anything is written).
    pub fn learn_input_notes<'a>(
        &mut self,
        blobs: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<FileMark> {
        let mut marks = Vec::new();
        for blob in blobs {
            if let Ok((note, _)) = unwrap_checkpoint(blob) {
                for (pid, start) in note.emitted {
                    self.merge.learn(pid, start);
                }
                marks.extend(note.files);
            }
        }
        marks
    }

    /// Sets up input partition `id` from its checkpoint (if any); `start`: where the source
    /// starts it without one, if it knows. A partition still held is kept as it is.
    pub fn assign(
        &mut self,
        id: PartitionId,
        checkpoint: Option<&[u8]>,
        start: Option<u64>,
        since_ms: i64,
    ) -> Assigned {
        if let Some(u) = self.upstreams.get(&id) {
            return u.next_offset().map_or(Assigned::Fresh, Assigned::Restored);
        }
        let (pipeline, outbox, how) = match checkpoint.map(|b| self.restore(b)) {
            Some(Ok((p, outbox))) => {
                let next = p
                    .offsets()
                    .into_iter()
                    .find(|(x, _)| *x == id)
                    .map(|(_, o)| o);
                let how = next.map_or(Assigned::RestoredWithoutOffset, Assigned::Restored);
                (p, outbox, how)
            }
            Some(Err(e)) => (
                Pipeline::new(self.cfg.clone()),
                None,
                Assigned::Unreadable(e),
            ),
            None => (Pipeline::new(self.cfg.clone()), None, Assigned::Fresh),
        };
        let start = match how {
            Assigned::Restored(o) => Some(o),
            _ => start,
        };
        self.upstreams.insert(
            id.clone(),
            Upstream {
                id,
                pipeline: as_part(pipeline),
                start,
                since_ms,
                outbox,
                unstored: None,
                flushed: start,
            },
        );
        how
    }

    /// A stored checkpoint as a pipeline (and, with repartition, its outbox). A checkpoint of
    /// the other mode is read too (no outbox), so switching `repartition` keeps positions and
    /// windows.
    fn restore(&self, bytes: &[u8]) -> Result<(Pipeline, Option<Outbox>), StateError> {
        if let Ok((outbox, snap)) = repartition::unwrap_upstream(bytes) {
            return Ok((Pipeline::restore(self.cfg.clone(), snap)?, outbox));
        }
        let (_, snap) = unwrap_checkpoint(bytes)?;
        Ok((Pipeline::restore(self.cfg.clone(), snap)?, None))
    }

    pub fn upstream_mut(&mut self, id: &PartitionId) -> Option<&mut Upstream> {
        self.upstreams.get_mut(id)
    }

    /// Drops an input partition (revoked after its hand-over, or lost).
    pub fn revoke(&mut self, id: &PartitionId) {
        self.upstreams.remove(id);
    }

    /// Ticks (on `tick`: time moves windows, early results) and the merges: without
    /// repartition the in-process merge, with it each owner's. Emissions go to `out`.
    pub fn advance(&mut self, now_ms: i64, tick: bool, out: &mut Vec<Emission>) {
        if tick {
            for u in self.upstreams.values_mut() {
                u.pipeline.advance_time(now_ms, out);
            }
        }
        if self.repartition {
            for owner in self.owners.values_mut() {
                let since_ms = owner.since_ms;
                let mut parts: Vec<Part<'_>> = owner
                    .parts
                    .values_mut()
                    .map(|(id, pipeline)| Part {
                        id,
                        pipeline,
                        since_ms,
                    })
                    .collect();
                owner.merge.advance(now_ms, &mut parts, out);
                if tick {
                    owner.merge.emit_early(&mut parts, out);
                }
            }
            return;
        }
        if self.cfg.source.partitioned_by_key {
            // Each partition's pipeline emits its own results (`merge::as_part`).
            return;
        }
        let known = self
            .topics
            .iter()
            .all(|t| self.topic_partitions.contains_key(t));
        let total = known.then(|| self.topic_partitions.values().sum());
        if !holds_all(
            &self.cfg.name,
            self.upstreams.len(),
            total,
            &mut self.warned_incomplete,
            self.hint,
        ) {
            return;
        }
        let mut parts: Vec<Part<'_>> = self
            .upstreams
            .values_mut()
            .map(|u| Part {
                id: &u.id,
                pipeline: &mut u.pipeline,
                since_ms: u.since_ms,
            })
            .collect();
        self.merge.step(now_ms, tick, &mut parts, out);
    }

    /// The checkpoint of input partition `id` without repartition: (offset, the merge's note
    /// with the files' marks, then the snapshot). `None` while nothing was processed.
    pub fn checkpoint_of(&self, id: &PartitionId) -> Option<(u64, Vec<u8>)> {
        let u = self.upstreams.get(id)?;
        let next = u.next_offset()?;
        let note = Note {
            emitted: self.merge.emitted().clone(),
            files: self.marks.clone(),
        };
        Some((next, wrap_checkpoint(&note, &u.pipeline.snapshot())))
    }

    // ----- repartition: upstream flushes -----

    /// Upstreams whose flush is due: `periodic` (every `flush_interval`), those whose watermark
    /// closed a window (so that its result waits for the hop only), and those not through.
    pub fn due(&self, periodic: bool) -> Vec<PartitionId> {
        self.upstreams
            .values()
            .filter(|u| periodic || u.pending() || u.pipeline.windows.has_closed())
            .map(|u| u.id.clone())
            .collect()
    }

    /// Builds the next flush of `id` unless one is under way: if it read records since its
    /// last flush, its windows are taken as an outbox over the repartition topic's partitions
    /// and its checkpoint (offset, state, outbox) is to be stored first. Without a
    /// repartition topic yet, `force` (a hand-over, the stop) makes a checkpoint that keeps
    /// the windows. Returns whether there is something to store or post.
    pub fn build_flush(&mut self, id: &PartitionId, force: bool) -> bool {
        let partitions = self.rep_partitions;
        let Some(u) = self.upstreams.get_mut(id) else {
            return false;
        };
        if u.pending() {
            return true;
        }
        let Some(next) = u.next_offset() else {
            return false;
        };
        match partitions {
            Some(n) if u.flushed != Some(next) => {
                let outbox = repartition::flush(&mut u.pipeline, &u.id, next, n);
                let blob = repartition::wrap_upstream(Some(&outbox), &u.pipeline.snapshot());
                u.unstored = Some((next, blob));
                u.outbox = Some(outbox);
                u.flushed = Some(next);
                true
            }
            None if force && u.flushed != Some(next) => {
                let blob = repartition::wrap_upstream(None, &u.pipeline.snapshot());
                u.unstored = Some((next, blob));
                true
            }
            _ => false,
        }
    }

    /// The checkpoint of `id`'s flush still to store.
    pub fn unstored(&self, id: &PartitionId) -> Option<&(u64, Vec<u8>)> {
        self.upstreams.get(id)?.unstored.as_ref()
    }

    /// `id`'s flush checkpoint was stored: its outbox may be posted now.
    pub fn stored(&mut self, id: &PartitionId) {
        if let Some(u) = self.upstreams.get_mut(id) {
            u.unstored = None;
        }
    }

    /// The outbox of `id` to post (once its checkpoint is stored).
    pub fn to_post(&self, id: &PartitionId) -> Option<&Outbox> {
        let u = self.upstreams.get(id)?;
        if u.unstored.is_some() {
            return None;
        }
        u.outbox.as_ref()
    }

    /// Every line of `id`'s outbox was acknowledged.
    pub fn posted(&mut self, id: &PartitionId) {
        if let Some(u) = self.upstreams.get_mut(id) {
            u.outbox = None;
        }
    }

    // ----- repartition: owners -----

    /// Every input partition, by the partition counts learned (an owner gives each a part).
    fn all_upstreams(&self) -> Vec<PartitionId> {
        self.topic_partitions
            .iter()
            .flat_map(|(t, n)| (0..*n).map(|p| PartitionId::new(t.clone(), p)))
            .collect()
    }

    /// Learns the note of every owner checkpoint (windows emitted per part, files' marks) and
    /// returns the marks (to cut the files back to, once, before anything is written).
    pub fn learn_owner_notes<'a>(
        &mut self,
        blobs: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<FileMark> {
        let mut marks = Vec::new();
        for blob in blobs {
            if let Ok((note, _)) = unwrap_checkpoint(blob) {
                for (pid, start) in note.emitted {
                    let e = self.learned.entry(pid).or_insert(start);
                    *e = (*e).max(start);
                }
                marks.extend(note.files);
            }
        }
        for m in &marks {
            match self
                .learned_marks
                .iter_mut()
                .find(|l| l.dev == m.dev && l.ino == m.ino)
            {
                Some(l) => l.len = l.len.max(m.len),
                None => self.learned_marks.push(*m),
            }
        }
        for owner in self.owners.values_mut() {
            for (id, _) in owner.parts.values() {
                if let Some(&start) = self.learned.get(id) {
                    owner.merge.learn(id.clone(), start);
                }
            }
        }
        marks
    }

    /// Sets up owned repartition partition `r` from its checkpoint (with the offset stored
    /// beside it, where the store keeps one) — call [`Driver::learn_owner_notes`] first. A
    /// partition still owned is kept. Without a (readable) checkpoint it reads from `start`
    /// (`None`: the beginning). Returns the offset to read from and how it was set up.
    pub fn assign_owner(
        &mut self,
        r: u32,
        checkpoint: Option<(Option<u64>, &[u8])>,
        start: Option<u64>,
        since_ms: i64,
    ) -> (Option<u64>, Assigned) {
        if let Some(o) = self.owners.get(&r) {
            let how = o.next_offset.map_or(Assigned::Fresh, Assigned::Restored);
            return (o.next_offset, how);
        }
        let (mut owner, how) = match checkpoint {
            Some((offset, bytes)) => match Owner::restore(&self.cfg, r, bytes, offset, since_ms) {
                Ok(o) => {
                    let how = o
                        .next_offset
                        .map_or(Assigned::RestoredWithoutOffset, Assigned::Restored);
                    (o, how)
                }
                Err(e) => (Owner::new(&self.cfg, since_ms), Assigned::Unreadable(e)),
            },
            None => (Owner::new(&self.cfg, since_ms), Assigned::Fresh),
        };
        if !matches!(how, Assigned::Restored(_)) {
            owner.next_offset = owner.next_offset.or(start);
        }
        owner.cover(&self.cfg, r, &self.all_upstreams());
        for (id, _) in owner.parts.values() {
            if let Some(&start) = self.learned.get(id) {
                owner.merge.learn(id.clone(), start);
            }
        }
        let next = owner.next_offset;
        self.owners.insert(r, owner);
        (next, how)
    }

    /// One message of repartition partition `r`.
    pub fn apply(
        &mut self,
        r: u32,
        offset: u64,
        payload: &[u8],
        seq: Option<u64>,
        now_ms: i64,
    ) -> Applied {
        let Some(owner) = self.owners.get_mut(&r) else {
            return Applied::Skipped;
        };
        let seq = if self.owner_seqs { seq } else { None };
        owner.apply(&self.cfg, r, offset, payload, seq, now_ms)
    }

    /// The checkpoint of owned partition `r`: (offset to read from next, blob) — the merge's
    /// note (windows emitted by every owner, ours and learned; the results files' marks, ours
    /// and learned), then the owner's state.
    pub fn owner_checkpoint(&self, r: u32) -> Option<(u64, Vec<u8>)> {
        let owner = self.owners.get(&r)?;
        let mut files = self.marks.clone();
        for m in &self.learned_marks {
            if !files.iter().any(|f| f.dev == m.dev && f.ino == m.ino) {
                files.push(*m);
            }
        }
        let mut emitted = self.learned.clone();
        for o in self.owners.values() {
            for (id, start) in o.merge.emitted() {
                let e = emitted.entry(id.clone()).or_insert(*start);
                *e = (*e).max(*start);
            }
        }
        let note = Note { emitted, files };
        Some((
            owner.next_offset.unwrap_or(0),
            owner.checkpoint(&note, self.owner_seqs),
        ))
    }

    /// Drops an owned partition (handed over, or lost).
    pub fn revoke_owner(&mut self, r: u32) {
        self.owners.remove(&r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use crate::pipeline::Emission;
    use ferry_core::record::Record;

    fn cfg() -> PipelineConfig {
        let yaml = "pipelines:\n  - name: m\n    source: {topics: [app]}\n    event_time: {field: ts, format: unix_ms}\n    group_by: [k]\n    window: {tumbling: 10ms, allowed_lateness: 0s, idle_timeout: 1h}\n    aggregates: [{name: count, op: count}]\n";
        let c: ProcessorConfig =
            ferry_core::config::load_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        c.pipelines[0].clone()
    }

    /// An upstream's outbox of `n` records of key `k` at ts 1..=n, read up to `next`.
    fn outbox(up: &PartitionId, from: u64, n: u64, ts: i64, partitions: u32) -> Outbox {
        let cfg = cfg();
        let mut p = Pipeline::new(cfg).into_partial();
        let mut out: Vec<Emission> = Vec::new();
        for i in 0..n {
            let r = Record::from_line(format!(r#"{{"k":"a","ts":{ts}}}"#).into_bytes());
            p.process(up, from + i, &r, 0, 0, &mut out);
        }
        repartition::flush(&mut p, up, from + n, partitions)
    }

    fn count_of(o: &Owner) -> u64 {
        o.parts
            .values()
            .map(|(_, p)| {
                let mut w = Vec::new();
                let mut p2 = Pipeline::restore(cfg(), &p.snapshot()).unwrap();
                p2.windows.take_all(&mut w);
                w.iter()
                    .flat_map(|(_, w)| w.keys.values())
                    .map(|k| match &k.aggs[0] {
                        crate::aggregate::AggState::Count(c) => *c,
                        _ => 0,
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    #[test]
    fn replayed_lines_are_dropped_and_the_state_survives_a_checkpoint() {
        let cfg = cfg();
        let up = PartitionId::new("app", 0);
        let first = outbox(&up, 0, 5, 3, 1);
        let second = outbox(&up, 5, 2, 4, 1);
        let mut o = Owner::new(&cfg, 0);
        o.cover(&cfg, 0, std::slice::from_ref(&up));
        let mut offset = 0;
        let mut send = |o: &mut Owner, b: &Outbox| -> Vec<Applied> {
            b.numbered(0)
                .map(|(seq, line)| {
                    offset += 1;
                    o.apply(&cfg, 0, offset - 1, line, Some(seq), 0)
                })
                .collect()
        };
        assert_eq!(send(&mut o, &first), vec![Applied::Merged { late: 0 }]);
        assert_eq!(count_of(&o), 5);
        // The upstream crashed after its checkpoint: the same outbox again, then the next.
        assert_eq!(send(&mut o, &first), vec![Applied::Duplicate]);
        let note = Note::default();
        let saved = o.checkpoint(&note, true);
        assert_eq!(send(&mut o, &second), vec![Applied::Merged { late: 0 }]);
        assert_eq!(count_of(&o), 7);
        // The owner crashed after its checkpoint: restored, it reads on from its offset and
        // gets the second flush once; a message it read before is behind.
        let mut back = Owner::restore(&cfg, 0, &saved, None, 0).unwrap();
        assert_eq!(back.next_offset, Some(2));
        assert_eq!(count_of(&back), 5);
        let (seq, line) = second.numbered(0).next().unwrap();
        assert_eq!(back.apply(&cfg, 0, 1, line, Some(seq), 0), Applied::Skipped);
        assert_eq!(
            back.apply(&cfg, 0, 2, line, Some(seq), 0),
            Applied::Merged { late: 0 }
        );
        assert_eq!(
            back.apply(&cfg, 0, 3, line, Some(seq), 0),
            Applied::Duplicate
        );
        assert_eq!(count_of(&back), 7);
        assert!(matches!(
            back.apply(&cfg, 0, 4, b"garbage", Some(seq + 1), 0),
            Applied::Unreadable(_)
        ));
        // Without a sequence (the collector drops replays itself) a line is merged.
        assert_eq!(
            back.apply(&cfg, 0, 5, line, None, 0),
            Applied::Merged { late: 0 }
        );
        for i in 0..saved.len() {
            let mut bad = saved.clone();
            bad[i] ^= 0x10;
            assert!(
                Owner::restore(&cfg, 0, &bad, None, 0).is_err(),
                "byte {i} changed and still restored"
            );
        }
    }
}
