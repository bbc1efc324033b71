//! The operator (`talm-hub run`'s library entry point) against the in-process Kubernetes API
//! double: the §6.3 A rollout end to end, driven the way TALM's kuttl suite drives it
//! (patching root-policy status and the CGU spec), plus conflicts, deletion cleanup, restarts,
//! the request budget, and leader election.
//!
//! Nothing here waits a fixed time: every assertion waits (with a generous timeout) for the
//! state it expects. The operator's clock is a [`ManualClock`] that never moves, and its
//! periodic requeues are minutes long, so every reaction seen here comes from a watch event.

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use operator_support::{
    RunningOperator, StopSwitch, find_condition, root_status_entries, text, ztp_labels,
};
use serde_json::{Value, json};
use talm_hub::operator::{Config, LeaderElection, LeaseTiming, ManualClock, Operator};
use talm_hub::plan::graph::FileUpdateGraph;
use talm_kube_double::{Fault, KubeDouble, PatchType, RequestRecord, Verb};
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::rhacm::Policy;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/talm");
const NS: &str = "default";
const P1: &str = "policy1-common-cluster-version-policy";
const P2: &str = "policy2-common-pao-sub-policy";
const CGU: &str = "cgu-upgrade-complete";
const WAIT: Duration = Duration::from_secs(30);

// ----- harness -----------------------------------------------------------------------------

fn read_objects(file: &str) -> Vec<Value> {
    let path = Path::new(FIXTURES).join("objects").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// A double seeded with the §6.1 fleet (spoke1..6, policy0..5 with the default compliance
/// matrix, and their child policies).
async fn fleet() -> KubeDouble {
    let double = KubeDouble::start().await.unwrap();
    for f in [
        "managed-clusters.yaml",
        "policies.yaml",
        "child-policies.yaml",
    ] {
        for obj in read_objects(f) {
            double.put_value(obj).unwrap();
        }
    }
    double
}

/// The CGU of `cgu-upgrade-complete.yaml` (§6.3 A), with the kuttl name suffix.
fn upgrade_complete() -> Value {
    json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {"name": CGU, "namespace": NS,
                     "annotations": {"cluster-group-upgrades-operator/name-suffix": "kuttl"}},
        "spec": {
            "clusters": ["spoke1", "spoke4", "spoke6"],
            "managedPolicies": [P1, P2],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
            "enable": false,
            "actions": {
                "beforeEnable": {"addClusterLabels": {"ztp-running": ""}},
                "afterCompletion": {
                    "addClusterLabels": {"ztp-done": ""},
                    "deleteClusterLabels": {"ztp-running": ""},
                    "deleteObjects": true
                }
            }
        }
    })
}

/// The operator with the [`ManualClock`] it runs on.
struct Running {
    op: RunningOperator,
    clock: Arc<ManualClock>,
}

impl std::ops::Deref for Running {
    type Target = RunningOperator;

    fn deref(&self) -> &RunningOperator {
        &self.op
    }
}

impl Running {
    /// Ends the operator without any cleanup (no Lease release), as a crash would.
    async fn crash(self) {
        self.op.crash().await;
    }

    async fn stop(self) {
        self.op.stop(WAIT).await;
    }
}

fn config(identity: &str, leader: Option<LeaderElection>) -> Config {
    let graph = FileUpdateGraph::load(&Path::new(FIXTURES).join("update-graph.yaml")).unwrap();
    Config {
        workers: 5,
        leader_election: leader,
        identity: identity.into(),
        graph: Arc::new(graph),
        graph_fetcher: None,
        ztp: false,
    }
}

fn start(double: &KubeDouble, config: Config) -> Running {
    let clock = operator_support::manual_clock();
    let op = RunningOperator::start(double.client(), clock.clone(), config);
    Running { op, clock }
}

/// Waits until `f` holds, polling; panics with `what` and the last state after [`WAIT`].
async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(20), what, f).await
}

fn cgu(double: &KubeDouble) -> Option<Value> {
    operator_support::cgu(double, NS, CGU)
}

fn condition(c: &Value, type_: &str) -> Option<(String, String)> {
    find_condition(c, type_).map(|x| (text(x, "status"), text(x, "reason")))
}

fn current_batch(c: &Value) -> i64 {
    c["status"]["status"]["currentBatch"].as_i64().unwrap_or(0)
}

fn placement_name(policy: &str) -> String {
    format!("{CGU}-{policy}-placement-kuttl")
}

fn placement_values(double: &KubeDouble, policy: &str) -> Option<Vec<String>> {
    operator_support::placement_values(double, NS, &placement_name(policy))
}

fn owned_count(double: &KubeDouble, api_version: &str, kind: &str) -> usize {
    double
        .list_values(api_version, kind, None)
        .iter()
        .filter(|o| {
            o["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"] == CGU
        })
        .count()
}

