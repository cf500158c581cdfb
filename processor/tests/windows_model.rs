//! Window results against a naive recomputation, over random event streams: several partitions,
//! out-of-order and late events, idle partitions, malformed lines, tumbling and hopping windows,
//! a small `max_keys`; and a crash at a random point (snapshot, keep going, lose that, restore,
//! replay from before the snapshot) giving exactly the uninterrupted run's results.

#![allow(clippy::unwrap_used)]

use ferry_core::record::Record;
use ferry_processor::config::ProcessorConfig;
use ferry_processor::pipeline::{Emission, PartitionId, Pipeline, WindowResult};
use ferry_processor::time::format_rfc3339;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const BASE_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

#[derive(Debug, Clone)]
enum Step {
    Record {
        partition: u32,
        /// Event time relative to the stream's running clock (negative: out of order / late).
        jitter_ms: i64,
        level: Option<u8>,
        v: i32,
        u: u8,
        malformed: bool,
        /// Processing time that passes before this step.
        wait_ms: i64,
    },
    Tick {
        wait_ms: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u32..3, -2500i64..400, prop::option::weighted(0.9, 0u8..4), -1000i32..1000, 0u8..30, prop::bool::weighted(0.03), 0i64..150)
            .prop_map(|(partition, jitter_ms, level, v, u, malformed, wait_ms)| Step::Record {
                partition, jitter_ms, level, v, u, malformed, wait_ms,
            }),
        1 => (0i64..3000).prop_map(|wait_ms| Step::Tick { wait_ms }),
    ]
}

#[derive(Debug, Clone)]
struct Params {
    size_ms: i64,
    advance_ms: i64,
    lateness_ms: i64,
    grace_ms: i64,
    idle_ms: i64,
    max_keys: usize,
}

fn params() -> impl Strategy<Value = Params> {
    (
        prop_oneof![
            Just((1000i64, 1000i64)),
            Just((2000, 500)),
            Just((1500, 1500)),
            Just((3000, 1000))
        ],
        0i64..800,
        0i64..600,
        300i64..4000,
        prop_oneof![Just(2usize), Just(100)],
    )
        .prop_map(
            |((size_ms, advance_ms), lateness_ms, grace_ms, idle_ms, max_keys)| Params {
                size_ms,
                advance_ms,
                lateness_ms,
                grace_ms,
                idle_ms,
                max_keys,
            },
        )
}

fn config(p: &Params) -> ferry_processor::config::PipelineConfig {
    let window = if p.size_ms == p.advance_ms {
        format!("tumbling: {}ms", p.size_ms)
    } else {
        format!(
            "hopping: {{size: {}ms, advance: {}ms}}",
            p.size_ms, p.advance_ms
        )
    };
    let yaml = format!(
        r#"
pipelines:
  - name: model
    source: {{topics: [t]}}
    event_time: {{field: ts}}
    group_by: [level]
    window:
      {window}
      allowed_lateness: {}ms
      grace: {}ms
      idle_timeout: {}ms
    max_keys: {}
    aggregates:
      - {{name: count, op: count}}
      - {{name: sum, op: sum, field: v}}
      - {{name: min, op: min, field: v}}
      - {{name: max, op: max, field: v}}
      - {{name: avg, op: avg, field: v}}
      - {{name: p90, op: percentile, field: v, q: 0.9}}
      - {{name: users, op: distinct, field: u}}
      - {{name: top, op: topk, field: u, k: 2}}
"#,
        p.lateness_ms, p.grace_ms, p.idle_ms, p.max_keys
    );
    let cfg: ProcessorConfig =
        ferry_core::config::load_str(&yaml, "model.yaml".as_ref()).expect("model config");
    cfg.pipelines[0].clone()
}

/// One input as both the pipeline and the model see it.
#[derive(Debug, Clone)]
enum Input {
    Record {
        partition: u32,
        offset: u64,
        line: String,
        event_ms: i64,
        level: Option<String>,
        v: i32,
        u: String,
        malformed: bool,
        now_ms: i64,
    },
    Tick {
        now_ms: i64,
    },
}

