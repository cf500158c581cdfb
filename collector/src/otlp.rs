//! OTLP logs: an `ExportLogsServiceRequest` (OTLP/HTTP, protobuf or JSON) becomes ferry records,
//! grouped by the topic each goes to; the answer is an `ExportLogsServiceResponse`.
//!
//! Each `LogRecord` is one record:
//!
//! | OTLP | ferry record |
//! | --- | --- |
//! | `body` | the line: a string as it is, any other value as JSON (`{"k":1}`, `[1,2]`, `true`) |
//! | `time_unix_nano` (else `observed_time_unix_nano`) | event time (ms) |
//! | resource attributes, then the record's attributes | fields (a record attribute wins over a resource attribute of the same key); non-string values as JSON |
//! | `severity_text` (else the level of `severity_number`) | field `severity` (`INFO`, `ERROR`, ...) |
//! | `severity_number` | field `severity_number` when set |
//! | `trace_id`, `span_id` | fields `trace_id`, `span_id` (hex) when set |
//! | `event_name`, the scope's name | fields `event_name`, `otel.scope` when set |
//!
//! The topic is the value of the resource attribute `otlp.topic_attribute` when it is set and
//! the resource has it, else `otlp.default_topic`. Records that cannot be stored as they are (a
//! topic attribute that is not a valid topic name, a body over `max_line_bytes`) are rejected
//! one by one and counted in the response's `partial_success`; the rest of the request is
//! stored. The HTTP side (limits, status codes, the store) is in `api`'s OTLP route, which
//! hands every topic's records to [`crate::ingest::Ingest::ingest_records`].

use crate::config::OtlpConfig;
use crate::ingest::IngestError;
use bytes::Bytes;
use ferry_core::record::{Field, Record};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message;
use std::collections::BTreeMap;

/// The path OTLP/HTTP exporters post logs to.
pub const LOGS_PATH: &str = "/v1/logs";

/// How a request (and so its response) is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`: binary protobuf.
    Protobuf,
    /// `application/json`: the OTLP JSON mapping (camelCase keys, hex ids, 64-bit integers as
    /// strings or numbers).
    Json,
}

impl Encoding {
    /// `None` for a content type OTLP/HTTP does not define.
    pub fn from_content_type(content_type: Option<&str>) -> Option<Self> {
        let mime = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Self::Protobuf),
            "application/json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// Decodes a request body: inflates it (`Content-Encoding: gzip`, bounded by `max_raw_bytes`),
/// then parses it. Errors are 400 (or 413 past `max_raw_bytes`) with what is wrong.
pub fn decode(
    encoding: Encoding,
    content_encoding: Option<&str>,
    body: Bytes,
    max_raw_bytes: u64,
) -> Result<ExportLogsServiceRequest, IngestError> {
    let raw = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => body,
        Some(e) if e.is_empty() || e == "identity" => body,
        Some(e) if e == "gzip" || e == "x-gzip" => {
            crate::ingest::body::gunzip(&body, max_raw_bytes)?
        }
        Some(other) => {
            return Err(IngestError::BadRequest(format!(
                "unsupported Content-Encoding {other:?} (use gzip or none)"
            )));
        }
    };
    if raw.len() as u64 > max_raw_bytes {
        return Err(IngestError::TooLarge(format!(
            "body is {} bytes, over max_raw_bytes ({max_raw_bytes})",
            raw.len()
        )));
    }
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(raw).map_err(|e| {
            IngestError::BadRequest(format!(
                "body is not a protobuf ExportLogsServiceRequest: {e}"
            ))
        }),
        Encoding::Json => serde_json::from_slice(&raw).map_err(|e| {
            IngestError::BadRequest(format!(
                "body is not an OTLP JSON ExportLogsServiceRequest: {e}"
            ))
        }),
    }
}

/// A request's records by destination topic, and what was rejected.
#[derive(Debug, Default)]
pub struct Converted {
    /// Records per topic, in request order.
    pub topics: BTreeMap<String, Vec<Record>>,
    /// Log records rejected (not stored, not to be retried).
    pub rejected: u64,
    /// Why, the first few reasons joined.
    pub message: String,
}

/// Reasons kept for the response's message.
const MAX_REASONS: usize = 3;

impl Converted {
    /// Counts `n` more records rejected, keeping `reason` for the message.
    pub fn reject(&mut self, n: u64, reason: String) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        let kept = self.message.matches("; ").count() + usize::from(!self.message.is_empty());
        if kept < MAX_REASONS && !self.message.contains(&reason) {
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            self.message.push_str(&reason);
        }
    }

    /// Records to be stored, over all topics.
    pub fn records(&self) -> u64 {
        self.topics.values().map(|v| v.len() as u64).sum()
    }
}

