//! Hub-assigned backups over the channel: SpokeAgent spec `backup` → the agent runs the real
//! backup (real etcd, real ostree sysroot, real files under a temp host root) → TALM's backup
//! states in SpokeAgent status: `Succeeded`, `BackupTimeout` when the deadline passes inside the
//! backup (nothing half-written is left as the current backup), and a cancel from the hub that
//! stops the backup at the next step boundary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_imports)]
#[path = "../../agent/tests/backup_support/mod.rs"]
mod backup_support;
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_support::{Etcd, config, make_node, make_sysroot, make_tls, require};
use common::*;
use talm_agent::backup::layout::{CURRENT, MARKER};
use talm_agent::backup::task::BackupTaskConfig;
use talm_agent::host::disk::RealDisk;
use talm_agent::host::exec::{Cmd, CommandRunner, ExecError, Output, RealRunner};
use talm_agent::journal::TaskState;
use talm_agent::runner::{HostRunner, TaskRunner};
use talm_gateway::store::SpokeAgentStore;
use talm_shared::api::Time;
use talm_shared::api::spokeagent::{BackupTask, SpokeAgentSpec};
use talm_shared::clock::{Clock, SystemClock};

/// Runs commands for real, but the first `ostree` command waits until released (or ~20 s).
#[derive(Debug, Default)]
struct SlowOstree {
    real: RealRunner,
    released: AtomicBool,
    entered: AtomicUsize,
    log: Mutex<Vec<String>>,
}

impl CommandRunner for SlowOstree {
    fn output(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        self.log.lock().unwrap().push(cmd.display());
        if cmd.program == "ostree" && self.entered.fetch_add(1, Ordering::SeqCst) == 0 {
            for _ in 0..200 {
                if self.released.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.real.output(cmd)
    }
}

struct Node {
    _etcd: Etcd,
    root: std::path::PathBuf,
    template: talm_agent::backup::BackupConfig,
}

fn node(dir: &Path, runner: Arc<dyn CommandRunner>) -> Node {
    let root = host_root(dir);
    make_node(&root);
    make_sysroot(&root, 2);
    let etcd = Etcd::start(
        "m1",
        &dir.join("etcd"),
        dir,
        Some(make_tls(&dir.join("tls"))),
        None,
    );
    etcd.ctl(&["put", "/registry/k", "v"]).unwrap();
    let template = config(&root, runner, Arc::new(RealDisk), etcd.access_in(&root));
    Node {
        _etcd: etcd,
        root,
        template,
    }
}

fn runner(root: &Path, template: &talm_agent::backup::BackupConfig) -> Arc<dyn TaskRunner> {
    let host = Arc::new(talm_agent::facts::Host::new(root));
    Arc::new(HostRunner::new(host).with_backup(BackupTaskConfig {
        template: template.clone(),
        clock: Arc::new(SystemClock),
    }))
}

async fn put_backup(hub: &Hub, cluster: &str, id: &str, deadline_in: i64) {
    let spec = SpokeAgentSpec {
        backup: Some(BackupTask {
            id: id.into(),
            deadline: Time(jiff::Timestamp::from_second(SystemClock.unix() + deadline_in).unwrap()),
        }),
        ..Default::default()
    };
    hub.agents.put_spec(cluster, &spec).await.unwrap();
}

async fn backup_state(hub: &Hub, cluster: &str) -> Option<(String, String, String)> {
    hub.status(cluster)
        .await
        .and_then(|s| s.backup)
        .map(|r| (r.id, r.state, r.message))
}

fn complete_backup(root: &Path) -> bool {
    root.join("var/recovery")
        .join(CURRENT)
        .join(MARKER)
        .exists()
}

/// Files under `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    backup_support::files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

/// A hub, a node (real etcd and ostree, commands through `cmds`) and a connected agent that
/// takes backups on it.
async fn connected(dir: &Path, cmds: Arc<dyn CommandRunner>) -> (Hub, Node, RunningAgent) {
    init_tracing();
    let pki = Pki::new();
    let hub = Hub::start(&dir.join("hub"), &pki, fast_config()).await;
    let n = node(&dir.join("node"), cmds);
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.join("a"),
            Some(hub.token("sno-a").await),
        ),
        runner(&n.root, &n.template),
        &n.root,
    );
    eventually(10, "connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;
    (hub, n, a)
}

/// Once the blocked ostree step is released: the backup reached that step, ended without
/// completing (no current backup), and no later step ran (no etcd snapshot).
async fn assert_stopped_after_ostree(n: &Node, slow: &SlowOstree) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!complete_backup(&n.root));
    let snaps = files_named(&n.root.join("var/recovery"), "snapshot");
    assert!(snaps.is_empty(), "no step after ostree may run: {snaps:?}");
    assert!(
        slow.log
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("ostree")),
        "the backup reached its ostree step"
    );
}

