//! Syslog, RFC 5424 and RFC 3164 (BSD), detected per line: `<PRI>1 ` starts a 5424 line.
//!
//! Fields: `pri`, `facility` and `severity` (names: `kern`, `user`, ...; `emerg` .. `debug`),
//! `timestamp`, `hostname`, `appname`, `procid`, `msgid` (5424), `structured_data` (5424, as
//! written), `message`. RFC 5424 timestamps are RFC 3339 (use `format: rfc3339`); RFC 3164 ones
//! (`Oct 11 22:14:15`) carry no year and are kept as written. The `<PRI>` is optional for 3164
//! lines, as in files written by rsyslog (`Nov 24 06:46:50 host sshd[42]: ...`).

use super::{FieldSlots, ParseError, Span, utf8};

const FORMAT: &str = "syslog";

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn err(what: impl Into<String>) -> ParseError {
    ParseError::new(FORMAT, what)
}

pub fn parse(line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    let s = utf8(FORMAT, line)?;
    let (pri, rest) = match s.strip_prefix('<') {
        Some(r) => {
            let end = r
                .find('>')
                .filter(|&e| (1..=3).contains(&e))
                .ok_or_else(|| err("bad <PRI>"))?;
            let digits = &r[..end];
            let pri: u8 = digits
                .parse()
                .ok()
                .filter(|p| *p <= 191 && digits.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| err(format!("bad priority {digits:?}")))?;
            out.set_sub(b"pri", line, digits);
            (Some(pri), &r[end + 1..])
        }
        None => (None, s),
    };
    if let Some(p) = pri {
        out.set_named(b"facility", Span::Static(FACILITIES[(p >> 3) as usize]));
        out.set_named(b"severity", Span::Static(SEVERITIES[(p & 7) as usize]));
    }
    match (pri, rest.strip_prefix("1 ")) {
        (Some(_), Some(r)) => rfc5424(line, r, out),
        _ => rfc3164(line, rest, out),
    }
}

fn set_nil(out: &mut FieldSlots, line: &[u8], name: &str, v: &str) {
    if v != "-" {
        out.set_sub(name.as_bytes(), line, v);
    }
}

fn rfc5424(line: &[u8], r: &str, out: &mut FieldSlots) -> Result<(), ParseError> {
    let mut it = r.splitn(6, ' ');
    let mut next = |what: &str| {
        it.next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err(format!("RFC 5424: missing {what}")))
    };
    let ts = next("TIMESTAMP")?;
    if ts != "-" && crate::time::parse_rfc3339(ts).is_none() {
        return Err(err(format!("RFC 5424: bad timestamp {ts:?}")));
    }
    set_nil(out, line, "timestamp", ts);
    set_nil(out, line, "hostname", next("HOSTNAME")?);
    set_nil(out, line, "appname", next("APP-NAME")?);
    set_nil(out, line, "procid", next("PROCID")?);
    set_nil(out, line, "msgid", next("MSGID")?);
    let rest = next("STRUCTURED-DATA")?;
    let (sd, msg) = if let Some(after) = rest.strip_prefix('-') {
        ("-", after)
    } else if rest.starts_with('[') {
        let end = sd_end(rest).ok_or_else(|| err("RFC 5424: unterminated STRUCTURED-DATA"))?;
        (&rest[..end], &rest[end..])
    } else {
        return Err(err(
            "RFC 5424: STRUCTURED-DATA must be `-` or start with `[`",
        ));
    };
    set_nil(out, line, "structured_data", sd);
    let msg = match msg.strip_prefix(' ') {
        Some(m) => m.strip_prefix('\u{feff}').unwrap_or(m),
        None if msg.is_empty() => msg,
        None => return Err(err("RFC 5424: expected a space after STRUCTURED-DATA")),
    };
    out.set_sub(b"message", line, msg);
    Ok(())
}

/// Length of the run of `[...]` elements at the start of `s`, honouring `\]` and quoted values.
fn sd_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        let mut in_quotes = false;
        i += 1;
        loop {
            match *b.get(i)? {
                b'\\' if in_quotes => i += 2,
                b'"' => {
                    in_quotes = !in_quotes;
                    i += 1;
                }
                b']' if !in_quotes => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
    }
    Some(i)
}

