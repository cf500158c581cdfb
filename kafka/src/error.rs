//! The crate's one error type.

use std::time::Duration;

/// Every way talking to Kafka can fail. A caller that gets any of these for a send must not
/// acknowledge the records it sent: some may have been stored, others not.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the client configuration (an unknown or invalid property).
    #[error("Kafka client configuration refused: {0}")]
    Config(#[source] rdkafka::error::KafkaError),
    /// Some records were not acknowledged by the brokers (timeout, broker down, refused).
    #[error(
        "{failed} of {records} records to Kafka topic {topic} were not acknowledged; first error: {first}"
    )]
    Delivery {
        topic: String,
        records: u64,
        failed: u64,
        #[source]
        first: rdkafka::error::KafkaError,
    },
    /// The producer's local queue stayed full for longer than the message timeout: the brokers
    /// are not taking records as fast as they arrive.
    #[error("Kafka producer queue stayed full for {waited:?} while sending to {topic}")]
    QueueFull { topic: String, waited: Duration },
    /// Enqueueing a record failed for a reason other than a full queue (e.g. a record larger
    /// than `message.max.bytes`, an unknown topic with auto-creation off).
    #[error("Kafka refused a record for topic {topic}: {source}")]
    Enqueue {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Subscribing, receiving or committing as a consumer failed.
    #[error("Kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
    /// A blocking librdkafka call did not return in time.
    #[error("Kafka {what} did not finish within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
}

impl KafkaError {
    /// A short label for the `kind` of a metrics counter.
    pub fn kind(&self) -> &'static str {
        match self {
            KafkaError::Config(_) => "config",
            KafkaError::Delivery { .. } => "delivery",
            KafkaError::QueueFull { .. } => "queue_full",
            KafkaError::Enqueue { .. } => "enqueue",
            KafkaError::Consumer(_) => "consumer",
            KafkaError::Timeout { .. } => "timeout",
        }
    }
}
