//! Sealing records into batches: by bytes, by record count, and by linger time.
//!
//! A batch has one origin (one file identity and one contiguous byte range), so each file has
//! its own [`Batcher`]. It is a plain struct: time is passed in, so its limits are tested
//! without a runtime. Sealed batches carry their uncompressed [`BatchBuilder`]; compression
//! happens later, off the reading thread.

use ferry_core::batch::BatchBuilder;
use ferry_core::record::{Field, FileId, OriginKey};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a batch is sealed.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Uncompressed payload bytes: a record that would pass this starts the next batch.
    pub max_bytes: usize,
    pub max_records: u32,
    /// How long the first record of a batch may wait for more.
    pub linger: Duration,
}

/// One record for [`Batcher::push_line`].
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub line: &'a [u8],
    /// Source bytes it consumed (line, newline, and whatever framing it stands for).
    pub span: u64,
    pub event_time_ms: Option<i64>,
    pub truncated: bool,
    pub fields: &'a [Field],
}

/// A batch ready to compress and ship.
#[derive(Debug)]
pub struct SealedBatch {
    pub builder: BatchBuilder,
    pub file: FileId,
    pub first_offset: u64,
    pub end_offset: u64,
    pub records: u32,
}

impl SealedBatch {
    /// Bytes of the file this batch covers.
    pub fn span_bytes(&self) -> u64 {
        self.end_offset - self.first_offset
    }
}

/// Reusable builders, so a steady stream of batches does not allocate a payload buffer each.
/// The lock is held only to push or pop.
///
/// Bounded by the bytes the kept builders hold, not by their number: with many files each
/// batch is small and many are in flight at once, and a pool of a few builders sent most of
/// them back to the allocator, so each file's batch grew a fresh buffer from nothing (a
/// reallocation and copy per doubling, and new pages to fault in). What the pool keeps is at
/// most what was in use at once, so it does not raise the agent's peak memory.
#[derive(Debug, Clone)]
pub struct BuilderPool(Arc<Mutex<Pooled>>);

#[derive(Debug)]
struct Pooled {
    free: Vec<BatchBuilder>,
    bytes: usize,
    limit: usize,
}

impl Default for BuilderPool {
    fn default() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }
}

impl BuilderPool {
    /// The agent's default buffer size (`buffer_bytes`).
    const DEFAULT_LIMIT: usize = crate::config::DEFAULT_BUFFER_BYTES.0 as usize;

    /// A pool that keeps builders holding at most `bytes` in all.
    pub fn with_limit(bytes: usize) -> Self {
        Self(Arc::new(Mutex::new(Pooled {
            free: Vec::new(),
            bytes: 0,
            limit: bytes,
        })))
    }

    fn take(&self, key: OriginKey, first_offset: u64) -> BatchBuilder {
        let pooled = self.0.lock().ok().and_then(|mut p| {
            let b = p.free.pop()?;
            p.bytes -= b.capacity();
            Some(b)
        });
        match pooled {
            Some(mut b) => {
                b.reset(Some((key, first_offset)));
                b
            }
            None => BatchBuilder::with_origin(key, first_offset),
        }
    }

    /// Gives a builder back once its batch is encoded.
    pub fn put(&self, b: BatchBuilder) {
        if let Ok(mut p) = self.0.lock()
            && p.bytes + b.capacity() <= p.limit
        {
            p.bytes += b.capacity();
            p.free.push(b);
        }
    }

    /// Builders kept, and the bytes they hold.
    pub fn kept(&self) -> (usize, usize) {
        self.0.lock().map_or((0, 0), |p| (p.free.len(), p.bytes))
    }
}

#[derive(Debug)]
struct Open {
    builder: BatchBuilder,
    file: FileId,
    first_offset: u64,
    end_offset: u64,
    opened_at: Instant,
}

/// The open batch of one file.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    pool: BuilderPool,
    open: Option<Open>,
}

impl Batcher {
    pub fn new(limits: BatchLimits, pool: BuilderPool) -> Self {
        Self {
            limits,
            pool,
            open: None,
        }
    }

