//! Where batches go.
//!
//! An [`Output`] takes one encoded batch (the core wire format, compressed or not) for a topic
//! and answers when it is acknowledged — for the collector, durable — or why not: a
//! [`OutputError`] says whether trying again can help (retryable, possibly after a delay the
//! server named), whether the batch must be split (too large), or whether it was refused for
//! good (counted as a drop with reason `rejected`). Retrying, splitting and counting are the
//! shipper's job ([`crate::shipper`]), the same for every output.
//!
//! Outputs: [`null::NullOutput`] (acknowledges at once; benchmarks), [`stdout::StdoutOutput`]
//! (prints the lines; debugging), [`collector::CollectorOutput`] (HTTP to ferry collectors),
//! [`kafka::KafkaOutput`] (straight into Kafka topics).

pub mod collector;
pub mod kafka;
pub mod null;
pub mod retry;
pub mod stdout;

use bytes::Bytes;
use std::future::Future;
use std::time::Duration;

/// What the shipper knows about a batch it sends, for outputs that want it (logs, splitting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub records: u32,
    pub first_offset: u64,
    pub end_offset: u64,
    /// Set while an earlier batch of the same file is still in flight: store this one only
    /// after the file's records up to this offset (the collector's `ferry-after` header).
    pub after: Option<u64>,
}

/// An acknowledgement. The collector says how many records it stored and how many it dropped
/// as replays of records it already had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    pub stored: Option<u64>,
    pub deduplicated: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    /// Try again: after `retry_after` if the server said so, else after a backoff.
    #[error("{reason} (will retry)")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The batch is larger than the output accepts: split it and send the halves.
    #[error("batch too large for the output")]
    TooLarge,
    /// Refused for good (a 4xx other than 409/413/429): the batch is dropped and counted.
    #[error("rejected: {reason}")]
    Rejected { reason: String },
    /// Sent with [`BatchMeta::after`] before the batch it follows has landed (409): send it
    /// again once that one is acknowledged or dropped.
    #[error("out of order: {reason}")]
    OutOfOrder { reason: String },
}

/// A destination for encoded batches.
pub trait Output: Send + Sync + 'static {
    /// Sends one encoded batch to `topic`; resolves once it is acknowledged or refused.
    fn send(
        &self,
        topic: &str,
        batch: Bytes,
        meta: &BatchMeta,
    ) -> impl Future<Output = Result<Ack, OutputError>> + Send;

    /// Whether several batches of one topic may travel in one request ([`Output::send_many`]).
    /// The collector takes a body of batches back to back: with many files each batch is small,
    /// and a request per batch made the agent wait on round trips (and the collector's group
    /// commits) rather than on its reading.
    fn coalesces(&self) -> bool {
        false
    }

    /// Sends `batches` (all for `topic`, none with [`BatchMeta::after`]) in one request;
    /// resolves once all are acknowledged, or with why not — the shipper then delivers each
    /// on its own, as [`Output::send`] would have. Only called when [`Output::coalesces`].
    fn send_many(
        &self,
        topic: &str,
        batches: &[(Bytes, BatchMeta)],
    ) -> impl Future<Output = Result<Ack, OutputError>> + Send {
        let _ = (topic, batches);
        async {
            Err(OutputError::Rejected {
                reason: "this output takes one batch per request".to_owned(),
            })
        }
    }

    /// How many batches of one file may be in flight at once. More than one only for outputs
    /// that keep a file's batches in order however their requests race (the collector does,
    /// through [`BatchMeta::after`]).
    fn max_in_flight_per_file(&self) -> usize {
        1
    }

    /// Learns its destinations again (the collector output: `GET /v1/collectors` and DNS).
    fn refresh(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// How often [`Output::refresh`] should run; `None` when it does nothing.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// The collector base URL requests go to now (failover's current one), if it has one.
    fn current_url(&self) -> Option<String> {
        None
    }
}

/// The output a config names.
#[derive(Debug)]
pub enum AnyOutput {
    Null(null::NullOutput),
    Stdout(stdout::StdoutOutput),
    Collector(collector::CollectorOutput),
    Kafka(Box<kafka::KafkaOutput>),
}

impl Output for AnyOutput {
    async fn send(&self, topic: &str, batch: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
        match self {
            AnyOutput::Null(o) => o.send(topic, batch, meta).await,
            AnyOutput::Stdout(o) => o.send(topic, batch, meta).await,
            AnyOutput::Collector(o) => o.send(topic, batch, meta).await,
            AnyOutput::Kafka(o) => o.send(topic, batch, meta).await,
        }
    }

    fn coalesces(&self) -> bool {
        match self {
            AnyOutput::Collector(o) => o.coalesces(),
            _ => false,
        }
    }

    async fn send_many(
        &self,
        topic: &str,
        batches: &[(Bytes, BatchMeta)],
    ) -> Result<Ack, OutputError> {
        match self {
            AnyOutput::Collector(o) => o.send_many(topic, batches).await,
            AnyOutput::Null(o) => o.send_many(topic, batches).await,
            AnyOutput::Stdout(o) => o.send_many(topic, batches).await,
            AnyOutput::Kafka(o) => o.send_many(topic, batches).await,
        }
    }

    fn max_in_flight_per_file(&self) -> usize {
        match self {
            AnyOutput::Null(o) => o.max_in_flight_per_file(),
            AnyOutput::Stdout(o) => o.max_in_flight_per_file(),
            AnyOutput::Collector(o) => o.max_in_flight_per_file(),
            AnyOutput::Kafka(o) => o.max_in_flight_per_file(),
        }
    }

    async fn refresh(&self) {
        if let AnyOutput::Collector(o) = self {
            o.refresh().await;
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        match self {
            AnyOutput::Collector(o) => Output::refresh_interval(o),
            _ => None,
        }
    }

    fn current_url(&self) -> Option<String> {
        match self {
            AnyOutput::Collector(o) => Output::current_url(o),
            _ => None,
        }
    }
}
