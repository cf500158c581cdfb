//! Kafka records ↔ ferry records, the one mapping both directions use (docs/kafka.md):
//!
//! | Kafka record           | ferry record                                                        |
//! |------------------------|---------------------------------------------------------------------|
//! | value                  | `line` (bytes, exactly; no value: an empty line)                    |
//! | key                    | field named by the topic's `key_field`, else `kafka.key` (UTF-8)    |
//! | header `k` = `v`       | field `k` = `v` (UTF-8), in order                                   |
//! | timestamp (CreateTime) | `event_time_ms` (a timestamp ≤ 0 means none)                        |
//!
//! Read back, a record's timestamp is its event time, else its batch's ingest time; its key is
//! the key field's value; every other field is a header. Keys and header values that are not
//! UTF-8 are refused at produce (`INVALID_RECORD`), since fields are text everywhere in ferry.
//!
//! Produced batches are decompressed here with a bound (`limits.max_raw_bytes`), not by the
//! codec crate's unbounded readers, so a small compressed frame cannot expand without limit.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::Compression;
use std::io::Read;

/// The field a Kafka key is kept in when the topic has no `key_field`.
pub const DEFAULT_KEY_FIELD: &str = "kafka.key";

/// One produced record batch, converted: the producer's id and first sequence number (when
/// it is an idempotent producer's), and its records in a ferry batch builder.
pub struct Converted {
    pub producer: Option<(i64, i32)>,
    pub builder: ferry_core::batch::BatchBuilder,
}

/// Why a produced partition's data was refused: a Kafka error code and what was wrong.
pub type Refusal = (i16, String);

const CORRUPT_MESSAGE: i16 = 2;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
const INVALID_RECORD: i16 = 87;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

/// Converts a Produce partition's record batches (format v2) straight into ferry batches:
/// the header and CRC-32C checked, the records decompressed with a bound (`max_raw`) and read
/// in place, each pushed into the builder `make` gives for its batch (by producer) — no record
/// is materialised in between. Control batches are skipped; transactional ones refused.
pub fn convert(
    data: &[u8],
    max_raw: usize,
    key_field: &str,
    mut make: impl FnMut(Option<(i64, i32)>) -> ferry_core::batch::BatchBuilder,
) -> Result<Vec<Converted>, Refusal> {
    let corrupt = |what: &str| (CORRUPT_MESSAGE, format!("malformed record batch: {what}"));
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 61 {
            return Err(corrupt("truncated header"));
        }
        let batch_len = i32::from_be_bytes(be4(&rest[8..12]));
        let total = usize::try_from(batch_len)
            .ok()
            .filter(|&n| n >= 49)
            .map(|n| n + 12)
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| corrupt("batch length out of bounds"))?;
        let (b, next) = rest.split_at(total);
        rest = next;
        if b[16] != 2 {
            return Err((
                UNSUPPORTED_FOR_MESSAGE_FORMAT,
                format!("message format v{} is not supported (v2 only)", b[16]),
            ));
        }
        if crc32c::crc32c(&b[21..]) != u32::from_be_bytes(be4(&b[17..21])) {
            return Err(corrupt("CRC-32C mismatch"));
        }
        let attributes = i16::from_be_bytes([b[21], b[22]]);
        if attributes & 0x20 != 0 {
            continue; // control records (transaction markers): nothing to store
        }
        if attributes & 0x10 != 0 {
            return Err((
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "transactional batches are not supported by ferry's Kafka listener".into(),
            ));
        }
        let base_ts = i64::from_be_bytes(be8(&b[27..35]));
        let count = usize::try_from(i32::from_be_bytes(be4(&b[57..61])))
            .map_err(|_| corrupt("negative record count"))?;
        let compression = match attributes & 7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            c => return Err(corrupt(&format!("unknown compression {c}"))),
        };
        let mut payload = Bytes::copy_from_slice(&b[61..]);
        let payload = if compression == Compression::None {
            payload
        } else {
            decompress_bounded(&mut payload, compression, max_raw)
                .map_err(|e| (CORRUPT_MESSAGE, e))?
        };
        let producer = producer_of(b);
        let mut builder = make(producer);
        read_records(&payload, count, base_ts, key_field, &mut builder)?;
        out.push(Converted { producer, builder });
    }
    Ok(out)
}

