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
use ferry_core::record::{Field, Record};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, RecordSet, TimestampType,
};
use std::io::Read;

/// The field a Kafka key is kept in when the topic has no `key_field`.
pub const DEFAULT_KEY_FIELD: &str = "kafka.key";

/// Decodes a Produce partition's record batches; each batch's payload decompresses to at most
/// `max_raw` bytes, else the whole partition's data is refused.
pub fn decode_batches(data: &Bytes, max_raw: usize) -> Result<Vec<RecordSet>, String> {
    let mut buf = data.clone();
    let mut sets = Vec::new();
    let decompress = |b: &mut Bytes, c: Compression| -> anyhow::Result<Bytes> {
        decompress_bounded(b, c, max_raw).map_err(anyhow::Error::msg)
    };
    while !buf.is_empty() {
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(&decompress))
            .map_err(|e| format!("malformed record batch: {e:#}"))?;
        sets.push(set);
    }
    Ok(sets)
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

/// A produced batch's records as ferry records (control records are skipped).
pub fn to_ferry(set: &RecordSet, key_field: &str) -> Result<Vec<Record>, String> {
    let mut out = Vec::with_capacity(set.records.len());
    for r in set.records.iter().filter(|r| !r.control) {
        let mut fields = Vec::with_capacity(r.headers.len() + usize::from(r.key.is_some()));
        if let Some(k) = &r.key {
            let k = std::str::from_utf8(k).map_err(|_| {
                format!("record at offset delta {}: its key is not UTF-8", r.offset)
            })?;
            fields.push(Field::new(key_field, k));
        }
        for (name, v) in &r.headers {
            let v = match v {
                Some(v) => std::str::from_utf8(v).map_err(|_| {
                    format!(
                        "record at offset delta {}: header {:?} is not UTF-8",
                        r.offset,
                        name.as_str()
                    )
                })?,
                None => "",
            };
            fields.push(Field::new(name.as_str(), v));
        }
        out.push(Record {
            line: r.value.clone().unwrap_or_default(),
            event_time_ms: (r.timestamp > 0).then_some(r.timestamp),
            offset: None,
            span: 1,
            truncated: false,
            fields,
        });
    }
    Ok(out)
}

/// Appends one stored batch (its records numbered from `base_offset`) as a Kafka record
/// batch (format v2, uncompressed) to `out`.
pub fn encode_stored(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_codec_decodes_to_the_same_ferry_records_and_back() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let sets =
                decode_batches(&produced(c), 1 << 20).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(sets.len(), 1);
            let recs = to_ferry(&sets[0], DEFAULT_KEY_FIELD).expect("to ferry");
            assert_eq!(recs.len(), 2, "{c:?}");
            assert_eq!(&recs[0].line[..], b"first line");
            assert_eq!(recs[0].event_time_ms, Some(1_700_000_000_000));
            assert_eq!(
                recs[0].fields,
                vec![Field::new("kafka.key", "u1"), Field::new("svc", "api")]
            );
            assert!(recs[1].fields.is_empty());
            // Back to Kafka at offsets 40, 41: key and header where they were.
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
            let e = decode_batches(&buf, 100_000).expect_err("over the bound");
            assert!(e.contains("100000"), "{c:?}: {e}");
            assert!(
                decode_batches(&buf, 300_000).is_ok(),
                "{c:?} within the bound"
            );
        }
    }

    #[test]
    fn garbage_and_truncated_batches_are_errors_not_panics() {
        let good = produced(Compression::Gzip);
        for cut in [1, 10, 30, 61, good.len() - 1] {
            assert!(
                decode_batches(&good.slice(..cut), 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..500 {
            let mut g = good.to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % g.len();
            g[at] ^= (seed >> 32) as u8 | 1;
            let _ = decode_batches(&Bytes::from(g), 1 << 20);
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
        let sets = decode_batches(&buf.freeze(), 1 << 20).expect("decodes");
        assert!(
            to_ferry(&sets[0], "k")
                .expect_err("key")
                .contains("not UTF-8")
        );
    }
}
