//! The engine's input: an indexed, read-only snapshot of the hub objects a reconcile needs.
//!
//! The snapshot indexes what the engine looks up per cluster (root-policy compliance by cluster,
//! child policies by cluster namespace), so a reconcile costs O(clusters in play), not O(all
//! objects × clusters). The operator keeps one from its reflector stores; `talm-hub plan` builds
//! one from files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use talm_shared::api::ObjectMeta;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precaching::PreCachingConfigSpec;
use talm_shared::api::rhacm::{
    ClusterCompliance, ConfigMapView, ManagedCluster, ManagedClusterView, Placement,
    PlacementBinding, Policy, PolicySpec, PolicyStatus, ROOT_POLICY_LABEL,
};
use talm_shared::api::spokeagent::SpokeAgent;

/// Label TALM put on legacy policy copies; such policies are never treated as children.
pub const CGU_LABEL: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";

/// A cluster's compliance with one root policy (talm-behaviour.md §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compliance {
    /// `Compliant`.
    Compliant,
    /// `NonCompliant`, `Pending`, a missing `compliant` field, or a policy without status.
    NonCompliant,
    /// The cluster is absent from the policy's `status.status`.
    NotMatched,
}

impl Compliance {
    /// TALM's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Compliant => "Compliant",
            Compliance::NonCompliant => "NonCompliant",
            Compliance::NotMatched => "NotMatchedWithPolicy",
        }
    }
}

/// A Policy as the snapshot reads it: metadata, spec, the aggregate compliance and the
/// per-cluster compliance as compact `(cluster, compliance)` entries.
///
/// The operator deserializes its Policy watch events straight into this type: a root policy's
/// `status.status` holds one entry per cluster (10,000 at fleet scale), and this form skips
/// every other field of an entry (`clusternamespace`) and of the status (`details`, ...) and
/// keeps the compliance as an enum instead of a string.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PolicyView {
    /// Metadata: child policies carry the root-policy label; annotations hold soak and wave.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy spec.
    #[serde(default)]
    pub spec: PolicySpec,
    /// The aggregate and per-cluster compliance.
    #[serde(default)]
    pub status: Option<PolicyViewStatus>,
}

/// [`PolicyView`]'s status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PolicyViewStatus {
    /// Aggregate compliance.
    #[serde(default)]
    pub compliant: Option<String>,
    /// Per-cluster compliance; absent means every cluster is NonCompliant.
    #[serde(default)]
    pub status: Option<Vec<ClusterEntry>>,
}

/// One `status.status` entry of a root policy: the cluster and whether it is Compliant.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "RawEntry")]
pub struct ClusterEntry {
    /// `clustername`.
    pub cluster: String,
    /// [`Compliance::Compliant`] for `compliant: Compliant`, else
    /// [`Compliance::NonCompliant`].
    pub compliance: Compliance,
}

/// The wire form of [`ClusterEntry`]; unknown fields are skipped without being built.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    clustername: String,
    #[serde(default)]
    compliant: Option<IsCompliant>,
}

impl From<RawEntry> for ClusterEntry {
    fn from(e: RawEntry) -> Self {
        ClusterEntry {
            cluster: e.clustername,
            compliance: match e.compliant {
                Some(IsCompliant(true)) => Compliance::Compliant,
                _ => Compliance::NonCompliant,
            },
        }
    }
}

/// Whether a `compliant` string is `Compliant`, read without allocating.
struct IsCompliant(bool);

impl<'de> Deserialize<'de> for IsCompliant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsCompliant;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a compliance string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsCompliant, E> {
                Ok(IsCompliant(v == "Compliant"))
            }
        }
        d.deserialize_str(V)
    }
}

impl From<&ClusterCompliance> for ClusterEntry {
    fn from(e: &ClusterCompliance) -> Self {
        ClusterEntry {
            cluster: e.clustername.clone(),
            compliance: compliance_of(e),
        }
    }
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        PolicyView {
            metadata: p.metadata,
            spec: p.spec,
            status: p.status.map(|s| PolicyViewStatus {
                compliant: s.compliant,
                status: s
                    .status
                    .map(|entries| entries.iter().map(ClusterEntry::from).collect()),
            }),
        }
    }
}

