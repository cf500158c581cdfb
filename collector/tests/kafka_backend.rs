//! The collector's Kafka backend through its HTTP API (`app(state)`, no socket), against
//! librdkafka's in-process mock cluster: 200 only once Kafka acknowledged every record, 503 with
//! Retry-After when it did not, routing applied, read endpoints answering 501.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_collector::CollectorConfig;
use ferry_collector::api::{AppState, app};
use ferry_collector::ingest::{Ingest, IngestSummary, open_backend};
use rdkafka::mocking::MockCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

fn config(brokers: &str, extra: &str) -> CollectorConfig {
    let yaml = format!(
        "backend: kafka\nkafka:\n  brokers: \"{brokers}\"\n  message_timeout: 1500ms\n  topic_prefix: \"ferry.\"\n{extra}"
    );
    let c: CollectorConfig =
        ferry_core::config::load_str(&yaml, std::path::Path::new("collector.yaml")).unwrap();
    c.validate().unwrap();
    c
}

fn router(c: CollectorConfig) -> axum::Router {
    let backend = open_backend(&c).unwrap();
    app(Arc::new(AppState::new(Ingest::new(backend, Arc::new(c)))))
}

async fn post(
    app: &axum::Router,
    topic: &str,
    body: String,
) -> (StatusCode, Option<String>, String) {
    let resp = app
        .clone()
        .oneshot(
            Request::post(format!("/v1/topics/{topic}/records"))
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

fn lines(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix} {i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_acknowledged_after_kafka_and_refused_with_503_when_it_is_down() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("ferry.orders", 4, 1).unwrap();
        let app = router(config(&mock.bootstrap_servers(), ""));
        let (status, _, body) = post(&app, "orders", lines("order", 300)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let s: IngestSummary = serde_json::from_str(&body).unwrap();
        assert_eq!((s.records, s.stored), (300, 300));
        assert_eq!(s.fsync, "kafka acks=all");

        mock.broker_down(1).unwrap();
        let (status, retry, body) = post(&app, "orders", lines("late", 50)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(retry.is_some(), "503 carries Retry-After");
        assert!(body.contains("not acknowledged"), "{body}");

        mock.broker_up(1).unwrap();
        let start = Instant::now();
        loop {
            let (status, _, body) = post(&app, "orders", lines("late", 50)).await;
            if status == StatusCode::OK {
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no recovery: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_pick_kafka_topics_and_read_endpoints_answer_501() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mock = MockCluster::new(1).unwrap();
        for t in ["ferry.app", "errors-topic"] {
            mock.create_topic(t, 2, 1).unwrap();
        }
        let extra = "  topics:\n    errors: { kafka_topic: errors-topic }\nroutes:\n- name: errors\n  match: { topic: app, regex: 'ERROR' }\n  copy: [errors]\n- name: noise\n  match: { topic: app, regex: 'DEBUG' }\n  drop: true\n";
        let app = router(config(&mock.bootstrap_servers(), extra));
        let body = "INFO a\nERROR b\nDEBUG c\nERROR d\n".to_string();
        let (status, _, body) = post(&app, "app", body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let s: IngestSummary = serde_json::from_str(&body).unwrap();
        assert_eq!(s.records, 4);
        assert_eq!(s.dropped, 1);
        assert_eq!(s.routed.get("app"), Some(&3));
        assert_eq!(s.routed.get("errors"), Some(&2));
        assert_eq!(s.stored, 5);
        for path in ["/v1/topics", "/v1/groups", "/v1/topics/app/partitions/0/records?offset=0"] {
            let resp = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED, "{path}");
        }
    })
    .await
    .expect("test timed out");
}

#[test]
fn kafka_config_mistakes_are_refused() {
    let bad = |yaml: &str| {
        let c: Result<CollectorConfig, _> =
            ferry_core::config::load_str(yaml, std::path::Path::new("c.yaml"));
        match c {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().expect_err("should be refused"),
        }
    };
    assert!(bad("backend: kafka\n").contains("kafka: section"));
    assert!(bad("kafka: { brokers: a:1 }\n").contains("backend: kafka"));
    assert!(
        bad("backend: kafka\nkafka: { brokers: a:1 }\ntopics: { t: { max_records: 5 } }\n")
            .contains("max_records")
    );
    assert!(!bad("backend: kafka\nkafka: { brokers: a:1, nope: 1 }\n").is_empty());
}
