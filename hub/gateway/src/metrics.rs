//! Gateway metrics (prometheus-client, prefix `talm_gateway`). Counters are updated where
//! things happen; the per-state task gauge and live progress are recomputed from the registry
//! at scrape time, so nothing ticks while idle.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// A `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// TALM state name.
    pub state: String,
}

/// An `identity` label: `verified` (a client certificate the agent CA signed) or `none`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    /// `verified` or `none`.
    pub identity: String,
}

/// Per-task progress labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    /// Cluster.
    pub cluster: String,
    /// Task id.
    pub task: String,
}

/// All gateway metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Registry to encode.
    pub registry: Registry,
    /// Agents with a live session.
    pub connected: Gauge,
    /// Sessions accepted.
    pub sessions: Counter,
    /// Sessions or RPCs refused, by reason.
    pub rejections: Family<Reason, Counter>,
    /// Sessions ended by the heartbeat timeout.
    pub heartbeat_timeouts: Counter,
    /// Reports received, by body kind.
    pub reports: Family<Reason, Counter>,
    /// SpokeAgent status writes.
    pub status_writes: Counter,
    /// Failed status writes.
    pub status_write_errors: Counter,
    /// Certificates issued (enroll or renew).
    pub certificates: Family<Reason, Counter>,
    /// Tasks by state (recomputed at scrape).
    pub tasks: Family<StateLabel, Gauge>,
    /// Progress of active tasks, 0..1 (recomputed at scrape).
    pub progress: Family<TaskLabel, Gauge<f64, AtomicU64>>,
    /// Open connections of the agent port by `identity` (recomputed at scrape).
    pub connections: Family<IdentityLabel, Gauge>,
    /// Connections the gateway closed, by reason (`idle`, `evicted`).
    pub connections_closed: Family<Reason, Counter>,
    /// New sessions refused because another agent with the same identity holds a session
    /// (a cloned state directory).
    pub clone_refusals: Counter,
    /// Clusters whose identity is in use by more than one agent now (recomputed at scrape).
    pub cloned: Gauge,
    /// Pre-cache progress reports received.
    pub progress_reports: Counter,
    /// SpokeAgent status writes that carried new pre-cache progress.
    pub progress_writes: Counter,
    /// `TaskUpdate`s sent (pre-cache grant changes).
    pub task_updates: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("talm_gateway");
        let m = Metrics {
            registry: Registry::default(),
            connected: Gauge::default(),
            sessions: Counter::default(),
            rejections: Family::default(),
            heartbeat_timeouts: Counter::default(),
            reports: Family::default(),
            status_writes: Counter::default(),
            status_write_errors: Counter::default(),
            certificates: Family::default(),
            tasks: Family::default(),
            progress: Family::default(),
            connections: Family::default(),
            connections_closed: Family::default(),
            clone_refusals: Counter::default(),
            cloned: Gauge::default(),
            progress_reports: Counter::default(),
            progress_writes: Counter::default(),
            task_updates: Counter::default(),
        };
        registry.register(
            "agents_connected",
            "Agents with a live session",
            m.connected.clone(),
        );
        registry.register("sessions", "Sessions accepted", m.sessions.clone());
        registry.register(
            "rejections",
            "Sessions or RPCs refused, by reason",
            m.rejections.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Sessions ended by the heartbeat timeout",
            m.heartbeat_timeouts.clone(),
        );
        registry.register(
            "reports",
            "Agent reports received, by kind",
            m.reports.clone(),
        );
        registry.register(
            "status_writes",
            "SpokeAgent status writes",
            m.status_writes.clone(),
        );
        registry.register(
            "status_write_errors",
            "Failed SpokeAgent status writes",
            m.status_write_errors.clone(),
        );
        registry.register(
            "certificates",
            "Agent certificates issued",
            m.certificates.clone(),
        );
        registry.register("tasks", "Known tasks by state", m.tasks.clone());
        registry.register(
            "task_progress_ratio",
            "Progress of active tasks",
            m.progress.clone(),
        );
        registry.register(
            "connections",
            "Open connections of the agent port, by client identity (verified or none)",
            m.connections.clone(),
        );
        registry.register(
            "connections_closed",
            "Agent-port connections closed by the gateway (idle: no open stream for the idle timeout; evicted: oldest unverified connection over the cap)",
            m.connections_closed.clone(),
        );
        registry.register(
            "clone_refusals",
            "Sessions refused because another agent with the same identity holds one (cloned state directory)",
            m.clone_refusals.clone(),
        );
        registry.register(
            "agents_cloned",
            "Clusters whose identity is used by more than one agent (a session refused within the clone window)",
            m.cloned.clone(),
        );
        registry.register(
            "precache_progress_reports",
            "Pre-cache progress reports received",
            m.progress_reports.clone(),
        );
        registry.register(
            "precache_progress_writes",
            "SpokeAgent status writes that carried new pre-cache progress (coalesced per agent)",
            m.progress_writes.clone(),
        );
        registry.register(
            "task_updates",
            "Task updates sent to agents (pre-cache hold and cap changes)",
            m.task_updates.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a rejection.
    pub fn reject(&self, reason: &str) {
        self.rejections
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }
}
