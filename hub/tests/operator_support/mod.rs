//! The harness shared by the hub's operator test crates (`operator`, `operator_ztp`,
//! `operator_gateway`, `operator_agents_e2e`, `real_cluster`, `deploy`): polling waits, the
//! operator (and its agent gateway) running in-process with a stop switch, the talm-agent
//! binary, a kubeconfig for the Kubernetes API double and the `talm-hub agents` CLI, readers
//! of CGUs, conditions and Placements in the double, and the RHACM policy objects the tests
//! seed. Each integration test file is its own crate: they include this with
//! `mod operator_support;` instead of copying it.
//!
//! (`common/mod.rs` is the separate harness of the offline planner scenarios.)

// Each test crate uses a subset of these helpers; the rest is dead code in that crate.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use talm_gateway::GatewayConfig;
use talm_hub::operator::agents::{AgentGateway, GatewaySettings, ServingTls};
use talm_hub::operator::{Clock, ManualClock, Operator, OperatorError, Shared};
use talm_kube_double::KubeDouble;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::rhacm::Policy;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The instant the tests' [`ManualClock`]s start at.
pub const T0: &str = "2026-03-02T10:00:00Z";
/// The hub's own namespace: the gateway's Secrets, the leader-election Lease.
pub const HUB_NS: &str = "talm-system";
/// How long an operator and its gateway may take to stop.
const STOP_WITHIN: Duration = Duration::from_secs(60);

// ----- waiting -------------------------------------------------------------------------------

/// Polls `f` every `poll` until it returns `Some`; panics naming `what` after `timeout`.
pub async fn wait_for_within<T>(
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(poll).await;
    }
}

// ----- the operator in-process ---------------------------------------------------------------

/// A clock that stands at [`T0`] until a test moves it.
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0.parse().unwrap()))
}

/// One switch that ends every future [`StopSwitch::stopped`] hands out (the `shutdown` of
/// `Operator::run` and `AgentGateway::serve`).
pub struct StopSwitch(watch::Sender<bool>);

impl StopSwitch {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// A future that resolves once [`StopSwitch::stop`] was called.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// The operator running in-process; aborted when dropped (a failing test must not leave it
/// writing).
pub struct RunningOperator {
    pub shared: Arc<Shared>,
    stop: StopSwitch,
    task: Option<JoinHandle<Result<(), OperatorError>>>,
}

impl RunningOperator {
    pub fn start(
        client: kube::Client,
        clock: Arc<dyn Clock>,
        config: talm_hub::operator::Config,
    ) -> Self {
        let op = Operator::new(client, clock, config);
        let shared = op.shared();
        let stop = StopSwitch::new();
        let task = tokio::spawn(op.run(stop.stopped()));
        Self {
            shared,
            stop,
            task: Some(task),
        }
    }

    /// Stops it as SIGTERM would (the controller drains, the Lease is released).
    pub async fn stop(mut self, within: Duration) {
        self.stop.stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(within, task)
                .await
                .unwrap_or_else(|_| panic!("the operator stops within {within:?}"))
                .expect("operator task")
                .expect("operator result");
        }
    }

    /// Ends it without any cleanup (no Lease release), as a crash would.
    pub async fn crash(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Gateway settings for tests on loopback: a generated serving certificate for 127.0.0.1,
/// heartbeats every second, a 10 s heartbeat timeout, and 100 ms store polls.
pub fn loopback_gateway_settings(namespace: &str) -> GatewaySettings {
    GatewaySettings {
        namespace: namespace.into(),
        serving: ServingTls::Generated {
            names: vec!["127.0.0.1".into(), "localhost".into()],
        },
        gateway: GatewayConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            ..GatewayConfig::default()
        },
        cert_lifetime: Duration::from_secs(3600),
    }
}

/// One hub replica: the operator and its agent gateway (gRPC on a free 127.0.0.1 port), as
/// `talm-hub run` starts them.
pub struct GatewayHub {
    pub shared: Arc<Shared>,
    pub gateway: Arc<talm_gateway::Gateway>,
    /// The serving CA (PEM) agents trust.
    pub hub_ca: String,
    pub grpc: SocketAddr,
    stop: StopSwitch,
    operator: JoinHandle<Result<(), OperatorError>>,
    serving: JoinHandle<Result<(), OperatorError>>,
}

impl GatewayHub {
    /// Starts `op`'s gateway with `settings` (on the real clock: agents read certificate and
    /// task times on real time), then serves it and runs `op`.
    pub async fn start(op: Operator, settings: GatewaySettings) -> Self {
        let shared = op.shared();
        let gw = AgentGateway::start(
            shared.clone(),
            settings,
            Arc::new(talm_shared::clock::SystemClock),
        )
        .await
        .unwrap();
        let stop = StopSwitch::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        let gateway = gw.gateway.clone();
        let hub_ca = gw.serving.ca_pem.clone().unwrap();
        let serving = tokio::spawn(gw.serve(listener, stop.stopped()));
        let operator = tokio::spawn(op.run(stop.stopped()));
        Self {
            shared,
            gateway,
            hub_ca,
            grpc,
            stop,
            operator,
            serving,
        }
    }

