//! `recovery::run` on a temp host root, with a backup taken by `backup::run` (real etcd) and
//! the node commands (systemctl, crictl, crio, cluster-restore.sh, oc, ostree, rpm-ostree)
//! recorded by a fake runner that plays a node: the three stages, the reboot between them, the
//! journal (a stop after every step, then resume, gives the same files and the same commands),
//! the OS rollback decision, `--step`, `--restart`, and a corrupt backup refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod recovery_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_support::{Etcd, config, require};
use recovery_support::{Node, Say, commands, expected, node, prepared, rcfg, set_boot, state};
use talm_agent::backup;
use talm_agent::backup::manifest::{Manifest, Marker};
use talm_agent::host::archive::digest_file;
use talm_agent::host::disk::RealDisk;
use talm_agent::recovery::{self, Mode, Outcome, RecoverError, STAGES};

/// Runs until finished, "rebooting" whenever asked. Returns the number of runs.
fn drive(root: &Path, n: &Node, mut mode: Mode) -> usize {
    for i in 1..20 {
        match recovery::run(&rcfg(root, n, mode), &Say::default()) {
            Ok(Outcome { finished: true, .. }) => return i,
            Ok(o) => {
                assert!(
                    o.next.contains("systemctl reboot") && o.next.contains("--resume"),
                    "{}",
                    o.next
                );
                set_boot(root, &format!("boot-{i}"));
            }
            Err(RecoverError::NotRebooted) => set_boot(root, &format!("boot-{i}")),
            Err(e) => panic!("{e}"),
        }
        mode = Mode::Resume;
    }
    panic!("recovery did not finish")
}

