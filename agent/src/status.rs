//! `talm-agent status`: reads the connection state file, the journal and the pre-cache status
//! file, all replaced atomically by the daemon, so it works while the daemon runs. A pre-cache
//! task shows the hub's grant (held, the hub's cap) and its transfer progress.

use std::path::Path;

use serde::Serialize;

use crate::daemon::{ConnState, conn_state_path};
use crate::journal::{Journal, JournalError, ReportBody};

/// Status errors.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The connection state could not be read.
    #[error("{0}: {1}")]
    Conn(String, String),
    /// The watchdog's state could not be read.
    #[error(transparent)]
    Watchdog(#[from] crate::watchdog::WatchdogError),
}

/// What `status` shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// Connection state (`unknown` when the daemon never ran).
    pub connection: ConnState,
    /// Tasks from the journal.
    pub tasks: Vec<TaskLine>,
    /// Reports not yet acknowledged by the hub.
    pub unacknowledged_reports: usize,
    /// The rollback watchdog's last state (`watchdog.json`), if one ever ran here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<crate::watchdog::WatchState>,
}

/// One task.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLine {
    /// Task id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: String,
    /// Detail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Whether the hub acknowledged the latest report of this task.
    pub acknowledged: bool,
    /// Held by the hub's pre-cache budget (the latest grant).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// The hub's cap, bytes/s (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub hub_rate_limit_bytes_per_second: u64,
    /// A running pre-cache's transfer progress (from its status file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A running pre-cache's transfer, as its status file says.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    /// The phase (`listing`, `held`, `fetching`, `importing`).
    pub phase: crate::precache::status::Phase,
    /// Bytes in the cache.
    pub bytes_done: u64,
    /// Bytes needed in all (0 while unknown).
    pub bytes_total: u64,
    /// Throughput over the last seconds, bytes/s.
    pub bytes_per_second: u64,
    /// The cap in force (the lower of the node's and the hub's), bytes/s (0: none).
    pub rate_limit_bytes_per_second: u64,
    /// Registry hosts pulled from.
    pub registries: Vec<String>,
}

/// Reads the state.
pub fn load(state_dir: &Path) -> Result<StatusView, StatusError> {
    let path = conn_state_path(state_dir);
    let connection = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| StatusError::Conn(path.display().to_string(), e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConnState {
            state: "unknown".into(),
            ..Default::default()
        },
        Err(e) => return Err(StatusError::Conn(path.display().to_string(), e.to_string())),
    };
    let journal = Journal::read(&state_dir.join("journal.json"))?.unwrap_or_default();
    // The pre-cache status file, of a run still going (a missing or unreadable one: no
    // progress to show).
    let precache = crate::precache::status::load(state_dir)
        .ok()
        .filter(|s| !s.state.is_final() && !s.interrupted && !s.task_id.is_empty());
    let tasks = journal
        .tasks
        .values()
        .map(|t| TaskLine {
            hold: journal.grants.get(&t.id).is_some_and(|g| g.hold),
            hub_rate_limit_bytes_per_second: journal.grants.get(&t.id).map_or(0, |g| g.rate_limit),
            transfer: precache
                .as_ref()
                .filter(|p| p.task_id == t.id && !t.state.is_final())
                .map(|p| Transfer {
                    phase: p.phase,
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    bytes_per_second: p.rate_bytes_per_sec,
                    rate_limit_bytes_per_second: p.rate_limit_bytes_per_sec,
                    registries: p.registries.clone(),
                }),
            id: t.id.clone(),
            kind: t.kind_name().into(),
            state: format!("{:?}", t.state),
            message: t.message.clone(),
            acknowledged: !journal.pending.iter().any(|r| {
                r.task_id == t.id
                    && (matches!(r.body, ReportBody::Result { .. }) || !t.state.is_final())
            }),
        })
        .collect();
    Ok(StatusView {
        connection,
        tasks,
        unacknowledged_reports: journal.pending.len(),
        watchdog: crate::watchdog::load_state(state_dir)?,
    })
}

