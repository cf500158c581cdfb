//! One pipeline's whole processing, as a plain state machine.
//!
//! The driver (which fetches from the collector or Kafka, and writes to sinks) calls:
//! - [`Pipeline::process`] / [`Pipeline::process_batch`] for records, with their partition,
//!   offset, ingest time and the current processing time;
//! - [`Pipeline::advance_time`] periodically (e.g. every second), so idle partitions stop holding
//!   the watermark and early results go out;
//! - [`Pipeline::snapshot`] with the output flushed, and stores the bytes together with
//!   [`Pipeline::offsets`]; after a restart, [`Pipeline::restore`] and resume fetching from
//!   `offsets()`. Records at or below an offset already processed are skipped, so a replay after a
//!   crash counts nothing twice.
//!
//! Everything the pipeline decides is a function of its inputs (including the times passed in),
//! so a restored pipeline produces exactly what an uninterrupted one would have.

use crate::aggregate::AggState;
use crate::config::{AggOp, Emit, OnParseError, PipelineConfig};
use crate::filter::{Filter, Val};
use crate::parse::{FieldSlots, Parser, Span};
use crate::time::{TimeParser, format_rfc3339};
use crate::window::{ClosedWindow, KeyState, Windows};
use bytes::Bytes;
use ferry_core::record::Record;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// An input partition: a topic and its partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: u32,
}

impl PartitionId {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// Something the pipeline wants written somewhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Emission {
    /// A window result, for every sink in the pipeline's `sinks`.
    Result(WindowResult),
    /// An alert rule matched a result: for the sink of `alerts[index]`.
    Alert {
        index: usize,
        name: Arc<str>,
        result: WindowResult,
    },
    /// A record that arrived after (some of) its windows closed, for `late_topic`.
    Late {
        topic: Arc<str>,
        from: PartitionId,
        offset: u64,
        line: Bytes,
    },
    /// A line the parser rejected, for `dead_letter_topic`.
    DeadLetter {
        topic: Arc<str>,
        from: PartitionId,
        offset: u64,
        line: Bytes,
        error: String,
    },
}

/// One key's result for one window. `(pipeline, key, window_start)` identifies it, so a sink can
/// drop a result replayed after a crash between writing it and checkpointing.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub pipeline: Arc<str>,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The group-by fields and their values (`None`: the record did not have the field).
    pub key: Vec<(Arc<str>, Option<String>)>,
    /// One per aggregate, by configured name.
    pub values: Vec<(Arc<str>, serde_json::Value)>,
    /// An updating result of a window still open (`emit: early`).
    pub early: bool,
    /// Records of this window that were not aggregated because of `max_keys` (all keys).
    pub evicted: u64,
}

impl WindowResult {
    /// The result line: `pipeline`, `window_start`, `window_end`, `key`, one field per aggregate,
    /// then `early: true` for early results and `evicted` when records were dropped by `max_keys`.
    pub fn to_json(&self) -> String {
        self.to_json_with(None)
    }

    /// The `key` object alone, as in the result line (e.g. `{"level":"error"}`).
    pub fn key_json(&self) -> String {
        let mut out = String::with_capacity(32);
        self.write_key(&mut out);
        out
    }

    fn write_key(&self, out: &mut String) {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        out.push('{');
        for (i, (k, v)) in self.key.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v.as_deref().map_or_else(|| "null".to_owned(), q);
            let _ = write!(out, "{}:{v}", q(k));
        }
        out.push('}');
    }

    /// The line with `"alert": NAME` added (for alert sinks).
    pub fn to_json_with(&self, alert: Option<&str>) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = String::with_capacity(128);
        let _ = write!(
            out,
            "{{\"pipeline\":{},\"window_start\":\"{}\",\"window_end\":\"{}\",\"key\":",
            q(&self.pipeline),
            format_rfc3339(self.window_start_ms),
            format_rfc3339(self.window_end_ms)
        );
        self.write_key(&mut out);
        for (k, v) in &self.values {
            let _ = write!(out, ",{}:{v}", q(k));
        }
        if self.early {
            out.push_str(",\"early\":true");
        }
        if self.evicted > 0 {
            let _ = write!(out, ",\"evicted\":{}", self.evicted);
        }
        if let Some(a) = alert {
            let _ = write!(out, ",\"alert\":{}", q(a));
        }
        out.push('}');
        out
    }
}

