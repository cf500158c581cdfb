//! Retry timing and URL choice: pure, so they are tested without a network.

use crate::config::UrlMode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Capped exponential backoff with jitter: attempt `n` waits a random time in
/// `[d/2, d]` where `d = min(base * 2^n, max)` ("equal jitter": never zero, so a flood of
/// agents does not retry in lockstep, and never more than the cap).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32 << self.attempt.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

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
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.next_with(0.0), Duration::from_millis(50));
        let d = b.next_with(0.999_999);
        assert!(
            d > Duration::from_millis(199) && d <= Duration::from_millis(200),
            "{d:?}"
        );
        let d = b.next_with(0.5);
        assert!(
            d.abs_diff(Duration::from_millis(300)) < Duration::from_micros(1),
            "{d:?}"
        );
        for _ in 0..40 {
            let d = b.next_with(0.999_999);
            assert!(d <= Duration::from_secs(5), "{d:?}");
        }
        assert!(b.next_with(0.0) >= Duration::from_millis(2500));
        assert_eq!(b.attempts(), 44);
    }

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
