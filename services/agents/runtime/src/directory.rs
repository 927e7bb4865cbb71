//! Which agents run on this server, which operations each serves, and how
//! healthy each is: what the health gate asks before a workflow starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use sagas::{AgentDirectory, Availability};
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Initializing,
    Ready,
    Recovering,
    Draining,
    Stopped,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Initializing => "initializing",
            AgentStatus::Ready => "ready",
            AgentStatus::Recovering => "recovering",
            AgentStatus::Draining => "draining",
            AgentStatus::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    status: AgentStatus,
    /// Why the agent is not ready (the failed health check).
    reason: Option<String>,
    operations: BTreeSet<String>,
}

/// Shared between the runtime (which writes) and the orchestrator's gate.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    agents: Arc<RwLock<BTreeMap<String, Entry>>>,
    /// True while every registered agent is ready: this server can start
    /// any plan (what gRPC health reports for `Workflows`).
    all_ready: watch::Sender<bool>,
}

impl Directory {
    pub(crate) fn register(&self, agent: &str, operations: impl IntoIterator<Item = String>) {
        let entry = Entry {
            status: AgentStatus::Initializing,
            reason: Some("starting".into()),
            operations: operations.into_iter().collect(),
        };
        let mut agents = self.write();
        agents.insert(agent.to_owned(), entry);
        self.publish_all_ready(&agents);
    }

    pub(crate) fn set_status(&self, agent: &str, status: AgentStatus, reason: Option<String>) {
        let mut agents = self.write();
        if let Some(entry) = agents.get_mut(agent) {
            entry.status = status;
            entry.reason = reason;
        }
        self.publish_all_ready(&agents);
    }

    /// Whether every agent of this server is ready, now and on each change.
    pub fn watch_all_ready(&self) -> watch::Receiver<bool> {
        self.all_ready.subscribe()
    }

    /// Under the write lock, so that changes are published in their order.
    fn publish_all_ready(&self, agents: &BTreeMap<String, Entry>) {
        let ready = agents.values().all(|e| e.status == AgentStatus::Ready);
        self.all_ready
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    pub fn status(&self, agent: &str) -> Option<(AgentStatus, Option<String>)> {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        agents.get(agent).map(|e| (e.status, e.reason.clone()))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.agents.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl AgentDirectory for Directory {
    fn availability(&self, agent: &str, operation: &str) -> Availability {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = agents.get(agent) else {
            return Availability::NotServed;
        };
        if !entry.operations.contains(operation) {
            return Availability::NotServed;
        }
        match entry.status {
            AgentStatus::Ready => Availability::Ready,
            status => Availability::Unhealthy(match &entry.reason {
                Some(reason) => format!("{}: {reason}", status.as_str()),
                None => status.as_str().to_owned(),
            }),
        }
    }
}
