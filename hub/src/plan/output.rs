//! Rendering the result of a `plan` run: every object as multi-document YAML or as one JSON
//! `List` (both feed back into `plan`), or a per-CGU table for people (its pre-cache parts are
//! in [`super::precache`]).

use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::{Map, Value, json};
use talm_hub_core::Requeue;
use talm_shared::api::cgu::{ClusterGroupUpgrade, ClusterGroupUpgradeStatus};

use super::apply::Verb;
use super::store::{Kind, Store};
use super::{CguReport, Settled};
use crate::args::OutputFormat;

/// Writes the result in `format`.
pub fn write(
    out: &mut dyn Write,
    format: OutputFormat,
    store: &Store,
    settled: &Settled,
) -> io::Result<()> {
    let text = match format {
        OutputFormat::Yaml => to_yaml(store)?,
        OutputFormat::Json => to_json(store)?,
        OutputFormat::Table => table(store, settled),
    };
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Every object, in output order, as multi-document YAML.
pub fn to_yaml(store: &Store) -> io::Result<String> {
    let objects: Vec<&Map<String, Value>> = store.output_objects().collect();
    serde_saphyr::to_string_multiple(&objects).map_err(io::Error::other)
}

/// Every object, in output order, as one pretty-printed `v1` `List`.
pub fn to_json(store: &Store) -> io::Result<String> {
    let items: Vec<&Map<String, Value>> = store.output_objects().collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut text = serde_json::to_string_pretty(&list).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// The human-readable summary: one block per CGU, then the object changes of the run.
pub fn table(store: &Store, settled: &Settled) -> String {
    let mut s = String::new();
    if settled.reports.is_empty() {
        s.push_str("No ClusterGroupUpgrade in the input.\n");
    }
    for (i, (key, report)) in settled.reports.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "ClusterGroupUpgrade {key}");
        match store.cgu(key) {
            Some(cgu) => cgu_block(&mut s, cgu, report),
            None => {
                let _ = writeln!(s, "  deleted (cleanup finished, finalizer removed)");
            }
        }
    }
    super::precache::budgets_block(&mut s, store);
    let changes: Vec<String> = settled
        .changes
        .iter()
        .filter(|(k, v)| !(k.rank == Kind::ClusterGroupUpgrade && **v == Verb::Updated))
        .map(|(k, v)| format!("  {:<8} {}", v.as_str(), k.describe()))
        .collect();
    s.push('\n');
    if changes.is_empty() {
        s.push_str("Object changes: none\n");
    } else {
        s.push_str("Object changes:\n");
        for line in changes {
            s.push_str(&line);
            s.push('\n');
        }
    }
    let _ = writeln!(s, "Events emitted: {}", settled.events);
    s
}

fn cgu_block(s: &mut String, cgu: &ClusterGroupUpgrade, report: &CguReport) {
    let empty = ClusterGroupUpgradeStatus::default();
    let status = cgu.status.as_ref().unwrap_or(&empty);
    let state = match status.conditions.last() {
        Some(c) if c.message.is_empty() => c.reason.clone(),
        Some(c) => format!("{}: {}", c.reason, c.message),
        None => "(no conditions yet)".into(),
    };
    let _ = writeln!(s, "  state:    {state}");
    // talm extension: a pause or alert hold, whatever condition changed last.
    if let Some(p) = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused" && c.status == "True")
    {
        let _ = writeln!(s, "  paused:   {}", p.message);
    }
    let policies: Vec<&str> = status
        .managed_policies_for_upgrade
        .iter()
        .flatten()
        .map(|p| p.name.as_str())
        .collect();
    if !policies.is_empty() {
        let _ = writeln!(s, "  policies: {}", policies.join(", "));
    }
    if let Some(skipped) = status
        .managed_policies_compliant_before_upgrade
        .as_ref()
        .filter(|v| !v.is_empty())
    {
        let _ = writeln!(
            s,
            "  skipped:  {} (compliant before the upgrade)",
            skipped.join(", ")
        );
    }
    let templates: &[String] = cgu.spec.manifest_work_templates.as_deref().unwrap_or(&[]);
    if !templates.is_empty() {
        let _ = writeln!(s, "  manifestworks: {}", templates.join(", "));
    }
    batches_block(s, status, &policies, templates);
    super::precache::progress_block(s, status);
    forecast_block(s, status);
    if !report.notes.excluded_clusters.is_empty() {
        s.push_str("  excluded clusters:\n");
        let width = report
            .notes
            .excluded_clusters
            .iter()
            .map(|(c, _)| c.len())
            .max()
            .unwrap_or(0);
        for (cluster, why) in &report.notes.excluded_clusters {
            let _ = writeln!(s, "    {cluster:<width$}  {why}");
        }
    }
    if !report.notes.pending_actions.is_empty() {
        s.push_str("  pending actions:\n");
        for action in &report.notes.pending_actions {
            let _ = writeln!(s, "    - {action}");
        }
    }
    let next = match report.requeue {
        Requeue::Never => "on the next change".to_string(),
        Requeue::Immediately => "immediately".to_string(),
        Requeue::After(secs) => format!("in {secs}s"),
    };
    let _ = writeln!(s, "  next reconcile: {next}");
}

