//! The fetch response: stored batches as the collector serves them to consumers.
//!
//! A consumer asks for a partition from an offset; the collector answers with whole stored
//! batches, back to back, each framed with the offset of its first record (records are numbered
//! `base_offset + i` within it) and the time it was appended. The batches are sent exactly as
//! stored — the collector decompresses nothing to serve a read; the consumer skips the records
//! below the offset it asked for, as a Kafka consumer does.
//!
//! | size | field                                  |
//! |-----:|----------------------------------------|
//! | 8    | `base_offset` u64 LE                   |
//! | 8    | `append_time_ms` i64 LE                |
//! | 4    | `len` u32 LE: length of the batch      |
//! | len  | the batch (see [`crate::batch`])       |
//!
//! HTTP headers carry the partition's `x-ferry-log-start` and `x-ferry-end-offset`.

use crate::batch::{self, Batch, DecodeLimits, WireError};
use crate::record::Record;
use bytes::Bytes;

/// Content type of a fetch response body.
pub const CONTENT_TYPE: &str = "application/x-ferry-fetch";
pub const HEADER_LOG_START: &str = "x-ferry-log-start";
pub const HEADER_END_OFFSET: &str = "x-ferry-end-offset";
const FRAME_HEADER: usize = 20;

/// Appends one framed batch to `out`.
pub fn put_frame(out: &mut Vec<u8>, base_offset: u64, append_time_ms: i64, batch: &[u8]) {
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&append_time_ms.to_le_bytes());
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    out.extend_from_slice(batch);
}

/// One batch of a fetch response, decoded.
#[derive(Debug, Clone)]
pub struct FetchedBatch {
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub batch: Batch,
}

/// Splits and decodes a fetch response body.
pub fn decode_frames(body: &Bytes, limits: &DecodeLimits) -> Result<Vec<FetchedBatch>, WireError> {
    let mut out = Vec::new();
    for_each_frame(body, |base_offset, append_time_ms, batch| {
        out.push(FetchedBatch {
            base_offset,
            append_time_ms,
            batch: batch::decode(&batch, limits)?,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Decodes a fetch response body record by record: `f(offset, append_time_ms, record)` for
/// each, in order, with no vector of batches or records in between (what the consumer's poll
/// loop uses). On an error `f` may have had the records before it; see [`batch::decode_each`].
pub fn for_each_record(
    body: &Bytes,
    limits: &DecodeLimits,
    mut f: impl FnMut(u64, i64, Record),
) -> Result<(), WireError> {
    for_each_frame(body, |base_offset, append_time_ms, batch| {
        let mut offset = base_offset;
        batch::decode_each(&batch, limits, |r| {
            f(offset, append_time_ms, r);
            offset += 1;
        })
        .map(drop)
    })
}

/// Splits a body into its frames: `f(base_offset, append_time_ms, batch)`.
fn for_each_frame(
    body: &Bytes,
    mut f: impl FnMut(u64, i64, Bytes) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut pos = 0usize;
    while pos < body.len() {
        if body.len() - pos < FRAME_HEADER {
            return Err(WireError::Truncated {
                need: pos + FRAME_HEADER,
                have: body.len(),
            });
        }
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&body[pos..pos + 8]);
        let base_offset = u64::from_le_bytes(b8);
        b8.copy_from_slice(&body[pos + 8..pos + 16]);
        let append_time_ms = i64::from_le_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&body[pos + 16..pos + 20]);
        let len = u32::from_le_bytes(b4) as usize;
        let start = pos + FRAME_HEADER;
        let end =
            start
                .checked_add(len)
                .filter(|&e| e <= body.len())
                .ok_or(WireError::Truncated {
                    need: start.saturating_add(len),
                    have: body.len(),
                })?;
        f(base_offset, append_time_ms, body.slice(start..end))?;
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Codec};

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut b = BatchBuilder::new();
        b.push_line(b"x", 0);
        let one = b.finish(Codec::Gzip, 1, 5).unwrap();
        let mut body = Vec::new();
        put_frame(&mut body, 10, 100, &one);
        put_frame(&mut body, 11, 101, &one);
        let frames = decode_frames(&Bytes::from(body.clone()), &DecodeLimits::default()).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[1].base_offset, frames[1].append_time_ms), (11, 101));
        for cut in 1..body.len() {
            assert!(
                decode_frames(&Bytes::from(body[..cut].to_vec()), &DecodeLimits::default())
                    .is_err()
                    || cut == body.len() / 2
            );
        }
    }

    #[test]
    fn record_by_record_decoding_matches_the_batches_and_refuses_what_they_refuse() {
        let mut body = Vec::new();
        for (base, lines) in [(7u64, 3usize), (10, 1), (11, 4)] {
            let mut b = BatchBuilder::new();
            for i in 0..lines {
                b.push_line(format!("line {base} {i}").as_bytes(), 0);
            }
            put_frame(
                &mut body,
                base,
                base as i64 * 100,
                &b.finish(Codec::Lz4, 1, 5).unwrap(),
            );
        }
        let body = Bytes::from(body);
        let limits = DecodeLimits::default();
        let mut expect = Vec::new();
        for f in decode_frames(&body, &limits).unwrap() {
            for (i, r) in f.batch.records.into_iter().enumerate() {
                expect.push((f.base_offset + i as u64, f.append_time_ms, r.line));
            }
        }
        let mut got = Vec::new();
        for_each_record(&body, &limits, |o, t, r| got.push((o, t, r.line))).unwrap();
        assert_eq!(got.len(), 8);
        assert_eq!(got, expect);
        // Every cut and every flipped byte: refused by both, or accepted by both alike.
        for cut in 0..body.len() {
            let part = body.slice(..cut);
            let ok = for_each_record(&part, &limits, |_, _, _| {}).is_ok();
            assert_eq!(ok, decode_frames(&part, &limits).is_ok(), "cut at {cut}");
        }
        for at in 0..body.len() {
            let mut bad = body.to_vec();
            bad[at] ^= 0x55;
            let bad = Bytes::from(bad);
            let ok = for_each_record(&bad, &limits, |_, _, _| {}).is_ok();
            assert_eq!(
                ok,
                decode_frames(&bad, &limits).is_ok(),
                "byte {at} flipped"
            );
        }
    }
}