#[test]
fn three_stages_with_a_reboot_between() {
    if !require("three_stages_with_a_reboot_between", &["etcd", "etcdctl"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    let before = prepared(&root, &e);
    let n = node();

    let say = Say::default();
    let o = recovery::run(&rcfg(&root, &n, Mode::Start), &say).unwrap();
    assert!(!o.finished);
    assert_eq!(
        o.next,
        "Please reboot now with 'systemctl reboot', then run 'talm-agent recover --resume'"
    );
    let lines = say.lines.lock().unwrap().join("\n");
    assert!(lines.contains("OS rollback: none needed"), "{lines}");
    let stage1 = commands(&n);
    assert_eq!(
        stage1,
        [
            "oc adm upgrade",
            "oc get co",
            "oc get nodes -o wide",
            "oc get mcp",
            "setenforce 0",
            "systemctl stop kubelet",
            "crictl rmp -fa",
            "systemctl stop crio",
            "crio wipe -f",
            "systemctl daemon-reload",
            "systemctl disable kubelet",
            "setenforce 1",
        ]
    );
    assert!(
        n.runner
            .calls()
            .iter()
            .filter(|c| c.program == "oc")
            .all(|c| c.env.iter().any(|(k, _)| k == "KUBECONFIG"))
    );
    // Files are back, except /var/lib/kubelet (stage 2).
    let now = state(&root);
    let want = expected(&before);
    for (k, v) in &want {
        if !k.starts_with("var/lib/kubelet") {
            assert_eq!(now.get(k), Some(v), "{k}");
        }
    }
    assert!(!now.contains_key("etc/new.conf") && !now.contains_key("usr/local/bin/new"));
    assert_eq!(now["var/lib/kubelet/config.json"], "upgraded\n");

    // Not rebooted yet; and a plain rerun refuses.
    let err = recovery::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap_err();
    assert!(matches!(err, RecoverError::NotRebooted), "{err}");
    assert!(err.to_string().contains("systemctl reboot"));
    let err = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("Restore has already started"),
        "{err}"
    );
    assert!(err.to_string().contains("--resume") && err.to_string().contains("--restart"));
    // A backup is refused while the recovery is in progress.
    let berr = backup::run(
        &config(
            &root,
            node().runner.clone(),
            Arc::new(RealDisk),
            e.access_in(&root),
        ),
        &backup_support::TestProgress::default(),
    )
    .unwrap_err();
    assert!(
        matches!(berr, backup::BackupError::RecoveryInProgress { .. }),
        "{berr}"
    );

    set_boot(&root, "boot-1");
    let o = recovery::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap();
    assert!(o.finished, "{}", o.next);
    assert!(o.next.starts_with("Recovery complete"));
    assert_eq!(state(&root), want);
    let all = commands(&n);
    let rest: Vec<&str> = all[stage1.len()..].iter().map(String::as_str).collect();
    assert!(
        rest.contains(&"/usr/local/bin/cluster-restore.sh /var/recovery/backup/cluster"),
        "{rest:?}"
    );
    assert!(rest.contains(&"systemctl start crio"));
    assert!(
        rest.contains(
            &"crictl ps -a --name ^kube-scheduler-operator-container$ -q --state running"
        )
    );
    assert_eq!(
        rest.iter().filter(|l| l.starts_with("oc patch")).count(),
        4,
        "{rest:?}"
    );
    assert!(rest.contains(
        &r#"oc patch kubeapiserver cluster --type=merge -p {"spec":{"forceRedeploymentReason":"recovery-2026-11-25T12:00:00Z"}}"#
    ));
    // Finished: a new run starts a new recovery (not "already started"); a backup is allowed.
    assert!(!backup::recovery_in_progress(&root.join("var/recovery")).unwrap());
}

#[test]
fn a_stop_after_every_step_resumes_to_the_same_result() {
    if !require(
        "a_stop_after_every_step_resumes_to_the_same_result",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);

    // The uninterrupted run.
    let root = d.path().join("ref");
    let before = prepared(&root, &e);
    let n = node();
    drive(&root, &n, Mode::Start);
    let want_state = state(&root);
    assert_eq!(want_state, expected(&before));
    let want_cmds = commands(&n);

    let mut steps = vec!["os/rollback".to_owned()];
    for (stage, ss) in STAGES {
        steps.extend(ss.iter().map(|s| format!("{stage}/{s}")));
    }
    for (i, step) in steps.iter().enumerate() {
        let root = d.path().join(format!("k{i}"));
        prepared(&root, &e);
        let n = node();
        let say = Say {
            stop_after: Some(step.clone()),
            ..Say::default()
        };
        let mut first = recovery::run(&rcfg(&root, &n, Mode::Start), &say);
        if matches!(first, Ok(ref o) if !o.finished) {
            // The stop is past the reboot prompt.
            set_boot(&root, "boot-x");
            first = recovery::run(&rcfg(&root, &n, Mode::Resume), &say);
        }
        match first {
            Err(RecoverError::Stopped(s)) => assert_eq!(&s, step),
            other => panic!("{step}: {other:?}"),
        }
        drive(&root, &n, Mode::Resume);
        assert_eq!(state(&root), want_state, "{step}");
        assert_eq!(commands(&n), want_cmds, "after a stop at {step}");
    }
}

#[test]
fn os_rollback_decision_force_step_restart_and_a_corrupt_backup() {
    if !require(
        "os_rollback_decision_force_step_restart",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    let before = prepared(&root, &e);

    // Booted into the upgrade; the pre-upgrade deployment is pinned and the rollback target.
    let n = node();
    *n.status.lock().unwrap() =
        "* rhcos up.0\n  rhcos mid.0\n  rhcos pre.0 (rollback)\n    Pinned: yes\n".into();
    let o = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).unwrap();
    assert!(
        o.next.contains("rebooting into the pre-upgrade OS (pre.0)") && o.next.contains("--resume"),
        "{}",
        o.next
    );
    assert_eq!(
        commands(&n),
        [
            "ostree admin undeploy --sysroot=".to_owned()
                + &root.join("sysroot").display().to_string()
                + " 1",
            "rpm-ostree rollback -r".into()
        ]
    );
    // After the reboot the pinned deployment runs: no rollback again, stage 1 proceeds.
    *n.status.lock().unwrap() = "* rhcos pre.0\n    Pinned: yes\n".into();
    set_boot(&root, "boot-1");
    let o = recovery::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap();
    assert!(o.next.contains("systemctl reboot"));
    assert_eq!(
        commands(&n)
            .iter()
            .filter(|c| c.starts_with("rpm-ostree"))
            .count(),
        1
    );

    // --step after the reboot: stage 2 only, then stage 3.
    set_boot(&root, "boot-2");
    let mut c = rcfg(&root, &n, Mode::Resume);
    c.single_stage = true;
    let o = recovery::run(&c, &Say::default()).unwrap();
    assert!(!o.finished && o.next.contains("--step"), "{}", o.next);
    assert!(!commands(&n).iter().any(|l| l.starts_with("oc patch")));
    let o = recovery::run(&c, &Say::default()).unwrap();
    assert!(o.finished);
    assert_eq!(state(&root), expected(&before));

    // No pinned deployment at all: refused unless --force.
    let n2 = node();
    *n2.status.lock().unwrap() = "* rhcos up.0\n  rhcos other.0\n".into();
    let err = recovery::run(&rcfg(&root, &n2, Mode::Start), &Say::default()).unwrap_err();
    assert!(
        matches!(err, RecoverError::NotPinned(_)) && err.to_string().contains("--force"),
        "{err}"
    );
    let mut c = rcfg(&root, &n2, Mode::Start);
    c.force = true;
    let o = recovery::run(&c, &Say::default()).unwrap();
    assert!(o.next.contains("systemctl reboot"));

    // --restart clears the journal and runs stage 1 again.
    let n3 = node();
    let o = recovery::run(&rcfg(&root, &n3, Mode::Restart), &Say::default()).unwrap();
    assert!(o.next.contains("systemctl reboot"));
    assert!(commands(&n3).contains(&"crio wipe -f".to_owned()));

    // A corrupt backup: refused before any command runs.
    let etc = root.join("var/recovery/backup/etc.tar.zst");
    let mut bytes = std::fs::read(&etc).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&etc, bytes).unwrap();
    let n4 = node();
    let err = recovery::run(&rcfg(&root, &n4, Mode::Restart), &Say::default()).unwrap_err();
    assert!(matches!(err, RecoverError::Backup(_)), "{err}");
    assert!(
        err.to_string().contains("etc.tar.zst")
            && err.to_string().contains("cannot use this backup"),
        "{err}"
    );
    assert!(n4.runner.lines().is_empty(), "{:?}", n4.runner.lines());
}

