//! Collector-path produce throughput into a real broker (tansu, memory storage), next to
//! rdkafka's own `FutureProducer` writing the same line bytes in the same run.
//!
//! `cargo bench -p ferry-kafka --bench throughput [-- MIB]` (default 32 MiB per case). Every
//! case uses acks=all and the idempotent producer; ferry's `send_batch` sends 1 MiB batches of
//! ~200-byte JSON lines with origin headers and up to 4 batches in flight (like concurrent
//! requests to the collector); the baseline enqueues bare payloads and awaits every report.

use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, Codec, DecodeLimits};
use ferry_core::record::{FileId, OriginKey};
use ferry_kafka::testing::Tansu;
use ferry_kafka::{Compression, KafkaConfig, KafkaSink};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Instant;

const BATCH_RAW_BYTES: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

fn batches(total_bytes: usize) -> Vec<Batch> {
    let origin = OriginKey {
        agent_id: "bench-host".into(),
        file: FileId {
            dev: 1,
            inode: 2,
            fingerprint: 3,
            generation: 0,
        },
    };
    let mut out = Vec::new();
    let mut produced = 0usize;
    let mut offset = 0u64;
    let mut i = 0u64;
    while produced < total_bytes {
        let mut b = BatchBuilder::with_origin(origin.clone(), offset);
        while b.raw_len() < BATCH_RAW_BYTES {
            let line = format!(
                "{{\"ts\":\"2026-11-24T07:00:{:02}.{:03}Z\",\"level\":\"{}\",\"svc\":\"checkout\",\"user\":\"u{}\",\"path\":\"/api/v1/orders/{}\",\"status\":{},\"ms\":{}}}",
                i % 60,
                i % 1000,
                if i.is_multiple_of(10) {
                    "error"
                } else {
                    "info"
                },
                i % 5000,
                i,
                200 + (i % 5) * 100,
                i % 977
            );
            b.push_line(line.as_bytes(), line.len() as u64 + 1);
            offset += line.len() as u64 + 1;
            produced += line.len();
            i += 1;
        }
        let enc = Bytes::from(
            b.finish(Codec::None, 0, ferry_core::now_ms())
                .expect("encode"),
        );
        out.push(batch::decode(&enc, &DecodeLimits::default()).expect("decode"));
    }
    out
}

fn line_bytes(batches: &[Batch]) -> usize {
    batches
        .iter()
        .flat_map(|b| &b.records)
        .map(|r| r.line.len())
        .sum()
}

async fn ferry_sink(
    brokers: &str,
    compression: Compression,
    topic: &str,
    data: Arc<Vec<Batch>>,
) -> f64 {
    let mut config = KafkaConfig::new(brokers);
    config.compression = compression;
    let sink = Arc::new(KafkaSink::new(&config).expect("sink"));
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (sink, data, next, topic) =
            (sink.clone(), data.clone(), next.clone(), topic.to_owned());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = data.get(i) else { break };
                sink.send_batch(&topic, b, None).await.expect("send_batch");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    start.elapsed().as_secs_f64()
}

/// The same records through a bare `FutureProducer`, optionally with ferry's headers (to tell
/// the cost of the headers on the wire and in the broker from the cost of ferry's code).
async fn rdkafka_alone(
    brokers: &str,
    compression: Compression,
    topic: &str,
    data: &[Batch],
    with_headers: bool,
) -> f64 {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", compression.as_librdkafka())
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut pending = Vec::new();
    for b in data {
        for r in &b.records {
            let mut rec: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&r.line[..]);
            if with_headers {
                let origin = b.header.origin.as_ref().map(|o| &o.key);
                rec = rec.headers(ferry_kafka::mapping::headers_of(origin, r));
            }
            loop {
                match producer.send_result(rec) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        rec = back;
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }
    for f in pending {
        f.await.expect("canceled").expect("delivery");
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = Tansu::start();
    let data = Arc::new(batches(mib << 20));
    let bytes = line_bytes(&data) as f64 / (1 << 20) as f64;
    let records: usize = data.iter().map(|b| b.records.len()).sum();
    println!(
        "{records} records, {bytes:.1} MiB of lines, into tansu at {}",
        broker.brokers()
    );
    println!();
    println!(
        "| compression | ferry send_batch MiB/s | rdkafka FutureProducer, same headers, MiB/s | rdkafka FutureProducer, bare lines, MiB/s | ferry / bare |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    rt.block_on(async {
        for (name, c) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
            ("gzip", Compression::Gzip),
        ] {
            let t_raw =
                rdkafka_alone(&broker.brokers(), c, &format!("raw-{name}"), &data, false).await;
            let t_hdr =
                rdkafka_alone(&broker.brokers(), c, &format!("hdr-{name}"), &data, true).await;
            let t_ferry =
                ferry_sink(&broker.brokers(), c, &format!("ferry-{name}"), data.clone()).await;
            let (f, h, r) = (bytes / t_ferry, bytes / t_hdr, bytes / t_raw);
            println!("| {name} | {f:.0} | {h:.0} | {r:.0} | {:.2} |", f / r);
        }
    });
}
