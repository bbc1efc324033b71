//! The rollback watchdog (`Rollback` task, issue 18) end to end on the node side: the health
//! checks against a spoke API server (talm-kube-double, scripted ClusterVersion,
//! ClusterOperators, Node and `/readyz`) reached through a kubeconfig as on a node; the
//! unattended recovery (`recover --unattended`, as `talm-recover.service` runs it) on a temp
//! host root with a backup taken by `backup::run` (real etcd); the node commands recorded by
//! the fake node runner (with `ostree` run for real on a real sysroot in the temp host root, a
//! pinned pre-upgrade deployment and a newer running one, in one case); a boot-id change
//! standing in for each reboot; the agent's task
//! aborted and started again (an agent restart) between the unit's runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod recovery_support;
mod spoke_api_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backup_support::{Etcd, make_sysroot, put, require, unlock_sysroot};
use recovery_support::{
    Node, Say, commands, expected, node, node_with_real_ostree, prepared, rcfg, set_boot, state,
};
use serde_json::json;
use spoke_api_support::{conditions, kubeconfig, spoke_api};
use talm_agent::facts::Host;
use talm_agent::host::exec::{CommandRunner, RecordingRunner};
use talm_agent::journal::{Task, TaskState};
use talm_agent::recovery::unattended::{self, MARKER, OUTCOME, UnattendedRunError};
use talm_agent::recovery::{Mode, RecoverError, STAGES};
use talm_agent::runner::{HostRunner, Progress, TaskContext, TaskRunner};
use talm_agent::watchdog::{self, WatchdogSettings};
use talm_kube_double::{Fault, KubeDouble};
use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::clock::ManualClock;
use talm_shared::task_state::TaskState as WatchState;
use tokio::sync::mpsc;

const CONFIG: &str = "config.openshift.io/v1";
const ARMED_AT: i64 = 1_800_000_000;
const START: &str = "systemctl start --no-block talm-recover.service";

async fn spoke() -> KubeDouble {
    spoke_api(None).await
}

/// The cluster at `version`: settled (`progressing` False, history Completed) or not.
fn seed(double: &KubeDouble, version: &str, progressing: bool, degraded: bool) {
    let (prog, state) = if progressing {
        ("True", "Partial")
    } else {
        ("False", "Completed")
    };
    double
        .put_value(json!({"apiVersion": CONFIG, "kind": "ClusterVersion",
            "metadata": {"name": "version"},
            "spec": {"desiredUpdate": {"version": version}},
            "status": {"conditions": conditions(&[("Available", "True"), ("Progressing", prog)]),
                       "desired": {"version": version},
                       "history": [{"version": version, "state": state},
                                   {"version": "4.15.9", "state": "Completed"}]}}))
        .unwrap();
    for co in ["etcd", "kube-apiserver"] {
        let d = if degraded && co == "etcd" {
            "True"
        } else {
            "False"
        };
        double
            .put_value(json!({"apiVersion": CONFIG, "kind": "ClusterOperator",
                "metadata": {"name": co},
                "status": {"conditions": conditions(&[("Available", "True"), ("Degraded", d)])}}))
            .unwrap();
    }
    double
        .put_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sno"},
            "status": {"conditions": conditions(&[("Ready", "True")])}}),
        )
        .unwrap();
}

struct Rig {
    settings: WatchdogSettings,
    clock: Arc<ManualClock>,
}

impl Rig {
    fn new(
        kubeconfig: PathBuf,
        state_dir: &Path,
        root: &Path,
        runner: Arc<dyn CommandRunner>,
    ) -> Self {
        std::fs::create_dir_all(root.join("var/recovery")).unwrap();
        Rig {
            settings: WatchdogSettings {
                kubeconfig,
                state_dir: state_dir.to_path_buf(),
                recovery_dir: root.join("var/recovery"),
                poll: Duration::from_millis(20),
                check_timeout: Duration::from_secs(5),
                runner,
            },
            clock: Arc::new(ManualClock::at_unix(ARMED_AT + 5)),
        }
    }

    fn runner(&self) -> HostRunner {
        HostRunner::new(Arc::new(Host::new(Path::new("/"))))
            .with_clock(self.clock.clone())
            .with_watchdog(self.settings.clone())
    }

    /// Starts the task (again, after an "agent restart").
    fn start(
        &self,
        task: &Task,
    ) -> (
        tokio::task::JoinHandle<(TaskOutcome, String)>,
        mpsc::Receiver<Progress>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let ctx = TaskContext::new(&task.id, tx);
        let fut = self.runner().run(task.clone(), ctx);
        (tokio::spawn(fut), rx)
    }
}

