//! Step 1, pure: a request body becomes verified batches. Either the agent's batch format
//! (`application/x-ferry-batch`, one or more batches back to back), or newline-delimited lines
//! (plain text or JSON, optionally gzip) which become batches, without an origin or with a
//! producer's. Every batch is fully verified before anything is stored; a bad body is refused
//! whole. No runtime, no shared state: the driver runs this on the blocking pool, or where the
//! body was received when [`cheap_to_check`] says so.

use super::{IngestError, Producer};
use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, Codec, DecodeLimits};
use ferry_core::record::OriginKey;
use std::io::Read;

/// Raw payload size at which a plain body is cut into another batch.
const PLAIN_BATCH_BYTES: usize = 1 << 20;

/// What bounds and shapes a body's batches (from `limits` and `plain_codec`).
#[derive(Debug, Clone)]
pub struct BodyRules {
    /// Largest body after gzip, and largest decoded batch.
    pub decode: DecodeLimits,
    /// Longest line of a plain body.
    pub max_line_bytes: usize,
    /// How plain lines are stored.
    pub plain_codec: Codec,
    /// Ingest time of plain lines, Unix ms.
    pub now_ms: i64,
    /// Whether ferry batches are decoded into records. Without (a topic no routing rule or
    /// key field looks into, on the embedded store, which stores batches as received), each
    /// is verified as fully but in one pass that builds nothing ([`batch::verify`]), and its
    /// `Batch` comes with the header alone (`records` empty).
    pub materialise: bool,
}

/// Largest body [`cheap_to_check`] lets be checked where it was received.
const INLINE_BODY_BYTES: usize = 256 << 10;
/// Largest raw size, all of a body's batches together, [`cheap_to_check`] lets be checked where
/// it was received: lz4 inflates that in well under a millisecond.
const INLINE_RAW_BYTES: u64 = 2 << 20;

/// Whether checking `body` ([`parse`]) is cheap enough for the async worker that received it,
/// rather than a hand-off to the blocking pool and back (two thread switches, which cost about
/// as much as checking an agent's batch): ferry batches stored as received (`materialise`
/// off), without Content-Encoding, at most 256 KiB, none gzip-compressed, declaring at most
/// 2 MiB of raw payload in all. Reads the fixed headers alone; a body whose headers are
/// malformed is cheap too (it is refused at the first bad one).
pub fn cheap_to_check(
    rules: &BodyRules,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
) -> bool {
    if rules.materialise || content_encoding.is_some() || body.len() > INLINE_BODY_BYTES {
        return false;
    }
    let is_batch = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case(batch::CONTENT_TYPE));
    if !is_batch {
        return false;
    }
    let (mut pos, mut raw) = (0usize, 0u64);
    while pos < body.len() {
        let Ok(p) = batch::peek(&body[pos..]) else {
            return true;
        };
        raw += u64::from(p.raw_len);
        if p.codec == Codec::Gzip || raw > INLINE_RAW_BYTES {
            return false;
        }
        pos += p.total_len;
    }
    true
}

/// Turns a body into verified batches: (encoded bytes, decoded batch).
pub fn parse(
    rules: &BodyRules,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: Bytes,
    producer: Option<Producer>,
) -> Result<Vec<(Bytes, Batch)>, IngestError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if mime.as_deref() == Some(batch::CONTENT_TYPE) {
        if content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            return Err(IngestError::BadRequest(
                "ferry batches carry their own compression: send them without Content-Encoding"
                    .into(),
            ));
        }
        if producer.is_some() {
            return Err(IngestError::BadRequest(format!(
                "{} is for plain bodies: ferry batches carry their own origin",
                batch::PRODUCER_ID_HEADER
            )));
        }
        return split_batches(&body, &rules.decode, rules.materialise);
    }
    let raw = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => body,
        Some(e) if e == "identity" => body,
        Some(e) if e == "gzip" || e == "x-gzip" => gunzip(&body, rules.decode.max_raw_bytes)?,
        Some(other) => {
            return Err(IngestError::BadRequest(format!(
                "unsupported Content-Encoding {other:?} (use gzip or none)"
            )));
        }
    };
    plain_batches(rules, &raw, producer)
}

