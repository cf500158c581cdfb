//! The batch: ferry's wire format between agent, collector and store.
//!
//! A batch is what the agent seals and ships, what the collector acknowledges, and what the
//! embedded store keeps as received when no routing rule needs to look inside (a batch that
//! arrives uncompressed is first compressed, see [`recompress`]). Everything the
//! collector needs to route and deduplicate a batch (record count, origin, byte range) is in the
//! header, so it never has to decompress the payload to do so.
//!
//! # Layout (integers little-endian)
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! | 0      | 4    | magic `FRYB`                                                       |
//! | 4      | 1    | version, currently 1                                               |
//! | 5      | 1    | codec: 0 none, 1 gzip, 2 lz4 (block format, no frame)              |
//! | 6      | 2    | flags: bit 0 = an origin section follows the fixed header          |
//! | 8      | 4    | record count                                                       |
//! | 12     | 4    | `raw_len`: payload length after decompression                      |
//! | 16     | 4    | `body_len`: bytes after the fixed header (origin + stored payload) |
//! | 20     | 8    | `created_ms`: when the batch was sealed (ingest time), Unix ms     |
//! | 28     | 4    | CRC32C of bytes `[0, 28)` followed by the body                     |
//! | 32     | ...  | body: optional origin section, then the (compressed) payload       |
//!
//! Origin section: `u16` agent-id length, agent id (UTF-8), then `dev u64`, `inode u64`,
//! `fingerprint u64`, `generation u32`, `first_offset u64`, `end_offset u64`.
//!
//! Payload, once decompressed, is the records back to back, each:
//! `flags u8` (bit 0 event time, bit 1 fields, bit 2 truncated), `span` varint, line length
//! varint, line bytes, then the event time as a zigzag varint if flagged, then if flagged a
//! field count varint and that many (key length varint, key, value length varint, value).
//! A record's file offset is implied: `first_offset` plus the spans of the records before it, and
//! the spans must add up to `end_offset - first_offset`.

use crate::record::{BatchOrigin, Field, FileId, OriginKey, Record};
use bytes::Bytes;
use std::io::{Read, Write};

/// Magic bytes at the start of every batch.
pub const MAGIC: [u8; 4] = *b"FRYB";
/// The only version this build writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = 32;
/// Longest agent id accepted in an origin section.
pub const MAX_AGENT_ID_LEN: usize = 1024;
/// Content type of this format on the collector's HTTP API.
pub const CONTENT_TYPE: &str = "application/x-ferry-batch";
/// HTTP request header on `POST /v1/topics/{t}/records`: "store this batch only after its
/// file's records up to this offset" (a decimal file offset, normally the batch's own first
/// offset). It lets an agent keep several batches of one file in flight: the collector stores
/// them in file order, or answers `409 Conflict` for one whose predecessor has not landed yet
/// and stores nothing of it. The body must then be one batch with an origin.
pub const AFTER_HEADER: &str = "ferry-after";
/// HTTP request header on `POST /v1/topics/{t}/records` with a plain (newline-delimited) body:
/// the sender's producer id, 1-64 of `[A-Za-z0-9._-]`, unique per producer (a random one per
/// process is fine). With [`PRODUCER_SEQ_HEADER`] it makes the body's lines records with an
/// origin, so a resent body is stored once (like Kafka's idempotent producer).
pub const PRODUCER_ID_HEADER: &str = "ferry-producer-id";
/// The sequence number of the body's first line: the count of lines this producer sent before
/// it (line `i` of the body is number `seq + i`). The collector keeps, per producer and
/// partition, the highest number stored and drops lines at or below it, across its own crashes.
pub const PRODUCER_SEQ_HEADER: &str = "ferry-producer-seq";

const FLAG_ORIGIN: u16 = 1;
const REC_EVENT_TIME: u8 = 1;
const REC_FIELDS: u8 = 2;
const REC_TRUNCATED: u8 = 4;
const CRC_AT: usize = 28;
const ORIGIN_FIXED_LEN: usize = 8 * 3 + 4 + 8 * 2;

/// Every way a batch can be malformed. Each variant says what was wrong in terms a user (or the
/// collector's 400 reply) can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("not a ferry batch: magic is {found:02x?}, expected \"FRYB\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported batch version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown codec id {0} (known: 0 none, 1 gzip, 2 lz4)")]
    UnknownCodec(u8),
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    #[error("checksum mismatch: header says {expected:#010x}, content gives {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("{trailing} unexpected bytes after the batch")]
    TrailingBytes { trailing: usize },
    #[error("batch expands to {declared} bytes, over the limit of {limit}")]
    TooLarge { declared: u64, limit: u64 },
    #[error("batch holds {declared} records, over the limit of {limit}")]
    TooManyRecords { declared: u64, limit: u64 },
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    #[error("payload is {actual} bytes after decompression, header says {declared}")]
    RawLength { declared: u64, actual: u64 },
    #[error("origin section malformed: {0}")]
    Origin(&'static str),
    #[error("record {index} malformed: {reason}")]
    Record { index: u32, reason: &'static str },
    #[error("header says {declared} records, payload holds {actual}")]
    RecordCount { declared: u32, actual: u32 },
    #[error("record spans add up to {actual} bytes, origin range is {declared}")]
    Span { declared: u64, actual: u64 },
    #[error("batch too large to encode: {0} bytes")]
    EncodeTooLarge(u64),
}

/// How a batch's payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    /// LZ4 block format (the payload is one block; its size is the header's `raw_len`): a
    /// fraction of gzip's ratio at many times its speed.
    Lz4,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Lz4 => 2,
        }
    }

    fn from_id(id: u8) -> Result<Self, WireError> {
        match id {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Lz4),
            other => Err(WireError::UnknownCodec(other)),
        }
    }

    /// The name used in configs (`none`, `gzip`, `lz4`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Lz4 => "lz4",
        }
    }
}

/// Limits a decoder enforces before it spends memory on a batch.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest decompressed payload accepted (guards against gzip bombs).
    pub max_raw_bytes: u64,
    /// Most records accepted in one batch.
    pub max_records: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_raw_bytes: 64 << 20,
            max_records: 1 << 22,
        }
    }
}

/// The parsed header of a batch, checked (magic, version, codec, length, CRC) but with its payload
/// still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    pub codec: Codec,
    pub record_count: u32,
    pub raw_len: u32,
    pub created_ms: i64,
    pub crc: u32,
    pub origin: Option<BatchOrigin>,
    /// Total encoded length of the batch, header included.
    pub total_len: usize,
    /// Where the stored payload starts within the batch.
    pub payload_start: usize,
}

