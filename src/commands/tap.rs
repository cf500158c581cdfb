//! `ferry tap --collector URL TOPIC [--filter EXPR] [--rate N]`: a live sample of the records
//! arriving on a topic, like `vector tap`. It reads every partition from its end as a consumer
//! of no group, so it joins nothing, commits nothing and moves no group's offsets.
//!
//! The filter is the processor's language (`level == "error" and latency_ms > 500`). A field is
//! looked up in the line when it is a JSON object (dotted names reach into nested objects), then
//! in the record's fields (those an agent adds, such as `host`); `line` is the whole line.
//! At most `--rate` records a second are printed; the others are counted as skipped, and the
//! counts are printed when the tap stops (Ctrl-C, `--max`, `--idle-timeout`).

use crate::cli::UsageError;
use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition};
use ferry_core::record::Record;
use ferry_processor::filter::{Filter, Val};
use std::io::Write;
use std::time::{Duration, Instant};

pub struct Args {
    pub collector: String,
    pub security: ferry_core::security::ClientSecurity,
    pub topic: String,
    pub filter: Option<String>,
    /// Most records printed per second.
    pub rate: u32,
    pub max: Option<u64>,
    pub idle_timeout: Option<Duration>,
    pub from_beginning: bool,
    pub json: bool,
}

/// What the tap saw, printed when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TapCounts {
    pub seen: u64,
    pub shown: u64,
    pub filtered_out: u64,
    pub rate_limited: u64,
}

/// A token bucket of `rate` tokens a second, holding at most one second's worth, so a burst
/// prints at most `rate` records and the tap never falls behind by buffering.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Whether one more record may be printed at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `record` passes `filter` (see the module docs for where fields come from).
pub fn matches(filter: &Filter, record: &Record) -> bool {
    let json: Option<serde_json::Value> = record
        .line
        .first()
        .filter(|b| **b == b'{')
        .and_then(|_| serde_json::from_slice(&record.line).ok());
    let line = String::from_utf8_lossy(&record.line);
    // Each field's value as text, looked up once per record.
    let values: Vec<Option<String>> = filter
        .fields()
        .iter()
        .map(|name| {
            if name == "line" {
                return Some(line.to_string());
            }
            let from_json = json.as_ref().and_then(|v| {
                let mut cur = v;
                for part in name.split('.') {
                    cur = cur.get(part)?;
                }
                match cur {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }
            });
            from_json.or_else(|| {
                record
                    .fields
                    .iter()
                    .find(|f| &*f.key == name.as_str())
                    .map(|f| f.value.to_string())
            })
        })
        .collect();
    filter.eval(&|i| values.get(i).and_then(|v| v.as_deref()).map(Val::Str))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ferry_core::topic::validate_name(&args.topic).map_err(UsageError)?;
    let filter = args
        .filter
        .as_deref()
        .map(Filter::parse)
        .transpose()
        .map_err(|e| UsageError(format!("--filter: {e}")))?;
    if args.rate == 0 {
        return Err(UsageError("--rate must be at least 1 record a second".into()).into());
    }
    let client = super::client(&args.collector, &args.security)?;
    let partitions = match client.topic(&args.topic).await? {
        Some(t) => t.partitions.len(),
        None => {
            return Err(UsageError(format!(
                "topic {:?} does not exist on {}",
                args.topic, args.collector
            ))
            .into());
        }
    };
    let mut config = ConsumerConfig::new(vec![args.topic.clone()]);
    // No group: nothing is joined or committed.
    config.group = None;
    config.start = if args.from_beginning {
        StartPosition::Earliest
    } else {
        StartPosition::Latest
    };
    config.poll_wait = Duration::from_millis(200);
    let mut consumer = Consumer::connect(client, config).await?;
    eprintln!(
        "ferry tap: sampling {} ({partitions} partitions) from {}, at most {}/s; Ctrl-C to stop",
        args.topic,
        if args.from_beginning {
            "the beginning"
        } else {
            "now on"
        },
        args.rate
    );
    let shutdown = ferry_core::shutdown::Shutdown::new();
    shutdown.on_signals();
    let mut counts = TapCounts::default();
    let mut limit = RateLimit::new(args.rate, Instant::now());
    let mut last_record = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    'tap: loop {
        if shutdown.is_triggered() || args.max.is_some_and(|m| counts.shown >= m) {
            break;
        }
        let records = tokio::select! {
            r = consumer.poll(10_000) => r?,
            _ = shutdown.wait() => break,
        };
        if records.is_empty() {
            if args
                .idle_timeout
                .is_some_and(|t| last_record.elapsed() >= t)
            {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            counts.seen += 1;
            if let Some(f) = &filter
                && !matches(f, &r.record)
            {
                counts.filtered_out += 1;
                continue;
            }
            if !limit.allow(Instant::now()) {
                counts.rate_limited += 1;
                continue;
            }
            super::consume::print_record(
                &mut out,
                args.json,
                &r.topic,
                r.partition,
                r.offset,
                Some(r.append_time_ms),
                &r.record,
            )?;
            counts.shown += 1;
            if args.max.is_some_and(|m| counts.shown >= m) {
                break 'tap;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    drop(out);
    eprintln!(
        "ferry tap: {} records seen, {} shown, {} filtered out, {} skipped by the rate limit",
        counts.seen, counts.shown, counts.filtered_out, counts.rate_limited
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(10, t0);
        let burst = (0..100).filter(|_| l.allow(t0)).count();
        assert_eq!(burst, 10);
        let later = t0 + Duration::from_millis(500);
        let more = (0..100).filter(|_| l.allow(later)).count();
        assert_eq!(more, 5);
    }

    #[test]
    fn fields_come_from_json_nested_json_record_fields_and_the_line() {
        let mut r = Record::from_line(&b"{\"level\":\"error\",\"http\":{\"status\":503}}"[..]);
        r.fields
            .push(ferry_core::record::Field::new("host", "web-1"));
        let yes = |src: &str| matches(&Filter::parse(src).expect("filter"), &r);
        assert!(yes("level == \"error\""));
        assert!(yes("http.status >= 500"));
        assert!(yes("host == \"web-1\""));
        assert!(yes("line =~ \"err\""));
        assert!(!yes("level == \"info\""));
        assert!(!yes("missing == \"x\""));
        let plain = Record::from_line(&b"not json at all"[..]);
        assert!(!matches(
            &Filter::parse("level == \"error\"").expect("f"),
            &plain
        ));
        assert!(matches(
            &Filter::parse("line =~ \"json\"").expect("f"),
            &plain
        ));
    }
}
