//! ZTP day-0 auto-CGU (docs/contract.md §3.11): for a ManagedCluster that is Available and
//! has no `ztp-done` label, the `ClusterGroupUpgrade` `ztp-install/<cluster>` that rolls out the
//! cluster's wave-annotated policies, owned by the ManagedCluster.
//!
//! Pure: the caller hands in the cluster, its child policies and whether the CGU exists; the
//! answer is the CGU to create, or why there is nothing to do. The adapter creates it.
//!
//! Accelerated ZTP (label `accelerated-ztp`, TALM's `<cluster>-aztp` ConfigMap) is **not
//! implemented**: [`decide`] reports such clusters so the adapter can warn about them.

use std::collections::BTreeMap;

use talm_shared::api::ObjectMeta;
use talm_shared::api::cgu::{
    Actions, AfterCompletion, BeforeEnable, ClusterGroupUpgrade, ClusterGroupUpgradeSpec,
    RemediationStrategySpec,
};
use talm_shared::api::rhacm::ManagedCluster;

use crate::snapshot::{ChildPolicy, Snapshot};

/// The namespace of ZTP CGUs.
pub const ZTP_NAMESPACE: &str = "ztp-install";
/// Label set on a cluster once its ZTP CGU completed.
pub const ZTP_DONE_LABEL: &str = "ztp-done";
/// Label set on a cluster while its ZTP CGU runs.
pub const ZTP_RUNNING_LABEL: &str = "ztp-running";
/// Child-policy annotation: the ZTP deploy wave (an integer; lower waves go first).
pub const WAVE_ANNOTATION: &str = "ran.openshift.io/ztp-deploy-wave";
/// ManagedCluster label that asks for accelerated ZTP (not supported by talm).
pub const AZTP_LABEL: &str = "accelerated-ztp";
/// The default CGU timeout in minutes (the CRD default).
pub const DEFAULT_TIMEOUT: i32 = 240;

/// Why no CGU is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The cluster is not `ManagedClusterConditionAvailable=True`.
    NotAvailable,
    /// The cluster already carries `ztp-done`.
    Done,
    /// `ztp-install/<cluster>` already exists.
    CguExists,
}

/// What to do for one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ZtpDecision {
    /// The CGU to create, or why none.
    pub outcome: Result<Box<ClusterGroupUpgrade>, Skip>,
    /// The cluster asks for accelerated ZTP (`accelerated-ztp=<variant>`), which talm does
    /// not implement; the value is the variant.
    pub accelerated_ztp: Option<String>,
}

/// A bad input that stops the decision for one cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZtpError {
    /// A child policy's wave annotation is not an integer.
    #[error("policy {namespace}/{name}: annotation {WAVE_ANNOTATION} is {value:?}, not an integer")]
    BadWave {
        /// Namespace of the child policy (the cluster namespace).
        namespace: String,
        /// Name of the child policy.
        name: String,
        /// The annotation value.
        value: String,
    },
}

fn label<'a>(mc: &'a ManagedCluster, key: &str) -> Option<&'a String> {
    mc.metadata.labels.as_ref()?.get(key)
}

/// The parent names of the wave-annotated, non-enforce child policies, sorted by wave then
/// name. Policies without the annotation are left out.
pub fn managed_policies<'a>(
    cluster_namespace: &str,
    children: impl IntoIterator<Item = &'a ChildPolicy>,
) -> Result<Vec<String>, ZtpError> {
    let mut waves: Vec<(i64, String)> = Vec::new();
    for c in children {
        if c.enforce {
            continue;
        }
        let Some(raw) = &c.wave else {
            continue;
        };
        let wave = raw.trim().parse::<i64>().map_err(|_| ZtpError::BadWave {
            namespace: cluster_namespace.to_string(),
            name: c.name(),
            value: raw.clone(),
        })?;
        waves.push((wave, c.parent_name.clone()));
    }
    waves.sort();
    waves.dedup();
    Ok(waves.into_iter().map(|(_, n)| n).collect())
}

