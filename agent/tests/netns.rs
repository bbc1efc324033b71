//! The real `talm-agent` binary across network namespaces: partition and heal.
//!
//! The hub (the gateway library) runs in this process, in the root namespace, on one end of a
//! veth pair; `talm-agent run` runs in a fresh namespace on the other end (`ip netns exec`).
//! Taking the link down partitions them: the hub marks the agent disconnected after its
//! heartbeat timeout and the agent notices through its keepalive; bringing the link back heals
//! it: the agent reconnects with backoff and picks up the task assigned meanwhile. Also checks
//! `talm-agent status -o json` against the running daemon.
//!
//! The rollback watchdog across the same partition: the node's own API server (the kube double,
//! on a second link that stays up) turns healthy while the hub is cut off, and the watchdog
//! reports `Healthy` without touching anything; the hub learns it when the link heals. Losing
//! the hub is never by itself a reason to roll back.
//!
//! Needs root and `ip netns` (iproute2). Where that is not permitted, the test prints why and
//! passes without running (skip).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod spoke_api_support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use spoke_api_support::{kubeconfig, spoke_api};
use talm_gateway::enroll::{Enroller, issue_token};
use talm_gateway::store::SpokeAgentStore;
use talm_gateway::store::file::{FileEnrollmentStore, FileSpokeAgentStore};
use talm_gateway::{Gateway, GatewayConfig};
use talm_shared::api::Time;
use talm_shared::api::spokeagent::{CheckSpaceTask, RollbackTask, SpokeAgentSpec};
use talm_shared::clock::{Clock, SystemClock};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces and links created by the test, removed on drop.
struct Net {
    ns: String,
    host_if: String,
}

