//! `talm-hub gateway` and `talm-hub agents token|revoke` as processes: the gateway generates its
//! PKI under --state-dir and serves /healthz and /agents; `agents token` prints a bootstrap token
//! that lands (hashed) in the file store; `agents revoke` removes pending tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_talm-hub"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn agents_token_and_revoke_use_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = hub()
        .args(["agents", "token", "sno-1", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let (id, secret) = token.trim().split_once('.').unwrap();
    assert_eq!((id.len(), secret.len()), (12, 32));
    let stored =
        std::fs::read_to_string(dir.path().join(format!("enrollment/tokens/{id}.json"))).unwrap();
    assert!(stored.contains("\"cluster\": \"sno-1\"") && !stored.contains(secret));
    let out = hub()
        .args(["agents", "revoke", "sno-1", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !dir.path()
            .join(format!("enrollment/tokens/{id}.json"))
            .exists()
    );
    // Bad cluster names are refused.
    let out = hub()
        .args(["agents", "token", "Bad_Name", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn gateway_generates_its_pki_and_serves_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let mut child = hub()
        .args(["gateway", "--listen", &format!("127.0.0.1:{grpc}")])
        .args([
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--state-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let health = loop {
        if let Some(r) = get(admin, "/healthz") {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );
    let agents = get(admin, "/agents").unwrap();
    assert!(agents.ends_with("[]"), "{agents}");
    for f in [
        "hub-ca.crt",
        "server.crt",
        "server.key",
        "agent-ca.crt",
        "agent-ca.key",
    ] {
        assert!(dir.path().join("pki").join(f).exists(), "{f}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
