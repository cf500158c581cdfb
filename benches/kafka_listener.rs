//! The Kafka listener (`kafka_listen`) next to tansu and to ferry's own HTTP ingest, in one run.
//!
//! `cargo bench --bench kafka_listener` (about two minutes; needs tansu: `scripts/install-tansu`,
//! or `FERRY_TANSU_BIN`). The same clients and the same records (~121-byte JSON lines) against:
//! 1. **ferry kafka**: `ferry collector --kafka-listen` (the release binary, its own process),
//!    the embedded store, fsync `group` (acknowledged means durable);
//! 2. **tansu (memory)**: the tansu broker, its own process, memory storage (nothing is written
//!    to disk);
//! 3. **tansu (sqlite)**, when `FERRY_TANSU_DURABLE_BIN` names a tansu built with its `libsql`
//!    feature (`scripts/install-tansu --durable`; `scripts/bench` passes it when built): the
//!    same broker storing what it acknowledges (`sqlite://tansu.db`);
//! 4. **ferry http**: the same lines posted as newline-delimited bodies to the same
//!    collector's `POST /v1/topics/{t}/records` by 8 concurrent posters, 5,000 lines a body.
//!
//! Produce, three ways: one librdkafka client (the `rdkafka` crate: idempotent, acks=all, lz4,
//! linger 5 ms) until every delivery report arrived; `FERRY_BENCH_PRODUCERS` such clients at
//! once (default 3), each with its share; and Produce requests encoded before the clock starts
//! (5,000 records an lz4 batch, acks=all, no producer id), sent on `FERRY_BENCH_CONNECTIONS`
//! connections (default 8) with one request in flight on each — a client that costs nothing per
//! record, as the HTTP run's prebuilt bodies, so the broker is what is measured. Consume: one
//! librdkafka consumer assigned every partition from the beginning, until it has read every
//! record. Each figure is records/s and MiB/s of values, and the broker process's CPU seconds
//! (user + system, from /proc) per million records. On this 2-core machine a librdkafka client
//! is the bottleneck of either broker; the encoded requests are not.
//!
//! `FERRY_BENCH_RECORDS` sets the records per run (default 1,000,000); `FERRY_BENCH_ONLY=raw`
//! runs only the encoded requests and the HTTP run.

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

/// Produces `lines` to `topic` from `producers` clients at once, each its own thread with a
/// share of the lines; returns the seconds until the last delivery report of all of them.
fn produce(brokers: &str, topic: &str, lines: &[String], producers: usize) -> f64 {
    let started = Instant::now();
    let share = lines.len().div_ceil(producers.max(1));
    std::thread::scope(|s| {
        for (k, part) in lines.chunks(share).enumerate() {
            s.spawn(move || produce_one(brokers, topic, part, k * share));
        }
    });
    started.elapsed().as_secs_f64()
}

/// One producer client: `lines` (numbered from `first`) to `topic`; returns its seconds until
/// the last delivery report. The client is driven as fast as it goes: a queue that holds every
/// record (no QueueFull retries), served by polling every 10,000 sends.
fn produce_one(brokers: &str, topic: &str, lines: &[String], first: usize) -> f64 {
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
        let key = format!("k{}", (first + i) % 1024);
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

/// The same lines as Produce requests encoded before the clock starts, as the HTTP ingest run
/// posts bodies built before it starts: `per_request` records a request, one lz4 record batch
/// of one partition (round robin), keys as `produce_one` sets them, acks=all, no producer id.
fn encode_requests(topic: &str, lines: &[String], per_request: usize) -> Vec<Vec<u8>> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    lines
        .chunks(per_request)
        .enumerate()
        .map(|(c, chunk)| {
            let records: Vec<Record> = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    // No producer: the batch's base sequence is -1. (The encoder starts a new
                    // batch wherever offset - sequence changes, so it must stay constant.)
                    sequence: i as i32 - 1,
                    timestamp: 1_764_000_000_000 + i as i64,
                    key: Some(bytes::Bytes::from(format!(
                        "k{}",
                        (c * per_request + i) % 1024
                    ))),
                    value: Some(bytes::Bytes::copy_from_slice(l.as_bytes())),
                    headers: Default::default(),
                })
                .collect();
            let mut batch = bytes::BytesMut::new();
            RecordBatchEncoder::encode(
                &mut batch,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression: Compression::Lz4,
                },
            )
            .expect("record batch");
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index((c % PARTITIONS as usize) as i32)
                                .with_records(Some(batch.freeze())),
                        ]),
                ]);
            let header = RequestHeader::default()
                .with_request_api_key(0)
                .with_request_api_version(RAW_PRODUCE_VERSION)
                .with_correlation_id(c as i32)
                .with_client_id(Some(StrBytes::from_static_str("bench")));
            let mut body = bytes::BytesMut::new();
            header
                .encode(
                    &mut body,
                    ProduceRequest::header_version(RAW_PRODUCE_VERSION),
                )
                .expect("header");
            req.encode(&mut body, RAW_PRODUCE_VERSION).expect("request");
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            frame
        })
        .collect()
}