fn inputs(steps: &[Step]) -> Vec<Input> {
    let mut clock = BASE_MS;
    let mut now = 0i64;
    let mut offsets = [0u64; 3];
    steps
        .iter()
        .map(|s| match *s {
            Step::Record {
                partition,
                jitter_ms,
                level,
                v,
                u,
                malformed,
                wait_ms,
            } => {
                now += wait_ms;
                clock += 97;
                let event_ms = clock + jitter_ms;
                let level =
                    level.map(|l| ["debug", "info", "warn", "error"][l as usize].to_owned());
                let u = format!("user-{u}");
                let mut obj = json!({"ts": format_rfc3339(event_ms), "v": v, "u": u});
                if let Some(l) = &level {
                    obj["level"] = json!(l);
                }
                let line = if malformed {
                    format!("{{\"ts\": \"{}\", broken", format_rfc3339(event_ms))
                } else {
                    obj.to_string()
                };
                let offset = offsets[partition as usize];
                offsets[partition as usize] += 1;
                Input::Record {
                    partition,
                    offset,
                    line,
                    event_ms,
                    level,
                    v,
                    u,
                    malformed,
                    now_ms: now,
                }
            }
            Step::Tick { wait_ms } => {
                now += wait_ms;
                Input::Tick { now_ms: now }
            }
        })
        .collect()
}

fn feed(p: &mut Pipeline, input: &Input, out: &mut Vec<Emission>) {
    match input {
        Input::Record {
            partition,
            offset,
            line,
            now_ms,
            ..
        } => p.process(
            &PartitionId::new("t", *partition),
            *offset,
            &Record::from_line(line.clone()),
            0,
            *now_ms,
            out,
        ),
        Input::Tick { now_ms } => p.advance_time(*now_ms, out),
    }
}

