//! Top-K by frequency with Space-Saving (Metwally, Agrawal, El Abbadi 2005).
//!
//! Keeps `capacity = max(4k, 64)` counters. While there are no more distinct values than that
//! the counts are exact; after, a new value takes over the smallest counter and inherits its
//! count, so any reported count overestimates by at most N / capacity (N = values seen), and any
//! value more frequent than N / capacity is guaranteed to be kept.

use crate::codec::{Dec, DecodeError, Enc};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SpaceSaving {
    k: usize,
    capacity: usize,
    /// Invariant: at most `capacity` entries.
    counts: HashMap<String, u64>,
}

impl SpaceSaving {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            capacity: (4 * k).max(64),
            counts: HashMap::new(),
        }
    }

    pub fn add(&mut self, value: &str) {
        if let Some(c) = self.counts.get_mut(value) {
            *c += 1;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(value.to_owned(), 1);
            return;
        }
        // Evict the smallest counter (ties: the greatest value, for determinism).
        let victim = self
            .counts
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(v, c)| (v.clone(), *c));
        if let Some((v, c)) = victim {
            self.counts.remove(&v);
            self.counts.insert(value.to_owned(), c + 1);
        }
    }

    /// Adds `other`'s counters to these (a mergeable summary, Agarwal et al. 2012): counts of
    /// one value add up; beyond `capacity` counters, the smallest are dropped (ties: the
    /// greatest value), so the result is exact while the distinct values of both fit, and the
    /// order of merging does not change the counts that are kept.
    pub fn merge(&mut self, other: &SpaceSaving) {
        for (v, c) in &other.counts {
            *self.counts.entry(v.clone()).or_insert(0) += c;
        }
        if self.counts.len() > self.capacity {
            let mut all: Vec<(String, u64)> = self.counts.drain().collect();
            all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            all.truncate(self.capacity);
            self.counts = all.into_iter().collect();
        }
    }

    /// The `k` most frequent values, by count descending then value ascending.
    pub fn top(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.counts.iter().map(|(v, c)| (v.as_str(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all.truncate(self.k);
        all
    }

    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.k as u32);
        let mut all: Vec<_> = self.counts.iter().collect();
        all.sort();
        e.len(all.len());
        for (v, c) in all {
            e.str(v);
            e.u64(*c);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let k = d.u32()? as usize;
        if k == 0 || k > 1000 {
            return Err(d.err("bad top-k k"));
        }
        let mut s = SpaceSaving::new(k);
        let n = d.len(12)?;
        if n > s.capacity {
            return Err(d.err("too many top-k counters"));
        }
        for _ in 0..n {
            let v = d.str()?.to_owned();
            let c = d.u64()?;
            s.counts.insert(v, c);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_within_capacity_and_keeps_heavy_hitters() {
        let mut s = SpaceSaving::new(3);
        for (v, n) in [("a", 5), ("b", 9), ("c", 2), ("d", 9)] {
            for _ in 0..n {
                s.add(v);
            }
        }
        assert_eq!(s.top(), vec![("b", 9), ("d", 9), ("a", 5)]);
        // 10,000 distinct rare values and two heavy ones: the heavy ones stay on top.
        let mut s = SpaceSaving::new(2);
        for i in 0..10_000 {
            s.add(&format!("rare-{i}"));
            if i % 4 == 0 {
                s.add("hot");
            }
            if i % 5 == 0 {
                s.add("warm");
            }
        }
        let top = s.top();
        assert_eq!(top[0].0, "hot");
        assert_eq!(top[1].0, "warm");
        assert!(top[0].1 >= 2500 && top[0].1 <= 2500 + 12_500 / 64);
        let mut e = Enc::default();
        s.encode(&mut e);
        assert_eq!(SpaceSaving::decode(&mut Dec::new(&e.buf)).unwrap(), s);
    }
}
