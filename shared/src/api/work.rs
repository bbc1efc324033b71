//! Typed views of the Open Cluster Management work objects of a ManifestWork rollout
//! (docs/contract.md §3.13): `ManifestWorkReplicaSet` (`work.open-cluster-management.io/v1alpha1`),
//! the template a CGU names in `spec.manifestWorkTemplates`, and `ManifestWork`
//! (`work.open-cluster-management.io/v1`), which talm creates from it in a cluster namespace.
//!
//! The spec of a template's `manifestWorkTemplate` is carried as JSON, untouched: talm copies it
//! into the ManifestWork it creates, whatever fields the OCM version has. Only the status fields
//! the completion check reads are typed.

use serde::{Deserialize, Serialize};

use super::rhacm::ViewCondition;
use super::{ObjectMeta, view_resource};

/// Annotation of a template (copied onto its ManifestWorks): JSON `[{manifestIndex, name,
/// value}]`, the status-feedback values that must be reached for the work to be complete.
pub const EXPECTED_VALUES_ANNOTATION: &str = "openshift-cluster-group-upgrades/expectedValues";

fn mwrs_api_version() -> String {
    ManifestWorkReplicaSet::API_VERSION.into()
}
fn mwrs_kind() -> String {
    ManifestWorkReplicaSet::KIND.into()
}

/// `work.open-cluster-management.io/v1alpha1` ManifestWorkReplicaSet: used by talm only as a
/// template (its `spec.manifestWorkTemplate`); its placements are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkReplicaSet {
    /// Always `work.open-cluster-management.io/v1alpha1`.
    #[serde(default = "mwrs_api_version")]
    pub api_version: String,
    /// Always `ManifestWorkReplicaSet`.
    #[serde(default = "mwrs_kind")]
    pub kind: String,
    /// Metadata; the annotations may carry [`EXPECTED_VALUES_ANNOTATION`].
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec; only `manifestWorkTemplate` is read.
    #[serde(default)]
    pub spec: ManifestWorkReplicaSetSpec,
}

impl ManifestWorkReplicaSet {
    /// `apiVersion` of ManifestWorkReplicaSet.
    pub const API_VERSION: &'static str = "work.open-cluster-management.io/v1alpha1";
    /// `kind` of ManifestWorkReplicaSet.
    pub const KIND: &'static str = "ManifestWorkReplicaSet";
}
view_resource!(
    ManifestWorkReplicaSet,
    "work.open-cluster-management.io",
    "v1alpha1",
    "ManifestWorkReplicaSet",
    "manifestworkreplicasets",
    NamespaceResourceScope
);

/// ManifestWorkReplicaSet spec, as far as talm reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkReplicaSetSpec {
    /// The ManifestWork spec to create on each cluster (a `ManifestWorkSpec`, kept as JSON).
    #[serde(default)]
    pub manifest_work_template: serde_json::Value,
}

fn mw_api_version() -> String {
    ManifestWork::API_VERSION.into()
}
fn mw_kind() -> String {
    ManifestWork::KIND.into()
}

/// `work.open-cluster-management.io/v1` ManifestWork (in a cluster namespace).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWork {
    /// Always `work.open-cluster-management.io/v1`.
    #[serde(default = "mw_api_version")]
    pub api_version: String,
    /// Always `ManifestWork`.
    #[serde(default = "mw_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec (`workload.manifests`, `deleteOption`, `manifestConfigs`, ...), kept as JSON.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// What the work agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ManifestWorkStatus>,
}

impl ManifestWork {
    /// `apiVersion` of ManifestWork.
    pub const API_VERSION: &'static str = "work.open-cluster-management.io/v1";
    /// `kind` of ManifestWork.
    pub const KIND: &'static str = "ManifestWork";
}
view_resource!(
    ManifestWork,
    "work.open-cluster-management.io",
    "v1",
    "ManifestWork",
    "manifestworks",
    NamespaceResourceScope
);

/// ManifestWork status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkStatus {
    /// Work conditions (`Applied`, `Available`, `Progressing`, `Degraded`).
    #[serde(default)]
    pub conditions: Vec<ViewCondition>,
    /// Per-manifest status.
    #[serde(default)]
    pub resource_status: ManifestResourceStatus,
}

/// The status of each manifest of a ManifestWork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestResourceStatus {
    /// One entry per manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ManifestCondition>,
}

/// The status of one manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestCondition {
    /// Which object of `spec.workload.manifests` this is.
    #[serde(default)]
    pub resource_meta: ManifestResourceMeta,
    /// Status feedback values read from the applied object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_feedback: Option<StatusFeedbackResult>,
    /// `Applied`, `Available`, `StatusFeedbackSynced`, ...
    #[serde(default)]
    pub conditions: Vec<ViewCondition>,
}

/// Identifies a manifest of a ManifestWork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestResourceMeta {
    /// Index of the manifest in `spec.workload.manifests`.
    #[serde(default)]
    pub ordinal: i32,
    /// API group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// API version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Plural resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The status feedback of one manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusFeedbackResult {
    /// Named values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<FeedbackValue>,
}

/// One named status feedback value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackValue {
    /// The rule's name.
    #[serde(default)]
    pub name: String,
    /// The value read.
    #[serde(default)]
    pub field_value: FieldValue,
}

/// A status feedback value: `type` says which of the other fields is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldValue {
    /// `Integer`, `String`, `Boolean` or `JsonRaw`.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// An integer value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
    /// A string value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// A boolean value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,
    /// A raw JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_raw: Option<String>,
}

impl FieldValue {
    /// The value as text (integers in decimal, booleans `true`/`false` as Go formats them),
    /// or `None` when the field that `type` names is not set.
    pub fn as_text(&self) -> Option<String> {
        match self.type_.as_str() {
            "Integer" => self.integer.map(|i| i.to_string()),
            "String" => self.string.clone(),
            "Boolean" => self.boolean.map(|b| b.to_string()),
            "JsonRaw" => self.json_raw.clone(),
            _ => None,
        }
    }
}

/// One entry of [`EXPECTED_VALUES_ANNOTATION`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedValue {
    /// Index of the manifest (its `resourceMeta.ordinal`).
    pub manifest_index: i32,
    /// Name of the status feedback value.
    pub name: String,
    /// The value it must have.
    pub value: String,
}
