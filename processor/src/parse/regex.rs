//! A regex with named captures: each named group that matched is a field.

use super::{FieldSlots, ParseError, utf8};

const FORMAT: &str = "regex";

pub fn parse(re: &regex::Regex, line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    let text = utf8(FORMAT, line)?;
    let caps = re
        .captures(text)
        .ok_or_else(|| ParseError::new(FORMAT, "line does not match the pattern"))?;
    for name in re.capture_names().flatten() {
        if let Some(m) = caps.name(name) {
            out.set_sub(name.as_bytes(), line, m.as_str());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::super::test_util::{fields, some};

    #[test]
    fn named_captures() {
        // A Python logging line.
        let re = regex::Regex::new(
            r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) (?P<level>[A-Z]+) \[(?P<logger>[^\]]+)\] (?P<msg>.*)$",
        )
        .unwrap();
        let p = Parser::Regex(re);
        let line = "2026-11-24 06:46:50,123 ERROR [app.db] connection refused (attempt 3)";
        assert_eq!(
            fields(&p, line, &["level", "logger", "msg", "time"]).unwrap(),
            some(&[
                "ERROR",
                "app.db",
                "connection refused (attempt 3)",
                "2026-11-24 06:46:50"
            ])
        );
        assert!(fields(&p, "Traceback (most recent call last):", &["level"]).is_err());
        let mut slots = super::FieldSlots::new(vec!["level".into()]);
        assert!(p.parse(b"\xff", &mut slots).is_err());
        // An optional group that did not take part is absent.
        let p = Parser::Regex(regex::Regex::new(r"^(?P<a>x)?(?P<b>y)$").unwrap());
        assert_eq!(
            fields(&p, "y", &["a", "b"]).unwrap(),
            some(&["<none>", "y"])
        );
    }
}
