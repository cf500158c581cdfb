//! The JSON field scanner alone, against serde_json validating the same lines.
//!
//! `cargo bench -p ferry-processor --bench json`: 1,000,000 lines shaped like
//! `scripts/processor-real-path`'s (~200 bytes, ten fields), the two fields the sample pipeline
//! reads (`ts`, `level`) pulled out of each. Baseline in the same run: `serde_json` checking
//! each line into `IgnoredAny` (it validates everything and builds nothing). Fastest of five
//! passes each; prints a Markdown table for docs/performance.md.

#![allow(clippy::unwrap_used)]

use ferry_processor::parse::{FieldSlots, Parser};
use std::hint::black_box;
use std::time::Instant;

const LINES: usize = 1_000_000;
const PASSES: usize = 5;

fn lines() -> Vec<Vec<u8>> {
    let levels = ["info", "warn", "error", "debug"];
    (0..LINES)
        .map(|i| {
            format!(
                r#"{{"ts":"2026-12-04T10:{:02}:{:02}.{:03}Z","level":"{}","service":"svc-{}","host":"host-{}","msg":"request handled","latency_ms":{},"user":"u{}","path":"/api/v1/items/{}","status":200}}"#,
                (i / 20000) % 60,
                (i / 333) % 60,
                i % 1000,
                levels[i % 4],
                i % 17,
                i % 5,
                (i * 7919) % 1500,
                (i * 104_729) % 100_000,
                i % 977
            )
            .into_bytes()
        })
        .collect()
}

/// Fastest of `PASSES` passes over all lines, in seconds.
fn fastest(mut pass: impl FnMut() -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..PASSES {
        let t = Instant::now();
        black_box(pass());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let lines = lines();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let serde = fastest(|| {
        lines
            .iter()
            .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
            .count()
    });
    let parser = Parser::Json;
    let mut slots = FieldSlots::new(vec!["ts".into(), "level".into()]);
    let ours = fastest(|| {
        let mut n = 0;
        for l in &lines {
            parser.parse(l, &mut slots).unwrap();
            n += slots.get(l, 1).map_or(0, str::len) + slots.get(l, 0).map_or(0, str::len);
        }
        n
    });
    let row = |what: &str, secs: f64| {
        println!(
            "| {what} | {:.2} M | {:.0} MiB/s | {:.0} ns |",
            LINES as f64 / secs / 1e6,
            bytes as f64 / secs / (1 << 20) as f64,
            secs * 1e9 / LINES as f64
        );
    };
    println!(
        "{LINES} JSON lines of {:.0} bytes on average, fastest of {PASSES} passes\n",
        bytes as f64 / LINES as f64
    );
    println!("| scanner | lines/s | throughput | per line |");
    println!("| --- | ---: | ---: | ---: |");
    row(
        "serde_json into `IgnoredAny` (validates, builds nothing; baseline)",
        serde,
    );
    row(
        "ferry's scanner: structure checked, `ts` and `level` read",
        ours,
    );
    println!("\nferry / serde_json: {:.2}x", serde / ours);
}
