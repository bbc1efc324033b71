//! The agent gateway inside `talm-hub run` against the in-process Kubernetes API double: two
//! operator replicas (one leader) each serve the gateway with the Kubernetes-backed stores;
//! a real `talm-agent run` process enrolls through the standby with a token minted into
//! Secrets by `talm-hub agents token` (no --state-dir: the Secrets mode), gets a check-space
//! task from its SpokeAgent spec, and its report lands in SpokeAgent status; deleting the
//! enrollment Secret ends its session. Plus: a token is single-use across replicas, and two
//! replicas starting at once end up with one agent CA.
//!
//! The engine assigns pre-cache and backup tasks, which talm-agent does not run yet; the
//! check-space spec is written through the API here exactly as the engine's writes do (merge
//! patch of `spec`), so the path spec → every replica's cache → the session's replica →
//! agent → status is the real one.
//!
//! Nothing waits a fixed time: every assertion waits (with a generous timeout) for the state it
//! expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod operator_support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use operator_support::{
    GatewayHub, HUB_NS, agent_binary, agent_command, kubeconfig, loopback_gateway_settings,
    spoke_agent, talm_hub_agents,
};
use serde_json::json;
use talm_gateway::enroll::{issue_token, secret_hash};
use talm_gateway::store::{EnrollmentStore, TokenRejection};
use talm_hub::operator::agents::{KubeEnrollmentStore, pki, secrets};
use talm_hub::operator::{Config, LeaderElection, LeaseTiming, Operator};
use talm_kube_double::{Fault, KubeDouble, Verb};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::clock::{Clock, SystemClock};

const NS: &str = HUB_NS;
const WAIT: Duration = Duration::from_secs(60);

// ----- harness -----------------------------------------------------------------------------

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(25), what, f).await
}

/// One replica: the operator (leader election on) and its gateway.
async fn replica(double: &KubeDouble, identity: &str) -> GatewayHub {
    let le = LeaderElection {
        namespace: NS.into(),
        name: "talm-hub-leader".into(),
        timing: LeaseTiming {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
        },
    };
    let config = Config {
        leader_election: Some(le),
        identity: identity.into(),
        ..Config::default()
    };
    let op = Operator::new(double.client(), operator_support::manual_clock(), config);
    GatewayHub::start(op, loopback_gateway_settings(NS)).await
}

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_agent(
    bin: &Path,
    hub: std::net::SocketAddr,
    dir: &Path,
    ca: &str,
    token: &str,
) -> AgentProcess {
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("var/lib/containers")).unwrap();
    let child = agent_command(bin, hub, ca, token, dir, &dir.join("state"), &host)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    AgentProcess(child)
}

fn spoke_status(double: &KubeDouble, cluster: &str) -> Option<serde_json::Value> {
    spoke_agent(double, cluster).map(|a| a["status"].clone())
}

// ----- tests -------------------------------------------------------------------------------

