//! Scenarios that can run against a real Kubernetes API server (an RHACM hub), each run twice:
//! as a normal test against `talm-kube-double` (so CI proves the scenario code itself works)
//! and as an `#[ignore = "needs cluster"]` test against the cluster `KUBECONFIG` names.
//!
//! The scenarios:
//! - [`api_conformance`]: the API behaviour the operator relies on (409 on a stale
//!   resourceVersion, the status subresource, generation, merge patch, finalizers, watch from a
//!   resourceVersion, server-side apply), checked on ClusterGroupUpgrades and Placements.
//! - [`lifecycle`]: the operator in-process (leader election on, Lease in the test namespace)
//!   with one CGU over one ManagedCluster and one inform root Policy; finalizer, enforcement
//!   objects, (optionally) a full rollout, and a clean deletion.
//! - [`crd_problems`]: the CRDs installed on the server are the ones this build generates.
//!
//! Every scenario that writes works in a fresh namespace `talm-e2e-<suffix>` that
//! [`with_scratch`] creates and deletes again (also when the scenario fails). Only that
//! namespace and, for [`lifecycle`], the ManagedCluster named by `TALM_TEST_CLUSTER` are
//! touched. How to run the ignored tests: README, "Tests against a real cluster".

// Test helpers may unwrap and panic: a panic is a test failure with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod operator_support;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Resource, ResourceExt};
use operator_support::{RunningOperator, child_policy, musthave, policy_templates};
use serde_json::{Value, json};
use talm_hub::operator::{Clock, Config, LeaderElection, LeaseTiming, SystemClock};
use talm_kube_double::{KubeDouble, ResourceKind};
use talm_shared::api::cgu::ClusterGroupUpgrade;

/// talm's label on every Placement and PlacementBinding it creates.
const TALM_APP_LABEL: (&str, &str) = ("app", "openshift-cluster-group-upgrades");
/// talm's label naming the CGU an object belongs to.
const TALM_CGU_LABEL: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
/// The CGU finalizer.
const CGU_FINALIZER: &str = "ran.openshift.io/cleanup-finalizer";
/// The ManagedCluster the double-backed variants seed (on a real hub: `TALM_TEST_CLUSTER`).
const DOUBLE_CLUSTER: &str = "spoke-e2e";
/// Name of the root policy [`lifecycle`] creates.
const POLICY: &str = "talm-e2e";
/// Name of the CGU [`lifecycle`] creates.
const LIFECYCLE_CGU: &str = "talm-e2e-lifecycle";
/// Leader-election Lease names of other CGU controllers: TALM's and `talm-hub run`'s default.
const OTHER_LEASES: [&str; 2] = ["9a2365a3.openshift.io", "talm-hub-leader"];

// ----- targets -----------------------------------------------------------------------------

/// Where a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `talm-kube-double`: nothing but the test acts on the objects, so the test also plays
    /// the policy framework (child policies, compliance).
    Double,
    /// A real RHACM hub: the policy framework and the spokes act for themselves.
    Real,
}

/// One scenario's connection, namespace and timing.
#[derive(Clone)]
struct Target {
    client: kube::Client,
    /// The scratch namespace, `talm-e2e-<suffix>`.
    ns: String,
    suffix: String,
    backend: Backend,
    /// How long any single wait may take.
    timeout: Duration,
    /// How often a wait polls.
    poll: Duration,
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn policies() -> ApiResource {
    ar(
        "policy.open-cluster-management.io",
        "v1",
        "Policy",
        "policies",
    )
}

fn placements() -> ApiResource {
    ar(
        "cluster.open-cluster-management.io",
        "v1beta1",
        "Placement",
        "placements",
    )
}

fn placement_bindings() -> ApiResource {
    ar(
        "policy.open-cluster-management.io",
        "v1",
        "PlacementBinding",
        "placementbindings",
    )
}

fn set_bindings() -> ApiResource {
    ar(
        "cluster.open-cluster-management.io",
        "v1beta2",
        "ManagedClusterSetBinding",
        "managedclustersetbindings",
    )
}

fn managed_clusters() -> ApiResource {
    ar(
        "cluster.open-cluster-management.io",
        "v1",
        "ManagedCluster",
        "managedclusters",
    )
}

fn leases() -> ApiResource {
    ar("coordination.k8s.io", "v1", "Lease", "leases")
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("a well-formed object")
}

fn value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).expect("serialisable object")
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Polls `f` until it returns `Ok`; after `t.timeout` panics with `what` and the last `Err`
/// (the state seen), so a failure on a real cluster says what was there instead.
async fn wait_until<T>(t: &Target, what: &str, mut f: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + t.timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => {
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "timed out after {:?} waiting for {what}; last seen: {last}",
                        t.timeout
                    );
                }
            }
        }
        tokio::time::sleep(t.poll).await;
    }
}

/// A short random-enough suffix for names: the wall clock's nanoseconds and the process id.
fn random_suffix() -> String {
    let nanos = SystemClock.now().as_nanosecond().unsigned_abs();
    let mut n = nanos ^ (u128::from(std::process::id()) << 64);
    let mut s = String::new();
    for _ in 0..6 {
        let d = (n % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('x'));
        n /= 36;
    }
    s
}

