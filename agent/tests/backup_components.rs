//! The backup's host seams against real components: Debian's etcd on 127.0.0.1 (plain and with
//! client-certificate TLS) snapshotted natively and restored with `etcdctl snapshot restore`;
//! a real ostree sysroot in a temp dir, pinned and undeployed through the CLI, its status
//! parsed from the real output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;

use std::time::Duration;

use backup_support::{Etcd, make_sysroot, make_tls, require, unlock_sysroot};
use talm_agent::host::etcd::{EtcdConfig, EtcdError, snapshot_to_file, verify_snapshot_file};
use talm_agent::host::exec::{Cmd, CommandRunner, RealRunner};
use talm_agent::host::ostree::{Ostree, RollbackPlan};

fn config(e: &Etcd, with_client_cert: bool) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![e.client_url.clone()],
        ca: e.tls.as_ref().map(|t| t.ca.clone()),
        client_cert: e
            .tls
            .as_ref()
            .filter(|_| with_client_cert)
            .map(|t| t.client_cert.clone()),
        client_key: e
            .tls
            .as_ref()
            .filter(|_| with_client_cert)
            .map(|t| t.client_key.clone()),
        connect_timeout: Duration::from_secs(5),
    }
}

/// Snapshot natively, verify, restore with etcdctl into a new data dir, start etcd on it, and
/// read the keys back.
fn snapshot_restore_round_trip(tls: bool) {
    let d = tempfile::tempdir().unwrap();
    let tls = tls.then(|| make_tls(&d.path().join("tls")));
    let e = Etcd::start("m1", &d.path().join("data"), d.path(), tls.clone(), None);
    for i in 0..200 {
        e.ctl(&["put", &format!("/registry/k{i:03}"), &format!("value-{i}")])
            .unwrap();
    }
    let snap = d.path().join("snapshot.db");
    let info =
        snapshot_to_file(&config(&e, true), &snap, Duration::from_secs(30), &|_| {}).unwrap();
    assert_eq!(info.size, std::fs::metadata(&snap).unwrap().len());
    assert_eq!(info.size % 512, 32, "database plus etcd's sha256");
    assert!(
        info.revision.is_none_or(|r| r >= 200),
        "revision {:?}",
        info.revision
    );
    verify_snapshot_file(&snap).unwrap();

    // etcd's own tool accepts it (it checks the trailing hash too) and restores a member.
    let restored = d.path().join("restored");
    let peer = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    RealRunner::new()
        .run(
            &Cmd::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(&snap)
                .arg("--data-dir")
                .arg(&restored)
                .args([
                    "--name",
                    "m2",
                    "--initial-cluster",
                    &format!("m2={peer}"),
                    "--initial-advertise-peer-urls",
                    &peer,
                ]),
        )
        .unwrap();
    drop(e);
    let e2 = Etcd::start("m2", &restored, d.path(), tls, Some(peer));
    assert_eq!(
        e2.ctl(&["get", "/registry/k123", "--print-value-only"])
            .unwrap()
            .trim(),
        "value-123"
    );
    let keys = e2
        .ctl(&["get", "/registry/", "--prefix", "--keys-only"])
        .unwrap();
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 200);
}

#[test]
fn etcd_snapshot_plain_restores_with_etcdctl() {
    if !require(
        "etcd_snapshot_plain_restores_with_etcdctl",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    snapshot_restore_round_trip(false);
}

#[test]
fn etcd_snapshot_with_client_certificate_tls() {
    if !require(
        "etcd_snapshot_with_client_certificate_tls",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    snapshot_restore_round_trip(true);
}

#[test]
fn etcd_without_client_certificate_is_refused_and_corruption_is_detected() {
    if !require(
        "etcd_without_client_certificate_is_refused",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tls = make_tls(&d.path().join("tls"));
    let e = Etcd::start("m1", &d.path().join("data"), d.path(), Some(tls), None);
    e.ctl(&["put", "k", "v"]).unwrap();
    let snap = d.path().join("s.db");
    let err =
        snapshot_to_file(&config(&e, false), &snap, Duration::from_secs(10), &|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            EtcdError::Connect { .. } | EtcdError::Rpc(_) | EtcdError::Deadline
        ),
        "{err}"
    );

    // Also callable from inside an async runtime (the hub task runner's context).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        snapshot_to_file(&config(&e, true), &snap, Duration::from_secs(10), &|_| {}).unwrap();
    });
    verify_snapshot_file(&snap).unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    assert!(matches!(
        verify_snapshot_file(&snap),
        Err(EtcdError::Integrity(_))
    ));
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&snap, &bytes).unwrap();
    assert!(matches!(
        verify_snapshot_file(&snap),
        Err(EtcdError::Integrity(_))
    ));

    let unreachable = EtcdConfig {
        endpoints: vec!["http://127.0.0.1:1".into()],
        ca: None,
        client_cert: None,
        client_key: None,
        connect_timeout: Duration::from_secs(2),
    };
    let err = snapshot_to_file(&unreachable, &snap, Duration::from_secs(5), &|_| {}).unwrap_err();
    assert!(matches!(err, EtcdError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[test]
fn ostree_real_sysroot_pin_undeploy_and_status() {
    if !require(
        "ostree_real_sysroot_pin_undeploy_and_status",
        &["ostree", "chattr"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    make_sysroot(d.path(), 3);
    let runner = RealRunner::new();
    let ostree = Ostree::new(&runner, d.path().join("sysroot"));
    let s = ostree.status().unwrap();
    assert_eq!(s.deployments.len(), 3, "{s:?}");
    assert!(!s.is_booted());
    assert!(
        s.deployments
            .iter()
            .all(|d| d.osname == "testos" && !d.pinned)
    );
    // The newest is the default (index 0); pin the oldest, as if it were the pre-upgrade one.
    ostree.pin(2).unwrap();
    let s = ostree.status().unwrap();
    assert!(s.deployments[2].pinned);
    let pinned_id = s.deployments[2].id.clone();
    assert_eq!(
        s.rollback_plan(),
        RollbackPlan::Rollback {
            undeploy: vec![1],
            target: pinned_id.clone()
        }
    );
    // The backup's standby removal: undeploy everything but the current one, then pin it.
    for i in s.standbys_to_undeploy() {
        ostree.undeploy(i).unwrap();
    }
    let s = ostree.status().unwrap();
    assert_eq!(s.deployments.len(), 1);
    ostree.pin(0).unwrap();
    let s = ostree.status().unwrap();
    assert!(s.deployments[0].pinned);
    assert_eq!(s.rollback_plan(), RollbackPlan::NoneNeeded);
    // Errors from the CLI are typed and carry its message.
    let err = ostree.undeploy(5).unwrap_err().to_string();
    assert!(err.contains("Out of range deployment index"), "{err}");
    unlock_sysroot(d.path());
}
