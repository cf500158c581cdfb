//! Model-based property test: random appends (with and without origins, replays and
//! straddling batches) to several partitions, reads at random offsets with random budgets,
//! reopens and retention passes, applied both to the store and to a plain in-memory model
//! (a `Vec` of records per partition plus the highest stored file offset per origin), and
//! compared after every step.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use bytes::Bytes;
use common::*;
use ferry_collector::store::{FsyncPolicy, RetentionConfig, Store, StoreConfig};
use ferry_core::batch::{BatchBuilder, Codec, DecodeLimits, decode};
use ferry_core::config::ByteSize;
use proptest::prelude::*;
use std::collections::HashMap;

const PARTITIONS: u32 = 3;
/// Every record of an origin spans this many file bytes, so a record's file offset is
/// `first + 10 * i`.
const SPAN: u64 = 10;

#[derive(Debug, Clone)]
enum Action {
    /// `back` records before the origin's high mark (0: new data only; >= n: a full replay).
    Append {
        p: u32,
        inode: Option<u64>,
        n: u64,
        back: u64,
    },
    Read {
        p: u32,
        frac: f64,
        max_bytes: usize,
    },
    Reopen,
    Retention,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..PARTITIONS, proptest::option::of(0u64..3), 1u64..6, prop_oneof![3 => Just(0u64), 1 => 1u64..8])
            .prop_map(|(p, inode, n, back)| Action::Append { p, inode, n, back }),
        3 => (0..PARTITIONS, 0.0f64..=1.0, prop_oneof![Just(1usize), 100usize..2000])
            .prop_map(|(p, frac, max_bytes)| Action::Read { p, frac, max_bytes }),
        1 => Just(Action::Reopen),
        1 => Just(Action::Retention),
    ]
}

#[derive(Default)]
struct Model {
    /// Per partition: offset of the first kept record, and the records from there.
    parts: HashMap<u32, (u64, Vec<String>)>,
    /// Highest stored file offset per (partition, inode).
    high: HashMap<(u32, u64), u64>,
    counter: u64,
}

fn config(policy: FsyncPolicy) -> StoreConfig {
    let mut c = small_config(policy);
    c.segment_bytes = ByteSize(2048);
    // The fewest open segment handles allowed: nearly every append and read reopens a
    // segment the cache closed, and retention removes segments whose handles are closed.
    c.max_open_files = Some(4);
    c.retention = RetentionConfig {
        max_age: None,
        max_bytes: Some(ByteSize(6000)),
        min_free_disk: None,
    };
    c
}

fn line_at(inode: u64, file_offset: u64) -> String {
    format!("i{inode}@{file_offset}")
}

async fn run(actions: Vec<Action>, policy: FsyncPolicy) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), config(policy)).unwrap();
    store.create_topic("m", PARTITIONS).unwrap();
    let mut model = Model::default();
    for a in actions {
        match a {
            Action::Append { p, inode, n, back } => {
                let (batch, expect): (Bytes, Vec<String>) = match inode {
                    None => {
                        model.counter += 1;
                        let ls = lines(&format!("plain{}", model.counter), 0..n);
                        (plain_batch(&ls), ls)
                    }
                    Some(inode) => {
                        let high = model.high.get(&(p, inode)).copied().unwrap_or(0);
                        let first = high.saturating_sub(back * SPAN);
                        let mut b = BatchBuilder::with_origin(origin("model", inode), first);
                        let mut keep = Vec::new();
                        for i in 0..n {
                            let off = first + i * SPAN;
                            let l = line_at(inode, off);
                            b.push_line(l.as_bytes(), SPAN);
                            if off >= high {
                                keep.push(l);
                            }
                        }
                        let end = first + n * SPAN;
                        if end > high {
                            model.high.insert((p, inode), end);
                        }
                        (Bytes::from(b.finish(Codec::Gzip, 1, 0).unwrap()), keep)
                    }
                };
                let out = store.append("m", p, batch).await.unwrap();
                let entry = model.parts.entry(p).or_default();
                let end = entry.0 + entry.1.len() as u64;
                prop_assert_eq!(out.stored as usize, expect.len());
                prop_assert_eq!(u64::from(out.stored + out.deduplicated), n);
                prop_assert_eq!(out.base_offset, end);
                entry.1.extend(expect);
            }
            Action::Read { p, frac, max_bytes } => {
                let (start, recs) = model.parts.get(&p).cloned().unwrap_or_default();
                let end = start + recs.len() as u64;
                let offset = start + ((end - start) as f64 * frac) as u64;
                let r = store.read("m", p, offset, max_bytes).unwrap();
                prop_assert_eq!(r.end_offset, end);
                prop_assert_eq!(r.log_start, start);
                if offset == end {
                    prop_assert!(r.batches.is_empty());
                    continue;
                }
                prop_assert!(!r.batches.is_empty());
                let first = &r.batches[0];
                prop_assert!(
                    first.base_offset <= offset
                        && offset < first.base_offset + u64::from(first.record_count)
                );
                let mut total = 0;
                let mut next = first.base_offset;
                for b in &r.batches {
                    prop_assert_eq!(b.base_offset, next, "batches are contiguous");
                    let d = decode(&b.data, &DecodeLimits::default()).unwrap();
                    for (i, rec) in d.records.iter().enumerate() {
                        let o = b.base_offset + i as u64;
                        prop_assert_eq!(
                            std::str::from_utf8(&rec.line).unwrap(),
                            recs[(o - start) as usize].as_str()
                        );
                    }
                    next += u64::from(b.record_count);
                    total += b.data.len() + 28;
                }
                prop_assert!(
                    r.batches.len() == 1 || total <= max_bytes,
                    "budget {max_bytes}, got {total}"
                );
            }
            Action::Reopen => {
                store.close().await.unwrap();
                drop(store);
                store = Store::open(dir.path(), config(policy)).unwrap();
                prop_assert!(
                    store.recovery_report().is_clean(),
                    "{:?}",
                    store.recovery_report()
                );
            }
            Action::Retention => {
                store.run_retention();
                for info in &store.topics()[0].partitions {
                    let entry = model.parts.entry(info.partition).or_default();
                    prop_assert!(info.log_start >= entry.0);
                    let drop_n = (info.log_start - entry.0) as usize;
                    prop_assert!(drop_n <= entry.1.len());
                    entry.1.drain(..drop_n);
                    entry.0 = info.log_start;
                    prop_assert!(info.size_bytes <= 6000 || info.segments == 1);
                }
            }
        }
    }
    // Finally everything, every partition, after one more reopen.
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path(), config(policy)).unwrap();
    for p in 0..PARTITIONS {
        let (start, recs) = model.parts.get(&p).cloned().unwrap_or_default();
        let got: Vec<String> = read_records(&store, "m", p, start)
            .into_iter()
            .map(|r| r.1)
            .collect();
        prop_assert_eq!(got, recs);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_vec_model(actions in proptest::collection::vec(action(), 1..60), group in any::<bool>()) {
        let policy = if group { FsyncPolicy::Group } else { FsyncPolicy::Never };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(actions, policy))?;
    }
}
