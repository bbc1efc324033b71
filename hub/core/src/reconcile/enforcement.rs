//! Enforcement: the Placements and PlacementBindings that enforce policies (docs/contract.md
//! §1.2, §3.2 step 5, §3.6, §3.7 and §3.12).
//!
//! TALM never touches the managed policies themselves (they stay `inform`). For each policy to
//! remediate it creates a Placement that selects clusters by name and a PlacementBinding with
//! `bindingOverrides.remediationAction: enforce` and `subFilter: restricted`, so only the
//! clusters in that Placement get the policy enforced. The objects are created empty before the
//! rollout starts; clusters are released into a policy's Placement as they reach it (cumulative
//! within a batch) and all Placements are emptied when a batch completes. Names are TALM's safe
//! names (a deterministic suffix here), remembered in `status.safeResourceNames`. On deletion,
//! or at the end with `deleteObjects`, the objects go and the CGU's agent tasks are cleared.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use talm_shared::api::cgu::ManagedPolicyForUpgrade;
use talm_shared::api::rhacm::{
    BindingOverrides, ClusterPredicate, ClusterSelector, Placement, PlacementBinding,
    PlacementSpec, PlacementSubject, Toleration,
};
use talm_shared::api::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use super::Run;
use crate::decision::Write;
use crate::installplan;
use crate::names::{self, labels};
use crate::tasks;

