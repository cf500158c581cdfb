//! JSON objects, read lazily.
//!
//! One pass over the line checks its structure (balanced objects and arrays, strings closed,
//! literals and numbers well formed, nothing after the object) and records where the wanted
//! fields are; only those are decoded (escapes resolved, UTF-8 checked). Values that are not
//! wanted are skipped with `memchr` over their strings. Nested objects are reached with dotted
//! names: `{"http":{"status":200}}` has `http.status` = `200`. An object or array that is itself
//! wanted is returned as its JSON text; `null` counts as absent. With duplicate keys the last
//! wins, as with serde_json.
//!
//! Not checked in values that are skipped: UTF-8 validity and raw control characters inside
//! strings (the fields that are read are checked).

use super::{FieldSlots, ParseError, Span};

const FORMAT: &str = "json";
/// Deepest nesting accepted; deeper lines are rejected rather than risking the stack.
const MAX_DEPTH: usize = 64;

pub fn parse(line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    // The key path's buffer is the slots' (no allocation per line).
    let mut path = std::mem::take(&mut out.scratch);
    path.clear();
    let mut s = Scanner {
        b: line,
        i: 0,
        path,
    };
    let r = s.document(out);
    out.scratch = s.path;
    r.map_err(|e| *e)
}

/// What the scanner's steps return.
type Scan<T> = Result<T, Box<ParseError>>;

impl Scanner<'_> {
    fn document(&mut self, out: &mut FieldSlots) -> Scan<()> {
        if self.next() != Some(b'{') {
            return Err(self.err("expected a JSON object"));
        }
        self.object(out, 0, true)?;
        self.ws();
        if self.i != self.b.len() {
            return Err(self.err("unexpected data after the object"));
        }
        Ok(())
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Dotted path of the object being scanned, with a trailing '.', when it can hold a wanted field.
    path: Vec<u8>,
}

impl<'a> Scanner<'a> {
    /// Boxed: the scanner's results then fit in a register (`Scan<()>` is a pointer that is
    /// null when all is well), which the hot path checks after every value.
    #[cold]
    fn err(&self, what: &str) -> Box<ParseError> {
        Box::new(ParseError::new(
            FORMAT,
            format!("{what} at byte {}", self.i),
        ))
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte that is not whitespace (not consumed). Between tokens there is usually
    /// none: one load and one comparison.
    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        if c > b' ' {
            return Some(c);
        }
        self.ws();
        self.peek()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// At a `{`. `track`: this object's path is a prefix of some wanted name.
    fn object(&mut self, out: &mut FieldSlots, depth: usize, track: bool) -> Scan<()> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        if self.next() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.next() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let (ks, ke, escaped) = self.string()?;
            if self.next() != Some(b':') {
                return Err(self.err("expected `:`"));
            }
            self.i += 1;
            let first = self.next();
            let mut handled = false;
            if track {
                let plen = self.path.len();
                let b = self.b;
                // A top-level key without escapes is its own name: looked up in place.
                let direct = plen == 0 && !escaped;
                if escaped {
                    let k = unescape(&b[ks..ke]).map_err(|m| self.err(m))?;
                    self.path.extend_from_slice(k.as_bytes());
                } else if !direct {
                    self.path.extend_from_slice(&b[ks..ke]);
                }
                let name = if direct { &b[ks..ke] } else { &self.path[..] };
                let slot = out.slot(name);
                if first == Some(b'{') && is_prefix(out, name) {
                    // Fields inside are wanted (and maybe the object itself, as text).
                    let start = self.i;
                    if direct {
                        self.path.extend_from_slice(&b[ks..ke]);
                    }
                    self.path.push(b'.');
                    self.object(out, depth + 1, true)?;
                    if let Some(slot) = slot {
                        std::str::from_utf8(&self.b[start..self.i])
                            .map_err(|_| self.err("invalid UTF-8"))?;
                        out.set(slot, Span::Line(start as u32, self.i as u32));
                    }
                    handled = true;
                } else if let Some(slot) = slot {
                    self.wanted_value(out, slot, depth)?;
                    handled = true;
                }
                self.path.truncate(plen);
            }
            if !handled {
                // Most skipped values are strings: scanned here, without the call.
                if first == Some(b'"') {
                    self.string()?;
                } else {
                    self.skip_value(depth)?;
                }
            }
            match self.next() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    fn wanted_value(&mut self, out: &mut FieldSlots, slot: usize, depth: usize) -> Scan<()> {
        let start = self.i;
        match self.peek() {
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                let raw = &self.b[s..e];
                let span = if escaped {
                    Span::Owned(unescape(raw).map_err(|m| self.err(m))?)
                } else {
                    // Printable ASCII (the usual case) is valid UTF-8 without control characters:
                    // one pass, no call.
                    if !printable_ascii(raw) {
                        std::str::from_utf8(raw)
                            .map_err(|_| self.err("invalid UTF-8 in a string"))?;
                        if raw.iter().any(|&c| c < 0x20) {
                            return Err(self.err("control character in a string"));
                        }
                    }
                    Span::Line(s as u32, e as u32)
                };
                out.set(slot, span);
            }
            Some(b'n') => {
                self.literal(b"null")?;
            }
            _ => {
                self.skip_value(depth)?;
                let text = &self.b[start..self.i];
                std::str::from_utf8(text).map_err(|_| self.err("invalid UTF-8"))?;
                out.set(slot, Span::Line(start as u32, self.i as u32));
            }
        }
        Ok(())
    }

