//! The fake node of the recovery tests (shared by recovery.rs and watchdog.rs): a recording
//! runner that plays a node behind the command seam, a prepared host root with a fresh backup
//! (real etcd) that was then "upgraded", and the recovery configuration for it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backup_support::{self, Etcd, config, make_node, put};
use talm_agent::backup::{self, Host};
use talm_agent::host::disk::RealDisk;
use talm_agent::host::exec::{Output, RecordingRunner};
use talm_agent::host::root::HostRoot;
use talm_agent::recovery::{Mode, RecoverConfig, Reporter};

/// A fake node behind the command seam.
pub struct Node {
    pub runner: Arc<RecordingRunner>,
    pub status: Arc<Mutex<String>>,
}

pub fn node() -> Node {
    node_with(Arc::new(RecordingRunner::new()))
}

/// The fake node, but `ostree` commands run for real (on the sysroot they name, a real one in
/// the test's host root); everything is recorded.
pub fn node_with_real_ostree() -> Node {
    let runner = Arc::new(RecordingRunner::new());
    let real = talm_agent::host::exec::RealRunner::new();
    runner.on(move |c| {
        (c.program == "ostree").then(|| {
            use talm_agent::host::exec::CommandRunner;
            real.output(c)
        })
    });
    node_with(runner)
}

/// Adds the fake node's answers to `runner` (after any rules it has).
fn node_with(runner: Arc<RecordingRunner>) -> Node {
    let status = Arc::new(Mutex::new("* rhcos pre.0\n    Pinned: yes\n".to_owned()));
    let restored = Arc::new(AtomicBool::new(false));
    let patched = Arc::new(AtomicBool::new(false));
    let s = status.clone();
    runner.on(move |c| {
        (c.display().starts_with("ostree admin status"))
            .then(|| Ok(Output::ok(s.lock().unwrap().clone())))
    });
    let r = restored.clone();
    runner.on(move |c| {
        c.program.ends_with("cluster-restore.sh").then(|| {
            r.store(true, Ordering::SeqCst);
            Ok(Output::ok(""))
        })
    });
    let r = restored.clone();
    runner.on(move |c| {
        let a = c.arg_strings();
        (c.program == "crictl" && a.first().map(String::as_str) == Some("ps")).then(|| {
            let name = a[3].trim_matches(|ch| ch == '^' || ch == '$');
            let generation = if r.load(Ordering::SeqCst) {
                "new"
            } else {
                "old"
            };
            Ok(Output::ok(format!("{generation}-{name}\n")))
        })
    });
    let p = patched.clone();
    runner.on(move |c| {
        let a = c.arg_strings();
        if c.program != "oc" {
            return None;
        }
        if a.first().map(String::as_str) == Some("patch") {
            p.store(true, Ordering::SeqCst);
            return Some(Ok(Output::ok("patched")));
        }
        let q = a.last().cloned().unwrap_or_default();
        if q.contains("latestAvailableRevision") {
            return Some(Ok(Output::ok("5")));
        }
        if q.contains("currentRevision") {
            return Some(Ok(Output::ok(if p.load(Ordering::SeqCst) {
                "6"
            } else {
                "5"
            })));
        }
        None
    });
    runner.on_prefix("systemctl is-active", Output::failed(3, ""));
    Node { runner, status }
}

#[derive(Default)]
pub struct Say {
    pub lines: Mutex<Vec<String>>,
    pub stop_after: Option<String>,
}

impl Reporter for Say {
    fn say(&self, msg: &str) {
        self.lines.lock().unwrap().push(msg.to_owned());
    }
    fn proceed(&self, step: &str) -> bool {
        self.stop_after.as_deref() != Some(step)
    }
}

pub fn rcfg(root: &Path, n: &Node, mode: Mode) -> RecoverConfig {
    RecoverConfig {
        host: Host {
            root: HostRoot::new(root),
            runner: n.runner.clone(),
            disk: Arc::new(RealDisk),
        },
        dir: PathBuf::from("/var/recovery"),
        mode,
        single_stage: false,
        force: false,
        // A temp host root with a fake node behind the command seam: carry it out.
        force_host_root: true,
        dry_run: false,
        kubeconfig: Some(PathBuf::from("/etc/kubernetes/recovery.kubeconfig")),
        poll: Duration::from_millis(1),
        wait_timeout: Duration::from_secs(5),
        redeploy_reason: "recovery-2026-11-25T12:00:00Z".into(),
    }
}

/// Every file under the trees a recovery restores: path → content (or link target).
pub fn state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else if m.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(base, &path, out);
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
                );
            }
        }
    }
    for t in ["etc", "usr/local", "var/lib/kubelet", "opt"] {
        walk(root, &root.join(t), &mut out);
    }
    out
}

pub fn set_boot(root: &Path, id: &str) {
    put(
        root,
        "/proc/sys/kernel/random/boot_id",
        format!("{id}\n").as_bytes(),
    );
}

/// A node with a fresh backup, then "upgraded" (files changed). Returns the pre-upgrade state.
pub fn prepared(root: &Path, etcd: &Etcd) -> BTreeMap<String, String> {
    make_node(root);
    set_boot(root, "boot-0");
    let b = node();
    backup::run(
        &config(
            root,
            b.runner.clone(),
            Arc::new(RealDisk),
            etcd.access_in(root),
        ),
        &backup_support::TestProgress::default(),
    )
    .unwrap();
    let before = state(root);
    put(root, "/etc/kubernetes/kubelet.conf", b"upgraded\n");
    put(root, "/etc/new.conf", b"new\n");
    put(
        root,
        "/etc/kubernetes/manifests/new-pod.yaml",
        b"kept: excluded\n",
    );
    put(root, "/usr/local/bin/helper", b"upgraded\n");
    put(root, "/usr/local/bin/new", b"new\n");
    put(root, "/var/lib/kubelet/config.json", b"upgraded\n");
    put(root, "/opt/extra/tool.sh", b"upgraded\n");
    before
}

/// What the recovery should leave: the pre-upgrade state plus the excluded path it keeps.
pub fn expected(before: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut want = before.clone();
    want.insert(
        "etc/kubernetes/manifests/new-pod.yaml".into(),
        "kept: excluded\n".into(),
    );
    want
}

pub fn commands(n: &Node) -> Vec<String> {
    n.runner
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with("ostree admin status"))
        .collect()
}