/// Turns a request into records per topic (see the module doc for the mapping).
pub fn convert(
    request: ExportLogsServiceRequest,
    config: &OtlpConfig,
    max_line_bytes: usize,
) -> Converted {
    let mut out = Converted::default();
    for rl in request.resource_logs {
        let resource_attrs = rl.resource.map(|r| r.attributes).unwrap_or_default();
        let count: u64 = rl
            .scope_logs
            .iter()
            .map(|s| s.log_records.len() as u64)
            .sum();
        let topic = match topic_of(&resource_attrs, config) {
            Ok(t) => t,
            Err(reason) => {
                out.reject(count, reason);
                continue;
            }
        };
        let base: Vec<Field> = resource_attrs.iter().map(field_of).collect();
        for sl in rl.scope_logs {
            let scope = sl.scope.map(|s| s.name).filter(|n| !n.is_empty());
            for lr in sl.log_records {
                let line: Vec<u8> = match lr.body.as_ref().and_then(|b| b.value.as_ref()) {
                    None => Vec::new(),
                    Some(Value::StringValue(s)) => s.clone().into_bytes(),
                    Some(v) => json_of(v).to_string().into_bytes(),
                };
                if line.len() > max_line_bytes {
                    out.reject(
                        1,
                        format!(
                            "a log record's body is {} bytes, over max_line_bytes ({max_line_bytes})",
                            line.len()
                        ),
                    );
                    continue;
                }
                let mut fields = base.clone();
                for kv in &lr.attributes {
                    set(&mut fields, field_of(kv));
                }
                let severity = if lr.severity_text.is_empty() {
                    severity_name(lr.severity_number).map(str::to_owned)
                } else {
                    Some(lr.severity_text.clone())
                };
                if let Some(s) = severity {
                    set(&mut fields, Field::new("severity", s));
                }
                if lr.severity_number != 0 {
                    set(
                        &mut fields,
                        Field::new("severity_number", lr.severity_number.to_string()),
                    );
                }
                if !lr.trace_id.is_empty() {
                    set(&mut fields, Field::new("trace_id", hex(&lr.trace_id)));
                }
                if !lr.span_id.is_empty() {
                    set(&mut fields, Field::new("span_id", hex(&lr.span_id)));
                }
                if !lr.event_name.is_empty() {
                    set(&mut fields, Field::new("event_name", lr.event_name.clone()));
                }
                if let Some(s) = &scope {
                    set(&mut fields, Field::new("otel.scope", s.clone()));
                }
                let nanos = if lr.time_unix_nano != 0 {
                    lr.time_unix_nano
                } else {
                    lr.observed_time_unix_nano
                };
                let mut record = Record::from_line(line);
                record.event_time_ms = (nanos != 0).then_some((nanos / 1_000_000) as i64);
                record.fields = fields;
                out.topics.entry(topic.clone()).or_default().push(record);
            }
        }
    }
    out
}

/// The topic of a resource's records, or why they cannot be stored.
fn topic_of(attrs: &[KeyValue], config: &OtlpConfig) -> Result<String, String> {
    let Some(key) = config.topic_attribute.as_deref() else {
        return Ok(config.default_topic.clone());
    };
    let Some(kv) = attrs.iter().find(|kv| kv.key == key) else {
        return Ok(config.default_topic.clone());
    };
    let name = field_of(kv).value.into_string();
    ferry_core::topic::validate_name(&name).map_err(|e| {
        format!(
            "resource attribute {key} = {name:?} (otlp.topic_attribute) names no valid topic: {e}"
        )
    })?;
    Ok(name)
}

/// Sets `f`, replacing a field of the same key.
fn set(fields: &mut Vec<Field>, f: Field) {
    match fields.iter_mut().find(|x| x.key == f.key) {
        Some(x) => *x = f,
        None => fields.push(f),
    }
}

/// An attribute as a field: a string value as it is, any other as JSON.
fn field_of(kv: &KeyValue) -> Field {
    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(v) => json_of(v).to_string(),
    };
    Field::new(kv.key.as_str(), value)
}

/// An `AnyValue` as JSON: bytes as base64 (as OTLP's JSON mapping writes them), a double that
/// JSON cannot hold (NaN, infinity) as null.
fn json_of(v: &Value) -> serde_json::Value {
    use base64::Engine as _;
    use serde_json::Value as J;
    let any = |a: &AnyValue| a.value.as_ref().map(json_of).unwrap_or(J::Null);
    match v {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Value::ArrayValue(a) => J::Array(a.values.iter().map(any).collect()),
        Value::KvlistValue(l) => J::Object(
            l.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(any).unwrap_or(J::Null),
                    )
                })
                .collect(),
        ),
        Value::BytesValue(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        // A string-table reference of the profiling signal: meaningless in logs.
        #[allow(unreachable_patterns)]
        _ => J::Null,
    }
}

