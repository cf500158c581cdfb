//! nginx's default `combined` format, which is also Apache's combined log format:
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//! ```
//!
//! Fields take nginx's variable names; `request` is also split into `method`, `path`,
//! `protocol`. A `-` stands for a missing value. `time_local` is written like
//! `10/Oct/2000:13:55:36 -0700`: use `event_time: {field: time_local, format: "%d/%b/%Y:%H:%M:%S %z"}`.
//! Quoted fields may contain `\"` (nginx escapes quotes in them); extra trailing fields (some
//! setups append `$request_time`) are ignored.

use super::{FieldSlots, ParseError, utf8};

const FORMAT: &str = "combined";

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> ParseError {
        ParseError::new(FORMAT, format!("expected {what} at byte {}", self.i))
    }

    fn space(&mut self) -> Result<(), ParseError> {
        if self.s.as_bytes().get(self.i) != Some(&b' ') {
            return Err(self.err("a space"));
        }
        while self.s.as_bytes().get(self.i) == Some(&b' ') {
            self.i += 1;
        }
        Ok(())
    }

    fn token(&mut self, what: &str) -> Result<&'a str, ParseError> {
        let rest = &self.s[self.i..];
        let n = rest.find(' ').unwrap_or(rest.len());
        if n == 0 {
            return Err(self.err(what));
        }
        self.i += n;
        Ok(&rest[..n])
    }

    fn delimited(&mut self, open: u8, close: u8, what: &str) -> Result<&'a str, ParseError> {
        let b = self.s.as_bytes();
        if b.get(self.i) != Some(&open) {
            return Err(self.err(what));
        }
        let start = self.i + 1;
        let mut j = start;
        while j < b.len() {
            if b[j] == b'\\' && close == b'"' {
                j += 2;
                continue;
            }
            if b[j] == close {
                self.i = j + 1;
                return Ok(&self.s[start..j]);
            }
            j += 1;
        }
        Err(ParseError::new(
            FORMAT,
            format!("unterminated {what} starting at byte {}", self.i),
        ))
    }
}

pub fn parse(line: &[u8], out: &mut FieldSlots) -> Result<(), ParseError> {
    let s = utf8(FORMAT, line)?;
    let mut c = Cursor { s, i: 0 };
    let mut set = |name: &str, v: &str| {
        if v != "-" {
            out.set_sub(name.as_bytes(), line, v);
        }
    };
    set("remote_addr", c.token("the remote address")?);
    c.space()?;
    c.token("the ident field")?;
    c.space()?;
    set("remote_user", c.token("the remote user")?);
    c.space()?;
    let time = c.delimited(b'[', b']', "[time]")?;
    if time.len() < 20 {
        return Err(ParseError::new(FORMAT, format!("bad time {time:?}")));
    }
    set("time_local", time);
    c.space()?;
    let request = c.delimited(b'"', b'"', "\"request\"")?;
    set("request", request);
    let mut parts = request.splitn(3, ' ');
    if let (Some(m), Some(p)) = (parts.next(), parts.next()) {
        set("method", m);
        set("path", p);
        if let Some(proto) = parts.next() {
            set("protocol", proto);
        }
    }
    c.space()?;
    let status = c.token("the status")?;
    if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::new(FORMAT, format!("bad status {status:?}")));
    }
    set("status", status);
    c.space()?;
    let bytes = c.token("the body size")?;
    if bytes != "-" && !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::new(FORMAT, format!("bad body size {bytes:?}")));
    }
    set("body_bytes_sent", bytes);
    // Common log format stops here; combined adds referer and user agent.
    if c.i < s.len() {
        c.space()?;
        set("http_referer", c.delimited(b'"', b'"', "\"referer\"")?);
        c.space()?;
        set(
            "http_user_agent",
            c.delimited(b'"', b'"', "\"user agent\"")?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::super::test_util::{fields, some};

    const NAMES: [&str; 11] = [
        "remote_addr",
        "remote_user",
        "time_local",
        "method",
        "path",
        "protocol",
        "status",
        "body_bytes_sent",
        "http_referer",
        "http_user_agent",
        "request",
    ];

    #[test]
    fn nginx_and_apache_lines() {
        let p = Parser::Combined;
        let line = r#"93.180.71.3 - - [17/May/2015:08:05:32 +0000] "GET /downloads/product_1 HTTP/1.1" 304 0 "-" "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)""#;
        assert_eq!(
            fields(&p, line, &NAMES).unwrap(),
            some(&[
                "93.180.71.3",
                "<none>",
                "17/May/2015:08:05:32 +0000",
                "GET",
                "/downloads/product_1",
                "HTTP/1.1",
                "304",
                "0",
                "<none>",
                "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)",
                "GET /downloads/product_1 HTTP/1.1",
            ])
        );
        // Apache's documentation example.
        let line = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
        let got = fields(&p, line, &NAMES).unwrap();
        assert_eq!(got[1].as_deref(), Some("frank"));
        assert_eq!(got[8].as_deref(), Some("http://www.example.com/start.html"));
        // Escaped quote in the user agent, IPv6 address, common log format without the tail.
        let line = r#"2001:db8::1 - - [01/Jan/2026:00:00:00 +0100] "POST /x HTTP/2.0" 500 - "-" "curl \"7\"""#;
        let got = fields(&p, line, &NAMES).unwrap();
        assert_eq!(got[0].as_deref(), Some("2001:db8::1"));
        assert_eq!(got[7], None);
        assert_eq!(got[9].as_deref(), Some(r#"curl \"7\""#));
        let line = r#"10.0.0.1 - - [01/Jan/2026:00:00:00 +0100] "GET / HTTP/1.1" 200 12"#;
        assert_eq!(fields(&p, line, &["status"]).unwrap(), some(&["200"]));
        // A garbage request line (a TLS handshake sent to port 80) still parses.
        let line = r#"10.0.0.1 - - [01/Jan/2026:00:00:00 +0100] "\x16\x03\x01" 400 157 "-" "-""#;
        assert_eq!(
            fields(&p, line, &["status", "method"]).unwrap(),
            some(&["400", "<none>"])
        );
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "",
            "hello",
            r#"1.2.3.4 - - [01/Jan/2026:00:00:00 +0100 "GET / HTTP/1.1" 200 1 "-" "-""#,
            r#"1.2.3.4 - - [01/Jan/2026:00:00:00 +0100] "GET / HTTP/1.1 200 1 "-" "-"#,
            r#"1.2.3.4 - - [01/Jan/2026:00:00:00 +0100] "GET / HTTP/1.1" OK 1 "-" "-""#,
            r#"1.2.3.4 - - [01/Jan/2026:00:00:00 +0100] "GET / HTTP/1.1" 200 1 "-""#,
            r#"1.2.3.4 - - [now] "GET / HTTP/1.1" 200 1 "-" "-""#,
        ] {
            assert!(
                fields(&Parser::Combined, bad, &["status"]).is_err(),
                "{bad:?}"
            );
        }
    }
}
