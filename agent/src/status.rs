//! `talm-agent status`: reads the connection state file and the journal, both replaced
//! atomically by the daemon, so it works while the daemon runs.

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
    let tasks = journal
        .tasks
        .values()
        .map(|t| TaskLine {
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
        }
    }
    out
}
