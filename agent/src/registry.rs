//! Heartbeats to the collector's registry of agents (`PUT /v1/agents/{id}`), so that an operator
//! sees on the collector which hosts ship, which are behind or silent, and what they dropped
//! (`GET /v1/agents`, `ferry agents`, the web console).
//!
//! Every `registry.heartbeat_interval` the agent reports its counters ([`crate::AgentStats`]) and
//! its files, those furthest behind first, to the first of its collectors that answers. A
//! heartbeat that fails is logged at debug level and tried again at the next tick: the registry
//! is an operator's view, never in the way of shipping. When the agent stops cleanly it sends
//! one last heartbeat saying so, after its last acknowledgement, so the collector shows it as
//! `stopped` rather than `stale`.

use crate::{AgentStats, FileRow};
use ferry_core::client::CollectorClient;
use ferry_core::registry::{
    AgentFileStatus, AgentHeartbeat, AgentRunState, MAX_REPORTED_FILES, MAX_REPORTED_STRING,
};
use ferry_core::security::ClientSecurity;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

/// Longest a heartbeat may take before it is given up (the next tick tries again).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one collector, with the output's CA, client certificate and token.
fn client(url: &str, security: &ClientSecurity, interval: Duration) -> Option<CollectorClient> {
    let c = CollectorClient::with_security(url, security).ok()?;
    Some(c.with_timeout(HEARTBEAT_TIMEOUT.min(interval.max(Duration::from_secs(1)))))
}

/// Reports one agent to its collectors' registry.
pub struct Heartbeat {
    /// One client per collector URL: the output's current one first, then the configured ones
    /// in order, until one answers.
    clients: std::sync::Mutex<Vec<CollectorClient>>,
    /// The collector the output ships to now, if it knows.
    current: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// The output's TLS settings and token, for clients made as collectors are learned.
    security: ClientSecurity,
    agent_id: String,
    /// What does not change during a run: host, version, inputs, start time.
    base: AgentHeartbeat,
    input_names: Vec<String>,
    stats: Arc<AgentStats>,
    interval: Duration,
}

impl Heartbeat {
    /// `None` when none of `urls` makes a client (the output then fails loudly on its own).
    pub fn new(
        urls: &[String],
        security: ClientSecurity,
        current: Box<dyn Fn() -> Option<String> + Send + Sync>,
        agent_id: String,
        input_names: Vec<String>,
        stats: Arc<AgentStats>,
        interval: Duration,
    ) -> Option<Self> {
        let clients: Vec<CollectorClient> = urls
            .iter()
            .filter_map(|u| client(u, &security, interval))
            .collect();
        if clients.is_empty() {
            return None;
        }
        if let Err(e) = ferry_core::registry::validate_agent_id(&agent_id) {
            tracing::warn!(agent_id, error = %e, "not reporting to the collector's registry: the agent id cannot be used there");
            return None;
        }
        let base = AgentHeartbeat {
            host: crate::config::host_name(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            inputs: input_names
                .iter()
                .take(MAX_REPORTED_FILES)
                .cloned()
                .collect(),
            started_ms: ferry_core::now_ms().max(0) as u64,
            ..Default::default()
        };
        Some(Self {
            clients: std::sync::Mutex::new(clients),
            current,
            security,
            agent_id,
            base,
            input_names,
            stats,
            interval,
        })
    }

    /// The report as of now.
    pub fn report(&self, state: AgentRunState) -> AgentHeartbeat {
        let s = &self.stats;
        let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        let (files_total, bytes_behind, files) = match s.files.lock() {
            Ok(table) => {
                let mut rows: Vec<(&Arc<str>, &FileRow)> = table
                    .iter()
                    .filter(|(p, _)| p.len() <= MAX_REPORTED_STRING)
                    .collect();
                rows.sort_by(|a, b| b.1.behind.cmp(&a.1.behind).then(a.0.cmp(b.0)));
                let files = rows
                    .into_iter()
                    .take(MAX_REPORTED_FILES)
                    .map(|(path, row)| AgentFileStatus {
                        path: path.to_string(),
                        input: self.input_names.get(row.input).cloned().unwrap_or_default(),
                        acked: row.acked,
                        behind: row.behind,
                    })
                    .collect();
                let behind = table.values().map(|r| r.behind).sum();
                (table.len() as u64, behind, files)
            }
            Err(_) => (0, 0, Vec::new()),
        };
        let drops = s
            .drops
            .lock()
            .map(|d| d.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
            .unwrap_or_default();
        let last_ack = get(&s.last_ack_ms);
        AgentHeartbeat {
            state,
            lines_read: get(&s.lines_read),
            bytes_read: get(&s.bytes_read),
            records_acked: get(&s.records_acked),
            bytes_acked: get(&s.bytes_acked),
            bytes_behind,
            unread_bytes: get(&s.unread_bytes),
            last_ack_ms: (last_ack > 0).then_some(last_ack),
            drops,
            files_total,
            files,
            ..self.base.clone()
        }
    }

    /// The clients to try, in order: the output's current collector first.
    fn clients(&self) -> Vec<CollectorClient> {
        let Ok(mut clients) = self.clients.lock() else {
            return Vec::new();
        };
        if let Some(url) = (self.current)() {
            match clients.iter().position(|c| c.base_url() == url) {
                Some(0) => {}
                Some(i) => {
                    let c = clients.remove(i);
                    clients.insert(0, c);
                }
                None => {
                    if let Some(c) = client(&url, &self.security, self.interval) {
                        clients.insert(0, c);
                    }
                }
            }
        }
        clients.clone()
    }

    /// Sends the report to the first collector that answers; false if none did.
    async fn send(&self, state: AgentRunState) -> bool {
        let mut report = self.report(state);
        for c in &self.clients() {
            report.collector = c.base_url().to_owned();
            match c.agent_heartbeat(&self.agent_id, &report).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(collector = c.base_url(), error = %e, "heartbeat not delivered");
                }
            }
        }
        false
    }

    /// Reports every interval until `stop` fires (or its sender is dropped), then sends the
    /// last, `stopped` heartbeat.
    pub async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delivered_once = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let ok = self.send(AgentRunState::Running).await;
                    if ok && !delivered_once {
                        delivered_once = true;
                        tracing::info!(agent_id = self.agent_id, "registered with the collector");
                    }
                }
            }
        }
        self.send(AgentRunState::Stopped).await;
    }
}
