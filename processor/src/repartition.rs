//! Repartition: one result per window and key when several members split the input partitions.
//!
//! ```text
//!  input topic app (4 partitions)         repartition topic {group}.{pipeline}.repartition
//!  ───────────────────────────────        (as many partitions as the input, in the collector)
//!  partition 0 ─▶ upstream 0 ─┐ every flush_interval: the windows' deltas, split by
//!  partition 1 ─▶ upstream 1 ─┤ hash(group key) % R, one body per target partition, posted
//!  partition 2 ─▶ upstream 2 ─┼─▶ as producer (upstream, target) with sequence
//!  partition 3 ─▶ upstream 3 ─┘    next_offset << 20; the last line carries the watermark
//!                                         │
//!       partition r ◀─────────────────────┘  (group {group}.repartition)
//!         └─▶ owner of r: one part per upstream (its deltas merged, its watermark)
//!             └─▶ Merge (merge.rs): watermark = min over active parts → one result per
//!                 (window, key) → sinks, alerts
//! ```
//!
//! **Upstream.** Each input partition's instance is a partial [`crate::pipeline::Pipeline`]: it
//! aggregates its records and decides, by its own watermark, which records are late. At each
//! flush it takes every window it holds (the *delta* since the last flush) and builds an
//! [`Outbox`]: per target partition of the repartition topic, lines holding the deltas of the
//! keys that hash there, the last line with the instance's watermark. It flushes every
//! `flush_interval` and also as soon as its watermark closes a window (`Windows::has_closed`),
//! so that a window's result waits for the hop, not for the next interval. Then, in this order:
//! 1. the instance's checkpoint is stored — its input offset, its state (windows now empty) and
//!    the outbox ([`wrap_upstream`]);
//! 2. each target's lines are posted with `ferry-producer-id` = the (upstream, target) pair's
//!    [`producer_id`] and `ferry-producer-seq` = `next_offset << SEQ_SHIFT`;
//! 3. once every post is acknowledged, the outbox is dropped.
//!
//! A crash anywhere replays exactly: before (1), the records are read again from the previous
//! checkpoint and the same deltas are rebuilt; after (1), the restored outbox is posted again with
//! the same sequence numbers and the collector's per-origin dedup drops what it already stored.
//! A member that lost the partition cannot store the checkpoint (the collector accepts it only
//! from the owner) and so never posts. The sequence grows with the input offset, so the dedup
//! mark is exact, and the flush boundaries need not be the same across a restart.
//!
//! **Downstream.** The owner of repartition partition `r` keeps one part per upstream input
//! partition (made when `r` is assigned, so an upstream that has sent nothing yet holds the
//! watermark until `idle_timeout`), absorbs each line into its part's windows
//! ([`crate::window::Windows::absorb`]; a delta of a window the merge already closed is late)
//! and moves its watermark to the line's. The [`crate::merge::Merge`] of the member closes
//! windows on the minimum watermark over the active parts and emits each (window, key) once;
//! its note of emitted windows and the results files' lengths go into each owner's checkpoint
//! with the parts' state ([`encode_parts`]), as for the in-process merge.

use crate::codec::{Dec, DecodeError, Enc};
use crate::config::AggOp;
use crate::pipeline::{PartitionId, Pipeline};
use crate::state::StateError;
use crate::window::Window;
use base64::Engine;
use std::collections::BTreeMap;

/// Lines of one flush to one target are numbered from `next_offset << SEQ_SHIFT`: at most
/// 2^20 lines per flush and target, input offsets below 2^44.
pub const SEQ_SHIFT: u32 = 20;
/// A line's encoded deltas are cut at about this many bytes (before base64), well below the
/// collector's default `max_line_bytes` (1 MiB).
const MAX_LINE_RAW: usize = 192 << 10;
/// One post carries at most about this many bytes of lines.
pub const MAX_BODY_BYTES: usize = 4 << 20;

const LINE_MAGIC: [u8; 4] = *b"FRYS";
const LINE_VERSION: u8 = 1;
const UPSTREAM_MAGIC: [u8; 4] = *b"FRYU";
const PARTS_MAGIC: [u8; 4] = *b"FRYO";
const SEQS_MAGIC: [u8; 4] = *b"FRYQ";
const VERSION: u8 = 1;