    /// Adds one record read at `offset` of `file`. Seals into `out` the batch it completes, and
    /// the open batch first if this record cannot join it (other file identity, a gap in the
    /// offsets, or no room left).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        agent_id: &str,
        file: FileId,
        offset: u64,
        line: &[u8],
        span: u64,
        truncated: bool,
        fields: &[Field],
        now: Instant,
        out: &mut Vec<SealedBatch>,
    ) {
        let rec = Line {
            line,
            span,
            event_time_ms: None,
            truncated,
            fields,
        };
        self.push_line(agent_id, file, offset, rec, now, out);
    }

    /// [`Batcher::push`] for a record that may carry its event time (container runtimes and
    /// syslog stamp their lines).
    pub fn push_line(
        &mut self,
        agent_id: &str,
        file: FileId,
        offset: u64,
        rec: Line<'_>,
        now: Instant,
        out: &mut Vec<SealedBatch>,
    ) {
        let Line {
            line,
            span,
            event_time_ms,
            truncated,
            fields,
        } = rec;
        if let Some(open) = &self.open {
            let room = open.builder.raw_len() + line.len() + 16 <= self.limits.max_bytes;
            if open.file != file || open.end_offset != offset || !room {
                out.extend(self.flush());
            }
        }
        let open = self.open.get_or_insert_with(|| Open {
            builder: self.pool.take(
                OriginKey {
                    agent_id: agent_id.to_owned(),
                    file,
                },
                offset,
            ),
            file,
            first_offset: offset,
            end_offset: offset,
            opened_at: now,
        });
        if !truncated && fields.is_empty() && event_time_ms.is_none() {
            open.builder.push_line(line, span);
        } else {
            open.builder
                .push(line, span, event_time_ms, truncated, fields);
        }
        open.end_offset += span;
        if open.builder.record_count() >= self.limits.max_records
            || open.builder.raw_len() >= self.limits.max_bytes
        {
            out.extend(self.flush());
        }
    }

    /// When the open batch's linger runs out.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.opened_at + self.limits.linger)
    }

    /// Seals the open batch if it has lingered long enough.
    pub fn poll(&mut self, now: Instant) -> Option<SealedBatch> {
        if self.deadline().is_some_and(|d| now >= d) {
            self.flush()
        } else {
            None
        }
    }

    /// Seals the open batch now.
    pub fn flush(&mut self) -> Option<SealedBatch> {
        let open = self.open.take()?;
        Some(SealedBatch {
            records: open.builder.record_count(),
            builder: open.builder,
            file: open.file,
            first_offset: open.first_offset,
            end_offset: open.end_offset,
        })
    }

    /// Bytes of the file held in the open batch.
    pub fn pending_bytes(&self) -> u64 {
        self.open
            .as_ref()
            .map_or(0, |o| o.end_offset - o.first_offset)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(generation: u32) -> FileId {
        FileId {
            dev: 1,
            inode: 2,
            fingerprint: 3,
            generation,
        }
    }

    fn batcher(max_bytes: usize, max_records: u32) -> Batcher {
        Batcher::new(
            BatchLimits {
                max_bytes,
                max_records,
                linger: Duration::from_millis(200),
            },
            BuilderPool::default(),
        )
    }

    #[test]
    fn the_pool_keeps_builders_up_to_its_bytes_and_hands_them_out_again() {
        let pool = BuilderPool::with_limit(64 << 10);
        let mut b = Batcher::new(
            BatchLimits {
                max_bytes: 1 << 20,
                max_records: 1_000_000,
                linger: Duration::from_millis(200),
            },
            pool.clone(),
        );
        let (t, mut out) = (Instant::now(), Vec::new());
        // Three files' batches of ~20 KiB each, all in use at once.
        let line = [b'x'; 1000];
        let mut sealed = Vec::new();
        for f in 0..3u32 {
            for i in 0..20u64 {
                b.push("a", file(f), i * 1001, &line, 1001, false, &[], t, &mut out);
            }
            sealed.push(b.flush().unwrap());
        }
        let caps: Vec<usize> = sealed.iter().map(|s| s.builder.capacity()).collect();
        assert!(
            caps.iter().all(|c| (20_000..=32 << 10).contains(c)),
            "{caps:?}"
        );
        for s in sealed {
            pool.put(s.builder);
        }
        // Two fit in 64 KiB, the third goes back to the allocator.
        let (n, bytes) = pool.kept();
        assert_eq!(n, 2);
        assert_eq!(bytes, caps[0] + caps[1]);
        // The next batch reuses a kept buffer: no growing from nothing.
        b.push("a", file(9), 0, &line, 1001, false, &[], t, &mut out);
        let next = b.flush().unwrap();
        assert_eq!(next.builder.capacity(), caps[1]);
        assert_eq!(
            (next.records, next.first_offset, next.end_offset),
            (1, 0, 1001)
        );
        assert_eq!(pool.kept(), (1, caps[0]));
    }

    #[test]
    fn seals_at_max_records() {
        let mut b = batcher(1 << 20, 3);
        let (t, mut out) = (Instant::now(), Vec::new());
        for i in 0..7u64 {
            b.push("a", file(0), i * 4, b"abc", 4, false, &[], t, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].first_offset, out[0].end_offset, out[0].records),
            (0, 12, 3)
        );
        assert_eq!((out[1].first_offset, out[1].end_offset), (12, 24));
        assert_eq!(b.pending_bytes(), 4);
    }

    #[test]
    fn seals_before_passing_max_bytes() {
        let mut b = batcher(100, 1000);
        let (t, mut out) = (Instant::now(), Vec::new());
        let line = [b'x'; 30];
        for i in 0..10u64 {
            b.push("a", file(0), i * 31, &line, 31, false, &[], t, &mut out);
        }
        assert!(!out.is_empty());
        for s in &out {
            assert!(s.builder.raw_len() <= 100, "{}", s.builder.raw_len());
            assert_eq!(s.records, 2);
        }
    }

    #[test]
    fn linger_seals_with_an_injected_clock() {
        let mut b = batcher(1 << 20, 1000);
        let (t0, mut out) = (Instant::now(), Vec::new());
        b.push("a", file(0), 0, b"x", 2, false, &[], t0, &mut out);
        b.push(
            "a",
            file(0),
            2,
            b"y",
            2,
            false,
            &[],
            t0 + Duration::from_millis(150),
            &mut out,
        );
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(200)));
        assert!(b.poll(t0 + Duration::from_millis(199)).is_none());
        let sealed = b.poll(t0 + Duration::from_millis(200)).unwrap();
        assert_eq!((sealed.records, sealed.end_offset), (2, 4));
        assert!(b.deadline().is_none());
    }

    #[test]
    fn new_generation_or_gap_starts_a_new_batch() {
        let mut b = batcher(1 << 20, 1000);
        let (t, mut out) = (Instant::now(), Vec::new());
        b.push("a", file(0), 0, b"x", 2, false, &[], t, &mut out);
        b.push("a", file(1), 0, b"y", 2, false, &[], t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].file.generation, 0);
        b.push("a", file(1), 10, b"z", 2, false, &[], t, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].first_offset, out[1].end_offset), (0, 2));
    }

    #[test]
    fn sealed_batch_encodes_with_its_origin_and_fields() {
        let mut b = batcher(1 << 20, 1000);
        let (t, mut out) = (Instant::now(), Vec::new());
        let fields = [Field::new("env", "prod")];
        b.push(
            "agent-1",
            file(0),
            100,
            b"one",
            4,
            false,
            &fields,
            t,
            &mut out,
        );
        b.push(
            "agent-1",
            file(0),
            104,
            b"tw",
            9,
            true,
            &fields,
            t,
            &mut out,
        );
        let s = b.flush().unwrap();
        let enc = s
            .builder
            .finish(ferry_core::batch::Codec::Gzip, 1, 0)
            .unwrap();
        let batch =
            ferry_core::batch::decode(&enc.into(), &ferry_core::batch::DecodeLimits::default())
                .unwrap();
        let origin = batch.header.origin.unwrap();
        assert_eq!((origin.first_offset, origin.end_offset), (100, 113));
        assert_eq!(origin.key.agent_id, "agent-1");
        assert!(batch.records[1].truncated);
        assert_eq!(batch.records[0].fields, fields.to_vec());
    }
}
