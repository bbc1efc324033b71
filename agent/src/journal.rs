//! The durable journal: every accepted task, its state, and every report the hub has not
//! acknowledged yet. The whole journal is rewritten atomically (temp file, fsync, rename, fsync
//! of the directory) on every change, BEFORE the change is reported, so:
//!
//! - an agent restart loses nothing: unacknowledged reports are resent in order, and tasks that
//!   were accepted or running are resumed (runners are idempotent per task id);
//! - a task in a final state never runs again: a repeated assignment (after a hub restart) only
//!   re-reports the stored result;
//! - report sequence numbers only grow, across restarts, so the hub's cumulative
//!   acknowledgements are unambiguous.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::fsutil::{atomic_write, read_optional};
use tokio::sync::Notify;

/// How many finished tasks are kept (oldest dropped first).
pub const KEEP_FINISHED: usize = 200;

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the journal failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The journal could not be parsed.
    #[error("journal {path} is corrupt: {source}")]
    Corrupt {
        /// The journal file.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A task's state in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted, not started.
    Accepted,
    /// Started (resumed after a restart).
    Running,
    /// Done.
    Succeeded,
    /// Failed.
    Failed,
    /// Deadline passed.
    TimedOut,
    /// Cancelled by the hub.
    Cancelled,
    /// Cannot be run by this agent.
    Rejected,
    /// The rollback watchdog recovered the node (TASK_OUTCOME_ROLLED_BACK).
    RolledBack,
}

impl TaskState {
    /// True for final states.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Accepted | TaskState::Running)
    }

    /// The wire outcome of a final state.
    pub fn outcome(self) -> TaskOutcome {
        match self {
            TaskState::Succeeded => TaskOutcome::Succeeded,
            TaskState::Failed => TaskOutcome::Failed,
            TaskState::TimedOut => TaskOutcome::TimedOut,
            TaskState::Cancelled => TaskOutcome::Cancelled,
            TaskState::RolledBack => TaskOutcome::RolledBack,
            TaskState::Rejected | TaskState::Accepted | TaskState::Running => TaskOutcome::Rejected,
        }
    }

    /// The final state of a wire outcome.
    pub fn from_outcome(o: TaskOutcome) -> Self {
        match o {
            TaskOutcome::Succeeded => TaskState::Succeeded,
            TaskOutcome::Failed | TaskOutcome::Unspecified => TaskState::Failed,
            TaskOutcome::TimedOut => TaskState::TimedOut,
            TaskOutcome::Cancelled => TaskState::Cancelled,
            TaskOutcome::Rejected => TaskState::Rejected,
            TaskOutcome::RolledBack => TaskState::RolledBack,
        }
    }
}

/// A journaled task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Task id (from the hub).
    pub id: String,
    /// Wire kind.
    pub kind: i32,
    /// Parameters, JSON.
    pub params_json: String,
    /// Deadline, Unix seconds (0 = none).
    pub deadline_unix: i64,
    /// State.
    pub state: TaskState,
    /// Detail of the final state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How many times a runner was started for it (a restart mid-task resumes it).
    pub starts: u32,
    /// When accepted, Unix seconds.
    pub accepted_at: i64,
    /// When finished, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

impl Task {
    /// Kind name for display.
    pub fn kind_name(&self) -> &'static str {
        match TaskKind::try_from(self.kind) {
            Ok(TaskKind::Unspecified) | Err(_) => "unknown",
            Ok(kind) => kind.display_name(),
        }
    }
}

/// A journaled, unacknowledged report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Sequence number (> 0).
    pub seq: u64,
    /// Task id.
    pub task_id: String,
    /// What happened.
    pub body: ReportBody,
}

/// The journaled report kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum ReportBody {
    /// Accepted, with the wire kind.
    Accepted {
        /// Wire kind.
        kind: i32,
    },
    /// Final result.
    Result {
        /// Final state.
        state: TaskState,
        /// Detail.
        message: String,
    },
}

