//! `backup::run` end to end on a temp host root: real etcd (client-cert TLS), a real ostree
//! sysroot, real files; the checks; a stop after every step (as a kill) leaves the previous
//! backup intact and a rerun completes; a full disk (tmpfs) leaves the previous backup usable;
//! corruption is caught by the manifest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_support::{
    Etcd, RoomyDisk, TestProgress, config, make_node, make_sysroot, make_tls, put, require,
    unlock_sysroot,
};
use talm_agent::backup::layout::{CURRENT, MARKER, STAGING};
use talm_agent::backup::manifest::{VerifyError, verify};
use talm_agent::backup::{BackupError, Step, run};
use talm_agent::host::archive::{RestoreOptions, restore};
use talm_agent::host::disk::RealDisk;
use talm_agent::host::etcd::verify_snapshot_file;
use talm_agent::host::exec::{Cmd, CommandRunner, Output, RealRunner, RecordingRunner};
use talm_agent::host::ostree::Ostree;

fn pinned_ostree() -> Arc<RecordingRunner> {
    let r = Arc::new(RecordingRunner::new());
    r.on_prefix(
        "ostree admin status",
        Output::ok("* rhcos abc123.0\n    Pinned: yes\n"),
    );
    r
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = verify(dir)
        .unwrap()
        .artifacts
        .into_iter()
        .map(|a| a.name)
        .collect();
    v.sort();
    v
}

fn extract(archive: &Path, to: &Path) {
    restore(
        archive,
        to,
        &RestoreOptions {
            jail: to,
            allow_absolute_symlinks: true,
            mirror_keep: None,
            host_paths: false,
        },
    )
    .unwrap();
}

