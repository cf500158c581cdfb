//! How a ferry record becomes a Kafka message and back.
//!
//! | ferry record                   | Kafka message                                                  |
//! |--------------------------------|----------------------------------------------------------------|
//! | `line` (bytes, exactly)        | value                                                          |
//! | value of the topic's key field | key (no key field configured, or the record lacks it: no key)  |
//! | `event_time_ms`                | timestamp (CreateTime); a record without one (or ≤ 0) gets the batch's ingest time (`created_ms`) |
//! | origin agent id                | header `ferry.agent` (UTF-8)                                   |
//! | origin file ([`FileId`])       | header `ferry.file`, `FileId`'s Display: `dev:inode:fingerprint:generation` (hex, hex, 16 hex, decimal) |
//! | origin byte offset             | header `ferry.offset`, decimal                                 |
//! | `truncated`                    | header `ferry.truncated` = `1`, only when true                 |
//! | each field `k = v`             | header `ferry.f.<k>` = `v` (UTF-8), in order                   |
//!
//! Reading is total: any Kafka message becomes a record, including a plain line some other
//! producer wrote without headers (no value reads as an empty line). Unknown headers are ignored.
//! The origin is all or nothing: all three origin headers well formed give an origin and an
//! offset; none gives neither; anything in between (one missing, a bad number, not UTF-8) is
//! counted in [`Decoded::malformed_headers`] and the record is kept without origin. A field
//! header whose value is missing or not UTF-8 is counted and skipped. The message timestamp
//! becomes the record's event time. The record's `span` is not carried (it is only meaningful
//! inside an agent batch) and reads as 0.

use bytes::Bytes;
use ferry_core::record::{Field, FileId, OriginKey, Record};
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const HEADER_AGENT: &str = "ferry.agent";
pub const HEADER_FILE: &str = "ferry.file";
pub const HEADER_OFFSET: &str = "ferry.offset";
pub const HEADER_TRUNCATED: &str = "ferry.truncated";
pub const HEADER_FIELD_PREFIX: &str = "ferry.f.";

/// The message key of a record: the value of `key_field` among its fields.
pub fn key_of<'a>(record: &'a Record, key_field: Option<&str>) -> Option<&'a str> {
    let k = key_field?;
    record
        .fields
        .iter()
        .find(|f| &*f.key == k)
        .map(|f| &*f.value)
}

/// The message timestamp of a record: its event time when known (and after the epoch), else
/// the ingest time of its batch.
pub fn timestamp_of(record: &Record, batch_created_ms: i64) -> i64 {
    match record.event_time_ms {
        Some(t) if t > 0 => t,
        _ => batch_created_ms,
    }
}

/// The headers of a record: its origin (if any) and its fields.
pub fn headers_of(origin: Option<&OriginKey>, record: &Record) -> OwnedHeaders {
    let file = origin.map(|o| o.file.to_string());
    let origin = origin.zip(file.as_deref()).map(|(o, f)| OriginHeaders {
        agent: &o.agent_id,
        file: f,
    });
    headers_with(origin.as_ref(), record)
}

/// The origin header values shared by every record of a batch, formatted once.
#[derive(Debug, Clone, Copy)]
pub struct OriginHeaders<'a> {
    pub agent: &'a str,
    /// `FileId`'s Display form.
    pub file: &'a str,
}

/// [`headers_of`] with the batch's origin strings already formatted.
pub fn headers_with(origin: Option<&OriginHeaders<'_>>, record: &Record) -> OwnedHeaders {
    use std::fmt::Write;
    let mut h = OwnedHeaders::new_with_capacity(3 + record.fields.len());
    if let (Some(o), Some(offset)) = (origin, record.offset) {
        let mut offset_text = String::with_capacity(20);
        let _ = write!(offset_text, "{offset}");
        h = h
            .insert(Header {
                key: HEADER_AGENT,
                value: Some(o.agent.as_bytes()),
            })
            .insert(Header {
                key: HEADER_FILE,
                value: Some(o.file.as_bytes()),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(offset_text.as_bytes()),
            });
    }
    if record.truncated {
        h = h.insert(Header {
            key: HEADER_TRUNCATED,
            value: Some(b"1".as_slice()),
        });
    }
    if !record.fields.is_empty() {
        let mut name = String::new();
        for f in &record.fields {
            name.clear();
            name.push_str(HEADER_FIELD_PREFIX);
            name.push_str(&f.key);
            h = h.insert(Header {
                key: &name,
                value: Some(f.value.as_bytes()),
            });
        }
    }
    h
}

/// A message read back as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub record: Record,
    /// Agent and file the line came from, when the message carried a well-formed origin.
    pub origin: Option<OriginKey>,
    /// ferry headers that were present but malformed (and ignored).
    pub malformed_headers: u32,
}

