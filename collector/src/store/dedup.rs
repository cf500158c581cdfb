//! Origin dedup: per origin (agent id + file identity) and partition, the highest file byte
//! offset stored (the `end_offset` of the batch origin). A replayed batch at or below it is
//! dropped; a batch straddling it is trimmed to the records at or after it.
//!
//! The state is recoverable from the data itself: every stored batch carries its origin in its
//! header. On open it is rebuilt from the newest valid snapshot plus a scan of the segments from
//! the snapshot's offset on; without a snapshot, from a scan of the whole partition. A snapshot
//! is written at each segment roll (covering every batch before the new segment), so a torn
//! tail, which can only be in the active segment, never needs the snapshot to be wrong.
//!
//! # Snapshot file `{base:020}.snapshot`
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 4    | magic `FRYD`                                              |
//! | 4      | 1    | version, currently 1                                      |
//! | 5      | 3    | reserved, zero                                            |
//! | 8      | 8    | covered offset: every batch below it is included           |
//! | 16     | 4    | entry count                                               |
//! | 20     | ...  | entries (below)                                           |
//! | end-4  | 4    | CRC32C of every byte before it                            |
//!
//! Entry: agent-id length u16, agent id (UTF-8), dev u64, inode u64, fingerprint u64,
//! generation u32, highest end offset u64.

use bytes::Bytes;
use ferry_core::batch::{BatchBuilder, BatchHeader, Codec, DecodeLimits, WireError, decode};
use ferry_core::record::{BatchOrigin, FileId, OriginKey};
use std::collections::HashMap;

use super::segment::{u32_at, u64_at};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"FRYD";

/// What to do with an incoming batch.
#[derive(Debug)]
pub enum Decision {
    /// Store as received.
    Store,
    /// Every record is at or below the stored offset: drop all `n`.
    Drop(u32),
    /// Store this re-encoded batch instead (`dropped` records removed).
    Trim {
        batch: Bytes,
        kept: u32,
        dropped: u32,
    },
}

/// Highest stored end offset per origin, for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupMap {
    map: HashMap<OriginKey, u64>,
}

