//! The two adapters carry out a decision the same way: the same decisions, applied by
//! `talm-hub plan` to its in-memory objects (`plan::apply`) and by the operator to an API server
//! (`operator::writes`, here against the in-process Kubernetes double), leave the same objects
//! behind: ManagedCluster labels and annotations, SpokeAgent tasks (created, replaced, cleared),
//! the CGU's finalizers and status, and the events.

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use kube::api::Api;
use serde_json::{Map, Value, json};
use talm_hub::operator::{Config, ManualClock, Operator, writes};
use talm_hub::plan::apply::apply_decision;
use talm_hub::plan::load::load_yaml_str;
use talm_hub::plan::store::{CguKey, Store};
use talm_hub_core::{
    Decision, Event, EventType, FinalizerChange, Notes, ObjectRef, Requeue, TaskChange, Write,
};
use talm_kube_double::KubeDouble;
use talm_shared::api::Time;
use talm_shared::api::cgu::{ClusterGroupUpgrade, ClusterGroupUpgradeStatus, PrecachingSpec};
use talm_shared::api::spokeagent::{BackupTask, InstallPlanTask, PrecacheTask, SubscriptionTarget};

const NS: &str = "ns";
const CGU: &str = "cgu-1";

fn now() -> Timestamp {
    "2026-01-01T10:00:00Z".parse().unwrap()
}

/// The objects both adapters start from.
fn objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
               "metadata": {"name": CGU, "namespace": NS, "uid": "cgu-uid",
                            "finalizers": ["other/keep"]},
               "spec": {"remediationStrategy": {"maxConcurrency": 1}}}),
        json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
               "metadata": {"name": "spoke1", "uid": "spoke1-uid",
                            "labels": {"keep": "k", "drop": "d", "ztp-running": ""},
                            "annotations": {"a0": "x"}},
               "spec": {"hubAcceptsClient": true}}),
        json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
               "metadata": {"name": "spoke2", "uid": "spoke2-uid"},
               "spec": {"hubAcceptsClient": true}}),
        // Another CGU's tasks, with more pre-cache spec fields than the task replacing them.
        json!({"apiVersion": "talm.dev/v1alpha1", "kind": "SpokeAgent",
               "metadata": {"name": "spoke1", "namespace": "spoke1", "uid": "agent1-uid"},
               "spec": {
                   "precache": {"id": "ns/old/old-uid/precache",
                                "deadline": "2026-01-01T09:00:00Z",
                                "spec": {"platformImage": "quay.io/old:1",
                                         "operatorsIndexes": ["registry/index:1"],
                                         "excludePrecachePatterns": ["aws"],
                                         "spaceRequired": "30"}},
                   "backup": {"id": "ns/old/old-uid/backup", "deadline": "2026-01-01T09:00:00Z"}}}),
    ]
}

fn deadline() -> Time {
    Time("2026-01-01T14:00:00Z".parse().unwrap())
}

fn tasks(
    cluster: &str,
    precache: Option<TaskChange<PrecacheTask>>,
    backup: Option<TaskChange<BackupTask>>,
    install_plans: Option<TaskChange<InstallPlanTask>>,
) -> Write {
    Write::SetSpokeAgentTasks {
        namespace: cluster.into(),
        name: cluster.into(),
        precache,
        backup,
        install_plans,
        rollback: None,
    }
}

fn labels(
    cluster: &str,
    add: &[(&str, &str)],
    remove: &[&str],
    add_ann: &[(&str, &str)],
    remove_ann: &[&str],
) -> Write {
    let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let list = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect();
    Write::PatchManagedCluster {
        name: cluster.into(),
        add_labels: map(add),
        remove_labels: list(remove),
        add_annotations: map(add_ann),
        remove_annotations: list(remove_ann),
    }
}

fn event(reason: &str, cluster: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        action: "RemediationInClusterStarted".into(),
        note: format!("ClusterGroupUpgrade {CGU}: cluster {cluster} upgrade started"),
        regarding: ObjectRef {
            api_version: "ran.openshift.io/v1alpha1".into(),
            kind: "ClusterGroupUpgrade".into(),
            namespace: NS.into(),
            name: CGU.into(),
            uid: "cgu-uid".into(),
        },
        related: Some(ObjectRef {
            api_version: "cluster.open-cluster-management.io/v1".into(),
            kind: "ManagedCluster".into(),
            namespace: String::new(),
            name: cluster.into(),
            uid: format!("{cluster}-uid"),
        }),
        annotations: BTreeMap::from([("cgu.openshift.io/event-type".into(), "cluster".into())]),
    }
}

