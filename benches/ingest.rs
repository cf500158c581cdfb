//! Collector ingest over HTTP, next to the store's own append of the same batches, in one run.
//!
//! `cargo bench --bench ingest` (about a minute). What it measures:
//! 1. **store**: `Store::append` of agent-format batches (with an origin) from 16
//!    concurrent tasks into 4 partitions, fsync `group` — the limit for the HTTP path.
//! 2. **http batches**: the same batches posted by 16 concurrent producers to
//!    `POST /v1/topics/{t}/records` (`application/x-ferry-batch`) of a collector in this process,
//!    answered after fsync; MiB/s of uncompressed line bytes, records/s, p50/p99 ack latency.
//! 3. **http lines**: newline-delimited JSON bodies (as `ferry produce` sends), same setup.
//! 4. **half load**: the batch path paced at half of the peak measured in 2, for its p99.
//! 5. **consume**: one consumer reading everything back through the fetch API.
//! 6. **https**: 2 and 3 again against a second collector with `tls:` (a certificate made here
//!    with rcgen, TLS 1.3, connections kept alive), next to a plain-HTTP rerun of the same
//!    posts to a fresh topic, so the TLS/plain ratio compares runs made seconds apart.
//!
//! Data and store live in a temp dir under `target/` (`FERRY_BENCH_DIR` overrides it). The agent
//! batches are lz4, the agent's default for a collector (`FERRY_BENCH_CODEC=gzip` or `none` for
//! the others; gzip is level 1). Plain bodies are stored with the collector's default
//! `plain_codec` (lz4).

use bytes::Bytes;
use ferry_collector::store::{Store, StoreConfig};
use ferry_collector::{Collector, CollectorConfig};
use ferry_core::batch::{BatchBuilder, Codec};
use ferry_core::client::CollectorClient;
use ferry_core::record::{FileId, OriginKey};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRODUCERS: usize = 16;
const LINES_PER_BATCH: usize = 2000;
const RUN: Duration = Duration::from_secs(5);
const BATCHES_PER_PRODUCER: u64 = 250;

/// (bytes, records) of a batch's `stored` records.
fn stored(b: &(Bytes, u64, u64), stored: u64) -> (u64, u64) {
    (b.1 * stored / b.2.max(1), stored)
}

fn line(i: u64) -> String {
    format!(
        r#"{{"ts":"2026-11-24T07:{:02}:{:02}.{:03}Z","level":"{}","service":"svc-{}","msg":"request handled","latency_ms":{},"user":"u{}","seq":{i}}}"#,
        (i / 60) % 60,
        i % 60,
        i % 1000,
        ["info", "warn", "error", "debug"][(i % 4) as usize],
        i % 17,
        (i * 7919) % 1500,
        (i * 104_729) % 100_000
    )
}

/// The agent batches' codec: `FERRY_BENCH_CODEC` (lz4, gzip or none), lz4 by default.
fn bench_codec() -> Codec {
    match std::env::var("FERRY_BENCH_CODEC").as_deref() {
        Ok("gzip") => Codec::Gzip,
        Ok("none") => Codec::None,
        Ok("lz4") | Err(_) => Codec::Lz4,
        Ok(other) => panic!("FERRY_BENCH_CODEC={other}: lz4, gzip or none"),
    }
}

/// Producer `p`'s `n`-th batch: contiguous lines of its own "file", in [`bench_codec`].
fn batch(p: usize, n: u64) -> (Bytes, u64, u64) {
    let key = OriginKey {
        agent_id: format!("bench-{p}"),
        file: FileId {
            dev: 1,
            inode: p as u64,
            fingerprint: 7,
            generation: 0,
        },
    };
    let mut raw = 0u64;
    let first_line = n * LINES_PER_BATCH as u64;
    let lines: Vec<String> = (0..LINES_PER_BATCH as u64)
        .map(|i| line(first_line + i))
        .collect();
    let start_offset: u64 = first_line * 200;
    let mut b = BatchBuilder::with_origin(key, start_offset);
    for l in &lines {
        b.push_line(l.as_bytes(), 200);
        raw += l.len() as u64 + 1;
    }
    let enc = b
        .finish(bench_codec(), 1, ferry_core::now_ms())
        .unwrap_or_default();
    (Bytes::from(enc), raw, LINES_PER_BATCH as u64)
}

