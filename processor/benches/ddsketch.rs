//! The processor's DDSketch (`ferry_processor::sketch::ddsketch`, the `p50`/`p99`/`quantile`
//! aggregates: `sketches-ddsketch` behind a wrapper that keeps count, min and max exact; until
//! 2026-12-04 a sketch of our own) against `sketches-ddsketch` (DataDog's Rust port) used bare,
//! same relative accuracy (1 %) and bin limit (2048), in the same run: values added per second on one core, the cost of merging, the error
//! of p50/p99/p99.9 against the exact quantiles, and the size of the serialised state (what a
//! checkpoint and a repartition delta carry).
//!
//! `cargo bench -p ferry-processor --bench ddsketch` (about 10 s). Prints Markdown tables.

#![allow(clippy::unwrap_used)]

use ferry_processor::codec::Enc;
use ferry_processor::sketch::ddsketch::DDSketch;
use std::hint::black_box;
use std::time::Instant;

const VALUES: usize = 2_000_000;
const ROUNDS: usize = 3;

/// Latency-like values in milliseconds: mostly 1-50, a long tail to seconds. Seeded.
fn values() -> Vec<f64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..VALUES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            // exp of a uniform gives a log-uniform spread; a tenth of the values 100x slower.
            let v = (u * 4.0).exp();
            if x.is_multiple_of(10) { v * 100.0 } else { v }
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

fn theirs_config() -> sketches_ddsketch::Config {
    sketches_ddsketch::Config::new(0.01, 2048, 1e-9)
}

fn main() {
    let vals = values();
    let mut sorted = vals.clone();
    sorted.sort_by(f64::total_cmp);
    let exact = |q: f64| sorted[((q * (sorted.len() - 1) as f64).round()) as usize];

    let (t_ours, ours) = best(|| {
        let mut s = DDSketch::new();
        for &v in &vals {
            s.add(black_box(v));
        }
        s
    });
    let (t_theirs, theirs) = best(|| {
        let mut s = sketches_ddsketch::DDSketch::new(theirs_config());
        for &v in &vals {
            s.add(black_box(v));
        }
        s
    });

    // Merging: 1,000 sketches of 2,000 values each into one (what an owner does with partials).
    let chunks: Vec<&[f64]> = vals.chunks(VALUES / 1000).collect();
    let ours_parts: Vec<DDSketch> = chunks
        .iter()
        .map(|c| {
            let mut s = DDSketch::new();
            c.iter().for_each(|&v| s.add(v));
            s
        })
        .collect();
    let theirs_parts: Vec<sketches_ddsketch::DDSketch> = chunks
        .iter()
        .map(|c| {
            let mut s = sketches_ddsketch::DDSketch::new(theirs_config());
            c.iter().for_each(|&v| s.add(v));
            s
        })
        .collect();
    let (m_ours, merged_ours) = best(|| {
        let mut s = DDSketch::new();
        ours_parts.iter().for_each(|p| s.merge(p));
        s
    });
    let (m_theirs, merged_theirs) = best(|| {
        let mut s = sketches_ddsketch::DDSketch::new(theirs_config());
        theirs_parts.iter().for_each(|p| s.merge(p).unwrap());
        s
    });

    let mut enc = Enc { buf: Vec::new() };
    ours.encode(&mut enc);
    let ours_bytes = enc.buf.len();
    let theirs_bytes = theirs.to_java_bytes().len();

    println!(
        "{VALUES} latency-like values (log-uniform 1-55 ms, a tenth 100x slower), relative accuracy 1 %, at most 2048 bins, one thread, best of {ROUNDS}\n"
    );
    println!(
        "| sketch | adds/s (one core) | merge of 1,000 partials | state bytes | p50 error | p99 error | p99.9 error | merged p99 error |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let err = |got: f64, q: f64| format!("{:.3} %", (got - exact(q)).abs() / exact(q) * 100.0);
    println!(
        "| ferry (the library, wrapped) | {:.1} M | {:.2} ms | {ours_bytes} | {} | {} | {} | {} |",
        VALUES as f64 / t_ours / 1e6,
        m_ours * 1e3,
        err(ours.quantile(0.5).unwrap(), 0.5),
        err(ours.quantile(0.99).unwrap(), 0.99),
        err(ours.quantile(0.999).unwrap(), 0.999),
        err(merged_ours.quantile(0.99).unwrap(), 0.99),
    );
    println!(
        "| sketches-ddsketch 0.4 | {:.1} M | {:.2} ms | {theirs_bytes} (Java format) | {} | {} | {} | {} |",
        VALUES as f64 / t_theirs / 1e6,
        m_theirs * 1e3,
        err(theirs.quantile(0.5).unwrap().unwrap(), 0.5),
        err(theirs.quantile(0.99).unwrap().unwrap(), 0.99),
        err(theirs.quantile(0.999).unwrap().unwrap(), 0.999),
        err(merged_theirs.quantile(0.99).unwrap().unwrap(), 0.99),
    );
    println!(
        "\nadds, ferry's wrapper against the bare library: {:.2}x",
        t_theirs / t_ours
    );
}
