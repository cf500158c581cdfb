//! The `kafka` output: each batch straight into a Kafka topic, acknowledged only once Kafka
//! acknowledged every record of it.
//!
//! The output decodes the agent's batch and hands it to [`ferry_kafka::KafkaSink::send_batch`]
//! (idempotent producer, `acks=all`), which resolves only after every delivery report came back.
//! Only then does `send` return `Ok`, so the shipper advances the file's checkpoint only for
//! records Kafka holds. Each message carries the batch's origin as headers (`ferry.agent`,
//! `ferry.file`, `ferry.offset`; docs/kafka.md has the whole mapping), so a consumer can drop
//! the replays an agent crash between delivery and checkpoint causes.
//!
//! Errors: a batch that does not decode is `Rejected` (it cannot get better; the stdout output
//! does the same). A record larger than the producer or broker accepts is `TooLarge` (the
//! shipper splits the batch; a single record that still does not fit is dropped and counted).
//! Everything else — broker down, timeouts, a full queue, an unknown topic, and also an
//! authorization failure — is `Retryable`: the shipper backs off and tries again, and meanwhile
//! the file is the buffer. Authorization and missing topics are operator fixes (grant the ACL,
//! create the topic) that usually come while the agent keeps running; calling them permanent
//! would drop lines that a retry a minute later delivers. librdkafka reports both with codes
//! that also occur transiently (metadata not yet propagated), which is one more reason not to
//! give up on them.

use super::{Ack, BatchMeta, Output, OutputError};
use bytes::Bytes;
use ferry_core::batch::{DecodeLimits, decode};
use ferry_kafka::{KafkaConfig, KafkaError, KafkaSink};
use rdkafka::error::RDKafkaErrorCode;

pub struct KafkaOutput {
    sink: KafkaSink,
    config: KafkaConfig,
}

impl std::fmt::Debug for KafkaOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOutput")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaOutput {
    /// Creates the producer; a setting librdkafka refuses is an error here (nothing is sent
    /// yet, so unreachable brokers show later, as retries).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            sink: KafkaSink::new(config)?,
            config: config.clone(),
        })
    }

    /// The sink, e.g. to flush it.
    pub fn sink(&self) -> &KafkaSink {
        &self.sink
    }
}

/// How the shipper should treat a Kafka error (see the module docs).
pub fn classify(e: &KafkaError) -> OutputError {
    let too_large = |code: Option<RDKafkaErrorCode>| {
        matches!(
            code,
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
        )
    };
    match e {
        KafkaError::Enqueue { source, .. } if too_large(source.rdkafka_error_code()) => {
            OutputError::TooLarge
        }
        KafkaError::Delivery { first, .. } if too_large(first.rdkafka_error_code()) => {
            OutputError::TooLarge
        }
        other => OutputError::Retryable {
            reason: format!("kafka: {other}"),
            retry_after: None,
        },
    }
}

impl Output for KafkaOutput {
    async fn send(&self, topic: &str, batch: Bytes, _meta: &BatchMeta) -> Result<Ack, OutputError> {
        let decoded =
            decode(&batch, &DecodeLimits::default()).map_err(|e| OutputError::Rejected {
                reason: format!("batch does not decode: {e}"),
            })?;
        let kafka_topic = self.config.kafka_topic(topic);
        let report = self
            .sink
            .send_batch(&kafka_topic, &decoded, self.config.key_field(topic))
            .await
            .map_err(|e| classify(&e))?;
        Ok(Ack {
            stored: Some(report.records),
            deduplicated: None,
        })
    }
}
