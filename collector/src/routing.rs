//! Routing rules: which topics a record goes to.
//!
//! Rules come from the collector's YAML (`routes:`) and are evaluated in order for every record
//! arriving on a topic they apply to. A rule matches on the incoming topic, on fields (the
//! record's own fields, or a top-level field of a JSON line), and on a regex over the line. Its
//! action is one of:
//! - `to: [topics]` — send the record to these topics instead of where it was going; stop.
//! - `copy: [topics]` — also send a copy to these topics; keep evaluating.
//! - `drop: true` — store it nowhere; stop.
//!
//! A record no stopping rule matched goes to the topic it was posted to. Every match is counted
//! per rule and action. The router is a plain struct: [`Router::route`] is pure, and the ingest
//! path skips decoding entirely when [`Router::applies_to`] says no rule looks at a topic.

use ferry_core::record::Record;
use regex::bytes::Regex;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// One rule as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics (`ferry_collector_routed_records_total{rule=...}`).
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Send matching records to these topics instead; stop evaluating.
    #[serde(default)]
    pub to: Vec<String>,
    /// Also send a copy of matching records to these topics; keep evaluating.
    #[serde(default)]
    pub copy: Vec<String>,
    /// Store matching records nowhere; stop evaluating.
    #[serde(default)]
    pub drop: bool,
}

/// What a rule matches on; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Incoming topic names this rule applies to (any topic when empty).
    #[serde(default, deserialize_with = "one_or_many")]
    pub topic: Vec<String>,
    /// Field name → exact value.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A regex searched for in the line's bytes.
    #[serde(default)]
    pub regex: Option<LineRegex>,
}

/// A regex validated while the config is parsed, so a bad one is reported at its line and column.
#[derive(Debug, Clone)]
pub struct LineRegex(pub Regex);

impl<'de> Deserialize<'de> for LineRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(LineRegex)
            .map_err(|e| serde::de::Error::custom(format!("invalid regex: {e}")))
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Checks the rules as a whole (each has exactly one action, topics are valid names); the
/// error names the first problem. [`check`] records all of them.
pub fn validate(routes: &[RouteConfig]) -> Result<(), String> {
    let mut p = ferry_core::config::Problems::new();
    for r in routes {
        check(r, &mut p);
    }
    match p.iter().next() {
        Some(first) => Err(first.message.clone()),
        None => Ok(()),
    }
}

/// Records every problem of one rule.
pub fn check(r: &RouteConfig, p: &mut ferry_core::config::Problems) {
    let actions =
        usize::from(!r.to.is_empty()) + usize::from(!r.copy.is_empty()) + usize::from(r.drop);
    if actions != 1 {
        p.add(
            "",
            format!(
                "route {:?}: give exactly one of `to`, `copy` or `drop: true`",
                r.name
            ),
        );
    }
    for t in r.to.iter().chain(&r.copy).chain(&r.matcher.topic) {
        if let Err(e) = ferry_core::topic::validate_name(t) {
            p.add("", format!("route {:?}: {e}", r.name));
        }
    }
}

/// Where one record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The topic it was posted to, and nowhere else.
    Original,
    /// Exactly these topics (deduplicated, in rule order); empty means dropped.
    Topics(Vec<usize>),
}

/// The compiled rule set. Topic names are interned: a decision lists indexes into
/// [`Router::topic_name`] so routing a record allocates nothing when no rule matches.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<RouteConfig>,
    names: Vec<String>,
}