impl BatchHeader {
    /// Parses and verifies the header of the batch at the start of `buf`, including the CRC over
    /// its body. `buf` may hold more bytes after the batch (see [`BatchHeader::total_len`]).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_fixed_header(buf)?;
        let codec = Codec::from_id(buf[5])?;
        let flags = u16_at(buf, 6);
        if flags & !FLAG_ORIGIN != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        let record_count = u32_at(buf, 8);
        let raw_len = u32_at(buf, 12);
        let body_len = u32_at(buf, 16) as usize;
        let created_ms = u64_at(buf, 20) as i64;
        let crc = u32_at(buf, CRC_AT);
        let total_len = FIXED_HEADER_LEN + body_len;
        if buf.len() < total_len {
            return Err(WireError::Truncated {
                need: total_len,
                have: buf.len(),
            });
        }
        let body = &buf[FIXED_HEADER_LEN..total_len];
        let actual = crc32c::crc32c_append(crc32c::crc32c(&buf[..CRC_AT]), body);
        if actual != crc {
            return Err(WireError::Checksum {
                expected: crc,
                actual,
            });
        }
        let (origin, origin_len) = if flags & FLAG_ORIGIN != 0 {
            let (o, n) = parse_origin(body)?;
            (Some(o), n)
        } else {
            (None, 0)
        };
        Ok(Self {
            codec,
            record_count,
            raw_len,
            created_ms,
            crc,
            origin,
            total_len,
            payload_start: FIXED_HEADER_LEN + origin_len,
        })
    }
}

/// The encoded length (header included) of the batch at the start of `buf`, from its fixed
/// header alone: what splits a body of back-to-back batches before each one is verified once
/// by [`verify`] or [`decode`]. Checks the magic, the version and that `buf` holds that many
/// bytes; not the CRC nor anything else.
pub fn encoded_len(buf: &[u8]) -> Result<usize, WireError> {
    peek(buf).map(|p| p.total_len)
}

/// What the fixed header of the batch at the start of `buf` declares, unverified (no CRC):
/// see [`peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// Encoded length, header included; `buf` holds at least that many bytes.
    pub total_len: usize,
    pub codec: Codec,
    /// The payload's declared uncompressed size (decoding refuses a payload that differs).
    pub raw_len: u32,
}

/// The fixed header of the batch at the start of `buf`: its length, codec and declared raw
/// size, for sizing up the work of checking a body before doing it. Checks the magic, the
/// version, the codec and that `buf` holds the whole batch; not the CRC nor anything else.
pub fn peek(buf: &[u8]) -> Result<Peek, WireError> {
    check_fixed_header(buf)?;
    let codec = Codec::from_id(buf[5])?;
    let total_len = FIXED_HEADER_LEN + u32_at(buf, 16) as usize;
    if buf.len() < total_len {
        return Err(WireError::Truncated {
            need: total_len,
            have: buf.len(),
        });
    }
    Ok(Peek {
        total_len,
        codec,
        raw_len: u32_at(buf, 12),
    })
}

/// The fixed header is all there, with our magic and version.
fn check_fixed_header(buf: &[u8]) -> Result<(), WireError> {
    if buf.len() < FIXED_HEADER_LEN {
        return Err(WireError::Truncated {
            need: FIXED_HEADER_LEN,
            have: buf.len(),
        });
    }
    let magic: [u8; 4] = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    if buf[4] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[4]));
    }
    Ok(())
}

/// The CRC32C of a whole encoded batch, header included, derived from the CRC its header
/// carries (checked by [`BatchHeader::parse`], which made `header` from `batch`) without
/// reading the body again: what the store's frame checksum needs ([`crate::crc`]).
pub fn whole_crc32c(batch: &[u8], header: &BatchHeader) -> u32 {
    let body_len = batch.len().saturating_sub(FIXED_HEADER_LEN);
    let head = &batch[..FIXED_HEADER_LEN.min(batch.len())];
    // header.crc = crc(head[..28] ++ body) = shift(crc(head[..28]), body_len) ^ crc(body).
    let body = header.crc
        ^ crate::crc::crc32c_combine(crc32c::crc32c(&head[..CRC_AT.min(head.len())]), 0, body_len);
    crate::crc::crc32c_combine(crc32c::crc32c(head), body, body_len)
}

fn parse_origin(body: &[u8]) -> Result<(BatchOrigin, usize), WireError> {
    if body.len() < 2 {
        return Err(WireError::Origin("shorter than its agent-id length"));
    }
    let id_len = u16_at(body, 0) as usize;
    if id_len > MAX_AGENT_ID_LEN {
        return Err(WireError::Origin("agent id longer than 1024 bytes"));
    }
    let need = 2 + id_len + ORIGIN_FIXED_LEN;
    if body.len() < need {
        return Err(WireError::Origin("shorter than its declared length"));
    }
    let agent_id = std::str::from_utf8(&body[2..2 + id_len])
        .map_err(|_| WireError::Origin("agent id is not UTF-8"))?
        .to_owned();
    let p = 2 + id_len;
    let file = FileId {
        dev: u64_at(body, p),
        inode: u64_at(body, p + 8),
        fingerprint: u64_at(body, p + 16),
        generation: u32_at(body, p + 24),
    };
    let first_offset = u64_at(body, p + 28);
    let end_offset = u64_at(body, p + 36);
    if end_offset < first_offset {
        return Err(WireError::Origin("end offset before first offset"));
    }
    Ok((
        BatchOrigin {
            key: OriginKey { agent_id, file },
            first_offset,
            end_offset,
        },
        need,
    ))
}

/// A decoded batch: its header and its records. Record lines share one buffer.
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
}

/// Decodes one batch that fills `buf` exactly, verifying everything: header, CRC, decompressed
/// length, every record, the record count and the origin's byte range. Never panics.
pub fn decode(buf: &Bytes, limits: &DecodeLimits) -> Result<Batch, WireError> {
    let (header, raw) = checked_payload(buf, limits)?;
    // The count is bounded by `limits` (checked before decompressing).
    let mut records = Vec::with_capacity(header.record_count as usize);
    each_record(&raw, &header, |r| records.push(r))?;
    Ok(Batch { header, records })
}

/// [`decode`] without collecting: each record goes to `f` as it is read, so a caller that
/// keeps records elsewhere (the consumer's queue) moves each one once and allocates no vector
/// per batch. On an error, `f` may already have had the records before the bad one: a caller
/// that must not keep part of a batch drops what it got (the consumer truncates its queue).
pub fn decode_each(
    buf: &Bytes,
    limits: &DecodeLimits,
    f: impl FnMut(Record),
) -> Result<BatchHeader, WireError> {
    let (header, raw) = checked_payload(buf, limits)?;
    each_record(&raw, &header, f)?;
    Ok(header)
}

