//! The store's public API: topics, append, read semantics, timestamps, long poll, reopen,
//! fsync policies, consumer-group offsets, close.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::{FsyncPolicy, Store, StoreConfig, StoreError};
use std::time::Duration;

#[test]
fn topic_names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    for bad in [
        "",
        ".",
        "..",
        "__internal",
        "a/b",
        "sp ace",
        &"x".repeat(250),
    ] {
        assert!(
            matches!(
                store.create_topic(bad, 1),
                Err(StoreError::InvalidTopicName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(store.create_topic("logs.app_1-x", 3).unwrap());
    assert!(!store.create_topic("logs.app_1-x", 3).unwrap());
    assert!(matches!(
        store.create_topic("logs.app_1-x", 4),
        Err(StoreError::TopicExists { partitions: 3, .. })
    ));
    assert_eq!(store.topic_partitions("logs.app_1-x"), Some(3));
    assert_eq!(store.topic_partitions("nope"), None);
}

#[tokio::test]
async fn append_read_roll_and_reopen_under_every_policy() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Group,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), small_config(policy)).unwrap();
        store.create_topic("t", 2).unwrap();
        let mut expect = Vec::new();
        for i in 0..60u64 {
            let ls = lines(&format!("p{policy:?}"), i * 5..i * 5 + 5);
            let out = store.append("t", 0, plain_batch(&ls)).await.unwrap();
            assert_eq!(out.base_offset, i * 5);
            assert_eq!((out.stored, out.deduplicated), (5, 0));
            for (j, l) in ls.into_iter().enumerate() {
                expect.push((i * 5 + j as u64, l));
            }
        }
        assert_eq!(read_records(&store, "t", 0, 0), expect);
        assert_eq!(read_records(&store, "t", 0, 17), expect[17..].to_vec());
        let info = store.topics();
        assert_eq!(info[0].partitions[0].end_offset, 300);
        assert!(info[0].partitions[0].segments >= 2, "segments roll by size");
        assert_eq!(info[0].partitions[1].end_offset, 0);
        store.close().await.unwrap();
        assert!(matches!(
            store.append("t", 0, plain_batch(&lines("x", 0..1))).await,
            Err(StoreError::Closed)
        ));
        drop(store);

        let store = Store::open(dir.path(), small_config(policy)).unwrap();
        assert!(
            store.recovery_report().is_clean(),
            "{:?}",
            store.recovery_report()
        );
        assert_eq!(read_records(&store, "t", 0, 0), expect);
        let out = store
            .append("t", 0, plain_batch(&lines("after", 0..2)))
            .await
            .unwrap();
        assert_eq!(out.base_offset, 300);
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn read_semantics_match_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    store.create_topic("t", 1).unwrap();
    for i in 0..10u64 {
        store
            .append("t", 0, plain_batch(&lines("r", i * 3..i * 3 + 3)))
            .await
            .unwrap();
    }
    // The batch containing the offset comes first.
    let r = store.read("t", 0, 4, 1).unwrap();
    assert_eq!(r.batches.len(), 1, "at least one batch even over max_bytes");
    assert_eq!(r.batches[0].base_offset, 3);
    assert_eq!((r.log_start, r.end_offset), (0, 30));
    let r = store.read("t", 0, 0, 1 << 20).unwrap();
    assert_eq!(r.batches.len(), 10);
    let two = r.batches[0].data.len() + r.batches[1].data.len() + 2 * 28;
    let r = store.read("t", 0, 0, two).unwrap();
    assert_eq!(r.batches.len(), 2, "budget respected after the first batch");
    assert!(store.read("t", 0, 30, 100).unwrap().batches.is_empty());
    assert!(matches!(
        store.read("t", 0, 31, 100),
        Err(StoreError::OffsetOutOfRange {
            requested: 31,
            end_offset: 30,
            ..
        })
    ));
    assert!(matches!(
        store.read("nope", 0, 0, 1),
        Err(StoreError::UnknownTopic(_))
    ));
    assert!(matches!(
        store.read("t", 1, 0, 1),
        Err(StoreError::UnknownPartition { partition: 1, .. })
    ));
    // Garbage is refused before it reaches the log.
    assert!(matches!(
        store
            .append(
                "t",
                0,
                bytes::Bytes::from_static(b"not a batch at all, no no no no")
            )
            .await,
        Err(StoreError::Batch(_))
    ));
    let mut flipped = plain_batch(&lines("f", 0..2)).to_vec();
    let n = flipped.len();
    flipped[n - 3] ^= 1;
    assert!(matches!(
        store.append("t", 0, flipped.into()).await,
        Err(StoreError::Batch(_))
    ));
}

