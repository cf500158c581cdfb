//! Pipeline behaviour beyond plain window arithmetic: filters, early results, alerts, late and
//! dead-letter routing, static fields, event-time fallback, idle partitions, parsers end to end.

#![allow(clippy::unwrap_used)]

use ferry_core::record::{Field, Record};
use ferry_processor::config::ProcessorConfig;
use ferry_processor::pipeline::{Emission, PartitionId, Pipeline, WindowResult};
use serde_json::{Value, json};
use std::path::Path;

fn pipeline(body: &str) -> Pipeline {
    let yaml = format!("pipelines:\n  - name: t\n    source: {{topics: [app]}}\n{body}");
    let cfg: ProcessorConfig =
        ferry_core::config::load_str(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    Pipeline::new(cfg.pipelines[0].clone())
}

fn feed(p: &mut Pipeline, part: u32, lines: &[&str], now: i64, out: &mut Vec<Emission>) {
    let id = PartitionId::new("app", part);
    let start = p
        .offsets()
        .iter()
        .find(|(i, _)| *i == id)
        .map_or(0, |(_, o)| *o);
    for (i, l) in lines.iter().enumerate() {
        p.process(
            &id,
            start + i as u64,
            &Record::from_line(l.to_string()),
            1_000,
            now,
            out,
        );
    }
}

fn results(out: &[Emission]) -> Vec<&WindowResult> {
    out.iter()
        .filter_map(|e| match e {
            Emission::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn json_lines(out: &[Emission]) -> Vec<Value> {
    results(out)
        .iter()
        .map(|r| serde_json::from_str(&r.to_json()).unwrap())
        .collect()
}

#[test]
fn filter_keeps_matching_records_only() {
    let mut p = pipeline(
        "    event_time: {field: t, format: unix_s}\n    filter: 'status >= 500 and not (path =~ \"^/health\")'\n    group_by: [path]\n    window: {tumbling: 10s, allowed_lateness: 0s}\n    aggregates: [{name: n, op: count}]\n",
    );
    let mut out = Vec::new();
    feed(
        &mut p,
        0,
        &[
            r#"{"t":1,"status":503,"path":"/api"}"#,
            r#"{"t":2,"status":200,"path":"/api"}"#,
            r#"{"t":3,"status":500,"path":"/healthz"}"#,
            r#"{"t":4,"path":"/api"}"#,
            r#"{"t":5,"status":"oops","path":"/api"}"#,
            r#"{"t":6,"status":502,"path":"/api"}"#,
            r#"{"t":20}"#,
        ],
        0,
        &mut out,
    );
    assert_eq!(
        json_lines(&out),
        vec![
            json!({"pipeline":"t","window_start":"1970-01-01T00:00:00Z","window_end":"1970-01-01T00:00:10Z","key":{"path":"/api"},"n":2})
        ]
    );
    assert_eq!(p.stats().filtered, 5);
}

#[test]
fn early_results_and_alerts_fire_once_per_window_and_key() {
    let mut p = pipeline(
        "    event_time: {field: t, format: unix_ms}\n    group_by: [level]\n    window: {tumbling: 1s, allowed_lateness: 0s, emit: early}\n    aggregates: [{name: count, op: count}]\n    alerts:\n      - {name: burst, when: 'count >= 2 and level == \"error\"'}\n",
    );
    let mut out = Vec::new();
    feed(
        &mut p,
        0,
        &[r#"{"t":1,"level":"error"}"#, r#"{"t":2,"level":"info"}"#],
        0,
        &mut out,
    );
    p.advance_time(10, &mut out);
    let early = json_lines(&out);
    assert_eq!(early.len(), 2);
    assert!(early.iter().all(|r| r["early"] == json!(true)));
    out.clear();
    // Nothing changed: no early result on the next tick.
    p.advance_time(20, &mut out);
    assert!(out.is_empty());
    feed(&mut p, 0, &[r#"{"t":3,"level":"error"}"#], 30, &mut out);
    p.advance_time(40, &mut out);
    let alerts: Vec<&Emission> = out
        .iter()
        .filter(|e| matches!(e, Emission::Alert { .. }))
        .collect();
    assert_eq!(alerts.len(), 1, "{out:?}");
    if let Emission::Alert { result, name, .. } = alerts[0] {
        assert_eq!(&**name, "burst");
        assert!(result.early);
        let line: Value = serde_json::from_str(&result.to_json_with(Some("burst"))).unwrap();
        assert_eq!(line["alert"], json!("burst"));
        assert_eq!(line["count"], json!(2));
    }
    out.clear();
    // The window closes: final results (not early), the alert does not fire again.
    feed(&mut p, 0, &[r#"{"t":1000,"level":"info"}"#], 50, &mut out);
    let finals = json_lines(&out);
    assert_eq!(finals.len(), 2);
    assert!(finals.iter().all(|r| r.get("early").is_none()));
    assert!(!out.iter().any(|e| matches!(e, Emission::Alert { .. })));
    assert_eq!(p.stats().alerts, 1);
}

#[test]
fn late_and_dead_letter_records_are_routed() {
    let mut p = pipeline(
        "    event_time: {field: t, format: unix_ms}\n    on_parse_error: dead_letter\n    dead_letter_topic: bad\n    late_topic: late\n    window: {tumbling: 100ms, allowed_lateness: 0s, grace: 50ms}\n    aggregates: [{name: count, op: count}]\n",
    );
    let mut out = Vec::new();
    feed(
        &mut p,
        0,
        &[
            r#"{"t":10}"#,
            r#"{"t":140}"#, // watermark 140: [0,100) + 50ms grace has not passed
            r#"{"t":20}"#,  // still accepted in grace
            r#"{"t":150}"#, // watermark 150 >= 100 + 50: [0,100) closes
            "{broken",
            r#"{"t":200}"#,
            r#"{"t":30}"#, // late
        ],
        0,
        &mut out,
    );
    let r = json_lines(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["count"], json!(2));
    let late: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Emission::Late {
                topic,
                offset,
                line,
                ..
            } => Some((&**topic, *offset, line.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        late,
        vec![("late", 6, bytes::Bytes::from_static(br#"{"t":30}"#))]
    );
    let dead: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Emission::DeadLetter {
                topic,
                offset,
                error,
                ..
            } => Some((&**topic, *offset, error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].0, dead[0].1), ("bad", 4));
    assert!(dead[0].2.starts_with("json:"), "{}", dead[0].2);
    assert_eq!(p.stats().late, 1);
}

#[test]
fn static_fields_and_event_time_fallback() {
    let mut p = pipeline(
        "    parse: logfmt\n    event_time: {field: ts}\n    group_by: [host, level]\n    window: {tumbling: 1s, allowed_lateness: 0s}\n    aggregates: [{name: count, op: count}, {name: bytes, op: sum, field: size}]\n",
    );
    let id = PartitionId::new("app", 0);
    let mut out = Vec::new();
    let mut r = Record::from_line("level=info size=10 ts=1970-01-01T00:00:00.500Z");
    r.fields.push(Field::new("host", "web-1"));
    p.process(&id, 0, &r, 0, 0, &mut out);
    // No ts: the record's own event time is used; then the ingest time.
    let mut r = Record::from_line("level=info size=5 host=db-2");
    r.event_time_ms = Some(700);
    p.process(&id, 1, &r, 0, 0, &mut out);
    p.process(
        &id,
        2,
        &Record::from_line("level=warn ts=garbage"),
        900,
        0,
        &mut out,
    );
    p.process(
        &id,
        3,
        &Record::from_line("level=info ts=1970-01-01T00:00:05Z"),
        0,
        0,
        &mut out,
    );
    let r = json_lines(&out);
    assert_eq!(
        r.iter()
            .map(|x| (x["key"].clone(), x["count"].clone(), x["bytes"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!({"host": null, "level": "warn"}), json!(1), json!(0.0)),
            (
                json!({"host": "db-2", "level": "info"}),
                json!(1),
                json!(5.0)
            ),
            (
                json!({"host": "web-1", "level": "info"}),
                json!(1),
                json!(10.0)
            ),
        ]
    );
    assert_eq!(p.stats().event_time_fallbacks, 2);
    // Absurd times (beyond year 9999) fall back too instead of overflowing window arithmetic.
    let mut p = pipeline(
        "    event_time: {field: t, format: unix_ms}\n    window: {hopping: {size: 3s, advance: 1s}}\n    aggregates: [{name: count, op: count}]\n",
    );
    let mut out = Vec::new();
    for (i, t) in [i64::MIN, i64::MAX, -9_000_000_000_000_000_000, 1]
        .iter()
        .enumerate()
    {
        let line = format!(r#"{{"t":{t}}}"#);
        p.process(&id, i as u64, &Record::from_line(line), 0, 0, &mut out);
    }
    assert_eq!(p.stats().event_time_fallbacks, 3);
}

#[test]
fn idle_partition_does_not_stall_results() {
    let mut p = pipeline(
        "    event_time: {field: t, format: unix_ms}\n    window: {tumbling: 100ms, allowed_lateness: 0s, idle_timeout: 5s}\n    aggregates: [{name: count, op: count}]\n",
    );
    let mut out = Vec::new();
    feed(&mut p, 0, &[r#"{"t":10}"#], 0, &mut out);
    feed(&mut p, 1, &[r#"{"t":20}"#], 0, &mut out);
    // Partition 1 keeps going; partition 0 went quiet and holds the watermark at 10.
    for t in [150, 250, 350] {
        feed(&mut p, 1, &[&format!(r#"{{"t":{t}}}"#)], 1_000, &mut out);
    }
    assert!(results(&out).is_empty());
    assert_eq!(p.watermark(), Some(10));
    // After 5s without a record from partition 0, partition 1 alone drives the watermark.
    feed(&mut p, 1, &[r#"{"t":360}"#], 5_000, &mut out);
    assert_eq!(p.watermark(), Some(360));
    let starts: Vec<i64> = results(&out).iter().map(|r| r.window_start_ms).collect();
    assert_eq!(starts, vec![0, 100, 200]);
}

#[test]
fn parsers_end_to_end() {
    let mut p = pipeline(
        "    parse: nginx\n    event_time: {field: time_local, format: \"%d/%b/%Y:%H:%M:%S %z\"}\n    group_by: [status]\n    window: {tumbling: 1m, allowed_lateness: 0s}\n    aggregates: [{name: count, op: count}, {name: p50, op: percentile, field: body_bytes_sent, q: 0.5}, {name: top, op: topk, field: path, k: 1}]\n",
    );
    let mut out = Vec::new();
    feed(
        &mut p,
        0,
        &[
            r#"1.2.3.4 - - [17/May/2015:08:05:32 +0000] "GET /a HTTP/1.1" 200 100 "-" "curl""#,
            r#"1.2.3.4 - - [17/May/2015:08:05:40 +0000] "GET /a HTTP/1.1" 200 300 "-" "curl""#,
            r#"1.2.3.4 - - [17/May/2015:08:05:41 +0000] "GET /b HTTP/1.1" 404 0 "-" "curl""#,
            r#"1.2.3.4 - - [17/May/2015:08:07:00 +0000] "GET /b HTTP/1.1" 200 0 "-" "curl""#,
        ],
        0,
        &mut out,
    );
    let r = json_lines(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["window_start"], json!("2015-05-17T08:05:00Z"));
    assert_eq!(r[0]["key"], json!({"status": "200"}));
    assert_eq!(r[0]["top"], json!([{"value": "/a", "count": 2}]));
    let p50 = r[0]["p50"].as_f64().unwrap();
    assert!((p50 - 100.0).abs() <= 1.0, "{p50}");
    assert_eq!(r[1]["key"], json!({"status": "404"}));
}
