//! The `talm-agent` binary: `backup` with flags and env fallbacks on a temp host root (real
//! etcd, real ostree sysroot), plain log lines when not on a terminal; `recover` refusing a
//! missing backup with a message that says what to do, before running any node command; a real
//! SIGKILL in the middle of a backup leaves the previous one intact and the next run completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;

use std::time::Duration;

use backup_support::{Etcd, make_node, make_sysroot, put, require, unlock_sysroot};
use talm_agent::backup::manifest::verify;
use talm_agent::host::exec::{Cmd, CommandRunner, RealRunner};

const BIN: &str = env!("CARGO_BIN_EXE_talm-agent");

#[test]
fn backup_command_on_a_host_root_then_recover_refuses_without_a_backup() {
    if !require(
        "backup_command_on_a_host_root",
        &["etcd", "etcdctl", "ostree", "chattr"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    make_sysroot(&root, 2);
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    e.ctl(&["put", "k", "v"]).unwrap();
    let out = RealRunner::new()
        .output(
            &Cmd::new(BIN)
                .args([
                    "backup",
                    "--space-margin-gib",
                    "0",
                    "--etcd-endpoints",
                    &e.client_url,
                ])
                .env("TALM_HOST_ROOT", root.display().to_string())
                .env("TALM_BACKUP_COMPRESSION", "gzip")
                .env("TALM_LOG_LEVEL", "info"),
        )
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.success(), "{log}");
    assert!(
        log.contains("backup step") && log.contains("backup complete"),
        "{log}"
    );
    assert!(log.contains("not its own mount"), "{log}");
    let m = verify(&root.join("var/recovery/backup")).unwrap();
    assert!(m.artifacts.iter().any(|a| a.name == "etc.tar.gz"), "{m:?}");

    let empty = d.path().join("empty");
    std::fs::create_dir_all(empty.join("var/recovery")).unwrap();
    let out = RealRunner::new()
        .output(&Cmd::new(BIN).args(["recover", "--host-root"]).arg(&empty))
        .unwrap();
    assert_eq!(out.code, Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("the backup is incomplete") && err.contains("talm-agent backup"),
        "{err}"
    );

    let out = RealRunner::new()
        .output(&Cmd::new(BIN).args(["recover", "--resume", "--restart"]))
        .unwrap();
    assert_eq!(out.code, Some(2), "clap rejects conflicting flags");
    unlock_sysroot(&root);
}

#[test]
fn sigkill_during_a_backup_keeps_the_previous_one_and_the_next_run_completes() {
    if !require(
        "sigkill_during_a_backup",
        &["etcd", "etcdctl", "ostree", "chattr"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    make_node(&root);
    make_sysroot(&root, 1);
    let e = Etcd::start("m1", &d.path().join("etcd"), d.path(), None, None);
    let backup = || {
        Cmd::new(BIN)
            .args([
                "backup",
                "--space-margin-gib",
                "0",
                "--etcd-endpoints",
                &e.client_url,
            ])
            .arg("--host-root")
            .arg(&root)
            .env("TALM_LOG_LEVEL", "warn")
    };
    assert!(RealRunner::new().output(&backup()).unwrap().success());
    let first = verify(&root.join("var/recovery/backup")).unwrap();

    // Enough data that the kill lands mid-way.
    let mut x = 88172645463325252u64;
    let noise: Vec<u8> = (0..96 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    put(&root, "/var/lib/kubelet/big.bin", &noise);
    for delay in [50u64, 300, 900] {
        let mut child = RealRunner::new()
            .spawn_background(&backup().timeout(None), &d.path().join("killed.log"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.exited();
        drop(child); // SIGKILL
        let staging = root.join("var/recovery/backup.new").exists();
        eprintln!("SIGKILL after {delay} ms: finished={finished}, partial backup left={staging}");
        // Whatever the kill interrupted, the current backup is complete and intact: the first
        // one, or (only if the kill came after the swap) the new one.
        let now = verify(&root.join("var/recovery/backup"));
        assert!(
            now.is_ok(),
            "killed after {delay} ms (finished: {finished}): {now:?}"
        );
    }
    let out = RealRunner::new().output(&backup()).unwrap();
    assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!root.join("var/recovery/backup.new").exists());
    let m = verify(&root.join("var/recovery/backup")).unwrap();
    assert_ne!(m.artifacts, first.artifacts);
    unlock_sysroot(&root);
}