/// The repartition topic of a pipeline in a group: `{group}.{pipeline}.repartition`, with
/// characters a topic name cannot have replaced by `_`.
pub fn topic_name(group: &str, pipeline: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{}.{}.repartition", clean(group), clean(pipeline));
    if name.starts_with("__") {
        name.replace_range(..1, "x");
    }
    if name.len() > ferry_core::topic::MAX_TOPIC_LEN {
        let h = ferry_core::topic::stable_hash(&[name.as_bytes()]);
        name = format!("{}.{h:016x}.repartition", &name[..200]);
    }
    name
}

/// The consumer group whose members own the repartition topic's partitions.
pub fn merge_group(group: &str) -> String {
    let g = format!("{group}.repartition");
    if g.len() > ferry_core::topic::MAX_TOPIC_LEN {
        format!(
            "{:016x}.repartition",
            ferry_core::topic::stable_hash(&[group.as_bytes()])
        )
    } else {
        g
    }
}

/// The repartition partition of a group key.
pub fn target(key: &[u8], partitions: u32) -> u32 {
    (ferry_core::topic::stable_hash(&[key]) % u64::from(partitions.max(1))) as u32
}

/// The producer id under which `upstream`'s deltas for `target` are posted: stable across
/// restarts and members, and one whose lines the collector stores in partition `target`
/// ([`ferry_core::topic::origin_partition`] of its [`ferry_core::topic::producer_origin`]).
pub fn producer_id(
    group: &str,
    pipeline: &str,
    upstream: &PartitionId,
    target: u32,
    partitions: u32,
) -> String {
    let h = ferry_core::topic::stable_hash(&[
        b"ferry-repartition",
        group.as_bytes(),
        pipeline.as_bytes(),
        upstream.topic.as_bytes(),
        &upstream.partition.to_le_bytes(),
    ]);
    let mut salt = 0u64;
    loop {
        let id = format!("rp{h:016x}.{target}.{salt}");
        let key = ferry_core::topic::producer_origin(&id);
        if ferry_core::topic::origin_partition(&key, partitions) == target {
            return id;
        }
        salt += 1;
    }
}

/// The name of `upstream`'s part in the merge of repartition partition `r` (the merge's note is
/// keyed by it).
pub fn part_id(r: u32, upstream: &PartitionId) -> PartitionId {
    PartitionId::new(format!("{r}/{}", upstream.topic), upstream.partition)
}

/// An upstream flush: takes every window `pipeline` (the instance of input partition
/// `upstream`, read up to `next_offset`) holds, as an [`Outbox`] over `partitions` targets.
pub fn flush(
    pipeline: &mut Pipeline,
    upstream: &PartitionId,
    next_offset: u64,
    partitions: u32,
) -> Outbox {
    let mut taken = Vec::new();
    pipeline.windows.take_all(&mut taken);
    Outbox::build(
        upstream,
        next_offset,
        pipeline.windows.watermark(),
        taken,
        partitions,
    )
}

/// Merges a shipped line into its upstream's part (a partial pipeline) at processing time
/// `now_ms`: the deltas of windows the part's watermark has not passed, then (on the flush's
/// last line) the upstream's watermark and activity. Returns the deltas that were late.
pub fn absorb(part: &mut Pipeline, line: PartialLine, now_ms: i64) -> u64 {
    let mut late = 0;
    for (start, w) in line.windows {
        if !part.windows.absorb(start, w) {
            late += 1;
        }
    }
    if line.last {
        if let Some(wm) = line.watermark {
            part.windows.raise_watermark(wm);
        }
        part.windows.observe(0, None, now_ms);
    }
    late
}

/// One shipped line: deltas of some keys of `upstream` for one target partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialLine {
    pub upstream: PartitionId,
    /// The upstream's input offset after the records in this flush.
    pub next_offset: u64,
    /// The last line of its flush for this target: it carries the upstream's watermark.
    pub last: bool,
    pub watermark: Option<i64>,
    pub windows: BTreeMap<i64, Window>,
}