fn events(double: &KubeDouble, action: &str) -> Vec<Value> {
    double
        .list_values("events.k8s.io/v1", "Event", Some(NS))
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

/// Sets one cluster's compliance on a root policy through the API's status subresource, as
/// kuttl's `oc patch --subresource=status --type=merge` does.
async fn set_compliance(double: &KubeDouble, policy: &str, cluster: &str, compliant: &str) {
    let api: Api<Policy> = Api::namespaced(double.client(), NS);
    let mut entries = root_status_entries(&api, policy).await;
    entries.retain(|e| e["clustername"] != cluster);
    entries
        .push(json!({"clustername": cluster, "clusternamespace": cluster, "compliant": compliant}));
    api.patch_status(
        policy,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"status": entries}})),
    )
    .await
    .unwrap();
}

async fn enable(double: &KubeDouble) {
    operator_support::enable_cgu(double.client(), NS, CGU).await;
}

async fn wait_not_enabled(double: &KubeDouble) -> Value {
    wait_for("CGU not enabled, plan built", || {
        cgu(double).filter(|c| {
            condition(c, "Progressing") == Some(("False".into(), "NotEnabled".into()))
                && c["status"]["remediationPlan"] == json!([["spoke1"], ["spoke4"]])
        })
    })
    .await
}

