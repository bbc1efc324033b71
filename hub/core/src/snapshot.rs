//! The engine's input: an indexed, read-only snapshot of the hub objects a reconcile needs.
//!
//! The snapshot indexes what the engine looks up per cluster (root-policy compliance by cluster,
//! child policies by cluster namespace), so a reconcile costs O(clusters in play), not O(all
//! objects × clusters). The operator keeps one from its reflector stores; `talm-hub plan` builds
//! one from files.

use std::collections::{BTreeMap, HashMap};

use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precaching::PreCachingConfigSpec;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterView, Placement, PlacementBinding, Policy,
    ROOT_POLICY_LABEL,
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

/// A root policy with its per-cluster compliance indexed.
#[derive(Clone, Debug)]
pub struct RootPolicy {
    /// The policy.
    pub policy: Policy,
    /// `None` when the policy has no `status.status`: every cluster is NonCompliant.
    compliance: Option<HashMap<String, Compliance>>,
}

impl RootPolicy {
    fn new(policy: Policy) -> Self {
        let compliance = policy
            .status
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        let c = match e.compliant.as_deref() {
                            Some("Compliant") => Compliance::Compliant,
                            _ => Compliance::NonCompliant,
                        };
                        (e.clustername.clone(), c)
                    })
                    .collect()
            });
        RootPolicy { policy, compliance }
    }

    /// The cluster's compliance with this policy.
    pub fn compliance(&self, cluster: &str) -> Compliance {
        match &self.compliance {
            None => Compliance::NonCompliant,
            Some(m) => m.get(cluster).copied().unwrap_or(Compliance::NotMatched),
        }
    }
}

/// A child (replicated) policy in a cluster namespace, with what validation needs precomputed.
#[derive(Clone, Debug)]
pub struct ChildPolicy {
    /// Namespace of the root policy.
    pub parent_namespace: String,
    /// Name of the root policy.
    pub parent_name: String,
    /// The child's `remediationAction` is `enforce` (case-insensitive).
    pub enforce: bool,
    /// The child's templates still hold `{{hub` (the hub template failed to resolve).
    pub hub_template_error: bool,
    /// The child policy itself.
    pub policy: Policy,
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
    cgus: HashMap<Key, ClusterGroupUpgrade>,
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
    /// Legacy TALM policy copies are ignored.
    pub fn insert_policy(&mut self, p: Policy) {
        let labels = p.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(CGU_LABEL)) {
            return;
        }
        if labels.is_some_and(|l| l.contains_key(ROOT_POLICY_LABEL)) {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            // `<parentNs>.<parentName>`: namespaces cannot hold dots, names can.
            let Some((parent_ns, parent_name)) = name.split_once('.') else {
                return;
            };
            if parent_ns.is_empty() || parent_name.is_empty() {
                return;
            }
            let enforce = p.spec.remediation_action.eq_ignore_ascii_case("enforce");
            let hub_template_error = p
                .spec
                .policy_templates
                .iter()
                .any(|t| value_contains(&t.object_definition, "{{hub"));
            let list = self
                .children
                .entry(ns)
                .or_default()
                .entry(parent_name.to_string())
                .or_default();
            list.retain(|c| c.parent_namespace != parent_ns);
            list.push(ChildPolicy {
                parent_namespace: parent_ns.to_string(),
                parent_name: parent_name.to_string(),
                enforce,
                hub_template_error,
                policy: p,
            });
        } else {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            self.roots
                .entry(ns)
                .or_default()
                .insert(name, RootPolicy::new(p));
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
        self.cgus.insert(k, c);
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

    /// Removes a Policy (root or child) by namespace and name.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        if let Some(m) = self.roots.get_mut(namespace) {
            m.remove(name);
        }
        if let Some((parent_ns, parent_name)) = name.split_once('.')
            && let Some(list) = self
                .children
                .get_mut(namespace)
                .and_then(|m| m.get_mut(parent_name))
        {
            list.retain(|c| c.parent_namespace != parent_ns);
        }
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
        self.cgus.values()
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

    /// A CGU by namespace and name.
    pub fn cgu(&self, namespace: &str, name: &str) -> Option<&ClusterGroupUpgrade> {
        self.cgus.get(&(namespace.to_string(), name.to_string()))
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

    #[test]
    fn policy_without_status_is_noncompliant_everywhere() {
        let mut s = Snapshot::new();
        s.insert_policy(policy(json!({"metadata": {"name": "p", "namespace": "n"}})));
        assert_eq!(
            s.root_policy("n", "p").unwrap().compliance("x"),
            Compliance::NonCompliant
        );
    }
}
