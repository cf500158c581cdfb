//! The Kafka listener (`kafka_listen`) next to tansu and to ferry's own HTTP ingest, in one run.
//!
//! `cargo bench --bench kafka_listener` (about a minute; needs tansu: `scripts/install-tansu`,
//! or `FERRY_TANSU_BIN`). The same client (librdkafka through the `rdkafka` crate) and the
//! same records (~190-byte JSON lines) against:
//! 1. **ferry kafka**: `ferry collector --kafka-listen` (the release binary, its own process),
//!    the embedded store, fsync `group` (acknowledged means durable);
//! 2. **tansu**: the tansu broker, its own process (memory storage: nothing is written to disk);
//! 3. **ferry http**: the same lines posted as newline-delimited bodies to the same
//!    collector's `POST /v1/topics/{t}/records` by 8 concurrent posters, for the
//!    Kafka/HTTP ratio.
//!
//! Produce: one idempotent producer, acks=all, lz4, linger 5 ms, until every delivery report
//! arrived. Consume: one consumer assigned every partition from the beginning, until it has
//! read every record. Each figure is records/s and MiB/s of values, and the broker process's
//! CPU seconds (user + system, from /proc) per million records; ratios are printed. On this
//! 2-core machine the one client is the bottleneck of both brokers' throughput, so the CPU a
//! broker spends per record is what tells them apart.
//!
//! `FERRY_BENCH_RECORDS` sets the records per run (default 1,000,000).

use ferry_core::client::CollectorClient;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ThreadedProducer};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

fn line(i: u64) -> String {
    format!(
        r#"{{"ts":"2026-11-24T07:{:02}:{:02}.{:03}Z","level":"{}","service":"svc-{}","msg":"request handled","latency_ms":{},"seq":{i}}}"#,
        (i / 60) % 60,
        i % 60,
        i % 1000,
        ["info", "warn", "error", "debug"][(i % 4) as usize],
        i % 17,
        (i * 7919) % 1500,
    )
}

struct Counting {
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Produces `lines` to `topic`; returns the seconds until the last delivery report. The
/// client is driven as fast as it goes: a queue that holds every record (no QueueFull
/// retries), served by polling every 10,000 sends.
fn produce(brokers: &str, topic: &str, lines: &[String]) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producer: BaseProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "10000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create_with_context(Counting {
            acked: acked.clone(),
            failed: failed.clone(),
        })
        .expect("producer");
    let started = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        let key = format!("k{}", i % 1024);
        let mut rec = BaseRecord::to(topic).payload(l.as_str()).key(key.as_str());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    let n = lines.len() as u64;
    while acked.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "produce stalled"
        );
        producer.poll(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "deliveries failed against {brokers}"
    );
    secs
}

/// Reads `n` records of `topic` from the beginning of every partition; returns the seconds.
fn consume(brokers: &str, topic: &str, n: u64) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut got = 0u64;
    while got < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "consume stalled at {got} of {n}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            assert!(m.payload().is_some());
            got += 1;
        }
    }
    started.elapsed().as_secs_f64()
}

/// Creates the topic with [`PARTITIONS`] through the broker's own auto-creation, so both
/// brokers start equal.
fn create(brokers: &str, topic: &str) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for _ in 0..50 {
        if let Ok(md) = p
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            && md
                .topics()
                .first()
                .is_some_and(|t| t.partitions().len() as i32 == PARTITIONS)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("topic {topic} not created on {brokers}");
}

