//! Records per second per core through a pipeline, next to the cost of just touching every record.
//!
//! `cargo bench -p ferry-processor --bench throughput` (one thread; ~200-byte JSON lines; event
//! time from an RFC 3339 field; 1-minute tumbling windows keyed by `level`). Prints a Markdown
//! table for docs/performance.md.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ferry_core::record::Record;
use ferry_processor::config::ProcessorConfig;
use ferry_processor::merge::{Merge, Part};
use ferry_processor::pipeline::{PartitionId, Pipeline};
use ferry_processor::time::format_rfc3339;
use std::hint::black_box;
use std::time::Instant;

const RECORDS: usize = 1_000_000;
const BATCH: usize = 1_000;
const ROUNDS: usize = 3;

fn lines() -> (Vec<Record>, usize) {
    let levels = ["info", "info", "info", "warn", "error", "debug"];
    let paths = [
        "/api/v1/orders",
        "/api/v1/users",
        "/healthz",
        "/api/v1/cart",
    ];
    let mut buf = Vec::with_capacity(RECORDS * 210);
    let mut ends = Vec::with_capacity(RECORDS);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..RECORDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ts = 1_767_225_600_000i64 + i as i64 * 3; // ~333 records per second of event time
        let line = format!(
            r#"{{"ts":"{}","level":"{}","service":"checkout","host":"web-{:02}","latency_ms":{}.{},"user":"user-{}","path":"{}/{}","status":{},"msg":"request completed"}}"#,
            format_rfc3339(ts),
            levels[(x % 6) as usize],
            x % 32,
            x % 2000,
            x % 10,
            x % 50_000,
            paths[(x >> 8) as usize % 4],
            x % 100_000,
            [200, 200, 201, 404, 500][(x >> 16) as usize % 5],
        );
        buf.extend_from_slice(line.as_bytes());
        ends.push(buf.len());
    }
    let bytes = buf.len();
    let all = Bytes::from(buf);
    let mut start = 0;
    let records = ends
        .into_iter()
        .map(|end| {
            let r = Record::from_line(all.slice(start..end));
            start = end;
            r
        })
        .collect();
    (records, bytes)
}

fn pipeline(aggregates: &str) -> Pipeline {
    let yaml = format!(
        r#"
pipelines:
  - name: bench
    source: {{topics: [app]}}
    event_time: {{field: ts, format: rfc3339}}
    group_by: [level]
    window: {{tumbling: 1m, allowed_lateness: 1s}}
    aggregates: {aggregates}
"#
    );
    let cfg: ProcessorConfig =
        ferry_core::config::load_str(&yaml, "bench.yaml".as_ref()).expect("bench config");
    Pipeline::new(cfg.pipelines[0].clone())
}

/// The records spread over `n` input partitions in batches of `BATCH` (round-robin, as the
/// collector spreads batches without a key), one pipeline instance per partition. `merged`:
/// the instances are partials of one [`Merge`], advanced after every batch as the runner does
/// after every poll; otherwise each instance emits its own (partial) results.
fn run_partitioned(records: &[Record], aggregates: &str, n: usize, merged: bool) -> (f64, usize) {
    measure(|| {
        let ids: Vec<PartitionId> = (0..n as u32).map(|p| PartitionId::new("app", p)).collect();
        let mut parts: Vec<Pipeline> = (0..n)
            .map(|_| {
                let p = pipeline(aggregates);
                if merged { p.into_partial() } else { p }
            })
            .collect();
        let mut merge = Merge::new(pipeline(aggregates).config().clone());
        let mut next = vec![0u64; n];
        let mut out = Vec::new();
        let mut emitted = 0;
        for (i, chunk) in records.chunks(BATCH).enumerate() {
            let p = i % n;
            parts[p].process_batch(&ids[p], next[p], chunk, 0, 0, &mut out);
            next[p] += chunk.len() as u64;
            if merged {
                let mut view: Vec<Part<'_>> = ids
                    .iter()
                    .zip(parts.iter_mut())
                    .map(|(id, pipeline)| Part {
                        id,
                        pipeline,
                        since_ms: 0,
                    })
                    .collect();
                merge.advance(0, &mut view, &mut out);
            }
            emitted += out.len();
            out.clear();
        }
        black_box(&out);
        emitted
    })
}