/// What one flush of an upstream instance ships: per target partition, its lines (base64).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// The upstream's input offset after the flushed records.
    pub next_offset: u64,
    /// Lines per target; every target gets at least one (its watermark line).
    pub lines: BTreeMap<u32, Vec<Vec<u8>>>,
}

impl Outbox {
    /// Splits `windows` (the deltas taken from `upstream`'s instance) by key over `partitions`
    /// targets.
    pub fn build(
        upstream: &PartitionId,
        next_offset: u64,
        watermark: Option<i64>,
        windows: Vec<(i64, Window)>,
        partitions: u32,
    ) -> Self {
        let n = partitions.max(1);
        let mut per: Vec<BTreeMap<i64, Window>> = (0..n).map(|_| BTreeMap::new()).collect();
        for (start, w) in windows {
            // Every target's results show the window's evicted total, as in one pipeline.
            if w.evicted > 0 {
                for t in per.iter_mut() {
                    t.entry(start).or_default().evicted += w.evicted;
                }
            }
            for (k, ks) in w.keys {
                let t = target(&k, n) as usize;
                per[t].entry(start).or_default().keys.insert(k, ks);
            }
        }
        let mut lines = BTreeMap::new();
        for (t, windows) in per.into_iter().enumerate() {
            let mut enc = LineEncoder::new(upstream, next_offset);
            for (start, w) in windows {
                if w.evicted > 0 {
                    enc.evicted(start, w.evicted);
                }
                let mut keys: Vec<_> = w.keys.into_iter().collect();
                keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (k, ks) in keys {
                    enc.key(start, &k, &ks);
                }
            }
            lines.insert(t as u32, enc.finish(watermark));
        }
        Self { next_offset, lines }
    }

    /// The producer sequence of the first line of each target's lines.
    pub fn seq(&self) -> u64 {
        self.next_offset << SEQ_SHIFT
    }

    /// Lines of `target`, cut into bodies of about [`MAX_BODY_BYTES`], each with the sequence
    /// number of its first line.
    pub fn bodies(&self, target: u32) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(lines) = self.lines.get(&target) else {
            return out;
        };
        let mut body: Vec<u8> = Vec::new();
        let mut first = self.seq();
        for (seq, l) in (self.seq()..).zip(lines) {
            if !body.is_empty() && body.len() + l.len() + 1 > MAX_BODY_BYTES {
                out.push((first, std::mem::take(&mut body)));
                first = seq;
            }
            body.extend_from_slice(l);
            body.push(b'\n');
        }
        if !body.is_empty() {
            out.push((first, body));
        }
        out
    }
}

/// Builds the lines of one target, cutting at [`MAX_LINE_RAW`].
struct LineEncoder<'a> {
    upstream: &'a PartitionId,
    next_offset: u64,
    evicted: Vec<(i64, u64)>,
    entries: Enc,
    count: usize,
    lines: Vec<Vec<u8>>,
}

impl<'a> LineEncoder<'a> {
    fn new(upstream: &'a PartitionId, next_offset: u64) -> Self {
        Self {
            upstream,
            next_offset,
            evicted: Vec::new(),
            entries: Enc::default(),
            count: 0,
            lines: Vec::new(),
        }
    }

    fn evicted(&mut self, start: i64, n: u64) {
        self.evicted.push((start, n));
    }

    fn key(&mut self, start: i64, key: &[u8], ks: &crate::window::KeyState) {
        let e = &mut self.entries;
        e.i64(start);
        e.bytes(key);
        e.bool(ks.dirty);
        e.u64(ks.alerted);
        for a in &ks.aggs {
            a.encode(e);
        }
        self.count += 1;
        if self.entries.buf.len() >= MAX_LINE_RAW {
            self.cut(false, None);
        }
    }