/// Renders the text form.
pub fn render_text(v: &StatusView) -> String {
    let c = &v.connection;
    let mut out = format!(
        "connection: {} since {} (hub {}{})\n",
        c.state,
        if c.since.is_empty() { "-" } else { &c.since },
        if c.hub.is_empty() { "-" } else { &c.hub },
        if c.cluster.is_empty() {
            String::new()
        } else {
            format!(", cluster {}", c.cluster)
        },
    );
    if !c.cert_not_after.is_empty() {
        out.push_str(&format!("certificate expires: {}\n", c.cert_not_after));
    }
    if !c.last_error.is_empty() {
        out.push_str(&format!("last error: {}\n", c.last_error));
    }
    out.push_str(&format!(
        "unacknowledged reports: {}\n",
        v.unacknowledged_reports
    ));
    if v.tasks.is_empty() {
        out.push_str("tasks: none\n");
    } else {
        out.push_str(&format!(
            "{:<40} {:<12} {:<10} {:<5} MESSAGE\n",
            "TASK", "KIND", "STATE", "ACKED"
        ));
        for t in &v.tasks {
            out.push_str(&format!(
                "{:<40} {:<12} {:<10} {:<5} {}\n",
                t.id,
                t.kind,
                t.state,
                if t.acknowledged { "yes" } else { "no" },
                t.message
            ));
            out.push_str(&render_transfer(t));
        }
    }
    if let Some(w) = &v.watchdog {
        out.push_str(&render_watchdog(w));
    }
    out
}

/// The grant and transfer line of a pre-cache task ("" for other tasks).
fn render_transfer(t: &TaskLine) -> String {
    use crate::precache::status::human_bytes;
    let mut parts = Vec::new();
    if t.hold {
        parts.push("held by the hub's pre-cache budget".to_string());
    }
    if t.hub_rate_limit_bytes_per_second > 0 {
        parts.push(format!(
            "hub cap {}/s",
            human_bytes(t.hub_rate_limit_bytes_per_second)
        ));
    }
    if let Some(x) = &t.transfer {
        parts.push(format!(
            "{:?}: {} / {} at {}/s",
            x.phase,
            human_bytes(x.bytes_done),
            human_bytes(x.bytes_total),
            human_bytes(x.bytes_per_second)
        ));
        if x.rate_limit_bytes_per_second > 0 {
            parts.push(format!(
                "cap in force {}/s",
                human_bytes(x.rate_limit_bytes_per_second)
            ));
        }
        if !x.registries.is_empty() {
            parts.push(format!("from {}", x.registries.join(", ")));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  {}\n", parts.join("; "))
    }
}

fn unix_text(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |ts| ts.to_string())
}

/// The watchdog lines of the text form.
fn render_watchdog(w: &crate::watchdog::WatchState) -> String {
    let state = w
        .state
        .map_or("unknown", talm_shared::task_state::TaskState::as_str);
    let mut out = format!(
        "rollback watchdog: {state} (task {}), armed since {}, health timeout {}{}\n",
        w.task_id,
        unix_text(w.armed_at),
        unix_text(w.deadline),
        w.target_version
            .as_deref()
            .map(|v| format!(", target version {v}"))
            .unwrap_or_default(),
    );
    if w.checked_at > 0 {
        if w.checks.is_empty() {
            out.push_str(&format!(
                "  health at {}: healthy\n",
                unix_text(w.checked_at)
            ));
        } else {
            out.push_str(&format!(
                "  health at {}: not healthy:\n",
                unix_text(w.checked_at)
            ));
            for c in &w.checks {
                out.push_str(&format!("    - {c}\n"));
            }
        }
    }
    if !w.recovery_step.is_empty() {
        out.push_str(&format!("  recovery step: {}\n", w.recovery_step));
    }
    if !w.message.is_empty() {
        out.push_str(&format!("  {}\n", w.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::WatchState;
    use talm_shared::task_state::TaskState;

    #[test]
    fn the_watchdog_shows_armed_since_its_checks_and_the_recovery_step() {
        let mut w = WatchState {
            task_id: "ns/cgu/uid/rollback".into(),
            armed_at: 1_800_000_000,
            deadline: 1_800_005_400,
            target_version: Some("4.16.3".into()),
            state: Some(TaskState::Armed),
            checks: vec!["ClusterOperator etcd is Degraded".into()],
            checked_at: 1_800_000_600,
            ..WatchState::default()
        };
        let text = render_watchdog(&w);
        assert!(
            text.starts_with("rollback watchdog: Armed (task ns/cgu/uid/rollback), armed since 2027-01-15T08:00:00Z, health timeout 2027-01-15T09:30:00Z, target version 4.16.3\n"),
            "{text}"
        );
        assert!(
            text.contains("health at 2027-01-15T08:10:00Z: not healthy:\n    - ClusterOperator etcd is Degraded\n"),
            "{text}"
        );
        w.state = Some(TaskState::RollingBack);
        w.recovery_step = "restore_files/wipe-crio".into();
        let text = render_watchdog(&w);
        assert!(text.contains("RollingBack"), "{text}");
        assert!(
            text.contains("recovery step: restore_files/wipe-crio"),
            "{text}"
        );
        // No watchdog ever: status has no such section, and load works without the file.
        let d = tempfile::tempdir().unwrap();
        let v = load(d.path()).unwrap();
        assert!(v.watchdog.is_none());
        assert!(!render_text(&v).contains("rollback watchdog"));
    }
}
