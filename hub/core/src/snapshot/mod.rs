//! The engine's input: an indexed, read-only snapshot of the hub objects a reconcile needs.
//!
//! The snapshot indexes what the engine looks up per cluster (root-policy compliance by cluster,
//! child policies by cluster namespace), so a reconcile costs O(clusters in play), not O(all
//! objects × clusters). The operator keeps one from its reflector stores; `talm-hub plan` builds
//! one from files. How policies are read and indexed is in [`policies`].

mod policies;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::precaching::PreCachingConfigSpec;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterView, Placement, PlacementBinding, Policy,
    ROOT_POLICY_LABEL,
};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::api::work::{ManifestWork, ManifestWorkReplicaSet};

use crate::names::labels;

pub use policies::{
    ChildPolicy, ClusterEntry, Compliance, PolicyChange, PolicyView, PolicyViewStatus, RootPolicy,
};

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
    /// ManifestWork templates (ManifestWorkReplicaSets) by namespace and name.
    manifest_work_templates: HashMap<Key, ManifestWorkReplicaSet>,
    /// talm's ManifestWorks, by cluster namespace and name.
    manifest_works: HashMap<Key, ManifestWork>,
    /// PrecacheBudgets (cluster-scoped), by name.
    precache_budgets: BTreeMap<String, PrecacheBudget>,
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
        if labels.is_some_and(|l| l.contains_key(labels::CGU)) {
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

    /// Adds (or replaces) a ManifestWorkReplicaSet (a ManifestWork rollout's template).
    pub fn insert_manifest_work_template(&mut self, t: ManifestWorkReplicaSet) {
        let k = key(t.metadata.namespace.as_ref(), t.metadata.name.as_ref());
        self.manifest_work_templates.insert(k, t);
    }

    /// Removes a ManifestWorkReplicaSet.
    pub fn remove_manifest_work_template(&mut self, namespace: &str, name: &str) {
        self.manifest_work_templates
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A ManifestWorkReplicaSet by namespace and name.
    pub fn manifest_work_template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&ManifestWorkReplicaSet> {
        self.manifest_work_templates
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Adds (or replaces) a ManifestWork.
    pub fn insert_manifest_work(&mut self, w: ManifestWork) {
        let k = key(w.metadata.namespace.as_ref(), w.metadata.name.as_ref());
        self.manifest_works.insert(k, w);
    }

    /// Removes a ManifestWork.
    pub fn remove_manifest_work(&mut self, namespace: &str, name: &str) {
        self.manifest_works
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A ManifestWork by cluster namespace and name.
    pub fn manifest_work(&self, namespace: &str, name: &str) -> Option<&ManifestWork> {
        self.manifest_works
            .get(&(namespace.to_string(), name.to_string()))
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

    /// Adds (or replaces) a PrecacheBudget.
    pub fn insert_precache_budget(&mut self, b: PrecacheBudget) {
        let name = b.metadata.name.clone().unwrap_or_default();
        self.precache_budgets.insert(name, b);
    }

    /// Removes a PrecacheBudget.
    pub fn remove_precache_budget(&mut self, name: &str) {
        self.precache_budgets.remove(name);
    }

    /// Every PrecacheBudget, by name.
    pub fn precache_budgets(&self) -> impl Iterator<Item = &PrecacheBudget> {
        self.precache_budgets.values()
    }

    /// A CGU by namespace and name, shared (no copy of its status).
    pub fn cgu_shared(&self, namespace: &str, name: &str) -> Option<Arc<ClusterGroupUpgrade>> {
        self.cgus
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}
