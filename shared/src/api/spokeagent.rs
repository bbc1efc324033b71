//! `SpokeAgent` (`talm.dev/v1alpha1`): the hub's view of one cluster's talm-agent.
//!
//! One per managed cluster, named after the cluster, in the cluster's namespace. `spec` holds the
//! tasks the hub wants done (written by the engine); `status` holds what the agent reported
//! (written by the gateway). A reported state counts only when its `id` equals the `spec` id.

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Time;
use super::cgu::PrecachingSpec;

/// `apiVersion` of SpokeAgent.
pub const API_VERSION: &str = "talm.dev/v1alpha1";

/// The tasks the hub assigns to a cluster's agent.
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[cfg_attr(
    feature = "kube",
    derive(CustomResource),
    kube(
        group = "talm.dev",
        version = "v1alpha1",
        kind = "SpokeAgent",
        namespaced,
        status = "SpokeAgentStatus",
        derive = "PartialEq",
        crates(kube_core = "::kube_core"),
        printcolumn(name = "Connected", type_ = "boolean", json_path = ".status.connected"),
        printcolumn(name = "Last Seen", type_ = "date", json_path = ".status.lastSeen"),
        printcolumn(
            name = "Precache",
            type_ = "string",
            json_path = ".status.precache.state"
        ),
        printcolumn(name = "Backup", type_ = "string", json_path = ".status.backup.state"),
        printcolumn(
            name = "Rollback",
            type_ = "string",
            json_path = ".status.rollback.state"
        ),
    )
)]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpokeAgentSpec {
    /// The desired pre-cache task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precache: Option<PrecacheTask>,
    /// The desired backup task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupTask>,
    /// The desired check-space task, if any (TALM's `check_space`, on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_space: Option<CheckSpaceTask>,
    /// The desired InstallPlan-approval task, if any (docs/contract.md §3.10, done by the
    /// agent through the spoke's own API server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_plans: Option<InstallPlanTask>,
    /// The rollback watchdog, if armed (talm extension, CGU `spec.recovery.automatic`): the
    /// agent recovers the node from its backup by itself when it is not healthy in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackTask>,
}

/// The rollback watchdog task: healthy before `armedAt + healthTimeoutSeconds` means disarm
/// (`Healthy`); not healthy then means the unattended recovery (`RollingBack`, then
/// `RolledBack` or `RollbackFailed`). Losing the hub is never by itself a reason to roll back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackTask {
    /// Unique per CGU and cluster: `<cgu namespace>/<cgu name>/<cgu uid>/rollback`.
    pub id: String,
    /// When the cluster was released into its first policy of the CGU.
    pub armed_at: Time,
    /// How long the node has to become healthy, in seconds.
    pub health_timeout_seconds: i64,
    /// The OpenShift version the upgrade goes to (from the CGU's ClusterVersion policy), if
    /// any: healthy then also means ClusterVersion at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
}

/// An InstallPlan-approval task: while it runs, the agent approves the `Manual` InstallPlan of
/// each listed OLM Subscription once that Subscription is `UpgradePending` (the same rule as
/// TALM's ManagedClusterView/Action path). It runs until the hub clears it or its deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallPlanTask {
    /// Unique per CGU, policy and task:
    /// `<cgu namespace>/<cgu name>/<cgu uid>/installplans/<policy>`.
    pub id: String,
    /// The Subscriptions whose InstallPlans to approve.
    pub subscriptions: Vec<SubscriptionTarget>,
    /// The agent stops (state `TimedOut`) after this time.
    pub deadline: Time,
}

/// An OLM Subscription on the spoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionTarget {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// A pre-cache task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrecacheTask {
    /// Unique per CGU and task: `<cgu namespace>/<cgu name>/<cgu uid>/precache`.
    pub id: String,
    /// What to pre-cache.
    pub spec: PrecachingSpec,
    /// The agent gives up (state `PrecacheTimeout`) after this time.
    pub deadline: Time,
    /// Held by the hub's pre-cache scheduler (a PrecacheBudget applies): the agent lists and
    /// resolves the images, reports the total and the registries, and waits to be let in
    /// before it downloads. The task stays `Starting` meanwhile. Written by the engine when it
    /// assigns the task, lifted by the scheduler.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// The scheduler's bandwidth cap for this node, bytes/s (the agent applies the lower of it
    /// and its own node cap, to transfers in flight too). Absent: the node cap alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_bytes_per_second: Option<i64>,
    /// The cluster's place in the fleet's pre-cache queue (written with the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<PrecacheOrder>,
}