/// The whole path through a standby replica, with a real agent process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_enrolls_through_the_standby_and_reports_into_spokeagent_status() {
    let agent_bin = agent_binary("operator-gateway-agent");
    let dir = tempfile::tempdir().unwrap();
    let double = KubeDouble::start().await.unwrap();
    let (a, b) = tokio::join!(replica(&double, "replica-a"), replica(&double, "replica-b"));
    wait_for("one leader", || {
        (a.shared.leading() ^ b.shared.leading()).then_some(())
    })
    .await;
    let (leader, standby) = if a.shared.leading() { (a, b) } else { (b, a) };
    // Started at once: one agent CA, one serving certificate, shared by both.
    assert_eq!(
        leader.gateway.enroller.ca_pem(),
        standby.gateway.enroller.ca_pem()
    );
    assert_eq!(leader.hub_ca, standby.hub_ca);

    // Mint a token the way an operator would on a real hub: Secrets through the API.
    let kc = kubeconfig(&double, dir.path());
    let token = talm_hub_agents(&kc, &["token", "sno1"]);
    let (id, secret) = token.split_once('.').expect("<id>.<secret>");
    let stored = double
        .get_value("v1", "Secret", Some(NS), &format!("talm-token-{id}"))
        .expect("token Secret");
    assert_eq!(
        stored["metadata"]["labels"]["talm.dev/kind"],
        "bootstrap-token"
    );
    assert!(
        !stored.to_string().contains(secret),
        "the token's secret must never be stored"
    );

    // The agent enrolls and connects through the standby. No SpokeAgent exists yet: the
    // standby's gateway creates one (empty spec) to record the connection.
    let _agent = spawn_agent(
        &agent_bin,
        standby.grpc,
        dir.path(),
        &standby.hub_ca,
        &token,
    );
    wait_for("sno1 enrolled (Secret)", || {
        double.get_value("v1", "Secret", Some(NS), "talm-enrollment-sno1")
    })
    .await;
    wait_for("sno1 connected to the standby", || {
        standby.gateway.registry.session("sno1").map(|_| ())
    })
    .await;
    assert!(leader.gateway.registry.session("sno1").is_none());

    let created = wait_for("SpokeAgent created with the connection", || {
        double
            .get_value("talm.dev/v1alpha1", "SpokeAgent", Some("sno1"), "sno1")
            .filter(|a| a["status"]["connected"] == true)
    })
    .await;
    assert_eq!(
        created["spec"],
        json!({}),
        "no task until the engine assigns one"
    );

    // The task arrives through the SpokeAgent spec (as the engine writes it).
    let api: Api<SpokeAgent> = Api::namespaced(double.client(), "sno1");
    let deadline = jiff::Timestamp::from_second(SystemClock.unix() + 3600).unwrap();
    api.patch(
        "sno1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"checkSpace": {
            "id": "cs-1", "spaceRequired": "1", "deadline": deadline.to_string()}}})),
    )
    .await
    .unwrap();
    let st = wait_for("check-space reported in SpokeAgent status", || {
        spoke_status(&double, "sno1").filter(|s| s["checkSpace"]["state"] == "Succeeded")
    })
    .await;
    assert_eq!(st["connected"], true, "{st:#}");
    assert_eq!(st["checkSpace"]["id"], "cs-1", "{st:#}");
    assert!(st["lastSeen"].is_string(), "{st:#}");
    // Both replicas' caches see it (the engine, on the leader, reads it from there).
    for r in [&leader, &standby] {
        wait_for("status in the replica's cache", || {
            r.shared
                .cache_read()
                .snapshot()
                .spoke_agent("sno1", "sno1")
                .and_then(|a| a.status.as_ref())
                .and_then(|s| s.check_space.as_ref())
                .filter(|c| c.state == "Succeeded")
                .map(|_| ())
        })
        .await;
    }
    // The /agents view and the gateway metrics of the standby.
    let view = standby.gateway.registry.view("sno1").unwrap();
    assert!(view.connected);
    let metrics = standby.gateway.render_metrics();
    assert!(
        metrics.contains("talm_gateway_agents_connected 1"),
        "{metrics}"
    );

    // Revocation by deleting the enrollment Secret ends the session, and the status says so.
    let secrets_api: Api<Secret> = Api::namespaced(double.client(), NS);
    secrets_api
        .delete("talm-enrollment-sno1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("session ended", || {
        standby
            .gateway
            .render_metrics()
            .contains("talm_gateway_rejections_total{reason=\"revoked\"} 1")
            .then_some(())
    })
    .await;
    wait_for("status disconnected", || {
        spoke_status(&double, "sno1").filter(|s| s["connected"] == false)
    })
    .await;
    // Reconnects are refused: the cluster stays without a session.
    wait_for("reconnect refused", || {
        standby
            .gateway
            .render_metrics()
            .contains("talm_gateway_rejections_total{reason=\"not_enrolled\"}")
            .then_some(())
    })
    .await;
    assert!(standby.gateway.registry.session("sno1").is_none());

    // `agents revoke` in Secrets mode: a pending token of another cluster is deleted.
    let pending = talm_hub_agents(&kc, &["token", "sno2"]);
    let pid = pending.split_once('.').unwrap().0.to_string();
    let out = talm_hub_agents(&kc, &["revoke", "sno2"]);
    assert!(out.contains("was not enrolled"), "{out}");
    assert!(
        double
            .get_value("v1", "Secret", Some(NS), &format!("talm-token-{pid}"))
            .is_none()
    );

    drop(_agent);
    leader.stop().await;
    standby.stop().await;
    double.shutdown().await;
}

