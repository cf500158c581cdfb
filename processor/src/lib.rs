//! ferry-processor: the processor's core, as plain state machines a driver runs.
//!
//! - [`config`]: the `processor:` section (pipelines), validated at load so `ferry check` names
//!   `file:line:col`.
//! - [`parse`]: line → fields (JSON read lazily, logfmt, regex, nginx/Apache combined, syslog).
//! - [`filter`]: the expression language of `filter:` and alert `when:`.
//! - [`time`]: event-time formats, RFC 3339 in and out.
//! - [`window`]: tumbling/hopping event-time windows, per-partition watermarks, idle timeout,
//!   grace, late records, `max_keys`.
//! - [`aggregate`] and [`sketch`]: count, sum, min, max, avg, percentile (DDSketch),
//!   distinct (HyperLogLog), top-K (Space-Saving).
//! - [`pipeline`]: one pipeline end to end: `process`, `advance_time`, emissions
//!   (results, alerts, late and dead-letter records), offsets.
//! - [`state`]: the versioned, checksummed snapshot of a pipeline, restored exactly.
//! - [`sink`]: stdout, file, webhook, and the collector-topic sink behind a producer trait.
//! - [`merge`]: one result per window and key over several input partitions: per-partition
//!   partials, closed on the minimum watermark, merged, and exactly once across crashes.
//! - [`repartition`]: one result per window and key when several members split the input:
//!   upstream instances ship keyed partials through a repartition topic to the merge's owners
//!   (the line, outbox and checkpoint formats).
//! - [`driver`]: every decision of a running pipeline — restore, process, merge in-process or
//!   through the owners, build a flush, what a checkpoint holds, replays dropped — with no I/O
//!   and no runtime; both sources run it.
//! - [`runner`]: the driver on collector topics as a group member: checkpoints stored in the
//!   collector, partials posted as an idempotent producer, hand-over on rebalance.
//! - [`kafka_source`], [`kafka_checkpoints`] and [`kafka_repartition`]: the driver on Kafka
//!   topics, as a member of a Kafka consumer group, with checkpoints in a compacted Kafka topic
//!   and partials produced to a Kafka repartition topic with a sequence header.
//!
//! ```
//! use ferry_processor::{config::ProcessorConfig, pipeline::{Pipeline, PartitionId}};
//! use ferry_core::record::Record;
//! let cfg: ProcessorConfig = ferry_core::config::load_str(r#"
//! pipelines:
//!   - name: levels
//!     source: {topics: [app]}
//!     event_time: {field: ts}
//!     group_by: [level]
//!     window: {tumbling: 10s, allowed_lateness: 0s}
//!     aggregates: [{name: count, op: count}]
//! "#, "example.yaml".as_ref()).unwrap();
//! let mut p = Pipeline::new(cfg.pipelines[0].clone());
//! let part = PartitionId::new("app", 0);
//! let mut out = Vec::new();
//! for (i, line) in [
//!     r#"{"ts":"2026-01-01T00:00:01Z","level":"info"}"#,
//!     r#"{"ts":"2026-01-01T00:00:02Z","level":"error"}"#,
//!     r#"{"ts":"2026-01-01T00:00:12Z","level":"info"}"#,
//! ].into_iter().enumerate() {
//!     p.process(&part, i as u64, &Record::from_line(line), 0, 0, &mut out);
//! }
//! let lines: Vec<String> = out.iter().filter_map(|e| match e {
//!     ferry_processor::pipeline::Emission::Result(r) => Some(r.to_json()),
//!     _ => None,
//! }).collect();
//! assert_eq!(lines, [
//!     r#"{"pipeline":"levels","window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-01T00:00:10Z","key":{"level":"error"},"count":1}"#,
//!     r#"{"pipeline":"levels","window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-01T00:00:10Z","key":{"level":"info"},"count":1}"#,
//! ]);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod aggregate;
pub mod codec;
pub mod config;
pub mod driver;
pub mod filter;
pub mod kafka_checkpoints;
pub mod kafka_repartition;
pub mod kafka_source;
pub mod merge;
pub mod parse;
pub mod pipeline;
pub mod repartition;
pub mod runner;
pub mod sink;
pub mod sketch;
pub mod state;
pub mod time;
pub mod window;

pub use config::ProcessorConfig;
pub use pipeline::{Emission, PartitionId, Pipeline, WindowResult};
