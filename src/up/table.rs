//! The live table of `ferry up`: the latest closed window of each pipeline, one row per key.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Fields of a result that are not aggregates.
const META: [&str; 6] = [
    "pipeline",
    "window_start",
    "window_end",
    "key",
    "early",
    "evicted",
];

#[derive(Debug, Default)]
pub struct Table {
    /// Per pipeline: the newest window start seen, and its rows by rendered key.
    latest: BTreeMap<String, (String, BTreeMap<String, serde_json::Value>)>,
}

impl Table {
    /// Takes one window result (the contract's JSON object).
    pub fn add(&mut self, v: serde_json::Value) {
        let Some(pipeline) = v["pipeline"].as_str().map(str::to_owned) else {
            return;
        };
        let Some(start) = v["window_start"].as_str().map(str::to_owned) else {
            return;
        };
        let key = v["key"]
            .as_object()
            .map(|k| {
                k.iter()
                    .map(|(n, v)| {
                        format!(
                            "{n}={}",
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let entry = self
            .latest
            .entry(pipeline)
            .or_insert_with(|| (start.clone(), BTreeMap::new()));
        if start > entry.0 {
            *entry = (start.clone(), BTreeMap::new());
        }
        if start == entry.0 {
            entry.1.insert(key, v);
        }
    }

    /// The table as text; on a terminal, it clears the screen first so it refreshes in place.
    pub fn render(&self, status: &str, clear: bool) -> String {
        let mut out = String::new();
        if clear {
            out.push_str("\x1b[2J\x1b[H");
        }
        let _ = writeln!(out, "{status}");
        if self.latest.is_empty() {
            let _ = writeln!(out, "  (waiting for the first windows to close…)\n");
        }
        for (pipeline, (start, rows)) in &self.latest {
            let end = rows
                .values()
                .next()
                .and_then(|v| v["window_end"].as_str())
                .unwrap_or("");
            let _ = writeln!(out, "\n{pipeline}  [{start} .. {end})");
            let mut columns: Vec<String> = Vec::new();
            for v in rows.values() {
                for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !META.contains(&k.as_str()) && !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
            let _ = write!(out, "  {:<32}", "key");
            for c in &columns {
                let _ = write!(out, " {c:>12}");
            }
            out.push('\n');
            for (key, v) in rows {
                let _ = write!(out, "  {key:<32}");
                for c in &columns {
                    let cell = match &v[c] {
                        serde_json::Value::Number(n) => match n.as_f64() {
                            Some(f) if f.fract() != 0.0 => format!("{f:.1}"),
                            _ => n.to_string(),
                        },
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    let _ = write!(out, " {cell:>12}");
                }
                out.push('\n');
            }
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_window_per_pipeline() {
        let mut t = Table::default();
        let r = |ws: &str, svc: &str, n: u64| serde_json::json!({"pipeline":"errors","window_start":ws,"window_end":"x","key":{"service":svc},"errors":n});
        t.add(r("2026-01-01T00:00:00Z", "a", 1));
        t.add(r("2026-01-01T00:00:05Z", "a", 2));
        t.add(r("2026-01-01T00:00:05Z", "b", 3));
        t.add(r("2026-01-01T00:00:00Z", "c", 9));
        let text = t.render("status", false);
        assert!(text.contains("service=a"), "{text}");
        assert!(text.contains("service=b"), "{text}");
        assert!(!text.contains("service=c"), "{text}");
        assert!(text.contains("errors"), "{text}");
    }
}
