//! `ClusterGroupUpgrade` (`ran.openshift.io/v1alpha1`, short name `cgu`): the TALM rollout
//! object, field for field (docs/contract.md §2.1 and §2.2), including deprecated fields.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, IntOrString, LabelSelector, Time, is_none_or_empty};

/// The API group of the CGU and PreCachingConfig kinds.
pub const GROUP: &str = "ran.openshift.io";
/// `apiVersion` of the CGU and PreCachingConfig kinds.
pub const API_VERSION: &str = "ran.openshift.io/v1alpha1";
/// The finalizer talm keeps on every CGU until its objects are cleaned up.
pub const FINALIZER: &str = "ran.openshift.io/cleanup-finalizer";

fn default_true() -> Option<bool> {
    Some(true)
}
fn default_false() -> Option<bool> {
    Some(false)
}
fn default_timeout() -> i32 {
    240
}

/// The desired rollout: which clusters, which policies, in what batches and when.
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[cfg_attr(
    feature = "kube",
    derive(CustomResource),
    kube(
        group = "ran.openshift.io",
        version = "v1alpha1",
        kind = "ClusterGroupUpgrade",
        namespaced,
        shortname = "cgu",
        status = "ClusterGroupUpgradeStatus",
        derive = "PartialEq",
        crates(kube_core = "::kube_core"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
        printcolumn(
            name = "State",
            type_ = "string",
            json_path = ".status.conditions[-1:].reason"
        ),
        printcolumn(
            name = "Details",
            type_ = "string",
            json_path = ".status.conditions[-1:].message"
        ),
        printcolumn(
            name = "Paused",
            type_ = "string",
            description = "talm extension: Paused (spec.paused), HeldByAlert or Resumed",
            json_path = ".status.conditions[?(@.type==\"Paused\")].reason"
        ),
    )
)]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterGroupUpgradeSpec {
    /// Explicit cluster names, kept in order and de-duplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Deprecated: `"k=v"` or `"k"` selectors, each matched separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<Vec<String>>,
    /// Label selectors; the union of their matches is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_label_selectors: Option<Vec<LabelSelector>>,
    /// Batch size, canaries and timeout.
    pub remediation_strategy: RemediationStrategySpec,
    /// Ordered root-policy names (namespaces are resolved through child policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_policies: Option<Vec<String>>,
    /// ManifestWorkReplicaSet template names; when set, the rollout type is ManifestWork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_work_templates: Option<Vec<String>>,
    /// `false` builds the plan and pre-caches but does not start. Default `true`.
    #[serde(default = "default_true", skip_serializing_if = "Option::is_none")]
    #[schemars(default = "default_true")]
    pub enable: Option<bool>,
    /// Pre-cache images on every cluster of the plan before starting. Default `false`.
    #[serde(default = "default_false", skip_serializing_if = "Option::is_none")]
    pub pre_caching: Option<bool>,
    /// The PreCachingConfig to use (namespace defaults to the CGU's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_caching_config_ref: Option<PreCachingConfigReference>,
    /// Deprecated: back up every cluster of the plan before starting. Default `false`.
    #[serde(default = "default_false", skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
    /// Other CGUs that must complete first.
    #[serde(
        default,
        rename = "blockingCRs",
        skip_serializing_if = "Option::is_none"
    )]
    pub blocking_crs: Option<Vec<BlockingCr>>,
    /// Label and annotation changes before start and after each cluster completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Actions>,
    /// `Abort` fails the CGU on a batch timeout; anything else (default `Continue`) continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout_action: Option<String>,
    /// talm extension: `true` pauses the rollout. A started CGU releases no more clusters,
    /// starts no batch and runs no actions while paused; clusters already released stay
    /// enforced and their progress is still recorded. Paused time does not count against the
    /// global or batch timeouts. A CGU that has not started does not start while paused.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// talm extension: the maintenance windows in which a batch may start. When set, a batch
    /// starts only while one of them is open; a started batch runs to its end even after the
    /// window closes. Time spent waiting for a window does not count against
    /// `remediationStrategy.timeout`. Absent: batches start at once, as in TALM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_windows: Option<Vec<MaintenanceWindow>>,
    /// talm extension: automatic rollback of a failed upgrade on the node. Valid only with
    /// `backup: true`. When `automatic` is true, each cluster whose backup succeeded gets a
    /// rollback watchdog armed as it is released into its first policy: the node's agent
    /// recovers it from that backup if it is not healthy within `healthTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
}

