//! The `ApproveInstallPlans` task against a spoke API server (talm-kube-double speaking the
//! Kubernetes REST protocol), reached through a kubeconfig file as on a node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use talm_agent::facts::Host;
use talm_agent::installplans::ApprovalSettings;
use talm_agent::journal::{Task, TaskState};
use talm_agent::runner::{HostRunner, Progress, TaskContext, TaskRunner};
use talm_kube_double::{Fault, KubeDouble, Verb, olm_kinds};
use talm_proto::v1::{TaskKind, TaskOutcome};
use tokio::sync::mpsc;

const OLM: &str = "operators.coreos.com/v1alpha1";

async fn spoke() -> KubeDouble {
    KubeDouble::builder()
        .no_default_kinds()
        .kinds(olm_kinds())
        .start()
        .await
        .unwrap()
}

fn kubeconfig(double: &KubeDouble, dir: &Path) -> PathBuf {
    let path = dir.join("localhost.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: spoke\n  cluster:\n    server: {}\n\
             contexts:\n- name: admin\n  context:\n    cluster: spoke\n    user: admin\n\
             current-context: admin\nusers:\n- name: admin\n  user: {{}}\n",
            double.url()
        ),
    )
    .unwrap();
    path
}

fn subscription(name: &str, ns: &str, state: &str, plan: Option<&str>) -> Value {
    let mut status = json!({"state": state});
    if let Some(p) = plan {
        status["install"] = json!({"name": p, "kind": "InstallPlan", "apiVersion": OLM});
    }
    json!({"apiVersion": OLM, "kind": "Subscription",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"name": name, "channel": "stable"},
           "status": status})
}

fn install_plan(name: &str, ns: &str, approval: &str, approved: bool) -> Value {
    json!({"apiVersion": OLM, "kind": "InstallPlan",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"approval": approval, "approved": approved,
                    "clusterServiceVersionNames": [format!("{name}.v1")]}})
}

/// Seeds Subscription `name` in `ns` in `state`, waiting on InstallPlan `install-<name>` with
/// `approval`, not approved.
fn seed(double: &KubeDouble, name: &str, ns: &str, state: &str, approval: &str) {
    let plan = format!("install-{name}");
    double
        .put_value(install_plan(&plan, ns, approval, false))
        .unwrap();
    double
        .put_value(subscription(name, ns, state, Some(&plan)))
        .unwrap();
}

fn approved(double: &KubeDouble, ns: &str, name: &str) -> Option<bool> {
    double
        .get_value(OLM, "InstallPlan", Some(ns), name)
        .map(|p| p["spec"]["approved"] == json!(true))
}

fn task(params: Value) -> Task {
    Task {
        id: "default/cgu/uid/installplans/p1".into(),
        kind: TaskKind::ApproveInstallPlans as i32,
        params_json: params.to_string(),
        deadline_unix: 0,
        state: TaskState::Running,
        message: String::new(),
        starts: 1,
        accepted_at: 0,
        finished_at: None,
    }
}

