//! Shipping: deliver each batch until it is acknowledged, then advance the checkpoint.
//!
//! The [`Shipper`] receives compressed batches, in the order the reader produced them, from
//! the compression workers. Per file it keeps a queue and delivers up to
//! `max_in_flight_per_file` batches at once (over all files, up to `max_in_flight`). A file's
//! batches must be stored in offset order (the collector's dedup keeps the highest offset per
//! origin: a later batch stored first would make an earlier one look like a replay), so while a
//! batch's predecessor is still in flight it is sent with [`BatchMeta::after`]: the collector
//! stores it only behind that predecessor and otherwise answers "out of order", and the batch
//! is sent again once the predecessor is acknowledged or dropped. Outputs that cannot keep that
//! order get one batch per file at a time ([`Output::max_in_flight_per_file`]).
//!
//! A delivery retries with capped, jittered exponential backoff (or the server's
//! `Retry-After`) for as long as it takes, splits a batch the output finds too large, and drops
//! — counted, logged at error — only a batch the output refuses for good. A file's checkpoint
//! advances over a batch only once it and every batch before it are done with.

use crate::checkpoint::{Checkpointer, Checkpoints, FileCheckpoint, OriginV2};
use crate::output::retry::Backoff;
use crate::output::{Ack, BatchMeta, Output, OutputError};
use crate::tail::fingerprint::Fingerprint;
use crate::tail::{FileKey, FileState};
use crate::{AgentStats, Buffer};
use bytes::Bytes;
use ferry_core::batch::{BatchBuilder, DecodeLimits, decode};
use ferry_core::record::OriginKey;
use ferry_core::shutdown::Shutdown;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// What reaches the shipper, in the reader's order.
#[derive(Debug)]
pub enum Shipment {
    Batch {
        input: usize,
        state: FileState,
        first_offset: u64,
        end_offset: u64,
        records: u32,
        /// The encoded batch, or why it could not be encoded.
        encoded: Result<Bytes, String>,
    },
    Position {
        state: FileState,
        offset: u64,
    },
    Released {
        key: FileKey,
        /// See [`FileState::lane`].
        lane: FileKey,
    },
    /// See [`crate::tail::Emitted::CopyResolved`].
    CopyResolved {
        key: FileKey,
        lane: FileKey,
        origin: ferry_core::record::FileId,
        lost: u64,
        input: usize,
        path: Arc<str>,
    },
}

/// How deliveries retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// How one batch ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub acked_records: u64,
    /// Records dropped, by reason (`rejected`, `too_large`).
    pub dropped: Vec<(&'static str, u64)>,
    pub retries: u64,
    pub deduplicated: u64,
}

/// Whether the batch before this one (of the same file) is still in flight: `false` once it
/// is done with (acknowledged or dropped) or its delivery was cancelled.
pub type Predecessor = watch::Receiver<bool>;

fn pending(prev: Option<&Predecessor>) -> bool {
    prev.is_some_and(|rx| !*rx.borrow() && rx.has_changed().is_ok())
}

/// What a delivery knows of its file's other deliveries.
#[derive(Debug, Default)]
pub struct Lane {
    /// The file's previous batch, while it may still be in flight.
    pub prev: Option<Predecessor>,
    /// Set while the file's deliveries meet push-back (retryable errors), cleared by a batch
    /// acknowledged at its first attempt: while set, a batch waits for its predecessor instead
    /// of being sent alongside it, so a collector that refuses is not asked for more at once.
    pub congested: Arc<std::sync::atomic::AtomicBool>,
}