/// The producer id and base sequence of a record batch (format v2) when it is an idempotent
/// producer's (both set), read from its header alone; `None` otherwise or when the header is
/// cut short. Header: base offset (8), length (4), leader epoch (4), magic (1), CRC (4),
/// attributes (2), last offset delta (4), first and max timestamp (8 + 8), producer id (8),
/// producer epoch (2), base sequence (4).
pub fn producer_of(batch: &[u8]) -> Option<(i64, i32)> {
    let producer_id = i64::from_be_bytes(be8(batch.get(43..51)?));
    let base_seq = i32::from_be_bytes(be4(batch.get(53..57)?));
    (producer_id >= 0 && base_seq >= 0).then_some((producer_id, base_seq))
}

fn be4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn be8(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Reads `count` records (Kafka's record format v2) from `payload` into `builder`.
fn read_records(
    payload: &[u8],
    count: usize,
    base_ts: i64,
    key_field: &str,
    builder: &mut ferry_core::batch::BatchBuilder,
) -> Result<(), Refusal> {
    let mut c = Cursor(payload);
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for n in 0..count {
        let bad = |what: &str| (CORRUPT_MESSAGE, format!("record {n}: {what}"));
        let len = c.varint().ok_or_else(|| bad("truncated length"))?;
        let mut r = Cursor(c.take(len).ok_or_else(|| bad("length past the batch"))?);
        r.take(1).ok_or_else(|| bad("truncated"))?; // attributes, unused
        let ts_delta = r.varint_i64().ok_or_else(|| bad("truncated timestamp"))?;
        r.varint().ok_or_else(|| bad("truncated offset delta"))?;
        let key = r.nullable().ok_or_else(|| bad("truncated key"))?;
        let value = r.nullable().ok_or_else(|| bad("truncated value"))?;
        let headers = r.varint().ok_or_else(|| bad("truncated header count"))?;
        fields.clear();
        if let Some(k) = key {
            let k = std::str::from_utf8(k)
                .map_err(|_| (INVALID_RECORD, format!("record {n}: its key is not UTF-8")))?;
            fields.push((key_field, k));
        }
        for _ in 0..headers {
            let name_len = r.varint().ok_or_else(|| bad("truncated header"))?;
            let name = r.take(name_len).ok_or_else(|| bad("truncated header"))?;
            let v = r.nullable().ok_or_else(|| bad("truncated header value"))?;
            let name = std::str::from_utf8(name).map_err(|_| {
                (
                    INVALID_RECORD,
                    format!("record {n}: a header name is not UTF-8"),
                )
            })?;
            let v = std::str::from_utf8(v.unwrap_or_default()).map_err(|_| {
                (
                    INVALID_RECORD,
                    format!("record {n}: header {name:?} is not UTF-8"),
                )
            })?;
            fields.push((name, v));
        }
        if !r.0.is_empty() {
            return Err(bad("bytes past its end"));
        }
        let ts = base_ts.wrapping_add(ts_delta);
        builder.push_pairs(
            value.unwrap_or_default(),
            1,
            (ts > 0).then_some(ts),
            &fields,
        );
    }
    if !c.0.is_empty() {
        return Err((CORRUPT_MESSAGE, "bytes past the last record".into()));
    }
    Ok(())
}

/// Reads Kafka's zigzag varints and length-prefixed byte strings, never past its slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn varint_i64(&mut self) -> Option<i64> {
        let mut v: u64 = 0;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        None
    }

    /// A non-negative length.
    fn varint(&mut self) -> Option<usize> {
        usize::try_from(self.varint_i64()?).ok()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    /// A length-prefixed string where -1 is null: `Some(None)` for null.
    fn nullable(&mut self) -> Option<Option<&'a [u8]>> {
        match self.varint_i64()? {
            -1 => Some(None),
            n => Some(Some(self.take(usize::try_from(n).ok()?)?)),
        }
    }
}

