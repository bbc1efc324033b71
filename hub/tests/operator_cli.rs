//! `talm-hub run`, the binary, against the in-process API double: KUBECONFIG wiring, the admin
//! ports, reconciling, and a clean exit on SIGTERM that releases the leader Lease.

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use talm_kube_double::KubeDouble;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[allow(clippy::disallowed_methods)] // tests run the binary under test
fn spawn_hub(kubeconfig: &std::path::Path, health: SocketAddr, metrics: SocketAddr) -> Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_talm-hub"))
        .args([
            "run",
            "--grpc-addr",
            &free_port().to_string(),
            "--namespace",
            "default",
            "--health-addr",
            &health.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            // Not about authentication (operator_admin_auth.rs is): the admin ports open.
            "--admin-auth",
            "none",
            "--lease-namespace",
            "default",
            "--identity",
            "cli-replica",
            "--log-format",
            "json",
        ])
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("TALM_CGU_CTRL_WORKER_COUNT", "not-a-number")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[allow(clippy::disallowed_methods)] // signals the binary under test
fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reconciles_serves_admin_and_exits_cleanly_on_sigterm() {
    let double = KubeDouble::start().await.unwrap();
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-cli", "namespace": "default"},
            "spec": {"clusters": [], "managedPolicies": [],
                     "remediationStrategy": {"maxConcurrency": 1}, "enable": false}
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: \"{}\"}}\n\
             contexts:\n- name: double\n  context: {{cluster: double, user: u, namespace: default}}\n\
             current-context: double\nusers:\n- name: u\n  user: {{}}\n",
            double.url()
        ),
    )
    .unwrap();
    let (health, metrics) = (free_port(), free_port());
    let mut child = spawn_hub(&kubeconfig, health, metrics);

    let deadline = Instant::now() + WAIT;
    loop {
        if http_status(health, "/readyz").await == Some(200) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "talm-hub exited early");
        assert!(Instant::now() < deadline, "talm-hub never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_status(health, "/healthz").await, Some(200));
    assert_eq!(http_status(metrics, "/metrics").await, Some(200));
    // The agent gateway runs in the replica: its /agents view is on the admin port and its
    // key material is in Secrets of --namespace.
    assert_eq!(http_status(health, "/agents").await, Some(200));
    assert_eq!(http_status(health, "/agents/nope").await, Some(404));
    for secret in ["talm-agent-ca", "talm-gateway-serving"] {
        assert!(
            double
                .get_value("v1", "Secret", Some("default"), secret)
                .is_some(),
            "{secret}"
        );
    }
    loop {
        let cgu = double
            .get_value(
                "ran.openshift.io/v1alpha1",
                "ClusterGroupUpgrade",
                Some("default"),
                "cgu-cli",
            )
            .unwrap();
        if cgu["metadata"]["finalizers"][0] == "ran.openshift.io/cleanup-finalizer"
            && cgu["status"]["conditions"].is_array()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the CGU was never reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = double
        .get_value(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "talm-hub-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "cli-replica");

    sigterm(&child);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "talm-hub did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('{') && l.contains("caches synced")),
        "JSON logs: {stderr}"
    );
    let lease = double
        .get_value(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "talm-hub-leader",
        )
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    double.shutdown().await;
}