/// Newline-delimited lines as batches of about [`PLAIN_BATCH_BYTES`] (one batch for a
/// producer's body).
fn plain_batches(
    rules: &BodyRules,
    raw: &Bytes,
    producer: Option<Producer>,
) -> Result<Vec<(Bytes, Batch)>, IngestError> {
    let max_line = rules.max_line_bytes;
    let mut out = Vec::new();
    // With a producer, line `i` of the body is origin offset `first_seq + i` (span 1): the
    // store's origin dedup then drops a resent line like a re-read file line.
    let (key, span) = match &producer {
        Some(p) => (Some(p.origin_key()), 1),
        None => (None, 0),
    };
    // A producer's body stays one batch: the batches of one request are appended
    // concurrently, and a later batch of an origin landing first would make the earlier
    // one look like a replay to the dedup. (Bodies are bounded by max_raw_bytes anyway.)
    let cut_at = if key.is_some() {
        usize::MAX
    } else {
        PLAIN_BATCH_BYTES
    };
    let mut builder = BatchBuilder::new();
    builder.reset(key.clone().zip(producer.map(|p| p.first_seq)));
    let seal = |b: &mut BatchBuilder, out: &mut Vec<(Bytes, Batch)>| -> Result<(), IngestError> {
        if !b.is_empty() {
            out.push(seal(rules, b, key.clone())?);
        }
        Ok(())
    };
    let mut start = 0usize;
    let mut lineno = 0u64;
    while start < raw.len() {
        lineno += 1;
        let end = memchr::memchr(b'\n', &raw[start..])
            .map(|i| start + i)
            .unwrap_or(raw.len());
        let mut line = &raw[start..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.len() > max_line {
            return Err(IngestError::TooLarge(format!(
                "line {lineno} is {} bytes, over max_line_bytes ({max_line})",
                line.len()
            )));
        }
        builder.push_line(line, span);
        if builder.raw_len() >= cut_at {
            seal(&mut builder, &mut out)?;
        }
        start = end + 1;
    }
    seal(&mut builder, &mut out)?;
    Ok(out)
}

/// Records that arrived in another shape than a ferry body (OTLP log records) as batches
/// without an origin, cut at about [`PLAIN_BATCH_BYTES`] like a plain body.
pub fn record_batches(
    rules: &BodyRules,
    records: &[ferry_core::record::Record],
) -> Result<Vec<(Bytes, Batch)>, IngestError> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new();
    for r in records {
        builder.push(&r.line, 0, r.event_time_ms, r.truncated, &r.fields);
        if builder.raw_len() >= PLAIN_BATCH_BYTES {
            out.push(seal(rules, &mut builder, None)?);
        }
    }
    if !builder.is_empty() {
        out.push(seal(rules, &mut builder, None)?);
    }
    Ok(out)
}

/// Seals `builder`'s records into a verified batch stored with `plain_codec`, and resets it
/// for the next batch (continuing `next_origin`'s offsets).
fn seal(
    rules: &BodyRules,
    builder: &mut BatchBuilder,
    next_origin: Option<OriginKey>,
) -> Result<(Bytes, Batch), IngestError> {
    let enc = Bytes::from(
        builder
            .finish(rules.plain_codec, 1, rules.now_ms)
            .map_err(|e| IngestError::TooLarge(e.to_string()))?,
    );
    let decoded =
        batch::decode(&enc, &rules.decode).map_err(|e| IngestError::BadRequest(e.to_string()))?;
    let next = next_origin.zip(builder.end_offset());
    builder.reset(next);
    Ok((enc, decoded))
}

/// Splits a body of back-to-back ferry batches and verifies each one completely; decodes
/// their records only if `materialise`.
fn split_batches(
    body: &Bytes,
    limits: &DecodeLimits,
    materialise: bool,
) -> Result<Vec<(Bytes, Batch)>, IngestError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    if body.is_empty() {
        return Err(IngestError::BadRequest(
            "empty body: expected a ferry batch".into(),
        ));
    }
    while pos < body.len() {
        let n = out.len();
        // Its length from the fixed header; the whole header, CRC included, is checked once
        // below.
        let len = batch::encoded_len(&body[pos..])
            .map_err(|e| IngestError::BadRequest(format!("batch {n} (at byte {pos}): {e}")))?;
        let enc = body.slice(pos..pos + len);
        let decoded = if materialise {
            batch::decode(&enc, limits)
        } else {
            batch::verify(&enc, limits).map(|header| Batch {
                header,
                records: Vec::new(),
            })
        };
        let decoded = decoded.map_err(|e| match e {
            ferry_core::batch::WireError::TooLarge { .. }
            | ferry_core::batch::WireError::TooManyRecords { .. } => {
                IngestError::TooLarge(format!("batch {n}: {e}"))
            }
            other => IngestError::BadRequest(format!("batch {n} (at byte {pos}): {other}")),
        })?;
        pos += len;
        out.push((enc, decoded));
    }
    Ok(out)
}

