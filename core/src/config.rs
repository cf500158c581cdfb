//! Config loading shared by every component.
//!
//! Every ferry config is YAML read through [`load_file`]: `${ENV_VAR}` (and `${VAR:-default}`)
//! are substituted first, then the text is deserialized with serde-saphyr into the caller's type,
//! whose structs reject unknown fields. Any error names `file:line:col` and what was wrong, so
//! `ferry check` can print it as is. Durations ("200ms", "7d") and byte sizes ("1MiB") have
//! their own types here so that every component spells them the same way.

pub use crate::problems::{Locations, Problem, Problems};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A config that could not be loaded. Display gives `file:line:col: message`, one line per
/// problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source`, so that printing the error with its
    /// causes (`{:#}`) does not say it twice.
    #[error("{path}: cannot read: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file does not parse into the schema (syntax, types, unknown keys): parsing stops here.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// The file parsed, and the components' checks found these problems (every one of them).
    #[error("{}", render_located(path, problems))]
    Problems {
        path: PathBuf,
        problems: Vec<LocatedProblem>,
    },
}

/// A [`Problem`] with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedProblem {
    pub line: u64,
    pub column: u64,
    pub problem: Problem,
}

fn render_located(path: &Path, problems: &[LocatedProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{}:{}: {}", path.display(), p.line, p.column, p.problem))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Where in the file the (first) problem is, when known.
    pub fn location(&self) -> Option<(u64, u64)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            ConfigError::Problems { problems, .. } => problems.first().map(|p| (p.line, p.column)),
            ConfigError::Io { .. } => None,
        }
    }

    /// How many problems the error reports.
    pub fn count(&self) -> usize {
        match self {
            ConfigError::Problems { problems, .. } => problems.len(),
            _ => 1,
        }
    }
}

/// Reads, substitutes and deserializes the YAML config at `path`, then runs `check` on it; the
/// problems `check` records are located in the text and returned all together.
pub fn load_file_checked<T: DeserializeOwned>(
    path: &Path,
    check: impl FnOnce(&T, &mut Problems),
) -> Result<T, ConfigError> {
    let text = read(path)?;
    load_str_checked(&text, path, check)
}

/// [`load_file_checked`] on a text; `path` is used in messages only.
pub fn load_str_checked<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    check: impl FnOnce(&T, &mut Problems),
) -> Result<T, ConfigError> {
    let value: T = load_str(text, path)?;
    let mut problems = Problems::new();
    check(&value, &mut problems);
    if problems.is_empty() {
        return Ok(value);
    }
    // Locate in the substituted text, the one that was parsed (lines are the same).
    let substituted =
        substitute_env(text, &|name| std::env::var(name).ok()).unwrap_or_else(|_| text.to_owned());
    let locations = Locations::of(&substituted);
    let mut located: Vec<LocatedProblem> = problems
        .into_vec()
        .into_iter()
        .map(|problem| {
            let (line, column) = locations.find(&problem.path);
            LocatedProblem {
                line,
                column,
                problem,
            }
        })
        .collect();
    // In file order, as a reader goes through them.
    located.sort_by_key(|p| (p.line, p.column));
    Err(ConfigError::Problems {
        path: path.to_owned(),
        problems: located,
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        path: path.to_owned(),
        error,
    })
}

/// Reads, substitutes and deserializes the YAML config at `path`.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read(path)?;
    load_str(&text, path)
}

/// Substitutes and deserializes YAML `text`; `path` is used in error messages only.
pub fn load_str<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    load_str_with_env(text, path, &|name| std::env::var(name).ok())
}

/// Like [`load_str`], with an explicit environment (for tests).
pub fn load_str_with_env<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let text =
        substitute_env(text, env).map_err(|(line, column, message)| ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        })?;
    // An empty file is an empty mapping: every section optional, every default applies.
    let text = if text.trim().is_empty() {
        "{}"
    } else {
        text.as_str()
    };
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    })
}

