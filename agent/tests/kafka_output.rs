//! The agent's `kafka` output against librdkafka's in-process broker (the mock cluster, a real
//! Kafka-protocol broker inside the test process that can be taken down on purpose): the whole
//! agent (real files, reader, compression workers, shipper, checkpoints) delivering into it.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ferry_agent::checkpoint::Checkpointer;
use ferry_agent::config::{AgentConfig, InputConfig, OutputConfig, ReadFrom};
use ferry_agent::output::kafka::KafkaOutput;
use ferry_agent::output::{BatchMeta, Output, OutputError};
use ferry_agent::{Agent, AgentStats};
use ferry_core::batch::{BatchBuilder, Codec};
use ferry_core::config::{ByteSize, Duration as CfgDuration};
use ferry_core::record::{FileId, OriginKey};
use ferry_core::shutdown::Shutdown;
use ferry_kafka::{KafkaConfig, mapping};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;
const AGENT_ID: &str = "kafka-agent";

fn agent_config(dir: &Path, brokers: &str, message_timeout: CfgDuration) -> AgentConfig {
    let mut kafka = KafkaConfig::new(brokers);
    kafka.message_timeout = message_timeout;
    kafka.topic_prefix = "ferry.".into();
    let mut cfg = AgentConfig {
        id: Some(AGENT_ID.into()),
        data_dir: dir.join("data"),
        inputs: vec![InputConfig {
            name: "app".into(),
            include: vec![format!("{}/logs/*.log", dir.display())],
            exclude: vec![],
            read_from: ReadFrom::Beginning,
            topic: "app".into(),
            fields: Default::default(),
            multiline: None,
            max_line_bytes: ByteSize::kib(64),
            line_flush_timeout: CfgDuration::from_secs(60),
            rotate_wait: CfgDuration::from_secs(30),
        }],
        output: OutputConfig::Kafka(Box::new(kafka)),
        ..Default::default()
    };
    cfg.batch.linger = CfgDuration::from_millis(10);
    cfg.batch.max_records = 100;
    cfg.checkpoint_interval = CfgDuration::from_millis(50);
    cfg.rescan_interval = CfgDuration::from_secs(2);
    cfg.buffer_bytes = ByteSize::mib(2);
    cfg
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    f.write_all(text.as_bytes()).unwrap();
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Every message of `topic` from the beginning, until `n` arrived or `timeout` passed, plus
/// whatever shows up in a short while after (a duplicate would).
fn read_all(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<mapping::Decoded> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            out.push(mapping::decode(
                m.payload(),
                m.timestamp().to_millis(),
                m.headers(),
            ));
            continue;
        }
        if out.len() >= n {
            let q = *quiet_since.get_or_insert_with(Instant::now);
            if q.elapsed() > Duration::from_millis(300) {
                break;
            }
        }
        if start.elapsed() > timeout {
            break;
        }
    }
    out
}

