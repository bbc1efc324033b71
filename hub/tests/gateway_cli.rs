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

/// A GET with timeouts (None when the server does not answer within 10 s).
fn get_within(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A connection to the agent port that finishes the TLS handshake without a client
/// certificate and then sends nothing (None if the handshake does not finish in 5 s).
fn idle_tls(port: u16, ca: &[u8]) -> Option<Tls> {
    let cfg = talm_shared::tls::client_config(ca, None).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(rustls::StreamOwned::new(conn, tcp))
}

/// Whether the server closes `s` within `limit` (reads until end of stream or an error).
fn closed_by_server(s: &mut Tls, limit: Duration) -> bool {
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Starts `talm-hub gateway` under `ulimit -n <nofile>` with `env`; waits for /healthz.
fn gateway(
    dir: &std::path::Path,
    nofile: u32,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, u16) {
    let (grpc, admin) = (free_port(), free_port());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_talm-hub"))
        .args(["gateway", "--listen", &format!("127.0.0.1:{grpc}")])
        .args([
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--state-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    while get_within(admin, "/healthz").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, grpc, admin)
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Issue 14 item 7: connections that finish TLS without a client certificate and then idle
/// used to be kept forever; once they filled the open-file limit, enrollment and /healthz
/// failed. With the cap on unverified connections (oldest evicted first) 200 of them under a
/// 128-descriptor limit leave enrollment and /healthz working.
#[test]
fn idle_unverified_connections_cannot_starve_enrollment_or_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, admin) = gateway(
        dir.path(),
        128,
        &[
            ("TALM_GATEWAY_MAX_UNVERIFIED_CONNECTIONS", "16"),
            ("TALM_GATEWAY_IDLE_TIMEOUT_SECS", "600"),
        ],
    );
    let ca = std::fs::read(dir.path().join("pki/hub-ca.crt")).unwrap();
    let mut held = Vec::new();
    for _ in 0..200 {
        match idle_tls(grpc, &ca) {
            Some(c) => held.push(c),
            None => break,
        }
    }
    // /healthz answers, on its own accept path.
    let health = get_within(admin, "/healthz");
    // An agent enrolls.
    let out = hub()
        .args(["agents", "token", "sno-1", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let enrolled = rt.block_on(async {
        let target = talm_agent::conn::HubTarget::parse(
            &format!("https://127.0.0.1:{grpc}"),
            Some("localhost"),
        )
        .unwrap();
        let cfg = talm_agent::conn::ConnConfig {
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            talm_agent::conn::enroll(&target, &ca, token.trim(), state.path(), &cfg),
        )
        .await
    });
    let metrics = get_within(admin, "/metrics").unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        held.len(),
        200,
        "only {} connections were accepted",
        held.len()
    );
    let health = health.expect("/healthz did not answer");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let id = enrolled
        .expect("enrollment hung")
        .expect("enrollment failed");
    assert_eq!(id.info.cluster, "sno-1");
    let evicted = metric(
        &metrics,
        "talm_gateway_connections_closed_total{reason=\"evicted\"}",
    );
    assert!(evicted >= 184.0, "{metrics}");
    // The evicted connections were really closed.
    assert!(closed_by_server(&mut held[0], Duration::from_secs(10)));
}

/// Issue 14 item 7: a connection that opens no stream is closed after the idle timeout
/// (`TALM_GATEWAY_IDLE_TIMEOUT_SECS`), whatever the cap.
#[test]
fn connections_without_a_stream_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, admin) =
        gateway(dir.path(), 1024, &[("TALM_GATEWAY_IDLE_TIMEOUT_SECS", "1")]);
    let ca = std::fs::read(dir.path().join("pki/hub-ca.crt")).unwrap();
    let mut held: Vec<Tls> = (0..5).map(|_| idle_tls(grpc, &ca).unwrap()).collect();
    let closed: Vec<bool> = held
        .iter_mut()
        .map(|c| closed_by_server(c, Duration::from_secs(30)))
        .collect();
    let metrics = get_within(admin, "/metrics").unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(closed.iter().all(|c| *c), "{closed:?}");
    assert!(
        metric(
            &metrics,
            "talm_gateway_connections_closed_total{reason=\"idle\"}"
        ) >= 5.0,
        "{metrics}"
    );
}