/// CPU seconds (user + system, every thread) process `pid` has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// A broker process: its pid and bootstrap address.
struct Broker {
    child: Child,
    bootstrap: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry collector --kafka-listen`, as a user runs it (the release binary), on `dir`.
fn start_ferry(dir: &Path) -> (Broker, String) {
    let log = dir.join("collector.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("ferry collector");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let after = |p: &str| {
            text.lines()
                .find_map(|l| l.split_once(p).map(|(_, a)| a.trim().to_owned()))
        };
        if let (Some(http), Some(kafka)) = (
            after("listening on http://"),
            after("ferry kafka listener on "),
        ) {
            return (
                Broker {
                    child,
                    bootstrap: kafka,
                },
                http,
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "collector did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// tansu with memory storage on a free port.
fn start_tansu(dir: &Path) -> Broker {
    let bin = ferry_kafka::testing::tansu_bin().unwrap_or_else(|e| panic!("no tansu: {e}"));
    let port = ferry_kafka::testing::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tansu.log")).expect("log"))
        .spawn()
        .expect("tansu");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tansu did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        child,
        bootstrap: format!("127.0.0.1:{port}"),
    }
}

/// Runs `f` (a client run against `b`), returning its seconds and the broker's CPU seconds.
fn measured(b: &Broker, f: impl FnOnce(&str) -> f64) -> (f64, f64) {
    let before = cpu_secs(b.child.id());
    let secs = f(&b.bootstrap);
    // What the broker still does for it (fsync, acknowledgements) is done by now.
    (secs, cpu_secs(b.child.id()) - before)
}

fn main() {
    let n: u64 = std::env::var("FERRY_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let lines: Vec<String> = (0..n).map(line).collect();
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let root = std::env::var_os("FERRY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir_in(&root).expect("temp dir");
    let (ferry, http) = start_ferry(dir.path());
    let tansu = start_tansu(dir.path());
    println!(
        "{n} records of {:.0} bytes; rdkafka {}; brokers as processes, the client in this one",
        bytes as f64 / n as f64,
        rdkafka::util::get_rdkafka_version().1
    );
    create(&ferry.bootstrap, "bench");
    create(&tansu.bootstrap, "bench");
    let fp = measured(&ferry, |b| produce(b, "bench", &lines));
    let tp = measured(&tansu, |b| produce(b, "bench", &lines));
    let fc = measured(&ferry, |b| consume(b, "bench", n));
    let tc = measured(&tansu, |b| consume(b, "bench", n));
    // ferry's HTTP ingest of the same lines: 8 posters, 5,000 lines a body.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let before = cpu_secs(ferry.child.id());
    let http_secs = rt.block_on(async {
        let client = Arc::new(CollectorClient::new(&format!("http://{http}")).expect("client"));
        let bodies: Vec<Vec<u8>> = lines
            .chunks(5000)
            .map(|c| {
                let mut b = c.join("\n").into_bytes();
                b.push(b'\n');
                b
            })
            .collect();
        let bodies = Arc::new(bodies);
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (client, bodies, next) = (client.clone(), bodies.clone(), next.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(b) = bodies.get(i) else { break };
                    client
                        .post_lines("bench-http", b.clone(), false)
                        .await
                        .expect("post");
                }
            });
        }
        while set.join_next().await.is_some() {}
        started.elapsed().as_secs_f64()
    });
    let http_cpu = cpu_secs(ferry.child.id()) - before;
    let m = n as f64 / 1e6;
    println!(
        "\n| path | records/s | MiB/s | vs tansu | broker CPU s per M records | tansu's / ferry's CPU |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, (secs, cpu): (f64, f64), base: (f64, f64)| {
        println!(
            "| {name} | {:.0} | {:.1} | {:.2}x | {:.3} | {:.2}x |",
            n as f64 / secs,
            bytes as f64 / secs / (1 << 20) as f64,
            base.0 / secs,
            cpu / m,
            base.1 / cpu.max(1e-9),
        );
    };
    row("produce: ferry kafka listener (fsync)", fp, tp);
    row("produce: tansu (memory)", tp, tp);
    row("consume: ferry kafka listener", fc, tc);
    row("consume: tansu (memory)", tc, tc);
    println!(
        "\nferry http ingest of the same lines (8 posters, 5,000 lines a body): {:.0} records/s, {:.3} CPU s per M records",
        n as f64 / http_secs,
        http_cpu / m
    );
    println!(
        "ferry kafka produce / ferry http ingest: {:.2}x in records/s, {:.2}x in collector CPU per record",
        http_secs / fp.0,
        http_cpu / fp.1.max(1e-9)
    );
}
