//! The ingest path: a request body becomes batches stored in topic partitions.
//!
//! 1. **Parse** the body: the agent's batch format (`application/x-ferry-batch`, one or more
//!    batches back to back), or newline-delimited lines (plain text or JSON, optionally gzip),
//!    which become batches without an origin. Every batch is fully verified before anything is
//!    stored; a bad body is refused whole.
//! 2. **Route**: when no rule looks at the topic and it has no key field, a batch goes as
//!    received (compressed with `store_codec` if it came uncompressed) to one partition
//!    (chosen by its origin, so one file's lines stay in order and replays meet their dedup
//!    mark). Otherwise each record is routed and partitioned, and each
//!    destination gets a sub-batch that keeps origin offsets (see `Batch::encode_subset`).
//! 3. **Admit**: topics are created if allowed; a topic at its `max_records` refuses the whole
//!    request (429) before anything is stored.
//! 4. **Append** every sub-batch (concurrently: one group commit covers them) and answer only
//!    when all are durable.
//!
//! With the Kafka backend ([`Backend::Kafka`]), steps 1 and 2 are the same except that Kafka
//! picks partitions (by message key when the topic has a key field), admission limits are the
//! brokers', and step 4 produces each destination's records with `KafkaSink::send_batch`: the
//! reply is sent only after Kafka acknowledged every record of the request (acks=all); any
//! failure refuses the whole request (503), so the client resends it.

use crate::config::{BackendKind, CollectorConfig};
use crate::routing::{Decision, Router};
use crate::store::{FsyncPolicy, Store, StoreError};
use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchBuilder, BatchHeader, DecodeLimits};
use ferry_core::record::OriginKey;
use ferry_core::topic::stable_hash;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Raw payload size at which a plain body is cut into another batch.
const PLAIN_BATCH_BYTES: usize = 1 << 20;

/// What a successful post did; the JSON body of the 200 reply.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct IngestSummary {
    pub topic: String,
    /// Records in the request.
    pub records: u64,
    /// Records stored (over all destination topics; a copied record counts once per copy).
    pub stored: u64,
    /// Records dropped as replays of ones already stored (same origin and offset).
    pub deduplicated: u64,
    /// Records dropped by routing rules.
    pub dropped: u64,
    /// Records stored per destination topic.
    pub routed: BTreeMap<String, u64>,
    /// The fsync policy that held when the reply was sent.
    pub fsync: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("topic {0:?} does not exist and auto_create_topics is off")]
    UnknownTopic(String),
    #[error(
        "topic {topic} is full: it holds {held} records and takes at most {max} (max_records); records count until retention removes them, consumed or not: retry once retention frees space"
    )]
    TopicFull { topic: String, held: u64, max: u64 },
    #[error("{0}")]
    Busy(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Kafka did not acknowledge every record; nothing of the request may be considered stored.
    #[error("kafka: {0}; the request was not acknowledged, retry it")]
    Kafka(#[from] ferry_kafka::KafkaError),
}

/// Where ingested records go.
pub enum Backend {
    /// The embedded topic log.
    Embedded(Store),
    /// A Kafka cluster.
    Kafka(Arc<KafkaBackend>),
}

/// The Kafka backend: the producer and the topic mapping.
pub struct KafkaBackend {
    pub sink: ferry_kafka::KafkaSink,
    pub config: ferry_kafka::KafkaConfig,
}

/// Everything the ingest path needs; shared by all requests.
pub struct Ingest {
    /// Where records are stored.
    pub backend: Backend,
    /// Limits, topic settings, codecs.
    pub config: std::sync::Arc<CollectorConfig>,
    /// The routing rules. A std mutex: `route` is synchronous and the lock is never held
    /// across an await.
    router: Mutex<Router>,
    /// Spreads batches without an origin over partitions.
    round_robin: AtomicU64,
    /// Records admitted but not yet appended, per topic, so concurrent requests cannot together
    /// overrun `max_records`.
    reserved: Mutex<HashMap<String, u64>>,
    /// Requests in flight per topic (`max_pending_per_topic`).
    pending: Mutex<HashMap<String, u32>>,
    /// Per origin, the highest end offset that landed through the routed or Kafka path, for
    /// requests that must follow it ([`batch::AFTER_HEADER`]); in memory only.
    landed: Mutex<HashMap<OriginKey, u64>>,
    landed_notify: tokio::sync::Notify,
    /// Paces auto-creation of topics (`topic_creations_per_sec`). A std mutex, never held
    /// across an await.
    creations: Mutex<TokenBucket>,
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up. Time is passed in.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    pub fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            tokens: rate,
            last: None,
        }
    }

    /// Takes a token if one is there at `now`.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long a routed or Kafka-bound batch waits for its predecessor before a 409.