/// Counts since the pipeline was created (or restored: they are part of the state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub records_in: u64,
    /// Records at or below an offset already processed (a replay), skipped.
    pub replayed: u64,
    pub parse_errors: u64,
    pub filtered: u64,
    /// Records whose event time was missing or unparsable (ingest time used).
    pub event_time_fallbacks: u64,
    /// Records that missed at least one of their windows because it had closed.
    pub late: u64,
    /// (record, window) pairs not aggregated because the window was full at `max_keys`.
    pub evicted: u64,
    /// Window results emitted (final and early).
    pub results: u64,
    pub alerts: u64,
}

/// How an alert reads one of its fields from a result.
#[derive(Debug, Clone, Copy)]
enum AlertField {
    Agg(usize),
    Key(usize),
}

#[derive(Debug, Clone)]
struct AlertRule {
    name: Arc<str>,
    when: Filter,
    fields: Vec<AlertField>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputPartition {
    pub(crate) id: PartitionId,
    /// The offset after the last record processed: where to resume.
    pub(crate) next_offset: u64,
}

/// Cached handles of the `ferry_processor_*` counters for this pipeline.
#[derive(Clone)]
struct Meters {
    records_in: metrics::Counter,
    parse_errors: metrics::Counter,
    filtered: metrics::Counter,
    late: metrics::Counter,
    evicted: metrics::Counter,
    results: metrics::Counter,
    alerts: metrics::Counter,
    replayed: metrics::Counter,
    open_windows: metrics::Gauge,
    open_keys: metrics::Gauge,
    watermark_ms: metrics::Gauge,
}

impl Meters {
    fn new(pipeline: &str) -> Self {
        let c = |name: &'static str| metrics::counter!(name, "pipeline" => pipeline.to_owned());
        Self {
            records_in: c("ferry_processor_records_in_total"),
            parse_errors: c("ferry_processor_parse_errors_total"),
            filtered: c("ferry_processor_filtered_total"),
            late: c("ferry_processor_late_total"),
            evicted: c("ferry_processor_evicted_total"),
            results: c("ferry_processor_windows_emitted_total"),
            alerts: c("ferry_processor_alerts_total"),
            replayed: c("ferry_processor_replayed_total"),
            open_windows: metrics::gauge!("ferry_processor_open_windows", "pipeline" => pipeline.to_owned()),
            open_keys: metrics::gauge!("ferry_processor_open_keys", "pipeline" => pipeline.to_owned()),
            watermark_ms: metrics::gauge!("ferry_processor_watermark_ms", "pipeline" => pipeline.to_owned()),
        }
    }
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meters")
    }
}

