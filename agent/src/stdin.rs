//! `ferry agent --stdin --topic T`: ships what a program writes to stdin, until EOF, and exits
//! 0 once every line is acknowledged.
//!
//! ```text
//!  reader thread (stdin → lines → Batcher) ──(bounded)──▶ shipper (encode, send, retry, ack)
//! ```
//!
//! Every record carries an origin like a file's: the agent id, a stream id drawn at random for
//! this run (in the fingerprint of the file identity, device and inode 0), and the byte offset of
//! the line in the stream. A batch the collector stored but whose answer was lost (a collector
//! killed mid-request) is sent again and dropped there as a replay, so a collector crash neither
//! loses nor duplicates a line. A pipe cannot be read twice: lines read but not acknowledged when
//! the agent itself is killed are lost, and the agent says so on SIGTERM (it ships what it has
//! read, then stops). One batch is in flight at a time, so batches are stored in stream order.

use crate::batcher::{BatchLimits, Batcher, BuilderPool, SealedBatch};
use crate::config::AgentConfig;
use crate::output::{AnyOutput, BatchMeta, Output, OutputError};
use crate::{AgentError, AgentStats};
use ferry_core::backoff::Backoff;
use ferry_core::record::FileId;
use ferry_core::shutdown::Shutdown;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Sealed batches waiting for the shipper: a little read-ahead, bounded.
const QUEUE: usize = 4;
/// Most bytes per `read()` of stdin.
const READ_BYTES: usize = 256 << 10;

/// What a finished run shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StdinReport {
    pub lines: u64,
    pub bytes: u64,
    pub acknowledged: u64,
    pub deduplicated: u64,
    pub dropped: u64,
}

/// Reads `input` to its end (or until `shutdown`), shipping every line to `topic` through the
/// output of `config`.
pub async fn ship(
    config: &AgentConfig,
    output: AnyOutput,
    topic: &str,
    input: impl Read + Send + 'static,
    stats: Arc<AgentStats>,
    shutdown: Shutdown,
) -> Result<StdinReport, AgentError> {
    let agent_id = config.id.clone().unwrap_or_else(crate::config::host_name);
    let stream = FileId {
        dev: 0,
        inode: 0,
        fingerprint: rand::random::<u64>() | 1,
        generation: 0,
    };
    let limits = BatchLimits {
        max_bytes: config.batch.max_bytes.as_usize(),
        max_records: config.batch.max_records,
        linger: config.batch.linger.get(),
    };
    let pool = BuilderPool::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SealedBatch>(QUEUE);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (pool, stop, stats, id) = (pool.clone(), stop.clone(), stats.clone(), agent_id.clone());
        std::thread::Builder::new()
            .name("ferry-stdin".into())
            .spawn(move || read_lines(input, &id, stream, limits, pool, &stop, &stats, &tx))
            .map_err(|e| AgentError::Thread {
                what: "stdin",
                message: e.to_string(),
            })?
    };
    tracing::info!(agent_id, topic, stream = %stream, "shipping stdin");
    let mut report = StdinReport::default();
    let mut shipping = std::pin::pin!(ship_batches(
        &output,
        topic,
        "stdin",
        &mut rx,
        config.codec(),
        config.compression.level,
        &stats,
    ));
    let shipped = loop {
        tokio::select! {
            done = &mut shipping => break done?,
            _ = shutdown.wait(), if !stop.load(Ordering::Relaxed) => {
                // Stop reading; what was read is still shipped.
                stop.store(true, Ordering::Relaxed);
            }
        }
    };
    report.acknowledged = shipped.acknowledged;
    report.deduplicated = shipped.deduplicated;
    report.dropped = shipped.dropped;
    let (lines, bytes, read_error) = reader.join().map_err(|_| AgentError::Thread {
        what: "stdin",
        message: "panicked".to_owned(),
    })?;
    report.lines = lines;
    report.bytes = bytes;
    if let Some(e) = read_error {
        return Err(AgentError::Thread {
            what: "stdin read",
            message: e.to_string(),
        });
    }
    Ok(report)
}

/// What [`ship_batches`] delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shipped {
    pub acknowledged: u64,
    pub deduplicated: u64,
    pub dropped: u64,
}