/// Waits until `batch` is current and `released` is in policy1's Placement.
async fn wait_batch(double: &KubeDouble, batch: i64, released: &str) {
    let reached = || {
        let c = cgu(double)?;
        // A cluster is released on its current policy only: policy1 (index 0) here.
        (current_batch(&c) == batch
            && placement_values(double, P1).is_some_and(|v| v.iter().any(|x| x == released)))
        .then_some(())
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while reached().is_none() {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for batch {batch} to release {released}; CGU status: {:#}\nplacements: {:?} {:?}",
                cgu(double).map(|c| c["status"].clone()).unwrap_or_default(),
                placement_values(double, P1),
                placement_values(double, P2),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the operator has made no API request for 300 ms (it has nothing left to do).
async fn quiesce(double: &KubeDouble) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = double.requests().len();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = double.requests().len();
        if now == seen {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator never went quiet"
        );
        seen = now;
    }
}

fn api_requests(double: &KubeDouble) -> Vec<RequestRecord> {
    double
        .requests()
        .into_iter()
        .filter(|r| r.verb != Verb::Watch && r.verb != Verb::Discovery)
        .collect()
}

// ----- tests -------------------------------------------------------------------------------

/// §6.3 A upgrade-complete, end to end, with the API-request budget of the reaction to one
/// compliance change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_complete_end_to_end() {
    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let op = start(&double, config("replica-a", None));

    // Step 0: not enabled. Finalizer, plan, enforcement objects releasing nobody, CguCreated.
    let c = wait_not_enabled(&double).await;
    assert!(
        c["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .contains(&json!("ran.openshift.io/cleanup-finalizer"))
    );
    for p in [P1, P2] {
        let values = wait_for("placement created", || placement_values(&double, p)).await;
        assert!(values.is_empty(), "{p} releases nobody yet: {values:?}");
        let b = double
            .get_value(
                "policy.open-cluster-management.io/v1",
                "PlacementBinding",
                Some(NS),
                &placement_name(p),
            )
            .unwrap();
        assert_eq!(b["subFilter"], "restricted");
        assert_eq!(b["bindingOverrides"]["remediationAction"], "enforce");
    }
    let created = wait_for("CguCreated event", || {
        let e = events(&double, "BuildingRemediationPlan");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(created[0]["reason"], "CguCreated");
    assert_eq!(created[0]["reportingController"], "ClusterGroupUpgrade");
    assert_eq!(created[0]["regarding"]["name"], CGU);

    // Step 1: enable. Batch 1 releases spoke1; beforeEnable labels; start events.
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    wait_for("beforeEnable labels", || {
        (ztp_labels(&double, "spoke1") == ["ztp-running"]
            && ztp_labels(&double, "spoke4") == ["ztp-running"])
        .then_some(())
    })
    .await;
    let c = cgu(&double).unwrap();
    assert_eq!(
        condition(&c, "Progressing"),
        Some(("True".into(), "InProgress".into()))
    );
    assert_eq!(
        c["status"]["clusters"],
        json!([{"name": "spoke6", "state": "complete"}])
    );
    assert_eq!(ztp_labels(&double, "spoke6"), ["ztp-done"]);
    let started = wait_for("RemediationStarted", || {
        let e = events(&double, "RemediationStarted");
        (!e.is_empty()).then_some(e)
    })
    .await;
    let ann = &started[0]["metadata"]["annotations"];
    assert_eq!(ann["cgu.openshift.io/total-batches-count"], "2");
    assert_eq!(ann["cgu.openshift.io/total-clusters-count"], "2");
    wait_for("batch and cluster start events", || {
        (!events(&double, "RemediationInBatchStarted").is_empty()
            && !events(&double, "RemediationInClusterStarted").is_empty())
        .then_some(())
    })
    .await;

    // Step 2: spoke1 complies with both policies; measure what the reaction costs.
    quiesce(&double).await;
    double.clear_requests();
    let runs_before = op.shared.metrics.reconcile_runs.get();
    set_compliance(&double, P1, "spoke1", "Compliant").await;
    set_compliance(&double, P2, "spoke1", "Compliant").await;
    wait_batch(&double, 2, "spoke4").await;
    wait_for("afterCompletion labels on spoke1", || {
        (ztp_labels(&double, "spoke1") == ["ztp-done"]).then_some(())
    })
    .await;
    let reqs = api_requests(&double);
    let lists = reqs.iter().filter(|r| r.verb == Verb::List).count();
    let gets = reqs
        .iter()
        .filter(|r| r.verb == Verb::Get && r.resource != "policies")
        .count();
    let mut summary: Vec<String> = reqs
        .iter()
        .filter(|r| r.resource != "policies")
        .map(|r| {
            format!(
                "{} {}{}",
                r.verb.as_str(),
                r.rbac_resource(),
                r.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    summary.sort();
    quiesce(&double).await;
    let runs = op.shared.metrics.reconcile_runs.get() - runs_before;
    eprintln!(
        "requests for the batch-1 → batch-2 transition over {runs} reconciles (test's own \
         policy calls excluded): {}\n  {}",
        summary.len(),
        summary.join("\n  ")
    );
    for r in reqs.iter().filter(|r| r.resource == "placements") {
        assert_eq!(r.patch_type, Some(PatchType::Apply), "server-side apply");
        assert_eq!(r.field_manager.as_deref(), Some("talm-hub"));
    }
    for r in reqs.iter().filter(|r| r.resource == "clustergroupupgrades") {
        assert_eq!(r.subresource.as_deref(), Some("status"), "status only");
        assert_eq!(r.patch_type, Some(PatchType::Merge));
        // Answered with metadata only: the hub keeps the resourceVersion and records the
        // status it decided, so the server need not echo the (megabyte-sized) status.
        assert!(
            r.accept
                .as_deref()
                .is_some_and(|a| a.contains("as=PartialObjectMetadata;g=meta.k8s.io;v=v1")),
            "status write without the metadata Accept: {:?}",
            r.accept
        );
    }
    assert_eq!(lists, 0, "no list per reconcile: {summary:?}");
    assert_eq!(
        gets, 0,
        "no reads per reconcile (the cache serves them): {summary:?}"
    );
    assert!(summary.len() <= 16, "request budget: {summary:?}");

    // Step 3: spoke4 complies: the CGU succeeds and its objects go.
    set_compliance(&double, P1, "spoke4", "Compliant").await;
    set_compliance(&double, P2, "spoke4", "Compliant").await;
    let c = wait_for("Succeeded", || {
        cgu(&double)
            .filter(|c| condition(c, "Succeeded") == Some(("True".into(), "Completed".into())))
    })
    .await;
    assert_eq!(
        condition(&c, "Progressing"),
        Some(("False".into(), "Completed".into()))
    );
    assert_eq!(
        c["status"]["clusters"],
        json!([{"name": "spoke6", "state": "complete"}, {"name": "spoke1", "state": "complete"},
               {"name": "spoke4", "state": "complete"}])
    );
    wait_for("enforcement objects deleted", || {
        (owned_count(
            &double,
            "cluster.open-cluster-management.io/v1beta1",
            "Placement",
        ) == 0
            && owned_count(
                &double,
                "policy.open-cluster-management.io/v1",
                "PlacementBinding",
            ) == 0)
            .then_some(())
    })
    .await;
    wait_for("spoke4 done", || {
        (ztp_labels(&double, "spoke4") == ["ztp-done"]).then_some(())
    })
    .await;
    wait_for("completion events", || {
        (!events(&double, "RemediationCompleted").is_empty()
            && !events(&double, "RemediationInBatchCompleted").is_empty())
        .then_some(())
    })
    .await;
    // One event per transition, no duplicates.
    for action in [
        "BuildingRemediationPlan",
        "RemediationStarted",
        "RemediationCompleted",
    ] {
        assert_eq!(events(&double, action).len(), 1, "{action} once");
    }
    assert_eq!(events(&double, "RemediationInBatchStarted").len(), 2);
    let metrics = op.shared.metrics.encode();
    assert!(metrics.contains("talm_reconcile_runs_total"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "talm_cgu_clusters{{cgu=\"{NS}/{CGU}\",state=\"complete\"}} 3"
        )),
        "{metrics}"
    );
    op.stop().await;
    double.shutdown().await;
}

/// A 409 on the status write (the CGU changed under the decision) is retried on a fresh read:
/// the rollout goes on and no event is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_write_survives_a_conflict() {
    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    double.inject(
        Fault::error(409)
            .verb(Verb::Patch)
            .resource("clustergroupupgrades")
            .subresource("status")
            .times(1),
    );
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    let conflicts = double.count_requests(|r| {
        r.resource == "clustergroupupgrades"
            && r.subresource.as_deref() == Some("status")
            && r.status == 409
    });
    assert_eq!(conflicts, 1, "the injected conflict was hit");
    wait_for("start events", || {
        (!events(&double, "RemediationInClusterStarted").is_empty()).then_some(())
    })
    .await;
    assert_eq!(events(&double, "RemediationStarted").len(), 1);
    assert_eq!(events(&double, "RemediationInBatchStarted").len(), 1);
    op.stop().await;
    double.shutdown().await;
}

/// Deleting a CGU mid-rollout deletes its Placements and bindings, then lets the CGU go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cleans_up_enforcement_and_releases_the_finalizer() {
    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(double.client(), NS);
    api.delete(CGU, &DeleteParams::default()).await.unwrap();
    wait_for("CGU gone", || cgu(&double).is_none().then_some(())).await;
    assert_eq!(
        owned_count(
            &double,
            "cluster.open-cluster-management.io/v1beta1",
            "Placement"
        ),
        0
    );
    assert_eq!(
        owned_count(
            &double,
            "policy.open-cluster-management.io/v1",
            "PlacementBinding"
        ),
        0
    );
    op.stop().await;
    double.shutdown().await;
}

/// A hub restart in mid-rollout: the new operator continues the same batch, keeps what was
/// released, repeats no start event and creates no second set of objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_rollout_neither_duplicates_nor_loses_enforcement() {
    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let first = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    wait_for("start events", || {
        (!events(&double, "RemediationInClusterStarted").is_empty()).then_some(())
    })
    .await;
    first.stop().await;

    let second = start(&double, config("replica-b", None));
    wait_for("second operator synced", || {
        second.shared.cache_read().synced().then_some(())
    })
    .await;
    // Still batch 1, spoke1 still released.
    let c = cgu(&double).unwrap();
    assert_eq!(current_batch(&c), 1);
    assert_eq!(placement_values(&double, P1).unwrap(), ["spoke1"]);
    assert_eq!(placement_values(&double, P2).unwrap(), Vec::<String>::new());
    set_compliance(&double, P1, "spoke1", "Compliant").await;
    set_compliance(&double, P2, "spoke1", "Compliant").await;
    wait_batch(&double, 2, "spoke4").await;
    wait_for("batch 2 start event", || {
        (events(&double, "RemediationInBatchStarted").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        events(&double, "RemediationStarted").len(),
        1,
        "no second start"
    );
    assert_eq!(
        events(&double, "RemediationInBatchStarted").len(),
        2,
        "batch 1 and 2 once each"
    );
    assert_eq!(
        owned_count(
            &double,
            "cluster.open-cluster-management.io/v1beta1",
            "Placement"
        ),
        2
    );
    assert_eq!(
        owned_count(
            &double,
            "policy.open-cluster-management.io/v1",
            "PlacementBinding"
        ),
        2
    );
    second.stop().await;
    double.shutdown().await;
}

/// Two replicas on one Lease: only the holder reconciles; when it stops (releasing the Lease)
/// the other takes over and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles() {
    let double = fleet().await;
    let le = LeaderElection {
        namespace: NS.into(),
        name: "talm-hub-leader".into(),
        timing: LeaseTiming {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
        },
    };
    let a = start(&double, config("replica-a", Some(le.clone())));
    wait_for("a leads", || a.shared.leading().then_some(())).await;
    let b = start(&double, config("replica-b", Some(le)));
    wait_for("b synced", || b.shared.cache_read().synced().then_some(())).await;
    assert!(!b.shared.leading(), "one leader at a time");
    double.put_value(upgrade_complete()).unwrap();
    wait_not_enabled(&double).await;
    let by_b =
        double.count_requests(|r| r.verb == Verb::Patch && r.resource == "clustergroupupgrades");
    assert!(by_b > 0);
    a.stop().await;
    wait_for("b takes over", || b.shared.leading().then_some(())).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    let lease = double
        .get_value(
            "coordination.k8s.io/v1",
            "Lease",
            Some(NS),
            "talm-hub-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    b.stop().await;
    double.shutdown().await;
}

/// §6.3 E upgrade-batch-timeout: batch 1 completes, then `timeout: 0` (kuttl's poke) times the
/// CGU out: spoke4 timed out, Warning events, no afterCompletion for spoke4, and nothing of the
/// CGU keeps enforcing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_timeout_ends_the_rollout_and_its_enforcement() {
    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    set_compliance(&double, P1, "spoke1", "Compliant").await;
    set_compliance(&double, P2, "spoke1", "Compliant").await;
    wait_batch(&double, 2, "spoke4").await;
    op.clock.advance(jiff::SignedDuration::from_secs(1));
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(double.client(), NS);
    api.patch(
        CGU,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"remediationStrategy": {"timeout": 0}}})),
    )
    .await
    .unwrap();
    let c = wait_for("timed out", || {
        cgu(&double)
            .filter(|c| condition(c, "Succeeded") == Some(("False".into(), "TimedOut".into())))
    })
    .await;
    assert_eq!(
        condition(&c, "Progressing"),
        Some(("False".into(), "TimedOut".into()))
    );
    let spoke4 = c["status"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "spoke4")
        .cloned()
        .unwrap();
    assert_eq!(spoke4["state"], "timedout");
    assert_eq!(spoke4["currentPolicy"]["name"], P1);
    wait_for("timeout events", || {
        (!events(&double, "RemediationTimeout").is_empty()
            && !events(&double, "RemediationInBatchTimeout").is_empty())
        .then_some(())
    })
    .await;
    let e = &events(&double, "RemediationInBatchTimeout")[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(
        e["metadata"]["annotations"]["cgu.openshift.io/timedout-clusters"],
        "spoke4"
    );
    assert_eq!(ztp_labels(&double, "spoke4"), ["ztp-running"]);
    wait_for("enforcement objects deleted", || {
        (owned_count(
            &double,
            "cluster.open-cluster-management.io/v1beta1",
            "Placement",
        ) == 0
            && owned_count(
                &double,
                "policy.open-cluster-management.io/v1",
                "PlacementBinding",
            ) == 0)
            .then_some(())
    })
    .await;
    op.stop().await;
    double.shutdown().await;
}

/// One plain HTTP/1.1 GET; returns the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

/// `/healthz` answers at once, `/readyz` only once every watch has listed, `/metrics` exports
/// the reconcile metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let double = fleet().await;
    let op = Operator::new(
        double.client(),
        operator_support::manual_clock(),
        config("replica-a", None),
    );
    let shared = op.shared();
    let listener = talm_hub::admin::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = StopSwitch::new();
    let admin = tokio::spawn(talm_hub::admin::serve(
        listener,
        shared.clone(),
        stop.stopped(),
    ));
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(addr, "/readyz").await.0,
        503,
        "not synced before run"
    );
    double.put_value(upgrade_complete()).unwrap();
    let task = tokio::spawn(op.run(stop.stopped()));
    wait_for("ready", || shared.cache_read().synced().then_some(())).await;
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    wait_not_enabled(&double).await;
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "talm_reconcile_runs_total",
        "talm_reconcile_duration_seconds_bucket",
        "talm_watch_events_total{kind=\"policy\"}",
        "talm_leader 1",
    ] {
        assert!(body.contains(needle), "{needle} in {body}");
    }
    stop.stop();
    task.await.unwrap().unwrap();
    admin.await.unwrap().unwrap();
    double.shutdown().await;
}

