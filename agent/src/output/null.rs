//! The `null` output: discards every batch and acknowledges it at once. It measures the agent
//! alone (reading, splitting, batching, compressing), which is what the benchmark reports.

use super::{Ack, BatchMeta, Output, OutputError};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct NullOutput {
    /// Encoded bytes discarded, so a caller can see what compression did.
    encoded_bytes: AtomicU64,
}

impl NullOutput {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes.load(Ordering::Relaxed)
    }
}

impl Output for NullOutput {
    async fn send(&self, _topic: &str, batch: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
        self.encoded_bytes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(Ack {
            stored: Some(u64::from(meta.records)),
            deduplicated: Some(0),
        })
    }

    /// Nothing is stored, so order cannot matter.
    fn max_in_flight_per_file(&self) -> usize {
        usize::MAX
    }
}
