//! Store benchmark: append throughput and latency for 1 and 16 partitions with fsync `group`
//! and `never`, read throughput, each next to the disk's own fsync'd sequential write speed
//! measured in the same run. Prints a markdown table.
//!
//! `cargo bench -p ferry-collector --bench store` (about a minute). `FERRY_BENCH_DIR` chooses
//! the directory (default: a temp dir under the target dir, i.e. the same disk as the build).

use bytes::Bytes;
use ferry_collector::store::{FsyncPolicy, Store, StoreConfig};
use ferry_core::batch::{BatchBuilder, Codec};
use ferry_core::config::{ByteSize, Duration as CfgDuration};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(4);
const RECORDS_PER_BATCH: usize = 500;
const APPENDERS: usize = 32;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("FERRY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

/// Realistic-ish log batches: JSON lines with varying fields, gzip level 1, no origin.
fn batches() -> Vec<Bytes> {
    (0..64u64)
        .map(|b| {
            let mut builder = BatchBuilder::new();
            for i in 0..RECORDS_PER_BATCH as u64 {
                let n = b * 1000 + i;
                let line = format!(
                    r#"{{"ts":"2026-11-24T06:{:02}:{:02}.{:03}Z","level":"{}","svc":"checkout-{}","req":"{:016x}","path":"/api/v1/orders/{}","status":{},"ms":{}}}"#,
                    n % 60, (n / 60) % 60, n % 1000,
                    ["info", "warn", "error", "debug"][(n % 4) as usize],
                    n % 7, n.wrapping_mul(0x9e3779b97f4a7c15), n * 31 % 100_000,
                    [200, 201, 404, 500][(n % 4) as usize], n * 17 % 900
                );
                builder.push_line(line.as_bytes(), line.len() as u64 + 1);
            }
            Bytes::from(builder.finish(Codec::Gzip, 1, 0).expect("encode"))
        })
        .collect()
}

/// The disk's own speed: a plain file written in `block` bytes, fsync (fdatasync) per block.
/// Returns MiB/s and the p50/p99 of one write + fsync, in ms.
fn disk_baseline(block: usize, total: usize) -> (f64, f64, f64) {
    let dir = bench_dir();
    let path = dir.path().join("baseline");
    let mut f = std::fs::File::create(&path).expect("baseline file");
    let buf = vec![0x5au8; block];
    let started = Instant::now();
    let mut written = 0;
    let mut lat = Vec::new();
    while written < total && started.elapsed() < RUN {
        let t = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fsync");
        lat.push(t.elapsed());
        written += block;
    }
    lat.sort();
    (
        mib(written as u64) / started.elapsed().as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    )
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

struct Result {
    name: String,
    mib_s: f64,
    records_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn config(policy: FsyncPolicy) -> StoreConfig {
    StoreConfig {
        fsync: policy,
        group_commit_window: CfgDuration::from_millis(2),
        segment_bytes: ByteSize::mib(256),
        ..StoreConfig::default()
    }
}

/// `APPENDERS` tasks append as fast as acks come back (or, with `rate`, at that many batches
/// per second in total) for `RUN`.
async fn append_run(
    policy: FsyncPolicy,
    partitions: u32,
    batches: &[Bytes],
    rate: Option<f64>,
) -> (Result, Store, tempfile::TempDir) {
    let dir = bench_dir();
    let store = Store::open(dir.path(), config(policy)).expect("open");
    store.create_topic("bench", partitions).expect("topic");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let store = store.clone();
        let stop = stop.clone();
        let batches: Vec<Bytes> = batches.to_vec();
        let p = (a as u32) % partitions;
        let pause = rate.map(|r| Duration::from_secs_f64(APPENDERS as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bytes = 0u64;
            let mut records = 0u64;
            let mut i = a;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(pause) = pause {
                    tokio::time::sleep_until(next.into()).await;
                    next += pause;
                }
                let b = batches[i % batches.len()].clone();
                i += 1;
                let len = b.len() as u64;
                let t = Instant::now();
                let out = store.append("bench", p, b).await.expect("append");
                lat.push(t.elapsed());
                bytes += len;
                records += u64::from(out.stored);
            }
            (lat, bytes, records)
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut bytes, mut records) = (0, 0);
    for t in tasks {
        let (l, b, r) = t.await.expect("task");
        lat.extend(l);
        bytes += b;
        records += r;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let name = format!(
        "append, fsync `{}`, {partitions} partition{}{}",
        format!("{policy:?}").to_lowercase(),
        if partitions == 1 { "" } else { "s" },
        rate.map(|r| format!(", paced at {r:.0} batches/s"))
            .unwrap_or_default()
    );
    (
        Result {
            name,
            mib_s: mib(bytes) / secs,
            records_s: records as f64 / secs,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
        },
        store,
        dir,
    )
}

fn read_run(store: &Store, partitions: u32) -> Result {
    let started = Instant::now();
    let (mut bytes, mut records) = (0u64, 0u64);
    for p in 0..partitions {
        let mut next = 0;
        loop {
            let r = store.read("bench", p, next, 1 << 20).expect("read");
            let Some(last) = r.batches.last() else { break };
            next = last.base_offset + u64::from(last.record_count);
            for b in &r.batches {
                bytes += b.data.len() as u64;
                records += u64::from(b.record_count);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Result {
        name: format!("read everything back, 1 MiB per read, {partitions} partition(s)"),
        mib_s: mib(bytes) / secs,
        records_s: records as f64 / secs,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it,
    // and should not spend a minute writing gigabytes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store bench: run with `cargo bench -p ferry-collector --bench store`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let batches = batches();
    let avg = batches.iter().map(|b| b.len()).sum::<usize>() / batches.len();
    let block = avg.next_power_of_two();
    let mut rows = Vec::new();
    let (disk_block, block_p50, block_p99) = disk_baseline(block, 64 << 20);
    let (disk_1m, mb_p50, mb_p99) = disk_baseline(1 << 20, 512 << 20);
    rt.block_on(async {
        for (policy, parts) in [
            (FsyncPolicy::Group, 1),
            (FsyncPolicy::Group, 16),
            (FsyncPolicy::Never, 1),
            (FsyncPolicy::Never, 16),
        ] {
            let (r, store, _dir) = append_run(policy, parts, &batches, None).await;
            eprintln!("{}: {:.1} MiB/s", r.name, r.mib_s);
            let peak_batches_s = r.mib_s * (1 << 20) as f64 / avg as f64;
            rows.push(r);
            if policy == FsyncPolicy::Group && parts == 16 {
                rows.push(read_run(&store, parts));
                store.close().await.expect("close");
                drop(store);
                let (r, store, _dir2) =
                    append_run(policy, parts, &batches, Some(peak_batches_s / 2.0)).await;
                store.close().await.expect("close");
                rows.push(r);
            } else {
                store.close().await.expect("close");
            }
        }
    });
    println!(
        "\nbatches: {RECORDS_PER_BATCH} JSON log records (~200 B each), gzip level 1, {avg} bytes on average; {APPENDERS} concurrent appenders; {}s per run; group_commit_window 2ms\n",
        RUN.as_secs()
    );
    let (disk_1m_after, after_p50, after_p99) = disk_baseline(1 << 20, 512 << 20);
    println!(
        "| run | MiB/s | records/s | p50 ms | p99 ms | vs disk, fsync per {block} B | vs disk, fsync per 1 MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| disk: plain file, fsync per {block} B block (about one batch) | {disk_block:.1} | | {block_p50:.2} | {block_p99:.2} | 1.00 | {:.2} |",
        disk_block / disk_1m
    );
    println!(
        "| disk: plain file, fsync per 1 MiB block | {disk_1m:.1} | | {mb_p50:.2} | {mb_p99:.2} | {:.2} | 1.00 |",
        disk_1m / disk_block
    );
    for r in rows {
        let lat = |v: f64| {
            if v.is_nan() {
                String::new()
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "| {} | {:.1} | {:.0} | {} | {} | {:.2} | {:.2} |",
            r.name,
            r.mib_s,
            r.records_s,
            lat(r.p50_ms),
            lat(r.p99_ms),
            r.mib_s / disk_block,
            r.mib_s / disk_1m
        );
    }
    println!(
        "| disk again, after the runs: fsync per 1 MiB block | {disk_1m_after:.1} | | {after_p50:.2} | {after_p99:.2} | {:.2} | {:.2} |",
        disk_1m_after / disk_block,
        disk_1m_after / disk_1m
    );
}
