//! Issue 14 item 15: every way of failing to reach the hub is named (DNS, connection refused,
//! TLS unknown CA, certificate name mismatch, revoked, token refused), by the error itself ([`ConnError::cause`], [`ConnError::explain`]) and in
//! the daemon's WARN lines, over real TLS on loopback with the test PKI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use talm_agent::conn::{self, Cause, ConnConfig, ConnError, HubTarget};
use talm_agent::daemon::AgentError;
use talm_gateway::store::EnrollmentStore;
use talm_proto::v1::{self, AgentMessage, agent_message};
use tokio_stream::wrappers::ReceiverStream;

fn quick() -> ConnConfig {
    ConnConfig {
        connect_timeout: Duration::from_secs(5),
        ..ConnConfig::default()
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Opens a session with `identity` and returns how it failed.
async fn session_error(target: &HubTarget, ca: &[u8], identity: &conn::Identity) -> ConnError {
    let mut client = match conn::session_client(target, ca, identity, &quick()).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            agent_version: "test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s.into(),
    };
    match inbound.message().await {
        Err(s) => s.into(),
        Ok(m) => panic!("the session was accepted: {m:?}"),
    }
}

fn check(e: &ConnError, target: &HubTarget, cause: Cause, words: &str) {
    assert_eq!(e.cause(), cause, "{e}");
    let text = e.explain(target);
    assert!(text.contains(words), "{cause:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_failure_names_its_cause() {
    LogCapture::install();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let other = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let ca = pki.hub_ca_pem.as_bytes();
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let token = hub.token("sno-a").await;
    let good = HubTarget::parse(&hub.url(), None).unwrap();

    // Connection refused.
    let t = HubTarget::parse(&format!("https://127.0.0.1:{}", closed_port()), None).unwrap();
    let e = conn::enroll(&t, ca, &token, &state, &quick())
        .await
        .unwrap_err();
    check(&e, &t, Cause::Refused, "connection refused");
    // DNS.
    let t = HubTarget::parse("https://no-such-host.invalid:8443", None).unwrap();
    let e = conn::enroll(&t, ca, &token, &state, &quick())
        .await
        .unwrap_err();
    check(&e, &t, Cause::Dns, "DNS");
    // TLS: the hub's certificate is signed by a CA the agent does not trust.
    let e = conn::enroll(&good, other.hub_ca_pem.as_bytes(), &token, &state, &quick())
        .await
        .unwrap_err();
    check(&e, &good, Cause::TlsUnknownCa, "unknown CA");
    // TLS: the hub's certificate is not valid for the name checked.
    let t = HubTarget::parse(&hub.url(), Some("wrong.example")).unwrap();
    let e = conn::enroll(&t, ca, &token, &state, &quick())
        .await
        .unwrap_err();
    check(&e, &t, Cause::TlsNameMismatch, "certificate name mismatch");
    check(&e, &t, Cause::TlsNameMismatch, "wrong.example");
    // The hub refuses the token.
    let e = conn::enroll(&good, ca, "abcdef012345.0123456789abcdef", &state, &quick())
        .await
        .unwrap_err();
    check(&e, &good, Cause::TokenRefused, "token refused");
    // None of these spent the token.
    let id = conn::enroll(&good, ca, &token, &state, &quick())
        .await
        .unwrap();
    assert_eq!(id.info.cluster, "sno-a");

    // Revoked.
    assert!(hub.enroll.revoke("sno-a").await.unwrap());
    let e = session_error(&good, ca, &id).await;
    check(&e, &good, Cause::Revoked, "revoked");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_names_the_cause_at_warn_and_gives_up_on_a_refused_token() {
    let logs = LogCapture::install();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let other = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let token = hub.token("sno-a").await;

    // Nothing listening, then a hub the agent's --ca does not trust: WARN lines name each.
    let refused = format!("https://127.0.0.1:{}", closed_port());
    let mut wrong_ca = agent_config(&hub.url(), &pki, &dir.path().join("x"), Some(token.clone()));
    wrong_ca.hub_ca_pem = other.hub_ca_pem.clone().into_bytes();
    for (cfg, words) in [
        (
            agent_config(&refused, &pki, &dir.path().join("r"), Some(token.clone())),
            ["WARN", "connection refused"],
        ),
        (wrong_ca, ["WARN", "unknown CA"]),
    ] {
        let a = RunningAgent::start(cfg, RunningAgent::host_runner(&root), &root);
        eventually(20, words[1], async || {
            !logs.lines(words[0], &words[1..]).is_empty()
        })
        .await;
        a.stop().await.unwrap();
    }

    // A refused token: the agent stops with an error naming it (and logs it).
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("t"),
            Some("abcdef012345.0123456789abcdef".into()),
        ),
        RunningAgent::host_runner(&root),
        &root,
    );
    match a.join().await {
        Err(e @ AgentError::EnrollmentRefused(_)) => {
            assert!(e.to_string().contains("token refused"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !logs.lines("ERROR", &["token refused"]).is_empty(),
        "{}",
        logs.text()
    );

    // Revoked while running: the reconnects are refused, each named.
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &dir.path().join("a"), Some(token)),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(20, "connected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;
    assert!(hub.enroll.revoke("sno-a").await.unwrap());
    eventually(20, "a WARN naming the revocation", async || {
        !logs
            .lines("WARN", &["revoked: the hub no longer accepts"])
            .is_empty()
    })
    .await;
    a.stop().await.unwrap();
    hub.stop().await;
}
