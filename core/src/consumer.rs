//! A consumer of collector topics, alone or as a member of a consumer group.
//!
//! Without a group, a consumer reads every partition of its topics from the start position and
//! commits nothing. In a group, it joins, heartbeats (from inside [`Consumer::poll`]) and reads
//! only the partitions the collector assigns it; when a partition is taken away it commits its
//! position for it first and then lets it go, which is what lets the collector hand it to
//! another member without a record being delivered twice.
//!
//! Positions advance exactly past the records `poll` returned, and `commit` stores them: a caller
//! that processes what `poll` gave it before calling `commit` gets at-least-once delivery, and
//! exactly-once in a stable group.

use crate::batch::DecodeLimits;
use crate::client::{Assignment, ClientError, CollectorClient, CommittedOffset};
use crate::fetch;
use crate::record::Record;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    /// The first offset appended at or after this time (Unix ms).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topics: Vec<String>,
    pub group: Option<String>,
    pub start: StartPosition,
    /// Ignore committed offsets and start from `start` (`--from-beginning` with a group).
    pub reset_offsets: bool,
    pub session_timeout: Duration,
    pub max_fetch_bytes: u64,
    /// Longest a `poll` waits for records when there are none.
    pub poll_wait: Duration,
    /// Hand revoked partitions back only when the caller says so ([`Consumer::release`]),
    /// after it has saved what it built from them; otherwise they are committed and released
    /// at once.
    pub manual_release: bool,
}

impl ConsumerConfig {
    pub fn new(topics: Vec<String>) -> Self {
        Self {
            topics,
            group: None,
            start: StartPosition::Latest,
            reset_offsets: false,
            session_timeout: Duration::from_secs(10),
            max_fetch_bytes: 1 << 20,
            poll_wait: Duration::from_millis(500),
            manual_release: false,
        }
    }
}

/// Whether two records' topics are the same: the records of one fetch share one `Arc`, so
/// comparing pointers settles it without comparing names.
#[inline]
pub fn same_topic(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// A record as consumed: where it was stored, when, and what it is.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Shared by the records of one fetch (no allocation per record).
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    pub append_time_ms: i64,
    pub record: Record,
}

pub struct Consumer {
    client: CollectorClient,
    config: ConsumerConfig,
    /// Set once joined (group mode).
    member_id: Option<String>,
    generation: u64,
    /// Next offset to read, per owned partition.
    positions: BTreeMap<(String, u32), u64>,
    /// Positions already committed (to skip needless commits).
    committed: BTreeMap<(String, u32), u64>,
    /// Records fetched but not yet handed out by `poll`.
    buffered: VecDeque<ConsumedRecord>,
    /// Where fetch bodies are read; its allocation is reused from fetch to fetch.
    body: bytes::BytesMut,
    last_heartbeat: Instant,
    /// Round-robin start among owned partitions, so one busy partition does not starve others.
    next_partition: usize,
    /// Partitions were just revoked: heartbeat again at once to release them.
    handing_over: bool,
    /// Revoked but not yet released (manual release): not fetched, still reported as owned.
    revoking: BTreeSet<(String, u32)>,
    /// Partitions assigned since the last `take_assigned`, with the offset reading started
    /// from at that moment (later polls may have moved the position on since).
    newly_assigned: Vec<((String, u32), u64)>,
    /// Partitions revoked since the last `take_revoked` (manual release).
    newly_revoked: Vec<(String, u32)>,
}

