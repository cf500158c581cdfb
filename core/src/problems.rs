//! Problems a component's checks find in a config after it parsed, and where they are in the file.
//!
//! Parsing (syntax, types, unknown keys) stops at the first error, which serde-saphyr locates.
//! What parses but cannot run (a relative glob, a regex that does not compile, two inputs with one
//! name, limits that contradict each other) is found afterwards by each component's `check`,
//! which records **every** problem in a [`Problems`] under a key path such as
//! `agent.inputs[0].multiline.start_pattern`. [`Locations`] maps such a path back to the line and
//! column of that key's value in the YAML text (or of its nearest ancestor that is written in the
//! file, for a value left at its default), so `ferry check` and every component report all
//! problems at once, each as `file:line:col: message`, with a hint where there is one.

use std::collections::HashMap;
use std::fmt;

/// One problem: the key path it is about, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path from the file's root, e.g. `agent.inputs[1].include[0]`.
    pub path: String,
    pub message: String,
    /// A suggested fix, printed after the message.
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Collects the problems of a config section; [`Problems::nested`] prefixes the paths of what a
/// sub-check records, so each check names paths relative to the value it checks.
#[derive(Debug, Default)]
pub struct Problems {
    prefix: String,
    items: Vec<Problem>,
}

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `key` (relative to the current prefix; "" for the value itself).
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        self.push(key, message.into(), None);
    }

    /// Records a problem with a suggested fix.
    pub fn add_hint(&mut self, key: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(key, message.into(), Some(hint.into()));
    }

    fn push(&mut self, key: &str, message: String, hint: Option<String>) {
        let path = join(&self.prefix, key);
        self.items.push(Problem {
            path,
            message,
            hint,
        });
    }

    /// Runs `f` with paths prefixed by `key` (e.g. `inputs[2]`).
    pub fn nested<R>(&mut self, key: &str, f: impl FnOnce(&mut Problems) -> R) -> R {
        let saved = std::mem::take(&mut self.prefix);
        self.prefix = join(&saved, key);
        let r = f(self);
        self.prefix = saved;
        r
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.items
    }

    /// All problems on one line each, for errors that have no file to point into.
    pub fn to_lines(&self) -> String {
        self.items
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => key.to_owned(),
        (false, false) if key.starts_with('[') => format!("{prefix}{key}"),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// Where each key path's value starts in a YAML text (1-based line and column).
#[derive(Debug, Default)]
pub struct Locations {
    map: HashMap<String, (u64, u64)>,
}

/// A container being walked: a mapping waiting for a key or a value, or a sequence.
enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

impl Locations {
    /// Walks the YAML events of `text`. A text that does not parse gives what was read before the
    /// error (the parse error itself is reported by the deserializer, with its own position).
    pub fn of(text: &str) -> Self {
        use serde_saphyr::granit_parser::{Event, Parser};
        let mut map = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let at = (span.start.line() as u64, span.start.col() as u64 + 1);
            // The path of the node this event starts, if it is a node in value position.
            let node_path = |stack: &mut Vec<Frame>| -> Option<String> {
                match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        Some(p)
                    }
                    Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    // A scalar in key position names the next value.
                    if let Some(Frame::Map { key, .. }) = stack.last_mut()
                        && key.is_none()
                    {
                        *key = Some(value.into_owned());
                        continue;
                    }
                    if let Some(p) = node_path(&mut stack) {
                        map.entry(p).or_insert(at);
                    }
                }
                Event::Alias(_) => {
                    if let Some(p) = node_path(&mut stack) {
                        map.entry(p).or_insert(at);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    // A collection used as a key has no path of its own; give it a throwaway one.
                    let path = match stack.last() {
                        Some(Frame::Map { key: None, .. }) => None,
                        _ => node_path(&mut stack),
                    };
                    let path = match path {
                        Some(p) => {
                            map.entry(p.clone()).or_insert(at);
                            p
                        }
                        None => "\u{0}complex-key".to_owned(),
                    };
                    stack.push(if is_map {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        Self { map }
    }

    /// The position of `path`'s value, or of its nearest ancestor written in the file, or 1:1.
    pub fn find(&self, path: &str) -> (u64, u64) {
        let mut p = path;
        loop {
            if let Some(at) = self.map.get(p) {
                return *at;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return (1, 1),
            }
        }
    }
}

/// `a.b[2]` → `a.b`; `a.b` → `a`; `a` → `` ; `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "agent:\n  inputs:\n    - name: a\n      include: [\"x\", \"/y\"]\n      multiline:\n        start_pattern: '^(\\d{4'\n    - name: b\ncollector:\n  listen: \"127.0.0.1:0\"\n";

    #[test]
    fn paths_map_to_their_values() {
        let l = Locations::of(TEXT);
        assert_eq!(l.find("agent.inputs[0].name"), (3, 13));
        assert_eq!(l.find("agent.inputs[0].include[0]"), (4, 17));
        assert_eq!(l.find("agent.inputs[0].include[1]"), (4, 22));
        assert_eq!(l.find("agent.inputs[0].multiline.start_pattern"), (6, 24));
        assert_eq!(l.find("agent.inputs[1].name"), (7, 13));
        assert_eq!(l.find("collector.listen"), (9, 11));
    }

    #[test]
    fn a_default_value_points_at_its_nearest_written_ancestor() {
        let l = Locations::of(TEXT);
        // inputs[1] has no `topic`: the problem points at the item itself.
        assert_eq!(l.find("agent.inputs[1].topic"), (7, 7));
        assert_eq!(l.find("processor.pipelines[0]"), (1, 1));
    }

    #[test]
    fn nested_prefixes_compose() {
        let mut p = Problems::new();
        p.nested("agent", |p| {
            p.nested("inputs[0]", |p| p.add("include[1]", "relative"));
            p.add_hint("batch.max_bytes", "too big", "at most 64MiB");
        });
        p.add("", "root");
        let v = p.into_vec();
        assert_eq!(v[0].path, "agent.inputs[0].include[1]");
        assert_eq!(
            v[1].to_string(),
            "agent.batch.max_bytes: too big (hint: at most 64MiB)"
        );
        assert_eq!(v[2].path, "");
    }

    #[test]
    fn garbage_gives_what_parsed_and_never_panics() {
        for text in [
            "a: [",
            "{{{{",
            ": : :",
            "a:\n  - b: c\n -",
            "\u{0}\u{1}é: é",
        ] {
            let l = Locations::of(text);
            let _ = l.find("a.b[0]");
        }
    }
}
