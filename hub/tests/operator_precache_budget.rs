//! A PrecacheBudget end to end (issue 17): one operator replica with its agent gateway (mTLS
//! gRPC on 127.0.0.1) against the hub API double, and four simulated agents that speak the wire
//! protocol in-process (enrolled through the gateway's enroller, one session each).
//!
//! A CGU pre-caches on four clusters of one site; the site's budget allows two clusters at once,
//! 20 MiB/s together, and at most two clusters on its mirror registry. The assignments arrive
//! held; each agent resolves its image list and reports the total and the registries (written to
//! SpokeAgent status at once, not coalesced); the scheduler lets two in with `TaskUpdate`s whose
//! caps add up to the budget; when one finishes the next is let in, and the last one left
//! downloading gets the whole budget. The CGU ends with `PrecachingSuceeded` and the budget's
//! status counts four done. The gateway's full poll is set to an hour, so every change reaches
//! the agents through the operator cache's spec-change marks.
//!
//! This needs the engine's scheduler (`talm_hub_core::schedule`): against its placeholder the
//! assignments are not held and the test fails at its first check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod operator_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use futures::channel::mpsc as fmpsc;
use operator_support::{GatewayHub, HUB_NS, T0, loopback_gateway_settings};
use serde_json::{Value, json};
use talm_agent::conn::{ConnConfig, HubTarget, Identity, session_client};
use talm_gateway::enroll::issue_token;
use talm_hub::operator::{Config, Operator, SystemClock};
use talm_kube_double::KubeDouble;
use talm_proto::v1::{self, AgentMessage, TaskKind, agent_message, hub_message, task_report};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";
const CGU: &str = "cgu-budget";
const BUDGET: &str = "site-a";
const MIRROR: &str = "mirror.example:5000";
const MIB: u64 = 1 << 20;
const CLUSTERS: [&str; 4] = ["spoke1", "spoke2", "spoke4", "spoke5"];
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/talm/objects");

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(25), what, f).await
}

/// The fixture fleet (clusters, policies), the four clusters labelled `site: a`, and the budget.
async fn hub_double() -> KubeDouble {
    let double = KubeDouble::start().await.unwrap();
    for f in [
        "managed-clusters.yaml",
        "policies.yaml",
        "child-policies.yaml",
    ] {
        let text = std::fs::read_to_string(std::path::Path::new(FIXTURES).join(f)).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for mut obj in docs.into_iter().filter(|d| !d.is_null()) {
            if obj["kind"] == "ManagedCluster"
                && CLUSTERS.contains(&obj["metadata"]["name"].as_str().unwrap_or_default())
            {
                obj["metadata"]["labels"]["site"] = json!("a");
            }
            double.put_value(obj).unwrap();
        }
    }
    double
        .put_value(json!({
            "apiVersion": "talm.dev/v1alpha1", "kind": "PrecacheBudget",
            "metadata": {"name": BUDGET},
            "spec": {"clusterSelector": {"matchLabels": {"site": "a"}},
                     "bandwidth": "20Mi", "maxConcurrentClusters": 2,
                     "registries": [{"host": MIRROR, "maxConcurrentClusters": 2}]}
        }))
        .unwrap();
    double
}

fn put_cgu(double: &KubeDouble) {
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS, "creationTimestamp": T0},
            "spec": {
                "clusters": CLUSTERS,
                // Every cluster has a non-compliant policy here (the cluster-version policy
                // would need an update graph).
                "managedPolicies": ["policy0-common-config-policy",
                                    "policy2-common-pao-sub-policy",
                                    "policy4-common-sriov-sub-policy"],
                "remediationStrategy": {"maxConcurrency": 2, "timeout": 240},
                "preCaching": true,
                "enable": false
            }
        }))
        .unwrap();
}

/// A simulated agent: its session's outbound messages, and what the hub sent it.
struct SimAgent {
    cluster: String,
    out: fmpsc::Sender<AgentMessage>,
    inbox: mpsc::UnboundedReceiver<hub_message::Msg>,
    seq: u64,
    _session: tokio::task::JoinHandle<()>,
}