fn decompress_bounded(b: &mut Bytes, c: Compression, max_raw: usize) -> Result<Bytes, String> {
    let input = std::mem::take(b);
    let limit = max_raw as u64 + 1;
    let mut out = Vec::new();
    let read = match c {
        Compression::None => return Ok(input),
        Compression::Gzip => flate2::read::GzDecoder::new(&input[..])
            .take(limit)
            .read_to_end(&mut out),
        Compression::Lz4 => {
            lz4::Decoder::new(&input[..]).and_then(|d| d.take(limit).read_to_end(&mut out))
        }
        Compression::Zstd => zstd::stream::read::Decoder::new(&input[..])
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
        Compression::Snappy => {
            out = snappy(&input, max_raw)?;
            Ok(out.len())
        }
    };
    read.map_err(|e| format!("{c:?} payload does not decompress: {e}"))?;
    if out.len() > max_raw {
        return Err(format!(
            "{c:?} payload decompresses to more than {max_raw} bytes (limits.max_raw_bytes)"
        ));
    }
    Ok(Bytes::from(out))
}

/// Snappy as Kafka's clients write it: either raw snappy, or the xerial framing (a magic
/// header, then length-prefixed raw snappy blocks). Each block's declared length is checked
/// against the bound before it is decompressed.
fn snappy(input: &[u8], max_raw: usize) -> Result<Vec<u8>, String> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let mut out = Vec::new();
    let one = |block: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(block).map_err(|e| format!("snappy: {e}"))?;
        if out.len() + n > max_raw {
            return Err(format!(
                "snappy payload decompresses to more than {max_raw} bytes (limits.max_raw_bytes)"
            ));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| format!("snappy: {e}"))?;
        Ok(())
    };
    if input.len() >= 16 && input.starts_with(XERIAL) {
        let mut rest = &input[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err("snappy: truncated xerial block length".into());
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err("snappy: truncated xerial block".into());
            }
            one(&rest[..n], &mut out)?;
            rest = &rest[n..];
        }
    } else {
        one(input, &mut out)?;
    }
    Ok(out)
}

