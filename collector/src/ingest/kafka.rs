//! A Kafka cluster as a [`Backend`]: the same routing plan, then each destination's records
//! produced as one sub-batch with `KafkaSink::send_batch`. Kafka picks partitions (by message
//! key when the topic has a key field), admission limits are the brokers', and the reply is
//! sent only after Kafka acknowledged every record of the request (acks=all); any failure
//! refuses the whole request (503), so the client resends it.

use super::order::marks;
use super::plan::{BatchRoutes, count_matches, route_batch};
use super::{Backend, BoxFuture, Delivery, Ingest, IngestError, IngestSummary};
use ferry_core::batch::Batch;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The Kafka backend: the producer and the topic mapping.
pub struct KafkaBackend {
    /// Shared with the produce tasks of each request.
    pub sink: Arc<ferry_kafka::KafkaSink>,
    pub config: ferry_kafka::KafkaConfig,
}

impl Backend for KafkaBackend {
    fn describe(&self) -> String {
        format!("Kafka at {}", self.config.brokers)
    }

    fn deliver<'a>(
        &'a self,
        ingest: &'a Arc<Ingest>,
        req: Delivery,
    ) -> BoxFuture<'a, Result<IngestSummary, IngestError>> {
        Box::pin(async move {
            if let Some((key, after)) = &req.ordered {
                ingest.landed.wait(key, *after).await?;
            }
            let landed = marks(&req.items);
            let summary = self
                .produce_all(ingest, &req.topic, req.items, req.records)
                .await?;
            ingest.landed.mark(landed);
            Ok(summary)
        })
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // Every acknowledged request already waited for its records; this only settles
            // what requests cut off by the drain deadline left in flight.
            if let Err(e) = self.sink.flush(Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "kafka producer did not flush");
            }
            tracing::info!("collector stopped; kafka producer flushed");
            Ok(())
        })
    }
}

impl KafkaBackend {
    /// Routes every record to its destination topics and produces each destination's
    /// records; returns only when Kafka acknowledged all of them.
    async fn produce_all(
        &self,
        ingest: &Ingest,
        topic: &str,
        items: Vec<(bytes::Bytes, Batch)>,
        records: u64,
    ) -> Result<IngestSummary, IngestError> {
        let applies = ingest
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
            let routes: BatchRoutes = {
                let mut router = ingest
                    .router
                    .lock()
                    .map_err(|_| IngestError::Busy("router state poisoned".into()))?;
                let routes = route_batch(&mut router, topic, &b);
                count_matches(&router, &routes);
                routes
            };
            dropped += routes.dropped;
            for (t, idx) in routes.per_topic {
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
            let key_field = self
                .config
                .key_field(&ferry_topic)
                .or_else(|| ingest.key_field(&ferry_topic))
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
            let sink = self.sink.clone();
            let kafka_topic = self.config.kafka_topic(&ferry_topic);
            set.spawn(async move {
                let r = sink
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
            offsets: Vec::new(),
        })
    }
}