    /// At a `"`; returns the content's byte range and whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Scan<(usize, usize, bool)> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            match find_quote_or_backslash(b, i) {
                None => {
                    self.i = b.len();
                    return Err(self.err("unterminated string"));
                }
                Some((at, true)) => {
                    self.i = at + 1;
                    return Ok((start, at, escaped));
                }
                Some((at, false)) => {
                    escaped = true;
                    // Skip the backslash and the escaped byte; `unescape` checks the escape when
                    // the value is read.
                    i = at + 2;
                    if i > b.len() {
                        self.i = b.len();
                        return Err(self.err("unterminated string"));
                    }
                }
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Scan<()> {
        let b = self.b;
        let start = self.i;
        if b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        while b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let int_len = self.i - int_start;
        if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
            self.i = start;
            return Err(self.err("invalid number"));
        }
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let f = self.i;
            while b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == f {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let e = self.i;
            while b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == e {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    fn skip_value(&mut self, depth: usize) -> Scan<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                // A skipped object: scan it without tracking names.
                let mut none = FieldSlots::new(Vec::new());
                self.object(&mut none, depth + 1, false)
            }
            Some(b'[') => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(self.err("nesting too deep"));
                }
                self.i += 1;
                if self.next() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    match self.next() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(self.err("expected `,` or `]`")),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of line")),
        }
    }
}

/// The position of the first `"` or `\\` in `b` from `from` on, and whether it is the quote.
/// Most keys and values of log lines are short: the first 32 bytes are searched eight at a
/// time in a `u64` (no call, no vector set-up), the rest with `memchr2`.
#[inline]
fn find_quote_or_backslash(b: &[u8], from: usize) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// The high bit of every byte of `w` equal to `c`, and possibly of bytes after the first
    /// such byte (a borrow), never before it: the lowest bit set marks the first match.
    #[inline]
    fn matches(w: u64, c: u8) -> u64 {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut i = from;
    while i < from + 32 {
        let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) else {
            break;
        };
        let w = u64::from_le_bytes(*chunk);
        let quotes = matches(w, b'"');
        let m = quotes | matches(w, b'\\');
        if m != 0 {
            // The lowest bit of `m` is a true match of one of the two; if `quotes` has it, it
            // is the quote (a borrow only sets bits above a true match of the same byte).
            let bit = m.trailing_zeros();
            return Some((i + (bit / 8) as usize, quotes >> bit & 1 == 1));
        }
        i += 8;
    }
    let rest = b.get(i..)?;
    let n = i + memchr::memchr2(b'"', b'\\', rest)?;
    Some((n, b[n] == b'"'))
}

