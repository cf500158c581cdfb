//! Step 3: admission. What a request holds while it is being stored, each as a guard that
//! gives it back on drop, whatever ends the request (an answer, an error, or hyper dropping
//! the handler because the client went away): a topic's pending-request slot
//! ([`PendingGuard`], `max_pending_per_topic`) and its room under `max_records`
//! ([`Admission`]). Also the pace of topic auto-creation ([`TokenBucket`]).

use super::Ingest;
use std::sync::Arc;

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

/// Releases a topic's pending-request slot when a request ends, however it ends.
pub struct PendingGuard {
    pub(super) ingest: Arc<Ingest>,
    pub(super) topic: String,
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
pub struct Admission {
    pub(super) ingest: Arc<Ingest>,
    /// (topic, records) reserved.
    pub(super) taken: Vec<(String, u64)>,
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
