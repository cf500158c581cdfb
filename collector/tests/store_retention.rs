//! Retention by size, age and free disk; the active segment is never deleted.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::fs::FaultyFs;
use ferry_collector::store::{FsyncPolicy, RetentionConfig, Store, StoreError};
use ferry_core::config::{ByteSize, Duration};
use std::sync::Arc;
use std::sync::atomic::Ordering;

async fn fill(store: &Store, topic: &str, p: u32, batches: u64) {
    for i in 0..batches {
        store
            .append(topic, p, plain_batch(&lines(&format!("{topic}{i}"), 0..3)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn size_limit_deletes_oldest_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(FsyncPolicy::Never);
    cfg.retention = RetentionConfig {
        max_age: None,
        max_bytes: Some(ByteSize(10_000)),
        min_free_disk: None,
    };
    let store = Store::open(dir.path(), cfg).unwrap();
    store.create_topic("t", 1).unwrap();
    fill(&store, "t", 0, 300).await;
    let before = store.topics()[0].partitions[0].clone();
    assert!(before.size_bytes > 10_000);
    let stats = store.run_retention();
    assert!(stats.segments_deleted > 0);
    let after = store.topics()[0].partitions[0].clone();
    assert!(after.size_bytes <= 10_000, "{after:?}");
    assert!(after.log_start > 0);
    assert_eq!(after.end_offset, before.end_offset);
    assert_eq!(
        files(dir.path(), "t", 0, "log").len() as u32,
        after.segments
    );
    assert!(matches!(
        store.read("t", 0, 0, 100),
        Err(StoreError::OffsetOutOfRange { log_start, .. }) if log_start == after.log_start
    ));
    let got = read_records(&store, "t", 0, after.log_start);
    assert_eq!(got.len() as u64, after.end_offset - after.log_start);
    // Reopen agrees.
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert_eq!(store.topics()[0].partitions[0].log_start, after.log_start);
}

#[tokio::test]
async fn age_limit_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(FsyncPolicy::Never);
    cfg.retention.max_age = Some(Duration::from_millis(30));
    cfg.retention.max_bytes = Some(ByteSize(1));
    let store = Store::open(dir.path(), cfg).unwrap();
    store.create_topic("t", 1).unwrap();
    fill(&store, "t", 0, 200).await;
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    store.run_retention();
    let info = store.topics()[0].partitions[0].clone();
    assert_eq!(info.segments, 1, "only the active segment is left");
    assert_eq!(info.end_offset, 600);
    assert_eq!(
        info.log_start,
        files(dir.path(), "t", 0, "log")[0]
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
    // The active segment keeps serving reads and appends.
    assert!(
        !store
            .read("t", 0, info.log_start, 100)
            .unwrap()
            .batches
            .is_empty()
            || info.log_start == 600
    );
    store
        .append("t", 0, plain_batch(&lines("x", 0..1)))
        .await
        .unwrap();
}

#[tokio::test]
async fn free_disk_watermark_deletes_oldest_across_partitions_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let mut cfg = small_config(FsyncPolicy::Never);
    cfg.retention = RetentionConfig {
        max_age: None,
        max_bytes: None,
        min_free_disk: Some(ByteSize::gib(1)),
    };
    cfg.retention_check_interval = Duration::from_millis(20);
    let store = Store::open_with_fs(dir.path(), cfg, Arc::new(fs.clone())).unwrap();
    store.create_topic("a", 1).unwrap();
    store.create_topic("b", 1).unwrap();
    fs.faults.free_bytes.store(u64::MAX / 2, Ordering::SeqCst);
    fill(&store, "a", 0, 150).await;
    fill(&store, "b", 0, 150).await;
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let segs = |s: &Store| {
        s.topics()
            .iter()
            .map(|t| t.partitions[0].segments)
            .collect::<Vec<_>>()
    };
    assert!(
        segs(&store).iter().all(|n| *n > 1),
        "plenty of space: nothing deleted"
    );
    fs.faults.free_bytes.store(1, Ordering::SeqCst); // below the watermark
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while segs(&store) != vec![1, 1] {
        assert!(
            std::time::Instant::now() < deadline,
            "retention thread did not act: {:?}",
            segs(&store)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    store.close().await.unwrap();
}