/// A running pipeline. See the module docs for the driver's side of the contract.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) cfg: PipelineConfig,
    name: Arc<str>,
    shape: ResultShape,
    parser: Parser,
    /// Values of the fields this pipeline reads, for the record being processed.
    slots: FieldSlots,
    group_slots: Vec<usize>,
    /// `None`: a `count` without a field (every record counts).
    agg_slots: Vec<Option<usize>>,
    filter: Option<(Filter, Vec<usize>)>,
    time: Option<(usize, TimeParser)>,
    alerts: Vec<AlertRule>,
    dead_letter: Option<Arc<str>>,
    late_topic: Option<Arc<str>>,
    early: bool,
    pub(crate) windows: Windows,
    pub(crate) inputs: Vec<InputPartition>,
    input_index: HashMap<PartitionId, usize>,
    pub(crate) stats: Stats,
    /// Stats already added to the metrics counters.
    reported: Stats,
    meters: Meters,
    /// Scratch: the group key of the record being processed.
    key_buf: Vec<u8>,
    /// Scratch: windows closed by the last watermark advance.
    closed: Vec<ClosedWindow>,
    /// One partial of a merged pipeline ([`Pipeline::into_partial`]): closed windows and early
    /// results are the merge's to emit, not this instance's.
    partial: bool,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Self {
        // Every field read is parsed once, into one slot.
        let mut names: Vec<String> = Vec::new();
        let mut slot = |n: &str| match names.iter().position(|x| x == n) {
            Some(i) => i,
            None => {
                names.push(n.to_owned());
                names.len() - 1
            }
        };
        let group_slots: Vec<usize> = cfg.group_by.iter().map(|g| slot(g)).collect();
        let agg_slots: Vec<Option<usize>> = cfg
            .aggregates
            .iter()
            .map(|a| a.field.as_deref().map(&mut slot))
            .collect();
        let filter = cfg.filter.clone().map(|f| {
            let s: Vec<usize> = f.fields().iter().map(|n| slot(n)).collect();
            (f, s)
        });
        let time = cfg
            .event_time
            .as_ref()
            .map(|t| (slot(&t.field), TimeParser::new(t.format.clone())));
        let name: Arc<str> = cfg.name.as_str().into();
        let group_names: Vec<Arc<str>> = cfg.group_by.iter().map(|g| g.as_str().into()).collect();
        let agg_names: Vec<Arc<str>> = cfg
            .aggregates
            .iter()
            .map(|a| a.name.as_str().into())
            .collect();
        let alerts = cfg
            .alerts
            .iter()
            .map(|a| AlertRule {
                name: a.name.as_str().into(),
                when: a.when.clone(),
                fields: a
                    .when
                    .fields()
                    .iter()
                    .map(|f| {
                        if let Some(i) = cfg.aggregates.iter().position(|x| &x.name == f) {
                            return AlertField::Agg(i);
                        }
                        let k = f.strip_prefix("key.").unwrap_or(f);
                        // Config validation guarantees one of the two matches.
                        AlertField::Key(cfg.group_by.iter().position(|g| g == k).unwrap_or(0))
                    })
                    .collect(),
            })
            .collect();
        let ops: Vec<AggOp> = cfg.aggregates.iter().map(|a| a.op).collect();
        Self {
            parser: Parser::new(&cfg.parse),
            slots: FieldSlots::new(names),
            group_slots,
            agg_slots,
            shape: ResultShape {
                name: name.clone(),
                group_names,
                agg_names,
                size_ms: cfg.window.size_ms,
            },
            filter,
            time,
            alerts,
            dead_letter: match &cfg.on_parse_error {
                OnParseError::Skip => None,
                OnParseError::DeadLetter(t) => Some(t.as_str().into()),
            },
            late_topic: cfg.late_topic.as_deref().map(Into::into),
            early: cfg.window.emit == Emit::Early,
            windows: Windows::new(&cfg.window, ops, cfg.max_keys),
            inputs: Vec::new(),
            input_index: HashMap::new(),
            stats: Stats::default(),
            reported: Stats::default(),
            meters: Meters::new(&name),
            key_buf: Vec::with_capacity(64),
            closed: Vec::new(),
            partial: false,
            name,
            cfg,
        }
    }

    /// This pipeline as one partial of a merged pipeline (`merge.rs`): it aggregates its input
    /// and decides, by its own watermark, which records are late, exactly as alone; but the
    /// windows its watermark passes are kept for the merge to take, and it emits no results,
    /// alerts or early results itself. Not part of the snapshot: set it again after
    /// [`Pipeline::restore`].
    pub fn into_partial(mut self) -> Self {
        self.partial = true;
        self.windows.hold_closed();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The current overall watermark (Unix ms), once any record had an event time.
    pub fn watermark(&self) -> Option<i64> {
        self.windows.watermark()
    }

    /// Open windows and the keys they hold (for gauges and tests).
    pub fn open_state(&self) -> (usize, usize) {
        (self.windows.open_windows(), self.windows.open_keys())
    }

    /// For each partition seen, the offset to resume from (one past the last processed).
    pub fn offsets(&self) -> Vec<(PartitionId, u64)> {
        let mut v: Vec<_> = self
            .inputs
            .iter()
            .map(|p| (p.id.clone(), p.next_offset))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn input(&mut self, id: &PartitionId) -> usize {
        if let Some(&i) = self.input_index.get(id) {
            return i;
        }
        self.inputs.push(InputPartition {
            id: id.clone(),
            next_offset: 0,
        });
        let i = self.inputs.len() - 1;
        self.input_index.insert(id.clone(), i);
        i
    }

    pub(crate) fn rebuild_index(&mut self) {
        self.input_index = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
    }

    /// Processes one record. `ingest_ms` is the fallback event time; `now_ms` the processing time.
    pub fn process(
        &mut self,
        partition: &PartitionId,
        offset: u64,
        record: &Record,
        ingest_ms: i64,
        now_ms: i64,
        out: &mut Vec<Emission>,
    ) {
        self.process_run(partition, [(offset, record, ingest_ms)], now_ms, out);
    }

    /// Processes records of one partition in order, each with its offset and fallback event
    /// time: one partition lookup and one metrics update for all of them.
    pub fn process_run<'r>(
        &mut self,
        partition: &PartitionId,
        records: impl IntoIterator<Item = (u64, &'r Record, i64)>,
        now_ms: i64,
        out: &mut Vec<Emission>,
    ) {
        let p = self.input(partition);
        for (offset, record, ingest_ms) in records {
            self.process_one(p, offset, record, ingest_ms, now_ms, out);
        }
        self.report();
    }

    /// Processes consecutive records of one partition, the first at `first_offset`.
    pub fn process_batch(
        &mut self,
        partition: &PartitionId,
        first_offset: u64,
        records: &[Record],
        ingest_ms: i64,
        now_ms: i64,
        out: &mut Vec<Emission>,
    ) {
        let run = records
            .iter()
            .enumerate()
            .map(|(i, r)| (first_offset + i as u64, r, ingest_ms));
        self.process_run(partition, run, now_ms, out);
    }

    fn process_one(
        &mut self,
        p: usize,
        offset: u64,
        record: &Record,
        ingest_ms: i64,
        now_ms: i64,
        out: &mut Vec<Emission>,
    ) {
        if offset < self.inputs[p].next_offset {
            self.stats.replayed += 1;
            return;
        }
        self.inputs[p].next_offset = offset + 1;
        self.stats.records_in += 1;
        let line = &record.line[..];
        if let Err(e) = self.parser.parse(line, &mut self.slots) {
            self.stats.parse_errors += 1;
            tracing::trace!(pipeline = %self.name, offset, error = %e, "parse error");
            if let Some(topic) = &self.dead_letter {
                out.push(Emission::DeadLetter {
                    topic: topic.clone(),
                    from: self.inputs[p].id.clone(),
                    offset,
                    line: record.line.clone(),
                    error: e.to_string(),
                });
            }
            self.windows.observe(p, None, now_ms);
            self.advance_windows(now_ms, out);
            return;
        }
        if !record.fields.is_empty() {
            for i in 0..self.slots.len() {
                if !self.slots.is_set(i) {
                    let name = &self.slots.names()[i];
                    if let Some(f) = record.fields.iter().find(|f| *f.key == **name) {
                        self.slots.set(i, Span::Owned(f.value.to_string()));
                    }
                }
            }
        }
        let fallback = sane_time(record.event_time_ms)
            .or(sane_time(Some(ingest_ms)))
            .unwrap_or(0);
        let event_ms = match &mut self.time {
            Some((slot, parser)) => {
                match sane_time(
                    self.slots
                        .get_bytes(line, *slot)
                        .and_then(|b| parser.parse(b)),
                ) {
                    Some(t) => t,
                    None => {
                        self.stats.event_time_fallbacks += 1;
                        fallback
                    }
                }
            }
            None => fallback,
        };
        let keep = match &self.filter {
            None => true,
            Some((f, slots)) => {
                let s = &self.slots;
                f.eval(&|i| slots.get(i).and_then(|&k| s.get(line, k)).map(Val::Str))
            }
        };
        if keep {
            self.key_buf.clear();
            for &g in &self.group_slots {
                match self.slots.get_bytes(line, g) {
                    None => self.key_buf.push(0),
                    Some(v) => {
                        self.key_buf.push(1);
                        push_key_part(&mut self.key_buf, v);
                    }
                }
            }
            let (slots, agg_slots) = (&self.slots, &self.agg_slots);
            let outcome = self.windows.add(event_ms, &self.key_buf, |aggs| {
                for (a, s) in aggs.iter_mut().zip(agg_slots) {
                    match s {
                        None => a.update(Some("")),
                        Some(s) => a.update(slots.get(line, *s)),
                    }
                }
            });
            self.stats.evicted += outcome.evicted as u64;
            if outcome.missed > 0 {
                self.stats.late += 1;
                if let Some(topic) = &self.late_topic {
                    out.push(Emission::Late {
                        topic: topic.clone(),
                        from: self.inputs[p].id.clone(),
                        offset,
                        line: record.line.clone(),
                    });
                }
            }
        } else {
            self.stats.filtered += 1;
        }
        // Filtered records still show how far event time has progressed.
        self.windows.observe(p, Some(event_ms), now_ms);
        self.advance_windows(now_ms, out);
    }

    fn advance_windows(&mut self, now_ms: i64, out: &mut Vec<Emission>) {
        self.windows.advance(now_ms, &mut self.closed);
        if !self.closed.is_empty() {
            let mut closed = std::mem::take(&mut self.closed);
            for w in closed.drain(..) {
                self.emit_closed(w, out);
            }
            self.closed = closed;
        }
    }

    /// Moves processing time to `now_ms`: idle partitions stop holding the watermark, windows it
    /// passes close, and with `emit: early` the keys that changed since the last tick are emitted.
    pub fn advance_time(&mut self, now_ms: i64, out: &mut Vec<Emission>) {
        self.advance_windows(now_ms, out);
        if self.early && !self.partial {
            self.emit_early(out);
        }
        self.report();
        // Gauges once per tick: counting keys walks the open windows.
        self.meters
            .open_windows
            .set(self.windows.open_windows() as f64);
        self.meters.open_keys.set(self.windows.open_keys() as f64);
        // A partial's watermark is its own; the merge sets the pipeline's.
        if let Some(wm) = self.windows.watermark()
            && !self.partial
        {
            self.meters.watermark_ms.set(wm as f64);
        }
    }

    /// Emits every open window as final, whatever the watermark. Only for the end of a bounded
    /// input (a test, a replay with an end): a pipeline restored from a snapshot taken before
    /// this would emit those windows again.
    pub fn drain(&mut self, out: &mut Vec<Emission>) {
        let mut closed = Vec::new();
        self.windows.drain(&mut closed);
        for w in closed {
            self.emit_closed(w, out);
        }
        self.report();
    }

    pub(crate) fn emit_closed(&mut self, w: ClosedWindow, out: &mut Vec<Emission>) {
        tracing::debug!(pipeline = %self.name, start = w.start_ms, keys = w.keys.len(), "window closed");
        for (key, mut ks) in w.keys {
            let r = self.shape.result(w.start_ms, &key, &ks, false, w.evicted);
            fire_alerts(&self.alerts, &mut self.stats, &r, &mut ks, out);
            out.push(Emission::Result(r));
            self.stats.results += 1;
        }
    }

    /// One key's result, with the alert rules evaluated on it (by the merge, for merged
    /// states).
    pub(crate) fn emit_result(
        &mut self,
        start: i64,
        key: &[u8],
        ks: &mut KeyState,
        early: bool,
        evicted: u64,
        out: &mut Vec<Emission>,
    ) {
        let r = self.shape.result(start, key, ks, early, evicted);
        fire_alerts(&self.alerts, &mut self.stats, &r, ks, out);
        out.push(Emission::Result(r));
        self.stats.results += 1;
    }

    pub(crate) fn is_early(&self) -> bool {
        self.early
    }

    pub(crate) fn set_watermark_gauge(&self, wm: i64) {
        self.meters.watermark_ms.set(wm as f64);
    }

    fn emit_early(&mut self, out: &mut Vec<Emission>) {
        let (shape, alerts, stats) = (&self.shape, &self.alerts, &mut self.stats);
        for (start, w) in self.windows.open_mut() {
            let evicted = w.evicted;
            let mut dirty: Vec<_> = w.keys.iter_mut().filter(|(_, ks)| ks.dirty).collect();
            dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, ks) in dirty {
                ks.dirty = false;
                let r = shape.result(start, k, ks, true, evicted);
                fire_alerts(alerts, stats, &r, ks, out);
                out.push(Emission::Result(r));
                stats.results += 1;
            }
        }
    }

    /// Adds what happened since the last call to the process's metrics.
    pub(crate) fn report(&mut self) {
        let (s, r, m) = (&self.stats, &mut self.reported, &self.meters);
        m.records_in.increment(s.records_in - r.records_in);
        m.parse_errors.increment(s.parse_errors - r.parse_errors);
        m.filtered.increment(s.filtered - r.filtered);
        m.late.increment(s.late - r.late);
        m.evicted.increment(s.evicted - r.evicted);
        m.results.increment(s.results - r.results);
        m.alerts.increment(s.alerts - r.alerts);
        m.replayed.increment(s.replayed - r.replayed);
        *r = *s;
    }

    pub(crate) fn set_stats(&mut self, s: Stats) {
        self.stats = s;
        self.reported = s;
    }
}

