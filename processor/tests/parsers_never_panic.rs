//! No parser panics, whatever the line: arbitrary bytes, arbitrary UTF-8, and lines that are
//! nearly right (a valid line of the format with one character inserted, replaced, or the line
//! cut), which reach far deeper into each parser than random bytes do. Every field a parser set
//! is also read back, so a span pointing outside the line or into the middle of a character
//! would show here too.
//!
//! proptest prints the failing input and stores it under `proptest-regressions/`; the seed of a
//! run is in `PROPTEST_RNG_SEED` when set.

#![allow(clippy::unwrap_used)]

use ferry_processor::parse::{FieldSlots, Parser};
use proptest::prelude::*;

/// Field names the parsers know, plus a nested JSON name and one no format has.
const NAMES: [&str; 26] = [
    "pri",
    "facility",
    "severity",
    "timestamp",
    "hostname",
    "appname",
    "procid",
    "msgid",
    "structured_data",
    "message",
    "remote_addr",
    "remote_user",
    "time_local",
    "request",
    "method",
    "path",
    "protocol",
    "status",
    "body_bytes_sent",
    "http_referer",
    "http_user_agent",
    "level",
    "msg",
    "http.status",
    "ts",
    "nope",
];

fn parsers() -> Vec<(&'static str, Parser, &'static str)> {
    let re =
        regex::Regex::new(r"^(?P<ts>\S+) (?P<level>[A-Zé]+) \[(?P<logger>[^\]]*)\] (?P<msg>.*)$")
            .unwrap();
    vec![
        (
            "syslog 3164",
            Parser::Syslog,
            "<34>Oct 11 22:14:15 mymachine su[12]: 'su root' failed",
        ),
        (
            "syslog 5424",
            Parser::Syslog,
            r#"<165>1 2003-10-11T22:14:15.003Z host app - ID47 [ex@1 a="1\]" b="2"][p c="3"] msg"#,
        ),
        (
            "logfmt",
            Parser::Logfmt,
            r#"level=info msg="request \"done\"\n" took=12ms ok ts=2026-01-01T00:00:00Z"#,
        ),
        (
            "combined",
            Parser::Combined,
            r#"10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://x/" "Mozilla/4.08 \"q\"""#,
        ),
        (
            "regex",
            Parser::Regex(re),
            "2026-01-01T00:00:00Z ERROR [db] refused",
        ),
        (
            "json",
            Parser::Json,
            r#"{"ts":"2026-11-24T06:46:50.123Z","level":"err\u00e9","msg":"a \"b\"\n","http":{"status":504,"tags":["a",{"b":null}]},"ok":false,"n":null,"f":-1.5e3}"#,
        ),
    ]
}

/// Parses `line` with every parser and reads every field back; must not panic.
fn parse_all(line: &[u8]) {
    let mut slots = FieldSlots::new(NAMES.iter().map(|s| s.to_string()).collect());
    for (_, p, _) in parsers() {
        if p.parse(line, &mut slots).is_ok() {
            for i in 0..slots.len() {
                let _ = slots.get(line, i);
            }
        }
    }
}

/// A valid line of one of the formats, changed at one character.
fn near_miss() -> impl Strategy<Value = Vec<u8>> {
    let n = parsers().len();
    (0..n, any::<prop::sample::Index>(), 0u8..3, any::<char>()).prop_map(
        move |(which, at, how, c)| {
            let line = parsers()[which].2;
            let chars: Vec<char> = line.chars().collect();
            let i = at.index(chars.len() + 1);
            let mut out: Vec<char> = chars[..i.min(chars.len())].to_vec();
            match how {
                0 => {
                    out.push(c);
                    out.extend_from_slice(&chars[i.min(chars.len())..]);
                }
                1 => {
                    out.push(c);
                    out.extend_from_slice(&chars[(i + 1).min(chars.len())..]);
                }
                _ => {}
            }
            out.into_iter().collect::<String>().into_bytes()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_parser_panics_on_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
        parse_all(&line);
    }

    #[test]
    fn no_parser_panics_on_arbitrary_utf8(line in any::<String>()) {
        parse_all(line.as_bytes());
    }

    #[test]
    fn no_parser_panics_on_near_misses(line in near_miss()) {
        parse_all(&line);
    }

    /// Each byte of a valid line cut off at any point, and bytes flipped in it.
    #[test]
    fn no_parser_panics_on_damaged_lines(which in 0..6usize, cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut line = parsers()[which].2.as_bytes().to_vec();
        let f = flip.index(line.len());
        line[f] = byte;
        line.truncate(cut.index(line.len() + 1));
        parse_all(&line);
    }
}

/// Issue 13: a month name with a multi-byte character made `parse: syslog` slice inside it.
#[test]
fn syslog_multibyte_month_is_a_parse_error_not_a_panic() {
    let mut slots = FieldSlots::new(vec!["message".into()]);
    for line in [
        "<13>Jaé 11 22:14:15 host t: m",
        "Jaé 11 22:14:15 host t: m",
        "<13>Ja\u{1F600} 11 22:14:15 host t: m",
    ] {
        let r = Parser::Syslog.parse(line.as_bytes(), &mut slots);
        assert!(r.is_err(), "{line:?} parsed: {r:?}");
    }
    // The same line with a real month parses.
    Parser::Syslog
        .parse(b"<13>Jan 11 22:14:15 host t: m", &mut slots)
        .unwrap();
    assert_eq!(slots.get(b"<13>Jan 11 22:14:15 host t: m", 0), Some("m"));
}
