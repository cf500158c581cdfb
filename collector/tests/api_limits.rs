//! The collector's limits through its HTTP API (`app(state)` + `oneshot`, no socket), on the
//! embedded store: a cancelled request gives back what it reserved; JSON routes refuse large
//! bodies; topics and partitions are bounded and a refused creation leaves nothing on disk;
//! topics can be deleted; the longest topic name can checkpoint; errors do not show server
//! paths; a producer id and sequence make a resent body land once.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_collector::CollectorConfig;
use ferry_collector::api::{AppState, MAX_JSON_BODY_BYTES, app};
use ferry_collector::ingest::{Ingest, IngestSummary, Producer, open_backend};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

fn state(dir: &Path, extra: &str) -> Arc<AppState> {
    let yaml = format!("data_dir: {}\n{extra}", dir.display());
    let c: CollectorConfig =
        ferry_core::config::load_str(&yaml, Path::new("collector.yaml")).expect("test setup");
    c.validate().expect("test setup");
    let backend = open_backend(&c).expect("test setup");
    Arc::new(AppState::new(Ingest::new(backend, Arc::new(c))))
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let resp = app.clone().oneshot(req).await.expect("test setup");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("test setup").to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("test setup");
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

fn post(topic: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(format!("/v1/topics/{topic}/records"))
        .body(body.into())
        .expect("test setup")
}

fn json(method: &str, path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("test setup")
}

fn lines(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix} {i}\n")).collect()
}

fn held(state: &AppState, topic: &str) -> u64 {
    state.ingest.held_records(topic)
}