/// Every byte of `b` is printable ASCII (0x20..0x80): eight bytes at a time.
#[inline]
fn printable_ascii(b: &[u8]) -> bool {
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x80 plus 0x60 has its high bit set exactly when it is at least 0x20, and
    // no carry crosses into the next byte (0x7f + 0x60 < 0x100).
    const LIFT: u64 = 0x6060_6060_6060_6060;
    let (chunks, rest) = b.as_chunks::<8>();
    chunks.iter().all(|c| {
        let w = u64::from_le_bytes(*c);
        w & HIGHS == 0 && w.wrapping_add(LIFT) & HIGHS == HIGHS
    }) && rest.iter().all(|&c| (0x20..0x80).contains(&c))
}

/// Some wanted name starts with `path` followed by a dot.
fn is_prefix(out: &FieldSlots, path: &[u8]) -> bool {
    out.names().iter().any(|n| {
        let n = n.as_bytes();
        n.len() > path.len() && n.starts_with(path) && n[path.len()] == b'.'
    })
}

/// Decodes a JSON string's content (between the quotes).
fn unescape(raw: &[u8]) -> Result<String, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c < 0x20 {
            return Err("control character in a string");
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1).ok_or("bad escape")?;
        i += 2;
        match e {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'/' => out.push(b'/'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hi = hex4(raw.get(i..i + 4))?;
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i) != Some(&b'\\') || raw.get(i + 1) != Some(&b'u') {
                        return Err("unpaired surrogate");
                    }
                    let lo = hex4(raw.get(i + 2..i + 6))?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err("unpaired surrogate");
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err("unpaired surrogate");
                } else {
                    hi
                };
                let ch = char::from_u32(cp).ok_or("invalid \\u escape")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err("bad escape"),
        }
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 in a string")
}

