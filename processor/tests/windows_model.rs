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

/// The pipeline core both sources run (`driver.rs`) against the naive aggregate, on an
/// in-memory source without a runtime: 1–8 input partitions of an unkeyed topic, 1–3 members
/// whose input and repartition partitions move when a member dies (its partitions taken over by
/// the survivors, a live member's moved partitions handed over gracefully) and come back when
/// it restarts; the repartition topic either drops replays by (producer, sequence) as the
/// collector does, or keeps them as Kafka does (the owners drop them by their sequences).
/// Members die between any two steps, after storing a flush's checkpoint before posting it,
/// or after posting part of it.
mod driven {
    use super::merged::{LATENESS_MS, WINDOW_MS, config};
    use super::*;
    use ferry_processor::driver::{Assigned, Driver};
    use ferry_processor::sink::FileMark;
    use std::collections::{BTreeSet, HashMap};

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Death {
        /// Between two steps.
        Plain,
        /// Right after a flush's checkpoint was stored, before its partials were posted.
        AfterStore,
        /// After the partials of one target were posted, not the others'.
        MidPost,
    }

    #[derive(Debug, Clone)]
    struct Case {
        partitions: u32,
        members: u32,
        hot_key: bool,
        /// The repartition topic keeps replays (Kafka): the owners drop them.
        kafka: bool,
        records: Vec<(u16, u8, u8, u16)>,
        order: Vec<u16>,
        flush_every: usize,
        checkpoint_every: usize,
        /// (member, step, how, steps it stays down) of each death.
        deaths: Vec<(u32, usize, Death, usize)>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            1u32..=8,
            1u32..=3,
            any::<bool>(),
            any::<bool>(),
            1usize..300,
        )
            .prop_flat_map(|(partitions, members, hot_key, kafka, n)| {
                (
                    prop::collection::vec(
                        (any::<u16>(), any::<u8>(), 0u8..40, 0u16..LATENESS_MS as u16),
                        n,
                    ),
                    prop::collection::vec(any::<u16>(), n),
                    1usize..30,
                    1usize..40,
                    prop::collection::vec(
                        (
                            0..members,
                            0..n + 1,
                            prop_oneof![
                                Just(Death::Plain),
                                Just(Death::AfterStore),
                                Just(Death::MidPost)
                            ],
                            0usize..60,
                        ),
                        0..4,
                    ),
                )
                    .prop_map(
                        move |(records, order, flush_every, checkpoint_every, deaths)| Case {
                            partitions,
                            members,
                            hot_key,
                            kafka,
                            records,
                            order,
                            flush_every,
                            checkpoint_every,
                            deaths,
                        },
                    )
            })
    }

    fn pid(p: u32) -> PartitionId {
        PartitionId::new("t", p)
    }

    /// The stores: the repartition topic's partitions (line, sequence), the collector's
    /// per-producer marks, and the checkpoints of both groups (offset, bytes).
    struct Store {
        kafka: bool,
        logs: Vec<Vec<(Vec<u8>, u64)>>,
        marks: HashMap<(PartitionId, u32), u64>,
        inputs: BTreeMap<u32, (u64, Vec<u8>)>,
        owners: BTreeMap<u32, (u64, Vec<u8>)>,
    }

    impl Store {
        fn post(&mut self, up: &PartitionId, target: u32, seq: u64, line: &[u8]) {
            if !self.kafka {
                // The collector's idempotent producer: a line at or below the mark is dropped.
                let mark = self.marks.entry((up.clone(), target)).or_insert(0);
                if seq < *mark {
                    return;
                }
                *mark = seq + 1;
            }
            self.logs[target as usize].push((line.to_vec(), seq));
        }
    }

    struct Member {
        index: u32,
        /// `None` while dead.
        driver: Option<Driver>,
        /// Where each held input partition reads on.
        pos: BTreeMap<u32, u64>,
        file: Vec<String>,
    }

    impl Member {
        fn d(&mut self) -> &mut Driver {
            self.driver.as_mut().expect("alive")
        }

        /// A (re)start: a new driver, and its results file cut back to the newest mark any
        /// owner checkpoint holds for it (as the runners do when they join the merge group).
        fn start(&mut self, n: u32, kafka: bool, s: &Store) {
            let mut d = Driver::new(config(), kafka, "model");
            d.topic_partitions.insert("t".into(), n);
            d.rep_partitions = Some(n);
            let marks = d.learn_owner_notes(s.owners.values().map(|(_, b)| &b[..]));
            let newest = marks
                .iter()
                .filter(|m| m.dev == u64::from(self.index))
                .map(|m| m.len)
                .max();
            if let Some(len) = newest {
                self.file.truncate(len as usize);
            }
            self.driver = Some(d);
            self.pos.clear();
        }

        fn mark(&mut self) {
            let len = self.file.len() as u64;
            let index = u64::from(self.index);
            self.d().marks = vec![FileMark {
                dev: index,
                ino: 1,
                len,
            }];
        }

        /// One flush of input `p`; `die` stops it where that death happens. Returns whether
        /// the member died.
        fn flush(&mut self, p: u32, s: &mut Store, die: Option<Death>) -> bool {
            let d = self.driver.as_mut().expect("alive");
            if !d.build_flush(&pid(p), false) {
                return false;
            }
            if let Some((offset, blob)) = d.unstored(&pid(p)).cloned() {
                s.inputs.insert(p, (offset, blob));
                d.stored(&pid(p));
                if die == Some(Death::AfterStore) {
                    return true;
                }
            }
            if let Some(outbox) = d.to_post(&pid(p)).cloned() {
                for (i, &t) in outbox.lines.keys().enumerate() {
                    if i == 1 && die == Some(Death::MidPost) {
                        return true;
                    }
                    for (seq, line) in outbox.numbered(t) {
                        s.post(&pid(p), t, seq, line);
                    }
                }
                d.posted(&pid(p));
            }
            die.is_some()
        }

        /// Reads every owned repartition partition, merges, and writes the results.
        fn merge(&mut self, s: &Store) {
            let d = self.driver.as_mut().expect("alive");
            let owned: Vec<u32> = d.owners.keys().copied().collect();
            for r in owned {
                let from = d.owners[&r].next_offset.unwrap_or(0) as usize;
                for (off, (line, seq)) in s.logs[r as usize].iter().enumerate().skip(from) {
                    d.apply(r, off as u64, line, Some(*seq), 0);
                }
            }
            let mut out = Vec::new();
            d.advance(0, false, &mut out);
            for e in out {
                if let Emission::Result(r) = e {
                    self.file.push(r.to_json());
                }
            }
        }

        fn checkpoint_owner(&mut self, r: u32, s: &mut Store) {
            self.mark();
            if let Some(cp) = self.d().owner_checkpoint(r) {
                s.owners.insert(r, cp);
            }
        }
    }

    /// Who holds what: input p → the (p mod live)-th live member, repartition r the other way.
    fn assignment(live: &[u32], n: u32) -> (BTreeMap<u32, u32>, BTreeMap<u32, u32>) {
        let l = live.len() as u32;
        let inputs = (0..n).map(|p| (p, live[(p % l) as usize])).collect();
        let owners = (0..n)
            .map(|r| (r, live[((n - 1 - r) % l) as usize]))
            .collect();
        (inputs, owners)
    }

    /// Moves partitions to the assignment of the live members: a live member hands over what
    /// it loses (inputs flushed and their checkpoints stored, owners checkpointed), then each
    /// takes what it gains from the stored checkpoints (a new owner checkpointed at once).
    fn rebalance(members: &mut [Member], s: &mut Store, n: u32) {
        let live: Vec<u32> = members
            .iter()
            .filter(|m| m.driver.is_some())
            .map(|m| m.index)
            .collect();
        if live.is_empty() {
            return;
        }
        let (inputs, owners) = assignment(&live, n);
        for m in members.iter_mut().filter(|m| m.driver.is_some()) {
            let held: Vec<u32> = m.pos.keys().copied().collect();
            for p in held {
                if inputs[&p] != m.index {
                    m.flush(p, s, None);
                    m.d().revoke(&pid(p));
                    m.pos.remove(&p);
                }
            }
            let owned: Vec<u32> = m.d().owners.keys().copied().collect();
            for r in owned {
                if owners[&r] != m.index {
                    m.checkpoint_owner(r, s);
                    m.d().revoke_owner(r);
                }
            }
        }
        for m in members.iter_mut().filter(|m| m.driver.is_some()) {
            for p in 0..n {
                if inputs[&p] == m.index && !m.pos.contains_key(&p) {
                    let stored = s.inputs.get(&p).cloned();
                    let how = m.d().assign(
                        pid(p),
                        stored.as_ref().map(|(_, b)| &b[..]),
                        Some(stored.as_ref().map_or(0, |(o, _)| *o)),
                        0,
                    );
                    let at = match how {
                        Assigned::Restored(o) => o,
                        Assigned::RestoredWithoutOffset | Assigned::Fresh => {
                            stored.as_ref().map_or(0, |(o, _)| *o)
                        }
                        Assigned::Unreadable(e) => panic!("input checkpoint unreadable: {e}"),
                    };
                    m.pos.insert(p, at);
                }
            }
            let fresh_owners: Vec<u32> = (0..n)
                .filter(|r| owners[r] == m.index && !m.d().owners.contains_key(r))
                .collect();
            if fresh_owners.is_empty() {
                continue;
            }
            let blobs: Vec<Vec<u8>> = s.owners.values().map(|(_, b)| b.clone()).collect();
            m.d().learn_owner_notes(blobs.iter().map(|b| &b[..]));
            for r in fresh_owners {
                let stored = s.owners.get(&r).cloned();
                let kafka = s.kafka;
                let (_, how) = m.d().assign_owner(
                    r,
                    stored
                        .as_ref()
                        .map(|(o, b)| ((!kafka).then_some(*o), &b[..])),
                    Some(0),
                    0,
                );
                if let Assigned::Unreadable(e) = how {
                    panic!("owner checkpoint unreadable: {e}");
                }
                // As the runners do: checkpointed at once, so that a mark of this member's
                // file is stored before it emits anything from this partition.
                m.checkpoint_owner(r, s);
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
        let mut s = Store {
            kafka: c.kafka,
            logs: vec![Vec::new(); n as usize],
            marks: HashMap::new(),
            inputs: BTreeMap::new(),
            owners: BTreeMap::new(),
        };
        let mut members: Vec<Member> = (0..c.members)
            .map(|index| Member {
                index,
                driver: None,
                pos: BTreeMap::new(),
                file: Vec::new(),
            })
            .collect();
        for m in members.iter_mut() {
            m.start(n, c.kafka, &s);
        }
        rebalance(&mut members, &mut s, n);
        // Step at which each dead member restarts.
        let mut back: BTreeMap<u32, usize> = BTreeMap::new();
        let mut step = 0usize;
        let mut choices = c.order.iter().cycle();
        loop {
            for &(mi, at, how, down) in &c.deaths {
                let m = &mut members[mi as usize];
                if at != step || m.driver.is_none() {
                    continue;
                }
                if how != Death::Plain {
                    // Dies in the middle of a flush of one of its inputs.
                    let held: Vec<u32> = m.pos.keys().copied().collect();
                    for p in held {
                        let next = m.pos[&p];
                        let _ = next;
                        if m.flush(p, &mut s, Some(how)) {
                            break;
                        }
                    }
                }
                m.driver = None;
                m.pos.clear();
                back.insert(mi, step + down);
                rebalance(&mut members, &mut s, n);
            }
            let returning: Vec<u32> = back
                .iter()
                .filter(|(_, at)| **at <= step)
                .map(|(m, _)| *m)
                .collect();
            if !returning.is_empty() {
                for mi in returning {
                    back.remove(&mi);
                    members[mi as usize].start(n, c.kafka, &s);
                }
                rebalance(&mut members, &mut s, n);
            }
            let pending: Vec<(usize, u32)> = members
                .iter()
                .enumerate()
                .flat_map(|(i, m)| {
                    m.pos
                        .iter()
                        .filter(|(p, o)| (**o as usize) < logs[**p as usize].len())
                        .map(move |(p, _)| (i, *p))
                })
                .collect();
            if pending.is_empty() && back.is_empty() {
                let all_read = (0..n).all(|p| {
                    members.iter().any(|m| {
                        m.pos
                            .get(&p)
                            .is_some_and(|o| *o as usize == logs[p as usize].len())
                    })
                });
                if all_read {
                    break;
                }
            }
            step += 1;
            if let Some(&(mi, p)) =
                pending.get(*choices.next().unwrap_or(&0) as usize % pending.len().max(1))
            {
                let m = &mut members[mi];
                let offset = m.pos[&p];
                let line = logs[p as usize][offset as usize].clone();
                let mut out = Vec::new();
                let u = m.d().upstream_mut(&pid(p)).expect("held");
                u.pipeline
                    .process(&pid(p), offset, &Record::from_line(line), 0, 0, &mut out);
                prop_assert!(out.is_empty(), "an upstream emitted {:?}", out);
                m.pos.insert(p, offset + 1);
            }
            for m in members.iter_mut().filter(|m| m.driver.is_some()) {
                let periodic = step.is_multiple_of(c.flush_every);
                for p in m.d().due(periodic) {
                    m.flush(p.partition, &mut s, None);
                }
                m.merge(&s);
                if step.is_multiple_of(c.checkpoint_every) {
                    let owned: Vec<u32> = m.d().owners.keys().copied().collect();
                    for r in owned {
                        m.checkpoint_owner(r, &mut s);
                    }
                }
            }
            prop_assert!(step < 100_000, "the run does not end");
        }
        // Everything read: the last flushes reach the owners, which close every window.
        for _ in 0..2 {
            for m in members.iter_mut() {
                let held: Vec<u32> = m.pos.keys().copied().collect();
                for p in held {
                    m.flush(p, &mut s, None);
                }
            }
            for m in members.iter_mut() {
                m.merge(&s);
            }
        }
        let got = printed(members.iter().flat_map(|m| &m.file));
        let want: BTreeMap<(i64, String), Vec<(u64, i64)>> =
            want.into_iter().map(|(k, v)| (k, vec![v])).collect();
        let held: BTreeSet<u32> = members.iter().flat_map(|m| m.pos.keys().copied()).collect();
        prop_assert_eq!(held.len() as u32, n);
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// 1–8 input partitions on an unkeyed topic, 1–3 members, one hot key or many, flushes
        /// and owner checkpoints every few records, members dying at any step (also between a
        /// flush's stored checkpoint and its posts, or half-way through its posts) and coming
        /// back, their partitions moving meanwhile; a repartition topic that drops replays
        /// (collector) or not (Kafka): every (window, key) is emitted once, by one member, equal
        /// to the input's aggregate.
        #[test]
        fn the_driver_gives_one_exact_result_per_window_and_key_across_deaths_and_moves(c in case()) {
            run(&c)?;
        }
    }
}