    /// Line layout (little-endian, then base64):
    ///
    /// | size | field |
    /// |---:|---|
    /// | 4 | magic `FRYS` |
    /// | 1 | version, 1 |
    /// | … | upstream topic (u32 length + UTF-8), partition u32 |
    /// | 8 | next offset of the upstream after this flush |
    /// | 1 | last line of the flush for this target |
    /// | 1 + 8 | has a watermark, watermark |
    /// | 4 + … | evicted entries: (window start i64, count u64) |
    /// | 4 + … | key entries: (window start i64, key bytes, dirty, alerted u64, states) |
    /// | 4 | CRC32C of every byte before it |
    fn cut(&mut self, last: bool, watermark: Option<i64>) {
        let mut e = Enc::default();
        e.buf.extend_from_slice(&LINE_MAGIC);
        e.u8(LINE_VERSION);
        e.str(&self.upstream.topic);
        e.u32(self.upstream.partition);
        e.u64(self.next_offset);
        e.bool(last);
        e.bool(watermark.is_some());
        e.i64(watermark.unwrap_or(0));
        e.len(self.evicted.len());
        for (s, n) in self.evicted.drain(..) {
            e.i64(s);
            e.u64(n);
        }
        e.len(self.count);
        e.buf.append(&mut self.entries.buf);
        self.count = 0;
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        self.lines.push(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(&e.buf)
                .into_bytes(),
        );
    }

    fn finish(mut self, watermark: Option<i64>) -> Vec<Vec<u8>> {
        self.cut(true, watermark);
        self.lines
    }
}

/// Reads a shipped line (`ops`: the pipeline's aggregate operators).
pub fn decode_line(line: &[u8], ops: &[AggOp]) -> Result<PartialLine, DecodeError> {
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(line.trim_ascii())
        .map_err(|e| DecodeError {
            at: 0,
            what: format!("not a repartition line (base64: {e})"),
        })?;
    if raw.len() < 9 || raw[..4] != LINE_MAGIC {
        return Err(DecodeError {
            at: 0,
            what: "not a repartition line (magic)".into(),
        });
    }
    let body = crate::codec::strip_crc(&raw).ok_or_else(|| DecodeError {
        at: raw.len(),
        what: "repartition line checksum mismatch".into(),
    })?;
    let mut d = Dec::new(body);
    d.u32()?;
    let v = d.u8()?;
    if v != LINE_VERSION {
        return Err(d.err(format!("repartition line version {v} is not supported")));
    }
    let topic = d.str()?.to_owned();
    let partition = d.u32()?;
    let next_offset = d.u64()?;
    let last = d.bool()?;
    let has = d.bool()?;
    let wm = d.i64()?;
    let mut windows: BTreeMap<i64, Window> = BTreeMap::new();
    let n = d.len(16)?;
    for _ in 0..n {
        let s = d.i64()?;
        let e = d.u64()?;
        windows.entry(s).or_default().evicted += e;
    }
    let n = d.len(21)?;
    for _ in 0..n {
        let s = d.i64()?;
        let k: Box<[u8]> = d.bytes()?.into();
        let dirty = d.bool()?;
        let alerted = d.u64()?;
        let mut aggs = Vec::with_capacity(ops.len());
        for op in ops {
            aggs.push(crate::aggregate::AggState::decode(&mut d, *op)?);
        }
        windows.entry(s).or_default().keys.insert(
            k,
            crate::window::KeyState {
                aggs,
                dirty,
                alerted,
            },
        );
    }
    if !d.is_empty() {
        return Err(d.err("trailing bytes in a repartition line"));
    }
    Ok(PartialLine {
        upstream: PartitionId { topic, partition },
        next_offset,
        last,
        watermark: has.then_some(wm),
        windows,
    })
}

/// An upstream instance's checkpoint: its outbox not yet acknowledged (if any), then its
/// pipeline snapshot (`FRYP`, with its own CRC).
///
/// | size | field |
/// |---:|---|
/// | 4 | magic `FRYU` |
/// | 1 | version, 1 |
/// | 1 | has an outbox |
/// | 8 | outbox next offset |
/// | 4 + … | targets: (target u32, 4 + lines: (u32 length, bytes)) |
/// | 4 | CRC32C of every byte before it |
/// | … | the snapshot |
pub fn wrap_upstream(outbox: Option<&Outbox>, snapshot: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(&UPSTREAM_MAGIC);
    e.u8(VERSION);
    e.bool(outbox.is_some());
    let empty = Outbox::default();
    let o = outbox.unwrap_or(&empty);
    e.u64(o.next_offset);
    e.len(o.lines.len());
    for (t, lines) in &o.lines {
        e.u32(*t);
        e.len(lines.len());
        for l in lines {
            e.bytes(l);
        }
    }
    let crc = crc32c::crc32c(&e.buf);
    e.u32(crc);
    e.buf.extend_from_slice(snapshot);
    e.buf
}