fn task(timeout: u64, target: Option<&str>) -> Task {
    let mut p = json!({"armedAt": ARMED_AT, "healthTimeoutSeconds": timeout});
    if let Some(t) = target {
        p["targetVersion"] = json!(t);
    }
    Task {
        id: "ns/cgu/uid/rollback".into(),
        kind: TaskKind::Rollback as i32,
        params_json: p.to_string(),
        deadline_unix: 0,
        state: TaskState::Running,
        message: String::new(),
        starts: 1,
        accepted_at: 0,
        finished_at: None,
    }
}

/// The next progress message that satisfies `f` (bounded wait; no timing assert).
async fn progress_until(rx: &mut mpsc::Receiver<Progress>, f: impl Fn(&str) -> bool) -> String {
    let wait = async {
        loop {
            let p = rx.recv().await.expect("progress channel closed");
            if f(&p.message) {
                return p.message;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("no such progress")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

fn watch_state(dir: &Path) -> watchdog::WatchState {
    watchdog::load_state(dir).unwrap().unwrap()
}

#[tokio::test]
async fn healthy_in_time_succeeds_and_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let double = spoke().await;
    // Mid-upgrade: still progressing, etcd degraded, /readyz failing.
    seed(&double, "4.16.3", true, true);
    double.inject(Fault::error(500).path_contains("/readyz").times(2));
    let runner = Arc::new(RecordingRunner::new());
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        d.path(),
        &d.path().join("host"),
        runner.clone(),
    );
    let t = task(3600, Some("4.16.3"));
    let (h, mut rx) = rig.start(&t);
    let msg = progress_until(&mut rx, |m| m.starts_with("Armed:")).await;
    assert!(msg.contains("Progressing is True"), "{msg}");
    assert!(msg.contains("ClusterOperator etcd is Degraded"), "{msg}");
    assert!(msg.contains("/readyz answered 500"), "{msg}");
    let w = watch_state(d.path());
    assert_eq!(w.state, Some(WatchState::Armed));
    assert_eq!(w.deadline, ARMED_AT + 3600);
    assert!(!w.checks.is_empty());
    // The upgrade settles before the timeout.
    rig.clock.advance(jiff::SignedDuration::from_secs(1800));
    seed(&double, "4.16.3", false, false);
    let (o, msg) = h.await.unwrap();
    assert_eq!(o, TaskOutcome::Succeeded, "{msg}");
    assert!(msg.starts_with("Healthy"), "{msg}");
    // Nothing touched: no command at all, no marker, no outcome.
    assert!(runner.lines().is_empty(), "{:?}", runner.lines());
    assert!(!d.path().join("host/var/recovery").join(MARKER).exists());
    let w = watch_state(d.path());
    assert_eq!(w.state, Some(WatchState::Healthy));
    assert!(w.checks.is_empty());
}

#[tokio::test]
async fn healthy_at_the_wrong_version_is_not_healthy_and_disarm_cancels() {
    let d = tempfile::tempdir().unwrap();
    let double = spoke().await;
    // Settled, but at another version than the target.
    seed(&double, "4.15.9", false, false);
    let runner = Arc::new(RecordingRunner::new());
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        d.path(),
        &d.path().join("host"),
        runner.clone(),
    );
    let t = task(3600, Some("4.16.3"));
    let (h, mut rx) = rig.start(&t);
    let msg = progress_until(&mut rx, |m| m.starts_with("Armed:")).await;
    assert!(msg.contains("not the target 4.16.3"), "{msg}");
    // A person disarms it on the node.
    let w = watchdog::request_disarm(d.path()).unwrap();
    assert_eq!(w.task_id, t.id);
    let (o, msg) = h.await.unwrap();
    assert_eq!(o, TaskOutcome::Cancelled, "{msg}");
    assert!(runner.lines().is_empty(), "{:?}", runner.lines());
    assert_eq!(watch_state(d.path()).state, Some(WatchState::Cancelled));
    // Nothing armed any more: a second disarm says so.
    let e = watchdog::request_disarm(d.path()).unwrap_err().to_string();
    assert!(e.contains("is Cancelled"), "{e}");
}

#[tokio::test]
async fn an_api_server_that_is_down_or_failing_is_not_healthy_but_no_rollback_before_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    let double = spoke().await;
    seed(&double, "4.16.3", false, false);
    let runner = Arc::new(RecordingRunner::new());
    // Down: nothing listens on the kubeconfig's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kc = d.path().join("down.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: spoke\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: admin\n  context:\n    cluster: spoke\n    user: admin\n\
             current-context: admin\nusers:\n- name: admin\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let rig = Rig::new(kc, d.path(), &d.path().join("host"), runner.clone());
    let (h, mut rx) = rig.start(&task(600, None));
    for _ in 0..3 {
        let msg = progress_until(&mut rx, |m| m.starts_with("Armed:")).await;
        assert!(
            msg.contains("/readyz") && msg.contains("ClusterVersion version"),
            "{msg}"
        );
    }
    h.abort();
    // Failing: every request answers 500.
    double.inject(Fault::error(500));
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        d.path(),
        &d.path().join("host"),
        runner.clone(),
    );
    let (h, mut rx) = rig.start(&task(600, None));
    for _ in 0..3 {
        let msg = progress_until(&mut rx, |m| m.starts_with("Armed:")).await;
        assert!(msg.contains("500"), "{msg}");
    }
    h.abort();
    assert!(runner.lines().is_empty(), "{:?}", runner.lines());
    assert_eq!(watch_state(d.path()).state, Some(WatchState::Armed));
}

