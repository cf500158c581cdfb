//! Fault injection through the file-system trait: failing writes and fsyncs reach `append`'s
//! caller, nothing acknowledged is lost, and the store stays usable (write) or refuses clearly
//! (fsync).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::fs::FaultyFs;
use ferry_collector::store::{FsyncPolicy, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn failed_write_is_reported_rolled_back_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let store = Store::open_with_fs(
        dir.path(),
        small_config(FsyncPolicy::Group),
        Arc::new(fs.clone()),
    )
    .unwrap();
    store.create_topic("t", 1).unwrap();
    let key = origin("a", 1);
    let mut want = Vec::new();
    let mut off = 0;
    for i in 0..5u64 {
        let ls = lines(&format!("ok{i}"), 0..2);
        store
            .append("t", 0, batch_from(&key, off, &ls))
            .await
            .unwrap();
        off += ls.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        want.extend(ls);
    }
    fs.faults.fail_writes.store(true, Ordering::SeqCst);
    let ls = lines("lost", 0..2);
    let failed = batch_from(&key, off, &ls);
    let err = store.append("t", 0, failed.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("injected write failure"));
    fs.faults.fail_writes.store(false, Ordering::SeqCst);
    // The failed batch was not stored and its origin range not remembered: a retry stores it,
    // at the offsets the failed one would have had.
    let out = store.append("t", 0, failed).await.unwrap();
    assert_eq!((out.base_offset, out.stored, out.deduplicated), (10, 2, 0));
    want.extend(ls);
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(got, want);
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    assert!(
        store.recovery_report().is_clean(),
        "{:?}",
        store.recovery_report()
    );
    let got: Vec<String> = read_records(&store, "t", 0, 0)
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn failed_fsync_fails_the_group_and_then_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let store = Store::open_with_fs(
        dir.path(),
        small_config(FsyncPolicy::Group),
        Arc::new(fs.clone()),
    )
    .unwrap();
    store.create_topic("t", 4).unwrap();
    let mut acked = Vec::new();
    for p in 0..4u32 {
        for i in 0..3u64 {
            let ls = lines(&format!("p{p}-{i}"), 0..2);
            store.append("t", p, plain_batch(&ls)).await.unwrap();
            acked.push((p, ls));
        }
    }
    fs.faults.fail_syncs.store(true, Ordering::SeqCst);
    // Several partitions in one group: every one of them fails.
    let mut tasks = Vec::new();
    for p in 0..4u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.append("t", p, plain_batch(&lines("doomed", 0..2))).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            matches!(r, Err(StoreError::Io { .. }) | Err(StoreError::Closed)),
            "{r:?}"
        );
    }
    // After a failed fsync the store refuses appends clearly; reads still work.
    assert!(matches!(
        store
            .append("t", 0, plain_batch(&lines("later", 0..1)))
            .await,
        Err(StoreError::Closed)
    ));
    for p in 0..4u32 {
        assert_eq!(store.read("t", p, 0, 1 << 20).unwrap().end_offset, 6);
    }
    drop(store);
    fs.faults.fail_syncs.store(false, Ordering::SeqCst);
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Group)).unwrap();
    for p in 0..4u32 {
        let got: Vec<String> = read_records(&store, "t", p, 0)
            .into_iter()
            .map(|r| r.1)
            .collect();
        let want: Vec<String> = acked
            .iter()
            .filter(|(q, _)| *q == p)
            .flat_map(|(_, l)| l.clone())
            .collect();
        assert_eq!(
            got, want,
            "partition {p}: acked data intact, the failed group gone"
        );
    }
    store
        .append("t", 0, plain_batch(&lines("again", 0..1)))
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_roll_reports_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let store = Store::open_with_fs(
        dir.path(),
        small_config(FsyncPolicy::Never),
        Arc::new(fs.clone()),
    )
    .unwrap();
    store.create_topic("t", 1).unwrap();
    let mut n = 0u64;
    // Fill close to a roll, then fail every fsync: the roll (which fsyncs) must fail loudly.
    while store.topics()[0].partitions[0].size_bytes < 3900 {
        store
            .append("t", 0, plain_batch(&lines("r", n..n + 3)))
            .await
            .unwrap();
        n += 3;
    }
    fs.faults.fail_syncs.store(true, Ordering::SeqCst);
    let mut saw_error = false;
    for _ in 0..5 {
        if store
            .append("t", 0, plain_batch(&lines("r", n..n + 3)))
            .await
            .is_err()
        {
            saw_error = true;
            break;
        }
        n += 3;
    }
    assert!(
        saw_error,
        "a roll needs an fsync and must not succeed silently without it"
    );
    fs.faults.fail_syncs.store(false, Ordering::SeqCst);
    drop(store);
    let store = Store::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    let got = read_records(&store, "t", 0, 0);
    assert_eq!(got.len() as u64, n);
}