/// Splits an upstream checkpoint into its outbox and snapshot.
pub fn unwrap_upstream(bytes: &[u8]) -> Result<(Option<Outbox>, &[u8]), StateError> {
    if !bytes.starts_with(&UPSTREAM_MAGIC) {
        return Err(StateError::BadMagic);
    }
    let mut d = Dec::new(bytes);
    d.u32()?;
    let v = d.u8()?;
    if v != VERSION {
        return Err(StateError::UnsupportedVersion(v));
    }
    let has = d.bool()?;
    let mut o = Outbox {
        next_offset: d.u64()?,
        lines: BTreeMap::new(),
    };
    let n = d.len(8)?;
    for _ in 0..n {
        let t = d.u32()?;
        let m = d.len(4)?;
        let mut lines = Vec::with_capacity(m);
        for _ in 0..m {
            lines.push(d.bytes()?.to_vec());
        }
        o.lines.insert(t, lines);
    }
    let rest = crate::state::check_block_crc(&mut d, bytes)?;
    Ok((has.then_some(o), &bytes[rest..]))
}

/// A repartition partition owner's parts: (upstream, snapshot) each, magic `FRYO`, version 1,
/// a count, the entries (topic, partition u32, snapshot bytes), CRC32C. Stored after the merge's
/// note ([`crate::merge::wrap_checkpoint`]).
pub fn encode_parts(parts: &[(&PartitionId, &Pipeline)]) -> Vec<u8> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(&PARTS_MAGIC);
    e.u8(VERSION);
    e.len(parts.len());
    for (id, p) in parts {
        e.str(&id.topic);
        e.u32(id.partition);
        e.bytes(&p.snapshot());
    }
    let crc = crc32c::crc32c(&e.buf);
    e.u32(crc);
    e.buf
}

/// Restores what [`encode_parts`] wrote, each part a partial of `cfg`.
pub fn decode_parts(
    cfg: &crate::config::PipelineConfig,
    bytes: &[u8],
) -> Result<BTreeMap<PartitionId, Pipeline>, StateError> {
    if !bytes.starts_with(&PARTS_MAGIC) || bytes.len() < 9 {
        return Err(StateError::BadMagic);
    }
    let body = crate::codec::strip_crc(bytes).ok_or(StateError::Checksum)?;
    let mut d = Dec::new(body);
    d.u32()?;
    let v = d.u8()?;
    if v != VERSION {
        return Err(StateError::UnsupportedVersion(v));
    }
    let n = d.len(12)?;
    let mut parts = BTreeMap::new();
    for _ in 0..n {
        let topic = d.str()?.to_owned();
        let partition = d.u32()?;
        let p = Pipeline::restore(cfg.clone(), d.bytes()?)?.into_partial();
        parts.insert(PartitionId { topic, partition }, p);
    }
    if !d.is_empty() {
        return Err(d.err("trailing bytes").into());
    }
    Ok(parts)
}

/// On Kafka, which has no per-producer dedup of its own: the highest line sequence an owner
/// applied per upstream (its part), stored in the owner's checkpoint before its parts — magic
/// `FRYQ`, version 1, a count, the entries (topic, partition u32, sequence u64), CRC32C. A line
/// whose sequence is not above its upstream's entry was applied already (an outbox posted again
/// after a crash) and is dropped: the collector's rule for an idempotent producer, kept by the
/// owner. Stored with the owner's offset in the repartition partition (u64, after the version):
/// the sequences hold at that offset.
pub fn encode_seqs(next_offset: u64, seqs: &BTreeMap<PartitionId, u64>) -> Vec<u8> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(&SEQS_MAGIC);
    e.u8(VERSION);
    e.u64(next_offset);
    e.len(seqs.len());
    for (id, seq) in seqs {
        e.str(&id.topic);
        e.u32(id.partition);
        e.u64(*seq);
    }
    let crc = crc32c::crc32c(&e.buf);
    e.u32(crc);
    e.buf
}

