//! The embedded store as a [`Backend`]: destination partitions chosen here (by origin, key
//! field or round-robin), admission under `max_records`, then every sub-batch appended (one
//! group commit covers them) and the answer given only once all are durable.

use super::admission::Admission;
use super::order::marks;
use super::plan::{BatchRoutes, count_matches, route_batch};
use super::{Backend, BoxFuture, Delivery, Ingest, IngestError, IngestSummary, run_blocking};
use crate::store::{FsyncPolicy, Store};
use bytes::Bytes;
use ferry_core::batch::{self, Batch};
use ferry_core::topic::stable_hash;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// The embedded topic log.
pub struct Embedded(pub Store);

/// One destination of a request: a topic partition and the batches for it.
#[derive(Debug)]
struct Destination {
    topic: String,
    partition: u32,
    batches: Vec<Bytes>,
    records: u64,
}

impl Backend for Embedded {
    fn store(&self) -> Option<&Store> {
        Some(&self.0)
    }

    fn describe(&self) -> String {
        "the embedded store".into()
    }

    fn deliver<'a>(
        &'a self,
        ingest: &'a Arc<Ingest>,
        req: Delivery,
    ) -> BoxFuture<'a, Result<IngestSummary, IngestError>> {
        Box::pin(self.deliver_embedded(ingest, req))
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            use anyhow::Context;
            self.0.close().await.context("closing the store")?;
            tracing::info!("collector stopped; store closed");
            Ok(())
        })
    }
}

