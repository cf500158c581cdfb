//! The ingest path: a request body becomes batches stored in topic partitions, as pure steps
//! around a thin async driver ([`Ingest::ingest`]):
//!
//! 1. **Parse** the body ([`body`]): the agent's batch format or newline-delimited lines
//!    (plain text or JSON, optionally gzip), every batch fully verified; a bad body is refused
//!    whole. On the blocking pool.
//! 2. **Route** ([`plan`]): where each record goes, by the routing rules; one implementation
//!    for both backends. When no rule looks at the topic and it has no key field, a batch goes
//!    as received (compressed with `store_codec` if it came uncompressed) to one partition,
//!    chosen by its origin so one file's lines stay in order and replays meet their dedup mark.
//! 3. **Admit** ([`admission`]): topics are created if allowed; a topic at its `max_records`
//!    refuses the whole request (429) before anything is stored; what a request holds is a
//!    guard given back on drop.
//! 4. **Order and store** ([`order`], [`Backend::deliver`]): a batch sent with `ferry-after`
//!    follows its predecessor; every destination is stored and the answer comes only once all
//!    are durable.
//!
//! The [`Backend`] trait is what differs: [`embedded::Embedded`] picks partitions, admits
//! and appends to the store; [`kafka::KafkaBackend`] produces each destination's records and
//! answers once Kafka acknowledged them all (acks=all), refusing the whole request (503) on
//! any failure so the client resends it.

pub mod admission;
pub mod body;
pub mod embedded;
pub mod kafka;
pub mod order;
pub mod plan;

use crate::config::{BackendKind, CollectorConfig};
use crate::routing::Router;
use crate::store::{Store, StoreError};
use admission::{PendingGuard, TokenBucket};
use bytes::Bytes;
use ferry_core::batch::{self, Batch, BatchHeader, DecodeLimits};
use ferry_core::record::OriginKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use embedded::Embedded;
pub use kafka::KafkaBackend;

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
    /// Where the stored records went: (topic, partition, offset of the first record stored
    /// there), for the Kafka listener's Produce answer; not part of the HTTP reply.
    #[serde(skip)]
    pub offsets: Vec<(String, u32, u64)>,
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

/// A boxed future, for the object-safe [`Backend`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where ingested records go: the embedded store or Kafka.
pub trait Backend: Send + Sync + 'static {
    /// The embedded store, which the topic, fetch and group endpoints read; `None` on Kafka.
    fn store(&self) -> Option<&Store> {
        None
    }

    /// What the collector stores into, for its start-up log.
    fn describe(&self) -> String;

    /// Steps 2 to 4 for a request's verified batches: route, admit, order, store; answers
    /// only once every record is durable.
    fn deliver<'a>(
        &'a self,
        ingest: &'a Arc<Ingest>,
        req: Delivery,
    ) -> BoxFuture<'a, Result<IngestSummary, IngestError>>;

    /// Makes everything acknowledged durable and stops (the store: fsync and close; Kafka:
    /// flush).
    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// A request after step 1, handed to its [`Backend`].
pub struct Delivery {
    /// The topic it was posted to.
    pub topic: String,
    /// Its verified batches: (as received, decoded).
    pub items: Vec<(Bytes, Batch)>,
    /// The origin and offset it must follow (`ferry-after`).
    pub ordered: Option<(OriginKey, u64)>,
    /// Its topic's pending slot, held until it is answered (none while it may wait for its
    /// predecessor, which may need the slot to arrive).
    pub pending: Option<PendingGuard>,
    /// Records in the request.
    pub records: u64,
    /// The partition the client chose for the topic it posted to (a Kafka producer): its
    /// records that stay in that topic go there, whatever the origin or key field says.
    pub partition: Option<u32>,
}

/// Everything the ingest path needs; shared by all requests.
pub struct Ingest {
    /// Where records are stored.
    pub backend: Box<dyn Backend>,
    /// Limits, topic settings, codecs.
    pub config: Arc<CollectorConfig>,
    /// The routing rules. A std mutex: routing is synchronous and the lock is never held
    /// across an await.
    router: Mutex<Router>,
    /// Spreads batches without an origin over partitions.
    round_robin: AtomicU64,
    /// Records admitted but not yet appended, per topic, so concurrent requests cannot together
    /// overrun `max_records`.
    reserved: Mutex<HashMap<String, u64>>,
    /// Requests in flight per topic (`max_pending_per_topic`).
    pending: Mutex<HashMap<String, u32>>,
    /// What has landed, for requests that must follow it (`ferry-after`).
    landed: order::Landed,
    /// Paces auto-creation of topics (`topic_creations_per_sec`). A std mutex, never held
    /// across an await.
    creations: Mutex<TokenBucket>,
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

impl Ingest {
    pub fn new(backend: Box<dyn Backend>, config: Arc<CollectorConfig>) -> Self {
        let router = Router::new(config.routes.clone());
        let creations = TokenBucket::new(config.limits.topic_creations_per_sec);
        Self {
            backend,
            config,
            router: Mutex::new(router),
            round_robin: AtomicU64::new(0),
            reserved: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            landed: order::Landed::default(),
            creations: Mutex::new(creations),
        }
    }