impl SimAgent {
    /// Enrolls `cluster` through the hub's enroller and opens its session (Hello → Welcome),
    /// heartbeating every second.
    async fn connect(hub: &GatewayHub, cluster: &str) -> Self {
        let gw = &hub.gateway;
        let token = issue_token(
            gw.enroller.store().as_ref(),
            &SystemClock,
            cluster,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
        let (key, csr) = talm_shared::pki::agent_key_and_csr().unwrap();
        let issued = gw.enroller.enroll(&token, &csr).await.unwrap();
        let id = Identity::from_pem(issued.cert_pem.into_bytes(), key.into_bytes()).unwrap();
        let target = HubTarget::parse(&format!("https://{}", hub.grpc), None).unwrap();
        let mut client =
            session_client(&target, hub.hub_ca.as_bytes(), &id, &ConnConfig::default())
                .await
                .unwrap();
        let (mut out, rx) = fmpsc::channel::<AgentMessage>(64);
        out.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(v1::Hello {
                agent_version: "sim".into(),
                cluster: cluster.into(),
                facts: Some(v1::NodeFacts::default()),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inbound = client.session(rx).await.unwrap().into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(first.msg, Some(hub_message::Msg::Welcome(_))));
        let (tx, inbox) = mpsc::unbounded_channel();
        let mut hb = out.clone();
        let session = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let beat = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat {})) };
                        if hb.send(beat).await.is_err() { return; }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(v1::HubMessage { msg: Some(msg) })) => { let _ = tx.send(msg); }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        });
        Self {
            cluster: cluster.into(),
            out,
            inbox,
            seq: 0,
            _session: session,
        }
    }

    async fn report(&mut self, task: &str, body: task_report::Body, acked: bool) {
        let seq = if acked {
            self.seq += 1;
            self.seq
        } else {
            0
        };
        let r = v1::TaskReport {
            seq,
            task_id: task.into(),
            cluster: self.cluster.clone(),
            body: Some(body),
        };
        self.out
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Report(r)),
            })
            .await
            .unwrap();
    }

    async fn progress(&mut self, task: &str, done: u64, registries: &[&str]) {
        let p = v1::TaskProgress {
            message: "downloading".into(),
            done,
            total: 100 * MIB,
            bytes_per_second: 0,
            registries: registries.iter().map(|s| s.to_string()).collect(),
        };
        self.report(task, task_report::Body::Progress(p), false)
            .await;
    }

    async fn succeed(&mut self, task: &str) {
        self.progress(task, 100 * MIB, &[]).await;
        let r = v1::TaskResult {
            outcome: v1::TaskOutcome::Succeeded as i32,
            message: String::new(),
        };
        self.report(task, task_report::Body::Result(r), true).await;
    }

    /// The next message from the hub (within [`WAIT`]).
    async fn next(&mut self) -> hub_message::Msg {
        tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no message from the hub", self.cluster))
            .unwrap()
    }

    /// Everything the hub sent that is already here.
    fn drain(&mut self) -> Vec<hub_message::Msg> {
        std::iter::from_fn(|| self.inbox.try_recv().ok()).collect()
    }
}

fn budget_status(double: &KubeDouble) -> Value {
    double
        .get_value("talm.dev/v1alpha1", "PrecacheBudget", None, BUDGET)
        .map(|b| b["status"].clone())
        .unwrap_or(Value::Null)
}

fn condition_status(obj: &Value, type_: &str) -> Option<String> {
    operator_support::find_condition(obj, type_).map(|c| operator_support::text(c, "status"))
}

/// The grant each agent was last sent (`hold`, cap), from the updates that arrived so far.
#[derive(Debug, Default)]
struct Grants(BTreeMap<String, (bool, u64)>);

