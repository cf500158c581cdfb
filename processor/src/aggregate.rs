//! Aggregate states: what a window keeps per key for each configured aggregate.
//!
//! | op | state | result |
//! |---|---|---|
//! | count | records (having `field`, if set) | integer |
//! | sum, min, max, avg | exact, over values that parse as numbers (others are skipped) | number, `null` when none |
//! | percentile | [`DDSketch`], 1% relative error | number, `null` when none |
//! | distinct | [`HyperLogLog`], 0.81% standard error | integer |
//! | topk | [`SpaceSaving`] | `[{"value": ..., "count": n}, ...]` |

use crate::codec::{Dec, DecodeError, Enc};
use crate::config::AggOp;
use crate::sketch::{ddsketch::DDSketch, hll::HyperLogLog, topk::SpaceSaving};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum AggState {
    Count(u64),
    Sum(f64),
    Min(Option<f64>),
    Max(Option<f64>),
    Avg { sum: f64, count: u64 },
    Percentile(f64, Box<DDSketch>),
    Distinct(Box<HyperLogLog>),
    TopK(Box<SpaceSaving>),
}

#[inline]
fn number(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

impl AggState {
    pub fn new(op: AggOp) -> Self {
        match op {
            AggOp::Count => AggState::Count(0),
            AggOp::Sum => AggState::Sum(0.0),
            AggOp::Min => AggState::Min(None),
            AggOp::Max => AggState::Max(None),
            AggOp::Avg => AggState::Avg { sum: 0.0, count: 0 },
            AggOp::Percentile(q) => AggState::Percentile(q, Box::default()),
            AggOp::Distinct => AggState::Distinct(Box::default()),
            AggOp::TopK(k) => AggState::TopK(Box::new(SpaceSaving::new(k))),
        }
    }

    /// Adds one record's value (`None`: the field is missing; for a `count` without a field the
    /// caller passes `Some("")`).
    #[inline]
    pub fn update(&mut self, value: Option<&str>) {
        let Some(v) = value else { return };
        match self {
            AggState::Count(n) => *n += 1,
            AggState::Sum(s) => {
                if let Some(x) = number(v) {
                    *s += x;
                }
            }
            AggState::Min(m) => {
                if let Some(x) = number(v) {
                    *m = Some(m.map_or(x, |m| m.min(x)));
                }
            }
            AggState::Max(m) => {
                if let Some(x) = number(v) {
                    *m = Some(m.map_or(x, |m| m.max(x)));
                }
            }
            AggState::Avg { sum, count } => {
                if let Some(x) = number(v) {
                    *sum += x;
                    *count += 1;
                }
            }
            AggState::Percentile(_, s) => {
                if let Some(x) = number(v) {
                    s.add(x);
                }
            }
            AggState::Distinct(h) => h.add_bytes(v.as_bytes()),
            AggState::TopK(t) => t.add(v),
        }
    }

    /// Adds what `other` aggregated (the same op, from another partition or member) to this
    /// state: the result is the state of both inputs together (exactly, except for the sketches'
    /// stated error bounds). A state of another op is ignored: states of one key and window
    /// are made from one config, so that would be a bug, not an input.
    pub fn merge(&mut self, other: &AggState) {
        match (self, other) {
            (AggState::Count(a), AggState::Count(b)) => *a += b,
            (AggState::Sum(a), AggState::Sum(b)) => *a += b,
            (AggState::Min(a), AggState::Min(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                }
            }
            (AggState::Max(a), AggState::Max(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                }
            }
            (AggState::Avg { sum, count }, AggState::Avg { sum: s2, count: c2 }) => {
                *sum += s2;
                *count += c2;
            }
            (AggState::Percentile(_, a), AggState::Percentile(_, b)) => a.merge(b),
            (AggState::Distinct(a), AggState::Distinct(b)) => a.merge(b),
            (AggState::TopK(a), AggState::TopK(b)) => a.merge(b),
            (a, b) => {
                debug_assert!(false, "merge of {a:?} with {b:?}");
            }
        }
    }

    /// The value as a number, for alert rules (`None` for top-K and empty states).
    pub fn number(&self) -> Option<f64> {
        match self {
            AggState::Count(n) => Some(*n as f64),
            AggState::Sum(s) => Some(*s),
            AggState::Min(m) | AggState::Max(m) => *m,
            AggState::Avg { sum, count } => (*count > 0).then(|| sum / *count as f64),
            AggState::Percentile(q, s) => s.quantile(*q),
            AggState::Distinct(h) => Some(h.estimate().round()),
            AggState::TopK(_) => None,
        }
    }

    /// The value as it appears in a result line.
    pub fn result(&self) -> Value {
        match self {
            AggState::Count(n) => json!(n),
            AggState::Distinct(h) => json!(h.estimate().round() as u64),
            AggState::TopK(t) => Value::Array(
                t.top()
                    .into_iter()
                    .map(|(v, c)| json!({"value": v, "count": c}))
                    .collect(),
            ),
            other => match other.number() {
                Some(x) => json!(x),
                None => Value::Null,
            },
        }
    }

    pub fn encode(&self, e: &mut Enc) {
        match self {
            AggState::Count(n) => {
                e.u8(0);
                e.u64(*n);
            }
            AggState::Sum(s) => {
                e.u8(1);
                e.f64(*s);
            }
            AggState::Min(m) | AggState::Max(m) => {
                e.u8(if matches!(self, AggState::Min(_)) {
                    2
                } else {
                    3
                });
                e.bool(m.is_some());
                e.f64(m.unwrap_or(0.0));
            }
            AggState::Avg { sum, count } => {
                e.u8(4);
                e.f64(*sum);
                e.u64(*count);
            }
            AggState::Percentile(q, s) => {
                // Tag 5 was our own sketch's state (still read: `DDSketch::decode_v1`).
                e.u8(8);
                e.f64(*q);
                s.encode(e);
            }
            AggState::Distinct(h) => {
                e.u8(6);
                h.encode(e);
            }
            AggState::TopK(t) => {
                e.u8(7);
                t.encode(e);
            }
        }
    }

    /// Decodes a state and checks it is the kind `op` keeps.
    pub fn decode(d: &mut Dec<'_>, op: AggOp) -> Result<Self, DecodeError> {
        let tag = d.u8()?;
        let s = match tag {
            0 => AggState::Count(d.u64()?),
            1 => AggState::Sum(d.f64()?),
            2 | 3 => {
                let some = d.bool()?;
                let v = d.f64()?;
                let m = some.then_some(v);
                if tag == 2 {
                    AggState::Min(m)
                } else {
                    AggState::Max(m)
                }
            }
            4 => AggState::Avg {
                sum: d.f64()?,
                count: d.u64()?,
            },
            5 => AggState::Percentile(d.f64()?, Box::new(DDSketch::decode_v1(d)?)),
            8 => AggState::Percentile(d.f64()?, Box::new(DDSketch::decode(d)?)),
            6 => AggState::Distinct(Box::new(HyperLogLog::decode(d)?)),
            7 => AggState::TopK(Box::new(SpaceSaving::decode(d)?)),
            t => return Err(d.err(format!("unknown aggregate tag {t}"))),
        };
        let fits = matches!(
            (&s, op),
            (AggState::Count(_), AggOp::Count)
                | (AggState::Sum(_), AggOp::Sum)
                | (AggState::Min(_), AggOp::Min)
                | (AggState::Max(_), AggOp::Max)
                | (AggState::Avg { .. }, AggOp::Avg)
                | (AggState::Distinct(_), AggOp::Distinct)
                | (AggState::TopK(_), AggOp::TopK(_))
        ) || matches!((&s, op), (AggState::Percentile(a, _), AggOp::Percentile(b)) if *a == b);
        if !fits {
            return Err(d.err(format!("aggregate state {tag} does not match {op:?}")));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_and_results() {
        let vals = [Some("3"), Some("x"), None, Some(" 1.5 "), Some("10")];
        let mut states: Vec<AggState> = [
            AggOp::Count,
            AggOp::Sum,
            AggOp::Min,
            AggOp::Max,
            AggOp::Avg,
            AggOp::Percentile(0.5),
            AggOp::Distinct,
            AggOp::TopK(2),
        ]
        .into_iter()
        .map(AggState::new)
        .collect();
        for v in vals {
            for s in &mut states {
                s.update(v);
            }
        }
        let r: Vec<Value> = states.iter().map(AggState::result).collect();
        assert_eq!(r[0], json!(4));
        assert_eq!(r[1], json!(14.5));
        assert_eq!(r[2], json!(1.5));
        assert_eq!(r[3], json!(10.0));
        assert_eq!(r[4], json!(14.5 / 3.0));
        let p50 = r[5].as_f64().unwrap();
        assert!((p50 - 3.0).abs() <= 0.03, "{p50}");
        assert_eq!(r[6], json!(4));
        assert_eq!(
            r[7],
            json!([{"value": " 1.5 ", "count": 1}, {"value": "10", "count": 1}])
        );
        assert_eq!(AggState::new(AggOp::Avg).result(), Value::Null);
        for (s, op) in states.iter().zip([
            AggOp::Count,
            AggOp::Sum,
            AggOp::Min,
            AggOp::Max,
            AggOp::Avg,
            AggOp::Percentile(0.5),
            AggOp::Distinct,
            AggOp::TopK(2),
        ]) {
            let mut e = Enc::default();
            s.encode(&mut e);
            assert_eq!(&AggState::decode(&mut Dec::new(&e.buf), op).unwrap(), s);
            assert!(AggState::decode(&mut Dec::new(&e.buf), AggOp::Percentile(0.9)).is_err());
        }
    }

    /// Any split of the values over partitions, merged in any order, gives the state of the
    /// whole (integers: sums are exact in f64; few distinct values: every sketch is exact).
    #[test]
    fn merged_partials_equal_the_whole() {
        use proptest::prelude::*;
        let ops = [
            AggOp::Count,
            AggOp::Sum,
            AggOp::Min,
            AggOp::Max,
            AggOp::Avg,
            AggOp::Percentile(0.9),
            AggOp::Distinct,
            AggOp::TopK(3),
        ];
        proptest!(|(vals in proptest::collection::vec((0u8..4, -30i32..30), 0..200))| {
            for op in ops {
                let mut whole = AggState::new(op);
                let mut parts: Vec<AggState> = (0..4).map(|_| AggState::new(op)).collect();
                for (p, v) in &vals {
                    let v = v.to_string();
                    whole.update(Some(&v));
                    parts[*p as usize].update(Some(&v));
                }
                let mut merged = AggState::new(op);
                for p in parts.iter().rev() {
                    merged.merge(p);
                }
                prop_assert_eq!(merged.result(), whole.result(), "{:?}", op);
            }
        });
    }
}
