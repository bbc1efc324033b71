//! End to end with real agents (issue 6 §5): one operator replica (the `talm-hub run` library
//! entry point, with its agent gateway serving mTLS gRPC on 127.0.0.1) against the in-process
//! Kubernetes API double, and three real `talm-agent run` processes, each on its own fake node:
//! a temp host root made by `backup_support::make_node` with a real ostree sysroot, its own
//! real etcd (client-certificate TLS), its own state dir and vfs containers-storage, and a
//! registries.conf that reaches a real Debian `docker-registry` over plain HTTP.
//!
//! The CGU asks for pre-caching (spec derived by the engine from a ClusterVersion policy whose
//! desired image is the fixture's release image on the local registry, plus a PreCachingConfig
//! with `additionalImages`, `excludePrecachePatterns` and `spaceRequired`) and a backup. It is
//! created disabled, as TALM flows do: the agents pre-cache, then the test enables it, the
//! agents take their backups, and the operator releases the clusters batch by batch into the
//! policies' Placements. A compliance simulator plays RHACM's part: when a cluster appears in a
//! policy's Placement it patches the child and the root policy status to Compliant (as TALM's
//! kuttl suite does by hand). The CGU must reach `Succeeded`.
//!
//! Checked, each against its own source of truth: the CGU conditions and per-cluster pre-cache
//! and backup states; each agent's pre-cache journal (`<state>/precache/status.json`: the hub's
//! task id, every expected image imported, the excluded one absent) and containers-storage
//! itself (`skopeo inspect containers-storage:[vfs@…]`); each node's completed backup (the
//! completion marker under `/var/recovery/backup`); the registry's own log (it served exactly
//! the expected blob bytes, once per node); that no cluster was released before its backup was
//! complete on its node; the batch order; and the cleanup after success (no Placement,
//! PlacementBinding or SpokeAgent task left enforcing anything).
//!
//! Tools are required, not optional: a missing tool fails the test with the apt packages to
//! install. Nothing waits a fixed time: every assertion waits (with a generous timeout) for the
//! state it expects.
//!
//! The harness shared with the other operator tests (the hub with its gateway, the agent
//! binary, the kubeconfig, `talm-hub agents`, readers of the double) is `operator_support`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unused_imports)]
#[path = "../../agent/tests/backup_support/mod.rs"]
mod backup_support;
mod operator_support;
#[path = "../../agent/tests/precache_support/mod.rs"]
mod precache_support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_support::{Etcd, make_node, make_sysroot, make_tls, unlock_sysroot};
use kube::Api;
use kube::api::{Patch, PatchParams};
use operator_support::{
    GatewayHub, HUB_NS, agent_binary, agent_command, child_policy, enable_cgu, find_condition,
    kubeconfig, musthave, policy_templates, root_status_entries, spoke_agent, start_hub_for_agents,
    talm_hub_agents, text,
};
use precache_support::{Fixture, Registry, build_fixture};
use serde_json::{Value, json};
use talm_agent::backup::layout::{CURRENT, MARKER};
use talm_kube_double::KubeDouble;
use talm_shared::api::rhacm::Policy;
use tokio::sync::watch;

/// Namespace of the CGU, the root policies and the PreCachingConfig.
const NS: &str = "default";
const CGU: &str = "cgu-e2e";
const SUFFIX: &str = "e2e";
const P_CV: &str = "e2e-cluster-version";
const P_CFG: &str = "e2e-site-config";
const PCC: &str = "e2e-precache";
const CLUSTERS: [&str; 3] = ["sno-1", "sno-2", "sno-3"];
/// Generous: a cold debug agent on a loaded 2-core machine pre-caches and backs up in seconds,
/// but other test processes may share the cores.
const WAIT: Duration = Duration::from_secs(300);

const TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "etcd",
    "etcdctl",
    "ostree",
    "chattr",
];
const APT_HINT: &str = "apt-get install -y --no-install-recommends docker-registry skopeo umoci \
                        etcd-server etcd-client ostree e2fsprogs (see .ci/run)";

