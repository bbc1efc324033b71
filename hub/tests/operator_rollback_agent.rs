//! The rollback watchdog through the gateway (issue 18, hub side), end to end: one operator
//! replica with its agent gateway (mTLS gRPC on 127.0.0.1) against the hub API double, and one
//! real `talm-agent run` process.
//!
//! The CGU asks for automatic recovery and is resumed mid-rollout: its status already says the
//! backup of `spoke1` succeeded and the rollout is in progress (the engine is level-triggered,
//! so this is what a hub restarted after the backup gate sees; a real backup needs the whole
//! node fixture of `operator_agents_e2e`). The operator releases `spoke1` into the policy and
//! arms the watchdog in its SpokeAgent; the gateway hands it to the agent as a
//! `TASK_KIND_ROLLBACK` assignment, and the agent's answer comes back into the SpokeAgent
//! status under the task's id.
//!
//! 1. An agent that cannot arm the watchdog (here: no spoke kubeconfig to check the node's
//!    health with; an agent without the watchdog does the same) rejects the task. The hub reads
//!    that as "cannot arm" (`UnrecoverableError`), never as a rolled-back cluster: the cluster
//!    stays released, is not failed, is not re-armed, and completes.
//! 2. An agent with its spoke API (a second API double, not healthy: the watchdog keeps
//!    watching) reports `Armed`; a person's `talm-agent rollback disarm` on the node comes back
//!    as `Cancelled`; the hub does not arm it again, and the cluster completes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use operator_support::{
    GatewayHub, T0, agent_binary, agent_command, kubeconfig, musthave, placement_values,
    policy_templates, put_policy, set_compliance, spoke_agent, start_hub_for_agents,
    talm_hub_agents,
};
use serde_json::{Value, json};
use talm_kube_double::KubeDouble;

const WAIT: Duration = Duration::from_secs(120);
const CLUSTER: &str = "spoke1";
const POLICY: &str = "cfg-policy";
const CGU: &str = "cgu-watchdog";

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(50), what, f).await
}

async fn hub_double() -> KubeDouble {
    let double = KubeDouble::start().await.unwrap();
    double
        .put_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": CLUSTER, "labels": {"name": CLUSTER}},
            "spec": {"hubAcceptsClient": true},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                "status": "True", "reason": "r", "message": "m", "lastTransitionTime": T0}]}
        }))
        .unwrap();
    put_policy(
        &double,
        "default",
        POLICY,
        CLUSTER,
        None,
        policy_templates(
            "cfg",
            json!([musthave(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "site", "namespace": "default"}, "data": {"a": "1"}}))]),
        ),
    );
    double
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastTransitionTime": T0})
}

/// The CGU, resumed after its backup gate: spoke1 backed up, rollout in progress (started
/// now, on the clock the operator runs on: the global timeout counts from the start).
fn put_cgu(double: &KubeDouble) {
    use talm_shared::clock::Clock;
    let now = talm_shared::clock::SystemClock.now().to_string();
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": "default",
                         "finalizers": ["ran.openshift.io/cleanup-finalizer"],
                         "annotations": {"cluster-group-upgrades-operator/name-suffix": "kuttl"}},
            "spec": {"clusters": [CLUSTER], "managedPolicies": [POLICY], "enable": true,
                     "backup": true,
                     "recovery": {"automatic": true, "healthTimeout": "1h"},
                     "remediationStrategy": {"maxConcurrency": 1, "timeout": 240}},
            "status": {
                "conditions": [
                    condition("ClustersSelected", "ClusterSelectionCompleted",
                              "All selected clusters are valid"),
                    condition("Validated", "ValidationCompleted", "Completed validation"),
                    condition("BackupSuceeded", "BackupCompleted",
                              "Backup is completed for all clusters"),
                    condition("Progressing", "InProgress", "Remediating non-compliant policies"),
                ],
                "remediationPlan": [[CLUSTER]],
                "managedPoliciesForUpgrade": [{"name": POLICY, "namespace": "default"}],
                "managedPoliciesNs": {POLICY: "default"},
                "backup": {"startedAt": now, "status": {CLUSTER: "Succeeded"}},
                "status": {"startedAt": now},
            }
        }))
        .unwrap();
}

