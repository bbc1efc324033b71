//! The in-memory, per-cluster agent state: connection, lastSeen, facts, task states and live
//! progress. It is the source of the `/agents` views, of the metrics, and of the SpokeAgent
//! status the [`crate::status`] writer persists (transitions, and the pre-cache transfer
//! progress, coalesced). It also remembers the pre-cache grant each session's agent was sent,
//! so a grant change becomes one `TaskUpdate` and an unchanged spec sends nothing.
//!
//! # Cloned identities
//! Two agents started from one copied state directory hold the same certificate. Each new
//! session replaces the cluster's live one, and the replaced agent reconnects and replaces it
//! back, about once a second, forever. [`Registry::connect`] counts the replacements of a
//! cluster's live session; when a new session would be the [`ClonePolicy::max_replacements`]th
//! within [`ClonePolicy::window`], it is refused instead (the older session is kept) and the
//! cluster is flagged: `/agents` shows `clonedIdentity`, the gateway logs an ERROR, and the
//! metrics count it. A refused agent backs off (its session never got a Welcome). An agent that
//! merely restarts replaces its dead session once, far below the threshold; should one restart
//! that often, it waits at most the heartbeat timeout, which ends the dead session.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use talm_proto::v1::{self, HubMessage, TaskKind, TaskOutcome, task_report};
use talm_shared::api::Time;
use talm_shared::api::spokeagent::{
    SpokeAgentSpec, SpokeAgentStatus, TaskReport, TransferProgress,
};
use talm_shared::clock::rfc3339;
use talm_shared::task_state::TaskState;
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};

use crate::tasks::{self, Grant, Slot};

/// How the gateway reaches a live session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Unique per gateway process.
    pub id: u64,
    /// Serial of the client certificate the session was opened with.
    pub serial: String,
    /// `enrolledAt` of the enrollment the session was opened under: a revoke (and a later
    /// re-enrollment) changes it and ends the session. Rotation does not.
    pub enrolled_at: i64,
    /// Outbound messages.
    pub tx: mpsc::Sender<Result<HubMessage, Status>>,
    /// Set to end the session with this error.
    pub kill: watch::Sender<Option<(Code, String)>>,
    /// The agent's address, when known.
    pub peer: Option<SocketAddr>,
}

/// When replacements of a live session count as two agents sharing one identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClonePolicy {
    /// The window replacements are counted in.
    pub window: Duration,
    /// Replacements within the window from which new sessions are refused (at least 2).
    pub max_replacements: usize,
}

impl Default for ClonePolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            max_replacements: 3,
        }
    }
}

/// `/agents`' `clonedIdentity`: more than one agent uses this cluster's identity.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneView {
    /// First refusal of this episode, RFC 3339.
    pub since: String,
    /// Last refusal, RFC 3339.
    pub last_refused: String,
    /// Sessions refused in this episode.
    pub refused_sessions: u64,
    /// Serial of the certificate the refused agent presented.
    pub certificate_serial: String,
    /// Address of the agent whose session is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_peer: Option<String>,
    /// Address of the last refused agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_peer: Option<String>,
}

/// What [`Registry::connect`] did.
#[derive(Debug)]
pub enum Connected {
    /// The session is the cluster's live one; it replaced this one (to be ended), if any.
    Accepted(Option<SessionHandle>),
    /// Refused: the cluster's sessions keep replacing each other (a cloned identity). The live
    /// session is kept.
    RefusedClone(CloneView),
}

impl SessionHandle {
    /// Ends the session with `code` and `message`.
    pub fn end(&self, code: Code, message: impl Into<String>) {
        let _ = self.kill.send(Some((code, message.into())));
    }
}

/// Live progress of a task (memory only).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressView {
    /// Free text.
    pub message: String,
    /// Units done.
    pub done: u64,
    /// Units in total (0 = unknown).
    pub total: u64,
}

/// One task as the gateway knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Kind (`check-space`, `precache`, `backup`), when known.
    pub kind: String,
    /// The task's state; `None` until the agent reports or a persisted state is seeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
    /// Detail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Live progress, while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressView>,
    /// Pre-cache only: the latest transfer progress (bytes, throughput, registries), as the
    /// gateway writes it to SpokeAgent `status.precache.progress` (coalesced). Kept across
    /// disconnects: it is the last thing known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferProgress>,
    /// Last change, RFC 3339.
    pub updated_at: String,
    #[serde(skip)]
    wire_kind: TaskKind,
}