/// Earliest and latest event times accepted: years 0000 to 9999. Outside, a time is treated as
/// unparsable (window arithmetic near the ends of `i64` would overflow, and no log is from then).
const MIN_EVENT_MS: i64 = -62_167_219_200_000;
const MAX_EVENT_MS: i64 = 253_402_300_799_999;

fn sane_time(t: Option<i64>) -> Option<i64> {
    t.filter(|t| (MIN_EVENT_MS..=MAX_EVENT_MS).contains(t))
}

/// What a result line is made of besides the aggregate states.
#[derive(Debug, Clone)]
struct ResultShape {
    name: Arc<str>,
    group_names: Vec<Arc<str>>,
    agg_names: Vec<Arc<str>>,
    size_ms: i64,
}

impl ResultShape {
    fn result(
        &self,
        start: i64,
        key: &[u8],
        ks: &KeyState,
        early: bool,
        evicted: u64,
    ) -> WindowResult {
        WindowResult {
            pipeline: self.name.clone(),
            window_start_ms: start,
            window_end_ms: start + self.size_ms,
            key: self
                .group_names
                .iter()
                .cloned()
                .zip(decode_key(key, self.group_names.len()))
                .collect(),
            values: self
                .agg_names
                .iter()
                .cloned()
                .zip(ks.aggs.iter().map(AggState::result))
                .collect(),
            early,
            evicted,
        }
    }
}