    /// The embedded store; `None` on the Kafka backend.
    pub fn store(&self) -> Option<&Store> {
        self.backend.store()
    }

    /// Step 1's rules for a body posted to `topic`, from the config.
    fn body_rules(&self, topic: &str) -> body::BodyRules {
        body::BodyRules {
            decode: DecodeLimits {
                max_raw_bytes: self.config.limits.max_raw_bytes.get(),
                max_records: 1 << 24,
            },
            max_line_bytes: self.config.limits.max_line_bytes.as_usize(),
            plain_codec: self.config.plain_codec,
            now_ms: ferry_core::now_ms(),
            // The embedded store stores a batch nobody looks into as received (or recompressed
            // whole); Kafka produces records.
            materialise: self.store().is_none() || self.needs_look(topic),
        }
    }

    /// Creates `topic` if it is missing and allowed; returns its partition count.
    pub fn ensure_topic(&self, topic: &str) -> Result<u32, IngestError> {
        let Some(store) = self.store() else {
            // Kafka creates topics itself (or refuses records for unknown ones): records are
            // produced without a partition, so the count is not needed here.
            ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
            return Ok(1);
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
        // Gunzip, CRC checks and decoding burn CPU: on the blocking pool, not the async
        // workers, unless the body is small and cheap to check (an agent's lz4 batch).
        let items = {
            let rules = self.body_rules(topic);
            if body::cheap_to_check(&rules, content_type, content_encoding, &body) {
                body::parse(&rules, content_type, content_encoding, body, producer)?
            } else {
                let (ct, ce) = (
                    content_type.map(str::to_owned),
                    content_encoding.map(str::to_owned),
                );
                run_blocking(move || {
                    body::parse(&rules, ct.as_deref(), ce.as_deref(), body, producer)
                })
                .await??
            }
        };
        let ordered = order::ordered(&items, after)?;
        let records: u64 = items
            .iter()
            .map(|(_, b)| u64::from(b.header.record_count))
            .sum();
        // A request that may wait for its predecessor does not hold the topic's pending slot
        // while it waits: the predecessor may need that slot to arrive.
        let pending = ordered.is_none().then_some(pending);
        let req = Delivery {
            topic: topic.to_owned(),
            items,
            ordered,
            pending,
            records,
            partition: None,
        };
        self.backend.deliver(self, req).await
    }

    /// Stores records that arrived in another shape than a ferry body (OTLP log records) to
    /// `topic`, through the same admission, routing and delivery as [`Ingest::ingest`]: they
    /// become batches without an origin, as a plain body's lines.
    pub async fn ingest_records(
        self: &Arc<Self>,
        topic: &str,
        records: Vec<ferry_core::record::Record>,
    ) -> Result<IngestSummary, IngestError> {
        ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
        let pending = self.enter(topic)?;
        let items = {
            let rules = self.body_rules(topic);
            run_blocking(move || body::record_batches(&rules, &records)).await??
        };
        let records: u64 = items.iter().map(|(_, b)| b.records.len() as u64).sum();
        let req = Delivery {
            topic: topic.to_owned(),
            items,
            ordered: None,
            pending: Some(pending),
            records,
            partition: None,
        };
        self.backend.deliver(self, req).await
    }

    /// Stores verified batches a Kafka client produced to `partition` of `topic`, through the
    /// same admission, routing and delivery as [`Ingest::ingest`]. `after`: an idempotent
    /// producer's batch must follow its sequence numbers up to there ([`Store::append_after`]).
    /// When no rule looks at `topic` ([`Ingest::needs_look`] is false) a batch may come with
    /// its header alone (`records` empty): that path reads only the header's record count and
    /// stores the bytes as they are.
    pub async fn ingest_to_partition(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        items: Vec<(Bytes, Batch)>,
        after: Option<(OriginKey, u64)>,
    ) -> Result<IngestSummary, IngestError> {
        ferry_core::topic::validate_name(topic).map_err(IngestError::BadRequest)?;
        let pending = self.enter(topic)?;
        let records: u64 = items
            .iter()
            .map(|(_, b)| u64::from(b.header.record_count))
            .sum();
        let pending = after.is_none().then_some(pending);
        let req = Delivery {
            topic: topic.to_owned(),
            items,
            ordered: after,
            pending,
            records,
            partition: Some(partition),
        };
        self.backend.deliver(self, req).await
    }

    /// Whether records of `topic` must be looked at one by one (routing rules or a key field).
    pub fn needs_look(&self, topic: &str) -> bool {
        self.router
            .lock()
            .map(|r| r.applies_to(topic))
            .unwrap_or(true)
            || self.key_field(topic).is_some()
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

    /// A topic's `max_records`, if it has one.
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
}

/// Opens the backend the config names: the embedded store (recovering it) or a Kafka producer.
pub fn open_backend(config: &CollectorConfig) -> anyhow::Result<Box<dyn Backend>> {
    use anyhow::Context;
    match (config.backend, &config.kafka) {
        (BackendKind::Kafka, Some(k)) => {
            let sink = ferry_kafka::KafkaSink::new(k).context("creating the Kafka producer")?;
            Ok(Box::new(KafkaBackend {
                sink: Arc::new(sink),
                config: k.clone(),
            }))
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
            Ok(Box::new(Embedded(store)))
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
