//! The mapping through a real Kafka-protocol broker (tansu), produced with KafkaSink and read
//! back with KafkaSource in a consumer group.

use bytes::Bytes;
use ferry_core::batch::{self, BatchBuilder, Codec, DecodeLimits};
use ferry_core::record::{Field, FileId, OriginKey};
use ferry_kafka::testing::Tansu;
use ferry_kafka::{
    Compression, ConsumedRecord, KafkaConfig, KafkaSink, KafkaSource, SourceConfig, StartPosition,
};
use std::time::{Duration, Instant};

async fn consume(config: &KafkaConfig, topic: &str, group: &str, n: usize) -> Vec<ConsumedRecord> {
    let source = KafkaSource::new(
        config,
        &SourceConfig {
            topics: vec![topic.into()],
            group: group.into(),
            start: StartPosition::Earliest,
        },
    )
    .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < Duration::from_secs(30) {
        let got = source.poll(1000, Duration::from_millis(200)).await.unwrap();
        source.commit_consumed(&got).await.unwrap();
        out.extend(got);
    }
    // A duplicate would arrive now, if any.
    out.extend(source.poll(1000, Duration::from_millis(500)).await.unwrap());
    source.close(Duration::from_secs(5)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_a_real_broker_with_every_codec() {
    let broker = Tansu::start();
    tokio::time::timeout(Duration::from_secs(60), async {
        let origin = OriginKey {
            agent_id: "web-1".into(),
            file: FileId {
                dev: 0x10303,
                inode: 99,
                fingerprint: 0xabcdef0123456789,
                generation: 0,
            },
        };
        let mut b = BatchBuilder::with_origin(origin.clone(), 500);
        let lines: Vec<Vec<u8>> = vec![
            b"plain line".to_vec(),
            b"{\"level\":\"error\",\"msg\":\"x\"}".to_vec(),
            b"\xff\xfe invalid utf-8 kept as is".to_vec(),
            Vec::new(),
        ];
        for (i, line) in lines.iter().enumerate() {
            let time = (i % 2 == 0).then_some(1_600_000_000_000 + i as i64);
            b.push(
                line,
                line.len() as u64 + 1,
                time,
                i == 3,
                &[Field::new("env", "prod")],
            );
        }
        let enc = Bytes::from(b.finish(Codec::Gzip, 1, 1_700_000_000_000).unwrap());
        let sent = batch::decode(&enc, &DecodeLimits::default()).unwrap();
        for (codec, compression) in [
            ("gzip", Compression::Gzip),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
            ("snappy", Compression::Snappy),
            ("none", Compression::None),
        ] {
            let mut config = KafkaConfig::new(broker.brokers());
            config.compression = compression;
            let sink = KafkaSink::new(&config).unwrap();
            let topic = format!("round-trip-{codec}");
            let report = sink.send_batch(&topic, &sent, None).await.unwrap();
            assert_eq!(report.records, 4);
            let mut got = consume(&config, &topic, &format!("g-{codec}"), 4).await;
            assert_eq!(got.len(), 4, "{codec}: exactly the records sent");
            got.sort_by_key(|r| r.record.offset);
            for (g, want) in got.iter().zip(&sent.records) {
                assert_eq!(g.record.line, want.line, "{codec}");
                assert_eq!(g.record.offset, want.offset, "{codec}");
                assert_eq!(g.record.truncated, want.truncated, "{codec}");
                assert_eq!(g.record.fields, want.fields, "{codec}");
                assert_eq!(g.origin.as_ref(), Some(&origin), "{codec}");
                // Known event times travel as the timestamp; unknown ones become ingest time.
                assert_eq!(
                    g.record.event_time_ms,
                    Some(want.event_time_ms.unwrap_or(1_700_000_000_000)),
                    "{codec}"
                );
            }
        }
    })
    .await
    .expect("test timed out");
}

/// The broker restarts empty (memory storage): a batch sent while it is down fails, and once
/// it is back, resending (as a client after a 503 does) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_fails_while_the_broker_is_down_and_recovers_after_restart() {
    let mut broker = Tansu::start();
    let port = broker.port;
    let mut config = KafkaConfig::new(broker.brokers());
    config.message_timeout = ferry_core::config::Duration::from_secs(2);
    if let Ok(d) = std::env::var("FERRY_TEST_KAFKA_DEBUG") {
        config.options.insert("debug".into(), d);
    }
    let sink = KafkaSink::new(&config).unwrap();
    let mut b = BatchBuilder::new();
    for i in 0..100 {
        b.push_line(format!("r{i}").as_bytes(), 0);
    }
    let enc = Bytes::from(b.finish(Codec::None, 0, 1_700_000_000_000).unwrap());
    let sent = batch::decode(&enc, &DecodeLimits::default()).unwrap();
    assert_eq!(
        sink.send_batch("restart", &sent, None)
            .await
            .unwrap()
            .records,
        100
    );
    broker.kill();
    assert!(sink.send_batch("restart", &sent, None).await.is_err());
    let _broker = Tansu::start_on(port);
    let start = Instant::now();
    loop {
        match sink.send_batch("restart", &sent, None).await {
            Ok(r) => {
                assert_eq!(r.records, 100);
                break;
            }
            Err(e) => {
                eprintln!("{:?}: {e}", start.elapsed());
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no recovery: {e}"
                );
            }
        }
    }
}