/// Leader failover after a crash: the leader dies mid-rollout without releasing the Lease; the
/// standby takes over once the Lease has expired (by its clock) and continues the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_continues_the_batch_after_the_leader_crashes() {
    let double = fleet().await;
    let le = LeaderElection {
        namespace: NS.into(),
        name: "talm-hub-leader".into(),
        timing: LeaseTiming {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(100),
        },
    };
    double.put_value(upgrade_complete()).unwrap();
    let a = start(&double, config("replica-a", Some(le.clone())));
    wait_for("a leads", || a.shared.leading().then_some(())).await;
    let b = start(&double, config("replica-b", Some(le)));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    wait_for("start events", || {
        (!events(&double, "RemediationInClusterStarted").is_empty()).then_some(())
    })
    .await;
    assert!(!b.shared.leading());
    a.crash().await;
    // By b's clock the Lease (renewed at T0 by a) has expired.
    b.clock.advance(jiff::SignedDuration::from_secs(10));
    wait_for("b takes over", || b.shared.leading().then_some(())).await;
    set_compliance(&double, P1, "spoke1", "Compliant").await;
    set_compliance(&double, P2, "spoke1", "Compliant").await;
    wait_batch(&double, 2, "spoke4").await;
    wait_for("batch 2 start event", || {
        (events(&double, "RemediationInBatchStarted").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(events(&double, "RemediationStarted").len(), 1);
    assert_eq!(events(&double, "RemediationInBatchStarted").len(), 2);
    let lease = double
        .get_value(
            "coordination.k8s.io/v1",
            "Lease",
            Some(NS),
            "talm-hub-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    b.stop().await;
    double.shutdown().await;
}

/// §6.3 B cluster-selector, then a ManagedCluster label change reaches the not-started CGU
/// through the cluster index and the plan follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_selector_plan_follows_label_changes() {
    let double = fleet().await;
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-cluster-selector", "namespace": NS},
            "spec": {
                "clusters": ["spoke1", "spoke2", "spoke5", "spoke6"],
                "clusterLabelSelectors": [
                    {"matchLabels": {"upgrade2": "true"}},
                    {"matchExpressions": [{"key": "upgrade", "operator": "Exists"}]}
                ],
                "managedPolicies": [P1, P2, "policy3-common-ptp-sub-policy",
                                    "policy4-common-sriov-sub-policy"],
                "remediationStrategy": {"maxConcurrency": 2},
                "enable": false
            }
        }))
        .unwrap();
    let op = start(&double, config("replica-a", None));
    let plan = |double: &KubeDouble| {
        double
            .get_value(
                "ran.openshift.io/v1alpha1",
                "ClusterGroupUpgrade",
                Some(NS),
                "cgu-cluster-selector",
            )
            .map(|c| c["status"]["remediationPlan"].clone())
            .unwrap_or_default()
    };
    wait_for("selector plan", || {
        (plan(&double) == json!([["spoke1", "spoke2"], ["spoke5", "spoke6"], ["spoke4"]]))
            .then_some(())
    })
    .await;
    let api: Api<talm_shared::api::rhacm::ManagedCluster> = Api::all(double.client());
    api.patch(
        "spoke4",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"upgrade2": null}}})),
    )
    .await
    .unwrap();
    wait_for("spoke4 leaves the plan", || {
        (plan(&double) == json!([["spoke1", "spoke2"], ["spoke5", "spoke6"]])).then_some(())
    })
    .await;
    op.stop().await;
    double.shutdown().await;
}

