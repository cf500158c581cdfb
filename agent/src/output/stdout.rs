//! The `stdout` output: prints each record's line, one per line, for debugging a config.
//! It decodes the batch it is given, so it also checks what the agent encodes.

use super::{Ack, BatchMeta, Output, OutputError};
use bytes::Bytes;
use ferry_core::batch::{DecodeLimits, decode};
use std::io::Write;
use std::sync::Mutex;

/// Writes lines to standard output, or to any writer (tests capture it).
pub struct StdoutOutput {
    /// A std mutex: held only while one batch is written, never across an await.
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for StdoutOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdoutOutput")
    }
}

impl Default for StdoutOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl StdoutOutput {
    pub fn new() -> Self {
        Self::with_writer(Box::new(std::io::stdout()))
    }

    pub fn with_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

impl Output for StdoutOutput {
    async fn send(
        &self,
        _topic: &str,
        batch: Bytes,
        _meta: &BatchMeta,
    ) -> Result<Ack, OutputError> {
        let decoded =
            decode(&batch, &DecodeLimits::default()).map_err(|e| OutputError::Rejected {
                reason: format!("batch does not decode: {e}"),
            })?;
        let mut text = Vec::with_capacity(decoded.header.raw_len as usize);
        for r in &decoded.records {
            text.extend_from_slice(&r.line);
            text.push(b'\n');
        }
        let mut out = self.out.lock().map_err(|_| OutputError::Rejected {
            reason: "stdout writer poisoned by an earlier panic".to_owned(),
        })?;
        out.write_all(&text)
            .and_then(|()| out.flush())
            .map_err(|e| OutputError::Retryable {
                reason: format!("cannot write to stdout: {e}"),
                retry_after: None,
            })?;
        Ok(Ack {
            stored: Some(decoded.records.len() as u64),
            deduplicated: Some(0),
        })
    }
}