fn hex4(b: Option<&[u8]>) -> Result<u32, &'static str> {
    let b = b.ok_or("short \\u escape")?;
    let mut v = 0;
    for &c in b {
        let d = (c as char).to_digit(16).ok_or("bad \\u escape")?;
        v = v * 16 + d;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::super::test_util::{fields, some};
    use proptest::prelude::*;

    const LINE: &str = r#"{"ts":"2026-11-24T06:46:50.123Z","level":"error","msg":"upstream \"api\" timed out\n","http":{"method":"GET","status":504,"latency_ms":1234.5,"tags":["a",{"b":null}]},"user":{"id":"u-17"},"ok":false,"nothing":null}"#;

    #[test]
    fn real_lines() {
        let p = Parser::Json;
        assert_eq!(
            fields(
                &p,
                LINE,
                &[
                    "level",
                    "msg",
                    "http.status",
                    "http.latency_ms",
                    "user.id",
                    "ok",
                    "nothing",
                    "http.tags",
                    "missing",
                    "http"
                ]
            )
            .unwrap(),
            some(&[
                "error",
                "upstream \"api\" timed out\n",
                "504",
                "1234.5",
                "u-17",
                "false",
                "<none>",
                r#"["a",{"b":null}]"#,
                "<none>",
                r#"{"method":"GET","status":504,"latency_ms":1234.5,"tags":["a",{"b":null}]}"#,
            ])
        );
        // Unicode escapes, surrogate pairs, escaped keys, whitespace, duplicate keys.
        let line = " { \"k\\u0065y\" : \"caf\\u00e9 \\ud83d\\ude00\" , \"a\":1, \"a\":2 } ";
        assert_eq!(
            fields(&p, line, &["key", "a"]).unwrap(),
            some(&["café 😀", "2"])
        );
        assert_eq!(fields(&p, "{}", &["a"]).unwrap(), some(&["<none>"]));
    }

    #[test]
    fn malformed_lines_are_errors() {
        let p = Parser::Json;
        for bad in [
            "",
            "plain text log line",
            "[1,2]",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":"x"} trailing"#,
            r#"{"a":[1,2}"#,
            r#"{a:1}"#,
            r#"{"a":"bad \q escape"}"#,
            r#"{"a":"\ud800 lone"}"#,
            "{\"a\":\"tab\tinside\"}",
            "{\"a\":\"a control character past the first eight bytes:\u{1f}\"}",
            "{\"a\":\"x\\",
        ] {
            assert!(
                fields(&p, bad, &["a"]).is_err(),
                "accepted malformed line {bad:?}"
            );
        }
        // Structure errors are found even in values that are not wanted.
        assert!(fields(&p, r#"{"x":{"y":[1,,2]},"a":1}"#, &["a"]).is_err());
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(fields(&p, &format!("{{\"x\":{deep}}}"), &["a"]).is_err());
        // A wanted value with invalid UTF-8 is an error; the line is bytes.
        let mut slots = super::FieldSlots::new(vec!["a".into()]);
        assert!(p.parse(b"{\"a\":\"\xff\"}", &mut slots).is_err());
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e9f64..1e9).prop_map(|n| serde_json::json!(n)),
            "[a-z\"\\\\\n\u{e9}\u{1F600} ]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
        // The first dotted split that resolves, as the scanner only descends into objects.
        let mut cur = v;
        for part in path.split('.') {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }

    proptest! {
        /// The lazy scanner agrees with serde_json on every field it is asked for.
        #[test]
        fn agrees_with_serde_json(
            obj in prop::collection::btree_map("[a-c]{1,2}", json_value(), 0..5),
            want in prop::collection::btree_set("[a-c]{1,2}(\\.[a-c]{1,2}){0,2}", 1..4),
        ) {
            let value = serde_json::Value::Object(obj.into_iter().collect());
            let line = serde_json::to_string(&value).unwrap();
            let names: Vec<&str> = want.iter().map(String::as_str).collect();
            let got = fields(&Parser::Json, &line, &names).unwrap();
            for (name, got) in names.iter().zip(got) {
                let expect = match lookup(&value, name) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                };
                prop_assert_eq!(got, expect, "{} in {}", name, line);
            }
        }

        /// The word-at-a-time search finds what a byte-by-byte one finds, from any start, in
        /// strings of quotes, backslashes, bytes next to them in value (`!`, `#`, `[`, `]`)
        /// and bytes with the high bit set (where a borrow could mark a false match).
        #[test]
        fn quote_search_agrees_with_a_byte_by_byte_one(
            bytes in prop::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(b'!'), Just(b'#'), Just(b'['), Just(b']'),
                    Just(0x80u8), Just(0xA2u8), Just(0xDCu8), Just(0xFFu8), any::<u8>(), Just(b'a'),
                ],
                0..100,
            ),
            from in 0usize..100,
        ) {
            let from = from.min(bytes.len());
            let expect = bytes[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\')
                .map(|n| (from + n, bytes[from + n] == b'"'));
            prop_assert_eq!(super::find_quote_or_backslash(&bytes, from), expect);
        }

        /// The eight-bytes-at-a-time printable check agrees with a byte-by-byte one, on bytes
        /// at the edges of the range (0x1f, 0x20, 0x7f, 0x80) anywhere in a string of any length.
        #[test]
        fn printable_check_agrees_with_a_byte_by_byte_one(
            bytes in prop::collection::vec(
                prop_oneof![
                    Just(0x1fu8), Just(0x20u8), Just(0x7fu8), Just(0x80u8), Just(0u8), Just(0xffu8),
                    0x20u8..0x7f, 0x20u8..0x7f, 0x20u8..0x7f, any::<u8>(),
                ],
                0..40,
            ),
        ) {
            let expect = bytes.iter().all(|&c| (0x20..0x80).contains(&c));
            prop_assert_eq!(super::printable_ascii(&bytes), expect);
        }

        /// Cutting a valid line anywhere gives an error, never a panic.
        #[test]
        fn truncation_is_an_error(cut in 0usize..200) {
            let cut = cut.min(super::tests::LINE.len() - 1);
            let line = &super::tests::LINE.as_bytes()[..cut];
            let mut slots = super::FieldSlots::new(vec!["level".into(), "http.status".into()]);
            prop_assert!(Parser::Json.parse(line, &mut slots).is_err());
        }
    }
}