    /// Stops the operator and the gateway; both must end cleanly within 60 s.
    pub async fn stop(self) {
        self.stop.stop();
        for t in [self.operator, self.serving] {
            tokio::time::timeout(STOP_WITHIN, t)
                .await
                .expect("the hub stops within 60s")
                .expect("hub task")
                .expect("hub result");
        }
    }
}

/// One hub replica for tests with real agents: the operator on the real clock (agents read
/// task deadlines and certificate times on real time) with leader identity `identity`, and its
/// gateway with [`loopback_gateway_settings`].
pub async fn start_hub_for_agents(double: &KubeDouble, identity: &str) -> GatewayHub {
    let config = talm_hub::operator::Config {
        identity: identity.into(),
        ..talm_hub::operator::Config::default()
    };
    let op = Operator::new(
        double.client(),
        Arc::new(talm_hub::operator::SystemClock),
        config,
    );
    GatewayHub::start(op, loopback_gateway_settings(HUB_NS)).await
}

// ----- agents and the CLI --------------------------------------------------------------------

/// The talm-agent binary of this workspace: `target/debug/talm-agent` when it is built
/// (`cargo build -p talm-agent`, or any build of the agent's tests); otherwise it is built into
/// the target directory `own` next to the profile's (cargo holds the workspace target's lock
/// while tests run).
pub fn agent_binary(own: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("talm-agent");
    if bin.exists() {
        return bin;
    }
    let own = profile_dir.parent().unwrap().join(own);
    #[allow(clippy::disallowed_methods)] // the test builds the real agent binary
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "talm-agent",
            "--bin",
            "talm-agent",
            "--target-dir",
        ])
        .arg(&own)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build -p talm-agent");
    assert!(st.success(), "cargo build -p talm-agent failed");
    let bin = own.join("debug").join("talm-agent");
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A `talm-agent run` command for the hub at `grpc`: it trusts `hub_ca` and enrolls with
/// `token` (both written into `dir`), keeps its state in `state`, sees `host_root` as the
/// host, reconnects quickly (backoff 100 ms to 1 s, keepalive 2 s) and logs at info. The
/// caller adds its own flags and where the output goes, and spawns it.
pub fn agent_command(
    bin: &Path,
    grpc: SocketAddr,
    hub_ca: &str,
    token: &str,
    dir: &Path,
    state: &Path,
    host_root: &Path,
) -> Command {
    std::fs::write(dir.join("hub-ca.pem"), hub_ca).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    #[allow(clippy::disallowed_methods)] // the test runs the real agent
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .args(["--hub", &format!("https://{grpc}")])
        .arg("--ca")
        .arg(dir.join("hub-ca.pem"))
        .arg("--state-dir")
        .arg(state)
        .arg("--bootstrap-token-file")
        .arg(dir.join("token"))
        .arg("--host-root")
        .arg(host_root)
        .args([
            "--backoff-initial-ms",
            "100",
            "--backoff-max-secs",
            "1",
            "--keepalive-secs",
            "2",
        ])
        .env("TALM_LOG_LEVEL", "info");
    cmd
}

/// A kubeconfig in `dir` pointing at the double (plain HTTP, no credentials).
pub fn kubeconfig(double: &KubeDouble, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
         contexts:\n- name: double\n  context:\n    cluster: double\n    user: test\n\
         current-context: double\nusers:\n- name: test\n  user: {{}}\n",
        double.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `talm-hub agents ARGS... --namespace talm-system` against the double (Secrets mode);
/// returns stdout.
pub fn talm_hub_agents(kubeconfig: &Path, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)] // the test drives the real binary
    let out = Command::new(env!("CARGO_BIN_EXE_talm-hub"))
        .arg("agents")
        .args(args)
        .args(["--namespace", HUB_NS])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("TALM_STATE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "talm-hub agents {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ----- reading the double ----------------------------------------------------------------------

/// The CGU `ns/name` as the double holds it.
pub fn cgu(double: &KubeDouble, ns: &str, name: &str) -> Option<Value> {
    double.get_value(
        "ran.openshift.io/v1alpha1",
        "ClusterGroupUpgrade",
        Some(ns),
        name,
    )
}

/// Enables the CGU `ns/name` (a merge patch of `spec.enable`), as a user would.
pub async fn enable_cgu(client: kube::Client, ns: &str, name: &str) {
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(client, ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"enable": true}})),
    )
    .await
    .unwrap();
}

