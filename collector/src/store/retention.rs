//! Retention: deletes the oldest sealed segments of a partition by age, by the partition's total
//! size, and while the disk holding the store is below its free-space watermark.
//!
//! It runs on its own thread (never on the append path) every `retention_check_interval`, and
//! on demand through `Store::run_retention`. A segment is removed from the readers' view first,
//! then its files are deleted; a reader that already holds the file keeps reading it (the inode
//! lives until closed). The active segment is never deleted, so a partition always keeps its
//! end offset.

use super::config::StoreConfig;
use super::fs::FileSystem;
use super::partition::{Partition, segment_files};
use std::path::Path;
use std::sync::Arc;

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
}

#[derive(Clone, Copy)]
enum Reason {
    Age,
    Size,
    FreeDisk,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Size => "size",
            Reason::FreeDisk => "free_disk",
        }
    }
}

/// One retention pass over `partitions`.
pub(crate) fn run_once(
    partitions: &[Arc<Partition>],
    cfg: &StoreConfig,
    fs: &dyn FileSystem,
    dir: &Path,
    now_ms: i64,
) -> RetentionStats {
    let mut stats = RetentionStats::default();
    let max_age_ms = cfg.retention.max_age.map(|a| a.get().as_millis() as i64);
    let max_bytes = cfg.retention.max_bytes.map(|b| b.get());
    for p in partitions {
        loop {
            let reason = {
                let v = p.view();
                if v.segments.len() <= 1 {
                    None
                } else {
                    let oldest = &v.segments[0];
                    let expired = max_age_ms.is_some_and(|age| {
                        oldest
                            .last_time_ms
                            .is_none_or(|t| now_ms.saturating_sub(t) > age)
                    });
                    let too_big = max_bytes.is_some_and(|m| v.size_bytes() > m);
                    if expired {
                        Some(Reason::Age)
                    } else if too_big {
                        Some(Reason::Size)
                    } else {
                        None
                    }
                }
            };
            let Some(reason) = reason else { break };
            if !delete_oldest(p, fs, reason, &mut stats) {
                break;
            }
        }
    }
    if let Some(min_free) = cfg.retention.min_free_disk.map(|b| b.get()) {
        loop {
            let free = match fs.free_bytes(dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read free disk space; skipping the watermark check");
                    break;
                }
            };
            if free >= min_free {
                break;
            }
            // The partition whose oldest sealed segment is the oldest of all.
            let victim = partitions
                .iter()
                .filter_map(|p| {
                    let v = p.view();
                    (v.segments.len() > 1)
                        .then(|| (v.segments[0].last_time_ms.unwrap_or(i64::MIN), p))
                })
                .min_by_key(|(t, _)| *t)
                .map(|(_, p)| p.clone());
            let Some(p) = victim else {
                tracing::warn!(
                    free,
                    min_free,
                    "free disk below the watermark and no sealed segment left to delete"
                );
                break;
            };
            if !delete_oldest(&p, fs, Reason::FreeDisk, &mut stats) {
                break;
            }
        }
    }
    stats
}

/// Removes the oldest segment of `p` if it is not the active one; false if there was none.
fn delete_oldest(
    p: &Partition,
    fs: &dyn FileSystem,
    reason: Reason,
    stats: &mut RetentionStats,
) -> bool {
    let seg = {
        let mut v = p.view_mut();
        if v.segments.len() <= 1 {
            return false;
        }
        v.segments.remove(0)
    };
    for path in segment_files(&p.dir, seg.base) {
        if let Err(e) = fs.remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a retained-out file");
        }
    }
    stats.segments_deleted += 1;
    stats.bytes_deleted += seg.size;
    metrics::counter!("ferry_store_retention_deleted_segments_total", "reason" => reason.label())
        .increment(1);
    metrics::counter!("ferry_store_retention_deleted_bytes_total", "reason" => reason.label())
        .increment(seg.size);
    tracing::info!(
        topic = %p.topic, partition = p.id, base = seg.base, bytes = seg.size,
        reason = reason.label(), "retention deleted a segment"
    );
    true
}