/// A root policy with its per-cluster compliance indexed.
#[derive(Clone, Debug)]
pub struct RootPolicy {
    /// The policy, without its per-cluster `status.status` (that is [`Self::compliance`]'s
    /// index: at 10,000 clusters the list is most of the object).
    pub policy: Policy,
    /// `None` when the policy has no `status.status`: every cluster is NonCompliant.
    compliance: Option<HashMap<String, Compliance>>,
}

fn compliance_of(e: &ClusterCompliance) -> Compliance {
    match e.compliant.as_deref() {
        Some("Compliant") => Compliance::Compliant,
        _ => Compliance::NonCompliant,
    }
}

/// Splits a policy view into the stored policy (without `status.status`) and its entries.
fn split(view: PolicyView) -> (Policy, Option<Vec<ClusterEntry>>) {
    let (compliant, entries) = match view.status {
        Some(s) => (Some(s.compliant), s.status),
        None => (None, None),
    };
    let policy = Policy {
        api_version: Policy::API_VERSION.to_string(),
        kind: Policy::KIND.to_string(),
        metadata: view.metadata,
        spec: view.spec,
        status: compliant.map(|compliant| PolicyStatus {
            compliant,
            status: None,
        }),
    };
    (policy, entries)
}

fn index(entries: Vec<ClusterEntry>) -> HashMap<String, Compliance> {
    entries
        .into_iter()
        .map(|e| (e.cluster, e.compliance))
        .collect()
}

impl RootPolicy {
    fn new(view: PolicyView) -> Self {
        let (policy, entries) = split(view);
        RootPolicy {
            policy,
            compliance: entries.map(index),
        }
    }

    /// The cluster's compliance with this policy.
    pub fn compliance(&self, cluster: &str) -> Compliance {
        match &self.compliance {
            None => Compliance::NonCompliant,
            Some(m) => m.get(cluster).copied().unwrap_or(Compliance::NotMatched),
        }
    }

    /// Replaces the policy with a newer version in place and says which clusters' compliance
    /// changed: `None` means "assume every cluster" (what the engine reads besides compliance
    /// changed, or the policy gained or lost its `status.status`). Existing entries are updated
    /// without allocating, so a status write that flips a few of 10,000 clusters costs a
    /// lookup per entry.
    fn update(&mut self, view: PolicyView) -> Option<HashSet<String>> {
        let (policy, entries) = split(view);
        let same_meta = self.policy.spec == policy.spec
            && self.policy.metadata.labels == policy.metadata.labels
            && self.policy.metadata.annotations == policy.metadata.annotations;
        self.policy = policy;
        let changed = match (&mut self.compliance, entries) {
            (None, None) => Some(HashSet::new()),
            (Some(map), Some(entries)) => Some(update_compliance(map, &entries)),
            (slot, entries) => {
                *slot = entries.map(index);
                None
            }
        };
        if same_meta { changed } else { None }
    }
}

/// Brings `map` to `entries` (last entry wins for a repeated cluster); returns the clusters
/// whose compliance changed, appeared or disappeared.
fn update_compliance(
    map: &mut HashMap<String, Compliance>,
    entries: &[ClusterEntry],
) -> HashSet<String> {
    let mut changed = HashSet::new();
    let mut seen = 0usize;
    for e in entries {
        let c = e.compliance;
        match map.get_mut(e.cluster.as_str()) {
            Some(v) => {
                seen += 1;
                if *v != c {
                    *v = c;
                    changed.insert(e.cluster.clone());
                }
            }
            None => {
                seen += 1;
                map.insert(e.cluster.clone(), c);
                changed.insert(e.cluster.clone());
            }
        }
    }
    // Every entry was counted once: more map keys than entries means some clusters left the
    // status (with repeated entries the counts differ too; the exact pass below is right
    // either way).
    if seen != map.len() {
        let present: HashSet<&str> = entries.iter().map(|e| e.cluster.as_str()).collect();
        map.retain(|k, _| {
            let keep = present.contains(k.as_str());
            if !keep {
                changed.insert(k.clone());
            }
            keep
        });
    }
    changed
}

/// What inserting or removing a policy changed, as far as the engine can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// A child policy appeared, changed what [`ChildPolicy`] holds, or went away.
    Child {
        /// The child's namespace (its cluster).
        cluster_namespace: String,
        /// Namespace of the root policy.
        parent_namespace: String,
        /// Name of the root policy.
        parent_name: String,
    },
    /// A root policy appeared, changed, or went away.
    Root {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The clusters whose compliance changed; `None` means every cluster (a new or
        /// removed policy, or a change of its spec, labels or annotations).
        clusters: Option<HashSet<String>>,
    },
}

