//! Mergeable sketches for the aggregates that cannot be exact in bounded memory.
//!
//! - [`ddsketch::DDSketch`]: DataDog's `sketches-ddsketch` with exact count, min and max;
//!   quantiles with 1% relative error (every returned quantile `v'` of a
//!   true quantile `v` has `|v' - v| <= 0.01 |v|`), mergeable, at most 2048 bins per sign.
//! - [`hll::HyperLogLog`]: distinct counts, precision 14 (16,384 registers, 1.04/√m = 0.81%
//!   standard error), sparse while small, with Ertl's improved estimator (no bias tables).
//! - [`topk::SpaceSaving`]: the most frequent values; exact while the number of distinct values
//!   stays within its capacity, otherwise counts overestimate by at most N / capacity.

pub mod ddsketch;
pub mod hll;
pub mod topk;

/// A fast, stable 64-bit hash (the same on every machine and version, since HyperLogLog states
/// are checkpointed and merged). Not DoS-resistant; key counts are bounded by `max_keys` instead.
#[inline]
pub fn hash64(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3 ^ (data.len() as u64).wrapping_mul(K);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    fmix64(h)
}

/// MurmurHash3's finalizer: every input bit affects every output bit.
#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A `Hasher` over [`hash64`] for the window's key maps (keys are short byte strings).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(bytes) ^ self.0.rotate_left(7);
    }
}

pub type KeyHashBuilder = std::hash::BuildHasherDefault<KeyHasher>;