/// Node facts, as served on `/agents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FactsView {
    /// Containers storage: size, free, image-GC threshold.
    pub containers_storage_size_bytes: u64,
    /// Free bytes.
    pub containers_storage_free_bytes: u64,
    /// Kubelet image-GC high threshold, percent.
    pub image_gc_high_threshold_percent: u32,
    /// Free bytes in /var/recovery.
    pub recovery_free_bytes: u64,
    /// /var/recovery is its own mount.
    pub recovery_separate_mount: bool,
    /// /var/recovery exists.
    pub recovery_exists: bool,
    /// ostree deployments.
    pub deployments: Vec<DeploymentView>,
    /// OpenShift version, if known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub openshift_version: String,
}

/// One ostree deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// OS name.
    pub osname: String,
    /// Commit checksum.
    pub checksum: String,
    /// Deployment serial.
    pub serial: u32,
    /// Booted.
    pub booted: bool,
    /// Pinned.
    pub pinned: bool,
    /// Staged.
    pub staged: bool,
}

impl From<&v1::NodeFacts> for FactsView {
    fn from(f: &v1::NodeFacts) -> Self {
        let cs = f.containers_storage.unwrap_or_default();
        let rec = f.recovery.unwrap_or_default();
        FactsView {
            containers_storage_size_bytes: cs.size_bytes,
            containers_storage_free_bytes: cs.free_bytes,
            image_gc_high_threshold_percent: cs.image_gc_high_threshold_percent,
            recovery_free_bytes: rec.free_bytes,
            recovery_separate_mount: rec.separate_mount,
            recovery_exists: rec.exists,
            deployments: f
                .deployments
                .iter()
                .map(|d| DeploymentView {
                    osname: d.osname.clone(),
                    checksum: d.checksum.clone(),
                    serial: d.serial,
                    booted: d.booted,
                    pinned: d.pinned,
                    staged: d.staged,
                })
                .collect(),
            openshift_version: f.openshift_version.clone(),
        }
    }
}

/// What `/agents` serves per cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// Cluster.
    pub cluster: String,
    /// Live session.
    pub connected: bool,
    /// Last message from the agent, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Start of the current session, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<String>,
    /// Agent version.
    pub agent_version: String,
    /// Node facts from the last Hello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<FactsView>,
    /// Set when more than one agent uses this cluster's identity (a cloned state directory):
    /// the last such episode. Kept after it ends, for diagnosis (`lastRefused` says when).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloned_identity: Option<CloneView>,
    /// Tasks.
    pub tasks: Vec<TaskView>,
}

/// Task counts by state, and (cluster, task, progress ratio) of active tasks.
pub type TaskStats = (BTreeMap<String, i64>, Vec<(String, String, f64)>);

/// Per-cluster state.
#[derive(Debug, Default)]
struct AgentState {
    session: Option<SessionHandle>,
    last_seen: Option<i64>,
    connected_since: Option<i64>,
    /// `lastSeen` as of the last status transition (status never tracks heartbeats).
    status_last_seen: Option<i64>,
    agent_version: String,
    facts: Option<FactsView>,
    tasks: BTreeMap<String, TaskView>,
    /// Ids assigned during the current session.
    assigned: HashSet<String>,
    /// Ids the agent said (in Hello) it is still running.
    agent_active: HashSet<String>,
    /// The persisted status has been read into `tasks`.
    seeded: bool,
    /// The last status written, to skip writes that change nothing.
    last_written: Option<SpokeAgentStatus>,
    /// When the live session was replaced recently (Unix seconds), for clone detection.
    replacements: VecDeque<i64>,
    /// The current (or last) clone episode, and when its last refusal was.
    clone_episode: Option<(CloneView, i64)>,
    /// The pre-cache grant this session's agent has been sent (in its assignment or a
    /// `TaskUpdate`), by task id; cleared on connect (a restarted agent gets the grant again).
    sent_grant: Option<(String, Grant)>,
}