/// Ships every batch `batches` yields, one at a time (so a stream's batches are stored in
/// order), until the channel closes: encodes it, sends it to `topic`, retries what may be
/// retried (capped, jittered backoff; the output's `Retry-After` when it gives one) and counts
/// refusals as dropped. Shared by the inputs that read a stream once (stdin, syslog): their
/// records carry a per-run stream origin, so a batch resent after a lost answer is a replay
/// the collector drops.
pub async fn ship_batches<O: Output>(
    output: &O,
    topic: &str,
    input: &str,
    batches: &mut tokio::sync::mpsc::Receiver<SealedBatch>,
    codec: ferry_core::batch::Codec,
    level: u32,
    stats: &AgentStats,
) -> Result<Shipped, AgentError> {
    let mut report = Shipped::default();
    while let Some(batch) = batches.recv().await {
        let meta = BatchMeta {
            records: batch.records,
            first_offset: batch.first_offset,
            end_offset: batch.end_offset,
            after: None,
        };
        let mut encoded = Vec::with_capacity(batch.builder.raw_len() + 256);
        let records = u64::from(batch.records);
        batch
            .builder
            .finish_into(codec, level, ferry_core::now_ms(), &mut encoded)
            .map_err(|e| AgentError::Thread {
                what: "stream encode",
                message: e.to_string(),
            })?;
        let encoded = bytes::Bytes::from(encoded);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match output.send(topic, encoded.clone(), &meta).await {
                Ok(ack) => {
                    report.acknowledged += records;
                    report.deduplicated += ack.deduplicated.unwrap_or(0);
                    stats.records_acked.fetch_add(records, Ordering::Relaxed);
                    metrics::counter!("ferry_agent_lines_shipped_total", "input" => input.to_owned())
                        .increment(records);
                    break;
                }
                Err(OutputError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    let wait = retry_after.unwrap_or_else(|| backoff.next_delay());
                    tracing::debug!(input, reason, ?wait, "batch: retrying");
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("ferry_agent_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                }
                // One batch in flight, never split across requests: these are refusals.
                Err(e) => {
                    tracing::error!(input, error = %e, records, "batch refused; its records are dropped");
                    report.dropped += records;
                    stats.records_dropped.fetch_add(records, Ordering::Relaxed);
                    metrics::counter!("ferry_agent_dropped_records_total", "reason" => "rejected", "input" => input.to_owned())
                        .increment(records);
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// The batching thread: lines into batches, sealed batches to the shipper. Reads happen on a
/// thread of their own, so that a quiet pipe still sees its batch sealed after `linger`.
/// Returns the lines and bytes read, and the read error that ended it, if any.
#[allow(clippy::too_many_arguments)]
fn read_lines(
    input: impl Read + Send + 'static,
    agent_id: &str,
    stream: FileId,
    limits: BatchLimits,
    pool: BuilderPool,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    stats: &AgentStats,
    tx: &tokio::sync::mpsc::Sender<SealedBatch>,
) -> (u64, u64, Option<std::io::Error>) {
    let (chunks_tx, chunks) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(QUEUE);
    let reader_stop = stop.clone();
    // The pipe's reader; it ends at EOF, on an error, or when the batcher hangs up.
    let _reader = std::thread::Builder::new()
        .name("ferry-stdin-read".into())
        .spawn(move || {
            let mut input = input;
            loop {
                let mut buf = vec![0u8; READ_BYTES];
                match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if chunks_tx.send(Ok(buf)).is_err() || reader_stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = chunks_tx.send(Err(e));
                        return;
                    }
                }
            }
        });
    let mut batcher = Batcher::new(limits, pool);
    let mut sealed = Vec::new();
    // The unfinished last line of the previous read.
    let mut partial: Vec<u8> = Vec::new();
    let (mut offset, mut lines) = (0u64, 0u64);
    let mut error = None;
    let send = |sealed: &mut Vec<SealedBatch>| -> bool {
        sealed.drain(..).all(|b| tx.blocking_send(b).is_ok())
    };
    while !stop.load(Ordering::Relaxed) {
        let wait = batcher
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(250));
        let chunk = match chunks.recv_timeout(wait) {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => {
                error = Some(e);
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                sealed.extend(batcher.poll(Instant::now()));
                if !send(&mut sealed) {
                    return (lines, offset, error);
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let mut rest = &chunk[..];
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let line: &[u8] = if partial.is_empty() {
                &rest[..i]
            } else {
                partial.extend_from_slice(&rest[..i]);
                &partial
            };
            let span = line.len() as u64 + 1;
            batcher.push(
                agent_id,
                stream,
                offset,
                line,
                span,
                false,
                &[],
                now,
                &mut sealed,
            );
            offset += span;
            lines += 1;
            partial.clear();
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
        sealed.extend(batcher.poll(now));
        if !send(&mut sealed) {
            return (lines, offset, error);
        }
    }
    // A last line without its newline is a line too (not when stopped: it may be unfinished).
    if !partial.is_empty() && error.is_none() && !stop.load(Ordering::Relaxed) {
        let span = partial.len() as u64;
        batcher.push(
            agent_id,
            stream,
            offset,
            &partial,
            span,
            false,
            &[],
            Instant::now(),
            &mut sealed,
        );
        offset += span;
        lines += 1;
    }
    sealed.extend(batcher.flush());
    send(&mut sealed);
    stats.lines_read.fetch_add(lines, Ordering::Relaxed);
    (lines, offset, error)
}
