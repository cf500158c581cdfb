//! The shipped sample config runs as documented; config errors name file:line:col; the state
//! format is pinned by a golden file.

#![allow(clippy::unwrap_used)]

use ferry_core::record::Record;
use ferry_processor::config::ProcessorConfig;
use ferry_processor::pipeline::{Emission, PartitionId, Pipeline, WindowResult};
use ferry_processor::state::StateError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The part of a ferry config file this crate owns.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    processor: ProcessorConfig,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> ferry_processor::config::PipelineConfig {
    let f: File = ferry_core::config::load_file(&repo().join("configs/processor.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    f.processor.pipelines[0].clone()
}

fn result_lines(out: &[Emission]) -> Vec<String> {
    out.iter()
        .filter_map(|e| match e {
            Emission::Result(r) => Some(r.to_json()),
            _ => None,
        })
        .collect()
}

#[test]
fn sample_config_counts_levels_in_10s_windows() {
    let mut p = Pipeline::new(sample());
    let part = PartitionId::new("app", 0);
    let mut out = Vec::new();
    let lines = [
        r#"{"ts":"2026-01-01T00:00:01Z","level":"info","msg":"a"}"#,
        r#"{"ts":"2026-01-01T00:00:03.5Z","level":"error","msg":"b"}"#,
        "not json at all",
        r#"{"ts":"2026-01-01T00:00:09Z","level":"info","msg":"c"}"#,
        r#"{"ts":"2026-01-01T00:00:11Z","level":"info","msg":"d"}"#,
        // Within the 2s allowed lateness: still counted in the first window.
        r#"{"ts":"2026-01-01T00:00:08Z","level":"error","msg":"e"}"#,
        r#"{"ts":"2026-01-01T00:00:12Z","level":"warn","msg":"f"}"#,
    ];
    for (i, l) in lines.iter().enumerate() {
        p.process(&part, i as u64, &Record::from_line(*l), 0, 0, &mut out);
    }
    assert_eq!(
        result_lines(&out),
        [
            r#"{"pipeline":"levels","window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-01T00:00:10Z","key":{"level":"error"},"count":2}"#,
            r#"{"pipeline":"levels","window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-01T00:00:10Z","key":{"level":"info"},"count":2}"#,
        ]
    );
    assert_eq!(p.stats().parse_errors, 1);
    assert_eq!(p.offsets(), vec![(part, 7)]);
}

#[test]
fn bad_pipeline_config_names_file_line_col() {
    let text = std::fs::read_to_string(repo().join("configs/processor.yaml")).unwrap();
    let cases = [
        ("tumbling: 10s", "tumbling: ten", "invalid duration"),
        ("op: count", "op: median", "median"),
        ("      sinks:", "      zzsinks:", "unknown field `zzsinks`"),
        ("format: rfc3339", "format: iso", "unknown time format"),
        (
            "# filter: 'exists(level)'",
            "filter: 'level =! \"x\"'",
            "column 7 of the expression",
        ),
    ];
    for (from, to, needle) in cases {
        let bad = text.replacen(from, to, 1);
        assert_ne!(bad, text);
        let line = bad
            .lines()
            .position(|l| l.contains(to))
            .map(|i| i as u64 + 1)
            .unwrap();
        let err = ferry_core::config::load_str::<File>(&bad, Path::new("configs/processor.yaml"))
            .err()
            .unwrap_or_else(|| panic!("{to} accepted"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg}");
        assert!(
            msg.starts_with(&format!("configs/processor.yaml:{line}:")),
            "{msg} (expected line {line})"
        );
        if to.contains("zzsinks") {
            assert_eq!(err.location(), Some((line, 7)), "{msg}");
        }
    }
}

/// A fixed, deterministic run whose snapshot is compared byte for byte with the committed one.
fn golden_pipeline() -> Pipeline {
    let yaml = r#"
pipelines:
  - name: golden
    source: {topics: [app]}
    event_time: {field: ts}
    group_by: [level]
    window: {hopping: {size: 20s, advance: 10s}, allowed_lateness: 1s}
    aggregates:
      - {name: count, op: count}
      - {name: sum, op: sum, field: ms}
      - {name: min, op: min, field: ms}
      - {name: max, op: max, field: ms}
      - {name: avg, op: avg, field: ms}
      - {name: p99, op: percentile, field: ms, q: 0.99}
      - {name: users, op: distinct, field: user}
      - {name: top, op: topk, field: path, k: 2}
"#;
    let cfg: ProcessorConfig = ferry_core::config::load_str(yaml, Path::new("g.yaml")).unwrap();
    let mut p = Pipeline::new(cfg.pipelines[0].clone());
    let mut out = Vec::new();
    for i in 0..40u64 {
        let line = format!(
            r#"{{"ts":"2026-01-01T00:00:{:02}Z","level":"{}","ms":{}.5,"user":"u{}","path":"/p{}"}}"#,
            i % 50,
            ["info", "error", "warn"][i as usize % 3],
            i * 7 % 13,
            i % 5,
            i % 3
        );
        let part = PartitionId::new("app", (i % 2) as u32);
        p.process(
            &part,
            i / 2,
            &Record::from_line(line),
            0,
            i as i64 * 10,
            &mut out,
        );
    }
    p
}

#[test]
fn state_format_matches_golden_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v2.bin");
    let snap = golden_pipeline().snapshot();
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &snap).unwrap();
    }
    let golden = std::fs::read(&path).expect("tests/data/state-v2.bin (FERRY_BLESS=1 writes it)");
    assert_eq!(
        snap, golden,
        "the state format changed: bump state::VERSION and keep reading the older versions"
    );
    // The golden state restores and finishes like the live pipeline.
    let (a, b) = restored_and_live(&golden);
    assert_eq!(a, b);
}

