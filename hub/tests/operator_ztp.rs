//! The ZTP auto-CGU controller (docs/contract.md §3.11) and manual InstallPlan approval
//! through ManagedClusterView/ManagedClusterAction (§3.10), with the real operator against the
//! in-process Kubernetes API double.
//!
//! Compliance is flipped by patching root-policy status, as TALM's kuttl suite does; the
//! views' status (which RHACM's addon would fill from the spoke) is patched the same way.
//! Nothing waits a fixed time: every assertion waits for the state it expects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_support;

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use operator_support::{
    RunningOperator, T0, musthave, policy_templates, put_policy, set_compliance,
    subscription_object, ztp_labels,
};
use serde_json::{Value, json};
use talm_hub::operator::Config;
use talm_kube_double::KubeDouble;
use talm_shared::api::rhacm::{ManagedCluster, ManagedClusterView};

const WAIT: Duration = Duration::from_secs(30);
const POLICY_NS: &str = "ztp-common";
const CGU_V: &str = "ran.openshift.io/v1alpha1";
const MC_V: &str = "cluster.open-cluster-management.io/v1";
const MCV_V: &str = "view.open-cluster-management.io/v1beta1";
const MCA_V: &str = "action.open-cluster-management.io/v1beta1";

fn start(double: &KubeDouble, ztp: bool) -> RunningOperator {
    let config = Config {
        ztp,
        ..Config::default()
    };
    RunningOperator::start(double.client(), operator_support::manual_clock(), config)
}

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(20), what, f).await
}

fn managed_cluster(name: &str, available: bool) -> Value {
    json!({
        "apiVersion": MC_V, "kind": "ManagedCluster",
        "metadata": {"name": name, "labels": {"name": name}},
        "spec": {"hubAcceptsClient": true},
        "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
            "status": if available {"True"} else {"Unknown"},
            "reason": "r", "message": "m", "lastTransitionTime": T0}]}
    })
}

fn config_policy(objects: Value) -> Value {
    policy_templates("cfg", objects)
}

fn namespace_object(name: &str) -> Value {
    json!([musthave(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))])
}

fn ztp_cgu(double: &KubeDouble, cluster: &str) -> Option<Value> {
    operator_support::cgu(double, "ztp-install", cluster)
}

