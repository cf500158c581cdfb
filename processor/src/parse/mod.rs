//! Parsers: from a record's line to the few fields a pipeline reads.
//!
//! A pipeline knows up front which fields it needs (group-by, aggregate inputs, the filter's
//! fields, the event-time field). Parsers fill only those, into reusable [`FieldSlots`] that point
//! into the line instead of copying it; a field is copied only when it must be rewritten (a JSON
//! string with escapes, a syslog severity name). That is what lets JSON parsing run at well over a
//! million lines per second per core: the JSON parser validates the structure of the whole object
//! but decodes only the values it was asked for.
//!
//! | format | file | fields |
//! |---|---|---|
//! | JSON object | [`json`] | every key; nested objects as dotted names (`http.status`) |
//! | logfmt | [`logfmt`] | every `key=value`; a bare `key` is `true` |
//! | regex | [`regex`] | the named captures |
//! | nginx / Apache combined | [`combined`] | `remote_addr remote_user time_local request method path protocol status body_bytes_sent http_referer http_user_agent` |
//! | syslog RFC 3164 / 5424 | [`syslog`] | `pri facility severity timestamp hostname appname procid msgid message` (+ `structured_data` for 5424) |

pub mod combined;
pub mod json;
pub mod logfmt;
pub mod regex;
pub mod syslog;

use crate::config::ParseConfig;

/// A line the parser could not read; `reason` says why in a few words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format}: {reason}")]
pub struct ParseError {
    pub format: &'static str,
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(format: &'static str, reason: impl Into<String>) -> Self {
        Self {
            format,
            reason: reason.into(),
        }
    }
}

/// Where a field's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Bytes `[start, end)` of the line; checked to be UTF-8 when set.
    Line(u32, u32),
    /// A value the parser had to rewrite (unescaped, decoded).
    Owned(String),
    /// A value from a fixed table (syslog facility and severity names).
    Static(&'static str),
}

/// The values of the fields a pipeline needs, for the line being processed. Reused from line to
/// line: [`FieldSlots::clear`] keeps the allocations.
#[derive(Debug, Clone)]
pub struct FieldSlots {
    /// Wanted field names; slot `i` holds the value of `names[i]`.
    names: Vec<String>,
    /// Invariant: same length as `names`.
    vals: Vec<Option<Span>>,
    /// Bit `n` set when some name is `n` bytes long (bit 63: 63 or more): most keys of a line
    /// are not wanted, and most of those are told apart by their length alone.
    lengths: u64,
    /// A parser's scratch buffer (the JSON parser's key path), kept from line to line.
    pub(crate) scratch: Vec<u8>,
}

