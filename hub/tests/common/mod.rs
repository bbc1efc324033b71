//! Test harness for black-box scenarios against `talm-hub plan`.
//!
//! A [`World`] is the set of hub objects a test works on. [`World::run`] writes them to a
//! temporary directory as one JSON `List`, runs `talm-hub plan -f <file> --now <now> -o yaml`
//! and replaces the world with every object the run printed (inputs with changes, created
//! Placements/PlacementBindings/SpokeAgents). The `events.k8s.io/v1` Events of that run are kept
//! apart in [`World::events`], so each step's assertions see only the events it caused; the
//! accumulated history is in [`World::all_events`]. Between steps a test edits the world
//! (compliance, CGU spec, agent reports, cluster availability) and advances the clock.
//!
//! Set `TALM_TEST_KEEP=1` to keep the temporary directories (inputs and outputs of every step).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

/// The §6.1 fixture directory.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/talm");
/// The name suffix every fixture CGU carries, so generated names match kuttl's.
pub const SUFFIX: &str = "kuttl";
/// The annotation that fixes the suffix of generated names.
pub const SUFFIX_ANNOTATION: &str = "cluster-group-upgrades-operator/name-suffix";
/// The CGU finalizer.
pub const FINALIZER: &str = "ran.openshift.io/cleanup-finalizer";
/// Namespace of every fixture CGU and root policy.
pub const NS: &str = "default";

/// policy0 (CatalogSource `rh-du-operators`).
pub const P0: &str = "policy0-common-config-policy";
/// policy1 (ClusterVersion 4.9.8, stable-4.9, no image).
pub const P1: &str = "policy1-common-cluster-version-policy";
/// policy2 (Subscription performance-addon-operator, channel 4.9).
pub const P2: &str = "policy2-common-pao-sub-policy";
/// policy3 (Subscription ptp-operator, channel 4.9).
pub const P3: &str = "policy3-common-ptp-sub-policy";
/// policy4 (Subscription sriov-network-operator, channel 4.9).
pub const P4: &str = "policy4-common-sriov-sub-policy";
/// policy5 (five Subscriptions with Manual approval).
pub const P5: &str = "policy5-subscriptions";

/// The payload update-graph.yaml gives for 4.9.8.
pub const PAYLOAD_498: &str = "quay.io/openshift-release-dev/ocp-release@sha256:c91c0faf7ae3c480724a935b3dab7e5f49aae19d195b12f3a4ae38f8440ea96b";
/// The CatalogSource image of policy0.
pub const INDEX_IMAGE: &str = "registry.example.com:5000/olm-mirror/redhat-operator-index:v4.9";

/// The clock every world starts at.
pub const T0: &str = "2026-03-02T10:00:00Z";

/// A cluster's compliance with a root policy, as written into `status.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compliance {
    /// `compliant: Compliant`.
    Compliant,
    /// `compliant: NonCompliant`.
    NonCompliant,
    /// `compliant: Pending` (counts as NonCompliant).
    Pending,
    /// An entry without a `compliant` field (counts as NonCompliant).
    MissingField,
    /// No entry at all: the cluster is NotMatched.
    Absent,
}
pub use Compliance::{Absent, Compliant, MissingField, NonCompliant, Pending};

/// The objects of one test, the clock, and the history of runs.
pub struct World {
    /// Every object but Events, after the last run (or as built before the first).
    pub objects: Vec<Value>,
    /// The Events printed by the last run.
    pub events: Vec<Value>,
    /// The Events of every run so far, in order.
    pub all_events: Vec<Value>,
    /// The `--now` of the next run.
    pub now: Timestamp,
    /// `--update-graph` file, if any.
    pub update_graph: Option<PathBuf>,
    /// stdout of the last run.
    pub last_stdout: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    step: usize,
}