/// What is on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalData {
    /// Next sequence number to hand out.
    pub next_seq: u64,
    /// Highest sequence number the hub acknowledged.
    pub acked_seq: u64,
    /// Tasks by id.
    pub tasks: BTreeMap<String, Task>,
    /// Unacknowledged reports, in sequence order.
    pub pending: Vec<Report>,
    /// The pre-cache scheduler's latest grant of unfinished tasks that have one (a restarted
    /// agent keeps holding, or keeps the hub's cap, until the hub says otherwise).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, Grant>,
}

/// The hub's pre-cache grant of a task: held or not, and the hub's cap (`TaskAssignment` and
/// `TaskUpdate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Wait after the listing, without downloading, until the hub lifts the hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// The hub's cap in bytes/s (0: none; the node's own cap still applies).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Grant {
    /// No hold and no hub cap (what an assignment without a scheduler carries).
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }
}

/// Result of offering an assignment to the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accept {
    /// New: journaled, an Accepted report is pending; start a runner.
    New,
    /// Known and not final: a runner exists or will be resumed; nothing to do.
    Running,
    /// Known and final: never run again (its result was re-reported if needed).
    Finished(TaskState),
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    data: Mutex<JournalData>,
    /// Signalled whenever a report is added.
    pub changed: Notify,
}