fn results(out: &[Emission]) -> Vec<WindowResult> {
    out.iter()
        .filter_map(|e| match e {
            Emission::Result(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// The raw values (v, u) of one key in one window.
type Values = Vec<(i32, String)>;

/// The naive model: raw values per (window, key), the watermark recomputed from scratch.
#[derive(Default)]
struct Model {
    /// partition → (max event time, last active)
    partitions: BTreeMap<u32, (Option<i64>, i64)>,
    watermark: Option<i64>,
    /// window start → key → values (v, u)
    windows: BTreeMap<i64, BTreeMap<Option<String>, Values>>,
    evicted: BTreeMap<i64, u64>,
    late: u64,
    emitted: Vec<(i64, Option<String>, Values, u64)>,
}

impl Model {
    fn closed(&self, p: &Params, start: i64) -> bool {
        self.watermark
            .is_some_and(|wm| start + p.size_ms + p.grace_ms <= wm)
    }

    fn step(&mut self, p: &Params, input: &Input) {
        let now = match input {
            Input::Record {
                partition,
                event_ms,
                level,
                v,
                u,
                malformed,
                now_ms,
                ..
            } => {
                let e = self.partitions.entry(*partition).or_insert((None, *now_ms));
                e.1 = e.1.max(*now_ms);
                if !malformed {
                    // Every window whose range holds the event time.
                    let mut missed = false;
                    let first = (event_ms - p.size_ms).div_euclid(p.advance_ms) * p.advance_ms;
                    let mut s = first;
                    while s <= *event_ms {
                        if s <= *event_ms && *event_ms < s + p.size_ms {
                            if self.closed(p, s) {
                                missed = true;
                            } else {
                                let w = self.windows.entry(s).or_default();
                                if w.contains_key(level) || w.len() < p.max_keys {
                                    w.entry(level.clone()).or_default().push((*v, u.clone()));
                                } else {
                                    *self.evicted.entry(s).or_default() += 1;
                                }
                            }
                        }
                        s += p.advance_ms;
                    }
                    if missed {
                        self.late += 1;
                    }
                    let e = self.partitions.entry(*partition).or_insert((None, *now_ms));
                    e.0 = Some(e.0.map_or(*event_ms, |m: i64| m.max(*event_ms)));
                }
                *now_ms
            }
            Input::Tick { now_ms } => *now_ms,
        };
        let wms: Vec<(i64, bool)> = self
            .partitions
            .values()
            .filter_map(|(max, last)| max.map(|m| (m - p.lateness_ms, now - last < p.idle_ms)))
            .collect();
        let active = wms.iter().filter(|w| w.1).map(|w| w.0).min();
        let candidate = active.or_else(|| wms.iter().map(|w| w.0).max());
        if let Some(c) = candidate
            && self.watermark.is_none_or(|wm| c > wm)
        {
            self.watermark = Some(c);
            let starts: Vec<i64> = self.windows.keys().copied().collect();
            for s in starts {
                if self.closed(p, s) {
                    let w = self.windows.remove(&s).unwrap_or_default();
                    let ev = self.evicted.get(&s).copied().unwrap_or(0);
                    for (k, vals) in w {
                        self.emitted.push((s, k, vals, ev));
                    }
                }
            }
        }
    }
}

fn check_against_model(
    p: &Params,
    got: &[WindowResult],
    model: &Model,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), model.emitted.len(), "number of results");
    for (r, (start, key, vals, evicted)) in got.iter().zip(&model.emitted) {
        prop_assert_eq!(r.window_start_ms, *start);
        prop_assert_eq!(r.window_end_ms, start + p.size_ms);
        prop_assert_eq!(&r.key[0].1, key);
        prop_assert_eq!(r.evicted, *evicted);
        let get = |name: &str| {
            r.values
                .iter()
                .find(|(n, _)| &**n == name)
                .map(|(_, v)| v.clone())
        };
        let n = vals.len();
        let sum: f64 = vals.iter().map(|(v, _)| *v as f64).sum();
        prop_assert_eq!(get("count"), Some(json!(n)));
        prop_assert_eq!(get("sum"), Some(json!(sum)));
        prop_assert_eq!(
            get("min"),
            Some(json!(vals.iter().map(|(v, _)| *v).min().map(f64::from)))
        );
        prop_assert_eq!(
            get("max"),
            Some(json!(vals.iter().map(|(v, _)| *v).max().map(f64::from)))
        );
        prop_assert_eq!(get("avg"), Some(json!(sum / n as f64)));
        let mut sorted: Vec<i32> = vals.iter().map(|(v, _)| *v).collect();
        sorted.sort();
        let want = sorted[(0.9 * (n - 1) as f64).floor() as usize] as f64;
        let p90 = get("p90").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        prop_assert!(
            (p90 - want).abs() <= 0.01 * want.abs() + 1e-9,
            "p90 {} vs {}",
            p90,
            want
        );
        let mut distinct: Vec<&String> = vals.iter().map(|(_, u)| u).collect();
        distinct.sort();
        distinct.dedup();
        let users = get("users").and_then(|v| v.as_f64()).unwrap_or(-1.0);
        let d = distinct.len() as f64;
        prop_assert!(
            (users - d).abs() <= (0.03 * d).max(1.0),
            "distinct {} vs {}",
            users,
            d
        );
        let mut counts: BTreeMap<&String, u64> = BTreeMap::new();
        for (_, u) in vals {
            *counts.entry(u).or_default() += 1;
        }
        let mut top: Vec<(&String, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        top.truncate(2);
        let want_top: Value = top
            .iter()
            .map(|(v, c)| json!({"value": v, "count": c}))
            .collect();
        prop_assert_eq!(get("top"), Some(want_top));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn windows_match_naive_recomputation_and_survive_a_crash(
        p in params(),
        steps in prop::collection::vec(step(), 1..250),
        crash in any::<prop::sample::Index>(),
        lost in 0usize..20,
        rewind in 0usize..20,
    ) {
        let cfg = config(&p);
        let inputs = inputs(&steps);

        // Uninterrupted run, then drain what is still open (the model does the same at the end).
        let mut whole = Pipeline::new(cfg.clone());
        let mut out = Vec::new();
        let mut model = Model::default();
        for i in &inputs {
            feed(&mut whole, i, &mut out);
            model.step(&p, i);
        }
        let uninterrupted = results(&out);
        check_against_model(&p, &uninterrupted, &model)?;
        prop_assert_eq!(whole.stats().late, model.late);

        // Crash run: snapshot after `k` inputs, keep going a little, lose it, restore, and
        // re-deliver from a point before the snapshot (the source replays from committed offsets,
        // possibly older than the snapshot's): nothing may be counted twice.
        let k = crash.index(inputs.len() + 1);
        let mut first = Pipeline::new(cfg.clone());
        let mut kept = Vec::new();
        for i in &inputs[..k] {
            feed(&mut first, i, &mut kept);
        }
        let snap = first.snapshot();
        let mut lost_out = Vec::new();
        for i in inputs.iter().skip(k).take(lost) {
            feed(&mut first, i, &mut lost_out);
        }
        drop(first);
        let mut restored = Pipeline::restore(cfg.clone(), &snap).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(restored.snapshot(), snap);
        for (idx, i) in inputs.iter().enumerate().skip(k.saturating_sub(rewind)) {
            // Records from before the snapshot are re-delivered and must be skipped; ticks from
            // before it are not replayed (processing time does not go back).
            if idx >= k || matches!(i, Input::Record { .. }) {
                feed(&mut restored, i, &mut kept);
            }
        }
        prop_assert_eq!(results(&kept), uninterrupted);
        prop_assert_eq!(restored.stats().records_in, whole.stats().records_in);
        prop_assert_eq!(restored.offsets(), whole.offsets());
    }
}
