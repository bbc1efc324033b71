//! Enrollment end to end over real sockets and TLS, and the rejections of issue 3 §5: the wrong
//! CA, an expired certificate, a revoked cluster, a reused or expired token, and a certificate
//! for cluster A sending messages about cluster B.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use talm_agent::conn::{self, ConnConfig, HubTarget};
use talm_agent::daemon::AgentError;
use talm_proto::v1::{self, AgentMessage, agent_message, hub_message, task_report};
use talm_shared::clock::{Clock, SystemClock};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn target(hub: &Hub) -> HubTarget {
    HubTarget::parse(&hub.url(), None).unwrap()
}

fn hello(cluster: &str) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            agent_version: "test".into(),
            cluster: cluster.into(),
            ..Default::default()
        })),
    }
}

/// Opens a raw session with `identity`, sends `msgs`, and returns the first message or error.
async fn raw_session(
    hub: &Hub,
    pki: &Pki,
    identity: &conn::Identity,
    msgs: Vec<AgentMessage>,
) -> Result<Vec<v1::HubMessage>, tonic::Status> {
    let mut client = conn::session_client(
        &target(hub),
        pki.hub_ca_pem.as_bytes(),
        identity,
        &ConnConfig::default(),
    )
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut got = Vec::new();
    loop {
        let wait = if got.is_empty() { 5000 } else { 700 };
        match tokio::time::timeout(Duration::from_millis(wait), inbound.message()).await {
            Err(_) => return Ok(got),
            Ok(Ok(Some(m))) => {
                let welcome = matches!(m.msg, Some(hub_message::Msg::Welcome(_)));
                got.push(m);
                if welcome && got.len() == 1 {
                    // Keep reading: a rejection may follow the welcome.
                    continue;
                }
            }
            Ok(Ok(None)) => return Ok(got),
            Ok(Err(s)) => return Err(s),
        }
        drop(tx.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_end_to_end_and_token_rules() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());

    // A fresh agent with a token enrolls, connects, and reports its facts.
    let token = hub.token("sno-a").await;
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &dir.path().join("a"), Some(token.clone())),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(10, "sno-a connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;
    let id = a.agent.identity().unwrap();
    assert_eq!(id.info.cluster, "sno-a");
    assert!(
        id.info.not_after > SystemClock.unix() + 3000,
        "a certificate with the hub's lifetime"
    );
    // The key never left the node: the identity file holds it, with mode 0600.
    let meta = std::fs::metadata(dir.path().join("a/identity.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // /agents shows it with facts.
    let (code, body) = hub.http_get("/agents/sno-a").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connected"], true);
    assert!(v["facts"]["containersStorageSizeBytes"].as_u64().unwrap() > 0);
    assert_eq!(v["facts"]["imageGcHighThresholdPercent"], 85);
    let (code, _) = hub.http_get("/agents/nope").await;
    assert_eq!(code, 404);

    // The same token again: refused, and the agent gives up with a clear error.
    let b = RunningAgent::start(
        agent_config(&hub.url(), &pki, &dir.path().join("b"), Some(token)),
        RunningAgent::host_runner(&root),
        &root,
    );
    match b.join().await {
        Err(AgentError::EnrollmentRefused(m)) => assert!(m.contains("used"), "{m}"),
        other => panic!("reused token accepted: {other:?}"),
    }

    // An expired token: refused.
    let expired = talm_gateway::enroll::issue_token(
        hub.enroll.as_ref(),
        &SystemClock,
        "sno-c",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let err = conn::enroll(
        &target(&hub),
        pki.hub_ca_pem.as_bytes(),
        &expired,
        &dir.path().join("c"),
        &ConnConfig::default(),
    )
    .await
    .unwrap_err();
    match err {
        conn::ConnError::Status(s) => {
            assert_eq!(s.code(), Code::Unauthenticated);
            assert!(s.message().contains("expired"), "{}", s.message());
        }
        e => panic!("{e}"),
    }
    // A made-up token and a malformed one.
    for (tok, code) in [
        ("abcdef012345.0123456789abcdef", Code::Unauthenticated),
        ("garbage", Code::InvalidArgument),
    ] {
        let err = conn::enroll(
            &target(&hub),
            pki.hub_ca_pem.as_bytes(),
            tok,
            &dir.path().join("d"),
            &ConnConfig::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, conn::ConnError::Status(s) if s.code() == code),
            "{tok}: {err}"
        );
    }
    let metrics = hub.http_get("/metrics").await.1;
    assert!(
        metrics.contains("talm_gateway_rejections_total{reason=\"used\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("talm_gateway_rejections_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("talm_gateway_agents_connected 1"),
        "{metrics}"
    );
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_expired_certificates_fail_the_handshake() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let now = SystemClock.unix();

    // A certificate from another CA, naming an enrolled cluster.
    let good = hub.issue_identity(&pki, "sno-a", now - 60, now + 600).await;
    let foreign = Pki::new();
    let (key, csr) = talm_shared::pki::agent_key_and_csr().unwrap();
    let cert = talm_shared::pki::sign_agent_csr(
        &foreign.agent_ca,
        &csr,
        "sno-a",
        talm_shared::clock::from_unix(now - 60),
        talm_shared::clock::from_unix(now + 600),
        &[0x22; 8],
    )
    .unwrap();
    let forged = conn::Identity::from_pem(cert.into_bytes(), key.into_bytes()).unwrap();
    // (TLS 1.3: the client learns of the refusal at its first request.)
    raw_session(&hub, &pki, &forged, vec![hello("")])
        .await
        .unwrap_err();
    let metrics = hub.http_get("/metrics").await.1;
    let refused = metric(
        &metrics,
        "talm_gateway_rejections_total{reason=\"tls_handshake\"}",
    );
    assert!(refused >= 1.0, "{metrics}");

    // An expired certificate from the right CA.
    let expired = hub
        .issue_identity(&pki, "sno-b", now - 7200, now - 3600)
        .await;
    raw_session(&hub, &pki, &expired, vec![hello("")])
        .await
        .unwrap_err();
    let metrics = hub.http_get("/metrics").await.1;
    assert!(
        metric(
            &metrics,
            "talm_gateway_rejections_total{reason=\"tls_handshake\"}"
        ) > refused,
        "{metrics}"
    );
    assert!(hub.gw.registry.view("sno-a").is_none() && hub.gw.registry.view("sno-b").is_none());

    // The good one works: Welcome names the cluster from the certificate.
    let got = raw_session(&hub, &pki, &good, vec![hello("")])
        .await
        .unwrap();
    match &got[0].msg {
        Some(hub_message::Msg::Welcome(w)) => assert_eq!(w.cluster, "sno-a"),
        m => panic!("{m:?}"),
    }
    // The agent also refuses a hub whose certificate it cannot verify.
    let other = Pki::new();
    let err = conn::session_client(
        &target(&hub),
        other.hub_ca_pem.as_bytes(),
        &good,
        &ConnConfig::default(),
    )
    .await;
    assert!(err.is_err());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_a_cannot_speak_for_b() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let now = SystemClock.unix();
    let a = hub.issue_identity(&pki, "sno-a", now - 60, now + 600).await;
    hub.issue_identity(&pki, "sno-b", now - 60, now + 600).await;

    // Hello claiming B.
    let err = raw_session(&hub, &pki, &a, vec![hello("sno-b")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("claims cluster sno-b but the client certificate is for cluster sno-a"),
        "{}",
        err.message()
    );

    // A valid hello, then a report about B.
    let report = AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq: 1,
            task_id: "t-1".into(),
            cluster: "sno-b".into(),
            body: Some(task_report::Body::Accepted(v1::TaskAccepted { kind: 1 })),
        })),
    };
    let err = raw_session(&hub, &pki, &a, vec![hello("sno-a"), report])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("report claims cluster sno-b"),
        "{}",
        err.message()
    );
    // Nothing was recorded for B.
    assert!(hub.gw.registry.view("sno-b").is_none());
    let metrics = hub.http_get("/metrics").await.1;
    assert!(
        metrics.contains("talm_gateway_rejections_total{reason=\"cluster_mismatch\"} 2"),
        "{metrics}"
    );

    // Bad messages get a clean Status naming the field.
    let bad = AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq: 1,
            task_id: String::new(),
            cluster: String::new(),
            body: Some(task_report::Body::Accepted(v1::TaskAccepted { kind: 1 })),
        })),
    };
    let err = raw_session(&hub, &pki, &a, vec![hello(""), bad])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "report.task_id is missing");
    let unknown_kind = AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq: 1,
            task_id: "t".into(),
            cluster: String::new(),
            body: Some(task_report::Body::Accepted(v1::TaskAccepted { kind: 42 })),
        })),
    };
    let err = raw_session(&hub, &pki, &a, vec![hello(""), unknown_kind])
        .await
        .unwrap_err();
    assert_eq!(err.message(), "report.accepted.kind has unknown value 42");
    // An oversized message is refused by the decoder limit.
    let huge = AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            agent_version: "x".repeat(100_000),
            ..Default::default()
        })),
    };
    let err = raw_session(&hub, &pki, &a, vec![huge]).await.unwrap_err();
    assert!(
        err.code() == Code::OutOfRange
            || err.code() == Code::ResourceExhausted
            || err.code() == Code::Internal,
        "{err:?}"
    );
    // The first message must be hello.
    let hb = AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat {})),
    };
    let err = raw_session(&hub, &pki, &a, vec![hb]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_the_session_and_refuses_reconnects() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let state = dir.path().join("hub");
    let hub = Hub::start(&state, &pki, fast_config()).await;
    let root = host_root(dir.path());
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(10, "connected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;
    // `talm-hub agents revoke sno-a`, as another process would run it.
    let out = talm_gateway::cli::run_agents(&talm_gateway::cli::AgentsArgs {
        state_dir: Some(state.clone()),
        namespace: None,
        command: talm_gateway::cli::AgentsCommand::Revoke {
            cluster: "sno-a".into(),
        },
    })
    .await
    .unwrap();
    assert!(out.contains("revoked"), "{out}");
    eventually(10, "session ended", async || {
        hub.gw.registry.session("sno-a").is_none()
    })
    .await;
    eventually(10, "status disconnected", async || {
        hub.status("sno-a").await.is_some_and(|s| !s.connected)
    })
    .await;
    // The agent keeps trying; every attempt is refused.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(hub.gw.registry.session("sno-a").is_none());
    let id = a.agent.identity().unwrap();
    let err = raw_session(&hub, &pki, &id, vec![hello("")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not enrolled"), "{}", err.message());
    let metrics = hub.http_get("/metrics").await.1;
    assert!(
        metrics.contains("talm_gateway_rejections_total{reason=\"revoked\"} 1"),
        "{metrics}"
    );
    a.stop().await.unwrap();
    hub.stop().await;
}
