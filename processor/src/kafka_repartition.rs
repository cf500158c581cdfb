//! The repartition hop on Kafka: the Kafka twin of the collector's (`repartition.rs`, the
//! runner's second `impl`), used by [`crate::kafka_source`].
//!
//! ```text
//!  Kafka topic app (4 partitions)        Kafka topic {group}.{pipeline}.repartition (R partitions)
//!  member A: partition 0 ─▶ upstream 0 ─┐ each flush: (1) checkpoint (offset, state, outbox)
//!            partition 1 ─▶ upstream 1 ─┤     into the checkpoint topic, acks=all;
//!  member B: partition 2 ─▶ upstream 2 ─┤ (2) each line one message to partition hash(key) % R,
//!            partition 3 ─▶ upstream 3 ─┘     header ferry-repartition-seq = (offset << 20) + i
//!                                          │
//!  member A: repartition 0, 1 ◀────────────┤ group {group}.repartition; each owner keeps a part
//!  member B: repartition 2, 3 ◀────────────┘ per upstream and the highest sequence applied per
//!                                            upstream: a line at or below it is a replay, dropped
//! ```
//!
//! Kafka has no per-origin dedup like the collector's, so the owner keeps it
//! ([`crate::driver::Owner`], with `owner_seqs`): the highest line
//! sequence applied per upstream goes into the owner's checkpoint with its parts and its offset
//! in the repartition partition, all in one record, so after a crash the owner reads on from
//! that offset with the sequences of that same moment. An upstream that crashed after its
//! checkpoint (1) posts the restored outbox again with the same sequences, and the owners drop
//! the lines they applied; one that crashed before (1) replays its input and ships deltas never
//! posted before, under sequences above the last (they grow with the input offset).

use crate::repartition::Outbox;
use ferry_kafka::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::Duration;

/// The header carrying a line's sequence (decimal).
pub const SEQ_HEADER: &str = "ferry-repartition-seq";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The repartition topic of one pipeline on Kafka, and the producer of its lines.
pub struct RepartitionTopic {
    topic: String,
    partitions: u32,
    /// `acks=all`, idempotent: one upstream's lines land in order, each once per send.
    producer: FutureProducer,
}

impl RepartitionTopic {
    /// Creates the topic with `want` partitions unless it exists (a broker that refuses the
    /// admin request may still create it on the first produce, with its default count), then
    /// learns its partition count. Blocking: call it from the source thread.
    pub fn open(
        kafka: &KafkaConfig,
        admin: &ClientConfig,
        rt: &tokio::runtime::Handle,
        topic: &str,
        want: u32,
    ) -> Result<Self, String> {
        let mut p = kafka.client_config();
        p.set("compression.type", kafka.compression.as_librdkafka())
            .set(
                "message.timeout.ms",
                kafka.message_timeout.get().as_millis().to_string(),
            )
            .set("linger.ms", "2");
        kafka.apply_options(&mut p);
        p.set("acks", "all").set("enable.idempotence", "true");
        let producer: FutureProducer = p.create().map_err(|e| e.to_string())?;
        // Asked through a client that cannot create the topic by asking (a producer's metadata
        // request may, with the brokers' default partition count instead of `want`).
        let mut m = kafka.client_config();
        m.set("allow.auto.create.topics", "false");
        kafka.apply_options(&mut m);
        let meta: BaseConsumer = m.create().map_err(|e| e.to_string())?;
        let mut partitions = count(meta.client(), topic)?;
        if partitions == 0 {
            let client: AdminClient<DefaultClientContext> =
                admin.create().map_err(|e| e.to_string())?;
            let new = NewTopic::new(topic, want.max(1) as i32, TopicReplication::Fixed(-1));
            let opts = AdminOptions::new()
                .operation_timeout(Some(REQUEST_TIMEOUT))
                .request_timeout(Some(REQUEST_TIMEOUT));
            let outcome = match rt.block_on(client.create_topics([&new], &opts)) {
                Ok(r) => match r.into_iter().next() {
                    Some(Ok(_)) => {
                        tracing::info!(topic, partitions = want, "created the repartition topic");
                        "created".to_owned()
                    }
                    Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => "exists".to_owned(),
                    Some(Err((_, code))) => code.to_string(),
                    None => "no answer".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            partitions = count(meta.client(), topic)?;
            if partitions == 0 {
                // A cluster that refuses the admin request (or does not know it, as
                // librdkafka's mock) may still create it when a producer asks for it, with its
                // default partition count: any count works, the keys spread over fewer owners.
                partitions = count(producer.client(), topic)?;
                if partitions > 0 {
                    tracing::info!(
                        topic,
                        partitions,
                        create = outcome,
                        "repartition topic created by the brokers on first use"
                    );
                }
            }
            if partitions == 0 {
                return Err(format!(
                    "repartition topic {topic} not there yet (create: {outcome})"
                ));
            }
        }
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            producer,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Sends every line of `outbox` to its target partition, one message each with its
    /// sequence; returns once all are acknowledged, or with the first error.
    pub async fn post(&self, outbox: &Outbox) -> Result<(), String> {
        let mut pending = Vec::new();
        for &target in outbox.lines.keys() {
            for (seq, line) in outbox.numbered(target) {
                let value = seq.to_string();
                let headers = OwnedHeaders::new().insert(Header {
                    key: SEQ_HEADER,
                    value: Some(value.as_bytes()),
                });
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                    .partition(target as i32)
                    .payload(line)
                    .headers(headers);
                let started = std::time::Instant::now();
                loop {
                    match self.producer.send_result(record) {
                        Ok(f) => {
                            pending.push(f);
                            break;
                        }
                        Err((e, back))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                                && started.elapsed() < REQUEST_TIMEOUT =>
                        {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(e.to_string()),
                    }
                }
            }
        }
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.to_string()),
                Err(_) => return Err("delivery canceled".into()),
            }
        }
        Ok(())
    }
}

/// Partitions of `topic` per the brokers' metadata (0: not there).
fn count<C: rdkafka::ClientContext>(
    meta: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<u32, String> {
    let md = meta
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32))
}

/// A line's sequence, from its header.
pub fn seq_of(m: &BorrowedMessage<'_>) -> Option<u64> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == SEQ_HEADER)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Commits `offsets` for lag tools only (a restore reads the checkpoint), never blocking.
pub fn commit_for_lag<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &rdkafka::TopicPartitionList,
) {
    if offsets.count() > 0
        && let Err(e) = consumer.commit(offsets, rdkafka::consumer::CommitMode::Async)
    {
        tracing::debug!(error = %e, "offset commit failed");
    }
}