fn decision(
    finalizer: FinalizerChange,
    status: ClusterGroupUpgradeStatus,
    writes: Vec<Write>,
    events: Vec<Event>,
) -> Decision {
    Decision {
        status,
        finalizer,
        writes,
        events,
        requeue: Requeue::Never,
        notes: Notes::default(),
    }
}

/// Three decisions touching every part of what a decision writes.
fn decisions() -> Vec<Decision> {
    let precache = PrecacheTask {
        id: "ns/cgu-1/cgu-uid/precache".into(),
        spec: PrecachingSpec {
            platform_image: "quay.io/new:2".into(),
            additional_images: vec!["quay.io/extra:1".into()],
            ..Default::default()
        },
        deadline: deadline(),
        hold: false,
        rate_limit_bytes_per_second: None,
        order: None,
    };
    let backup = BackupTask {
        id: "ns/cgu-1/cgu-uid/backup".into(),
        deadline: deadline(),
    };
    let approvals = InstallPlanTask {
        id: "ns/cgu-1/cgu-uid/installplans/p1".into(),
        subscriptions: vec![SubscriptionTarget {
            name: "ptp".into(),
            namespace: "openshift-ptp".into(),
        }],
        deadline: deadline(),
    };
    let mut started = ClusterGroupUpgradeStatus {
        computed_max_concurrency: Some(1),
        remediation_plan: Some(vec![vec!["spoke1".into()], vec!["spoke2".into()]]),
        ..Default::default()
    };
    let first = decision(
        FinalizerChange::Add,
        started.clone(),
        vec![
            // Replaces the old CGU's pre-cache task and clears its backup.
            tasks(
                "spoke1",
                Some(TaskChange::Assign(precache)),
                Some(TaskChange::Clear),
                Some(TaskChange::Assign(approvals)),
            ),
            // No agent yet: created with the task.
            tasks("spoke2", None, Some(TaskChange::Assign(backup)), None),
            // No agent and nothing to assign: nothing happens.
            tasks("spoke3", Some(TaskChange::Clear), None, None),
            // Removal wins over an add of the same key; removing absent keys is harmless.
            labels(
                "spoke1",
                &[("new", "n"), ("drop", "again")],
                &["drop", "missing"],
                &[("a", "1")],
                &["not-there"],
            ),
        ],
        vec![event("CguStarted", "spoke1")],
    );
    let second = decision(
        FinalizerChange::Add,
        started.clone(),
        vec![
            labels(
                "spoke1",
                &[("ztp-done", "")],
                &["ztp-running"],
                &[],
                &["a0"],
            ),
            // A label map the patch creates only to remove from is not left behind.
            labels("spoke2", &[], &["x"], &[], &[]),
            tasks("spoke1", None, None, Some(TaskChange::Clear)),
        ],
        vec![event("CguSuccess", "spoke1"), event("CguSuccess", "spoke2")],
    );
    started.computed_max_concurrency = Some(2);
    let third = decision(FinalizerChange::Remove, started, Vec::new(), Vec::new());
    vec![first, second, third]
}

/// What talm writes of an object: its identity, labels, annotations, finalizers, spec and
/// status (the servers' own metadata, such as uids and resource versions, left out).
fn written(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let mut m = Map::new();
    for field in ["name", "namespace", "labels", "annotations", "finalizers"] {
        match meta.get(field) {
            // An empty map or list is no map or list to every reader.
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(v) => {
                m.insert(field.into(), v.clone());
            }
            None => {}
        }
    }
    json!({"metadata": m, "spec": obj.get("spec"), "status": obj.get("status")})
}

/// An event as both adapters write it, without its name (each adapter makes names unique its
/// own way) and `reportingInstance` (the replica's identity, `talm-hub` offline).
fn event_body(obj: &Value) -> Value {
    let mut e = obj.as_object().unwrap().clone();
    for field in [
        "metadata",
        "reportingInstance",
        "series",
        "deprecatedCount",
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedSource",
        "related",
        "regarding",
    ] {
        e.remove(field);
    }
    let reference = |r: &Value| {
        json!({"apiVersion": r["apiVersion"], "kind": r["kind"], "namespace": r.get("namespace"),
               "name": r["name"], "uid": r["uid"]})
    };
    json!({"event": e, "annotations": obj["metadata"]["annotations"],
           "namespace": obj["metadata"]["namespace"],
           "regarding": reference(&obj["regarding"]),
           "related": obj.get("related").map(reference)})
}

