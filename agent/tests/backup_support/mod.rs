//! Shared helpers for the backup and recovery tests: requirement checks (root, tools) that skip
//! with a printed reason, a real etcd on 127.0.0.1 (plain or with client-certificate TLS made
//! with rcgen), a fake node tree under a temp host root, and a real ostree sysroot.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// A test that includes both support modules gets two copies of this one; that is fine.
#[allow(clippy::duplicate_mod)]
#[path = "../tls_support/mod.rs"]
mod tls_support;

use talm_agent::backup::{BackupConfig, EtcdAccess, Host, Progress, Step};
use talm_agent::host::archive::Compression;
use talm_agent::host::disk::{Disk, FsStats, RealDisk};
use talm_agent::host::exec::{Background, Cmd, CommandRunner, RealRunner};
use talm_agent::host::root::HostRoot;
use tls_support::TestCa;

/// Every file under `dir` (depth first; unreadable directories are skipped).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether the test can run: root and these programs. Prints why not.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if uid != 0 {
        eprintln!("SKIP {test}: needs root (file owners, xattrs, mounts)");
        return false;
    }
    let r = RealRunner::new();
    for t in tools {
        if !r.available(t) {
            eprintln!(
                "SKIP {test}: `{t}` is not installed (apt-get install -y --no-install-recommends etcd-server etcd-client ostree e2fsprogs attr)"
            );
            return false;
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS material for etcd, written to a directory.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Generates a CA, a server certificate (127.0.0.1, localhost) and a client certificate.
pub fn make_tls(dir: &Path) -> Tls {
    use rcgen::ExtendedKeyUsagePurpose;
    std::fs::create_dir_all(dir).unwrap();
    let ca = TestCa::new("talm test etcd CA");
    let (sc, sk) = ca.loopback_leaf(
        "etcd-server",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (cc, ck) = ca.loopback_leaf("etcd-peer-node", vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let w = |n: &str, s: &str| {
        let p = dir.join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    Tls {
        ca: w("ca.crt", &ca.cert_pem),
        server_cert: w("server.crt", &sc),
        server_key: w("server.key", &sk),
        client_cert: w("client.crt", &cc),
        client_key: w("client.key", &ck),
    }
}

/// A running etcd member, killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub tls: Option<Tls>,
    proc: Background,
}

impl Etcd {
    /// Starts etcd on free loopback ports with `data_dir` (which may hold a restored member).
    pub fn start(
        name: &str,
        data_dir: &Path,
        log_dir: &Path,
        tls: Option<Tls>,
        peer_url: Option<String>,
    ) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", free_port());
        let peer_url = peer_url.unwrap_or_else(|| format!("http://127.0.0.1:{}", free_port()));
        let mut cmd = Cmd::new("etcd")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(["--log-level", "warn"])
            .timeout(None);
        if let Some(t) = &tls {
            cmd = cmd
                .arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        std::fs::create_dir_all(log_dir).unwrap();
        let proc = RealRunner::new()
            .spawn_background(&cmd, &log_dir.join(format!("etcd-{name}.log")))
            .unwrap();
        let mut e = Etcd {
            name: name.to_owned(),
            client_url,
            peer_url,
            data_dir: data_dir.to_owned(),
            tls,
            proc,
        };
        let t0 = Instant::now();
        loop {
            if e.ctl(&["endpoint", "health"]).is_ok() {
                break;
            }
            assert!(!e.proc.exited(), "etcd exited; see {}", log_dir.display());
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// Runs etcdctl against this member.
    pub fn ctl(&self, args: &[&str]) -> Result<String, talm_agent::host::exec::ExecError> {
        let mut cmd = Cmd::new("etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            &self.client_url,
            "--command-timeout",
            "5s",
        ]);
        if let Some(t) = &self.tls {
            cmd = cmd
                .arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        let out = RealRunner::new().run(
            &cmd.args(args.iter().copied())
                .timeout(Some(Duration::from_secs(10))),
        )?;
        Ok(out.stdout_text())
    }

    /// The access a backup uses (absolute paths: the tests' host root does not hold them, so
    /// they are given relative to `/`, which `HostRoot::join` keeps under the root... hence the
    /// files are copied into the host root by [`Etcd::access_in`]).
    pub fn access_in(&self, root: &Path) -> EtcdAccess {
        match &self.tls {
            None => EtcdAccess {
                endpoints: vec![self.client_url.clone()],
                ca: None,
                cert: None,
                key: None,
            },
            Some(t) => {
                let dir = root.join("etc/kubernetes/static-pod-resources/etcd-certs/test");
                std::fs::create_dir_all(&dir).unwrap();
                for (src, n) in [
                    (&t.ca, "ca.crt"),
                    (&t.client_cert, "client.crt"),
                    (&t.client_key, "client.key"),
                ] {
                    std::fs::copy(src, dir.join(n)).unwrap();
                }
                let host = |n: &str| {
                    Some(
                        PathBuf::from("/etc/kubernetes/static-pod-resources/etcd-certs/test")
                            .join(n),
                    )
                };
                EtcdAccess {
                    endpoints: vec![self.client_url.clone()],
                    ca: host("ca.crt"),
                    cert: host("client.crt"),
                    key: host("client.key"),
                }
            }
        }
    }
}

/// A disk that reports plenty of space whatever the filesystem holds (to reach a full disk
/// during the backup rather than at the check) and answers mount-point questions for real.
#[derive(Debug)]
pub struct RoomyDisk;

impl Disk for RoomyDisk {
    fn stats(&self, _path: &Path) -> std::io::Result<FsStats> {
        Ok(FsStats {
            size: 1 << 40,
            available: 1 << 40,
            free: 1 << 40,
        })
    }
    fn is_mount_point(&self, path: &Path) -> std::io::Result<bool> {
        RealDisk.is_mount_point(path)
    }
}

/// Writes `data` at `root/<host path>`, creating parents.
pub fn put(root: &Path, host_path: &str, data: &[u8]) {
    let p = root.join(host_path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A small node: /etc (with tmpfiles.d exclusions, kubernetes/manifests, static-pod revisions,
/// the MCD current config), /usr/local, /var/lib/kubelet, an extra MachineConfig file in /opt,
/// and an empty /var/recovery.
pub fn make_node(root: &Path) {
    put(root, "/etc/hostname", b"node1\n");
    put(
        root,
        "/etc/tmpfiles.d/x.conf",
        b"d /etc/scratch 0755 root root -\n",
    );
    put(root, "/etc/scratch/tmp", b"volatile\n");
    put(
        root,
        "/etc/kubernetes/manifests/kube-apiserver-pod.yaml",
        b"pod: 1\n",
    );
    put(
        root,
        "/etc/kubernetes/kubelet.conf",
        b"kind: KubeletConfiguration\n",
    );
    put(root, "/etc/.updated", b"x\n");
    for (d, f) in [
        ("kube-apiserver-pod-3", "old"),
        ("kube-apiserver-pod-12", "new"),
        ("kube-controller-manager-pod-5", "kcm"),
        ("kube-scheduler-pod-4", "ks"),
        ("etcd-pod-2", "etcd"),
    ] {
        put(
            root,
            &format!("/etc/kubernetes/static-pod-resources/{d}/configmaps/c"),
            f.as_bytes(),
        );
    }
    put(
        root,
        "/etc/kubernetes/static-pod-resources/bin/tool",
        &[0u8; 1000],
    );
    put(
        root,
        "/etc/machine-config-daemon/currentconfig",
        br#"{"spec":{"config":{"storage":{"files":[{"path":"/etc/kubernetes/kubelet.conf"},{"path":"/opt/extra/tool.sh"},{"path":"/var/missing"}]}}}}"#,
    );
    put(root, "/opt/extra/tool.sh", b"#!/bin/sh\necho extra\n");
    put(root, "/usr/local/bin/helper", b"#!/bin/sh\necho helper\n");
    std::os::unix::fs::symlink("helper", root.join("usr/local/bin/helper-link")).unwrap();
    put(root, "/var/lib/kubelet/config.json", b"{}\n");
    put(
        root,
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        b"PEM\n",
    );
    std::fs::create_dir_all(root.join("var/recovery")).unwrap();
}

/// A backup configuration for a test host.
pub fn config(
    root: &Path,
    runner: Arc<dyn CommandRunner>,
    disk: Arc<dyn Disk>,
    etcd: EtcdAccess,
) -> BackupConfig {
    BackupConfig {
        host: Host {
            root: HostRoot::new(root),
            runner,
            disk,
        },
        dir: PathBuf::from("/var/recovery"),
        margin: 0,
        etcd,
        compression: Compression::Zstd3,
        deadline: None,
        timestamp: "2026-11-25_120000".into(),
    }
}

/// Progress that records steps and warnings, and can stop after a given step.
#[derive(Debug, Default)]
pub struct TestProgress {
    pub stop_after: Option<Step>,
    pub steps: std::sync::Mutex<Vec<Step>>,
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Progress for TestProgress {
    fn step(&self, step: Step) {
        self.steps.lock().unwrap().push(step);
    }
    fn warn(&self, msg: &str) {
        self.warnings.lock().unwrap().push(msg.to_owned());
    }
    fn proceed(&self, after: Step) -> bool {
        self.stop_after != Some(after)
    }
}

/// A real ostree sysroot at `root/sysroot` with `n` deployments of an OS named `testos`.
pub fn make_sysroot(root: &Path, n: usize) {
    let r = RealRunner::new();
    let sysroot = root.join("sysroot");
    std::fs::create_dir_all(&sysroot).unwrap();
    let tree = root.join("ostree-tree");
    put(&tree, "/usr/lib/modules/5.14.0/vmlinuz", b"kernel");
    put(&tree, "/usr/lib/modules/5.14.0/initramfs.img", b"initramfs");
    put(
        &tree,
        "/usr/etc/os-release",
        b"ID=testos\nNAME=TestOS\nVERSION_ID=1\n",
    );
    r.run(&Cmd::new("ostree").args(["admin", "init-fs"]).arg(&sysroot))
        .unwrap();
    let mut sr = std::ffi::OsString::from("--sysroot=");
    sr.push(&sysroot);
    r.run(
        &Cmd::new("ostree")
            .args(["admin", "os-init"])
            .arg(&sr)
            .arg("testos"),
    )
    .unwrap();
    let mut repo = std::ffi::OsString::from("--repo=");
    repo.push(sysroot.join("ostree/repo"));
    for v in 0..n {
        put(&tree, "/usr/share/version", format!("{v}").as_bytes());
        r.run(
            &Cmd::new("ostree")
                .arg(&repo)
                .args([
                    "commit",
                    "-b",
                    "testos/x86_64/stable",
                    "-s",
                    &format!("v{v}"),
                ])
                .arg(format!("--tree=dir={}", tree.display())),
        )
        .unwrap();
        r.run(
            &Cmd::new("ostree")
                .args(["admin", "deploy", "--os=testos", "--retain"])
                .arg(&sr)
                .arg("testos/x86_64/stable"),
        )
        .unwrap();
    }
}

/// Clears the immutable flag ostree sets on deployment directories, so the temp dir can go.
pub fn unlock_sysroot(root: &Path) {
    let _ = RealRunner::new().run(
        &Cmd::new("chattr")
            .args(["-R", "-i"])
            .arg(root.join("sysroot")),
    );
}