impl Grants {
    /// Reads every agent's inbox; an assignment or an update sets its grant.
    fn pump(&mut self, agents: &mut [SimAgent]) {
        for a in agents.iter_mut() {
            for m in a.drain() {
                match m {
                    hub_message::Msg::Update(u) => {
                        self.0
                            .insert(a.cluster.clone(), (u.hold, u.rate_limit_bytes_per_second));
                    }
                    hub_message::Msg::Assign(t) => panic!("{}: assigned again: {t:?}", a.cluster),
                    _ => {}
                }
            }
        }
    }

    /// The caps of the agents let in (not held), by cluster.
    fn let_in(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter(|(_, (hold, _))| !hold)
            .map(|(c, (_, cap))| (c.clone(), *cap))
            .collect()
    }
}

/// Waits until the grants of the clusters still downloading (`active`) are exactly: let in,
/// caps adding up to the budget; returns the caps.
async fn wait_let_in(
    what: &str,
    agents: &mut [SimAgent],
    grants: &mut Grants,
    active: &[&str],
) -> BTreeMap<String, u64> {
    wait_for(what, || {
        grants.pump(agents);
        let caps: BTreeMap<String, u64> = grants
            .let_in()
            .into_iter()
            .filter(|(c, _)| active.contains(&c.as_str()))
            .collect();
        (caps.len() == active.len()
            && caps.values().all(|c| *c > 0)
            && caps.values().sum::<u64>() == 20 * MIB)
            .then_some(caps)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_budget_lets_clusters_in_two_at_a_time_and_divides_its_bandwidth() {
    let double = hub_double().await;
    let config = Config {
        identity: "talm-hub-budget".into(),
        ..Config::default()
    };
    let op = Operator::new(double.client(), Arc::new(SystemClock), config);
    // The gateway's full poll once an hour: every assignment, let-in and cap change must reach
    // the agents through the cache's spec-change marks (the event path), as fast as the
    // scheduler decides them.
    let mut settings = loopback_gateway_settings(HUB_NS);
    settings.gateway.poll_interval = Duration::from_secs(3600);
    let hub = GatewayHub::start(op, settings).await;
    let mut agents = Vec::new();
    for c in CLUSTERS {
        agents.push(SimAgent::connect(&hub, c).await);
    }
    put_cgu(&double);

    // Every assignment arrives held: the budget applies to every cluster.
    let mut tasks = Vec::new();
    for a in &mut agents {
        match a.next().await {
            hub_message::Msg::Assign(t) => {
                assert_eq!(t.kind, TaskKind::Precache as i32, "{}", a.cluster);
                assert!(t.hold, "{}: the assignment must arrive held", a.cluster);
                assert_eq!(t.rate_limit_bytes_per_second, 0);
                tasks.push(t.task_id);
            }
            m => panic!("{}: expected an assignment, got {m:?}", a.cluster),
        }
    }
    // Nobody is let in before the registries are known (the budget limits a registry).
    let mut grants = Grants::default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    grants.pump(&mut agents);
    assert!(grants.let_in().is_empty(), "let in too early: {grants:?}");
    // The first batch's agents resolve their image lists and report total and registries.
    for (a, t) in agents.iter_mut().zip(&tasks).take(2) {
        let acc = v1::TaskAccepted {
            kind: TaskKind::Precache as i32,
        };
        a.report(t, task_report::Body::Accepted(acc), true).await;
        a.progress(t, 0, &[MIRROR]).await;
    }
    // The reports reach SpokeAgent status at once (not coalesced), held: Starting.
    for (c, t) in CLUSTERS.iter().zip(&tasks).take(2) {
        let p = wait_for("the total and registries in SpokeAgent status", || {
            operator_support::spoke_agent(&double, c)
                .map(|a| a["status"]["precache"].clone())
                .filter(|p| p["id"] == json!(t) && p["progress"]["registries"] == json!([MIRROR]))
        })
        .await;
        assert_eq!(p["progress"]["bytesTotal"], json!(100 * MIB), "{p:#}");
    }
    // Both are let in, their caps adding up to 20 MiB/s.
    let caps = wait_let_in(
        "the first two let in",
        &mut agents,
        &mut grants,
        &CLUSTERS[..2],
    )
    .await;
    assert_eq!(caps.len(), 2, "{caps:?}");
    // The second batch's agents report too; the budget is full: they stay queued.
    for (a, t) in agents.iter_mut().zip(&tasks).skip(2) {
        let acc = v1::TaskAccepted {
            kind: TaskKind::Precache as i32,
        };
        a.report(t, task_report::Body::Accepted(acc), true).await;
        a.progress(t, 0, &[MIRROR]).await;
    }
    let st = wait_for("budget status: 2 active, 2 queued", || {
        Some(budget_status(&double)).filter(|s| s["active"] == 2 && s["queued"] == 2)
    })
    .await;
    assert_eq!(st["bandwidthAllotted"], json!(20 * MIB), "{st:#}");
    let budget = json!({ "status": st });
    assert_eq!(condition_status(&budget, "Valid").as_deref(), Some("True"));
    assert_eq!(
        condition_status(&budget, "ClustersSelected").as_deref(),
        Some("True")
    );
    grants.pump(&mut agents);
    assert_eq!(
        grants.let_in().len(),
        2,
        "a third cluster let in: {grants:?}"
    );
    for c in &CLUSTERS[2..] {
        let st = wait_for("the queued clusters' reports in SpokeAgent status", || {
            operator_support::spoke_agent(&double, c)
                .map(|a| a["status"]["precache"].clone())
                .filter(|p| p["progress"]["registries"] == json!([MIRROR]))
        })
        .await;
        assert_eq!(st["state"], "Starting", "{c} queued: {st:#}");
    }
    grants.pump(&mut agents);
    assert_eq!(
        grants.let_in().len(),
        2,
        "a third cluster let in: {grants:?}"
    );

    // The first finishes: the third is let in, and the two active ones share the budget.
    agents[0].succeed(&tasks[0]).await;
    wait_let_in(
        "the third let in, the budget re-divided",
        &mut agents,
        &mut grants,
        &[CLUSTERS[1], CLUSTERS[2]],
    )
    .await;
    // The second finishes: the fourth is let in.
    agents[1].succeed(&tasks[1]).await;
    wait_let_in(
        "the fourth let in, the budget re-divided",
        &mut agents,
        &mut grants,
        &[CLUSTERS[2], CLUSTERS[3]],
    )
    .await;
    // The third finishes: the last one, alone, gets the whole budget.
    agents[2].succeed(&tasks[2]).await;
    let caps = wait_let_in(
        "the last one's cap re-divided to the whole budget",
        &mut agents,
        &mut grants,
        &[CLUSTERS[3]],
    )
    .await;
    assert_eq!(caps[CLUSTERS[3]], 20 * MIB);
    agents[3].succeed(&tasks[3]).await;

    // The CGU's pre-caching succeeds; the budget counts four done.
    let cgu = wait_for("PrecachingSuceeded", || {
        operator_support::cgu(&double, NS, CGU)
            .filter(|c| condition_status(c, "PrecachingSuceeded").as_deref() == Some("True"))
    })
    .await;
    for c in CLUSTERS {
        assert_eq!(cgu["status"]["precaching"]["status"][c], "Succeeded", "{c}");
    }
    let st = wait_for("budget status: 4 done", || {
        Some(budget_status(&double)).filter(|s| s["done"] == 4 && s["active"] == 0)
    })
    .await;
    assert_eq!(st["queued"], 0, "{st:#}");
    let metrics = hub.shared.metrics.encode();
    assert!(
        metrics.contains("talm_precache_budget_done_clusters{budget=\"site-a\"} 4"),
        "{metrics}"
    );
    assert!(hub.gateway.metrics.task_updates.get() >= 4);

    hub.stop().await;
    double.shutdown().await;
}