const RAW_PRODUCE_VERSION: i16 = 7;

/// Sends `requests` over `connections` connections at once, one request in flight on each (as
/// the HTTP run's posters have one body each in flight), checking every partition's answer;
/// returns the seconds until the last answer.
fn produce_raw(brokers: &str, requests: &[Vec<u8>], connections: usize) -> f64 {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    use std::io::{Read, Write};
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..connections {
            let next = &next;
            s.spawn(move || {
                let mut conn = std::net::TcpStream::connect(brokers).expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                let mut len = [0u8; 4];
                let mut answer = Vec::new();
                while let Some(req) = requests.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                    conn.write_all(req).expect("send");
                    conn.read_exact(&mut len).expect("answer length");
                    answer.resize(u32::from_be_bytes(len) as usize, 0);
                    conn.read_exact(&mut answer).expect("answer");
                    let mut buf = bytes::Bytes::copy_from_slice(&answer);
                    ResponseHeader::decode(
                        &mut buf,
                        ProduceResponse::header_version(RAW_PRODUCE_VERSION),
                    )
                    .expect("response header");
                    let r = ProduceResponse::decode(&mut buf, RAW_PRODUCE_VERSION)
                        .expect("produce response");
                    for t in &r.responses {
                        for p in &t.partition_responses {
                            assert_eq!(p.error_code, 0, "produce refused by {brokers}");
                        }
                    }
                }
            });
        }
    });
    started.elapsed().as_secs_f64()
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

/// Creates the topic with [`PARTITIONS`] by CreateTopics (tansu's sqlite storage does not
/// create topics on first use), then waits until the metadata shows them, so every broker
/// starts equal.
fn create(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // An error here (the topic exists, say) shows in the metadata check below.
    let _ = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ));
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