// ---- Hostile and damaged backups, hostile host trees, corrupt journals (issue 14) ----

/// Rewrites the manifest (size and sha256 of every artifact as it now is) and the completion
/// marker, so a tampered backup passes the checksum check and only the content checks remain.
fn reseal(root: &Path) {
    let dir = root.join("var/recovery/backup");
    let mpath = dir.join("manifest.json");
    let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m.artifacts.retain(|a| dir.join(&a.name).exists());
    for a in &mut m.artifacts {
        let d = digest_file(&dir.join(&a.name)).unwrap();
        a.size = d.size;
        a.sha256 = d.sha256;
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let marker = Marker {
        manifest_sha256: digest_file(&mpath).unwrap().sha256,
    };
    std::fs::write(dir.join("COMPLETE"), serde_json::to_vec(&marker).unwrap()).unwrap();
}

/// A tar built by hand (names a safe writer refuses), with or without its end-of-archive
/// blocks. Each entry: name, type, link target, data.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])], terminated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if terminated {
        out.resize(out.len() + 1024, 0);
    }
    out
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn backup_file(root: &Path, name: &str) -> PathBuf {
    root.join("var/recovery/backup").join(name)
}

/// The name (relative to the backup) of the artifact whose name starts with `prefix`.
fn artifact_named(root: &Path, prefix: &str) -> String {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(backup_file(root, "manifest.json")).unwrap())
            .unwrap();
    m.artifacts
        .into_iter()
        .map(|a| a.name)
        .find(|n| n.starts_with(prefix))
        .unwrap()
}