fn env_timeout() -> Duration {
    match std::env::var("TALM_TEST_TIMEOUT") {
        Ok(s) => Duration::from_secs(
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("TALM_TEST_TIMEOUT={s:?} is not a number of seconds")),
        ),
        Err(_) => Duration::from_secs(300),
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The client for the ignored tests: `KUBECONFIG` (or the in-cluster config), and a server
/// that answers. Without one the test fails, naming `KUBECONFIG`; it never passes silently.
async fn real_cluster() -> (kube::Client, kube::Config) {
    let kubeconfig = std::env::var("KUBECONFIG")
        .unwrap_or_else(|_| "<unset: ~/.kube/config or in-cluster>".into());
    let config = kube::Config::infer().await.unwrap_or_else(|e| {
        panic!(
            "this test needs a real cluster: point KUBECONFIG at an RHACM hub \
             (README, \"Tests against a real cluster\"); no usable kubeconfig \
             (KUBECONFIG={kubeconfig}): {e}"
        )
    });
    let client = kube::Client::try_from(config.clone()).unwrap_or_else(|e| {
        panic!("this test needs a real cluster: cannot build a client from KUBECONFIG={kubeconfig}: {e}")
    });
    match tokio::time::timeout(Duration::from_secs(30), client.apiserver_version()).await {
        Ok(Ok(v)) => eprintln!(
            "real cluster: {} (Kubernetes {}.{}, KUBECONFIG={kubeconfig})",
            config.cluster_url, v.major, v.minor
        ),
        Ok(Err(e)) => panic!(
            "this test needs a real cluster: the API server of KUBECONFIG={kubeconfig} \
             ({}) does not answer: {e}",
            config.cluster_url
        ),
        Err(_) => panic!(
            "this test needs a real cluster: the API server of KUBECONFIG={kubeconfig} \
             ({}) did not answer within 30s",
            config.cluster_url
        ),
    }
    (client, config)
}

/// A double with the kinds a real hub has beyond talm's defaults, requiring namespaces as a
/// real server does, and with one Available ManagedCluster ([`DOUBLE_CLUSTER`]) and its
/// namespace.
async fn hub_double() -> KubeDouble {
    let double = KubeDouble::builder()
        .require_namespaces(true)
        .kind(ResourceKind::namespaced(
            "cluster.open-cluster-management.io",
            "v1beta2",
            "ManagedClusterSetBinding",
            "managedclustersetbindings",
        ))
        .kind(ResourceKind::cluster_scoped(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ))
        .start()
        .await
        .unwrap();
    double
        .put_value(json!({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": DOUBLE_CLUSTER}}))
        .unwrap();
    double
        .put_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1",
            "kind": "ManagedCluster",
            "metadata": {"name": DOUBLE_CLUSTER,
                         "labels": {"name": DOUBLE_CLUSTER,
                                    "cluster.open-cluster-management.io/clusterset": "default"},
                         "annotations": {"example.com/owner": "e2e"}},
            "spec": {"hubAcceptsClient": true},
            "status": {"conditions": [{
                "type": "ManagedClusterConditionAvailable", "status": "True",
                "reason": "ManagedClusterAvailable", "message": "Managed cluster is available",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
    double
}

// ----- the scratch namespace ---------------------------------------------------------------

/// Deletes the scratch namespace (and anything the test left on the ManagedCluster) if the
/// scenario's future is dropped before [`with_scratch`] cleaned up (a cancelled test).
struct ScratchGuard {
    config: kube::Config,
    ns: String,
    cluster: Option<String>,
    label: String,
    armed: bool,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (config, ns, cluster, label) = (
            self.config.clone(),
            self.ns.clone(),
            self.cluster.clone(),
            self.label.clone(),
        );
        // The test's runtime may be gone: clean up on a runtime of our own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let client = kube::Client::try_from(config).ok()?;
                let problems = cleanup(
                    &client,
                    &ns,
                    cluster.as_deref(),
                    &label,
                    Duration::from_secs(60),
                )
                .await;
                Some(problems)
            })
        })
        .join();
        if let Ok(Some(problems)) = done
            && !problems.is_empty()
        {
            eprintln!("cleanup of {}: {}", self.ns, problems.join("; "));
        }
    }
}

/// The label key [`lifecycle`]'s CGU puts on the ManagedCluster (`beforeEnable`) and takes
/// off again (`afterCompletion`).
fn action_label(suffix: &str) -> String {
    format!("talm-e2e-{suffix}")
}

/// Removes what a test may have left: CGU finalizers in `ns` (no operator is running any
/// more to remove them), the test's action label on `cluster`, then the namespace itself
/// (which takes Placements, bindings, policies, Leases and Events with it). Returns the
/// problems met; waits up to `wait` for the namespace to go.
async fn cleanup(
    client: &kube::Client,
    ns: &str,
    cluster: Option<&str>,
    label: &str,
    wait: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    let cgus: Api<ClusterGroupUpgrade> = Api::namespaced(client.clone(), ns);
    match cgus.list(&ListParams::default()).await {
        Ok(list) => {
            for c in list {
                if c.finalizers().is_empty() {
                    continue;
                }
                let patch = Patch::Merge(json!({"metadata": {"finalizers": null}}));
                if let Err(e) = cgus
                    .patch(&c.name_any(), &PatchParams::default(), &patch)
                    .await
                    && !is_status(&e, 404)
                {
                    problems.push(format!(
                        "removing the finalizers of CGU {}: {e}",
                        c.name_any()
                    ));
                }
            }
        }
        Err(e) if is_status(&e, 404) => {}
        Err(e) => problems.push(format!("listing CGUs in {ns}: {e}")),
    }
    if let Some(cluster) = cluster {
        let mcs: Api<DynamicObject> = Api::all_with(client.clone(), &managed_clusters());
        match mcs.get_opt(cluster).await {
            Ok(Some(mc)) if mc.labels().contains_key(label) => {
                problems.push(format!(
                    "label {label} was left on ManagedCluster {cluster}"
                ));
                let patch = Patch::Merge(json!({"metadata": {"labels": {label: null}}}));
                if let Err(e) = mcs.patch(cluster, &PatchParams::default(), &patch).await {
                    problems.push(format!("removing label {label} from {cluster}: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("reading ManagedCluster {cluster}: {e}")),
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => return problems,
        Err(e) => {
            problems.push(format!("deleting namespace {ns}: {e}"));
            return problems;
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match namespaces.get_opt(ns).await {
            Ok(None) => break,
            Ok(Some(_)) if tokio::time::Instant::now() > deadline => {
                problems.push(format!(
                    "namespace {ns} still exists {wait:?} after its deletion \
                     (`kubectl get all,placements,placementbindings,policies -n {ns}`)"
                ));
                break;
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                problems.push(format!("reading namespace {ns}: {e}"));
                break;
            }
        }
    }
    problems
}

/// Creates `talm-e2e-<suffix>`, runs `scenario` in it, then cleans up (see [`cleanup`]) also
/// when the scenario panicked; the scenario's panic wins over cleanup problems, which fail
/// an otherwise passing test.
async fn with_scratch(
    client: kube::Client,
    config: kube::Config,
    backend: Backend,
    cluster: Option<&str>,
    scenario: impl AsyncFnOnce(Target),
) {
    let suffix = random_suffix();
    let ns = format!("talm-e2e-{suffix}");
    let (timeout, poll) = match backend {
        Backend::Double => (Duration::from_secs(30), Duration::from_millis(20)),
        Backend::Real => (env_timeout(), Duration::from_millis(500)),
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let body: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {"talm.dev/e2e": "true"}}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &body)
        .await
        .unwrap_or_else(|e| panic!("creating the test namespace {ns}: {e}"));
    let label = action_label(&suffix);
    let mut guard = ScratchGuard {
        config,
        ns: ns.clone(),
        cluster: cluster.map(str::to_string),
        label: label.clone(),
        armed: true,
    };
    let target = Target {
        client: client.clone(),
        ns: ns.clone(),
        suffix,
        backend,
        timeout,
        poll,
    };
    let outcome = AssertUnwindSafe(scenario(target)).catch_unwind().await;
    let problems = cleanup(&client, &ns, cluster, &label, timeout).await;
    guard.armed = false;
    match outcome {
        Err(panic) => {
            if !problems.is_empty() {
                eprintln!("cleanup after the failure: {}", problems.join("; "));
            }
            std::panic::resume_unwind(panic)
        }
        Ok(()) => assert!(
            problems.is_empty(),
            "the scenario passed but cleanup failed: {}",
            problems.join("; ")
        ),
    }
}

/// Fails when something besides this test would act on CGUs: the in-process operator
/// watches every namespace, so CGUs outside `t.ns` would be reconciled (written) by it, and
/// a running TALM or `talm-hub run` would reconcile the test's CGUs too.
async fn assert_no_other_cgu_controller(t: &Target) {
    let cgus: Api<ClusterGroupUpgrade> = Api::all(t.client.clone());
    let foreign: Vec<String> = cgus
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing ClusterGroupUpgrades in all namespaces: {e}"))
        .into_iter()
        .filter(|c| c.namespace().as_deref() != Some(t.ns.as_str()))
        .map(|c| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    assert!(
        foreign.is_empty(),
        "the cluster has ClusterGroupUpgrades outside {}: {foreign:?}; the in-process operator \
         would reconcile them too. Run these tests on a hub without other CGUs.",
        t.ns
    );
    let now = SystemClock.now();
    let leases: Api<DynamicObject> = Api::all_with(t.client.clone(), &leases());
    for name in OTHER_LEASES {
        let found = leases
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .unwrap_or_else(|e| panic!("listing Leases named {name} in all namespaces: {e}"));
        for l in found {
            let spec = &l.data["spec"];
            let holder = spec["holderIdentity"].as_str().unwrap_or_default();
            let renewed: Option<jiff::Timestamp> =
                spec["renewTime"].as_str().and_then(|s| s.parse().ok());
            let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(0);
            let live = !holder.is_empty()
                && renewed.is_some_and(|r| {
                    r.checked_add(jiff::SignedDuration::from_secs(duration))
                        .is_ok_and(|until| until > now)
                });
            assert!(
                !live,
                "Lease {}/{name} is held by {holder:?}: a CGU controller (TALM or talm-hub) is \
                 running on this hub and would reconcile the test's CGUs; scale it to zero first",
                l.namespace().unwrap_or_default()
            );
        }
    }
}

// ----- scenario 1: API conformance ---------------------------------------------------------

fn conformance_cgu(name: &str, ns: &str) -> ClusterGroupUpgrade {
    serde_json::from_value(json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusters": ["talm-e2e-no-such-cluster"],
            "managedPolicies": ["talm-e2e-no-such-policy"],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
            "enable": false
        },
        "status": {"remediationPlan": [["written-on-create"]]}
    }))
    .unwrap()
}

fn rv<K: Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

fn generation<K: Resource>(o: &K) -> i64 {
    o.meta().generation.unwrap_or_default()
}

fn remediation_plan(c: &ClusterGroupUpgrade) -> Option<Vec<Vec<String>>> {
    c.status.as_ref().and_then(|s| s.remediation_plan.clone())
}

/// What the operator relies on from the API server, on a CGU and a Placement in `t.ns`.
async fn api_conformance(t: &Target) {
    assert_no_other_cgu_controller(t).await;
    let name = "talm-e2e-conformance";
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(t.client.clone(), &t.ns);
    let pp = PostParams::default();

    // Create: server-owned metadata; the status subresource drops `.status`.
    let created = api
        .create(&pp, &conformance_cgu(name, &t.ns))
        .await
        .unwrap();
    assert_eq!(generation(&created), 1, "generation on create");
    assert!(!rv(&created).is_empty(), "resourceVersion on create");
    assert!(created.meta().uid.is_some(), "uid on create");
    assert_eq!(remediation_plan(&created), None, "create ignores .status");
    let rv0 = rv(&created);
    // The resourceVersions of our writes, in order, that the watch must replay.
    let mut writes: Vec<(String, &str)> = Vec::new();

    // A spec change bumps generation.
    let mut next = created.clone();
    next.spec.remediation_strategy.timeout = 250;
    let replaced = api.replace(name, &pp, &next).await.unwrap();
    assert_eq!(generation(&replaced), 2, "a spec change bumps generation");
    assert_ne!(rv(&replaced), rv0);
    writes.push((rv(&replaced), "replace spec.timeout"));

    // Optimistic concurrency: a replace with the stale resourceVersion is a 409 Conflict.
    let mut stale = created.clone();
    stale.spec.remediation_strategy.timeout = 260;
    match api.replace(name, &pp, &stale).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409, "stale replace: {s:?}");
            assert_eq!(s.reason, "Conflict", "stale replace: {s:?}");
        }
        other => panic!("a replace with a stale resourceVersion must be 409, got {other:?}"),
    }

    // Status subresource: changes .status only (the spec part is ignored), no generation bump.
    let status_patch = Patch::Merge(json!({
        "spec": {"enable": true},
        "status": {"remediationPlan": [["from-status"]]}
    }));
    let after_status = api
        .patch_status(name, &PatchParams::default(), &status_patch)
        .await
        .unwrap();
    assert_eq!(
        remediation_plan(&after_status),
        Some(vec![vec!["from-status".to_string()]])
    );
    assert_eq!(after_status.spec.enable, Some(false), "/status leaves spec");
    assert_eq!(generation(&after_status), 2, "/status bumps no generation");
    assert_ne!(rv(&after_status), rv(&replaced));
    writes.push((rv(&after_status), "patch /status"));

    // The main resource ignores .status.
    let main_patch = Patch::Merge(json!({"status": {"remediationPlan": [["from-main"]]}}));
    let after_main = api
        .patch(name, &PatchParams::default(), &main_patch)
        .await
        .unwrap();
    assert_eq!(
        remediation_plan(&after_main),
        Some(vec![vec!["from-status".to_string()]]),
        "the main resource keeps .status"
    );
    assert_eq!(generation(&after_main), 2);

    // Merge patch (RFC 7386): lists replaced, siblings kept, generation bumped.
    let merge = Patch::Merge(json!({"spec": {"clusters": ["a", "b"]}}));
    let merged = api
        .patch(name, &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(
        merged.spec.clusters,
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(
        merged.spec.remediation_strategy.timeout, 250,
        "siblings kept"
    );
    assert_eq!(merged.spec.managed_policies.as_ref().map(Vec::len), Some(1));
    assert_eq!(generation(&merged), 3);
    writes.push((rv(&merged), "merge patch spec.clusters"));

    // A resourceVersion in a patch body is a precondition too.
    let stale_patch = Patch::Merge(json!({
        "metadata": {"resourceVersion": rv0},
        "spec": {"clusters": ["c"]}
    }));
    match api.patch(name, &PatchParams::default(), &stale_patch).await {
        Err(e) if is_status(&e, 409) => {}
        other => panic!("a patch with a stale resourceVersion must be 409, got {other:?}"),
    }

    // Finalizers hold a deleted object, with deletionTimestamp set, until they are removed.
    let fin = Patch::Merge(json!({"metadata": {"finalizers": ["talm.dev/e2e-test"]}}));
    let with_fin = api
        .patch(name, &PatchParams::default(), &fin)
        .await
        .unwrap();
    writes.push((rv(&with_fin), "add finalizer"));
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let terminating = api
        .get_opt(name)
        .await
        .unwrap()
        .expect("the finalizer keeps the deleted CGU");
    assert!(
        terminating.meta().deletion_timestamp.is_some(),
        "deletionTimestamp set"
    );
    assert_eq!(terminating.finalizers(), ["talm.dev/e2e-test"]);
    writes.push((rv(&terminating), "delete (deletionTimestamp)"));
    // A status write on a terminating object still works (the operator reports while it
    // cleans up).
    let status_patch = Patch::Merge(json!({"status": {"remediationPlan": [["terminating"]]}}));
    let status_terminating = api
        .patch_status(name, &PatchParams::default(), &status_patch)
        .await
        .unwrap();
    writes.push((rv(&status_terminating), "patch /status while terminating"));
    let unfin = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch(name, &PatchParams::default(), &unfin)
        .await
        .unwrap();
    wait_until(
        t,
        "the CGU gone once its finalizer is removed",
        async || match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(c)) => Err(format!("still there: {:?}", c.metadata)),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;

    // Watch from the create's resourceVersion: every write above, in order, then DELETED.
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(60);
    let mut stream = api.watch(&wp, &rv0).await.unwrap().boxed();
    let mut seen: Vec<(String, String)> = Vec::new();
    let collect = async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                WatchEvent::Added(c) => seen.push(("ADDED".into(), rv(&c))),
                WatchEvent::Modified(c) => seen.push(("MODIFIED".into(), rv(&c))),
                WatchEvent::Deleted(c) => {
                    seen.push(("DELETED".into(), rv(&c)));
                    return;
                }
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(s) => panic!("watch error: {s:?}"),
            }
        }
    };
    tokio::time::timeout(t.timeout, collect)
        .await
        .unwrap_or_else(|_| panic!("watch from {rv0} did not deliver DELETED; got {seen:?}"));
    let seen_rvs: Vec<&str> = seen.iter().map(|(_, r)| r.as_str()).collect();
    let mut at = 0;
    for (want, what) in &writes {
        match seen_rvs[at..].iter().position(|r| r == want) {
            Some(i) => at += i + 1,
            None => panic!(
                "the watch from {rv0} lacks ({what}, resourceVersion {want}) after position \
                 {at}, or has it out of order; events: {seen:?}; writes: {writes:?}"
            ),
        }
    }
    assert!(
        seen.iter().all(|(ty, _)| ty != "ADDED"),
        "no ADDED when watching from after the create: {seen:?}"
    );
    assert_eq!(seen.last().map(|(ty, _)| ty.as_str()), Some("DELETED"));

    // Server-side apply on a Placement (how talm writes its enforcement objects): a field
    // this manager no longer applies is removed, and its ownership is recorded.
    let pls: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &placements());
    let apply = PatchParams::apply("talm-e2e").force();
    let placement = |labels: Value| {
        json!({
            "apiVersion": "cluster.open-cluster-management.io/v1beta1",
            "kind": "Placement",
            "metadata": {"name": "talm-e2e-apply", "namespace": t.ns, "labels": labels},
            "spec": {"predicates": [{"requiredClusterSelector": {"labelSelector": {
                "matchExpressions": [{"key": "name", "operator": "In",
                                      "values": ["talm-e2e-no-such-cluster"]}]}}}]}
        })
    };
    let first = pls
        .patch(
            "talm-e2e-apply",
            &apply,
            &Patch::Apply(placement(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(first.labels().get("b").map(String::as_str), Some("2"));
    let owned = first.meta().managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some("talm-e2e") && m.operation.as_deref() == Some("Apply")
    });
    assert!(
        owned,
        "managedFields records the apply: {:?}",
        first.meta().managed_fields
    );
    let second = pls
        .patch(
            "talm-e2e-apply",
            &apply,
            &Patch::Apply(placement(json!({"a": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(second.labels().get("a").map(String::as_str), Some("1"));
    assert!(
        !second.labels().contains_key("b"),
        "a label no longer applied is removed: {:?}",
        second.labels()
    );
    pls.delete("talm-e2e-apply", &DeleteParams::default())
        .await
        .unwrap();
}

// ----- scenario 2: the operator's lifecycle on the server ----------------------------------

/// How [`lifecycle`] runs.
struct LifecycleOptions {
    /// The ManagedCluster the CGU covers.
    cluster: String,
    /// Enable the CGU and follow the rollout to completion. With a real hub this makes the
    /// spoke create (and, when the policy goes, delete) one ConfigMap.
    enforce: bool,
    /// The operator's clock.
    clock: Arc<dyn Clock>,
}

/// The inform root policy: a ConfigurationPolicy wanting a ConfigMap on the spoke that does
/// not exist there (so the cluster is NonCompliant). `DeleteIfCreated` makes the spoke delete
/// the ConfigMap again when the policy goes, if enforcement created it.
fn root_policy(t: &Target) -> Value {
    let name = format!("talm-e2e-{}", t.suffix);
    let mut templates = policy_templates(
        &name,
        json!([musthave(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"purpose": "talm real-cluster test; deleted with its policy"}
        }))]),
    );
    templates[0]["objectDefinition"]["spec"]["pruneObjectBehavior"] = json!("DeleteIfCreated");
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": POLICY, "namespace": t.ns},
        "spec": {"disabled": false, "remediationAction": "inform", "policy-templates": templates}
    })
}

/// The user's side of an RHACM rollout: the root policy bound (inform) to the one cluster by
/// a Placement of the test's own, and the ManagedClusterSetBinding both this Placement and
/// talm's need to select the cluster.
async fn create_user_objects(t: &Target, cluster: &str, cluster_set: &str) {
    let create = |ar: ApiResource, body: Value| {
        let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &ar);
        async move {
            let obj = dynamic(body);
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("creating {} {}: {e}", ar.kind, obj.name_any()));
        }
    };
    create(
        set_bindings(),
        json!({
            "apiVersion": "cluster.open-cluster-management.io/v1beta2",
            "kind": "ManagedClusterSetBinding",
            "metadata": {"name": cluster_set, "namespace": t.ns},
            "spec": {"clusterSet": cluster_set}
        }),
    )
    .await;
    create(policies(), root_policy(t)).await;
    create(
        placements(),
        json!({
            "apiVersion": "cluster.open-cluster-management.io/v1beta1",
            "kind": "Placement",
            "metadata": {"name": "talm-e2e-user", "namespace": t.ns},
            "spec": {
                "clusterSets": [cluster_set],
                "predicates": [{"requiredClusterSelector": {"labelSelector": {"matchExpressions": [
                    {"key": "name", "operator": "In", "values": [cluster]}]}}}],
                "tolerations": [
                    {"key": "cluster.open-cluster-management.io/unreachable", "operator": "Exists"},
                    {"key": "cluster.open-cluster-management.io/unavailable", "operator": "Exists"}
                ]
            }
        }),
    )
    .await;
    create(
        placement_bindings(),
        json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "PlacementBinding",
            "metadata": {"name": "talm-e2e-user", "namespace": t.ns},
            "placementRef": {"apiGroup": "cluster.open-cluster-management.io",
                             "kind": "Placement", "name": "talm-e2e-user"},
            "subjects": [{"apiGroup": "policy.open-cluster-management.io",
                          "kind": "Policy", "name": POLICY}]
        }),
    )
    .await;
}

