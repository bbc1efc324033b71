//! `PrecacheBudget` (`talm.dev/v1alpha1`, cluster-scoped): a fleet operator's limit on
//! pre-caching (talm extension, issue 17; docs/contract.md §4.4).
//!
//! A budget selects ManagedClusters by label (`spec.clusterSelector`; absent selects every
//! cluster) and limits them together: `bandwidth` is shared by all selected clusters that are
//! downloading, `maxConcurrentClusters` caps how many download at once. `spec.registries`
//! limits, per mirror registry host, the selected clusters whose images come from that host
//! (after mirror resolution, as the agents report it). A cluster under several budgets obeys
//! every one. The hub's pre-cache scheduler (`talm_hub_core::schedule`) admits clusters in
//! rollout order and divides each budget's bandwidth among its active clusters; it writes the
//! status. Without any budget, pre-caching starts on every cluster at once, as in TALM.

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector};

/// `apiVersion` of PrecacheBudget.
pub const API_VERSION: &str = "talm.dev/v1alpha1";
/// `kind` of PrecacheBudget.
pub const KIND: &str = "PrecacheBudget";

/// A pre-cache budget.
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[cfg_attr(
    feature = "kube",
    derive(CustomResource),
    kube(
        group = "talm.dev",
        version = "v1alpha1",
        kind = "PrecacheBudget",
        status = "PrecacheBudgetStatus",
        derive = "PartialEq",
        crates(kube_core = "::kube_core"),
        printcolumn(name = "Bandwidth", type_ = "string", json_path = ".spec.bandwidth"),
        printcolumn(name = "Active", type_ = "integer", json_path = ".status.active"),
        printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queued"),
        printcolumn(name = "Done", type_ = "integer", json_path = ".status.done"),
        printcolumn(
            name = "In Use",
            type_ = "string",
            json_path = ".status.bandwidthInUseDisplay"
        ),
        printcolumn(
            name = "Valid",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Valid\")].status"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrecacheBudgetSpec {
    /// The ManagedClusters this budget applies to (by label, e.g. a site or region label).
    /// Absent: every cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Bytes per second shared by all selected clusters that are downloading, in quantity
    /// syntax (`25Mi`, `200M`, `1500000`). Absent: no bandwidth limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<String>,
    /// At most this many selected clusters download at once. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_clusters: Option<i64>,
    /// Limits per mirror registry, for the selected clusters whose images come from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistryBudget>,
}

/// A limit on one registry host (as images name it after mirror resolution: `host[:port]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryBudget {
    /// Registry host, with the port when the images name one (`mirror.example.com:5000`).
    pub host: String,
    /// At most this many clusters download from this registry at once. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_clusters: Option<i64>,
    /// Bytes per second shared by the clusters downloading from this registry (quantity
    /// syntax). Absent: no bandwidth limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<String>,
}

/// What the scheduler sees of the budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrecacheBudgetStatus {
    /// The `metadata.generation` this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (the spec parses), `ClustersSelected` (the selector matches some cluster) and
    /// `RegistriesSeen` (every listed registry is one some agent pulls from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Selected clusters downloading now.
    #[serde(default)]
    pub active: i64,
    /// Selected clusters with a pre-cache task waiting to be let in.
    #[serde(default)]
    pub queued: i64,
    /// Selected clusters whose pre-cache task has finished (any final state).
    #[serde(default)]
    pub done: i64,
    /// Sum of the caps given to the active clusters, bytes/s.
    #[serde(default)]
    pub bandwidth_allotted: i64,
    /// Sum of the throughput the active clusters report, bytes/s.
    #[serde(default)]
    pub bandwidth_in_use: i64,
    /// `bandwidthInUse` for people (`12.5Mi/s`), for the printer column.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bandwidth_in_use_display: String,
    /// Per registry entry of the spec, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistryBudgetStatus>,
}

/// One registry entry's use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryBudgetStatus {
    /// The registry host.
    pub host: String,
    /// Clusters downloading from it now.
    #[serde(default)]
    pub active: i64,
    /// Clusters waiting for it.
    #[serde(default)]
    pub queued: i64,
    /// Sum of the caps given to its active clusters, bytes/s.
    #[serde(default)]
    pub bandwidth_allotted: i64,
    /// Sum of the throughput its active clusters report, bytes/s.
    #[serde(default)]
    pub bandwidth_in_use: i64,
}

super::plain_root!(
    /// A PrecacheBudget object.
    PrecacheBudget,
    PrecacheBudgetSpec,
    PrecacheBudgetStatus,
    "talm.dev/v1alpha1",
    "PrecacheBudget"
);