impl DedupMap {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &OriginKey) -> Option<u64> {
        self.map.get(key).copied()
    }

    /// Decides about a batch whose header was parsed (and CRC-checked) from `batch`.
    pub fn decide(&self, header: &BatchHeader, batch: &Bytes) -> Result<Decision, WireError> {
        let Some(origin) = &header.origin else {
            return Ok(Decision::Store);
        };
        let Some(high) = self.get(&origin.key) else {
            return Ok(Decision::Store);
        };
        if origin.end_offset <= high {
            return Ok(Decision::Drop(header.record_count));
        }
        if origin.first_offset >= high {
            return Ok(Decision::Store);
        }
        trim(header, origin, batch, high)
    }

    /// Records that `origin` is stored; returns the previous value, for [`DedupMap::undo`].
    pub fn observe(&mut self, origin: &BatchOrigin) -> Option<u64> {
        let prev = self.get(&origin.key);
        if prev.is_none_or(|p| origin.end_offset > p) {
            self.map.insert(origin.key.clone(), origin.end_offset);
        }
        prev
    }

    /// Restores `key` to `prev` (as returned by `observe`).
    pub fn undo(&mut self, key: &OriginKey, prev: Option<u64>) {
        match prev {
            Some(p) => self.map.insert(key.clone(), p),
            None => self.map.remove(key),
        };
    }

    /// Updates the map from a stored batch's bytes (used by recovery scans).
    pub fn observe_stored(&mut self, batch: &[u8]) {
        if let Ok(h) = BatchHeader::parse(batch)
            && let Some(o) = &h.origin
        {
            self.observe(o);
        }
    }

    pub fn encode_snapshot(&self, covered: u64) -> Vec<u8> {
        let mut out = super::segment::file_header(SNAPSHOT_MAGIC, covered).to_vec();
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        let mut keys: Vec<_> = self.map.iter().collect();
        keys.sort();
        for (k, end) in keys {
            let id = k.agent_id.as_bytes();
            let id = &id[..id.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(id.len() as u16).to_le_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&k.file.dev.to_le_bytes());
            out.extend_from_slice(&k.file.inode.to_le_bytes());
            out.extend_from_slice(&k.file.fingerprint.to_le_bytes());
            out.extend_from_slice(&k.file.generation.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a snapshot; returns the map and its covered offset.
    pub fn decode_snapshot(buf: &[u8], covered: u64) -> Result<Self, String> {
        if buf.len() < 24 {
            return Err("snapshot truncated".into());
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32c::crc32c(body) != u32_at(crc, 0) {
            return Err("snapshot checksum mismatch".into());
        }
        super::segment::check_file_header(body, SNAPSHOT_MAGIC, covered)?;
        let n = u32_at(body, 16) as usize;
        let mut map = HashMap::with_capacity(n.min(1 << 16));
        let mut p = 20usize;
        for _ in 0..n {
            let bad = || "snapshot entry truncated".to_string();
            let id_len = usize::from(u16::from_le_bytes(
                body.get(p..p + 2)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ));
            p += 2;
            let id = body.get(p..p + id_len).ok_or_else(bad)?;
            let agent_id = std::str::from_utf8(id)
                .map_err(|_| "snapshot agent id is not UTF-8".to_string())?
                .to_owned();
            p += id_len;
            let rest = body.get(p..p + 36).ok_or_else(bad)?;
            let file = FileId {
                dev: u64_at(rest, 0),
                inode: u64_at(rest, 8),
                fingerprint: u64_at(rest, 16),
                generation: u32_at(rest, 24),
            };
            map.insert(OriginKey { agent_id, file }, u64_at(rest, 28));
            p += 36;
        }
        if p != body.len() {
            return Err("snapshot has trailing bytes".into());
        }
        Ok(Self { map })
    }
}

/// Re-encodes `batch` keeping only the records at or after file offset `high`, with their spans,
/// so that the new batch ends where the original did.
fn trim(
    header: &BatchHeader,
    origin: &BatchOrigin,
    batch: &Bytes,
    high: u64,
) -> Result<Decision, WireError> {
    let decoded = decode(batch, &DecodeLimits::default())?;
    // A record that begins below the mark and ends past it: a line whose first part is stored
    // as a record of its own (a line half read when its file was truncated, shipped as it
    // was; the agent, killed before that was acknowledged, read the whole line again from
    // the copy). Its bytes past the mark are stored, as the line's rest — dropped whole, they
    // were lost. Only where the line's bytes are the file's (the line and its newline, nothing
    // cut or decoded), so that the rest is where the mark says; otherwise dropped as before.
    let cut = |r: &&ferry_core::record::Record| {
        let o = r.offset?;
        let skip = high.checked_sub(o)?;
        // (Its newline alone is no record: a part that was the whole line but for it.)
        (skip > 0
            && skip < r.line.len() as u64
            && !r.truncated
            && r.span == r.line.len() as u64 + 1)
            .then_some(skip as usize)
    };
    let kept: Vec<(&[u8], u64, &ferry_core::record::Record)> = decoded
        .records
        .iter()
        .filter_map(|r| match cut(&r) {
            Some(skip) => Some((&r.line[skip..], r.span - skip as u64, r)),
            None => r
                .offset
                .is_some_and(|o| o >= high)
                .then_some((&r.line[..], r.span, r)),
        })
        .collect();
    let dropped = header.record_count - kept.len() as u32;
    let Some(first) = kept
        .first()
        .and_then(|(_, _, r)| r.offset)
        .map(|o| o.max(high))
    else {
        return Ok(Decision::Drop(header.record_count));
    };
    let mut b = BatchBuilder::with_origin(origin.key.clone(), first);
    for (line, span, r) in &kept {
        b.push(line, *span, r.event_time_ms, r.truncated, &r.fields);
    }
    let level = if header.codec == Codec::Gzip { 1 } else { 0 };
    let out = b.finish(header.codec, level, header.created_ms)?;
    Ok(Decision::Trim {
        batch: Bytes::from(out),
        kept: kept.len() as u32,
        dropped,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(n: u64) -> OriginKey {
        OriginKey {
            agent_id: format!("agent-{n}"),
            file: FileId {
                dev: 1,
                inode: n,
                fingerprint: 7,
                generation: 0,
            },
        }
    }

    fn batch(k: OriginKey, first: u64, lines: usize) -> Bytes {
        let mut b = BatchBuilder::with_origin(k, first);
        for i in 0..lines {
            b.push_line(format!("line {i}").as_bytes(), 10);
        }
        Bytes::from(b.finish(Codec::Gzip, 1, 5).unwrap())
    }

    #[test]
    fn replays_drop_straddlers_trim() {
        let mut m = DedupMap::default();
        let b1 = batch(key(1), 0, 5); // [0, 50)
        let h1 = BatchHeader::parse(&b1).unwrap();
        assert!(matches!(m.decide(&h1, &b1).unwrap(), Decision::Store));
        m.observe(h1.origin.as_ref().unwrap());
        assert!(matches!(m.decide(&h1, &b1).unwrap(), Decision::Drop(5)));
        let b2 = batch(key(1), 30, 4); // [30, 70): first two records are replays
        let h2 = BatchHeader::parse(&b2).unwrap();
        let Decision::Trim {
            batch: trimmed,
            kept,
            dropped,
        } = m.decide(&h2, &b2).unwrap()
        else {
            panic!("expected a trim");
        };
        assert_eq!((kept, dropped), (2, 2));
        let t = decode(&trimmed, &DecodeLimits::default()).unwrap();
        let o = t.header.origin.unwrap();
        assert_eq!((o.first_offset, o.end_offset), (50, 70));
        assert_eq!(&t.records[0].line[..], b"line 2");
        // Another origin is independent.
        let b3 = batch(key(2), 0, 1);
        assert!(matches!(
            m.decide(&BatchHeader::parse(&b3).unwrap(), &b3).unwrap(),
            Decision::Store
        ));
    }

    /// A line half read when its file was truncated was stored as a record of its own (its
    /// first 6 bytes); the agent, killed before that was acknowledged, read the whole line
    /// again from the copy. The line's rest is stored, not dropped with the replayed part.
    #[test]
    fn a_line_whose_first_part_is_stored_keeps_its_rest() {
        let mut m = DedupMap::default();
        let mut part = BatchBuilder::with_origin(key(1), 100);
        part.push_line(b"line 1", 6);
        let part = Bytes::from(part.finish(Codec::None, 0, 5).unwrap());
        m.observe(BatchHeader::parse(&part).unwrap().origin.as_ref().unwrap());
        // The whole line [100, 114), then the next one [114, 119).
        let mut whole = BatchBuilder::with_origin(key(1), 100);
        whole.push_line(b"line 1 ending", 14);
        whole.push_line(b"next", 5);
        let whole = Bytes::from(whole.finish(Codec::Lz4, 0, 5).unwrap());
        let Decision::Trim {
            batch: trimmed,
            kept,
            dropped,
        } = m
            .decide(&BatchHeader::parse(&whole).unwrap(), &whole)
            .unwrap()
        else {
            panic!("expected a trim");
        };
        assert_eq!((kept, dropped), (2, 0));
        let t = decode(&trimmed, &DecodeLimits::default()).unwrap();
        let o = t.header.origin.unwrap();
        assert_eq!((o.first_offset, o.end_offset), (106, 119));
        let lines: Vec<&[u8]> = t.records.iter().map(|r| &r.line[..]).collect();
        assert_eq!(lines, [&b" ending"[..], b"next"]);
        assert_eq!((t.records[0].span, t.records[0].offset), (8, Some(106)));
        // A part that was the whole line but for its newline: the newline alone is no record.
        let mut m = DedupMap::default();
        let mut part = BatchBuilder::with_origin(key(1), 100);
        part.push_line(b"line 1 ending", 13);
        let part = Bytes::from(part.finish(Codec::None, 0, 5).unwrap());
        m.observe(BatchHeader::parse(&part).unwrap().origin.as_ref().unwrap());
        let Decision::Trim { batch: trimmed, .. } = m
            .decide(&BatchHeader::parse(&whole).unwrap(), &whole)
            .unwrap()
        else {
            panic!("expected a trim");
        };
        let t = decode(&trimmed, &DecodeLimits::default()).unwrap();
        let lines: Vec<&[u8]> = t.records.iter().map(|r| &r.line[..]).collect();
        assert_eq!(lines, [&b"next"[..]]);
        // A record whose bytes are not the file's (span other than line + newline) is
        // dropped whole, as before.
        let mut framed = BatchBuilder::with_origin(key(1), 100);
        framed.push_line(b"line 1 ending", 40);
        let framed = Bytes::from(framed.finish(Codec::None, 0, 5).unwrap());
        assert!(matches!(
            m.decide(&BatchHeader::parse(&framed).unwrap(), &framed)
                .unwrap(),
            Decision::Drop(1)
        ));
    }

    #[test]
    fn snapshot_round_trips_and_rejects_flips() {
        let mut m = DedupMap::default();
        for n in 0..10 {
            let b = batch(key(n), n * 100, 3);
            m.observe(BatchHeader::parse(&b).unwrap().origin.as_ref().unwrap());
        }
        let snap = m.encode_snapshot(77);
        assert_eq!(DedupMap::decode_snapshot(&snap, 77).unwrap(), m);
        assert!(DedupMap::decode_snapshot(&snap, 78).is_err());
        for i in 0..snap.len() {
            let mut bad = snap.clone();
            bad[i] ^= 1;
            assert!(DedupMap::decode_snapshot(&bad, 77).is_err(), "flip at {i}");
        }
    }
}
