//! Event-time windows with per-partition watermarks. Pure: no clock, no I/O, no runtime.
//!
//! **Assignment.** Window starts are multiples of `advance` since the Unix epoch; a window is
//! `[start, start + size)`. Tumbling windows have `advance == size`; a record falls into
//! `size / advance` hopping windows.
//!
//! **Watermark.** Each input partition tracks the highest event time it has delivered; its
//! watermark is that minus the allowed out-of-orderness. The overall watermark is the minimum over
//! *active* partitions: a partition that delivered nothing for `idle_timeout` (processing time,
//! as given by the driver) stops holding it back. If every partition is idle, the maximum over
//! partitions is used, so a stream that went quiet still closes what it can. The watermark never
//! goes back.
//!
//! **Closing.** A window is closed once `watermark >= end + grace`; its final results are emitted
//! then, one per key, in key order, windows in start order. A record whose window is closed is
//! *late* for that window and not counted there; [`AddOutcome::missed`] says how many of its windows
//! it missed, and the caller routes the record to the late output.
//!
//! **Bounds.** A window holds at most `max_keys` keys; a record of a further key is not aggregated
//! in that window and counted in [`AddOutcome::evicted`] and the window's `evicted` total, which
//! its results report.

use crate::aggregate::AggState;
use crate::codec::{Dec, DecodeError, Enc};
use crate::config::{AggOp, WindowConfig};
use crate::sketch::KeyHashBuilder;
use std::collections::{BTreeMap, HashMap};

/// One key's aggregate states in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// One per configured aggregate, in config order.
    pub aggs: Vec<AggState>,
    /// Changed since the last early emission.
    pub dirty: bool,
    /// Bit `i`: alert `i` already fired for this window and key.
    pub alerted: u64,
}

/// One open window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub keys: HashMap<Box<[u8]>, KeyState, KeyHashBuilder>,
    /// Records not aggregated here because `max_keys` keys were already present.
    pub evicted: u64,
}

impl Window {
    /// Evicted count, then the keys in key order with their states (the snapshot's layout, and
    /// a shipped partial's: `repartition.rs`).
    pub fn encode(&self, e: &mut Enc) {
        e.u64(self.evicted);
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        e.len(keys.len());
        for (k, ks) in keys {
            e.bytes(k);
            e.bool(ks.dirty);
            e.u64(ks.alerted);
            for a in &ks.aggs {
                a.encode(e);
            }
        }
    }

    /// Reads what [`Window::encode`] wrote, with these operators.
    pub fn decode(d: &mut Dec<'_>, ops: &[AggOp]) -> Result<Self, DecodeError> {
        let mut w = Window {
            evicted: d.u64()?,
            ..Window::default()
        };
        let nk = d.len(13)?;
        for _ in 0..nk {
            let k: Box<[u8]> = d.bytes()?.into();
            let dirty = d.bool()?;
            let alerted = d.u64()?;
            let mut aggs = Vec::with_capacity(ops.len());
            for op in ops {
                aggs.push(AggState::decode(d, *op)?);
            }
            w.keys.insert(
                k,
                KeyState {
                    aggs,
                    dirty,
                    alerted,
                },
            );
        }
        Ok(w)
    }
}

/// Per-partition progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionClock {
    /// Highest event time delivered, if any record had one.
    pub max_event_ms: Option<i64>,
    /// Processing time of the last record delivered.
    pub last_active_ms: i64,
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOutcome {
    /// Windows the record was aggregated into.
    pub accepted: u32,
    /// Windows the record belonged to that were already closed.
    pub missed: u32,
    /// Windows that refused the record's key (full at `max_keys`).
    pub evicted: u32,
}

/// A window whose final results are due.
#[derive(Debug)]
pub struct ClosedWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub evicted: u64,
    /// Sorted by key.
    pub keys: Vec<(Box<[u8]>, KeyState)>,
}

/// All open windows of a pipeline and the watermark that closes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    size_ms: i64,
    advance_ms: i64,
    lateness_ms: i64,
    grace_ms: i64,
    idle_timeout_ms: i64,
    max_keys: usize,
    ops: Vec<AggOp>,
    /// Open windows by start. Invariant: every window here has `end + grace > watermark`,
    /// unless `hold_closed`.
    open: BTreeMap<i64, Window>,
    /// Indexed by the caller's partition number.
    partitions: Vec<PartitionClock>,
    /// `i64::MIN` until the first record with an event time.
    watermark: i64,
    /// Windows the watermark passed stay in `open` (no longer taking records) until a merge
    /// takes them with [`Windows::take_closed`]: set when this is one partial of a merged
    /// pipeline (see `merge.rs`). Not part of the snapshot: the driver sets it again.
    hold_closed: bool,
}

