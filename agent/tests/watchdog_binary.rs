//! The real `talm-agent` binary with the hub gone and a healthy node whose health timeout has
//! already passed: the watchdog reports `Healthy`, starts nothing, and the result waits in the
//! journal for the channel. Losing the hub is never by itself a reason to roll back.
//!
//! The hub (the gateway library) runs in this process only to enroll the agent; it is then
//! stopped, so nothing answers on its port. The spoke API is talm-kube-double, reached through
//! the agent's `--spoke-kubeconfig`. (The network-namespace form of the partition is in
//! netns.rs; the rollback task is journaled here directly, as the hub's SpokeAgent mapping of
//! it is the hub's side of issue 18.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod spoke_api_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use spoke_api_support::{conditions, kubeconfig, spoke_api};
use talm_gateway::enroll::{Enroller, issue_token};
use talm_gateway::store::SpokeAgentStore;
use talm_gateway::store::file::{FileEnrollmentStore, FileSpokeAgentStore};
use talm_gateway::{Gateway, GatewayConfig};
use talm_shared::clock::{Clock, SystemClock};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(state_dir: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_talm-agent"))
        .args(["status", "-o", "json", "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_gone_node_healthy_past_the_timeout_reports_healthy_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The spoke API: healthy at 4.16.3.
    let double = spoke_api(None).await;
    double
        .put_value(
            json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
            "metadata": {"name": "version"},
            "status": {"conditions": conditions(&[("Available", "True"), ("Progressing", "False")]),
                       "desired": {"version": "4.16.3"},
                       "history": [{"version": "4.16.3", "state": "Completed"}]}}),
        )
        .unwrap();
    double
        .put_value(
            json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterOperator",
            "metadata": {"name": "etcd"},
            "status": {"conditions": conditions(&[("Available", "True"), ("Degraded", "False")])}}),
        )
        .unwrap();
    double
        .put_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sno"},
            "status": {"conditions": conditions(&[("Ready", "True")])}}),
        )
        .unwrap();
    let kubeconfig = kubeconfig(&double, dir.path());

    // The hub, for the enrollment only.
    let now = SystemClock.system_time();
    let year = Duration::from_secs(365 * 86_400);
    let hub_ca = talm_shared::pki::new_ca("wd hub CA", now, year).unwrap();
    let leaf = talm_shared::pki::server_cert(&hub_ca, &["127.0.0.1".into()], now, year).unwrap();
    let agent_ca = talm_shared::pki::new_ca("wd agent CA", now, year).unwrap();
    let state = dir.path().join("hub");
    let enroll = Arc::new(FileEnrollmentStore::new(&state).unwrap());
    let agents = Arc::new(FileSpokeAgentStore::new(&state).unwrap());
    let tls = talm_shared::tls::server_config(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        agent_ca.cert_pem.as_bytes(),
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = Gateway::new(
        GatewayConfig::default(),
        clock.clone(),
        Enroller::new(agent_ca, enroll.clone(), clock, Duration::from_secs(3600)),
        agents.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gw.clone().serve(listener, None, tls, async move {
        let _ = stopped.await;
    }));
    let token = issue_token(
        enroll.as_ref(),
        &SystemClock,
        "sno-wd",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();
    std::fs::write(dir.path().join("hub-ca.pem"), &hub_ca.cert_pem).unwrap();
    let host_root = dir.path().join("host");
    std::fs::create_dir_all(host_root.join("var/lib/containers")).unwrap();
    std::fs::create_dir_all(host_root.join("var/recovery")).unwrap();
    let agent_state = dir.path().join("agent");
    let start = || {
        Daemon(
            Command::new(env!("CARGO_BIN_EXE_talm-agent"))
                .arg("run")
                .arg("--hub")
                .arg(format!("https://{addr}"))
                .arg("--ca")
                .arg(dir.path().join("hub-ca.pem"))
                .arg("--state-dir")
                .arg(&agent_state)
                .arg("--bootstrap-token-file")
                .arg(dir.path().join("token"))
                .arg("--host-root")
                .arg(&host_root)
                .arg("--spoke-kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "--watchdog-poll-secs",
                    "1",
                    "--backoff-initial-ms",
                    "200",
                    "--backoff-max-secs",
                    "1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let daemon = start();
    eventually(30, "agent enrolled and connected", async || {
        agents
            .status("sno-wd")
            .await
            .unwrap()
            .is_some_and(|s| s.connected)
    })
    .await;
    drop(daemon);
    // The hub goes away: nothing answers on its port any more.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A watchdog armed two hours ago with a 10-minute timeout, journaled as the daemon
    // journals an accepted task.
    let armed_at = SystemClock.unix() - 7200;
    let id = "ns/cgu/uid/rollback";
    {
        let journal = talm_agent::journal::Journal::open(&agent_state).unwrap();
        journal
            .accept(
                id,
                talm_proto::v1::TaskKind::Rollback as i32,
                &json!({"armedAt": armed_at, "healthTimeoutSeconds": 600, "targetVersion": "4.16.3"})
                    .to_string(),
                0,
                armed_at,
            )
            .unwrap();
    }
    let _daemon = start();
    let journaled = |s: &Value| {
        s["tasks"].as_array().is_some_and(|ts| {
            ts.iter()
                .any(|t| t["id"] == id && t["state"] == "Succeeded")
        })
    };
    eventually(
        30,
        "the watchdog decided and the daemon journaled it",
        async || {
            let s = status(&agent_state);
            s["watchdog"]["state"] == "Healthy" && journaled(&s)
        },
    )
    .await;
    let s = status(&agent_state);
    assert_ne!(s["connection"]["state"], "connected", "{s}");
    let task = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap();
    assert_eq!(task["state"], "Succeeded", "{s}");
    assert_eq!(
        task["acknowledged"], false,
        "the result waits for the hub: {s}"
    );
    assert!(s["unacknowledgedReports"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["watchdog"]["checks"], json!([]), "{s}");
    // Nothing armed for a recovery.
    assert!(!host_root.join("var/recovery/recovery.unattended").exists());
    assert!(
        !host_root
            .join("var/recovery/recovery.outcome.json")
            .exists()
    );
}
