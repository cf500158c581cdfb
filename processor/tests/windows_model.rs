//! Window results against a naive recomputation, over random event streams: several partitions,
//! out-of-order and late events, idle partitions, malformed lines, tumbling and hopping windows,
//! a small `max_keys`; and a crash at a random point (snapshot, keep going, lose that, restore,
//! replay from before the snapshot) giving exactly the uninterrupted run's results.
//!
//! `merged`: 1–8 input partitions, 1–3 members, one hot key or many, partials merged (`merge.rs`)
//! with checkpoint rounds and crashes that interrupt a round (so the partitions' checkpoints are
//! from different moments): every (window, key) comes out once, equal to the naive aggregate.

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

// ---------------------------------------------------------------------------------------------
// Merged partitions: one exact result per (window, key) whatever the partitioning, across a
// crash that leaves the partitions' checkpoints from different moments.

/// Result lines as (window start, key) → every (count, sum) printed for it.
fn printed<'a>(
    lines: impl Iterator<Item = &'a String>,
) -> BTreeMap<(i64, String), Vec<(u64, i64)>> {
    let mut got: BTreeMap<(i64, String), Vec<(u64, i64)>> = BTreeMap::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let start =
            ferry_processor::time::parse_rfc3339(v["window_start"].as_str().unwrap()).unwrap();
        got.entry((start, v["key"]["k"].as_str().unwrap().to_owned()))
            .or_default()
            .push((
                v["count"].as_u64().unwrap(),
                v["sum"].as_f64().unwrap() as i64,
            ));
    }
    got
}

mod merged {
    use super::*;
    use ferry_processor::merge::{Merge, Note, Part, unwrap_checkpoint, wrap_checkpoint};
    use ferry_processor::sink::FileMark;

    pub(super) const WINDOW_MS: i64 = 1000;
    pub(super) const LATENESS_MS: i64 = 500;

    pub(super) fn config() -> ferry_processor::config::PipelineConfig {
        let yaml = format!(
            r#"
pipelines:
  - name: merged
    source: {{topics: [t]}}
    event_time: {{field: ts, format: unix_ms}}
    group_by: [k]
    window: {{tumbling: {WINDOW_MS}ms, allowed_lateness: {LATENESS_MS}ms, idle_timeout: 1h}}
    aggregates:
      - {{name: count, op: count}}
      - {{name: sum, op: sum, field: v}}
      - {{name: users, op: distinct, field: v}}
"#
        );
        let cfg: ProcessorConfig =
            ferry_core::config::load_str(&yaml, "merged.yaml".as_ref()).expect("config");
        cfg.pipelines[0].clone()
    }