impl Windows {
    pub fn new(cfg: &WindowConfig, ops: Vec<AggOp>, max_keys: usize) -> Self {
        Self {
            size_ms: cfg.size_ms,
            advance_ms: cfg.advance_ms,
            lateness_ms: cfg.allowed_lateness_ms,
            grace_ms: cfg.grace_ms,
            idle_timeout_ms: cfg.idle_timeout_ms,
            max_keys,
            ops,
            open: BTreeMap::new(),
            partitions: Vec::new(),
            watermark: i64::MIN,
            hold_closed: false,
        }
    }

    /// Keeps closed windows for [`Windows::take_closed`] instead of closing them on
    /// [`Windows::advance`]; records of such a window are late all the same.
    pub fn hold_closed(&mut self) {
        self.hold_closed = true;
    }

    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    pub fn idle_timeout_ms(&self) -> i64 {
        self.idle_timeout_ms
    }

    /// Processing time of the last record of any partition, if one was seen.
    pub fn last_active_ms(&self) -> Option<i64> {
        self.partitions.iter().map(|p| p.last_active_ms).max()
    }

    /// Moves the watermark up to `wm` (never back): a merge does this to a partition that went
    /// idle, so what it holds of the windows the others passed can be taken, and its records
    /// for those windows are late from now on, as in every other partition.
    pub fn raise_watermark(&mut self, wm: i64) {
        self.watermark = self.watermark.max(wm);
    }