/// talm extension: a recurring maintenance window, e.g. `{days: [Sat, Sun], start: "22:00",
/// duration: "4h", timeZone: Europe/Berlin}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// The days the window opens on, in its time zone: `Mon`, `Tue`, `Wed`, `Thu`, `Fri`,
    /// `Sat`, `Sun` (or the full English names). Empty or absent: every day. A window that
    /// crosses midnight belongs to the day it opens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Local opening time, `HH:MM` (24-hour). A time skipped by a daylight-saving change opens
    /// the window that much later (02:30 on a spring-forward night opens at 03:30); a repeated
    /// time opens at its first occurrence.
    pub start: String,
    /// How long the window stays open, in elapsed time: `4h`, `90m`, `1h30m`. More than zero,
    /// at most `168h`.
    pub duration: String,
    /// IANA time-zone name, e.g. `Europe/Berlin`. Default `UTC`. talm uses its own bundled
    /// copy of the IANA time-zone database, not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// talm extension: the rollback watchdog settings of a CGU (`spec.recovery`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoverySpec {
    /// Arm the watchdog on each released cluster whose backup succeeded. Default `false`.
    #[serde(default)]
    pub automatic: bool,
    /// How long a node has, from its release into its first policy, to become healthy before
    /// its agent rolls it back: a Go duration (`"90m"`, `"1h30m"`), from 10m to 24h. Default
    /// `"90m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
}

/// How clusters are split into batches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemediationStrategySpec {
    /// Clusters remediated first, each in its own batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canaries: Option<Vec<String>>,
    /// Batch size; `0` (or at least the number of clusters) means one batch.
    pub max_concurrency: i32,
    /// Whole-CGU timeout in minutes. Default 240.
    #[serde(default = "default_timeout")]
    pub timeout: i32,
    /// talm extension: the failure budget. A cluster fails when it times out in its batch or
    /// its pre-cache or backup fails; once more clusters have failed than this (a number, or a
    /// percentage such as `"10%"` of the CGU's clusters, rounded down; `0` means the first
    /// failure ends it), the rollout ends as with `batchTimeoutAction: Abort`, with
    /// `Succeeded=False` and reason `FailureBudgetExceeded`. Unset: no budget (TALM's
    /// behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<IntOrString>,
}

/// Reference to a PreCachingConfig.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreCachingConfigReference {
    /// Name of the PreCachingConfig.
    #[serde(default)]
    pub name: String,
    /// Namespace of the PreCachingConfig (defaults to the CGU's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// A CGU that must complete before this one starts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockingCr {
    /// Name of the blocking CGU.
    #[serde(default)]
    pub name: String,
    /// Namespace of the blocking CGU.
    #[serde(default)]
    pub namespace: String,
}

/// The before-enable and after-completion actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Actions {
    /// Applied to every cluster of the plan at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_enable: Option<BeforeEnable>,
    /// Applied to each cluster when it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_completion: Option<AfterCompletion>,
}

/// Label and annotation changes applied at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BeforeEnable {
    /// Labels to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_cluster_labels: Option<BTreeMap<String, String>>,
    /// Deprecated: label keys to delete (values are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_cluster_labels: Option<BTreeMap<String, String>>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_cluster_labels: Option<Vec<String>>,
    /// Annotations to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_cluster_annotations: Option<BTreeMap<String, String>>,
    /// Annotation keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_cluster_annotations: Option<Vec<String>>,
}

