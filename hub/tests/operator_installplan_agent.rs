//! Manual InstallPlan approval by the on-spoke agent (issue 6 §1, docs/contract.md §3.10),
//! end to end: one operator replica with its agent gateway (mTLS gRPC on 127.0.0.1) against
//! the hub API double, one real `talm-agent run` process, and a second API double playing the
//! spoke's own API server (OLM Subscriptions and InstallPlans), which the agent reaches through
//! `--spoke-kubeconfig`.
//!
//! 1. A connected agent gets the approval task and approves the InstallPlan on the spoke; the
//!    hub creates no ManagedClusterView or ManagedClusterAction; the task is cleared when the
//!    cluster completes and the agent ends it.
//! 2. An agent that cannot reach its spoke API rejects the task, and the hub falls back to
//!    ManagedClusterViews.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use operator_support::{
    GatewayHub, agent_binary, agent_command, kubeconfig, put_policy, set_compliance, spoke_agent,
    start_hub_for_agents, subscription_object, talm_hub_agents,
};
use serde_json::{Value, json};
use talm_kube_double::{KubeDouble, Verb, olm_kinds};

const WAIT: Duration = Duration::from_secs(120);
const CLUSTER: &str = "spoke1";
const OLM: &str = "operators.coreos.com/v1alpha1";
const MCV_V: &str = "view.open-cluster-management.io/v1beta1";
const MCA_V: &str = "action.open-cluster-management.io/v1beta1";
const SUB: &str = "ptp-operator-subscription";
const SUB_NS: &str = "openshift-ptp";
const PLAN: &str = "install-7x2kq";

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(50), what, f).await
}

/// The hub: a managed cluster and one inform policy holding an OLM Subscription.
async fn hub_double() -> KubeDouble {
    let double = KubeDouble::start().await.unwrap();
    double
        .put_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": CLUSTER, "labels": {"name": CLUSTER}},
            "spec": {"hubAcceptsClient": true},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                "status": "True", "reason": "r", "message": "m",
                "lastTransitionTime": operator_support::T0}]}
        }))
        .unwrap();
    put_policy(
        &double,
        "default",
        "sub-policy",
        CLUSTER,
        None,
        operator_support::policy_templates("cfg", subscription_object()),
    );
    double
}

/// The spoke's API server: the Subscription is UpgradePending on a Manual InstallPlan.
async fn spoke_double() -> KubeDouble {
    let double = KubeDouble::builder()
        .no_default_kinds()
        .kinds(olm_kinds())
        .start()
        .await
        .unwrap();
    double
        .put_value(json!({"apiVersion": OLM, "kind": "Subscription",
            "metadata": {"name": SUB, "namespace": SUB_NS},
            "spec": {"name": "ptp-operator", "channel": "stable", "installPlanApproval": "Manual"},
            "status": {"state": "UpgradePending",
                       "install": {"name": PLAN, "kind": "InstallPlan", "apiVersion": OLM}}}))
        .unwrap();
    double
        .put_value(json!({"apiVersion": OLM, "kind": "InstallPlan",
            "metadata": {"name": PLAN, "namespace": SUB_NS},
            "spec": {"approval": "Manual", "approved": false,
                     "clusterServiceVersionNames": ["ptp-operator.v4.16.0"]}}))
        .unwrap();
    double
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

/// Enrolls and starts a real agent for `CLUSTER` whose spoke API is `spoke_kubeconfig`.
fn spawn_agent(
    hub: &GatewayHub,
    double: &KubeDouble,
    dir: &Path,
    spoke_kubeconfig: &Path,
) -> Agent {
    let bin = agent_binary("agent-for-installplan-tests");
    let token = talm_hub_agents(&kubeconfig(double, dir), &["token", CLUSTER]);
    let (state, root) = (dir.join("state"), dir.join("root"));
    std::fs::create_dir_all(&root).unwrap();
    let log = dir.join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = agent_command(&bin, hub.grpc, &hub.hub_ca, &token, dir, &state, &root)
        .arg("--spoke-kubeconfig")
        .arg(spoke_kubeconfig)
        .args(["--approval-poll-secs", "1"])
        .env_remove("TALM_AGENT_STATE_DIR")
        .env_remove("TALM_AGENT_SPOKE_KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Agent(child, log)
}

async fn connected(double: &KubeDouble) {
    wait_for("the agent connected", || {
        spoke_agent(double, CLUSTER).filter(|a| a["status"]["connected"] == json!(true))
    })
    .await;
}

fn put_cgu(double: &KubeDouble) {
    double
        .put_value(
            json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-sub", "namespace": "default",
                         "annotations": {"cluster-group-upgrades-operator/name-suffix": "kuttl"}},
            "spec": {"clusters": [CLUSTER], "managedPolicies": ["sub-policy"], "enable": true,
                     "remediationStrategy": {"maxConcurrency": 1, "timeout": 240}}}),
        )
        .unwrap();
}