impl World {
    /// An empty world at [`T0`] with no update graph.
    pub fn empty() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("talm-scenario-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let keep = std::env::var_os("TALM_TEST_KEEP").is_some();
        let tmp = if keep {
            eprintln!("talm test files kept in {}", dir.display());
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        World {
            objects: Vec::new(),
            events: Vec::new(),
            all_events: Vec::new(),
            now: T0.parse().expect("T0"),
            update_graph: None,
            last_stdout: String::new(),
            dir,
            _tmp: tmp,
            step: 0,
        }
    }

    /// The §6.1 fleet: spoke1..spoke6, policy0..policy5 with the default compliance matrix and
    /// their child policies, and the 4.9.8 update graph.
    pub fn talm() -> World {
        let mut w = World::empty();
        for f in [
            "managed-clusters.yaml",
            "policies.yaml",
            "child-policies.yaml",
        ] {
            let path = Path::new(FIXTURES).join("objects").join(f);
            w.objects.extend(read_yaml_objects(&path));
        }
        w.update_graph = Some(Path::new(FIXTURES).join("update-graph.yaml"));
        w
    }

    /// The temporary directory the runs write to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ---------------------------------------------------------------- running

    /// Moves the clock forward.
    pub fn advance(&mut self, secs: i64) -> &mut Self {
        self.now = self
            .now
            .checked_add(SignedDuration::from_secs(secs))
            .expect("time");
        self
    }

    /// The clock as `--now` takes it.
    pub fn now_str(&self) -> String {
        self.now.to_string()
    }

    /// `self.now + secs` as a timestamp.
    pub fn at(&self, secs: i64) -> Timestamp {
        self.now
            .checked_add(SignedDuration::from_secs(secs))
            .expect("time")
    }

    /// Writes the world to `step-N.json` and returns the path.
    pub fn write_input(&mut self) -> PathBuf {
        self.step += 1;
        let path = self.dir.join(format!("step-{:02}.json", self.step));
        let list = json!({"apiVersion": "v1", "kind": "List", "items": self.objects});
        std::fs::write(&path, serde_json::to_vec_pretty(&list).expect("json")).expect("write");
        path
    }

    /// Runs `talm-hub` with these arguments (no implicit ones).
    pub fn talm_hub(args: &[&str]) -> Output {
        talm_hub(args)
    }

    /// Runs `talm-hub plan` on the world at `now` with `-o yaml` and the update graph, expects
    /// success, and replaces the world with the output.
    pub fn run(&mut self) -> &mut Self {
        let input = self.write_input();
        let now = self.now_str();
        let input_s = input.to_string_lossy().into_owned();
        let mut args = vec!["plan", "-f", &input_s, "--now", &now, "-o", "yaml"];
        let graph = self
            .update_graph
            .as_ref()
            .map(|g| g.to_string_lossy().into_owned());
        if let Some(g) = &graph {
            args.push("--update-graph");
            args.push(g);
        }
        let out = talm_hub(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let out_path = self.dir.join(format!("step-{:02}.out.yaml", self.step));
        let _ = std::fs::write(&out_path, &stdout);
        assert!(
            out.status.success(),
            "talm-hub plan failed at step {} (now {now}), exit {:?}\ninput: {}\nstderr:\n{stderr}",
            self.step,
            out.status.code(),
            input.display()
        );
        let objects = parse_objects(&stdout).unwrap_or_else(|e| {
            panic!(
                "step {}: cannot parse `-o yaml` output: {e}\n{stdout}",
                self.step
            )
        });
        let (events, rest): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(is_event);
        self.objects = rest;
        self.all_events.extend(events.iter().cloned());
        self.events = events;
        self.last_stdout = stdout;
        self
    }

    /// Advances the clock, then runs.
    pub fn run_after(&mut self, secs: i64) -> &mut Self {
        self.advance(secs);
        self.run()
    }

    // ---------------------------------------------------------------- objects

    /// Adds an object (replacing one with the same kind, namespace and name).
    pub fn add(&mut self, obj: Value) -> &mut Self {
        let (k, ns, n) = (kind(&obj), namespace(&obj), name(&obj));
        self.objects
            .retain(|o| !(kind(o) == k && namespace(o) == ns && name(o) == n));
        self.objects.push(obj);
        self
    }

    /// Adds a CGU `name` in `default` with the `kuttl` suffix annotation and this spec.
    pub fn add_cgu(&mut self, name: &str, spec: Value) -> &mut Self {
        self.add(cgu(name, spec))
    }

    /// Removes the object; returns whether it was there.
    pub fn remove(&mut self, kind_: &str, ns: &str, name_: &str) -> bool {
        let before = self.objects.len();
        self.objects
            .retain(|o| !(kind(o) == kind_ && namespace(o) == ns && name(o) == name_));
        before != self.objects.len()
    }

    /// An object by kind, namespace (`""` for cluster-scoped) and name.
    pub fn find(&self, kind_: &str, ns: &str, name_: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| kind(o) == kind_ && namespace(o) == ns && name(o) == name_)
    }

    /// Mutable access to an object; panics when missing.
    pub fn get_mut(&mut self, kind_: &str, ns: &str, name_: &str) -> &mut Value {
        self.objects
            .iter_mut()
            .find(|o| kind(o) == kind_ && namespace(o) == ns && name(o) == name_)
            .unwrap_or_else(|| panic!("no {kind_} {ns}/{name_}"))
    }

    /// Every object of a kind.
    pub fn all(&self, kind_: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| kind(o) == kind_).collect()
    }