/// Plays RHACM's policy framework on the double: the child policy `<ns>.<policy>` in the
/// cluster's namespace, and the cluster's compliance in both policies' status.
async fn simulate_policy_framework(t: &Target, cluster: &str, compliant: &str) {
    let roots: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &policies());
    let children: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), cluster, &policies());
    let child_name = format!("{}.{POLICY}", t.ns);
    if children.get_opt(&child_name).await.unwrap().is_none() {
        let root = roots.get(POLICY).await.unwrap();
        let child = child_policy(&t.ns, POLICY, cluster, root.data["spec"].clone());
        children
            .create(&PostParams::default(), &dynamic(child))
            .await
            .unwrap();
    }
    let pp = PatchParams::default();
    children
        .patch_status(
            &child_name,
            &pp,
            &Patch::Merge(json!({"status": {"compliant": compliant}})),
        )
        .await
        .unwrap();
    roots
        .patch_status(
            POLICY,
            &pp,
            &Patch::Merge(json!({"status": {"compliant": compliant, "status": [
                {"clustername": cluster, "clusternamespace": cluster, "compliant": compliant}
            ]}})),
        )
        .await
        .unwrap();
}

/// The cluster's compliance in the root policy's status, or the status seen.
async fn compliance(t: &Target, cluster: &str) -> Result<String, String> {
    let roots: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &policies());
    let root = roots.get(POLICY).await.map_err(|e| e.to_string())?;
    root.data["status"]["status"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["clustername"] == cluster)
        .and_then(|e| e["compliant"].as_str().map(str::to_string))
        .ok_or_else(|| format!("root policy status: {}", root.data["status"]))
}