/// Every path under `dir` (not following links): path → content, link target or "dir".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Item 2: every archive is validated in full before the first destructive step. Each backup
/// below has a manifest that matches its files; each is refused before any command runs, with
/// the host tree and the recovery directory (no journal) exactly as they were.
#[test]
fn a_bad_archive_is_refused_before_anything_is_changed() {
    if !require(
        "a_bad_archive_is_refused_before_anything_is_changed",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    type Tamper = Box<dyn Fn(&Path)>;
    let put_zst = |name: &'static str, bytes: Vec<u8>| -> Tamper {
        Box::new(move |root: &Path| {
            let name = artifact_named(root, name);
            std::fs::write(backup_file(root, &name), zst(&bytes)).unwrap();
        })
    };
    let cases: Vec<(&str, Tamper, &[&str])> = vec![
        (
            "etc holds a `..` member",
            put_zst(
                "etc.tar",
                raw_tar(
                    &[
                        ("hostname", F, "", b"node1\n"),
                        ("../escaped", F, "", b"pwned\n"),
                    ],
                    true,
                ),
            ),
            &["etc.tar.zst", "`..`"],
        ),
        (
            "etc holds an absolute member",
            put_zst(
                "etc.tar",
                raw_tar(&[("/tmp/talm-recover-evil", F, "", b"pwned\n")], true),
            ),
            &["etc.tar.zst", "absolute"],
        ),
        (
            "kubelet holds a link out of the host root",
            put_zst(
                "kubelet.tar",
                raw_tar(&[("out", L, "../../../../../../../..", b"")], true),
            ),
            &["kubelet.tar.zst", "escapes"],
        ),
        (
            "etc ends at an entry boundary, without its end-of-archive blocks",
            put_zst(
                "etc.tar",
                raw_tar(
                    &[
                        ("hostname", F, "", b"node1\n"),
                        ("kubernetes", D, "", b""),
                        ("kubernetes/kubelet.conf", F, "", b"kind: K\n"),
                    ],
                    false,
                ),
            ),
            &["etc.tar.zst", "truncated"],
        ),
        (
            "etc ends inside an entry's data",
            put_zst("etc.tar", {
                let mut t = raw_tar(&[("hostname", F, "", &[b'x'; 3000])], true);
                t.truncate(1500);
                t
            }),
            &["etc.tar.zst", "truncated"],
        ),
        (
            "etc's compressed stream is cut",
            Box::new(|root: &Path| {
                let p = backup_file(root, &artifact_named(root, "etc.tar"));
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            }),
            &["etc.tar.zst"],
        ),
        (
            "etc holds the directory itself, not its content",
            put_zst(
                "etc.tar",
                raw_tar(
                    &[("etc", D, "", b""), ("etc/hostname", F, "", b"node1\n")],
                    true,
                ),
            ),
            &["etc.tar.zst", "etc/"],
        ),
        (
            "local is empty while /usr/local is not",
            put_zst("local.tar", raw_tar(&[], true)),
            &["local.tar.zst", "empty", "/usr/local"],
        ),
        (
            "extras holds a file of /etc",
            put_zst(
                "extras.tar",
                raw_tar(&[("etc/passwd", F, "", b"root::0:0::/:/bin/sh\n")], true),
            ),
            &["extras.tar.zst", "/etc"],
        ),
        (
            "the static-pod resources hold a `..` member",
            Box::new(|root: &Path| {
                let name = artifact_named(root, "cluster/static_kuberesources");
                let t = raw_tar(&[("../../escaped", F, "", b"pwned\n")], true);
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, &t).unwrap();
                std::fs::write(backup_file(root, &name), gz.finish().unwrap()).unwrap();
            }),
            &["static_kuberesources", "`..`"],
        ),
        (
            "the manifest lists no /usr/local archive",
            Box::new(|root: &Path| {
                std::fs::remove_file(backup_file(root, &artifact_named(root, "local.tar")))
                    .unwrap();
            }),
            &["local"],
        ),
    ];
    for (i, (what, tamper, expect)) in cases.iter().enumerate() {
        let root = d.path().join(format!("c{i}"));
        prepared(&root, &e);
        tamper(&root);
        reseal(&root);
        let host_before = tree(&root);
        let n = node();
        let err = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).expect_err(what);
        let msg = err.to_string();
        for frag in *expect {
            assert!(msg.contains(frag), "{what}: {frag:?} not in: {msg}");
        }
        assert!(msg.contains("cannot use this backup"), "{what}: {msg}");
        assert!(commands(&n).is_empty(), "{what}: ran {:?}", commands(&n));
        assert_eq!(tree(&root), host_before, "{what}: the host changed");
        assert!(!Path::new("/tmp/talm-recover-evil").exists());
    }
    assert!(!d.path().join("escaped").exists());
}

