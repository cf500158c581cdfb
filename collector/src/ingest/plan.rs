//! Step 2, pure: where each record of a batch goes. One implementation for both backends: the
//! embedded store then picks a partition per destination topic and record, Kafka produces
//! each destination's records as one sub-batch.

use crate::routing::{Decision, Router};
use ferry_core::batch::Batch;
use std::collections::BTreeMap;

/// The routing of one batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchRoutes {
    /// Destination topic → indices of the batch's records that go there, in order.
    pub per_topic: BTreeMap<String, Vec<usize>>,
    /// Records no destination took (routing dropped them).
    pub dropped: u64,
    /// Rule index → records it matched.
    pub matches: BTreeMap<usize, u64>,
}

impl BatchRoutes {
    /// Every record of `batch` to `topic`: what a batch no rule looks at gets.
    pub fn whole(topic: &str, batch: &Batch) -> Self {
        let mut per_topic = BTreeMap::new();
        let n = batch.header.record_count as usize;
        if n > 0 {
            per_topic.insert(topic.to_owned(), (0..n).collect());
        }
        Self {
            per_topic,
            ..Self::default()
        }
    }

    /// Whether every record of a batch of `n` goes to `topic` alone.
    pub fn is_whole_to(&self, topic: &str, n: usize) -> bool {
        self.per_topic.len() == 1 && self.per_topic.get(topic).is_some_and(|v| v.len() == n)
    }
}

/// Routes every record of `batch`, posted to `topic`, through the rules.
pub fn route_batch(router: &mut Router, topic: &str, batch: &Batch) -> BatchRoutes {
    let mut out = BatchRoutes::default();
    let mut hits: Vec<usize> = Vec::new();
    for (i, rec) in batch.records.iter().enumerate() {
        let targets: Vec<String> = match router.route(topic, rec, |r| hits.push(r)) {
            Decision::Original => vec![topic.to_owned()],
            Decision::Topics(ix) => ix
                .iter()
                .map(|&t| router.topic_name(t).to_owned())
                .collect(),
        };
        if targets.is_empty() {
            out.dropped += 1;
        }
        for t in targets {
            out.per_topic.entry(t).or_default().push(i);
        }
    }
    for r in hits {
        *out.matches.entry(r).or_default() += 1;
    }
    out
}

/// Counts each rule's matches (`ferry_collector_route_matches_total{rule}`).
pub fn count_matches(router: &Router, routes: &BatchRoutes) {
    for (&r, &n) in &routes.matches {
        metrics::counter!("ferry_collector_route_matches_total", "rule" => router.rule(r).name.clone())
            .increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteConfig;
    use ferry_core::batch::{BatchBuilder, Codec, DecodeLimits};

    fn batch(lines: &[&str]) -> Batch {
        let mut b = BatchBuilder::new();
        for l in lines {
            b.push_line(l.as_bytes(), 0);
        }
        let enc = bytes::Bytes::from(b.finish(Codec::None, 0, 1).expect("encode"));
        ferry_core::batch::decode(&enc, &DecodeLimits::default()).expect("decode")
    }

    #[test]
    fn records_are_sent_copied_and_dropped_by_the_rules_in_order() {
        let rules: Vec<RouteConfig> = ferry_core::config::load_str(
            "- name: drop-debug\n  match: { topic: app, regex: debug }\n  drop: true\n- name: copy-errors\n  match: { topic: app, regex: error }\n  copy: [alerts]\n- name: audit\n  match: { topic: app, regex: audit }\n  to: [audit]\n",
            std::path::Path::new("routes.yaml"),
        )
        .expect("rules");
        let mut router = Router::new(rules);
        let b = batch(&["debug x", "error y", "audit z", "plain"]);
        let r = route_batch(&mut router, "app", &b);
        let want: BTreeMap<String, Vec<usize>> = [
            ("alerts".to_owned(), vec![1]),
            ("app".to_owned(), vec![1, 3]),
            ("audit".to_owned(), vec![2]),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.per_topic, want);
        assert_eq!(r.dropped, 1);
        assert_eq!(r.matches.values().sum::<u64>(), 3);
        assert!(!r.is_whole_to("app", 4));
        // Another topic: no rule applies, everything stays.
        let r = route_batch(&mut router, "other", &b);
        assert!(r.is_whole_to("other", 4));
        assert_eq!(r, BatchRoutes::whole("other", &b));
    }
}
