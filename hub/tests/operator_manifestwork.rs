//! ManifestWork rollouts (docs/contract.md §3.13, issue 20) through the operator against the
//! in-process Kubernetes API double: the operator watches the ManifestWorkReplicaSet
//! templates and its own ManifestWorks, creates `<cgu-namespace>.<template>` in each cluster
//! namespace of the current batch, one template at a time, and moves on when the test (playing
//! OCM's work agent) reports the work applied and available through the `/status`
//! subresource, with the status-feedback values the template's expectedValues annotation asks
//! for.
//!
//! Nothing here waits a fixed time: every assertion waits (with a generous timeout) for the
//! state it expects, and the operator's clock never moves, so every reaction seen here comes
//! from a watch event.

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_support;

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use operator_support::{
    MW_API, MWRS_API, RunningOperator, applied_work_status, find_condition, mw_template, text,
};
use serde_json::{Value, json};
use talm_hub::operator::Config;
use talm_kube_double::KubeDouble;

const NS: &str = "default";
const CGU: &str = "mw-rollout";
const WAIT: Duration = Duration::from_secs(30);
const CGU_LABEL: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
const CGU_NS_LABEL: &str = "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace";

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(20), what, f).await
}

fn managed_cluster(name: &str) -> Value {
    json!({
        "apiVersion": "cluster.open-cluster-management.io/v1",
        "kind": "ManagedCluster",
        "metadata": {"name": name, "labels": {"name": name, "ztp-done": ""}},
        "spec": {"hubAcceptsClient": true},
        "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
            "status": "True", "reason": "Available", "message": "ok",
            "lastTransitionTime": operator_support::T0}]}
    })
}

fn mw_cgu(templates: &[&str], clusters: &[&str], max_concurrency: u32) -> Value {
    json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {"name": CGU, "namespace": NS},
        "spec": {
            "clusters": clusters,
            "manifestWorkTemplates": templates,
            "remediationStrategy": {"maxConcurrency": max_concurrency, "timeout": 240},
            "enable": true
        }
    })
}

fn start(double: &KubeDouble) -> RunningOperator {
    RunningOperator::start(
        double.client(),
        operator_support::manual_clock(),
        Config::default(),
    )
}

fn cgu(double: &KubeDouble) -> Option<Value> {
    operator_support::cgu(double, NS, CGU)
}

/// `(status, reason, message)` of a CGU condition.
fn condition(c: &Value, type_: &str) -> Option<(String, String, String)> {
    find_condition(c, type_).map(|x| (text(x, "status"), text(x, "reason"), text(x, "message")))
}

fn work(double: &KubeDouble, cluster: &str, template: &str) -> Option<Value> {
    double.get_value(
        MW_API,
        "ManifestWork",
        Some(cluster),
        &format!("{NS}.{template}"),
    )
}

/// The names of talm's ManifestWorks in `cluster`'s namespace.
fn works_in(double: &KubeDouble, cluster: &str) -> Vec<String> {
    double
        .list_values(MW_API, "ManifestWork", Some(cluster))
        .iter()
        .map(|w| text(&w["metadata"], "name"))
        .collect()
}

fn mw_api(double: &KubeDouble, cluster: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("work.open-cluster-management.io", "v1", "ManifestWork");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "manifestworks");
    Api::namespaced_with(double.client(), cluster, &ar)
}

