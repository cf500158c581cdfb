//! The sparse offset index and the time index of a segment.
//!
//! One entry is kept per `index_interval_bytes` of segment (and always one for the first
//! frame). In memory both indexes are one `Vec<IndexEntry>`; on disk they are two files written
//! when a segment is sealed (rolled, or on close). The active segment's index is rebuilt from
//! its frames on open, since the active segment is scanned anyway. A missing or inconsistent
//! index file is rebuilt by scanning its segment, and reported.
//!
//! # Offset index file `{base:020}.index`
//!
//! | offset | size | field                                       |
//! |-------:|-----:|---------------------------------------------|
//! | 0      | 4    | magic `FRYI`                                |
//! | 4      | 1    | version, currently 1                        |
//! | 5      | 3    | reserved, zero                              |
//! | 8      | 8    | base offset of the segment                  |
//! | 16     | 8*n  | entries: `offset - base` u32, position u32  |
//!
//! # Time index file `{base:020}.timeindex`
//!
//! | offset | size  | field                                            |
//! |-------:|------:|--------------------------------------------------|
//! | 0      | 4     | magic `FRYT`                                     |
//! | 4      | 1     | version, currently 1                             |
//! | 5      | 3     | reserved, zero                                   |
//! | 8      | 8     | base offset of the segment                       |
//! | 16     | 12*n  | entries: append time ms i64, `offset - base` u32 |
//!
//! Entry `i` of both files describes the same frame: the frame at `position`, whose first
//! offset is `base + rel` and whose append time is `time`. Entries are strictly increasing in
//! offset and position, and non-decreasing in time.

use super::segment::{FILE_HEADER_LEN, FrameMeta, check_file_header, file_header, u32_at, u64_at};

pub const INDEX_MAGIC: [u8; 4] = *b"FRYI";
pub const TIME_INDEX_MAGIC: [u8; 4] = *b"FRYT";

/// One sparse index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// First offset of the frame.
    pub offset: u64,
    /// Position of the frame in the segment file.
    pub pos: u64,
    /// Append time of the frame.
    pub time_ms: i64,
}

/// The in-memory index of one segment.
#[derive(Debug, Clone, Default)]
pub struct SparseIndex {
    pub entries: Vec<IndexEntry>,
}

impl SparseIndex {
    /// Adds an entry for `frame` if it is the first, or `interval` bytes past the last entry.
    pub fn maybe_add(&mut self, frame: &FrameMeta, interval: u64) -> bool {
        let due = self
            .entries
            .last()
            .is_none_or(|e| frame.pos >= e.pos + interval);
        if due {
            self.entries.push(IndexEntry {
                offset: frame.header.base_offset,
                pos: frame.pos,
                time_ms: frame.header.append_time_ms,
            });
        }
        due
    }

    /// Position to start scanning from to find `offset`: the last entry at or before it.
    pub fn lookup(&self, offset: u64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.offset <= offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Position to start scanning from to find the first frame with time >= `ts`: the last
    /// entry whose time is below `ts`.
    pub fn lookup_time(&self, ts: i64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.time_ms < ts);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn encode_offsets(&self, base: u64) -> Vec<u8> {
        let mut out = file_header(INDEX_MAGIC, base).to_vec();
        for e in &self.entries {
            out.extend_from_slice(&(e.offset.saturating_sub(base) as u32).to_le_bytes());
            out.extend_from_slice(&(e.pos as u32).to_le_bytes());
        }
        out
    }

    pub fn encode_times(&self, base: u64) -> Vec<u8> {
        let mut out = file_header(TIME_INDEX_MAGIC, base).to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.time_ms.to_le_bytes());
            out.extend_from_slice(&(e.offset.saturating_sub(base) as u32).to_le_bytes());
        }
        out
    }

    /// Decodes and checks both index files of a segment of `segment_len` bytes.
    pub fn decode(
        offsets: &[u8],
        times: &[u8],
        base: u64,
        segment_len: u64,
    ) -> Result<Self, String> {
        check_file_header(offsets, INDEX_MAGIC, base).map_err(|e| format!("offset index: {e}"))?;
        check_file_header(times, TIME_INDEX_MAGIC, base).map_err(|e| format!("time index: {e}"))?;
        let h = FILE_HEADER_LEN as usize;
        let (o, t) = (&offsets[h..], &times[h..]);
        if o.len() % 8 != 0 || t.len() % 12 != 0 || o.len() / 8 != t.len() / 12 {
            return Err(format!(
                "index lengths disagree ({} offset bytes, {} time bytes)",
                o.len(),
                t.len()
            ));
        }
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(o.len() / 8);
        for i in 0..o.len() / 8 {
            let rel = u32_at(o, i * 8);
            let pos = u64::from(u32_at(o, i * 8 + 4));
            let time_ms = u64_at(t, i * 12) as i64;
            if u32_at(t, i * 12 + 8) != rel {
                return Err(format!("entry {i}: offset and time index disagree"));
            }
            let e = IndexEntry {
                offset: base + u64::from(rel),
                pos,
                time_ms,
            };
            let ordered = match entries.last() {
                None => e.pos == FILE_HEADER_LEN && e.offset == base,
                Some(p) => e.offset > p.offset && e.pos > p.pos && e.time_ms >= p.time_ms,
            };
            if !ordered || e.pos >= segment_len {
                return Err(format!("entry {i} out of order or past the segment's end"));
            }
            entries.push(e);
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::segment::FrameHeader;

    fn frame(pos: u64, base: u64, t: i64) -> FrameMeta {
        FrameMeta {
            pos,
            header: FrameHeader {
                len: 100,
                crc: 0,
                base_offset: base,
                append_time_ms: t,
                record_count: 3,
            },
        }
    }

    #[test]
    fn sparse_entries_round_trip_and_lookup() {
        let mut idx = SparseIndex::default();
        let mut pos = 16;
        for i in 0..20u64 {
            idx.maybe_add(&frame(pos, 100 + i * 3, 1000 + i as i64), 300);
            pos += 128;
        }
        assert_eq!(idx.entries.len(), 7);
        let back = SparseIndex::decode(&idx.encode_offsets(100), &idx.encode_times(100), 100, pos)
            .unwrap();
        assert_eq!(back.entries, idx.entries);
        assert_eq!(idx.lookup(100).map(|e| e.pos), Some(16));
        assert_eq!(idx.lookup(99), None);
        assert_eq!(idx.lookup(112).map(|e| e.offset), Some(109));
        assert_eq!(idx.lookup_time(1003).map(|e| e.time_ms), Some(1000));
        // A flipped byte in an entry is caught by the ordering checks or the cross-check.
        let mut bad = idx.encode_offsets(100);
        bad[16 + 8 * 3 + 1] ^= 0x40;
        assert!(SparseIndex::decode(&bad, &idx.encode_times(100), 100, pos).is_err());
        assert!(
            SparseIndex::decode(&idx.encode_offsets(100), &idx.encode_times(101), 100, pos)
                .is_err()
        );
    }
}
