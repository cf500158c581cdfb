//! The registry of agents: who ships to this collector, and how each is doing.
//!
//! Agents report their state with `PUT /v1/agents/{id}` every `registry.heartbeat_interval`
//! (DESIGN.md's "agents register and heartbeat"); `GET /v1/agents`, `ferry agents`, `ferry top`
//! and the web console show it. An agent silent for longer than `agents.stale_after` is shown as
//! `stale`; one whose last heartbeat said it stopped cleanly as `stopped`. The registry lives in
//! memory: after a restart of the collector every running agent is back within one heartbeat.
//!
//! Bounded: at most `agents.max_agents` entries. A new agent past that evicts the entry silent
//! the longest among the stale and stopped ones, or is refused (429) while every entry is
//! running. Entries silent for `agents.forget_after` are dropped.
//!
//! A plain struct with time passed in (`now_ms`, the collector's Unix-epoch clock), so it is
//! tested without a runtime; the API keeps it behind a std mutex never held across an await.

use ferry_core::registry::{AgentHeartbeat, AgentRunState, AgentStatus, AgentView};
use std::collections::HashMap;
use std::time::Duration;

/// The registry's settings (`collector.agents`).
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    pub stale_after: Duration,
    pub forget_after: Duration,
    pub max_agents: usize,
}

/// Every agent heard from, by id.
#[derive(Debug)]
pub struct Registry {
    agents: HashMap<String, Entry>,
    limits: RegistryLimits,
}

#[derive(Debug)]
struct Entry {
    report: AgentHeartbeat,
    /// The collector's clock at the last heartbeat.
    last_seen_ms: u64,
}

/// The registry holds `max_agents` running agents and cannot take another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the registry holds {max} running agents (agents.max_agents); retry later")]
pub struct RegistryFull {
    pub max: usize,
}

impl Registry {
    pub fn new(limits: RegistryLimits) -> Self {
        Self {
            agents: HashMap::new(),
            limits,
        }
    }

    /// Records a heartbeat. A new agent past `max_agents` takes the place of the one silent the
    /// longest among those not running, or is refused.
    pub fn heartbeat(
        &mut self,
        id: &str,
        report: AgentHeartbeat,
        now_ms: u64,
    ) -> Result<(), RegistryFull> {
        if !self.agents.contains_key(id) && self.agents.len() >= self.limits.max_agents {
            let evict = self
                .agents
                .iter()
                .filter(|(_, e)| self.status(e, now_ms) != AgentStatus::Running)
                .min_by_key(|(_, e)| e.last_seen_ms)
                .map(|(k, _)| k.clone());
            match evict {
                Some(k) => {
                    self.agents.remove(&k);
                }
                None => {
                    return Err(RegistryFull {
                        max: self.limits.max_agents,
                    });
                }
            }
        }
        self.agents.insert(
            id.to_owned(),
            Entry {
                report,
                last_seen_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Drops the entries silent for longer than `forget_after`.
    pub fn forget_old(&mut self, now_ms: u64) -> usize {
        let limit = self.limits.forget_after.as_millis() as u64;
        let before = self.agents.len();
        self.agents
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= limit);
        before - self.agents.len()
    }

    fn status(&self, e: &Entry, now_ms: u64) -> AgentStatus {
        if e.report.state == AgentRunState::Stopped {
            AgentStatus::Stopped
        } else if now_ms.saturating_sub(e.last_seen_ms) > self.limits.stale_after.as_millis() as u64
        {
            AgentStatus::Stale
        } else {
            AgentStatus::Running
        }
    }

    /// Every agent, by id.
    pub fn views(&self, now_ms: u64) -> Vec<AgentView> {
        let mut out: Vec<AgentView> = self
            .agents
            .iter()
            .map(|(id, e)| AgentView {
                id: id.clone(),
                status: self.status(e, now_ms),
                last_seen_ms: e.last_seen_ms,
                silent_seconds: now_ms.saturating_sub(e.last_seen_ms) as f64 / 1000.0,
                report: e.report.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// How many agents are running, stale and stopped.
    pub fn counts(&self, now_ms: u64) -> [(AgentStatus, usize); 3] {
        let mut counts = [
            (AgentStatus::Running, 0),
            (AgentStatus::Stale, 0),
            (AgentStatus::Stopped, 0),
        ];
        for e in self.agents.values() {
            let s = self.status(e, now_ms);
            if let Some(c) = counts.iter_mut().find(|(k, _)| *k == s) {
                c.1 += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_agents: usize) -> RegistryLimits {
        RegistryLimits {
            stale_after: Duration::from_secs(30),
            forget_after: Duration::from_secs(3600),
            max_agents,
        }
    }

    fn hb(host: &str) -> AgentHeartbeat {
        AgentHeartbeat {
            host: host.into(),
            ..Default::default()
        }
    }

    fn status_of(r: &Registry, id: &str, now: u64) -> Option<AgentStatus> {
        r.views(now)
            .into_iter()
            .find(|v| v.id == id)
            .map(|v| v.status)
    }

    #[test]
    fn an_agent_goes_stale_after_its_silence_and_back_with_a_heartbeat() {
        let mut r = Registry::new(limits(10));
        assert_eq!(r.heartbeat("a", hb("a"), 1_000), Ok(()));
        assert_eq!(status_of(&r, "a", 31_000), Some(AgentStatus::Running));
        assert_eq!(status_of(&r, "a", 31_001), Some(AgentStatus::Stale));
        assert_eq!(r.heartbeat("a", hb("a"), 40_000), Ok(()));
        assert_eq!(status_of(&r, "a", 40_000), Some(AgentStatus::Running));
        let stopped = AgentHeartbeat {
            state: AgentRunState::Stopped,
            ..hb("a")
        };
        assert_eq!(r.heartbeat("a", stopped, 41_000), Ok(()));
        assert_eq!(status_of(&r, "a", 41_000), Some(AgentStatus::Stopped));
        assert_eq!(r.counts(41_000)[2], (AgentStatus::Stopped, 1));
    }

    #[test]
    fn a_full_registry_evicts_the_longest_silent_stale_agent_or_refuses() {
        let mut r = Registry::new(limits(2));
        assert_eq!(r.heartbeat("a", hb("a"), 0), Ok(()));
        assert_eq!(r.heartbeat("b", hb("b"), 10_000), Ok(()));
        // Both running: a third is refused, an old one may still report.
        assert_eq!(
            r.heartbeat("c", hb("c"), 20_000),
            Err(RegistryFull { max: 2 })
        );
        assert_eq!(r.heartbeat("b", hb("b"), 20_000), Ok(()));
        // `a` is stale at 31 s: `c` takes its place.
        assert_eq!(r.heartbeat("c", hb("c"), 31_000), Ok(()));
        let ids: Vec<String> = r.views(31_000).into_iter().map(|v| v.id).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn entries_silent_past_forget_after_are_dropped() {
        let mut r = Registry::new(limits(10));
        assert_eq!(r.heartbeat("a", hb("a"), 0), Ok(()));
        assert_eq!(r.heartbeat("b", hb("b"), 2_000_000), Ok(()));
        assert_eq!(r.forget_old(3_600_001), 1);
        assert_eq!(r.views(3_600_001).len(), 1);
    }
}