/// The level of an OTLP severity number (1-4 TRACE, 5-8 DEBUG, ... 21-24 FATAL).
fn severity_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The `ExportLogsServiceResponse` body: `partial_success` set when records were rejected.
pub fn response(encoding: Encoding, rejected: u64, message: &str) -> Vec<u8> {
    let response = ExportLogsServiceResponse {
        partial_success: (rejected > 0 || !message.is_empty()).then(|| ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message.to_owned(),
        }),
    };
    match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        // A full success is `{}`; serializing the two plain fields cannot fail.
        Encoding::Json => match &response.partial_success {
            None => b"{}".to_vec(),
            Some(_) => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        })
    }

    fn kv(k: &str, v: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v,
            ..Default::default()
        }
    }

    fn request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s(service)), kv("host", s("h1"))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn by_service() -> OtlpConfig {
        OtlpConfig {
            topic_attribute: Some("service.name".into()),
            default_topic: "otlp".into(),
        }
    }

    fn field<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
        r.fields.iter().find(|f| &*f.key == k).map(|f| &*f.value)
    }

    #[test]
    fn a_log_record_becomes_a_record_with_fields_and_time() {
        let rec = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: 17,
            body: s("disk full"),
            attributes: vec![
                kv("host", s("h2")),
                kv(
                    "n",
                    Some(AnyValue {
                        value: Some(Value::IntValue(42)),
                    }),
                ),
            ],
            trace_id: vec![0xab; 16],
            ..Default::default()
        };
        let out = convert(request("checkout", vec![rec]), &by_service(), 1024);
        assert_eq!(out.rejected, 0);
        let recs = &out.topics["checkout"];
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(&r.line[..], b"disk full");
        assert_eq!(r.event_time_ms, Some(1_700_000_000_123));
        assert_eq!(field(r, "service.name"), Some("checkout"));
        // The record's attribute wins over the resource's.
        assert_eq!(field(r, "host"), Some("h2"));
        assert_eq!(field(r, "n"), Some("42"));
        assert_eq!(field(r, "severity"), Some("ERROR"));
        assert_eq!(field(r, "severity_number"), Some("17"));
        assert_eq!(
            field(r, "trace_id"),
            Some("abababababababababababababababab")
        );
    }

    #[test]
    fn a_structured_body_is_json_and_observed_time_stands_in() {
        let body = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("msg", s("hi")),
                    kv(
                        "xs",
                        Some(AnyValue {
                            value: Some(Value::ArrayValue(ArrayValue {
                                values: vec![AnyValue {
                                    value: Some(Value::BoolValue(true)),
                                }],
                            })),
                        }),
                    ),
                ],
            })),
        };
        let rec = LogRecord {
            observed_time_unix_nano: 5_000_000,
            body: Some(body),
            severity_text: "warning".into(),
            ..Default::default()
        };
        let out = convert(request("x", vec![rec]), &OtlpConfig::default(), 1024);
        let r = &out.topics["otlp"][0];
        let v: serde_json::Value = serde_json::from_slice(&r.line).unwrap();
        assert_eq!(v, serde_json::json!({"msg": "hi", "xs": [true]}));
        assert_eq!(r.event_time_ms, Some(5));
        assert_eq!(field(r, "severity"), Some("warning"));
    }

    #[test]
    fn bad_topic_names_and_long_bodies_are_rejected_one_by_one() {
        let ok = LogRecord {
            body: s("fine"),
            ..Default::default()
        };
        let long = LogRecord {
            body: s(&"x".repeat(20)),
            ..Default::default()
        };
        let mut req = request("good", vec![ok.clone(), long]);
        req.resource_logs
            .extend(request("no good/..", vec![ok.clone(), ok]).resource_logs);
        let out = convert(req, &by_service(), 10);
        assert_eq!(out.records(), 1);
        assert_eq!(out.rejected, 3);
        assert!(out.message.contains("max_line_bytes"), "{}", out.message);
        assert!(out.message.contains("no good/.."), "{}", out.message);
    }

    #[test]
    fn responses_round_trip_in_both_encodings() {
        let pb = response(Encoding::Protobuf, 2, "why");
        let back = ExportLogsServiceResponse::decode(&pb[..]).unwrap();
        let ps = back.partial_success.unwrap();
        assert_eq!(
            (ps.rejected_log_records, ps.error_message.as_str()),
            (2, "why")
        );
        let js: serde_json::Value =
            serde_json::from_slice(&response(Encoding::Json, 0, "")).unwrap();
        assert_eq!(js, serde_json::json!({}));
    }

    #[test]
    fn garbage_is_a_bad_request_naming_the_encoding() {
        for (enc, body) in [
            (Encoding::Protobuf, &b"\xff\xff\xff\xff"[..]),
            (Encoding::Json, &b"{\"resourceLogs\": 3}"[..]),
        ] {
            match decode(enc, None, Bytes::from_static(body), 1 << 20) {
                Err(IngestError::BadRequest(m)) => assert!(m.contains("ExportLogsServiceRequest")),
                other => panic!("{enc:?}: {other:?}"),
            }
        }
    }
}