fn views_and_actions(double: &KubeDouble) -> usize {
    double
        .list_values(MCV_V, "ManagedClusterView", Some(CLUSTER))
        .len()
        + double
            .list_values(MCA_V, "ManagedClusterAction", Some(CLUSTER))
            .len()
}

fn plan_approved(spoke: &KubeDouble) -> bool {
    spoke
        .get_value(OLM, "InstallPlan", Some(SUB_NS), PLAN)
        .is_some_and(|p| p["spec"]["approved"] == json!(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_agent_approves_the_install_plan_on_its_spoke() {
    let double = hub_double().await;
    let spoke = spoke_double().await;
    let dir = tempfile::tempdir().unwrap();
    // The spoke's kubeconfig (its own directory: `kubeconfig` writes a fixed file name).
    let spoke_dir = tempfile::tempdir().unwrap();
    let spoke_kc = kubeconfig(&spoke, spoke_dir.path());
    let hub = start_hub_for_agents(&double, "talm-hub-installplans").await;
    let agent = spawn_agent(&hub, &double, dir.path(), &spoke_kc);
    connected(&double).await;
    put_cgu(&double);

    // The engine gives the agent the task for (CGU, policy) ...
    let sa = wait_for("the approval task in the SpokeAgent", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["spec"]["installPlans"].is_object())
    })
    .await;
    let task = &sa["spec"]["installPlans"];
    assert!(
        task["id"]
            .as_str()
            .unwrap()
            .ends_with("/installplans/sub-policy"),
        "{task}"
    );
    assert!(task["id"].as_str().unwrap().starts_with("default/cgu-sub/"));
    assert_eq!(
        task["subscriptions"],
        json!([{"name": SUB, "namespace": SUB_NS}])
    );
    // ... and the agent approves the plan through the spoke's API server.
    wait_for("the InstallPlan approved on the spoke", || {
        plan_approved(&spoke).then_some(())
    })
    .await;
    let plan = spoke
        .get_value(OLM, "InstallPlan", Some(SUB_NS), PLAN)
        .unwrap();
    assert_eq!(plan["spec"]["approval"], "Manual");
    assert_eq!(
        plan["spec"]["clusterServiceVersionNames"],
        json!(["ptp-operator.v4.16.0"])
    );
    let st = wait_for("the task reported Active", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["status"]["installPlans"].clone())
            .filter(|r| r["state"] == "Active")
    })
    .await;
    assert_eq!(st["id"], task["id"]);
    assert_eq!(
        spoke.count_requests(|r| r.verb == Verb::Patch),
        1,
        "approved once"
    );
    assert_eq!(
        views_and_actions(&double),
        0,
        "no views or actions on the agent path"
    );

    // The cluster completes: the task goes and the agent ends it.
    set_compliance(&double, "default", "sub-policy", CLUSTER, "Compliant").await;
    wait_for("the approval task cleared", || {
        spoke_agent(&double, CLUSTER).filter(|a| a["spec"].get("installPlans").is_none())
    })
    .await;
    wait_for("the agent ended the task", || {
        agent.log().contains("cancelled by the hub").then_some(())
    })
    .await;
    let cgu = operator_support::cgu(&double, "default", "cgu-sub").unwrap();
    assert!(
        cgu["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Succeeded" && c["status"] == "True"),
        "{}",
        cgu["status"]["conditions"]
    );
    assert_eq!(views_and_actions(&double), 0);
    drop(agent);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_spoke_access_rejects_the_task_and_views_take_over() {
    let double = hub_double().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_for_agents(&double, "talm-hub-installplans").await;
    let missing = dir.path().join("no-such.kubeconfig");
    let agent = spawn_agent(&hub, &double, dir.path(), &missing);
    connected(&double).await;
    put_cgu(&double);

    let report: Value = wait_for("the task reported failed", || {
        spoke_agent(&double, CLUSTER)
            .map(|a| a["status"]["installPlans"].clone())
            .filter(|r| r["state"] == "UnrecoverableError")
    })
    .await;
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no-such.kubeconfig"),
        "{report}"
    );
    let view = wait_for("the Subscription view", || {
        double
            .list_values(MCV_V, "ManagedClusterView", Some(CLUSTER))
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        view["spec"]["scope"],
        json!({"resource": "Subscription.operators.coreos.com", "name": SUB, "namespace": SUB_NS})
    );
    drop(agent);
    hub.stop().await;
}