#[test]
fn backup_end_to_end_with_real_etcd_and_ostree() {
    if !require(
        "backup_end_to_end_with_real_etcd_and_ostree",
        &["etcd", "etcdctl", "ostree", "chattr"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    make_sysroot(&root, 3);
    let e = Etcd::start(
        "m1",
        &d.path().join("etcd"),
        d.path(),
        Some(make_tls(&d.path().join("tls"))),
        None,
    );
    e.ctl(&["put", "/registry/a", "1"]).unwrap();
    let runner: Arc<dyn CommandRunner> = Arc::new(RealRunner::new());
    let cfg = config(
        &root,
        runner.clone(),
        Arc::new(RealDisk),
        e.access_in(&root),
    );
    let p = TestProgress::default();
    let report = run(&cfg, &p).unwrap();
    assert_eq!(*p.steps.lock().unwrap(), Step::ALL.to_vec());

    // ostree: standbys gone, the current deployment pinned.
    let s = Ostree::new(runner.as_ref(), root.join("sysroot"))
        .status()
        .unwrap();
    assert_eq!(s.deployments.len(), 1);
    assert!(s.deployments[0].pinned);
    assert_eq!(
        report.manifest.pinned_deployment.as_deref(),
        Some(s.deployments[0].id.as_str())
    );

    let b = root.join("var/recovery").join(CURRENT);
    assert_eq!(report.dir, b);
    assert_eq!(
        names(&b),
        [
            "cluster/snapshot_2026-11-25_120000.db",
            "cluster/static_kuberesources_2026-11-25_120000.tar.gz",
            "etc.exclude.list",
            "etc.tar.zst",
            "extras.tar.zst",
            "kubelet.tar.zst",
            "local.tar.zst",
        ]
    );
    verify_snapshot_file(&b.join("cluster/snapshot_2026-11-25_120000.db")).unwrap();
    assert!(!root.join("var/recovery").join(STAGING).exists());

    // /etc without the exclusions.
    let x = d.path().join("x");
    extract(&b.join("etc.tar.zst"), &x.join("etc"));
    assert!(x.join("etc/kubernetes/kubelet.conf").is_file());
    assert!(!x.join("etc/kubernetes/manifests").exists());
    assert!(!x.join("etc/scratch").exists(), "named in tmpfiles.d");
    assert!(!x.join("etc/.updated").exists());
    let list = std::fs::read_to_string(b.join("etc.exclude.list")).unwrap();
    assert_eq!(list, ".updated\nkubernetes/manifests\nscratch\n");
    // Static pods: the latest revisions only, laid out for cluster-restore.sh.
    extract(
        &b.join("cluster/static_kuberesources_2026-11-25_120000.tar.gz"),
        &x.join("sp"),
    );
    assert!(
        x.join("sp/static-pod-resources/kube-apiserver-pod-12/configmaps/c")
            .is_file()
    );
    assert!(
        !x.join("sp/static-pod-resources/kube-apiserver-pod-3")
            .exists()
    );
    assert!(!x.join("sp/static-pod-resources/bin").exists());
    assert!(x.join("sp/static-pod-resources/etcd-pod-2").is_dir());
    // Extras: MachineConfig files outside the backed-up trees.
    extract(&b.join("extras.tar.zst"), &x.join("extras"));
    assert!(x.join("extras/opt/extra/tool.sh").is_file());
    assert!(!x.join("extras/etc").exists());
    // /usr/local keeps its symlink.
    extract(&b.join("local.tar.zst"), &x.join("local"));
    assert_eq!(
        std::fs::read_link(x.join("local/bin/helper-link")).unwrap(),
        Path::new("helper")
    );

    let w = p.warnings.lock().unwrap().join("\n");
    assert!(w.contains("not its own mount"), "{w}");
    assert!(w.contains("/var/missing"), "{w}");

    // A second backup replaces the first only when complete.
    let mut cfg2 = cfg.clone();
    cfg2.timestamp = "2026-11-26_000000".into();
    run(&cfg2, &TestProgress::default()).unwrap();
    assert!(names(&b).contains(&"cluster/snapshot_2026-11-26_000000.db".to_owned()));
    assert!(!root.join("var/recovery").join(STAGING).exists());
    unlock_sysroot(&root);
}

#[test]
fn checks_fail_with_clear_reasons() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    make_node(root);
    let access = talm_agent::backup::EtcdAccess {
        endpoints: vec!["http://127.0.0.1:1".into()],
        ca: None,
        cert: None,
        key: None,
    };
    let mut cfg = config(root, pinned_ostree(), Arc::new(RealDisk), access);

    cfg.margin = 1 << 60;
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(matches!(err, BackupError::NoSpace { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("insufficient disk space to trigger backup"),
        "{err}"
    );
    assert_eq!(err.talm_state(), "UnrecoverableError");
    cfg.margin = 0;

    put(
        root,
        "/var/recovery/recovery.journal",
        br#"{"format":1,"done":["os/rollback"],"finished":false}"#,
    );
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(
        matches!(err, BackupError::RecoveryInProgress { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("talm-agent recover --resume"),
        "{err}"
    );
    // Unreadable (cut short by a crash, or not even a file): a recovery may be under way, so
    // no backup either, and the error names the file and `recover --restart`.
    let journal = root.join("var/recovery/recovery.journal");
    for bad in [&b"{\"format\":1,\"done\":[\"restore_fi"[..], b""] {
        std::fs::write(&journal, bad).unwrap();
        let err = run(&cfg, &TestProgress::default()).unwrap_err();
        assert!(matches!(err, BackupError::RecoveryJournal(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&journal.display().to_string())
                && msg.contains("talm-agent recover --restart")
                && msg.contains("in progress is unknown"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&journal).unwrap(), bad);
        assert!(!root.join("var/recovery").join(STAGING).exists());
    }
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(matches!(err, BackupError::RecoveryJournal(_)), "{err}");
    std::fs::remove_dir(&journal).unwrap();
    put(
        root,
        "/var/recovery/recovery.journal",
        br#"{"format":1,"done":[],"finished":true}"#,
    );

    cfg.deadline = Some(Instant::now());
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert_eq!(err.talm_state(), "BackupTimeout", "{err}");
    cfg.deadline = None;

    // etcd unreachable: the run fails at the snapshot, and nothing is left behind.
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(matches!(err, BackupError::Etcd(_)), "{err}");
    assert!(!root.join("var/recovery").join(STAGING).exists());

    std::fs::remove_dir_all(root.join("var/recovery")).unwrap();
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(matches!(err, BackupError::NoDir { .. }), "{err}");
    assert!(
        err.to_string().contains("does not exist; create it"),
        "{err}"
    );
}

#[test]
fn a_stop_after_every_step_keeps_the_previous_backup_and_a_rerun_completes() {
    if !require(
        "a_stop_after_every_step_keeps_the_previous_backup",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    e.ctl(&["put", "k", "v"]).unwrap();
    let mut cfg = config(
        &root,
        pinned_ostree(),
        Arc::new(RealDisk),
        e.access_in(&root),
    );
    run(&cfg, &TestProgress::default()).unwrap();
    let b = root.join("var/recovery").join(CURRENT);
    let clean = verify(&b).unwrap();
    let clean_names = names(&b);

    for (i, step) in Step::ALL.iter().enumerate() {
        let previous = verify(&b).unwrap();
        cfg.timestamp = format!("2026-11-25_12000{i}");
        let p = TestProgress {
            stop_after: Some(*step),
            ..TestProgress::default()
        };
        let err = run(&cfg, &p).unwrap_err();
        assert!(
            matches!(err, BackupError::Stopped { .. }),
            "{step:?}: {err}"
        );
        let now = verify(&b).unwrap();
        if *step == Step::Commit {
            assert_eq!(now.created, cfg.timestamp, "committed before the stop");
        } else {
            assert_eq!(now, previous, "{step:?}: the previous backup changed");
        }
        // The rerun cleans up what the stopped run left and completes.
        let report = run(&cfg, &TestProgress::default()).unwrap();
        assert_eq!(report.manifest.created, cfg.timestamp);
        assert!(
            !root.join("var/recovery").join(STAGING).exists(),
            "{step:?}"
        );
        let got: Vec<String> = names(&b)
            .into_iter()
            .map(|n| n.replace(&cfg.timestamp, "T"))
            .collect();
        let want: Vec<String> = clean_names
            .iter()
            .map(|n| n.replace(&clean.created, "T"))
            .collect();
        assert_eq!(got, want, "{step:?}");
        // The directory archives hold the same content as the clean run's.
        let sha = |m: &talm_agent::backup::manifest::Manifest| {
            m.artifacts
                .iter()
                .find(|x| x.name == "etc.exclude.list")
                .unwrap()
                .sha256
                .clone()
        };
        assert_eq!(sha(&report.manifest), sha(&clean));
    }
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let r = RealRunner::new().run(
            &Cmd::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
        );
        match r {
            Ok(_) => Some(Tmpfs(at.to_owned())),
            Err(e) => {
                eprintln!("SKIP: cannot mount a tmpfs ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = RealRunner::new().run(&Cmd::new("umount").arg(&self.0));
    }
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_full_disk_during_the_backup_leaves_the_previous_backup_usable() {
    if !require(
        "a_full_disk_during_the_backup",
        &["etcd", "etcdctl", "mount", "umount"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    let Some(_mount) = Tmpfs::mount(&root.join("var/recovery"), "3m") else {
        return;
    };
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    e.ctl(&["put", "k", "v"]).unwrap();
    let mut cfg = config(
        &root,
        pinned_ostree(),
        Arc::new(RoomyDisk),
        e.access_in(&root),
    );
    let p = TestProgress::default();
    run(&cfg, &p).unwrap();
    assert!(
        !p.warnings
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("not its own mount")),
        "the tmpfs is its own mount"
    );
    let b = root.join("var/recovery").join(CURRENT);
    let before = verify(&b).unwrap();

    // The upgrade era: /usr/local grew by 4 MiB of incompressible data.
    put(&root, "/usr/local/big.bin", &noise(4 << 20, 7));
    cfg.timestamp = "2026-11-25_130000".into();
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("disk is full") && msg.contains("previous backup is intact"),
        "{msg}"
    );
    assert!(
        !root.join("var/recovery").join(STAGING).exists(),
        "the partial backup was removed"
    );
    assert_eq!(verify(&b).unwrap(), before, "the previous backup is intact");
    // ...and usable.
    let x = d.path().join("x");
    extract(&b.join("local.tar.zst"), &x);
    assert!(x.join("bin/helper").is_file());

    // With the real statvfs the check refuses up front.
    cfg.host.disk = Arc::new(RealDisk);
    let err = run(&cfg, &TestProgress::default()).unwrap_err();
    assert!(matches!(err, BackupError::NoSpace { .. }), "{err}");
}

#[test]
fn corruption_is_detected_by_the_manifest() {
    if !require(
        "corruption_is_detected_by_the_manifest",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let cfg = config(
        &root,
        pinned_ostree(),
        Arc::new(RealDisk),
        e.access_in(&root),
    );
    run(&cfg, &TestProgress::default()).unwrap();
    let b = root.join("var/recovery").join(CURRENT);
    verify(&b).unwrap();

    let etc = b.join("etc.tar.zst");
    let good = std::fs::read(&etc).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&etc, &bad).unwrap();
    let err = verify(&b).unwrap_err();
    assert!(
        matches!(err, VerifyError::Corrupt { ref name, .. } if name == "etc.tar.zst"),
        "{err}"
    );
    std::fs::write(&etc, &good[..good.len() - 1]).unwrap();
    assert!(
        verify(&b)
            .unwrap_err()
            .to_string()
            .contains("bytes, the manifest says")
    );
    std::fs::write(&etc, &good).unwrap();
    verify(&b).unwrap();

    let m = b.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("etc.tar.zst", "etc.tar.zsT")).unwrap();
    assert!(
        verify(&b)
            .unwrap_err()
            .to_string()
            .contains("completion marker")
    );
    std::fs::write(&m, text).unwrap();

    std::fs::remove_file(b.join(MARKER)).unwrap();
    assert!(matches!(verify(&b), Err(VerifyError::Incomplete { .. })));
}

/// Sleeps past the deadline when the trees step starts: the archive notices mid-step.
struct SlowAt(Step, Duration);

impl talm_agent::backup::Progress for SlowAt {
    fn step(&self, step: Step) {
        if step == self.0 {
            std::thread::sleep(self.1);
        }
    }
    fn warn(&self, _: &str) {}
}

#[test]
fn the_deadline_is_honoured_inside_a_step() {
    if !require(
        "the_deadline_is_honoured_inside_a_step",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let mut cfg = config(
        &root,
        pinned_ostree(),
        Arc::new(RealDisk),
        e.access_in(&root),
    );
    run(&cfg, &TestProgress::default()).unwrap();
    let before = verify(&root.join("var/recovery").join(CURRENT)).unwrap();

    cfg.deadline = Some(Instant::now() + Duration::from_secs(2));
    cfg.timestamp = "late".into();
    let err = run(&cfg, &SlowAt(Step::Trees, Duration::from_secs(3))).unwrap_err();
    assert!(
        matches!(err, BackupError::Deadline { step } if step == Step::Trees.name()),
        "{err}"
    );
    assert_eq!(err.talm_state(), "BackupTimeout");
    assert!(
        err.to_string().contains("previous backup is intact"),
        "{err}"
    );
    assert_eq!(
        verify(&root.join("var/recovery").join(CURRENT)).unwrap(),
        before
    );
    assert!(!root.join("var/recovery").join(STAGING).exists());
}
