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
//! Kafka has no per-origin dedup like the collector's, so the owner keeps it: the highest line
//! sequence applied per upstream goes into the owner's checkpoint with its parts and its offset
//! in the repartition partition, all in one record, so after a crash the owner reads on from
//! that offset with the sequences of that same moment. An upstream that crashed after its
//! checkpoint (1) posts the restored outbox again with the same sequences, and the owners drop
//! the lines they applied; one that crashed before (1) replays its input and ships deltas never
//! posted before, under sequences above the last (they grow with the input offset).

use crate::config::PipelineConfig;
use crate::merge::{Merge, Note, unwrap_checkpoint, wrap_checkpoint};
use crate::pipeline::{PartitionId, Pipeline};
use crate::repartition::{self, Outbox};
use crate::state::StateError;
use ferry_kafka::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::BTreeMap;
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
        let mut partitions = count(&producer, topic)?;
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
            partitions = count(&producer, topic)?;
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
fn count(producer: &FutureProducer, topic: &str) -> Result<u32, String> {
    let md = producer
        .client()
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

/// One owned partition of the repartition topic.
pub struct Owner {
    /// Its own merge (its watermark: the minimum over its parts).
    pub merge: Merge,
    /// Per upstream input partition: its part's name in the merge and its merged partials.
    pub parts: BTreeMap<PartitionId, (PartitionId, Pipeline)>,
    /// Per upstream: the highest line sequence applied.
    pub seqs: BTreeMap<PartitionId, u64>,
    /// Offset in the repartition partition to read from next (`None`: from its beginning).
    pub next_offset: Option<u64>,
    /// Processing time it was assigned (a part silent since then for `idle_timeout` is idle).
    pub since_ms: i64,
}

/// What applying one message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Its deltas merged (this many were late).
    Merged { late: u64 },
    /// A replay of a line applied before (its sequence is not above its upstream's).
    Duplicate,
    /// Read before (below the owner's offset).
    Behind,
    /// Not a repartition line, or without a sequence.
    Unreadable(String),
}

impl Owner {
    pub fn new(cfg: &PipelineConfig, since_ms: i64) -> Self {
        Self {
            merge: Merge::new(cfg.clone()),
            parts: BTreeMap::new(),
            seqs: BTreeMap::new(),
            next_offset: None,
            since_ms,
        }
    }

    /// Restores the owner of partition `r` from its checkpoint ([`Owner::checkpoint`]).
    pub fn restore(
        cfg: &PipelineConfig,
        r: u32,
        bytes: &[u8],
        since_ms: i64,
    ) -> Result<Self, StateError> {
        let (_, rest) = unwrap_checkpoint(bytes)?;
        let (next, seqs, parts) = repartition::split_seqs(rest)?;
        let parts = repartition::decode_parts(cfg, parts)?;
        let mut o = Self::new(cfg, since_ms);
        o.next_offset = Some(next);
        o.seqs = seqs;
        o.parts = parts
            .into_iter()
            .map(|(up, p)| (up.clone(), (repartition::part_id(r, &up), p)))
            .collect();
        Ok(o)
    }

    /// Gives every upstream in `upstreams` a part (an empty one if it has none yet), so that
    /// one that has shipped nothing holds the watermark until `idle_timeout`.
    pub fn cover(&mut self, cfg: &PipelineConfig, r: u32, upstreams: &[PartitionId]) {
        for up in upstreams {
            self.parts.entry(up.clone()).or_insert_with(|| {
                (
                    repartition::part_id(r, up),
                    Pipeline::new(cfg.clone()).into_partial(),
                )
            });
        }
    }

    /// The checkpoint: `note`, then the offset to read from next with the sequences
    /// ([`repartition::encode_seqs`]), then the parts ([`repartition::encode_parts`]).
    pub fn checkpoint(&self, note: &Note) -> Vec<u8> {
        let mut body = repartition::encode_seqs(self.next_offset.unwrap_or(0), &self.seqs);
        let parts: Vec<(&PartitionId, &Pipeline)> =
            self.parts.iter().map(|(up, (_, p))| (up, p)).collect();
        body.extend_from_slice(&repartition::encode_parts(&parts));
        wrap_checkpoint(note, &body)
    }