/// Reports `ns/<NS>.<template>` applied and available through the API's status subresource,
/// as OCM's work agent does, with these status-feedback values.
async fn report_applied(
    double: &KubeDouble,
    cluster: &str,
    template: &str,
    values: &[(i64, &str, &str)],
) {
    let w = work(double, cluster, template).unwrap();
    let status = applied_work_status(&w, values);
    mw_api(double, cluster)
        .patch_status(
            &format!("{NS}.{template}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
}

/// Waits until `cluster`'s namespace holds exactly talm's work of `template` (the previous
/// one deleted) and checks it: labelled for the CGU, its spec the template's.
async fn wait_work(double: &KubeDouble, cluster: &str, template: &str) -> Value {
    let want = format!("{NS}.{template}");
    wait_for(&format!("{cluster}: only {want}"), || {
        (works_in(double, cluster) == [want.clone()]).then_some(())
    })
    .await;
    let w = work(double, cluster, template).unwrap();
    assert_eq!(w["metadata"]["labels"][CGU_LABEL], CGU, "{w:#}");
    assert_eq!(w["metadata"]["labels"][CGU_NS_LABEL], NS, "{w:#}");
    let t = double
        .get_value(MWRS_API, "ManifestWorkReplicaSet", Some(NS), template)
        .unwrap();
    assert_eq!(
        w["spec"], t["spec"]["manifestWorkTemplate"],
        "the work's spec is the template's manifestWorkTemplate"
    );
    w
}

fn manifest_work_index(c: &Value, cluster: &str) -> Option<i64> {
    c["status"]["status"]["currentBatchRemediationProgress"][cluster]["manifestWorkIndex"].as_i64()
}

/// Three templates over three clusters in two batches (`maxConcurrency` 2); the second
/// template asks for a status-feedback value. Each cluster gets the templates' works one at
/// a time, the previous one deleted first; a work whose feedback value differs from the
/// expected one holds its cluster back; the CGU ends `Succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_template_rollout_runs_to_succeeded() {
    let double = KubeDouble::start().await.unwrap();
    for c in ["spoke1", "spoke2", "spoke3"] {
        double.put_value(managed_cluster(c)).unwrap();
    }
    let expected = json!([{"manifestIndex": 1, "name": "ready", "value": "yes"}]);
    for (t, manifests, exp) in [
        ("t1", 1, Value::Null),
        ("t2", 2, expected),
        ("t3", 1, Value::Null),
    ] {
        double
            .put_value(mw_template(NS, t, manifests, exp))
            .unwrap();
    }
    double
        .put_value(mw_cgu(
            &["t1", "t2", "t3"],
            &["spoke1", "spoke2", "spoke3"],
            2,
        ))
        .unwrap();
    let op = start(&double);

    let started = wait_for("rollout in progress", || {
        cgu(&double).filter(|c| {
            condition(c, "Progressing").is_some_and(|(s, r, _)| s == "True" && r == "InProgress")
        })
    })
    .await;
    assert_eq!(
        condition(&started, "Progressing").unwrap().2,
        "Rolling out manifestworks"
    );
    assert_eq!(
        started["status"]["remediationPlan"],
        json!([["spoke1", "spoke2"], ["spoke3"]])
    );

    // Batch 1, template 1.
    for c in ["spoke1", "spoke2"] {
        wait_work(&double, c, "t1").await;
    }
    assert!(
        works_in(&double, "spoke3").is_empty(),
        "spoke3 is in batch 2"
    );
    for c in ["spoke1", "spoke2"] {
        report_applied(&double, c, "t1", &[]).await;
    }
    // Template 2 (expected value `ready=yes` on manifest 1).
    for c in ["spoke1", "spoke2"] {
        wait_work(&double, c, "t2").await;
    }
    wait_for("manifestWorkIndex 1 in the status", || {
        cgu(&double).filter(|c| manifest_work_index(c, "spoke1") == Some(1))
    })
    .await;
    // spoke1's work reports another value, then spoke2's the expected one: once spoke2 has
    // moved on (decided on a snapshot that holds spoke1's report, which came first), spoke1
    // is still at t2.
    report_applied(&double, "spoke1", "t2", &[(1, "ready", "no")]).await;
    report_applied(&double, "spoke2", "t2", &[(1, "ready", "yes")]).await;
    wait_work(&double, "spoke2", "t3").await;
    assert_eq!(
        works_in(&double, "spoke1"),
        [format!("{NS}.t2")],
        "a feedback value other than the expected one holds spoke1 back"
    );
    report_applied(&double, "spoke1", "t2", &[(1, "ready", "yes")]).await;
    wait_work(&double, "spoke1", "t3").await;
    for c in ["spoke1", "spoke2"] {
        report_applied(&double, c, "t3", &[]).await;
    }
    // Batch 2: spoke3 through the three templates.
    for t in ["t1", "t2", "t3"] {
        wait_work(&double, "spoke3", t).await;
        let values: &[(i64, &str, &str)] = if t == "t2" {
            &[(1, "ready", "yes")]
        } else {
            &[]
        };
        report_applied(&double, "spoke3", t, values).await;
    }

    let done = wait_for("Succeeded", || {
        cgu(&double).filter(|c| condition(c, "Succeeded").is_some())
    })
    .await;
    let msg = "All manifestworks rolled out successfully on all clusters";
    assert_eq!(
        condition(&done, "Succeeded").unwrap(),
        ("True".into(), "Completed".into(), msg.into()),
        "{:#}",
        done["status"]
    );
    assert_eq!(
        condition(&done, "Progressing").unwrap(),
        ("False".into(), "Completed".into(), msg.into())
    );
    op.stop(WAIT).await;
}

/// Templates that do not exist fail validation with TALM's reason and message; once they are
/// created, the CGU (reconciled through the template index, not a timer: the clock never
/// moves) validates and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_templates_fail_validation_until_they_exist() {
    let double = KubeDouble::start().await.unwrap();
    double.put_value(managed_cluster("spoke1")).unwrap();
    double
        .put_value(mw_template(NS, "t1", 1, Value::Null))
        .unwrap();
    // A template of a missing name in another namespace does not count.
    double
        .put_value(mw_template("elsewhere", "a", 1, Value::Null))
        .unwrap();
    double
        .put_value(mw_cgu(&["a", "t1", "b"], &["spoke1"], 1))
        .unwrap();
    let op = start(&double);

    let c = wait_for("Validated=False", || {
        cgu(&double).filter(|c| condition(c, "Validated").is_some_and(|(s, _, _)| s == "False"))
    })
    .await;
    assert_eq!(
        condition(&c, "Validated").unwrap(),
        (
            "False".into(),
            "NotAllManifestTemplatesExist".into(),
            "Missing manifest templates: [a b]".into()
        )
    );
    assert!(works_in(&double, "spoke1").is_empty());

    let gvk = GroupVersionKind::gvk(
        "work.open-cluster-management.io",
        "v1alpha1",
        "ManifestWorkReplicaSet",
    );
    let ar = ApiResource::from_gvk_with_plural(&gvk, "manifestworkreplicasets");
    let api: Api<DynamicObject> = Api::namespaced_with(double.client(), NS, &ar);
    let a: DynamicObject = serde_json::from_value(mw_template(NS, "a", 1, Value::Null)).unwrap();
    api.create(&PostParams::default(), &a).await.unwrap();
    wait_for("only b missing", || {
        cgu(&double).filter(|c| {
            condition(c, "Validated")
                .is_some_and(|(_, _, m)| m == "Missing manifest templates: [b]")
        })
    })
    .await;
    let b: DynamicObject = serde_json::from_value(mw_template(NS, "b", 1, Value::Null)).unwrap();
    api.create(&PostParams::default(), &b).await.unwrap();
    wait_for("validated", || {
        cgu(&double).filter(|c| condition(c, "Validated").is_some_and(|(s, _, _)| s == "True"))
    })
    .await;
    wait_work(&double, "spoke1", "a").await;
    op.stop(WAIT).await;
}

