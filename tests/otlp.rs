//! OTLP/HTTP logs (`POST /v1/logs`): the official OpenTelemetry Python SDK and its OTLP/HTTP
//! exporter as the client, records read back with `ferry consume --format json`; OTLP JSON;
//! partial success; malformed bodies.
//!
//! The Python packages (`opentelemetry-sdk`, `opentelemetry-exporter-otlp-proto-http`) live in a
//! venv that scripts/test makes (`target/py-otel`); `FERRY_OTEL_PYTHON` names another Python
//! that has them.

mod util;
use std::path::PathBuf;
use util::{Dir, consume_json, run, start_collector};

fn python() -> PathBuf {
    let python = std::env::var_os("FERRY_OTEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-otel/bin/python")
        });
    let ok = std::process::Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} lacks the OpenTelemetry SDK: run scripts/test (it makes the venv), or \
         python3 -m venv target/py-otel && target/py-otel/bin/pip install \
         opentelemetry-sdk opentelemetry-exporter-otlp-proto-http",
        python.display()
    );
    python
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

const BY_SERVICE: &str =
    "collector:\n  otlp:\n    topic_attribute: service.name\n    default_topic: otel-misc\n";

#[test]
fn python_sdk_logs_arrive_as_records_with_their_attributes() {
    let python = python();
    let dir = Dir::new("otlp-sdk");
    let c = start_collector(&dir, "collector", Some(BY_SERVICE));
    let n = 250;
    let before = ferry_core::now_ms();
    let out = run(
        std::process::Command::new(python).args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp/emit_logs.py"),
            &c.url(),
            "checkout",
            &n.to_string(),
        ]),
        b"",
        0,
    );
    let after = ferry_core::now_ms();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("failed: 0"), "{printed}");
    let records = consume_json(&c.url(), "checkout");
    let mut seen = vec![false; n];
    for r in &records {
        let line = r["line"].as_str().expect("line");
        let i: usize = line
            .strip_prefix("event ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected record {r}"));
        assert!(!seen[i], "event {i} stored twice");
        seen[i] = true;
        let f = &r["fields"];
        assert_eq!(f["i"], i.to_string(), "{r}");
        assert_eq!(f["user"], format!("u{}", i % 7), "{r}");
        assert_eq!(f["service.name"], "checkout", "{r}");
        assert_eq!(f["deployment.environment"], "test", "{r}");
        assert_eq!(f["severity"], "WARN", "{r}");
        assert_eq!(f["severity_number"], "13", "{r}");
        let t = r["event_time_ms"].as_i64().expect("event time");
        assert!((before - 1000..=after + 1000).contains(&t), "{r}");
    }
    assert_eq!(records.len(), n, "every event exactly once");
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn otlp_json_is_taken_and_rejected_records_are_counted_as_partial_success() {
    let dir = Dir::new("otlp-json");
    let c = start_collector(&dir, "collector", Some(BY_SERVICE));
    let body = serde_json::json!({
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "h1"}}]},
                "scopeLogs": [{
                    "scope": {"name": "my.lib"},
                    "logRecords": [{
                        "timeUnixNano": "1700000000123000000",
                        "severityText": "Information",
                        "body": {"kvlistValue": {"values": [
                            {"key": "msg", "value": {"stringValue": "hi"}},
                            {"key": "n", "value": {"intValue": "7"}}
                        ]}},
                        "attributes": [{"key": "ok", "value": {"boolValue": true}}],
                        "traceId": "5b8efff798038103d269b633813fc60c",
                        "spanId": "eee19b7ec3c1b174"
                    }]
                }]
            },
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "not a topic!"}}]},
                "scopeLogs": [{"logRecords": [{"body": {"stringValue": "lost"}}, {"body": {"stringValue": "lost"}}]}]
            }
        ]
    });
    let resp = http()
        .post(format!("{}/v1/logs", c.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("post");
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().expect("json answer");
    let partial = &answer["partialSuccess"];
    assert_eq!(partial["rejectedLogRecords"], 2, "{answer}");
    let why = partial["errorMessage"].as_str().unwrap_or_default();
    assert!(why.contains("not a topic!"), "{answer}");

    let records = consume_json(&c.url(), "otel-misc");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    let line: serde_json::Value =
        serde_json::from_str(r["line"].as_str().expect("line")).expect("the body as JSON");
    assert_eq!(line, serde_json::json!({"msg": "hi", "n": 7}));
    assert_eq!(r["event_time_ms"], 1_700_000_000_123i64);
    let f = &r["fields"];
    assert_eq!(f["host.name"], "h1");
    assert_eq!(f["ok"], "true");
    assert_eq!(f["severity"], "Information");
    assert_eq!(f["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(f["span_id"], "eee19b7ec3c1b174");
    assert_eq!(f["otel.scope"], "my.lib");
}

#[test]
fn malformed_bodies_get_400_with_a_message_and_the_collector_stays_up() {
    let dir = Dir::new("otlp-bad");
    let c = start_collector(&dir, "collector", None);
    let url = format!("{}/v1/logs", c.url());
    let gz = |b: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    };
    // (content type, content encoding, body, status, what the error says)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // Field 1 (resource_logs) as a length-delimited field running past the end.
        (
            "application/x-protobuf",
            None,
            vec![0x0a, 0xff, 0x01, 0x02],
            400,
            "protobuf",
        ),
        (
            "application/x-protobuf",
            Some("gzip"),
            gz(&[0x0a, 0x05, 0x01]),
            400,
            "protobuf",
        ),
        (
            "application/x-protobuf",
            Some("gzip"),
            b"not gzip".to_vec(),
            400,
            "gzip",
        ),
        (
            "application/json",
            None,
            b"{\"resourceLogs\": [{".to_vec(),
            400,
            "JSON",
        ),
        (
            "application/json",
            None,
            b"{\"resourceLogs\": 3}".to_vec(),
            400,
            "JSON",
        ),
        (
            "text/plain",
            None,
            b"hello".to_vec(),
            415,
            "application/x-protobuf",
        ),
    ];
    for (ct, ce, body, status, says) in cases {
        let mut req = http().post(&url).header("content-type", ct).body(body);
        if let Some(ce) = ce {
            req = req.header("content-encoding", ce);
        }
        let resp = req.send().expect("post");
        assert_eq!(resp.status().as_u16(), status, "{ct} {ce:?}");
        let text = resp.text().expect("text");
        assert!(text.contains(says), "{ct} {ce:?}: {text}");
    }
    // Still serving: an empty but valid request is a full success.
    let resp = http()
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().expect("text"), "{}");
}