impl Consumer {
    /// Connects: joins the group, or (without one) takes every partition of the topics.
    pub async fn connect(
        client: CollectorClient,
        config: ConsumerConfig,
    ) -> Result<Self, ClientError> {
        let mut c = Self {
            client,
            config,
            member_id: None,
            generation: 0,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            buffered: Default::default(),
            body: Default::default(),
            last_heartbeat: Instant::now(),
            next_partition: 0,
            handing_over: false,
            revoking: BTreeSet::new(),
            newly_assigned: Vec::new(),
            newly_revoked: Vec::new(),
        };
        match c.config.group.clone() {
            Some(group) => {
                let a = c
                    .client
                    .join(&group, None, &c.config.topics, c.config.session_timeout)
                    .await?;
                c.member_id = Some(a.member_id.clone());
                c.apply_assignment(a).await?;
            }
            None => c.refresh_standalone().await?,
        }
        Ok(c)
    }

    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }

    /// The generation of the assignment in force (sent with commits and checkpoints).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    /// Without a group: picks up partitions of topics that appeared since.
    async fn refresh_standalone(&mut self) -> Result<(), ClientError> {
        for t in self.config.topics.clone() {
            let Some(info) = self.client.topic(&t).await? else {
                continue;
            };
            for p in info.partitions {
                let key = (t.clone(), p.partition);
                if self.positions.contains_key(&key) {
                    continue;
                }
                let start = self
                    .start_offset(&t, p.partition, p.log_start, p.end_offset)
                    .await?;
                self.positions.insert(key, start);
            }
        }
        Ok(())
    }

    async fn start_offset(
        &self,
        topic: &str,
        partition: u32,
        log_start: u64,
        end: u64,
    ) -> Result<u64, ClientError> {
        Ok(match self.config.start {
            StartPosition::Earliest => log_start,
            StartPosition::Latest => end,
            StartPosition::Timestamp(ts) => {
                self.client.offset_for_time(topic, partition, ts).await?
            }
        })
    }

    /// Takes a new assignment: commits and drops revoked partitions, seeks new ones to their
    /// committed offset (or the start position).
    async fn apply_assignment(&mut self, a: Assignment) -> Result<(), ClientError> {
        // A rejoin after the session expired gets a fresh id from the collector.
        self.member_id = Some(a.member_id.clone());
        self.generation = a.generation;
        self.handing_over = false;
        let new: BTreeSet<(String, u32)> = a.partitions.into_iter().collect();
        let revoked: Vec<(String, u32)> = self
            .positions
            .keys()
            .filter(|k| !new.contains(*k) && !self.revoking.contains(*k))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            self.buffered.retain(|r| {
                new.iter()
                    .any(|(t, p)| **t == *r.topic && *p == r.partition)
            });
            if self.config.manual_release {
                self.revoking.extend(revoked.iter().cloned());
                self.newly_revoked.extend(revoked);
            } else {
                self.release(&revoked).await?;
            }
        }
        let added: Vec<(String, u32)> = new
            .iter()
            .filter(|k| !self.positions.contains_key(*k))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let group = self.config.group.clone().unwrap_or_default();
        let committed: BTreeMap<(String, u32), u64> = if self.config.reset_offsets {
            BTreeMap::new()
        } else {
            self.client
                .committed(&group)
                .await?
                .into_iter()
                .map(|c| ((c.topic, c.partition), c.offset))
                .collect()
        };
        for (t, p) in added {
            let info = self.client.topic(&t).await?;
            let (log_start, end) = info
                .and_then(|i| i.partitions.into_iter().find(|x| x.partition == p))
                .map(|x| (x.log_start, x.end_offset))
                .unwrap_or((0, 0));
            let start = match committed.get(&(t.clone(), p)) {
                Some(&o) => o.max(log_start),
                None => self.start_offset(&t, p, log_start, end).await?,
            };
            self.committed.insert(
                (t.clone(), p),
                committed.get(&(t.clone(), p)).copied().unwrap_or(u64::MAX),
            );
            self.positions.insert((t.clone(), p), start);
            self.newly_assigned.push(((t, p), start));
        }
        Ok(())
    }

    /// Partitions assigned since the last call, each with the offset reading started from (the
    /// group's committed offset, or the start position). An assignment can arrive inside
    /// [`Consumer::poll`], whose records may already include the new partition's: a caller
    /// that keeps per-partition state must [`Consumer::seek`] each new partition (to this offset,
    /// or its own checkpoint's) and ignore records of partitions it had not set up yet.
    pub fn take_assigned(&mut self) -> Vec<((String, u32), u64)> {
        let taken = std::mem::take(&mut self.newly_assigned);
        taken
            .into_iter()
            .filter(|(k, _)| self.positions.contains_key(k))
            .collect()
    }

    /// Partitions taken away since the last call (with `manual_release`). They are no longer
    /// fetched; the caller saves what it built from them, then calls [`Consumer::release`].
    pub fn take_revoked(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.newly_revoked)
    }

    /// Commits the position of these partitions and gives them up; the next heartbeat tells the
    /// collector, which then grants them to their new owner.
    pub async fn release(&mut self, partitions: &[(String, u32)]) -> Result<(), ClientError> {
        match self.commit_partitions(partitions).await {
            // Our session ended meanwhile: the partitions are not ours to commit any more, and
            // their new owner starts from the last commit or checkpoint.
            Err(ClientError::Http {
                status: 404 | 409,
                message,
                ..
            }) => {
                tracing::warn!(%message, "release: partitions already taken from us");
            }
            other => other?,
        }
        for k in partitions {
            self.positions.remove(k);
            self.committed.remove(k);
            self.revoking.remove(k);
        }
        self.buffered.retain(|r| {
            !partitions
                .iter()
                .any(|(t, p)| **t == *r.topic && *p == r.partition)
        });
        self.handing_over = true;
        Ok(())
    }

    /// Reads `partition` from `offset` next (e.g. the offset of a restored checkpoint).
    pub fn seek(&mut self, partition: &(String, u32), offset: u64) {
        if let Some(pos) = self.positions.get_mut(partition) {
            *pos = offset;
            self.buffered
                .retain(|r| !(*r.topic == *partition.0 && r.partition == partition.1));
        }
    }

    async fn heartbeat_if_due(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.config.group.clone() else {
            return Ok(());
        };
        // A member waiting for partitions (or handing some over) heartbeats often so the
        // hand-over is quick; a settled one every second or a third of its session.
        let period = if self.positions.is_empty() || self.handing_over {
            Duration::from_millis(100)
        } else {
            (self.config.session_timeout / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(1))
        };
        if self.last_heartbeat.elapsed() < period {
            return Ok(());
        }
        self.last_heartbeat = Instant::now();
        let member = self.member_id.clone().unwrap_or_default();
        let owned = self.assignment();
        match self.client.heartbeat(&group, &member, &owned).await {
            Ok(a) => self.apply_assignment(a).await,
            Err(ClientError::Http { status: 404, .. }) => {
                // Our session expired (we were too slow): positions we had are not ours any
                // more; rejoin and start from the group's committed offsets.
                tracing::warn!(group, member, "group session expired; rejoining");
                self.positions.clear();
                self.committed.clear();
                self.buffered.clear();
                self.revoking.clear();
                self.newly_revoked.clear();
                let a = self
                    .client
                    .join(
                        &group,
                        Some(&member),
                        &self.config.topics,
                        self.config.session_timeout,
                    )
                    .await?;
                self.apply_assignment(a).await
            }
            Err(e) => Err(e),
        }
    }

    /// Returns up to `max` records, waiting up to `poll_wait` when none are ready.
    pub async fn poll(&mut self, max: usize) -> Result<Vec<ConsumedRecord>, ClientError> {
        let mut out = Vec::new();
        self.poll_into(max, &mut out).await?;
        Ok(out)
    }

    /// [`Consumer::poll`] into `out` (cleared first), so a caller that polls in a loop reuses
    /// one allocation instead of a fresh vector — megabytes, page-faulted in — every poll.
    pub async fn poll_into(
        &mut self,
        max: usize,
        out: &mut Vec<ConsumedRecord>,
    ) -> Result<(), ClientError> {
        out.clear();
        self.heartbeat_if_due().await?;
        if self.buffered.is_empty() {
            self.fill().await?;
        }
        if max >= self.buffered.len() && out.capacity() >= self.buffered.len() {
            // All of it, and `out` (the caller's previous poll) is as large: hand over the
            // queue itself and keep `out`'s allocation as the next queue, rather than moving
            // every record once more.
            let spare = VecDeque::from(std::mem::take(out));
            *out = Vec::from(std::mem::replace(&mut self.buffered, spare));
        } else {
            let n = max.min(self.buffered.len());
            out.extend(self.buffered.drain(..n));
        }
        // One position update per run of a partition's records (they come in runs: a fetch's
        // batches, partition by partition), not a key built per record.
        let mut i = 0;
        while i < out.len() {
            let (topic, partition) = (&out[i].topic, out[i].partition);
            let mut last = out[i].offset;
            i += 1;
            while i < out.len() && out[i].partition == partition && same_topic(&out[i].topic, topic)
            {
                last = last.max(out[i].offset);
                i += 1;
            }
            if let Some(pos) = self.positions.get_mut(&(topic.to_string(), partition)) {
                *pos = (*pos).max(last + 1);
            }
        }
        Ok(())
    }

    /// Fetches from owned partitions until something arrives or `poll_wait` passes.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.config.poll_wait;
        loop {
            if self.config.group.is_none() && self.positions.len() < self.config.topics.len() {
                self.refresh_standalone().await?;
            }
            let keys: Vec<(String, u32)> = self
                .positions
                .keys()
                .filter(|k| !self.revoking.contains(*k))
                .cloned()
                .collect();
            if !keys.is_empty() {
                for i in 0..keys.len() {
                    let (t, p) = &keys[(self.next_partition + i) % keys.len()];
                    let pos = self.positions[&(t.clone(), *p)];
                    let f = match self
                        .client
                        .fetch_body(
                            t,
                            *p,
                            pos,
                            self.config.max_fetch_bytes,
                            Duration::ZERO,
                            &mut self.body,
                        )
                        .await
                    {
                        Ok(f) => f,
                        // Retention removed what we wanted: skip to the log start, loudly.
                        Err(ClientError::Http {
                            status: 416,
                            message,
                            ..
                        }) => {
                            tracing::warn!(topic = t, partition = p, %message, "offset out of range; skipping to the log start");
                            let info = self.client.topic(t).await?;
                            let start = info
                                .and_then(|i| i.partitions.into_iter().find(|x| x.partition == *p))
                                .map(|x| x.log_start)
                                .unwrap_or(0);
                            self.positions.insert((t.clone(), *p), start);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    // Records go from the fetched bytes straight into the queue: no vector
                    // of batches or of records per batch in between.
                    let topic: Arc<str> = Arc::from(t.as_str());
                    let before = self.buffered.len();
                    let buffered = &mut self.buffered;
                    let decoded = fetch::for_each_record(
                        &f.body,
                        &DecodeLimits::default(),
                        |offset, append_time_ms, record| {
                            if offset >= pos {
                                buffered.push_back(ConsumedRecord {
                                    topic: topic.clone(),
                                    partition: *p,
                                    offset,
                                    append_time_ms,
                                    record,
                                });
                            }
                        },
                    );
                    if let Err(e) = decoded {
                        // None of a fetch that does not decode whole.
                        self.buffered.truncate(before);
                        return Err(ClientError::Decode(format!("fetch body: {e}")));
                    }
                    if !self.buffered.is_empty() {
                        self.next_partition = (self.next_partition + i + 1) % keys.len();
                        return Ok(());
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(50))).await;
            self.heartbeat_if_due().await?;
        }
    }

    /// Commits the position of every owned partition (group mode; a no-op otherwise).
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let keys = self.assignment();
        self.commit_partitions(&keys).await
    }

    async fn commit_partitions(&mut self, keys: &[(String, u32)]) -> Result<(), ClientError> {
        let Some(group) = self.config.group.clone() else {
            return Ok(());
        };
        let offsets: Vec<CommittedOffset> = keys
            .iter()
            .filter_map(|k| {
                let pos = *self.positions.get(k)?;
                (self.committed.get(k) != Some(&pos)).then(|| CommittedOffset {
                    topic: k.0.clone(),
                    partition: k.1,
                    offset: pos,
                })
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.client
            .commit(
                &group,
                self.member_id.as_deref().map(|m| (m, self.generation)),
                &offsets,
            )
            .await?;
        for o in offsets {
            self.committed.insert((o.topic, o.partition), o.offset);
        }
        Ok(())
    }

    /// Commits and leaves the group, so its partitions move to other members at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.buffered.clear();
        self.commit().await?;
        if let (Some(group), Some(member)) = (self.config.group.clone(), self.member_id.clone()) {
            self.client.leave(&group, &member).await?;
        }
        Ok(())
    }
}