/// The batches with one line per cluster: its state and its pre-cache and backup states.
fn batches_block(
    s: &mut String,
    status: &ClusterGroupUpgradeStatus,
    policies: &[&str],
    templates: &[String],
) {
    let Some(plan) = status.remediation_plan.as_ref().filter(|p| !p.is_empty()) else {
        s.push_str("  batches:  none\n");
        return;
    };
    let upgrade = status.status.as_ref();
    let current = upgrade.and_then(|u| u.current_batch).unwrap_or(0);
    let progress = upgrade.and_then(|u| u.current_batch_remediation_progress.as_ref());
    let precache = status.precaching.as_ref().and_then(|p| p.status.as_ref());
    let backup = status.backup.as_ref().and_then(|b| b.status.as_ref());
    let cluster_state = |cluster: &str| -> String {
        if let Some(p) = progress.and_then(|p| p.get(cluster)) {
            if let Some(i) = p.manifest_work_index.and_then(|i| usize::try_from(i).ok()) {
                let name = templates.get(i).map(String::as_str).unwrap_or("?");
                return format!("{} ({name}, {} of {})", p.state, i + 1, templates.len());
            }
            return match p.policy_index.and_then(|i| usize::try_from(i).ok()) {
                Some(i) => {
                    let name = policies.get(i).copied().unwrap_or("?");
                    format!("{} ({name}, {} of {})", p.state, i + 1, policies.len())
                }
                None => p.state.clone(),
            };
        }
        let done = status.clusters.iter().flatten().find(|c| c.name == cluster);
        match done {
            Some(c) => match (&c.current_policy, &c.current_manifest_work) {
                (Some(p), _) => format!("{} ({} {})", c.state, p.name, p.status),
                (None, Some(w)) => format!("{} ({})", c.state, w.name),
                (None, None) => c.state.clone(),
            },
            None => "pending".into(),
        }
    };
    let mut rows: Vec<[String; 5]> = Vec::new();
    for (i, batch) in plan.iter().enumerate() {
        let number = i + 1;
        let is_current = usize::try_from(current).ok() == Some(number);
        for (j, cluster) in batch.iter().enumerate() {
            let marker = if is_current && j == 0 { ">" } else { " " };
            let batch_col = if j == 0 {
                number.to_string()
            } else {
                String::new()
            };
            let get = |m: Option<&std::collections::BTreeMap<String, String>>| {
                m.and_then(|m| m.get(cluster))
                    .cloned()
                    .unwrap_or_else(|| "-".into())
            };
            rows.push([
                format!("{marker} {batch_col}"),
                cluster.clone(),
                cluster_state(cluster),
                get(precache),
                get(backup),
            ]);
        }
    }
    let show_precache = precache.is_some_and(|m| !m.is_empty());
    let show_backup = backup.is_some_and(|m| !m.is_empty());
    let header = [
        "  BATCH".to_string(),
        "CLUSTER".into(),
        "STATE".into(),
        "PRECACHE".into(),
        "BACKUP".into(),
    ];
    let columns = |row: &[String; 5]| -> Vec<String> {
        let mut cols = vec![row[0].clone(), row[1].clone(), row[2].clone()];
        if show_precache {
            cols.push(row[3].clone());
        }
        if show_backup {
            cols.push(row[4].clone());
        }
        cols
    };
    let all: Vec<Vec<String>> = std::iter::once(columns(&header))
        .chain(rows.iter().map(columns))
        .collect();
    let total = plan.len();
    let current_text = if current > 0 {
        format!(", current {current}")
    } else {
        String::new()
    };
    let _ = writeln!(s, "  batches:  {total}{current_text}");
    write_columns(s, "   ", &all);
}

