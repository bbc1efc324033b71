//! Manual InstallPlan approval through ManagedClusterView and ManagedClusterAction
//! (docs/contract.md §3.10, §1.4), as writes for the engine's decision.
//!
//! For a cluster being remediated whose current policy holds `operators.coreos.com`
//! Subscriptions (the CGU's `status.managedPoliciesContent`), per Subscription:
//! 1. ensure an MCV `<cgu>-<cguNs>-subscription-<sub>` (lower-case, safe suffix) in the
//!    cluster namespace on `Subscription.operators.coreos.com` `<sub>` in `<subNs>`;
//! 2. once that view is ready (`Processing=True`, reason `GetResourceProcessing`) and the
//!    Subscription is `UpgradePending` with a `status.install`, ensure an MCV
//!    `<installPlanName>` on `InstallPlan` `<installPlanName>` in `<subNs>`;
//! 3. once that view is ready and the InstallPlan's `spec.approval` is `Manual` and it is not
//!    approved, create the MCA `<installPlanName>` that updates it with `approved: true`.
//!
//! When the cluster completes, its views of this CGU are deleted ([`cleanup`]). MCAs delete
//! themselves once executed. Compliance stays the policy's business.
//!
//! When the cluster's talm-agent is connected, the agent does it instead: the engine puts an
//! InstallPlan-approval task in the cluster's SpokeAgent ([`agent_task`]) and the agent applies
//! the same rule through the spoke's own API server, with no views and no actions. The engine
//! falls back to views and actions while the agent is not connected, or once it reported the
//! task failed, timed out or rejected (an agent that predates the task kind rejects it). The
//! agent task is cleared when the cluster completes or moves to a policy without Subscriptions
//! ([`clear_agent_task`]), and when the CGU ends.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use talm_shared::api::ObjectMeta;
use talm_shared::api::Time;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::rhacm::{
    KubeWorkSpec, ManagedClusterAction, ManagedClusterActionSpec, ManagedClusterView,
    ManagedClusterViewSpec, ViewScope,
};
use talm_shared::api::spokeagent::{InstallPlanTask, SpokeAgent, SubscriptionTarget};
use talm_shared::task_state::TaskState;

use crate::decision::{TaskChange, Write};
use crate::names::{self, labels};
use crate::snapshot::Snapshot;

/// Scope resource of Subscription views.
pub const SUBSCRIPTION_RESOURCE: &str = "Subscription.operators.coreos.com";
/// Scope resource of InstallPlan views.
pub const INSTALLPLAN_RESOURCE: &str = "InstallPlan";
/// The API group whose Subscriptions are OLM's.
pub const OLM_GROUP: &str = "operators.coreos.com";

/// One Subscription of a policy, as `status.managedPoliciesContent` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SubscriptionRef {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace on the spoke.
    #[serde(default)]
    pub namespace: String,
    /// `kind` (always `Subscription` for the entries kept).
    #[serde(default)]
    pub kind: String,
    /// `apiVersion`.
    #[serde(default, rename = "apiVersion")]
    pub api_version: String,
}

/// The OLM Subscriptions in one `managedPoliciesContent` entry (a JSON list); entries of
/// other kinds or groups, and unreadable content, give nothing.
pub fn subscriptions(content: &str) -> Vec<SubscriptionRef> {
    let list: Vec<SubscriptionRef> = serde_json::from_str(content).unwrap_or_default();
    list.into_iter()
        .filter(|s| {
            s.kind == "Subscription"
                && !s.name.is_empty()
                && s.api_version.split('/').next() == Some(OLM_GROUP)
        })
        .collect()
}

fn cgu_name(cgu: &ClusterGroupUpgrade) -> &str {
    cgu.metadata.name.as_deref().unwrap_or("")
}

fn cgu_namespace(cgu: &ClusterGroupUpgrade) -> &str {
    cgu.metadata.namespace.as_deref().unwrap_or("default")
}

/// The `status.safeResourceNames` key of the view of Subscription `sub`:
/// `/<cgu>-<cguNs>-subscription-<sub>` (lower case; TALM records views with an empty namespace
/// part).
pub fn subscription_view_key(cgu: &ClusterGroupUpgrade, sub: &str) -> String {
    format!(
        "/{}-{}-subscription-{}",
        cgu_name(cgu),
        cgu_namespace(cgu),
        sub
    )
    .to_lowercase()
}