const TOOLS: &[&str] = &["etcd", "etcdctl", "ostree", "chattr"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_assigned_backup_runs_to_succeeded() {
    if !require("a_hub_assigned_backup_runs_to_succeeded", TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hub, n, a) = connected(dir.path(), Arc::new(RealRunner::new())).await;
    put_backup(&hub, "sno-a", "ns/cgu/uid/backup", 600).await;
    eventually(120, "backup succeeded", async || {
        backup_state(&hub, "sno-a")
            .await
            .is_some_and(|(_, s, _)| s == "Succeeded")
    })
    .await;
    let (id, _, message) = backup_state(&hub, "sno-a").await.unwrap();
    assert_eq!(id, "ns/cgu/uid/backup");
    assert!(message.starts_with("backup complete: "), "{message}");
    assert!(complete_backup(&n.root), "the backup's completion marker");
    let t = a.agent.journal().task("ns/cgu/uid/backup").unwrap();
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.starts, 1);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_backup_settings_rejects_the_task() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        RunningAgent::host_runner(&root),
        &root,
    );
    put_backup(&hub, "sno-a", "b-1", 600).await;
    eventually(10, "rejected", async || {
        backup_state(&hub, "sno-a")
            .await
            .is_some_and(|(_, s, _)| s == "UnrecoverableError")
    })
    .await;
    let (_, _, message) = backup_state(&hub, "sno-a").await.unwrap();
    assert!(message.contains("without backup settings"), "{message}");
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_inside_the_backup_gives_backup_timeout_and_no_current_backup() {
    if !require(
        "the_deadline_inside_the_backup_gives_backup_timeout_and_no_current_backup",
        TOOLS,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(SlowOstree::default());
    let (hub, n, a) = connected(dir.path(), slow.clone()).await;
    // The backup blocks in its ostree step until released; the deadline passes meanwhile.
    put_backup(&hub, "sno-a", "b-late", 2).await;
    eventually(30, "timed out", async || {
        backup_state(&hub, "sno-a")
            .await
            .is_some_and(|(_, s, _)| s == "BackupTimeout")
    })
    .await;
    slow.released.store(true, Ordering::SeqCst);
    // The blocking step returns; the backup sees the stop flag (or its own deadline) and ends
    // without completing.
    assert_stopped_after_ostree(&n, &slow).await;
    assert_eq!(
        a.agent.journal().task("b-late").unwrap().state,
        TaskState::TimedOut
    );
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_backup_from_the_spec_cancels_it_at_a_step_boundary() {
    if !require(
        "removing_the_backup_from_the_spec_cancels_it_at_a_step_boundary",
        TOOLS,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(SlowOstree::default());
    let (hub, n, a) = connected(dir.path(), slow.clone()).await;
    put_backup(&hub, "sno-a", "b-cancel", 600).await;
    eventually(30, "backup in its ostree step", async || {
        slow.entered.load(Ordering::SeqCst) > 0
    })
    .await;
    hub.agents
        .put_spec("sno-a", &SpokeAgentSpec::default())
        .await
        .unwrap();
    eventually(10, "cancelled", async || {
        a.agent
            .journal()
            .task("b-cancel")
            .is_some_and(|t| t.state == TaskState::Cancelled)
    })
    .await;
    slow.released.store(true, Ordering::SeqCst);
    assert_stopped_after_ostree(&n, &slow).await;
    a.stop().await.unwrap();
}