/// The ZTP CGU of a cluster with these managed policies.
pub fn ztp_cgu(mc: &ManagedCluster, policies: Vec<String>) -> ClusterGroupUpgrade {
    let cluster = mc.metadata.name.clone().unwrap_or_default();
    let spec = ClusterGroupUpgradeSpec {
        clusters: Some(vec![cluster.clone()]),
        enable: Some(true),
        managed_policies: Some(policies),
        remediation_strategy: RemediationStrategySpec {
            max_concurrency: 1,
            timeout: DEFAULT_TIMEOUT,
            canaries: None,
            max_failures: None,
        },
        actions: Some(Actions {
            before_enable: Some(BeforeEnable {
                add_cluster_labels: Some(BTreeMap::from([(
                    ZTP_RUNNING_LABEL.to_string(),
                    String::new(),
                )])),
                ..Default::default()
            }),
            after_completion: Some(AfterCompletion {
                add_cluster_labels: Some(BTreeMap::from([(
                    ZTP_DONE_LABEL.to_string(),
                    String::new(),
                )])),
                remove_cluster_labels: Some(vec![ZTP_RUNNING_LABEL.to_string()]),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let mut cgu = ClusterGroupUpgrade::new(&cluster, spec);
    cgu.metadata = ObjectMeta {
        name: Some(cluster.clone()),
        namespace: Some(ZTP_NAMESPACE.to_string()),
        owner_references: Some(vec![talm_shared::api::OwnerReference {
            api_version: ManagedCluster::API_VERSION.to_string(),
            kind: ManagedCluster::KIND.to_string(),
            name: cluster,
            uid: mc.metadata.uid.clone().unwrap_or_default(),
            block_owner_deletion: Some(true),
            controller: Some(true),
        }]),
        ..Default::default()
    };
    cgu
}

/// Decides for one cluster: `children` are the child policies in its namespace, `cgu_exists`
/// whether `ztp-install/<cluster>` exists.
pub fn decide<'a>(
    mc: &ManagedCluster,
    children: impl IntoIterator<Item = &'a ChildPolicy>,
    cgu_exists: bool,
) -> Result<ZtpDecision, ZtpError> {
    let accelerated_ztp = label(mc, AZTP_LABEL).cloned();
    let skip = |s| {
        Ok(ZtpDecision {
            outcome: Err(s),
            accelerated_ztp: accelerated_ztp.clone(),
        })
    };
    if !mc.is_available() {
        return skip(Skip::NotAvailable);
    }
    if label(mc, ZTP_DONE_LABEL).is_some() {
        return skip(Skip::Done);
    }
    if cgu_exists {
        return skip(Skip::CguExists);
    }
    let cluster = mc.metadata.name.as_deref().unwrap_or_default();
    let policies = managed_policies(cluster, children)?;
    Ok(ZtpDecision {
        outcome: Ok(Box::new(ztp_cgu(mc, policies))),
        accelerated_ztp,
    })
}

/// [`decide`] with the inputs read from a snapshot; `None` when the cluster is not in it.
pub fn decide_in(snap: &Snapshot, cluster: &str) -> Option<Result<ZtpDecision, ZtpError>> {
    let mc = snap.managed_cluster(cluster)?;
    let exists = snap.cgu(ZTP_NAMESPACE, cluster).is_some();
    Some(decide(mc, snap.all_child_policies(cluster), exists))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::json;
    use talm_shared::api::rhacm::Policy;

    use super::*;

    fn cluster(labels: serde_json::Value, available: bool) -> ManagedCluster {
        serde_json::from_value(json!({
            "metadata": {"name": "spoke1", "uid": "uid-1", "labels": labels},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                                       "status": if available {"True"} else {"Unknown"}}]}
        }))
        .unwrap()
    }

    fn child(parent: &str, wave: Option<&str>, action: &str) -> Policy {
        let mut annotations = serde_json::Map::new();
        if let Some(w) = wave {
            annotations.insert(WAVE_ANNOTATION.into(), json!(w));
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("ztp-common.{parent}"), "namespace": "spoke1",
                "labels": {"policy.open-cluster-management.io/root-policy": format!("ztp-common.{parent}")},
                "annotations": annotations},
            "spec": {"remediationAction": action}
        }))
        .unwrap()
    }

    fn snap(policies: Vec<Policy>, mc: ManagedCluster) -> Snapshot {
        let mut s = Snapshot::new();
        s.insert_managed_cluster(mc);
        for p in policies {
            s.insert_policy(p);
        }
        s
    }

    fn created(s: &Snapshot) -> ClusterGroupUpgrade {
        *decide_in(s, "spoke1").unwrap().unwrap().outcome.unwrap()
    }

    #[test]
    fn sorts_by_wave_then_name_and_builds_the_exact_cgu() {
        let s = snap(
            vec![
                child("p-b", Some("10"), "inform"),
                child("p-a", Some("10"), "inform"),
                child("p-c", Some("2"), "inform"),
                child("p-nowave", None, "inform"),
                child("p-enforce", Some("1"), "enforce"),
                child("p-neg", Some(" -1 "), "inform"),
            ],
            cluster(json!({}), true),
        );
        let cgu = created(&s);
        let v = serde_json::to_value(&cgu).unwrap();
        assert_eq!(v["metadata"]["name"], "spoke1");
        assert_eq!(v["metadata"]["namespace"], ZTP_NAMESPACE);
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "cluster.open-cluster-management.io/v1",
                    "kind": "ManagedCluster", "name": "spoke1", "uid": "uid-1",
                    "blockOwnerDeletion": true, "controller": true}])
        );
        assert_eq!(
            v["spec"]["managedPolicies"],
            json!(["p-neg", "p-c", "p-a", "p-b"])
        );
        assert_eq!(v["spec"]["clusters"], json!(["spoke1"]));
        assert_eq!(v["spec"]["enable"], true);
        assert_eq!(v["spec"]["remediationStrategy"]["maxConcurrency"], 1);
        assert_eq!(v["spec"]["remediationStrategy"]["timeout"], 240);
        assert_eq!(
            v["spec"]["actions"],
            json!({
                "beforeEnable": {"addClusterLabels": {"ztp-running": ""}},
                "afterCompletion": {"addClusterLabels": {"ztp-done": ""},
                                    "removeClusterLabels": ["ztp-running"]}
            })
        );
    }

    #[test]
    fn no_policies_gives_an_empty_list() {
        let s = snap(vec![], cluster(json!({}), true));
        assert_eq!(created(&s).spec.managed_policies, Some(vec![]));
    }

    #[test]
    fn non_integer_wave_is_an_error_naming_policy_and_value() {
        let s = snap(
            vec![child("p-x", Some("early"), "inform")],
            cluster(json!({}), true),
        );
        let err = decide_in(&s, "spoke1").unwrap().unwrap_err();
        let m = err.to_string();
        assert!(m.contains("spoke1/ztp-common.p-x"), "{m}");
        assert!(m.contains("\"early\""), "{m}");
    }

    #[test]
    fn nothing_when_done_unavailable_or_the_cgu_exists() {
        let pol = || vec![child("p", Some("1"), "inform")];
        let s = snap(pol(), cluster(json!({"ztp-done": ""}), true));
        assert_eq!(
            decide_in(&s, "spoke1").unwrap().unwrap().outcome,
            Err(Skip::Done)
        );
        let s = snap(pol(), cluster(json!({}), false));
        assert_eq!(
            decide_in(&s, "spoke1").unwrap().unwrap().outcome,
            Err(Skip::NotAvailable)
        );
        let mut s = snap(pol(), cluster(json!({}), true));
        s.insert_cgu(created(&s));
        assert_eq!(
            decide_in(&s, "spoke1").unwrap().unwrap().outcome,
            Err(Skip::CguExists)
        );
        assert!(decide_in(&s, "nosuch").is_none());
    }

    #[test]
    fn bad_wave_does_not_matter_once_done() {
        let s = snap(
            vec![child("p-x", Some("x"), "inform")],
            cluster(json!({"ztp-done": ""}), true),
        );
        assert!(decide_in(&s, "spoke1").unwrap().is_ok());
    }

    #[test]
    fn accelerated_ztp_is_reported() {
        let s = snap(vec![], cluster(json!({"accelerated-ztp": "full"}), false));
        let d = decide_in(&s, "spoke1").unwrap().unwrap();
        assert_eq!(d.accelerated_ztp.as_deref(), Some("full"));
        assert_eq!(d.outcome, Err(Skip::NotAvailable));
    }
}