/// Item 3, with links followed as the host follows them but never out of the host root. A
/// destination behind a link to an absolute path elsewhere on the machine resolves inside the
/// root, where there is nothing: refused. One whose link leads, inside the root, to a place that
/// is not a destination of its own (the root itself, through `..` clamped at the root; `/var`,
/// which holds `/var/lib/kubelet` and the recovery directory): refused too. Each before any
/// command runs, with the host tree as it was and nothing written or deleted where a link
/// points (the real trees were moved there).
#[test]
fn a_destination_behind_a_symlink_is_refused_before_anything_is_changed() {
    if !require(
        "a_destination_behind_a_symlink_is_refused_before_anything_is_changed",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    // (host path replaced by a link, its target (None: the moved tree, outside the host
    // root), the destination named in the error, what the error says)
    let cases: [(&str, Option<&str>, &str, &str); 6] = [
        ("etc", None, "/etc", "does not exist inside the host root"),
        (
            "usr",
            None,
            "/usr/local",
            "does not exist inside the host root",
        ),
        (
            "var/lib",
            None,
            "/var/lib/kubelet",
            "does not exist inside the host root",
        ),
        ("opt", None, "/", "does not exist inside the host root"),
        (
            "usr/local",
            Some("../../../../../../../.."),
            "/usr/local",
            "is the host root itself",
        ),
        ("etc", Some("/var"), "/etc", "holds /var/lib/kubelet"),
    ];
    for (i, (link, to, dest, says)) in cases.iter().enumerate() {
        let root = d.path().join(format!("c{i}"));
        prepared(&root, &e);
        let outside = d.path().join(format!("outside{i}"));
        std::fs::create_dir_all(&outside).unwrap();
        let moved = outside.join("moved");
        std::fs::rename(root.join(link), &moved).unwrap();
        let target = to.map_or(moved.clone(), PathBuf::from);
        std::os::unix::fs::symlink(&target, root.join(link)).unwrap();
        let outside_before = tree(&outside);
        let host_before = tree(&root);
        let n = node();
        let err = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).expect_err(link);
        let msg = err.to_string();
        assert!(
            matches!(err, RecoverError::Destination { .. })
                && msg.starts_with(&format!("destination {dest}: "))
                && msg.contains(says)
                && msg.contains("nothing was changed"),
            "{link}: {msg}"
        );
        if to.is_none() {
            // Named: the link, where it points, and what is missing of that inside the root.
            let link_path = root.join(link).display().to_string();
            let first = moved
                .strip_prefix("/")
                .unwrap()
                .components()
                .next()
                .unwrap();
            let inside = format!("{} is missing", root.join(first).display());
            assert!(
                msg.contains(&link_path)
                    && msg.contains(&moved.display().to_string())
                    && msg.contains(&inside),
                "{link}: {msg}"
            );
        }
        assert!(commands(&n).is_empty(), "{link}: ran {:?}", commands(&n));
        assert_eq!(
            tree(&outside),
            outside_before,
            "{link}: the link's target changed"
        );
        assert_eq!(tree(&root), host_before, "{link}: the host changed");
    }
}