impl Run<'_> {
    /// The name suffix: the CGU's annotation, or one derived from its uid.
    pub(super) fn suffix(&self) -> String {
        if let Some(s) = self
            .cgu
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::NAME_SUFFIX_ANNOTATION))
            .filter(|s| !s.is_empty())
        {
            return s.clone();
        }
        let seed = self
            .cgu
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.namespace(), self.name()));
        names::derived_suffix(&seed)
    }

    /// The desired name and the safe name of a policy's Placement/PlacementBinding.
    pub(super) fn object_name(&mut self, policy: &ManagedPolicyForUpgrade) -> String {
        let desired = format!("{}-{}-placement", self.name(), policy.name).to_lowercase();
        let key = format!("{}/{}", policy.namespace, desired);
        if let Some(n) = self
            .status
            .safe_resource_names
            .as_ref()
            .and_then(|m| m.get(&key))
        {
            return n.clone();
        }
        let safe = names::safe_name(&desired, &policy.namespace, &self.suffix());
        self.status
            .safe_resource_names
            .get_or_insert_with(BTreeMap::new)
            .insert(key, safe.clone());
        safe
    }

    /// The metadata TALM puts on a policy's Placement and binding: the CGU labels and the
    /// desired-name annotation.
    fn object_meta(&self, policy: &ManagedPolicyForUpgrade, name: &str) -> ObjectMeta {
        let desired = format!("{}-{}-placement", self.name(), policy.name).to_lowercase();
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(policy.namespace.clone()),
            labels: Some(
                [
                    (labels::APP, labels::APP_VALUE.to_string()),
                    (labels::CGU, names::label_value(self.name())),
                    (labels::CGU_NS, names::label_value(self.namespace())),
                    (labels::FOR_POLICY, names::label_value(&policy.name)),
                    (labels::VELERO_EXCLUDE, "true".to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ),
            annotations: Some(
                [(
                    names::RNAME_ANNOTATION.to_string(),
                    format!("{}/{}", policy.namespace, desired),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    /// The Placement that selects exactly `values` (by name), tolerating unavailable and
    /// unreachable clusters.
    fn placement(
        &self,
        policy: &ManagedPolicyForUpgrade,
        name: &str,
        values: Vec<String>,
    ) -> Placement {
        Placement {
            api_version: Placement::API_VERSION.into(),
            kind: Placement::KIND.into(),
            metadata: self.object_meta(policy, name),
            spec: PlacementSpec {
                predicates: vec![ClusterPredicate {
                    required_cluster_selector: ClusterSelector {
                        label_selector: LabelSelector {
                            match_expressions: Some(vec![LabelSelectorRequirement {
                                key: "name".into(),
                                operator: "In".into(),
                                values: Some(values),
                            }]),
                            match_labels: None,
                        },
                    },
                }],
                tolerations: [
                    "cluster.open-cluster-management.io/unavailable",
                    "cluster.open-cluster-management.io/unreachable",
                ]
                .iter()
                .map(|k| Toleration {
                    key: k.to_string(),
                    operator: "Exists".into(),
                })
                .collect(),
            },
            status: None,
        }
    }

    /// The PlacementBinding that enforces the policy on its Placement's clusters.
    fn binding(&self, policy: &ManagedPolicyForUpgrade, name: &str) -> PlacementBinding {
        PlacementBinding {
            api_version: PlacementBinding::API_VERSION.into(),
            kind: PlacementBinding::KIND.into(),
            metadata: self.object_meta(policy, name),
            placement_ref: PlacementSubject {
                api_group: "cluster.open-cluster-management.io".into(),
                kind: "Placement".into(),
                name: name.into(),
            },
            subjects: vec![PlacementSubject {
                api_group: "policy.open-cluster-management.io".into(),
                kind: "Policy".into(),
                name: policy.name.clone(),
            }],
            sub_filter: Some("restricted".into()),
            binding_overrides: Some(BindingOverrides {
                remediation_action: Some("enforce".into()),
            }),
        }
    }

    /// Creates (or fixes) a Placement and binding per present policy, keeping the current
    /// selections, and records their names.
    pub(super) fn ensure_enforcement_objects(&mut self, present: &[ManagedPolicyForUpgrade]) {
        let mut names_list = BTreeSet::new();
        for p in present {
            let name = self.object_name(p);
            names_list.insert(name.clone());
            let current = self.snap.placement(&p.namespace, &name);
            let values = current
                .map(|c| c.selected_names().to_vec())
                .unwrap_or_default();
            self.apply_placement(p, &name, values);
            let want = self.binding(p, &name);
            let current_b = self.snap.placement_binding(&p.namespace, &name);
            if current_b.is_none_or(|b| !same_binding(b, &want)) {
                self.writes.push(Write::ApplyPlacementBinding(want));
            }
        }
        let list: Vec<String> = names_list.into_iter().collect();
        self.status.placements = Some(list.clone());
        self.status.placement_bindings = Some(list);
    }

    /// Emits an ApplyPlacement when the snapshot's object differs from the desired one.
    fn apply_placement(&mut self, p: &ManagedPolicyForUpgrade, name: &str, values: Vec<String>) {
        let want = self.placement(p, name, values);
        // A later write in this same decision supersedes the snapshot.
        let pending = self.writes.iter().rev().find_map(|w| match w {
            Write::ApplyPlacement(pl)
                if pl.metadata.name.as_deref() == Some(name)
                    && pl.metadata.namespace == want.metadata.namespace =>
            {
                Some(pl)
            }
            _ => None,
        });
        let current = pending.or_else(|| self.snap.placement(&p.namespace, name));
        if current.is_none_or(|c| c.spec != want.spec || c.metadata.labels != want.metadata.labels)
        {
            self.writes.push(Write::ApplyPlacement(want));
        }
    }

    /// The clusters a policy's Placement selects, counting writes earlier in this decision.
    fn current_values(&self, p: &ManagedPolicyForUpgrade, name: &str) -> Vec<String> {
        let pending = self.writes.iter().rev().find_map(|w| match w {
            Write::ApplyPlacement(pl)
                if pl.metadata.name.as_deref() == Some(name)
                    && pl.metadata.namespace.as_deref() == Some(p.namespace.as_str()) =>
            {
                Some(pl.selected_names().to_vec())
            }
            _ => None,
        });
        pending.unwrap_or_else(|| {
            self.snap
                .placement(&p.namespace, name)
                .map(|c| c.selected_names().to_vec())
                .unwrap_or_default()
        })
    }

    /// Adds clusters to a policy's Placement (keeping the order they were released in), with
    /// one write for the whole call.
    pub(super) fn release(&mut self, clusters: &[&str], policy: &ManagedPolicyForUpgrade) {
        let name = self.object_name(policy);
        let mut values = self.current_values(policy, &name);
        let mut present: HashSet<String> = values.iter().cloned().collect();
        let before = values.len();
        for c in clusters {
            if present.insert((*c).to_string()) {
                values.push((*c).to_string());
            }
        }
        if values.len() != before || self.snap.placement(&policy.namespace, &name).is_none() {
            self.apply_placement(policy, &name, values);
        }
    }

    /// Takes these clusters out of every policy's Placement.
    pub(super) fn withdraw(&mut self, clusters: &HashSet<String>) {
        for p in self.policies_for_upgrade() {
            let name = self.object_name(&p);
            let values = self.current_values(&p, &name);
            if values.iter().any(|v| clusters.contains(v)) {
                let kept: Vec<String> = values
                    .into_iter()
                    .filter(|v| !clusters.contains(v))
                    .collect();
                self.apply_placement(&p, &name, kept);
            }
        }
    }

    /// Empties every existing Placement of this CGU (no cluster stays enforced).
    pub(super) fn empty_placements(&mut self) {
        for p in self.policies_for_upgrade() {
            let name = self.object_name(&p);
            if self.snap.placement(&p.namespace, &name).is_some()
                && !self.current_values(&p, &name).is_empty()
            {
                self.apply_placement(&p, &name, Vec::new());
            }
        }
    }

    /// Deletes every Placement, binding and ManifestWork of this CGU and cancels its agent
    /// tasks.
    pub(super) fn delete_resources(&mut self) {
        let mut targets: BTreeSet<(String, String)> = BTreeSet::new();
        for (key, name) in self.status.safe_resource_names.iter().flatten() {
            if let Some((ns, _)) = key.split_once('/') {
                targets.insert((ns.to_string(), name.clone()));
            }
        }
        let owned = |m: &ObjectMeta| names::labelled_for(m, self.namespace(), self.name());
        for p in self.snap.placements().filter(|p| owned(&p.metadata)) {
            targets.insert((
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        let mut binding_targets = targets.clone();
        for b in self
            .snap
            .placement_bindings()
            .filter(|b| owned(&b.metadata))
        {
            binding_targets.insert((
                b.metadata.namespace.clone().unwrap_or_default(),
                b.metadata.name.clone().unwrap_or_default(),
            ));
        }
        for (ns, name) in &targets {
            if self.snap.placement(ns, name).is_some() {
                self.writes.push(Write::DeletePlacement {
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        for (ns, name) in &binding_targets {
            if self.snap.placement_binding(ns, name).is_some() {
                self.writes.push(Write::DeletePlacementBinding {
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        self.clear_agent_tasks();
        self.writes
            .extend(installplan::cleanup_all(self.cgu, self.snap));
        self.delete_all_works();
        self.status.placements = None;
        self.status.placement_bindings = None;
        self.status.safe_resource_names = None;
    }

    /// Clears every task of this CGU from the agents (pre-cache and backup tasks of the
    /// clusters in its status, and InstallPlan-approval tasks, which any planned cluster may hold).
    /// Rollback watchdogs are disarmed only when the CGU is being deleted: when it merely ends,
    /// a node whose upgrade is still unhealthy keeps its watchdog.
    pub(super) fn clear_agent_tasks(&mut self) {
        let watchdog = if self.cgu.metadata.deletion_timestamp.is_some() {
            tasks::Watchdog::Disarm
        } else {
            tasks::Watchdog::Keep
        };
        let writes: Vec<Write> = self
            .snap
            .spoke_agents()
            .filter_map(|a| tasks::clear_tasks(self.cgu, a, watchdog))
            .collect();
        self.writes.extend(writes);
    }
}

/// Whether a binding already matches the wanted one in everything talm sets.
fn same_binding(a: &PlacementBinding, b: &PlacementBinding) -> bool {
    a.placement_ref == b.placement_ref
        && a.subjects == b.subjects
        && a.sub_filter == b.sub_filter
        && a.binding_overrides == b.binding_overrides
        && a.metadata.labels == b.metadata.labels
}
