//! KafkaSink against librdkafka's own in-process broker (the mock cluster): fast, and it can be
//! made to fail on purpose.

use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, Codec, DecodeLimits};
use ferry_core::record::{Field, FileId, OriginKey};
use ferry_kafka::{KafkaConfig, KafkaError, KafkaSink, mapping};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

fn origin() -> OriginKey {
    OriginKey {
        agent_id: "host-7".into(),
        file: FileId {
            dev: 0x801,
            inode: 1234,
            fingerprint: 0xfeed,
            generation: 2,
        },
    }
}

/// `n` records from one file starting at byte 1000, each with a `user` field and an event time.
fn batch(n: u64) -> Batch {
    let mut b = BatchBuilder::with_origin(origin(), 1000);
    for i in 0..n {
        let line = format!("line {i} of the test");
        let user = format!("u{}", i % 7);
        b.push(
            line.as_bytes(),
            line.len() as u64 + 1,
            Some(1_700_000_000_000 + i as i64),
            false,
            &[Field::new("user", user), Field::new("env", "test")],
        );
    }
    let enc = Bytes::from(b.finish(Codec::None, 0, 1_700_000_000_000).unwrap());
    batch::decode(&enc, &DecodeLimits::default()).unwrap()
}

/// Reads every message of `topic` from the beginning until `n` arrived or `timeout` passed.
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
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < timeout {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(mapping::decode(
                m.payload(),
                m.timestamp().to_millis(),
                m.headers(),
            ));
        }
    }
    // Anything beyond n would be a duplicate: give it a moment to show up.
    let extra = Instant::now();
    while extra.elapsed() < Duration::from_millis(300) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            out.push(mapping::decode(
                m.payload(),
                m.timestamp().to_millis(),
                m.headers(),
            ));
        }
    }
    out
}