    /// The CGU `default/<name>`; panics when missing.
    pub fn cgu(&self, name_: &str) -> &Value {
        self.find("ClusterGroupUpgrade", NS, name_)
            .unwrap_or_else(|| panic!("no CGU {NS}/{name_} in the world"))
    }

    /// Applies a JSON merge patch (RFC 7386) to the CGU's spec.
    pub fn patch_cgu_spec(&mut self, name_: &str, patch: Value) -> &mut Self {
        let c = self.get_mut("ClusterGroupUpgrade", NS, name_);
        merge_patch(c.get_mut("spec").expect("spec"), &patch);
        self
    }

    /// Applies a JSON merge patch to any object.
    pub fn patch(&mut self, kind_: &str, ns: &str, name_: &str, patch: Value) -> &mut Self {
        merge_patch(self.get_mut(kind_, ns, name_), &patch);
        self
    }

    /// Marks the CGU as being deleted (`metadata.deletionTimestamp = now`).
    pub fn delete_cgu(&mut self, name_: &str) -> &mut Self {
        let now = self.now_str();
        let c = self.get_mut("ClusterGroupUpgrade", NS, name_);
        c["metadata"]["deletionTimestamp"] = json!(now);
        self
    }

    // ---------------------------------------------------------------- policies

    /// Sets a cluster's compliance in the root policy `default/<policy>` (and adds the child
    /// policy `default.<policy>` in the cluster namespace when the cluster gets an entry).
    pub fn set_compliance(&mut self, policy: &str, cluster: &str, c: Compliance) -> &mut Self {
        self.set_compliance_in(NS, policy, cluster, c)
    }

    /// [`World::set_compliance`] for a root policy in another namespace.
    pub fn set_compliance_in(
        &mut self,
        ns: &str,
        policy: &str,
        cluster: &str,
        c: Compliance,
    ) -> &mut Self {
        let root = self.get_mut("Policy", ns, policy);
        let status = root
            .as_object_mut()
            .expect("object")
            .entry("status")
            .or_insert_with(|| json!({}));
        let entries = status
            .as_object_mut()
            .expect("status object")
            .entry("status")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("status.status list");
        entries.retain(|e| e["clustername"] != cluster);
        let entry = match c {
            Absent => None,
            MissingField => Some(json!({"clustername": cluster, "clusternamespace": cluster})),
            Compliant => Some(entry(cluster, "Compliant")),
            NonCompliant => Some(entry(cluster, "NonCompliant")),
            Pending => Some(entry(cluster, "Pending")),
        };
        let has_entry = entry.is_some();
        if let Some(e) = entry {
            entries.push(e);
        }
        let all_compliant = entries.iter().all(|e| e["compliant"] == "Compliant");
        status["compliant"] = json!(if all_compliant {
            "Compliant"
        } else {
            "NonCompliant"
        });
        if has_entry {
            let child = format!("{ns}.{policy}");
            if self.find("Policy", cluster, &child).is_none() {
                let root = self.find("Policy", ns, policy).expect("root").clone();
                self.add(child_policy(&root, cluster));
            }
        }
        self
    }

