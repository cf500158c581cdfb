//! `ferry consume`: prints records of a topic, alone or as a member of a group.

use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition};
use std::io::Write;
use std::time::{Duration, Instant};

pub struct Args {
    pub collector: String,
    pub security: ferry_core::security::ClientSecurity,
    pub topic: String,
    pub group: Option<String>,
    pub from_beginning: bool,
    pub max: Option<u64>,
    pub idle_timeout: Option<Duration>,
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = super::client(&args.collector, &args.security)?;
    let mut config = ConsumerConfig::new(vec![args.topic.clone()]);
    config.group = args.group.clone();
    config.start = if args.from_beginning {
        StartPosition::Earliest
    } else {
        StartPosition::Latest
    };
    // With a group, committed offsets win; --from-beginning only sets where a partition without
    // one starts (as Kafka's console consumer does).
    config.poll_wait = Duration::from_millis(200);
    let mut consumer = Consumer::connect(client, config).await?;
    let shutdown = ferry_core::shutdown::Shutdown::new();
    shutdown.on_signals();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut records = Vec::new();
    loop {
        let want = args
            .max
            .map(|m| (m - printed) as usize)
            .unwrap_or(10_000)
            .min(10_000);
        if want == 0 || shutdown.is_triggered() {
            break;
        }
        consumer.poll_into(want, &mut records).await?;
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
            print_record(
                &mut out,
                args.json,
                &r.topic,
                r.partition,
                r.offset,
                Some(r.append_time_ms),
                &r.record,
            )?;
        }
        out.flush()?;
        printed += records.len() as u64;
        // Printed, then committed: at-least-once, and exactly-once in a stable group.
        consumer.commit().await?;
    }
    out.flush()?;
    drop(out);
    consumer.close().await?;
    Ok(())
}

/// Prints one consumed record the way `ferry consume` does, from the collector or from Kafka:
/// raw (the line as written, then a newline) or one JSON object per line.
pub fn print_record(
    out: &mut impl Write,
    json: bool,
    topic: &str,
    partition: u32,
    offset: u64,
    append_time_ms: Option<i64>,
    record: &ferry_core::record::Record,
) -> std::io::Result<()> {
    if !json {
        out.write_all(&record.line)?;
        return out.write_all(b"\n");
    }
    let fields: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|f| (f.key.to_string(), serde_json::Value::from(&*f.value)))
        .collect();
    let v = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "append_time_ms": append_time_ms,
        "event_time_ms": record.event_time_ms,
        "line": String::from_utf8_lossy(&record.line),
        "truncated": record.truncated,
        "fields": fields,
    });
    writeln!(out, "{v}")
}