/// A child (replicated) policy in a cluster namespace: only what the engine reads from it.
///
/// A hub holds one child per cluster and root policy (200,000 at 10,000 clusters × 20
/// policies), so the snapshot keeps these few derived fields, not the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildPolicy {
    /// Namespace of the root policy.
    pub parent_namespace: String,
    /// Name of the root policy.
    pub parent_name: String,
    /// The child's `remediationAction` is `enforce` (case-insensitive).
    pub enforce: bool,
    /// The child's templates still hold `{{hub` (the hub template failed to resolve).
    pub hub_template_error: bool,
    /// The ZTP deploy wave annotation ([`WAVE_ANNOTATION`](crate::ztp::WAVE_ANNOTATION)), as
    /// written.
    pub wave: Option<String>,
}

impl ChildPolicy {
    /// The child-policy view of `p` with its cluster namespace, or `None` when `p` is not a
    /// child: no root-policy label, a legacy TALM copy, or a name that is not
    /// `<parentNamespace>.<parentName>`.
    pub fn of(p: &Policy) -> Option<(String, ChildPolicy)> {
        Self::of_parts(&p.metadata, &p.spec)
    }

    /// [`Self::of`] from a policy's metadata and spec.
    pub fn of_parts(metadata: &ObjectMeta, spec: &PolicySpec) -> Option<(String, ChildPolicy)> {
        let labels = metadata.labels.as_ref()?;
        if labels.contains_key(CGU_LABEL) || !labels.contains_key(ROOT_POLICY_LABEL) {
            return None;
        }
        let name = metadata.name.as_deref().unwrap_or_default();
        // `<parentNs>.<parentName>`: namespaces cannot hold dots, names can.
        let (parent_ns, parent_name) = name.split_once('.')?;
        if parent_ns.is_empty() || parent_name.is_empty() {
            return None;
        }
        let child = ChildPolicy {
            parent_namespace: parent_ns.to_string(),
            parent_name: parent_name.to_string(),
            enforce: spec.remediation_action.eq_ignore_ascii_case("enforce"),
            hub_template_error: spec
                .policy_templates
                .iter()
                .any(|t| value_contains(&t.object_definition, "{{hub")),
            wave: metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::ztp::WAVE_ANNOTATION))
                .cloned(),
        };
        Some((metadata.namespace.clone().unwrap_or_default(), child))
    }

    /// The child policy's own name: `<parentNamespace>.<parentName>`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.parent_namespace, self.parent_name)
    }
}

fn value_contains(v: &serde_json::Value, needle: &str) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|x| value_contains(x, needle)),
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| k.contains(needle) || value_contains(x, needle)),
        _ => false,
    }
}

type Key = (String, String);

fn key(ns: Option<&String>, name: Option<&String>) -> Key {
    (
        ns.cloned().unwrap_or_default(),
        name.cloned().unwrap_or_default(),
    )
}