/// Deleting the CGU deletes the ManifestWorks it created, and the operator then releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_cgu_deletes_its_manifest_works() {
    let double = KubeDouble::start().await.unwrap();
    for c in ["spoke1", "spoke2"] {
        double.put_value(managed_cluster(c)).unwrap();
    }
    double
        .put_value(mw_template(NS, "t1", 1, Value::Null))
        .unwrap();
    double
        .put_value(mw_cgu(&["t1"], &["spoke1", "spoke2"], 2))
        .unwrap();
    let op = start(&double);
    for c in ["spoke1", "spoke2"] {
        wait_work(&double, c, "t1").await;
    }
    double
        .delete::<talm_shared::api::cgu::ClusterGroupUpgrade>(Some(NS), CGU)
        .unwrap();
    wait_for("works deleted and CGU gone", || {
        (cgu(&double).is_none()
            && works_in(&double, "spoke1").is_empty()
            && works_in(&double, "spoke2").is_empty())
        .then_some(())
    })
    .await;
    op.stop(WAIT).await;
}

/// The operator watches only the ManifestWorks talm labelled (as TALM's informer does): a
/// work someone else created in a cluster namespace never reaches its cache. Both new kinds
/// are counted in `talm_watch_events_total{kind}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_talm_labelled_manifest_works_are_watched() {
    let double = KubeDouble::start().await.unwrap();
    double.put_value(managed_cluster("spoke1")).unwrap();
    double
        .put_value(json!({
            "apiVersion": MW_API, "kind": "ManifestWork",
            "metadata": {"name": "someone-elses", "namespace": "spoke1",
                         "labels": {"app": "other"}},
            "spec": {"workload": {"manifests": []}}
        }))
        .unwrap();
    double
        .put_value(mw_template(NS, "t1", 1, Value::Null))
        .unwrap();
    double.put_value(mw_cgu(&["t1"], &["spoke1"], 1)).unwrap();
    let op = start(&double);
    wait_work_listed(&double, "spoke1", &["someone-elses", "default.t1"]).await;
    // The operator's own work is in its cache (it recorded the create); the other is not.
    let shared = op.shared.clone();
    wait_for("talm's work in the cache", || {
        shared
            .cache_read()
            .snapshot()
            .manifest_work("spoke1", "default.t1")
            .map(|_| ())
    })
    .await;
    // A status change of talm's work comes through the watch (applied, not yet available:
    // the work stays, so the cache keeps it).
    mw_api(&double, "spoke1")
        .patch_status(
            "default.t1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Applied",
                "status": "True", "reason": "AppliedManifestWorkComplete", "message": "ok",
                "lastTransitionTime": operator_support::T0}]}})),
        )
        .await
        .unwrap();
    wait_for("the status in the cache", || {
        shared
            .cache_read()
            .snapshot()
            .manifest_work("spoke1", "default.t1")
            .and_then(|w| w.status.as_ref().map(|_| ()))
    })
    .await;
    assert!(
        shared
            .cache_read()
            .snapshot()
            .manifest_work("spoke1", "someone-elses")
            .is_none(),
        "a work without talm's label is not watched"
    );
    for kind in ["manifestwork", "manifestworkreplicaset"] {
        let labels = talm_hub::metrics::KindLabels { kind: kind.into() };
        assert!(
            shared.metrics.watch_events.get_or_create(&labels).get() > 0,
            "talm_watch_events_total{{kind={kind:?}}}"
        );
    }
    op.stop(WAIT).await;
}