/// tansu (`bin`) on a free port with `storage`: `memory://tansu/` keeps everything in memory;
/// `sqlite://tansu.db` (a durable build, relative to `dir`) writes to disk.
fn start_tansu(dir: &Path, bin: &Path, storage: &str) -> Broker {
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
            storage,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("tansu-{port}.log"))).expect("log"))
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
    let producers: usize = std::env::var("FERRY_BENCH_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (ferry, http) = start_ferry(dir.path());
    let tansu_bin = ferry_kafka::testing::tansu_bin().unwrap_or_else(|e| panic!("no tansu: {e}"));
    let tansu = start_tansu(dir.path(), &tansu_bin, "memory://tansu/");
    // A durable tansu, when one is built (`cargo install tansu --features libsql`, see
    // docs/performance.md): the broker that, like ferry, writes what it acknowledges.
    let durable = std::env::var_os("FERRY_TANSU_DURABLE_BIN")
        .filter(|bin| !bin.is_empty())
        .map(|bin| start_tansu(dir.path(), Path::new(&bin), "sqlite://tansu.db"));
    println!(
        "{n} records of {:.0} bytes; rdkafka {}; brokers as processes, the clients in this one",
        bytes as f64 / n as f64,
        rdkafka::util::get_rdkafka_version().1
    );
    let mut brokers: Vec<(&str, &Broker)> = vec![
        ("ferry kafka listener (fsync)", &ferry),
        ("tansu (memory)", &tansu),
    ];
    if let Some(d) = &durable {
        brokers.push(("tansu (sqlite)", d));
    }
    // Produce with one client, then with `producers` at once, each into a topic of its own.
    let mut produced = Vec::new();
    // `FERRY_BENCH_ONLY=raw`: only the encoded-request runs (and HTTP), for profiling them.
    let only_raw = std::env::var("FERRY_BENCH_ONLY").is_ok_and(|v| v == "raw");
    for clients in [1, producers] {
        if only_raw {
            break;
        }
        let topic = format!("bench-p{clients}");
        for (name, b) in &brokers {
            create(&b.bootstrap, &topic);
            let m = measured(b, |a| produce(a, &topic, &lines, clients));
            produced.push((
                format!(
                    "produce, {clients} client{}: {name}",
                    if clients == 1 { "" } else { "s" }
                ),
                clients,
                m,
            ));
        }
        if producers == 1 {
            break;
        }
    }
    // The broker's own produce path, clients costing nothing per record: the same lines as
    // requests encoded beforehand, 5,000 records each, on 8 connections — as the HTTP run below.
    let requests = encode_requests("bench-raw", &lines, 5000);
    let connections: usize = std::env::var("FERRY_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let raw: Vec<(String, (f64, f64))> = brokers
        .iter()
        .map(|(name, b)| {
            create(&b.bootstrap, "bench-raw");
            (
                format!("produce, encoded requests on {connections} connections: {name}"),
                measured(b, |a| produce_raw(a, &requests, connections)),
            )
        })
        .collect();
    let consumed: Vec<(String, (f64, f64))> = if only_raw {
        Vec::new()
    } else {
        brokers
            .iter()
            .map(|(name, b)| {
                (
                    format!("consume: {name}"),
                    measured(b, |a| consume(a, "bench-p1", n)),
                )
            })
            .collect()
    };
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
        "\n| path | records/s | MiB/s | vs tansu (memory) | broker CPU s per M records | tansu's / ferry's CPU |"
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
    // Each row against tansu (memory) with the same number of clients.
    let per_broker = brokers.len();
    for group in produced.chunks(per_broker) {
        let base = group[1].2;
        for (name, _, measured) in group {
            row(name, *measured, base);
        }
    }
    for (name, measured) in &raw {
        row(name, *measured, raw[1].1);
    }
    for (name, measured) in &consumed {
        row(name, *measured, consumed[1].1);
    }
    if durable.is_some() {
        println!(
            "encoded requests: ferry / tansu (sqlite) in records/s: {:.2}x",
            raw[2].1.0 / raw[0].1.0
        );
        for group in produced.chunks(per_broker) {
            println!(
                "{} client(s): ferry / tansu (sqlite) in records/s: {:.2}x",
                group[0].1,
                group[2].2.0 / group[0].2.0
            );
        }
    }
    println!(
        "\nferry http ingest of the same lines (8 posters, 5,000 lines a body): {:.0} records/s, {:.3} CPU s per M records",
        n as f64 / http_secs,
        http_cpu / m
    );
    // The faster of the librdkafka produce runs (1 client or several), against HTTP.
    if let Some(best) = produced
        .iter()
        .step_by(per_broker)
        .map(|(_, clients, (secs, _))| (*clients, *secs))
        .min_by(|a, b| a.1.total_cmp(&b.1))
    {
        println!(
            "ferry kafka produce ({} client(s), the faster) / ferry http ingest: {:.2}x in records/s; collector CPU per record, 1 client: {:.2}x http's",
            best.0,
            http_secs / best.1,
            produced[0].2.1 / http_cpu.max(1e-9)
        );
    }
    println!(
        "ferry kafka produce of encoded requests (8 connections) / ferry http ingest (8 posters): {:.2}x in records/s, {:.2}x in collector CPU per record",
        http_secs / raw[0].1.0,
        raw[0].1.1 / http_cpu.max(1e-9)
    );
}