impl FieldSlots {
    pub fn new(names: Vec<String>) -> Self {
        let vals = vec![None; names.len()];
        let lengths = names.iter().fold(0, |m, n| m | length_bit(n.len()));
        Self {
            lengths,
            names,
            vals,
            scratch: Vec::new(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn clear(&mut self) {
        for v in &mut self.vals {
            *v = None;
        }
    }

    /// The slot for `name`, if wanted.
    #[inline]
    pub fn slot(&self, name: &[u8]) -> Option<usize> {
        if self.lengths & length_bit(name.len()) == 0 {
            return None;
        }
        self.names.iter().position(|n| {
            let n = n.as_bytes();
            // Names are short: compared byte by byte inline, not with a call to `memcmp`.
            n.len() == name.len() && n.iter().zip(name).all(|(a, b)| a == b)
        })
    }

    #[inline]
    pub fn set(&mut self, slot: usize, span: Span) {
        if let Some(v) = self.vals.get_mut(slot) {
            *v = Some(span);
        }
    }

    /// Sets `name` if it is wanted; ignores it otherwise.
    #[inline]
    pub fn set_named(&mut self, name: &[u8], span: Span) {
        if let Some(i) = self.slot(name) {
            self.vals[i] = Some(span);
        }
    }

    /// Sets `name` to `value`, which must be a substring of `line` (as `&str` from the same buffer).
    pub fn set_sub(&mut self, name: &[u8], line: &[u8], value: &str) {
        if let Some(i) = self.slot(name) {
            self.vals[i] = Some(span_of(line, value));
        }
    }

    pub fn is_set(&self, slot: usize) -> bool {
        matches!(self.vals.get(slot), Some(Some(_)))
    }

    /// The value of slot `i` for `line` (the same line the parser read), as bytes: for callers
    /// that need no `&str` (group keys, timestamps), without checking again what the parser
    /// checked.
    #[inline]
    pub fn get_bytes<'a>(&'a self, line: &'a [u8], slot: usize) -> Option<&'a [u8]> {
        match self.vals.get(slot)?.as_ref()? {
            Span::Line(s, e) => line.get(*s as usize..*e as usize),
            Span::Owned(s) => Some(s.as_bytes()),
            Span::Static(s) => Some(s.as_bytes()),
        }
    }

    /// The value of slot `i` for `line` (the same line the parser read).
    #[inline]
    pub fn get<'a>(&'a self, line: &'a [u8], slot: usize) -> Option<&'a str> {
        match self.vals.get(slot)?.as_ref()? {
            Span::Line(s, e) => line
                .get(*s as usize..*e as usize)
                .and_then(|b| std::str::from_utf8(b).ok()),
            Span::Owned(s) => Some(s),
            Span::Static(s) => Some(s),
        }
    }
}

/// A name's bit in [`FieldSlots`]' set of lengths.
#[inline]
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// The span of `sub` inside `line`. `sub` must point into `line` (callers slice it from there);
/// if it does not, the value is copied instead, so a mistake costs speed, not correctness.
pub(crate) fn span_of(line: &[u8], sub: &str) -> Span {
    let base = line.as_ptr() as usize;
    let p = sub.as_ptr() as usize;
    if p >= base && p + sub.len() <= base + line.len() && line.len() <= u32::MAX as usize {
        Span::Line((p - base) as u32, (p - base + sub.len()) as u32)
    } else {
        Span::Owned(sub.to_owned())
    }
}

/// A configured parser.
#[derive(Debug, Clone)]
pub enum Parser {
    Json,
    Logfmt,
    Regex(::regex::Regex),
    Combined,
    Syslog,
}

impl Parser {
    pub fn new(cfg: &ParseConfig) -> Self {
        match cfg {
            ParseConfig::Json => Parser::Json,
            ParseConfig::Logfmt => Parser::Logfmt,
            ParseConfig::Regex(p) => Parser::Regex(p.0.clone()),
            ParseConfig::Nginx | ParseConfig::Apache => Parser::Combined,
            ParseConfig::Syslog => Parser::Syslog,
        }
    }

    /// Fills `out` (cleared first) with the wanted fields of `line`.
    pub fn parse(&self, line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
        out.clear();
        match self {
            Parser::Json => json::parse(line, out),
            Parser::Logfmt => logfmt::parse(line, out),
            Parser::Regex(re) => regex::parse(re, line, out),
            Parser::Combined => combined::parse(line, out),
            Parser::Syslog => syslog::parse(line, out),
        }
    }
}

pub(crate) fn utf8<'a>(format: &'static str, line: &'a [u8]) -> Result<&'a str, ParseError> {
    std::str::from_utf8(line)
        .map_err(|e| ParseError::new(format, format!("invalid UTF-8 at byte {}", e.valid_up_to())))
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Parses `line` wanting `names`; returns the values found, in order.
    pub fn fields(
        p: &Parser,
        line: &str,
        names: &[&str],
    ) -> Result<Vec<Option<String>>, ParseError> {
        let mut slots = FieldSlots::new(names.iter().map(|s| s.to_string()).collect());
        p.parse(line.as_bytes(), &mut slots)?;
        Ok((0..names.len())
            .map(|i| slots.get(line.as_bytes(), i).map(str::to_owned))
            .collect())
    }

    pub fn some(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| {
                if *s == "<none>" {
                    None
                } else {
                    Some(s.to_string())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_by_name_whatever_its_length() {
        let long = "k".repeat(70);
        let names: Vec<String> = [
            "",
            "ts",
            &"a".repeat(62),
            &"b".repeat(63),
            &"c".repeat(64),
            &long,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let slots = FieldSlots::new(names.clone());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(slots.slot(n.as_bytes()), Some(i), "{} bytes", n.len());
        }
        for other in [
            "t",
            "tz",
            "level",
            &"a".repeat(61),
            &"b".repeat(64),
            &"k".repeat(69),
            &"k".repeat(71),
        ] {
            assert_eq!(slots.slot(other.as_bytes()), None, "{} bytes", other.len());
        }
    }
}