/// The name of the view of Subscription `sub` (the same in every cluster namespace): the one
/// recorded in `recorded` (the CGU's `status.safeResourceNames`) under
/// [`subscription_view_key`], else the safe name of the key's desired name.
pub fn subscription_view_name(
    cgu: &ClusterGroupUpgrade,
    suffix: &str,
    sub: &str,
    recorded: Option<&BTreeMap<String, String>>,
) -> String {
    let key = subscription_view_key(cgu, sub);
    if let Some(name) = recorded.and_then(|r| r.get(&key)) {
        return name.clone();
    }
    let desired = key.trim_start_matches('/');
    names::safe_name(desired, "", suffix)
}

fn owned(cgu: &ClusterGroupUpgrade, meta: &ObjectMeta) -> bool {
    names::labelled_for(meta, cgu_namespace(cgu), cgu_name(cgu))
}

fn view(
    cgu: &ClusterGroupUpgrade,
    cluster: &str,
    name: &str,
    resource: &str,
    target: &str,
    target_ns: &str,
) -> ManagedClusterView {
    ManagedClusterView {
        api_version: ManagedClusterView::API_VERSION.into(),
        kind: ManagedClusterView::KIND.into(),
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(cluster.to_string()),
            labels: Some(BTreeMap::from([
                (labels::CGU.to_string(), names::label_value(cgu_name(cgu))),
                (
                    labels::CGU_NS.to_string(),
                    names::label_value(cgu_namespace(cgu)),
                ),
            ])),
            ..Default::default()
        },
        spec: ManagedClusterViewSpec {
            scope: ViewScope {
                resource: resource.to_string(),
                name: target.to_string(),
                namespace: target_ns.to_string(),
            },
        },
        ..Default::default()
    }
}

/// Ensures `want` exists with its spec and labels; returns the existing view when it does.
fn ensure<'s>(
    snap: &'s Snapshot,
    want: ManagedClusterView,
    writes: &mut Vec<Write>,
) -> Option<&'s ManagedClusterView> {
    let ns = want.metadata.namespace.clone().unwrap_or_default();
    let name = want.metadata.name.clone().unwrap_or_default();
    let have = snap.managed_cluster_view(&ns, &name);
    let same = have.is_some_and(|h| {
        h.spec == want.spec
            && want
                .metadata
                .labels
                .iter()
                .flatten()
                .all(|(k, v)| h.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
    });
    if !same {
        writes.push(Write::ApplyManagedClusterView(want));
    }
    have
}

fn str_at<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The MCA that approves the InstallPlan a view shows.
pub fn approval_action(
    cgu: &ClusterGroupUpgrade,
    cluster: &str,
    install_plan: &str,
    namespace: &str,
    plan: &Value,
) -> ManagedClusterAction {
    let csvs = plan
        .pointer("/spec/clusterServiceVersionNames")
        .cloned()
        .unwrap_or_else(|| json!([]));
    ManagedClusterAction {
        api_version: ManagedClusterAction::API_VERSION.into(),
        kind: ManagedClusterAction::KIND.into(),
        metadata: ObjectMeta {
            name: Some(install_plan.to_string()),
            namespace: Some(cluster.to_string()),
            labels: Some(BTreeMap::from([(
                labels::CGU.to_string(),
                names::label_value(&format!("{}-{}", cgu_namespace(cgu), cgu_name(cgu))),
            )])),
            ..Default::default()
        },
        spec: ManagedClusterActionSpec {
            action_type: "Update".into(),
            kube: KubeWorkSpec {
                resource: "installplan".into(),
                namespace: namespace.to_string(),
                template: Some(json!({
                    "apiVersion": "operators.coreos.com/v1alpha1",
                    "kind": "InstallPlan",
                    "metadata": {
                        "name": str_at(plan, "/metadata/name").unwrap_or(install_plan),
                        "resourceVersion": str_at(plan, "/metadata/resourceVersion").unwrap_or(""),
                    },
                    "spec": {
                        "approval": "Manual",
                        "approved": true,
                        "clusterServiceVersionNames": csvs,
                    },
                })),
            },
        },
    }
}

