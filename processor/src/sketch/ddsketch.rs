//! DDSketch (Masson, Rim, Lee, VLDB 2019): quantiles with a relative-error guarantee.
//!
//! A value `x > 0` goes to bin `ceil(log_γ x)` with `γ = (1 + α) / (1 - α)`; every value in bin `i`
//! is within `α` of the bin's representative `2γ^i / (γ + 1)`. With α = 0.01 each returned quantile
//! is within 1% of the true one (the rank is exact: the sketch counts every value). Negative values
//! use a mirrored store, zero (and |x| below 1e-9) its own counter. Each store keeps at most
//! [`MAX_BINS`] bins by merging its lowest ones, which only affects quantiles of the smallest
//! magnitudes (beyond 2048 bins the range covered is γ^2048 ≈ 10^17). Merging adds bins.

use crate::codec::{Dec, DecodeError, Enc};

pub const RELATIVE_ACCURACY: f64 = 0.01;
pub const MAX_BINS: usize = 2048;
const MIN_MAGNITUDE: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq)]
pub struct DDSketch {
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

/// Dense counters for bins `offset .. offset + bins.len()`.
#[derive(Debug, Clone, PartialEq, Default)]
struct Store {
    offset: i32,
    bins: Vec<u64>,
}

/// ln γ, computed once (`f64::ln` is not `const`).
static GAMMA_LN: std::sync::LazyLock<f64> =
    std::sync::LazyLock::new(|| ((1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)).ln());

#[inline]
fn gamma_ln() -> f64 {
    *GAMMA_LN
}

impl Store {
    fn add(&mut self, idx: i32, n: u64) {
        if self.bins.is_empty() {
            self.offset = idx;
            self.bins.push(n);
            return;
        }
        if idx < self.offset {
            let grow = (self.offset - idx) as usize;
            if self.bins.len() + grow > MAX_BINS {
                // Too wide: the lowest bin already stands for everything below it.
                self.bins[0] += n;
                return;
            }
            let mut nb = vec![0u64; grow];
            nb.append(&mut self.bins);
            self.bins = nb;
            self.offset = idx;
        }
        let k = (idx - self.offset) as usize;
        if k >= self.bins.len() {
            self.bins.resize(k + 1, 0);
        }
        self.bins[k] += n;
        if self.bins.len() > MAX_BINS {
            // Collapse the lowest bins into one so the highest (the tail that matters) stay exact.
            let extra = self.bins.len() - MAX_BINS;
            let folded: u64 = self.bins[..=extra].iter().sum();
            self.bins.drain(..extra);
            self.bins[0] = folded;
            self.offset += extra as i32;
        }
    }

    fn total(&self) -> u64 {
        self.bins.iter().sum()
    }

    fn encode(&self, e: &mut Enc) {
        e.i64(self.offset as i64);
        e.len(self.bins.len());
        for b in &self.bins {
            e.u64(*b);
        }
    }

    fn decode(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let offset = i32::try_from(d.i64()?).map_err(|_| d.err("bin offset out of range"))?;
        let n = d.len(8)?;
        if n > MAX_BINS {
            return Err(d.err("too many bins"));
        }
        let mut bins = Vec::with_capacity(n);
        for _ in 0..n {
            bins.push(d.u64()?);
        }
        Ok(Store { offset, bins })
    }
}

impl Default for DDSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl DDSketch {
    pub fn new() -> Self {
        Self {
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    #[inline]
    fn index(x: f64) -> i32 {
        (x.ln() / gamma_ln()).ceil() as i32
    }

    fn value(idx: i32) -> f64 {
        let g = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        2.0 * (idx as f64 * gamma_ln()).exp() / (g + 1.0)
    }

    /// Adds a value; NaN and infinities are ignored.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x > MIN_MAGNITUDE {
            self.pos.add(Self::index(x), 1);
        } else if x < -MIN_MAGNITUDE {
            self.neg.add(Self::index(-x), 1);
        } else {
            self.zero += 1;
        }
    }