/// Evaluates the alert rules on a result; each fires at most once per window and key.
fn fire_alerts(
    alerts: &[AlertRule],
    stats: &mut Stats,
    r: &WindowResult,
    ks: &mut KeyState,
    out: &mut Vec<Emission>,
) {
    for (i, rule) in alerts.iter().enumerate() {
        let bit = 1u64 << i;
        if ks.alerted & bit != 0 {
            continue;
        }
        let hit = rule.when.eval(&|f| match rule.fields.get(f)? {
            AlertField::Agg(a) => ks.aggs.get(*a)?.number().map(Val::Num),
            AlertField::Key(k) => r.key.get(*k)?.1.as_deref().map(Val::Str),
        });
        if hit {
            ks.alerted |= bit;
            stats.alerts += 1;
            out.push(Emission::Alert {
                index: i,
                name: rule.name.clone(),
                result: r.clone(),
            });
        }
    }
}

/// Appends one present group-by value to a key: the bytes with 0x00 written as 0x00 0x01, then
/// 0x00 0x00. A missing value is a single 0x00 byte (written by the caller) after which no 0x01
/// follows. Byte order of keys is then the order of their value tuples (missing first), which is
/// the order results are emitted in.
fn push_key_part(buf: &mut Vec<u8>, v: &[u8]) {
    if memchr::memchr(0, v).is_none() {
        buf.extend_from_slice(v);
    } else {
        for &b in v {
            buf.push(b);
            if b == 0 {
                buf.push(1);
            }
        }
    }
    buf.extend_from_slice(&[0, 0]);
}