fn plain_body(p: usize, n: u64) -> (Vec<u8>, u64, u64) {
    let mut body = Vec::new();
    for i in 0..LINES_PER_BATCH as u64 {
        body.extend_from_slice(line((n * LINES_PER_BATCH as u64 + i) * 31 + p as u64).as_bytes());
        body.push(b'\n');
    }
    let len = body.len() as u64;
    (body, len, LINES_PER_BATCH as u64)
}

#[derive(Default)]
struct Run {
    bytes: u64,
    records: u64,
    latencies: Vec<f64>,
    elapsed: f64,
}

impl Run {
    fn merge(&mut self, o: Run) {
        self.bytes += o.bytes;
        self.records += o.records;
        self.latencies.extend(o.latencies);
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed
    }
    fn rec_s(&self) -> f64 {
        self.records as f64 / self.elapsed
    }
    fn pct(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.sort_by(|a, b| a.total_cmp(b));
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i] * 1000.0
    }
}

/// Runs `PRODUCERS` loops of `step(producer, n)` for `RUN` or `max_steps` steps each, whichever
/// ends first, optionally paced to `rate_batches` per second in total.
async fn drive<F, Fut>(step: F, rate_batches: Option<f64>, max_steps: Option<u64>) -> Run
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (u64, u64)> + Send,
{
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let step = step.clone();
        set.spawn(async move {
            let mut r = Run::default();
            let mut n = 0u64;
            let per_producer = rate_batches.map(|r| r / PRODUCERS as f64);
            while started.elapsed() < RUN && max_steps.is_none_or(|m| n < m) {
                if let Some(rate) = per_producer {
                    let due = Duration::from_secs_f64(n as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let t = Instant::now();
                let (bytes, records) = step(p, n).await;
                r.latencies.push(t.elapsed().as_secs_f64());
                r.bytes += bytes;
                r.records += records;
                n += 1;
            }
            r
        });
    }
    let mut total = Run::default();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            total.merge(r);
        }
    }
    total.elapsed = started.elapsed().as_secs_f64();
    total
}

/// Every producer posts its pre-encoded batches to `topic` over HTTP (optionally paced to
/// `rate_batches` per second in total); counts what the collector stored.
async fn post_batches_run(
    client: &CollectorClient,
    batches: &Arc<Vec<Vec<(Bytes, u64, u64)>>>,
    topic: &'static str,
    rate_batches: Option<f64>,
) -> Run {
    let (client, batches) = (client.clone(), batches.clone());
    drive(
        move |p, n| {
            let (client, batches) = (client.clone(), batches.clone());
            async move {
                let b = &batches[p][(n as usize) % batches[p].len()];
                match client.post_batches(topic, b.0.clone()).await {
                    Ok(r) => stored(b, r.stored),
                    Err(_) => (0, 0),
                }
            }
        },
        rate_batches,
        Some(BATCHES_PER_PRODUCER),
    )
    .await
}