/// RHCOS keeps `/usr/local` and `/opt` in `/var` (`/usr/local -> ../var/usrlocal`,
/// `/opt -> var/opt`). The backup archives the content the host sees there (not the link, not
/// an empty tree); the recovery restores it into `/var/usrlocal` and `/var/opt` through the
/// links, which stay links, with the same result as on a node without them.
#[test]
fn an_rhcos_tree_with_symlinked_usr_local_and_opt_is_backed_up_and_recovered() {
    if !require(
        "an_rhcos_tree_with_symlinked_usr_local_and_opt_is_backed_up_and_recovered",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    for dir in ["var/usrlocal", "var/opt", "usr"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("../var/usrlocal", root.join("usr/local")).unwrap();
    std::os::unix::fs::symlink("var/opt", root.join("opt")).unwrap();
    // The node's files are written through the links, into /var.
    let before = prepared(&root, &e);
    assert!(root.join("var/usrlocal/bin/helper").is_file());
    assert!(root.join("var/opt/extra/tool.sh").is_file());

    // What the backup holds: the content of /usr/local, and /opt's file under its host path.
    let entries = |prefix: &str| -> Vec<(String, tar::EntryType)> {
        let f = std::fs::File::open(backup_file(&root, &artifact_named(&root, prefix))).unwrap();
        let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let kind = e.header().entry_type();
                (e.path().unwrap().display().to_string(), kind)
            })
            .filter(|(_, kind)| *kind != tar::EntryType::XHeader)
            .collect()
    };
    assert_eq!(
        entries("local.tar"),
        [
            ("bin".to_owned(), tar::EntryType::Directory),
            ("bin/helper".to_owned(), tar::EntryType::Regular),
            ("bin/helper-link".to_owned(), tar::EntryType::Symlink),
        ]
    );
    assert_eq!(
        entries("extras.tar"),
        [("opt/extra/tool.sh".to_owned(), tar::EntryType::Regular)]
    );

    let n = node();
    let say = Say::default();
    let o = recovery::run(&rcfg(&root, &n, Mode::Start), &say).unwrap();
    assert!(o.next.contains("systemctl reboot"), "{}", o.next);
    let lines = say.lines.lock().unwrap().join("\n");
    let usrlocal = root.join("var/usrlocal").display().to_string();
    assert!(
        lines.contains(&format!(
            "restore-usr-local: 3 entries restored into /usr/local (resolved to {usrlocal}), 1 stale paths removed"
        )),
        "{lines}"
    );
    set_boot(&root, "boot-1");
    let o = recovery::run(&rcfg(&root, &n, Mode::Resume), &Say::default()).unwrap();
    assert!(o.finished, "{}", o.next);

    assert_eq!(state(&root), expected(&before));
    for (link, target) in [("usr/local", "../var/usrlocal"), ("opt", "var/opt")] {
        assert_eq!(
            std::fs::read_link(root.join(link)).unwrap(),
            Path::new(target),
            "{link} is still the same link"
        );
    }
    assert_eq!(
        std::fs::read(root.join("var/usrlocal/bin/helper")).unwrap(),
        b"#!/bin/sh\necho helper\n"
    );
    assert!(!root.join("var/usrlocal/bin/new").exists());
    assert_eq!(
        std::fs::read(root.join("var/opt/extra/tool.sh")).unwrap(),
        b"#!/bin/sh\necho extra\n"
    );
}