/// talm's objects of the CGU in `t.ns` (by its labels).
async fn talm_objects(t: &Target, ar: &ApiResource) -> Result<Vec<DynamicObject>, String> {
    let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, ar);
    let selector = format!(
        "{}={},{TALM_CGU_LABEL}={LIFECYCLE_CGU}",
        TALM_APP_LABEL.0, TALM_APP_LABEL.1
    );
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string())
}

/// The `name In (...)` values of a talm Placement: the clusters it releases.
fn released(p: &DynamicObject) -> Vec<String> {
    p.data["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["key"] == "name" && e["operator"] == "In")
        .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn condition(c: &ClusterGroupUpgrade, ty: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == ty)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

fn labels_and_annotations(
    mc: &DynamicObject,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (mc.labels().clone(), mc.annotations().clone())
}

/// The operator's lifecycle with one CGU: finalizer, enforcement objects, (with `enforce`)
/// the rollout to Succeeded, then deletion cleans up everything talm created.
async fn lifecycle(t: &Target, o: LifecycleOptions) {
    assert_no_other_cgu_controller(t).await;
    let cluster = o.cluster.as_str();
    let label = action_label(&t.suffix);
    let mcs: Api<DynamicObject> = Api::all_with(t.client.clone(), &managed_clusters());
    let mc_before = mcs
        .get(cluster)
        .await
        .unwrap_or_else(|e| panic!("ManagedCluster {cluster} (TALM_TEST_CLUSTER): {e}"));
    let cluster_set = mc_before
        .labels()
        .get("cluster.open-cluster-management.io/clusterset")
        .cloned()
        .unwrap_or_else(|| "default".into());

    // The policy, bound to the cluster in inform mode; the cluster reports NonCompliant.
    create_user_objects(t, cluster, &cluster_set).await;
    if t.backend == Backend::Double {
        simulate_policy_framework(t, cluster, "NonCompliant").await;
    }
    wait_until(
        t,
        "the cluster NonCompliant with the inform policy",
        async || match compliance(t, cluster).await? {
            c if c == "NonCompliant" => Ok(()),
            c => Err(format!("compliance {c}")),
        },
    )
    .await;

    // The CGU, not enabled, and the operator (leader election on, Lease in the namespace).
    let cgus: Api<ClusterGroupUpgrade> = Api::namespaced(t.client.clone(), &t.ns);
    let cgu: ClusterGroupUpgrade = serde_json::from_value(json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {"name": LIFECYCLE_CGU, "namespace": t.ns},
        "spec": {
            "clusters": [cluster],
            "managedPolicies": [POLICY],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
            "enable": false,
            "actions": {
                "beforeEnable": {"addClusterLabels": {label.as_str(): ""}},
                "afterCompletion": {"deleteClusterLabels": {label.as_str(): ""},
                                    "deleteObjects": true}
            }
        }
    }))
    .unwrap();
    cgus.create(&PostParams::default(), &cgu).await.unwrap();
    let identity = format!("talm-e2e-{}", t.suffix);
    let config = Config {
        workers: 2,
        leader_election: Some(LeaderElection {
            namespace: t.ns.clone(),
            name: "talm-e2e-leader".into(),
            timing: LeaseTiming::default(),
        }),
        identity: identity.clone(),
        ..Config::default()
    };
    let op = RunningOperator::start(t.client.clone(), o.clock.clone(), config);
    wait_until(t, "the operator leads", async || {
        if op.shared.leading() {
            Ok(())
        } else {
            // Not synced: a watched kind is missing (deploy/crds not applied?) or forbidden.
            let synced = op.shared.cache_read().synced();
            Err(format!("not leading; caches synced: {synced}"))
        }
    })
    .await;
    let leases: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &leases());
    let lease = leases.get("talm-e2e-leader").await.unwrap();
    assert_eq!(lease.data["spec"]["holderIdentity"], identity.as_str());

    // Finalizer, plan, NotEnabled.
    wait_until(t, "finalizer, plan and NotEnabled", async || {
        let c = cgus.get(LIFECYCLE_CGU).await.map_err(|e| e.to_string())?;
        let ok = c.finalizers().iter().any(|f| f == CGU_FINALIZER)
            && condition(&c, "Progressing") == Some(("False".into(), "NotEnabled".into()))
            && remediation_plan(&c) == Some(vec![vec![cluster.to_string()]]);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "finalizers {:?}, status {:?}",
                c.finalizers(),
                c.status
            ))
        }
    })
    .await;

    // One Placement + PlacementBinding, labelled, restricted, enforce, releasing nobody.
    let (placement, binding) = wait_until(t, "talm's Placement and PlacementBinding", async || {
        let p = talm_objects(t, &placements()).await?;
        let b = talm_objects(t, &placement_bindings()).await?;
        match (p.as_slice(), b.as_slice()) {
            ([p], [b]) => Ok((p.clone(), b.clone())),
            _ => Err(format!(
                "{} Placements, {} PlacementBindings",
                p.len(),
                b.len()
            )),
        }
    })
    .await;
    assert!(
        released(&placement).is_empty(),
        "not enabled: releases nobody: {}",
        value(&placement)
    );
    assert_eq!(
        binding.data["subFilter"],
        "restricted",
        "{}",
        value(&binding)
    );
    assert_eq!(
        binding.data["bindingOverrides"]["remediationAction"],
        "enforce"
    );
    assert_eq!(
        binding.data["placementRef"]["name"],
        placement.name_any().as_str()
    );
    assert_eq!(
        binding.data["subjects"],
        json!([{"apiGroup": "policy.open-cluster-management.io", "kind": "Policy", "name": POLICY}])
    );
    for obj in [&placement, &binding] {
        assert_eq!(
            obj.labels().get(TALM_APP_LABEL.0).map(String::as_str),
            Some(TALM_APP_LABEL.1)
        );
    }

    if o.enforce {
        operator_support::enable_cgu(t.client.clone(), &t.ns, LIFECYCLE_CGU).await;
        wait_until(
            t,
            "the cluster released and labelled (beforeEnable)",
            async || {
                let p = talm_objects(t, &placements()).await?;
                let mc = mcs.get(cluster).await.map_err(|e| e.to_string())?;
                let rel: Vec<Vec<String>> = p.iter().map(released).collect();
                if rel == [vec![cluster.to_string()]] && mc.labels().contains_key(&label) {
                    Ok(())
                } else {
                    Err(format!("released {rel:?}, labels {:?}", mc.labels()))
                }
            },
        )
        .await;
        if t.backend == Backend::Double {
            simulate_policy_framework(t, cluster, "Compliant").await;
        }
        wait_until(t, "the CGU Succeeded", async || {
            let c = cgus.get(LIFECYCLE_CGU).await.map_err(|e| e.to_string())?;
            match condition(&c, "Succeeded") {
                Some((s, r)) if s == "True" && r == "Completed" => Ok(()),
                _ => Err(format!("status {:?}", c.status)),
            }
        })
        .await;
        wait_until(
            t,
            "enforcement objects deleted and label removed (afterCompletion)",
            async || {
                let p = talm_objects(t, &placements()).await?;
                let b = talm_objects(t, &placement_bindings()).await?;
                let mc = mcs.get(cluster).await.map_err(|e| e.to_string())?;
                if p.is_empty() && b.is_empty() && !mc.labels().contains_key(&label) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} Placements, {} bindings, labels {:?}",
                        p.len(),
                        b.len(),
                        mc.labels()
                    ))
                }
            },
        )
        .await;
    }

    // Deleting the CGU: talm deletes its objects and releases the finalizer.
    cgus.delete(LIFECYCLE_CGU, &DeleteParams::default())
        .await
        .unwrap();
    wait_until(t, "the CGU gone", async || {
        match cgus.get_opt(LIFECYCLE_CGU).await {
            Ok(None) => Ok(()),
            Ok(Some(c)) => Err(format!("finalizers {:?}", c.finalizers())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let p = talm_objects(t, &placements()).await.unwrap();
    let b = talm_objects(t, &placement_bindings()).await.unwrap();
    assert!(
        p.is_empty() && b.is_empty(),
        "talm left {} Placements and {} bindings",
        p.len(),
        b.len()
    );
    op.stop(Duration::from_secs(60)).await;
    let lease = leases.get("talm-e2e-leader").await.unwrap();
    assert_ne!(
        lease.data["spec"]["holderIdentity"],
        identity.as_str(),
        "the Lease is released on stop"
    );
    // The ManagedCluster carries nothing of talm's any more.
    let mc_after = mcs.get(cluster).await.unwrap();
    assert_eq!(
        labels_and_annotations(&mc_after),
        labels_and_annotations(&mc_before),
        "ManagedCluster {cluster}: labels and annotations as before the test"
    );
}

// ----- scenario 3: CRDs ---------------------------------------------------------------------

/// The shape of a CRD that must match: group, scope, kind, plural, and per version
/// `(name, served, storage, status subresource)`.
fn crd_shape(crd: &CustomResourceDefinition) -> Vec<String> {
    let s = &crd.spec;
    let mut out = vec![
        format!("group {}", s.group),
        format!("scope {}", s.scope),
        format!("kind {}", s.names.kind),
        format!("plural {}", s.names.plural),
    ];
    for v in &s.versions {
        out.push(format!(
            "version {} served={} storage={} status={}",
            v.name,
            v.served,
            v.storage,
            v.subresources.as_ref().is_some_and(|r| r.status.is_some())
        ));
    }
    out
}

/// How the CRDs on the server differ from `talm-hub crds` of this build (empty: they match).
async fn crd_problems(client: &kube::Client) -> Vec<String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut problems = Vec::new();
    for want in talm_hub::crds::definitions() {
        let name = want.name_any();
        match api.get_opt(&name).await {
            Ok(None) => problems.push(format!("{name}: not installed")),
            Err(e) => problems.push(format!("{name}: {e}")),
            Ok(Some(got)) => {
                let (w, g) = (crd_shape(&want), crd_shape(&got));
                for x in w.iter().filter(|x| !g.contains(x)) {
                    problems.push(format!("{name}: expected {x}"));
                }
                for x in g.iter().filter(|x| !w.contains(x)) {
                    problems.push(format!("{name}: the server has {x}"));
                }
            }
        }
    }
    problems
}

async fn assert_crds_match(client: &kube::Client) {
    let problems = crd_problems(client).await;
    assert!(
        problems.is_empty(),
        "the cluster's CRDs are not this build's (`kubectl apply -f deploy/crds`):\n  {}",
        problems.join("\n  ")
    );
}

/// Creates `deploy/crds/*.yaml` through the API, as `kubectl apply -f deploy/crds` would.
async fn install_deploy_crds(client: &kube::Client) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CRDs in {dir}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for d in docs.into_iter().filter(|d| !d.is_null()) {
            let crd: CustomResourceDefinition = serde_json::from_value(d).unwrap();
            api.create(&PostParams::default(), &crd).await.unwrap();
        }
    }
}