fn row(name: &str, r: &mut Run, base: f64) -> String {
    let mib = r.mib_s();
    let (p50, p99) = (r.pct(0.5), r.pct(0.99));
    format!(
        "| {name} | {mib:.1} | {:.0} | {p50:.2} | {p99:.2} | {:.2} |",
        r.rec_s(),
        mib / base
    )
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest bench: run with `cargo bench --bench ingest`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let base_dir = std::env::var_os("FERRY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target"))
        });
    std::fs::create_dir_all(&base_dir).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base_dir).expect("temp dir");
    // Pre-encode batches (on both cores) so the runs measure ingest, not the benchmark's own
    // encoding. Each producer's batches are consecutive ranges of its own file; a producer that
    // runs past them wraps around, and those posts are replays the collector deduplicates —
    // they count as nothing stored (only stored records and their bytes are counted).
    let batches: Arc<Vec<Vec<(Bytes, u64, u64)>>> = Arc::new(std::thread::scope(|s| {
        let hs: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                s.spawn(move || {
                    (0..BATCHES_PER_PRODUCER)
                        .map(|n| batch(p, n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    }));
    let plain: Arc<Vec<Vec<(Vec<u8>, u64, u64)>>> = Arc::new(
        (0..PRODUCERS)
            .map(|p| (0..40u64).map(|n| plain_body(p, n)).collect())
            .collect(),
    );

    // 1. The store alone.
    let store = Store::open(&tmp.path().join("store"), StoreConfig::default()).expect("store");
    store.create_topic("bench", 4).expect("topic");
    let mut store_run = {
        let (store, batches) = (store.clone(), batches.clone());
        drive(
            move |p, n| {
                let (store, batches) = (store.clone(), batches.clone());
                async move {
                    let b = &batches[p][(n as usize) % batches[p].len()];
                    match store.append("bench", (p % 4) as u32, b.0.clone()).await {
                        Ok(o) => stored(b, u64::from(o.stored)),
                        Err(_) => (0, 0),
                    }
                }
            },
            None,
            Some(BATCHES_PER_PRODUCER),
        )
        .await
    };
    let _ = store.close().await;

    // 2-5. The collector over HTTP.
    let mut cfg = CollectorConfig::default();
    cfg.listen = "127.0.0.1:0".into();
    cfg.data_dir = tmp.path().join("collector");
    cfg.default_partitions = 4;
    let collector = Collector::bind(cfg).await.expect("collector");
    let url = format!("http://{}", collector.local_addr());
    let shutdown = ferry_core::shutdown::Shutdown::new();
    let server = tokio::spawn(collector.run(shutdown.clone()));
    let client = CollectorClient::new(&url).expect("client");
    let mut http_batches = post_batches_run(&client, &batches, "batches", None).await;
    let mut http_lines = lines_run(&client, &plain).await;
    let peak_batches_s = http_batches.latencies.len() as f64 / http_batches.elapsed;
    let mut half = post_batches_run(&client, &batches, "half", Some(peak_batches_s / 2.0)).await;
    // 5. Consume everything the batch run stored, one consumer, all partitions.
    let consume_start = Instant::now();
    let mut consumed = Run::default();
    for p in 0..4u32 {
        let mut offset = 0u64;
        loop {
            let f = match client
                .fetch("batches", p, offset, 4 << 20, Duration::ZERO)
                .await
            {
                Ok(f) => f,
                Err(_) => break,
            };
            if f.batches.is_empty() {
                break;
            }
            for b in &f.batches {
                for (i, r) in b.batch.records.iter().enumerate() {
                    if b.base_offset + i as u64 >= offset {
                        consumed.bytes += r.line.len() as u64 + 1;
                        consumed.records += 1;
                    }
                }
                offset = b.base_offset + b.batch.records.len() as u64;
            }
        }
    }
    consumed.elapsed = consume_start.elapsed().as_secs_f64();

    // 6. The same posts over TLS to a second collector, and again over plain HTTP.
    let (tls_cfg, ca_pem) = tls_files(tmp.path());
    let mut cfg = CollectorConfig::default();
    cfg.listen = "127.0.0.1:0".into();
    cfg.data_dir = tmp.path().join("collector-tls");
    cfg.default_partitions = 4;
    cfg.tls = Some(tls_cfg);
    let tls_collector = Collector::bind(cfg).await.expect("TLS collector");
    let tls_url = format!("https://localhost:{}", tls_collector.local_addr().port());
    let tls_server = tokio::spawn(tls_collector.run(shutdown.clone()));
    let tls_client = CollectorClient::with_security(
        &tls_url,
        &ferry_core::security::ClientSecurity {
            ca: Some(ca_pem),
            ..Default::default()
        },
    )
    .expect("TLS client");
    let mut https_batches = post_batches_run(&tls_client, &batches, "batches", None).await;
    let mut http_batches_again = post_batches_run(&client, &batches, "batches-again", None).await;
    let mut https_lines = lines_run(&tls_client, &plain).await;
    let mut http_lines_again = lines_run(&client, &plain).await;
    shutdown.trigger();
    let _ = server.await;
    let _ = tls_server.await;

    let base = store_run.mib_s();
    println!(
        "\n{PRODUCERS} concurrent producers, {LINES_PER_BATCH} JSON lines (~190 B) per request, fsync `group`, at most {}s or {BATCHES_PER_PRODUCER} distinct batches per producer per run\n",
        RUN.as_secs()
    );
    println!("| run | MiB/s (lines) | records/s | p50 ms | p99 ms | vs store |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "{}",
        row(
            "store append (the limit), 4 partitions",
            &mut store_run,
            base
        )
    );
    let codec = bench_codec().name();
    println!(
        "{}",
        row(
            &format!("HTTP, agent batches ({codec})"),
            &mut http_batches,
            base
        )
    );
    println!("{}", row("HTTP, plain JSON lines", &mut http_lines, base));
    println!(
        "{}",
        row(
            "HTTP, agent batches, paced at half of peak",
            &mut half,
            base
        )
    );
    let mib = consumed.mib_s();
    println!(
        "| consume, one consumer, fetch API | {mib:.1} | {:.0} | | | {:.2} |",
        consumed.rec_s(),
        mib / base
    );
    println!("\nTLS (rustls, TLS 1.3, ring) against plain HTTP, each pair run back to back:\n");
    println!("| run | MiB/s (lines) | records/s | p50 ms | p99 ms | vs store |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let ratio_batches = https_batches.mib_s() / http_batches_again.mib_s().max(f64::MIN_POSITIVE);
    let ratio_lines = https_lines.mib_s() / http_lines_again.mib_s().max(f64::MIN_POSITIVE);
    for (name, r) in [
        (
            format!("HTTP, agent batches ({codec})"),
            &mut http_batches_again,
        ),
        (
            format!("HTTPS, agent batches ({codec})"),
            &mut https_batches,
        ),
        ("HTTP, plain JSON lines".to_owned(), &mut http_lines_again),
        ("HTTPS, plain JSON lines".to_owned(), &mut https_lines),
    ] {
        println!("{}", row(&name, r, base));
    }
    println!(
        "\nHTTPS / HTTP: agent batches {ratio_batches:.2}x, plain lines {ratio_lines:.2}x (target >= 0.85x)"
    );
}

/// Every producer posts newline-delimited bodies (as `ferry produce` does) to `lines`.
async fn lines_run(client: &CollectorClient, plain: &Arc<Vec<Vec<(Vec<u8>, u64, u64)>>>) -> Run {
    let (client, plain) = (client.clone(), plain.clone());
    drive(
        move |p, n| {
            let (client, plain) = (client.clone(), plain.clone());
            async move {
                let b = &plain[p][(n as usize) % plain[p].len()];
                match client.post_lines("lines", b.0.clone(), false).await {
                    Ok(r) => (b.1, r.stored),
                    Err(_) => (0, 0),
                }
            }
        },
        None,
        None,
    )
    .await
}

/// A CA and a collector certificate for `localhost`, written under `dir`: the `tls:` section
/// and the CA file a client trusts.
fn tls_files(dir: &std::path::Path) -> (ferry_collector::tls::TlsConfig, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("collector.pem"),
        dir.join("collector.key"),
    );
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (
        ferry_collector::tls::TlsConfig {
            cert: cert_path,
            key: key_path,
            client_ca: None,
        },
        ca_path,
    )
}