#[tokio::test]
async fn timestamps_map_to_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    store.create_topic("t", 1).unwrap();
    let mut marks = Vec::new();
    for i in 0..6u64 {
        let before = ferry_core::now_ms();
        let out = store
            .append("t", 0, plain_batch(&lines("t", i * 4..i * 4 + 4)))
            .await
            .unwrap();
        marks.push((before, out.base_offset));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (ts, base) in &marks {
        let got = store.offset_for_timestamp("t", 0, *ts).unwrap();
        assert!(got <= *base, "ts {ts}: got {got}, batch at {base}");
        let r = store.read("t", 0, got, 1).unwrap();
        assert!(r.batches[0].append_time_ms >= *ts);
    }
    assert_eq!(store.offset_for_timestamp("t", 0, i64::MIN).unwrap(), 0);
    assert_eq!(
        store
            .offset_for_timestamp("t", 0, ferry_core::now_ms() + 60_000)
            .unwrap(),
        24
    );
}

#[tokio::test]
async fn wait_for_data_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    store.create_topic("t", 1).unwrap();
    let started = std::time::Instant::now();
    store
        .wait_for_data("t", 0, 0, Duration::from_millis(50))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(45),
        "times out with no data"
    );
    let s2 = store.clone();
    let waiter = tokio::spawn(async move {
        let t = std::time::Instant::now();
        s2.wait_for_data("t", 0, 0, Duration::from_secs(10)).await;
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append("t", 0, plain_batch(&lines("w", 0..1)))
        .await
        .unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "woke on append, not on timeout"
    );
}

#[tokio::test]
async fn a_store_directory_is_opened_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let err = Store::open(dir.path(), StoreConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("already open"), "{err}");
    drop(store);
    Store::open(dir.path(), StoreConfig::default()).unwrap();
}

#[tokio::test]
async fn group_offsets_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    store.create_topic("t", 2).unwrap();
    store
        .commit_offsets("g1", &[("t".into(), 0, 5), ("t".into(), 1, 7)])
        .await
        .unwrap();
    store
        .commit_offsets("g2", &[("t".into(), 1, 1)])
        .await
        .unwrap();
    store
        .commit_offsets("g1", &[("t".into(), 0, 9)])
        .await
        .unwrap();
    assert!(matches!(
        store.commit_offsets("g1", &[("nope".into(), 0, 1)]).await,
        Err(StoreError::UnknownTopic(_))
    ));
    drop(store); // no close: commits were durable when they returned
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.groups(), vec!["g1".to_string(), "g2".to_string()]);
    assert_eq!(
        store.committed_offsets("g1"),
        vec![("t".into(), 0, 9), ("t".into(), 1, 7)]
    );
    assert_eq!(store.committed_offsets("none"), vec![]);
}

#[test]
fn config_parses_from_yaml_with_defaults() {
    let cfg: StoreConfig = ferry_core::config::load_str(
        "fsync: interval\nfsync_interval: 250ms\nsegment_bytes: 64MiB\nretention:\n  max_bytes: 1GiB\n",
        std::path::Path::new("store.yaml"),
    )
    .unwrap();
    assert_eq!(cfg.fsync, FsyncPolicy::Interval);
    assert_eq!(cfg.segment_bytes.get(), 64 << 20);
    assert_eq!(cfg.retention.max_bytes.map(|b| b.get()), Some(1 << 30));
    assert_eq!(cfg.group_commit_window.get(), Duration::from_millis(2));
    let bad: Result<StoreConfig, _> =
        ferry_core::config::load_str("fsync: sometimes\n", std::path::Path::new("s.yaml"));
    assert!(bad.is_err());
    let bad: Result<StoreConfig, _> =
        ferry_core::config::load_str("segmnt_bytes: 1\n", std::path::Path::new("s.yaml"));
    assert!(bad.is_err());
}

#[tokio::test]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(FsyncPolicy::Group);
    cfg.segment_bytes = ferry_core::config::ByteSize::mib(64);
    cfg.segment_age = ferry_core::config::Duration::from_millis(30);
    let store = Store::open(dir.path(), cfg).unwrap();
    store.create_topic("t", 1).unwrap();
    store
        .append("t", 0, plain_batch(&lines("a", 0..2)))
        .await
        .unwrap();
    store
        .append("t", 0, plain_batch(&lines("b", 0..2)))
        .await
        .unwrap();
    assert_eq!(store.topics()[0].partitions[0].segments, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = store
        .append("t", 0, plain_batch(&lines("c", 0..2)))
        .await
        .unwrap();
    assert_eq!(out.base_offset, 4);
    let info = store.topics()[0].partitions[0].clone();
    assert_eq!(
        info.segments, 2,
        "the old segment was sealed by age before this append"
    );
    assert_eq!(files(dir.path(), "t", 0, "log").len(), 2);
    assert_eq!(
        files(dir.path(), "t", 0, "index").len(),
        1,
        "sealed segments get index files"
    );
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        got,
        [lines("a", 0..2), lines("b", 0..2), lines("c", 0..2)].concat()
    );
}