/// The writes that move manual InstallPlan approval forward for one cluster being remediated
/// with a policy holding `subs`.
pub fn approve(
    cgu: &ClusterGroupUpgrade,
    suffix: &str,
    cluster: &str,
    subs: &[SubscriptionRef],
    snap: &Snapshot,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let recorded = cgu
        .status
        .as_ref()
        .and_then(|s| s.safe_resource_names.as_ref());
    for sub in subs {
        let name = subscription_view_name(cgu, suffix, &sub.name, recorded);
        let want = view(
            cgu,
            cluster,
            &name,
            SUBSCRIPTION_RESOURCE,
            &sub.name,
            &sub.namespace,
        );
        let Some(result) = ensure(snap, want, &mut writes).and_then(ManagedClusterView::result)
        else {
            continue;
        };
        if str_at(result, "/status/state") != Some("UpgradePending") {
            continue;
        }
        let Some(plan_name) = result
            .pointer("/status/install")
            .filter(|v| !v.is_null())
            .and_then(|i| str_at(i, "/name"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let plan_view = view(
            cgu,
            cluster,
            &plan_name.to_lowercase(),
            INSTALLPLAN_RESOURCE,
            plan_name,
            &sub.namespace,
        );
        let Some(plan) = ensure(snap, plan_view, &mut writes).and_then(ManagedClusterView::result)
        else {
            continue;
        };
        let manual = str_at(plan, "/spec/approval") == Some("Manual");
        let approved = plan.pointer("/spec/approved").and_then(Value::as_bool) == Some(true);
        if manual && !approved {
            writes.push(Write::CreateManagedClusterAction(approval_action(
                cgu,
                cluster,
                &plan_name.to_lowercase(),
                &sub.namespace,
                plan,
            )));
        }
    }
    writes
}

/// The id of the agent's approval task for `policy`: unique per CGU (by uid) and policy, so a
/// cluster moving to its next policy gets a new task.
pub fn agent_task_id(cgu: &ClusterGroupUpgrade, policy: &str) -> String {
    format!("{}installplans/{policy}", crate::tasks::task_id_prefix(cgu))
}

/// Agent states after which the engine stops relying on the agent for this task id and uses
/// views and actions instead.
fn agent_gave_up(state: &str) -> bool {
    matches!(
        TaskState::from_name(state),
        Some(TaskState::UnrecoverableError | TaskState::TimedOut | TaskState::Cancelled)
    )
}

/// Whether the agent approves InstallPlans for this CGU's task `id`: the agent is connected,
/// its approval slot is free or holds a task of this CGU (another CGU's task is never
/// overwritten), and it has not reported task `id` failed, rejected, timed out or cancelled.
pub fn agent_path(cgu: &ClusterGroupUpgrade, agent: Option<&SpokeAgent>, id: &str) -> bool {
    let Some(a) = agent else { return false };
    let Some(st) = a.status.as_ref() else {
        return false;
    };
    let prefix = crate::tasks::task_id_prefix(cgu);
    st.connected
        && a.spec
            .install_plans
            .as_ref()
            .is_none_or(|t| t.id.starts_with(&prefix))
        && !st
            .install_plans
            .as_ref()
            .is_some_and(|r| r.id == id && agent_gave_up(&r.state))
}

/// The write that gives `cluster`'s agent the approval task `id` for `subs` (none when its
/// SpokeAgent already holds that task).
pub fn agent_task(
    cluster: &str,
    agent: Option<&SpokeAgent>,
    id: &str,
    subs: &[SubscriptionRef],
    deadline: Timestamp,
) -> Option<Write> {
    let have = agent.and_then(|a| a.spec.install_plans.as_ref());
    if have.is_some_and(|t| t.id == id) {
        return None;
    }
    Some(Write::SetSpokeAgentTasks {
        namespace: cluster.to_string(),
        name: cluster.to_string(),
        precache: None,
        backup: None,
        install_plans: Some(TaskChange::Assign(InstallPlanTask {
            id: id.to_string(),
            subscriptions: subs
                .iter()
                .map(|s| SubscriptionTarget {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                })
                .collect(),
            deadline: Time(deadline),
        })),
        rollback: None,
    })
}

/// The write that clears this CGU's approval task from `cluster`'s agent, if it holds one.
pub fn clear_agent_task(
    cgu: &ClusterGroupUpgrade,
    cluster: &str,
    snap: &Snapshot,
) -> Option<Write> {
    let prefix = crate::tasks::task_id_prefix(cgu);
    snap.spoke_agent(cluster, cluster)
        .and_then(|a| a.spec.install_plans.as_ref())
        .filter(|t| t.id.starts_with(&prefix))
        .map(|_| Write::SetSpokeAgentTasks {
            namespace: cluster.to_string(),
            name: cluster.to_string(),
            precache: None,
            backup: None,
            install_plans: Some(TaskChange::Clear),
            rollback: None,
        })
}

/// Deletes this CGU's views in one cluster namespace (the cluster completed).
pub fn cleanup(cgu: &ClusterGroupUpgrade, cluster: &str, snap: &Snapshot) -> Vec<Write> {
    snap.managed_cluster_views_in(cluster)
        .filter(|v| owned(cgu, &v.metadata))
        .map(|v| Write::DeleteManagedClusterView {
            namespace: cluster.to_string(),
            name: v.metadata.name.clone().unwrap_or_default(),
        })
        .collect()
}

/// Deletes every view of this CGU (the CGU ends or is deleted).
pub fn cleanup_all(cgu: &ClusterGroupUpgrade, snap: &Snapshot) -> Vec<Write> {
    snap.managed_cluster_views()
        .filter(|v| owned(cgu, &v.metadata))
        .map(|v| Write::DeleteManagedClusterView {
            namespace: v.metadata.namespace.clone().unwrap_or_default(),
            name: v.metadata.name.clone().unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use talm_shared::api::cgu::ClusterGroupUpgradeSpec;

    use super::*;

    fn cgu() -> ClusterGroupUpgrade {
        let mut c = ClusterGroupUpgrade::new("cgu1", ClusterGroupUpgradeSpec::default());
        c.metadata.namespace = Some("default".into());
        c
    }

    fn subs() -> Vec<SubscriptionRef> {
        subscriptions(
            r#"[{"kind":"Subscription","name":"ptp-operator-subscription","apiVersion":"operators.coreos.com/v1alpha1","namespace":"openshift-ptp"},
                {"kind":"Subscription","name":"other","apiVersion":"apps.open-cluster-management.io/v1","namespace":"x"}]"#,
        )
    }

    fn ready(mut v: ManagedClusterView, result: Value) -> ManagedClusterView {
        v.metadata.resource_version = Some("5".into());
        v.status = Some(
            serde_json::from_value(json!({
                "conditions": [{"type": "Processing", "status": "True",
                                "reason": "GetResourceProcessing"}],
                "result": result
            }))
            .unwrap(),
        );
        v
    }

    fn views(w: &[Write]) -> Vec<ManagedClusterView> {
        w.iter()
            .filter_map(|w| match w {
                Write::ApplyManagedClusterView(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    fn actions(w: &[Write]) -> Vec<ManagedClusterAction> {
        w.iter()
            .filter_map(|w| match w {
                Write::CreateManagedClusterAction(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    fn sub_status(state: &str) -> Value {
        json!({"metadata": {"name": "ptp-operator-subscription"},
               "status": {"state": state, "install": {"name": "install-abcde"}}})
    }

    fn plan(approval: &str, approved: bool) -> Value {
        json!({"metadata": {"name": "install-abcde", "resourceVersion": "777"},
               "spec": {"approval": approval, "approved": approved,
                        "clusterServiceVersionNames": ["ptp-operator.v4.9.1"]}})
    }

    /// Runs `approve` until the views it asks for exist, filling the views' status from
    /// `sub` and `ip`.
    fn settle(sub: Value, ip: Value) -> (Snapshot, Vec<Write>) {
        let c = cgu();
        let mut snap = Snapshot::new();
        for _ in 0..3 {
            let w = approve(&c, "kuttl", "spoke1", &subs(), &snap);
            let new = views(&w);
            if new.is_empty() {
                return (snap, w);
            }
            for v in new {
                let r = if v.spec.scope.resource == SUBSCRIPTION_RESOURCE {
                    sub.clone()
                } else {
                    ip.clone()
                };
                snap.insert_managed_cluster_view(ready(v, r));
            }
        }
        let w = approve(&c, "kuttl", "spoke1", &subs(), &snap);
        (snap, w)
    }

    #[test]
    fn only_olm_subscriptions_count() {
        let s = subs();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].namespace, "openshift-ptp");
        assert!(subscriptions("not json").is_empty());
    }

    #[test]
    fn first_pass_ensures_the_subscription_view() {
        let w = approve(&cgu(), "kuttl", "spoke1", &subs(), &Snapshot::new());
        let v = views(&w);
        assert_eq!(v.len(), 1);
        let v = serde_json::to_value(&v[0]).unwrap();
        assert_eq!(v["apiVersion"], "view.open-cluster-management.io/v1beta1");
        assert_eq!(v["kind"], "ManagedClusterView");
        assert_eq!(
            v["metadata"]["name"],
            "cgu1-default-subscription-ptp-operator-subscription-kuttl"
        );
        assert_eq!(v["metadata"]["namespace"], "spoke1");
        assert_eq!(
            v["metadata"]["labels"],
            json!({"openshift-cluster-group-upgrades/clusterGroupUpgrade": "cgu1",
                   "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace": "default"})
        );
        assert_eq!(
            v["spec"]["scope"],
            json!({"resource": "Subscription.operators.coreos.com",
                   "name": "ptp-operator-subscription", "namespace": "openshift-ptp"})
        );
        assert!(actions(&w).is_empty());
    }

    #[test]
    fn a_recorded_view_name_is_reused_and_the_key_has_no_namespace() {
        let c = cgu();
        assert_eq!(
            subscription_view_key(&c, "ptp-operator-subscription"),
            "/cgu1-default-subscription-ptp-operator-subscription"
        );
        assert_eq!(
            subscription_view_name(&c, "kuttl", "ptp-operator-subscription", None),
            "cgu1-default-subscription-ptp-operator-subscription-kuttl"
        );
        let recorded = BTreeMap::from([(
            "/cgu1-default-subscription-ptp-operator-subscription".to_string(),
            "recorded-name".to_string(),
        )]);
        assert_eq!(
            subscription_view_name(&c, "kuttl", "ptp-operator-subscription", Some(&recorded)),
            "recorded-name"
        );
    }

    #[test]
    fn upgrade_pending_manual_plan_gets_an_approval_action() {
        let (snap, w) = settle(sub_status("UpgradePending"), plan("Manual", false));
        let ip = snap
            .managed_cluster_view("spoke1", "install-abcde")
            .unwrap();
        assert_eq!(ip.spec.scope.resource, "InstallPlan");
        assert_eq!(ip.spec.scope.namespace, "openshift-ptp");
        assert!(views(&w).is_empty(), "views are in place: no rewrite");
        let a = actions(&w);
        assert_eq!(a.len(), 1);
        let a = serde_json::to_value(&a[0]).unwrap();
        assert_eq!(
            a,
            json!({
                "apiVersion": "action.open-cluster-management.io/v1beta1",
                "kind": "ManagedClusterAction",
                "metadata": {"name": "install-abcde", "namespace": "spoke1",
                    "labels": {"openshift-cluster-group-upgrades/clusterGroupUpgrade": "default-cgu1"}},
                "spec": {"actionType": "Update", "kube": {
                    "resource": "installplan", "namespace": "openshift-ptp",
                    "template": {
                        "apiVersion": "operators.coreos.com/v1alpha1", "kind": "InstallPlan",
                        "metadata": {"name": "install-abcde", "resourceVersion": "777"},
                        "spec": {"approval": "Manual", "approved": true,
                                 "clusterServiceVersionNames": ["ptp-operator.v4.9.1"]}}}}
            })
        );
    }

    #[test]
    fn automatic_or_approved_plans_and_other_states_get_no_action() {
        let (_, w) = settle(sub_status("UpgradePending"), plan("Automatic", false));
        assert!(actions(&w).is_empty());
        let (_, w) = settle(sub_status("UpgradePending"), plan("Manual", true));
        assert!(actions(&w).is_empty());
        let (snap, w) = settle(sub_status("AtLatestKnown"), plan("Manual", false));
        assert!(actions(&w).is_empty());
        assert!(
            snap.managed_cluster_view("spoke1", "install-abcde")
                .is_none(),
            "no InstallPlan view before UpgradePending"
        );
    }

    #[test]
    fn view_not_ready_waits() {
        let c = cgu();
        let mut snap = Snapshot::new();
        let w = approve(&c, "kuttl", "spoke1", &subs(), &snap);
        let mut v = views(&w).remove(0);
        v.status = Some(
            serde_json::from_value(json!({"conditions": [{"type": "Processing",
                "status": "False", "reason": "GetResourceFailed"}],
                "result": sub_status("UpgradePending")}))
            .unwrap(),
        );
        snap.insert_managed_cluster_view(v);
        assert!(approve(&c, "kuttl", "spoke1", &subs(), &snap).is_empty());
    }

    #[test]
    fn cleanup_deletes_only_this_cgus_views_of_the_cluster() {
        let (mut snap, _) = settle(sub_status("UpgradePending"), plan("Manual", false));
        let mut foreign = view(&cgu(), "spoke1", "foreign", "X", "x", "");
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(labels::CGU.into(), "other".into());
        snap.insert_managed_cluster_view(foreign);
        let mut elsewhere = view(&cgu(), "spoke2", "v", "X", "x", "");
        elsewhere.metadata.namespace = Some("spoke2".into());
        snap.insert_managed_cluster_view(elsewhere);
        let w = cleanup(&cgu(), "spoke1", &snap);
        let mut names: Vec<String> = w
            .iter()
            .map(|w| match w {
                Write::DeleteManagedClusterView { namespace, name } => {
                    assert_eq!(namespace, "spoke1");
                    name.clone()
                }
                _ => panic!("unexpected {w:?}"),
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cgu1-default-subscription-ptp-operator-subscription-kuttl",
                "install-abcde"
            ]
        );
        assert_eq!(cleanup_all(&cgu(), &snap).len(), 3);
    }
}