/// Label and annotation changes applied per completed cluster, plus cleanup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AfterCompletion {
    /// Labels to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_cluster_labels: Option<BTreeMap<String, String>>,
    /// Deprecated: label keys to delete (values are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_cluster_labels: Option<BTreeMap<String, String>>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_cluster_labels: Option<Vec<String>>,
    /// Annotations to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_cluster_annotations: Option<BTreeMap<String, String>>,
    /// Annotation keys to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_cluster_annotations: Option<Vec<String>>,
    /// Delete the Placements, bindings and agent tasks when the CGU ends. Default `true`.
    #[serde(default = "default_true", skip_serializing_if = "Option::is_none")]
    pub delete_objects: Option<bool>,
}

/// The observed rollout state. Every field is TALM's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGroupUpgradeStatus {
    /// Conditions; the last one is the printer columns' State and Details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The effective batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_max_concurrency: Option<i32>,
    /// The batches; absent when nothing needs remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_plan: Option<Vec<Vec<String>>>,
    /// Policies that still need work, in spec order; `policyIndex` points into this list.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub managed_policies_for_upgrade: Option<Vec<ManagedPolicyForUpgrade>>,
    /// Policies compliant on every selected cluster, skipped.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub managed_policies_compliant_before_upgrade: Option<Vec<String>>,
    /// Policy name to namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_policies_ns: Option<BTreeMap<String, String>>,
    /// Policy name to a JSON list of the Subscriptions it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_policies_content: Option<BTreeMap<String, String>>,
    /// Names of the Placements created (sorted).
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub placements: Option<Vec<String>>,
    /// Names of the PlacementBindings created (sorted).
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub placement_bindings: Option<Vec<String>>,
    /// `"<ns>/<desired name>"` to the safe name used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_resource_names: Option<BTreeMap<String, String>>,
    /// Final per-cluster outcomes, in order of completion.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub clusters: Option<Vec<ClusterState>>,
    /// Timing and progress of the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UpgradeStatus>,
    /// Pre-caching spec and per-cluster states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precaching: Option<PrecachingStatus>,
    /// Backup start time and per-cluster states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// Deprecated (policy copies era); never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_policies: Option<Vec<String>>,
    /// talm extension: when the rollout is expected to end, batch by batch, and what the
    /// prediction is based on. Written while the CGU is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
}

/// talm extension: the rollout forecast. Each managed policy's time to compliance (from a
/// cluster's release into the policy's Placement until it moves past the policy) is learned
/// from the CGU's own clusters into a fixed-size histogram, optionally starting from the root
/// Policy's `talm.dev/expected-duration` annotation; the remaining batches are projected from
/// it, with the maintenance windows, the batch timeouts and the global timeout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// The basis, per managed policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyForecast>,
    /// The remaining batches, the current one first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchForecast>,
    /// Expected completion of the CGU; absent while some remaining batch has no basis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Time>,
    /// Completion by which the CGU is 90% likely to have ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_p90: Option<Time>,
}

/// talm extension: what the forecast knows about one managed policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyForecast {
    /// Root policy name.
    pub name: String,
    /// Durations observed on this CGU's clusters.
    #[serde(default)]
    pub observations: u64,
    /// The prior from the root Policy's `talm.dev/expected-duration` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<String>,
    /// Median time to compliance of one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<String>,
    /// 90th percentile time to compliance of one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90: Option<String>,
    /// The observations as a log-scale histogram: `bin:count` pairs, bin `i` holding durations
    /// from 10 s × 1.15^i to 10 s × 1.15^(i+1) (bin 0 also everything shorter).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub histogram: String,
}

/// talm extension: the forecast of one remaining batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchForecast {
    /// 1-based batch index.
    pub batch: i32,
    /// Expected start (after any wait for a maintenance window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    /// Expected end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    /// End by which the batch is 90% likely to be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_p90: Option<Time>,
    /// The batch's predicted duration, 90th percentile: what the window-fit rule uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p90: Option<String>,
    /// With maintenance windows: whether the batch fits in a whole window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits_window: Option<bool>,
    /// What the batch waits for before it can start, when it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<String>,
}

/// A managed policy that still needs work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPolicyForUpgrade {
    /// Root policy name.
    pub name: String,
    /// Root policy namespace.
    pub namespace: String,
}

