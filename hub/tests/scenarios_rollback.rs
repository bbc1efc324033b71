//! Black-box rollback-watchdog scenarios (talm extension, CGU `spec.recovery`; issue 18)
//! replayed through `talm-hub plan` on the §6.1 fleet: the watchdog armed in the SpokeAgent as a
//! backed-up cluster is released into the ClusterVersion policy, disarmed when it completes, and
//! a `RolledBack` report failing the cluster (event, `status.clusters`, withdrawn, never
//! enforced again). The test plays the agents by writing SpokeAgent status between steps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

const CLUSTERS: [&str; 2] = ["spoke1", "spoke4"];

/// spoke1 and spoke4, both non-compliant with the ClusterVersion policy (to 4.9.8), backup and
/// automatic recovery on.
fn world(n: &str, recovery: Value) -> World {
    let mut w = World::talm();
    for c in CLUSTERS {
        w.set_compliance(P1, c, Compliance::NonCompliant);
    }
    w.add_cgu(
        n,
        json!({
            "clusters": CLUSTERS,
            "managedPolicies": [P1],
            "remediationStrategy": {"maxConcurrency": 2, "timeout": 240},
            "backup": true,
            "recovery": recovery,
            "enable": true,
        }),
    );
    w
}

/// Runs until the backups are done and both clusters are released.
fn started(n: &str, recovery: Value) -> World {
    let mut w = world(n, recovery);
    w.run();
    for c in CLUSTERS {
        w.report_backup(c, "Succeeded");
    }
    w.run_after(30);
    assert_eq!(w.released(n, P1), CLUSTERS);
    w
}

fn watchdog(w: &World, cluster: &str) -> Value {
    w.spoke_agent(cluster).unwrap()["spec"]["rollback"].clone()
}

fn report_rollback(w: &mut World, cluster: &str, state: &str, message: &str) {
    let id = watchdog(w, cluster)["id"].as_str().unwrap().to_string();
    let agent = w.get_mut("SpokeAgent", cluster, cluster);
    agent["status"]["rollback"] = json!({"id": id, "state": state, "message": message});
}

#[test]
fn armed_on_release_in_the_spoke_agent_and_disarmed_on_completion() {
    let n = "cgu-rollback-arm";
    let mut w = world(n, json!({"automatic": true, "healthTimeout": "2h"}));
    w.run();
    for c in CLUSTERS {
        assert!(watchdog(&w, c).is_null(), "not armed during the backup");
    }
    for c in CLUSTERS {
        w.report_backup(c, "Succeeded");
    }
    w.run_after(30);
    let uid = w.cgu(n)["metadata"]["uid"].as_str().unwrap().to_string();
    for c in CLUSTERS {
        assert_eq!(
            watchdog(&w, c),
            json!({"id": format!("{NS}/{n}/{uid}/rollback"), "armedAt": w.now_str(),
                   "healthTimeoutSeconds": 7200, "targetVersion": "4.9.8"}),
            "{c}"
        );
    }
    let armed_at = watchdog(&w, "spoke1")["armedAt"].clone();
    w.run_after(60);
    assert_eq!(
        watchdog(&w, "spoke1")["armedAt"],
        armed_at,
        "kept, not re-armed"
    );

    w.set_compliance(P1, "spoke1", Compliance::Compliant);
    w.run_after(60);
    assert!(watchdog(&w, "spoke1").is_null(), "disarmed on completion");
    assert!(watchdog(&w, "spoke4").is_object(), "spoke4 still upgrading");

    w.delete_cgu(n);
    w.run();
    assert!(
        watchdog(&w, "spoke4").is_null(),
        "disarmed when the CGU goes"
    );
}

