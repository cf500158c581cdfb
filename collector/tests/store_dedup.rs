//! Origin dedup: replays dropped and counted, straddlers trimmed, state rebuilt on reopen (from
//! snapshots plus the tail, or from the data alone), and correct after a torn tail.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::{FsyncPolicy, Store};
use ferry_core::batch::{DecodeLimits, decode};
use std::io::Write;

#[tokio::test]
async fn replay_is_dropped_and_straddler_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    store.create_topic("t", 2).unwrap();
    let key = origin("host-a", 7);
    let ls = lines("l", 0..4); // "l-0".."l-3": 4 bytes each with newline -> [0, 16)
    let b1 = batch_from(&key, 0, &ls);
    let out = store.append("t", 0, b1.clone()).await.unwrap();
    assert_eq!((out.base_offset, out.stored, out.deduplicated), (0, 4, 0));
    let out = store.append("t", 0, b1.clone()).await.unwrap();
    assert_eq!((out.base_offset, out.stored, out.deduplicated), (4, 0, 4));
    // Same origin, another partition: independent.
    let out = store.append("t", 1, b1.clone()).await.unwrap();
    assert_eq!((out.stored, out.deduplicated), (4, 0));
    // [8, 24): the first two records were stored already.
    let b2 = batch_from(&key, 8, &lines("l", 2..6));
    let out = store.append("t", 0, b2).await.unwrap();
    assert_eq!((out.base_offset, out.stored, out.deduplicated), (4, 2, 2));
    let recs: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(recs, lines("l", 0..6));
    let r = store.read("t", 0, 4, 1 << 20).unwrap();
    let trimmed = decode(&r.batches[0].data, &DecodeLimits::default()).unwrap();
    let o = trimmed.header.origin.unwrap();
    assert_eq!(
        (o.first_offset, o.end_offset),
        (16, 24),
        "spans kept, end offset unchanged"
    );
    // Another file of the same agent is another origin.
    let out = store
        .append("t", 0, batch_from(&origin("host-a", 8), 0, &ls))
        .await
        .unwrap();
    assert_eq!(out.stored, 4);
    // Batches without an origin are never deduplicated.
    let p = plain_batch(&lines("p", 0..2));
    store.append("t", 0, p.clone()).await.unwrap();
    assert_eq!(store.append("t", 0, p).await.unwrap().stored, 2);
}

#[tokio::test]
async fn dedup_survives_reopen_with_and_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let key = origin("host-b", 1);
    let mut batches = Vec::new();
    {
        let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
        store.create_topic("t", 1).unwrap();
        let mut off = 0;
        for i in 0..80u64 {
            let ls = lines(&format!("rec{i}"), 0..3);
            let b = batch_from(&key, off, &ls);
            off += ls.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
            store.append("t", 0, b.clone()).await.unwrap();
            batches.push(b);
        }
        store.close().await.unwrap();
    }
    assert!(
        !files(dir.path(), "t", 0, "snapshot").is_empty(),
        "rolls write snapshots"
    );
    for round in 0..2 {
        if round == 1 {
            for f in files(dir.path(), "t", 0, "snapshot") {
                std::fs::remove_file(f).unwrap();
            }
        }
        let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
        let rep = store.recovery_report().partition("t", 0).unwrap().clone();
        assert_eq!(rep.dedup_snapshot.is_some(), round == 0);
        assert_eq!(rep.dedup_origins, 1);
        for b in [&batches[0], &batches[40], &batches[79]] {
            let out = store.append("t", 0, b.clone()).await.unwrap();
            assert_eq!((out.stored, out.deduplicated), (0, 3), "round {round}");
        }
        assert_eq!(store.topics()[0].partitions[0].end_offset, 240);
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn dedup_after_torn_tail_keeps_only_what_survived() {
    let dir = tempfile::tempdir().unwrap();
    let key = origin("host-c", 3);
    let a = batch_from(&key, 0, &lines("a", 0..3));
    let b = batch_from(&key, 12, &lines("b", 0..3));
    {
        let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
        store.create_topic("t", 1).unwrap();
        store.append("t", 0, a.clone()).await.unwrap();
        store.close().await.unwrap();
    }
    // Simulate a crash in the middle of writing b: half a frame at the end of the segment.
    let seg = files(dir.path(), "t", 0, "log").pop().unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&(b.len() as u32).to_le_bytes());
    frame.extend_from_slice(&[0xAB; 4]);
    frame.extend_from_slice(&3u64.to_le_bytes());
    frame.extend_from_slice(&0i64.to_le_bytes());
    frame.extend_from_slice(&3u32.to_le_bytes());
    frame.extend_from_slice(&b[..b.len() / 2]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&frame)
        .unwrap();

    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    let rep = store.recovery_report();
    assert_eq!(rep.truncated_bytes(), frame.len() as u64);
    // a is still known (dropped), b was never stored (accepted).
    let out = store.append("t", 0, a).await.unwrap();
    assert_eq!((out.stored, out.deduplicated), (0, 3));
    let out = store.append("t", 0, b).await.unwrap();
    assert_eq!((out.base_offset, out.stored, out.deduplicated), (3, 3, 0));
    let recs: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(recs, [lines("a", 0..3), lines("b", 0..3)].concat());
}