impl Journal {
    /// Opens (or creates) `<state_dir>/journal.json`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal.json");
        let data = Self::read(&path)?.unwrap_or(JournalData {
            next_seq: 1,
            ..Default::default()
        });
        Ok(Self {
            path,
            data: Mutex::new(data),
            changed: Notify::new(),
        })
    }

    /// Reads a journal file without opening it for writing (`talm-agent status`).
    pub fn read(path: &Path) -> Result<Option<JournalData>, JournalError> {
        let io = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        match read_optional(path).map_err(io)? {
            None => Ok(None),
            Some(b) => {
                serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|source| JournalError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, data: &JournalData) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(data).map_err(|source| JournalError::Corrupt {
            path: self.path.display().to_string(),
            source,
        })?;
        atomic_write(&self.path, &bytes, 0o600).map_err(|source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Applies `f` to a copy, persists it, then commits it in memory (so memory never runs
    /// ahead of the disk).
    fn update<R>(&self, f: impl FnOnce(&mut JournalData) -> R) -> Result<R, JournalError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let r = f(&mut next);
        if next != *guard {
            self.persist(&next)?;
            let grew = next.pending.len() > guard.pending.len()
                || next.pending.last().map(|r| r.seq) != guard.pending.last().map(|r| r.seq);
            *guard = next;
            drop(guard);
            if grew {
                self.changed.notify_waiters();
                self.changed.notify_one();
            }
        }
        Ok(r)
    }

    fn push(data: &mut JournalData, task_id: &str, body: ReportBody) {
        let seq = data.next_seq.max(data.acked_seq + 1);
        data.next_seq = seq + 1;
        data.pending.push(Report {
            seq,
            task_id: task_id.to_string(),
            body,
        });
    }

    /// Offers an assignment (without a grant).
    pub fn accept(
        &self,
        id: &str,
        kind: i32,
        params_json: &str,
        deadline_unix: i64,
        now: i64,
    ) -> Result<Accept, JournalError> {
        self.accept_with(id, kind, params_json, deadline_unix, Grant::default(), now)
    }

    /// Offers an assignment carrying the hub's `grant`: journaled with a new task, and
    /// replacing the journaled one of a task that is still running (the hub re-sends its
    /// current view of a task when a session starts).
    pub fn accept_with(
        &self,
        id: &str,
        kind: i32,
        params_json: &str,
        deadline_unix: i64,
        grant: Grant,
        now: i64,
    ) -> Result<Accept, JournalError> {
        self.update(
            |d| match d.tasks.get(id).map(|t| (t.state, t.message.clone())) {
                Some((state, message)) if state.is_final() => {
                    // The hub does not know the result (e.g. its status was lost): report it again,
                    // unless a report of it is still pending anyway.
                    if !d
                        .pending
                        .iter()
                        .any(|r| r.task_id == id && matches!(r.body, ReportBody::Result { .. }))
                    {
                        Self::push(d, id, ReportBody::Result { state, message });
                    }
                    Accept::Finished(state)
                }
                Some(_) => {
                    Self::put_grant(d, id, grant);
                    Accept::Running
                }
                None => {
                    d.tasks.insert(
                        id.to_string(),
                        Task {
                            id: id.to_string(),
                            kind,
                            params_json: params_json.to_string(),
                            deadline_unix,
                            state: TaskState::Accepted,
                            message: String::new(),
                            starts: 0,
                            accepted_at: now,
                            finished_at: None,
                        },
                    );
                    Self::push(d, id, ReportBody::Accepted { kind });
                    Self::put_grant(d, id, grant);
                    Accept::New
                }
            },
        )
    }

    fn put_grant(d: &mut JournalData, id: &str, grant: Grant) {
        if grant.is_open() {
            d.grants.remove(id);
        } else {
            d.grants.insert(id.to_string(), grant);
        }
    }

    /// Records the hub's new grant of an unfinished task (a `TaskUpdate`). False when the task
    /// is unknown or finished (the update is ignored).
    pub fn set_grant(&self, id: &str, grant: Grant) -> Result<bool, JournalError> {
        self.update(|d| {
            if d.tasks.get(id).is_none_or(|t| t.state.is_final()) {
                return false;
            }
            Self::put_grant(d, id, grant);
            true
        })
    }

    /// The journaled grant of a task (open when none).
    pub fn grant(&self, id: &str) -> Grant {
        self.lock().grants.get(id).copied().unwrap_or_default()
    }

    /// Marks a task started (counts starts; a resumed task is started again).
    pub fn start(&self, id: &str) -> Result<(), JournalError> {
        self.update(|d| {
            if let Some(t) = d.tasks.get_mut(id)
                && !t.state.is_final()
            {
                t.state = TaskState::Running;
                t.starts += 1;
            }
        })
    }

    /// Records a final state and queues its report. A task already final is left alone
    /// (returns false).
    pub fn finish(
        &self,
        id: &str,
        state: TaskState,
        message: &str,
        now: i64,
    ) -> Result<bool, JournalError> {
        self.update(|d| {
            let Some(t) = d.tasks.get_mut(id) else {
                return false;
            };
            if t.state.is_final() {
                return false;
            }
            t.state = state;
            t.message = message.to_string();
            t.finished_at = Some(now);
            d.grants.remove(id);
            Self::push(
                d,
                id,
                ReportBody::Result {
                    state,
                    message: message.to_string(),
                },
            );
            // Keep the journal bounded.
            let mut finished: Vec<(i64, String)> = d
                .tasks
                .values()
                .filter(|t| t.state.is_final())
                .map(|t| (t.finished_at.unwrap_or(0), t.id.clone()))
                .collect();
            if finished.len() > KEEP_FINISHED {
                finished.sort();
                for (_, old) in finished.iter().take(finished.len() - KEEP_FINISHED) {
                    if !d.pending.iter().any(|r| &r.task_id == old) {
                        d.tasks.remove(old);
                    }
                }
            }
            true
        })
    }

    /// Drops reports up to `seq` (a cumulative acknowledgement).
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        self.update(|d| {
            if seq > d.acked_seq && seq < d.next_seq {
                d.acked_seq = seq;
                d.pending.retain(|r| r.seq > seq);
            }
        })
    }

    /// Unacknowledged reports with `seq > after`, in order.
    pub fn pending_after(&self, after: u64) -> Vec<Report> {
        self.lock()
            .pending
            .iter()
            .filter(|r| r.seq > after)
            .cloned()
            .collect()
    }

    /// Tasks that were accepted or running (to resume after a restart).
    pub fn unfinished(&self) -> Vec<Task> {
        self.lock()
            .tasks
            .values()
            .filter(|t| !t.state.is_final())
            .cloned()
            .collect()
    }

    /// Ids of unfinished and of finished tasks (for Hello).
    pub fn ids(&self) -> (Vec<String>, Vec<String>) {
        let d = self.lock();
        let mut active = Vec::new();
        let mut done = Vec::new();
        for t in d.tasks.values() {
            if t.state.is_final() {
                done.push(t.id.clone())
            } else {
                active.push(t.id.clone())
            }
        }
        (active, done)
    }

    /// One task.
    pub fn task(&self, id: &str) -> Option<Task> {
        self.lock().tasks.get(id).cloned()
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> JournalData {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_for_display() {
        let task = |kind| Task {
            id: "t".into(),
            kind,
            params_json: "{}".into(),
            deadline_unix: 0,
            state: TaskState::Accepted,
            message: String::new(),
            starts: 0,
            accepted_at: 0,
            finished_at: None,
        };
        assert_eq!(task(TaskKind::Precache as i32).kind_name(), "precache");
        assert_eq!(
            task(TaskKind::ApproveInstallPlans as i32).kind_name(),
            "approve-install-plans"
        );
        // The zero value and kinds newer than this agent are both "unknown" here.
        assert_eq!(task(0).kind_name(), "unknown");
        assert_eq!(task(99).kind_name(), "unknown");
    }

    #[test]
    fn survives_reopen_and_never_reruns_finished_work() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.accept("t1", 1, "{}", 0, 10).unwrap(), Accept::New);
        assert_eq!(j.accept("t1", 1, "{}", 0, 10).unwrap(), Accept::Running);
        j.start("t1").unwrap();
        assert_eq!(j.pending_after(0).len(), 1);
        // Restart mid-task: the task is resumed, the Accepted report is still pending.
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.unfinished().len(), 1);
        assert_eq!(j.unfinished()[0].state, TaskState::Running);
        assert!(j.finish("t1", TaskState::Succeeded, "", 11).unwrap());
        assert!(!j.finish("t1", TaskState::Failed, "late", 12).unwrap());
        let p = j.pending_after(0);
        assert_eq!(p.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        j.ack(1).unwrap();
        assert_eq!(j.pending_after(0).len(), 1);
        j.ack(2).unwrap();
        assert!(j.pending_after(0).is_empty());
        // Re-assignment of a finished task re-reports the result once, never re-runs.
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.accept("t1", 1, "{}", 0, 20).unwrap(),
            Accept::Finished(TaskState::Succeeded)
        );
        assert_eq!(
            j.accept("t1", 1, "{}", 0, 20).unwrap(),
            Accept::Finished(TaskState::Succeeded)
        );
        let p = j.pending_after(0);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].seq, 3, "sequence numbers keep growing across restarts");
        assert_eq!(j.task("t1").unwrap().starts, 1);
        // Acks for unknown future seqs are ignored.
        j.ack(99).unwrap();
        assert_eq!(j.pending_after(0).len(), 1);
    }

    #[test]
    fn a_grant_survives_a_restart_follows_updates_and_ends_with_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let held = Grant {
            hold: true,
            rate_limit: 8 << 20,
        };
        assert_eq!(
            j.accept_with("p1", 3, "{}", 0, held, 10).unwrap(),
            Accept::New
        );
        j.start("p1").unwrap();
        // Restart: still held, with the hub's cap.
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.grant("p1"), held);
        // The hub lets it in with a new cap.
        let open = Grant {
            hold: false,
            rate_limit: 2 << 20,
        };
        assert!(j.set_grant("p1", open).unwrap());
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.grant("p1"), open);
        // A re-sent assignment of the running task carries the hub's current view.
        assert_eq!(
            j.accept_with("p1", 3, "{}", 0, Grant::default(), 11)
                .unwrap(),
            Accept::Running
        );
        assert_eq!(j.grant("p1"), Grant::default());
        assert!(
            j.snapshot().grants.is_empty(),
            "an open grant is not stored"
        );
        assert!(j.set_grant("p1", held).unwrap());
        // Updates of unknown or finished tasks are ignored; finishing drops the grant.
        assert!(!j.set_grant("nope", held).unwrap());
        j.finish("p1", TaskState::Succeeded, "", 12).unwrap();
        assert!(!j.set_grant("p1", held).unwrap());
        assert_eq!(j.grant("p1"), Grant::default());
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.snapshot().grants.is_empty());
    }
}