/// With `deleteObjects: false` the Placements stay after success, but emptied: nothing of the
/// CGU keeps enforcing (talm's fix of TALM's quirk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_false_leaves_placements_emptied() {
    let double = fleet().await;
    let mut cgu_obj = upgrade_complete();
    cgu_obj["spec"]["actions"]["afterCompletion"]["deleteObjects"] = json!(false);
    double.put_value(cgu_obj).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    for c in ["spoke1", "spoke4"] {
        set_compliance(&double, P1, c, "Compliant").await;
        set_compliance(&double, P2, c, "Compliant").await;
    }
    wait_for("Succeeded", || {
        cgu(&double)
            .filter(|c| condition(c, "Succeeded") == Some(("True".into(), "Completed".into())))
    })
    .await;
    wait_for("placements emptied", || {
        [P1, P2]
            .iter()
            .all(|p| placement_values(&double, p).is_some_and(|v| v.is_empty()))
            .then_some(())
    })
    .await;
    assert_eq!(
        owned_count(
            &double,
            "policy.open-cluster-management.io/v1",
            "PlacementBinding"
        ),
        2,
        "objects kept"
    );
    op.stop().await;
    double.shutdown().await;
}

/// Update-graph lookups over HTTP: the first reconcile misses the graph, fetches it outside
/// the engine and decides again, so validation passes at once and no validation failure is
/// ever reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_graph_is_fetched_over_http() {
    use talm_hub::operator::graph::HttpUpdateGraph;

    let graphs: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("update-graph.yaml")).unwrap(),
    )
    .unwrap();
    let graph = graphs["https://api.openshift.com/api/upgrades_info/v1/graph?channel=stable-4.9"]
        .to_string();
    let app = axum::Router::new().route(
        "/graph",
        axum::routing::get(move || {
            let graph = graph.clone();
            async move { graph }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let double = fleet().await;
    let policy = double
        .get_value(
            "policy.open-cluster-management.io/v1",
            "Policy",
            Some(NS),
            P1,
        )
        .unwrap();
    let moved = policy.to_string().replace(
        "https://api.openshift.com/api/upgrades_info/v1/graph",
        &format!("http://{addr}/graph"),
    );
    double
        .put_value(serde_json::from_str(&moved).unwrap())
        .unwrap();
    double.put_value(upgrade_complete()).unwrap();
    let http = Arc::new(HttpUpdateGraph::new(false).unwrap());
    let mut cfg = config("replica-a", None);
    cfg.graph = http.clone();
    cfg.graph_fetcher = Some(http);
    let op = start(&double, cfg);
    wait_not_enabled(&double).await;
    let c = cgu(&double).unwrap();
    assert_eq!(
        condition(&c, "Validated"),
        Some(("True".into(), "ValidationCompleted".into()))
    );
    assert!(
        double
            .list_values("events.k8s.io/v1", "Event", Some(NS))
            .iter()
            .all(|e| e["reason"] != "CguValidationFailure"),
        "no transient validation failure"
    );
    op.stop().await;
    double.shutdown().await;
}

/// Pre-caching through agents: the operator assigns each cluster's SpokeAgent a pre-cache task
/// (creating the SpokeAgent), the agents' reports (written to SpokeAgent status, as the
/// gateway does) reach the CGU through the cluster index, and pre-caching completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precache_tasks_flow_through_spoke_agents() {
    use talm_shared::api::spokeagent::SpokeAgent;

    let clusters = ["spoke1", "spoke2", "spoke4", "spoke5"];
    let double = fleet().await;
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-precache", "namespace": NS},
            "spec": {
                "clusters": clusters,
                "managedPolicies": ["policy0-common-config-policy", P1, P2,
                                    "policy3-common-ptp-sub-policy",
                                    "policy4-common-sriov-sub-policy"],
                "remediationStrategy": {"maxConcurrency": 2},
                "preCaching": true,
                "enable": false
            }
        }))
        .unwrap();
    let op = start(&double, config("replica-a", None));
    let ids = wait_for("pre-cache tasks assigned", || {
        clusters
            .iter()
            .map(|c| {
                double
                    .get_value("talm.dev/v1alpha1", "SpokeAgent", Some(c), c)
                    .and_then(|a| a["spec"]["precache"]["id"].as_str().map(str::to_string))
            })
            .collect::<Option<Vec<String>>>()
    })
    .await;
    for (c, id) in clusters.iter().zip(&ids) {
        let api: Api<SpokeAgent> = Api::namespaced(double.client(), c);
        api.patch_status(
            c,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"connected": true,
                "precache": {"id": id, "state": "Succeeded"}}})),
        )
        .await
        .unwrap();
    }
    let precache_done = |double: &KubeDouble| {
        let c = double.get_value(
            "ran.openshift.io/v1alpha1",
            "ClusterGroupUpgrade",
            Some(NS),
            "cgu-precache",
        )?;
        let states = c["status"]["precaching"]["status"].as_object()?.clone();
        (states.len() == clusters.len() && states.values().all(|v| v == "Succeeded")).then_some(c)
    };
    let c = wait_for("pre-caching succeeded", || precache_done(&double)).await;
    assert_eq!(
        condition(&c, "PrecachingSuceeded").map(|(s, _)| s),
        Some("True".into()),
        "{:#}",
        c["status"]
    );
    op.stop().await;
    double.shutdown().await;
}

