//! Corruption of real segment and index files: chopped tails, flipped bytes in sealed
//! segments, damaged or missing index files.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::{FsyncPolicy, Store};
use std::path::Path;

/// A closed store with one topic `t` of one partition: 100 batches of 3 records, several
/// segments. Returns the records.
async fn filled(dir: &Path) -> Vec<(u64, String)> {
    let store = Store::open(dir, small_config(FsyncPolicy::Group)).unwrap();
    store.create_topic("t", 1).unwrap();
    for i in 0..100u64 {
        store
            .append("t", 0, plain_batch(&lines(&format!("b{i}"), 0..3)))
            .await
            .unwrap();
    }
    let all = read_records(&store, "t", 0, 0);
    store.close().await.unwrap();
    assert!(files(dir, "t", 0, "log").len() >= 3);
    all
}

fn reopen(dir: &Path) -> Store {
    Store::open(dir, small_config(FsyncPolicy::Group)).unwrap()
}

#[tokio::test]
async fn chopped_active_segment_is_truncated_and_reported() {
    for chop in [1usize, 27, 28, 40, 60] {
        let dir = tempfile::tempdir().unwrap();
        let all = filled(dir.path()).await;
        let seg = files(dir.path(), "t", 0, "log").pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len() as usize;
        let data = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &data[..len - chop]).unwrap();

        let store = reopen(dir.path());
        let rep = store.recovery_report().partition("t", 0).unwrap().clone();
        assert!(rep.truncated_bytes > 0, "chop {chop}: {rep:?}");
        assert!(rep.truncation.is_some());
        // Exactly the last batch (3 records) is gone; everything before it is intact.
        let got = read_records(&store, "t", 0, 0);
        assert_eq!(got, all[..all.len() - 3].to_vec(), "chop {chop}");
        // Appends continue at the recovered end.
        let out = store
            .append("t", 0, plain_batch(&lines("new", 0..1)))
            .await
            .unwrap();
        assert_eq!(out.base_offset, 297);
        store.close().await.unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert!(
            store.recovery_report().is_clean(),
            "a repaired store reopens clean"
        );
    }
}

#[tokio::test]
async fn chopped_segment_header_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await;
    let seg = files(dir.path(), "t", 0, "log").pop().unwrap();
    let data = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &data[..10]).unwrap();
    let store = reopen(dir.path());
    assert!(store.recovery_report().truncated_bytes() > 0);
    let info = &store.topics()[0].partitions[0];
    let base: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(info.end_offset, base);
    store
        .append("t", 0, plain_batch(&lines("x", 0..2)))
        .await
        .unwrap();
}

#[tokio::test]
async fn flipped_byte_in_sealed_segment_is_detected_and_skipped() {
    // Flip in a batch body, in a frame's length field, and in a frame's offset field.
    for (name, at_in_frame) in [("body", 60usize), ("length", 1), ("offset", 9)] {
        let dir = tempfile::tempdir().unwrap();
        let all = filled(dir.path()).await;
        let sealed = files(dir.path(), "t", 0, "log")[0].clone();
        let mut data = std::fs::read(&sealed).unwrap();
        // The third frame of the first segment: frames here are same-sized (small batches).
        let first_len = 28 + u32::from_le_bytes(data[16..20].try_into().unwrap()) as usize;
        let second_len = 28
            + u32::from_le_bytes(data[16 + first_len..20 + first_len].try_into().unwrap()) as usize;
        let third = 16 + first_len + second_len;
        data[third + at_in_frame] ^= 0x55;
        std::fs::write(&sealed, &data).unwrap();

        let store = reopen(dir.path());
        let got = read_records(&store, "t", 0, 0);
        // Offsets 6..9 (the third batch) are lost; every other record is there.
        let want: Vec<_> = all
            .iter()
            .filter(|(o, _)| !(6..9).contains(o))
            .cloned()
            .collect();
        assert_eq!(got, want, "flip in {name}");
        let corrupt = store.corrupt_batches("t", 0).unwrap();
        assert_eq!(corrupt.len(), 1, "{name}: {corrupt:?}");
        assert_eq!(corrupt[0].position as usize, third);
        assert_eq!(corrupt[0].path, sealed);
        // Reading from inside the lost batch answers with the next good one.
        let r = store.read("t", 0, 7, 1).unwrap();
        assert_eq!(r.batches[0].base_offset, 9);
        // Appends are unaffected.
        store
            .append("t", 0, plain_batch(&lines("x", 0..1)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn flipped_byte_at_sealed_segment_tail_is_found_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let all = filled(dir.path()).await;
    let sealed = files(dir.path(), "t", 0, "log")[0].clone();
    let mut data = std::fs::read(&sealed).unwrap();
    let n = data.len();
    data[n - 5] ^= 0x01; // inside the last batch of the sealed segment
    std::fs::write(&sealed, &data).unwrap();
    let store = reopen(dir.path());
    let rep = store.recovery_report().partition("t", 0).unwrap().clone();
    assert_eq!(rep.corrupt.len(), 1, "{rep:?}");
    assert_eq!(
        rep.truncated_bytes, 0,
        "a sealed segment is never truncated"
    );
    let got = read_records(&store, "t", 0, 0);
    assert_eq!(got.len(), all.len() - 3);
}

#[tokio::test]
async fn missing_or_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = filled(dir.path()).await;
    let idx = files(dir.path(), "t", 0, "index");
    let tix = files(dir.path(), "t", 0, "timeindex");
    assert!(idx.len() >= 2);
    std::fs::remove_file(&idx[0]).unwrap();
    let mut bytes = std::fs::read(&tix[1]).unwrap();
    bytes[16 + 12 + 9] ^= 0x80; // a relative offset of the second entry
    std::fs::write(&tix[1], bytes).unwrap();
    let bytes = std::fs::read(&idx[1]).unwrap();
    std::fs::write(&idx[1], &bytes[..bytes.len() - 3]).unwrap();

    let store = reopen(dir.path());
    let rep = store.recovery_report().partition("t", 0).unwrap().clone();
    assert_eq!(rep.rebuilt_indexes.len(), 2, "{rep:?}");
    for o in (0..300).step_by(7) {
        let r = store.read("t", 0, o, 1).unwrap();
        let b = &r.batches[0];
        assert!(b.base_offset <= o && o < b.base_offset + 3, "offset {o}");
    }
    assert_eq!(read_records(&store, "t", 0, 0), all);
    drop(store);
    assert!(reopen(dir.path()).recovery_report().is_clean());
}

#[tokio::test]
async fn index_pointing_at_wrong_position_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let all = filled(dir.path()).await;
    let idx = files(dir.path(), "t", 0, "index");
    // Shift the position of the second entry forward by one frame: still ordered, so only a
    // read can notice.
    let mut bytes = std::fs::read(&idx[0]).unwrap();
    let p2 = u32::from_le_bytes(bytes[16 + 8 + 4..16 + 8 + 8].try_into().unwrap());
    let p3 = u32::from_le_bytes(bytes[16 + 16 + 4..16 + 16 + 8].try_into().unwrap());
    let wrong = (p2 + p3) / 2;
    bytes[16 + 8 + 4..16 + 8 + 8].copy_from_slice(&wrong.to_le_bytes());
    std::fs::write(&idx[0], bytes).unwrap();
    let store = reopen(dir.path());
    assert_eq!(read_records(&store, "t", 0, 0), all);
    for o in 0..30 {
        let r = store.read("t", 0, o, 1).unwrap();
        assert!(r.batches[0].base_offset <= o, "offset {o}");
    }
}