struct Agent(Child, std::path::PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

fn spawn_agent(
    hub: &GatewayHub,
    double: &KubeDouble,
    dir: &Path,
    spoke_kubeconfig: Option<&Path>,
) -> Agent {
    let bin = agent_binary("agent-for-rollback-tests");
    let token = talm_hub_agents(&kubeconfig(double, dir), &["token", CLUSTER]);
    let (state, root) = (dir.join("state"), dir.join("root"));
    std::fs::create_dir_all(&root).unwrap();
    let log = dir.join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = agent_command(&bin, hub.grpc, &hub.hub_ca, &token, dir, &state, &root);
    if let Some(kc) = spoke_kubeconfig {
        cmd.arg("--spoke-kubeconfig")
            .arg(kc)
            .args(["--watchdog-poll-secs", "1"]);
    }
    let child = cmd
        .env_remove("TALM_AGENT_STATE_DIR")
        .env_remove("TALM_AGENT_SPOKE_KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Agent(child, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_the_agent_cannot_arm_fails_nothing() {
    let double = hub_double().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_for_agents(&double, "talm-hub-rollback").await;
    let agent = spawn_agent(&hub, &double, dir.path(), None);
    wait_for("the agent connected", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["status"]["connected"] == json!(true))
    })
    .await;
    put_cgu(&double);

    // Released into the policy, the watchdog armed in the SpokeAgent.
    let sa = wait_for("the watchdog in the SpokeAgent", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["spec"]["rollback"].is_object())
    })
    .await;
    let task = sa["spec"]["rollback"].clone();
    let id = task["id"].as_str().unwrap().to_string();
    assert!(id.starts_with(&format!("default/{CGU}/")), "{task}");
    assert!(id.ends_with("/rollback"), "{task}");
    assert_eq!(task["healthTimeoutSeconds"], 3600);
    assert!(
        task.get("targetVersion").is_none(),
        "no ClusterVersion policy"
    );
    let placement = format!("{CGU}-{POLICY}-placement-kuttl");
    assert_eq!(
        placement_values(&double, "default", &placement),
        Some(vec![CLUSTER.to_string()])
    );

    // The agent got it (the assignment went over the wire) and rejected the kind; the gateway
    // writes that back under the task's id as "cannot arm".
    let report = wait_for("the agent's answer in the SpokeAgent status", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["status"]["rollback"].clone())
            .filter(|r| r["id"] == json!(id) && r["state"].is_string())
            .filter(|r| r["state"] != "Starting" && r["state"] != "Armed")
    })
    .await;
    assert_eq!(
        report["state"],
        "UnrecoverableError",
        "{report}\nagent log:\n{}",
        agent.log()
    );

    // Not a rolled-back cluster: still released, nothing recorded, not re-armed.
    let cgu = operator_support::cgu(&double, "default", CGU).unwrap();
    assert!(cgu["status"]["clusters"].is_null(), "{:#}", cgu["status"]);
    assert_eq!(
        placement_values(&double, "default", &placement),
        Some(vec![CLUSTER.to_string()])
    );
    assert_eq!(
        spoke_agent(&double, CLUSTER).unwrap()["spec"]["rollback"],
        task,
        "the same task, not armed again"
    );

    // The cluster completes: the watchdog goes and the CGU succeeds.
    set_compliance(&double, "default", POLICY, CLUSTER, "Compliant").await;
    wait_for("the watchdog disarmed", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["spec"].get("rollback").is_none())
    })
    .await;
    let cgu = wait_for("the CGU succeeded", || {
        operator_support::cgu(&double, "default", CGU).filter(|c| {
            c["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Succeeded" && c["status"] == "True")
        })
    })
    .await;
    assert_eq!(
        cgu["status"]["clusters"],
        json!([{"name": CLUSTER, "state": "complete"}])
    );
    drop(agent);
    hub.stop().await;
}

fn has_succeeded(c: &Value) -> bool {
    c["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Succeeded" && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_comes_back_armed_and_a_persons_disarm_is_respected() {
    let double = hub_double().await;
    let spoke = KubeDouble::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spoke_dir = tempfile::tempdir().unwrap();
    let spoke_kc = kubeconfig(&spoke, spoke_dir.path());
    let hub = start_hub_for_agents(&double, "talm-hub-rollback").await;
    let agent = spawn_agent(&hub, &double, dir.path(), Some(&spoke_kc));
    wait_for("the agent connected", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["status"]["connected"] == json!(true))
    })
    .await;
    put_cgu(&double);

    let task = wait_for("the watchdog in the SpokeAgent", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["spec"]["rollback"].clone())
            .filter(Value::is_object)
    })
    .await;
    let id = task["id"].as_str().unwrap().to_string();
    let report = wait_for("Armed in the SpokeAgent status", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["status"]["rollback"].clone())
            .filter(|r| r["id"] == json!(id) && r["state"] == "Armed")
    })
    .await;
    assert_eq!(report["id"], json!(id));

    // A person disarms it on the node.
    #[allow(clippy::disallowed_methods)] // the test runs the real agent CLI
    let out = std::process::Command::new(agent_binary("agent-for-rollback-tests"))
        .args(["rollback", "disarm", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("Cancelled in the SpokeAgent status", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["status"]["rollback"].clone())
            .filter(|r| r["id"] == json!(id) && r["state"] == "Cancelled")
    })
    .await;
    // Respected: the same task (not armed again), the cluster still released and not failed.
    let placement = format!("{CGU}-{POLICY}-placement-kuttl");
    assert_eq!(
        spoke_agent(&double, CLUSTER).unwrap()["spec"]["rollback"],
        task
    );
    assert_eq!(
        placement_values(&double, "default", &placement),
        Some(vec![CLUSTER.to_string()])
    );
    let cgu = operator_support::cgu(&double, "default", CGU).unwrap();
    assert!(cgu["status"]["clusters"].is_null(), "{:#}", cgu["status"]);

    set_compliance(&double, "default", POLICY, CLUSTER, "Compliant").await;
    let cgu = wait_for("the CGU succeeded", || {
        operator_support::cgu(&double, "default", CGU).filter(has_succeeded)
    })
    .await;
    assert_eq!(
        cgu["status"]["clusters"],
        json!([{"name": CLUSTER, "state": "complete"}])
    );
    assert!(
        spoke_agent(&double, CLUSTER).unwrap()["spec"]
            .get("rollback")
            .is_none()
    );
    drop(agent);
    hub.stop().await;
}
