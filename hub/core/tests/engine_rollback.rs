//! The rollback watchdog through the engine (talm extension, CGU `spec.recovery`; issue 18):
//! arming on release, disarming on completion and on deletion, a person's disarm, an agent that
//! cannot arm it, and a rolled-back cluster. A minimal in-memory hub applies each decision's
//! writes as JSON merge patches (the same patches both adapters send) and plays the agents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use talm_hub_core::api::cgu::{ClusterGroupUpgrade, FINALIZER};
use talm_hub_core::api::rhacm::{ManagedCluster, Placement, Policy};
use talm_hub_core::api::spokeagent::{SpokeAgent, TaskReport};
use talm_hub_core::{
    Context, Event, FinalizerChange, NoUpdateGraph, Requeue, Snapshot, Write, reconcile,
};

const ROLLBACK_ID: &str = "default/cgu/u1/rollback";

struct Hub {
    cgu: ClusterGroupUpgrade,
    clusters: BTreeMap<String, ManagedCluster>,
    policies: Vec<Policy>,
    placements: BTreeMap<String, Placement>,
    agents: BTreeMap<String, SpokeAgent>,
    events: Vec<Event>,
}

fn mc(name: &str) -> ManagedCluster {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"name": name}},
        "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
    }))
    .unwrap()
}

/// Root policy `name` holding a ClusterVersion to 4.16.3, with the given compliance.
fn policy(name: &str, compliance: &[(&str, &str)]) -> Vec<Policy> {
    let templates = json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1", "kind": "ConfigurationPolicy",
        "metadata": {"name": format!("{name}-config")},
        "spec": {"object-templates": [{"complianceType": "musthave", "objectDefinition": {
            "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
            "metadata": {"name": "version"},
            "spec": {"channel": "stable-4.16", "upstream": "https://u",
                     "desiredUpdate": {"version": "4.16.3",
                                       "image": "quay.io/openshift-release-dev/ocp-release@sha256:aa"}}}}]}
    }}]);
    let status: Vec<Value> = compliance
        .iter()
        .map(|(c, s)| json!({"clustername": c, "clusternamespace": c, "compliant": s}))
        .collect();
    let mut out = vec![
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"remediationAction": "inform", "policy-templates": templates},
            "status": {"status": status}
        }))
        .unwrap(),
    ];
    for (c, _) in compliance {
        out.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("default.{name}"), "namespace": c,
                    "labels": {"policy.open-cluster-management.io/root-policy": format!("default.{name}")}},
                "spec": {"remediationAction": "inform", "policy-templates": templates}
            }))
            .unwrap(),
        );
    }
    out
}

fn t(offset_s: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000).unwrap() + SignedDuration::from_secs(offset_s)
}

fn cgu(spec: Value) -> Value {
    json!({"metadata": {"name": "cgu", "namespace": "default", "uid": "u1",
        "annotations": {"cluster-group-upgrades-operator/name-suffix": "kuttl"}}, "spec": spec})
}

