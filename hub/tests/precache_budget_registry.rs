//! Two real agents under one PrecacheBudget, measured at a real registry (issue 17 §3): one
//! operator replica with its agent gateway in-process against the Kubernetes API double, a real
//! Debian `docker-registry` holding a synthetic release (built with umoci, pushed with skopeo by
//! `precache_support`; ≥ 64 MiB of blobs per node), and two real `talm-agent run` daemons, each
//! with its own state dir and host root (vfs containers-storage, a registries.conf that reaches
//! the plain-HTTP registry), so each fetches every blob itself.
//!
//! Both clusters are selected by one PrecacheBudget (`bandwidth` [`BUDGET_MIB`] Mi,
//! `maxConcurrentClusters: 2`). The CGU pre-caches the release on both. Checked: the scheduler
//! held both tasks when they were assigned and the caps in force (let in, not finished) never
//! added up to more than the budget, in any version of the SpokeAgents a watch saw; both
//! pre-caches succeed; the registry served every blob once per node (its log); and the
//! combined rate the registry served, over its transfer window of the blob GETs that started
//! after the first let-in (first start to last end), is at most the budget + 5%. That rate and
//! its ratio to the budget are printed; the lower bound (≥ 95%) is a benchmark figure
//! (BENCHMARKS.md, "Pre-cache scheduling"), not asserted here: no timed asserts in tests.
//!
//! Tools are required, not optional: a missing tool fails the test with the apt packages to
//! install. Nothing waits a fixed time: every step waits (with a generous timeout) for the
//! state it expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod operator_support;
#[path = "../../agent/tests/precache_support/mod.rs"]
mod precache_support;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::WatchEvent;
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::task_state::TaskState;

use operator_support::{
    agent_binary, agent_command, kubeconfig, musthave, policy_templates, spoke_agent,
    start_hub_for_agents, talm_hub_agents,
};
use precache_support::node::Node;
use precache_support::{BlobRequest, LayerSizes, Registry, build_fixture_with, require_tools};
use serde_json::{Value, json};
use talm_kube_double::KubeDouble;
use talm_shared::clock::{Clock, SystemClock};

const NS: &str = "default";
const CGU: &str = "budget-e2e";
const POLICY: &str = "budget-cluster-version";
const CLUSTERS: [&str; 2] = ["sno-a", "sno-b"];
/// The budget both clusters share, MiB/s.
const BUDGET_MIB: u64 = 8;
const MIB: f64 = 1024.0 * 1024.0;
/// Generous: two debug agents on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(600);

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(50), what, f).await
}

/// What the SpokeAgent watch saw, per cluster.
#[derive(Debug, Default)]
struct Seen {
    /// Whether the first pre-cache task was held.
    held: BTreeMap<String, bool>,
    /// The cap each task was let in with.
    caps: BTreeMap<String, i64>,
    /// The cap in force per cluster now (let in, not finished), as the SpokeAgents say.
    in_force: BTreeMap<String, i64>,
    /// The most the caps in force ever added up to.
    max_in_force: i64,
    /// When the first task was let in (Unix seconds).
    first_let_in: Option<f64>,
}