    #[derive(Debug, Clone)]
    struct Case {
        partitions: u32,
        members: u32,
        hot_key: bool,
        /// (key choice, value, event time advance, disorder) per record.
        records: Vec<(u16, u8, u8, u16)>,
        /// Choices of which partition's next record is read (an interleaving).
        order: Vec<u16>,
        /// Steps between checkpoint rounds.
        every: usize,
        /// (member, step, partitions stored in the interrupted round) of each crash.
        crashes: Vec<(u32, usize, u32)>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1u32..=8, 1u32..=3, any::<bool>(), 1usize..400).prop_flat_map(
            |(partitions, members, hot_key, n)| {
                let members = members.min(partitions);
                (
                    prop::collection::vec(
                        (any::<u16>(), any::<u8>(), 0u8..40, 0u16..LATENESS_MS as u16),
                        n,
                    ),
                    prop::collection::vec(any::<u16>(), n),
                    3usize..60,
                    prop::collection::vec((0..members, 0..n + 1, 0..=partitions), 0..3),
                )
                    .prop_map(move |(records, order, every, crashes)| Case {
                        partitions,
                        members,
                        hot_key,
                        records,
                        order,
                        every,
                        crashes,
                    })
            },
        )
    }

    /// One processor member: the partitions it owns, their partials, its merge and its file.
    struct Member {
        index: u32,
        owned: Vec<u32>,
        parts: BTreeMap<u32, Pipeline>,
        merge: Merge,
        file: Vec<String>,
    }

    fn pid(p: u32) -> PartitionId {
        PartitionId::new("t", p)
    }

    impl Member {
        fn new(index: u32, owned: Vec<u32>) -> Self {
            Self {
                index,
                owned,
                parts: BTreeMap::new(),
                merge: Merge::new(config()),
                file: Vec::new(),
            }
        }

        /// Starts (or restarts after a crash): notes from every stored checkpoint, the file cut
        /// back to its newest mark, each owned partition restored. Returns where each reads on.
        fn start(&mut self, store: &BTreeMap<u32, (u64, Vec<u8>)>) -> BTreeMap<u32, u64> {
            let mut newest = None;
            for (_, blob) in store.values() {
                let (note, _) = unwrap_checkpoint(blob).unwrap();
                for (p, s) in note.emitted {
                    self.merge.learn(p, s);
                }
                for m in note.files {
                    if m.dev == u64::from(self.index) {
                        newest = newest.max(Some(m.len));
                    }
                }
            }
            if let Some(len) = newest {
                self.file.truncate(len as usize);
            }
            let mut next = BTreeMap::new();
            for &p in &self.owned {
                let (offset, pipeline) = match store.get(&p) {
                    Some((offset, blob)) => {
                        let (_, snap) = unwrap_checkpoint(blob).unwrap();
                        (*offset, Pipeline::restore(config(), snap).unwrap())
                    }
                    None => (0, Pipeline::new(config())),
                };
                self.parts.insert(p, pipeline.into_partial());
                next.insert(p, offset);
            }
            next
        }

        fn feed(&mut self, p: u32, offset: u64, line: &str) {
            let mut out = Vec::new();
            let pipeline = self.parts.get_mut(&p).unwrap();
            pipeline.process(
                &pid(p),
                offset,
                &Record::from_line(line.to_owned()),
                0,
                0,
                &mut out,
            );
            assert!(out.is_empty(), "a partial emitted {out:?}");
            let ids: Vec<PartitionId> = self.parts.keys().map(|p| pid(*p)).collect();
            let mut parts: Vec<Part<'_>> = ids
                .iter()
                .zip(self.parts.values_mut())
                .map(|(id, pipeline)| Part {
                    id,
                    pipeline,
                    since_ms: 0,
                })
                .collect();
            self.merge.advance(0, &mut parts, &mut out);
            for e in out {
                if let Emission::Result(r) = e {
                    self.file.push(r.to_json());
                }
            }
        }

        /// A checkpoint round: the file synced, then each partition stored in turn; only the
        /// first `only` of them if the round is cut short by a crash.
        fn checkpoint(&self, store: &mut BTreeMap<u32, (u64, Vec<u8>)>, only: usize) {
            let note = Note {
                emitted: self.merge.emitted().clone(),
                files: vec![FileMark {
                    dev: u64::from(self.index),
                    ino: 1,
                    len: self.file.len() as u64,
                }],
            };
            for (p, pipeline) in self.parts.iter().take(only) {
                let offset = pipeline
                    .offsets()
                    .into_iter()
                    .find(|(i, _)| *i == pid(*p))
                    .map_or(0, |(_, o)| o);
                store.insert(*p, (offset, wrap_checkpoint(&note, &pipeline.snapshot())));
            }
        }
    }

    fn run(c: &Case) -> Result<(), TestCaseError> {
        let keys = |choice: u16| -> String {
            if c.hot_key && !choice.is_multiple_of(10) {
                "hot".to_owned()
            } else {
                format!("k{}", choice % if c.hot_key { 20 } else { 300 })
            }
        };
        // The partition logs. With several members, the topic is partitioned by key (the only
        // way several members give one result per key and window without a repartition).
        let mut logs: Vec<Vec<String>> = vec![Vec::new(); c.partitions as usize];
        let mut want: BTreeMap<(i64, String), (u64, i64)> = BTreeMap::new();
        let mut clock = BASE_MS;
        for (i, (kc, v, adv, disorder)) in c.records.iter().enumerate() {
            clock += i64::from(*adv);
            let ts = clock - i64::from(*disorder);
            let k = keys(*kc);
            let p = if c.members > 1 {
                (ferry_processor::sketch::hash64(k.as_bytes()) % u64::from(c.partitions)) as u32
            } else {
                (u64::from(*kc).wrapping_mul(31).wrapping_add(i as u64) % u64::from(c.partitions))
                    as u32
            };
            logs[p as usize].push(format!(r#"{{"ts":{ts},"k":"{k}","v":{v}}}"#));
            let e = want
                .entry((ts - ts.rem_euclid(WINDOW_MS), k))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 += i64::from(*v);
        }
        // Every partition ends with a record far ahead: every window closes.
        for log in &mut logs {
            log.push(format!(
                r#"{{"ts":{},"k":"closer","v":0}}"#,
                clock + 3_600_000
            ));
        }
        let owner = |p: u32| p % c.members;
        let mut members: Vec<Member> = (0..c.members)
            .map(|m| Member::new(m, (0..c.partitions).filter(|p| owner(*p) == m).collect()))
            .collect();
        let mut store: BTreeMap<u32, (u64, Vec<u8>)> = BTreeMap::new();
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for m in &mut members {
            next.extend(m.start(&store));
        }
        let mut step = 0usize;
        let mut choices = c.order.iter().cycle();
        loop {
            let pending: Vec<u32> = (0..c.partitions)
                .filter(|p| (next[p] as usize) < logs[*p as usize].len())
                .collect();
            if pending.is_empty() {
                break;
            }
            for &(m, at, only) in &c.crashes {
                if at == step {
                    members[m as usize].checkpoint(&mut store, only as usize);
                    let owned = members[m as usize].owned.clone();
                    let file = std::mem::take(&mut members[m as usize].file);
                    let mut fresh = Member::new(m, owned);
                    fresh.file = file;
                    next.extend(fresh.start(&store));
                    members[m as usize] = fresh;
                }
            }
            if step.is_multiple_of(c.every) {
                for m in &members {
                    m.checkpoint(&mut store, usize::MAX);
                }
            }
            let p = pending[*choices.next().unwrap_or(&0) as usize % pending.len()];
            let offset = next[&p];
            let line = logs[p as usize][offset as usize].clone();
            members[owner(p) as usize].feed(p, offset, &line);
            next.insert(p, offset + 1);
            step += 1;
        }
        let got = printed(members.iter().flat_map(|m| &m.file));
        let want: BTreeMap<(i64, String), Vec<(u64, i64)>> =
            want.into_iter().map(|(k, v)| (k, vec![v])).collect();
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// 1–8 partitions, 1–3 members (on a topic keyed by the group key when more than one),
        /// one hot key or many, checkpoint rounds every few records, crashes that interrupt a
        /// round: every (window, key) is in the output once, equal to the input's aggregate.
        #[test]
        fn merged_partitions_give_one_exact_result_per_window_and_key(c in case()) {
            run(&c)?;
        }
    }
}

/// The repartition hop (`repartition.rs`) against the naive aggregate: upstream instances flush
/// deltas into an in-memory repartition topic that deduplicates by (producer, sequence) as the
/// collector does, owners of its partitions merge them, members crash between any two steps
/// (also between storing a flush's checkpoint and posting it) and restart from their
/// checkpoints.
mod repartitioned {
    use super::*;
    use ferry_processor::merge::{Merge, Note, Part, unwrap_checkpoint, wrap_checkpoint};
    use ferry_processor::repartition::{
        self, Outbox, decode_line, decode_parts, encode_parts, part_id, unwrap_upstream,
        wrap_upstream,
    };
    use ferry_processor::sink::FileMark;
    use std::collections::HashMap;

    use super::merged::{LATENESS_MS, WINDOW_MS, config};

    #[derive(Debug, Clone)]
    struct Case {
        partitions: u32,
        members: u32,
        hot_key: bool,
        records: Vec<(u16, u8, u8, u16)>,
        order: Vec<u16>,
        flush_every: usize,
        checkpoint_every: usize,
        /// (member, step, post the stored outbox before dying) of each crash.
        crashes: Vec<(u32, usize, bool)>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1u32..=8, 1u32..=3, any::<bool>(), 1usize..300).prop_flat_map(
            |(partitions, members, hot_key, n)| {
                let members = members.min(partitions);
                (
                    prop::collection::vec(
                        (any::<u16>(), any::<u8>(), 0u8..40, 0u16..LATENESS_MS as u16),
                        n,
                    ),
                    prop::collection::vec(any::<u16>(), n),
                    1usize..30,
                    1usize..40,
                    prop::collection::vec((0..members, 0..n + 1, any::<bool>()), 0..4),
                )
                    .prop_map(
                        move |(records, order, flush_every, checkpoint_every, crashes)| Case {
                            partitions,
                            members,
                            hot_key,
                            records,
                            order,
                            flush_every,
                            checkpoint_every,
                            crashes,
                        },
                    )
            },
        )
    }

    /// The collector's side: the repartition topic's logs with per-producer dedup marks, and
    /// the checkpoints of both groups.
    #[derive(Default)]
    struct Collector {
        logs: Vec<Vec<Vec<u8>>>,
        marks: HashMap<String, u64>,
        inputs: BTreeMap<u32, (u64, Vec<u8>)>,
        owners: BTreeMap<u32, (u64, Vec<u8>)>,
    }

    impl Collector {
        /// A producer post: lines numbered from `seq`, those at or below the mark dropped.
        fn post(&mut self, target: u32, producer: &str, seq: u64, lines: &[Vec<u8>]) {
            let mark = self.marks.get(producer).copied();
            for (i, l) in lines.iter().enumerate() {
                let n = seq + i as u64;
                if mark.is_none_or(|m| n >= m) {
                    self.logs[target as usize].push(l.clone());
                }
            }
            let end = seq + lines.len() as u64;
            let m = self.marks.entry(producer.to_owned()).or_insert(end);
            *m = (*m).max(end);
        }
    }

    struct Upstream {
        pipeline: Pipeline,
        flushed: u64,
        outbox: Option<Outbox>,
    }

    struct Owner {
        merge: Merge,
        parts: BTreeMap<PartitionId, (PartitionId, Pipeline)>,
        next: u64,
    }

    struct Member {
        index: u32,
        inputs: Vec<u32>,
        targets: Vec<u32>,
        upstream: BTreeMap<u32, Upstream>,
        owners: BTreeMap<u32, Owner>,
        file: Vec<String>,
    }

    fn pid(p: u32) -> PartitionId {
        PartitionId::new("t", p)
    }

    impl Member {
        /// (Re)starts from the stored checkpoints; returns where each input reads on.
        fn start(
            index: u32,
            inputs: Vec<u32>,
            targets: Vec<u32>,
            file: Vec<String>,
            partitions: u32,
            c: &mut Collector,
        ) -> (Self, BTreeMap<u32, u64>) {
            let mut m = Member {
                index,
                inputs,
                targets,
                upstream: BTreeMap::new(),
                owners: BTreeMap::new(),
                file,
            };
            let mut next = BTreeMap::new();
            for &p in &m.inputs.clone() {
                let (offset, pipeline, outbox) = match c.inputs.get(&p) {
                    Some((o, blob)) => {
                        let (outbox, snap) = unwrap_upstream(blob).unwrap();
                        (*o, Pipeline::restore(config(), snap).unwrap(), outbox)
                    }
                    None => (0, Pipeline::new(config()), None),
                };
                m.upstream.insert(
                    p,
                    Upstream {
                        pipeline: pipeline.into_partial(),
                        flushed: offset,
                        outbox,
                    },
                );
                next.insert(p, offset);
            }
            // Notes and file marks from every owner checkpoint; the file cut back.
            let mut learned: BTreeMap<PartitionId, i64> = BTreeMap::new();
            let mut newest = None;
            for (_, blob) in c.owners.values() {
                let (note, _) = unwrap_checkpoint(blob).unwrap();
                for (p, s) in note.emitted {
                    let e = learned.entry(p).or_insert(s);
                    *e = (*e).max(s);
                }
                for f in note.files {
                    if f.dev == u64::from(index) {
                        newest = newest.max(Some(f.len));
                    }
                }
            }
            if let Some(len) = newest {
                m.file.truncate(len as usize);
            }
            for &r in &m.targets.clone() {
                let mut owner = Owner {
                    merge: Merge::new(config()),
                    parts: BTreeMap::new(),
                    next: 0,
                };
                if let Some((o, blob)) = c.owners.get(&r) {
                    let (_, rest) = unwrap_checkpoint(blob).unwrap();
                    owner.next = *o;
                    for (up, p) in decode_parts(&config(), rest).unwrap() {
                        owner.parts.insert(up.clone(), (part_id(r, &up), p));
                    }
                }
                for p in 0..partitions {
                    owner.parts.entry(pid(p)).or_insert_with(|| {
                        (part_id(r, &pid(p)), Pipeline::new(config()).into_partial())
                    });
                }
                for (id, _) in owner.parts.values() {
                    if let Some(&s) = learned.get(id) {
                        owner.merge.learn(id.clone(), s);
                    }
                }
                m.owners.insert(r, owner);
            }
            // As the runner does: a repartition partition never checkpointed gets its first
            // checkpoint at once, with where the results file stands.
            if m.targets.iter().any(|r| !c.owners.contains_key(r)) {
                m.checkpoint_owners(c);
            }
            (m, next)
        }

        fn post(&mut self, p: u32, partitions: u32, c: &mut Collector) {
            let Some(ob) = self.upstream.get_mut(&p).and_then(|u| u.outbox.take()) else {
                return;
            };
            for &t in ob.lines.keys() {
                let id = repartition::producer_id("g", "rep", &pid(p), t, partitions);
                for (seq, body) in ob.bodies(t) {
                    let lines: Vec<Vec<u8>> = body
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    c.post(t, &id, seq, &lines);
                }
            }
        }

        /// A flush of input `p`: the outbox stored with its checkpoint, then posted (unless
        /// the member dies in between).
        fn flush(&mut self, p: u32, next: u64, partitions: u32, c: &mut Collector, post: bool) {
            self.post(p, partitions, c);
            let u = self.upstream.get_mut(&p).unwrap();
            if next == u.flushed {
                return;
            }
            let ob = repartition::flush(&mut u.pipeline, &pid(p), next, partitions);
            c.inputs
                .insert(p, (next, wrap_upstream(Some(&ob), &u.pipeline.snapshot())));
            u.flushed = next;
            u.outbox = Some(ob);
            if post {
                self.post(p, partitions, c);
            }
        }

        /// Reads every owned repartition partition and merges.
        fn merge(&mut self, c: &Collector) {
            let mut out = Vec::new();
            for (r, owner) in self.owners.iter_mut() {
                let log = &c.logs[*r as usize];
                while (owner.next as usize) < log.len() {
                    let ops = owner.merge.ops().to_vec();
                    let line = decode_line(&log[owner.next as usize], &ops).unwrap();
                    owner.next += 1;
                    let (_, part) = owner.parts.get_mut(&line.upstream).unwrap();
                    repartition::absorb(part, line, 0);
                }
                let mut parts: Vec<Part<'_>> = owner
                    .parts
                    .values_mut()
                    .map(|(id, pipeline)| Part {
                        id,
                        pipeline,
                        since_ms: 0,
                    })
                    .collect();
                owner.merge.advance(0, &mut parts, &mut out);
            }
            for e in out {
                if let Emission::Result(r) = e {
                    self.file.push(r.to_json());
                }
            }
        }

        fn checkpoint_owners(&self, c: &mut Collector) {
            let mut emitted = BTreeMap::new();
            for o in self.owners.values() {
                for (id, s) in o.merge.emitted() {
                    emitted.insert(id.clone(), *s);
                }
            }
            let note = Note {
                emitted,
                files: vec![FileMark {
                    dev: u64::from(self.index),
                    ino: 1,
                    len: self.file.len() as u64,
                }],
            };
            for (r, o) in &self.owners {
                let parts: Vec<(&PartitionId, &Pipeline)> =
                    o.parts.iter().map(|(up, (_, p))| (up, p)).collect();
                c.owners
                    .insert(*r, (o.next, wrap_checkpoint(&note, &encode_parts(&parts))));
            }
        }
    }

    fn run(c: &Case) -> Result<(), TestCaseError> {
        let keys = |choice: u16| -> String {
            if c.hot_key && !choice.is_multiple_of(10) {
                "hot".to_owned()
            } else {
                format!("k{}", choice % if c.hot_key { 20 } else { 300 })
            }
        };
        // An unkeyed topic: a key's records are on any partition.
        let mut logs: Vec<Vec<String>> = vec![Vec::new(); c.partitions as usize];
        let mut want: BTreeMap<(i64, String), (u64, i64)> = BTreeMap::new();
        let mut clock = BASE_MS;
        for (i, (kc, v, adv, disorder)) in c.records.iter().enumerate() {
            clock += i64::from(*adv);
            let ts = clock - i64::from(*disorder);
            let k = keys(*kc);
            let p = (u64::from(*kc).wrapping_mul(31).wrapping_add(i as u64)
                % u64::from(c.partitions)) as u32;
            logs[p as usize].push(format!(r#"{{"ts":{ts},"k":"{k}","v":{v}}}"#));
            let e = want
                .entry((ts - ts.rem_euclid(WINDOW_MS), k))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 += i64::from(*v);
        }
        for log in &mut logs {
            log.push(format!(
                r#"{{"ts":{},"k":"closer","v":0}}"#,
                clock + 3_600_000
            ));
        }
        let n = c.partitions;
        let mut col = Collector {
            logs: vec![Vec::new(); n as usize],
            ..Collector::default()
        };
        let inputs = |m: u32| (0..n).filter(|p| p % c.members == m).collect::<Vec<_>>();
        // The repartition partitions go to the members the other way round.
        let targets = |m: u32| {
            (0..n)
                .filter(|r| (n - 1 - r) % c.members == m)
                .collect::<Vec<_>>()
        };
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut members: Vec<Member> = Vec::new();
        for m in 0..c.members {
            let (member, nx) = Member::start(m, inputs(m), targets(m), Vec::new(), n, &mut col);
            next.extend(nx);
            members.push(member);
        }
        let owner = |p: u32| p % c.members;
        let mut step = 0usize;
        let mut choices = c.order.iter().cycle();
        loop {
            let pending: Vec<u32> = (0..n)
                .filter(|p| (next[p] as usize) < logs[*p as usize].len())
                .collect();
            for &(m, at, post) in &c.crashes {
                if at == step {
                    // A flush stored but (maybe) not posted, then the member dies.
                    let mi = m as usize;
                    if let Some(&p) = members[mi].inputs.first() {
                        let nx = next[&p];
                        members[mi].flush(p, nx, n, &mut col, post);
                    }
                    let file = std::mem::take(&mut members[mi].file);
                    let (fresh, nx) = Member::start(m, inputs(m), targets(m), file, n, &mut col);
                    members[mi] = fresh;
                    next.extend(nx);
                }
            }
            if pending.is_empty() {
                break;
            }
            let p = pending[*choices.next().unwrap_or(&0) as usize % pending.len()];
            let offset = next[&p];
            let line = logs[p as usize][offset as usize].clone();
            let mut out = Vec::new();
            let u = members[owner(p) as usize].upstream.get_mut(&p).unwrap();
            u.pipeline
                .process(&pid(p), offset, &Record::from_line(line), 0, 0, &mut out);
            prop_assert!(out.is_empty(), "an upstream emitted {:?}", out);
            next.insert(p, offset + 1);
            step += 1;
            if step.is_multiple_of(c.flush_every) {
                for m in members.iter_mut() {
                    for p in m.inputs.clone() {
                        m.flush(p, next[&p], n, &mut col, true);
                    }
                }
            }
            for m in members.iter_mut() {
                m.merge(&col);
            }
            if step.is_multiple_of(c.checkpoint_every) {
                for m in &members {
                    m.checkpoint_owners(&mut col);
                }
            }
        }
        for m in members.iter_mut() {
            for p in m.inputs.clone() {
                m.flush(p, next[&p], n, &mut col, true);
            }
        }
        for m in members.iter_mut() {
            m.merge(&col);
        }
        let got = printed(members.iter().flat_map(|m| &m.file));
        let want: BTreeMap<(i64, String), Vec<(u64, i64)>> =
            want.into_iter().map(|(k, v)| (k, vec![v])).collect();
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// 1–8 input partitions on an unkeyed topic, 1–3 members each holding some inputs and
        /// some repartition partitions, one hot key or many, flushes and owner checkpoints
        /// every few records, crashes that leave a stored flush unposted: every (window, key)
        /// is emitted once, by one member, equal to the input's aggregate.
        #[test]
        fn repartitioned_partials_give_one_exact_result_per_window_and_key(c in case()) {
            run(&c)?;
        }
    }
}