/// Result of applying a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The state name changed (a transition to persist).
    Transition,
    /// Nothing to persist (progress, or a repeat of a known state).
    NoChange,
    /// Pre-cache transfer progress was recorded (no state change). `first` when the report
    /// brought the task's total or registries for the first time: the scheduler needs them to
    /// let the cluster in, so the status is written at once instead of coalesced.
    Progress {
        /// First total or registries of the task.
        first: bool,
    },
}

/// All clusters.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, AgentState>>,
    clones: ClonePolicy,
}

impl Registry {
    /// An empty registry that applies `clones`.
    pub fn new(clones: ClonePolicy) -> Self {
        Self {
            inner: Mutex::default(),
            clones: ClonePolicy {
                max_replacements: clones.max_replacements.max(2),
                ..clones
            },
        }
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.clones.window.as_secs()).unwrap_or(i64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentState>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `cluster` has been seeded from its persisted status.
    pub fn is_seeded(&self, cluster: &str) -> bool {
        self.lock().get(cluster).is_some_and(|a| a.seeded)
    }

    /// Seeds task states from the persisted status (after a hub restart) unless already seeded.
    pub fn seed(
        &self,
        cluster: &str,
        status: Option<SpokeAgentStatus>,
        spec: Option<&SpokeAgentSpec>,
    ) {
        let mut map = self.lock();
        let a = map.entry(cluster.to_string()).or_default();
        if a.seeded {
            return;
        }
        a.seeded = true;
        let Some(st) = status else { return };
        a.status_last_seen = st.last_seen.as_ref().map(|t| t.0.as_second());
        a.last_seen = a.last_seen.or(a.status_last_seen);
        let kinds = spec.map(tasks::desired).unwrap_or_default();
        for (slot, rep) in [
            (Slot::Precache, &st.precache),
            (Slot::Backup, &st.backup),
            (Slot::CheckSpace, &st.check_space),
            (Slot::InstallPlans, &st.install_plans),
            (Slot::Rollback, &st.rollback),
        ] {
            if let Some(r) = rep {
                let kind = kinds
                    .iter()
                    .find(|d| d.slot == slot)
                    .map_or(slot.kind(), |d| d.slot.kind());
                a.tasks.entry(r.id.clone()).or_insert(TaskView {
                    id: r.id.clone(),
                    kind: kind.display_name().into(),
                    state: TaskState::from_name(&r.state),
                    message: r.message.clone(),
                    progress: None,
                    transfer: r.progress.clone(),
                    updated_at: a.status_last_seen.map(rfc3339).unwrap_or_default(),
                    wire_kind: kind,
                });
            }
        }
        a.last_written = None;
    }

    /// Registers a new session, unless the cluster's sessions have been replacing each other
    /// too often (see the module docs): then the live session is kept and the new one refused.
    pub fn connect(
        &self,
        cluster: &str,
        handle: SessionHandle,
        hello: &v1::Hello,
        now: i64,
    ) -> Connected {
        let window = self.window_secs();
        let mut map = self.lock();
        let a = map.entry(cluster.to_string()).or_default();
        if let Some(live) = &a.session {
            a.replacements.push_back(now);
            while a
                .replacements
                .front()
                .is_some_and(|t| *t <= now.saturating_sub(window))
            {
                a.replacements.pop_front();
            }
            if a.replacements.len() >= self.clones.max_replacements {
                let kept_peer = live.peer.map(|p| p.to_string());
                let refused_peer = handle.peer.map(|p| p.to_string());
                let view = match a.clone_episode.take() {
                    Some((mut v, last)) if now.saturating_sub(last) <= window => {
                        v.last_refused = rfc3339(now);
                        v.refused_sessions += 1;
                        v.certificate_serial = handle.serial.clone();
                        v.kept_peer = kept_peer;
                        v.refused_peer = refused_peer;
                        v
                    }
                    _ => CloneView {
                        since: rfc3339(now),
                        last_refused: rfc3339(now),
                        refused_sessions: 1,
                        certificate_serial: handle.serial.clone(),
                        kept_peer,
                        refused_peer,
                    },
                };
                a.clone_episode = Some((view.clone(), now));
                return Connected::RefusedClone(view);
            }
        }
        let old = a.session.replace(handle);
        a.last_seen = Some(now);
        a.status_last_seen = Some(now);
        a.connected_since = Some(now);
        a.agent_version = hello.agent_version.clone();
        a.facts = hello.facts.as_ref().map(FactsView::from);
        a.assigned.clear();
        a.agent_active = hello.active_task_ids.iter().cloned().collect();
        a.sent_grant = None;
        Connected::Accepted(old)
    }

    /// Clusters with a session refused as a clone within the clone window before `now`.
    pub fn cloned_count(&self, now: i64) -> usize {
        let window = self.window_secs();
        self.lock()
            .values()
            .filter(|a| {
                a.clone_episode
                    .as_ref()
                    .is_some_and(|(_, last)| now.saturating_sub(*last) <= window)
            })
            .count()
    }

    /// Marks the session `session_id` gone. Returns true if it was the current one (then the
    /// cluster is disconnected and a status transition is due).
    pub fn disconnect(&self, cluster: &str, session_id: u64, now: i64) -> bool {
        let mut map = self.lock();
        let Some(a) = map.get_mut(cluster) else {
            return false;
        };
        if a.session.as_ref().is_none_or(|s| s.id != session_id) {
            return false;
        }
        a.session = None;
        a.connected_since = None;
        a.status_last_seen = a.last_seen.or(Some(now));
        for t in a.tasks.values_mut() {
            t.progress = None;
        }
        true
    }

    /// Records that the agent was heard from.
    pub fn touch(&self, cluster: &str, now: i64) {
        if let Some(a) = self.lock().get_mut(cluster) {
            a.last_seen = Some(now);
        }
    }

    /// The live session of a cluster.
    pub fn session(&self, cluster: &str) -> Option<SessionHandle> {
        self.lock().get(cluster).and_then(|a| a.session.clone())
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<(String, SessionHandle)> {
        self.lock()
            .iter()
            .filter_map(|(c, a)| a.session.clone().map(|s| (c.clone(), s)))
            .collect()
    }

    /// Number of live sessions.
    pub fn connected_count(&self) -> usize {
        self.lock().values().filter(|a| a.session.is_some()).count()
    }

    /// Applies a validated report of a task that is not held (see [`Self::apply_report_held`]).
    pub fn apply_report(&self, cluster: &str, r: &v1::TaskReport, now: i64) -> Applied {
        self.apply_report_held(cluster, r, now, false)
    }

    /// Applies a validated report. `held`: the task is a pre-cache task its SpokeAgent spec
    /// holds (a PrecacheBudget queues it); its progress (the image list being resolved) then
    /// keeps it `Starting` instead of moving it to `Active`.
    pub fn apply_report_held(
        &self,
        cluster: &str,
        r: &v1::TaskReport,
        now: i64,
        held: bool,
    ) -> Applied {
        let mut map = self.lock();
        let a = map.entry(cluster.to_string()).or_default();
        a.last_seen = Some(now);
        let t = a
            .tasks
            .entry(r.task_id.clone())
            .or_insert_with(|| TaskView {
                id: r.task_id.clone(),
                kind: String::new(),
                state: None,
                message: String::new(),
                progress: None,
                transfer: None,
                updated_at: String::new(),
                wire_kind: TaskKind::Unspecified,
            });
        let before = t.state;
        match &r.body {
            Some(task_report::Body::Accepted(acc)) => {
                let kind = TaskKind::try_from(acc.kind).unwrap_or(TaskKind::Unspecified);
                t.wire_kind = kind;
                t.kind = kind.display_name().into();
                // The watchdog, once accepted, watches: `Armed`.
                let accepted = if kind == TaskKind::Rollback {
                    TaskState::Armed
                } else {
                    TaskState::Starting
                };
                if t.state.is_none_or(|s| {
                    !s.is_final() && s != TaskState::Active && s != TaskState::RollingBack
                }) {
                    t.state = Some(accepted);
                }
                a.agent_active.insert(r.task_id.clone());
            }
            // The watchdog's progress names its phase first: `Armed: not healthy yet, ...`
            // while it watches, `RollingBack: <step>` once the recovery runs (never back).
            Some(task_report::Body::Progress(p))
                if !is_final(t) && t.wire_kind == TaskKind::Rollback =>
            {
                let rolling = p.message.starts_with(TaskState::RollingBack.as_str())
                    || t.state == Some(TaskState::RollingBack);
                t.state = Some(if rolling {
                    TaskState::RollingBack
                } else {
                    TaskState::Armed
                });
                t.message = p.message.clone();
                t.progress = Some(ProgressView {
                    message: p.message.clone(),
                    done: p.done,
                    total: p.total,
                });
            }
            Some(task_report::Body::Progress(p)) if !is_final(t) => {
                t.state = Some(if held {
                    TaskState::Starting
                } else {
                    TaskState::Active
                });
                t.progress = Some(ProgressView {
                    message: p.message.clone(),
                    done: p.done,
                    total: p.total,
                });
                if t.wire_kind == TaskKind::Precache {
                    let first = record_transfer(t, p, now);
                    if t.state == before {
                        return Applied::Progress { first };
                    }
                }
            }
            Some(task_report::Body::Progress(_)) => {}
            Some(task_report::Body::Result(res)) => {
                let outcome = TaskOutcome::try_from(res.outcome).unwrap_or(TaskOutcome::Failed);
                t.state = Some(tasks::result_state(t.wire_kind, outcome));
                t.message = res.message.clone();
                t.progress = None;
                a.agent_active.remove(&r.task_id);
            }
            None => {}
        }
        if t.state != before {
            t.updated_at = rfc3339(now);
            Applied::Transition
        } else {
            Applied::NoChange
        }
    }

    /// Sets the wire kind of a task the hub assigned (so results map to the right state name).
    pub fn note_assigned(&self, cluster: &str, id: &str, kind: TaskKind) {
        let mut map = self.lock();
        let a = map.entry(cluster.to_string()).or_default();
        a.assigned.insert(id.to_string());
        let t = a.tasks.entry(id.to_string()).or_insert_with(|| TaskView {
            id: id.to_string(),
            kind: String::new(),
            state: None,
            message: String::new(),
            progress: None,
            transfer: None,
            updated_at: String::new(),
            wire_kind: kind,
        });
        t.wire_kind = kind;
        t.kind = kind.display_name().into();
    }

    /// Whether `id` is a pre-cache task (as assigned or accepted).
    pub fn is_precache(&self, cluster: &str, id: &str) -> bool {
        self.lock()
            .get(cluster)
            .and_then(|a| a.tasks.get(id))
            .is_some_and(|t| t.wire_kind == TaskKind::Precache)
    }

    /// Whether `id` is known to be in a final state.
    pub fn is_final(&self, cluster: &str, id: &str) -> bool {
        self.lock()
            .get(cluster)
            .and_then(|a| a.tasks.get(id))
            .is_some_and(is_final)
    }

    /// Assignments and cancellations needed to bring a live session in line with `spec`:
    /// assign desired tasks not yet assigned this session and not final (and not reported
    /// finished by the agent); cancel tasks the agent runs that are no longer desired.
    pub fn plan_sync(
        &self,
        cluster: &str,
        spec: Option<&SpokeAgentSpec>,
        agent_finished: &HashSet<String>,
    ) -> (Vec<tasks::DesiredTask>, Vec<String>) {
        let desired = spec.map(tasks::desired).unwrap_or_default();
        let map = self.lock();
        let Some(a) = map.get(cluster) else {
            return (Vec::new(), Vec::new());
        };
        let assign = desired
            .iter()
            .filter(|d| {
                !a.assigned.contains(&d.id)
                    && !agent_finished.contains(&d.id)
                    && !a.tasks.get(&d.id).is_some_and(is_final)
            })
            .cloned()
            .collect();
        let cancel = a
            .agent_active
            .iter()
            .chain(a.assigned.iter())
            .filter(|id| !desired.iter().any(|d| &d.id == *id))
            .filter(|id| !a.tasks.get(*id).is_some_and(is_final))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        (assign, cancel)
    }

    /// Records the grant a pre-cache assignment carried: the agent starts the task with it.
    /// Not recorded when the agent already runs the task (it said so in its Hello): it ignores
    /// the repeated assignment, so [`Self::grant_updates`] sends the grant as an update.
    pub fn note_assigned_grant(&self, cluster: &str, id: &str, grant: Grant) {
        if let Some(a) = self.lock().get_mut(cluster)
            && !a.agent_active.contains(id)
        {
            a.sent_grant = Some((id.to_string(), grant));
        }
    }

    /// The `TaskUpdate`s a live session needs: the pre-cache task `spec` names, assigned in
    /// this session and not final, whose grant differs from the one the agent was sent.
    pub fn grant_updates(
        &self,
        cluster: &str,
        spec: Option<&SpokeAgentSpec>,
    ) -> Vec<(String, Grant)> {
        let map = self.lock();
        let Some(a) = map.get(cluster) else {
            return Vec::new();
        };
        spec.map(tasks::desired)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.slot == Slot::Precache && a.assigned.contains(&d.id))
            .filter(|d| !a.tasks.get(&d.id).is_some_and(is_final))
            .filter(|d| a.sent_grant.as_ref() != Some(&(d.id.clone(), d.grant)))
            .map(|d| (d.id, d.grant))
            .collect()
    }

    /// Records a grant sent in a `TaskUpdate`.
    pub fn note_grant_sent(&self, cluster: &str, id: &str, grant: Grant) {
        if let Some(a) = self.lock().get_mut(cluster) {
            a.sent_grant = Some((id.to_string(), grant));
        }
    }

    /// Forgets cancelled ids so they are not cancelled twice.
    pub fn note_cancelled(&self, cluster: &str, ids: &[String]) {
        if let Some(a) = self.lock().get_mut(cluster) {
            for id in ids {
                a.agent_active.remove(id);
                a.assigned.remove(id);
            }
        }
    }

    /// The SpokeAgent status for `cluster` given its spec: connection, `lastSeen` as of the last
    /// transition, and each slot's task state (only for the id the spec names). `None` until the
    /// cluster has been seeded from its persisted status: a hub that has not heard from an agent
    /// since it started must not overwrite what an earlier hub process wrote.
    pub fn compose_status(
        &self,
        cluster: &str,
        spec: Option<&SpokeAgentSpec>,
    ) -> Option<SpokeAgentStatus> {
        let map = self.lock();
        let a = map.get(cluster).filter(|a| a.seeded)?;
        let mut st = SpokeAgentStatus {
            connected: a.session.is_some(),
            last_seen: a
                .status_last_seen
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map(Time),
            ..Default::default()
        };
        for d in spec.map(tasks::desired).unwrap_or_default() {
            let Some((t, state)) = a.tasks.get(&d.id).and_then(|t| Some((t, t.state?))) else {
                continue;
            };
            let rep = Some(TaskReport {
                id: t.id.clone(),
                state: state.as_str().into(),
                message: t.message.clone(),
                progress: if d.slot == Slot::Precache {
                    t.transfer.clone()
                } else {
                    None
                },
            });
            match d.slot {
                Slot::Precache => st.precache = rep,
                Slot::Backup => st.backup = rep,
                Slot::CheckSpace => st.check_space = rep,
                Slot::InstallPlans => st.install_plans = rep,
                Slot::Rollback => st.rollback = rep,
            }
        }
        Some(st)
    }

    /// Whether `status` carries other pre-cache progress than the last one written for
    /// `cluster` (for the progress-write metric).
    pub fn progress_changed(&self, cluster: &str, status: &SpokeAgentStatus) -> bool {
        let progress = |s: &SpokeAgentStatus| s.precache.as_ref().and_then(|p| p.progress.clone());
        let new = progress(status);
        new.is_some()
            && self
                .lock()
                .get(cluster)
                .is_none_or(|a| a.last_written.as_ref().and_then(progress) != new)
    }

    /// Whether `status` differs from the last one written for `cluster`.
    pub fn needs_write(&self, cluster: &str, status: &SpokeAgentStatus) -> bool {
        self.lock()
            .get(cluster)
            .is_none_or(|a| a.last_written.as_ref() != Some(status))
    }

    /// Records a successful write.
    pub fn written(&self, cluster: &str, status: SpokeAgentStatus) {
        if let Some(a) = self.lock().get_mut(cluster) {
            a.last_written = Some(status);
        }
    }

    /// The `/agents` view of one cluster.
    pub fn view(&self, cluster: &str) -> Option<AgentView> {
        self.lock().get(cluster).map(|a| view_of(cluster, a))
    }

    /// The `/agents` view of every cluster, sorted by name.
    pub fn views(&self) -> Vec<AgentView> {
        let map = self.lock();
        let mut v: Vec<_> = map.iter().map(|(c, a)| view_of(c, a)).collect();
        v.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        v
    }

    /// Task counts by state, and live progress ratios, for the metrics.
    pub fn task_stats(&self) -> TaskStats {
        let map = self.lock();
        let mut by_state = BTreeMap::new();
        let mut progress = Vec::new();
        for (c, a) in map.iter() {
            for t in a.tasks.values() {
                if let Some(s) = t.state {
                    *by_state.entry(s.as_str().to_string()).or_insert(0) += 1;
                }
                if let Some(p) = &t.progress
                    && p.total > 0
                {
                    progress.push((c.clone(), t.id.clone(), p.done as f64 / p.total as f64));
                }
            }
        }
        (by_state, progress)
    }
}

/// Records a pre-cache progress report in the task's transfer progress, stamped with the hub's
/// clock (`now`, Unix seconds). Registries are sent once known and kept after that. Returns
/// whether the report brought the total or the registries for the first time.
fn record_transfer(t: &mut TaskView, p: &v1::TaskProgress, now: i64) -> bool {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let prev = t.transfer.take().unwrap_or_default();
    let first = (prev.bytes_total == 0 && p.total > 0)
        || (prev.registries.is_empty() && !p.registries.is_empty());
    t.transfer = Some(TransferProgress {
        bytes_done: clamp(p.done),
        bytes_total: clamp(p.total),
        bytes_per_second: clamp(p.bytes_per_second),
        registries: if p.registries.is_empty() {
            prev.registries
        } else {
            p.registries.clone()
        },
        updated_at: jiff::Timestamp::from_second(now).ok().map(Time),
    });
    first
}

/// Whether the task is known to be in a final state.
fn is_final(t: &TaskView) -> bool {
    t.state.is_some_and(TaskState::is_final)
}

fn view_of(cluster: &str, a: &AgentState) -> AgentView {
    AgentView {
        cluster: cluster.to_string(),
        connected: a.session.is_some(),
        last_seen: a.last_seen.map(rfc3339),
        connected_since: a.connected_since.map(rfc3339),
        agent_version: a.agent_version.clone(),
        facts: a.facts.clone(),
        cloned_identity: a.clone_episode.as_ref().map(|(v, _)| v.clone()),
        tasks: a.tasks.values().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, port: u16) -> SessionHandle {
        let (tx, _) = mpsc::channel(1);
        let (kill, _) = watch::channel(None);
        SessionHandle {
            id,
            serial: "0a".into(),
            enrolled_at: 1,
            tx,
            kill,
            peer: Some(SocketAddr::from(([10, 0, 0, 1], port))),
        }
    }

    fn accepted(c: &Connected) -> bool {
        matches!(c, Connected::Accepted(_))
    }

    #[test]
    fn sessions_replacing_each_other_are_refused_from_the_third_replacement_in_the_window() {
        let r = Registry::new(ClonePolicy::default());
        let hello = v1::Hello::default();
        // A restart replaces a (dead) session once: accepted.
        assert!(accepted(&r.connect("c", handle(1, 1), &hello, 1000)));
        assert!(accepted(&r.connect("c", handle(2, 2), &hello, 1001)));
        assert!(accepted(&r.connect("c", handle(3, 1), &hello, 1002)));
        assert_eq!(r.cloned_count(1002), 0);
        // The third replacement within 60 s: refused, session 3 kept.
        match r.connect("c", handle(4, 2), &hello, 1003) {
            Connected::RefusedClone(v) => {
                assert_eq!(v.refused_sessions, 1);
                assert_eq!(v.kept_peer.as_deref(), Some("10.0.0.1:1"));
                assert_eq!(v.refused_peer.as_deref(), Some("10.0.0.1:2"));
            }
            c => panic!("{c:?}"),
        }
        match r.connect("c", handle(5, 2), &hello, 1010) {
            Connected::RefusedClone(v) => assert_eq!(v.refused_sessions, 2),
            c => panic!("{c:?}"),
        }
        assert_eq!(r.session("c").map(|s| s.id), Some(3));
        assert_eq!(r.cloned_count(1010), 1);
        let view = r.view("c").unwrap();
        assert_eq!(view.cloned_identity.unwrap().refused_sessions, 2);
        // Once the clone is gone the flag lapses after the window, and the kept session's
        // end lets the next one in.
        assert_eq!(r.cloned_count(1100), 0);
        assert!(r.disconnect("c", 3, 1100));
        assert!(accepted(&r.connect("c", handle(6, 2), &hello, 1101)));
        // Replacements spread wider than the window never trip it.
        let r = Registry::new(ClonePolicy::default());
        for i in 0..10 {
            assert!(accepted(&r.connect(
                "d",
                handle(i, 1),
                &hello,
                i64::try_from(i).unwrap() * 31
            )));
        }
    }

    fn report(id: &str, seq: u64, body: task_report::Body) -> v1::TaskReport {
        v1::TaskReport {
            seq,
            task_id: id.into(),
            cluster: "c".into(),
            body: Some(body),
        }
    }

    #[test]
    fn the_watchdog_reports_armed_then_rolling_back_with_its_step_then_rolled_back() {
        use talm_shared::api::spokeagent::RollbackTask;
        let id = "ns/cgu/uid/rollback";
        let spec = SpokeAgentSpec {
            rollback: Some(RollbackTask {
                id: id.into(),
                armed_at: Time(jiff::Timestamp::from_second(1000).unwrap()),
                health_timeout_seconds: 600,
                target_version: None,
            }),
            ..Default::default()
        };
        let r = Registry::new(ClonePolicy::default());
        r.seed("c", None, Some(&spec));
        let state = |r: &Registry| {
            let st = r.compose_status("c", Some(&spec)).unwrap();
            st.rollback.map(|t| (t.state, t.message))
        };
        r.apply_report(
            "c",
            &report(
                id,
                1,
                task_report::Body::Accepted(v1::TaskAccepted {
                    kind: TaskKind::Rollback.into(),
                }),
            ),
            1001,
        );
        assert_eq!(state(&r), Some(("Armed".into(), String::new())));
        let armed_progress = "Armed: not healthy yet, 500s to the health timeout: /readyz";
        r.apply_report(
            "c",
            &report(
                id,
                0,
                task_report::Body::Progress(v1::TaskProgress {
                    message: armed_progress.into(),
                    done: 0,
                    total: 0,
                    ..Default::default()
                }),
            ),
            1100,
        );
        assert_eq!(state(&r), Some(("Armed".into(), armed_progress.into())));
        r.apply_report(
            "c",
            &report(
                id,
                0,
                task_report::Body::Progress(v1::TaskProgress {
                    message: "RollingBack: stage 2/5: restore".into(),
                    done: 2,
                    total: 5,
                    ..Default::default()
                }),
            ),
            1700,
        );
        assert_eq!(
            state(&r),
            Some((
                "RollingBack".into(),
                "RollingBack: stage 2/5: restore".into()
            ))
        );
        // Once rolling back, a later progress message never goes back to Armed.
        r.apply_report(
            "c",
            &report(
                id,
                0,
                task_report::Body::Progress(v1::TaskProgress {
                    message: "stage 3/5".into(),
                    done: 0,
                    total: 0,
                    ..Default::default()
                }),
            ),
            1750,
        );
        assert_eq!(state(&r).unwrap().0, "RollingBack");
        // A re-sent acceptance (after a reconnect) does not go back to Armed.
        r.apply_report(
            "c",
            &report(
                id,
                2,
                task_report::Body::Accepted(v1::TaskAccepted {
                    kind: TaskKind::Rollback.into(),
                }),
            ),
            1701,
        );
        assert_eq!(state(&r).unwrap().0, "RollingBack");
        r.apply_report(
            "c",
            &report(
                id,
                3,
                task_report::Body::Result(v1::TaskResult {
                    outcome: TaskOutcome::RolledBack.into(),
                    message: "node runs the pinned deployment".into(),
                }),
            ),
            2000,
        );
        assert_eq!(
            state(&r),
            Some((
                "RolledBack".into(),
                "node runs the pinned deployment".into()
            ))
        );
        // Other slots are untouched; without the spec the report is not written.
        let st = r.compose_status("c", Some(&spec)).unwrap();
        assert!(st.backup.is_none() && st.precache.is_none());
        let empty = SpokeAgentSpec::default();
        assert!(
            r.compose_status("c", Some(&empty))
                .unwrap()
                .rollback
                .is_none()
        );
    }
}