const ORDER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Origins remembered in `landed` before it is cleared.
const MAX_LANDED: usize = 1 << 16;

/// Each origin of `items` with the end offset of its last batch.
fn landed_marks(items: &[(Bytes, Batch)]) -> Vec<(OriginKey, u64)> {
    items
        .iter()
        .filter_map(|(_, b)| b.header.origin.as_ref())
        .map(|o| (o.key.clone(), o.end_offset))
        .collect()
}

/// A plain body's producer ([`batch::PRODUCER_ID_HEADER`], [`batch::PRODUCER_SEQ_HEADER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub id: String,
    /// Sequence number of the body's first line.
    pub first_seq: u64,
}

/// Longest producer id.
pub const MAX_PRODUCER_ID_LEN: usize = 64;

impl Producer {
    /// From the two headers' values; the error names the header and what is wrong.
    pub fn parse(id: &str, seq: &str) -> Result<Self, String> {
        if id.is_empty()
            || id.len() > MAX_PRODUCER_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{} must be 1 to {MAX_PRODUCER_ID_LEN} of [A-Za-z0-9._-], got {id:?}",
                batch::PRODUCER_ID_HEADER
            ));
        }
        let first_seq = seq.trim().parse::<u64>().map_err(|_| {
            format!(
                "{} must be the sequence number of the body's first line (an unsigned integer), got {seq:?}",
                batch::PRODUCER_SEQ_HEADER
            )
        })?;
        Ok(Self {
            id: id.to_owned(),
            first_seq,
        })
    }

    /// The origin its lines are stored under: `producer/ID` as the agent id, with the all-zero
    /// file identity that no file an agent reads has.
    fn origin_key(&self) -> OriginKey {
        ferry_core::topic::producer_origin(&self.id)
    }
}

/// Releases a topic's pending-request slot when a request ends, however it ends.
struct PendingGuard {
    ingest: Arc<Ingest>,
    topic: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.ingest.pending.lock()
            && let Some(n) = p.get_mut(&self.topic)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Keyed by request topic: without this, every name ever posted stays.
                p.remove(&self.topic);
            }
        }
    }
}

/// Room reserved under `max_records` for an admitted request, given back on drop: whether the
/// append finished, failed, or the request's future was dropped half-way (a client that closes
/// its socket makes hyper drop the handler at whatever await it was in).
struct Admission {
    ingest: Arc<Ingest>,
    /// (topic, records) reserved.
    taken: Vec<(String, u64)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        if let Ok(mut reserved) = self.ingest.reserved.lock() {
            for (t, n) in &self.taken {
                if let Some(v) = reserved.get_mut(t) {
                    *v = v.saturating_sub(*n);
                    if *v == 0 {
                        reserved.remove(t);
                    }
                }
            }
        }
    }
}

/// One destination of a request: a topic partition and the batches for it.
#[derive(Debug)]
struct Destination {
    topic: String,
    partition: u32,
    batches: Vec<Bytes>,
    records: u64,
}

impl Ingest {
    pub fn new(backend: Backend, config: std::sync::Arc<CollectorConfig>) -> Self {
        let router = Router::new(config.routes.clone());
        let creations = TokenBucket::new(config.limits.topic_creations_per_sec);
        Self {
            backend,
            config,
            router: Mutex::new(router),
            round_robin: AtomicU64::new(0),
            reserved: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            landed: Mutex::new(HashMap::new()),
            landed_notify: tokio::sync::Notify::new(),
            creations: Mutex::new(creations),
        }
    }

    /// The embedded store; `None` on the Kafka backend.
    pub fn store(&self) -> Option<&Store> {
        match &self.backend {
            Backend::Embedded(s) => Some(s),
            Backend::Kafka(_) => None,
        }
    }

    fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_raw_bytes: self.config.limits.max_raw_bytes.get(),
            max_records: 1 << 24,
        }
    }

    /// Creates `topic` if it is missing and allowed; returns its partition count.
    pub fn ensure_topic(&self, topic: &str) -> Result<u32, IngestError> {
        let store = match &self.backend {
            Backend::Embedded(s) => s,
            // Kafka creates topics itself (or refuses records for unknown ones): records are
            // produced without a partition, so the count is not needed here.
            Backend::Kafka(_) => {
                ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
                return Ok(1);
            }
        };
        if let Some(n) = store.topic_partitions(topic) {
            return Ok(n);
        }
        ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
        let configured = self.config.topics.get(topic);
        if !self.config.auto_create_topics && configured.is_none() {
            return Err(IngestError::UnknownTopic(topic.to_owned()));
        }
        let n = configured
            .and_then(|t| t.partitions)
            .unwrap_or(self.config.default_partitions);
        let limits = &self.config.limits;
        if store.topic_count() >= limits.max_topics as usize {
            metrics::counter!("ferry_collector_refused_total", "reason" => "max_topics")
                .increment(1);
            return Err(IngestError::Store(StoreError::TooManyTopics {
                max: limits.max_topics as usize,
            }));
        }
        let admitted = self
            .creations
            .lock()
            .map(|mut b| b.take(std::time::Instant::now()))
            .unwrap_or(false);
        if !admitted {
            metrics::counter!("ferry_collector_refused_total", "reason" => "topic_creation_rate")
                .increment(1);
            return Err(IngestError::Busy(format!(
                "topic {topic} does not exist and topics are being created faster than limits.topic_creations_per_sec ({}); retry later",
                limits.topic_creations_per_sec
            )));
        }
        store.create_topic_bounded(topic, n, limits.max_topics as usize)?;
        tracing::info!(topic, partitions = n, "topic created");
        Ok(store.topic_partitions(topic).unwrap_or(n))
    }

    /// Handles one `POST /v1/topics/{topic}/records`. `after` is the request's
    /// [`batch::AFTER_HEADER`]: store the (single) batch only once its file's records up to
    /// that offset are stored, else refuse it with [`StoreError::OutOfOrder`] (409).
    pub async fn ingest(
        self: &Arc<Self>,
        topic: &str,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: Bytes,
        after: Option<u64>,
        producer: Option<Producer>,
    ) -> Result<IngestSummary, IngestError> {
        ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
        let pending = self.enter(topic)?;
        // Gunzip, CRC checks and decoding burn CPU: on the blocking pool, not the async workers.
        let items = {
            let this = self.clone();
            let (ct, ce) = (
                content_type.map(str::to_owned),
                content_encoding.map(str::to_owned),
            );
            run_blocking(move || this.parse_body(ct.as_deref(), ce.as_deref(), body, producer))
                .await??
        };
        let ordered = match after {
            None => None,
            Some(after) => match items.as_slice() {
                [(_, b)] if b.header.origin.is_some() => {
                    b.header.origin.as_ref().map(|o| (o.key.clone(), after))
                }
                _ => {
                    return Err(IngestError::BadRequest(format!(
                        "{} needs a body of exactly one batch with an origin",
                        batch::AFTER_HEADER
                    )));
                }
            },
        };
        let records: u64 = items.iter().map(|(_, b)| b.records.len() as u64).sum();
        // A request that may wait for its predecessor does not hold the topic's pending slot
        // while it waits: the predecessor may need that slot to arrive.
        let pending_slot = ordered.is_none().then_some(pending);
        if let Backend::Kafka(kafka) = &self.backend {
            if let Some((key, after)) = &ordered {
                self.wait_landed(key, *after).await?;
            }
            let landed = landed_marks(&items);
            let summary = self.produce_all(kafka, topic, items, records).await?;
            self.mark_landed(landed);
            return Ok(summary);
        }
        let whole = !self.needs_look(topic);
        // Routing may create topics (mkdir, fsync) and recompress: on the blocking pool too.
        let (items, routed) = {
            let this = self.clone();
            let topic = topic.to_owned();
            run_blocking(move || {
                let r = this.route(&topic, &items, whole);
                (items, r)
            })
            .await?
        };
        let (dests, dropped) = routed?;
        // A batch that goes whole to one partition has its order checked by the store, in the
        // writer's order, so it can share a group commit with its predecessor. A routed batch
        // is split over partitions: it waits here until its predecessor has landed everywhere.
        let store_after = match &ordered {
            Some((_, after)) if whole => Some(*after),
            Some((key, after)) => {
                self.wait_landed(key, *after).await?;
                None
            }
            None => None,
        };
        // The admission ticket (the reservation) and the pending slot go with the append into
        // a task of its own: if this request's future is dropped (its client went away), the
        // appends it started still finish, and only then is the room given back, so the
        // topic's count can never pass max_records nor keep room nobody uses.
        let ticket = self.admit(&dests)?;
        let appending = {
            let this = self.clone();
            tokio::spawn(async move {
                let _held = (ticket, pending_slot);
                this.append_all(dests, store_after).await
            })
        };
        let (stored, deduplicated, routed) = appending.await.map_err(|e| {
            tracing::error!(error = %e, "append task failed");
            IngestError::Busy("internal error; see the collector log".into())
        })??;
        if !whole {
            self.mark_landed(landed_marks(&items));
        }
        metrics::counter!("ferry_collector_records_received_total", "topic" => topic.to_owned())
            .increment(records);
        metrics::counter!("ferry_collector_records_deduplicated_total").increment(deduplicated);
        metrics::counter!("ferry_collector_records_dropped_total", "reason" => "route")
            .increment(dropped);
        Ok(IngestSummary {
            topic: topic.to_owned(),
            records,
            stored,
            deduplicated,
            dropped,
            routed,
            fsync: fsync_name(self.config.store.fsync).to_owned(),
        })
    }

    /// Whether records of `topic` must be looked at one by one (routing rules or a key field).
    fn needs_look(&self, topic: &str) -> bool {
        self.router
            .lock()
            .map(|r| r.applies_to(topic))
            .unwrap_or(true)
            || self.key_field(topic).is_some()
    }

    /// Waits (up to [`ORDER_WAIT`]) until `key`'s records up to `after` have landed through
    /// this collector's routed or Kafka path.
    async fn wait_landed(&self, key: &OriginKey, after: u64) -> Result<(), IngestError> {
        let deadline = tokio::time::Instant::now() + ORDER_WAIT;
        loop {
            let notified = self.landed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let high = self
                .landed
                .lock()
                .map_err(|_| IngestError::Busy("collector state poisoned".into()))?
                .get(key)
                .copied();
            if high.is_some_and(|h| h >= after) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                metrics::counter!("ferry_collector_refused_total", "reason" => "out_of_order")
                    .increment(1);
                return Err(IngestError::Store(StoreError::OutOfOrder { after, high }));
            }
        }
    }

    /// Records that these origins' records up to their end offsets have landed.
    fn mark_landed(&self, marks: Vec<(OriginKey, u64)>) {
        if marks.is_empty() {
            return;
        }
        if let Ok(mut landed) = self.landed.lock() {
            // Forgetting is safe: a waiter then times out with a 409 and its sender resends
            // once the predecessor is acknowledged, without the header.
            if landed.len() >= MAX_LANDED {
                landed.clear();
            }
            for (key, end) in marks {
                let e = landed.entry(key).or_insert(end);
                *e = (*e).max(end);
            }
        }
        self.landed_notify.notify_waiters();
    }

    fn enter(self: &Arc<Self>, topic: &str) -> Result<PendingGuard, IngestError> {
        let mut p = self
            .pending
            .lock()
            .map_err(|_| IngestError::Busy("collector state poisoned".into()))?;
        let n = p.entry(topic.to_owned()).or_insert(0);
        if *n >= self.config.limits.max_pending_per_topic {
            metrics::counter!("ferry_collector_refused_total", "reason" => "topic_queue")
                .increment(1);
            return Err(IngestError::Busy(format!(
                "topic {topic} has {n} requests in flight (max_pending_per_topic); retry later"
            )));
        }
        *n += 1;
        Ok(PendingGuard {
            ingest: self.clone(),
            topic: topic.to_owned(),
        })
    }

    /// Turns a body into verified batches: (encoded bytes, decoded batch).
    fn parse_body(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: Bytes,
        producer: Option<Producer>,
    ) -> Result<Vec<(Bytes, Batch)>, IngestError> {
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        let limits = self.limits();
        if mime.as_deref() == Some(batch::CONTENT_TYPE) {
            if content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
                return Err(IngestError::BadRequest(
                    "ferry batches carry their own compression: send them without Content-Encoding"
                        .into(),
                ));
            }
            if producer.is_some() {
                return Err(IngestError::BadRequest(format!(
                    "{} is for plain bodies: ferry batches carry their own origin",
                    batch::PRODUCER_ID_HEADER
                )));
            }
            return split_batches(&body, &limits);
        }
        let raw = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
            None => body,
            Some(e) if e == "identity" => body,
            Some(e) if e == "gzip" || e == "x-gzip" => gunzip(&body, limits.max_raw_bytes)?,
            Some(other) => {
                return Err(IngestError::BadRequest(format!(
                    "unsupported Content-Encoding {other:?} (use gzip or none)"
                )));
            }
        };
        self.plain_batches(&raw, &limits, producer)
    }

    fn plain_batches(
        &self,
        raw: &Bytes,
        limits: &DecodeLimits,
        producer: Option<Producer>,
    ) -> Result<Vec<(Bytes, Batch)>, IngestError> {
        let max_line = self.config.limits.max_line_bytes.as_usize();
        let now = ferry_core::now_ms();
        let codec = self.config.plain_codec;
        let mut out = Vec::new();
        // With a producer, line `i` of the body is origin offset `first_seq + i` (span 1): the
        // store's origin dedup then drops a resent line like a re-read file line.
        let (key, span) = match &producer {
            Some(p) => (Some(p.origin_key()), 1),
            None => (None, 0),
        };
        // A producer's body stays one batch: the batches of one request are appended
        // concurrently, and a later batch of an origin landing first would make the earlier
        // one look like a replay to the dedup. (Bodies are bounded by max_raw_bytes anyway.)
        let cut_at = if key.is_some() {
            usize::MAX
        } else {
            PLAIN_BATCH_BYTES
        };
        let mut builder = BatchBuilder::new();
        builder.reset(key.clone().zip(producer.map(|p| p.first_seq)));
        let seal =
            |b: &mut BatchBuilder, out: &mut Vec<(Bytes, Batch)>| -> Result<(), IngestError> {
                if b.is_empty() {
                    return Ok(());
                }
                let enc = Bytes::from(
                    b.finish(codec, 1, now)
                        .map_err(|e| IngestError::TooLarge(e.to_string()))?,
                );
                let decoded = batch::decode(&enc, limits)
                    .map_err(|e| IngestError::BadRequest(e.to_string()))?;
                out.push((enc, decoded));
                let next = key.clone().zip(b.end_offset());
                b.reset(next);
                Ok(())
            };
        let mut start = 0usize;
        let mut lineno = 0u64;
        while start < raw.len() {
            lineno += 1;
            let end = memchr::memchr(b'\n', &raw[start..])
                .map(|i| start + i)
                .unwrap_or(raw.len());
            let mut line = &raw[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.len() > max_line {
                return Err(IngestError::TooLarge(format!(
                    "line {lineno} is {} bytes, over max_line_bytes ({max_line})",
                    line.len()
                )));
            }
            builder.push_line(line, span);
            if builder.raw_len() >= cut_at {
                seal(&mut builder, &mut out)?;
            }
            start = end + 1;
        }
        seal(&mut builder, &mut out)?;
        Ok(out)
    }

    /// Decides every record's destination topic partition; returns the destinations and the
    /// count of records routing dropped.
    fn route(
        &self,
        topic: &str,
        items: &[(Bytes, Batch)],
        whole: bool,
    ) -> Result<(Vec<Destination>, u64), IngestError> {
        let mut dests: BTreeMap<(String, u32), Destination> = BTreeMap::new();
        let mut dropped = 0u64;
        if whole {
            let n = self.ensure_topic(topic)?;
            for (enc, b) in items {
                if b.records.is_empty() {
                    continue;
                }
                let p = self.partition_for_batch(&b.header, n);
                let enc = self.for_storage(enc, b)?;
                let d = dests
                    .entry((topic.to_owned(), p))
                    .or_insert_with(|| Destination {
                        topic: topic.to_owned(),
                        partition: p,
                        batches: Vec::new(),
                        records: 0,
                    });
                d.batches.push(enc);
                d.records += b.records.len() as u64;
            }
            return Ok((dests.into_values().collect(), 0));
        }
        for (enc, b) in items {
            // Per record: the list of (topic, partition) it goes to.
            let mut per_record: Vec<Vec<(String, u32)>> = Vec::with_capacity(b.records.len());
            let mut batch_partition: HashMap<String, u32> = HashMap::new();
            // Partition counts of the destinations seen in this batch (one lookup each).
            let mut counts: HashMap<String, u32> = HashMap::new();
            // Rule matches of this batch, counted once per rule at the end.
            let mut hits: Vec<usize> = Vec::new();
            // Held for the whole batch: routing is synchronous, nothing here awaits.
            let mut router = self
                .router
                .lock()
                .map_err(|_| IngestError::Busy("router state poisoned".into()))?;
            for rec in &b.records {
                let decision = match router.route(topic, rec, |i| hits.push(i)) {
                    Decision::Original => vec![topic.to_owned()],
                    Decision::Topics(ix) => ix
                        .iter()
                        .map(|&i| router.topic_name(i).to_owned())
                        .collect(),
                };
                if decision.is_empty() {
                    dropped += 1;
                }
                let mut targets = Vec::with_capacity(decision.len());
                for t in decision {
                    let n = match counts.get(&t) {
                        Some(&n) => n,
                        None => {
                            let n = self.ensure_topic(&t)?;
                            counts.insert(t.clone(), n);
                            n
                        }
                    };
                    let p = match self.key_field(&t) {
                        Some(field) => match crate::routing::field_value(rec, field) {
                            Some(v) => (stable_hash(&[v.as_bytes()]) % u64::from(n)) as u32,
                            None => *batch_partition
                                .entry(t.clone())
                                .or_insert_with(|| self.partition_for_batch(&b.header, n)),
                        },
                        None => *batch_partition
                            .entry(t.clone())
                            .or_insert_with(|| self.partition_for_batch(&b.header, n)),
                    };
                    targets.push((t, p));
                }
                per_record.push(targets);
            }
            let mut per_rule: BTreeMap<usize, u64> = BTreeMap::new();
            for i in hits {
                *per_rule.entry(i).or_default() += 1;
            }
            for (i, n) in per_rule {
                metrics::counter!("ferry_collector_route_matches_total", "rule" => router.rule(i).name.clone())
                    .increment(n);
            }
            drop(router);
            let mut groups: BTreeMap<(String, u32), Vec<usize>> = BTreeMap::new();
            for (i, targets) in per_record.iter().enumerate() {
                for tp in targets {
                    groups.entry(tp.clone()).or_default().push(i);
                }
            }
            for ((t, p), idx) in groups {
                let sub = if idx.len() == b.records.len() {
                    self.for_storage(enc, b)?
                } else {
                    let keep: std::collections::HashSet<usize> = idx.iter().copied().collect();
                    let codec = self.storage_codec(b.header.codec);
                    match b
                        .encode_subset(|i| keep.contains(&i), codec, 1)
                        .map_err(|e| IngestError::TooLarge(e.to_string()))?
                    {
                        Some(v) => Bytes::from(v),
                        None => continue,
                    }
                };
                let d = dests.entry((t.clone(), p)).or_insert_with(|| Destination {
                    topic: t,
                    partition: p,
                    batches: Vec::new(),
                    records: 0,
                });
                d.batches.push(sub);
                d.records += idx.len() as u64;
            }
        }
        Ok((dests.into_values().collect(), dropped))
    }

    /// The codec a batch received with `codec` is stored with (`store_codec`).
    fn storage_codec(&self, codec: batch::Codec) -> batch::Codec {
        match codec {
            batch::Codec::None => self.config.store_codec,
            other => other,
        }
    }

    /// The bytes to store for a received batch: as received, or compressed with
    /// `store_codec` if it arrived uncompressed.
    fn for_storage(&self, enc: &Bytes, b: &Batch) -> Result<Bytes, IngestError> {
        let codec = self.storage_codec(b.header.codec);
        if codec == b.header.codec {
            return Ok(enc.clone());
        }
        let raw = &enc[b.header.payload_start..b.header.total_len];
        let out = batch::recompress(enc, &b.header, raw, codec, 1)
            .map_err(|e| IngestError::TooLarge(e.to_string()))?;
        metrics::counter!("ferry_collector_recompressed_bytes_total", "codec" => codec.name())
            .increment(raw.len() as u64);
        Ok(Bytes::from(out))
    }

    fn key_field(&self, topic: &str) -> Option<&str> {
        self.config
            .topics
            .get(topic)
            .and_then(|t| t.key_field.as_deref())
    }

    /// A batch with an origin always goes to the same partition (its file's lines stay in order
    /// and a replay meets its dedup mark); one without is spread round-robin.
    fn partition_for_batch(&self, header: &BatchHeader, partitions: u32) -> u32 {
        let n = u64::from(partitions.max(1));
        match &header.origin {
            Some(o) => ferry_core::topic::origin_partition(&o.key, partitions),
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % n) as u32,
        }
    }

    /// Refuses the request if a destination topic would exceed its `max_records`; otherwise
    /// reserves room for it. The reservation lasts as long as the returned ticket.
    fn admit(self: &Arc<Self>, dests: &[Destination]) -> Result<Admission, IngestError> {
        let mut incoming: BTreeMap<&str, u64> = BTreeMap::new();
        for d in dests {
            *incoming.entry(d.topic.as_str()).or_default() += d.records;
        }
        let mut reserved = self
            .reserved
            .lock()
            .map_err(|_| IngestError::Busy("collector state poisoned".into()))?;
        for (topic, n) in &incoming {
            let Some(max) = self.max_records(topic) else {
                continue;
            };
            let held = self.held_records(topic) + reserved.get(*topic).copied().unwrap_or(0);
            if held + n > max {
                metrics::counter!("ferry_collector_refused_total", "reason" => "topic_full")
                    .increment(1);
                metrics::counter!("ferry_collector_records_refused_total", "topic" => topic.to_string())
                    .increment(*n);
                return Err(IngestError::TopicFull {
                    topic: topic.to_string(),
                    held,
                    max,
                });
            }
        }
        let mut taken = Vec::new();
        for (topic, n) in incoming {
            if self.max_records(topic).is_some() {
                *reserved.entry(topic.to_owned()).or_default() += n;
                taken.push((topic.to_owned(), n));
            }
        }
        Ok(Admission {
            ingest: self.clone(),
            taken,
        })
    }

    fn max_records(&self, topic: &str) -> Option<u64> {
        self.config.topics.get(topic).and_then(|t| t.max_records)
    }

    /// Records reserved by admitted requests that have not finished, for `topic`.
    pub fn reserved_records(&self, topic: &str) -> u64 {
        self.reserved
            .lock()
            .map(|r| r.get(topic).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Requests in flight for `topic` (holding a `max_pending_per_topic` slot).
    pub fn pending_requests(&self, topic: &str) -> u32 {
        self.pending
            .lock()
            .map(|p| p.get(topic).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Records a topic holds now (stored and not yet removed by retention).
    pub fn held_records(&self, topic: &str) -> u64 {
        let Some(store) = self.store() else {
            return 0;
        };
        store
            .topics()
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| p.end_offset - p.log_start)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Appends every destination's batches; `after` (see [`Store::append_after`]) is passed
    /// with each, which only a request of one batch uses.
    async fn append_all(
        &self,
        dests: Vec<Destination>,
        after: Option<u64>,
    ) -> Result<(u64, u64, BTreeMap<String, u64>), IngestError> {
        let Backend::Embedded(store) = &self.backend else {
            return Err(IngestError::Busy(
                "internal: embedded append on the Kafka backend".into(),
            ));
        };
        let mut set = tokio::task::JoinSet::new();
        for d in dests {
            for b in d.batches {
                let store = store.clone();
                let topic = d.topic.clone();
                let partition = d.partition;
                set.spawn(async move {
                    let r = store.append_after(&topic, partition, b, after).await;
                    (topic, r)
                });
            }
        }
        let mut stored = 0u64;
        let mut dedup = 0u64;
        let mut routed: BTreeMap<String, u64> = BTreeMap::new();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((topic, Ok(out))) => {
                    stored += u64::from(out.stored);
                    dedup += u64::from(out.deduplicated);
                    *routed.entry(topic).or_default() += u64::from(out.stored);
                }
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(IngestError::Store(e));
                }
                Err(e) => {
                    first_err.get_or_insert(IngestError::Busy(format!("append task failed: {e}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok((stored, dedup, routed)),
        }
    }
}

impl Ingest {
    /// The Kafka backend's step 2 and 4: routes every record to its destination topics and
    /// produces each destination's records; returns only when Kafka acknowledged all of them.
    async fn produce_all(
        &self,
        kafka: &Arc<KafkaBackend>,
        topic: &str,
        items: Vec<(Bytes, Batch)>,
        records: u64,
    ) -> Result<IngestSummary, IngestError> {
        let applies = self
            .router
            .lock()
            .map(|r| r.applies_to(topic))
            .unwrap_or(true);
        let mut sends: Vec<(String, Batch)> = Vec::new();
        let mut dropped = 0u64;
        for (_, b) in items {
            if b.records.is_empty() {
                continue;
            }
            if !applies {
                sends.push((topic.to_owned(), b));
                continue;
            }
            let mut per_topic: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            {
                let mut router = self
                    .router
                    .lock()
                    .map_err(|_| IngestError::Busy("router state poisoned".into()))?;
                for (i, rec) in b.records.iter().enumerate() {
                    let mut hits: Vec<usize> = Vec::new();
                    let d = router.route(topic, rec, |i| hits.push(i));
                    for h in hits {
                        metrics::counter!("ferry_collector_route_matches_total", "rule" => router.rule(h).name.clone())
                            .increment(1);
                    }
                    let targets: Vec<String> = match d {
                        Decision::Original => vec![topic.to_owned()],
                        Decision::Topics(ix) => ix
                            .iter()
                            .map(|&t| router.topic_name(t).to_owned())
                            .collect(),
                    };
                    if targets.is_empty() {
                        dropped += 1;
                    }
                    for t in targets {
                        per_topic.entry(t).or_default().push(i);
                    }
                }
            }
            for (t, idx) in per_topic {
                ferry_core::topic::validate_name(&t).map_err(IngestError::BadRequest)?;
                // The header travels only for its origin and ingest time, which a subset shares.
                let sub = Batch {
                    header: b.header.clone(),
                    records: idx.iter().map(|&i| b.records[i].clone()).collect(),
                };
                sends.push((t, sub));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (ferry_topic, batch) in sends {
            let kafka = kafka.clone();
            let key_field = kafka
                .config
                .key_field(&ferry_topic)
                .or_else(|| self.key_field(&ferry_topic))
                .map(str::to_owned);
            let mut batch = batch;
            if let Some(k) = &key_field {
                // The key field may be in a JSON line rather than among the record's fields
                // (as routing and the embedded store's partitioning read it): carry it as a
                // field, so it becomes the message key (and a `ferry.f.` header).
                for rec in &mut batch.records {
                    if !rec.fields.iter().any(|f| &*f.key == k.as_str())
                        && let Some(v) = crate::routing::field_value(rec, k)
                    {
                        rec.fields
                            .push(ferry_core::record::Field::new(k.as_str(), v));
                    }
                }
            }
            set.spawn(async move {
                let kafka_topic = kafka.config.kafka_topic(&ferry_topic);
                let r = kafka
                    .sink
                    .send_batch(&kafka_topic, &batch, key_field.as_deref())
                    .await;
                (ferry_topic, r)
            });
        }
        let mut stored = 0u64;
        let mut routed: BTreeMap<String, u64> = BTreeMap::new();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((t, Ok(report))) => {
                    stored += report.records;
                    *routed.entry(t).or_default() += report.records;
                }
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(IngestError::Kafka(e));
                }
                Err(e) => {
                    first_err.get_or_insert(IngestError::Busy(format!("produce task failed: {e}")));
                }
            }
        }
        if let Some(e) = first_err {
            metrics::counter!("ferry_collector_refused_total", "reason" => "kafka").increment(1);
            return Err(e);
        }
        metrics::counter!("ferry_collector_records_received_total", "topic" => topic.to_owned())
            .increment(records);
        metrics::counter!("ferry_collector_records_dropped_total", "reason" => "route")
            .increment(dropped);
        Ok(IngestSummary {
            topic: topic.to_owned(),
            records,
            stored,
            deduplicated: 0,
            dropped,
            routed,
            fsync: "kafka acks=all".to_owned(),
        })
    }
}

/// Opens the backend the config names: the embedded store (recovering it) or a Kafka producer.
pub fn open_backend(config: &CollectorConfig) -> anyhow::Result<Backend> {
    use anyhow::Context;
    match (config.backend, &config.kafka) {
        (BackendKind::Kafka, Some(k)) => {
            let sink = ferry_kafka::KafkaSink::new(k).context("creating the Kafka producer")?;
            Ok(Backend::Kafka(Arc::new(KafkaBackend {
                sink,
                config: k.clone(),
            })))
        }
        (BackendKind::Kafka, None) => Err(anyhow::anyhow!("backend: kafka needs a kafka: section")),
        (BackendKind::Embedded, _) => {
            let store = Store::open(&config.data_dir, config.store.clone())
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
            for (name, t) in &config.topics {
                let n = t.partitions.unwrap_or(config.default_partitions);
                store
                    .create_topic(name, n)
                    .with_context(|| format!("creating topic {name}"))?;
            }
            Ok(Backend::Embedded(store))
        }
    }
}

/// Runs CPU- or disk-bound work of a request on the blocking pool. If the request is dropped
/// meanwhile the work still finishes (nothing it holds is left half-done), its result unused.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "ingest task failed");
        IngestError::Busy("internal error; see the collector log".into())
    })
}

fn fsync_name(p: FsyncPolicy) -> &'static str {
    match p {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Group => "group",
        FsyncPolicy::Interval => "interval",
        FsyncPolicy::Never => "never",
    }
}