    pub fn merge(&mut self, other: &DDSketch) {
        for (k, n) in other.pos.bins.iter().enumerate() {
            if *n > 0 {
                self.pos.add(other.pos.offset + k as i32, *n);
            }
        }
        for (k, n) in other.neg.bins.iter().enumerate() {
            if *n > 0 {
                self.neg.add(other.neg.offset + k as i32, *n);
            }
        }
        self.zero += other.zero;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) by the lower rank `floor(q (n - 1))`, or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        // The extremes are tracked exactly.
        if rank == 0 {
            return Some(self.min);
        }
        if rank + 1 >= self.count {
            return Some(self.max);
        }
        let mut seen = 0u64;
        // Negative values, largest magnitude (smallest value) first.
        for (k, n) in self.neg.bins.iter().enumerate().rev() {
            seen += n;
            if seen > rank {
                let v = -Self::value(self.neg.offset + k as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0f64.clamp(self.min, self.max));
        }
        for (k, n) in self.pos.bins.iter().enumerate() {
            seen += n;
            if seen > rank {
                let v = Self::value(self.pos.offset + k as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn encode(&self, e: &mut Enc) {
        e.u64(self.count);
        e.u64(self.zero);
        e.f64(self.min);
        e.f64(self.max);
        self.pos.encode(e);
        self.neg.encode(e);
    }

    pub fn decode(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let count = d.u64()?;
        let zero = d.u64()?;
        let min = d.f64()?;
        let max = d.f64()?;
        let pos = Store::decode(d)?;
        let neg = Store::decode(d)?;
        if pos.total() + neg.total() + zero != count {
            return Err(d.err("sketch bins do not add up to its count"));
        }
        Ok(Self {
            pos,
            neg,
            zero,
            count,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn check(values: Vec<f64>) {
        let mut s = DDSketch::new();
        for v in &values {
            s.add(*v);
        }
        let mut sorted = values;
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&sorted, q);
            let got = s.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= RELATIVE_ACCURACY * want.abs() + 1e-12,
                "q={q}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn within_relative_error_on_random_data() {
        let mut rng = StdRng::seed_from_u64(7);
        // Log-normal-ish latencies, uniform, and mixed-sign data with zeros.
        check(
            (0..20_000)
                .map(|_| (rng.random::<f64>() * 8.0).exp())
                .collect(),
        );
        check((0..20_000).map(|_| rng.random_range(0.0..1000.0)).collect());
        check(
            (0..20_000)
                .map(|i| {
                    if i % 10 == 0 {
                        0.0
                    } else {
                        rng.random_range(-500.0..500.0)
                    }
                })
                .collect(),
        );
        check(vec![42.0]);
    }

    #[test]
    fn merge_equals_single_sketch() {
        let mut rng = StdRng::seed_from_u64(9);
        let vals: Vec<f64> = (0..5000).map(|_| rng.random_range(-10.0..1e6)).collect();
        let (mut a, mut b, mut all) = (DDSketch::new(), DDSketch::new(), DDSketch::new());
        for (i, v) in vals.iter().enumerate() {
            if i % 3 == 0 {
                a.add(*v)
            } else {
                b.add(*v)
            }
            all.add(*v);
        }
        a.merge(&b);
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
    }

    #[test]
    fn bounded_bins_and_codec() {
        let mut s = DDSketch::new();
        for e in -300..300 {
            s.add(10f64.powi(e / 10));
        }
        assert!(s.pos.bins.len() <= MAX_BINS);
        assert_eq!(s.quantile(1.0), Some(s.max));
        let mut e = Enc::default();
        s.encode(&mut e);
        let back = DDSketch::decode(&mut Dec::new(&e.buf)).unwrap();
        assert_eq!(back, s);
        assert!(DDSketch::decode(&mut Dec::new(&e.buf[..e.buf.len() - 1])).is_err());
        assert_eq!(DDSketch::new().quantile(0.5), None);
    }
}
