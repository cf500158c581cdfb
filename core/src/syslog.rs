//! Syslog messages, RFC 5424 and RFC 3164 (BSD), detected per message: `<PRI>1 ` starts a 5424
//! one. Shared by the processor's `syslog` parser (lines of files) and the agent's syslog input
//! (messages off the network); it returns borrowed parts of the message and never panics.
//!
//! RFC 5424 timestamps are RFC 3339 (checked); RFC 3164 ones (`Oct 11 22:14:15`) carry no year
//! and are kept as written. The `<PRI>` is optional for 3164 messages, as in files written by
//! rsyslog (`Nov 24 06:46:50 host sshd[42]: ...`).

/// Facility names by number (`facility = PRI >> 3`).
pub const FACILITIES: [&str; 24] = [
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
/// Severity names by number (`severity = PRI & 7`).
pub const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// A parsed message: every part a slice of the input, `None` where absent (or `-` in 5424).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// The `<PRI>` digits as written.
    pub pri: Option<&'a str>,
    /// Facility name, from the PRI.
    pub facility: Option<&'static str>,
    /// Severity name, from the PRI.
    pub severity: Option<&'static str>,
    /// As written: RFC 3339 for 5424, `Mmm dd hh:mm:ss` for 3164.
    pub timestamp: Option<&'a str>,
    /// The timestamp in Unix milliseconds, for 5424 messages that have one.
    pub time_ms: Option<i64>,
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    pub procid: Option<&'a str>,
    /// 5424 only.
    pub msgid: Option<&'a str>,
    /// 5424 only, as written (`[id k="v"]...`).
    pub structured_data: Option<&'a str>,
    pub message: &'a str,
}

/// Why a message is not syslog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not syslog: {0}")]
pub struct SyslogError(pub String);

fn err(what: impl Into<String>) -> SyslogError {
    SyslogError(what.into())
}

/// Parses one message (without its trailing newline or framing).
pub fn parse(s: &str) -> Result<Message<'_>, SyslogError> {
    let mut out = Message::default();
    let rest = match s.strip_prefix('<') {
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
            out.pri = Some(digits);
            out.facility = Some(FACILITIES[(pri >> 3) as usize]);
            out.severity = Some(SEVERITIES[(pri & 7) as usize]);
            &r[end + 1..]
        }
        None => s,
    };
    match (out.pri, rest.strip_prefix("1 ")) {
        (Some(_), Some(r)) => rfc5424(r, &mut out)?,
        _ => rfc3164(rest, &mut out)?,
    }
    Ok(out)
}

/// `-` is 5424's nil value.
fn nil(v: &str) -> Option<&str> {
    (v != "-").then_some(v)
}

fn rfc5424<'a>(r: &'a str, out: &mut Message<'a>) -> Result<(), SyslogError> {
    let mut it = r.splitn(6, ' ');
    let mut next = |what: &str| {
        it.next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err(format!("RFC 5424: missing {what}")))
    };
    let ts = next("TIMESTAMP")?;
    if ts != "-" {
        out.time_ms = Some(
            crate::time::parse_rfc3339(ts)
                .ok_or_else(|| err(format!("RFC 5424: bad timestamp {ts:?}")))?,
        );
    }
    out.timestamp = nil(ts);
    out.hostname = nil(next("HOSTNAME")?);
    out.appname = nil(next("APP-NAME")?);
    out.procid = nil(next("PROCID")?);
    out.msgid = nil(next("MSGID")?);
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
    out.structured_data = nil(sd);
    out.message = match msg.strip_prefix(' ') {
        Some(m) => m.strip_prefix('\u{feff}').unwrap_or(m),
        None if msg.is_empty() => msg,
        None => return Err(err("RFC 5424: expected a space after STRUCTURED-DATA")),
    };
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

fn rfc3164<'a>(r: &'a str, out: &mut Message<'a>) -> Result<(), SyslogError> {
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
    out.timestamp = Some(ts);
    let (host, rest) = rest
        .split_once(' ')
        .ok_or_else(|| err("RFC 3164: missing hostname"))?;
    if host.is_empty() {
        return Err(err("RFC 3164: missing hostname"));
    }
    out.hostname = Some(host);
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
        out.appname = Some(tag);
        out.procid = procid;
        out.message = msg.strip_prefix(' ').unwrap_or(msg);
    } else {
        out.message = rest;
    }
    Ok(())
}