    /// Applies the message at `offset` of partition `r` with `payload` and `seq`.
    pub fn apply(
        &mut self,
        cfg: &PipelineConfig,
        r: u32,
        offset: u64,
        payload: &[u8],
        seq: Option<u64>,
        now_ms: i64,
    ) -> Applied {
        if self.next_offset.is_some_and(|n| offset < n) {
            return Applied::Behind;
        }
        self.next_offset = Some(offset + 1);
        let Some(seq) = seq else {
            return Applied::Unreadable(format!("no {SEQ_HEADER} header"));
        };
        let line = match repartition::decode_line(payload, self.merge.ops()) {
            Ok(l) => l,
            Err(e) => return Applied::Unreadable(e.to_string()),
        };
        if self.seqs.get(&line.upstream).is_some_and(|&s| seq <= s) {
            return Applied::Duplicate;
        }
        self.seqs.insert(line.upstream.clone(), seq);
        let (_, part) = self.parts.entry(line.upstream.clone()).or_insert_with(|| {
            (
                repartition::part_id(r, &line.upstream),
                Pipeline::new(cfg.clone()).into_partial(),
            )
        });
        Applied::Merged {
            late: repartition::absorb(part, line, now_ms),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use crate::pipeline::Emission;
    use ferry_core::record::Record;

    fn cfg() -> PipelineConfig {
        let yaml = "pipelines:\n  - name: m\n    source: {topics: [app]}\n    event_time: {field: ts, format: unix_ms}\n    group_by: [k]\n    window: {tumbling: 10ms, allowed_lateness: 0s, idle_timeout: 1h}\n    aggregates: [{name: count, op: count}]\n";
        let c: ProcessorConfig =
            ferry_core::config::load_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        c.pipelines[0].clone()
    }

    /// An upstream's outbox of `n` records of key `k` at ts 1..=n, read up to `next`.
    fn outbox(up: &PartitionId, from: u64, n: u64, ts: i64, partitions: u32) -> Outbox {
        let cfg = cfg();
        let mut p = Pipeline::new(cfg).into_partial();
        let mut out: Vec<Emission> = Vec::new();
        for i in 0..n {
            let r = Record::from_line(format!(r#"{{"k":"a","ts":{ts}}}"#).into_bytes());
            p.process(up, from + i, &r, 0, 0, &mut out);
        }
        repartition::flush(&mut p, up, from + n, partitions)
    }

    fn count_of(o: &Owner) -> u64 {
        o.parts
            .values()
            .map(|(_, p)| {
                let mut w = Vec::new();
                let mut p2 = Pipeline::restore(cfg(), &p.snapshot()).unwrap();
                p2.windows.take_all(&mut w);
                w.iter()
                    .flat_map(|(_, w)| w.keys.values())
                    .map(|k| match &k.aggs[0] {
                        crate::aggregate::AggState::Count(c) => *c,
                        _ => 0,
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    #[test]
    fn replayed_lines_are_dropped_and_the_state_survives_a_checkpoint() {
        let cfg = cfg();
        let up = PartitionId::new("app", 0);
        let first = outbox(&up, 0, 5, 3, 1);
        let second = outbox(&up, 5, 2, 4, 1);
        let mut o = Owner::new(&cfg, 0);
        o.cover(&cfg, 0, std::slice::from_ref(&up));
        let mut offset = 0;
        let mut send = |o: &mut Owner, b: &Outbox| -> Vec<Applied> {
            b.numbered(0)
                .map(|(seq, line)| {
                    offset += 1;
                    o.apply(&cfg, 0, offset - 1, line, Some(seq), 0)
                })
                .collect()
        };
        assert_eq!(send(&mut o, &first), vec![Applied::Merged { late: 0 }]);
        assert_eq!(count_of(&o), 5);
        // The upstream crashed after its checkpoint: the same outbox again, then the next.
        assert_eq!(send(&mut o, &first), vec![Applied::Duplicate]);
        let note = Note::default();
        let saved = o.checkpoint(&note);
        assert_eq!(send(&mut o, &second), vec![Applied::Merged { late: 0 }]);
        assert_eq!(count_of(&o), 7);
        // The owner crashed after its checkpoint: restored, it reads on from its offset and
        // gets the second flush once; a message it read before is behind.
        let mut back = Owner::restore(&cfg, 0, &saved, 0).unwrap();
        assert_eq!(back.next_offset, Some(2));
        assert_eq!(count_of(&back), 5);
        let (seq, line) = second.numbered(0).next().unwrap();
        assert_eq!(back.apply(&cfg, 0, 1, line, Some(seq), 0), Applied::Behind);
        assert_eq!(
            back.apply(&cfg, 0, 2, line, Some(seq), 0),
            Applied::Merged { late: 0 }
        );
        assert_eq!(
            back.apply(&cfg, 0, 3, line, Some(seq), 0),
            Applied::Duplicate
        );
        assert_eq!(count_of(&back), 7);
        assert!(matches!(
            back.apply(&cfg, 0, 4, b"garbage", Some(seq + 1), 0),
            Applied::Unreadable(_)
        ));
        assert!(matches!(
            back.apply(&cfg, 0, 5, line, None, 0),
            Applied::Unreadable(_)
        ));
        for i in 0..saved.len() {
            let mut bad = saved.clone();
            bad[i] ^= 0x10;
            assert!(
                Owner::restore(&cfg, 0, &bad, 0).is_err(),
                "byte {i} changed and still restored"
            );
        }
    }
}