    /// Sets several clusters at once.
    pub fn set_compliance_many(
        &mut self,
        policy: &str,
        clusters: &[&str],
        c: Compliance,
    ) -> &mut Self {
        for cl in clusters {
            self.set_compliance(policy, cl, c);
        }
        self
    }

    /// Makes `cluster` Compliant with every listed policy.
    pub fn comply(&mut self, cluster: &str, policies: &[&str]) -> &mut Self {
        for p in policies {
            self.set_compliance(p, cluster, Compliant);
        }
        self
    }

    /// Replaces the whole `status.status` of a root policy: one entry per `(cluster, c)`,
    /// clusters not listed become NotMatched.
    pub fn set_matrix_row(&mut self, policy: &str, row: &[(&str, Compliance)]) -> &mut Self {
        let root = self.get_mut("Policy", NS, policy);
        root["status"] = json!({"status": []});
        for (cl, c) in row {
            self.set_compliance(policy, cl, *c);
        }
        self
    }

    /// Removes `status` from a root policy: every cluster then counts as NonCompliant.
    pub fn clear_policy_status(&mut self, policy: &str) -> &mut Self {
        let root = self.get_mut("Policy", NS, policy);
        root.as_object_mut().expect("object").remove("status");
        self
    }

    /// Sets an annotation on a root policy (e.g. `ran.openshift.io/soak-seconds`).
    pub fn annotate_policy(&mut self, policy: &str, key: &str, value: &str) -> &mut Self {
        let root = self.get_mut("Policy", NS, policy);
        root["metadata"]["annotations"][key] = json!(value);
        self
    }

    /// Copies the root policy `default/<policy>` (with status) to namespace `ns`, with child
    /// policies `<ns>.<policy>` in the namespaces of `clusters`.
    pub fn copy_policy_to(&mut self, policy: &str, ns: &str, clusters: &[&str]) -> &mut Self {
        let mut root = self.find("Policy", NS, policy).expect("root").clone();
        root["metadata"]["namespace"] = json!(ns);
        for cl in clusters {
            self.add(child_policy(&root, cl));
        }
        self.add(root);
        self
    }

    /// Removes a root policy and all its children.
    pub fn delete_policy(&mut self, ns: &str, policy: &str) -> &mut Self {
        let child = format!("{ns}.{policy}");
        self.objects.retain(|o| {
            !(kind(o) == "Policy"
                && ((namespace(o) == ns && name(o) == policy) || name(o) == child))
        });
        self
    }

    /// Removes only the child policies `<ns>.<policy>` (the root stays).
    pub fn delete_children(&mut self, ns: &str, policy: &str) -> &mut Self {
        let child = format!("{ns}.{policy}");
        self.objects
            .retain(|o| !(kind(o) == "Policy" && name(o) == child));
        self
    }

    // ---------------------------------------------------------------- clusters

