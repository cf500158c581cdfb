//! Step 4's ordering: a batch sent with `ferry-after` ([`batch::AFTER_HEADER`]) must follow
//! its file's earlier records. A batch stored whole into one partition is checked by the
//! store's writer; a routed batch (split over partitions) and every batch on Kafka wait here
//! until their predecessor has landed whole through this collector ([`Landed`]).

use super::IngestError;
use crate::store::StoreError;
use bytes::Bytes;
use ferry_core::batch::{self, Batch};
use ferry_core::record::OriginKey;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a routed or Kafka-bound batch waits for its predecessor before a 409.
const ORDER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Origins remembered before the map is cleared.
const MAX_LANDED: usize = 1 << 16;

/// Per origin, the highest end offset that landed through the routed or Kafka path; in
/// memory only.
#[derive(Default)]
pub struct Landed {
    /// A std mutex, never held across an await.
    high: Mutex<HashMap<OriginKey, u64>>,
    notify: tokio::sync::Notify,
}

/// Each origin of `items` with the end offset of its last batch.
pub fn marks(items: &[(Bytes, Batch)]) -> Vec<(OriginKey, u64)> {
    items
        .iter()
        .filter_map(|(_, b)| b.header.origin.as_ref())
        .map(|o| (o.key.clone(), o.end_offset))
        .collect()
}

/// The origin and offset a request of `items` sent with `after` must follow: it needs a body
/// of exactly one batch with an origin.
pub fn ordered(
    items: &[(Bytes, Batch)],
    after: Option<u64>,
) -> Result<Option<(OriginKey, u64)>, IngestError> {
    let Some(after) = after else {
        return Ok(None);
    };
    match items {
        [(_, b)] if b.header.origin.is_some() => {
            Ok(b.header.origin.as_ref().map(|o| (o.key.clone(), after)))
        }
        _ => Err(IngestError::BadRequest(format!(
            "{} needs a body of exactly one batch with an origin",
            batch::AFTER_HEADER
        ))),
    }
}

impl Landed {
    /// Waits (up to [`ORDER_WAIT`]) until `key`'s records up to `after` have landed.
    pub async fn wait(&self, key: &OriginKey, after: u64) -> Result<(), IngestError> {
        let deadline = tokio::time::Instant::now() + ORDER_WAIT;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let high = self
                .high
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
    pub fn mark(&self, marks: Vec<(OriginKey, u64)>) {
        if marks.is_empty() {
            return;
        }
        if let Ok(mut landed) = self.high.lock() {
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
        self.notify.notify_waiters();
    }
}
