//! Syslog, RFC 5424 and RFC 3164 (BSD), detected per line: `<PRI>1 ` starts a 5424 line.
//!
//! Fields: `pri`, `facility` and `severity` (names: `kern`, `user`, ...; `emerg` .. `debug`),
//! `timestamp`, `hostname`, `appname`, `procid`, `msgid` (5424), `structured_data` (5424, as
//! written), `message`. RFC 5424 timestamps are RFC 3339 (use `format: rfc3339`); RFC 3164 ones
//! (`Oct 11 22:14:15`) carry no year and are kept as written. The `<PRI>` is optional for 3164
//! lines, as in files written by rsyslog (`Nov 24 06:46:50 host sshd[42]: ...`).

use super::{FieldSlots, ParseError, Span, utf8};
use ferry_core::syslog::Message;

const FORMAT: &str = "syslog";

pub fn parse(line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    let s = utf8(FORMAT, line)?;
    let m: Message<'_> = ferry_core::syslog::parse(s).map_err(|e| ParseError::new(FORMAT, e.0))?;
    let parts = [
        ("pri", m.pri),
        ("timestamp", m.timestamp),
        ("hostname", m.hostname),
        ("appname", m.appname),
        ("procid", m.procid),
        ("msgid", m.msgid),
        ("structured_data", m.structured_data),
        ("message", Some(m.message)),
    ];
    for (name, v) in parts {
        if let Some(v) = v {
            out.set_sub(name.as_bytes(), line, v);
        }
    }
    for (name, v) in [("facility", m.facility), ("severity", m.severity)] {
        if let Some(v) = v {
            out.set_named(name.as_bytes(), Span::Static(v));
        }
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