/// What the golden pipeline restored from `state` emits when drained, and what the live one
/// emits.
fn restored_and_live(state: &[u8]) -> (Vec<Emission>, Vec<Emission>) {
    let cfg = golden_pipeline().config().clone();
    let mut restored = Pipeline::restore(cfg, state).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    restored.drain(&mut a);
    golden_pipeline().drain(&mut b);
    assert!(!a.is_empty());
    (a, b)
}

/// A state written by the build before the switch to `sketches-ddsketch` (version 1, its
/// percentile in our own sketch's bins) still restores: the same windows, keys and exact
/// aggregates, and the percentile within the sketch's 1% of the live pipeline's.
#[test]
fn state_of_version_1_still_restores() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v1.bin");
    let v1 = std::fs::read(&path).expect("tests/data/state-v1.bin");
    assert_eq!(v1[4], 1);
    let (a, b) = restored_and_live(&v1);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (Emission::Result(x), Emission::Result(y)) = (x, y) else {
            assert_eq!(x, y);
            continue;
        };
        let split = |r: &WindowResult| {
            let mut r = r.clone();
            let i = r.values.iter().position(|(n, _)| &**n == "p99").unwrap();
            let (_, p) = r.values.remove(i);
            (r, p.as_f64().unwrap())
        };
        let ((xr, p), (yr, q)) = (split(x), split(y));
        assert_eq!(xr, yr, "everything but the percentile is exact");
        // The old sketch's bins re-added at their representative values: within 1% of the
        // values they counted, which are within 1% of the true quantile.
        assert!((p - q).abs() <= 0.021 * q.abs(), "p99 {p} against {q}");
    }
}

#[test]
fn damaged_or_foreign_state_is_refused() {
    let p = golden_pipeline();
    let cfg = p.config().clone();
    let snap = p.snapshot();
    let mut flipped = snap.clone();
    flipped[40] ^= 1;
    assert!(matches!(
        Pipeline::restore(cfg.clone(), &flipped),
        Err(StateError::Checksum)
    ));
    assert!(matches!(
        Pipeline::restore(cfg.clone(), b"nope"),
        Err(StateError::BadMagic)
    ));
    let mut v3 = snap.clone();
    v3[4] = 3;
    assert!(matches!(
        Pipeline::restore(cfg.clone(), &v3),
        Err(StateError::UnsupportedVersion(3))
    ));
    for cut in [5, 13, 20, snap.len() / 2, snap.len() - 1] {
        assert!(Pipeline::restore(cfg.clone(), &snap[..cut]).is_err());
    }
    let mut other = cfg.clone();
    other.group_by.push("host".into());
    assert!(matches!(
        Pipeline::restore(other, &snap),
        Err(StateError::Incompatible { .. })
    ));
}

/// Issue 13: the sample repartitions by default (any number of members give one result per
/// window and key); `repartition: false` keeps the in-process merge.
#[test]
fn sample_repartitions_by_default_and_it_can_be_turned_off() {
    let s = sample();
    assert!(s.source.repartition && !s.source.partitioned_by_key);
    let text = std::fs::read_to_string(repo().join("configs/processor.yaml")).unwrap();
    let off = text.replace(
        "start: committed\n",
        "start: committed\n        repartition: false\n",
    );
    assert_ne!(off, text);
    let f: File = ferry_core::config::load_str(&off, Path::new("off.yaml")).unwrap();
    assert!(!f.processor.pipelines[0].source.repartition);
}