/// Two replicas consuming one token at the same time: exactly one succeeds (the other's
/// resourceVersion-guarded replace gets 409, it re-reads, and finds the token used).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_is_consumed_once_across_replicas() {
    let double = KubeDouble::start().await.unwrap();
    let r1 = Arc::new(KubeEnrollmentStore::new(double.client(), NS));
    let r2 = Arc::new(KubeEnrollmentStore::new(double.client(), NS));
    for round in 0..4 {
        let token = issue_token(r1.as_ref(), &SystemClock, "sno1", Duration::from_secs(600))
            .await
            .unwrap();
        let (id, secret) = token.split_once('.').unwrap();
        if round % 2 == 0 {
            // Hold the first replace back so both reads happen before either write.
            double.inject(
                Fault::latency(Duration::from_millis(300))
                    .verb(Verb::Update)
                    .resource("secrets")
                    .times(1),
            );
        }
        let mut tasks = Vec::new();
        for i in 0..6 {
            let store = if i % 2 == 0 { r1.clone() } else { r2.clone() };
            let (id, hash) = (id.to_string(), secret_hash(secret));
            tasks.push(tokio::spawn(async move {
                store
                    .consume_token(&id, &hash, &format!("csr-{i}"), SystemClock.unix())
                    .await
                    .unwrap()
            }));
        }
        let mut wins = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(cluster) => {
                    assert_eq!(cluster, "sno1");
                    wins.push(i);
                }
                Err(r) => assert_eq!(r, TokenRejection::Used, "round {round}"),
            }
        }
        assert_eq!(wins.len(), 1, "round {round}: winners {wins:?}");
        // The winner may retry with the same CSR (a lost answer); anyone else may not.
        let hash = secret_hash(secret);
        let winner = wins[0];
        let now = SystemClock.unix();
        let again = r1
            .consume_token(id, &hash, &format!("csr-{winner}"), now)
            .await
            .unwrap();
        let other = r1.consume_token(id, &hash, "csr-late", now).await.unwrap();
        assert_eq!(again, Ok("sno1".to_string()));
        assert_eq!(other, Err(TokenRejection::Used));
    }
    let conflicts = double
        .count_requests(|r| r.verb == Verb::Update && r.resource == "secrets" && r.status == 409);
    eprintln!("token replaces that hit 409: {conflicts}");
    double.shutdown().await;
}

/// Two replicas starting at once create the agent CA and the serving certificate once; the
/// loser reads the winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_share_one_agent_ca() {
    let double = KubeDouble::start().await.unwrap();
    // Hold creates back so that both replicas find no Secret before either creates one.
    double.inject(
        Fault::latency(Duration::from_millis(300))
            .verb(Verb::Create)
            .resource("secrets"),
    );
    let now = SystemClock.system_time();
    let names = vec!["127.0.0.1".to_string()];
    let (c1, c2) = (double.client(), double.client());
    let (ca1, ca2, s1, s2) = tokio::join!(
        pki::ensure_agent_ca(c1.clone(), NS, now),
        pki::ensure_agent_ca(c2.clone(), NS, now),
        pki::ensure_serving(c1, NS, &names, now),
        pki::ensure_serving(c2, NS, &names, now),
    );
    let (ca1, ca2, s1, s2) = (ca1.unwrap(), ca2.unwrap(), s1.unwrap(), s2.unwrap());
    assert_eq!(ca1.cert_pem, ca2.cert_pem);
    assert_eq!(ca1.key_pem, ca2.key_pem);
    assert_eq!(s1.cert_pem, s2.cert_pem);
    assert_eq!(s1.ca_pem, s2.ca_pem);
    let api: Api<Secret> = Api::namespaced(double.client(), NS);
    let all = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = all
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&secrets::AGENT_CA_SECRET.to_string()));
    assert!(names.contains(&secrets::SERVING_SECRET.to_string()));
    // A restart reads the stored CA back.
    double.clear_faults();
    let again = pki::ensure_agent_ca(double.client(), NS, now)
        .await
        .unwrap();
    assert_eq!(again.cert_pem, ca1.cert_pem);
    // A corrupt CA Secret is a clear error naming the Secret and key.
    api.patch(
        secrets::AGENT_CA_SECRET,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"tls.key": "bm90IGEga2V5"}})),
    )
    .await
    .unwrap();
    let err = pki::ensure_agent_ca(double.client(), NS, now)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Secret talm-system/talm-agent-ca, key tls.key"),
        "{err}"
    );
    double.shutdown().await;
}
