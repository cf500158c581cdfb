//! A corpus of malformed batches, each named after what is wrong with it. Every one must be
//! refused with the error that names its problem, never a panic and never a wrong decode.

use bytes::Bytes;
use ferry_core::batch::{
    BatchBuilder, Codec, DecodeLimits, FIXED_HEADER_LEN, WireError, decode, verify,
};
use ferry_core::record::{FileId, OriginKey};
use std::io::Write;

fn key() -> OriginKey {
    OriginKey {
        agent_id: "agent-1".into(),
        file: FileId {
            dev: 1,
            inode: 2,
            fingerprint: 3,
            generation: 0,
        },
    }
}

fn valid(codec: Codec) -> Vec<u8> {
    let mut b = BatchBuilder::with_origin(key(), 0);
    for i in 0..10 {
        let line = format!("line {i}");
        b.push_line(line.as_bytes(), line.len() as u64 + 1);
    }
    b.finish(codec, 6, 42).unwrap()
}

/// Recomputes the CRC after a test edits a header field, so the decoder gets past the checksum
/// and must catch the edit itself.
fn reseal(buf: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..28]), &buf[FIXED_HEADER_LEN..]);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// A sealed batch of one record, codec `codec_id`, whose header claims 1 KiB decompressed
/// whatever `payload` really inflates to.
fn one_record_claiming_1kib(codec_id: u8, payload: &[u8]) -> Vec<u8> {
    let mut enc = Vec::new();
    enc.extend_from_slice(b"FRYB");
    enc.push(1);
    enc.push(codec_id);
    enc.extend_from_slice(&0u16.to_le_bytes());
    enc.extend_from_slice(&1u32.to_le_bytes());
    enc.extend_from_slice(&1024u32.to_le_bytes());
    enc.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    enc.extend_from_slice(&0i64.to_le_bytes());
    enc.extend_from_slice(&0u32.to_le_bytes());
    enc.extend_from_slice(payload);
    reseal(&mut enc);
    enc
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn err(buf: Vec<u8>) -> WireError {
    decode(&Bytes::from(buf), &limits()).expect_err("malformed batch decoded")
}

#[test]
fn empty_input() {
    assert_eq!(err(vec![]), WireError::Truncated { need: 32, have: 0 });
}

#[test]
fn truncated_at_every_length() {
    for codec in [Codec::None, Codec::Gzip, Codec::Lz4] {
        let enc = valid(codec);
        for n in 0..enc.len() {
            match err(enc[..n].to_vec()) {
                WireError::Truncated { .. } => {}
                other => panic!("{codec:?} cut at {n}: {other}"),
            }
        }
    }
}

#[test]
fn bad_crc() {
    let mut enc = valid(Codec::None);
    let last = enc.len() - 1;
    enc[last] ^= 0x20;
    assert!(matches!(err(enc), WireError::Checksum { .. }));
}

#[test]
fn wrong_magic() {
    let mut enc = valid(Codec::None);
    enc[0] = b'X';
    assert!(matches!(err(enc), WireError::BadMagic { .. }));
}

#[test]
fn wrong_version() {
    let mut enc = valid(Codec::None);
    enc[4] = 2;
    reseal(&mut enc);
    assert_eq!(err(enc), WireError::UnsupportedVersion(2));
}

#[test]
fn unknown_codec() {
    let mut enc = valid(Codec::None);
    enc[5] = 9;
    reseal(&mut enc);
    assert_eq!(err(enc), WireError::UnknownCodec(9));
}

#[test]
fn trailing_garbage() {
    let mut enc = valid(Codec::Gzip);
    enc.extend_from_slice(b"junk");
    assert_eq!(err(enc), WireError::TrailingBytes { trailing: 4 });
}

#[test]
fn record_count_lies() {
    let mut enc = valid(Codec::None);
    enc[8..12].copy_from_slice(&11u32.to_le_bytes());
    reseal(&mut enc);
    assert!(matches!(
        err(enc),
        WireError::RecordCount {
            declared: 11,
            actual: 10
        }
    ));
}

#[test]
fn span_does_not_match_origin_range() {
    let mut b = BatchBuilder::with_origin(key(), 0);
    b.push_line(b"abc", 4);
    let mut enc = b.finish(Codec::None, 0, 0).unwrap();
    // end_offset is the last 8 bytes of the origin section, just before the 1-record payload.
    let payload_len = 1 + 1 + 1 + 3;
    let end_at = enc.len() - payload_len - 8;
    enc[end_at..end_at + 8].copy_from_slice(&99u64.to_le_bytes());
    reseal(&mut enc);
    assert_eq!(
        err(enc),
        WireError::Span {
            declared: 99,
            actual: 4
        }
    );
}

#[test]
fn bomb_declared_over_limit() {
    for codec in [Codec::Gzip, Codec::Lz4] {
        let mut enc = valid(codec);
        enc[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut enc);
        assert!(matches!(err(enc), WireError::TooLarge { .. }), "{codec:?}");
    }
}

#[test]
fn gzip_bomb_inflating_past_its_declared_length() {
    // 64 MiB of zeros compresses to ~64 KiB; the header claims 1 KiB. The decoder must stop
    // after 1 KiB + 1 byte, not inflate the lot.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let payload = gz.finish().unwrap();
    let enc = one_record_claiming_1kib(1, &payload); // gzip
    let started = std::time::Instant::now();
    assert_eq!(
        err(enc),
        WireError::RawLength {
            declared: 1024,
            actual: 1025
        }
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn compressed_stream_cut_short_behind_a_valid_crc() {
    for codec in [Codec::Gzip, Codec::Lz4] {
        let mut b = BatchBuilder::new();
        for i in 0..1000 {
            b.push_line(format!("line number {i}").as_bytes(), 0);
        }
        let mut enc = b.finish(codec, 6, 0).unwrap();
        let cut = enc.len() - 20;
        enc.truncate(cut);
        let body_len = (enc.len() - FIXED_HEADER_LEN) as u32;
        enc[16..20].copy_from_slice(&body_len.to_le_bytes());
        reseal(&mut enc);
        assert!(
            matches!(
                err(enc),
                WireError::Decompress(_) | WireError::RawLength { .. }
            ),
            "{codec:?}"
        );
    }
}

#[test]
fn garbage_compressed_payload() {
    for codec in [Codec::Gzip, Codec::Lz4] {
        let mut enc = valid(codec);
        let start = enc.len() - 30;
        for b in &mut enc[start..] {
            *b = 0xAA;
        }
        reseal(&mut enc);
        // gzip notices in its stream; an LZ4 block may decode to the right length of garbage,
        // which the record parser then refuses.
        assert!(
            matches!(
                err(enc),
                WireError::Decompress(_)
                    | WireError::RawLength { .. }
                    | WireError::Record { .. }
                    | WireError::RecordCount { .. }
                    | WireError::Span { .. }
            ),
            "{codec:?}"
        );
    }
}

#[test]
fn record_line_longer_than_payload() {
    let mut b = BatchBuilder::new();
    b.push_line(b"hello", 0);
    let mut enc = b.finish(Codec::None, 0, 0).unwrap();
    let len_at = enc.len() - 6; // the line-length varint before "hello"
    enc[len_at] = 100;
    reseal(&mut enc);
    assert_eq!(
        err(enc),
        WireError::Record {
            index: 0,
            reason: "truncated line"
        }
    );
}

#[test]
fn agent_id_not_utf8() {
    let mut enc = valid(Codec::None);
    enc[FIXED_HEADER_LEN + 2] = 0xff;
    reseal(&mut enc);
    assert!(matches!(err(enc), WireError::Origin(_)));
}

#[test]
fn invalid_utf8_in_a_line_is_kept_as_bytes() {
    let mut b = BatchBuilder::new();
    b.push_line(b"caf\xe9 \xc3\x28 \xff", 0);
    let enc = Bytes::from(b.finish(Codec::Gzip, 1, 0).unwrap());
    let batch = decode(&enc, &limits()).unwrap();
    assert_eq!(&batch.records[0].line[..], b"caf\xe9 \xc3\x28 \xff");
}

#[test]
fn too_many_records_for_the_limit() {
    let enc = valid(Codec::None);
    let small = DecodeLimits {
        max_raw_bytes: 1 << 20,
        max_records: 5,
    };
    assert!(matches!(
        decode(&Bytes::from(enc), &small),
        Err(WireError::TooManyRecords {
            declared: 10,
            limit: 5
        })
    ));
}

#[test]
fn lz4_bomb_expanding_past_its_declared_length() {
    // 64 MiB of zeros is a tiny LZ4 block; the header claims 1 KiB. Decoding writes into a
    // buffer of exactly the declared size, so this fails without allocating 64 MiB.
    let payload = lz4_flex::block::compress(&vec![0u8; 64 << 20]);
    let enc = one_record_claiming_1kib(2, &payload); // lz4
    assert!(matches!(err(enc), WireError::Decompress(_)));
}

/// The LZ4 decoder runs without its bounds-checked ("safe") variant for speed; a block edited
/// at random — match offsets reaching before the output, lengths past either end, tokens cut —
/// must still be refused or decode to exactly the declared length, never panic or read outside
/// its buffers, and `verify` (which reuses a per-thread output buffer) must agree with `decode`
/// on every one. `FERRY_SEEDS=N` runs more.
#[test]
fn lz4_blocks_edited_at_random_are_refused_or_decode_exactly() {
    let seeds: u64 = std::env::var("FERRY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    // Lines that repeat in parts, so the block holds many matches (offsets) as well as literals.
    let mut b = BatchBuilder::with_origin(key(), 0);
    let mut span = 0;
    for i in 0..200u64 {
        let line = format!(
            "{{\"ts\":\"2026-12-05T12:{:02}:{:02}Z\",\"level\":\"{}\",\"msg\":\"request {} took {} ms\"}}",
            i % 60,
            (i * 7) % 60,
            ["info", "warn", "error"][(i % 3) as usize],
            i * 31,
            i % 17
        );
        b.push_line(line.as_bytes(), line.len() as u64 + 1);
        span += line.len() as u64 + 1;
    }
    let good = b.finish(Codec::Lz4, 6, 42).unwrap();
    let payload_len = good.len() - FIXED_HEADER_LEN;
    let (mut refused, mut decoded) = (0u64, 0u64);
    for seed in 1..=seeds {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut enc = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = FIXED_HEADER_LEN + (next() % payload_len as u64) as usize;
            enc[at] = match next() % 3 {
                0 => enc[at] ^ (1 << (next() % 8)),
                1 => 0xFF,
                _ => next() as u8,
            };
        }
        reseal(&mut enc);
        let enc = Bytes::from(enc);
        let decoded_now = decode(&enc, &limits());
        let verified = verify(&enc, &limits());
        match (&decoded_now, &verified) {
            (Ok(batch), Ok(_)) => {
                let bytes: u64 = batch.records.iter().map(|r| r.span).sum();
                assert_eq!(
                    bytes, span,
                    "seed {seed}: a decoded batch must keep its byte range"
                );
                decoded += 1;
            }
            (Err(_), Err(_)) => refused += 1,
            _ => panic!(
                "seed {seed}: decode and verify disagree: decode {:?}, verify {:?}",
                decoded_now.as_ref().map(|_| ()),
                verified.as_ref().map(|_| ())
            ),
        }
    }
    assert!(
        refused > seeds / 2,
        "most random edits must be refused ({refused} of {seeds})"
    );
    eprintln!(
        "{seeds} edited lz4 blocks: {refused} refused, {decoded} decoded to their declared length"
    );
}