fn runner(root: &Path, kubeconfig: &Path) -> HostRunner {
    let mut s = ApprovalSettings::new(root, Some(kubeconfig));
    s.poll = Duration::from_millis(50);
    HostRunner::new(Arc::new(Host::new(root))).with_approvals(s)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn last_progress(rx: &mut mpsc::Receiver<Progress>) -> Option<Progress> {
    let mut last = None;
    while let Ok(p) = rx.try_recv() {
        last = Some(p);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approves_manual_plans_of_upgrade_pending_subscriptions_only() {
    let double = spoke().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&double, dir.path());
    // a: UpgradePending, Manual, not approved -> approved.
    seed(&double, "a", "ns-a", "UpgradePending", "Manual");
    // b: at its latest version, with an unapproved Manual plan lying around -> untouched.
    seed(&double, "b", "ns-b", "AtLatestKnown", "Manual");
    // c: UpgradePending, but Automatic -> untouched.
    seed(&double, "c", "ns-c", "UpgradePending", "Automatic");
    // d: does not exist yet.
    let params = json!({"subscriptions": [
        {"name": "a", "namespace": "ns-a"}, {"name": "b", "namespace": "ns-b"},
        {"name": "c", "namespace": "ns-c"}, {"name": "d", "namespace": "ns-d"}]});

    let (tx, mut rx) = mpsc::channel(256);
    let r = runner(dir.path(), &kc);
    let run = tokio::spawn(r.run(task(params), TaskContext::new("t", tx)));

    wait_until("install-a approved", || {
        approved(&double, "ns-a", "install-a") == Some(true)
    })
    .await;
    // The approval kept the rest of the plan.
    let a = double
        .get_value(OLM, "InstallPlan", Some("ns-a"), "install-a")
        .unwrap();
    assert_eq!(a["spec"]["approval"], "Manual");
    assert_eq!(
        a["spec"]["clusterServiceVersionNames"],
        json!(["install-a.v1"])
    );

    // d appears later (the policy's enforcement created it) and goes UpgradePending.
    seed(&double, "d", "ns-d", "UpgradePending", "Manual");
    wait_until("install-d approved", || {
        approved(&double, "ns-d", "install-d") == Some(true)
    })
    .await;
    // Give the loop a few more passes, then check nothing else was touched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(approved(&double, "ns-b", "install-b"), Some(false));
    assert_eq!(approved(&double, "ns-c", "install-c"), Some(false));
    let patches = double.count_requests(|r| r.verb == Verb::Patch);
    assert_eq!(
        patches, 2,
        "one approval patch per Manual plan, never repeated"
    );

    let p = last_progress(&mut rx).expect("progress");
    assert!(
        p.message.starts_with(
            "2 InstallPlan(s) approved (InstallPlan ns-a/install-a, InstallPlan ns-d/install-d)"
        ),
        "{}",
        p.message
    );
    assert!(
        p.message
            .contains("ns-b/b: AtLatestKnown, not UpgradePending"),
        "{}",
        p.message
    );
    assert_eq!((p.done, p.total), (3, 4), "a, c and d settled; b waits");
    assert!(
        !run.is_finished(),
        "the task runs until cancelled or its deadline"
    );
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_retried_and_a_denial_fails_the_task() {
    let double = spoke().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&double, dir.path());
    seed(&double, "a", "ns-a", "UpgradePending", "Manual");
    // The first approval loses a race (409): the next pass re-reads and approves.
    double.inject(
        Fault::error(409)
            .verb(Verb::Patch)
            .resource("installplans")
            .times(1),
    );
    let params = json!({"subscriptions": [{"name": "a", "namespace": "ns-a"}]});
    let (tx, _rx) = mpsc::channel(256);
    let run =
        tokio::spawn(runner(dir.path(), &kc).run(task(params.clone()), TaskContext::new("t", tx)));
    wait_until("install-a approved", || {
        approved(&double, "ns-a", "install-a") == Some(true)
    })
    .await;
    assert_eq!(double.count_requests(|r| r.verb == Verb::Patch), 2);
    run.abort();

    // The agent's credentials are refused: the task fails (the hub then uses views), naming
    // what was refused.
    double.inject(Fault::error(403).verb(Verb::Get).resource("subscriptions"));
    let (tx, _rx) = mpsc::channel(256);
    let (o, msg) = runner(dir.path(), &kc)
        .run(task(params), TaskContext::new("t", tx))
        .await;
    assert_eq!(o, TaskOutcome::Failed);
    assert!(msg.contains("refused get Subscription ns-a/a"), "{msg}");
}

#[tokio::test]
async fn an_agent_without_approval_settings_or_with_bad_params_rejects_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(4);
    let plain = HostRunner::new(Arc::new(Host::new(dir.path())));
    let (o, msg) = plain
        .run(
            task(json!({"subscriptions": [{"name": "a", "namespace": "x"}]})),
            TaskContext::new("t", tx.clone()),
        )
        .await;
    assert_eq!(o, TaskOutcome::Rejected);
    assert!(msg.contains("not configured"), "{msg}");
    let kc = dir.path().join("none.kubeconfig");
    let (o, msg) = runner(dir.path(), &kc)
        .run(
            task(json!({"subscriptions": []})),
            TaskContext::new("t", tx),
        )
        .await;
    assert_eq!(o, TaskOutcome::Rejected);
    assert!(msg.contains("no subscriptions"), "{msg}");
}
