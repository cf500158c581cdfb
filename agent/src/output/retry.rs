//! URL choice (and, from ferry-core, retry timing): pure, so they are tested without a network.

use crate::config::UrlMode;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use ferry_core::backoff::Backoff;

/// Which collector URL a request goes to.
#[derive(Debug)]
pub struct UrlSelector {
    count: usize,
    mode: UrlMode,
    /// Failover: the URL in use. Round robin: the next one to use.
    current: AtomicUsize,
}

impl UrlSelector {
    pub fn new(count: usize, mode: UrlMode) -> Self {
        Self {
            count: count.max(1),
            mode,
            current: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self) -> usize {
        match self.mode {
            UrlMode::Failover => self.current.load(Ordering::Relaxed) % self.count,
            UrlMode::RoundRobin => self.current.fetch_add(1, Ordering::Relaxed) % self.count,
        }
    }

    /// The URL failover is on (or round robin will use next), without moving it.
    pub fn pick_peek(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.count
    }

    /// Puts failover on the URL at `index`.
    pub fn set(&self, index: usize) {
        self.current.store(index % self.count, Ordering::Relaxed);
    }

    /// The URL at `index` failed (connection error, 5xx). In failover mode the next URL takes
    /// over, unless another request already moved on.
    pub fn failed(&self, index: usize) {
        if self.mode == UrlMode::Failover {
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % self.count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failover_sticks_until_a_failure_then_moves_on() {
        let s = UrlSelector::new(3, UrlMode::Failover);
        assert_eq!((s.pick(), s.pick()), (0, 0));
        s.failed(0);
        assert_eq!(s.pick(), 1);
        // A late failure report about URL 0 does not skip URL 1.
        s.failed(0);
        assert_eq!(s.pick(), 1);
        s.failed(1);
        s.failed(2);
        assert_eq!(s.pick(), 0);
    }

    #[test]
    fn round_robin_spreads_every_request() {
        let s = UrlSelector::new(3, UrlMode::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| s.pick()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        s.failed(1);
        assert_eq!(s.pick(), 0);
    }
}