/// Plays `talm-recover.service`: runs `recover --unattended` until it ends, each "reboot" a
/// new boot id; `kill_after` stops the run after that step (as a kill of the unit would), and
/// the next start resumes. Returns the reboots.
fn play_unit(
    root: &Path,
    n: &Node,
    kill_after: Option<&str>,
    boot: &mut usize,
) -> Result<(), String> {
    let say = Say {
        stop_after: kill_after.map(str::to_owned),
        ..Say::default()
    };
    let reboots_before = reboots(n);
    let r = unattended::run(&rcfg(root, n, Mode::Resume), &say);
    if reboots(n) > reboots_before {
        *boot += 1;
        set_boot(root, &format!("boot-w{boot}"));
    }
    match r {
        Ok(_) | Err(UnattendedRunError::Recover(RecoverError::Stopped(_))) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reboots asked for: by the recovery (`systemctl reboot`) or by the OS rollback
/// (`rpm-ostree rollback -r`).
fn reboots(n: &Node) -> usize {
    n.runner
        .lines()
        .iter()
        .filter(|l| *l == "systemctl reboot" || *l == "rpm-ostree rollback -r")
        .count()
}

fn all_steps() -> Vec<String> {
    let mut v = vec!["os/rollback".to_owned()];
    for (stage, steps) in STAGES {
        v.extend(steps.iter().map(|s| format!("{stage}/{s}")));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_at_the_timeout_rolls_back_to_rolled_back_through_kills_and_restarts() {
    if !require("watchdog_rolls_back", &["etcd", "etcdctl"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    let before = prepared(&root, &e);
    let state_dir = d.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let double = spoke().await;
    seed(&double, "4.16.3", true, false);
    let n = node();
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        &state_dir,
        &root,
        n.runner.clone(),
    );
    let t = task(600, Some("4.16.3"));
    let (h, mut rx) = rig.start(&t);
    progress_until(&mut rx, |m| m.starts_with("Armed:")).await;
    assert!(commands(&n).is_empty(), "{:?}", commands(&n));
    // The timeout passes, still not healthy: the unit is armed and started.
    rig.clock.advance(jiff::SignedDuration::from_secs(600));
    let msg = progress_until(&mut rx, |m| m.starts_with("RollingBack: starting")).await;
    assert!(msg.contains("Progressing is True"), "{msg}");
    until("the unit started", || {
        n.runner.lines().iter().any(|l| l == START)
    })
    .await;
    assert_eq!(commands(&n), vec![START.to_owned()]);
    let marker = root.join("var/recovery").join(MARKER);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), t.id);
    assert_eq!(watch_state(&state_dir).state, Some(WatchState::RollingBack));
    // The node becoming healthy now changes nothing: the rollback started.
    seed(&double, "4.16.3", false, false);

    // The unit, killed after every step, the agent restarted between its runs.
    let mut h = h;
    let mut boot = 0;
    for step in all_steps() {
        h.abort();
        let _ = h.await;
        let root2 = root.clone();
        let n2 = Node {
            runner: n.runner.clone(),
            status: n.status.clone(),
        };
        let r = tokio::task::spawn_blocking(move || {
            let mut b = boot;
            let r = play_unit(&root2, &n2, Some(&step), &mut b);
            (r, b)
        })
        .await
        .unwrap();
        boot = r.1;
        r.0.unwrap();
        let (nh, _rx) = rig.start(&t);
        h = nh;
        assert!(
            marker.exists(),
            "killed after {:?}: still armed",
            all_steps()
        );
    }
    // The last start (the journal has every step; it marks the recovery finished).
    let root2 = root.clone();
    let n2 = Node {
        runner: n.runner.clone(),
        status: n.status.clone(),
    };
    tokio::task::spawn_blocking(move || play_unit(&root2, &n2, None, &mut 0))
        .await
        .unwrap()
        .unwrap();
    let (o, msg) = tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o, TaskOutcome::RolledBack, "{msg}");
    assert!(msg.starts_with("RolledBack:"), "{msg}");
    assert!(
        !marker.exists(),
        "the marker must go once the recovery is done"
    );
    let out = unattended::load_outcome(&root.join("var/recovery"))
        .unwrap()
        .unwrap();
    assert_eq!(out.state, WatchState::RolledBack);
    assert_eq!(watch_state(&state_dir).state, Some(WatchState::RolledBack));
    assert_eq!(state(&root), expected(&before));
    // The agent started the unit once; the recovery rebooted the node once (after stage 1).
    let lines = n.runner.lines();
    assert_eq!(lines.iter().filter(|l| *l == START).count(), 1, "{lines:?}");
    assert_eq!(reboots(&n), 1, "{lines:?}");
    assert!(lines.iter().any(|l| l == "crio wipe -f"), "{lines:?}");
    // Once done, the unit refuses to run again (nothing armed).
    let e = unattended::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap_err();
    assert!(matches!(e, UnattendedRunError::NotArmed(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_backup_at_rollback_time_fails_before_anything_is_touched() {
    if !require("watchdog_corrupt_backup", &["etcd", "etcdctl"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    prepared(&root, &e);
    let etc = root.join("var/recovery/backup/etc.tar.zst");
    let mut bytes = std::fs::read(&etc).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&etc, bytes).unwrap();
    let upgraded = state(&root);
    let state_dir = d.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let double = spoke().await;
    seed(&double, "4.16.3", true, false);
    let n = node();
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        &state_dir,
        &root,
        n.runner.clone(),
    );
    // Armed long ago: the first check is already past the timeout.
    rig.clock.advance(jiff::SignedDuration::from_secs(7200));
    let t = task(600, Some("4.16.3"));
    let (h, _rx) = rig.start(&t);
    until("the unit started", || {
        n.runner.lines().iter().any(|l| l == START)
    })
    .await;
    let root2 = root.clone();
    let n2 = Node {
        runner: n.runner.clone(),
        status: n.status.clone(),
    };
    let r = tokio::task::spawn_blocking(move || play_unit(&root2, &n2, None, &mut 0))
        .await
        .unwrap();
    let err = r.unwrap_err();
    assert!(err.contains("etc.tar.zst"), "{err}");
    let (o, msg) = tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o, TaskOutcome::Failed, "{msg}");
    assert!(msg.starts_with("RollbackFailed: step preflight:"), "{msg}");
    assert!(msg.contains("etc.tar.zst"), "{msg}");
    // Nothing destructive ran: the only command is the unit's start; the files are as they were.
    assert_eq!(commands(&n), vec![START.to_owned()]);
    assert_eq!(state(&root), upgraded);
    assert!(!root.join("var/recovery").join(MARKER).exists());
    assert!(root.join("var/recovery").join(OUTCOME).exists());
    assert_eq!(
        watch_state(&state_dir).state,
        Some(WatchState::RollbackFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_os_rollback_on_a_real_ostree_sysroot_then_every_stage_to_rolled_back() {
    if !require(
        "watchdog_real_ostree",
        &["etcd", "etcdctl", "ostree", "chattr"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    let before = prepared(&root, &e);
    // A real sysroot: the pre-upgrade deployment (index 1) pinned, the upgrade's (index 0) the
    // one running (a sysroot that is not booted runs its default, index 0).
    make_sysroot(&root, 2);
    let mut sr = std::ffi::OsString::from("--sysroot=");
    sr.push(root.join("sysroot"));
    talm_agent::host::exec::RealRunner::new()
        .run(
            &talm_agent::host::exec::Cmd::new("ostree")
                .args(["admin", "pin"])
                .arg(&sr)
                .arg("1"),
        )
        .unwrap();
    let state_dir = d.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let double = spoke().await;
    seed(&double, "4.16.3", false, true);
    let n = node_with_real_ostree();
    let rig = Rig::new(
        kubeconfig(&double, d.path()),
        &state_dir,
        &root,
        n.runner.clone(),
    );
    rig.clock.advance(jiff::SignedDuration::from_secs(600));
    let t = task(600, Some("4.16.3"));
    let (mut h, _rx) = rig.start(&t);
    until("the unit started", || {
        n.runner.lines().iter().any(|l| l == START)
    })
    .await;
    // The unit's runs, the agent restarted after each (a reboot restarts both).
    let mut boot = 0;
    for _ in 0..10 {
        if unattended::load_outcome(&root.join("var/recovery"))
            .unwrap()
            .is_some_and(|o| o.state != WatchState::RollingBack)
        {
            break;
        }
        let root2 = root.clone();
        let n2 = Node {
            runner: n.runner.clone(),
            status: n.status.clone(),
        };
        let b = tokio::task::spawn_blocking(move || {
            let mut b = boot;
            play_unit(&root2, &n2, None, &mut b).unwrap();
            b
        })
        .await
        .unwrap();
        if b != boot {
            h.abort();
            let _ = h.await;
            h = rig.start(&t).0;
        }
        boot = b;
    }
    let (o, msg) = tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o, TaskOutcome::RolledBack, "{msg}");
    let lines = n.runner.lines();
    // The real ostree status named the pinned deployment the rollback target.
    let status = lines
        .iter()
        .position(|l| l.starts_with("ostree admin status --sysroot="))
        .unwrap();
    let rollback = lines
        .iter()
        .position(|l| l == "rpm-ostree rollback -r")
        .unwrap();
    assert!(status < rollback, "{lines:?}");
    assert_eq!(
        reboots(&n),
        2,
        "the OS rollback and the one after stage 1: {lines:?}"
    );
    assert_eq!(state(&root), expected(&before));
    unlock_sysroot(&root);
}

#[test]
fn a_recovery_finished_by_hand_is_recorded_and_an_older_finished_one_is_not_taken_for_this_one() {
    if !require("watchdog_by_hand", &["etcd", "etcdctl"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    let before = prepared(&root, &e);
    let dir = root.join("var/recovery");
    let n = node();
    // The watchdog of t1 armed it; the unit ran one step, then a person stopped it.
    unattended::arm(&dir, "t1").unwrap();
    let mut boot = 0;
    play_unit(&root, &n, Some("os/rollback"), &mut boot).unwrap();
    assert_eq!(
        unattended::load_outcome(&dir).unwrap().unwrap().state,
        WatchState::RollingBack
    );
    // ... and finished it by hand.
    let mut mode = Mode::Resume;
    for i in 0..5 {
        match talm_agent::recovery::run(&rcfg(&root, &n, mode), &Say::default()) {
            Ok(o) if o.finished => break,
            Ok(_) | Err(RecoverError::NotRebooted) => set_boot(&root, &format!("hand-{i}")),
            Err(e) => panic!("{e}"),
        }
        mode = Mode::Resume;
    }
    assert_eq!(state(&root), expected(&before));
    // The unit at the next boot: records it, runs nothing, disarms.
    let ran = n.runner.lines().len();
    let o = unattended::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap();
    assert!(o.finished, "{}", o.next);
    assert_eq!(
        n.runner.lines().len(),
        ran,
        "{:?}",
        &n.runner.lines()[ran..]
    );
    let out = unattended::load_outcome(&dir).unwrap().unwrap();
    assert_eq!(
        (out.task_id.as_str(), out.state),
        ("t1", WatchState::RolledBack)
    );
    assert!(!dir.join(MARKER).exists());

    // A later upgrade's watchdog (t2): the finished journal is t1's, so t2 recovers for real.
    put(&root, "/etc/kubernetes/kubelet.conf", b"upgraded again\n");
    unattended::arm(&dir, "t2").unwrap();
    play_unit(&root, &n, None, &mut boot).unwrap();
    let out = unattended::load_outcome(&dir).unwrap().unwrap();
    assert_eq!(
        (out.task_id.as_str(), out.state),
        ("t2", WatchState::RollingBack)
    );
    assert!(
        n.runner.lines()[ran..].iter().any(|l| l == "crio wipe -f"),
        "{:?}",
        &n.runner.lines()[ran..]
    );
    assert_eq!(reboots(&n), 1, "stage 1 of t2 asked for its reboot");
}
