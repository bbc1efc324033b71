//! `talm-hub plan` is a fixed point (docs/contract.md §3.1, issue 19 item 6): running it again
//! at the same `--now` over its own output changes nothing and emits no event. Before, a CGU
//! blocked on another CGU that completed during the run stayed blocked until a second run.
//! Black-box: the real binary, through the scenario world.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Runs `plan` twice at the same time; the second run must leave every object as the first
/// left it and publish no event.
fn assert_fixed_point(w: &mut World) -> Result<(), TestCaseError> {
    w.run();
    let first = w.objects.clone();
    w.run();
    prop_assert!(
        w.events.is_empty(),
        "the second run published events: {:#?}",
        w.events
    );
    prop_assert_eq!(
        &first,
        &w.objects,
        "the second run at the same --now changed objects"
    );
    Ok(())
}

#[test]
fn a_cgu_unblocked_during_the_run_starts_in_the_same_run() {
    let mut w = World::talm();
    // cgu-a waits on cgu-z and comes first in name order, so each pass reconciles it before
    // cgu-z. The first run leaves cgu-z remediating spoke6 and cgu-a blocked.
    w.set_compliance(P0, "spoke6", NonCompliant);
    w.add_cgu(
        "cgu-a",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "blockingCRs": [{"name": "cgu-z", "namespace": NS}],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.add_cgu(
        "cgu-z",
        json!({
            "clusters": ["spoke6"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.run();
    // Then spoke6 turns compliant: the next run completes cgu-z, and must start cgu-a too.
    w.comply("spoke6", &[P0]);
    w.run_after(60);
    let condition = |c: &Value, t: &str| {
        c["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let z = w.cgu("cgu-z").clone();
    assert_eq!(
        condition(&z, "Succeeded")["status"],
        "True",
        "{:#}",
        z["status"]
    );
    let a = w.cgu("cgu-a").clone();
    assert_eq!(
        condition(&a, "Progressing")["reason"],
        "InProgress",
        "cgu-a starts in the run that completed its blocker: {:#}",
        a["status"]
    );
    let before = w.objects.clone();
    w.run();
    assert!(w.events.is_empty(), "{:#?}", w.events);
    assert_eq!(before, w.objects);
}

/// One CGU of a random world.
#[derive(Clone, Debug)]
struct CguCase {
    clusters: Vec<&'static str>,
    policies: Vec<&'static str>,
    enable: bool,
    max_concurrency: i32,
    /// Indexes of later CGUs it waits on (later in name order: the blocked CGU is reconciled
    /// first in each pass, the case a single pass gets wrong).
    blocking: Vec<usize>,
}

const SPOKES: [&str; 6] = ["spoke1", "spoke2", "spoke3", "spoke4", "spoke5", "spoke6"];
const POLICIES: [&str; 2] = [P0, P2];

fn cgu_case() -> impl Strategy<Value = CguCase> {
    (
        proptest::sample::subsequence(SPOKES.to_vec(), 1..=3),
        proptest::sample::subsequence(POLICIES.to_vec(), 1..=2),
        any::<bool>(),
        1i32..=3,
        proptest::collection::vec(0usize..3, 0..=2),
    )
        .prop_map(
            |(clusters, policies, enable, max_concurrency, blocking)| CguCase {
                clusters,
                policies,
                enable,
                max_concurrency,
                blocking,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn plan_of_plan_is_plan(
        cgus in proptest::collection::vec(cgu_case(), 1..=3),
        compliant in proptest::collection::vec((0usize..6, 0usize..2), 0..=8),
        later in proptest::collection::vec((0usize..6, 0usize..2), 0..=8),
    ) {
        let mut w = World::talm();
        for (c, p) in compliant {
            w.comply(SPOKES[c], &[POLICIES[p]]);
        }
        for (i, c) in cgus.iter().enumerate() {
            let blocking: Vec<Value> = c
                .blocking
                .iter()
                .filter(|b| **b > i && **b < cgus.len())
                .map(|b| json!({"name": format!("cgu-{b}"), "namespace": NS}))
                .collect();
            w.add_cgu(
                &format!("cgu-{i}"),
                json!({
                    "clusters": c.clusters,
                    "managedPolicies": c.policies,
                    "blockingCRs": blocking,
                    "remediationStrategy": {"maxConcurrency": c.max_concurrency},
                    "enable": c.enable,
                }),
            );
        }
        // Mid-rollout states too: a first run, then clusters turn compliant, then the check.
        w.run();
        for (c, p) in later {
            w.comply(SPOKES[c], &[POLICIES[p]]);
        }
        w.advance(60);
        assert_fixed_point(&mut w)?;
    }
}