fn succeeded(cgu: &Value) -> bool {
    cgu["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Succeeded" && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_cluster_gets_a_ztp_cgu_that_runs_to_ztp_done_and_is_recreated() {
    let double = KubeDouble::start().await.unwrap();
    let cluster = "sno1";
    double.put_value(managed_cluster(cluster, false)).unwrap();
    put_policy(
        &double,
        POLICY_NS,
        "p-late",
        cluster,
        Some("10"),
        namespace_object("a"),
    );
    put_policy(
        &double,
        POLICY_NS,
        "p-b",
        cluster,
        Some("2"),
        namespace_object("b"),
    );
    put_policy(
        &double,
        POLICY_NS,
        "p-a",
        cluster,
        Some("2"),
        namespace_object("c"),
    );
    put_policy(
        &double,
        POLICY_NS,
        "p-nowave",
        cluster,
        None,
        namespace_object("d"),
    );
    // A cluster that is not Available gets nothing; one with ztp-done neither.
    double
        .put_value(managed_cluster("sno-down", false))
        .unwrap();
    let mut done = managed_cluster("sno-done", true);
    done["metadata"]["labels"]["ztp-done"] = json!("");
    double.put_value(done).unwrap();

    let op = start(&double, true);
    // Become Available: the CGU appears.
    let mc_api: Api<ManagedCluster> = Api::all(double.client());
    mc_api
        .patch_status(
            cluster,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": managed_cluster(cluster, true)["status"]})),
        )
        .await
        .unwrap();
    let cgu = wait_for("ZTP CGU created", || ztp_cgu(&double, cluster)).await;
    let uid = double
        .get_value(MC_V, "ManagedCluster", None, cluster)
        .unwrap()["metadata"]["uid"]
        .clone();
    assert!(uid.as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(
        cgu["metadata"]["ownerReferences"],
        json!([{"apiVersion": MC_V, "kind": "ManagedCluster", "name": cluster, "uid": uid,
                "blockOwnerDeletion": true, "controller": true}])
    );
    assert_eq!(cgu["spec"]["clusters"], json!([cluster]));
    assert_eq!(cgu["spec"]["enable"], true);
    assert_eq!(cgu["spec"]["remediationStrategy"]["maxConcurrency"], 1);
    assert_eq!(cgu["spec"]["remediationStrategy"]["timeout"], 240);
    assert_eq!(
        cgu["spec"]["managedPolicies"],
        json!(["p-a", "p-b", "p-late"])
    );
    assert_eq!(
        cgu["spec"]["actions"]["afterCompletion"],
        json!({"addClusterLabels": {"ztp-done": ""}, "removeClusterLabels": ["ztp-running"]})
    );
    assert!(ztp_cgu(&double, "sno-down").is_none());
    assert!(ztp_cgu(&double, "sno-done").is_none());

    // The CGU starts: ztp-running.
    wait_for("ztp-running", || {
        (ztp_labels(&double, cluster) == ["ztp-running"]).then_some(())
    })
    .await;
    // Policies turn compliant: the cluster completes, gets ztp-done, loses ztp-running.
    for p in ["p-a", "p-b", "p-late"] {
        set_compliance(&double, POLICY_NS, p, cluster, "Compliant").await;
    }
    wait_for("ztp-done", || {
        (ztp_labels(&double, cluster) == ["ztp-done"]).then_some(())
    })
    .await;
    let first = wait_for("CGU succeeded", || {
        ztp_cgu(&double, cluster).filter(succeeded)
    })
    .await;

    // Removing ztp-done alone re-creates nothing while the old CGU exists...
    mc_api
        .patch(
            cluster,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ztp-done": null}}})),
        )
        .await
        .unwrap();
    // ...deleting that CGU does.
    let cgu_api: Api<talm_shared::api::cgu::ClusterGroupUpgrade> =
        Api::namespaced(double.client(), "ztp-install");
    cgu_api
        .delete(cluster, &DeleteParams::default())
        .await
        .unwrap();
    let second = wait_for("ZTP CGU re-created", || {
        ztp_cgu(&double, cluster).filter(|c| c["metadata"]["uid"] != first["metadata"]["uid"])
    })
    .await;
    assert_eq!(
        second["spec"]["managedPolicies"],
        json!(["p-a", "p-b", "p-late"])
    );
    assert!(
        double
            .get_value("v1", "Namespace", None, "ztp-install")
            .is_some(),
        "the ZTP namespace is created"
    );
    op.stop(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztp_off_creates_nothing_and_bad_waves_create_nothing() {
    let double = KubeDouble::start().await.unwrap();
    double.put_value(managed_cluster("sno-bad", true)).unwrap();
    put_policy(
        &double,
        POLICY_NS,
        "p-x",
        "sno-bad",
        Some("soon"),
        namespace_object("x"),
    );
    double.put_value(managed_cluster("sno-ok", true)).unwrap();
    let op = start(&double, true);
    // The good cluster is handled (so the bad one was looked at too).
    wait_for("ZTP CGU for sno-ok", || ztp_cgu(&double, "sno-ok")).await;
    assert!(ztp_cgu(&double, "sno-bad").is_none());
    op.stop(WAIT).await;

    let double = KubeDouble::start().await.unwrap();
    double.put_value(managed_cluster("sno-off", true)).unwrap();
    // A user CGU proves the operator runs; ZTP stays off.
    double
        .put_value(json!({"apiVersion": CGU_V, "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "probe", "namespace": "default"},
            "spec": {"clusters": ["sno-off"], "managedPolicies": [], "enable": true,
                     "remediationStrategy": {"maxConcurrency": 1}}}))
        .unwrap();
    let op = start(&double, false);
    wait_for("probe CGU reconciled", || {
        double
            .get_value(CGU_V, "ClusterGroupUpgrade", Some("default"), "probe")
            .filter(|c| c["metadata"]["finalizers"].is_array())
    })
    .await;
    assert!(ztp_cgu(&double, "sno-off").is_none());
    op.stop(WAIT).await;
}

async fn fill_view(double: &KubeDouble, ns: &str, name: &str, result: Value) {
    let api: Api<ManagedClusterView> = Api::namespaced(double.client(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "conditions": [{"type": "Processing", "status": "True",
                            "reason": "GetResourceProcessing", "message": "Watching resources successfully",
                            "lastTransitionTime": T0}],
            "result": result}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_policy_gets_views_then_an_approval_action() {
    let double = KubeDouble::start().await.unwrap();
    let cluster = "spoke1";
    double.put_value(managed_cluster(cluster, true)).unwrap();
    put_policy(
        &double,
        "default",
        "sub-policy",
        cluster,
        None,
        config_policy(subscription_object()),
    );
    double
        .put_value(json!({"apiVersion": CGU_V, "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-sub", "namespace": "default",
                         "annotations": {"cluster-group-upgrades-operator/name-suffix": "kuttl"}},
            "spec": {"clusters": [cluster], "managedPolicies": ["sub-policy"], "enable": true,
                     "remediationStrategy": {"maxConcurrency": 1, "timeout": 240}}}))
        .unwrap();
    let op = start(&double, false);

    let sub_view = "cgu-sub-default-subscription-ptp-operator-subscription-kuttl";
    let v = wait_for("Subscription view", || {
        double.get_value(MCV_V, "ManagedClusterView", Some(cluster), sub_view)
    })
    .await;
    assert_eq!(
        v["spec"]["scope"],
        json!({"resource": "Subscription.operators.coreos.com",
               "name": "ptp-operator-subscription", "namespace": "openshift-ptp"})
    );
    assert_eq!(
        v["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"],
        "cgu-sub"
    );

    fill_view(
        &double,
        cluster,
        sub_view,
        json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "Subscription",
               "metadata": {"name": "ptp-operator-subscription", "namespace": "openshift-ptp"},
               "status": {"state": "UpgradePending",
                          "install": {"name": "install-7x2kq", "kind": "InstallPlan"}}}),
    )
    .await;
    let ip = wait_for("InstallPlan view", || {
        double.get_value(MCV_V, "ManagedClusterView", Some(cluster), "install-7x2kq")
    })
    .await;
    assert_eq!(
        ip["spec"]["scope"],
        json!({"resource": "InstallPlan", "name": "install-7x2kq", "namespace": "openshift-ptp"})
    );
    assert!(
        double
            .get_value(
                MCA_V,
                "ManagedClusterAction",
                Some(cluster),
                "install-7x2kq"
            )
            .is_none(),
        "no action before the InstallPlan is seen"
    );

    fill_view(
        &double,
        cluster,
        "install-7x2kq",
        json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "InstallPlan",
               "metadata": {"name": "install-7x2kq", "namespace": "openshift-ptp",
                            "resourceVersion": "4242"},
               "spec": {"approval": "Manual", "approved": false,
                        "clusterServiceVersionNames": ["ptp-operator.v4.16.0"]}}),
    )
    .await;
    let mca = wait_for("approval action", || {
        double.get_value(
            MCA_V,
            "ManagedClusterAction",
            Some(cluster),
            "install-7x2kq",
        )
    })
    .await;
    assert_eq!(
        mca["metadata"]["labels"],
        json!({"openshift-cluster-group-upgrades/clusterGroupUpgrade": "default-cgu-sub"})
    );
    assert_eq!(mca["spec"]["actionType"], "Update");
    assert_eq!(
        mca["spec"]["kube"],
        json!({"resource": "installplan", "namespace": "openshift-ptp",
               "template": {"apiVersion": "operators.coreos.com/v1alpha1", "kind": "InstallPlan",
                   "metadata": {"name": "install-7x2kq", "resourceVersion": "4242"},
                   "spec": {"approval": "Manual", "approved": true,
                            "clusterServiceVersionNames": ["ptp-operator.v4.16.0"]}}})
    );

    // The cluster completes: its views go.
    set_compliance(&double, "default", "sub-policy", cluster, "Compliant").await;
    wait_for("views deleted", || {
        double
            .list_values(MCV_V, "ManagedClusterView", Some(cluster))
            .is_empty()
            .then_some(())
    })
    .await;
    op.stop(WAIT).await;
}
