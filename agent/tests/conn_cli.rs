//! The `talm-agent run` binary and issue 14 item 15: configuration errors that no retry can
//! fix (a CA file that is not PEM, a malformed hub URL) end the process with a non-zero status
//! and a line naming the problem; connection failures are logged at WARN with their cause
//! (connection refused, TLS unknown CA, certificate name mismatch, DNS) over real TLS on
//! loopback with the test CA helpers.

// Test helpers panic on purpose; the binary is spawned directly (not through the host seam) to
// read its stderr while it runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "tls_support/mod.rs"]
mod tls_support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use tls_support::TestCa;

const BIN: &str = env!("CARGO_BIN_EXE_talm-agent");

fn agent(dir: &Path, hub: &str, ca: &Path, extra: &[&str]) -> Command {
    let token = dir.join("token");
    std::fs::write(&token, "abcdef012345.0123456789abcdef\n").unwrap();
    let mut c = Command::new(BIN);
    c.args(["run", "--hub", hub, "--ca"])
        .arg(ca)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--bootstrap-token-file")
        .arg(&token)
        .args(["--backoff-initial-ms", "50", "--backoff-max-secs", "1"])
        .args(extra)
        .env_remove("TALM_LOG_FORMAT")
        .env("TALM_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs to the end (at most 20 s): the exit code and stderr.
fn run_to_end(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > end {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("still running after 20 s: a configuration error is being retried");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs until a stderr line contains every one of `words` (at most 20 s), then stops it.
fn wait_for_line(mut cmd: Command, words: &[&str]) -> String {
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if words.iter().all(|w| line.contains(w)) => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    found.unwrap_or_else(|| panic!("no line with {words:?} in:\n{}", seen.join("\n")))
}

#[test]
fn configuration_errors_exit_non_zero_with_a_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let ca = TestCa::new("hub CA");
    let good_ca = d.path().join("ca.crt");
    std::fs::write(&good_ca, &ca.cert_pem).unwrap();

    // A CA file that is not PEM, and one with no certificate in it.
    let junk = d.path().join("junk.crt");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let key_only = d.path().join("key.pem");
    std::fs::write(&key_only, ca.loopback_leaf("x", vec![]).1).unwrap();
    for f in [&junk, &key_only] {
        let (code, err) = run_to_end(agent(d.path(), "https://127.0.0.1:1", f, &[]));
        assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
        assert!(
            err.contains("--ca") && err.contains(&f.display().to_string()),
            "{err}"
        );
        assert!(err.contains("not a usable PEM CA bundle"), "{err}");
    }
    // Malformed hub URLs.
    for (url, words) in [
        ("hub.example:8443", "the scheme must be https"),
        ("http://hub.example:8443", "the scheme must be https"),
        ("https://hub example:8443", "bad hub URL"),
        ("https://", "bad hub URL"),
    ] {
        let (code, err) = run_to_end(agent(d.path(), url, &good_ca, &[]));
        assert!(code.is_some_and(|c| c != 0), "{url}: {code:?} {err}");
        assert!(err.contains(words), "{url}: {err}");
    }
}

/// A TLS 1.3 server on loopback presenting a leaf of `ca` (`localhost`, `127.0.0.1`) that
/// completes handshakes and then holds the connections.
fn tls_server(ca: &TestCa) -> SocketAddr {
    let (cert, key) = ca.loopback_leaf("hub", vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let cfg =
        talm_shared::tls::server_config(cert.as_bytes(), key.as_bytes(), ca.cert_pem.as_bytes())
            .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { break };
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    addr
}

#[test]
fn connection_failures_are_named_at_warn() {
    let d = tempfile::tempdir().unwrap();
    let hub_ca = TestCa::new("hub CA");
    let stranger = TestCa::new("some other CA");
    let addr = tls_server(&hub_ca);
    let (ca, other) = (d.path().join("ca.crt"), d.path().join("other.crt"));
    std::fs::write(&ca, &hub_ca.cert_pem).unwrap();
    std::fs::write(&other, &stranger.cert_pem).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let url = format!("https://{addr}");
    let line = wait_for_line(agent(d.path(), &url, &other, &[]), &["WARN", "unknown CA"]);
    assert!(line.contains("tls-unknown-ca"), "{line}");
    let line = wait_for_line(
        agent(d.path(), &url, &ca, &["--server-name", "wrong.example"]),
        &["WARN", "certificate name mismatch"],
    );
    assert!(line.contains("wrong.example"), "{line}");
    let line = wait_for_line(
        agent(d.path(), &format!("https://{closed}"), &ca, &[]),
        &["WARN", "connection refused"],
    );
    assert!(line.contains(&closed.to_string()), "{line}");
    wait_for_line(
        agent(d.path(), "https://no-such-host.invalid:8443", &ca, &[]),
        &["WARN", "DNS"],
    );
}
