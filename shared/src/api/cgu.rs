//! `ClusterGroupUpgrade` (`ran.openshift.io/v1alpha1`, short name `cgu`): the TALM rollout
//! object, field for field (docs/contract.md §2.1 and §2.2), including deprecated fields.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector, Time, is_none_or_empty};

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
    /// talm extension: automatic rollback of a failed upgrade on the node. Valid only with
    /// `backup: true`. When `automatic` is true, each cluster whose backup succeeded gets a
    /// rollback watchdog armed as it is released into its first policy: the node's agent
    /// recovers it from that backup if it is not healthy within `healthTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
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