/// Fails (never skips) when the test cannot run here.
fn require_environment() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    assert_eq!(
        uid, 0,
        "this test needs root (backups keep file owners and xattrs; ostree deployments)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for t in TOOLS {
        assert!(
            std::env::split_paths(&path).any(|d| d.join(t).is_file()),
            "required tool `{t}` is not installed (not on PATH); install it: {APT_HINT}"
        );
    }
}

// ----- harness -----------------------------------------------------------------------------

/// When the test started (for the progress lines it prints).
fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

async fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    operator_support::wait_for_within(WAIT, Duration::from_millis(50), what, f).await
}

/// One fake single-node cluster: host root, etcd, and (once spawned) its agent. Dropping it
/// kills the agent and etcd and unlocks the ostree deployments so the temp dir can go.
struct Spoke {
    name: &'static str,
    root: PathBuf,
    state: PathBuf,
    agent: Option<Child>,
    etcd: Option<Etcd>,
    dir: tempfile::TempDir,
}

impl Drop for Spoke {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- {} agent log (last 40 lines, newest first) ---",
                self.name
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.etcd.take();
        unlock_sysroot(&self.root);
    }
}

/// The host path (as the agent sees it) of the etcd client material that
/// `backup_support::Etcd::access_in` copies into the host root.
const ETCD_CERTS: &str = "/etc/kubernetes/static-pod-resources/etcd-certs/test";