/// Inflates a gzip body, refusing (413) past `limit` bytes without inflating the rest.
pub(crate) fn gunzip(body: &[u8], limit: u64) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit as usize));
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(limit + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| IngestError::BadRequest(format!("body is not valid gzip: {e}")))?;
    if out.len() as u64 > limit {
        return Err(IngestError::TooLarge(format!(
            "body inflates past max_raw_bytes ({limit} bytes)"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> BodyRules {
        BodyRules {
            decode: DecodeLimits {
                max_raw_bytes: 1 << 16,
                max_records: 1 << 16,
            },
            max_line_bytes: 64,
            plain_codec: Codec::None,
            now_ms: 1,
            materialise: true,
        }
    }

    #[test]
    fn plain_lines_become_one_batch_and_limits_name_the_line() {
        let items = parse(&rules(), None, None, Bytes::from("a\r\nb\n\nc"), None).expect("ok");
        let lines: Vec<&[u8]> = items[0].1.records.iter().map(|r| &r.line[..]).collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"", b"c"]);
        let long = format!("ok\n{}\n", "x".repeat(65));
        match parse(&rules(), None, None, Bytes::from(long), None) {
            Err(IngestError::TooLarge(m)) => assert!(m.contains("line 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        match parse(&rules(), None, Some("gzip"), Bytes::from("nope"), None) {
            Err(IngestError::BadRequest(m)) => assert!(m.contains("gzip"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    fn lz4_batch(lines: usize, line: &[u8], codec: Codec) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for _ in 0..lines {
            b.push_line(line, line.len() as u64 + 1);
        }
        b.finish(codec, 1, 1).expect("batch")
    }

    /// Which bodies are checked where they arrive and which on the blocking pool: small lz4 or
    /// uncompressed ferry batches stored as received, nothing else.
    #[test]
    fn only_small_batches_stored_as_received_are_cheap_to_check() {
        let stored = BodyRules {
            materialise: false,
            ..rules()
        };
        let ct = Some(batch::CONTENT_TYPE);
        let small = lz4_batch(
            1000,
            b"{\"level\":\"info\",\"msg\":\"request handled\"}",
            Codec::Lz4,
        );
        assert!(cheap_to_check(&stored, ct, None, &small));
        assert!(cheap_to_check(
            &stored,
            Some("application/x-ferry-batch; v=1"),
            None,
            &small
        ));
        let two = [small.clone(), lz4_batch(10, b"x", Codec::None)].concat();
        assert!(cheap_to_check(&stored, ct, None, &two));
        // Records to build, a Content-Encoding, another content type: the pool.
        assert!(!cheap_to_check(&rules(), ct, None, &small));
        assert!(!cheap_to_check(&stored, ct, Some("gzip"), &small));
        assert!(!cheap_to_check(&stored, Some("text/plain"), None, &small));
        assert!(!cheap_to_check(&stored, None, None, &small));
        // gzip inside the batch, a body over 256 KiB, over 2 MiB of raw payload declared (a few
        // KiB of lz4): the pool.
        assert!(!cheap_to_check(
            &stored,
            ct,
            None,
            &lz4_batch(100, b"x", Codec::Gzip)
        ));
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert!(!cheap_to_check(
            &stored,
            ct,
            None,
            &lz4_batch(1, &big, Codec::None)
        ));
        let zeros = lz4_batch(3, &vec![0u8; 1 << 20], Codec::Lz4);
        assert!(zeros.len() < 64 << 10, "{}", zeros.len());
        assert!(!cheap_to_check(&stored, ct, None, &zeros));
        // Garbage is cheap: refused at its first header.
        assert!(cheap_to_check(&stored, ct, None, b"not a batch"));
        assert!(parse(&stored, ct, None, Bytes::from_static(b"not a batch"), None).is_err());
    }

    proptest! {
        /// Any body, any headers: an answer, never a panic.
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), batch_ct in any::<bool>(), gz in any::<bool>()) {
            let ct = batch_ct.then_some(batch::CONTENT_TYPE);
            let ce = gz.then_some("gzip");
            let _ = parse(&rules(), ct, ce, Bytes::from(body), None);
        }
    }
}
