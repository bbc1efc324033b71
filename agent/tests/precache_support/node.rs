//! A fake node for `talm-agent precache run` tests: a host root (registries.conf, certs.d, the
//! pull secret, containers-storage dirs) and a state dir, plus helpers to run the binary and
//! read what it left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Registry;

/// A fake node: a host root with registries.conf, certs.d, the pull secret and storage dirs,
/// plus the agent's state dir.
pub struct Node {
    /// The host root.
    pub root: tempfile::TempDir,
    /// The agent's state dir.
    pub state: tempfile::TempDir,
}

impl Node {
    /// A node that reaches `reg` directly (insecure = plain HTTP when the registry has no TLS).
    pub fn new(reg: &Registry) -> Node {
        let n = Node::bare();
        let insecure = !reg.is_tls();
        n.write(
            "etc/containers/registries.conf",
            &format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = {insecure}\n",
                reg.host
            ),
        );
        n.trust(reg);
        n
    }

    pub fn bare() -> Node {
        let n = Node {
            root: tempfile::Builder::new()
                .prefix("talm-node-")
                .tempdir()
                .unwrap(),
            state: tempfile::Builder::new()
                .prefix("talm-state-")
                .tempdir()
                .unwrap(),
        };
        std::fs::create_dir_all(n.root.path().join("var/lib/containers/storage")).unwrap();
        std::fs::create_dir_all(n.root.path().join("run/containers/storage")).unwrap();
        n
    }

    /// certs.d and the pull secret for `reg`.
    pub fn trust(&self, reg: &Registry) {
        if let Some(ca) = &reg.ca_pem {
            let pem = std::fs::read_to_string(ca).unwrap();
            self.write(&format!("etc/containers/certs.d/{}/ca.crt", reg.host), &pem);
        }
        let auth = std::fs::read_to_string(&reg.auth_file).unwrap();
        self.write("var/lib/kubelet/config.json", &auth);
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn cache(&self) -> PathBuf {
        self.state.path().join("precache/oci")
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.cache()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn partial(&self, digest: &str) -> PathBuf {
        let mut p = self.blob(digest).into_os_string();
        p.push(".partial");
        PathBuf::from(p)
    }

    pub fn spec(&self, yaml: &str) -> PathBuf {
        let p = self.state.path().join("spec.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn command(&self, spec: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.arg("precache")
            .arg("run")
            .arg("--spec")
            .arg(spec)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--host-root")
            .arg(self.root.path())
            .arg("--storage-driver")
            .arg("vfs")
            .args(extra)
            .env("TALM_LOG_LEVEL", "info")
            .env_remove("TALM_AGENT_STATE_DIR")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, spec: &Path, extra: &[&str]) -> Output {
        self.command(spec, extra).output().unwrap()
    }

    pub fn status(&self) -> Value {
        let out = Command::new(agent_bin())
            .args(["precache", "status", "-o", "json", "--state-dir"])
            .arg(self.state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status_file(&self) -> Option<Value> {
        let b = std::fs::read(self.state.path().join("precache/status.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn storage(&self, name: &str) -> String {
        format!(
            "containers-storage:[vfs@{}+{}]{name}",
            self.root
                .path()
                .join("var/lib/containers/storage")
                .display(),
            self.root.path().join("run/containers/storage").display()
        )
    }

    /// Whether containers-storage has `name` (`skopeo inspect --raw`).
    pub fn imported(&self, name: &str) -> bool {
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(self.storage(name))
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits (up to `limit`, a guard against a hang, not a speed check) for `child` to exit.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent binary under test. `option_env!`: this support module is also compiled into the
/// hub's end-to-end tests, which do not use [`Node`] and where Cargo sets no such variable.
fn agent_bin() -> &'static str {
    match option_env!("CARGO_BIN_EXE_talm-agent") {
        Some(path) => path,
        None => panic!("CARGO_BIN_EXE_talm-agent is unset: Node runs only in talm-agent's tests"),
    }
}
