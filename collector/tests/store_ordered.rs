//! Ordered appends (`Store::append_after`): a batch sent as following its file's records up to
//! an offset is stored only behind them — already stored, or staged ahead of it in the same
//! group commit. One that arrives first waits (parked) for its predecessor and is refused if
//! that does not come within a second, so several batches of one file can be in flight without
//! ever being stored out of order (which the origin dedup would take for a replay).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::fs::FaultyFs;
use ferry_collector::store::{FsyncPolicy, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn len(ls: &[String]) -> u64 {
    ls.iter().map(|l| l.len() as u64 + 1).sum()
}

#[tokio::test]
async fn a_batch_ahead_of_its_predecessor_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    store.create_topic("t", 1).unwrap();
    let key = origin("a", 1);
    let first = lines("x", 0..3);
    let second = lines("y", 0..3);
    let at = len(&first);
    let b1 = batch_from(&key, 0, &first);
    let b2 = batch_from(&key, at, &second);
    // Nothing of the file stored yet, and the predecessor never comes: refused after the wait.
    let t0 = std::time::Instant::now();
    let err = store
        .append_after("t", 0, b2.clone(), Some(at))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfOrder { after, high: None } if after == at),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of order"), "{err}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(read_records(&store, "t", 0, 0).is_empty());
    // The predecessor lands; now the same batch is stored, behind it.
    store.append_after("t", 0, b1.clone(), None).await.unwrap();
    let out = store
        .append_after("t", 0, b2.clone(), Some(at))
        .await
        .unwrap();
    assert_eq!((out.base_offset, out.stored), (3, 3));
    // A replay of either passes the check and is deduplicated.
    let out = store.append_after("t", 0, b2, Some(at)).await.unwrap();
    assert_eq!((out.stored, out.deduplicated), (0, 3));
    let out = store.append_after("t", 0, b1, Some(0)).await.unwrap();
    assert_eq!((out.stored, out.deduplicated), (0, 3));
    // Partly stored (the mark is below `after`): still refused.
    let third = lines("z", 0..2);
    let gap = at + len(&second) + 5;
    let err = store
        .append_after("t", 0, batch_from(&key, gap, &third), Some(gap))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfOrder { high: Some(h), .. } if h == at + len(&second)),
        "{err:?}"
    );
    // Batches without an origin have no order to keep.
    let out = store
        .append_after("t", 0, plain_batch(&lines("p", 0..2)), Some(99))
        .await
        .unwrap();
    assert_eq!(out.stored, 2);
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    let mut want = first.clone();
    want.extend(lines("y", 0..3));
    want.extend(lines("p", 0..2));
    assert_eq!(got, want);
}

/// A follower that reaches the store before its predecessor waits for it and is stored behind
/// it, in the same group commit.
#[tokio::test]
async fn a_follower_that_arrives_first_waits_for_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(FsyncPolicy::Group);
    cfg.segment_bytes = ferry_core::config::ByteSize(1 << 20);
    let store = Arc::new(Store::open(dir.path(), cfg).unwrap());
    store.create_topic("t", 1).unwrap();
    let key = origin("a", 1);
    let first = lines("x", 0..3);
    let at = len(&first);
    let second = lines("y", 0..3);
    let third = lines("z", 0..3);
    let at3 = at + len(&second);
    let s = store.clone();
    let b3 = batch_from(&key, at3, &third);
    let three = tokio::spawn(async move { s.append_after("t", 0, b3, Some(at3)).await });
    let s = store.clone();
    let b2 = batch_from(&key, at, &second);
    let two = tokio::spawn(async move { s.append_after("t", 0, b2, Some(at)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let one = store
        .append_after("t", 0, batch_from(&key, 0, &first), None)
        .await
        .unwrap();
    let (two, three) = (two.await.unwrap().unwrap(), three.await.unwrap().unwrap());
    assert_eq!(
        (one.base_offset, two.base_offset, three.base_offset),
        (0, 3, 6)
    );
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    let mut want = first;
    want.extend(second);
    want.extend(third);
    assert_eq!(got, want);
}

/// Many batches of one file raced into the store at once, each (but the first) sent as
/// following its predecessor and resent if refused: every record is stored exactly once and
/// in file order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_batches_of_one_file_are_stored_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(FsyncPolicy::Group);
    cfg.group_commit_window = ferry_core::config::Duration(Duration::from_millis(5));
    cfg.segment_bytes = ferry_core::config::ByteSize(1 << 20);
    let store = Arc::new(Store::open(dir.path(), cfg).unwrap());
    store.create_topic("t", 1).unwrap();
    let key = origin("a", 1);
    let mut batches = Vec::new();
    let mut off = 0;
    let mut want = Vec::new();
    for i in 0..64u64 {
        let ls = lines(&format!("b{i:02}"), 0..5);
        batches.push((batch_from(&key, off, &ls), off));
        off += len(&ls);
        want.extend(ls);
    }
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (b, first)) in batches.into_iter().enumerate() {
        let store = store.clone();
        let refused = refused.clone();
        tasks.spawn(async move {
            let after = (i > 0).then_some(first);
            loop {
                match store.append_after("t", 0, b.clone(), after).await {
                    Ok(out) => return out.stored,
                    Err(StoreError::OutOfOrder { .. }) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    let mut stored = 0;
    while let Some(n) = tasks.join_next().await {
        stored += n.unwrap();
    }
    assert_eq!(stored, 320);
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(got, want, "stored out of order or not exactly once");
    // Parked, not refused: every follower found its predecessor within the wait.
    assert_eq!(refused.load(Ordering::Relaxed), 0);
}

/// A batch staged behind its predecessor in the same group fails with it when that group's
/// write fails: it is never left stored with its predecessor missing.
#[tokio::test]
async fn a_failed_group_takes_the_follower_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let mut cfg = small_config(FsyncPolicy::Group);
    cfg.group_commit_window = ferry_core::config::Duration(Duration::from_millis(200));
    let store = Arc::new(Store::open_with_fs(dir.path(), cfg, Arc::new(fs.clone())).unwrap());
    store.create_topic("t", 1).unwrap();
    let key = origin("a", 1);
    let first = lines("x", 0..3);
    let at = len(&first);
    let b1 = batch_from(&key, 0, &first);
    let b2 = batch_from(&key, at, &lines("y", 0..3));
    fs.faults.fail_writes.store(true, Ordering::SeqCst);
    let s1 = store.clone();
    let one = tokio::spawn({
        let b1 = b1.clone();
        async move { s1.append_after("t", 0, b1, None).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s2 = store.clone();
    let two = tokio::spawn({
        let b2 = b2.clone();
        async move { s2.append_after("t", 0, b2, Some(at)).await }
    });
    let (r1, r2) = (one.await.unwrap(), two.await.unwrap());
    assert!(matches!(r1, Err(StoreError::Io { .. })), "{r1:?}");
    assert!(
        matches!(r2, Err(StoreError::Io { .. })),
        "the follower shared the failed group: {r2:?}"
    );
    fs.faults.fail_writes.store(false, Ordering::SeqCst);
    // Neither is remembered: both, resent in order, are stored.
    store.append_after("t", 0, b1, None).await.unwrap();
    assert_eq!(
        store
            .append_after("t", 0, b2, Some(at))
            .await
            .unwrap()
            .stored,
        3
    );
    assert_eq!(read_records(&store, "t", 0, 0).len(), 6);
}