/// Splits a group key (see [`push_key_part`]) into its `n` values.
fn decode_key(k: &[u8], n: usize) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    for _ in 0..n {
        if k.get(i) != Some(&1) {
            out.push(None);
            i += 1;
            continue;
        }
        i += 1;
        let mut v = Vec::new();
        while i < k.len() {
            if k[i] == 0 {
                if k.get(i + 1) == Some(&1) {
                    v.push(0);
                    i += 2;
                    continue;
                }
                i += 2;
                break;
            }
            v.push(k[i]);
            i += 1;
        }
        out.push(Some(String::from_utf8_lossy(&v).into_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_round_trips_and_sorts_like_values() {
        let tuples: Vec<Vec<Option<&str>>> = vec![
            vec![None, Some("b")],
            vec![Some(""), None],
            vec![Some("a\0"), Some("")],
            vec![Some("a"), Some("z")],
            vec![Some("a\0b"), None],
            vec![Some("ab"), Some("")],
            vec![Some("info"), None],
            vec![Some("error"), Some("x")],
        ];
        let mut enc: Vec<(Vec<u8>, &Vec<Option<&str>>)> = tuples
            .iter()
            .map(|t| {
                let mut b = Vec::new();
                for v in t {
                    match v {
                        None => b.push(0),
                        Some(v) => {
                            b.push(1);
                            push_key_part(&mut b, v.as_bytes());
                        }
                    }
                }
                (b, t)
            })
            .collect();
        for (b, t) in &enc {
            let back = decode_key(b, 2);
            let want: Vec<Option<String>> = t.iter().map(|v| v.map(str::to_owned)).collect();
            assert_eq!(back, want);
        }
        enc.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<_> = enc.iter().map(|e| e.1.clone()).collect();
        let mut want = tuples.clone();
        want.sort();
        assert_eq!(order, want);
    }
}
