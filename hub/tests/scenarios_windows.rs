//! Black-box scenarios of the maintenance windows and the forecast (talm extensions, issue 16
//! §3 and §4), through `talm-hub plan` on the §6.1 fleet: each step edits the world, moves
//! `--now`, runs `plan -o yaml` and feeds the output back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

/// spoke1 and spoke4 need P1 and P2 (spoke6 is compliant): two batches of one cluster.
fn spec(windows: Value) -> Value {
    json!({
        "clusters": ["spoke1", "spoke4", "spoke6"],
        "managedPolicies": [P1, P2],
        "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
        "maintenanceWindows": windows,
    })
}

fn released(w: &World, cgu_name: &str) -> Vec<String> {
    w.placement(cgu_name, P1)
        .map(placement_values)
        .unwrap_or_default()
}

/// `talm-hub plan -o table` on the world as it is (no change to the world).
fn table(w: &mut World) -> String {
    let input = w.write_input();
    let input = input.to_string_lossy().into_owned();
    let now = w.now_str();
    let out = World::talm_hub(&["plan", "-f", &input, "--now", &now, "-o", "table"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_batch_waits_for_the_window_and_starts_when_it_opens() {
    let cgu_name = "cgu-window";
    let mut w = World::talm();
    // T0 is Monday 2026-03-02 10:00Z; the window opens daily at 12:00 Berlin time (CET, 11:00Z).
    w.add_cgu(
        cgu_name,
        spec(json!([{"start": "12:00", "duration": "1h", "timeZone": "Europe/Berlin"}])),
    );
    w.run();
    let c = w.cgu(cgu_name);
    assert_condition(
        c,
        "Progressing",
        "True",
        "WaitingForMaintenanceWindow",
        "Batch 1 waits for the next maintenance window, which opens at 2026-03-02T11:00:00Z",
    );
    assert_eq!(c["status"]["status"]["startedAt"], json!(T0));
    assert!(released(&w, cgu_name).is_empty());
    w.event(
        "WaitingForMaintenanceWindow",
        "BatchWaiting",
        &format!(
            "ClusterGroupUpgrade {cgu_name}: batch index 1 waits for the next maintenance window, which opens at 2026-03-02T11:00:00Z"
        ),
    );
    let t = table(&mut w);
    assert!(t.contains("WaitingForMaintenanceWindow"), "{t}");
    assert!(t.contains("next reconcile: in 3600s"), "{t}");

    // Half an hour later: still waiting, nothing new.
    w.run_after(1800);
    assert!(released(&w, cgu_name).is_empty());
    assert!(w.events.is_empty(), "{:?}", w.events);

    // 11:00Z: the window opens and batch 1 starts; the hour of waiting does not count.
    w.run_after(1800);
    let c = w.cgu(cgu_name);
    assert_condition_reason(c, "Progressing", "True", "InProgress");
    assert_eq!(released(&w, cgu_name), ["spoke1"]);
    assert_eq!(c["status"]["status"]["excludedSeconds"], json!(3600));
    assert!(c["status"]["status"].get("waitingForWindowSince").is_none());
    w.event(
        "MaintenanceWindowOpened",
        "BatchReleased",
        &format!(
            "ClusterGroupUpgrade {cgu_name}: maintenance window open, batch index 1 starts after waiting 1h"
        ),
    );

    // 12:10Z: spoke1 is done after the window closed; batch 2 waits for tomorrow.
    w.comply("spoke1", &[P1, P2]);
    w.run_after(4200);
    let c = w.cgu(cgu_name);
    assert_condition(
        c,
        "Progressing",
        "True",
        "WaitingForMaintenanceWindow",
        "Batch 2 waits for the next maintenance window, which opens at 2026-03-03T11:00:00Z",
    );
    assert_eq!(current_batch(c), 2);
    assert!(released(&w, cgu_name).is_empty());

    // Tuesday 11:00Z: batch 2 starts, 25 h after the CGU started, within its 240 min.
    w.now = "2026-03-03T11:00:00Z".parse().unwrap();
    w.run();
    let c = w.cgu(cgu_name);
    assert_eq!(released(&w, cgu_name), ["spoke4"]);
    assert_eq!(
        c["status"]["status"]["excludedSeconds"],
        json!(3600 + 82_200)
    );
    w.comply("spoke4", &[P1, P2]);
    w.run_after(60);
    assert_condition_reason(w.cgu(cgu_name), "Succeeded", "True", "Completed");
}

#[test]
fn a_batch_that_does_not_fit_waits_for_the_next_window() {
    let cgu_name = "cgu-window-fit";
    let mut w = World::talm();
    // Priors: 20 min per policy, so a batch needs about 45 min (p90, both policies).
    w.annotate_policy(P1, "talm.dev/expected-duration", "20m");
    w.annotate_policy(P2, "talm.dev/expected-duration", "20m");
    w.add_cgu(
        cgu_name,
        spec(json!([{"days": ["Mon", "Tue"], "start": "11:00", "duration": "1h"}])),
    );
    // 11:00Z Monday: a whole window is left, batch 1 starts.
    w.now = "2026-03-02T11:00:00Z".parse().unwrap();
    w.run();
    assert_eq!(released(&w, cgu_name), ["spoke1"]);
    let f = &w.cgu(cgu_name)["status"]["forecast"];
    assert_eq!(f["batches"][0]["batch"], json!(1));
    assert_eq!(f["batches"][1]["fitsWindow"], json!(true));
    assert_eq!(f["policies"][0]["prior"], json!("20m"));
    assert!(f["completion"].is_string(), "{f}");

    // 11:30Z: spoke1 is done; 30 min are left, batch 2 needs more: it waits for Tuesday.
    w.comply("spoke1", &[P1, P2]);
    w.run_after(1800);
    let c = w.cgu(cgu_name);
    let msg = condition(c, "Progressing").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.starts_with(
            "Batch 2 does not fit in the open maintenance window (it closes at 2026-03-02T12:00:00Z, the batch is predicted to need up to "
        ) && msg.ends_with("; it waits for the next window, which opens at 2026-03-03T11:00:00Z"),
        "{msg}"
    );
    assert!(released(&w, cgu_name).is_empty());
    let f = &c["status"]["forecast"];
    assert_eq!(f["batches"][0]["start"], json!("2026-03-03T11:00:00Z"));
    assert_eq!(f["policies"][0]["observations"], json!(1));
    // The table shows the forecast per batch and what it waits for.
    let t = table(&mut w);
    assert!(t.contains("forecast: completion 2026-03-03T11:"), "{t}");
    assert!(t.contains("FITS WINDOW"), "{t}");
    assert!(t.contains("2026-03-03T11:00:00Z"), "{t}");
    assert!(
        t.contains("does not fit in the open maintenance window"),
        "{t}"
    );
    assert!(
        t.contains(&format!("basis {P1}: 1 observation; prior 20m")),
        "{t}"
    );

    // Tuesday 11:00Z: batch 2 starts at the opening.
    w.now = "2026-03-03T11:00:00Z".parse().unwrap();
    w.run();
    assert_eq!(released(&w, cgu_name), ["spoke4"]);
    assert_condition_reason(w.cgu(cgu_name), "Progressing", "True", "InProgress");
}