/// Regression (issue 16, repro 1): a request dropped while its append was in flight (its client
/// closed the socket) used to keep its `max_records` reservation forever, so the topic
/// answered 429 to everything after. The reservation and the pending slot are now a ticket
/// given back on drop.
#[tokio::test]
async fn a_request_dropped_mid_append_gives_back_its_reservation_and_pending_slot() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(
        dir.path(),
        "topics:\n  capped:\n    partitions: 1\n    max_records: 1000\n",
    );
    for round in 0..5 {
        let ingest = state.ingest.clone();
        let body = bytes::Bytes::from(lines(&format!("cancelled-{round}"), 100));
        let mut fut =
            Box::pin(async move { ingest.ingest("capped", None, None, body, None, None).await });
        // Poll until the request holds its reservation (it is then waiting for its append),
        // then drop it, as hyper does when the client goes away.
        let mut reserved = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            tokio::select! {
                biased;
                r = &mut fut => panic!("round {round}: the request finished ({r:?}) before it could be dropped mid-append"),
                () = tokio::task::yield_now() => {}
            }
            reserved = state.ingest.reserved_records("capped");
            if reserved > 0 {
                break;
            }
        }
        assert_eq!(reserved, 100, "round {round}: never saw the reservation");
        assert_eq!(state.ingest.pending_requests("capped"), 1);
        drop(fut);
        // The appends it started finish on their own; then the room is given back (before
        // the fix it never was).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state.ingest.reserved_records("capped") > 0
            || state.ingest.pending_requests("capped") > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the dropped request kept its reservation ({}) or pending slot ({})",
                state.ingest.reserved_records("capped"),
                state.ingest.pending_requests("capped")
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    // Every dropped request's records were stored (its appends were not cut off half-way),
    // and the room left is exactly what the next post may use.
    let stored = held(&state, "capped");
    assert_eq!(stored, 500);
    let app = app(state.clone());
    let n = (1000 - stored) as usize;
    let (status, _, body) = call(&app, post("capped", lines("after", n))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(held(&state, "capped"), 1000);
    let (status, retry, body) = call(&app, post("capped", "one more\n")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("holds 1000 records"), "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
}

/// Regression (issue 16, repro 2): the JSON routes read bodies of any size before answering.
#[tokio::test]
async fn json_routes_refuse_bodies_over_their_limit_with_413() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(dir.path(), "");
    let app = app(state);
    let big = vec![b' '; MAX_JSON_BODY_BYTES + 1];
    let routes = [
        ("PUT", "/v1/topics/x"),
        ("POST", "/v1/groups/g1/join"),
        ("POST", "/v1/groups/g1/heartbeat"),
        ("POST", "/v1/groups/g1/leave"),
        ("POST", "/v1/groups/g1/commit"),
    ];
    for (method, path) in routes {
        // A body that turns out too large (no length declared).
        let (status, _, body) = call(&app, json(method, path, big.clone())).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path}: {body}"
        );
        assert!(body.contains("over its limit of 65536 bytes"), "{body}");
        // One declared too large is refused before it is read.
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-length", (2u64 << 30).to_string())
            .body(Body::from("{}"))
            .expect("test setup");
        let (status, _, body) = call(&app, req).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path}: {body}"
        );
    }
    // Within the limit, the same routes still parse (and name what is wrong).
    let (status, _, body) = call(&app, json("POST", "/v1/groups/g1/join", "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("topics"), "{body}");
}

/// Regression (issue 16, repro 4): topics and partitions were unbounded and a refused
/// creation left its directory behind; there was no way to delete a topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_partitions_are_bounded_refusals_leave_nothing_and_topics_can_be_deleted() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(
        dir.path(),
        "default_partitions: 2\nlimits:\n  max_topics: 3\n  max_partitions_per_topic: 8\n  topic_creations_per_sec: 2\n",
    );
    let app = app(state.clone());
    let topic_dirs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join("topics"))
            .expect("test setup")
            .map(|e| {
                e.expect("test setup")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    };
    let (status, _, body) = call(&app, json("PUT", "/v1/topics/wide", r#"{"partitions":9}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("max_partitions_per_topic"), "{body}");
    // Auto-creation: a burst of 2, then 429 until the rate allows another.
    for t in ["a", "b"] {
        let (status, _, body) = call(&app, post(t, "x\n")).await;
        assert_eq!(status, StatusCode::OK, "{t}: {body}");
    }
    let (status, retry, body) = call(&app, post("c", "x\n")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("topic_creations_per_sec"), "{body}");
    assert!(retry.is_some());
    assert_eq!(topic_dirs(), ["a", "b"]);
    // Explicit creation is not paced, but counts against max_topics.
    let (status, _, body) = call(&app, json("PUT", "/v1/topics/c", r#"{"partitions":8}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = call(&app, json("PUT", "/v1/topics/d", r#"{"partitions":1}"#)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("max_topics"), "{body}");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let (status, _, body) = call(&app, post("d", "x\n")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("max_topics"), "{body}");
    assert_eq!(topic_dirs(), ["a", "b", "c"]);
    // Delete: 204, then the topic is gone (API and disk) and its slot is free again.
    let del = |t: &str| {
        Request::delete(format!("/v1/topics/{t}"))
            .body(Body::empty())
            .expect("test setup")
    };
    let (status, _, body) = call(&app, del("a")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, _) = call(
        &app,
        Request::get("/v1/topics/a")
            .body(Body::empty())
            .expect("test setup"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = call(&app, del("a")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(topic_dirs(), ["b", "c"]);
    let trash: Vec<_> = std::fs::read_dir(dir.path().join("trash"))
        .expect("test setup")
        .collect();
    assert!(
        trash.is_empty(),
        "deleted topic's files left in trash: {trash:?}"
    );
    let (status, _, body) = call(&app, json("PUT", "/v1/topics/d", r#"{"partitions":1}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A deleted topic can be created again, empty.
    let (status, _, body) = call(&app, del("b")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, body) = call(&app, json("PUT", "/v1/topics/b", r#"{"partitions":2}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(held(&state, "b"), 0);
}

/// Regression (issue 16, repro 5): a 249-character topic was accepted but could never
/// checkpoint ("File name too long").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_topic_name_can_checkpoint() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(dir.path(), "default_partitions: 1\n");
    let app = app(state);
    let topic = "t".repeat(ferry_core::topic::MAX_TOPIC_LEN);
    let group = "g".repeat(ferry_core::topic::MAX_TOPIC_LEN);
    let (status, _, body) = call(&app, post(&topic, "x\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(
        &app,
        json(
            "POST",
            &format!("/v1/groups/{group}/join"),
            format!(r#"{{"topics":["{topic}"]}}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member: serde_json::Value = serde_json::from_str(&body).expect("test setup");
    let member = member["member_id"].as_str().expect("test setup").to_owned();
    let path = format!("/v1/groups/{group}/checkpoints/{topic}/0");
    let put = Request::put(format!("{path}?member_id={member}&offset=1"))
        .body(Body::from("state"))
        .expect("test setup");
    let (status, _, body) = call(&app, put).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let resp = app
        .clone()
        .oneshot(Request::get(&path).body(Body::empty()).expect("test setup"))
        .await
        .expect("test setup");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ferry-offset"], "1");
    let body = axum::body::to_bytes(resp.into_body(), 1024)
        .await
        .expect("test setup");
    assert_eq!(&body[..], b"state");
}

/// Issue 16, repro 7: error replies showed server file paths; they now say what happened and
/// leave the details to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_errors_do_not_show_server_paths() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(dir.path(), "default_partitions: 1\n");
    let app = app(state);
    let (status, _, body) = call(&app, post("t", "x\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, body) = call(
        &app,
        json("POST", "/v1/groups/g/join", r#"{"topics":["t"]}"#),
    )
    .await;
    let member: serde_json::Value = serde_json::from_str(&body).expect("test setup");
    let member = member["member_id"].as_str().expect("test setup").to_owned();
    // A file where the checkpoints directory should be: every checkpoint write fails.
    std::fs::write(dir.path().join("checkpoints"), b"in the way").expect("test setup");
    let put = Request::put(format!(
        "/v1/groups/g/checkpoints/t/0?member_id={member}&offset=1"
    ))
    .body(Body::from("state"))
    .expect("test setup");
    let (status, retry, body) = call(&app, put).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry.is_some());
    assert!(
        body.contains("could not store or read the checkpoint"),
        "{body}"
    );
    let root = dir.path().display().to_string();
    assert!(!body.contains(&root), "reply shows a server path: {body}");
    assert!(
        !body.contains("checkpoints/"),
        "reply shows a server path: {body}"
    );
}

/// Issue 16, repro 6, at the API: a body resent with the same producer id and sequence is
/// stored once; one that overlaps what is stored keeps only the new lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_body_with_a_producer_id_is_stored_once() {
    let dir = tempfile::tempdir().expect("test setup");
    let state = state(dir.path(), "default_partitions: 3\n");
    let app = app(state.clone());
    let send = |body: String, id: &str, seq: u64| {
        Request::post("/v1/topics/p/records")
            .header("ferry-producer-id", id)
            .header("ferry-producer-seq", seq.to_string())
            .body(Body::from(body))
            .expect("test setup")
    };
    let first: String = (0..100).map(|i| format!("line {i}\n")).collect();
    let (status, _, body) = call(&app, send(first.clone(), "prod-1", 0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s: IngestSummary = serde_json::from_str(&body).expect("test setup");
    assert_eq!((s.stored, s.deduplicated), (100, 0));
    let (_, _, body) = call(&app, send(first, "prod-1", 0)).await;
    let s: IngestSummary = serde_json::from_str(&body).expect("test setup");
    assert_eq!((s.stored, s.deduplicated), (0, 100), "resend stored again");
    // Lines 50..150: the first 50 are replays.
    let overlap: String = (50..150).map(|i| format!("line {i}\n")).collect();
    let (_, _, body) = call(&app, send(overlap.clone(), "prod-1", 50)).await;
    let s: IngestSummary = serde_json::from_str(&body).expect("test setup");
    assert_eq!((s.stored, s.deduplicated), (50, 50));
    // Another producer's lines with the same numbers are its own.
    let (_, _, body) = call(&app, send(overlap, "prod-2", 50)).await;
    let s: IngestSummary = serde_json::from_str(&body).expect("test setup");
    assert_eq!((s.stored, s.deduplicated), (100, 0));
    assert_eq!(held(&state, "p"), 250);
    // A body past the size at which plain bodies are cut into batches is stored whole: no
    // part of it taken for a replay of another (regression: 94% of `ferry produce` chunks
    // were dropped that way).
    let large: String = (0..40_000)
        .map(|i| format!("big line {i:06} {}\n", "x".repeat(40)))
        .collect();
    assert!(large.len() > 2 << 20);
    let (status, _, body) = call(&app, send(large, "prod-3", 0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s: IngestSummary = serde_json::from_str(&body).expect("test setup");
    assert_eq!((s.stored, s.deduplicated), (40_000, 0));
    // Malformed headers are refused, naming the header.
    let bad = Request::post("/v1/topics/p/records")
        .header("ferry-producer-id", "no spaces please")
        .header("ferry-producer-seq", "1")
        .body(Body::from("x\n"))
        .expect("test setup");
    let (status, _, body) = call(&app, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("ferry-producer-id"), "{body}");
    let half = Request::post("/v1/topics/p/records")
        .header("ferry-producer-seq", "1")
        .body(Body::from("x\n"))
        .expect("test setup");
    let (status, _, body) = call(&app, half).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(Producer::parse("ok-id", "x").is_err());
}
