//! Collector-path produce throughput into a real broker (tansu, memory storage), next to
//! rdkafka's own `FutureProducer` writing the same line bytes in the same run.
//!
//! `cargo bench -p ferry-kafka --bench throughput [-- MIB]` (default 32 MiB per case). Every
//! case uses acks=all and the idempotent producer; ferry's `send_batch` sends 1 MiB batches of
//! ~200-byte JSON lines with origin headers and up to 4 batches in flight (like concurrent
//! requests to the collector). The baselines use rdkafka's `FutureProducer` directly in the
//! same flow (a batch's records enqueued together, up to 4 batches awaited at a time): once
//! with ferry's headers and the partition ferry picks for the file (the same
//! bytes, placed the same way: the client's own limit), once as bare lines placed by
//! librdkafka's sticky partitioner.

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

/// The partition ferry gives a file's keyless records (the broker auto-creates 4 partitions).
fn file_partition(o: &OriginKey) -> i32 {
    let f = &o.file;
    let h = ferry_core::topic::stable_hash(&[
        o.agent_id.as_bytes(),
        &f.dev.to_le_bytes(),
        &f.inode.to_le_bytes(),
        &f.fingerprint.to_le_bytes(),
    ]);
    (h % 4) as i32
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
    // The same flow as the collector's: a batch's records are enqueued together and up to
    // IN_FLIGHT batches are awaited at a time (enqueueing everything at once overflows
    // librdkafka's queue and measures the spinning on QueueFull instead).
    let mut in_flight: std::collections::VecDeque<Vec<rdkafka::producer::DeliveryFuture>> =
        Default::default();
    for b in data {
        if in_flight.len() == IN_FLIGHT {
            for f in in_flight.pop_front().unwrap_or_default() {
                f.await.expect("canceled").expect("delivery");
            }
        }
        let mut pending = Vec::with_capacity(b.records.len());
        for r in &b.records {
            let mut rec: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&r.line[..]);
            if with_headers {
                let origin = b.header.origin.as_ref().map(|o| &o.key);
                rec = rec
                    .headers(ferry_kafka::mapping::headers_of(origin, r))
                    .timestamp(ferry_kafka::mapping::timestamp_of(r, b.header.created_ms));
                if let Some(o) = origin {
                    rec = rec.partition(file_partition(o));
                }
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
        in_flight.push_back(pending);
    }
    for batch in in_flight {
        for f in batch {
            f.await.expect("canceled").expect("delivery");
        }
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
        "| compression | ferry send_batch MiB/s | rdkafka, same headers and partition, MiB/s | rdkafka, bare lines, sticky partitioner, MiB/s | ferry / same |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    rt.block_on(async {
        for (name, c) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
            ("gzip", Compression::Gzip),
        ] {
            // On a runtime worker, like ferry's sends (not on the thread blocked in block_on).
            let baseline = |headers: bool, topic: String| {
                let (brokers, data) = (broker.brokers(), data.clone());
                tokio::spawn(
                    async move { rdkafka_alone(&brokers, c, &topic, &data, headers).await },
                )
            };
            let t_raw = baseline(false, format!("raw-{name}")).await.expect("task");
            let t_hdr = baseline(true, format!("hdr-{name}")).await.expect("task");
            let t_ferry =
                ferry_sink(&broker.brokers(), c, &format!("ferry-{name}"), data.clone()).await;
            let (f, h, r) = (bytes / t_ferry, bytes / t_hdr, bytes / t_raw);
            println!("| {name} | {f:.0} | {h:.0} | {r:.0} | {:.2} |", f / h);
        }
    });
}
