//! Typed views of the RHACM (open-cluster-management) objects the hub reads and writes:
//! ManagedCluster, Policy (root and child), Placement, PlacementBinding, ManagedClusterView,
//! ManagedClusterAction, and the `cluster-group-upgrade-overrides` ConfigMap keys.
//!
//! Views keep only what talm uses and ignore every other field, so they read objects of any
//! RHACM version. Objects talm creates (Placement, PlacementBinding) are complete.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LabelSelector, ObjectMeta, Time, view_resource};

/// Label that marks a child (replicated) policy; its value is `<parentNs>.<parentName>`.
pub const ROOT_POLICY_LABEL: &str = "policy.open-cluster-management.io/root-policy";
/// The ManagedCluster condition type that says the cluster is reachable.
pub const CONDITION_AVAILABLE: &str = "ManagedClusterConditionAvailable";
/// Name of the deprecated overrides ConfigMap in the CGU namespace.
pub const OVERRIDES_CONFIGMAP: &str = "cluster-group-upgrade-overrides";

/// A condition as RHACM objects carry it; every field is optional when reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewCondition {
    /// Condition type.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

fn mc_api_version() -> String {
    ManagedCluster::API_VERSION.into()
}
fn mc_kind() -> String {
    ManagedCluster::KIND.into()
}

/// `cluster.open-cluster-management.io/v1` ManagedCluster (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCluster {
    /// Always `cluster.open-cluster-management.io/v1`.
    #[serde(default = "mc_api_version")]
    pub api_version: String,
    /// Always `ManagedCluster`.
    #[serde(default = "mc_kind")]
    pub kind: String,
    /// Metadata: name, labels and annotations are what talm uses.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, carried opaquely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// Status conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ManagedClusterStatus>,
}

impl ManagedCluster {
    /// `apiVersion` of ManagedCluster.
    pub const API_VERSION: &'static str = "cluster.open-cluster-management.io/v1";
    /// `kind` of ManagedCluster.
    pub const KIND: &'static str = "ManagedCluster";

    /// True when the `ManagedClusterConditionAvailable` condition is `True`.
    pub fn is_available(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_AVAILABLE && c.status == "True")
        })
    }

    /// True when the cluster reports `ManagedClusterConditionAvailable` and it is not `True`
    /// (`False` or `Unknown`). A cluster without that condition at all is not known to be
    /// unavailable (TALM starts its backup and lets the task's own timeout decide).
    pub fn is_known_unavailable(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_AVAILABLE && c.status != "True")
        })
    }
}
view_resource!(
    ManagedCluster,
    "cluster.open-cluster-management.io",
    "v1",
    "ManagedCluster",
    "managedclusters",
    ClusterResourceScope
);

/// ManagedCluster status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterStatus {
    /// Conditions, among them `ManagedClusterConditionAvailable`.
    #[serde(default)]
    pub conditions: Vec<ViewCondition>,
}

fn policy_api_version() -> String {
    Policy::API_VERSION.into()
}
fn policy_kind() -> String {
    Policy::KIND.into()
}

/// `policy.open-cluster-management.io/v1` Policy, root or child (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Always `policy.open-cluster-management.io/v1`.
    #[serde(default = "policy_api_version")]
    pub api_version: String,
    /// Always `Policy`.
    #[serde(default = "policy_kind")]
    pub kind: String,
    /// Metadata: child policies carry the root-policy label; annotations hold soak and wave.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy spec.
    #[serde(default)]
    pub spec: PolicySpec,
    /// Per-cluster compliance (root policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatus>,
}

impl Policy {
    /// `apiVersion` of Policy.
    pub const API_VERSION: &'static str = "policy.open-cluster-management.io/v1";
    /// `kind` of Policy.
    pub const KIND: &'static str = "Policy";
}
view_resource!(
    Policy,
    "policy.open-cluster-management.io",
    "v1",
    "Policy",
    "policies",
    NamespaceResourceScope
);

/// Policy spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// `inform` or `enforce` (case-insensitive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remediation_action: String,
    /// Whether the policy is disabled.
    #[serde(default)]
    pub disabled: bool,
    /// The policy templates (ConfigurationPolicies and others), opaque.
    #[serde(default, rename = "policy-templates")]
    pub policy_templates: Vec<PolicyTemplate>,
    /// Policies that must be compliant first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<PolicyDependency>,
}

/// One entry of `spec.policy-templates`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTemplate {
    /// The template object, e.g. a ConfigurationPolicy with `object-templates` or
    /// `object-templates-raw`.
    #[serde(default)]
    pub object_definition: serde_json::Value,
}

/// One entry of `spec.dependencies`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDependency {
    /// Name of the policy depended on.
    #[serde(default)]
    pub name: String,
    /// Its namespace (defaults to the dependent policy's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Usually `Policy`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The compliance state required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compliance: String,
}

