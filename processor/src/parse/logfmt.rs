//! logfmt: `level=info msg="request done" took=12ms ok`.
//!
//! Pairs are separated by spaces; a value may be double-quoted with `\"`, `\\`, `\n`, `\t`
//! escapes; a bare key stands for `true`; an empty value (`key=`) is the empty string. A line
//! with no `key=value` pair at all, an empty key (`=x`) or an unterminated quote is malformed.

use super::{FieldSlots, ParseError, Span, utf8};

const FORMAT: &str = "logfmt";

pub fn parse(line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    let text = utf8(FORMAT, line)?;
    let b = text.as_bytes();
    let mut i = 0;
    let mut pairs = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        let key = &b[ks..i];
        if key.is_empty() {
            return Err(ParseError::new(
                FORMAT,
                format!("expected a key at byte {i}"),
            ));
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            pairs += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let vs = i;
                let mut escaped = false;
                loop {
                    match b.get(i) {
                        None => {
                            return Err(ParseError::new(
                                FORMAT,
                                format!("unterminated quote starting at byte {}", vs - 1),
                            ));
                        }
                        Some(b'"') => break,
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => i += 1,
                    }
                }
                let raw = &text[vs..i];
                i += 1;
                let span = if escaped {
                    Span::Owned(unescape(raw))
                } else {
                    Span::Line(vs as u32, (vs + raw.len()) as u32)
                };
                out.set_named(key, span);
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                out.set_named(key, Span::Line(vs as u32, i as u32));
            }
        } else if i < b.len() && b[i] == b'"' {
            return Err(ParseError::new(
                FORMAT,
                format!("unexpected quote at byte {i}"),
            ));
        } else {
            out.set_named(key, Span::Static("true"));
        }
    }
    if pairs == 0 {
        return Err(ParseError::new(FORMAT, "no key=value pair"));
    }
    Ok(())
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::super::test_util::{fields, some};

    #[test]
    fn real_lines() {
        let p = Parser::Logfmt;
        // From a Heroku router log.
        let line = r#"at=info method=GET path="/api/users?id=1" host=example.herokuapp.com request_id=8601b555-6a83 fwd="204.204.204.204" dyno=web.1 connect=1ms service=18ms status=200 bytes=13 protocol=https"#;
        assert_eq!(
            fields(&p, line, &["at", "path", "status", "service", "nope"]).unwrap(),
            some(&["info", "/api/users?id=1", "200", "18ms", "<none>"])
        );
        // Grafana/Loki style with escapes, a bare key and an empty value.
        let line = r#"level=warn ts=2026-11-24T06:46:50Z caller=main.go:42 msg="said \"hi\"\tthen left" debug empty="#;
        assert_eq!(
            fields(&p, line, &["msg", "debug", "empty", "caller"]).unwrap(),
            some(&["said \"hi\"\tthen left", "true", "", "main.go:42"])
        );
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "",
            "just some words",
            r#"msg="never closed"#,
            "=value",
            r#"a=1 "quoted key"=2"#,
        ] {
            assert!(fields(&Parser::Logfmt, bad, &["msg"]).is_err(), "{bad:?}");
        }
        let mut slots = super::FieldSlots::new(vec!["a".into()]);
        assert!(Parser::Logfmt.parse(b"a=\xff\xfe", &mut slots).is_err());
    }
}