impl Spoke {
    fn prepare(name: &'static str, reg: &Registry) -> Spoke {
        let dir = tempfile::Builder::new()
            .prefix(&format!("talm-e2e-{name}-"))
            .tempdir()
            .unwrap();
        let root = dir.path().join("host");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root).unwrap();
        make_node(&root);
        make_sysroot(&root, 2);
        // Pre-caching: containers-storage dirs and a registries.conf that reaches the plain-HTTP
        // registry (the pull secret, /var/lib/kubelet/config.json, is make_node's `{}`).
        for d in ["var/lib/containers/storage", "run/containers/storage"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        backup_support::put(
            &root,
            "/etc/containers/registries.conf",
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                reg.host
            )
            .as_bytes(),
        );
        let etcd = Etcd::start(
            name,
            &dir.path().join("etcd"),
            &dir.path().join("logs"),
            Some(make_tls(&dir.path().join("etcd-tls"))),
            None,
        );
        etcd.ctl(&["put", &format!("/registry/e2e/{name}"), name])
            .unwrap();
        // Copies the client certificate, key and CA under ETCD_CERTS in the host root.
        let access = etcd.access_in(&root);
        assert_eq!(
            access.ca.as_deref(),
            Some(Path::new(ETCD_CERTS).join("ca.crt").as_path())
        );
        Spoke {
            name,
            root,
            state,
            agent: None,
            etcd: Some(etcd),
            dir,
        }
    }

    fn spawn_agent(&mut self, bin: &Path, hub: &GatewayHub, token: &str) {
        let d = self.dir.path();
        let etcd = self.etcd.as_ref().unwrap();
        let log = std::fs::File::create(d.join("agent.log")).unwrap();
        let child = agent_command(
            bin,
            hub.grpc,
            &hub.hub_ca,
            token,
            d,
            &self.state,
            &self.root,
        )
        // Backups: the node's etcd, no space margin (the temp root shares the build disk).
        .args(["--etcd-endpoints", &etcd.client_url])
        .args(["--etcd-cacert", &format!("{ETCD_CERTS}/ca.crt")])
        .args(["--etcd-cert", &format!("{ETCD_CERTS}/client.crt")])
        .args(["--etcd-key", &format!("{ETCD_CERTS}/client.key")])
        .args(["--node-name", self.name, "--space-margin-gib", "0"])
        // Pre-caching: vfs (no overlay mounts in a temp root).
        .args([
            "--precache-storage-driver",
            "vfs",
            "--precache-parallel",
            "4",
        ])
        .env_remove("TALM_AGENT_STATE_DIR")
        .env_remove("TALM_HOST_ROOT")
        .env_remove("ETCDCTL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
        self.agent = Some(child);
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn agent_alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn backup_complete(&self) -> bool {
        self.root
            .join("var/recovery")
            .join(CURRENT)
            .join(MARKER)
            .exists()
    }

    fn precache_journal(&self) -> Option<Value> {
        let b = std::fs::read(self.state.join("precache/status.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Whether the node's containers-storage holds `image` (`skopeo inspect --raw`).
    fn imported(&self, image: &str) -> bool {
        let storage = format!(
            "containers-storage:[vfs@{}+{}]{image}",
            self.root.join("var/lib/containers/storage").display(),
            self.root.join("run/containers/storage").display()
        );
        #[allow(clippy::disallowed_methods)] // reading the node's storage with the real tool
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(storage)
            .output()
            .unwrap();
        out.status.success()
    }
}

// ----- the hub's objects -------------------------------------------------------------------

fn managed_cluster(name: &str) -> Value {
    json!({
        "apiVersion": "cluster.open-cluster-management.io/v1",
        "kind": "ManagedCluster",
        "metadata": {"name": name, "labels": {"name": name, "du-profile": "e2e"}},
        "spec": {"hubAcceptsClient": true},
        "status": {"conditions": [{
            "type": "ManagedClusterConditionAvailable", "status": "True",
            "reason": "ManagedClusterAvailable", "message": "Managed cluster is available",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

/// A ConfigurationPolicy template holding one `musthave` object.
fn templates(policy: &str, object: Value) -> Value {
    policy_templates(&format!("{policy}-config"), json!([musthave(object)]))
}

/// The two managed policies: the platform upgrade (its ClusterVersion's desired image is the
/// release image the agents pre-cache) and a plain configuration policy.
fn policy_objects(release_image: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            P_CV,
            json!({
                "apiVersion": "config.openshift.io/v1",
                "kind": "ClusterVersion",
                "metadata": {"name": "version"},
                "spec": {"channel": "stable-4.99",
                         "desiredUpdate": {"version": "4.99.0", "image": release_image}}
            }),
        ),
        (
            P_CFG,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "site-config", "namespace": "openshift-config"},
                "data": {"ntp": "pool.e2e.invalid"}
            }),
        ),
    ]
}

/// Root policies (NonCompliant everywhere) and their child policies in each cluster namespace.
fn seed_policies(double: &KubeDouble, release_image: &str) {
    for (name, object) in policy_objects(release_image) {
        let spec = json!({
            "disabled": false,
            "remediationAction": "inform",
            "policy-templates": templates(name, object)
        });
        let entries: Vec<Value> = CLUSTERS
            .iter()
            .map(|c| json!({"clustername": c, "clusternamespace": c, "compliant": "NonCompliant"}))
            .collect();
        double
            .put_value(json!({
                "apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "Policy",
                "metadata": {"name": name, "namespace": NS},
                "spec": spec,
                "status": {"compliant": "NonCompliant", "status": entries}
            }))
            .unwrap();
        for c in CLUSTERS {
            let mut child = child_policy(NS, name, c, spec.clone());
            child["status"] = json!({"compliant": "NonCompliant"});
            double.put_value(child).unwrap();
        }
    }
}

fn placement_name(policy: &str) -> String {
    format!("{CGU}-{policy}-placement-{SUFFIX}")
}

/// The clusters a policy's Placement releases (None while it does not exist).
fn released(double: &KubeDouble, policy: &str) -> Option<Vec<String>> {
    operator_support::placement_values(double, NS, &placement_name(policy))
}

fn cgu(double: &KubeDouble) -> Option<Value> {
    operator_support::cgu(double, NS, CGU)
}

fn condition(c: &Value, type_: &str) -> Option<(String, String, String)> {
    find_condition(c, type_).map(|x| (text(x, "status"), text(x, "reason"), text(x, "message")))
}

/// `status.<field>.status` of the CGU when every cluster has `want`.
fn all_in_state(c: &Value, field: &str, want: &str) -> bool {
    let states = &c["status"][field]["status"];
    CLUSTERS.iter().all(|cl| states[*cl] == want)
}

// ----- the compliance simulator ------------------------------------------------------------

/// What the simulator saw when it released a cluster's policy: the order, and whether the
/// cluster's backup was complete on its node (hub state and node files) at that moment.
#[derive(Debug, Clone)]
struct Release {
    policy: String,
    cluster: String,
    /// `status.backup.status[cluster]` of the CGU.
    backup_state: String,
    /// The backup report in the cluster's SpokeAgent status (`id`, `state`).
    agent_backup: (String, String),
    /// Whether the node's completion marker existed.
    backup_on_node: bool,
}

/// Plays RHACM: a cluster that appears in a policy's Placement becomes Compliant on that
/// policy (child policy status, then the root policy's per-cluster entry), like TALM's kuttl
/// suite does by hand. Runs until `stop`.
async fn simulate_compliance(
    double: KubeDouble,
    roots: BTreeMap<&'static str, PathBuf>,
    log: Arc<Mutex<Vec<Release>>>,
    mut stop: watch::Receiver<bool>,
) {
    let client = double.client();
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        for policy in [P_CV, P_CFG] {
            for cluster in released(&double, policy).unwrap_or_default() {
                if !done.insert((policy.to_string(), cluster.clone())) {
                    continue;
                }
                let backup_state = cgu(&double)
                    .and_then(|c| {
                        c["status"]["backup"]["status"][&cluster]
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                let backup_on_node = roots
                    .get(cluster.as_str())
                    .is_some_and(|r| r.join("var/recovery").join(CURRENT).join(MARKER).exists());
                let agent_backup = spoke_agent(&double, &cluster)
                    .map(|a| {
                        let r = &a["status"]["backup"];
                        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                        (s("id"), s("state"))
                    })
                    .unwrap_or_default();
                eprintln!(
                    "[{:?}] released {cluster} into {policy} (backup {backup_state})",
                    started().elapsed()
                );
                log.lock().unwrap().push(Release {
                    policy: policy.to_string(),
                    cluster: cluster.clone(),
                    backup_state,
                    agent_backup,
                    backup_on_node,
                });
                let child: Api<Policy> = Api::namespaced(client.clone(), &cluster);
                child
                    .patch_status(
                        &format!("{NS}.{policy}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"compliant": "Compliant"}})),
                    )
                    .await
                    .unwrap();
                let root: Api<Policy> = Api::namespaced(client.clone(), NS);
                let mut entries = root_status_entries(&root, policy).await;
                for e in &mut entries {
                    if e["clustername"] == cluster.as_str() {
                        e["compliant"] = json!("Compliant");
                    }
                }
                let overall = if entries.iter().all(|e| e["compliant"] == "Compliant") {
                    "Compliant"
                } else {
                    "NonCompliant"
                };
                root.patch_status(
                    policy,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"compliant": overall, "status": entries}})),
                )
                .await
                .unwrap();
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

// ----- the test ----------------------------------------------------------------------------

/// The images a node must hold after pre-caching: the release image, its payload minus the
/// excluded component, and the PreCachingConfig's additional images.
fn expected_images(fx: &Fixture, excluded: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    set.insert(fx.release.clone());
    set.extend(
        fx.release_images
            .iter()
            .filter(|(name, _)| name != excluded)
            .map(|(_, spec)| spec.clone()),
    );
    set.extend(fx.additional.iter().cloned());
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cgu_with_precaching_and_backup_succeeds_with_three_real_agents() {
    require_environment();
    let t0 = started();
    let agent_bin = agent_binary("operator-agents-e2e-agent");
    let hub_dir = tempfile::tempdir().unwrap();

    // A real registry with a small release (3 payload images) and the fixture's extras.
    let reg = Registry::start_plain();
    let fx = build_fixture(&reg, 3, None);
    let excluded = fx.release_images[1].0.clone();
    let excluded_spec = fx.release_images[1].1.clone();
    let expected = expected_images(&fx, &excluded);
    let per_node_bytes = fx.unique_bytes(&expected.iter().cloned().collect::<Vec<_>>());
    let served_before = tokio::task::block_in_place(|| reg.served_blob_bytes());
    eprintln!(
        "fixture ready after {:?}: {} images per node, {per_node_bytes} blob bytes",
        t0.elapsed(),
        expected.len()
    );

    // Three nodes, each with its own etcd, ostree sysroot, storage and state.
    let mut spokes: Vec<Spoke> = CLUSTERS.iter().map(|c| Spoke::prepare(c, &reg)).collect();

    // The hub.
    let double = KubeDouble::start().await.unwrap();
    for c in CLUSTERS {
        double.put_value(managed_cluster(c)).unwrap();
    }
    seed_policies(&double, &fx.release);
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "PreCachingConfig",
            "metadata": {"name": PCC, "namespace": NS},
            "spec": {
                "spaceRequired": "1 GiB",
                "excludePrecachePatterns": [format!("^{excluded}$")],
                "additionalImages": fx.additional,
            }
        }))
        .unwrap();
    let hub = start_hub_for_agents(&double, "talm-hub-e2e").await;

    // Enroll the agents with tokens minted the way an operator would (Secrets through the API).
    let kc = kubeconfig(&double, hub_dir.path());
    for s in &mut spokes {
        let token = talm_hub_agents(&kc, &["token", s.name]);
        s.spawn_agent(&agent_bin, &hub, &token);
    }
    for c in CLUSTERS {
        wait_for(&format!("{c} enrolled"), || {
            double.get_value(
                "v1",
                "Secret",
                Some(HUB_NS),
                &format!("talm-enrollment-{c}"),
            )
        })
        .await;
    }

    // RHACM's part.
    let releases = Arc::new(Mutex::new(Vec::new()));
    let (sim_stop, sim_rx) = watch::channel(false);
    let roots: BTreeMap<&'static str, PathBuf> =
        spokes.iter().map(|s| (s.name, s.root.clone())).collect();
    let simulator = tokio::spawn(simulate_compliance(
        double.clone(),
        roots,
        releases.clone(),
        sim_rx,
    ));

    // The CGU, disabled: pre-caching runs first.
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS,
                         "annotations": {"cluster-group-upgrades-operator/name-suffix": SUFFIX}},
            "spec": {
                "clusters": CLUSTERS,
                "managedPolicies": [P_CV, P_CFG],
                "remediationStrategy": {"maxConcurrency": 2, "timeout": 60},
                "preCaching": true,
                "preCachingConfigRef": {"name": PCC, "namespace": NS},
                "backup": true,
                "enable": false
            }
        }))
        .unwrap();

    eprintln!("CGU created after {:?}", t0.elapsed());
    // Pre-caching: the engine derives the spec and every agent reports Succeeded.
    wait_for("pre-caching succeeded on every cluster", || {
        let c = cgu(&double)?;
        if let Some((_, reason, msg)) = condition(&c, "PrecachingSuceeded")
            && reason == "Failed"
        {
            panic!("pre-caching failed: {msg}; status {:#}", c["status"]);
        }
        all_in_state(&c, "precaching", "Succeeded").then_some(c)
    })
    .await;
    eprintln!("pre-caching Succeeded after {:?}", t0.elapsed());
    let c = wait_for("CGU not enabled after pre-caching", || {
        cgu(&double).filter(|c| {
            condition(c, "Progressing").is_some_and(|(s, r, _)| s == "False" && r == "NotEnabled")
        })
    })
    .await;
    assert_eq!(
        condition(&c, "PrecacheSpecValid"),
        Some((
            "True".into(),
            "PrecacheSpecIsWellFormed".into(),
            "Precaching spec is valid and consistent".into()
        ))
    );
    assert_eq!(
        condition(&c, "PrecachingSuceeded"),
        Some((
            "True".into(),
            "PrecachingCompleted".into(),
            "Precaching is completed for all clusters".into()
        ))
    );
    let spec = &c["status"]["precaching"]["spec"];
    assert_eq!(spec["platformImage"], fx.release.as_str(), "{spec:#}");
    assert_eq!(spec["spaceRequired"], "1", "{spec:#}");
    assert_eq!(spec["additionalImages"], json!(fx.additional), "{spec:#}");
    assert_eq!(
        spec["excludePrecachePatterns"],
        json!([format!("^{excluded}$")])
    );
    assert_eq!(
        c["status"]["remediationPlan"],
        json!([["sno-1", "sno-2"], ["sno-3"]])
    );
    assert!(
        releases.lock().unwrap().is_empty(),
        "nothing is released before the CGU is enabled"
    );
    let uid = c["metadata"]["uid"].as_str().unwrap().to_string();
    let precache_id = format!("{NS}/{CGU}/{uid}/precache");
    let backup_id = format!("{NS}/{CGU}/{uid}/backup");
    assert!(
        spokes.iter().all(|s| !s.backup_complete()),
        "no backup before the CGU is enabled"
    );
    // The agents' reports of the hub's pre-cache task, in SpokeAgent status.
    for c in CLUSTERS {
        let a = spoke_agent(&double, c).expect("SpokeAgent created by the engine");
        assert_eq!(a["spec"]["precache"]["id"], precache_id.as_str(), "{c}");
        assert!(a["spec"]["backup"].is_null(), "{c}: backup before enable");
        let st = &a["status"];
        assert_eq!(st["connected"], true, "{c}: {st:#}");
        assert_eq!(st["precache"]["id"], precache_id.as_str(), "{c}: {st:#}");
        assert_eq!(st["precache"]["state"], "Succeeded", "{c}: {st:#}");
    }

    // Each node: its agent's journal names the hub's task, every expected image is imported and
    // in containers-storage, the excluded one is not.
    for s in &spokes {
        let j = s.precache_journal().expect("pre-cache journal");
        assert_eq!(j["state"], "Succeeded", "{}: {j:#}", s.name);
        assert_eq!(j["taskId"], precache_id.as_str(), "{}", s.name);
        let images: BTreeMap<String, String> = j["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            images.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{}",
            s.name
        );
        assert!(
            images.values().all(|st| st == "imported"),
            "{}: {images:?}",
            s.name
        );
        tokio::task::block_in_place(|| {
            for img in &expected {
                assert!(
                    s.imported(img),
                    "{}: {img} is not in containers-storage",
                    s.name
                );
            }
            assert!(
                !s.imported(&excluded_spec),
                "{}: the excluded {excluded} was imported",
                s.name
            );
        });
    }
    // The registry served every node's blobs, each exactly once per node.
    let served = tokio::task::block_in_place(|| reg.served_blob_bytes()) - served_before;
    assert!(served > 0);
    assert_eq!(
        served,
        per_node_bytes * CLUSTERS.len() as u64,
        "blob bytes served for 3 nodes"
    );

    eprintln!("pre-cache checks done after {:?}; enabling", t0.elapsed());
    // Enable: backups, then the batches.
    enable_cgu(double.client(), NS, CGU).await;

    let c = wait_for("CGU Succeeded", || {
        let c = cgu(&double)?;
        if let Some((s, r, m)) = condition(&c, "Succeeded")
            && s == "False"
        {
            panic!("the CGU failed: {r}: {m}; status {:#}", c["status"]);
        }
        (condition(&c, "Succeeded").is_some_and(|(s, _, _)| s == "True")).then_some(c)
    })
    .await;
    eprintln!("CGU Succeeded after {:?}", t0.elapsed());
    assert_eq!(
        condition(&c, "Succeeded"),
        Some((
            "True".into(),
            "Completed".into(),
            "All clusters are compliant with all the managed policies".into()
        )),
        "{:#}",
        c["status"]
    );
    assert_eq!(
        condition(&c, "Progressing"),
        Some((
            "False".into(),
            "Completed".into(),
            "All clusters are compliant with all the managed policies".into()
        ))
    );
    assert_eq!(
        condition(&c, "BackupSuceeded"),
        Some((
            "True".into(),
            "BackupCompleted".into(),
            "Backup is completed for all clusters".into()
        ))
    );
    assert!(
        all_in_state(&c, "precaching", "Succeeded"),
        "{:#}",
        c["status"]
    );
    assert!(all_in_state(&c, "backup", "Succeeded"), "{:#}", c["status"]);
    let done: BTreeSet<String> = c["status"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "complete")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(done, CLUSTERS.iter().map(|c| c.to_string()).collect());

    // Every node holds a completed backup of its own etcd; the agents report the hub's task.
    for s in &spokes {
        assert!(s.backup_complete(), "{}: no completed backup", s.name);
        let snaps: Vec<_> = backup_support::files_under(&s.root.join("var/recovery").join(CURRENT))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("snapshot"))
            })
            .collect();
        assert!(
            !snaps.is_empty(),
            "{}: no etcd snapshot in the backup",
            s.name
        );
    }

    // Releases: every (policy, cluster) once, batch 1 before batch 2, and never before the
    // cluster's backup was complete (on the hub and on the node).
    let log = releases.lock().unwrap().clone();
    assert_eq!(log.len(), 2 * CLUSTERS.len(), "{log:#?}");
    for r in &log {
        assert_eq!(
            r.backup_state, "Succeeded",
            "released before its backup: {r:?}"
        );
        assert_eq!(
            r.agent_backup,
            (backup_id.clone(), "Succeeded".to_string()),
            "the agent's report of the hub's backup task: {r:?}"
        );
        assert!(
            r.backup_on_node,
            "released before its node had a backup: {r:?}"
        );
    }
    let first_sno3 = log.iter().position(|r| r.cluster == "sno-3").unwrap();
    let batch1_done = log.iter().rposition(|r| r.cluster != "sno-3").unwrap();
    assert!(batch1_done < first_sno3, "batch order: {log:#?}");
    for cluster in CLUSTERS {
        let order: Vec<&str> = log
            .iter()
            .filter(|r| r.cluster == cluster)
            .map(|r| r.policy.as_str())
            .collect();
        assert_eq!(order, [P_CV, P_CFG], "{cluster}: policies in spec order");
    }

    // Cleanup after success: no Placement or binding left, SpokeAgent tasks cleared, and the
    // agents keep what they did.
    wait_for("enforcement objects and agent tasks cleared", || {
        let placements = double
            .list_values(
                "cluster.open-cluster-management.io/v1beta1",
                "Placement",
                None,
            )
            .len();
        let bindings = double
            .list_values(
                "policy.open-cluster-management.io/v1",
                "PlacementBinding",
                None,
            )
            .len();
        let tasks_left = CLUSTERS.iter().any(|c| {
            spoke_agent(&double, c)
                .is_none_or(|a| !a["spec"]["precache"].is_null() || !a["spec"]["backup"].is_null())
        });
        (placements == 0 && bindings == 0 && !tasks_left).then_some(())
    })
    .await;
    // The status follows the spec: no task, no task report; the agents stay connected.
    for c in CLUSTERS {
        wait_for(
            &format!("{c}: SpokeAgent status without task reports"),
            || {
                spoke_agent(&double, c).filter(|a| {
                    let st = &a["status"];
                    st["connected"] == true && st["precache"].is_null() && st["backup"].is_null()
                })
            },
        )
        .await;
    }
    for s in &mut spokes {
        assert!(
            s.agent_alive(),
            "{} agent exited:\n{}",
            s.name,
            s.agent_log()
        );
        assert!(
            s.backup_complete(),
            "{}: clearing the task removed the backup",
            s.name
        );
        let j = s.precache_journal().unwrap();
        assert_eq!(j["state"], "Succeeded", "{}", s.name);
    }

    let _ = sim_stop.send(true);
    simulator.await.unwrap();
    drop(spokes);
    hub.stop().await;
    double.shutdown().await;
    eprintln!("end to end in {:?}", t0.elapsed());
}