impl PrecacheTask {
    /// The download rate this task's grant allows ([`grant_rate`]).
    pub fn allowed_rate(&self) -> u64 {
        grant_rate(self.hold, self.rate_limit_bytes_per_second)
    }
}

/// The download rate a pre-cache grant allows, bytes/s: none while held, unbounded
/// (`u64::MAX`) without a cap. Grants that lower it are written and pushed before those that
/// raise it, so the caps never add up to more than a budget on the way.
pub fn grant_rate(hold: bool, cap: Option<i64>) -> u64 {
    match (hold, cap) {
        (true, _) => 0,
        (false, None) => u64::MAX,
        (false, Some(c)) => u64::try_from(c).unwrap_or(0),
    }
}

/// Where a cluster's pre-cache task queues: earlier batches first (the canaries are batch 0
/// when the CGU has canaries), then older CGUs first, then by task id and cluster name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrecacheOrder {
    /// The cluster's batch in the CGU's remediation plan, 0-based.
    pub batch: i64,
    /// The CGU's `metadata.creationTimestamp`.
    pub cgu_created: Time,
}

/// A backup task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupTask {
    /// Unique per CGU and task: `<cgu namespace>/<cgu name>/<cgu uid>/backup`.
    pub id: String,
    /// The agent gives up (state `BackupTimeout`) after this time.
    pub deadline: Time,
}

/// A check-space task: containers storage must keep usage under kubelet's image-GC high
/// threshold after `spaceRequired` more GiB are used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckSpaceTask {
    /// Unique task id.
    pub id: String,
    /// Space needed, as a GiB integer string (as in `PrecachingSpec.spaceRequired`).
    pub space_required: String,
    /// The agent gives up (state `TimedOut`) after this time.
    pub deadline: Time,
}

/// What the agent reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpokeAgentStatus {
    /// Whether the agent has a live session with the hub.
    #[serde(default)]
    pub connected: bool,
    /// The last time the hub heard from the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// The pre-cache task's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precache: Option<TaskReport>,
    /// The backup task's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<TaskReport>,
    /// The check-space task's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_space: Option<TaskReport>,
    /// The InstallPlan-approval task's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_plans: Option<TaskReport>,
    /// The rollback watchdog's state (`Armed`, `Healthy`, `RollingBack`, `RolledBack`,
    /// `RollbackFailed`, `Cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<TaskReport>,
}

/// A task's reported state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The task id this report is about.
    pub id: String,
    /// One of TALM's pre-cache or backup state names (`Starting`, `Active`, `Succeeded`,
    /// `PrecacheTimeout`, `BackupTimeout`, `UnrecoverableError`, ...).
    pub state: String,
    /// Human-readable detail, e.g. the failure reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Transfer progress (pre-cache only), as last reported; the gateway writes it at most a
    /// few times a minute per agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TransferProgress>,
}

/// A pre-cache task's transfer progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferProgress {
    /// Bytes downloaded (or found already present) so far.
    #[serde(default)]
    pub bytes_done: i64,
    /// Bytes the task needs in all (0 while the image list is being resolved).
    #[serde(default)]
    pub bytes_total: i64,
    /// Measured download throughput, bytes/s (a moving average over the last seconds).
    #[serde(default)]
    pub bytes_per_second: i64,
    /// The registry hosts the images come from after mirror resolution (`host[:port]`),
    /// sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// When the agent measured this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

super::plain_root!(
    /// A SpokeAgent object.
    SpokeAgent,
    SpokeAgentSpec,
    SpokeAgentStatus,
    "talm.dev/v1alpha1",
    "SpokeAgent"
);