/// Appends the records of one stored batch's decompressed payload `raw` (`record_count`
/// records, the first at `base_offset`), from record `skip` on, as one Kafka record batch
/// (format v2, uncompressed, CRC-32C) to `out`, reading them in place: the key is the value
/// of the `key_field` field, every other field a header, the timestamp the event time (else
/// `ingest_ms`). Nothing is appended when no record is left.
pub fn encode_stored_raw(
    out: &mut BytesMut,
    base_offset: u64,
    ingest_ms: i64,
    raw: &[u8],
    record_count: u32,
    skip: usize,
    key_field: &str,
) -> Result<(), ferry_core::batch::WireError> {
    use bytes::BufMut;
    let start = out.len();
    out.put_i64((base_offset + skip as u64) as i64);
    out.put_i32(0); // batch length, below
    out.put_i32(0); // partition leader epoch
    out.put_i8(2); // magic
    out.put_u32(0); // CRC-32C, below
    let crc_from = out.len();
    out.put_i16(0); // attributes: no compression, CreateTime
    out.put_i32(0); // last offset delta, below
    out.put_i64(0); // first timestamp, below
    out.put_i64(0); // max timestamp, below
    out.put_i64(-1); // producer id
    out.put_i16(-1); // producer epoch
    out.put_i32(-1); // base sequence
    out.put_i32(0); // record count, below
    let mut index = 0usize;
    let mut n: i64 = 0;
    let mut first_ts: Option<i64> = None;
    let mut max_ts = i64::MIN;
    let key_field = key_field.as_bytes();
    ferry_core::batch::visit_records(raw, record_count, |r| {
        index += 1;
        if index <= skip {
            return;
        }
        let ts = r.event_time_ms.filter(|&t| t > 0).unwrap_or(ingest_ms);
        let first = *first_ts.get_or_insert(ts);
        max_ts = max_ts.max(ts);
        let mut key: Option<&[u8]> = None;
        let mut headers = 0usize;
        let mut headers_len = 0usize;
        for (k, v) in r.fields() {
            if key.is_none() && k == key_field {
                key = Some(v);
            } else {
                headers += 1;
                headers_len +=
                    varint_len(k.len() as i64) + k.len() + varint_len(v.len() as i64) + v.len();
            }
        }
        let ts_delta = ts.wrapping_sub(first);
        let key_len = key.map_or(-1, |k| k.len() as i64);
        let body = 1
            + varint_len(ts_delta)
            + varint_len(n)
            + varint_len(key_len)
            + key.map_or(0, <[u8]>::len)
            + varint_len(r.line.len() as i64)
            + r.line.len()
            + varint_len(headers as i64)
            + headers_len;
        put_varint(out, body as i64);
        out.put_i8(0);
        put_varint(out, ts_delta);
        put_varint(out, n);
        put_varint(out, key_len);
        if let Some(k) = key {
            out.extend_from_slice(k);
        }
        put_varint(out, r.line.len() as i64);
        out.extend_from_slice(r.line);
        put_varint(out, headers as i64);
        let mut key_seen = false;
        for (k, v) in r.fields() {
            if !key_seen && k == key_field {
                key_seen = true;
                continue;
            }
            put_varint(out, k.len() as i64);
            out.extend_from_slice(k);
            put_varint(out, v.len() as i64);
            out.extend_from_slice(v);
        }
        n += 1;
    })?;
    if n == 0 {
        out.truncate(start);
        return Ok(());
    }
    let len = (out.len() - start - 12) as i32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    out[crc_from + 2..crc_from + 6].copy_from_slice(&((n - 1) as i32).to_be_bytes());
    out[crc_from + 6..crc_from + 14].copy_from_slice(&first_ts.unwrap_or(ingest_ms).to_be_bytes());
    out[crc_from + 14..crc_from + 22].copy_from_slice(&max_ts.to_be_bytes());
    out[crc_from + 36..crc_from + 40].copy_from_slice(&(n as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[crc_from..]);
    out[crc_from - 4..crc_from].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Kafka's signed (zigzag) varint.
fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.extend_from_slice(&[(z as u8) | 0x80]);
        z >>= 7;
    }
    out.extend_from_slice(&[z as u8]);
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::record::{Field, Record};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    // The reference: kafka-protocol's own encoder over materialised records, which
    // `encode_stored_raw` must agree with.
    /// Appends one stored batch (its records numbered from `base_offset`) as a Kafka record
    /// batch (format v2, uncompressed) to `out`.
    fn encode_stored(
        out: &mut BytesMut,
        base_offset: u64,
        ingest_ms: i64,
        records: &[Record],
        key_field: &str,
    ) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let kafka: Vec<KafkaRecord> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut k = to_kafka(r, base_offset + i as u64, ingest_ms, key_field);
                // The codec starts a new batch wherever offset − sequence changes: numbering the
                // records from 0 keeps the stored batch one Kafka batch.
                k.sequence = i as i32;
                k
            })
            .collect();
        RecordBatchEncoder::encode(
            out,
            &kafka,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
    }

    fn to_kafka(r: &Record, offset: u64, ingest_ms: i64, key_field: &str) -> KafkaRecord {
        let mut key = None;
        let mut headers = IndexMap::with_capacity(r.fields.len());
        for f in &r.fields {
            if key.is_none() && &*f.key == key_field {
                key = Some(Bytes::copy_from_slice(f.value.as_bytes()));
            } else {
                headers.insert(
                    StrBytes::from_string(f.key.to_string()),
                    Some(Bytes::copy_from_slice(f.value.as_bytes())),
                );
            }
        }
        KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: offset as i64,
            sequence: -1,
            timestamp: match r.event_time_ms {
                Some(t) if t > 0 => t,
                _ => ingest_ms,
            },
            key,
            value: Some(r.line.clone()),
            headers,
        }
    }

    fn kafka_record(
        offset: i64,
        key: Option<&str>,
        value: &str,
        headers: &[(&str, &str)],
    ) -> KafkaRecord {
        KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        StrBytes::from_string((*k).into()),
                        Some(Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
        }
    }

    fn produced(compression: Compression) -> Bytes {
        let recs = [
            kafka_record(0, Some("u1"), "first line", &[("svc", "api")]),
            kafka_record(1, None, "second line", &[]),
        ];
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    /// Converts produced bytes the way Produce does and reads the ferry batches back.
    fn ferry_records(data: &Bytes, max_raw: usize) -> Result<Vec<Record>, Refusal> {
        let conv = convert(data, max_raw, DEFAULT_KEY_FIELD, |_| {
            ferry_core::batch::BatchBuilder::new()
        })?;
        let mut out = Vec::new();
        for c in conv {
            let enc = Bytes::from(
                c.builder
                    .finish(ferry_core::batch::Codec::None, 0, 1)
                    .expect("finish"),
            );
            out.extend(
                ferry_core::batch::decode(&enc, &Default::default())
                    .expect("decodes")
                    .records,
            );
        }
        Ok(out)
    }

    #[test]
    fn every_codec_decodes_to_the_same_ferry_records_and_back() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let recs =
                ferry_records(&produced(c), 1 << 20).unwrap_or_else(|e| panic!("{c:?}: {e:?}"));
            assert_eq!(recs.len(), 2, "{c:?}");
            assert_eq!(&recs[0].line[..], b"first line");
            assert_eq!(recs[0].event_time_ms, Some(1_700_000_000_000));
            assert_eq!(recs[1].event_time_ms, Some(1_700_000_000_001));
            assert_eq!(
                recs[0].fields,
                vec![Field::new("kafka.key", "u1"), Field::new("svc", "api")]
            );
            assert!(recs[1].fields.is_empty());
            // Back to Kafka at offsets 40, 41: key and header where they were, one batch.
            let mut out = BytesMut::new();
            encode_stored(&mut out, 40, 5, &recs, DEFAULT_KEY_FIELD).expect("encode");
            let back = RecordBatchDecoder::decode(&mut out.freeze()).expect("decode");
            assert_eq!(back.records.len(), 2);
            assert_eq!(back.records[0].offset, 40);
            assert_eq!(back.records[1].offset, 41);
            assert_eq!(back.records[0].key.as_deref(), Some(&b"u1"[..]));
            assert_eq!(back.records[0].headers.len(), 1);
            assert_eq!(back.records[1].key, None);
            assert_eq!(back.records[1].value.as_deref(), Some(&b"second line"[..]));
        }
    }

    #[test]
    fn a_payload_expanding_past_the_bound_is_refused_for_every_codec() {
        let big = "x".repeat(200_000);
        for c in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &[kafka_record(0, None, &big, &[])],
                &RecordEncodeOptions {
                    version: 2,
                    compression: c,
                },
            )
            .expect("encode");
            let buf = buf.freeze();
            assert!(buf.len() < 20_000, "{c:?} compresses: {}", buf.len());
            let e = ferry_records(&buf, 100_000).expect_err("over the bound");
            assert!(e.1.contains("100000"), "{c:?}: {e:?}");
            assert!(
                ferry_records(&buf, 300_000).is_ok(),
                "{c:?} within the bound"
            );
        }
    }

    #[test]
    fn garbage_and_truncated_batches_are_errors_not_panics() {
        let good = produced(Compression::Gzip);
        for cut in [1, 10, 30, 61, good.len() - 1] {
            assert!(
                ferry_records(&good.slice(..cut), 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        // One flipped byte anywhere: the CRC (or the header) catches it.
        for at in 0..good.len() {
            let mut g = good.to_vec();
            g[at] ^= 0x5a;
            let r = ferry_records(&Bytes::from(g), 1 << 20);
            // The base offset, batch-length-preserving epoch and (unchecked) first bytes may
            // change without harm; anything the CRC covers must be refused.
            if at >= 21 {
                assert!(r.is_err(), "a flipped byte at {at} was accepted");
            }
        }
        // Garbage with a valid CRC: the record reader refuses it without panicking.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..500 {
            let mut g = produced(Compression::None).to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 61 + (seed as usize) % (g.len() - 61);
            g[at] ^= (seed >> 32) as u8 | 1;
            let crc = crc32c::crc32c(&g[21..]).to_be_bytes();
            g[17..21].copy_from_slice(&crc);
            let _ = ferry_records(&Bytes::from(g), 1 << 20);
        }
        let mut not_utf8 = kafka_record(0, None, "v", &[]);
        not_utf8.key = Some(Bytes::from_static(&[0xff, 0xfe]));
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[not_utf8],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        let e = ferry_records(&buf.freeze(), 1 << 20).expect_err("key");
        assert_eq!(e.0, INVALID_RECORD);
        assert!(e.1.contains("not UTF-8"), "{e:?}");
    }

    #[test]
    fn the_in_place_encoder_agrees_with_kafka_protocols_from_any_skip() {
        let mut b = ferry_core::batch::BatchBuilder::new();
        for i in 0..20 {
            let key = format!("k{i}");
            let fields: Vec<(&str, &str)> = match i % 4 {
                0 => vec![],
                1 => vec![(DEFAULT_KEY_FIELD, key.as_str())],
                2 => vec![("svc", "api"), (DEFAULT_KEY_FIELD, key.as_str()), ("x", "")],
                _ => vec![("only", "header")],
            };
            let t = if i % 3 == 0 {
                None
            } else {
                Some(1_700_000_000_000 + i * 997 - 5_000)
            };
            b.push_pairs(format!("line {i}").as_bytes(), 1, t, &fields);
        }
        let enc = Bytes::from(
            b.finish(ferry_core::batch::Codec::Lz4, 0, 3)
                .expect("finish"),
        );
        let limits = ferry_core::batch::DecodeLimits::default();
        let decoded = ferry_core::batch::decode(&enc, &limits).expect("decode");
        let h = &decoded.header;
        let raw =
            ferry_core::batch::decompress(enc.slice(h.payload_start..h.total_len), h, &limits)
                .expect("raw");
        for skip in [0usize, 1, 7, 19, 20] {
            let mut ours = BytesMut::new();
            encode_stored_raw(
                &mut ours,
                100,
                1_650_000_000_000,
                &raw,
                h.record_count,
                skip,
                DEFAULT_KEY_FIELD,
            )
            .expect("encode");
            let mut theirs = BytesMut::new();
            encode_stored(
                &mut theirs,
                100 + skip as u64,
                1_650_000_000_000,
                &decoded.records[skip..],
                DEFAULT_KEY_FIELD,
            )
            .expect("encode");
            if skip == 20 {
                assert!(ours.is_empty() && theirs.is_empty());
                continue;
            }
            // The codec checks the CRC and lengths of ours as it decodes.
            let a = RecordBatchDecoder::decode(&mut ours.freeze()).expect("ours decodes");
            let b = RecordBatchDecoder::decode(&mut theirs.freeze()).expect("theirs decodes");
            let view = |r: &KafkaRecord| {
                (
                    r.offset,
                    r.timestamp,
                    r.key.clone(),
                    r.value.clone(),
                    r.headers.clone(),
                )
            };
            assert_eq!(
                a.records.iter().map(view).collect::<Vec<_>>(),
                b.records.iter().map(view).collect::<Vec<_>>(),
                "skip {skip}"
            );
            assert_eq!(a.records.len(), 20 - skip);
        }
    }
}