/// The condition of `type_` in an object's `status.conditions`.
pub fn find_condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == type_)
}

/// The string field `key` of `v` ("" when absent).
pub fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// The `name In (...)` values of the talm Placement `ns/name` (the clusters it releases);
/// `None` while it does not exist.
pub fn placement_values(double: &KubeDouble, ns: &str, name: &str) -> Option<Vec<String>> {
    let p = double.get_value(
        "cluster.open-cluster-management.io/v1beta1",
        "Placement",
        Some(ns),
        name,
    )?;
    Some(
        p["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]["matchExpressions"]
            [0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

/// The cluster's SpokeAgent (in the cluster's namespace).
pub fn spoke_agent(double: &KubeDouble, cluster: &str) -> Option<Value> {
    double.get_value("talm.dev/v1alpha1", "SpokeAgent", Some(cluster), cluster)
}

/// The `ztp-*` labels of a ManagedCluster, sorted.
pub fn ztp_labels(double: &KubeDouble, cluster: &str) -> Vec<String> {
    let mc = double
        .get_value(
            "cluster.open-cluster-management.io/v1",
            "ManagedCluster",
            None,
            cluster,
        )
        .unwrap();
    let mut v: Vec<String> = mc["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("ztp-"))
        .collect();
    v.sort();
    v
}

// ----- RHACM policies --------------------------------------------------------------------------

/// `{"complianceType": "musthave", "objectDefinition": object}`.
pub fn musthave(object: Value) -> Value {
    json!({"complianceType": "musthave", "objectDefinition": object})
}

/// A root policy's `policy-templates`: one inform ConfigurationPolicy `name` with
/// `object_templates`.
pub fn policy_templates(name: &str, object_templates: Value) -> Value {
    json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "ConfigurationPolicy",
        "metadata": {"name": name},
        "spec": {
            "remediationAction": "inform",
            "severity": "low",
            "object-templates": object_templates
        }
    }}])
}

/// The child policy `<root_ns>.<root>` that RHACM's propagator puts in `cluster`'s namespace,
/// with `spec` (no status).
pub fn child_policy(root_ns: &str, root: &str, cluster: &str, spec: Value) -> Value {
    let name = format!("{root_ns}.{root}");
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "namespace": cluster, "labels": {
            "policy.open-cluster-management.io/cluster-name": cluster,
            "policy.open-cluster-management.io/cluster-namespace": cluster,
            "policy.open-cluster-management.io/root-policy": name}},
        "spec": spec
    })
}

/// The per-cluster entries of a root policy's `status.status`, read through `api`'s status
/// subresource, as JSON.
pub async fn root_status_entries(api: &Api<Policy>, policy: &str) -> Vec<Value> {
    let p = api.get_status(policy).await.unwrap();
    p.status
        .and_then(|s| s.status)
        .unwrap_or_default()
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// The object templates of a policy holding one OLM Subscription (`ptp-operator-subscription` in
/// `openshift-ptp`, Manual approval).
pub fn subscription_object() -> Value {
    json!([musthave(json!({
        "apiVersion": "operators.coreos.com/v1alpha1", "kind": "Subscription",
        "metadata": {"name": "ptp-operator-subscription", "namespace": "openshift-ptp"},
        "spec": {"channel": "stable", "name": "ptp-operator", "installPlanApproval": "Manual",
                 "source": "redhat-operators", "sourceNamespace": "openshift-marketplace"},
        "status": {"state": "AtLatestKnown"}}))])
}

/// A root policy in `ns` and its child in `cluster`'s namespace (with `wave`, if any).
pub fn put_policy(
    double: &KubeDouble,
    ns: &str,
    name: &str,
    cluster: &str,
    wave: Option<&str>,
    templates: Value,
) {
    double
        .put_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1", "kind": "Policy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"remediationAction": "inform", "disabled": false,
                     "policy-templates": templates},
            "status": {"compliant": "NonCompliant", "status": [
                {"clustername": cluster, "clusternamespace": cluster,
                 "compliant": "NonCompliant"}]}
        }))
        .unwrap();
    let mut annotations = serde_json::Map::new();
    if let Some(w) = wave {
        annotations.insert("ran.openshift.io/ztp-deploy-wave".into(), json!(w));
    }
    let spec = json!({"remediationAction": "inform", "disabled": false,
                      "policy-templates": templates});
    let mut child = child_policy(ns, name, cluster, spec);
    child["metadata"]["annotations"] = annotations.into();
    double.put_value(child).unwrap();
}

/// Sets `cluster`'s entry of root policy `ns/policy` to `c` through the status subresource, as
/// TALM's kuttl suite does.
pub async fn set_compliance(double: &KubeDouble, ns: &str, policy: &str, cluster: &str, c: &str) {
    let api: Api<Policy> = Api::namespaced(double.client(), ns);
    api.patch_status(
        policy,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"status": [
            {"clustername": cluster, "clusternamespace": cluster, "compliant": c}]}})),
    )
    .await
    .unwrap();
}