/// One agent process; killed when dropped (its log is printed when the test fails).
struct Agent {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
    _node: Node,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- {} agent log (last 30 lines, newest first) ---",
                self.name
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seconds(t: &str) -> f64 {
    let ts: jiff::Timestamp = t.parse().expect("registry log time");
    ts.as_nanosecond() as f64 / 1e9
}

/// A request's start, Unix seconds.
fn start_of(r: &BlobRequest) -> f64 {
    seconds(&r.end) - r.duration_s
}

/// Bytes and the transfer window (first start to last end, seconds) of `reqs`.
fn window(reqs: &[&BlobRequest]) -> (u64, f64) {
    let first = reqs
        .iter()
        .map(|r| start_of(r))
        .fold(f64::INFINITY, f64::min);
    let last = reqs
        .iter()
        .map(|r| seconds(&r.end))
        .fold(f64::NEG_INFINITY, f64::max);
    (
        reqs.iter().map(|r| r.written).sum(),
        (last - first).max(1e-9),
    )
}

/// Now, Unix seconds (the registry log's clock is the wall clock too).
fn unix_now() -> f64 {
    SystemClock.now().as_nanosecond() as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_under_one_budget_stay_within_it_at_the_registry() {
    require_tools(&["docker-registry", "skopeo", "umoci"]);
    let t0 = Instant::now();
    let agent_bin = agent_binary("precache-budget-registry-agent");

    // The registry and a release of 3 payload images over 40 + 16 + 8 MiB of shared base layers.
    let reg = Registry::start_plain();
    let fx = tokio::task::block_in_place(|| {
        build_fixture_with(
            &reg,
            3,
            None,
            LayerSizes {
                base: [40 << 20, 16 << 20, 8 << 20],
                unique: 256 << 10,
                seed: 17,
                release_like: false,
            },
        )
    });
    let mut node_images: Vec<String> = vec![fx.release.clone()];
    node_images.extend(fx.release_images.iter().map(|(_, s)| s.clone()));
    let per_node = fx.unique_bytes(&node_images);
    assert!(
        per_node >= 64 << 20,
        "the fixture must hold at least 64 MiB per node, has {per_node} bytes"
    );
    let served_before = tokio::task::block_in_place(|| reg.served_blob_bytes());
    eprintln!(
        "fixture ready after {:?}: {per_node} blob bytes per node",
        t0.elapsed()
    );

    // The hub: both clusters at one site, one budget over the site.
    let double = KubeDouble::start().await.unwrap();
    for c in CLUSTERS {
        double
            .put_value(json!({
                "apiVersion": "cluster.open-cluster-management.io/v1",
                "kind": "ManagedCluster",
                "metadata": {"name": c, "labels": {"name": c, "site": "site-1"}},
                "spec": {"hubAcceptsClient": true},
                "status": {"conditions": [{
                    "type": "ManagedClusterConditionAvailable", "status": "True",
                    "reason": "ManagedClusterAvailable", "message": "Managed cluster is available",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap();
    }
    let templates = policy_templates(
        &format!("{POLICY}-config"),
        json!([musthave(json!({
            "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
            "metadata": {"name": "version"},
            "spec": {"channel": "stable-4.99",
                     "desiredUpdate": {"version": "4.99.0", "image": fx.release}}}))]),
    );
    let spec = json!({"disabled": false, "remediationAction": "inform",
                      "policy-templates": templates});
    let entries: Vec<Value> = CLUSTERS
        .iter()
        .map(|c| json!({"clustername": c, "clusternamespace": c, "compliant": "NonCompliant"}))
        .collect();
    double
        .put_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1", "kind": "Policy",
            "metadata": {"name": POLICY, "namespace": NS},
            "spec": spec,
            "status": {"compliant": "NonCompliant", "status": entries}
        }))
        .unwrap();
    for c in CLUSTERS {
        let mut child = operator_support::child_policy(NS, POLICY, c, spec.clone());
        child["status"] = json!({"compliant": "NonCompliant"});
        double.put_value(child).unwrap();
    }
    double
        .put_value(json!({
            "apiVersion": "talm.dev/v1alpha1", "kind": "PrecacheBudget",
            "metadata": {"name": "site-1"},
            "spec": {"clusterSelector": {"matchLabels": {"site": "site-1"}},
                     "bandwidth": format!("{BUDGET_MIB}Mi"), "maxConcurrentClusters": 2}
        }))
        .unwrap();
    let hub = start_hub_for_agents(&double, "talm-hub-budget").await;

    // Two agents, each on its own node.
    let hub_dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&double, hub_dir.path());
    let mut agents = Vec::new();
    for name in CLUSTERS {
        let token = talm_hub_agents(&kc, &["token", name]);
        let node = Node::new(&reg);
        let dir = tempfile::Builder::new()
            .prefix(&format!("talm-budget-{name}-"))
            .tempdir()
            .unwrap();
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = agent_command(
            &agent_bin,
            hub.grpc,
            &hub.hub_ca,
            &token,
            dir.path(),
            node.state.path(),
            node.root.path(),
        )
        .args([
            "--precache-storage-driver",
            "vfs",
            "--precache-parallel",
            "4",
        ])
        .env_remove("TALM_AGENT_STATE_DIR")
        .env_remove("TALM_HOST_ROOT")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
        agents.push(Agent {
            name,
            child,
            log,
            _node: node,
            _dir: dir,
        });
    }
    for c in CLUSTERS {
        wait_for(&format!("{c} connected"), || {
            spoke_agent(&double, c).filter(|a| a["status"]["connected"] == true)
        })
        .await;
    }

    // Every version of the SpokeAgents from here on: each cluster's first pre-cache task
    // (held or not), the cap it was let in with, the most the caps in force (let in, not
    // finished) ever added up to, and when the first was let in.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let api: kube::Api<SpokeAgent> = kube::Api::all(double.client());
    let mut events = api
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = events.try_next().await {
                let (WatchEvent::Added(a) | WatchEvent::Modified(a)) = ev else {
                    continue;
                };
                let Some(t) = a.spec.precache.as_ref() else {
                    continue;
                };
                let c = a.metadata.name.clone().unwrap_or_default();
                let finished = a
                    .status
                    .as_ref()
                    .and_then(|st| st.precache.as_ref())
                    .filter(|r| r.id == t.id)
                    .and_then(|r| TaskState::from_name(&r.state))
                    .is_some_and(TaskState::is_final);
                let mut s = seen.lock().unwrap();
                s.held.entry(c.clone()).or_insert(t.hold);
                if !t.hold {
                    s.first_let_in.get_or_insert_with(unix_now);
                    if let Some(cap) = t.rate_limit_bytes_per_second {
                        s.caps.entry(c.clone()).or_insert(cap);
                    }
                }
                // Unbounded (no cap while let in) counts as more than any budget.
                match (t.hold || finished, t.rate_limit_bytes_per_second) {
                    (true, _) => s.in_force.remove(&c),
                    (false, cap) => s.in_force.insert(c, cap.unwrap_or(i64::MAX)),
                };
                let sum = s.in_force.values().fold(0i64, |a, b| a.saturating_add(*b));
                s.max_in_force = s.max_in_force.max(sum);
            }
        })
    };

    // The CGU, disabled: pre-caching runs first.
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS},
            "spec": {"clusters": CLUSTERS, "managedPolicies": [POLICY],
                     "remediationStrategy": {"maxConcurrency": 2, "timeout": 60},
                     "preCaching": true, "enable": false}
        }))
        .unwrap();
    eprintln!("CGU created after {:?}", t0.elapsed());

    // Watch the tasks: held when assigned, then let in with caps; when the first was let in.
    // A watch sees every version (the scheduler lets a task in within tens of milliseconds of
    // its assignment, faster than a poll would see the held one).
    let deadline = Instant::now() + WAIT;
    loop {
        let cgu = operator_support::cgu(&double, NS, CGU);
        let states = cgu
            .as_ref()
            .and_then(|c| c["status"]["precaching"]["status"].as_object().cloned())
            .unwrap_or_default();
        if let Some((c, s)) = states.iter().find(|(_, s)| {
            s.as_str()
                .is_some_and(|s| s.contains("Failed") || s.contains("Timeout"))
        }) {
            panic!(
                "{c}: pre-cache {s}; CGU status {:#}",
                cgu.unwrap()["status"]
            );
        }
        if states.len() == CLUSTERS.len() && states.values().all(|s| s == "Succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pre-caching did not succeed within {WAIT:?}: {states:?}"
        );
        for a in &mut agents {
            assert!(
                matches!(a.child.try_wait(), Ok(None)),
                "agent {} exited",
                a.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("pre-caching Succeeded after {:?}", t0.elapsed());
    watch.abort();
    let Seen {
        held,
        caps,
        max_in_force,
        first_let_in,
        ..
    } = std::mem::take(&mut *seen.lock().unwrap());

    // The scheduler held both tasks when it assigned them, then let them in under the budget.
    for c in CLUSTERS {
        assert_eq!(
            held.get(c),
            Some(&true),
            "{c}: the task was not held at first"
        );
    }
    let budget = (BUDGET_MIB << 20) as i64;
    assert_eq!(
        caps.len(),
        CLUSTERS.len(),
        "both let in with a cap: {caps:?}"
    );
    // Whatever the order the two were let in (one alone at the whole budget, then lowered
    // before the other is let in), the caps in force never add up to more than the budget.
    assert!(
        max_in_force <= budget,
        "the caps in force added up to {max_in_force} at one point, over the budget {budget}"
    );

    // The registry: every blob once per node, and the combined rate after the first let-in.
    let served = tokio::task::block_in_place(|| reg.served_blob_bytes()) - served_before;
    assert_eq!(
        served,
        2 * per_node,
        "the registry serves every blob once per node"
    );
    let reqs = tokio::task::block_in_place(|| reg.blob_requests());
    let let_in = first_let_in.expect("a let-in was seen");
    let after: Vec<&BlobRequest> = reqs.iter().filter(|r| start_of(r) >= let_in).collect();
    let (bytes, secs) = window(&after);
    let rate = bytes as f64 / secs;
    let x = BUDGET_MIB as f64 * MIB;
    eprintln!(
        "combined rate at the registry: {:.2} MiB/s over {secs:.2} s ({:.1} MiB of {:.1} MiB \
         served after the first let-in) = {:.3}× the {BUDGET_MIB} MiB/s budget; caps {caps:?}",
        rate / MIB,
        bytes as f64 / MIB,
        served as f64 / MIB,
        rate / x
    );
    assert!(
        bytes as f64 >= 0.9 * served as f64,
        "most bytes must come after the let-in ({bytes} of {served})"
    );
    assert!(
        rate <= x * 1.05,
        "combined rate {:.2} MiB/s exceeds the budget {BUDGET_MIB} MiB/s + 5%",
        rate / MIB
    );
    drop(agents);
    hub.stop().await;
}