// ----- the tests ------------------------------------------------------------------------------

/// Runs `scenario` in a scratch namespace on the double (see [`with_scratch`]).
async fn on_the_double(
    double: &KubeDouble,
    cluster: Option<&str>,
    scenario: impl AsyncFnOnce(Target),
) {
    with_scratch(
        double.client(),
        double.config(),
        Backend::Double,
        cluster,
        scenario,
    )
    .await;
}

/// [`lifecycle`] on the double's [`DOUBLE_CLUSTER`], on a manual clock.
async fn lifecycle_on_the_double(double: &KubeDouble, enforce: bool) {
    on_the_double(double, Some(DOUBLE_CLUSTER), async |t| {
        let options = LifecycleOptions {
            cluster: DOUBLE_CLUSTER.into(),
            enforce,
            clock: operator_support::manual_clock(),
        };
        lifecycle(&t, options).await;
    })
    .await;
}

/// The double's [`DOUBLE_CLUSTER`] ManagedCluster.
fn double_cluster(double: &KubeDouble) -> Value {
    double
        .get_value(
            "cluster.open-cluster-management.io/v1",
            "ManagedCluster",
            None,
            DOUBLE_CLUSTER,
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_conformance_on_the_double() {
    let double = hub_double().await;
    on_the_double(&double, None, async |t| api_conformance(&t).await).await;
    double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cluster"]
async fn api_conformance_on_a_real_cluster() {
    let (client, config) = real_cluster().await;
    with_scratch(client, config, Backend::Real, None, async |t| {
        api_conformance(&t).await
    })
    .await;
}

/// The double-backed lifecycle runs the full rollout (the test plays the policy framework).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lifecycle_on_the_double() {
    let double = hub_double().await;
    let mc_before = double_cluster(&double);
    lifecycle_on_the_double(&double, true).await;
    // Only the test namespace and the one ManagedCluster were written: the cluster is back
    // as it was, and the namespace is gone.
    let mc_after = double_cluster(&double);
    assert_eq!(
        mc_after["metadata"]["labels"],
        mc_before["metadata"]["labels"]
    );
    let namespaces: Vec<String> = double
        .list_values("v1", "Namespace", None)
        .iter()
        .map(|n| {
            n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        namespaces,
        [DOUBLE_CLUSTER],
        "the test namespace is deleted"
    );
    double.shutdown().await;
}

/// With the same code the lifecycle stops short of enabling the CGU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lifecycle_without_enforcement_on_the_double() {
    let double = hub_double().await;
    lifecycle_on_the_double(&double, false).await;
    double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cluster"]
async fn operator_lifecycle_on_a_real_cluster() {
    let (client, config) = real_cluster().await;
    let cluster = std::env::var("TALM_TEST_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "set TALM_TEST_CLUSTER to the name of an existing ManagedCluster the test may \
             bind one inform policy to (README, \"Tests against a real cluster\")"
        )
    });
    let enforce = env_flag("TALM_TEST_ENFORCE");
    with_scratch(client, config, Backend::Real, Some(&cluster), async |t| {
        lifecycle(
            &t,
            LifecycleOptions {
                cluster: cluster.clone(),
                enforce,
                clock: Arc::new(SystemClock),
            },
        )
        .await;
    })
    .await;
}

/// deploy/crds matches this build, and a served/storage difference on the server is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_crds_match_the_build_on_the_double() {
    let double = hub_double().await;
    let client = double.client();
    assert_eq!(
        crd_problems(&client).await.len(),
        talm_hub::crds::definitions().len(),
        "nothing installed yet: one problem per CRD"
    );
    install_deploy_crds(&client).await;
    assert_crds_match(&client).await;
    // A version no longer served is reported.
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "clustergroupupgrades.ran.openshift.io";
    let mut crd = api.get(name).await.unwrap();
    crd.spec.versions[0].served = false;
    api.replace(name, &PostParams::default(), &crd)
        .await
        .unwrap();
    let problems = crd_problems(&client).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains(name) && p.contains("served=false")),
        "{problems:?}"
    );
    double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cluster"]