impl Net {
    fn create(id: u32) -> Result<(Self, IpAddr), String> {
        let ns = format!("talm-spoke-{id}");
        let (host_if, ns_if) = (format!("tha{id}"), format!("thb{id}"));
        let subnet = 16 + (id % 200);
        let (hub_ip, spoke_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        ip(&["netns", "add", &ns])?;
        let net = Net {
            ns: ns.clone(),
            host_if: host_if.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns])?;
        ip(&["addr", "add", &format!("{hub_ip}/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{spoke_ip}/24"),
            "dev",
            &ns_if,
        ])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok((net, hub_ip.parse().map_err(|e| format!("{e}"))?))
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// A second veth pair into the namespace, for the node's own API server: it stays up when the
/// hub's link goes down. Removed on drop.
struct SpokeLink {
    host_if: String,
}

impl SpokeLink {
    fn create(net: &Net, id: u32) -> Result<(Self, IpAddr), String> {
        let (host_if, ns_if) = (format!("tsa{id}"), format!("tsb{id}"));
        let subnet = 16 + (id % 200);
        let (host_ip, ns_ip) = (format!("10.232.{subnet}.1"), format!("10.232.{subnet}.2"));
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        let link = SpokeLink {
            host_if: host_if.clone(),
        };
        ip(&["link", "set", &ns_if, "netns", &net.ns])?;
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", net.ns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if])?;
        in_ns(&["link", "set", &ns_if, "up"])?;
        Ok((link, host_ip.parse().map_err(|e| format!("{e}"))?))
    }
}

impl Drop for SpokeLink {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// The hub (the gateway library) in this process, on the root end of the veth pair, with fast
/// heartbeats; it has issued a bootstrap token for one cluster, written with the hub CA into the
/// test directory (`token`, `hub-ca.pem`).
struct Hub {
    gw: Arc<Gateway>,
    agents: Arc<FileSpokeAgentStore>,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Hub {
    async fn start(dir: &Path, hub_ip: IpAddr, cluster: &str) -> Hub {
        let now = SystemClock.system_time();
        let year = Duration::from_secs(365 * 86_400);
        let hub_ca = talm_shared::pki::new_ca("netns hub CA", now, year).unwrap();
        let leaf =
            talm_shared::pki::server_cert(&hub_ca, &[hub_ip.to_string()], now, year).unwrap();
        let agent_ca = talm_shared::pki::new_ca("netns agent CA", now, year).unwrap();
        let state = dir.join("hub");
        let enroll = Arc::new(FileEnrollmentStore::new(&state).unwrap());
        let agents = Arc::new(FileSpokeAgentStore::new(&state).unwrap());
        let tls = talm_shared::tls::server_config(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            agent_ca.cert_pem.as_bytes(),
        )
        .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cfg = GatewayConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            poll_interval: Duration::from_millis(200),
            ..GatewayConfig::default()
        };
        let gw = Gateway::new(
            cfg,
            clock.clone(),
            Enroller::new(agent_ca, enroll.clone(), clock, Duration::from_secs(3600)),
            agents.clone(),
        );
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(hub_ip, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gw.clone().serve(listener, None, tls, async move {
            let _ = stopped.await;
        }));
        let token = issue_token(
            enroll.as_ref(),
            &SystemClock,
            cluster,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("hub-ca.pem"), &hub_ca.cert_pem).unwrap();
        Hub {
            gw,
            agents,
            addr,
            stop,
            server,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The agent process, killed (by its own pid) on drop.
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

fn check_space(id: &str) -> SpokeAgentSpec {
    SpokeAgentSpec {
        check_space: Some(CheckSpaceTask {
            id: id.into(),
            space_required: "1".into(),
            deadline: Time(jiff::Timestamp::from_second(SystemClock.unix() + 3600).unwrap()),
        }),
        ..Default::default()
    }
}

fn agent_status(ns: &str, state_dir: &Path) -> serde_json::Value {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_talm-agent"),
            "status",
            "-o",
            "json",
            "--state-dir",
        ])
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
async fn partition_and_heal_across_network_namespaces() {
    let id = std::process::id();
    let (net, hub_ip) = match Net::create(id) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "SKIPPED partition_and_heal_across_network_namespaces: ip netns is not permitted here ({e})"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), hub_ip, "sno-ns").await;
    let (gw, agents, addr) = (&hub.gw, hub.agents.clone(), hub.addr);
    let host_root = dir.path().join("host");
    std::fs::create_dir_all(host_root.join("var/lib/containers")).unwrap();
    let agent_state = dir.path().join("agent");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns,
            env!("CARGO_BIN_EXE_talm-agent"),
            "run",
        ])
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
        .args([
            "--keepalive-secs",
            "1",
            "--backoff-initial-ms",
            "200",
            "--backoff-max-secs",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);

    let connected = async || {
        agents
            .status("sno-ns")
            .await
            .unwrap()
            .is_some_and(|s| s.connected)
    };
    let task_state = async |id: &str| {
        agents
            .status("sno-ns")
            .await
            .unwrap()
            .and_then(|s| s.check_space)
            .filter(|r| r.id == id)
            .map(|r| r.state)
    };
    eventually(30, "agent connected", connected).await;
    agents
        .put_spec("sno-ns", &check_space("before"))
        .await
        .unwrap();
    eventually(15, "task before the partition", async || {
        task_state("before").await.as_deref() == Some("Succeeded")
    })
    .await;
    let s = agent_status(&net.ns, &agent_state);
    assert_eq!(s["connection"]["state"], "connected");
    assert_eq!(s["connection"]["cluster"], "sno-ns");
    assert_eq!(s["tasks"][0]["state"], "Succeeded");

    // Partition.
    net.link(false);
    eventually(15, "hub marks the agent disconnected", async || {
        !connected().await
    })
    .await;
    agents
        .put_spec("sno-ns", &check_space("during"))
        .await
        .unwrap();
    eventually(15, "the agent notices", async || {
        agent_status(&net.ns, &agent_state)["connection"]["state"] != "connected"
    })
    .await;
    assert_eq!(
        task_state("during").await,
        None,
        "nothing crosses a partition"
    );

    // Heal.
    net.link(true);
    eventually(30, "reconnected", connected).await;
    eventually(15, "task assigned during the partition", async || {
        task_state("during").await.as_deref() == Some("Succeeded")
    })
    .await;
    let s = agent_status(&net.ns, &agent_state);
    assert_eq!(s["connection"]["state"], "connected");
    assert_eq!(s["unacknowledgedReports"], 0);
    let m = gw.render_metrics();
    assert!(m.contains("talm_gateway_heartbeat_timeouts_total 1"), "{m}");

    hub.stop().await;
}

/// A ClusterVersion at 4.16.3, still progressing (an upgrade under way) or done.
fn cluster_version(progressing: bool) -> serde_json::Value {
    let p = if progressing { "True" } else { "False" };
    serde_json::json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
        "metadata": {"name": "version"},
        "status": {"conditions": [{"type": "Available", "status": "True"},
                                  {"type": "Progressing", "status": p}],
                   "desired": {"version": "4.16.3"},
                   "history": [{"version": "4.16.3", "state": "Completed"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_that_turns_healthy_reports_healthy_and_is_never_rolled_back() {
    let id = std::process::id().wrapping_add(1);
    let skip = |e: String| {
        eprintln!(
            "SKIPPED a_partitioned_node_that_turns_healthy_reports_healthy_and_is_never_rolled_back: ip netns is not permitted here ({e})"
        );
    };
    let (net, hub_ip) = match Net::create(id) {
        Ok(x) => x,
        Err(e) => return skip(e),
    };
    let (_spoke_link, spoke_api_ip) = match SpokeLink::create(&net, id) {
        Ok(x) => x,
        Err(e) => return skip(e),
    };
    // The node's own API server: an upgrade still progressing.
    let double = spoke_api(Some(spoke_api_ip)).await;
    double.put_value(cluster_version(true)).unwrap();
    double
        .put_value(
            serde_json::json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterOperator",
            "metadata": {"name": "etcd"},
            "status": {"conditions": [{"type": "Available", "status": "True"},
                                      {"type": "Degraded", "status": "False"}]}}),
        )
        .unwrap();
    double
        .put_value(
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sno"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(&double, dir.path());

    // The hub, on the other link.
    let hub = Hub::start(dir.path(), hub_ip, "sno-wd-ns").await;
    let (agents, addr) = (hub.agents.clone(), hub.addr);
    let host_root = dir.path().join("host");
    std::fs::create_dir_all(host_root.join("var/lib/containers")).unwrap();
    std::fs::create_dir_all(host_root.join("var/recovery")).unwrap();
    let agent_state = dir.path().join("agent");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns,
            env!("CARGO_BIN_EXE_talm-agent"),
            "run",
        ])
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
            "--keepalive-secs",
            "1",
            "--backoff-initial-ms",
            "200",
            "--backoff-max-secs",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let connected = async || {
        agents
            .status("sno-wd-ns")
            .await
            .unwrap()
            .is_some_and(|s| s.connected)
    };
    let watchdog = async || {
        agents
            .status("sno-wd-ns")
            .await
            .unwrap()
            .and_then(|s| s.rollback)
            .map(|r| r.state)
    };
    eventually(30, "agent connected", connected).await;

    // The hub arms the watchdog; the node is not healthy yet (the upgrade progresses).
    let task = RollbackTask {
        id: "ns/cgu/uid/rollback".into(),
        armed_at: Time(jiff::Timestamp::from_second(SystemClock.unix()).unwrap()),
        health_timeout_seconds: 600,
        target_version: Some("4.16.3".into()),
    };
    agents
        .put_spec(
            "sno-wd-ns",
            &SpokeAgentSpec {
                rollback: Some(task),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(20, "the watchdog armed", async || {
        watchdog().await.as_deref() == Some("Armed")
    })
    .await;

    // Partition: the hub's link goes down; the node's API server stays reachable.
    net.link(false);
    eventually(15, "hub marks the agent disconnected", async || {
        !connected().await
    })
    .await;
    eventually(15, "the agent notices", async || {
        agent_status(&net.ns, &agent_state)["connection"]["state"] != "connected"
    })
    .await;
    // The upgrade finishes while the hub is away.
    double.put_value(cluster_version(false)).unwrap();
    eventually(20, "the watchdog finds the node healthy", async || {
        agent_status(&net.ns, &agent_state)["watchdog"]["state"] == "Healthy"
    })
    .await;
    assert_eq!(
        watchdog().await.as_deref(),
        Some("Armed"),
        "nothing crosses the partition"
    );
    assert!(
        !host_root.join("var/recovery/recovery.unattended").exists(),
        "no recovery was started"
    );

    // Heal: the journaled result reaches the hub.
    net.link(true);
    eventually(30, "reconnected", connected).await;
    eventually(15, "the hub learns Healthy", async || {
        watchdog().await.as_deref() == Some("Healthy")
    })
    .await;
    assert!(
        !host_root
            .join("var/recovery/recovery.outcome.json")
            .exists()
    );

    hub.stop().await;
}