/// Waits until `cluster`'s namespace holds exactly these works (in name order).
async fn wait_work_listed(double: &KubeDouble, cluster: &str, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    wait_for(&format!("{cluster}: works {want:?}"), || {
        let mut have = works_in(double, cluster);
        have.sort();
        (have == want).then_some(())
    })
    .await;
}

/// On a hub whose API server does not serve ManifestWorkReplicaSets (no CRD), the operator
/// still becomes ready and runs CGUs; a ManifestWork rollout then finds no template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_the_template_crd_still_runs() {
    let kinds = talm_kube_double::default_kinds()
        .into_iter()
        .filter(|k| k.plural != "manifestworkreplicasets");
    let double = KubeDouble::builder()
        .no_default_kinds()
        .kinds(kinds)
        .start()
        .await
        .unwrap();
    double.put_value(managed_cluster("spoke1")).unwrap();
    double.put_value(mw_cgu(&["t1"], &["spoke1"], 1)).unwrap();
    let op = start(&double);
    let c = wait_for("Validated=False", || {
        cgu(&double).filter(|c| condition(c, "Validated").is_some_and(|(s, _, _)| s == "False"))
    })
    .await;
    assert_eq!(
        condition(&c, "Validated").unwrap().1,
        "NotAllManifestTemplatesExist"
    );
    assert!(op.shared.cache_read().synced());
    op.stop(WAIT).await;
}
