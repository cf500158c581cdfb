//! Event-time parsing and RFC 3339 formatting, in Unix milliseconds.
//!
//! RFC 3339 is the common case and is parsed by hand (no allocation, ~20 ns); `strftime` formats
//! go through chrono. Formatting is hand-rolled too since every result line carries two stamps.

pub use ferry_core::time::{Rfc3339Parser, days_from_civil, parse_rfc3339};
use serde::{Deserialize, Deserializer};

/// How an event-time field is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// `2026-11-24T06:46:50.123Z` or with an offset `+01:00`; a space for the `T` is accepted.
    #[default]
    Rfc3339,
    /// Integer (or decimal) milliseconds since the Unix epoch.
    UnixMs,
    /// Seconds since the Unix epoch, decimals allowed.
    UnixS,
    /// A chrono `strftime` pattern, e.g. `%d/%b/%Y:%H:%M:%S %z`. Without `%z` the time is UTC.
    Strftime(String),
}

impl TimeFormat {
    /// Parses `s` to Unix milliseconds, or `None` when it does not match the format.
    pub fn parse(&self, s: &str) -> Option<i64> {
        match self {
            TimeFormat::Rfc3339 => parse_rfc3339(s),
            TimeFormat::UnixMs => parse_unix(s, 1.0),
            TimeFormat::UnixS => parse_unix(s, 1000.0),
            TimeFormat::Strftime(f) => parse_strftime(s, f),
        }
    }

    fn from_config(s: &str) -> Result<Self, String> {
        Ok(match s {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix_ms" => TimeFormat::UnixMs,
            "unix_s" => TimeFormat::UnixS,
            f if f.contains('%') => {
                use chrono::format::{Item, StrftimeItems};
                if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
                    return Err(format!("invalid strftime pattern {f:?}"));
                }
                TimeFormat::Strftime(f.to_owned())
            }
            other => {
                return Err(format!(
                    "unknown time format {other:?}; expected rfc3339, unix_ms, unix_s or a strftime pattern such as \"%d/%b/%Y:%H:%M:%S %z\""
                ));
            }
        })
    }
}

/// Parses the event times of one pipeline, record after record: RFC 3339 with the hour of the
/// previous record remembered ([`Rfc3339Parser`]), other formats as [`TimeFormat::parse`] does.
#[derive(Debug, Clone)]
pub struct TimeParser {
    format: TimeFormat,
    rfc3339: Rfc3339Parser,
}

impl TimeParser {
    pub fn new(format: TimeFormat) -> Self {
        Self {
            format,
            rfc3339: Rfc3339Parser::default(),
        }
    }

    /// `value` in Unix milliseconds, or `None` when it does not match the format (bytes that
    /// are not UTF-8 never do).
    #[inline]
    pub fn parse(&mut self, value: &[u8]) -> Option<i64> {
        match &self.format {
            TimeFormat::Rfc3339 => self.rfc3339.parse(value),
            other => other.parse(std::str::from_utf8(value).ok()?),
        }
    }
}

impl<'de> Deserialize<'de> for TimeFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TimeFormat::from_config(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_unix(s: &str, scale: f64) -> Option<i64> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return i.checked_mul(scale as i64);
    }
    let f: f64 = s.parse().ok()?;
    let ms = f * scale;
    (ms.is_finite() && ms.abs() < 9.0e15).then(|| ms.floor() as i64)
}

fn parse_strftime(s: &str, fmt: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_str(s, fmt) {
        return Some(dt.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, fmt)
        .ok()
        .map(|dt| dt.and_utc().timestamp_millis())
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix milliseconds as RFC 3339 in UTC: `2026-11-24T06:46:50Z`, with `.123` when the
/// milliseconds are not zero.
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    if milli == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_agrees_with_chrono() {
        for s in [
            "2026-11-24T06:46:50Z",
            "2026-11-24T06:46:50.123Z",
            "2026-11-24T06:46:50.1Z",
            "2026-11-24T06:46:50.123456789+01:30",
            "1969-12-31T23:59:59.999-05:00",
            "2000-02-29T00:00:00Z",
            "1970-01-01T00:00:00Z",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis();
            assert_eq!(parse_rfc3339(s), Some(want), "{s}");
        }
        for bad in [
            "",
            "2026-11-24",
            "2026-13-24T06:46:50Z",
            "2026-02-30T06:46:50Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T06:46:50",
            "2026-11-24T06:46:50.Z",
            "2026-11-24T06:46:50Zjunk",
            "2026-11-24T06:46:50+0100",
            "2026-11-24X06:46:50Z",
            "２026-11-24T06:46:50Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [
            0,
            1,
            999,
            -1,
            1_795_000_000_123,
            -86_400_000 * 365 * 3,
            951_782_400_000,
        ] {
            let s = format_rfc3339(ms);
            assert_eq!(parse_rfc3339(&s), Some(ms), "{s}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(10_500), "1970-01-01T00:00:10.500Z");
    }

    #[test]
    fn a_time_parser_reads_values_as_bytes_in_every_format() {
        let mut p = TimeParser::new(TimeFormat::Rfc3339);
        for s in [
            "2026-11-24T06:46:50.123Z",
            "2026-11-24T06:47:00+01:00",
            "2026-11-24T07:00:00Z",
        ] {
            assert_eq!(p.parse(s.as_bytes()), parse_rfc3339(s), "{s}");
        }
        assert_eq!(p.parse(b"2026-11-24T07:00:00\xffZ"), None);
        let mut p = TimeParser::new(TimeFormat::UnixMs);
        assert_eq!(p.parse(b"1700000000123"), Some(1_700_000_000_123));
        assert_eq!(p.parse(b"17\xff"), None);
        let mut p = TimeParser::new(TimeFormat::from_config("%Y-%m-%d %H:%M:%S").unwrap());
        assert_eq!(p.parse(b"1970-01-02 00:00:01"), Some(86_401_000));
    }

    #[test]
    fn other_formats() {
        assert_eq!(
            TimeFormat::UnixMs.parse("1700000000123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            TimeFormat::UnixS.parse("1700000000.5"),
            Some(1_700_000_000_500)
        );
        assert_eq!(TimeFormat::UnixS.parse("soon"), None);
        let f = TimeFormat::from_config("%d/%b/%Y:%H:%M:%S %z").unwrap();
        assert_eq!(f.parse("10/Oct/2000:13:55:36 -0700"), Some(971_211_336_000));
        let f = TimeFormat::from_config("%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(f.parse("1970-01-02 00:00:01"), Some(86_401_000));
        assert!(TimeFormat::from_config("iso").is_err());
        assert!(TimeFormat::from_config("%Q").is_err());
    }
}