/// Resends `b` until it succeeds, as a client does after a 503 (the producer needs a moment to
/// reconnect or refresh metadata after a failure); fails after `within`.
async fn resend_until_ok(sink: &KafkaSink, topic: &str, b: &Batch, within: Duration) -> u64 {
    let start = Instant::now();
    loop {
        match sink.send_batch(topic, b, None).await {
            Ok(r) => return r.records,
            Err(e) if start.elapsed() < within => {
                eprintln!("resend failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("resend still failing after {within:?}: {e}"),
        }
    }
}

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_delivers_exactly_n_records_with_headers() {
    with_timeout(async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("logs", PARTITIONS, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let sink = KafkaSink::new(&KafkaConfig::new(brokers.clone())).unwrap();
        let b = batch(1000);
        let report = sink.send_batch("logs", &b, Some("user")).await.unwrap();
        assert_eq!(report.records, 1000);
        assert_eq!(
            report.partitions.values().map(|p| p.0).sum::<u64>(),
            1000,
            "{report:?}"
        );
        let got = tokio::task::spawn_blocking(move || {
            read_all(&brokers, "logs", 1000, Duration::from_secs(20))
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 1000, "exactly the records sent, no more");
        let mut got: Vec<_> = got.into_iter().collect();
        got.sort_by_key(|d| d.record.offset);
        for (d, want) in got.iter().zip(&b.records) {
            assert_eq!(d.record.line, want.line);
            assert_eq!(d.record.offset, want.offset);
            assert_eq!(d.record.event_time_ms, want.event_time_ms);
            assert_eq!(d.record.fields, want.fields);
            assert_eq!(d.origin.as_ref(), Some(&origin()));
            assert_eq!(d.malformed_headers, 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_goes_to_the_same_partition() {
    with_timeout(async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("keyed", PARTITIONS, 1).unwrap();
        let sink = KafkaSink::new(&KafkaConfig::new(mock.bootstrap_servers())).unwrap();
        // One batch per user: each lands in a single partition.
        for user in 0..5 {
            let mut b = BatchBuilder::new();
            for i in 0..50 {
                b.push(
                    format!("{user}-{i}").as_bytes(),
                    0,
                    None,
                    false,
                    &[Field::new("user", format!("user-{user}"))],
                );
            }
            let enc = Bytes::from(b.finish(Codec::Gzip, 1, 1).unwrap());
            let b = batch::decode(&enc, &DecodeLimits::default()).unwrap();
            let r = sink.send_batch("keyed", &b, Some("user")).await.unwrap();
            assert_eq!(r.records, 50);
            assert_eq!(r.partitions.len(), 1, "user-{user}: {r:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_produce_requests_fail_the_batch_and_a_resend_succeeds() {
    with_timeout(async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("refused", PARTITIONS, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let mut config = KafkaConfig::new(brokers.clone());
        config.message_timeout = ferry_core::config::Duration::from_secs(5);
        let sink = KafkaSink::new(&config).unwrap();
        // A non-retriable error on the next produce requests.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 8],
        );
        let b = batch(200);
        let err = sink.send_batch("refused", &b, None).await.unwrap_err();
        match &err {
            KafkaError::Delivery { failed, .. } => assert!(*failed > 0, "{err}"),
            other => panic!("expected a delivery error, got {other}"),
        }
        mock.clear_request_errors(RDKafkaApiKey::Produce);
        let n = resend_until_ok(&sink, "refused", &b, Duration::from_secs(20)).await;
        assert_eq!(n, 200);
        // At-least-once: every record of the batch is readable; some may be there twice (from
        // the requests that were not refused the first time), none is missing.
        let got = tokio::task::spawn_blocking(move || {
            read_all(&brokers, "refused", 400, Duration::from_secs(5))
        })
        .await
        .unwrap();
        let mut offsets: Vec<u64> = got.iter().filter_map(|d| d.record.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let want: Vec<u64> = b.records.iter().filter_map(|r| r.offset).collect();
        assert_eq!(offsets, want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_fails_the_batch_within_the_message_timeout_and_recovery_succeeds() {
    with_timeout(async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("down", PARTITIONS, 1).unwrap();
        let mut config = KafkaConfig::new(mock.bootstrap_servers());
        config.message_timeout = ferry_core::config::Duration::from_millis(1500);
        let sink = KafkaSink::new(&config).unwrap();
        // Warm up (metadata, producer id) so the failure below is the broker's, not startup's.
        assert_eq!(
            sink.send_batch("down", &batch(10), None)
                .await
                .unwrap()
                .records,
            10
        );
        mock.broker_down(1).unwrap();
        let started = Instant::now();
        let err = sink
            .send_batch("down", &batch(100), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, KafkaError::Delivery { failed: 100, .. }),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        mock.broker_up(1).unwrap();
        let n = resend_until_ok(&sink, "down", &batch(100), Duration::from_secs(20)).await;
        assert_eq!(n, 100);
    })
    .await;
}

/// Keyless records of one file stay in one partition (so in order), batch after batch, as in
/// the embedded store; different files spread over the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_files_records_stay_in_one_partition() {
    with_timeout(async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("files", PARTITIONS, 1).unwrap();
        let sink = KafkaSink::new(&KafkaConfig::new(mock.bootstrap_servers())).unwrap();
        let file_batch = |inode: u64, first: u64| {
            let mut key = origin();
            key.file.inode = inode;
            let mut b = BatchBuilder::with_origin(key, first);
            for i in 0..300 {
                b.push_line(format!("{inode}:{first}:{i}").as_bytes(), 10);
            }
            let enc = Bytes::from(b.finish(Codec::None, 0, 1).unwrap());
            batch::decode(&enc, &DecodeLimits::default()).unwrap()
        };
        let mut seen = std::collections::BTreeSet::new();
        for inode in 0..8u64 {
            let mut file_partitions = std::collections::BTreeSet::new();
            for n in 0..3u64 {
                let r = sink
                    .send_batch("files", &file_batch(inode, n * 3000), None)
                    .await
                    .unwrap();
                assert_eq!(r.records, 300);
                file_partitions.extend(r.partitions.keys().copied());
            }
            assert_eq!(
                file_partitions.len(),
                1,
                "file {inode}: {file_partitions:?}"
            );
            seen.extend(file_partitions);
        }
        assert!(seen.len() > 1, "eight files all in partitions {seen:?}");
    })
    .await;
}