impl Router {
    pub fn new(rules: Vec<RouteConfig>) -> Self {
        Self {
            rules,
            names: Vec::new(),
        }
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Whether any rule could match a record posted to `topic` (if not, batches for it are
    /// stored without being decoded).
    pub fn applies_to(&self, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.matcher.topic.is_empty() || r.matcher.topic.iter().any(|t| t == topic))
    }

    pub fn topic_name(&self, i: usize) -> &str {
        &self.names[i]
    }

    fn intern(&mut self, t: &str) -> usize {
        match self.names.iter().position(|n| n == t) {
            Some(i) => i,
            None => {
                self.names.push(t.to_owned());
                self.names.len() - 1
            }
        }
    }

    /// Decides where `record`, posted to `topic`, goes. Calls `matched(rule_index)` for each
    /// rule that matched (the caller counts them).
    pub fn route(
        &mut self,
        topic: &str,
        record: &Record,
        mut matched: impl FnMut(usize),
    ) -> Decision {
        let mut copies: Vec<usize> = Vec::new();
        for i in 0..self.rules.len() {
            if !matches(&self.rules[i].matcher, topic, record) {
                continue;
            }
            matched(i);
            let rule = self.rules[i].clone();
            if rule.drop {
                return Decision::Topics(copies);
            }
            if !rule.copy.is_empty() {
                for t in &rule.copy {
                    let ix = self.intern(t);
                    if !copies.contains(&ix) {
                        copies.push(ix);
                    }
                }
                continue;
            }
            for t in &rule.to {
                let ix = self.intern(t);
                if !copies.contains(&ix) {
                    copies.push(ix);
                }
            }
            return Decision::Topics(copies);
        }
        if copies.is_empty() {
            Decision::Original
        } else {
            let ix = self.intern(topic);
            if !copies.contains(&ix) {
                copies.insert(0, ix);
            }
            Decision::Topics(copies)
        }
    }

    pub fn rule(&self, i: usize) -> &RouteConfig {
        &self.rules[i]
    }
}

fn matches(m: &MatchConfig, topic: &str, record: &Record) -> bool {
    if !m.topic.is_empty() && !m.topic.iter().any(|t| t == topic) {
        return false;
    }
    for (k, v) in &m.fields {
        if field_value(record, k).as_deref() != Some(v.as_str()) {
            return false;
        }
    }
    if let Some(re) = &m.regex {
        if !re.0.is_match(&record.line) {
            return false;
        }
    }
    true
}

/// A record's field: one of its own key/value fields, or else a top-level string, number or
/// boolean of its line when the line is a JSON object.
pub fn field_value(record: &Record, key: &str) -> Option<String> {
    if let Some(f) = record.fields.iter().find(|f| &*f.key == key) {
        return Some(f.value.to_string());
    }
    let line = record.line.as_ref();
    if line.first().copied() != Some(b'{') {
        return None;
    }
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    match obj.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::record::Field;

    fn router(yaml: &str) -> Router {
        let rules: Vec<RouteConfig> =
            ferry_core::config::load_str(yaml, std::path::Path::new("routes.yaml")).unwrap();
        validate(&rules).unwrap();
        Router::new(rules)
    }

    fn names(r: &Router, d: &Decision) -> Vec<String> {
        match d {
            Decision::Original => vec!["<original>".into()],
            Decision::Topics(v) => v.iter().map(|&i| r.topic_name(i).to_owned()).collect(),
        }
    }

    #[test]
    fn to_copy_drop_and_fallthrough() {
        let mut r = router(
            r#"
- name: drop-debug
  match: { topic: app, regex: '"level":"debug"' }
  drop: true
- name: audit-copy
  match: { fields: { env: prod } }
  copy: [audit]
- name: errors
  match: { topic: [app, web], fields: { level: error } }
  to: [errors]
"#,
        );
        let rec = |line: &str, env: Option<&str>| {
            let mut r = Record::from_line(line.as_bytes().to_vec());
            if let Some(e) = env {
                r.fields.push(Field::new("env", e));
            }
            r
        };
        let mut hits = Vec::new();
        let d = r.route("app", &rec(r#"{"level":"debug"}"#, None), |i| hits.push(i));
        assert_eq!(d, Decision::Topics(vec![]));
        assert_eq!(hits, vec![0]);
        let d = r.route("app", &rec(r#"{"level":"info"}"#, None), |_| {});
        assert_eq!(d, Decision::Original);
        let d = r.route("app", &rec(r#"{"level":"error"}"#, Some("prod")), |_| {});
        assert_eq!(names(&r, &d), vec!["audit", "errors"]);
        let d = r.route("app", &rec(r#"{"level":"info"}"#, Some("prod")), |_| {});
        assert_eq!(names(&r, &d), vec!["app", "audit"]);
        // The debug rule only applies to `app`.
        let d = r.route("other", &rec(r#"{"level":"debug"}"#, None), |_| {});
        assert_eq!(d, Decision::Original);
        assert!(
            r.applies_to("other"),
            "the copy rule applies to every topic"
        );
    }

    #[test]
    fn json_fields_and_non_json_lines() {
        let rec = Record::from_line(&br#"{"level":"error","code":500,"ok":false}"#[..]);
        assert_eq!(field_value(&rec, "level").as_deref(), Some("error"));
        assert_eq!(field_value(&rec, "code").as_deref(), Some("500"));
        assert_eq!(field_value(&rec, "ok").as_deref(), Some("false"));
        assert_eq!(field_value(&rec, "missing"), None);
        let plain = Record::from_line(&b"level=error not json"[..]);
        assert_eq!(field_value(&plain, "level"), None);
        let broken = Record::from_line(&b"{\"level\": "[..]);
        assert_eq!(field_value(&broken, "level"), None);
    }

    #[test]
    fn bad_rules_are_refused() {
        let rules: Vec<RouteConfig> = ferry_core::config::load_str(
            "- name: both\n  to: [a]\n  drop: true\n",
            std::path::Path::new("r.yaml"),
        )
        .unwrap();
        assert!(validate(&rules).unwrap_err().contains("exactly one"));
        let err = ferry_core::config::load_str::<Vec<RouteConfig>>(
            "- name: bad\n  match:\n    regex: '(unclosed'\n  drop: true\n",
            std::path::Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("r.yaml:3:"), "{err}");
        assert!(err.to_string().contains("invalid regex"), "{err}");
    }
}