impl Embedded {
    async fn deliver_embedded(
        &self,
        ingest: &Arc<Ingest>,
        req: Delivery,
    ) -> Result<IngestSummary, IngestError> {
        let Delivery {
            topic,
            items,
            ordered,
            pending,
            records,
            partition,
        } = req;
        let whole = !ingest.needs_look(&topic);
        // Routing may create topics (mkdir, fsync) and recompress: on the blocking pool. A
        // body stored whole, as received, into a topic that exists needs neither: its
        // destinations are worked out here, without two thread hand-offs per request (about a
        // tenth of the collector's CPU under a stream of agent batches).
        let as_received = whole
            && ingest
                .store()
                .is_some_and(|s| s.topic_partitions(&topic).is_some())
            && items
                .iter()
                .all(|(_, b)| storage_codec(ingest, b.header.codec) == b.header.codec);
        let (items, routed) = if as_received {
            let r = destinations(ingest, &topic, &items, whole, partition);
            (items, r)
        } else {
            let this = ingest.clone();
            let topic = topic.clone();
            run_blocking(move || {
                let r = destinations(&this, &topic, &items, whole, partition);
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
                ingest.landed.wait(key, *after).await?;
                None
            }
            None => None,
        };
        // The admission ticket (the reservation) and the pending slot go with the append into
        // a task of its own: if this request's future is dropped (its client went away), the
        // appends it started still finish, and only then is the room given back, so the
        // topic's count can never pass max_records nor keep room nobody uses.
        let ticket = admit(ingest, &dests)?;
        let appending = {
            let store = self.0.clone();
            tokio::spawn(async move {
                let _held = (ticket, pending);
                append_all(&store, dests, store_after).await
            })
        };
        let (stored, deduplicated, routed, offsets) = appending.await.map_err(|e| {
            tracing::error!(error = %e, "append task failed");
            IngestError::Busy("internal error; see the collector log".into())
        })??;
        if !whole {
            ingest.landed.mark(marks(&items));
        }
        metrics::counter!("ferry_collector_records_received_total", "topic" => topic.clone())
            .increment(records);
        metrics::counter!("ferry_collector_records_deduplicated_total").increment(deduplicated);
        metrics::counter!("ferry_collector_records_dropped_total", "reason" => "route")
            .increment(dropped);
        Ok(IngestSummary {
            topic,
            records,
            stored,
            deduplicated,
            dropped,
            routed,
            fsync: fsync_name(ingest.config.store.fsync).to_owned(),
            offsets,
        })
    }
}

/// Decides every record's destination topic partition (creating topics as allowed); returns
/// the destinations with their encoded sub-batches and the count of records routing dropped.
fn destinations(
    ingest: &Ingest,
    topic: &str,
    items: &[(Bytes, Batch)],
    whole: bool,
    chosen: Option<u32>,
) -> Result<(Vec<Destination>, u64), IngestError> {
    let mut dests: BTreeMap<(String, u32), Destination> = BTreeMap::new();
    let mut dropped = 0u64;
    if whole {
        // The topic posted to exists after the post, even if the body held no record.
        ingest.ensure_topic(topic)?;
    }
    for (enc, b) in items {
        // The header's count: a batch for a topic no rule looks at may come without its
        // records decoded (see `Ingest::ingest_to_partition`).
        if b.header.record_count == 0 {
            continue;
        }
        let routes = if whole {
            BatchRoutes::whole(topic, b)
        } else {
            // Held for the routing of one batch: synchronous, nothing here awaits.
            let mut router = ingest
                .router
                .lock()
                .map_err(|_| IngestError::Busy("router state poisoned".into()))?;
            let routes = route_batch(&mut router, topic, b);
            count_matches(&router, &routes);
            routes
        };
        dropped += routes.dropped;
        for (t, idx) in routes.per_topic {
            let n = ingest.ensure_topic(&t)?;
            // Records without a key value (or a topic without a key field) go together to
            // the batch's partition: by origin, else round-robin.
            // A partition the client chose holds for its own topic (a copy routed elsewhere
            // is placed as any other record there).
            let chosen = chosen.filter(|&p| t == topic && p < n);
            let batch_partition =
                chosen.unwrap_or_else(|| ingest.partition_for_batch(&b.header, n));
            let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            match ingest.key_field(&t).filter(|_| chosen.is_none()) {
                // No record is looked at: all of them go to the one partition (no per-record
                // work on a batch stored whole).
                None => {
                    by_partition.insert(batch_partition, idx);
                }
                Some(field) => {
                    for i in idx {
                        let p = crate::routing::field_value(&b.records[i], field)
                            .map(|v| (stable_hash(&[v.as_bytes()]) % u64::from(n)) as u32)
                            .unwrap_or(batch_partition);
                        by_partition.entry(p).or_default().push(i);
                    }
                }
            }
            for (p, idx) in by_partition {
                let sub = if idx.len() == b.header.record_count as usize {
                    for_storage(ingest, enc, b)?
                } else {
                    let keep: HashSet<usize> = idx.iter().copied().collect();
                    let codec = storage_codec(ingest, b.header.codec);
                    match b
                        .encode_subset(|i| keep.contains(&i), codec, 1)
                        .map_err(|e| IngestError::TooLarge(e.to_string()))?
                    {
                        Some(v) => Bytes::from(v),
                        None => continue,
                    }
                };
                let d = dests.entry((t.clone(), p)).or_insert_with(|| Destination {
                    topic: t.clone(),
                    partition: p,
                    batches: Vec::new(),
                    records: 0,
                });
                d.batches.push(sub);
                d.records += idx.len() as u64;
            }
        }
    }
    Ok((dests.into_values().collect(), dropped))
}

/// The codec a batch received with `codec` is stored with (`store_codec`).
fn storage_codec(ingest: &Ingest, codec: batch::Codec) -> batch::Codec {
    match codec {
        batch::Codec::None => ingest.config.store_codec,
        other => other,
    }
}

/// The bytes to store for a received batch: as received, or compressed with `store_codec`
/// if it arrived uncompressed.
fn for_storage(ingest: &Ingest, enc: &Bytes, b: &Batch) -> Result<Bytes, IngestError> {
    let codec = storage_codec(ingest, b.header.codec);
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

/// Refuses the request if a destination topic would exceed its `max_records`; otherwise
/// reserves room for it. The reservation lasts as long as the returned ticket.
fn admit(ingest: &Arc<Ingest>, dests: &[Destination]) -> Result<Admission, IngestError> {
    let mut incoming: BTreeMap<&str, u64> = BTreeMap::new();
    for d in dests {
        *incoming.entry(d.topic.as_str()).or_default() += d.records;
    }
    let mut reserved = ingest
        .reserved
        .lock()
        .map_err(|_| IngestError::Busy("collector state poisoned".into()))?;
    for (topic, n) in &incoming {
        let Some(max) = ingest.max_records(topic) else {
            continue;
        };
        let held = ingest.held_records(topic) + reserved.get(*topic).copied().unwrap_or(0);
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
        if ingest.max_records(topic).is_some() {
            *reserved.entry(topic.to_owned()).or_default() += n;
            taken.push((topic.to_owned(), n));
        }
    }
    Ok(Admission {
        ingest: ingest.clone(),
        taken,
    })
}

/// Appends every destination's batches; `after` (see [`Store::append_after`]) is passed with
/// each, which only a request of one batch uses.
async fn append_all(
    store: &Store,
    dests: Vec<Destination>,
    after: Option<u64>,
) -> Result<Appended, IngestError> {
    let mut set = tokio::task::JoinSet::new();
    for d in dests {
        for b in d.batches {
            let store = store.clone();
            let topic = d.topic.clone();
            let partition = d.partition;
            set.spawn(async move {
                let r = store.append_after(&topic, partition, b, after).await;
                (topic, partition, r)
            });
        }
    }
    let mut stored = 0u64;
    let mut dedup = 0u64;
    let mut routed: BTreeMap<String, u64> = BTreeMap::new();
    let mut offsets: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut first_err = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((topic, partition, Ok(out))) => {
                stored += u64::from(out.stored);
                dedup += u64::from(out.deduplicated);
                if out.stored > 0 {
                    let first = offsets
                        .entry((topic.clone(), partition))
                        .or_insert(out.base_offset);
                    *first = (*first).min(out.base_offset);
                }
                *routed.entry(topic).or_default() += u64::from(out.stored);
            }
            Ok((_, _, Err(e))) => {
                first_err.get_or_insert(IngestError::Store(e));
            }
            Err(e) => {
                first_err.get_or_insert(IngestError::Busy(format!("append task failed: {e}")));
            }
        }
    }
    let offsets = offsets.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    match first_err {
        Some(e) => Err(e),
        None => Ok((stored, dedup, routed, offsets)),
    }
}

/// Records stored, deduplicated, stored per topic, and the first offset stored per
/// (topic, partition).
type Appended = (u64, u64, BTreeMap<String, u64>, Vec<(String, u32, u64)>);

fn fsync_name(p: FsyncPolicy) -> &'static str {
    match p {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Group => "group",
        FsyncPolicy::Interval => "interval",
        FsyncPolicy::Never => "never",
    }
}
