//! Timestamps in Unix milliseconds: RFC 3339 parsed by hand (no allocation, ~20 ns), shared by
//! the processor (event times), the agent's syslog input and container-log formats.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian); Howard Hinnant's algorithm.
#[inline(always)]
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses an RFC 3339 timestamp to Unix milliseconds (fractions below a millisecond truncated).
/// `T`, `t` or a space between date and time; `Z`, `z` or `+hh:mm` / `-hh:mm` at the end.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    Rfc3339Parser::default().parse(s.as_bytes())
}

/// RFC 3339 parsing that remembers the last hour it read (`2026-12-04T10`, validated and
/// converted to seconds): a stream of log lines mostly shares it, and the date is the costly
/// part (calendar checks and day count). The result is the same as [`parse_rfc3339`]'s for
/// every input; bytes that are not UTF-8 are simply not a timestamp.
#[derive(Debug, Clone, Default)]
pub struct Rfc3339Parser {
    /// The first 13 bytes of the last timestamp read (date, separator, hour) and their seconds
    /// since the epoch.
    hour: Option<([u8; 13], i64)>,
}

impl Rfc3339Parser {
    pub fn parse(&mut self, b: &[u8]) -> Option<i64> {
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let prefix = *b.first_chunk::<13>()?;
        let hour_secs = match self.hour {
            Some((p, secs)) if p == prefix => secs,
            _ => {
                let secs = hour_secs(b)?;
                self.hour = Some((prefix, secs));
                secs
            }
        };
        let min = digits(b, 14, 2)?;
        let sec = digits(b, 17, 2)?;
        if min > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        let mut ms = 0u32;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    ms = ms * 10 + (b[i] - b'0') as u32;
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                ms *= 10;
            }
        }
        let offset_s: i64 = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
                let oh = digits(b, i + 1, 2)? as i64;
                let om = digits(b, i + 4, 2)? as i64;
                if oh > 23 || om > 59 {
                    return None;
                }
                let o = oh * 3600 + om * 60;
                if *sign == b'-' { -o } else { o }
            }
            _ => return None,
        };
        let secs = hour_secs + min as i64 * 60 + sec.min(59) as i64 - offset_s;
        Some(secs * 1000 + ms as i64)
    }
}

/// Seconds from the epoch to the start of the hour of `b` (`YYYY-MM-DDTHH`, checked).
fn hour_secs(b: &[u8]) -> Option<i64> {
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(b, 0, 4)? as i64;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour as i64 * 3600)
}

#[inline]
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Timestamps that share hours with each other, valid and not: the parser that remembers an
    /// hour must give what a fresh one gives, whatever came before.
    fn stamp() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec![
                "2026-12-04",
                "2026-02-29",
                "2024-02-29",
                "1969-12-31",
                "2026-13-01",
            ]),
            prop::sample::select(vec!["T", "t", " ", "X"]),
            prop::sample::select(vec!["10", "23", "24"]),
            0u32..62,
            0u32..62,
            prop::sample::select(vec!["", ".5", ".123", ".123456", "."]),
            prop::sample::select(vec!["Z", "z", "+01:30", "-05:00", "+24:00", "", "Zx"]),
        )
            .prop_map(|(d, t, h, m, s, f, z)| format!("{d}{t}{h}:{m:02}:{s:02}{f}{z}"))
    }

    proptest! {
        #[test]
        fn the_parser_that_remembers_an_hour_agrees_with_a_fresh_one(stamps in prop::collection::vec(stamp(), 1..40)) {
            let mut p = Rfc3339Parser::default();
            for s in &stamps {
                prop_assert_eq!(p.parse(s.as_bytes()), Rfc3339Parser::default().parse(s.as_bytes()), "{}", s);
            }
        }
    }

    #[test]
    fn an_hour_remembered_does_not_excuse_the_rest() {
        let mut p = Rfc3339Parser::default();
        assert_eq!(p.parse(b"2026-12-04T10:00:00Z"), Some(1_796_378_400_000));
        assert_eq!(p.parse(b"2026-12-04T10:01:02.5Z"), Some(1_796_378_462_500));
        assert_eq!(p.parse(b"2026-12-04T10:60:00Z"), None);
        assert_eq!(p.parse(b"2026-12-04T10:00:00"), None);
        assert_eq!(p.parse(b"2026-12-04T10:0a:00Z"), None);
        assert_eq!(
            p.parse(b"2026-12-04T11:00:00+01:00"),
            Some(1_796_378_400_000)
        );
        assert_eq!(p.parse(b"2026-02-30T10:00:00Z"), None);
        assert_eq!(p.parse(b"2026-02-30T10:00:00Z"), None);
    }
}