/// The hub objects one reconcile reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    clusters: HashMap<String, ManagedCluster>,
    /// namespace → name → root policy (nested so lookups need no allocation).
    roots: HashMap<String, HashMap<String, RootPolicy>>,
    /// cluster namespace → root-policy name → children (one per parent namespace).
    children: HashMap<String, HashMap<String, Vec<ChildPolicy>>>,
    placements: BTreeMap<Key, Placement>,
    bindings: BTreeMap<Key, PlacementBinding>,
    precaching_configs: HashMap<Key, PreCachingConfigSpec>,
    config_maps: HashMap<Key, ConfigMapView>,
    spoke_agents: HashMap<Key, SpokeAgent>,
    /// Shared, so a reconcile takes its CGU out of the snapshot without a deep copy.
    cgus: HashMap<Key, Arc<ClusterGroupUpgrade>>,
    /// talm's ManagedClusterViews, ordered so one cluster namespace is a range.
    views: BTreeMap<Key, ManagedClusterView>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a ManagedCluster.
    pub fn insert_managed_cluster(&mut self, mc: ManagedCluster) {
        let name = mc.metadata.name.clone().unwrap_or_default();
        self.clusters.insert(name, mc);
    }

    /// Adds (or replaces) a Policy: a child when it has the root-policy label, else a root.
    /// Legacy TALM policy copies are ignored. A policy that changed from child to root (or
    /// back) leaves its old place. Returns what changed for the engine (nothing, for a child
    /// whose status alone changed, or a root whose compliance entries are the same).
    pub fn insert_policy(&mut self, p: Policy) -> Vec<PolicyChange> {
        self.insert_policy_view(PolicyView::from(p))
    }

    /// [`Self::insert_policy`] for a policy read as a [`PolicyView`].
    pub fn insert_policy_view(&mut self, p: PolicyView) -> Vec<PolicyChange> {
        let labels = p.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(CGU_LABEL)) {
            return Vec::new();
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        if labels.is_some_and(|l| l.contains_key(ROOT_POLICY_LABEL)) {
            let mut changes: Vec<PolicyChange> = self.remove_root(&ns, &name).into_iter().collect();
            if let Some((ns, child)) = ChildPolicy::of_parts(&p.metadata, &p.spec) {
                let list = self
                    .children
                    .entry(ns.clone())
                    .or_default()
                    .entry(child.parent_name.clone())
                    .or_default();
                let old = list
                    .iter()
                    .position(|c| c.parent_namespace == child.parent_namespace);
                if let Some(i) = old {
                    if list[i] == child {
                        return changes;
                    }
                    list.remove(i);
                }
                changes.push(PolicyChange::Child {
                    cluster_namespace: ns,
                    parent_namespace: child.parent_namespace.clone(),
                    parent_name: child.parent_name.clone(),
                });
                list.push(child);
            }
            changes
        } else {
            let mut changes: Vec<PolicyChange> =
                self.remove_child(&ns, &name).into_iter().collect();
            let by_name = self.roots.entry(ns.clone()).or_default();
            let clusters = match by_name.get_mut(&name) {
                Some(old) => old.update(p),
                None => {
                    by_name.insert(name.clone(), RootPolicy::new(p));
                    None
                }
            };
            if clusters.as_ref().is_none_or(|c| !c.is_empty()) {
                changes.push(PolicyChange::Root {
                    namespace: ns,
                    name,
                    clusters,
                });
            }
            changes
        }
    }

    /// Adds (or replaces) a Placement.
    pub fn insert_placement(&mut self, p: Placement) {
        let k = key(p.metadata.namespace.as_ref(), p.metadata.name.as_ref());
        self.placements.insert(k, p);
    }

    /// Adds (or replaces) a PlacementBinding.
    pub fn insert_placement_binding(&mut self, b: PlacementBinding) {
        let k = key(b.metadata.namespace.as_ref(), b.metadata.name.as_ref());
        self.bindings.insert(k, b);
    }

    /// Adds (or replaces) a PreCachingConfig spec under its namespace and name.
    pub fn insert_precaching_config(
        &mut self,
        namespace: &str,
        name: &str,
        spec: PreCachingConfigSpec,
    ) {
        self.precaching_configs
            .insert((namespace.to_string(), name.to_string()), spec);
    }

    /// Adds (or replaces) a ConfigMap.
    pub fn insert_config_map(&mut self, cm: ConfigMapView) {
        let k = key(cm.metadata.namespace.as_ref(), cm.metadata.name.as_ref());
        self.config_maps.insert(k, cm);
    }

    /// Adds (or replaces) a SpokeAgent.
    pub fn insert_spoke_agent(&mut self, a: SpokeAgent) {
        let k = key(a.metadata.namespace.as_ref(), a.metadata.name.as_ref());
        self.spoke_agents.insert(k, a);
    }

    /// Adds (or replaces) a CGU (other CGUs are read for blocking).
    pub fn insert_cgu(&mut self, c: ClusterGroupUpgrade) {
        let k = key(c.metadata.namespace.as_ref(), c.metadata.name.as_ref());
        self.cgus.insert(k, Arc::new(c));
    }

    /// Adds (or replaces) a ManagedClusterView.
    pub fn insert_managed_cluster_view(&mut self, v: ManagedClusterView) {
        let k = key(v.metadata.namespace.as_ref(), v.metadata.name.as_ref());
        self.views.insert(k, v);
    }

    /// Removes a ManagedClusterView.
    pub fn remove_managed_cluster_view(&mut self, namespace: &str, name: &str) {
        self.views
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A ManagedClusterView by namespace and name.
    pub fn managed_cluster_view(&self, namespace: &str, name: &str) -> Option<&ManagedClusterView> {
        self.views.get(&(namespace.to_string(), name.to_string()))
    }

    /// The ManagedClusterViews of one cluster namespace, ordered by name.
    pub fn managed_cluster_views_in<'s>(
        &'s self,
        namespace: &'s str,
    ) -> impl Iterator<Item = &'s ManagedClusterView> + 's {
        self.views
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, v)| v)
    }

    /// Every ManagedClusterView, ordered by namespace and name.
    pub fn managed_cluster_views(&self) -> impl Iterator<Item = &ManagedClusterView> {
        self.views.values()
    }

    /// Removes a ManagedCluster.
    pub fn remove_managed_cluster(&mut self, name: &str) {
        self.clusters.remove(name);
    }

    /// Removes a Policy (root or child) by namespace and name; returns what that changed.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) -> Vec<PolicyChange> {
        self.remove_root(namespace, name)
            .into_iter()
            .chain(self.remove_child(namespace, name))
            .collect()
    }

    fn remove_root(&mut self, namespace: &str, name: &str) -> Option<PolicyChange> {
        let m = self.roots.get_mut(namespace)?;
        let gone = m.remove(name);
        if m.is_empty() {
            self.roots.remove(namespace);
        }
        gone.map(|_| PolicyChange::Root {
            namespace: namespace.to_string(),
            name: name.to_string(),
            clusters: None,
        })
    }

    fn remove_child(&mut self, namespace: &str, name: &str) -> Option<PolicyChange> {
        let (parent_ns, parent_name) = name.split_once('.')?;
        let by_parent = self.children.get_mut(namespace)?;
        let mut gone = false;
        if let Some(list) = by_parent.get_mut(parent_name) {
            let before = list.len();
            list.retain(|c| c.parent_namespace != parent_ns);
            gone = list.len() != before;
            if list.is_empty() {
                by_parent.remove(parent_name);
            }
        }
        if by_parent.is_empty() {
            self.children.remove(namespace);
        }
        gone.then(|| PolicyChange::Child {
            cluster_namespace: namespace.to_string(),
            parent_namespace: parent_ns.to_string(),
            parent_name: parent_name.to_string(),
        })
    }

    /// The child policy `namespace/name` as the snapshot holds it.
    pub fn child_policy(&self, namespace: &str, name: &str) -> Option<&ChildPolicy> {
        let (parent_ns, parent_name) = name.split_once('.')?;
        self.child_policies(namespace, parent_name)
            .iter()
            .find(|c| c.parent_namespace == parent_ns)
    }

    /// Removes a Placement.
    pub fn remove_placement(&mut self, namespace: &str, name: &str) {
        self.placements
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Removes a PlacementBinding.
    pub fn remove_placement_binding(&mut self, namespace: &str, name: &str) {
        self.bindings
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Removes a PreCachingConfig.
    pub fn remove_precaching_config(&mut self, namespace: &str, name: &str) {
        self.precaching_configs
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Removes a ConfigMap.
    pub fn remove_config_map(&mut self, namespace: &str, name: &str) {
        self.config_maps
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Removes a SpokeAgent.
    pub fn remove_spoke_agent(&mut self, namespace: &str, name: &str) {
        self.spoke_agents
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Removes a CGU.
    pub fn remove_cgu(&mut self, namespace: &str, name: &str) {
        self.cgus.remove(&(namespace.to_string(), name.to_string()));
    }

    /// Every CGU, in no particular order.
    pub fn cgus(&self) -> impl Iterator<Item = &ClusterGroupUpgrade> {
        self.cgus.values().map(|c| &**c)
    }

    /// A ManagedCluster by name.
    pub fn managed_cluster(&self, name: &str) -> Option<&ManagedCluster> {
        self.clusters.get(name)
    }

    /// Every ManagedCluster, in no particular order.
    pub fn managed_clusters(&self) -> impl Iterator<Item = &ManagedCluster> {
        self.clusters.values()
    }

    /// A root policy by namespace and name.
    pub fn root_policy(&self, namespace: &str, name: &str) -> Option<&RootPolicy> {
        self.roots.get(namespace)?.get(name)
    }

    /// The child policies of root policies named `parent_name` in a cluster namespace (one per
    /// parent namespace; more than one means the name is ambiguous).
    pub fn child_policies(&self, cluster_namespace: &str, parent_name: &str) -> &[ChildPolicy] {
        self.children
            .get(cluster_namespace)
            .and_then(|m| m.get(parent_name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every child policy in a cluster namespace.
    pub fn all_child_policies(
        &self,
        cluster_namespace: &str,
    ) -> impl Iterator<Item = &ChildPolicy> {
        self.children
            .get(cluster_namespace)
            .into_iter()
            .flat_map(|m| m.values().flatten())
    }

    /// A Placement by namespace and name.
    pub fn placement(&self, namespace: &str, name: &str) -> Option<&Placement> {
        self.placements
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every Placement, ordered by namespace and name.
    pub fn placements(&self) -> impl Iterator<Item = &Placement> {
        self.placements.values()
    }

    /// A PlacementBinding by namespace and name.
    pub fn placement_binding(&self, namespace: &str, name: &str) -> Option<&PlacementBinding> {
        self.bindings
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every PlacementBinding, ordered by namespace and name.
    pub fn placement_bindings(&self) -> impl Iterator<Item = &PlacementBinding> {
        self.bindings.values()
    }

    /// A PreCachingConfig spec by namespace and name.
    pub fn precaching_config(&self, namespace: &str, name: &str) -> Option<&PreCachingConfigSpec> {
        self.precaching_configs
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// A ConfigMap by namespace and name.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMapView> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// A SpokeAgent by namespace and name.
    pub fn spoke_agent(&self, namespace: &str, name: &str) -> Option<&SpokeAgent> {
        self.spoke_agents
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every SpokeAgent.
    pub fn spoke_agents(&self) -> impl Iterator<Item = &SpokeAgent> {
        self.spoke_agents.values()
    }

    /// A CGU by namespace and name.
    pub fn cgu(&self, namespace: &str, name: &str) -> Option<&ClusterGroupUpgrade> {
        self.cgus
            .get(&(namespace.to_string(), name.to_string()))
            .map(|c| &**c)
    }

    /// A CGU by namespace and name, shared (no copy of its status).
    pub fn cgu_shared(&self, namespace: &str, name: &str) -> Option<Arc<ClusterGroupUpgrade>> {
        self.cgus
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Policy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn roots_children_and_removal() {
        let mut s = Snapshot::new();
        s.insert_policy(policy(json!({
            "metadata": {"name": "p1", "namespace": "ztp"},
            "status": {"status": [
                {"clustername": "a", "compliant": "Compliant"},
                {"clustername": "b", "compliant": "Pending"},
                {"clustername": "c"}
            ]}
        })));
        s.insert_policy(policy(json!({
            "metadata": {"name": "ztp.p1", "namespace": "a",
                "labels": {"policy.open-cluster-management.io/root-policy": "ztp.p1"}},
            "spec": {"remediationAction": "Enforce"}
        })));
        s.insert_policy(policy(json!({
            "metadata": {"name": "nodot", "namespace": "a",
                "labels": {"policy.open-cluster-management.io/root-policy": "x"}}
        })));
        s.insert_policy(policy(json!({
            "metadata": {"name": "ztp.copy", "namespace": "a",
                "labels": {"policy.open-cluster-management.io/root-policy": "ztp.copy",
                           "openshift-cluster-group-upgrades/clusterGroupUpgrade": "x"}}
        })));
        let root = s.root_policy("ztp", "p1").unwrap();
        assert_eq!(root.compliance("a"), Compliance::Compliant);
        assert_eq!(root.compliance("b"), Compliance::NonCompliant);
        assert_eq!(root.compliance("c"), Compliance::NonCompliant);
        assert_eq!(root.compliance("d"), Compliance::NotMatched);
        let kids = s.child_policies("a", "p1");
        assert_eq!(kids.len(), 1);
        assert!(kids[0].enforce);
        assert_eq!(
            s.all_child_policies("a").count(),
            1,
            "unsplittable and legacy copies ignored"
        );
        s.remove_policy("a", "ztp.p1");
        assert!(s.child_policies("a", "p1").is_empty());
        s.remove_policy("ztp", "p1");
        assert!(s.root_policy("ztp", "p1").is_none());
    }

    fn root_with(rv: &str, entries: &[(&str, &str)], soak: &str) -> Policy {
        let status: Vec<serde_json::Value> = entries
            .iter()
            .map(|(c, s)| json!({"clustername": c, "clusternamespace": c, "compliant": s}))
            .collect();
        policy(json!({
            "metadata": {"name": "p1", "namespace": "ztp", "resourceVersion": rv,
                "annotations": {"ran.openshift.io/soak-seconds": soak}},
            "spec": {"remediationAction": "inform"},
            "status": {"compliant": "NonCompliant", "status": status}
        }))
    }

    fn root_change(clusters: Option<&[&str]>) -> Vec<PolicyChange> {
        vec![PolicyChange::Root {
            namespace: "ztp".into(),
            name: "p1".into(),
            clusters: clusters.map(|c| c.iter().map(|x| x.to_string()).collect()),
        }]
    }

    #[test]
    fn root_updates_report_exactly_the_clusters_whose_compliance_changed() {
        let mut s = Snapshot::new();
        let base = [
            ("a", "NonCompliant"),
            ("b", "NonCompliant"),
            ("c", "Compliant"),
        ];
        assert_eq!(
            s.insert_policy(root_with("1", &base, "0")),
            root_change(None),
            "a new root: every cluster"
        );
        assert!(
            s.root_policy("ztp", "p1")
                .unwrap()
                .policy
                .status
                .as_ref()
                .unwrap()
                .status
                .is_none(),
            "the per-cluster list lives in the index only"
        );
        assert!(
            s.insert_policy(root_with("2", &base, "0")).is_empty(),
            "same compliance, new resourceVersion"
        );
        assert!(
            s.insert_policy(root_with(
                "3",
                &[("a", "Pending"), ("b", "NonCompliant"), ("c", "Compliant")],
                "0"
            ))
            .is_empty(),
            "Pending reads as NonCompliant: nothing the engine sees changed"
        );
        assert_eq!(
            s.insert_policy(root_with(
                "4",
                &[
                    ("a", "Compliant"),
                    ("b", "NonCompliant"),
                    ("c", "Compliant"),
                    ("d", "Compliant")
                ],
                "0"
            )),
            root_change(Some(&["a", "d"])),
            "a flipped, d appeared"
        );
        assert_eq!(
            s.insert_policy(root_with(
                "5",
                &[("a", "Compliant"), ("d", "Compliant")],
                "0"
            )),
            root_change(Some(&["b", "c"])),
            "b and c left the status"
        );
        let r = s.root_policy("ztp", "p1").unwrap();
        assert_eq!(r.compliance("a"), Compliance::Compliant);
        assert_eq!(r.compliance("b"), Compliance::NotMatched);
        assert_eq!(
            s.insert_policy(root_with(
                "6",
                &[
                    ("a", "NonCompliant"),
                    ("a", "Compliant"),
                    ("d", "Compliant")
                ],
                "0"
            )),
            root_change(Some(&["a"])),
            "a repeated entry may report its cluster (never misses one)"
        );
        assert_eq!(
            s.root_policy("ztp", "p1").unwrap().compliance("a"),
            Compliance::Compliant,
            "the last entry wins"
        );
        assert_eq!(
            s.insert_policy(root_with(
                "7",
                &[("a", "Compliant"), ("d", "Compliant")],
                "60"
            )),
            root_change(None),
            "an annotation the engine reads changed: every cluster"
        );
        let mut no_status = root_with("8", &[], "60");
        no_status.status = None;
        assert_eq!(s.insert_policy(no_status), root_change(None));
        assert_eq!(
            s.root_policy("ztp", "p1").unwrap().compliance("a"),
            Compliance::NonCompliant
        );
        assert_eq!(s.remove_policy("ztp", "p1"), root_change(None));
        assert!(s.remove_policy("ztp", "p1").is_empty());
    }

    #[test]
    fn children_keep_only_derived_fields_and_move_when_relabelled() {
        let mut s = Snapshot::new();
        let child = |labels: serde_json::Value| {
            policy(json!({
                "metadata": {"name": "ztp.p1", "namespace": "a", "labels": labels,
                    "annotations": {"ran.openshift.io/ztp-deploy-wave": "7"}},
                "spec": {"remediationAction": "inform", "policy-templates": [
                    {"objectDefinition": {"kind": "X", "data": "{{hub fromSecret }}"}}]},
                "status": {"compliant": "NonCompliant"}
            }))
        };
        let labelled = json!({"policy.open-cluster-management.io/root-policy": "ztp.p1"});
        let p = child(labelled.clone());
        let (ns, derived) = ChildPolicy::of(&p).unwrap();
        assert_eq!(ns, "a");
        assert_eq!(
            derived,
            ChildPolicy {
                parent_namespace: "ztp".into(),
                parent_name: "p1".into(),
                enforce: false,
                hub_template_error: true,
                wave: Some("7".into()),
            }
        );
        assert_eq!(derived.name(), "ztp.p1");
        let child_change = PolicyChange::Child {
            cluster_namespace: "a".into(),
            parent_namespace: "ztp".into(),
            parent_name: "p1".into(),
        };
        assert_eq!(s.insert_policy(p.clone()), vec![child_change.clone()]);
        assert_eq!(s.child_policy("a", "ztp.p1"), Some(&derived));
        assert!(s.child_policy("a", "other.p1").is_none());
        let mut status_only = p;
        status_only.status = None;
        assert!(
            s.insert_policy(status_only).is_empty(),
            "status-only change"
        );
        // The same object without the root-policy label is a root: it leaves the children.
        let moved = s.insert_policy(child(json!({})));
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert_eq!(moved[0], child_change);
        assert!(s.child_policy("a", "ztp.p1").is_none());
        assert!(s.root_policy("a", "ztp.p1").is_some());
        // And back.
        s.insert_policy(child(labelled));
        assert!(s.root_policy("a", "ztp.p1").is_none());
        assert_eq!(s.child_policy("a", "ztp.p1"), Some(&derived));
        assert_eq!(s.remove_policy("a", "ztp.p1"), vec![child_change]);
        assert_eq!(s.all_child_policies("a").count(), 0);
    }

    #[test]
    fn policy_without_status_is_noncompliant_everywhere() {
        let mut s = Snapshot::new();
        s.insert_policy(policy(json!({"metadata": {"name": "p", "namespace": "n"}})));
        assert_eq!(
            s.root_policy("n", "p").unwrap().compliance("x"),
            Compliance::NonCompliant
        );
    }

    #[test]
    fn policy_view_read_from_json_indexes_like_the_full_policy() {
        let v = json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "metadata": {"name": "p", "namespace": "n", "resourceVersion": "7",
                         "annotations": {"ran.openshift.io/soak-seconds": "30"}},
            "spec": {"remediationAction": "inform", "disabled": false,
                     "policy-templates": [{"objectDefinition": {"kind": "ConfigurationPolicy"}}]},
            "status": {
                "compliant": "NonCompliant",
                "placement": [{"placement": "x"}],
                "status": [
                    {"clustername": "a", "clusternamespace": "a", "compliant": "Compliant"},
                    {"clustername": "b", "clusternamespace": "b", "compliant": "NonCompliant"},
                    {"clustername": "c", "clusternamespace": "c", "compliant": "Pending"},
                    {"clustername": "d", "clusternamespace": "d"},
                    {"clustername": "e", "compliant": null},
                    {"compliant": "Compliant", "clusternamespace": "f", "clustername": "f"}
                ]
            }
        });
        let view: PolicyView = serde_json::from_value(v.clone()).unwrap();
        let mut from_view = Snapshot::new();
        let mut from_full = Snapshot::new();
        assert_eq!(
            from_view.insert_policy_view(view),
            from_full.insert_policy(policy(v))
        );
        let (rv, rf) = (
            from_view.root_policy("n", "p").unwrap(),
            from_full.root_policy("n", "p").unwrap(),
        );
        assert_eq!(rv.policy, rf.policy);
        for (c, want) in [
            ("a", Compliance::Compliant),
            ("b", Compliance::NonCompliant),
            ("c", Compliance::NonCompliant),
            ("d", Compliance::NonCompliant),
            ("e", Compliance::NonCompliant),
            ("f", Compliance::Compliant),
            ("g", Compliance::NotMatched),
        ] {
            assert_eq!(rv.compliance(c), want, "{c}");
            assert_eq!(rf.compliance(c), want, "{c}");
        }
        // A compliance that is not a string is refused, as the full policy refuses it.
        let bad = json!({"metadata": {"name": "p"}, "status": {"status": [{"clustername": "a", "compliant": 1}]}});
        assert!(serde_json::from_value::<PolicyView>(bad.clone()).is_err());
        assert!(serde_json::from_value::<Policy>(bad).is_err());
    }
}
