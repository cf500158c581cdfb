//! ferry-collector: the central service between agents and processors.
//!
//! - [`store`]: the embedded, durable topic log (segments, indexes, group commit, recovery,
//!   retention, origin dedup, consumer-group offsets).

pub mod store;