    /// The labels of a ManagedCluster.
    pub fn labels(&self, cluster: &str) -> BTreeMap<String, String> {
        let mc = self
            .find("ManagedCluster", "", cluster)
            .unwrap_or_else(|| panic!("no ManagedCluster {cluster}"));
        mc["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The annotations of a ManagedCluster.
    pub fn annotations(&self, cluster: &str) -> BTreeMap<String, String> {
        let mc = self.find("ManagedCluster", "", cluster).expect("cluster");
        mc["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets the `ManagedClusterConditionAvailable` condition of a cluster.
    pub fn set_available(&mut self, cluster: &str, available: bool) -> &mut Self {
        let mc = self.get_mut("ManagedCluster", "", cluster);
        let status = if available { "True" } else { "Unknown" };
        mc["status"]["conditions"] = json!([{
            "type": "ManagedClusterConditionAvailable",
            "status": status,
            "reason": if available { "ManagedClusterAvailable" } else { "ManagedClusterLeaseUpdateStopped" },
            "message": if available { "Managed cluster is available" } else { "Registration agent stopped updating its lease." },
            "lastTransitionTime": T0,
        }]);
        self
    }

    // ---------------------------------------------------------------- agents

    /// The SpokeAgent of a cluster (`<cluster>/<cluster>`).
    pub fn spoke_agent(&self, cluster: &str) -> Option<&Value> {
        self.find("SpokeAgent", cluster, cluster)
    }

    /// Simulates the cluster's agent reporting `state` for its current pre-cache task
    /// (copies `spec.precache.id` into `status.precache.id`).
    pub fn report_precache(&mut self, cluster: &str, state: &str) -> &mut Self {
        self.report_task(cluster, "precache", state)
    }

    /// Simulates the cluster's agent reporting `state` for its current backup task.
    pub fn report_backup(&mut self, cluster: &str, state: &str) -> &mut Self {
        self.report_task(cluster, "backup", state)
    }

    fn report_task(&mut self, cluster: &str, task: &str, state: &str) -> &mut Self {
        let now = self.now_str();
        let agent = self
            .find("SpokeAgent", cluster, cluster)
            .unwrap_or_else(|| {
                panic!("no SpokeAgent {cluster}/{cluster} to report {task} {state} on")
            });
        let id = agent["spec"][task]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("SpokeAgent {cluster} has no spec.{task}.id: {agent:#}"))
            .to_string();
        let agent = self.get_mut("SpokeAgent", cluster, cluster);
        if !agent["status"].is_object() {
            agent["status"] = json!({"connected": true});
        }
        agent["status"]["connected"] = json!(true);
        agent["status"]["lastSeen"] = json!(now);
        agent["status"][task] =
            json!({"id": id, "state": state, "message": format!("{task} {state}")});
        self
    }

    // ---------------------------------------------------------------- enforcement

    /// The Placement name TALM gives `<cgu>-<policy>-placement-kuttl`.
    pub fn placement_name(cgu_: &str, policy: &str) -> String {
        format!("{cgu_}-{policy}-placement-{SUFFIX}")
    }

    /// The Placement of a CGU for a policy in `default`.
    pub fn placement(&self, cgu_: &str, policy: &str) -> Option<&Value> {
        self.find("Placement", NS, &World::placement_name(cgu_, policy))
    }

    /// The PlacementBinding of a CGU for a policy in `default`.
    pub fn binding(&self, cgu_: &str, policy: &str) -> Option<&Value> {
        self.find("PlacementBinding", NS, &World::placement_name(cgu_, policy))
    }

    /// The clusters released to a policy's Placement, sorted (empty when there is none).
    pub fn released(&self, cgu_: &str, policy: &str) -> Vec<String> {
        let mut v = self
            .placement(cgu_, policy)
            .map(placement_values)
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every Placement or PlacementBinding labelled for this CGU.
    pub fn enforcement_objects(&self, cgu_: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| kind(o) == "Placement" || kind(o) == "PlacementBinding")
            .filter(|o| {
                o["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"]
                    == cgu_
                    || name(o).starts_with(&format!("{cgu_}-"))
            })
            .collect()
    }

    // ---------------------------------------------------------------- events

    /// Events of the last run with this reason and action.
    pub fn events_with(&self, reason: &str, action: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["reason"] == reason && e["action"] == action)
            .collect()
    }

    /// The single event of the last run with this reason and action about this CGU (or one
    /// of its clusters); panics with the list of events otherwise.
    pub fn event(&self, reason: &str, action: &str, note: &str) -> &Value {
        let found: Vec<&Value> = self
            .events
            .iter()
            .filter(|e| e["reason"] == reason && e["action"] == action && e["note"] == note)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one event {reason}/{action} {note:?} in the last run, got {}.\nevents:\n{}",
            found.len(),
            summarize_events(&self.events)
        );
        found[0]
    }

    /// Panics if the last run emitted an event with this reason and action.
    pub fn assert_no_event(&self, reason: &str, action: &str) {
        let found = self.events_with(reason, action);
        assert!(
            found.is_empty(),
            "unexpected {reason}/{action} event(s):\n{}",
            summarize_events(&self.events)
        );
    }
}

fn entry(cluster: &str, c: &str) -> Value {
    json!({"clustername": cluster, "clusternamespace": cluster, "compliant": c})
}

/// A child policy `<rootNs>.<rootName>` of `root` in the namespace of `cluster`.
pub fn child_policy(root: &Value, cluster: &str) -> Value {
    let full = format!("{}.{}", namespace(root), name(root));
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {
            "name": full,
            "namespace": cluster,
            "labels": {
                "policy.open-cluster-management.io/cluster-name": cluster,
                "policy.open-cluster-management.io/cluster-namespace": cluster,
                "policy.open-cluster-management.io/root-policy": full,
            }
        },
        "spec": root["spec"].clone(),
    })
}

