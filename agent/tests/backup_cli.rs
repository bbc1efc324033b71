//! The `talm-agent` binary: `backup` with flags and env fallbacks on a temp host root (real
//! etcd, real ostree sysroot), plain log lines when not on a terminal; `recover` refusing a
//! missing backup with a message that says what to do, before running any node command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;

use backup_support::{Etcd, make_node, make_sysroot, require, unlock_sysroot};
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
                .env("RUST_LOG", "info"),
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
