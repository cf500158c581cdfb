//! Retry timing shared by the agent, the collector client and the processor.

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

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
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
        b.reset();
        assert_eq!(b.next_with(1.0), Duration::from_millis(100));
    }
}
