//! Our HyperLogLog (`ferry_processor::sketch::hll`, the `distinct` aggregate) against
//! `hyperloglogplus` (HyperLogLog++ with Google's bias correction and a sparse mode), the same
//! precision (14: 16,384 registers) and the same input, in the same run: values added per second
//! on one core, the cost of merging partials, the error of the estimate at several
//! cardinalities (small ones are where HyperLogLog implementations differ), and the size of the
//! serialised state (what a checkpoint and a repartition delta carry).
//!
//! `cargo bench -p ferry-processor --bench hll` (about 20 s). Prints Markdown tables.

#![allow(clippy::unwrap_used)]

use ferry_processor::codec::Enc;
use ferry_processor::sketch::hll::HyperLogLog as Ours;
use hyperloglogplus::{HyperLogLog as _, HyperLogLogPlus};
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::time::Instant;

const PRECISION: u8 = 14;
const VALUES: usize = 2_000_000;
const ROUNDS: usize = 3;

/// The same 64-bit hash for both (ours hashes the bytes with `sketch::hash64`; theirs is given a
/// hasher over the same function), so the comparison is of the sketches, not of the hashes.
#[derive(Clone, Default)]
struct Hash64(Vec<u8>);

impl Hasher for Hash64 {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn finish(&self) -> u64 {
        ferry_processor::sketch::hash64(&self.0)
    }
}

#[derive(Clone, Default, serde::Serialize)]
struct BuildHash64;

impl BuildHasher for BuildHash64 {
    type Hasher = Hash64;
    fn build_hasher(&self) -> Hash64 {
        Hash64(Vec::with_capacity(32))
    }
}

type Theirs = HyperLogLogPlus<[u8], BuildHash64>;

fn theirs() -> Theirs {
    HyperLogLogPlus::new(PRECISION, BuildHash64).unwrap()
}

/// `n` user-id-like values with `distinct` different ones, seeded.
fn values(n: usize, distinct: u64) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("user-{:012}", x % distinct).into_bytes()
        })
        .collect()
}

fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap())
}

fn main() {
    // Speed: 2,000,000 adds of values with 1,000,000 distinct.
    let vals = values(VALUES, 1_000_000);
    let (t_ours, ours) = best(|| {
        let mut s = Ours::new();
        for v in &vals {
            s.add_bytes(black_box(v));
        }
        s
    });
    let (t_theirs, mut theirs_all) = best(|| {
        let mut s = theirs();
        for v in &vals {
            s.insert(black_box(v.as_slice()));
        }
        s
    });
    let exact_all = {
        let mut v: Vec<&Vec<u8>> = vals.iter().collect();
        v.sort_unstable();
        v.dedup();
        v.len() as f64
    };

    // Merging: 1,000 partials of 2,000 values each (what an owner does with upstream deltas).
    let chunks: Vec<&[Vec<u8>]> = vals.chunks(VALUES / 1000).collect();
    let ours_parts: Vec<Ours> = chunks
        .iter()
        .map(|c| {
            let mut s = Ours::new();
            c.iter().for_each(|v| s.add_bytes(v));
            s
        })
        .collect();
    let theirs_parts: Vec<Theirs> = chunks
        .iter()
        .map(|c| {
            let mut s = theirs();
            c.iter().for_each(|v| s.insert(v.as_slice()));
            s
        })
        .collect();
    let (m_ours, merged_ours) = best(|| {
        let mut s = Ours::new();
        ours_parts.iter().for_each(|p| s.merge(p));
        s
    });
    let (m_theirs, mut merged_theirs) = best(|| {
        let mut s = theirs();
        theirs_parts.iter().for_each(|p| s.merge(p).unwrap());
        s
    });

    // State size: ours as checkpointed; theirs through serde (JSON: the crate has no binary
    // format of its own), dense (1 M distinct) and sparse (one partial of 2,000 values).
    let mut enc = Enc { buf: Vec::new() };
    ours.encode(&mut enc);
    let ours_dense = enc.buf.len();
    let mut enc = Enc { buf: Vec::new() };
    ours_parts[0].encode(&mut enc);
    let ours_sparse = enc.buf.len();
    let theirs_dense = serde_json::to_vec(&theirs_all).unwrap().len();
    let theirs_sparse = serde_json::to_vec(&theirs_parts[0]).unwrap().len();

    println!(
        "{VALUES} values, 1,000,000 distinct, precision {PRECISION} (16,384 registers), the same 64-bit hash, one thread, best of {ROUNDS}\n"
    );
    println!(
        "| sketch | adds/s (one core) | merge of 1,000 partials | error at 1 M distinct | merged error | state bytes, dense | state bytes, 2,000 values |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let err = |got: f64, exact: f64| format!("{:+.3} %", (got - exact) / exact * 100.0);
    println!(
        "| ours | {:.1} M | {:.2} ms | {} | {} | {ours_dense} | {ours_sparse} |",
        VALUES as f64 / t_ours / 1e6,
        m_ours * 1e3,
        err(ours.estimate(), exact_all),
        err(merged_ours.estimate(), exact_all),
    );
    println!(
        "| hyperloglogplus 0.4 | {:.1} M | {:.2} ms | {} | {} | {theirs_dense} (serde JSON) | {theirs_sparse} (serde JSON) |",
        VALUES as f64 / t_theirs / 1e6,
        m_theirs * 1e3,
        err(theirs_all.count(), exact_all),
        err(merged_theirs.count(), exact_all),
    );

    // Accuracy across cardinalities: mean absolute relative error over 20 seeds each.
    println!("\n| distinct values | ours: mean abs error | hyperloglogplus: mean abs error |");
    println!("| ---: | ---: | ---: |");
    for distinct in [100u64, 1_000, 10_000, 100_000, 1_000_000] {
        let (mut e_ours, mut e_theirs) = (0.0, 0.0);
        let seeds = 20;
        for seed in 0..seeds {
            let mut o = Ours::new();
            let mut t = theirs();
            for i in 0..distinct {
                let v = format!("s{seed}-v{i}").into_bytes();
                o.add_bytes(&v);
                t.insert(v.as_slice());
            }
            e_ours += (o.estimate() - distinct as f64).abs() / distinct as f64;
            e_theirs += (t.count() - distinct as f64).abs() / distinct as f64;
        }
        println!(
            "| {distinct} | {:.3} % | {:.3} % |",
            e_ours / seeds as f64 * 100.0,
            e_theirs / seeds as f64 * 100.0
        );
    }
    println!(
        "\nadds, ours against hyperloglogplus: {:.2}x",
        t_theirs / t_ours
    );
}