fn rfc3164(line: &[u8], r: &str, out: &mut FieldSlots) -> Result<(), ParseError> {
    // "Mmm dd hh:mm:ss" (day space-padded), 15 bytes. Checked as bytes: the line may have a
    // multi-byte character anywhere in them (`Jaé 11 ...`), where a `str` slice would panic.
    // Once they are all ASCII, bytes 15 and 16 are char boundaries.
    let b = r.as_bytes();
    let ok = b.len() > 16
        && matches!(
            &b[..3],
            b"Jan"
                | b"Feb"
                | b"Mar"
                | b"Apr"
                | b"May"
                | b"Jun"
                | b"Jul"
                | b"Aug"
                | b"Sep"
                | b"Oct"
                | b"Nov"
                | b"Dec"
        )
        && b[3] == b' '
        && (b[4] == b' ' || b[4].is_ascii_digit())
        && b[5].is_ascii_digit()
        && b[6] == b' '
        && b[9] == b':'
        && b[12] == b':'
        && [7, 8, 10, 11, 13, 14]
            .iter()
            .all(|&k| b[k].is_ascii_digit())
        && b[15] == b' ';
    if !ok {
        return Err(err("RFC 3164: expected a timestamp like `Oct 11 22:14:15`"));
    }
    let (Some(ts), Some(rest)) = (r.get(..15), r.get(16..)) else {
        return Err(err("RFC 3164: expected a timestamp like `Oct 11 22:14:15`"));
    };
    out.set_sub(b"timestamp", line, ts);
    let (host, rest) = rest
        .split_once(' ')
        .ok_or_else(|| err("RFC 3164: missing hostname"))?;
    if host.is_empty() {
        return Err(err("RFC 3164: missing hostname"));
    }
    out.set_sub(b"hostname", line, host);
    // TAG[PID]: MSG — the tag is optional; without a colon the whole rest is the message.
    let tag_end = rest.find([':', '[', ' ']).unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    let after = &rest[tag_end..];
    let (procid, after) = match after.strip_prefix('[') {
        Some(p) => match p.split_once(']') {
            Some((pid, a)) => (Some(pid), a),
            None => return Err(err("RFC 3164: unterminated [pid]")),
        },
        None => (None, after),
    };
    if let (false, Some(msg)) = (tag.is_empty(), after.strip_prefix(':')) {
        out.set_sub(b"appname", line, tag);
        if let Some(pid) = procid {
            out.set_sub(b"procid", line, pid);
        }
        out.set_sub(b"message", line, msg.strip_prefix(' ').unwrap_or(msg));
    } else {
        out.set_sub(b"message", line, rest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::super::test_util::{fields, some};

    const NAMES: [&str; 11] = [
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
        "nope",
    ];

    #[test]
    fn rfc5424_examples() {
        let p = Parser::Syslog;
        // RFC 5424 section 6.5, example 1 (without the BOM) and example 3.
        let line = "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed for lonvick on /dev/pts/8";
        assert_eq!(
            fields(&p, line, &NAMES).unwrap(),
            some(&[
                "34",
                "auth",
                "crit",
                "2003-10-11T22:14:15.003Z",
                "mymachine.example.com",
                "su",
                "<none>",
                "ID47",
                "<none>",
                "'su root' failed for lonvick on /dev/pts/8",
                "<none>",
            ])
        );
        let line = r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] An application event"#;
        let got = fields(&p, line, &NAMES).unwrap();
        assert_eq!(got[1].as_deref(), Some("local4"));
        assert_eq!(got[2].as_deref(), Some("notice"));
        assert_eq!(
            got[8].as_deref(),
            Some(
                r#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]"#
            )
        );
        assert_eq!(got[9].as_deref(), Some("An application event"));
        // No message, escaped bracket inside a value, BOM before the message.
        let line = r#"<13>1 - - - - - [a x="y\]z"]"#;
        assert_eq!(
            fields(&p, line, &["structured_data", "message"]).unwrap(),
            some(&[r#"[a x="y\]z"]"#, ""])
        );
        let line = "<13>1 2026-11-24T06:46:50+01:00 h app 42 - - \u{feff}hello";
        assert_eq!(
            fields(&p, line, &["procid", "message"]).unwrap(),
            some(&["42", "hello"])
        );
    }

    #[test]
    fn rfc3164_examples() {
        let p = Parser::Syslog;
        // RFC 3164 section 5.4 example, and an rsyslog file line without PRI.
        let line = "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8";
        assert_eq!(
            fields(&p, line, &NAMES).unwrap(),
            some(&[
                "34",
                "auth",
                "crit",
                "Oct 11 22:14:15",
                "mymachine",
                "su",
                "<none>",
                "<none>",
                "<none>",
                "'su root' failed for lonvick on /dev/pts/8",
                "<none>",
            ])
        );
        let line = "Nov  4 06:46:50 web-1 sshd[1234]: Accepted publickey for deploy from 10.0.0.5 port 52012 ssh2";
        let got = fields(&p, line, &NAMES).unwrap();
        assert_eq!(got[0], None);
        assert_eq!(got[3].as_deref(), Some("Nov  4 06:46:50"));
        assert_eq!(got[5].as_deref(), Some("sshd"));
        assert_eq!(got[6].as_deref(), Some("1234"));
        assert!(
            got[9]
                .as_deref()
                .is_some_and(|m| m.starts_with("Accepted publickey"))
        );
        // No tag: the rest is the message.
        let line = "<6>Nov 24 06:46:50 host kernel boot finished";
        assert_eq!(
            fields(&p, line, &["appname", "message"]).unwrap(),
            some(&["<none>", "kernel boot finished"])
        );
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "",
            "hello world",
            "<>1 - - - - - -",
            "<999>Oct 11 22:14:15 host x: y",
            "<34>1 yesterday host app - - - msg",
            "<34>1 2003-10-11T22:14:15Z host",
            "<34>1 - h a p m [unterminated x=\"1\"",
            "<34>1 - h a p m nosd",
            "<34>Oct 11 22:14:15",
            "<34>Foo 11 22:14:15 host x: y",
            "<34>Oct 11 22:14:15 host x[12: y",
            "<3x>Oct 11 22:14:15 host x: y",
            // Multi-byte characters where the timestamp's ASCII bytes are expected.
            "<13>Jaé 11 22:14:15 host t: m",
            "Jaé 11 22:14:15 host t: m",
            "<13>Jan é1 22:14:15 host t: m",
            "<13>Jan 11 22:14:1é host t: m",
            "<13>é",
            "<é>Jan 11 22:14:15 host t: m",
        ] {
            assert!(
                fields(&Parser::Syslog, bad, &["message"]).is_err(),
                "{bad:?}"
            );
        }
    }
}