/// A cluster's final outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// `complete` or `timedout`.
    pub state: String,
    /// For a timed-out cluster: the policy it was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_policy: Option<PolicyStatus>,
    /// For a timed-out ManifestWork rollout: the work it was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_manifest_work: Option<ManifestWorkStatus>,
}

/// A policy and its compliance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Policy name.
    pub name: String,
    /// Compliance, e.g. `NonCompliant`.
    pub status: String,
}

/// A ManifestWork and its status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkStatus {
    /// ManifestWork name.
    pub name: String,
    /// Trimmed manifest conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Rollout timing and the current batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// When the CGU was enabled (the global timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the CGU ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// 1-based current batch; 0 or absent before start and after completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch: Option<i32>,
    /// When the current batch started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch_started_at: Option<Time>,
    /// Per-cluster progress in the current batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch_remediation_progress: Option<BTreeMap<String, ClusterRemediationProgress>>,
    /// talm extension: total seconds of closed intervals that do not count against the
    /// global and batch timeouts: pauses, alert holds and waits for a maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_seconds: Option<i64>,
    /// talm extension: start of the current pause or alert hold, while one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Time>,
    /// talm extension: the excluded seconds (closed and open intervals) as they stood when the
    /// current batch started, so the batch timeout is extended only by what accrued during the
    /// batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_start_excluded_seconds: Option<i64>,
    /// talm extension: since when the CGU has been waiting for a maintenance window to open
    /// (absent when it is not waiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_window_since: Option<Time>,
}

/// A cluster's progress in the current batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRemediationProgress {
    /// `NotStarted`, `InProgress` or `Completed`.
    pub state: String,
    /// Index into `managedPoliciesForUpgrade`; cleared when `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_index: Option<i32>,
    /// Index into `manifestWorkTemplates`; cleared when `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_work_index: Option<i32>,
    /// When the current policy was first seen compliant (soak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_compliant_at: Option<Time>,
    /// talm extension: when the cluster was released into its current policy's Placement (the
    /// forecast learns the time from here until it moves past the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
}

/// The resolved pre-cache spec, shared with the agents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrecachingSpec {
    /// OpenShift release image (always written, `""` when none, as TALM's Go type has no
    /// `omitempty` here).
    #[serde(default)]
    pub platform_image: String,
    /// OLM index images (always written, `[]` when none).
    #[serde(default)]
    pub operators_indexes: Vec<String>,
    /// `package:channel` entries (always written, `[]` when none).
    #[serde(default)]
    pub operators_packages_and_channels: Vec<String>,
    /// Regular expressions; matching release images are not pre-cached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_precache_patterns: Vec<String>,
    /// Space needed, as a GiB integer string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub space_required: String,
    /// Extra images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_images: Vec<String>,
}

/// Pre-caching spec and per-cluster states.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrecachingStatus {
    /// The resolved spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PrecachingSpec>,
    /// Cluster to pre-cache state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BTreeMap<String, String>>,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Cluster to transfer progress and ETA, for clusters whose pre-cache has not finished
    /// (talm extension, issue 17; absent when no agent has reported progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BTreeMap<String, ClusterPrecacheProgress>>,
}

/// One cluster's pre-cache progress in the CGU status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPrecacheProgress {
    /// Bytes done.
    #[serde(default)]
    pub bytes_done: i64,
    /// Bytes in all (0: not known yet).
    #[serde(default)]
    pub bytes_total: i64,
    /// Measured throughput, bytes/s.
    #[serde(default)]
    pub bytes_per_second: i64,
    /// Waiting for a PrecacheBudget to let it in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// The scheduler's cap for the node, bytes/s, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_bytes_per_second: Option<i64>,
    /// When the pre-cache is expected to finish (absent: not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Time>,
}

/// Backup start time and per-cluster states.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When backups were first assigned (the 1,200 s hub guard counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Cluster to backup state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BTreeMap<String, String>>,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
}

super::plain_root!(
    /// A ClusterGroupUpgrade object.
    ClusterGroupUpgrade,
    ClusterGroupUpgradeSpec,
    ClusterGroupUpgradeStatus,
    "ran.openshift.io/v1alpha1",
    "ClusterGroupUpgrade"
);
