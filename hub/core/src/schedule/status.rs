//! A PrecacheBudget's status, computed in full from the fleet after admission and division:
//! counts, bandwidth allotted and in use (overall and per registry entry), and the `Valid`,
//! `ClustersSelected` and `RegistriesSeen` conditions (transition times kept while a
//! condition's status stays the same).

use std::collections::BTreeSet;

use jiff::Timestamp;
use talm_shared::api::precachebudget::{
    PrecacheBudget, PrecacheBudgetStatus, RegistryBudgetStatus,
};

use super::budgets::Invalid;
use super::fleet::{Fleet, Play};
use crate::conditions::budget::{reasons, types};
use crate::conditions::{self, go_list};

/// A rate for people: `0/s`, `512/s`, `12.5Mi/s`, `1Gi/s` (binary units, one decimal at most).
pub fn display_rate(bytes_per_second: i64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let v = bytes_per_second.max(0);
    if v < 1024 {
        return format!("{v}/s");
    }
    let mut unit = 0;
    let mut scale: i64 = 1024;
    while unit + 1 < UNITS.len() && v / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    // Tenths, rounded half up, in integers.
    let tenths = (i128::from(v) * 10 + i128::from(scale) / 2) / i128::from(scale);
    let (whole, frac) = (tenths / 10, tenths % 10);
    if frac == 0 {
        format!("{whole}{}/s", UNITS[unit])
    } else {
        format!("{whole}.{frac}{}/s", UNITS[unit])
    }
}

fn generation(b: &PrecacheBudget) -> Option<i64> {
    b.metadata.generation
}

fn old_conditions(b: &PrecacheBudget) -> Vec<talm_shared::api::Condition> {
    b.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// The status of an invalid budget: `Valid=False` only, nothing counted (it is not applied).
pub(super) fn invalid_status(
    b: &PrecacheBudget,
    why: &Invalid,
    now: Timestamp,
) -> PrecacheBudgetStatus {
    let mut conds = old_conditions(b);
    conditions::set(
        &mut conds,
        types::VALID,
        false,
        why.reason,
        &why.message,
        generation(b),
        now,
    );
    conditions::remove(&mut conds, types::CLUSTERS_SELECTED);
    conditions::remove(&mut conds, types::REGISTRIES_SEEN);
    PrecacheBudgetStatus {
        observed_generation: generation(b),
        conditions: conds,
        ..Default::default()
    }
}

/// The status of valid budget `index` of `fleet`, given the tasks of the clusters it selects
/// (`members`, indices into the fleet's tasks) and each task's new `hold` and `caps`.
pub(super) fn valid_status(
    fleet: &Fleet<'_>,
    index: usize,
    members: &[usize],
    hold: &[bool],
    caps: &[Option<i64>],
    now: Timestamp,
) -> PrecacheBudgetStatus {
    let b = fleet.sources[index];
    let budget = &fleet.budgets[index];
    let first = fleet.first_limiter[index];
    let mut st = PrecacheBudgetStatus {
        observed_generation: generation(b),
        registries: budget
            .registries
            .iter()
            .map(|r| RegistryBudgetStatus {
                host: r.host.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut reported: Option<BTreeSet<&str>> = None;
    for &i in members {
        let t = &fleet.tasks[i];
        if let Some(hosts) = t.registries() {
            reported
                .get_or_insert_with(BTreeSet::new)
                .extend(hosts.iter().map(String::as_str));
        }
        match t.play {
            Play::Done => st.done += 1,
            Play::Expired => {}
            Play::Live if hold[i] => {
                st.queued += 1;
                for (r, reg) in budget.registries.iter().enumerate() {
                    if t.registries().is_some_and(|h| h.contains(&reg.host)) {
                        st.registries[r].queued += 1;
                    }
                }
            }
            Play::Live => {
                let cap = caps[i].unwrap_or(0);
                let used = t.bytes_per_second();
                st.active += 1;
                st.bandwidth_allotted += cap;
                st.bandwidth_in_use += used;
                for (r, reg) in st.registries.iter_mut().enumerate() {
                    if t.limiters.contains(&(first + 1 + r)) {
                        reg.active += 1;
                        reg.bandwidth_allotted += cap;
                        reg.bandwidth_in_use += used;
                    }
                }
            }
        }
    }
    st.bandwidth_in_use_display = display_rate(st.bandwidth_in_use);
    let mut conds = old_conditions(b);
    let g = generation(b);
    conditions::set(
        &mut conds,
        types::VALID,
        true,
        reasons::VALID,
        "The spec is valid",
        g,
        now,
    );
    let selected = fleet.selected_clusters[index];
    if selected == 0 {
        conditions::set(
            &mut conds,
            types::CLUSTERS_SELECTED,
            false,
            reasons::NO_CLUSTERS_SELECTED,
            "spec.clusterSelector matches no ManagedCluster",
            g,
            now,
        );
    } else {
        conditions::set(
            &mut conds,
            types::CLUSTERS_SELECTED,
            true,
            reasons::CLUSTERS_SELECTED,
            &format!(
                "{selected} ManagedCluster{} selected",
                if selected == 1 { "" } else { "s" }
            ),
            g,
            now,
        );
    }
    match (&reported, budget.registries.is_empty()) {
        (_, true) | (None, false) => conditions::remove(&mut conds, types::REGISTRIES_SEEN),
        (Some(seen), false) => {
            let unknown: Vec<&str> = budget
                .registries
                .iter()
                .map(|r| r.host.as_str())
                .filter(|h| !seen.contains(h))
                .collect();
            if unknown.is_empty() {
                conditions::set(
                    &mut conds,
                    types::REGISTRIES_SEEN,
                    true,
                    reasons::REGISTRIES_SEEN,
                    "Every listed registry is one the selected clusters pull from",
                    g,
                    now,
                );
            } else {
                let seen: Vec<&str> = seen.iter().copied().collect();
                conditions::set(
                    &mut conds,
                    types::REGISTRIES_SEEN,
                    false,
                    reasons::UNKNOWN_REGISTRY,
                    &format!(
                        "spec.registries lists {} that no selected cluster pulls from (they pull from {})",
                        go_list(&unknown),
                        go_list(&seen)
                    ),
                    g,
                    now,
                );
            }
        }
    }
    st.conditions = conds;
    st
}

#[cfg(test)]
mod tests {
    use super::display_rate;

    #[test]
    fn rates_for_people() {
        assert_eq!(display_rate(0), "0/s");
        assert_eq!(display_rate(-5), "0/s");
        assert_eq!(display_rate(1023), "1023/s");
        assert_eq!(display_rate(1024), "1Ki/s");
        assert_eq!(display_rate(25 << 20), "25Mi/s");
        assert_eq!(display_rate(12 * (1 << 20) + (1 << 19)), "12.5Mi/s");
        assert_eq!(display_rate((1 << 30) - 1), "1024Mi/s");
        assert_eq!(display_rate(3 << 29), "1.5Gi/s");
    }
}