async fn installed_crds_match_the_build_on_a_real_cluster() {
    let (client, _) = real_cluster().await;
    assert_crds_match(&client).await;
}

/// A failing scenario still gets its namespace deleted, its CGU's finalizer removed and the
/// test's label taken off the ManagedCluster, and its panic is what the test reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_is_cleaned_up_after_a_failure_on_the_double() {
    let double = hub_double().await;
    let seen = Arc::new(std::sync::Mutex::new(None::<(String, String)>));
    let seen_in = seen.clone();
    let outcome = AssertUnwindSafe(on_the_double(
        &double,
        Some(DOUBLE_CLUSTER),
        async move |t| {
            let label = action_label(&t.suffix);
            *seen_in.lock().unwrap() = Some((t.ns.clone(), label.clone()));
            let cgus: Api<ClusterGroupUpgrade> = Api::namespaced(t.client.clone(), &t.ns);
            let mut c = conformance_cgu("left-behind", &t.ns);
            c.metadata.finalizers = Some(vec![CGU_FINALIZER.into()]);
            cgus.create(&PostParams::default(), &c).await.unwrap();
            let mcs: Api<DynamicObject> = Api::all_with(t.client.clone(), &managed_clusters());
            let patch = Patch::Merge(json!({"metadata": {"labels": {label: ""}}}));
            mcs.patch(DOUBLE_CLUSTER, &PatchParams::default(), &patch)
                .await
                .unwrap();
            panic!("scenario failed on purpose");
        },
    ))
    .catch_unwind()
    .await;
    let panic = outcome.expect_err("the scenario's panic is passed on");
    assert_eq!(
        panic.downcast_ref::<&str>().copied(),
        Some("scenario failed on purpose")
    );
    let (ns, label) = seen.lock().unwrap().clone().unwrap();
    let cgu = operator_support::cgu(&double, &ns, "left-behind");
    assert!(
        cgu.as_ref()
            .is_none_or(|c| c["metadata"]["finalizers"].is_null()),
        "finalizer removed: {cgu:?}"
    );
    assert!(
        double.get_value("v1", "Namespace", None, &ns).is_none(),
        "namespace {ns} deleted"
    );
    let mc = double_cluster(&double);
    assert!(
        mc["metadata"]["labels"].get(&label).is_none(),
        "label {label} removed: {}",
        mc["metadata"]["labels"]
    );
    double.shutdown().await;
}

