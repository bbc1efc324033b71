//! What one reconcile decides: the new status, the writes, the events and the requeue.

use std::collections::BTreeMap;

use talm_shared::api::cgu::ClusterGroupUpgradeStatus;
use talm_shared::api::precachebudget::PrecacheBudgetStatus;
use talm_shared::api::rhacm::{
    ManagedClusterAction, ManagedClusterView, Placement, PlacementBinding,
};
use talm_shared::api::spokeagent::{BackupTask, InstallPlanTask, PrecacheTask, RollbackTask};
use talm_shared::api::work::ManifestWork;

/// The outcome of one reconcile of one CGU.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The complete new status of the CGU (write it when it differs from the old one).
    pub status: ClusterGroupUpgradeStatus,
    /// Whether the CGU's finalizer must be added or removed.
    pub finalizer: FinalizerChange,
    /// Object writes, to apply in order before the status.
    pub writes: Vec<Write>,
    /// Events to publish.
    pub events: Vec<Event>,
    /// When to reconcile this CGU again.
    pub requeue: Requeue,
    /// Explanations for people: clusters left out of the plan and pending actions.
    pub notes: Notes,
}

/// Human-facing explanations of a decision (`talm-hub plan -o table`, logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Selected clusters that are in no batch, with the reason (e.g. `compliant with all
    /// managed policies`, `pre-caching failed: UnrecoverableError`).
    pub excluded_clusters: Vec<(String, String)>,
    /// What is still to happen and what it waits for (e.g. `waiting for blocking CGU
    /// default/cgu-a`, `beforeEnable: add labels [ztp-running] on 2 clusters at start`).
    pub pending_actions: Vec<String>,
}

/// A change to the CGU's `ran.openshift.io/cleanup-finalizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerChange {
    /// Leave the finalizers as they are.
    None,
    /// Add the finalizer.
    Add,
    /// Remove the finalizer: cleanup is done and the CGU may go.
    Remove,
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Only on the next watch event.
    Never,
    /// At once (TALM's `Requeue: true`).
    Immediately,
    /// After this many seconds.
    After(u64),
}

/// A change to a hub object. Every write is idempotent: applying it twice is harmless.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create the Placement, or replace its labels, annotations and spec.
    ApplyPlacement(Placement),
    /// Delete a Placement.
    DeletePlacement {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create the PlacementBinding, or replace it.
    ApplyPlacementBinding(PlacementBinding),
    /// Delete a PlacementBinding.
    DeletePlacementBinding {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Change a ManagedCluster's labels and annotations (adds first, then removals).
    PatchManagedCluster {
        /// Cluster name.
        name: String,
        /// Labels to set.
        add_labels: BTreeMap<String, String>,
        /// Label keys to remove.
        remove_labels: Vec<String>,
        /// Annotations to set.
        add_annotations: BTreeMap<String, String>,
        /// Annotation keys to remove.
        remove_annotations: Vec<String>,
    },
    /// Change the desired tasks of a cluster's SpokeAgent (`<cluster ns>/<cluster>`); the object
    /// is created when missing.
    SetSpokeAgentTasks {
        /// Namespace (the cluster's namespace, which is the cluster name).
        namespace: String,
        /// Name (the cluster name).
        name: String,
        /// The pre-cache task change, if any.
        precache: Option<TaskChange<PrecacheTask>>,
        /// The backup task change, if any.
        backup: Option<TaskChange<BackupTask>>,
        /// The InstallPlan-approval task change, if any.
        install_plans: Option<TaskChange<InstallPlanTask>>,
        /// The rollback watchdog change, if any (arm or disarm).
        rollback: Option<TaskChange<RollbackTask>>,
    },
    /// Create the ManagedClusterView, or replace its labels and spec (docs/contract.md §3.10).
    /// Failures are logged, not fatal: the next reconcile retries.
    ApplyManagedClusterView(ManagedClusterView),
    /// Delete a ManagedClusterView (404 is success).
    DeleteManagedClusterView {
        /// Namespace (the cluster namespace).
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create the ManagedClusterAction; one that already exists is left alone (it deletes
    /// itself once executed). Failures are logged, not fatal.
    CreateManagedClusterAction(ManagedClusterAction),
    /// Create the ManifestWork of a ManifestWork rollout (docs/contract.md §3.13); one that
    /// already exists is left alone (the work agent owns its status).
    CreateManifestWork(ManifestWork),
    /// Delete a ManifestWork (404 is success).
    DeleteManifestWork {
        /// Namespace (the cluster namespace).
        namespace: String,
        /// Name.
        name: String,
    },
    /// The pre-cache scheduler's grant (docs/contract.md §4.4): set `hold` and
    /// `rateLimitBytesPerSecond` of a SpokeAgent's `spec.precache`, only while its id is
    /// `task_id` (a task replaced meanwhile is left alone; a missing agent or task is no error).
    SetPrecacheGrant {
        /// Namespace (the cluster's namespace).
        namespace: String,
        /// Name (the cluster name).
        name: String,
        /// The pre-cache task the grant is for.
        task_id: String,
        /// Still queued.
        hold: bool,
        /// The node's cap, bytes/s; `None` removes the hub's cap.
        rate_limit_bytes_per_second: Option<i64>,
    },
    /// Replace a PrecacheBudget's status (a missing budget is no error).
    SetPrecacheBudgetStatus {
        /// The budget (cluster-scoped).
        name: String,
        /// The new status.
        status: PrecacheBudgetStatus,
    },
}

/// A change of one desired agent task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskChange<T> {
    /// Set the task.
    Assign(T),
    /// Clear the task (cancel it if it is still running).
    Clear,
}

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A normal event.
    Normal,
    /// A warning.
    Warning,
}

impl EventType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when known.
    pub uid: String,
}

/// An `events.k8s.io/v1` event with TALM's reason, action, note and annotations
/// (reportingController `ClusterGroupUpgrade`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// e.g. `CguStarted`.
    pub reason: String,
    /// e.g. `RemediationStarted`.
    pub action: String,
    /// The message, at most 1,024 bytes.
    pub note: String,
    /// The CGU (for every event, as TALM's recorder is called with the CGU).
    pub regarding: ObjectRef,
    /// The ManagedCluster of a per-cluster event (TALM's `related`); `None` otherwise.
    pub related: Option<ObjectRef>,
    /// `cgu.openshift.io/*` annotations.
    pub annotations: BTreeMap<String, String>,
}
