//! The table's pre-cache parts (docs/contract.md §4.4): a CGU's per-cluster transfer progress
//! (`status.precaching.progress`: done, throughput, cap, ETA, or queued) and the
//! PrecacheBudgets section (counts, bandwidth, registries and the conditions that are False).

use std::fmt::Write as _;

use talm_hub_core::schedule::display_rate;
use talm_shared::api::cgu::ClusterGroupUpgradeStatus;
use talm_shared::api::precachebudget::PrecacheBudget;

use super::output::write_columns;
use super::store::{Store, Typed};

/// A byte count for people (`100Mi`, `1.5Gi`, `512`).
fn bytes(n: i64) -> String {
    display_rate(n).trim_end_matches("/s").to_string()
}

/// One line per cluster whose pre-cache is queued or reporting progress.
pub fn progress_block(s: &mut String, status: &ClusterGroupUpgradeStatus) {
    let Some(progress) = status
        .precaching
        .as_ref()
        .and_then(|p| p.progress.as_ref())
        .filter(|p| !p.is_empty())
    else {
        return;
    };
    let mut rows = vec![
        ["CLUSTER", "STATE", "DONE", "RATE", "CAP", "ETA"]
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<String>>(),
    ];
    for (cluster, p) in progress {
        let done = if p.bytes_total > 0 {
            let pct = i128::from(p.bytes_done.max(0)) * 100 / i128::from(p.bytes_total);
            format!(
                "{} of {} ({pct}%)",
                bytes(p.bytes_done),
                bytes(p.bytes_total)
            )
        } else {
            "-".into()
        };
        rows.push(vec![
            cluster.clone(),
            if p.queued { "queued" } else { "downloading" }.into(),
            done,
            if p.queued {
                "-".into()
            } else {
                display_rate(p.bytes_per_second)
            },
            p.rate_limit_bytes_per_second
                .map_or_else(|| "-".into(), display_rate),
            p.eta
                .as_ref()
                .map_or_else(|| "-".into(), |t| t.0.to_string()),
        ]);
    }
    s.push_str("  pre-cache progress:\n");
    write_columns(s, "    ", &rows);
}

/// The PrecacheBudgets of the store, with their status as the scheduler left it.
pub fn budgets_block(s: &mut String, store: &Store) {
    let budgets: Vec<&PrecacheBudget> = store
        .entries()
        .filter_map(|(_, e)| match &e.typed {
            Typed::PrecacheBudget(b) => Some(&**b),
            _ => None,
        })
        .collect();
    if budgets.is_empty() {
        return;
    }
    s.push_str("\nPrecacheBudgets:\n");
    let mut rows = vec![
        [
            "NAME",
            "BANDWIDTH",
            "ACTIVE",
            "QUEUED",
            "DONE",
            "ALLOTTED",
            "IN USE",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<String>>(),
    ];
    let mut notes: Vec<(usize, String)> = Vec::new();
    for b in &budgets {
        let st = b.status.clone().unwrap_or_default();
        rows.push(vec![
            b.metadata.name.clone().unwrap_or_default(),
            b.spec.bandwidth.clone().unwrap_or_else(|| "-".into()),
            st.active.to_string(),
            st.queued.to_string(),
            st.done.to_string(),
            display_rate(st.bandwidth_allotted),
            display_rate(st.bandwidth_in_use),
        ]);
        let row = rows.len() - 1;
        for r in &st.registries {
            notes.push((
                row,
                format!(
                    "registry {}: {} active, {} queued, allotted {}, in use {}",
                    r.host,
                    r.active,
                    r.queued,
                    display_rate(r.bandwidth_allotted),
                    display_rate(r.bandwidth_in_use)
                ),
            ));
        }
        for c in st.conditions.iter().filter(|c| c.status == "False") {
            notes.push((
                row,
                format!("{}=False {}: {}", c.type_, c.reason, c.message),
            ));
        }
    }
    // The table, with each budget's notes under its row.
    let mut table = String::new();
    write_columns(&mut table, "  ", &rows);
    for (i, line) in table.lines().enumerate() {
        let _ = writeln!(s, "{line}");
        for (_, note) in notes.iter().filter(|(row, _)| *row == i) {
            let _ = writeln!(s, "    {note}");
        }
    }
}
