//! The pipeline's checkpointable state: everything needed to resume exactly.
//!
//! A snapshot holds the open windows with their aggregate states, the per-partition event-time
//! clocks and watermark, the per-partition input offsets, and the counters. A driver writes it
//! together with the offsets it reports (they are inside it), e.g. temp file + fsync + rename;
//! after a restart, [`Pipeline::restore`] gives a pipeline that produces exactly what the
//! uninterrupted one would have, and skips records at offsets already processed.
//!
//! # Layout (integers little-endian)
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `FRYP` |
//! | 4 | 1 | version, currently 2 (version 1 is still read: it differs only in the percentile state) |
//! | 5 | 8 | fingerprint of the config the state depends on (group_by, window size/advance, aggregates) |
//! | 13 | … | pipeline name (u32 length + UTF-8) |
//! | | 72 | stats: 9 × u64 (records_in, replayed, parse_errors, filtered, event_time_fallbacks, late, evicted, results, alerts) |
//! | | … | inputs: u32 count, each topic (u32 length + UTF-8), partition u32, next offset u64 |
//! | | … | watermark i64; partition clocks: u32 count, each has-event-time u8, max event time i64, last active i64 |
//! | | … | open windows: u32 count, each start i64, evicted u64, u32 key count, each key (u32 length + bytes), dirty u8, alerted u64, one aggregate state per configured aggregate |
//! | end − 4 | 4 | CRC32C of every byte before it |
//!
//! Aggregate states: a tag byte then 0 count u64 · 1 sum f64 · 2 min / 3 max (u8 present, f64) ·
//! 4 avg (sum f64, count u64) · 5 percentile of version 1 (q f64, our own DDSketch: count, zero,
//! min, max, positive and negative stores as offset i64 + u32 n + n × u64; read, never written) ·
//! 8 percentile (q f64, count u64, min f64, max f64, u32 length + the `sketches-ddsketch` state in
//! DataDog's Java-compatible encoding) · 6 distinct (u8 0 sparse: u32 n + n × u32
//! entries; 1 dense: u32 16384 + registers) · 7 top-k (k u32, u32 n, n × (string, count u64)).
//! Floats are stored as their bits, so restored sums are bit-identical.

use crate::codec::{Dec, DecodeError, Enc};
use crate::config::PipelineConfig;
use crate::pipeline::{InputPartition, PartitionId, Pipeline, Stats};

pub const MAGIC: [u8; 4] = *b"FRYP";
pub const VERSION: u8 = 2;
/// Versions [`Pipeline::restore`] reads.
pub const READS: [u8; 2] = [1, 2];

/// A snapshot that cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not a ferry processor state (bad magic)")]
    BadMagic,
    #[error(
        "processor state version {0} is not supported by this build (it reads versions 1 and {VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("processor state checksum mismatch (the file is damaged)")]
    Checksum,
    #[error(
        "state of pipeline {pipeline:?} was written for a different window/group_by/aggregates config; \
         delete the checkpoint to start over (results of open windows will be lost)"
    )]
    Incompatible { pipeline: String },
    #[error("state belongs to pipeline {found:?}, not {expected:?}")]
    WrongPipeline { expected: String, found: String },
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
}

/// Reads the CRC32C that follows a block decoded by `d` from the start of `bytes` and checks it
/// against every byte before it; returns where the rest of `bytes` begins (after the CRC).
pub(crate) fn check_block_crc(d: &mut Dec<'_>, bytes: &[u8]) -> Result<usize, StateError> {
    let end = d.pos();
    let crc = d.u32()?;
    if crc32c::crc32c(&bytes[..end]) != crc {
        return Err(StateError::Checksum);
    }
    Ok(end + 4)
}

/// What the state's layout depends on: restoring across a change of these would misread it.
pub fn fingerprint(cfg: &PipelineConfig) -> u64 {
    let mut s = format!(
        "{:?}|{}|{}",
        cfg.group_by, cfg.window.size_ms, cfg.window.advance_ms
    );
    for a in &cfg.aggregates {
        s.push_str(&format!("|{}:{:?}:{:?}", a.name, a.op, a.field));
    }
    crate::sketch::hash64(s.as_bytes())
}

impl Pipeline {
    /// Serializes the whole state (see the module docs for the layout).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.buf.extend_from_slice(&MAGIC);
        e.u8(VERSION);
        e.u64(fingerprint(&self.cfg));
        e.str(&self.cfg.name);
        let s = self.stats;
        for v in [
            s.records_in,
            s.replayed,
            s.parse_errors,
            s.filtered,
            s.event_time_fallbacks,
            s.late,
            s.evicted,
            s.results,
            s.alerts,
        ] {
            e.u64(v);
        }
        e.len(self.inputs.len());
        for p in &self.inputs {
            e.str(&p.id.topic);
            e.u32(p.id.partition);
            e.u64(p.next_offset);
        }
        self.windows.encode(&mut e);
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        e.buf
    }

    /// A pipeline for `cfg` in the state `bytes` describes.
    pub fn restore(cfg: PipelineConfig, bytes: &[u8]) -> Result<Pipeline, StateError> {
        if bytes.len() < 4 || bytes[..4] != MAGIC {
            return Err(StateError::BadMagic);
        }
        if bytes.len() < 5 + 8 + 4 {
            return Err(DecodeError {
                at: bytes.len(),
                what: "truncated header".into(),
            }
            .into());
        }
        if !READS.contains(&bytes[4]) {
            return Err(StateError::UnsupportedVersion(bytes[4]));
        }
        let body = crate::codec::strip_crc(bytes).ok_or(StateError::Checksum)?;
        let mut d = Dec::new(body);
        d.u32()?; // magic, checked
        d.u8()?; // version, checked
        if d.u64()? != fingerprint(&cfg) {
            return Err(StateError::Incompatible {
                pipeline: cfg.name.clone(),
            });
        }
        let name = d.str()?;
        if name != cfg.name {
            return Err(StateError::WrongPipeline {
                expected: cfg.name.clone(),
                found: name.to_owned(),
            });
        }
        let mut p = Pipeline::new(cfg);
        let mut v = [0u64; 9];
        for x in &mut v {
            *x = d.u64()?;
        }
        p.set_stats(Stats {
            records_in: v[0],
            replayed: v[1],
            parse_errors: v[2],
            filtered: v[3],
            event_time_fallbacks: v[4],
            late: v[5],
            evicted: v[6],
            results: v[7],
            alerts: v[8],
        });
        let n = d.len(16)?;
        for _ in 0..n {
            let topic = d.str()?.to_owned();
            let partition = d.u32()?;
            let next_offset = d.u64()?;
            p.inputs.push(InputPartition {
                id: PartitionId { topic, partition },
                next_offset,
            });
        }
        p.rebuild_index();
        p.windows.decode_into(&mut d)?;
        if !d.is_empty() {
            return Err(d.err("trailing bytes").into());
        }
        Ok(p)
    }
}
