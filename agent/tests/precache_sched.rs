//! The pre-cache under the hub's scheduler, against a real `docker-registry` (issue 17 §2, §4):
//!
//! - a capped `talm-agent precache run` of ≥ 64 MiB never exceeds the cap by more than 1% in
//!   any 10 s window, measured at the registry (its log's `http.response.written` of blob GETs,
//!   each spread over its request's duration, as the pre-cache benchmark reads it);
//! - the daemon against an in-process hub double that speaks the session protocol: a held
//!   assignment lists the images and reports total and registry without a single blob GET (also
//!   across an agent restart); a `TaskUpdate` lets it in with a cap; a second one lowers the cap
//!   mid-transfer and the registry's rate follows, with no blob fetched twice; the task
//!   succeeds.
//!
//! Only upper bounds on the rate are asserted: a loaded machine can only make transfers slower.
// Tests run the agent binary, the registry and skopeo: spawning processes is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod precache_support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use precache_support::node::{Node, text};
use precache_support::{BlobRequest, Fixture, LayerSizes, Registry, build_fixture_with};
use talm_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use talm_proto::v1::{
    AgentMessage, CertificateResponse, HubMessage, RenewRequest, ReportAck, TaskAssignment,
    TaskKind, TaskOutcome, TaskProgress, TaskUpdate, Welcome, agent_message, hub_message,
    task_report,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const MIB: u64 = 1 << 20;

/// ~66 MiB of unique blobs: three shared base layers (24 + 8 + 2 MiB) and 16 images with a
/// 2 MiB layer of their own.
fn big_fixture(reg: &Registry) -> Fixture {
    build_fixture_with(
        reg,
        16,
        None,
        LayerSizes {
            base: [24 << 20, 8 << 20, 2 << 20],
            unique: 2 << 20,
            seed: 17,
            release_like: false,
        },
    )
}

/// The release's component images, by digest: listing them needs manifests only (no blob).
fn component_images(fx: &Fixture) -> Vec<String> {
    fx.release_images.iter().map(|(_, s)| s.clone()).collect()
}

/// A blob GET as an interval of wall time, in seconds since the epoch: (start, end, bytes).
fn intervals(reqs: &[BlobRequest]) -> Vec<(f64, f64, u64)> {
    reqs.iter()
        .map(|r| {
            let end: jiff::Timestamp = r.end.parse().expect("registry log time");
            let end = end.as_nanosecond() as f64 / 1e9;
            (end - r.duration_s, end, r.written)
        })
        .collect()
}

/// Bytes the registry served in `[from, to)`, each request's bytes spread evenly over its
/// duration (a request of no measurable duration counts at its end).
fn served_in(iv: &[(f64, f64, u64)], from: f64, to: f64) -> f64 {
    iv.iter()
        .map(|&(s, e, n)| {
            if e - s <= 1e-6 {
                if e >= from && e < to { n as f64 } else { 0.0 }
            } else {
                let overlap = (to.min(e) - from.max(s)).max(0.0);
                n as f64 * overlap / (e - s)
            }
        })
        .sum()
}

/// The largest amount served in any 10 s window that starts in `[from, until - 10]` (100 ms
/// steps), with the window's start.
fn worst_window(iv: &[(f64, f64, u64)], from: f64, until: f64) -> (f64, f64) {
    let mut worst = (0.0, from);
    let mut t = from;
    while t + 10.0 <= until + 1e-9 {
        let got = served_in(iv, t, t + 10.0);
        if got > worst.0 {
            worst = (got, t);
        }
        t += 0.1;
    }
    worst
}

fn span(iv: &[(f64, f64, u64)]) -> (f64, f64) {
    let first = iv.iter().map(|i| i.0).fold(f64::MAX, f64::min);
    let last = iv.iter().map(|i| i.1).fold(f64::MIN, f64::max);
    (first, last)
}

#[test]
fn a_capped_pull_stays_under_the_cap_in_every_ten_second_window_at_the_registry() {
    let reg = Registry::start_plain();
    let fx = big_fixture(&reg);
    let images = component_images(&fx);
    let unique = fx.unique_bytes(&images);
    assert!(unique >= 64 * MIB, "the pull is {unique} bytes");
    let node = Node::new(&reg);
    let list: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
    let spec = node.spec(&format!(
        "additionalImages: [{}]\nspaceRequired: \"1\"\n",
        list.join(", ")
    ));
    let cap = 5 * MIB;
    let before = reg.blob_requests().len();
    let out = node.run(
        &spec,
        &[
            "--no-import",
            "--parallel",
            "4",
            "--bandwidth-limit",
            &cap.to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let reqs = reg.blob_requests()[before..].to_vec();
    let served: u64 = reqs.iter().map(|r| r.written).sum();
    assert_eq!(served, unique, "every blob once");
    let iv = intervals(&reqs);
    let (first, last) = span(&iv);
    // At the cap the transfer cannot take less than unique / cap (> 13 s): there are full
    // 10 s windows to look at.
    assert!(
        last - first > 10.0,
        "the transfer took {:.1} s",
        last - first
    );
    let (worst, at) = worst_window(&iv, first, last);
    let limit = cap as f64 * 10.0;
    eprintln!(
        "cap {} MiB/s: worst 10 s window at the registry {:.3} MiB/s ({:+.2}%, at +{:.1} s); whole transfer {:.3} MiB/s over {:.1} s",
        cap / MIB,
        worst / 10.0 / MIB as f64,
        (worst / limit - 1.0) * 100.0,
        at - first,
        served as f64 / (last - first) / MIB as f64,
        last - first
    );
    assert!(
        worst <= limit * 1.01,
        "{worst} bytes in the 10 s window from +{:.1} s, the cap allows {limit} (+1%)",
        at - first
    );
}

// ------------------------------------------------------------------ the daemon under a hub

/// The hub's side of the session protocol, scripted by the test: a welcome, acks of every
/// journaled report, and whatever the test sends; everything the agent says is kept.
#[derive(Clone)]
struct HubDouble {
    cluster: String,
    seen: Arc<Mutex<Vec<AgentMessage>>>,
    to_agent: Arc<Mutex<Option<ToAgent>>>,
}

/// The hub's half of the current session.
type ToAgent = mpsc::Sender<Result<HubMessage, Status>>;

#[tonic::async_trait]
impl AgentService for HubDouble {
    type SessionStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let welcome = hub_message::Msg::Welcome(Welcome {
            cluster: self.cluster.clone(),
            heartbeat_interval_seconds: 1,
        });
        tx.send(Ok(HubMessage { msg: Some(welcome) }))
            .await
            .unwrap();
        *self.to_agent.lock().unwrap() = Some(tx.clone());
        let mut inbound = req.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(agent_message::Msg::Report(r)) = &m.msg
                    && r.seq > 0
                {
                    let ack = hub_message::Msg::Ack(ReportAck { up_to_seq: r.seq });
                    let _ = tx.send(Ok(HubMessage { msg: Some(ack) })).await;
                }
                seen.lock().unwrap().push(m);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew(
        &self,
        _: Request<RenewRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        Err(Status::unimplemented("the hub double does not renew"))
    }
}

impl HubDouble {
    async fn send(&self, msg: hub_message::Msg) {
        let tx = self.to_agent.lock().unwrap().clone().expect("a session");
        tx.send(Ok(HubMessage { msg: Some(msg) })).await.unwrap();
    }

    fn seen(&self) -> Vec<AgentMessage> {
        self.seen.lock().unwrap().clone()
    }

    fn progress(&self, task: &str) -> Vec<TaskProgress> {
        self.seen()
            .into_iter()
            .filter_map(|m| match m.msg {
                Some(agent_message::Msg::Report(r)) if r.task_id == task => match r.body {
                    Some(task_report::Body::Progress(p)) => Some(p),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn result(&self, task: &str) -> Option<(i32, String)> {
        self.seen().into_iter().find_map(|m| match m.msg {
            Some(agent_message::Msg::Report(r)) if r.task_id == task => match r.body {
                Some(task_report::Body::Result(res)) => Some((res.outcome, res.message)),
                _ => None,
            },
            _ => None,
        })
    }

    fn hellos(&self) -> Vec<Vec<String>> {
        self.seen()
            .into_iter()
            .filter_map(|m| match m.msg {
                Some(agent_message::Msg::Hello(h)) => Some(h.active_task_ids),
                _ => None,
            })
            .collect()
    }
}

/// Starts the double on 127.0.0.1 with mTLS; writes the hub CA to `dir/hub-ca.pem` and an
/// agent identity for `cluster` into `state` (as if enrolled). Returns the double and its URL.
async fn start_hub(
    dir: &std::path::Path,
    state: &std::path::Path,
    cluster: &str,
) -> (HubDouble, String) {
    use talm_shared::pki;
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 86_400);
    let hub_ca = pki::new_ca("sched hub CA", now, year).unwrap();
    let leaf = pki::server_cert(&hub_ca, &["127.0.0.1".to_string()], now, year).unwrap();
    let agent_ca = pki::new_ca("sched agent CA", now, year).unwrap();
    let (key, csr) = pki::agent_key_and_csr().unwrap();
    let cert = pki::sign_agent_csr(&agent_ca, &csr, cluster, now, now + year, &[7]).unwrap();
    talm_agent::conn::save_identity(state, &cert, &key).unwrap();
    std::fs::write(dir.join("hub-ca.pem"), &hub_ca.cert_pem).unwrap();
    let double = HubDouble {
        cluster: cluster.into(),
        seen: Arc::default(),
        to_agent: Arc::default(),
    };
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &leaf.cert_pem,
            &leaf.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&agent_ca.cert_pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AgentServiceServer::new(double.clone()));
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    (double, format!("https://{addr}"))
}

/// The agent daemon, killed (by its own pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(hub: &str, dir: &std::path::Path, node: &Node) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_talm-agent"))
        .arg("run")
        .args(["--hub", hub])
        .arg("--ca")
        .arg(dir.join("hub-ca.pem"))
        .arg("--state-dir")
        .arg(node.state.path())
        .arg("--host-root")
        .arg(node.root.path())
        .args([
            "--precache-parallel",
            "4",
            "--precache-storage-driver",
            "vfs",
            "--progress-interval",
            "1",
            "--keepalive-secs",
            "1",
            "--backoff-initial-ms",
            "200",
            "--backoff-max-secs",
            "1",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon(child)
}

async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const QUEUED: &str = "queued by the hub's pre-cache budget";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_task_lists_waits_is_let_in_and_follows_the_hubs_cap_in_flight() {
    let reg = Registry::start_plain();
    let fx = big_fixture(&reg);
    let images = component_images(&fx);
    let unique = fx.unique_bytes(&images);
    let node = Node::new(&reg);
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = start_hub(dir.path(), node.state.path(), "sno-17").await;
    let agent_log = dir.path().join("agent.log");
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let mut agent = start_agent(&url, dir.path(), &node);
    eventually(30, "the agent's hello", || !hub.hellos().is_empty()).await;

    // Assigned held, without a cap.
    let task = "ns/cgu/uid/precache";
    let params = serde_json::json!({ "additionalImages": images, "spaceRequired": "1" });
    hub.send(hub_message::Msg::Assign(TaskAssignment {
        task_id: task.into(),
        kind: TaskKind::Precache as i32,
        params_json: params.to_string(),
        deadline_unix: unix_now() as i64 + 3600,
        rate_limit_bytes_per_second: 0,
        hold: true,
    }))
    .await;
    eventually(120, "the held report", || {
        hub.progress(task).iter().any(|p| p.message == QUEUED)
    })
    .await;
    let held = hub
        .progress(task)
        .into_iter()
        .find(|p| p.message == QUEUED)
        .unwrap();
    assert_eq!(held.total, unique, "{held:?}");
    assert_eq!(held.registries, vec![reg.host.clone()], "{held:?}");
    assert_eq!(held.bytes_per_second, 0);
    assert!(held.done <= held.total);
    // Listed (manifests read), and not one blob asked for, also a while later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(reg.blob_requests().is_empty(), "{:?}", reg.blob_requests());
    let status = node.status_file().unwrap();
    assert_eq!(status["state"], "Starting", "{status:#}");
    assert_eq!(status["phase"], "held", "{status:#}");
    // Held reports are not repeated: nothing changes while held.
    let n_held = hub
        .progress(task)
        .iter()
        .filter(|p| p.message == QUEUED)
        .count();
    assert_eq!(n_held, 1, "{:?}", hub.progress(task));
    let out = Command::new(env!("CARGO_BIN_EXE_talm-agent"))
        .args(["status", "-o", "json", "--state-dir"])
        .arg(node.state.path())
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["tasks"][0]["hold"], true, "{view:#}");
    assert_eq!(view["tasks"][0]["transfer"]["phase"], "held", "{view:#}");

    // Restarted while held: resumes held (journal) and reports it again on the new session.
    drop(agent);
    hub.seen.lock().unwrap().clear();
    agent = start_agent(&url, dir.path(), &node);
    eventually(30, "the second hello", || {
        hub.hellos()
            .iter()
            .any(|ids| ids.contains(&task.to_string()))
    })
    .await;
    eventually(120, "the held report after the restart", || {
        hub.progress(task)
            .iter()
            .any(|p| p.message == QUEUED && p.total == unique)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reg.blob_requests().is_empty(), "{:?}", reg.blob_requests());

    // Let in at 8 MiB/s; at about a third of the bytes, the hub lowers the cap to 3 MiB/s.
    let (first_cap, second_cap) = (8 * MIB, 3 * MIB);
    hub.send(hub_message::Msg::Update(TaskUpdate {
        task_id: task.into(),
        rate_limit_bytes_per_second: first_cap,
        hold: false,
    }))
    .await;
    eventually(120, "a third of the bytes", || {
        node.status_file()
            .and_then(|s| s["bytesDone"].as_u64())
            .is_some_and(|d| d * 3 >= unique)
    })
    .await;
    hub.send(hub_message::Msg::Update(TaskUpdate {
        task_id: task.into(),
        rate_limit_bytes_per_second: second_cap,
        hold: false,
    }))
    .await;
    let changed_at = unix_now();
    eventually(240, "the task's result", || hub.result(task).is_some()).await;
    let (outcome, message) = hub.result(task).unwrap();
    assert_eq!(
        outcome,
        TaskOutcome::Succeeded as i32,
        "{message}\n{}",
        log()
    );
    drop(agent);

    // Everything the agent said is within the protocol's limits (done <= total, registries).
    for m in hub.seen() {
        talm_proto::validate::agent_message(&m).unwrap();
    }
    let progress = hub.progress(task);
    assert!(
        progress.iter().any(|p| p.bytes_per_second > 0
            && p.total == unique
            && p.registries == vec![reg.host.clone()]),
        "{progress:?}"
    );

    // At the registry: every blob served exactly once (in ranges), and after the change no
    // 10 s window above the new cap + 1%.
    let reqs = reg.blob_requests();
    let mut per_blob: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reqs {
        *per_blob.entry(r.digest.clone()).or_default() += r.written;
    }
    for (digest, served) in &per_blob {
        assert_eq!(
            *served, fx.blob_sizes[digest],
            "blob {digest} served {served} bytes"
        );
    }
    assert_eq!(per_blob.values().sum::<u64>(), unique);
    let iv = intervals(&reqs);
    let (_, last) = span(&iv);
    assert!(
        last - changed_at > 10.0,
        "the rest at the new cap took {:.1} s",
        last - changed_at
    );
    let (worst, at) = worst_window(&iv, changed_at, last);
    let limit = second_cap as f64 * 10.0;
    eprintln!(
        "after the cap change to {} MiB/s: worst 10 s window at the registry {:.3} MiB/s ({:+.2}%, at +{:.1} s after the change)",
        second_cap / MIB,
        worst / 10.0 / MIB as f64,
        (worst / limit - 1.0) * 100.0,
        at - changed_at
    );
    assert!(
        worst <= limit * 1.01,
        "{worst} bytes in the 10 s window {:.1} s after the change, the new cap allows {limit} (+1%)",
        at - changed_at
    );
}