/// The repartition path without the network: `n` upstream instances (one per input
/// partition, batches round-robin) flush their deltas every `FLUSH_BATCHES` batches of theirs
/// into `n` in-memory repartition logs (lines encoded as they are posted); `n` owners decode
/// each line, merge it into its upstream's part and advance their own merge, as the runner does.
/// Leaves out the HTTP posts, the collector's storage and the checkpoint writes.
fn run_repartitioned(records: &[Record], aggregates: &str, n: usize) -> (f64, usize) {
    use ferry_processor::repartition;
    const FLUSH_BATCHES: usize = 10;
    measure(|| {
        let ids: Vec<PartitionId> = (0..n as u32).map(|p| PartitionId::new("app", p)).collect();
        let cfg = pipeline(aggregates).config().clone();
        let mut ups: Vec<Pipeline> = (0..n)
            .map(|_| pipeline(aggregates).into_partial())
            .collect();
        type Parts = Vec<(PartitionId, Pipeline)>;
        let mut owners: Vec<(Merge, Parts)> = (0..n as u32)
            .map(|r| {
                let parts = ids
                    .iter()
                    .map(|id| {
                        (
                            repartition::part_id(r, id),
                            Pipeline::new(cfg.clone()).into_partial(),
                        )
                    })
                    .collect();
                (Merge::new(cfg.clone()), parts)
            })
            .collect();
        let ops = owners[0].0.ops().to_vec();
        let mut next = vec![0u64; n];
        let mut out = Vec::new();
        let mut emitted = 0;
        let batches = records.chunks(BATCH).count();
        for (i, chunk) in records.chunks(BATCH).enumerate() {
            let p = i % n;
            ups[p].process_batch(&ids[p], next[p], chunk, 0, 0, &mut out);
            next[p] += chunk.len() as u64;
            let last = i + 1 == batches;
            if !(i / n + 1).is_multiple_of(FLUSH_BATCHES) && !last {
                continue;
            }
            let flushing: Vec<usize> = if last { (0..n).collect() } else { vec![p] };
            for p in flushing {
                let outbox = repartition::flush(&mut ups[p], &ids[p], next[p], n as u32);
                for (t, lines) in &outbox.lines {
                    let (merge, parts) = &mut owners[*t as usize];
                    for l in lines {
                        let line = repartition::decode_line(l, &ops).unwrap();
                        repartition::absorb(
                            &mut parts[line.upstream.partition as usize].1,
                            line,
                            0,
                        );
                    }
                    let mut view: Vec<Part<'_>> = parts
                        .iter_mut()
                        .map(|(id, pipeline)| Part {
                            id,
                            pipeline,
                            since_ms: 0,
                        })
                        .collect();
                    merge.advance(0, &mut view, &mut out);
                }
            }
            emitted += out.len();
            out.clear();
        }
        black_box(&out);
        emitted
    })
}

/// Best of `ROUNDS` runs of `f` over all records; returns records per second.
fn measure(mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut check = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        check = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (RECORDS as f64 / best, check)
}

fn run_pipeline(records: &[Record], aggregates: &str) -> (f64, usize) {
    measure(|| {
        let mut p = pipeline(aggregates);
        let part = PartitionId::new("app", 0);
        let mut out = Vec::new();
        let mut emitted = 0;
        for (i, chunk) in records.chunks(BATCH).enumerate() {
            p.process_batch(&part, (i * BATCH) as u64, chunk, 0, 0, &mut out);
            emitted += out.len();
            out.clear();
        }
        p.drain(&mut out);
        black_box(&out);
        emitted + out.len()
    })
}

fn main() {
    let (records, bytes) = lines();
    let avg = bytes as f64 / RECORDS as f64;
    println!("{RECORDS} records, {avg:.0} bytes each on average, one thread, best of {ROUNDS}\n");
    let mut rows: Vec<(&str, f64, usize)> = Vec::new();

    let (rate, n) = measure(|| {
        let mut sum = 0usize;
        for r in &records {
            sum += black_box(r.line.len()) + r.line[r.line.len() / 2] as usize;
        }
        black_box(sum)
    });
    rows.push((
        "iterate records (read each line's length and one byte): the limit",
        rate,
        n,
    ));

    let (rate, n) = measure(|| {
        let mut counts = std::collections::HashMap::<String, u64>::new();
        for r in &records {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.line)
                && let Some(l) = v.get("level").and_then(|l| l.as_str())
            {
                *counts.entry(l.to_owned()).or_default() += 1;
            }
        }
        black_box(counts.len())
    });
    rows.push((
        "serde_json::Value parse + count by level, no windows (reference)",
        rate,
        n,
    ));

    let count = "[{name: count, op: count}]";
    let (rate, n) = run_pipeline(&records, count);
    rows.push(("pipeline: JSON + count by level, 1m tumbling", rate, n));
    let (rate, n) = run_partitioned(&records, count, 4, false);
    rows.push((
        "4 input partitions, each its own results (partials, not merged)",
        rate,
        n,
    ));
    let (rate, n) = run_partitioned(&records, count, 4, true);
    rows.push((
        "4 input partitions, partials merged: one result per window and key",
        rate,
        n,
    ));
    let (rate, n) = run_repartitioned(&records, count, 4);
    rows.push((
        "4 input partitions, repartitioned (deltas encoded, decoded, merged by 4 owners; no network)",
        rate,
        n,
    ));
    let p99 = "[{name: count, op: count}, {name: p99, op: percentile, field: latency_ms, q: 0.99}]";
    let (rate, n) = run_pipeline(&records, p99);
    rows.push(("pipeline: + p99 of latency_ms (DDSketch)", rate, n));
    let distinct = "[{name: count, op: count}, {name: p99, op: percentile, field: latency_ms, q: 0.99}, {name: users, op: distinct, field: user}]";
    let (rate, n) = run_pipeline(&records, distinct);
    rows.push(("pipeline: + distinct users (HyperLogLog)", rate, n));

    println!("| case | records/s (one core) | MB/s | results |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, rate, n) in rows {
        println!(
            "| {name} | {:.2} M | {:.0} | {n} |",
            rate / 1e6,
            rate * avg / 1e6
        );
    }
}