/// Parses `FileId`'s Display form back.
pub fn parse_file_id(s: &str) -> Option<FileId> {
    let mut it = s.split(':');
    let dev = u64::from_str_radix(it.next()?, 16).ok()?;
    let inode = u64::from_str_radix(it.next()?, 16).ok()?;
    let fingerprint = u64::from_str_radix(it.next()?, 16).ok()?;
    let generation = it.next()?.parse::<u32>().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some(FileId {
        dev,
        inode,
        fingerprint,
        generation,
    })
}

/// Reads a message (its value, timestamp and headers) as a record. Never fails, never panics.
pub fn decode<H: Headers>(
    value: Option<&[u8]>,
    timestamp_ms: Option<i64>,
    headers: Option<&H>,
) -> Decoded {
    let pairs = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| (h.key, h.value));
    decode_parts(value, timestamp_ms, pairs)
}

/// [`decode`] over plain (key, value) header pairs, so it is testable without librdkafka.
pub fn decode_parts<'a>(
    value: Option<&[u8]>,
    timestamp_ms: Option<i64>,
    headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Decoded {
    let mut malformed = 0u32;
    let (mut agent, mut file, mut offset) = (None, None, None);
    let mut origin_seen = 0u32;
    let mut origin_bad = false;
    let mut truncated = false;
    let mut fields = Vec::new();
    let text = |v: Option<&'a [u8]>| v.and_then(|b| std::str::from_utf8(b).ok());
    for (key, v) in headers {
        match key {
            HEADER_AGENT => {
                origin_seen += 1;
                match text(v) {
                    Some(s) => agent = Some(s.to_owned()),
                    None => origin_bad = true,
                }
            }
            HEADER_FILE => {
                origin_seen += 1;
                match text(v).and_then(parse_file_id) {
                    Some(f) => file = Some(f),
                    None => origin_bad = true,
                }
            }
            HEADER_OFFSET => {
                origin_seen += 1;
                match text(v).and_then(|s| s.parse::<u64>().ok()) {
                    Some(o) => offset = Some(o),
                    None => origin_bad = true,
                }
            }
            HEADER_TRUNCATED => match text(v) {
                Some("1") => truncated = true,
                Some("0") => {}
                _ => malformed += 1,
            },
            k => {
                if let Some(name) = k.strip_prefix(HEADER_FIELD_PREFIX) {
                    match text(v) {
                        Some(val) => fields.push(Field::new(name, val)),
                        None => malformed += 1,
                    }
                }
            }
        }
    }
    let origin = match (agent, file, offset) {
        (Some(agent_id), Some(file), Some(offset)) if !origin_bad && origin_seen == 3 => {
            Some((OriginKey { agent_id, file }, offset))
        }
        _ => {
            if origin_seen > 0 {
                malformed += 1;
            }
            None
        }
    };
    let record = Record {
        line: Bytes::copy_from_slice(value.unwrap_or_default()),
        event_time_ms: timestamp_ms,
        offset: origin.as_ref().map(|(_, o)| *o),
        span: 0,
        truncated,
        fields,
    };
    Decoded {
        record,
        origin: origin.map(|(k, _)| k),
        malformed_headers: malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> OriginKey {
        OriginKey {
            agent_id: "host-a".into(),
            file: FileId {
                dev: 0x801,
                inode: 77,
                fingerprint: 0xdead_beef,
                generation: 3,
            },
        }
    }

    fn owned_pairs(h: &OwnedHeaders) -> Vec<(String, Option<Vec<u8>>)> {
        h.iter()
            .map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec)))
            .collect()
    }

    fn decode_pairs(value: &[u8], ts: Option<i64>, pairs: &[(&str, Option<&[u8]>)]) -> Decoded {
        decode_parts(Some(value), ts, pairs.iter().copied())
    }

    #[test]
    fn headers_follow_the_table() {
        let mut r = Record::from_line(&b"GET /x 200"[..]);
        r.offset = Some(4096);
        r.truncated = true;
        r.fields = vec![Field::new("env", "prod"), Field::new("svc", "api")];
        let h = headers_of(Some(&key()), &r);
        let pairs = owned_pairs(&h);
        let want: Vec<(String, Option<Vec<u8>>)> = [
            ("ferry.agent", "host-a"),
            ("ferry.file", "801:4d:00000000deadbeef:3"),
            ("ferry.offset", "4096"),
            ("ferry.truncated", "1"),
            ("ferry.f.env", "prod"),
            ("ferry.f.svc", "api"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
        .collect();
        assert_eq!(pairs, want);
        assert_eq!(key_of(&r, Some("svc")), Some("api"));
        assert_eq!(key_of(&r, Some("nope")), None);
        assert_eq!(key_of(&r, None), None);
        assert_eq!(timestamp_of(&r, 42), 42);
        r.event_time_ms = Some(1_700_000_000_000);
        assert_eq!(timestamp_of(&r, 42), 1_700_000_000_000);
    }

    #[test]
    fn a_plain_message_without_headers_is_a_record() {
        let d = decode_pairs(b"hello from kcat", Some(5), &[]);
        assert_eq!(&d.record.line[..], b"hello from kcat");
        assert_eq!(d.record.event_time_ms, Some(5));
        assert_eq!(
            (d.origin, d.record.offset, d.malformed_headers),
            (None, None, 0)
        );
        let d = decode_parts(None, None, std::iter::empty());
        assert!(d.record.line.is_empty());
    }

    #[test]
    fn malformed_origin_headers_are_counted_and_the_record_kept() {
        let good: [(&str, Option<&[u8]>); 3] = [
            ("ferry.agent", Some(b"a")),
            ("ferry.file", Some(b"1:2:3:4")),
            ("ferry.offset", Some(b"10")),
        ];
        let d = decode_pairs(b"x", None, &good);
        assert_eq!(d.record.offset, Some(10));
        assert_eq!(d.malformed_headers, 0);
        type Pairs<'a> = Vec<(&'a str, Option<&'a [u8]>)>;
        let cases: Vec<Pairs<'_>> = vec![
            vec![good[0], good[1], ("ferry.offset", Some(b"ten"))],
            vec![good[0], good[1], ("ferry.offset", Some(b"-1"))],
            vec![good[0], good[1], ("ferry.offset", None)],
            vec![("ferry.agent", Some(b"\xff\xfe")), good[1], good[2]],
            vec![good[0], ("ferry.file", Some(b"1:2:3")), good[2]],
            vec![good[0], ("ferry.file", Some(b"1:2:3:4:5")), good[2]],
            vec![good[0], ("ferry.file", Some(b"zz:2:3:4")), good[2]],
            vec![good[0], good[2]],
            vec![good[1]],
        ];
        for c in cases {
            let d = decode_pairs(b"kept", None, &c);
            assert_eq!(&d.record.line[..], b"kept", "{c:?}");
            assert_eq!(d.origin, None, "{c:?}");
            assert_eq!(d.record.offset, None, "{c:?}");
            assert_eq!(d.malformed_headers, 1, "{c:?}");
        }
        let d = decode_pairs(
            b"x",
            None,
            &[
                ("ferry.f.ok", Some(b"v")),
                ("ferry.f.bad", Some(b"\xc3\x28")),
                ("ferry.f.null", None),
                ("ferry.truncated", Some(b"yes")),
                ("traceparent", Some(b"\xff")),
            ],
        );
        assert_eq!(d.record.fields, vec![Field::new("ok", "v")]);
        assert_eq!(d.malformed_headers, 3);
    }

    fn rec_strategy() -> impl Strategy<Value = (Record, bool)> {
        (
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of(1i64..i64::MAX),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            proptest::collection::vec(("[a-z.]{0,8}", "\\PC{0,12}"), 0..4),
        )
            .prop_map(|(line, time, offset, truncated, fields)| {
                let r = Record {
                    line: Bytes::from(line),
                    event_time_ms: time,
                    offset,
                    span: 0,
                    truncated,
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| Field::new(k.as_str(), v.as_str()))
                        .collect(),
                };
                (r, offset.is_some())
            })
    }

    proptest! {
        /// Record → headers/value/timestamp → record gives the same record (event time filled
        /// with the ingest time when it was unknown), origin included.
        #[test]
        fn records_round_trip((rec, with_origin) in rec_strategy(), created in 1i64..i64::MAX, agent in "\\PC{0,20}",
                              dev in any::<u64>(), inode in any::<u64>(), fp in any::<u64>(), generation in any::<u32>()) {
            let origin = OriginKey { agent_id: agent, file: FileId { dev, inode, fingerprint: fp, generation } };
            let origin = with_origin.then_some(origin);
            let h = headers_of(origin.as_ref(), &rec);
            let ts = timestamp_of(&rec, created);
            let d = decode(Some(&rec.line[..]), Some(ts), Some(&h));
            let mut want = rec.clone();
            want.event_time_ms = Some(rec.event_time_ms.unwrap_or(created));
            prop_assert_eq!(d.record, want);
            prop_assert_eq!(d.origin, origin);
            prop_assert_eq!(d.malformed_headers, 0);
        }

        /// Arbitrary headers never panic the decoder, and the line is always kept.
        #[test]
        fn any_headers_decode(value in proptest::collection::vec(any::<u8>(), 0..50),
                              hs in proptest::collection::vec((prop::sample::select(vec!["ferry.agent", "ferry.file", "ferry.offset", "ferry.truncated", "ferry.f.k", "other"]),
                                                               proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))), 0..8)) {
            let d = decode_parts(Some(&value), None, hs.iter().map(|(k, v)| (*k, v.as_deref())));
            prop_assert_eq!(&d.record.line[..], &value[..]);
        }
    }
}