impl Hub {
    fn new(spec: Value, clusters: &[&str]) -> Self {
        let compliance: Vec<(&str, &str)> = clusters.iter().map(|c| (*c, "NonCompliant")).collect();
        Hub {
            cgu: serde_json::from_value(cgu(spec)).unwrap(),
            clusters: clusters.iter().map(|c| (c.to_string(), mc(c))).collect(),
            policies: policy("upgrade", &compliance),
            placements: BTreeMap::new(),
            agents: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        for c in self.clusters.values() {
            s.insert_managed_cluster(c.clone());
        }
        for p in &self.policies {
            s.insert_policy(p.clone());
        }
        for p in self.placements.values() {
            s.insert_placement(p.clone());
        }
        for a in self.agents.values() {
            s.insert_spoke_agent(a.clone());
        }
        s.insert_cgu(self.cgu.clone());
        s
    }

    fn run(&mut self, now: Timestamp) {
        for _ in 0..50 {
            if self.step(now) != Requeue::Immediately {
                return;
            }
        }
        panic!("no fixed point");
    }

    fn step(&mut self, now: Timestamp) -> Requeue {
        let d = reconcile(
            &self.cgu,
            &self.snapshot(),
            &Context {
                now,
                graph: &NoUpdateGraph,
            },
        );
        self.cgu.status = Some(d.status);
        match d.finalizer {
            FinalizerChange::Add => self.cgu.metadata.finalizers = Some(vec![FINALIZER.into()]),
            FinalizerChange::Remove => self.cgu.metadata.finalizers = None,
            FinalizerChange::None => {}
        }
        for w in d.writes {
            match &w {
                Write::ApplyPlacement(p) => {
                    self.placements
                        .insert(p.metadata.name.clone().unwrap(), p.clone());
                }
                Write::DeletePlacement { name, .. } => {
                    self.placements.remove(name);
                }
                Write::SetSpokeAgentTasks { name, .. } => {
                    let patch = w.merge_patch().unwrap().unwrap();
                    match self.agents.get_mut(name) {
                        Some(a) => {
                            let mut v = serde_json::to_value(&*a).unwrap();
                            json_patch::merge(&mut v, &patch);
                            *a = serde_json::from_value(v).unwrap();
                        }
                        None => {
                            if let Some(a) = w.spoke_agent_if_missing() {
                                self.agents.insert(name.clone(), a);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        self.events.extend(d.events);
        self.play_agents();
        d.requeue
    }

    /// The agents: backups succeed at once; the watchdog is accepted (`Armed`) unless a report
    /// for it is there already.
    fn play_agents(&mut self) {
        for a in self.agents.values_mut() {
            let st = a.status.get_or_insert_with(Default::default);
            st.connected = true;
            if let Some(b) = &a.spec.backup {
                st.backup = Some(report(&b.id, "Succeeded"));
            }
            if let Some(r) = &a.spec.rollback
                && st.rollback.as_ref().is_none_or(|x| x.id != r.id)
            {
                st.rollback = Some(report(&r.id, "Armed"));
            }
        }
    }

    fn agent_report(&mut self, cluster: &str, state: &str, message: &str) {
        let a = self.agents.get_mut(cluster).unwrap();
        let mut r = report(ROLLBACK_ID, state);
        r.message = message.into();
        a.status.as_mut().unwrap().rollback = Some(r);
    }

    fn set_compliance(&mut self, cluster: &str, state: &str) {
        let root = &mut self.policies[0];
        let st = root.status.as_mut().unwrap().status.as_mut().unwrap();
        st.iter_mut()
            .find(|e| e.clustername == cluster)
            .unwrap()
            .compliant = Some(state.into());
    }

    fn status(&self) -> Value {
        serde_json::to_value(self.cgu.status.as_ref().unwrap()).unwrap()
    }

    fn watchdog(&self, cluster: &str) -> Option<Value> {
        self.agents
            .get(cluster)
            .and_then(|a| a.spec.rollback.as_ref())
            .map(|r| serde_json::to_value(r).unwrap())
    }

    fn placement_values(&self) -> Vec<String> {
        self.placements
            .values()
            .next()
            .map(|p| p.selected_names().to_vec())
            .unwrap_or_default()
    }
}

fn report(id: &str, state: &str) -> TaskReport {
    TaskReport {
        id: id.into(),
        state: state.into(),
        message: String::new(),
        progress: None,
    }
}

fn spec(clusters: &[&str], recovery: Value) -> Value {
    json!({
        "clusters": clusters,
        "managedPolicies": ["upgrade"],
        "remediationStrategy": {"maxConcurrency": 2, "timeout": 240},
        "backup": true,
        "recovery": recovery,
    })
}

#[test]
fn armed_on_release_with_the_target_version_and_disarmed_on_completion() {
    let mut hub = Hub::new(
        spec(
            &["spoke1", "spoke2"],
            json!({"automatic": true, "healthTimeout": "1h30m"}),
        ),
        &["spoke1", "spoke2"],
    );
    hub.run(t(0));
    assert_eq!(hub.status()["backup"]["status"]["spoke1"], "Succeeded");
    assert_eq!(hub.placement_values(), ["spoke1", "spoke2"]);
    // Released into the first policy: the watchdog is armed, once, with the release time.
    let armed_at = hub.watchdog("spoke1").unwrap()["armedAt"].clone();
    assert_eq!(
        hub.watchdog("spoke1").unwrap(),
        json!({"id": ROLLBACK_ID, "armedAt": armed_at, "healthTimeoutSeconds": 5400,
               "targetVersion": "4.16.3"})
    );
    assert!(hub.watchdog("spoke2").is_some());
    hub.run(t(600));
    assert_eq!(
        hub.watchdog("spoke1").unwrap()["armedAt"],
        armed_at,
        "not re-armed on a later pass"
    );

    // spoke1 completes: its watchdog goes; spoke2's stays.
    hub.set_compliance("spoke1", "Compliant");
    hub.run(t(900));
    assert!(hub.watchdog("spoke1").is_none());
    assert!(hub.watchdog("spoke2").is_some());

    // The CGU is deleted: every watchdog it armed goes.
    hub.cgu.metadata.deletion_timestamp = Some(talm_hub_core::api::Time(t(1000)));
    hub.run(t(1000));
    assert!(hub.watchdog("spoke2").is_none());
}

#[test]
fn not_armed_without_automatic_recovery_or_without_a_successful_backup() {
    let mut hub = Hub::new(spec(&["spoke1"], json!({"automatic": false})), &["spoke1"]);
    hub.run(t(0));
    assert_eq!(hub.placement_values(), ["spoke1"]);
    assert!(hub.watchdog("spoke1").is_none());

    // Backup not asked for: spec.recovery is refused, nothing starts.
    let mut s = spec(&["spoke1"], json!({"automatic": true}));
    s["backup"] = json!(false);
    let mut hub = Hub::new(s, &["spoke1"]);
    hub.run(t(0));
    let validated = hub.status()["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Validated")
        .cloned()
        .unwrap();
    assert_eq!(validated["status"], "False");
    assert_eq!(validated["reason"], "InvalidRecovery");
    assert_eq!(
        validated["message"],
        "spec.recovery.automatic true needs spec.backup: true (the rollback restores that backup)"
    );
    assert!(hub.placements.is_empty() || hub.placement_values().is_empty());
    assert!(hub.watchdog("spoke1").is_none());
}

#[test]
fn a_persons_disarm_or_a_rejecting_agent_is_not_re_armed_and_fails_nothing() {
    for (reported, message) in [
        ("Cancelled", "disarmed by talm-agent rollback disarm"),
        ("UnrecoverableError", "unknown task kind"),
        ("Healthy", "all checks passed"),
    ] {
        let mut hub = Hub::new(spec(&["spoke1"], json!({"automatic": true})), &["spoke1"]);
        hub.run(t(0));
        hub.agent_report("spoke1", reported, message);
        // Even if the task leaves the spec (a hand edit), the report keeps it from re-arming.
        hub.agents.get_mut("spoke1").unwrap().spec.rollback = None;
        hub.run(t(300));
        assert!(hub.watchdog("spoke1").is_none(), "{reported}: re-armed");
        assert_eq!(hub.placement_values(), ["spoke1"], "{reported}");
        assert!(hub.status()["clusters"].is_null(), "{reported}");
        hub.set_compliance("spoke1", "Compliant");
        hub.run(t(600));
        let c = hub.status()["clusters"].clone();
        assert_eq!(
            c,
            json!([{"name": "spoke1", "state": "complete"}]),
            "{reported}"
        );
        assert_eq!(
            hub.cgu
                .status
                .as_ref()
                .unwrap()
                .conditions
                .last()
                .unwrap()
                .reason,
            "Completed",
            "{reported}"
        );
    }
}

#[test]
fn a_rolled_back_cluster_is_failed_withdrawn_and_never_re_enforced() {
    let mut hub = Hub::new(
        spec(&["spoke1", "spoke2"], json!({"automatic": true})),
        &["spoke1", "spoke2"],
    );
    hub.run(t(0));
    assert_eq!(hub.placement_values(), ["spoke1", "spoke2"]);
    hub.agent_report("spoke1", "RollingBack", "step 2/5: restore /var/recovery");
    hub.run(t(60));
    assert_eq!(
        hub.placement_values(),
        ["spoke1", "spoke2"],
        "still rolling back"
    );
    hub.agent_report("spoke1", "RolledBack", "node runs the pinned deployment");
    hub.run(t(5500));
    assert_eq!(hub.placement_values(), ["spoke2"], "withdrawn at once");
    assert_eq!(
        hub.status()["clusters"],
        json!([{"name": "spoke1", "state": "rolledback",
                "currentPolicy": {"name": "upgrade", "status": "NonCompliant"}}])
    );
    assert_eq!(
        hub.status()["status"]["currentBatchRemediationProgress"]["spoke1"]["state"],
        "RolledBack"
    );
    let rolled: Vec<&Event> = hub
        .events
        .iter()
        .filter(|e| e.reason == "ClusterRolledBack")
        .collect();
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0].type_, talm_hub_core::EventType::Warning);
    assert_eq!(rolled[0].related.as_ref().unwrap().name, "spoke1");
    assert!(rolled[0].note.contains("node runs the pinned deployment"));

    // Later passes: no second event, never back in the Placement.
    hub.run(t(5600));
    hub.run(t(5700));
    assert_eq!(hub.placement_values(), ["spoke2"]);
    assert_eq!(
        hub.events
            .iter()
            .filter(|e| e.reason == "ClusterRolledBack")
            .count(),
        1
    );
    // spoke2 completes: the batch is done and the CGU ends failed, naming the rolled-back one.
    hub.set_compliance("spoke2", "Compliant");
    hub.run(t(5800));
    let last = hub
        .cgu
        .status
        .as_ref()
        .unwrap()
        .conditions
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            last.type_.as_str(),
            last.status.as_str(),
            last.reason.as_str()
        ),
        ("Succeeded", "False", "ClustersRolledBack")
    );
    assert!(last.message.contains("spoke1"));
    assert!(hub.placement_values().is_empty());
}

#[test]
fn a_failed_rollback_is_failed_too() {
    let mut hub = Hub::new(spec(&["spoke1"], json!({"automatic": true})), &["spoke1"]);
    hub.run(t(0));
    hub.agent_report(
        "spoke1",
        "RollbackFailed",
        "stage verify: archive checksum mismatch",
    );
    hub.run(t(60));
    assert_eq!(hub.status()["clusters"][0]["state"], "rollbackfailed");
    assert!(hub.placement_values().is_empty());
    let e = hub
        .events
        .iter()
        .find(|e| e.reason == "ClusterRolledBack")
        .unwrap();
    assert_eq!(e.action, "RollbackInClusterFailed");
}

#[test]
fn a_batch_timeout_does_not_list_a_rolled_back_cluster_as_timed_out() {
    let mut s = spec(&["spoke1", "spoke2", "spoke3"], json!({"automatic": true}));
    s["remediationStrategy"]["maxConcurrency"] = json!(2);
    let mut hub = Hub::new(s, &["spoke1", "spoke2", "spoke3"]);
    hub.run(t(0));
    assert_eq!(hub.placement_values(), ["spoke1", "spoke2"]);
    hub.agent_report("spoke1", "RolledBack", "");
    hub.run(t(60));
    // Past the first batch's share of the timeout: spoke2 times out, spoke1 stays rolled back.
    hub.run(t(3 * 3600));
    let timed_out: Vec<&Event> = hub
        .events
        .iter()
        .filter(|e| e.action == "RemediationInBatchTimeout")
        .collect();
    assert_eq!(timed_out.len(), 1, "{:?}", hub.events);
    assert_eq!(
        timed_out[0].annotations["cgu.openshift.io/timedout-clusters"],
        "spoke2"
    );
    let states: Vec<(String, String)> = hub.status()["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("spoke1".to_string(), "rolledback".to_string()),
            ("spoke2".to_string(), "timedout".to_string())
        ]
    );
}

#[test]
fn a_rolled_back_cluster_counts_against_the_failure_budget_at_once() {
    let mut s = spec(&["spoke1", "spoke2"], json!({"automatic": true}));
    s["remediationStrategy"]["maxFailures"] = json!(0);
    let mut hub = Hub::new(s, &["spoke1", "spoke2"]);
    hub.run(t(0));
    assert!(hub.watchdog("spoke1").is_some());
    hub.agent_report("spoke1", "RolledBack", "recovered to 4.16.2");
    hub.run(t(60));
    let st = hub.status();
    let succeeded = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Succeeded")
        .unwrap_or_else(|| panic!("no Succeeded condition: {st:#}"));
    assert_eq!(succeeded["status"], "False");
    assert_eq!(succeeded["reason"], "FailureBudgetExceeded");
    assert!(
        succeeded["message"].as_str().unwrap().ends_with(": spoke1"),
        "{succeeded}"
    );
}

#[test]
fn a_cgu_that_times_out_keeps_the_watchdog_of_an_unfinished_cluster_until_it_is_deleted() {
    let mut s = spec(&["spoke1"], json!({"automatic": true}));
    s["remediationStrategy"]["timeout"] = json!(1);
    let mut hub = Hub::new(s, &["spoke1"]);
    hub.run(t(0));
    assert!(hub.watchdog("spoke1").is_some());
    // The CGU times out while the node's upgrade is still unhealthy: the CGU ends, but the
    // node must still be recovered if it does not become healthy.
    hub.run(t(120));
    let st = hub.status();
    assert!(
        st["status"]["completedAt"].is_string(),
        "the CGU ended: {st:#}"
    );
    assert!(
        hub.watchdog("spoke1").is_some(),
        "the watchdog stays armed after the CGU ends"
    );
    // Deleting the CGU disarms it.
    hub.cgu.metadata.deletion_timestamp = Some(talm_hub_core::api::Time(t(200)));
    hub.run(t(200));
    assert!(hub.watchdog("spoke1").is_none());
}
