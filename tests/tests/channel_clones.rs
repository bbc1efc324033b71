//! Issue 14 section 4: two agents started from one copied state directory (the same identity)
//! must not replace each other forever: the gateway keeps the older session, refuses the
//! newer, logs an ERROR naming the cluster, and shows it in `/agents` and the metrics. And a
//! bootstrap token given to an agent that is already enrolled is reported, not silently
//! ignored. These tests use only the HTTP views, the metrics and the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_identity_keep_the_older_session_and_are_reported() {
    let logs = LogCapture::install();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());

    // Agent a enrolls and connects.
    let token = hub.token("sno-a").await;
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &dir.path().join("a"), Some(token)),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(20, "sno-a connected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;

    // Its state directory is copied, and a second agent runs from the copy.
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::copy(
        dir.path().join("a/identity.pem"),
        dir.path().join("b/identity.pem"),
    )
    .unwrap();
    let b = RunningAgent::start(
        agent_config(&hub.url(), &pki, &dir.path().join("b"), None),
        RunningAgent::host_runner(&root),
        &root,
    );

    // The flapping is detected: /agents names the cloned identity, the metrics count it.
    eventually(30, "clonedIdentity in /agents", async || {
        let (_, body) = hub.http_get("/agents/sno-a").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["clonedIdentity"]["refusedSessions"].as_u64() >= Some(1)
    })
    .await;
    let kept = hub.gw.registry.session("sno-a").expect("a live session").id;
    let (_, body) = hub.http_get("/agents/sno-a").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connected"], true, "{body}");
    let serial = a.agent.identity().unwrap().info.serial;
    assert_eq!(v["clonedIdentity"]["certificateSerial"], serial, "{body}");
    let (_, metrics) = hub.http_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "talm_gateway_agents_cloned"),
        1.0,
        "{metrics}"
    );
    let refused = metric(&metrics, "talm_gateway_clone_refusals_total");
    assert!(refused >= 1.0, "{metrics}");

    // The older session is kept while the clone keeps trying: three more refusals later it
    // is still the same session (before the fix each new session replaced the live one).
    eventually(60, "three more refusals", async || {
        let (_, m) = hub.http_get("/metrics").await;
        metric(&m, "talm_gateway_clone_refusals_total") >= refused + 3.0
    })
    .await;
    assert_eq!(
        hub.gw.registry.session("sno-a").map(|s| s.id),
        Some(kept),
        "the kept session was replaced"
    );

    // The gateway logged an ERROR naming the cluster; the refused agent a WARN naming why.
    let errors = logs.lines("ERROR", &["cloned agent identity", "sno-a"]);
    assert!(!errors.is_empty(), "{}", logs.text());
    let warns = logs.lines("WARN", &["identity in use"]);
    assert!(!warns.is_empty(), "{}", logs.text());

    b.stop().await.unwrap();
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_given_to_an_enrolled_agent_is_reported_with_both_names() {
    let logs = LogCapture::install();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let state = dir.path().join("agent");

    // Enrolled as sno-one with token one.
    let one = hub.token("sno-one").await;
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &state, Some(one.clone())),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(20, "sno-one connected", async || {
        hub.gw.registry.session("sno-one").is_some()
    })
    .await;
    a.stop().await.unwrap();
    // Restarted with the same token (it stays on the node): nothing to report.
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &state, Some(one.clone())),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(20, "sno-one reconnected", async || {
        hub.gw.registry.session("sno-one").is_some()
    })
    .await;
    a.stop().await.unwrap();
    let (one_id, _) = one.split_once('.').unwrap();
    assert!(
        logs.lines("WARN", &[one_id, "is ignored"]).is_empty(),
        "{}",
        logs.text()
    );

    // Given a token for sno-two: the agent stays sno-one, and says so at WARN, naming the
    // cluster it is enrolled as and the token it ignores.
    let two = hub.token("sno-two").await;
    let (two_id, _) = two.split_once('.').unwrap();
    let a = RunningAgent::start(
        agent_config(&hub.url(), &pki, &state, Some(two.clone())),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(20, "the warning", async || {
        !logs.lines("WARN", &["sno-one", two_id]).is_empty()
    })
    .await;
    let line = logs.lines("WARN", &["sno-one", two_id]).remove(0);
    assert!(line.contains("is ignored"), "{line}");
    assert!(
        !line.contains(two.split_once('.').unwrap().1),
        "secret logged: {line}"
    );
    assert_eq!(a.agent.identity().unwrap().info.cluster, "sno-one");
    a.stop().await.unwrap();
    hub.stop().await;
}