/// A CGU in `default` with the `kuttl` name suffix.
pub fn cgu(name_: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {
            "name": name_,
            "namespace": NS,
            "annotations": {SUFFIX_ANNOTATION: SUFFIX},
        },
        "spec": spec,
    })
}

/// A minimal root policy `<ns>/<name>` with one ConfigMap object-template and no status.
pub fn simple_policy(ns: &str, name_: &str) -> Value {
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": name_, "namespace": ns},
        "spec": {
            "disabled": false,
            "remediationAction": "inform",
            "policy-templates": [{"objectDefinition": {
                "apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "ConfigurationPolicy",
                "metadata": {"name": format!("{name_}-config")},
                "spec": {
                    "remediationAction": "inform",
                    "severity": "low",
                    "object-templates": [{"complianceType": "musthave", "objectDefinition": {
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name_, "namespace": "default"},
                        "data": {"key": "value"},
                    }}],
                },
            }}],
        },
    })
}

/// Runs the binary with these arguments.
#[allow(clippy::disallowed_methods)] // tests drive the real binary
pub fn talm_hub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_talm-hub"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("spawn talm-hub")
}

/// Runs the binary with stdin.
#[allow(clippy::disallowed_methods)] // tests drive the real binary
pub fn talm_hub_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_talm-hub"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn talm-hub");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait talm-hub")
}

// -------------------------------------------------------------------- parsing