/// The objects to compare, by (apiVersion, kind, namespace, name).
const COMPARED: [(&str, &str, &str, &str); 6] = [
    ("ran.openshift.io/v1alpha1", "ClusterGroupUpgrade", NS, CGU),
    (
        "cluster.open-cluster-management.io/v1",
        "ManagedCluster",
        "",
        "spoke1",
    ),
    (
        "cluster.open-cluster-management.io/v1",
        "ManagedCluster",
        "",
        "spoke2",
    ),
    ("talm.dev/v1alpha1", "SpokeAgent", "spoke1", "spoke1"),
    ("talm.dev/v1alpha1", "SpokeAgent", "spoke2", "spoke2"),
    ("talm.dev/v1alpha1", "SpokeAgent", "spoke3", "spoke3"),
];

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

#[tokio::test]
async fn plan_and_operator_apply_decisions_alike() {
    // The planner.
    let text = objects()
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut store = Store::from_loaded(load_yaml_str("in.yaml", &text).unwrap(), now()).unwrap();
    let key = CguKey {
        namespace: NS.into(),
        name: CGU.into(),
    };
    for d in decisions() {
        apply_decision(&mut store, &key, &d, now()).unwrap();
    }
    let planned: Vec<Option<Value>> = COMPARED
        .iter()
        .map(|(api_version, kind, ns, name)| {
            store
                .output_objects()
                .find(|o| {
                    o["apiVersion"] == *api_version
                        && o["kind"] == *kind
                        && o["metadata"]["name"] == *name
                        && o["metadata"]
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            == *ns
                })
                .map(|o| written(&Value::Object(o.clone())))
        })
        .collect();
    let planned_events = sorted(
        store
            .output_objects()
            .filter(|o| o["kind"] == "Event")
            .map(|o| event_body(&Value::Object(o.clone())))
            .collect(),
    );

    // The operator, against the double.
    let double = KubeDouble::start().await.unwrap();
    for obj in objects() {
        double.put_value(obj).unwrap();
    }
    let op = Operator::new(
        double.client(),
        Arc::new(ManualClock::new(now())),
        Config::default(),
    );
    let shared = op.shared();
    let cgus: Api<ClusterGroupUpgrade> = Api::namespaced(double.client(), NS);
    for mut d in decisions() {
        // Each decision is made from the CGU as it is now (its resourceVersion guards the
        // finalizer and status writes).
        let cgu = cgus.get(CGU).await.unwrap();
        writes::apply_writes(&shared, &d.writes).await.unwrap();
        let outcome = writes::apply_cgu(&shared, &cgu, &mut d).await.unwrap();
        assert!(
            matches!(outcome, writes::Outcome::Done { .. }),
            "{outcome:?}"
        );
        writes::publish_events(&shared, &cgu, &d.events, now()).await;
    }
    let served: Vec<Option<Value>> = COMPARED
        .iter()
        .map(|(api_version, kind, ns, name)| {
            let ns = (!ns.is_empty()).then_some(*ns);
            double
                .get_value(api_version, kind, ns, name)
                .map(|o| written(&o))
        })
        .collect();
    let served_events = sorted(
        double
            .list_values("events.k8s.io/v1", "Event", Some(NS))
            .iter()
            .map(event_body)
            .collect(),
    );

    for (i, (p, s)) in planned.iter().zip(&served).enumerate() {
        assert_eq!(p, s, "{:?}", COMPARED[i]);
    }
    assert_eq!(planned_events, served_events);

    // And what they agree on is what the decisions mean.
    let agent1 = served[3].as_ref().unwrap();
    assert_eq!(
        agent1["spec"],
        json!({"precache": {"id": "ns/cgu-1/cgu-uid/precache",
                            "deadline": "2026-01-01T14:00:00Z",
                            "spec": {"platformImage": "quay.io/new:2",
                                     "operatorsIndexes": [],
                                     "operatorsPackagesAndChannels": [],
                                     "additionalImages": ["quay.io/extra:1"]}}}),
        "the old task's spec fields are gone; backup and approvals cleared"
    );
    let spoke1 = served[1].as_ref().unwrap();
    assert_eq!(
        spoke1["metadata"]["labels"],
        json!({"keep": "k", "new": "n", "ztp-done": ""})
    );
    assert_eq!(spoke1["metadata"]["annotations"], json!({"a": "1"}));
    assert!(
        served[2].as_ref().unwrap()["metadata"]
            .get("labels")
            .is_none()
    );
    assert_eq!(
        served[4].as_ref().unwrap()["spec"]["backup"]["id"],
        "ns/cgu-1/cgu-uid/backup"
    );
    assert!(served[5].is_none(), "no agent created only to clear");
    let cgu = served[0].as_ref().unwrap();
    assert_eq!(cgu["metadata"]["finalizers"], json!(["other/keep"]));
    assert_eq!(cgu["status"]["computedMaxConcurrency"], 2);
    assert_eq!(served_events.len(), 3);
}