/// Item 4: `--restart` works whatever the journal holds; the bad journal is kept beside it.
/// Without `--restart`, an unreadable journal stops the run and says to use it.
#[test]
fn restart_moves_a_corrupt_journal_aside() {
    if !require(
        "restart_moves_a_corrupt_journal_aside",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    prepared(&root, &e);
    let rdir = root.join("var/recovery");
    let journal = rdir.join("recovery.journal");

    std::fs::write(&journal, b"{\"format\": 1, \"done\": [\"restore_fi").unwrap();
    let n = node();
    for mode in [Mode::Start, Mode::Resume] {
        let err = recovery::run(&rcfg(&root, &n, mode), &Say::default()).unwrap_err();
        assert!(
            matches!(err, RecoverError::Journal(_)) && err.to_string().contains("--restart"),
            "{err}"
        );
    }
    assert!(commands(&n).is_empty());

    let contents: [&[u8]; 3] = [b"{\"format\": 1, \"done\": [\"restore_fi", b"", b"[1, 2]"];
    for (i, bad) in contents.iter().enumerate() {
        std::fs::write(&journal, bad).unwrap();
        let n = node();
        let say = Say::default();
        let o = recovery::run(&rcfg(&root, &n, Mode::Restart), &say).unwrap();
        assert!(o.next.contains("systemctl reboot"), "{}", o.next);
        assert!(commands(&n).contains(&"crio wipe -f".to_owned()));
        let kept = if i == 0 {
            rdir.join("recovery.journal.bad")
        } else {
            rdir.join(format!("recovery.journal.bad.{i}"))
        };
        assert_eq!(std::fs::read(&kept).unwrap(), *bad, "{}", kept.display());
        let lines = say.lines.lock().unwrap().join("\n");
        assert!(lines.contains(&kept.display().to_string()), "{lines}");
        // The new journal is a good one.
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
        assert!(j["done"].as_array().is_some_and(|d| !d.is_empty()), "{j}");
    }

    // Not even a file: a directory in its place.
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    std::fs::write(journal.join("junk"), b"x").unwrap();
    let n = node();
    let o = recovery::run(&rcfg(&root, &n, Mode::Restart), &Say::default()).unwrap();
    assert!(o.next.contains("systemctl reboot"), "{}", o.next);
    assert!(journal.is_file());
    assert_eq!(
        std::fs::read(rdir.join("recovery.journal.bad.3/junk")).unwrap(),
        b"x"
    );
}

// ---- Risks of issue 14 §4: a fake host root, and an archive far below its recorded size ----

/// A host root other than `/` is a dry run unless `--force-host-root`: the node commands would
/// act on this machine, not on that root. It checks the backup, prints each command and each
/// destructive file step of every stage, and runs nothing and changes nothing: no command
/// reaches the runner (not even `ostree admin status`), and the whole tree under the root,
/// the recovery directory included (no journal), is byte for byte as it was.
#[test]
fn a_host_root_other_than_slash_is_a_dry_run_unless_forced() {
    if !require(
        "a_host_root_other_than_slash_is_a_dry_run_unless_forced",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let root = d.path().join("host");
    prepared(&root, &e);
    let host_before = tree(&root);
    for (what, dry_run) in [("a temp host root", false), ("--dry-run", true)] {
        let n = node();
        let mut c = rcfg(&root, &n, Mode::Start);
        c.force_host_root = dry_run;
        c.dry_run = dry_run;
        let say = Say::default();
        let o = recovery::run(&c, &say).unwrap();
        assert!(!o.finished, "{what}");
        assert!(
            o.next.contains("nothing was run or changed") && o.next.contains("--force-host-root"),
            "{what}: {}",
            o.next
        );
        assert!(
            n.runner.lines().is_empty(),
            "{what}: ran {:?}",
            n.runner.lines()
        );
        assert_eq!(tree(&root), host_before, "{what}: the host changed");
        let lines = say.lines.lock().unwrap().join("\n");
        let why = if dry_run {
            "dry run (--dry-run given)".to_owned()
        } else {
            format!("dry run (--host-root {} is not /", root.display())
        };
        let kubeconfig = "KUBECONFIG=/etc/kubernetes/recovery.kubeconfig";
        for want in [
            why,
            "rpm-ostree rollback -r".into(),
            "would run: systemctl stop kubelet".into(),
            "would run: crictl rmp -fa".into(),
            "would run: crio wipe -f".into(),
            format!(
                "restore-etc: would restore {}",
                root.join("var/recovery/backup/etc.tar.zst").display()
            ),
            "except the 3 /etc exclusions".into(),
            "restore-usr-local: would restore".into(),
            "restore-extras: would restore".into(),
            "nothing is deleted".into(),
            "would stop here and ask for a reboot".into(),
            "restore-kubelet: would restore".into(),
            "would run: /usr/local/bin/cluster-restore.sh /var/recovery/backup/cluster".into(),
            "would wait up to 5s for a new running etcd container".into(),
            format!("would run: {kubeconfig} oc patch etcd cluster --type=merge"),
            format!("would run: {kubeconfig} oc get co"),
        ] {
            assert!(lines.contains(&want), "{what}: {want:?} not in:\n{lines}");
        }
    }
    // Forced, the same root is recovered (the fake node receives the commands).
    let n = node();
    let o = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).unwrap();
    assert!(o.next.contains("systemctl reboot"), "{}", o.next);
    assert!(commands(&n).contains(&"crio wipe -f".to_owned()));
    assert_ne!(tree(&root), host_before);
}

/// The sanity floor: the backup records each mirrored tree's entry count and data size, and a
/// restore refuses, in the preflight, an archive with fewer than half those entries or bytes,
/// even when the manifest's checksums match it (a tampered, resealed backup), naming the tree
/// and the numbers; `--force` restores it, saying so. A manifest without the counts (an older
/// agent's) is still read, with no floor, and the preflight says so.
#[test]
fn an_archive_far_below_its_recorded_size_is_refused_unless_forced() {
    if !require(
        "an_archive_far_below_its_recorded_size_is_refused_unless_forced",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    use tar::EntryType::Regular as F;
    let d = tempfile::tempdir().unwrap();
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let small = |root: &Path| {
        let name = artifact_named(root, "etc.tar");
        let bytes = raw_tar(&[("hostname", F, "", b"node1\n")], true);
        std::fs::write(backup_file(root, &name), zst(&bytes)).unwrap();
    };
    let read_manifest = |root: &Path| -> Manifest {
        serde_json::from_slice(&std::fs::read(backup_file(root, "manifest.json")).unwrap()).unwrap()
    };

    let root = d.path().join("host");
    prepared(&root, &e);
    let m = read_manifest(&root);
    let dirs: Vec<&str> = m.trees.iter().map(|t| t.dir.as_str()).collect();
    assert_eq!(dirs, ["/etc", "/usr/local", "/var/lib/kubelet"]);
    let etc = m.tree("/etc").unwrap().clone();
    assert_eq!(etc.archive, "etc.tar.zst");
    assert!(etc.entries >= 10 && etc.bytes >= 1000, "{etc:?}");
    // The untampered backup passes the floor (the counts are the archive's own).
    let n = node();
    let say = Say::default();
    let mut c = rcfg(&root, &n, Mode::Start);
    c.dry_run = true;
    recovery::run(&c, &say).unwrap();

    small(&root);
    reseal(&root);
    let host_before = tree(&root);
    let n = node();
    let err = recovery::run(&rcfg(&root, &n, Mode::Start), &Say::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RecoverError::BelowFloor { .. }), "{msg}");
    for want in [
        "backup archive etc.tar.zst holds 1 entries and 6 bytes of file data".to_owned(),
        format!(
            "the backup recorded {} entries and {} bytes for /etc",
            etc.entries, etc.bytes
        ),
        "delete most of /etc".into(),
        "--force".into(),
        "nothing was changed".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} not in: {msg}");
    }
    assert!(commands(&n).is_empty(), "ran {:?}", commands(&n));
    assert_eq!(tree(&root), host_before, "the host changed");

    // --force: restored anyway, and said.
    let n = node();
    let say = Say::default();
    let mut c = rcfg(&root, &n, Mode::Start);
    c.force = true;
    let o = recovery::run(&c, &say).unwrap();
    assert!(o.next.contains("systemctl reboot"), "{}", o.next);
    let lines = say.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("--force: backup archive etc.tar.zst holds 1 entries")
            && lines.contains("restoring it anyway"),
        "{lines}"
    );
    assert_eq!(
        std::fs::read(root.join("etc/hostname")).unwrap(),
        b"node1\n"
    );
    assert!(!root.join("etc/kubernetes/kubelet.conf").exists());

    // An older agent's manifest (no counts): read, no floor, and said.
    let root = d.path().join("old");
    prepared(&root, &e);
    small(&root);
    let mut m = read_manifest(&root);
    m.trees.clear();
    std::fs::write(
        backup_file(&root, "manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    reseal(&root);
    let text = std::fs::read_to_string(backup_file(&root, "manifest.json")).unwrap();
    assert!(!text.contains("\"trees\""), "{text}");
    let n = node();
    let say = Say::default();
    let o = recovery::run(&rcfg(&root, &n, Mode::Start), &say).unwrap();
    assert!(o.next.contains("systemctl reboot"), "{}", o.next);
    let lines = say.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("records no entry counts (taken by an older talm-agent): no sanity floor applies to the restores of /usr/local, /etc, /var/lib/kubelet"),
        "{lines}"
    );
}