/// The policy index is precise: once a CGU has started, a compliance change of a cluster that
/// is not in it reconciles nothing, while one of its own clusters reconciles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_index_ignores_clusters_outside_the_cgu() {
    use talm_hub_core::snapshot::Compliance;

    let double = fleet().await;
    double.put_value(upgrade_complete()).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    wait_batch(&double, 1, "spoke1").await;
    quiesce(&double).await;
    let seen = |cluster: &str, want: Compliance| {
        let cache = op.shared.cache_read();
        (cache
            .snapshot()
            .root_policy(NS, P1)
            .is_some_and(|r| r.compliance(cluster) == want))
        .then_some(())
    };
    let runs = op.shared.metrics.reconcile_runs.get();
    // spoke2 is not in the CGU.
    set_compliance(&double, P1, "spoke2", "Compliant").await;
    wait_for("the operator saw spoke2's change", || {
        seen("spoke2", Compliance::Compliant)
    })
    .await;
    quiesce(&double).await;
    assert_eq!(
        op.shared.metrics.reconcile_runs.get(),
        runs,
        "no reconcile for a foreign cluster"
    );
    // spoke4 is (in batch 2), but Pending reads as NonCompliant, as before: nothing the
    // engine sees changed, so no reconcile either.
    let rv_before = op
        .shared
        .cache_read()
        .snapshot()
        .root_policy(NS, P1)
        .and_then(|p| p.policy.metadata.resource_version.clone())
        .unwrap_or_default();
    set_compliance(&double, P1, "spoke4", "Pending").await;
    let pending_seen = |cluster: &str| {
        let cache = op.shared.cache_read();
        let p = cache.snapshot().root_policy(NS, P1)?;
        (p.policy.metadata.resource_version.as_deref() != Some(rv_before.as_str())
            && p.compliance(cluster) == Compliance::NonCompliant)
            .then_some(())
    };
    wait_for("the operator saw spoke4's Pending", || {
        pending_seen("spoke4")
    })
    .await;
    quiesce(&double).await;
    assert_eq!(
        op.shared.metrics.reconcile_runs.get(),
        runs,
        "no reconcile for a change the engine cannot see"
    );
    // Compliant is a change: the CGU is reconciled.
    set_compliance(&double, P1, "spoke4", "Compliant").await;
    wait_for("a reconcile for the CGU's own cluster", || {
        (op.shared.metrics.reconcile_runs.get() > runs).then_some(())
    })
    .await;
    op.stop().await;
    double.shutdown().await;
}