/// Reads a (multi-document) YAML file of objects.
pub fn read_yaml_objects(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_objects(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Parses `-o yaml` output (or any multi-document YAML / JSON) into objects; `kind: List`
/// documents are flattened and empty documents dropped.
pub fn parse_objects(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for d in docs {
        flatten_into(d, &mut out);
    }
    Ok(out)
}

fn flatten_into(d: Value, out: &mut Vec<Value>) {
    match d {
        Value::Null => {}
        Value::Array(items) => items.into_iter().for_each(|i| flatten_into(i, out)),
        Value::Object(ref m)
            if m.get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && m.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = d.get("items").cloned() {
                items.into_iter().for_each(|i| flatten_into(i, out));
            }
        }
        other => out.push(other),
    }
}

/// True for Event objects (either API group).
pub fn is_event(o: &Value) -> bool {
    kind(o) == "Event"
}

/// `kind`.
pub fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

/// `metadata.namespace` (`""` when absent).
pub fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// `metadata.name`.
pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// The string items of a JSON array (empty when not an array).
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `name In (...)` values a Placement releases, in order.
pub fn placement_values(p: &Value) -> Vec<String> {
    let exprs =
        &p["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]["matchExpressions"];
    exprs
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == "name" && e["operator"] == "In")
        .map(|e| strs(&e["values"]))
        .unwrap_or_default()
}

fn summarize_events(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  {} {}/{}: {:?}",
                e["type"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default(),
                e["action"].as_str().unwrap_or_default(),
                e["note"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// -------------------------------------------------------------------- CGU status

/// `status.conditions[type=t]`.
pub fn condition<'a>(cgu_: &'a Value, t: &str) -> Option<&'a Value> {
    cgu_["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
}

/// The condition types in order.
pub fn condition_types(cgu_: &Value) -> Vec<String> {
    cgu_["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts a condition's status, reason and exact message.
#[track_caller]
pub fn assert_condition(cgu_: &Value, t: &str, status: &str, reason: &str, message: &str) {
    let c = condition(cgu_, t).unwrap_or_else(|| {
        panic!(
            "CGU {} has no {t} condition; conditions:\n{:#}",
            name(cgu_),
            cgu_["status"]["conditions"]
        )
    });
    let got = (
        c["status"].as_str().unwrap_or_default(),
        c["reason"].as_str().unwrap_or_default(),
        c["message"].as_str().unwrap_or_default(),
    );
    assert_eq!(
        got,
        (status, reason, message),
        "CGU {} condition {t} (status, reason, message); all conditions:\n{:#}",
        name(cgu_),
        cgu_["status"]["conditions"]
    );
}

/// Asserts a condition's status and reason (message free).
#[track_caller]
pub fn assert_condition_reason(cgu_: &Value, t: &str, status: &str, reason: &str) {
    let c = condition(cgu_, t).unwrap_or_else(|| {
        panic!(
            "CGU {} has no {t} condition; conditions:\n{:#}",
            name(cgu_),
            cgu_["status"]["conditions"]
        )
    });
    assert_eq!(
        (
            c["status"].as_str().unwrap_or_default(),
            c["reason"].as_str().unwrap_or_default()
        ),
        (status, reason),
        "CGU {} condition {t}; all conditions:\n{:#}",
        name(cgu_),
        cgu_["status"]["conditions"]
    );
}

/// Asserts the CGU has no condition of this type.
#[track_caller]
pub fn assert_no_condition(cgu_: &Value, t: &str) {
    assert!(
        condition(cgu_, t).is_none(),
        "CGU {} should have no {t} condition:\n{:#}",
        name(cgu_),
        cgu_["status"]["conditions"]
    );
}

/// `status.remediationPlan` (`None` when absent or null).
pub fn plan(cgu_: &Value) -> Option<Vec<Vec<String>>> {
    let p = &cgu_["status"]["remediationPlan"];
    p.as_array().map(|b| b.iter().map(strs).collect())
}

/// Builds an expected plan from string slices.
pub fn batches(b: &[&[&str]]) -> Option<Vec<Vec<String>>> {
    Some(
        b.iter()
            .map(|x| x.iter().map(|s| s.to_string()).collect())
            .collect(),
    )
}

/// `status.clusters` as `(name, state)` pairs.
pub fn cluster_states(cgu_: &Value) -> Vec<(String, String)> {
    cgu_["status"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Expected `(name, state)` pairs.
pub fn states(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `status.status.currentBatchRemediationProgress` as `cluster -> (state, policyIndex)`.
pub fn progress(cgu_: &Value) -> BTreeMap<String, (String, Option<i64>)> {
    cgu_["status"]["status"]["currentBatchRemediationProgress"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (
                            v["state"].as_str().unwrap_or_default().to_string(),
                            v["policyIndex"].as_i64(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Expected progress entries.
pub fn prog(v: &[(&str, &str, Option<i64>)]) -> BTreeMap<String, (String, Option<i64>)> {
    v.iter()
        .map(|(c, s, i)| (c.to_string(), (s.to_string(), *i)))
        .collect()
}

/// `status.status.currentBatch` (0 when absent).
pub fn current_batch(cgu_: &Value) -> i64 {
    cgu_["status"]["status"]["currentBatch"]
        .as_i64()
        .unwrap_or(0)
}

/// `status.managedPoliciesForUpgrade` as `(name, namespace)` pairs.
pub fn policies_for_upgrade(cgu_: &Value) -> Vec<(String, String)> {
    cgu_["status"]["managedPoliciesForUpgrade"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["namespace"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Expected `(policy, "default")` pairs.
pub fn in_default(ps: &[&str]) -> Vec<(String, String)> {
    ps.iter().map(|p| (p.to_string(), NS.to_string())).collect()
}

/// Parses a Kubernetes time field.
pub fn time(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Annotation `cgu.openshift.io/<key>` of an event.
pub fn ev_ann<'a>(e: &'a Value, key: &str) -> Option<&'a str> {
    e["metadata"]["annotations"][format!("cgu.openshift.io/{key}")].as_str()
}