/// The HTTP layer keeps a `Store` in axum state and awaits its futures in handlers: they must
/// be `Send`, and the store `Send + Sync + Clone + 'static`.
#[test]
fn store_and_its_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn is_state<T: Send + Sync + Clone + 'static>() {}
    is_state::<Store>();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let append = store.append("t", 0, plain_batch(&lines("x", 0..1)));
    is_send(&append);
    let wait = store.wait_for_data("t", 0, 0, Duration::from_millis(1));
    is_send(&wait);
    let commit = store.commit_offsets("g", &[]);
    is_send(&commit);
    let close = store.close();
    is_send(&close);
}

/// A topic creation cut off by a crash (directories made, no `topic.meta` yet) leaves nothing
/// behind after the next open; a topic whose metadata is there but corrupt is kept (and
/// reported), since it may hold records. Deleted topics are gone for good across a reopen.
#[tokio::test]
async fn incomplete_creations_are_removed_on_open_and_deletes_stick() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    store.create_topic("kept", 1).unwrap();
    store.create_topic("gone", 2).unwrap();
    store
        .append("kept", 0, plain_batch(&lines("k", 0..3)))
        .await
        .unwrap();
    assert!(store.delete_topic("gone").unwrap());
    assert!(!store.delete_topic("gone").unwrap());
    assert!(matches!(
        store
            .append("gone", 0, plain_batch(&lines("g", 0..1)))
            .await,
        Err(StoreError::UnknownTopic(_))
    ));
    store.close().await.unwrap();
    drop(store);
    let topics = dir.path().join("topics");
    std::fs::create_dir_all(topics.join("half/0")).unwrap();
    std::fs::write(topics.join("half/0/00000000000000000000.log"), b"").unwrap();
    std::fs::create_dir_all(topics.join("broken/0")).unwrap();
    std::fs::write(topics.join("broken/topic.meta"), b"garbage").unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let names: Vec<String> = store.topics().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["kept"]);
    assert!(
        !topics.join("half").exists(),
        "incomplete topic left behind"
    );
    assert!(!topics.join("gone").exists());
    assert!(
        topics.join("broken").exists(),
        "a topic with corrupt metadata was removed"
    );
    let notes = &store.recovery_report().notes;
    assert!(
        notes.iter().any(|n| n.contains("never fully created")),
        "{notes:?}"
    );
    assert_eq!(store.read("kept", 0, 0, 1 << 20).unwrap().end_offset, 3);
}

/// Issue 16: a topic deleted (and created again) while appends roll its segments. A roll for
/// a partition whose directory had just moved to the trash failed with an I/O error, and a
/// failed roll stops the whole store. Now a deleted partition does no more file I/O: appends
/// racing the delete are stored into the old topic or refused with `UnknownTopic`, nothing
/// else; the store stays writable, the recreated topic reads back whole, and a reopen finds
/// nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_recreated_while_its_segments_roll_keeps_the_store_writable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(FsyncPolicy::Group);
    config.max_open_files = Some(4);
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", 2).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (store, stop) = (store.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut stored, mut refused, mut i) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // ~1.5 KiB a batch into 4 KiB segments: a roll every few appends.
                let batch = plain_batch(&lines(&format!("w{w}-{i}-{}", "x".repeat(100)), 0..12));
                match store.append("t", w % 2, batch).await {
                    Ok(_) => stored += 1,
                    Err(StoreError::UnknownTopic(_) | StoreError::UnknownPartition { .. }) => {
                        refused += 1;
                        // Deleted, not yet created again: wait for it.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("writer {w}, append {i}: {e}"),
                }
                i += 1;
            }
            (stored, refused)
        }));
    }
    for round in 0..30 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert!(store.delete_topic("t").unwrap(), "round {round}");
        store.create_topic("t", 2).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut stored, mut refused) = (0, 0);
    for w in writers {
        let (s, r) = w.await.unwrap();
        stored += s;
        refused += r;
    }
    eprintln!("30 deletions racing 4 writers: {stored} appends stored, {refused} refused");
    assert!(stored > 30, "the writers barely ran ({stored} stored)");
    // Still writable, and the last incarnation of the topic reads back whole.
    store
        .append("t", 0, plain_batch(&lines("after", 0..3)))
        .await
        .unwrap();
    store.create_topic("u", 1).unwrap();
    store
        .append("u", 0, plain_batch(&lines("u", 0..3)))
        .await
        .unwrap();
    let mut held = 0;
    for p in 0..2 {
        let records = read_records(&store, "t", p, 0);
        for (i, (offset, _)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64, "partition {p}: offsets not contiguous");
        }
        held += records.len();
    }
    assert!(held >= 3);
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path(), config).unwrap();
    assert!(
        store.recovery_report().is_clean(),
        "{:?}",
        store.recovery_report()
    );
    let mut after = 0;
    for p in 0..2 {
        after += read_records(&store, "t", p, 0).len();
    }
    assert_eq!(after, held);
    assert!(
        std::fs::read_dir(dir.path().join("trash")).map_or(true, |d| d.count() == 0),
        "deleted topics left in the trash"
    );
}