// ----- ManifestWork rollouts -----------------------------------------------------------------

/// `apiVersion` of ManifestWork.
pub const MW_API: &str = "work.open-cluster-management.io/v1";
/// `apiVersion` of ManifestWorkReplicaSet.
pub const MWRS_API: &str = "work.open-cluster-management.io/v1alpha1";

/// A ManifestWorkReplicaSet template `ns/name` whose work holds `manifests` (ConfigMaps named
/// `<name>-<i>` in `target-ns`), with `expected` (`[{manifestIndex, name, value}]`) as its
/// `openshift-cluster-group-upgrades/expectedValues` annotation when not null.
pub fn mw_template(ns: &str, name: &str, manifests: usize, expected: Value) -> Value {
    let objects: Vec<Value> = (0..manifests)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": format!("{name}-{i}"), "namespace": "target-ns"},
                   "data": {"template": name}})
        })
        .collect();
    let mut t = json!({
        "apiVersion": MWRS_API,
        "kind": "ManifestWorkReplicaSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "placementRefs": [{"name": "ignored-by-talm"}],
            "manifestWorkTemplate": {
                "deleteOption": {"propagationPolicy": "Orphan"},
                "workload": {"manifests": objects}
            }
        }
    });
    if !expected.is_null() {
        t["metadata"]["annotations"] = json!({
            "openshift-cluster-group-upgrades/expectedValues": expected.to_string()
        });
    }
    t
}

fn true_condition(type_: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": type_, "message": "ok",
           "lastTransitionTime": T0})
}

/// The status a work agent reports for `work` once every manifest is applied and available:
/// `Applied` and `Available` True, and per manifest (its ordinal, kind and name from the
/// spec) `Applied`, `Available` and `StatusFeedbackSynced` True with the status-feedback
/// `values` (`(manifest index, name, value)`, reported as strings).
pub fn applied_work_status(work: &Value, values: &[(i64, &str, &str)]) -> Value {
    let manifests = work["spec"]["workload"]["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let per_manifest: Vec<Value> = manifests
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let feedback: Vec<Value> = values
                .iter()
                .filter(|(idx, _, _)| *idx == i as i64)
                .map(|(_, name, value)| {
                    json!({"name": name, "fieldValue": {"type": "String", "string": value}})
                })
                .collect();
            json!({
                "resourceMeta": {"ordinal": i, "group": "", "version": "v1",
                    "kind": m["kind"], "resource": "configmaps",
                    "name": m["metadata"]["name"], "namespace": m["metadata"]["namespace"]},
                "statusFeedback": {"values": feedback},
                "conditions": [true_condition("Applied"), true_condition("Available"),
                               true_condition("StatusFeedbackSynced")]
            })
        })
        .collect();
    json!({
        "conditions": [true_condition("Applied"), true_condition("Available")],
        "resourceStatus": {"manifests": per_manifest}
    })
}

/// Plays the work agent for every ManifestWork talm created that has no status yet: reports
/// it applied and available, with the feedback values its expectedValues annotation asks for
/// (written directly, so the double's request log holds the operator's calls only).
pub fn complete_manifest_works(double: &KubeDouble) {
    for mut w in double.list_values(MW_API, "ManifestWork", None) {
        if !w["status"].is_null()
            || w["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"]
                .is_null()
        {
            continue;
        }
        // The annotation is the template's (`<cgu namespace>.<template>`), copied onto the work.
        let ns = text(
            &w["metadata"]["labels"],
            "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace",
        );
        let template = text(&w["metadata"], "name")
            .strip_prefix(&format!("{ns}."))
            .and_then(|t| double.get_value(MWRS_API, "ManifestWorkReplicaSet", Some(&ns), t));
        let annotation = |o: &Value| {
            o["metadata"]["annotations"]["openshift-cluster-group-upgrades/expectedValues"]
                .as_str()
                .map(str::to_string)
        };
        let expected: Vec<Value> = annotation(&w)
            .or_else(|| template.as_ref().and_then(annotation))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let values: Vec<(i64, String, String)> = expected
            .iter()
            .map(|e| {
                (
                    e["manifestIndex"].as_i64().unwrap_or(0),
                    text(e, "name"),
                    text(e, "value"),
                )
            })
            .collect();
        let borrowed: Vec<(i64, &str, &str)> = values
            .iter()
            .map(|(i, n, v)| (*i, n.as_str(), v.as_str()))
            .collect();
        w["status"] = applied_work_status(&w, &borrowed);
        double.put_value(w).unwrap();
    }
}