/// serde-saphyr renders errors with a source snippet; ferry prints the location itself, so keep
/// only the message.
fn first_line(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or(rendered).trim();
    // Strip a leading "error: " and a trailing " at line X column Y" if the renderer adds them.
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // ... and a leading "line X column Y: ".
    let line = match line.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, msg)) if pos.contains(" column ") => msg,
        _ => line,
    };
    match line.find(" at line ") {
        Some(i) => line[..i].to_owned(),
        None => line.to_owned(),
    }
}

/// Replaces `${NAME}` and `${NAME:-default}`; `$${` stands for a literal `${`. Comments are
/// substituted too (harmless). Returns (line, column, message) for an unset variable without a
/// default or an unclosed reference.
fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (u64, u64, String)> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut col = 1u64;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            col += rest[..i].chars().count() as u64;
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
                col += 3;
            } else if let Some(after) = tail.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| {
                    (
                        lineno as u64 + 1,
                        col,
                        "unclosed ${ in environment reference".to_owned(),
                    )
                })?;
                let inner = &after[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err((
                        lineno as u64 + 1,
                        col,
                        format!("invalid environment variable name {name:?}"),
                    ));
                }
                match (env(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err((
                            lineno as u64 + 1,
                            col,
                            format!(
                                "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                            ),
                        ));
                    }
                }
                col += 2 + inner.chars().count() as u64 + 1;
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
                col += 1;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// A duration written as in "200ms", "30s", "5m", "7d", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write e.g. \"200ms\", \"30s\", \"7d\"")
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte size written as "512", "64KiB", "1MiB", "1.5GB". Binary units (KiB, MiB, GiB, TiB) are
/// powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
    pub fn get(self) -> u64 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (t[..split].trim(), t[split..].trim());
        let bad =
            || format!("invalid byte size {s:?}; write e.g. \"512\", \"64KiB\", \"1MiB\", \"2GB\"");
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        let v = n * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v >= 1 << shift && v.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 512, \"64KiB\" or \"1MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        linger: Duration,
        #[serde(default)]
        max: ByteSize,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    fn load(text: &str) -> Result<Sample, ConfigError> {
        load_str_with_env(text, Path::new("x.yaml"), &|n| {
            (n == "HOST").then(|| "h1".to_owned())
        })
    }

    #[test]
    fn parses_durations_sizes_and_env() {
        let s = load("name: ${HOST}-${NOPE:-d}\nlinger: 200ms\nmax: 1MiB\n").unwrap();
        assert_eq!(s.name, "h1-d");
        assert_eq!(s.linger, Duration::from_millis(200));
        assert_eq!(s.max, ByteSize::mib(1));
        assert_eq!(load("name: a\nmax: 4096").unwrap().max, ByteSize(4096));
        assert_eq!(
            "7d".parse::<Duration>().unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            "1.5GB".parse::<ByteSize>().unwrap(),
            ByteSize(1_500_000_000)
        );
        assert_eq!(
            substitute_env("a $${X} $5", &|_| None).unwrap(),
            "a ${X} $5"
        );
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = load("name: a\ninner:\n  port: 1\n  prot: 2\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.yaml:4:3: "), "{msg}");
        assert!(msg.contains("prot"), "{msg}");
        assert!(!msg.contains("line 4 column"), "location said twice: {msg}");
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let err = load("name: a\ninner:\n  port: seventy\n").unwrap_err();
        assert_eq!(err.location(), Some((3, 9)), "{err}");
        let err = load("name: a\nlinger: soon\n").unwrap_err();
        assert_eq!(err.location(), Some((2, 9)), "{err}");
        assert!(err.to_string().contains("invalid duration"), "{err}");
        let err = load("name: a\nmax: 12 parsecs\n").unwrap_err();
        assert!(err.to_string().contains("invalid byte size"), "{err}");
    }

    #[test]
    fn unset_env_var_names_its_place() {
        let err = load("name: a\n# x\nlinger: ${UNSET_THING}\n").unwrap_err();
        assert_eq!(err.location(), Some((3, 9)), "{err}");
        assert!(err.to_string().contains("UNSET_THING is not set"), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        for text in [
            "name: [unclosed",
            "\u{0}\u{1}",
            ": :",
            "name: a\ninner:\n  port: 99999999",
        ] {
            assert!(load(text).is_err(), "{text:?}");
        }
    }
}