/// Policy status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Aggregate compliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant: Option<String>,
    /// Per-cluster compliance; absent means every cluster is NonCompliant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<ClusterCompliance>>,
}

/// One cluster's compliance with a root policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterCompliance {
    /// Cluster name.
    #[serde(default)]
    pub clustername: String,
    /// Cluster namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub clusternamespace: String,
    /// `Compliant`, `NonCompliant` or `Pending`; absent counts as NonCompliant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant: Option<String>,
}

fn placement_api_version() -> String {
    Placement::API_VERSION.into()
}
fn placement_kind() -> String {
    Placement::KIND.into()
}

/// `cluster.open-cluster-management.io/v1beta1` Placement (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Always `cluster.open-cluster-management.io/v1beta1`.
    #[serde(default = "placement_api_version")]
    pub api_version: String,
    /// Always `Placement`.
    #[serde(default = "placement_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Which clusters the placement selects.
    #[serde(default)]
    pub spec: PlacementSpec,
    /// Scheduling status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PlacementStatus>,
}

impl Placement {
    /// `apiVersion` of Placement.
    pub const API_VERSION: &'static str = "cluster.open-cluster-management.io/v1beta1";
    /// `kind` of Placement.
    pub const KIND: &'static str = "Placement";

    /// The cluster names of the first `name In (...)` expression talm maintains.
    pub fn selected_names(&self) -> &[String] {
        self.spec
            .predicates
            .first()
            .and_then(|p| {
                p.required_cluster_selector
                    .label_selector
                    .match_expressions
                    .as_ref()
            })
            .and_then(|e| e.iter().find(|e| e.key == "name" && e.operator == "In"))
            .and_then(|e| e.values.as_deref())
            .unwrap_or(&[])
    }
}
view_resource!(
    Placement,
    "cluster.open-cluster-management.io",
    "v1beta1",
    "Placement",
    "placements",
    NamespaceResourceScope
);

/// Placement spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Cluster predicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predicates: Vec<ClusterPredicate>,
    /// Taint tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// A Placement predicate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPredicate {
    /// The selector.
    #[serde(default)]
    pub required_cluster_selector: ClusterSelector,
}

/// A Placement cluster selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSelector {
    /// Label selector on ManagedClusters.
    #[serde(default)]
    pub label_selector: LabelSelector,
}

/// A Placement toleration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key.
    #[serde(default)]
    pub key: String,
    /// `Exists` or `Equal`.
    #[serde(default)]
    pub operator: String,
}

/// Placement status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// Conditions, among them `PlacementSatisfied`.
    #[serde(default)]
    pub conditions: Vec<ViewCondition>,
}

fn binding_api_version() -> String {
    PlacementBinding::API_VERSION.into()
}
fn binding_kind() -> String {
    PlacementBinding::KIND.into()
}

/// `policy.open-cluster-management.io/v1` PlacementBinding (namespaced; no spec, fields at
/// the top level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementBinding {
    /// Always `policy.open-cluster-management.io/v1`.
    #[serde(default = "binding_api_version")]
    pub api_version: String,
    /// Always `PlacementBinding`.
    #[serde(default = "binding_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The Placement this binding uses.
    #[serde(default)]
    pub placement_ref: PlacementSubject,
    /// The policies bound.
    #[serde(default)]
    pub subjects: Vec<PlacementSubject>,
    /// `restricted` limits the binding to clusters the policy already selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<String>,
    /// Overrides applied through this binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_overrides: Option<BindingOverrides>,
}

impl PlacementBinding {
    /// `apiVersion` of PlacementBinding.
    pub const API_VERSION: &'static str = "policy.open-cluster-management.io/v1";
    /// `kind` of PlacementBinding.
    pub const KIND: &'static str = "PlacementBinding";
}
view_resource!(
    PlacementBinding,
    "policy.open-cluster-management.io",
    "v1",
    "PlacementBinding",
    "placementbindings",
    NamespaceResourceScope
);

/// A reference in a PlacementBinding (placementRef or subject).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSubject {
    /// API group.
    #[serde(default)]
    pub api_group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// PlacementBinding overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingOverrides {
    /// `enforce` turns the bound inform policies into enforce for the selected clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_action: Option<String>,
}

/// Keys of the deprecated `cluster-group-upgrade-overrides` ConfigMap (newline-separated lists).
pub mod overrides_keys {
    /// Honoured when the PreCachingConfig field is empty.
    pub const PACKAGES_AND_CHANNELS: &str = "operators.packagesAndChannels";
    /// Honoured when the PreCachingConfig field is empty.
    pub const EXCLUDE_PATTERNS: &str = "excludePrecachePatterns";
    /// Honoured when the PreCachingConfig field is empty.
    pub const SPACE_REQUIRED: &str = "precache.spaceRequired";
    /// Ignored (deprecated).
    pub const PLATFORM_IMAGE: &str = "platform.image";
    /// Ignored (deprecated).
    pub const INDEXES: &str = "operators.indexes";
    /// Ignored (deprecated).
    pub const PRECACHE_IMAGE: &str = "precache.image";
}