/// Left-aligned columns (as wide as their widest cell, two spaces apart), each row indented by
/// `indent`.
pub(super) fn write_columns(s: &mut String, indent: &str, rows: &[Vec<String>]) {
    let Some(first) = rows.first() else {
        return;
    };
    let widths: Vec<usize> = (0..first.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(s, "{indent}{}", line.join("  ").trim_end());
    }
}

/// The forecast (a talm extension): the CGU's expected completion, one line per remaining batch
/// (start, ETA, p90 end, whether it fits a maintenance window, what it waits for) and the basis
/// per policy.
fn forecast_block(s: &mut String, status: &ClusterGroupUpgradeStatus) {
    let Some(f) = status.forecast.as_ref() else {
        return;
    };
    let time = |t: &Option<talm_shared::api::Time>| {
        t.as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let completion = match (&f.completion, &f.completion_p90) {
        (Some(_), _) => format!(
            "completion {} (p90 {})",
            time(&f.completion),
            time(&f.completion_p90)
        ),
        (None, _) if f.batches.is_empty() => "no batch left".into(),
        (None, _) => "no completion estimate yet (a policy has no observation and no prior)".into(),
    };
    let _ = writeln!(s, "  forecast: {completion}");
    if !f.batches.is_empty() {
        let mut rows: Vec<Vec<String>> = vec![
            [
                "  BATCH",
                "START",
                "ETA",
                "P90",
                "DURATION P90",
                "FITS WINDOW",
                "WAITS FOR",
            ]
            .iter()
            .map(|h| h.to_string())
            .collect(),
        ];
        for b in &f.batches {
            rows.push(vec![
                format!("  {}", b.batch),
                time(&b.start),
                time(&b.end),
                time(&b.end_p90),
                b.duration_p90.clone().unwrap_or_else(|| "-".into()),
                match b.fits_window {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                b.waits_for.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(s, "   {}", line.join("  ").trim_end());
        }
    }
    for p in &f.policies {
        let mut parts = vec![format!(
            "{} observation{}",
            p.observations,
            if p.observations == 1 { "" } else { "s" }
        )];
        if let Some(prior) = &p.prior {
            parts.push(format!("prior {prior}"));
        }
        if let (Some(p50), Some(p90)) = (&p.p50, &p.p90) {
            parts.push(format!("p50 {p50}, p90 {p90}"));
        }
        let _ = writeln!(s, "   basis {}: {}", p.name, parts.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use talm_hub_core::{Decision, FinalizerChange, NoUpdateGraph, Notes, Write};
    use talm_shared::api::rhacm::Placement;

    use super::*;
    use crate::plan::load::load_yaml_str;
    use crate::plan::settle;

    const CGU: &str = "apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata: {name: cgu-upgrade, namespace: default}
spec:
  clusters: [spoke1, spoke2, spoke3, spoke4, spoke6]
  remediationStrategy: {maxConcurrency: 2}
status:
  conditions:
  - {type: ClustersSelected, status: 'True', reason: ClusterSelectionCompleted, message: All selected clusters are valid, lastTransitionTime: '2026-01-01T09:00:00Z'}
  - {type: Progressing, status: 'True', reason: InProgress, message: Remediating non-compliant policies, lastTransitionTime: '2026-01-01T09:00:00Z'}
  managedPoliciesForUpgrade:
  - {name: policy1, namespace: policies}
  - {name: policy2, namespace: policies}
  managedPoliciesCompliantBeforeUpgrade: [policy0]
  remediationPlan: [[spoke1], [spoke2, spoke3], [spoke4]]
  clusters:
  - {name: spoke1, state: complete}
  precaching:
    status: {spoke1: Succeeded, spoke2: Succeeded, spoke3: PrecacheTimeout}
  status:
    startedAt: '2026-01-01T09:00:00Z'
    currentBatch: 2
    currentBatchStartedAt: '2026-01-01T09:30:00Z'
    currentBatchRemediationProgress:
      spoke2: {state: InProgress, policyIndex: 1}
      spoke3: {state: Completed}
";

    fn now() -> jiff::Timestamp {
        "2026-01-01T10:00:00Z".parse().unwrap()
    }

    fn noting(
        cgu: &talm_shared::api::cgu::ClusterGroupUpgrade,
        _: &talm_hub_core::Snapshot,
        _: &talm_hub_core::Context<'_>,
    ) -> Decision {
        Decision {
            status: cgu.status.clone().unwrap_or_default(),
            finalizer: FinalizerChange::None,
            writes: vec![Write::ApplyPlacement(Placement {
                api_version: Placement::API_VERSION.into(),
                kind: Placement::KIND.into(),
                metadata: talm_shared::api::ObjectMeta {
                    name: Some("cgu-upgrade-policy2-placement-kuttl".into()),
                    namespace: Some("policies".into()),
                    ..Default::default()
                },
                ..Default::default()
            })],
            events: Vec::new(),
            requeue: talm_hub_core::Requeue::After(300),
            notes: Notes {
                excluded_clusters: vec![(
                    "spoke6".into(),
                    "compliant with all managed policies".into(),
                )],
                pending_actions: vec![
                    "afterCompletion: add labels [upgraded] on each cluster when it completes"
                        .into(),
                ],
            },
        }
    }

    #[test]
    fn table_shows_state_batches_cluster_states_exclusions_and_changes() {
        let mut store = Store::from_loaded(load_yaml_str("in.yaml", CGU).unwrap(), now()).unwrap();
        let settled = settle(&mut store, now(), &NoUpdateGraph, noting).unwrap();
        let expected = "\
ClusterGroupUpgrade default/cgu-upgrade
  state:    InProgress: Remediating non-compliant policies
  policies: policy1, policy2
  skipped:  policy0 (compliant before the upgrade)
  batches:  3, current 2
     BATCH  CLUSTER  STATE                         PRECACHE
     1      spoke1   complete                      Succeeded
   > 2      spoke2   InProgress (policy2, 2 of 2)  Succeeded
            spoke3   Completed                     PrecacheTimeout
     3      spoke4   pending                       -
  excluded clusters:
    spoke6  compliant with all managed policies
  pending actions:
    - afterCompletion: add labels [upgraded] on each cluster when it completes
  next reconcile: in 300s

Object changes:
  created  Placement policies/cgu-upgrade-policy2-placement-kuttl
Events emitted: 0
";
        assert_eq!(table(&store, &settled), expected);
    }

    #[test]
    fn table_without_cgus_or_plan() {
        let store = Store::new();
        let text = table(&store, &Settled::default());
        assert_eq!(
            text,
            "No ClusterGroupUpgrade in the input.\n\nObject changes: none\nEvents emitted: 0\n"
        );
        let bare = CGU.split("status:\n").next().unwrap();
        let mut store = Store::from_loaded(load_yaml_str("in.yaml", bare).unwrap(), now()).unwrap();
        let settled = settle(&mut store, now(), &NoUpdateGraph, |c, _, _| Decision {
            status: c.status.clone().unwrap_or_default(),
            finalizer: FinalizerChange::None,
            writes: Vec::new(),
            events: Vec::new(),
            requeue: talm_hub_core::Requeue::Never,
            notes: Notes::default(),
        })
        .unwrap();
        let text = table(&store, &settled);
        assert!(text.contains("  state:    (no conditions yet)\n  batches:  none\n  next reconcile: on the next change\n"), "{text}");
    }

    #[test]
    fn json_output_is_a_v1_list() {
        let store = Store::from_loaded(load_yaml_str("in.yaml", CGU).unwrap(), now()).unwrap();
        let v: Value = serde_json::from_str(&to_json(&store).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["metadata"]["name"], "cgu-upgrade");
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn write_renders_each_format() {
        let store = Store::from_loaded(load_yaml_str("in.yaml", CGU).unwrap(), now()).unwrap();
        for (format, start) in [
            (
                OutputFormat::Yaml,
                "apiVersion: ran.openshift.io/v1alpha1\n",
            ),
            (OutputFormat::Json, "{\n"),
            (OutputFormat::Table, "No ClusterGroupUpgrade"),
        ] {
            let mut out = Vec::new();
            write(&mut out, format, &store, &Settled::default()).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(start), "{format:?}: {text}");
        }
    }
}
