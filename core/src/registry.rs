//! The registry's wire types: what an agent reports to the collector (`PUT /v1/agents/{id}`),
//! what the collector answers on `GET /v1/agents` (and `ferry agents`, `ferry top` and the web
//! console show), and the collectors an agent may use (`GET /v1/collectors`). The collector
//! serializes and deserializes these very types, so no client reads untyped JSON.
//!
//! Times are milliseconds since the Unix epoch. The agent's own clock stamps what it reports
//! (`started_ms`, `last_ack_ms`); the collector's clock stamps when it last heard from the agent
//! (`last_seen_ms`), which is what staleness is judged by.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most files one heartbeat lists (those furthest behind first); the totals cover every file.
pub const MAX_REPORTED_FILES: usize = 100;

/// Longest agent id, host name, input name, path or URL a heartbeat may carry.
pub const MAX_REPORTED_STRING: usize = 1024;

/// A running agent's state, sent every `registry.heartbeat_interval`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentHeartbeat {
    /// Host name the agent runs on.
    pub host: String,
    /// The agent's version (`ferry --version`).
    pub version: String,
    /// Names of its inputs, in config order.
    pub inputs: Vec<String>,
    /// The collector URL it ships to (the first, or the one failover picked).
    pub collector: String,
    /// When this run of the agent started.
    pub started_ms: u64,
    /// `running`, or `stopped` in the last heartbeat of a clean shutdown.
    pub state: AgentRunState,
    pub lines_read: u64,
    pub bytes_read: u64,
    /// Records acknowledged by the collector.
    pub records_acked: u64,
    /// File bytes whose batches were acknowledged (or dropped and counted).
    pub bytes_acked: u64,
    /// File bytes not yet read, over every file tailed.
    pub bytes_behind: u64,
    /// Bytes that could not be read (lost to a truncation before they were read).
    pub unread_bytes: u64,
    /// When the collector last acknowledged a batch of this agent, if ever in this run.
    pub last_ack_ms: Option<u64>,
    /// Records given up on, by reason (`rejected`, `too_large`, `encode`).
    pub drops: BTreeMap<String, u64>,
    /// Files tailed now.
    pub files_total: u64,
    /// At most [`MAX_REPORTED_FILES`] of them, those furthest behind first.
    pub files: Vec<AgentFileStatus>,
}

/// Whether the agent is running or said goodbye.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentRunState {
    #[default]
    Running,
    Stopped,
}

/// One file an agent tails.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentFileStatus {
    pub path: String,
    pub input: String,
    /// Offset up to which the file's lines were acknowledged (its checkpoint).
    pub acked: u64,
    /// Bytes in the file not yet read.
    pub behind: u64,
}

/// An agent as the collector's registry shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentView {
    pub id: String,
    /// `running`, `stale` (silent for longer than `agents.stale_after`) or `stopped`.
    pub status: AgentStatus,
    /// The collector's clock when the last heartbeat arrived.
    pub last_seen_ms: u64,
    /// Seconds since then.
    pub silent_seconds: f64,
    #[serde(flatten)]
    pub report: AgentHeartbeat,
}

/// What the registry makes of an agent's heartbeats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Running,
    Stale,
    Stopped,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stale => "stale",
            Self::Stopped => "stopped",
        }
    }
}

/// A collector an agent may ship to (`GET /v1/collectors`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectorView {
    /// Base URL, as agents should use it.
    pub url: String,
    /// True for the collector that answered.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// Checks an agent id as it appears in `/v1/agents/{id}`: 1-255 of `[A-Za-z0-9._:-]` (a host
/// name, or the `agent.id` of its config). The error says which rule failed.
pub fn validate_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 {
        return Err(format!(
            "agent id is {} bytes long; it must be 1 to 255",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "agent id {id:?} has the character {c:?}; use only letters, digits, '.', '_', ':' and '-'"
        ));
    }
    Ok(())
}

impl AgentHeartbeat {
    /// A problem with a received heartbeat that makes it unfit for the registry, if any: a
    /// string or a list longer than the registry keeps.
    pub fn problem(&self) -> Option<String> {
        let long = |what: &str, s: &str| {
            (s.len() > MAX_REPORTED_STRING)
                .then(|| format!("{what} is longer than {MAX_REPORTED_STRING} bytes"))
        };
        if let Some(p) = long("host", &self.host)
            .or_else(|| long("version", &self.version))
            .or_else(|| long("collector", &self.collector))
        {
            return Some(p);
        }
        if self.inputs.len() > MAX_REPORTED_FILES {
            return Some(format!("more than {MAX_REPORTED_FILES} inputs"));
        }
        if let Some(p) = self.inputs.iter().find_map(|i| long("an input name", i)) {
            return Some(p);
        }
        if self.files.len() > MAX_REPORTED_FILES {
            return Some(format!("more than {MAX_REPORTED_FILES} files"));
        }
        if let Some(p) = self
            .files
            .iter()
            .find_map(|f| long("a path", &f.path).or_else(|| long("an input name", &f.input)))
        {
            return Some(p);
        }
        if self.drops.len() > 16 {
            return Some("more than 16 drop reasons".into());
        }
        self.drops.keys().find_map(|k| long("a drop reason", k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_the_heartbeat_flattened_with_the_registry_fields() {
        let view = AgentView {
            id: "web-1".into(),
            status: AgentStatus::Stale,
            last_seen_ms: 5,
            silent_seconds: 31.5,
            report: AgentHeartbeat {
                host: "web-1".into(),
                inputs: vec!["app".into()],
                drops: BTreeMap::from([("rejected".into(), 2)]),
                ..Default::default()
            },
        };
        let json = serde_json::to_value(&view).unwrap_or_default();
        assert_eq!(json["status"], "stale");
        assert_eq!(json["host"], "web-1");
        assert_eq!(json["state"], "running");
        assert_eq!(json["drops"]["rejected"], 2);
        let back: AgentView = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, view);
    }

    #[test]
    fn oversized_heartbeats_are_named() {
        let mut hb = AgentHeartbeat::default();
        assert_eq!(hb.problem(), None);
        hb.host = "h".repeat(MAX_REPORTED_STRING + 1);
        assert_eq!(
            hb.problem().as_deref(),
            Some("host is longer than 1024 bytes")
        );
        hb.host.clear();
        hb.files = vec![AgentFileStatus::default(); MAX_REPORTED_FILES + 1];
        assert_eq!(hb.problem().as_deref(), Some("more than 100 files"));
    }
}