/// issue 16 §1: a hub restarted while a CGU is paused keeps it paused, computes the same
/// deadlines from the status alone (an hour later, far past the 2-minute timeout, nothing has
/// timed out), and on resume continues the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_paused_keeps_the_pause_and_its_excluded_time() {
    let double = fleet().await;
    let mut obj = upgrade_complete();
    obj["spec"]["enable"] = json!(true);
    obj["spec"]["remediationStrategy"]["timeout"] = json!(2);
    double.put_value(obj).unwrap();
    let first = start(&double, config("replica-a", None));
    wait_batch(&double, 1, "spoke1").await;
    first.clock.advance(jiff::SignedDuration::from_secs(10));
    let paused_at = talm_shared::clock::Clock::now(&*first.clock).to_string();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(double.client(), NS);
    api.patch(
        CGU,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    wait_for("paused", || {
        cgu(&double).filter(|c| {
            condition(c, "Paused") == Some(("True".into(), "Paused".into()))
                && c["status"]["status"]["pausedAt"] == json!(paused_at)
        })
    })
    .await;
    set_compliance(&double, P1, "spoke1", "Compliant").await;
    wait_for("progress recorded while paused", || {
        cgu(&double).filter(|c| {
            c["status"]["status"]["currentBatchRemediationProgress"]["spoke1"]["policyIndex"]
                == json!(1)
        })
    })
    .await;
    assert_eq!(placement_values(&double, P2).unwrap(), Vec::<String>::new());
    first.stop().await;

    // The second hub starts an hour later.
    let clock = operator_support::manual_clock();
    clock.advance(jiff::SignedDuration::from_secs(3600));
    let second = Running {
        op: RunningOperator::start(double.client(), clock.clone(), config("replica-b", None)),
        clock,
    };
    wait_for("second operator synced", || {
        second.shared.cache_read().synced().then_some(())
    })
    .await;
    quiesce(&double).await;
    let c = cgu(&double).unwrap();
    assert_eq!(condition(&c, "Succeeded"), None, "{:#}", c["status"]);
    assert_eq!(current_batch(&c), 1);
    assert_eq!(c["status"]["status"]["pausedAt"], json!(paused_at));
    assert_eq!(placement_values(&double, P1).unwrap(), ["spoke1"]);
    assert_eq!(placement_values(&double, P2).unwrap(), Vec::<String>::new());
    assert_eq!(events(&double, "RemediationPaused").len(), 1);

    api.patch(
        CGU,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let c = wait_for("resumed", || {
        cgu(&double).filter(|c| condition(c, "Paused") == Some(("False".into(), "Resumed".into())))
    })
    .await;
    assert_eq!(c["status"]["status"]["excludedSeconds"], json!(3590));
    assert_eq!(c["status"]["status"].get("pausedAt"), None);
    wait_for("spoke1 released into policy2", || {
        (placement_values(&double, P2)? == ["spoke1"]).then_some(())
    })
    .await;
    set_compliance(&double, P2, "spoke1", "Compliant").await;
    wait_batch(&double, 2, "spoke4").await;
    wait_for("resume event", || {
        (events(&double, "RemediationResumed").len() == 1).then_some(())
    })
    .await;
    second.stop().await;
    double.shutdown().await;
}

/// Maintenance windows (talm extension) through the operator: the batch waits with its status
/// and event written, and starts once the clock reaches the window; the wait is excluded from
/// the timeout and the forecast is written with the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_its_maintenance_window() {
    let double = fleet().await;
    let mut cgu_obj = upgrade_complete();
    // T0 is 10:00Z; the window opens at 11:00Z.
    cgu_obj["spec"]["maintenanceWindows"] = json!([{"start": "11:00", "duration": "1h"}]);
    double.put_value(cgu_obj).unwrap();
    let op = start(&double, config("replica-a", None));
    wait_not_enabled(&double).await;
    enable(&double).await;
    let c = wait_for("waiting for the window", || {
        cgu(&double).filter(|c| {
            condition(c, "Progressing")
                == Some(("True".into(), "WaitingForMaintenanceWindow".into()))
        })
    })
    .await;
    assert_eq!(
        find_condition(&c, "Progressing").unwrap()["message"],
        "Batch 1 waits for the next maintenance window, which opens at 2026-03-02T11:00:00Z"
    );
    assert_eq!(
        c["status"]["status"]["waitingForWindowSince"],
        "2026-03-02T10:00:00Z"
    );
    assert!(placement_values(&double, P1).unwrap_or_default().is_empty());
    wait_for("the waiting event", || {
        (!events(&double, "BatchWaiting").is_empty()).then_some(())
    })
    .await;

    // 11:00Z: any change makes the operator look again (its own requeue is an hour away).
    op.clock.set("2026-03-02T11:00:00Z".parse().unwrap());
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(double.client(), NS);
    api.patch(
        CGU,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
    )
    .await
    .unwrap();
    wait_batch(&double, 1, "spoke1").await;
    let c = wait_for("the wait recorded", || {
        cgu(&double).filter(|c| c["status"]["status"]["excludedSeconds"] == 3600)
    })
    .await;
    assert!(c["status"]["status"].get("waitingForWindowSince").is_none());
    assert_eq!(
        c["status"]["forecast"]["batches"][0]["batch"], 1,
        "the forecast is written with the status: {:#}",
        c["status"]
    );
    wait_for("the window-opened event", || {
        (!events(&double, "BatchReleased").is_empty()).then_some(())
    })
    .await;
    op.stop().await;
}