    /// Removes and returns, in start order, the windows with `end + grace <= through` (with
    /// `hold_closed`, the closed windows kept for the merge).
    pub fn take_closed(&mut self, through: i64, out: &mut Vec<(i64, Window)>) {
        while let Some((&start, _)) = self.open.first_key_value() {
            if !self.closed_by(start, through) {
                break;
            }
            if let Some(w) = self.open.pop_first() {
                out.push(w);
            }
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    /// Whether the watermark has passed the end (and grace) of the oldest window held: with
    /// `hold_closed`, a closed window waits to be taken.
    pub fn has_closed(&self) -> bool {
        self.open
            .first_key_value()
            .is_some_and(|(&start, _)| self.closed_by(start, self.watermark))
    }

    /// Whether the window starting at `start` is closed once the watermark is `through`.
    fn closed_by(&self, start: i64, through: i64) -> bool {
        start
            .saturating_add(self.size_ms)
            .saturating_add(self.grace_ms)
            <= through
    }

    /// Removes and returns every window, open or closed, in start order: an upstream instance
    /// of a repartitioned pipeline ships them as deltas (`repartition.rs`). The watermark and
    /// clocks stay, so a later record of a window the watermark passed is late all the same.
    pub fn take_all(&mut self, out: &mut Vec<(i64, Window)>) {
        out.extend(std::mem::take(&mut self.open));
    }

    /// Merges `w`, a partial of the window starting at `start` shipped by an upstream instance,
    /// into this window set. `false` (and nothing merged) if the watermark already passed it:
    /// the partial is late.
    pub fn absorb(&mut self, start: i64, w: Window) -> bool {
        if self.closed(start) {
            return false;
        }
        crate::merge::merge_window(self.open.entry(start).or_default(), w);
        true
    }

    /// The set's operators, in config order (to decode shipped partials).
    pub fn ops(&self) -> &[AggOp] {
        &self.ops
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    pub fn open_keys(&self) -> usize {
        self.open.values().map(|w| w.keys.len()).sum()
    }

    /// Mutable access to open windows (for early emission).
    pub fn open_mut(&mut self) -> impl Iterator<Item = (i64, &mut Window)> {
        self.open.iter_mut().map(|(s, w)| (*s, w))
    }

    /// The open window starting at `start`, if any.
    pub fn window_mut(&mut self, start: i64) -> Option<&mut Window> {
        self.open.get_mut(&start)
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    fn closed(&self, start: i64) -> bool {
        start
            .saturating_add(self.size_ms)
            .saturating_add(self.grace_ms)
            <= self.watermark
    }

    /// Aggregates a record at `event_ms` under `key`: `update` is called once per window that
    /// takes it, with that window's states for the key.
    #[inline]
    pub fn add(
        &mut self,
        event_ms: i64,
        key: &[u8],
        mut update: impl FnMut(&mut [AggState]),
    ) -> AddOutcome {
        let mut out = AddOutcome::default();
        let last_start = event_ms.div_euclid(self.advance_ms) * self.advance_ms;
        let mut start = last_start;
        while start > event_ms.saturating_sub(self.size_ms) {
            if self.closed(start) {
                out.missed += 1;
            } else {
                let w = self.open.entry(start).or_default();
                let full = w.keys.len() >= self.max_keys;
                match w.keys.get_mut(key) {
                    Some(ks) => {
                        update(&mut ks.aggs);
                        ks.dirty = true;
                        out.accepted += 1;
                    }
                    None if full => {
                        w.evicted += 1;
                        out.evicted += 1;
                    }
                    None => {
                        let mut aggs: Vec<AggState> =
                            self.ops.iter().map(|op| AggState::new(*op)).collect();
                        update(&mut aggs);
                        w.keys.insert(
                            key.into(),
                            KeyState {
                                aggs,
                                dirty: true,
                                alerted: 0,
                            },
                        );
                        out.accepted += 1;
                    }
                }
            }
            start -= self.advance_ms;
        }
        out
    }

    /// Notes a record from `partition` at `event_ms` (if it had one) seen at processing time `now_ms`.
    pub fn observe(&mut self, partition: usize, event_ms: Option<i64>, now_ms: i64) {
        if self.partitions.len() <= partition {
            self.partitions.resize(
                partition + 1,
                PartitionClock {
                    max_event_ms: None,
                    last_active_ms: now_ms,
                },
            );
        }
        let p = &mut self.partitions[partition];
        p.last_active_ms = p.last_active_ms.max(now_ms);
        if let Some(t) = event_ms {
            p.max_event_ms = Some(p.max_event_ms.map_or(t, |m| m.max(t)));
        }
    }

    /// Recomputes the watermark at processing time `now_ms` and closes the windows it passes.
    pub fn advance(&mut self, now_ms: i64, closed: &mut Vec<ClosedWindow>) {
        let mut active_min: Option<i64> = None;
        let mut all_max: Option<i64> = None;
        for p in &self.partitions {
            let Some(t) = p.max_event_ms else { continue };
            let wm = t.saturating_sub(self.lateness_ms);
            all_max = Some(all_max.map_or(wm, |m: i64| m.max(wm)));
            if now_ms.saturating_sub(p.last_active_ms) < self.idle_timeout_ms {
                active_min = Some(active_min.map_or(wm, |m: i64| m.min(wm)));
            }
        }
        if let Some(wm) = active_min.or(all_max)
            && wm > self.watermark
        {
            self.watermark = wm;
            if !self.hold_closed {
                self.close_passed(closed);
            }
        }
    }

    fn close_passed(&mut self, closed: &mut Vec<ClosedWindow>) {
        while let Some((&start, _)) = self.open.first_key_value() {
            if !self.closed(start) {
                break;
            }
            if let Some((start, w)) = self.open.pop_first() {
                closed.push(Self::finish(start, start + self.size_ms, w));
            }
        }
    }

    fn finish(start_ms: i64, end_ms: i64, w: Window) -> ClosedWindow {
        let mut keys: Vec<(Box<[u8]>, KeyState)> = w.keys.into_iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ClosedWindow {
            start_ms,
            end_ms,
            evicted: w.evicted,
            keys,
        }
    }

    /// Closes every open window regardless of the watermark: for the end of a bounded input only.
    /// Never call it before a checkpoint; a restarted pipeline would emit those windows again.
    pub fn drain(&mut self, closed: &mut Vec<ClosedWindow>) {
        while let Some((start, w)) = self.open.pop_first() {
            closed.push(Self::finish(start, start + self.size_ms, w));
        }
    }

    pub fn encode(&self, e: &mut Enc) {
        e.i64(self.watermark);
        e.len(self.partitions.len());
        for p in &self.partitions {
            e.bool(p.max_event_ms.is_some());
            e.i64(p.max_event_ms.unwrap_or(0));
            e.i64(p.last_active_ms);
        }
        e.len(self.open.len());
        for (start, w) in &self.open {
            e.i64(*start);
            w.encode(e);
        }
    }

    /// Restores what [`Windows::encode`] wrote into a `Windows` made with the same config.
    pub fn decode_into(&mut self, d: &mut Dec<'_>) -> Result<(), DecodeError> {
        self.watermark = d.i64()?;
        let n = d.len(17)?;
        self.partitions.clear();
        for _ in 0..n {
            let has = d.bool()?;
            let t = d.i64()?;
            let last = d.i64()?;
            self.partitions.push(PartitionClock {
                max_event_ms: has.then_some(t),
                last_active_ms: last,
            });
        }
        let n = d.len(20)?;
        self.open.clear();
        for _ in 0..n {
            let start = d.i64()?;
            if start.rem_euclid(self.advance_ms) != 0 {
                return Err(d.err("window start not aligned to the configured advance"));
            }
            let w = Window::decode(d, &self.ops)?;
            self.open.insert(start, w);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Emit;

    fn cfg(size: i64, advance: i64, lateness: i64, grace: i64) -> WindowConfig {
        WindowConfig {
            size_ms: size,
            advance_ms: advance,
            allowed_lateness_ms: lateness,
            grace_ms: grace,
            idle_timeout_ms: 1000,
            emit: Emit::Final,
        }
    }

    fn count(w: &mut Windows, t: i64, key: &[u8]) -> AddOutcome {
        w.add(t, key, |a| a[0].update(Some("")))
    }

    fn step(
        w: &mut Windows,
        p: usize,
        t: i64,
        now: i64,
        key: &[u8],
    ) -> (AddOutcome, Vec<ClosedWindow>) {
        let o = count(w, t, key);
        w.observe(p, Some(t), now);
        let mut c = Vec::new();
        w.advance(now, &mut c);
        (o, c)
    }

    #[test]
    fn tumbling_with_lateness_and_grace() {
        let mut w = Windows::new(&cfg(10, 10, 2, 3), vec![AggOp::Count], 100);
        assert!(step(&mut w, 0, 5, 0, b"a").1.is_empty());
        assert!(step(&mut w, 0, 14, 0, b"a").1.is_empty()); // wm 12
        // Out of order but within lateness + grace: still counted in [0, 10).
        assert_eq!(step(&mut w, 0, 9, 0, b"b").0.accepted, 1);
        let (_, closed) = step(&mut w, 0, 15, 0, b"a"); // wm 13 >= 10 + 3
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start_ms, closed[0].end_ms), (0, 10));
        let keys: Vec<_> = closed[0]
            .keys
            .iter()
            .map(|(k, s)| (&k[..], s.aggs[0].number()))
            .collect();
        assert_eq!(keys, vec![(&b"a"[..], Some(1.0)), (&b"b"[..], Some(1.0))]);
        // Now late.
        let (o, _) = step(&mut w, 0, 3, 0, b"a");
        assert_eq!((o.accepted, o.missed), (0, 1));
        assert_eq!(w.watermark(), Some(13));
    }

    #[test]
    fn hopping_assigns_every_overlapping_window() {
        let mut w = Windows::new(&cfg(30, 10, 0, 0), vec![AggOp::Count], 100);
        assert_eq!(count(&mut w, 25, b"k").accepted, 3); // [0,30) [10,40) [20,50)
        assert_eq!(count(&mut w, -5, b"k").accepted, 3); // [-30,0) [-20,10) [-10,20)
        assert_eq!(w.open_windows(), 6);
        let (_, closed) = step(&mut w, 0, 40, 0, b"k");
        let starts: Vec<i64> = closed.iter().map(|c| c.start_ms).collect();
        assert_eq!(starts, vec![-30, -20, -10, 0, 10]);
    }

    #[test]
    fn idle_partition_stops_holding_the_watermark() {
        let mut w = Windows::new(&cfg(10, 10, 0, 0), vec![AggOp::Count], 100);
        step(&mut w, 0, 5, 0, b"a");
        step(&mut w, 1, 100, 0, b"a");
        assert_eq!(w.watermark(), Some(5)); // partition 0 holds it
        let mut c = Vec::new();
        w.advance(999, &mut c);
        assert!(c.is_empty());
        w.advance(1000, &mut c); // partition 0 idle for 1000ms; partition 1 too: max of both
        assert_eq!(w.watermark(), Some(100));
        assert_eq!(c.len(), 1);
        // Partition 1 active again keeps it; the watermark never goes back.
        step(&mut w, 1, 101, 1500, b"a");
        step(&mut w, 0, 6, 1500, b"a");
        assert_eq!(w.watermark(), Some(101));
    }

    #[test]
    fn max_keys_evicts_new_keys() {
        let mut w = Windows::new(&cfg(10, 10, 0, 0), vec![AggOp::Count], 2);
        count(&mut w, 1, b"a");
        count(&mut w, 1, b"b");
        assert_eq!(count(&mut w, 1, b"c").evicted, 1);
        assert_eq!(count(&mut w, 1, b"a").accepted, 1);
        let mut c = Vec::new();
        w.drain(&mut c);
        assert_eq!(c[0].evicted, 1);
        assert_eq!(c[0].keys.len(), 2);
    }
}
