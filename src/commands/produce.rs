//! `ferry produce --collector URL TOPIC`: one record per stdin line; exits 0 once every line is
//! acknowledged (durable). Lines are sent in chunks; a chunk refused with a retryable status
//! (429, 503, connection refused) is resent after a capped, jittered backoff.
//!
//! Exactly once across collector crashes: each run is a producer with a random id, and every
//! chunk says which line number it starts at (`ferry-producer-id`, `ferry-producer-seq`), so
//! a chunk the collector stored but whose reply was lost (it crashed, the connection broke) is
//! recognised when it is resent and not stored again.

use ferry_core::client::{ClientError, CollectorClient};
use std::io::BufRead;
use std::time::{Duration, Instant};

/// Lines are sent in chunks of about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// How long a chunk may keep failing with retryable errors before produce gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

pub async fn run(client: CollectorClient, topic: &str) -> anyhow::Result<()> {
    ferry_core::topic::validate_name(topic).map_err(crate::cli::UsageError)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let producer_id = format!("produce-{:016x}", rand::random::<u64>());
    // Lines sent before the next chunk: the chunk's first sequence number.
    let mut next_seq = 0u64;
    // stdin is read on a blocking thread; chunks go through a bounded channel.
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = lock.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            chunk.extend_from_slice(&line);
            if chunk.len() >= CHUNK_BYTES {
                if tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    let started = Instant::now();
    let (mut records, mut stored, mut dedup) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    while let Some(chunk) = rx.recv().await {
        let lines = line_count(&chunk);
        let reply = send_with_retry(&client, topic, chunk, &producer_id, next_seq).await?;
        next_seq += lines;
        records += reply.records;
        stored += reply.stored;
        dedup += reply.deduplicated;
        if last_progress.elapsed() > Duration::from_secs(2) {
            eprintln!("ferry produce: {records} records acknowledged so far");
            last_progress = Instant::now();
        }
    }
    reader.await??;
    eprintln!(
        "ferry produce: {records} records acknowledged ({stored} stored, {dedup} deduplicated) to {topic} in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Lines in a chunk (every line of a chunk ends with a newline).
fn line_count(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

async fn send_with_retry(
    client: &CollectorClient,
    topic: &str,
    chunk: Vec<u8>,
    producer_id: &str,
    first_seq: u64,
) -> anyhow::Result<ferry_core::client::IngestReply> {
    let first_try = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match client
            .post_lines_as(
                topic,
                chunk.clone(),
                chunk.len() > 64 * 1024,
                producer_id,
                first_seq,
            )
            .await
        {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && first_try.elapsed() < GIVE_UP_AFTER => {
                let wait = match &e {
                    ClientError::Http {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => backoff,
                };
                let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 100));
                tracing::warn!(error = %e, ?wait, "produce: retrying");
                tokio::time::sleep(wait + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