/// Highest line sequence applied per upstream.
pub type Seqs = BTreeMap<PartitionId, u64>;

/// Splits what [`encode_seqs`] wrote off the front of `bytes`: the offset, the sequences and the
/// rest.
pub fn split_seqs(bytes: &[u8]) -> Result<(u64, Seqs, &[u8]), StateError> {
    if !bytes.starts_with(&SEQS_MAGIC) {
        return Err(StateError::BadMagic);
    }
    let mut d = Dec::new(bytes);
    d.u32()?;
    let v = d.u8()?;
    if v != VERSION {
        return Err(StateError::UnsupportedVersion(v));
    }
    let next_offset = d.u64()?;
    let n = d.len(16)?;
    let mut seqs = BTreeMap::new();
    for _ in 0..n {
        let topic = d.str()?.to_owned();
        let partition = d.u32()?;
        seqs.insert(PartitionId { topic, partition }, d.u64()?);
    }
    let rest = crate::state::check_block_crc(&mut d, bytes)?;
    Ok((next_offset, seqs, &bytes[rest..]))
}

impl Outbox {
    /// Lines of `target`, one per message (Kafka), each with its sequence number.
    pub fn numbered(&self, target: u32) -> impl Iterator<Item = (u64, &[u8])> {
        (self.seq()..).zip(
            self.lines
                .get(&target)
                .into_iter()
                .flatten()
                .map(Vec::as_slice),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use ferry_core::record::Record;

    fn cfg() -> crate::config::PipelineConfig {
        let yaml = "pipelines:\n  - name: m\n    source: {topics: [app]}\n    event_time: {field: ts, format: unix_ms}\n    group_by: [k]\n    window: {tumbling: 10ms, allowed_lateness: 0s}\n    aggregates: [{name: count, op: count}, {name: u, op: distinct, field: u}]\n";
        let c: ProcessorConfig =
            ferry_core::config::load_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        c.pipelines[0].clone()
    }

    #[test]
    fn producer_ids_land_on_their_target_and_are_stable() {
        let up = PartitionId::new("app", 2);
        for n in 1..9 {
            for t in 0..n {
                let id = producer_id("g", "p", &up, t, n);
                assert!(id.len() <= 64, "{id}");
                assert_eq!(
                    ferry_core::topic::origin_partition(
                        &ferry_core::topic::producer_origin(&id),
                        n
                    ),
                    t
                );
                assert_eq!(id, producer_id("g", "p", &up, t, n));
            }
        }
        assert_ne!(
            producer_id("g", "p", &up, 0, 4),
            producer_id("g", "p", &PartitionId::new("app", 3), 0, 4)
        );
    }

    #[test]
    fn outbox_lines_round_trip_by_target_with_the_watermark_last() {
        let c = cfg();
        let mut p = Pipeline::new(c.clone()).into_partial();
        let id = PartitionId::new("app", 1);
        let mut out = Vec::new();
        for i in 0..2000u64 {
            let line = format!(r#"{{"ts":{},"k":"k{}","u":"{}"}}"#, i % 30, i % 97, i % 7);
            p.process(&id, i, &Record::from_line(line), 0, 0, &mut out);
        }
        let mut taken = Vec::new();
        p.windows.take_all(&mut taken);
        let want: BTreeMap<i64, Window> = taken.iter().cloned().collect();
        let ob = Outbox::build(&id, 2000, Some(29), taken, 3);
        assert_eq!(ob.lines.len(), 3);
        let mut got: BTreeMap<i64, Window> = BTreeMap::new();
        let ops = p.windows.ops().to_vec();
        for (t, lines) in &ob.lines {
            for (i, l) in lines.iter().enumerate() {
                let pl = decode_line(l, &ops).unwrap();
                assert_eq!(pl.upstream, id);
                assert_eq!(pl.last, i + 1 == lines.len());
                assert_eq!(pl.watermark, pl.last.then_some(29));
                for (s, w) in pl.windows {
                    for k in w.keys.keys() {
                        assert_eq!(target(k, 3), *t);
                    }
                    crate::merge::merge_window(got.entry(s).or_default(), w);
                }
            }
        }
        assert_eq!(got, want);
        // The checkpoint keeps the outbox exactly.
        let snap = p.snapshot();
        let ck = wrap_upstream(Some(&ob), &snap);
        let (o, s) = unwrap_upstream(&ck).unwrap();
        assert_eq!(o.as_ref(), Some(&ob));
        assert_eq!(s, &snap[..]);
        let (o, _) = unwrap_upstream(&wrap_upstream(None, &snap)).unwrap();
        assert_eq!(o, None);
        let mut bad = ck.clone();
        bad[7] ^= 1;
        assert!(unwrap_upstream(&bad).is_err());
        assert!(decode_line(b"bm9wZQ", &ops).is_err());
        assert_eq!(ob.bodies(0)[0].0, 2000 << SEQ_SHIFT);
    }

    #[test]
    fn large_flushes_are_cut_into_lines_and_bodies_with_consecutive_sequences() {
        let c = cfg();
        let mut p = Pipeline::new(c).into_partial();
        let id = PartitionId::new("app", 0);
        let mut out = Vec::new();
        // 10 KB keys: 6 MB of deltas, many lines and several bodies.
        let pad = "x".repeat(10_000);
        for i in 0..600u64 {
            let line = format!(r#"{{"ts":1,"k":"k{i}{pad}","u":"{i}"}}"#);
            p.process(&id, i, &Record::from_line(line), 0, 0, &mut out);
        }
        let mut taken = Vec::new();
        p.windows.take_all(&mut taken);
        let ob = Outbox::build(&id, 600, None, taken, 1);
        let lines = &ob.lines[&0];
        assert!(lines.len() > 10, "{}", lines.len());
        let bodies = ob.bodies(0);
        assert!(bodies.len() > 1);
        let mut next = ob.seq();
        for (seq, body) in &bodies {
            assert_eq!(*seq, next);
            assert!(body.len() <= MAX_BODY_BYTES + MAX_LINE_RAW * 2);
            next += body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as u64;
        }
        assert_eq!(next - ob.seq(), lines.len() as u64);
    }

    #[test]
    fn sequences_round_trip_in_front_of_the_parts_and_damage_is_refused() {
        let mut seqs = BTreeMap::new();
        seqs.insert(PartitionId::new("app", 3), 7u64 << SEQ_SHIFT);
        seqs.insert(PartitionId::new("web", 0), (9u64 << SEQ_SHIFT) + 2);
        let mut blob = encode_seqs(77, &seqs);
        blob.extend_from_slice(b"rest");
        let (next, back, rest) = split_seqs(&blob).unwrap();
        assert_eq!((next, back), (77, seqs));
        assert_eq!(rest, b"rest");
        let empty = encode_seqs(0, &BTreeMap::new());
        let (_, none, rest) = split_seqs(&empty).unwrap();
        assert!(none.is_empty() && rest.is_empty());
        for i in 0..blob.len() - 4 {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert!(split_seqs(&bad).is_err(), "byte {i} changed and still read");
        }
        assert!(split_seqs(&blob[..blob.len() - 8]).is_err());
    }

    #[test]
    fn numbered_lines_follow_the_flush_sequence() {
        let mut o = Outbox {
            next_offset: 42,
            lines: BTreeMap::new(),
        };
        o.lines.insert(2, vec![b"a".to_vec(), b"b".to_vec()]);
        let got: Vec<(u64, &[u8])> = o.numbered(2).collect();
        assert_eq!(
            got,
            vec![
                (42 << SEQ_SHIFT, &b"a"[..]),
                ((42 << SEQ_SHIFT) + 1, &b"b"[..])
            ]
        );
        assert_eq!(o.numbered(0).count(), 0);
    }

    #[test]
    fn topic_names_are_valid() {
        for (g, p) in [("levels", "levels"), ("a b", "ü/x"), ("__x", "y")] {
            let t = topic_name(g, p);
            assert!(ferry_core::topic::validate_name(&t).is_ok(), "{t}");
        }
        let long = "g".repeat(249);
        assert!(ferry_core::topic::validate_name(&topic_name(&long, &long)).is_ok());
    }
}