async fn wait_acked(stats: &AgentStats, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while AgentStats::get(&stats.records_acked) < n {
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} records acknowledged",
            AgentStats::get(&stats.records_acked)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn checkpoint_offset(dir: &Path, log: &Path) -> u64 {
    Checkpointer::new(&dir.join("data"))
        .unwrap()
        .load()
        .unwrap()
        .by_path(&log.display().to_string())
        .map_or(0, |c| c.offset)
}

/// A real agent tails a file into Kafka: exactly the lines written arrive, each once, in file
/// order within their partition, each with the origin headers (agent, file, byte offset), and
/// the checkpoint ends at the end of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_delivers_exactly_the_lines_with_origin_headers() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.app", PARTITIONS, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    let want = numbered("line", 0..2000);
    append(&log, &want[..1200]);

    let agent = Agent::new(agent_config(
        dir.path(),
        &brokers,
        CfgDuration::from_secs(10),
    ))
    .unwrap();
    let stats = agent.stats();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    wait_acked(&stats, 1200, Duration::from_secs(20)).await;
    append(&log, &want[1200..]);
    wait_acked(&stats, 2000, Duration::from_secs(20)).await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    let size = std::fs::metadata(&log).unwrap().len();
    assert_eq!(checkpoint_offset(dir.path(), &log), size);

    let got = tokio::task::spawn_blocking(move || {
        read_all(&brokers, "ferry.app", 2000, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 2000, "exactly the lines written, none twice");
    let origin = got[0].origin.clone().expect("origin headers");
    assert_eq!(origin.agent_id, AGENT_ID);
    let mut by_offset: Vec<(u64, String)> = got
        .iter()
        .map(|d| {
            assert_eq!(d.origin.as_ref(), Some(&origin), "one file, one origin");
            assert_eq!(d.malformed_headers, 0);
            (
                d.record.offset.expect("offset header"),
                String::from_utf8(d.record.line.to_vec()).unwrap(),
            )
        })
        .collect();
    // Received order within the one partition the file maps to is file order.
    let received: Vec<u64> = by_offset.iter().map(|(o, _)| *o).collect();
    let mut sorted = received.clone();
    sorted.sort_unstable();
    assert_eq!(received, sorted, "one file's lines keep their order");
    by_offset.sort();
    // The offset header is the line's byte offset in the file.
    let mut at = 0u64;
    for ((offset, line), w) in by_offset.iter().zip(&want) {
        assert_eq!((offset, line), (&at, w));
        at += w.len() as u64 + 1;
    }
}

fn one_batch(n: u64) -> (Bytes, BatchMeta) {
    let origin = OriginKey {
        agent_id: AGENT_ID.into(),
        file: FileId {
            dev: 1,
            inode: 2,
            fingerprint: 3,
            generation: 0,
        },
    };
    let mut b = BatchBuilder::with_origin(origin, 0);
    for i in 0..n {
        b.push_line(format!("r-{i}").as_bytes(), 10);
    }
    let enc = Bytes::from(b.finish(Codec::Gzip, 1, 1).unwrap());
    let meta = BatchMeta {
        records: u32::try_from(n).unwrap(),
        first_offset: 0,
        end_offset: n * 10,
        after: None,
    };
    (enc, meta)
}

/// With the broker down, `send` answers Retryable (never Ok), within about the message
/// timeout; once it is back, the same batch is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_retryable_and_recovers() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("down", PARTITIONS, 1).unwrap();
    let mut config = KafkaConfig::new(mock.bootstrap_servers());
    config.message_timeout = CfgDuration::from_millis(1500);
    let out = KafkaOutput::new(&config).unwrap();
    let (b, meta) = one_batch(50);
    let ack = out.send("down", b.clone(), &meta).await.unwrap();
    assert_eq!(ack.stored, Some(50));

    mock.broker_down(1).unwrap();
    let started = Instant::now();
    let err = out.send("down", b.clone(), &meta).await.unwrap_err();
    assert!(
        matches!(&err, OutputError::Retryable { reason, .. } if reason.contains("not acknowledged")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    mock.broker_up(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match out.send("down", b.clone(), &meta).await {
            Ok(ack) => {
                assert_eq!(ack.stored, Some(50));
                break;
            }
            Err(e @ OutputError::Retryable { .. }) if Instant::now() < deadline => {
                eprintln!("still recovering: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e:?}"),
        }
    }
    // A batch that does not decode cannot get better.
    let err = out
        .send("down", Bytes::from_static(b"not a batch"), &meta)
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::Rejected { .. }), "{err:?}");
}

/// The agent's checkpoint does not move while Kafka does not acknowledge: with the broker down
/// the shipper retries, nothing is counted as acknowledged or dropped; once it is back every
/// line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_waits_for_kafka_while_the_broker_is_down() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.app", PARTITIONS, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    let want = numbered("line", 0..600);
    append(&log, &want[..200]);

    let agent = Agent::new(agent_config(
        dir.path(),
        &brokers,
        CfgDuration::from_millis(1000),
    ))
    .unwrap();
    let stats: Arc<AgentStats> = agent.stats();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    wait_acked(&stats, 200, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = checkpoint_offset(dir.path(), &log);
    assert_eq!(before, std::fs::metadata(&log).unwrap().len());

    mock.broker_down(1).unwrap();
    append(&log, &want[200..]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while AgentStats::get(&stats.retries) < 2 {
        assert!(
            Instant::now() < deadline,
            "no retries while the broker is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(AgentStats::get(&stats.records_acked), 200);
    assert_eq!(AgentStats::get(&stats.records_dropped), 0);
    assert_eq!(checkpoint_offset(dir.path(), &log), before);

    mock.broker_up(1).unwrap();
    wait_acked(&stats, 600, Duration::from_secs(30)).await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_eq!(AgentStats::get(&stats.records_dropped), 0);
    assert_eq!(
        checkpoint_offset(dir.path(), &log),
        std::fs::metadata(&log).unwrap().len()
    );
    let got = tokio::task::spawn_blocking(move || {
        read_all(&brokers, "ferry.app", 600, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let lines: std::collections::BTreeSet<String> = got
        .iter()
        .map(|d| String::from_utf8(d.record.line.to_vec()).unwrap())
        .collect();
    assert_eq!(
        lines,
        want.iter().cloned().collect(),
        "every line arrived (at least once)"
    );
}
