//! ferry-kafka: ferry on Apache Kafka (or anything that speaks its protocol).
//!
//! - [`mapping`]: a ferry record ⇄ a Kafka message (value, key, timestamp, headers); the table
//!   is in the module docs and in docs/kafka.md. Reading accepts any message.
//! - [`producer`]: [`KafkaSink`], an idempotent `acks=all` producer whose `send_batch` (an
//!   agent's batch) and `send_records` (records without origin, e.g. a processor's results)
//!   return only once every record is acknowledged.
//! - [`consumer`]: [`KafkaSource`], a consumer-group member with manual commits.
//! - [`config`]: the `kafka:` config section ([`KafkaConfig`]), including security settings
//!   and free-form librdkafka options.
//! - [`error`]: the crate's error type, [`KafkaError`].
//! - [`consumer`] also has [`consumer::group_client_config`], the settings of every group
//!   member (the processor's Kafka source builds its own consumer on them).
//! - `testing` (feature `testing`): starts a real Kafka-protocol broker (tansu) for tests, also
//!   behind a TLS-terminating proxy with a CA made for the test.
//!
//! ```no_run
//! # async fn example(batch: ferry_core::batch::Batch) -> Result<(), ferry_kafka::KafkaError> {
//! let config = ferry_kafka::KafkaConfig::new("localhost:9092");
//! let sink = ferry_kafka::KafkaSink::new(&config)?;
//! let report = sink.send_batch("logs", &batch, None).await?;
//! println!("{} records acknowledged", report.records);
//! # Ok(()) }
//! ```

pub mod config;
pub mod consumer;
pub mod error;
pub mod mapping;
pub mod producer;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{Compression, KafkaConfig, KafkaTopicConfig};
pub use consumer::{ConsumedRecord, KafkaSource, SourceConfig, StartPosition};
pub use error::KafkaError;
pub use producer::{DeliveryReport, KafkaSink};
