//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use ferry_collector::store::{FsyncPolicy, Store, StoreConfig};
use ferry_core::batch::{BatchBuilder, Codec, DecodeLimits, decode};
use ferry_core::config::{ByteSize, Duration};
use ferry_core::record::{FileId, OriginKey};

pub fn origin(agent: &str, inode: u64) -> OriginKey {
    OriginKey {
        agent_id: agent.to_owned(),
        file: FileId {
            dev: 1,
            inode,
            fingerprint: 0xfeed,
            generation: 0,
        },
    }
}

/// A gzip batch of `lines` read from `key` starting at file offset `first` (span = len + 1).
pub fn batch_from(key: &OriginKey, first: u64, lines: &[String]) -> Bytes {
    let mut b = BatchBuilder::with_origin(key.clone(), first);
    for l in lines {
        b.push_line(l.as_bytes(), l.len() as u64 + 1);
    }
    Bytes::from(b.finish(Codec::Gzip, 1, 1_700_000_000_000).expect("encode"))
}

/// A batch without origin.
pub fn plain_batch(lines: &[String]) -> Bytes {
    let mut b = BatchBuilder::new();
    for l in lines {
        b.push_line(l.as_bytes(), 0);
    }
    Bytes::from(b.finish(Codec::None, 0, 1_700_000_000_000).expect("encode"))
}

pub fn lines(prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// A config that rolls often, indexes densely and commits fast.
pub fn small_config(fsync: FsyncPolicy) -> StoreConfig {
    StoreConfig {
        fsync,
        group_commit_window: Duration::from_millis(1),
        segment_bytes: ByteSize(4096),
        index_interval_bytes: ByteSize(256),
        retention_check_interval: Duration::from_secs(3600),
        fsync_interval: Duration::from_millis(20),
        ..StoreConfig::default()
    }
}

/// Every record of a partition from `from` on, as (offset, line), decoding each batch.
pub fn read_records(store: &Store, topic: &str, p: u32, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = store.read(topic, p, next, 3000).expect("read");
        if r.batches.is_empty() {
            return out;
        }
        for b in &r.batches {
            let batch = decode(&b.data, &DecodeLimits::default()).expect("stored batch decodes");
            assert_eq!(batch.records.len() as u32, b.record_count);
            for (i, rec) in batch.records.iter().enumerate() {
                let off = b.base_offset + i as u64;
                if off >= next {
                    out.push((off, String::from_utf8_lossy(&rec.line).into_owned()));
                }
            }
            next = next.max(b.base_offset + u64::from(b.record_count));
        }
    }
}

/// Paths of a partition's files with extension `ext`, sorted.
pub fn files(dir: &std::path::Path, topic: &str, p: u32, ext: &str) -> Vec<std::path::PathBuf> {
    let pdir = dir.join("topics").join(topic).join(p.to_string());
    let mut v: Vec<_> = std::fs::read_dir(pdir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}
