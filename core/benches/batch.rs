//! Encode and decode throughput of the batch format, in MiB/s of uncompressed line bytes.
//!
//! `cargo bench -p ferry-core --bench batch`. The baseline in the same run is a plain `memcpy`
//! of the same lines into one buffer (the least any encoder must do).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_core::batch::{BatchBuilder, Codec, DecodeLimits, decode, verify};
use ferry_core::record::{FileId, OriginKey};
use std::hint::black_box;

/// ~200-byte JSON log lines, like the agent benchmark's input.
fn lines(total: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    while size < total {
        let l = format!(
            r#"{{"ts":"2026-11-24T06:{:02}:{:02}.{:03}Z","level":"{}","service":"svc-{}","msg":"request handled","latency_ms":{},"user":"u{}","seq":{i}}}"#,
            (i / 60) % 60,
            i % 60,
            i % 1000,
            ["info", "warn", "error", "debug"][(i % 4) as usize],
            i % 17,
            (i * 7919) % 1500,
            (i * 104_729) % 100_000
        );
        size += l.len() + 1;
        out.push(l.into_bytes());
        i += 1;
    }
    out
}

fn key() -> OriginKey {
    OriginKey {
        agent_id: "bench".into(),
        file: FileId {
            dev: 1,
            inode: 2,
            fingerprint: 3,
            generation: 0,
        },
    }
}

fn bench(c: &mut Criterion) {
    let lines = lines(1 << 20);
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut g = c.benchmark_group("batch_1MiB");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("baseline_memcpy", |b| {
        let mut buf = Vec::with_capacity(bytes);
        b.iter(|| {
            buf.clear();
            for l in &lines {
                buf.extend_from_slice(l);
                buf.push(b'\n');
            }
            black_box(buf.len())
        })
    });
    let mut builder = BatchBuilder::new();
    let mut out = Vec::new();
    for (name, codec, level) in [
        ("encode_none", Codec::None, 0),
        ("encode_gzip1", Codec::Gzip, 1),
        ("encode_gzip6", Codec::Gzip, 6),
        ("encode_lz4", Codec::Lz4, 0),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                builder.reset(Some((key(), 0)));
                for l in &lines {
                    builder.push_line(l, l.len() as u64 + 1);
                }
                builder.finish_into(codec, level, 0, &mut out).ok();
                black_box(out.len())
            })
        });
    }
    for (name, codec, level) in [
        ("decode_none", Codec::None, 0),
        ("decode_gzip1", Codec::Gzip, 1),
        ("decode_lz4", Codec::Lz4, 0),
    ] {
        builder.reset(Some((key(), 0)));
        for l in &lines {
            builder.push_line(l, l.len() as u64 + 1);
        }
        let enc = Bytes::from(builder.finish(codec, level, 0).unwrap_or_default());
        let limits = DecodeLimits::default();
        g.bench_function(name, |b| {
            b.iter(|| black_box(decode(&enc, &limits).map(|b| b.records.len()).unwrap_or(0)))
        });
        // The same checks without building records: what the collector runs on a batch it
        // stores as received.
        let verify_name = name.replace("decode", "verify");
        g.bench_function(verify_name.as_str(), |b| {
            b.iter(|| black_box(verify(&enc, &limits).map(|h| h.record_count).unwrap_or(0)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