#[test]
fn a_rolled_back_cluster_is_failed_withdrawn_and_not_re_enforced() {
    let n = "cgu-rollback-fired";
    let mut w = started(n, json!({"automatic": true}));
    report_rollback(&mut w, "spoke4", "RollingBack", "stage 3/6: restore");
    w.run_after(60);
    assert_eq!(
        w.released(n, P1),
        CLUSTERS,
        "still enforced while rolling back"
    );
    w.assert_no_event("ClusterRolledBack", "RollbackInClusterCompleted");

    report_rollback(
        &mut w,
        "spoke4",
        "RolledBack",
        "booted the pinned deployment",
    );
    w.run_after(60);
    let c = w.cgu(n);
    assert_eq!(w.released(n, P1), ["spoke1"], "withdrawn at once");
    assert_eq!(
        c["status"]["clusters"],
        json!([{"name": "spoke4", "state": "rolledback",
                "currentPolicy": {"name": P1, "status": "NonCompliant"}}])
    );
    let e = w.event(
        "ClusterRolledBack",
        "RollbackInClusterCompleted",
        &format!(
            "ClusterGroupUpgrade {n}: cluster spoke4 was rolled back by its agent (not healthy in time): booted the pinned deployment"
        ),
    );
    assert_eq!(e["type"], "Warning");

    // Never enforced again, one event only; spoke1 finishes and the CGU ends failed.
    w.run_after(600);
    assert_eq!(w.released(n, P1), ["spoke1"]);
    w.assert_no_event("ClusterRolledBack", "RollbackInClusterCompleted");
    w.set_compliance(P1, "spoke1", Compliance::Compliant);
    w.run_after(60);
    let c = w.cgu(n);
    assert_condition(
        c,
        "Succeeded",
        "False",
        "ClustersRolledBack",
        "Clusters rolled back by their agents' watchdog: spoke4",
    );
    assert_eq!(
        cluster_states(c),
        states(&[("spoke4", "rolledback"), ("spoke1", "complete")])
    );
}

#[test]
fn an_agent_that_cannot_arm_the_watchdog_fails_nothing() {
    let n = "cgu-rollback-old-agent";
    let mut w = started(n, json!({"automatic": true}));
    // What the gateway writes for an agent that rejects the unknown task kind.
    report_rollback(
        &mut w,
        "spoke1",
        "UnrecoverableError",
        "unknown task kind 5",
    );
    w.run_after(60);
    assert_eq!(w.released(n, P1), CLUSTERS);
    assert!(cluster_states(w.cgu(n)).is_empty());
    w.assert_no_event("ClusterRolledBack", "RollbackInClusterFailed");
    for c in CLUSTERS {
        w.set_compliance(P1, c, Compliance::Compliant);
    }
    w.run_after(60);
    assert_condition_reason(w.cgu(n), "Succeeded", "True", "Completed");
}

#[test]
fn recovery_without_backup_or_with_a_bad_timeout_is_refused_by_plan() {
    for (spec_extra, field, message) in [
        (
            json!({"backup": false, "recovery": {"automatic": true}}),
            "spec.recovery.automatic",
            "true needs spec.backup: true",
        ),
        (
            json!({"backup": true, "recovery": {"automatic": true, "healthTimeout": "5m"}}),
            "spec.recovery.healthTimeout",
            "\"5m\" is out of range: must be from 10m to 24h",
        ),
        (
            json!({"backup": true, "recovery": {"automatic": true, "healthTimeout": "90"}}),
            "spec.recovery.healthTimeout",
            "\"90\" is not a duration",
        ),
    ] {
        let mut w = World::talm();
        let mut spec = json!({"clusters": ["spoke1"], "managedPolicies": [P1],
                              "remediationStrategy": {"maxConcurrency": 1}});
        merge_patch(&mut spec, &spec_extra);
        w.add_cgu("cgu-bad-recovery", spec);
        let input = w.write_input();
        let out = World::talm_hub(&["plan", "-f", &input.to_string_lossy(), "--now", T0]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{field}: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains(message),
            "{field}: {stderr}"
        );
    }
}