/// Delivers one encoded batch: retries until acknowledged, splits on "too large", drops on a
/// refusal. Never gives up on a retryable error; the shipper's shutdown deadline cancels it.
/// While the file's previous batch (`lane.prev`) is in flight, each attempt asks the output to
/// store this batch only behind it ([`BatchMeta::after`]); while the file meets push-back
/// (`lane.congested`), the batch waits for its predecessor instead.
#[allow(clippy::too_many_arguments)]
pub async fn deliver<O: Output>(
    output: &O,
    topic: &str,
    batch: Bytes,
    meta: BatchMeta,
    lane: Lane,
    policy: RetryPolicy,
    gzip_level: u32,
    stats: &AgentStats,
) -> Delivery {
    let Lane {
        mut prev,
        congested,
    } = lane;
    let mut result = Delivery::default();
    // Halves of split batches, last first, so they go out in offset order.
    let mut stack = vec![(batch, meta)];
    while let Some((b, mut m)) = stack.pop() {
        let mut backoff = Backoff::new(policy.base, policy.max);
        let mut refused = false;
        loop {
            if congested.load(Ordering::Relaxed)
                && let Some(rx) = prev.as_mut()
                && pending(Some(rx))
            {
                let _ = rx.wait_for(|done| *done).await;
            }
            m.after = pending(prev.as_ref()).then_some(m.first_offset);
            match output.send(topic, b.clone(), &m).await {
                Ok(Ack { deduplicated, .. }) => {
                    result.acked_records += u64::from(m.records);
                    result.deduplicated += deduplicated.unwrap_or(0);
                    if !refused {
                        congested.store(false, Ordering::Relaxed);
                    }
                    break;
                }
                Err(OutputError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    refused = true;
                    congested.store(true, Ordering::Relaxed);
                    result.retries += 1;
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("ferry_agent_retries_total").increment(1);
                    let delay = retry_after
                        .unwrap_or_else(|| backoff.next_delay())
                        .min(policy.max);
                    if backoff.attempts() <= 1 || result.retries % 10 == 0 {
                        tracing::warn!(topic, %reason, ?delay, attempt = result.retries, "delivery failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(OutputError::TooLarge) => match split_batch(&b, gzip_level) {
                    Ok(((a, ma), (c, mc))) => {
                        tracing::info!(
                            topic,
                            records = m.records,
                            "batch too large for the output; splitting it"
                        );
                        stack.push((c, mc));
                        stack.push((a, ma));
                        break;
                    }
                    Err(why) => {
                        tracing::error!(topic, records = m.records, first_offset = m.first_offset, %why, "batch too large and cannot be split; dropping it");
                        result.dropped.push(("too_large", u64::from(m.records)));
                        break;
                    }
                },
                Err(OutputError::Rejected { reason }) => {
                    tracing::error!(topic, records = m.records, first_offset = m.first_offset, end_offset = m.end_offset, %reason, "output rejected a batch; dropping it");
                    result.dropped.push(("rejected", u64::from(m.records)));
                    break;
                }
                Err(OutputError::OutOfOrder { reason }) => {
                    refused = true;
                    congested.store(true, Ordering::Relaxed);
                    stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("ferry_agent_out_of_order_total").increment(1);
                    match prev.as_mut() {
                        // Wait for the predecessor, then send again without `after`.
                        Some(rx) if pending(Some(rx)) => {
                            let _ = rx.wait_for(|done| *done).await;
                        }
                        // Only a batch sent with `after` is answered so: a stray one is
                        // retried like a retryable error.
                        _ => {
                            result.retries += 1;
                            tracing::warn!(topic, %reason, "out of order without a predecessor in flight; retrying");
                            tokio::time::sleep(backoff.next_delay().min(policy.max)).await;
                        }
                    }
                }
            }
        }
    }
    result
}

/// Delivers batches of several files in one request ([`Output::send_many`]) when there are
/// several; if that request fails for any reason, or there is one, each is delivered on its
/// own ([`deliver`]: retries, splitting, drops), one after another. A request that failed
/// after the collector stored some of its batches is harmless to send again: the collector
/// deduplicates each batch by its origin, as for any resend.
pub async fn deliver_together<O: Output>(
    output: &O,
    topic: &str,
    members: Vec<Member>,
    policy: RetryPolicy,
    gzip_level: u32,
    stats: &AgentStats,
) -> Vec<Done> {
    let done = |m: &Member, delivery: Delivery| Done {
        key: m.key,
        seq: m.seq,
        input: m.input,
        span: m.meta.end_offset - m.meta.first_offset,
        delivery,
    };
    if members.len() > 1 {
        let batches: Vec<(Bytes, BatchMeta)> =
            members.iter().map(|m| (m.bytes.clone(), m.meta)).collect();
        match output.send_many(topic, &batches).await {
            Ok(Ack { deduplicated, .. }) => {
                metrics::counter!("ferry_agent_coalesced_batches_total")
                    .increment(members.len() as u64);
                // The reply counts replays for the whole request: booked on its first batch.
                let mut dedup = deduplicated.unwrap_or(0);
                return members
                    .iter()
                    .map(|m| {
                        let _ = m.resolved.send(true);
                        done(
                            m,
                            Delivery {
                                acked_records: u64::from(m.meta.records),
                                deduplicated: std::mem::take(&mut dedup),
                                ..Delivery::default()
                            },
                        )
                    })
                    .collect();
            }
            Err(e) => {
                metrics::counter!("ferry_agent_coalesced_requests_failed_total").increment(1);
                tracing::debug!(topic, batches = members.len(), error = %e, "request of several batches failed; sending each on its own");
                if let OutputError::Retryable { retry_after, .. } = e {
                    tokio::time::sleep(retry_after.unwrap_or(policy.base).min(policy.max)).await;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let delivery = deliver(
            output,
            topic,
            m.bytes.clone(),
            m.meta,
            Lane {
                prev: m.lane.prev.clone(),
                congested: m.lane.congested.clone(),
            },
            policy,
            gzip_level,
            stats,
        )
        .await;
        let _ = m.resolved.send(true);
        out.push(done(&m, delivery));
    }
    out
}

/// One half of a split batch: its encoding and what it covers.
pub type SplitHalf = (Bytes, BatchMeta);

/// Splits an encoded batch into two batches of about half the records each, with the same
/// origin, codec and creation time; the first covers `[first, mid)`, the second `[mid, end)`.
pub fn split_batch(encoded: &Bytes, gzip_level: u32) -> Result<(SplitHalf, SplitHalf), String> {
    let limits = DecodeLimits {
        max_raw_bytes: u64::from(u32::MAX),
        max_records: u64::from(u32::MAX),
    };
    let batch = decode(encoded, &limits).map_err(|e| e.to_string())?;
    if batch.records.len() < 2 {
        return Err("a single record cannot be split".to_owned());
    }
    let origin = batch.header.origin.as_ref();
    let half = batch.records.len() / 2;
    let mut parts = Vec::with_capacity(2);
    let mut first = origin.map_or(0, |o| o.first_offset);
    for recs in [&batch.records[..half], &batch.records[half..]] {
        let mut b = match origin {
            Some(o) => BatchBuilder::with_origin(
                OriginKey {
                    agent_id: o.key.agent_id.clone(),
                    file: o.key.file,
                },
                first,
            ),
            None => BatchBuilder::new(),
        };
        for r in recs {
            b.push(&r.line, r.span, r.event_time_ms, r.truncated, &r.fields);
        }
        let end = b.end_offset().unwrap_or(first);
        let bytes = b
            .finish(batch.header.codec, gzip_level, batch.header.created_ms)
            .map_err(|e| e.to_string())?;
        parts.push((
            Bytes::from(bytes),
            BatchMeta {
                records: recs.len() as u32,
                first_offset: first,
                end_offset: end,
                after: None,
            },
        ));
        first = end;
    }
    let second = parts.pop().ok_or("split produced no halves")?;
    let first = parts.pop().ok_or("split produced one half")?;
    Ok((first, second))
}

/// Everything the shipper needs besides its channels.
pub struct ShipperParts<O> {
    pub output: Arc<O>,
    pub topics: Vec<Arc<str>>,
    pub input_names: Vec<String>,
    pub checkpointer: Checkpointer,
    pub checkpoints: Checkpoints,
    pub checkpoint_interval: Duration,
    pub shutdown_timeout: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_per_file: usize,
    pub policy: RetryPolicy,
    pub gzip_level: u32,
    /// Encoded bytes of batches gathered into one request when the output takes several at
    /// once ([`Output::coalesces`]); 0 sends one batch per request.
    pub coalesce_bytes: usize,
    pub buffer: Arc<Buffer>,
    pub stats: Arc<AgentStats>,
    /// Tells the reader to stop (shutdown) ...
    pub stop_reader: Box<dyn Fn() + Send>,
    /// ... or that acknowledgements freed buffer space.
    pub wake_reader: Box<dyn Fn() + Send>,
}

pub struct Done {
    key: FileKey,
    /// The batch's place among its file's dispatched batches.
    seq: u64,
    input: usize,
    span: u64,
    delivery: Delivery,
}

/// A batch gathered into the next request of several ([`Output::send_many`]).
pub struct Member {
    key: FileKey,
    seq: u64,
    input: usize,
    bytes: Bytes,
    meta: BatchMeta,
    lane: Lane,
    resolved: watch::Sender<bool>,
}

/// Batches of one topic gathered into one request, not started yet: it holds one in-flight
/// slot. Only a batch of a file with nothing else in flight joins (no predecessor, so no
/// `ferry-after`, and no push-back met), so one file's batches are never in the same request
/// and the order the collector keeps per file is the one single requests keep.
struct Forming {
    topic: Arc<str>,
    bytes: usize,
    members: Vec<Member>,
}

/// A dispatched batch of a file, until it and every batch before it are done with.
struct Flight {
    seq: u64,
    state: FileState,
    end_offset: u64,
    done: bool,
}

/// A file's batches in flight, in dispatch (= offset) order.
#[derive(Default)]
struct FileFlights {
    flights: VecDeque<Flight>,
    next_seq: u64,
    /// Per origin the batches ship under ((dev, inode, generation) of the identity the
    /// collector deduplicates on): resolves when the most recently dispatched batch of it is
    /// done with — the next one's predecessor. Per origin, not per lane: a lane carries a
    /// copytruncate copy (under the original's old origin) and the original's next generation
    /// together, and a batch of one must not count as the predecessor of the other (the
    /// second batch of a generation was stored before its first, which the collector then
    /// dropped as a replay: found by the rotation model test).
    last: HashMap<(u64, u64, u32), Predecessor>,
    /// See [`Lane::congested`]; kept while the file has batches in flight.
    congested: Arc<std::sync::atomic::AtomicBool>,
}

impl FileFlights {
    fn in_flight(&self) -> usize {
        self.flights.iter().filter(|f| !f.done).count()
    }
}

/// The async side of the agent: receives, delivers, acknowledges, checkpoints.
pub struct Shipper<O> {
    parts: ShipperParts<O>,
    /// The workers' groups of shipments ([`crate::compress`]).
    rx: Vec<mpsc::Receiver<Vec<Shipment>>>,
    /// Which worker's channel holds the next shipment (they are dealt round robin).
    next_rx: usize,
    queues: HashMap<FileKey, VecDeque<Shipment>>,
    /// Files with batches in flight (or done but behind one still in flight).
    flights: HashMap<FileKey, FileFlights>,
    /// Batches of one file in flight at most: the config's, capped by what the output keeps
    /// in order.
    per_file: usize,
    /// Files with a batch waiting for a free in-flight slot.
    waiting: VecDeque<FileKey>,
    /// Requests in flight, each of one batch or several ([`Forming`]).
    in_flight: JoinSet<Vec<Done>>,
    /// The request being gathered (see [`Forming`]); started at the end of each turn of the
    /// shipper's loop, or once it holds `coalesce_bytes`.
    forming: Option<Forming>,
    dirty: bool,
    last_checkpoint: Instant,
    /// Bytes lost to truncations whose copy never appeared, (input, path, bytes): counted once
    /// the checkpoint that no longer waits for the copy is written.
    uncounted: Vec<(usize, Arc<str>, u64)>,
    /// The checkpoint on disk (the last one written, or the one loaded at start).
    written: Arc<Checkpoints>,
    /// Files whose next batch waits for the checkpoint to hold its identity (see
    /// [`Self::identity_unwritten`]).
    identity_wait: VecDeque<FileKey>,
    /// When the write they wait for is due (a few milliseconds after the first of them, so
    /// that the files found together share one write).
    identity_write_at: Option<tokio::time::Instant>,
    /// The last checkpoint write failed: batches no longer wait for one.
    write_failed: bool,
}

/// What a checkpoint entry says a file's content is: what a restart tells it by.
type Identity = (u32, Option<Fingerprint>, Option<OriginV2>);

fn identity_of(cp: &FileCheckpoint) -> Identity {
    (cp.generation, cp.fingerprint, cp.origin)
}

fn identity_of_state(state: &FileState) -> Identity {
    (
        state.generation,
        state.fingerprint,
        state.origin.map(OriginV2::from),
    )
}

/// How long batches of new contents wait for others to share their identity's write.
const IDENTITY_GATHER: Duration = Duration::from_millis(5);

impl<O: Output> Shipper<O> {
    pub fn new(parts: ShipperParts<O>, rx: Vec<mpsc::Receiver<Vec<Shipment>>>) -> Self {
        let per_file = parts
            .max_in_flight_per_file
            .min(parts.output.max_in_flight_per_file())
            .max(1);
        // What was loaded at start is on disk.
        let written = Arc::new(parts.checkpoints.clone());
        Self {
            parts,
            rx,
            next_rx: 0,
            queues: HashMap::new(),
            flights: HashMap::new(),
            per_file,
            waiting: VecDeque::new(),
            in_flight: JoinSet::new(),
            forming: None,
            dirty: true,
            last_checkpoint: Instant::now(),
            uncounted: Vec::new(),
            written,
            identity_wait: VecDeque::new(),
            identity_write_at: None,
            write_failed: false,
        }
    }

    /// Runs until the reader has stopped and everything it produced was delivered, or until the
    /// shutdown deadline. Writes the checkpoint last.
    pub async fn run(mut self, shutdown: Shutdown) -> Checkpoints {
        let mut tick = tokio::time::interval(self.parts.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut input_open = true;
        loop {
            if !input_open && self.in_flight.is_empty() && self.queues.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(done) => {
                            for d in done {
                                self.complete(d);
                            }
                            self.fill_free_slots();
                        }
                        Err(e) => tracing::error!(error = %e, "delivery task failed"),
                    }
                }
                group = self.rx[self.next_rx].recv(), if input_open => match group {
                    Some(group) => {
                        self.next_rx = (self.next_rx + 1) % self.rx.len();
                        for s in group {
                            self.accept(s);
                        }
                    }
                    None => input_open = false,
                },
                _ = tick.tick() => self.checkpoint().await,
                _ = sleep_until(self.identity_write_at), if self.identity_write_at.is_some() => {
                    self.identity_write_at = None;
                    self.dirty = true;
                    self.checkpoint().await;
                    let waiting: Vec<FileKey> = self.identity_wait.drain(..).collect();
                    for key in waiting {
                        self.pump(key);
                    }
                }
                _ = shutdown.wait(), if deadline.is_none() => {
                    tracing::info!("agent draining: reading stopped, waiting for acknowledgements");
                    (self.parts.stop_reader)();
                    deadline = Some(tokio::time::Instant::now() + self.parts.shutdown_timeout);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let left: usize = self.queues.values().map(VecDeque::len).sum();
                    tracing::warn!(in_flight = self.in_flight.len(), queued = left, "shutdown deadline passed; unacknowledged lines will be read again at the next start");
                    self.in_flight.abort_all();
                    break;
                }
            }
            self.start_forming();
        }
        self.dirty = true;
        self.checkpoint().await;
        self.parts.checkpoints
    }

    fn accept(&mut self, s: Shipment) {
        let key = match &s {
            Shipment::Batch { state, .. } | Shipment::Position { state, .. } => state.lane(),
            Shipment::Released { lane, .. } | Shipment::CopyResolved { lane, .. } => *lane,
        };
        self.queues.entry(key).or_default().push_back(s);
        self.pump(key);
    }

    fn file_in_flight(&self, key: &FileKey) -> usize {
        self.flights.get(key).map_or(0, FileFlights::in_flight)
    }

    /// Applies the file's queued positions once nothing of it is in flight, and starts its next
    /// deliveries while there are free slots.
    fn pump(&mut self, key: FileKey) {
        while let Some(front) = self.queues.get(&key).and_then(VecDeque::front) {
            match front {
                Shipment::Position { .. }
                | Shipment::Released { .. }
                | Shipment::CopyResolved { .. } => {
                    // A position moves the checkpoint past every batch before it.
                    if self.flights.contains_key(&key) {
                        return;
                    }
                    if let Some(s) = self.queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        if let Some(lost) = apply_control(&mut self.parts.checkpoints, s) {
                            self.uncounted.push(lost);
                        }
                        self.dirty = true;
                    }
                }
                Shipment::Batch {
                    state,
                    first_offset,
                    input,
                    encoded,
                    ..
                } => {
                    if self.file_in_flight(&key) >= self.per_file {
                        return;
                    }
                    let joins = self.joins_forming(key, *input, encoded);
                    if !self.write_failed
                        && self.written.files.get(&state.key).map(identity_of)
                            != Some(identity_of_state(state))
                        && let (state, first_offset) = (state.clone(), *first_offset)
                        && self.identity_unwritten(&state, first_offset)
                    {
                        if !self.identity_wait.contains(&key) {
                            self.identity_wait.push_back(key);
                        }
                        self.identity_write_at
                            .get_or_insert_with(|| tokio::time::Instant::now() + IDENTITY_GATHER);
                        return;
                    }
                    if !joins && self.slots_used() >= self.parts.max_in_flight {
                        if !self.waiting.contains(&key) {
                            self.waiting.push_back(key);
                        }
                        return;
                    }
                    if let Some(batch) = self.queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        self.dispatch(key, batch);
                    }
                }
            }
        }
        self.queues.remove(&key);
    }

    /// Whether a batch of `state` from `first_offset` must wait for a checkpoint write: the
    /// checkpoint on disk does not say what content the file holds (a new file or generation
    /// whose fingerprint was fixed since, a copy read under its original's origin). Shipped
    /// first, and the agent killed before the next write, its lines were stored while a restart
    /// could not tell that content from the next (copytruncate: the file truncated meanwhile
    /// was resumed as the same generation, and its copy read again as a file of its own —
    /// stored twice; the copytruncate fuzz with kills, seed 53). Costs one write (shared by
    /// the files found together) per new content, none per batch.
    fn identity_unwritten(&mut self, state: &FileState, first_offset: u64) -> bool {
        let wanted = identity_of_state(state);
        let cps = &mut self.parts.checkpoints;
        match cps.files.get(&state.key) {
            Some(cp) if identity_of(cp) == wanted => {}
            // Recorded before its first line was whole (at 0): its identity is fixed now.
            Some(cp)
                if cp.generation == state.generation
                    && cp.origin == wanted.2
                    && cp.fingerprint.is_none()
                    && cp.offset == first_offset =>
            {
                cps.advance(state, first_offset);
                self.dirty = true;
            }
            None if first_offset == 0 && state.origin.is_none() => {
                cps.advance(state, 0);
                self.dirty = true;
            }
            // Something else (a position not applied yet, batches of it in flight): not
            // this batch's to record.
            _ => return false,
        }
        true
    }

    /// Starts delivering `batch` (a [`Shipment::Batch`]) of file `key`.
    fn dispatch(&mut self, key: FileKey, batch: Shipment) {
        let Shipment::Batch {
            input,
            state,
            first_offset,
            end_offset,
            records,
            encoded,
        } = batch
        else {
            return;
        };
        let coalesce = self.may_coalesce(key, &encoded);
        let file = self.flights.entry(key).or_default();
        let seq = file.next_seq;
        file.next_seq += 1;
        // Only a predecessor still in flight matters; one done with is stored (or dropped).
        let origin = state
            .origin
            .map_or((state.key.0, state.key.1, state.generation), |o| {
                (o.dev, o.inode, o.generation)
            });
        let lane = Lane {
            prev: file.last.remove(&origin).filter(|rx| pending(Some(rx))),
            congested: file.congested.clone(),
        };
        let (resolved, rx) = watch::channel(false);
        file.last.insert(origin, rx);
        file.flights.push_back(Flight {
            seq,
            state,
            end_offset,
            done: false,
        });
        let topic = self.parts.topics[input].clone();
        let meta = BatchMeta {
            records,
            first_offset,
            end_offset,
            after: None,
        };
        if coalesce && let Ok(bytes) = &encoded {
            if self.forming.as_ref().is_some_and(|f| {
                f.topic != topic || f.bytes + bytes.len() > self.parts.coalesce_bytes
            }) {
                self.start_forming();
            }
            let f = self.forming.get_or_insert_with(|| Forming {
                topic: topic.clone(),
                bytes: 0,
                members: Vec::new(),
            });
            f.bytes += bytes.len();
            f.members.push(Member {
                key,
                seq,
                input,
                bytes: bytes.clone(),
                meta,
                lane,
                resolved,
            });
            if f.bytes >= self.parts.coalesce_bytes {
                self.start_forming();
            }
            return;
        }
        let (output, policy, level, stats) = self.delivery_parts();
        self.in_flight.spawn(async move {
            let delivery = match encoded {
                Ok(bytes) => {
                    deliver(&*output, &topic, bytes, meta, lane, policy, level, &stats).await
                }
                Err(why) => {
                    tracing::error!(%why, "batch could not be encoded; dropping it");
                    Delivery {
                        dropped: vec![("encode", u64::from(records))],
                        ..Delivery::default()
                    }
                }
            };
            let _ = resolved.send(true);
            vec![Done {
                key,
                seq,
                input,
                span: end_offset - first_offset,
                delivery,
            }]
        });
    }

    /// What a delivery task needs of the shipper's parts.
    fn delivery_parts(&self) -> (Arc<O>, RetryPolicy, u32, Arc<AgentStats>) {
        (
            self.parts.output.clone(),
            self.parts.policy,
            self.parts.gzip_level,
            self.parts.stats.clone(),
        )
    }

    /// Requests in flight, the one being gathered included.
    fn slots_used(&self) -> usize {
        self.in_flight.len() + usize::from(self.forming.is_some())
    }

    /// Whether a batch of file `key` may go in a request with others: the output takes
    /// several, it was encoded, and nothing else of its file is in flight.
    fn may_coalesce(&self, key: FileKey, encoded: &Result<Bytes, String>) -> bool {
        self.parts.coalesce_bytes > 0 && encoded.is_ok() && !self.flights.contains_key(&key)
    }

    /// Whether a batch of file `key` would join the request being gathered (no slot needed).
    fn joins_forming(&self, key: FileKey, input: usize, encoded: &Result<Bytes, String>) -> bool {
        let Some(f) = &self.forming else {
            return false;
        };
        self.may_coalesce(key, encoded)
            && f.topic == self.parts.topics[input]
            && encoded
                .as_ref()
                .is_ok_and(|b| f.bytes + b.len() <= self.parts.coalesce_bytes)
    }

    /// Starts the request being gathered.
    fn start_forming(&mut self) {
        let Some(f) = self.forming.take() else {
            return;
        };
        let (output, policy, level, stats) = self.delivery_parts();
        self.in_flight.spawn(async move {
            deliver_together(&*output, &f.topic, f.members, policy, level, &stats).await
        });
    }

    /// Starts what waits for a slot while there are free ones (or room in the request being
    /// gathered). Each waiting file is tried once: one that cannot go now stays waiting.
    fn fill_free_slots(&mut self) {
        let mut tries = self.waiting.len();
        while tries > 0
            && (self.slots_used() < self.parts.max_in_flight
                || self
                    .forming
                    .as_ref()
                    .is_some_and(|f| f.bytes < self.parts.coalesce_bytes))
        {
            tries -= 1;
            let Some(k) = self.waiting.pop_front() else {
                break;
            };
            self.pump(k);
        }
    }

    fn complete(&mut self, done: Done) {
        let Done {
            key,
            seq,
            input,
            span,
            delivery,
        } = done;
        let name = self.parts.input_names[input].as_str();
        metrics::counter!("ferry_agent_lines_shipped_total", "input" => name.to_owned())
            .increment(delivery.acked_records);
        metrics::counter!("ferry_agent_bytes_shipped_total", "input" => name.to_owned())
            .increment(span);
        if delivery.deduplicated > 0 {
            metrics::counter!("ferry_agent_deduplicated_records_total", "input" => name.to_owned())
                .increment(delivery.deduplicated);
        }
        let mut dropped_total = 0;
        let stats = &self.parts.stats;
        for (reason, n) in &delivery.dropped {
            metrics::counter!("ferry_agent_dropped_records_total", "reason" => *reason, "input" => name.to_owned())
                .increment(*n);
            dropped_total += n;
            if let Ok(mut drops) = stats.drops.lock() {
                *drops.entry(*reason).or_default() += n;
            }
        }
        if delivery.acked_records > 0 {
            stats
                .last_ack_ms
                .store(ferry_core::now_ms().max(0) as u64, Ordering::Relaxed);
        }
        stats
            .records_acked
            .fetch_add(delivery.acked_records, Ordering::Relaxed);
        stats
            .records_dropped
            .fetch_add(dropped_total, Ordering::Relaxed);
        stats.bytes_acked.fetch_add(span, Ordering::Relaxed);
        stats.batches_acked.fetch_add(1, Ordering::Relaxed);
        // Acknowledged or dropped-and-counted: either way this range is done with, and the
        // checkpoint moves over every done batch that has no undone one before it.
        if let Some(file) = self.flights.get_mut(&key) {
            if let Some(f) = file.flights.iter_mut().find(|f| f.seq == seq) {
                f.done = true;
            }
            while file.flights.front().is_some_and(|f| f.done) {
                let Some(f) = file.flights.pop_front() else {
                    break;
                };
                let prev = self.parts.checkpoints.files.get(&f.state.key);
                let cp = FileCheckpoint::of(&f.state, f.end_offset).keeping_tail_of(prev);
                if let Ok(mut files) = self.parts.stats.files.lock() {
                    let row = files.entry(f.state.path.clone()).or_default();
                    row.input = input;
                    row.acked = f.end_offset;
                }
                self.parts.checkpoints.files.insert(f.state.key, cp);
                self.dirty = true;
            }
            if file.flights.is_empty() {
                self.flights.remove(&key);
            }
        }
        self.parts.buffer.release(span);
        (self.parts.wake_reader)();
        self.pump(key);
    }

    async fn checkpoint(&mut self) {
        let age = self.last_checkpoint.elapsed().as_secs_f64();
        metrics::gauge!("ferry_agent_checkpoint_age_seconds").set(age);
        if !self.dirty {
            return;
        }
        let cps = Arc::new(self.parts.checkpoints.clone());
        let writer = self.parts.checkpointer.clone();
        let stored = cps.clone();
        match tokio::task::spawn_blocking(move || writer.store(&stored)).await {
            Ok(Ok(())) => {
                self.dirty = false;
                self.written = cps;
                self.write_failed = false;
                for (input, path, bytes) in self.uncounted.drain(..) {
                    let name = self.parts.input_names.get(input).map_or("", String::as_str);
                    crate::tail::count_unread(name, &path, bytes, true);
                    self.parts
                        .stats
                        .unread_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                }
                self.last_checkpoint = Instant::now();
                self.parts
                    .stats
                    .checkpoint_writes
                    .fetch_add(1, Ordering::Relaxed);
                metrics::gauge!("ferry_agent_checkpoint_age_seconds").set(0.0);
            }
            Ok(Err(e)) => {
                self.write_failed = true;
                tracing::error!(error = %e, "cannot write checkpoint; will retry");
            }
            Err(e) => {
                self.write_failed = true;
                tracing::error!(error = %e, "checkpoint task failed");
            }
        }
    }
}

/// Applies a checkpoint fact; returns bytes to count as unread once it is written.
fn apply_control(cps: &mut Checkpoints, s: Shipment) -> Option<(usize, Arc<str>, u64)> {
    match s {
        Shipment::Position { state, offset } => cps.advance(&state, offset),
        Shipment::Released { key, .. } => cps.release(key),
        Shipment::CopyResolved {
            key,
            origin,
            lost,
            input,
            path,
            ..
        } => {
            cps.copy_resolved(key, origin, lost);
            return (lost > 0).then_some((input, path, lost));
        }
        Shipment::Batch { .. } => {}
    }
    None
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferry_core::batch::Codec;
    use ferry_core::record::FileId;
    use std::sync::Mutex;

    fn encoded(n: u64, codec: Codec) -> (Bytes, BatchMeta) {
        let key = OriginKey {
            agent_id: "a".into(),
            file: FileId {
                dev: 1,
                inode: 2,
                fingerprint: 3,
                generation: 0,
            },
        };
        let mut b = BatchBuilder::with_origin(key, 1000);
        for i in 0..n {
            let line = format!("line {i}");
            b.push_line(line.as_bytes(), line.len() as u64 + 1);
        }
        let end = b.end_offset().unwrap();
        (
            Bytes::from(b.finish(codec, 1, 42).unwrap()),
            BatchMeta {
                records: n as u32,
                first_offset: 1000,
                end_offset: end,
                after: None,
            },
        )
    }

    #[test]
    fn split_keeps_origin_ranges_contiguous() {
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4] {
            let (b, m) = encoded(5, codec);
            let ((x, mx), (y, my)) = split_batch(&b, 1).unwrap();
            assert_eq!((mx.first_offset, mx.records), (1000, 2));
            assert_eq!(
                (mx.end_offset, my.first_offset, my.end_offset),
                (my.first_offset, mx.end_offset, m.end_offset)
            );
            for (part, meta) in [(x, mx), (y, my)] {
                let d = decode(&part, &DecodeLimits::default()).unwrap();
                let o = d.header.origin.unwrap();
                assert_eq!(
                    (o.first_offset, o.end_offset),
                    (meta.first_offset, meta.end_offset)
                );
                assert_eq!(d.header.codec, codec);
                assert_eq!(d.header.created_ms, 42);
            }
        }
        assert!(split_batch(&encoded(1, Codec::None).0, 1).is_err());
    }

    /// An output that answers from a script, recording what it was sent: the real shipper
    /// logic (retry, split, drop) under test, with the replies a collector can give.
    struct Scripted {
        replies: Mutex<VecDeque<Result<Ack, OutputError>>>,
        sent: Mutex<Vec<BatchMeta>>,
    }

    impl Output for Scripted {
        async fn send(&self, _t: &str, _b: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
            self.sent.lock().unwrap().push(*meta);
            self.replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(Ack::default()))
        }
    }

    fn scripted(replies: Vec<Result<Ack, OutputError>>) -> Scripted {
        Scripted {
            replies: Mutex::new(replies.into()),
            sent: Mutex::new(Vec::new()),
        }
    }

    /// The collector's way: several batches in one request, answered from its own script.
    struct Together {
        many: Mutex<VecDeque<Result<Ack, OutputError>>>,
        single: Scripted,
        requests: Mutex<Vec<usize>>,
    }

    impl Output for Together {
        async fn send(&self, t: &str, b: Bytes, meta: &BatchMeta) -> Result<Ack, OutputError> {
            self.requests.lock().unwrap().push(1);
            self.single.send(t, b, meta).await
        }

        fn coalesces(&self) -> bool {
            true
        }

        async fn send_many(
            &self,
            _t: &str,
            batches: &[(Bytes, BatchMeta)],
        ) -> Result<Ack, OutputError> {
            self.requests.lock().unwrap().push(batches.len());
            self.many
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(Ack::default()))
        }
    }

    fn members(n: usize) -> (Vec<Member>, Vec<watch::Receiver<bool>>) {
        let mut rxs = Vec::new();
        let members = (0..n)
            .map(|i| {
                let (b, meta) = encoded(3, Codec::None);
                let (resolved, rx) = watch::channel(false);
                rxs.push(rx);
                Member {
                    key: (1, i as u64),
                    seq: 0,
                    input: 0,
                    bytes: b,
                    meta,
                    lane: Lane::default(),
                    resolved,
                }
            })
            .collect();
        (members, rxs)
    }

    /// Three files' batches through [`deliver_together`]: how each ended, and their watches.
    async fn send_three(out: &Together) -> (Vec<Done>, Vec<watch::Receiver<bool>>) {
        let (m, rxs) = members(3);
        let policy = RetryPolicy::default();
        let done = deliver_together(out, "t", m, policy, 1, &AgentStats::default()).await;
        (done, rxs)
    }

    #[tokio::test(start_paused = true)]
    async fn batches_sent_together_are_acknowledged_together() {
        let out = Together {
            many: Mutex::new(
                vec![Ok(Ack {
                    stored: Some(7),
                    deduplicated: Some(2),
                })]
                .into(),
            ),
            single: scripted(vec![]),
            requests: Mutex::new(Vec::new()),
        };
        let (done, rxs) = send_three(&out).await;
        assert_eq!(*out.requests.lock().unwrap(), [3]);
        let got: Vec<_> = done
            .iter()
            .map(|d| (d.key, d.delivery.acked_records, d.delivery.deduplicated))
            .collect();
        assert_eq!(got, [((1, 0), 3, 2), ((1, 1), 3, 0), ((1, 2), 3, 0)]);
        assert!(rxs.iter().all(|rx| *rx.borrow()), "every batch resolved");
    }

    /// A request of several refused (one bad batch spoils the body) or failed: each batch is
    /// then delivered on its own, so only the bad one is dropped and the rest are retried.
    #[tokio::test(start_paused = true)]
    async fn a_failed_request_of_several_is_sent_again_batch_by_batch() {
        for first in [
            OutputError::Rejected {
                reason: "400 bad batch".into(),
            },
            OutputError::Retryable {
                reason: "connection reset".into(),
                retry_after: None,
            },
        ] {
            let out = Together {
                many: Mutex::new(vec![Err(first.clone())].into()),
                single: scripted(vec![
                    Ok(Ack::default()),
                    Err(OutputError::Rejected {
                        reason: "400 bad batch".into(),
                    }),
                    Err(OutputError::Retryable {
                        reason: "503".into(),
                        retry_after: None,
                    }),
                ]),
                requests: Mutex::new(Vec::new()),
            };
            let (done, rxs) = send_three(&out).await;
            // One request of three, then the three alone (the third retried once).
            assert_eq!(*out.requests.lock().unwrap(), [3, 1, 1, 1, 1], "{first}");
            let got: Vec<_> = done
                .iter()
                .map(|d| (d.key, d.delivery.acked_records, d.delivery.dropped.clone()))
                .collect();
            assert_eq!(
                got,
                [
                    ((1, 0), 3, vec![]),
                    ((1, 1), 0, vec![("rejected", 3)]),
                    ((1, 2), 3, vec![])
                ]
            );
            assert!(rxs.iter().all(|rx| *rx.borrow()), "every batch resolved");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_retry_after_then_acks() {
        let out = scripted(vec![
            Err(OutputError::Retryable {
                reason: "503".into(),
                retry_after: Some(Duration::from_secs(2)),
            }),
            Err(OutputError::Retryable {
                reason: "conn".into(),
                retry_after: None,
            }),
        ]);
        let (b, m) = encoded(3, Codec::None);
        let t0 = tokio::time::Instant::now();
        let d = deliver(
            &out,
            "t",
            b,
            m,
            Lane::default(),
            RetryPolicy::default(),
            1,
            &AgentStats::default(),
        )
        .await;
        assert_eq!((d.acked_records, d.retries), (3, 2));
        assert!(d.dropped.is_empty());
        // 2 s from Retry-After, then a first backoff of 50-100 ms.
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(2050) && waited <= Duration::from_millis(2100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_splits_and_sends_halves_in_order() {
        let out = scripted(vec![Err(OutputError::TooLarge), Err(OutputError::TooLarge)]);
        let (b, m) = encoded(4, Codec::Gzip);
        let d = deliver(
            &out,
            "t",
            b,
            m,
            Lane::default(),
            RetryPolicy::default(),
            1,
            &AgentStats::default(),
        )
        .await;
        assert_eq!(d.acked_records, 4);
        let sent = out.sent.lock().unwrap().clone();
        let ranges: Vec<_> = sent.iter().map(|m| (m.first_offset, m.records)).collect();
        // whole (413) → first half (413) → its quarters → second half
        assert_eq!(
            ranges,
            vec![
                (1000, 4),
                (1000, 2),
                (1000, 1),
                (sent[3].first_offset, 1),
                (sent[4].first_offset, 2)
            ]
        );
        assert_eq!(sent[3].first_offset, sent[2].end_offset);
        assert_eq!(sent[4].end_offset, m.end_offset);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_is_a_counted_drop() {
        let out = scripted(vec![Err(OutputError::Rejected {
            reason: "400".into(),
        })]);
        let (b, m) = encoded(3, Codec::None);
        let d = deliver(
            &out,
            "t",
            b,
            m,
            Lane::default(),
            RetryPolicy::default(),
            1,
            &AgentStats::default(),
        )
        .await;
        assert_eq!(d.dropped, vec![("rejected", 3)]);
        assert_eq!(d.acked_records, 0);
        let out = scripted(vec![Err(OutputError::TooLarge)]);
        let (b, m) = encoded(1, Codec::None);
        let d = deliver(
            &out,
            "t",
            b,
            m,
            Lane::default(),
            RetryPolicy::default(),
            1,
            &AgentStats::default(),
        )
        .await;
        assert_eq!(d.dropped, vec![("too_large", 1)]);
    }

    /// While the predecessor is in flight the batch goes out with `after`; an "out of order"
    /// answer makes it wait for the predecessor, and once that is done with the batch is sent
    /// again without `after`. Not counted as a retry.
    #[tokio::test(start_paused = true)]
    async fn out_of_order_waits_for_the_predecessor_then_resends() {
        let out = scripted(vec![Err(OutputError::OutOfOrder {
            reason: "409".into(),
        })]);
        let (b, m) = encoded(3, Codec::None);
        let (resolved, prev) = watch::channel(false);
        let stats = AgentStats::default();
        let t0 = tokio::time::Instant::now();
        let resolver = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            resolved.send(true).unwrap();
        });
        let d = deliver(
            &out,
            "t",
            b,
            m,
            Lane {
                prev: Some(prev),
                ..Lane::default()
            },
            RetryPolicy::default(),
            1,
            &stats,
        )
        .await;
        resolver.await.unwrap();
        assert_eq!((d.acked_records, d.retries), (3, 0));
        let sent = out.sent.lock().unwrap().clone();
        let afters: Vec<_> = sent.iter().map(|m| m.after).collect();
        // The answer marks the file congested: the batch then waits for its predecessor (done
        // at 1.5 s) and goes out again without `after`.
        assert_eq!(afters, vec![Some(1000), None]);
        assert_eq!(t0.elapsed(), Duration::from_millis(1500));
        assert_eq!(AgentStats::get(&stats.out_of_order), 1);
        // A predecessor whose delivery was cancelled (sender dropped) counts as done.
        let out = scripted(vec![]);
        let (gone, prev) = watch::channel(false);
        drop(gone);
        let (b, m) = encoded(1, Codec::None);
        deliver(
            &out,
            "t",
            b,
            m,
            Lane {
                prev: Some(prev),
                ..Lane::default()
            },
            RetryPolicy::default(),
            1,
            &stats,
        )
        .await;
        assert_eq!(out.sent.lock().unwrap()[0].after, None);
    }

    /// While the file is congested (a delivery met push-back), a batch with a predecessor in
    /// flight waits for it and then goes out without `after`; an acknowledgement at the first
    /// attempt clears the flag.
    #[tokio::test(start_paused = true)]
    async fn a_congested_file_sends_one_batch_at_a_time() {
        let out = scripted(vec![]);
        let (b, m) = encoded(2, Codec::None);
        let (resolved, prev) = watch::channel(false);
        let lane = Lane {
            prev: Some(prev),
            ..Lane::default()
        };
        lane.congested.store(true, Ordering::Relaxed);
        let congested = lane.congested.clone();
        let t0 = tokio::time::Instant::now();
        let resolver = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            resolved.send(true).unwrap();
        });
        let stats = AgentStats::default();
        let d = deliver(&out, "t", b, m, lane, RetryPolicy::default(), 1, &stats).await;
        resolver.await.unwrap();
        assert_eq!(d.acked_records, 2);
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(700),
            "sent only after its predecessor"
        );
        assert_eq!(out.sent.lock().unwrap()[0].after, None);
        assert!(
            !congested.load(Ordering::Relaxed),
            "cleared by a first-attempt ack"
        );
        // A retryable answer sets it.
        let out = scripted(vec![Err(OutputError::Retryable {
            reason: "429".into(),
            retry_after: None,
        })]);
        let lane = Lane::default();
        let congested = lane.congested.clone();
        let (b, m) = encoded(1, Codec::None);
        deliver(&out, "t", b, m, lane, RetryPolicy::default(), 1, &stats).await;
        assert!(congested.load(Ordering::Relaxed));
    }

    /// An output that, at each send, reads the checkpoint on disk: whether it says what
    /// content (generation, fingerprint) the batch's file holds.
    struct ChecksDisk {
        checkpoint: std::path::PathBuf,
        identity_on_disk: Mutex<Vec<bool>>,
    }

    impl Output for ChecksDisk {
        async fn send(&self, _t: &str, _b: Bytes, _m: &BatchMeta) -> Result<Ack, OutputError> {
            let text = std::fs::read_to_string(&self.checkpoint).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let on_disk = json["files"].as_array().is_some_and(|files| {
                files.iter().any(|f| {
                    f["inode"] == 2 && f["generation"] == 1 && f["fingerprint"]["checksum"] == 777
                })
            });
            self.identity_on_disk.lock().unwrap().push(on_disk);
            Ok(Ack::default())
        }
    }

    /// A batch of a content the checkpoint on disk does not know yet (a new generation whose
    /// fingerprint was fixed since) is sent only once the checkpoint on disk holds that
    /// identity: killed right after the send, the restarted agent must not take the file's
    /// next content for this one (see `Shipper::identity_unwritten`).
    #[tokio::test]
    async fn a_new_contents_first_batch_is_sent_after_its_identity_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let checkpointer = Checkpointer::new(dir.path()).unwrap();
        let out = Arc::new(ChecksDisk {
            checkpoint: dir.path().join(Checkpointer::FILE_NAME),
            identity_on_disk: Mutex::new(Vec::new()),
        });
        let stats = Arc::new(AgentStats::default());
        let parts = ShipperParts {
            output: out.clone(),
            topics: vec![Arc::from("t")],
            input_names: vec!["in".into()],
            checkpointer,
            checkpoints: Checkpoints::default(),
            checkpoint_interval: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(5),
            max_in_flight: 4,
            max_in_flight_per_file: 2,
            policy: RetryPolicy::default(),
            gzip_level: 1,
            coalesce_bytes: 0,
            buffer: Arc::new(Buffer::new(1 << 20)),
            stats,
            stop_reader: Box::new(|| {}),
            wake_reader: Box::new(|| {}),
        };
        let (tx, rx) = mpsc::channel(16);
        let shipper = Shipper::new(parts, vec![rx]);
        let state = |fingerprint| FileState {
            key: (1, 2),
            path: Arc::from("/logs/app.log"),
            fingerprint,
            generation: 1,
            origin: None,
            tail: None,
            head: None,
            pending: Vec::new(),
            birth: 0,
            probe: None,
        };
        let fp = Some(Fingerprint {
            len: 4,
            checksum: 777,
        });
        // Truncated: a new generation, its first line not written yet; then a batch of it.
        tx.send(vec![Shipment::Position {
            state: state(None),
            offset: 0,
        }])
        .await
        .unwrap();
        let (b, m) = encoded(2, Codec::None);
        tx.send(vec![Shipment::Batch {
            input: 0,
            state: state(fp),
            first_offset: 0,
            end_offset: m.end_offset - m.first_offset,
            records: 2,
            encoded: Ok(b),
        }])
        .await
        .unwrap();
        drop(tx);
        let run = tokio::spawn(shipper.run(ferry_core::shutdown::Shutdown::new()));
        let cps = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*out.identity_on_disk.lock().unwrap(), [true]);
        assert_eq!(cps.files[&(1, 2)].fingerprint, fp);
    }
}