/// The scenarios that write refuse to run beside CGUs in other namespaces (the in-process
/// operator would reconcile them) or a live TALM / talm-hub Lease; a stale Lease is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_run_beside_other_cgus_or_a_live_controller_on_the_double() {
    let double = hub_double().await;
    let guard_message = async |double: &KubeDouble| {
        let outcome = AssertUnwindSafe(on_the_double(double, None, async |t| {
            assert_no_other_cgu_controller(&t).await
        }))
        .catch_unwind()
        .await;
        outcome.err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "<non-string panic>".into())
        })
    };
    assert_eq!(guard_message(&double).await, None, "an empty hub is fine");
    for ns in ["openshift-cluster-group-upgrades", "ztp-install"] {
        double
            .put_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }

    let lease = |renew: String| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "9a2365a3.openshift.io",
                            "namespace": "openshift-cluster-group-upgrades"},
               "spec": {"holderIdentity": "talm-controller-manager-abc",
                        "leaseDurationSeconds": 137, "renewTime": renew}})
    };
    double
        .put_value(lease("2020-01-01T00:00:00.000000Z".into()))
        .unwrap();
    assert_eq!(guard_message(&double).await, None, "a stale Lease is fine");
    let now = SystemClock
        .now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    double.put_value(lease(now)).unwrap();
    let msg = guard_message(&double).await.expect("a live Lease refuses");
    assert!(msg.contains("9a2365a3.openshift.io"), "{msg}");
    assert!(msg.contains("talm-controller-manager-abc"), "{msg}");
    double
        .remove::<k8s_openapi::api::coordination::v1::Lease>(
            Some("openshift-cluster-group-upgrades"),
            "9a2365a3.openshift.io",
        )
        .unwrap();

    let mut foreign =
        serde_json::to_value(conformance_cgu("someone-elses", "ztp-install")).unwrap();
    foreign["status"] = Value::Null;
    double.put_value(foreign).unwrap();
    let msg = guard_message(&double).await.expect("a foreign CGU refuses");
    assert!(msg.contains("ztp-install/someone-elses"), "{msg}");
    double.shutdown().await;
}