/// A ConfigMap reduced to what talm reads: its metadata and string data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapView {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// String data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

fn mcv_api_version() -> String {
    ManagedClusterView::API_VERSION.into()
}
fn mcv_kind() -> String {
    ManagedClusterView::KIND.into()
}

/// `view.open-cluster-management.io/v1beta1` ManagedClusterView (in a cluster namespace): a
/// read of one object on the spoke, copied into `status.result`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterView {
    /// Always `view.open-cluster-management.io/v1beta1`.
    #[serde(default = "mcv_api_version")]
    pub api_version: String,
    /// Always `ManagedClusterView`.
    #[serde(default = "mcv_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to read.
    #[serde(default)]
    pub spec: ManagedClusterViewSpec,
    /// The read result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ManagedClusterViewStatus>,
}

impl ManagedClusterView {
    /// `apiVersion` of ManagedClusterView.
    pub const API_VERSION: &'static str = "view.open-cluster-management.io/v1beta1";
    /// `kind` of ManagedClusterView.
    pub const KIND: &'static str = "ManagedClusterView";

    /// The viewed object, once the view reports condition `Processing=True` with reason
    /// `GetResourceProcessing`.
    pub fn result(&self) -> Option<&serde_json::Value> {
        let s = self.status.as_ref()?;
        let ready = s.conditions.iter().any(|c| {
            c.type_ == "Processing" && c.status == "True" && c.reason == "GetResourceProcessing"
        });
        ready.then_some(s.result.as_ref()).flatten()
    }
}
view_resource!(
    ManagedClusterView,
    "view.open-cluster-management.io",
    "v1beta1",
    "ManagedClusterView",
    "managedclusterviews",
    NamespaceResourceScope
);

/// ManagedClusterView spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterViewSpec {
    /// The object viewed.
    #[serde(default)]
    pub scope: ViewScope,
}

/// The object a ManagedClusterView reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewScope {
    /// `<Kind>.<group>` or a plural resource, e.g. `Subscription.operators.coreos.com`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// ManagedClusterView status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterViewStatus {
    /// Conditions, among them `Processing`.
    #[serde(default)]
    pub conditions: Vec<ViewCondition>,
    /// The viewed object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

fn mca_api_version() -> String {
    ManagedClusterAction::API_VERSION.into()
}
fn mca_kind() -> String {
    ManagedClusterAction::KIND.into()
}

/// `action.open-cluster-management.io/v1beta1` ManagedClusterAction (in a cluster namespace):
/// a one-shot write on the spoke; it deletes itself once executed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterAction {
    /// Always `action.open-cluster-management.io/v1beta1`.
    #[serde(default = "mca_api_version")]
    pub api_version: String,
    /// Always `ManagedClusterAction`.
    #[serde(default = "mca_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The action.
    #[serde(default)]
    pub spec: ManagedClusterActionSpec,
}

impl ManagedClusterAction {
    /// `apiVersion` of ManagedClusterAction.
    pub const API_VERSION: &'static str = "action.open-cluster-management.io/v1beta1";
    /// `kind` of ManagedClusterAction.
    pub const KIND: &'static str = "ManagedClusterAction";
}
view_resource!(
    ManagedClusterAction,
    "action.open-cluster-management.io",
    "v1beta1",
    "ManagedClusterAction",
    "managedclusteractions",
    NamespaceResourceScope
);

/// ManagedClusterAction spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterActionSpec {
    /// `Create`, `Update` or `Delete`.
    #[serde(default)]
    pub action_type: String,
    /// The Kubernetes object to act on.
    #[serde(default)]
    pub kube: KubeWorkSpec,
}

/// The object of a ManagedClusterAction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeWorkSpec {
    /// Resource, e.g. `installplan`.
    #[serde(default)]
    pub resource: String,
    /// Namespace on the spoke.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The object to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
}

#[cfg(test)]
mod availability_tests {
    use super::*;

    fn mc(conditions: serde_json::Value) -> ManagedCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": "c"}, "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn an_absent_available_condition_is_not_known_unavailable() {
        let cond = |s: &str| serde_json::json!([{"type": CONDITION_AVAILABLE, "status": s}]);
        assert!(!mc(serde_json::json!([])).is_known_unavailable());
        assert!(!mc(serde_json::json!([])).is_available());
        assert!(mc(cond("False")).is_known_unavailable());
        assert!(mc(cond("Unknown")).is_known_unavailable());
        assert!(!mc(cond("True")).is_known_unavailable());
        assert!(mc(cond("True")).is_available());
    }
}