/// The header (CRC checked) of the batch that fills `buf`, and its decompressed payload.
fn checked_payload(buf: &Bytes, limits: &DecodeLimits) -> Result<(BatchHeader, Bytes), WireError> {
    let header = BatchHeader::parse(buf)?;
    if buf.len() > header.total_len {
        return Err(WireError::TrailingBytes {
            trailing: buf.len() - header.total_len,
        });
    }
    let raw = decompress(
        buf.slice(header.payload_start..header.total_len),
        &header,
        limits,
    )?;
    Ok((header, raw))
}

/// Every record of a decompressed payload, checked ([`check_records`]) and built, to `f`.
fn each_record(
    raw: &Bytes,
    header: &BatchHeader,
    mut f: impl FnMut(Record),
) -> Result<(), WireError> {
    let mut offset = header.origin.as_ref().map(|o| o.first_offset);
    check_records(raw, header, |r| {
        f(Record {
            line: raw.slice_ref(r.line),
            event_time_ms: r.event_time_ms,
            offset,
            span: r.span,
            truncated: r.truncated,
            fields: r
                .fields()
                // Checked to be UTF-8 by `check_records`.
                .map(|(k, v)| {
                    Field::new(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
        });
        offset = offset.map(|o| o.saturating_add(r.span));
    })
}

/// Returns the decompressed payload of a batch whose header was already parsed.
pub fn decompress(
    stored: Bytes,
    header: &BatchHeader,
    limits: &DecodeLimits,
) -> Result<Bytes, WireError> {
    check_limits(header, limits)?;
    if header.codec == Codec::None {
        return check_raw_len(stored, header);
    }
    let mut out = recycled::take();
    let n = match inflate_into(&stored, header, &mut out) {
        Ok(n) => n,
        Err(e) => {
            recycled::give_back(out);
            return Err(e);
        }
    };
    // The records borrow the payload; when the last of them is dropped, the buffer goes back
    // to be decompressed into again (fresh allocations of this size cost page faults and
    // zeroing on every batch).
    check_raw_len(
        Bytes::from_owner(recycled::Payload { buf: out, len: n }),
        header,
    )
}

/// Buffers that decoded payloads were decompressed into, kept for the next batch once no
/// record borrows them: a consumer decodes batch after batch of the same size.
mod recycled {
    use std::sync::Mutex;

    /// Bytes kept at most, over every buffer (a processor holds a whole fetch's records, 4 MiB
    /// compressed, while it works on them; the buffers come back when it is done).
    const KEPT_MAX: usize = 64 << 20;
    /// A buffer larger than this is not kept.
    const ONE_MAX: usize = 8 << 20;

    static KEPT: Mutex<(Vec<Vec<u8>>, usize)> = Mutex::new((Vec::new(), 0));

    pub(super) fn take() -> Vec<u8> {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        match kept.0.pop() {
            Some(buf) => {
                kept.1 -= buf.capacity();
                buf
            }
            None => Vec::new(),
        }
    }

    pub(super) fn give_back(buf: Vec<u8>) {
        let size = buf.capacity();
        if size == 0 || size > ONE_MAX {
            return;
        }
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if kept.1 + size <= KEPT_MAX {
            kept.1 += size;
            kept.0.push(buf);
        }
    }

    /// A decompressed payload: `buf[..len]`, handed back to the pool when dropped.
    pub(super) struct Payload {
        pub(super) buf: Vec<u8>,
        pub(super) len: usize,
    }

    impl AsRef<[u8]> for Payload {
        fn as_ref(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    impl Drop for Payload {
        fn drop(&mut self) {
            give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// The header's declared sizes against `limits`, before anything is decompressed.
fn check_limits(header: &BatchHeader, limits: &DecodeLimits) -> Result<(), WireError> {
    let declared = u64::from(header.raw_len);
    if declared > limits.max_raw_bytes {
        return Err(WireError::TooLarge {
            declared,
            limit: limits.max_raw_bytes,
        });
    }
    if u64::from(header.record_count) > limits.max_records {
        return Err(WireError::TooManyRecords {
            declared: u64::from(header.record_count),
            limit: limits.max_records,
        });
    }
    Ok(())
}

fn check_raw_len<T: AsRef<[u8]>>(raw: T, header: &BatchHeader) -> Result<T, WireError> {
    let declared = u64::from(header.raw_len);
    let actual = raw.as_ref().len() as u64;
    if actual != declared {
        return Err(WireError::RawLength { declared, actual });
    }
    Ok(raw)
}

/// Decompresses a payload (its limits checked) into `out`, whose allocation is reused; returns
/// the payload's length: it is `out[..len]` (`out` may be longer; what lies past is stale).
/// Never more than the declared length plus one byte is produced.
fn inflate_into(
    stored: &[u8],
    header: &BatchHeader,
    out: &mut Vec<u8>,
) -> Result<usize, WireError> {
    let declared = u64::from(header.raw_len);
    match header.codec {
        Codec::None => {
            out.clear();
            out.extend_from_slice(stored);
        }
        Codec::Gzip => {
            out.clear();
            out.reserve(header.raw_len as usize);
            // Read one byte past the declared length, so a payload that inflates beyond what
            // the header promised is caught without inflating all of it.
            let mut dec = flate2::read::GzDecoder::new(stored).take(declared + 1);
            dec.read_to_end(out)
                .map_err(|e| WireError::Decompress(e.to_string()))?;
        }
        Codec::Lz4 => {
            // The output is exactly the declared size: a block that would write past it (or
            // reads past its input) is an error, not an allocation. A reused buffer already
            // long enough is not zeroed again.
            let n = header.raw_len as usize;
            if out.len() < n {
                out.resize(n, 0);
            }
            return lz4_flex::block::decompress_into(stored, &mut out[..n])
                .map_err(|e| WireError::Decompress(format!("lz4: {e}")));
        }
    }
    Ok(out.len())
}

/// A record of a decompressed payload, borrowed from it: what [`visit_records`] hands out.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub line: &'a [u8],
    /// Bytes of the source file the record stands for (its line and newline, or more).
    pub span: u64,
    pub event_time_ms: Option<i64>,
    pub truncated: bool,
    /// The encoded fields (already checked to hold `field_count` pairs).
    fields: &'a [u8],
    pub field_count: usize,
}

impl<'a> RecordRef<'a> {
    /// The record's fields as (key, value) bytes, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.fields;
        let mut pos = 0usize;
        (0..self.field_count).map_while(move |_| {
            let k = read_slice(buf, &mut pos)?;
            let v = read_slice(buf, &mut pos)?;
            Some((k, v))
        })
    }
}

fn read_slice<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let n = usize::try_from(read_varint(buf, pos)?).ok()?;
    let end = pos.checked_add(n).filter(|&e| e <= buf.len())?;
    let s = &buf[*pos..end];
    *pos = end;
    Some(s)
}

/// Visits the `record_count` records of a decompressed payload (see [`decompress`]) in order,
/// borrowing every line and field from it: no allocation per record. The structure is checked
/// as [`decode`] checks it (flags, lengths, the count); field text is not re-checked for UTF-8
/// (what reads it back as text checks it), nor spans against an origin.
pub fn visit_records<'a>(
    raw: &'a [u8],
    record_count: u32,
    f: impl FnMut(RecordRef<'a>),
) -> Result<(), WireError> {
    walk_records(raw, record_count, f)
}

/// The one walk over a payload's records: flags, varints and lengths, the count.
fn walk_records<'a>(
    raw: &'a [u8],
    record_count: u32,
    mut f: impl FnMut(RecordRef<'a>),
) -> Result<(), WireError> {
    let mut pos = 0usize;
    let mut index: u32 = 0;
    while pos < raw.len() {
        if index >= record_count {
            return Err(WireError::RecordCount {
                declared: record_count,
                actual: index.saturating_add(1),
            });
        }
        let bad = |reason| WireError::Record { index, reason };
        let flags = raw[pos];
        pos += 1;
        if flags & !(REC_EVENT_TIME | REC_FIELDS | REC_TRUNCATED) != 0 {
            return Err(bad("unknown record flags"));
        }
        let span = read_varint(raw, &mut pos).ok_or_else(|| bad("truncated span"))?;
        let line = read_slice(raw, &mut pos).ok_or_else(|| bad("truncated line"))?;
        let event_time_ms = if flags & REC_EVENT_TIME != 0 {
            let z = read_varint(raw, &mut pos).ok_or_else(|| bad("truncated event time"))?;
            Some(unzigzag(z))
        } else {
            None
        };
        let fields_start = pos;
        let mut field_count = 0usize;
        if flags & REC_FIELDS != 0 {
            let n = read_varint(raw, &mut pos).ok_or_else(|| bad("truncated field count"))?;
            if n > (raw.len() - pos) as u64 / 2 {
                return Err(bad("field count larger than the payload"));
            }
            field_count = n as usize;
            let body = pos;
            for _ in 0..n {
                read_slice(raw, &mut pos).ok_or_else(|| bad("truncated field key"))?;
                read_slice(raw, &mut pos).ok_or_else(|| bad("truncated field value"))?;
            }
            f(RecordRef {
                line,
                span,
                event_time_ms,
                truncated: flags & REC_TRUNCATED != 0,
                fields: &raw[body..pos],
                field_count,
            });
        } else {
            f(RecordRef {
                line,
                span,
                event_time_ms,
                truncated: flags & REC_TRUNCATED != 0,
                fields: &raw[fields_start..fields_start],
                field_count,
            });
        }
        index += 1;
    }
    if index != record_count {
        return Err(WireError::RecordCount {
            declared: record_count,
            actual: index,
        });
    }
    Ok(())
}

/// Verifies one batch that fills `buf` exactly as [`decode`] does — header, CRC, decompressed
/// length, every record's structure and field text, the record count and the origin's byte
/// range — without materialising its records: no allocation per record, and none at all for
/// an uncompressed batch. What the collector runs on a batch it stores as received.
pub fn verify(buf: &Bytes, limits: &DecodeLimits) -> Result<BatchHeader, WireError> {
    let header = BatchHeader::parse(buf)?;
    if buf.len() > header.total_len {
        return Err(WireError::TrailingBytes {
            trailing: buf.len() - header.total_len,
        });
    }
    check_limits(&header, limits)?;
    let stored = &buf[header.payload_start..header.total_len];
    if header.codec == Codec::None {
        check_records(check_raw_len(stored, &header)?, &header, |_| {})?;
        return Ok(header);
    }
    // The payload is checked and dropped: decompressed into a buffer this thread reuses (no
    // allocation, no page faults, no zeroing per batch) unless it is unusually large.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if header.raw_len as usize > SCRATCH_MAX {
        let mut out = Vec::new();
        let n = inflate_into(stored, &header, &mut out)?;
        check_records(check_raw_len(&out[..n], &header)?, &header, |_| {})?;
        return Ok(header);
    }
    SCRATCH.with_borrow_mut(|out| {
        let n = inflate_into(stored, &header, out)?;
        check_records(check_raw_len(&out[..n], &header)?, &header, |_| {})
    })?;
    Ok(header)
}

/// Largest payload [`verify`] decompresses into its per-thread buffer, and largest lz4 output
/// [`BatchBuilder::finish`] compresses into its own (each stays that big).
const SCRATCH_MAX: usize = 4 << 20;

/// Every check of a decompressed payload, in one pass, handing each record out borrowed:
/// the structure ([`walk_records`]), field text is UTF-8, and with an origin, the spans add up
/// to its byte range.
fn check_records<'a>(
    raw: &'a [u8],
    header: &BatchHeader,
    mut f: impl FnMut(RecordRef<'a>),
) -> Result<(), WireError> {
    let mut span_sum: u64 = 0;
    let mut index: u32 = 0;
    let mut failed = None;
    walk_records(raw, header.record_count, |r| {
        if failed.is_some() {
            return;
        }
        let bad = |reason| Some(WireError::Record { index, reason });
        for (k, v) in r.fields() {
            if std::str::from_utf8(k).is_err() {
                failed = bad("field key is not UTF-8");
                return;
            }
            if std::str::from_utf8(v).is_err() {
                failed = bad("field value is not UTF-8");
                return;
            }
        }
        match span_sum.checked_add(r.span) {
            Some(s) => span_sum = s,
            None => {
                failed = bad("span overflows");
                return;
            }
        }
        index += 1;
        f(r);
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(origin) = &header.origin {
        let declared = origin.end_offset - origin.first_offset;
        if declared != span_sum {
            return Err(WireError::Span {
                declared,
                actual: span_sum,
            });
        }
    }
    Ok(())
}

impl Batch {
    /// Re-encodes the records for which `keep(index)` is true as a batch of its own, or `None` if
    /// none is kept.
    ///
    /// With an origin, the span of every dropped record is folded into the kept record before
    /// it, and leading dropped records move `first_offset` up, so every kept record keeps its
    /// file offset and the new batch still ends at this batch's `end_offset` — the high-water
    /// mark the collector deduplicates on. Replaying the same batch through the same split
    /// therefore yields sub-batches that are recognised as replays.
    pub fn encode_subset(
        &self,
        mut keep: impl FnMut(usize) -> bool,
        codec: Codec,
        level: u32,
    ) -> Result<Option<Vec<u8>>, WireError> {
        let kept: Vec<usize> = (0..self.records.len()).filter(|&i| keep(i)).collect();
        let Some(&first) = kept.first() else {
            return Ok(None);
        };
        let mut b = match &self.header.origin {
            Some(o) => {
                let start = self.records[first].offset.unwrap_or(o.first_offset);
                BatchBuilder::with_origin(o.key.clone(), start)
            }
            None => BatchBuilder::new(),
        };
        for (n, &i) in kept.iter().enumerate() {
            let r = &self.records[i];
            let span = match (&self.header.origin, r.offset) {
                (Some(o), Some(off)) => {
                    let next = kept
                        .get(n + 1)
                        .and_then(|&j| self.records[j].offset)
                        .unwrap_or(o.end_offset);
                    next - off
                }
                _ => r.span,
            };
            b.push(&r.line, span, r.event_time_ms, r.truncated, &r.fields);
        }
        b.finish(codec, level, self.header.created_ms).map(Some)
    }
}

/// Accumulates records into an uncompressed payload, then seals them into a batch.
///
/// The builder is meant to be reused (`clear`) so that a steady stream of batches allocates
/// nothing per line.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    raw: Vec<u8>,
    count: u32,
    origin: Option<(OriginKey, u64)>,
    span_total: u64,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a batch of lines read from one file, beginning at `first_offset`.
    pub fn with_origin(key: OriginKey, first_offset: u64) -> Self {
        Self {
            origin: Some((key, first_offset)),
            ..Self::default()
        }
    }

    /// Empties the builder but keeps its buffer; sets the origin of the next batch.
    pub fn reset(&mut self, origin: Option<(OriginKey, u64)>) {
        self.raw.clear();
        self.count = 0;
        self.span_total = 0;
        self.origin = origin;
    }

    /// Appends a plain line that consumed `span` bytes of its file (line plus newline).
    pub fn push_line(&mut self, line: &[u8], span: u64) {
        self.raw.push(0);
        write_varint(&mut self.raw, span);
        write_varint(&mut self.raw, line.len() as u64);
        self.raw.extend_from_slice(line);
        self.count += 1;
        self.span_total += span;
    }

    /// Appends a record with everything it may carry.
    pub fn push(
        &mut self,
        line: &[u8],
        span: u64,
        event_time_ms: Option<i64>,
        truncated: bool,
        fields: &[Field],
    ) {
        self.push_with(line, span, event_time_ms, truncated, fields.len(), |raw| {
            for f in fields {
                write_field(raw, f.key.as_bytes(), f.value.as_bytes());
            }
        });
    }

    /// [`BatchBuilder::push`] with fields borrowed as `(key, value)` pairs (no `Field` to
    /// allocate), for records converted from another format; never truncated.
    pub fn push_pairs(
        &mut self,
        line: &[u8],
        span: u64,
        event_time_ms: Option<i64>,
        fields: &[(&str, &str)],
    ) {
        self.push_with(line, span, event_time_ms, false, fields.len(), |raw| {
            for (k, v) in fields {
                write_field(raw, k.as_bytes(), v.as_bytes());
            }
        });
    }

    /// One record: flags, span, line, event time, then `n_fields` fields written by
    /// `write_fields`.
    fn push_with(
        &mut self,
        line: &[u8],
        span: u64,
        event_time_ms: Option<i64>,
        truncated: bool,
        n_fields: usize,
        write_fields: impl FnOnce(&mut Vec<u8>),
    ) {
        let mut flags = 0u8;
        if event_time_ms.is_some() {
            flags |= REC_EVENT_TIME;
        }
        if n_fields > 0 {
            flags |= REC_FIELDS;
        }
        if truncated {
            flags |= REC_TRUNCATED;
        }
        self.raw.push(flags);
        write_varint(&mut self.raw, span);
        write_varint(&mut self.raw, line.len() as u64);
        self.raw.extend_from_slice(line);
        if let Some(t) = event_time_ms {
            write_varint(&mut self.raw, zigzag(t));
        }
        if n_fields > 0 {
            write_varint(&mut self.raw, n_fields as u64);
            write_fields(&mut self.raw);
        }
        self.count += 1;
        self.span_total += span;
    }

    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Uncompressed payload size so far.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Bytes the payload buffer holds allocated (what keeping the builder for reuse costs).
    pub fn capacity(&self) -> usize {
        self.raw.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The file offset just past the last record pushed (where reading resumes).
    pub fn end_offset(&self) -> Option<u64> {
        self.origin
            .as_ref()
            .map(|(_, first)| first + self.span_total)
    }

    /// Seals the records into one encoded batch, compressing with `codec` at `level` (gzip 0-9).
    pub fn finish(&self, codec: Codec, level: u32, created_ms: i64) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 64 + self.raw.len() / 2);
        self.finish_into(codec, level, created_ms, &mut out)?;
        Ok(out)
    }

    /// Like [`BatchBuilder::finish`], writing into `out` (cleared first) to reuse its allocation.
    pub fn finish_into(
        &self,
        codec: Codec,
        level: u32,
        created_ms: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let raw_len = u32::try_from(self.raw.len())
            .map_err(|_| WireError::EncodeTooLarge(self.raw.len() as u64))?;
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(codec.id());
        let flags = if self.origin.is_some() {
            FLAG_ORIGIN
        } else {
            0
        };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // body_len, patched below
        out.extend_from_slice(&created_ms.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        if let Some((key, first)) = &self.origin {
            let id = key.agent_id.as_bytes();
            let id = &id[..id.len().min(MAX_AGENT_ID_LEN)];
            out.extend_from_slice(&(id.len() as u16).to_le_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&key.file.dev.to_le_bytes());
            out.extend_from_slice(&key.file.inode.to_le_bytes());
            out.extend_from_slice(&key.file.fingerprint.to_le_bytes());
            out.extend_from_slice(&key.file.generation.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&(first + self.span_total).to_le_bytes());
        }
        compress_into(&self.raw, codec, level, out)?;
        seal(out)
    }
}

/// Appends `raw` compressed with `codec` (gzip at `level`) to `out`.
fn compress_into(raw: &[u8], codec: Codec, level: u32, out: &mut Vec<u8>) -> Result<(), WireError> {
    match codec {
        Codec::None => out.extend_from_slice(raw),
        Codec::Gzip => {
            let mut enc =
                flate2::write::GzEncoder::new(&mut *out, flate2::Compression::new(level.min(9)));
            // Writing into a Vec cannot fail.
            enc.write_all(raw)
                .and_then(|()| enc.finish().map(|_| ()))
                .map_err(|e| WireError::Decompress(e.to_string()))?;
        }
        Codec::Lz4 => {
            let bound = lz4_flex::block::get_maximum_output_size(raw.len());
            if bound > SCRATCH_MAX {
                let start = out.len();
                out.resize(start + bound, 0);
                let n = lz4_flex::block::compress_into(raw, &mut out[start..])
                    .map_err(|e| WireError::Decompress(format!("lz4: {e}")))?;
                out.truncate(start + n);
                return Ok(());
            }
            // Compressed into a buffer this thread reuses, then copied: the batch gets only
            // the compressed bytes (a quarter of the raw ones for log lines), not a zeroed
            // allocation of the worst-case size for every batch, whose page faults and
            // zeroing cost the agent's compression workers about a sixth of their time.
            thread_local! {
                static LZ4_OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            LZ4_OUT.with_borrow_mut(|scratch| {
                if scratch.len() < bound {
                    scratch.resize(bound, 0);
                }
                let n = lz4_flex::block::compress_into(raw, &mut scratch[..bound])
                    .map_err(|e| WireError::Decompress(format!("lz4: {e}")))?;
                out.extend_from_slice(&scratch[..n]);
                Ok::<(), WireError>(())
            })?;
        }
    }
    Ok(())
}

/// Patches `body_len` and the CRC of the batch in `out`.
fn seal(out: &mut [u8]) -> Result<(), WireError> {
    let body_len = u32::try_from(out.len() - FIXED_HEADER_LEN)
        .map_err(|_| WireError::EncodeTooLarge(out.len() as u64))?;
    out[16..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..CRC_AT]), &out[FIXED_HEADER_LEN..]);
    out[CRC_AT..FIXED_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Re-encodes the batch `enc` (whose header is `header` and decompressed payload `raw`) with
/// `codec`, keeping everything else — records, origin, creation time — as it is. The collector
/// uses it to store uncompressed agent batches compressed, without parsing their records again.
pub fn recompress(
    enc: &[u8],
    header: &BatchHeader,
    raw: &[u8],
    codec: Codec,
    level: u32,
) -> Result<Vec<u8>, WireError> {
    let head = enc
        .get(..header.payload_start)
        .ok_or(WireError::Truncated {
            need: header.payload_start,
            have: enc.len(),
        })?;
    if raw.len() != header.raw_len as usize {
        return Err(WireError::RawLength {
            declared: u64::from(header.raw_len),
            actual: raw.len() as u64,
        });
    }
    let mut out = Vec::with_capacity(head.len() + raw.len() / 2 + 64);
    out.extend_from_slice(head);
    out[5] = codec.id();
    compress_into(raw, codec, level, &mut out)?;
    seal(&mut out)?;
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint at `*pos`; `None` if truncated or longer than 10 bytes.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn write_field(raw: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    write_varint(raw, key.len() as u64);
    raw.extend_from_slice(key);
    write_varint(raw, value.len() as u64);
    raw.extend_from_slice(value);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod visit_tests {
    use super::*;

    #[test]
    fn visiting_borrows_the_records_decode_returns() {
        let mut b = BatchBuilder::new();
        b.push(b"plain", 6, None, false, &[]);
        b.push(
            b"with fields",
            12,
            Some(-5),
            true,
            &[Field::new("k", "v"), Field::new("host", "web-1")],
        );
        b.push_pairs(b"pairs", 1, Some(1_700_000_000_000), &[("a", "1")]);
        let enc = Bytes::from(b.finish(Codec::Lz4, 0, 9).expect("finish"));
        let decoded = decode(&enc, &DecodeLimits::default()).expect("decode");
        let raw = decompress(
            enc.slice(decoded.header.payload_start..decoded.header.total_len),
            &decoded.header,
            &DecodeLimits::default(),
        )
        .expect("raw");
        let mut seen = Vec::new();
        visit_records(&raw, decoded.header.record_count, |r| {
            let fields: Vec<Field> = r
                .fields()
                .map(|(k, v)| {
                    Field::new(
                        std::str::from_utf8(k).expect("utf8"),
                        std::str::from_utf8(v).expect("utf8"),
                    )
                })
                .collect();
            seen.push((r.line.to_vec(), r.event_time_ms, r.truncated, fields));
        })
        .expect("visit");
        let want: Vec<_> = decoded
            .records
            .iter()
            .map(|r| {
                (
                    r.line.to_vec(),
                    r.event_time_ms,
                    r.truncated,
                    r.fields.clone(),
                )
            })
            .collect();
        assert_eq!(seen, want);
        // A wrong count, and a cut payload, are errors.
        assert!(visit_records(&raw, 2, |_| {}).is_err());
        assert!(visit_records(&raw, 4, |_| {}).is_err());
        assert!(visit_records(&raw[..raw.len() - 1], 3, |_| {}).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` lines `{tag}-{i}-` followed by `len` filler bytes, as a builder holding them.
    fn lines_in_a_builder(tag: &str, n: usize, len: usize) -> (Vec<String>, BatchBuilder) {
        let mut b = BatchBuilder::new();
        let lines: Vec<String> = (0..n)
            .map(|i| format!("{tag}-{i}-{}", "x".repeat(len)))
            .collect();
        for l in &lines {
            b.push_line(l.as_bytes(), 0);
        }
        (lines, b)
    }

    #[test]
    fn the_whole_crc_derived_from_the_header_equals_the_crc_of_the_bytes() {
        for (n, len) in [(1usize, 0usize), (1, 7), (3, 100), (500, 180)] {
            for codec in [Codec::None, Codec::Lz4, Codec::Gzip] {
                let (_, b) = lines_in_a_builder("crc", n, len);
                let enc = b.finish(codec, 1, 5).unwrap();
                let h = BatchHeader::parse(&enc).unwrap();
                assert_eq!(
                    whole_crc32c(&enc, &h),
                    crc32c::crc32c(&enc),
                    "{n} lines of {len}, {codec:?}"
                );
                assert_eq!(encoded_len(&enc).unwrap(), enc.len());
                let mut two = enc.to_vec();
                two.extend_from_slice(&enc);
                assert_eq!(encoded_len(&two).unwrap(), enc.len());
                for cut in 0..enc.len() {
                    assert!(encoded_len(&enc[..cut]).is_err(), "cut at {cut}");
                }
            }
        }
    }

    fn lines_of(b: &Batch) -> Vec<String> {
        b.records
            .iter()
            .map(|r| String::from_utf8(r.line.to_vec()).unwrap())
            .collect()
    }

    /// lz4 batches are compressed into a per-thread buffer and copied out: batch after batch
    /// on one thread (a larger one, then smaller ones, then one past the buffer's limit)
    /// each decodes to exactly its own lines, and carries only its compressed bytes.
    #[test]
    fn lz4_batches_compressed_one_after_another_on_a_thread_are_each_their_own() {
        let limits = DecodeLimits {
            max_raw_bytes: 64 << 20,
            max_records: 1 << 24,
        };
        for (round, (n, len)) in [(20_000, 200), (10, 5), (3_000, 40), (1, 0), (60_000, 90)]
            .into_iter()
            .enumerate()
        {
            let (lines, b) = lines_in_a_builder(&format!("r{round}"), n, len);
            let enc = b.finish(Codec::Lz4, 1, 0).unwrap();
            assert!(
                enc.capacity() <= FIXED_HEADER_LEN + 64 + b.raw.len() / 2
                    || b.raw.len() > SCRATCH_MAX,
                "round {round}: the batch holds a worst-case allocation ({} for {} raw bytes)",
                enc.capacity(),
                b.raw.len()
            );
            let got = lines_of(&decode(&Bytes::from(enc), &limits).unwrap());
            assert_eq!(got, lines, "round {round}");
        }
    }

    /// Decoded payloads are decompressed into recycled buffers: a buffer goes back only when
    /// no record borrows it any more, and a batch decoded into a used buffer shows none of
    /// what the buffer held before (a shorter batch into a longer buffer included).
    #[test]
    fn recycled_payload_buffers_never_show_or_clobber_another_batchs_bytes() {
        let batch = |tag: &str, n: usize, len: usize| {
            let (lines, b) = lines_in_a_builder(tag, n, len);
            (lines, Bytes::from(b.finish(Codec::Lz4, 1, 0).unwrap()))
        };
        let limits = DecodeLimits::default();
        for round in 0..50 {
            let (big_lines, big) = batch(&format!("big{round}"), 2000, 100);
            let (small_lines, small) = batch(&format!("small{round}"), 30, 7);
            let held = decode(&big, &limits).unwrap();
            // Decoded while `held` still borrows its buffer: a buffer of its own.
            let other = decode(&small, &limits).unwrap();
            assert_eq!(lines_of(&other), small_lines);
            drop(other);
            assert_eq!(
                lines_of(&held),
                big_lines,
                "round {round}: clobbered while held"
            );
            // The big buffer back in the pool; the small batch decoded into it next.
            drop(held);
            let again = decode(&small, &limits).unwrap();
            assert_eq!(lines_of(&again), small_lines, "round {round}");
            assert_eq!(
                again.records.iter().map(|r| r.line.len()).sum::<usize>(),
                small_lines.iter().map(String::len).sum::<usize>()
            );
        }
    }

    fn origin_key() -> OriginKey {
        OriginKey {
            agent_id: "host-a".into(),
            file: FileId {
                dev: 2049,
                inode: 77,
                fingerprint: 0xdead_beef,
                generation: 1,
            },
        }
    }

    fn sample(codec: Codec) -> Vec<u8> {
        let mut b = BatchBuilder::with_origin(origin_key(), 1000);
        b.push_line(b"first line", 11);
        b.push(
            b"\xff\xfe not utf8",
            13,
            Some(-5),
            true,
            &[Field::new("env", "prod")],
        );
        b.push_line(b"", 1);
        b.finish(codec, 1, 1_700_000_000_000).unwrap()
    }

    #[test]
    fn round_trip_keeps_offsets_fields_and_invalid_utf8() {
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4] {
            let enc = Bytes::from(sample(codec));
            let batch = decode(&enc, &DecodeLimits::default()).unwrap();
            assert_eq!(batch.header.codec, codec);
            assert_eq!(batch.header.created_ms, 1_700_000_000_000);
            let origin = batch.header.origin.as_ref().unwrap();
            assert_eq!(origin.key, origin_key());
            assert_eq!((origin.first_offset, origin.end_offset), (1000, 1025));
            let offsets: Vec<_> = batch.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![Some(1000), Some(1011), Some(1024)]);
            assert_eq!(&batch.records[1].line[..], b"\xff\xfe not utf8");
            assert!(batch.records[1].truncated);
            assert_eq!(batch.records[1].event_time_ms, Some(-5));
            assert_eq!(batch.records[1].fields, vec![Field::new("env", "prod")]);
            assert_eq!(&batch.records[2].line[..], b"");
        }
    }

    #[test]
    fn header_alone_gives_origin_without_decompressing() {
        let enc = sample(Codec::Gzip);
        let h = BatchHeader::parse(&enc).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.total_len, enc.len());
        assert_eq!(h.origin.unwrap().end_offset, 1025);
    }

    #[test]
    fn empty_batch_round_trips() {
        let enc = Bytes::from(BatchBuilder::new().finish(Codec::Gzip, 6, 0).unwrap());
        let batch = decode(&enc, &DecodeLimits::default()).unwrap();
        assert!(batch.records.is_empty());
        assert!(batch.header.origin.is_none());
    }

    #[test]
    fn varint_and_zigzag_extremes() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Eleven continuation bytes is not a varint.
        let mut pos = 0;
        assert_eq!(read_varint(&[0xff; 11], &mut pos), None);
    }

    #[test]
    fn subsets_keep_offsets_and_the_end_offset() {
        let enc = Bytes::from(sample(Codec::Gzip));
        let batch = decode(&enc, &DecodeLimits::default()).unwrap();
        // Keep only the middle record: offsets 1011.., the batch still ends at 1025.
        let sub = batch
            .encode_subset(|i| i == 1, Codec::None, 0)
            .unwrap()
            .unwrap();
        let sub = decode(&Bytes::from(sub), &DecodeLimits::default()).unwrap();
        let o = sub.header.origin.as_ref().unwrap();
        assert_eq!((o.first_offset, o.end_offset), (1011, 1025));
        assert_eq!(sub.records.len(), 1);
        assert_eq!(sub.records[0].offset, Some(1011));
        assert_eq!(sub.records[0].fields, vec![Field::new("env", "prod")]);
        // First and last: the first absorbs the span of the dropped middle one.
        let sub = batch
            .encode_subset(|i| i != 1, Codec::Gzip, 1)
            .unwrap()
            .unwrap();
        let sub = decode(&Bytes::from(sub), &DecodeLimits::default()).unwrap();
        let offsets: Vec<_> = sub.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![Some(1000), Some(1024)]);
        assert!(
            batch
                .encode_subset(|_| false, Codec::None, 0)
                .unwrap()
                .is_none()
        );
    }

    #[derive(Debug, Clone)]
    struct Rec {
        line: Vec<u8>,
        extra_span: u8,
        time: Option<i64>,
        truncated: bool,
        fields: Vec<(String, String)>,
    }

    fn rec_strategy() -> impl Strategy<Value = Rec> {
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u8>(),
            proptest::option::of(any::<i64>()),
            any::<bool>(),
            proptest::collection::vec(("[a-z]{0,8}", "\\PC{0,12}"), 0..3),
        )
            .prop_map(|(line, extra_span, time, truncated, fields)| Rec {
                line,
                extra_span,
                time,
                truncated,
                fields,
            })
    }

    #[test]
    fn recompress_keeps_records_origin_and_time() {
        let limits = DecodeLimits::default();
        for from in [Codec::None, Codec::Gzip, Codec::Lz4] {
            for to in [Codec::None, Codec::Gzip, Codec::Lz4] {
                let enc = Bytes::from(sample(from));
                let before = decode(&enc, &limits).unwrap();
                let raw = decompress(
                    enc.slice(before.header.payload_start..before.header.total_len),
                    &before.header,
                    &limits,
                )
                .unwrap();
                let again = Bytes::from(recompress(&enc, &before.header, &raw, to, 1).unwrap());
                let after = decode(&again, &limits).unwrap();
                assert_eq!(after.header.codec, to);
                assert_eq!(after.header.origin, before.header.origin);
                assert_eq!(after.header.created_ms, before.header.created_ms);
                assert_eq!(after.header.record_count, before.header.record_count);
                assert_eq!(after.records, before.records, "{from:?} -> {to:?}");
                // A payload of the wrong length is refused, not sealed.
                assert!(recompress(&enc, &before.header, &raw[1..], to, 1).is_err());
            }
        }
    }

    proptest! {
        #[test]
        fn any_records_round_trip(
            recs in proptest::collection::vec(rec_strategy(), 0..40),
            with_origin in any::<bool>(),
            codec in prop::sample::select(vec![Codec::None, Codec::Gzip, Codec::Lz4]),
            first in 0u64..(1 << 40),
            created in any::<i64>(),
        ) {
            let mut b = if with_origin { BatchBuilder::with_origin(origin_key(), first) } else { BatchBuilder::new() };
            for r in &recs {
                let fields: Vec<Field> = r.fields.iter().map(|(k, v)| Field::new(k.as_str(), v.as_str())).collect();
                let span = r.line.len() as u64 + u64::from(r.extra_span);
                b.push(&r.line, span, r.time, r.truncated, &fields);
            }
            let enc = Bytes::from(b.finish(codec, 1, created).unwrap());
            let batch = decode(&enc, &DecodeLimits::default()).unwrap();
            prop_assert_eq!(batch.records.len(), recs.len());
            prop_assert_eq!(batch.header.created_ms, created);
            let mut off = first;
            for (got, want) in batch.records.iter().zip(&recs) {
                prop_assert_eq!(&got.line[..], &want.line[..]);
                prop_assert_eq!(got.event_time_ms, want.time);
                prop_assert_eq!(got.truncated, want.truncated);
                prop_assert_eq!(got.fields.len(), want.fields.len());
                if with_origin {
                    prop_assert_eq!(got.offset, Some(off));
                } else {
                    prop_assert_eq!(got.offset, None);
                }
                off += got.span;
            }
        }

        /// `verify` (no records built) accepts and refuses exactly what `decode` does, with the
        /// same error, on payloads with a valid CRC but any bytes changed: what the collector
        /// stores without decoding must pass every check decoding makes.
        #[test]
        fn verify_agrees_with_decode_on_any_payload(
            recs in proptest::collection::vec(rec_strategy(), 1..12),
            with_origin in any::<bool>(),
            codec in prop::sample::select(vec![Codec::None, Codec::Gzip, Codec::Lz4]),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut b = if with_origin { BatchBuilder::with_origin(origin_key(), 7) } else { BatchBuilder::new() };
            for r in &recs {
                let fields: Vec<Field> = r.fields.iter().map(|(k, v)| Field::new(k.as_str(), v.as_str())).collect();
                b.push(&r.line, r.line.len() as u64 + u64::from(r.extra_span), r.time, r.truncated, &fields);
            }
            let enc = Bytes::from(b.finish(Codec::None, 1, 5).unwrap());
            let header = BatchHeader::parse(&enc).unwrap();
            let mut raw = enc[header.payload_start..].to_vec();
            for (at, byte) in &edits {
                let i = at.index(raw.len());
                raw[i] = *byte;
            }
            let sealed = Bytes::from(recompress(&enc, &header, &raw, codec, 1).unwrap());
            let limits = DecodeLimits::default();
            match (decode(&sealed, &limits), verify(&sealed, &limits)) {
                (Ok(d), Ok(h)) => prop_assert_eq!(d.header, h),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (d, v) => prop_assert!(false, "decode {:?} but verify {:?}", d.map(|_| ()), v.map(|_| ())),
            }
        }

        /// Any byte string at all: the decoder answers Ok or Err, never panics.
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&Bytes::from(buf.clone()), &DecodeLimits::default());
            let _ = verify(&Bytes::from(buf), &DecodeLimits::default());
        }

        /// Every single-byte change and every truncation of a valid batch is rejected.
        #[test]
        fn flipped_or_chopped_batches_are_rejected(at in any::<prop::sample::Index>(), xor in 1u8..=255, codec in prop::sample::select(vec![Codec::None, Codec::Gzip, Codec::Lz4])) {
            let enc = sample(codec);
            let i = at.index(enc.len());
            let mut flipped = enc.clone();
            flipped[i] ^= xor;
            prop_assert!(decode(&Bytes::from(flipped), &DecodeLimits::default()).is_err());
            prop_assert!(decode(&Bytes::from(enc[..i].to_vec()), &DecodeLimits::default()).is_err());
        }
    }
}