/// Splits a body of back-to-back ferry batches and verifies each one completely.
fn split_batches(body: &Bytes, limits: &DecodeLimits) -> Result<Vec<(Bytes, Batch)>, IngestError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    if body.is_empty() {
        return Err(IngestError::BadRequest(
            "empty body: expected a ferry batch".into(),
        ));
    }
    while pos < body.len() {
        let n = out.len();
        let header = BatchHeader::parse(&body[pos..])
            .map_err(|e| IngestError::BadRequest(format!("batch {n} (at byte {pos}): {e}")))?;
        let enc = body.slice(pos..pos + header.total_len);
        let decoded = batch::decode(&enc, limits).map_err(|e| match e {
            ferry_core::batch::WireError::TooLarge { .. }
            | ferry_core::batch::WireError::TooManyRecords { .. } => {
                IngestError::TooLarge(format!("batch {n}: {e}"))
            }
            other => IngestError::BadRequest(format!("batch {n} (at byte {pos}): {other}")),
        })?;
        pos += header.total_len;
        out.push((enc, decoded));
    }
    Ok(out)
}

/// Inflates a gzip body, refusing (413) past `limit` bytes without inflating the rest.
fn gunzip(body: &[u8], limit: u64) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit as usize));
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(limit + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| IngestError::BadRequest(format!("body is not valid gzip: {e}")))?;
    if out.len() as u64 > limit {
        return Err(IngestError::TooLarge(format!(
            "body inflates past max_raw_bytes ({limit} bytes)"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(300)));
        assert!(b.take(t0 + Duration::from_millis(400)));
        // Idle time saves up at most one burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }
}
