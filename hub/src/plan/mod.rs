//! `talm-hub plan`: the offline adapter. It reads hub objects from files, runs the engine over
//! every ClusterGroupUpgrade, and the fleet pre-cache scheduler after them, to a fixed point at
//! one instant (`--now`), applies the decisions to the in-memory objects, and prints the objects
//! (`-o yaml|json`, which can be fed back with a later `--now` to continue the rollout) or a
//! per-CGU table.
//!
//! - [`load`]: files, directories and stdin → raw objects plus typed views; input errors.
//! - [`store`]: the in-memory objects and the engine [`Snapshot`](talm_hub_core::Snapshot).
//! - [`apply`]: one decision → object writes, status, finalizer, Event objects.
//! - [`graph`]: `--update-graph` lookups.
//! - [`output`]: YAML, JSON and table rendering; [`precache`]: the table's pre-cache parts.

pub mod apply;
pub mod graph;
pub mod load;
pub mod output;
pub mod precache;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use talm_hub_core::{Context, Decision, NoUpdateGraph, Notes, Requeue, Snapshot, UpdateGraph};
use talm_shared::api::cgu::ClusterGroupUpgrade;

use self::apply::{Verb, apply_decision, apply_write};
use self::store::{CguKey, ObjectKey, Store};
use crate::args::PlanArgs;
use crate::error::Error;

/// The most passes over the CGUs before giving up on reaching a fixed point.
pub const MAX_PASSES: usize = 200;

/// What the last reconcile of one CGU said, for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CguReport {
    /// The decision's notes (excluded clusters, pending actions).
    pub notes: Notes,
    /// The decision's requeue.
    pub requeue: Requeue,
    /// How many times the CGU was reconciled in this run.
    pub reconciles: usize,
    /// Whether the CGU was deleted in this run.
    pub deleted: bool,
}

/// The outcome of running the engine to a fixed point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Passes run.
    pub passes: usize,
    /// Per CGU, what its last reconcile said.
    pub reports: BTreeMap<CguKey, CguReport>,
    /// The net change of each object touched (CGUs included).
    pub changes: BTreeMap<ObjectKey, Verb>,
    /// Events emitted.
    pub events: usize,
    /// What the pre-cache scheduler's last run asked: run again after this many seconds.
    pub schedule_requeue: Option<u64>,
}

/// Folds a new change of an object into its net change for the run.
fn record(changes: &mut BTreeMap<ObjectKey, Verb>, key: ObjectKey, verb: Verb) {
    use Verb::{Created, Deleted, Updated};
    let net = match (changes.get(&key), verb) {
        (None, v) => Some(v),
        (Some(Created), Updated) => Some(Created),
        (Some(Created), Deleted) => None,
        (Some(Deleted), Created) => Some(Updated),
        (Some(_), v) => Some(v),
    };
    match net {
        Some(v) => changes.insert(key, v),
        None => changes.remove(&key),
    };
}

/// Runs `reconcile` over every CGU, then the fleet pre-cache scheduler
/// (`talm_hub_core::schedule`, docs/contract.md §4.4), until a whole pass changes nothing: a
/// fixed point, so a second run at the same `now` over the output changes nothing either.
///
/// Each pass visits the CGUs, sorted by namespace and name; each reconcile sees the objects as
/// left by the previous one (all CGUs included, for blocking). Then the scheduler lets queued
/// pre-cache tasks in and writes the budgets' status. When a pass changed any object, every CGU
/// is visited again, since any of them may read what changed (a blocking CGU's status, a
/// cluster's labels, an agent's tasks). Time does not move within a run.
pub fn settle<F>(
    store: &mut Store,
    now: Timestamp,
    graph: &dyn UpdateGraph,
    reconcile: F,
) -> Result<Settled, Error>
where
    F: Fn(&ClusterGroupUpgrade, &Snapshot, &Context<'_>) -> Decision,
{
    let ctx = Context { now, graph };
    let mut settled = Settled::default();
    let mut pending: BTreeSet<CguKey> = store.cgu_keys().into_iter().collect();
    // The CGUs whose reconcile changed some object in the last pass.
    let mut changing: BTreeSet<CguKey> = BTreeSet::new();
    // Whether the scheduler changed something in the last pass.
    let mut scheduled = false;
    let mut again = true;
    while again {
        if settled.passes == MAX_PASSES {
            return Err(Error::NotConverged {
                passes: MAX_PASSES,
                cgus: changing
                    .iter()
                    .map(CguKey::to_string)
                    .chain(scheduled.then(|| "the pre-cache scheduler".to_string()))
                    .collect(),
            });
        }
        settled.passes += 1;
        changing.clear();
        for key in pending {
            let Some(cgu) = store.cgu(&key).cloned() else {
                continue;
            };
            let snapshot = store.snapshot();
            let decision = reconcile(&cgu, &snapshot, &ctx);
            let applied = apply_decision(store, &key, &decision, now)?;
            tracing::debug!(
                cgu = %key,
                pass = settled.passes,
                writes = decision.writes.len(),
                events = applied.events,
                changed = applied.changed(),
                requeue = ?decision.requeue,
                "reconciled"
            );
            if applied.changed() {
                changing.insert(key.clone());
            }
            settled.events += applied.events;
            for change in &applied.changes {
                record(&mut settled.changes, change.key.clone(), change.verb);
            }
            let report = settled.reports.entry(key).or_insert_with(|| CguReport {
                notes: Notes::default(),
                requeue: Requeue::Never,
                reconciles: 0,
                deleted: false,
            });
            report.notes = decision.notes;
            report.requeue = decision.requeue;
            report.reconciles += 1;
            report.deleted |= applied.cgu_deleted;
        }
        scheduled = false;
        let schedule = talm_hub_core::schedule::schedule(&store.snapshot(), now);
        for write in &schedule.writes {
            if let Some(change) = apply_write(store, write, now)? {
                scheduled = true;
                record(&mut settled.changes, change.key, change.verb);
            }
        }
        tracing::debug!(
            pass = settled.passes,
            writes = schedule.writes.len(),
            changed = scheduled,
            "pre-cache scheduler"
        );
        settled.schedule_requeue = schedule.requeue_after_secs;
        again = !changing.is_empty() || scheduled;
        pending = if again {
            store.cgu_keys().into_iter().collect()
        } else {
            BTreeSet::new()
        };
    }
    Ok(settled)
}

/// The earliest `--now`: the first second of year 1 (RFC 3339 has four-digit years).
const EARLIEST_NOW: &str = "0001-01-01T00:00:00Z";

/// The latest `--now`: the last whole second talm (jiff) can represent.
const LATEST_NOW: &str = "9999-12-30T22:00:00Z";

/// Parses `--now` (RFC 3339), defaulting to the wall-clock time read by the entry point. The
/// UTC offset must be `Z` or `±HH:MM` within ±23:59 (RFC 3339's; jiff alone accepts up to
/// ±25:59:59), and the time between [`EARLIEST_NOW`] and [`LATEST_NOW`].
pub fn parse_now(value: Option<&str>, wall_clock: Timestamp) -> Result<Timestamp, Error> {
    let Some(value) = value else {
        return Ok(wall_clock);
    };
    let usage = |message: String| Error::Usage {
        flag: "--now",
        message,
    };
    let text = value.trim();
    // The fields as written, before any conversion to an instant.
    let pieces = jiff::fmt::temporal::Pieces::parse(text).ok();
    let offset = pieces
        .as_ref()
        .filter(|p| p.time().is_some())
        .and_then(|p| p.offset())
        .map(|o| o.to_numeric_offset().seconds());
    if offset_out_of_range(text)
        || offset.is_some_and(|s| s.abs() > 23 * 3600 + 59 * 60 || s % 60 != 0)
    {
        return Err(usage(format!(
            "{value:?}: the UTC offset must be Z or +HH:MM/-HH:MM with HH at most 23 and MM at most 59"
        )));
    }
    let earliest: Timestamp = EARLIEST_NOW.parse().unwrap_or(Timestamp::MIN);
    let latest: Timestamp = LATEST_NOW.parse().unwrap_or(Timestamp::MAX);
    let out_of_range = || {
        usage(format!(
            "{value:?} is out of range: use a time from {EARLIEST_NOW} to {LATEST_NOW}"
        ))
    };
    match text.parse::<Timestamp>() {
        Ok(t) if t < earliest || t > latest => Err(out_of_range()),
        Ok(t) => Ok(t),
        // Date, time and offset are well-formed: the instant is beyond what jiff represents.
        Err(_) if offset.is_some() => Err(out_of_range()),
        Err(e) => Err(usage(format!(
            "{value:?} is not an RFC 3339 time such as 2026-01-01T10:00:00Z ({})",
            e.to_string().replace('\n', " ")
        ))),
    }
}

/// True when `text` ends in a `±HH:MM` offset with HH over 23 or MM over 59 (which jiff
/// refuses with its own message when MM is over 59).
fn offset_out_of_range(text: &str) -> bool {
    let b = text.as_bytes();
    let Some(tail) = b.len().checked_sub(6).and_then(|i| b.get(i..)) else {
        return false;
    };
    let digit = |i: usize| tail.get(i).filter(|c| c.is_ascii_digit()).map(|c| c - b'0');
    match (
        tail.first(),
        digit(1),
        digit(2),
        tail.get(3),
        digit(4),
        digit(5),
    ) {
        (Some(b'+' | b'-'), Some(h1), Some(h2), Some(b':'), Some(m1), Some(m2)) => {
            h1 * 10 + h2 > 23 || m1 * 10 + m2 > 59
        }
        _ => false,
    }
}

/// Runs `talm-hub plan`.
pub fn run(args: &PlanArgs, wall_clock: Timestamp) -> Result<(), Error> {
    let now = parse_now(args.now.as_deref(), wall_clock)?;
    let file_graph;
    let graph: &dyn UpdateGraph = match &args.update_graph {
        Some(path) => {
            file_graph = graph::FileUpdateGraph::load(path)?;
            &file_graph
        }
        None => &NoUpdateGraph,
    };
    let loaded = load::load_paths(&args.files, &mut std::io::stdin())?;
    let objects = loaded.len();
    let mut store = Store::from_loaded(loaded, now)?;
    let cgus = store.cgu_keys().len();
    tracing::info!(objects, cgus, now = %now, "loaded input");
    let settled = settle(&mut store, now, graph, talm_hub_core::reconcile)?;
    tracing::info!(
        passes = settled.passes,
        changed_objects = settled.changes.len(),
        events = settled.events,
        "engine settled"
    );
    let mut stdout = std::io::stdout().lock();
    match output::write(&mut stdout, args.output, &store, &settled) {
        Ok(()) => Ok(()),
        // `talm-hub plan ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Output(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use talm_hub_core::FinalizerChange;
    use talm_shared::api::cgu::{ClusterGroupUpgradeStatus, ManagedPolicyForUpgrade};

    use super::*;
    use crate::plan::load::load_yaml_str;

    fn now() -> Timestamp {
        "2026-01-01T10:00:00Z".parse().unwrap()
    }

    fn cgu_yaml(name: &str) -> String {
        format!(
            "apiVersion: ran.openshift.io/v1alpha1\nkind: ClusterGroupUpgrade\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{remediationStrategy: {{maxConcurrency: 1}}}}\n"
        )
    }

    fn store(names: &[&str]) -> Store {
        let text: Vec<String> = names.iter().map(|n| cgu_yaml(n)).collect();
        Store::from_loaded(
            load_yaml_str("in.yaml", &text.join("---\n")).unwrap(),
            now(),
        )
        .unwrap()
    }

    fn decision(cgu: &ClusterGroupUpgrade) -> Decision {
        Decision {
            status: cgu.status.clone().unwrap_or_default(),
            finalizer: FinalizerChange::None,
            writes: Vec::new(),
            events: Vec::new(),
            requeue: Requeue::Never,
            notes: Notes::default(),
        }
    }

    fn has_finalizer(cgu: &ClusterGroupUpgrade) -> bool {
        cgu.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
    }

    /// Adds the finalizer first (requeue now), then records the number of CGUs it saw with a
    /// status as its computedMaxConcurrency (requeue now), then settles.
    fn two_step(cgu: &ClusterGroupUpgrade, snap: &Snapshot, _: &Context<'_>) -> Decision {
        let mut d = decision(cgu);
        if !has_finalizer(cgu) {
            d.finalizer = FinalizerChange::Add;
            d.requeue = Requeue::Immediately;
        } else if cgu.status.is_none() {
            let others_with_status = ["a", "b", "c"]
                .iter()
                .filter(|n| snap.cgu("ns", n).is_some_and(|c| c.status.is_some()))
                .count();
            d.status.computed_max_concurrency = Some(i32::try_from(others_with_status).unwrap());
            d.requeue = Requeue::Immediately;
        } else {
            d.requeue = Requeue::After(30);
        }
        d
    }

    #[test]
    fn runs_to_a_fixed_point_in_name_order_seeing_earlier_writes() {
        let mut s = store(&["c", "a", "b"]);
        let settled = settle(&mut s, now(), &NoUpdateGraph, two_step).unwrap();
        // Pass 1 adds finalizers, pass 2 writes statuses, pass 3 sees nothing to do.
        assert_eq!(settled.passes, 3);
        let seen: Vec<Option<i32>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let key = CguKey {
                    namespace: "ns".into(),
                    name: n.to_string(),
                };
                s.cgu(&key)
                    .unwrap()
                    .status
                    .as_ref()
                    .unwrap()
                    .computed_max_concurrency
            })
            .collect();
        // a ran first and saw no status; b saw a's; c saw a's and b's.
        assert_eq!(seen, [Some(0), Some(1), Some(2)]);
        let reports: Vec<(String, usize, Requeue)> = settled
            .reports
            .iter()
            .map(|(k, r)| (k.name.clone(), r.reconciles, r.requeue))
            .collect();
        assert_eq!(
            reports,
            [
                ("a".to_string(), 3, Requeue::After(30)),
                ("b".to_string(), 3, Requeue::After(30)),
                ("c".to_string(), 3, Requeue::After(30)),
            ]
        );
        assert_eq!(settled.changes.len(), 3, "three CGUs updated");
        assert!(settled.changes.values().all(|v| *v == Verb::Updated));
    }

    #[test]
    fn immediate_requeue_without_change_stops() {
        let calls = RefCell::new(0);
        let mut s = store(&["a"]);
        let settled = settle(&mut s, now(), &NoUpdateGraph, |cgu, _, _| {
            *calls.borrow_mut() += 1;
            let mut d = decision(cgu);
            d.requeue = Requeue::Immediately;
            d
        })
        .unwrap();
        assert_eq!(*calls.borrow(), 1);
        assert_eq!(settled.passes, 1);
    }

    #[test]
    fn a_change_is_looked_at_again_whatever_the_requeue() {
        // The first reconcile changes the status and asks for nothing: the next pass looks
        // again (a second run over the output would), and stops when that changes nothing.
        let calls = RefCell::new(0);
        let mut s = store(&["a"]);
        let settled = settle(&mut s, now(), &NoUpdateGraph, |cgu, _, _| {
            *calls.borrow_mut() += 1;
            let mut d = decision(cgu);
            d.status.computed_max_concurrency = Some(1);
            d.requeue = Requeue::After(1);
            d
        })
        .unwrap();
        assert_eq!(*calls.borrow(), 2);
        assert_eq!(settled.passes, 2);
    }

    #[test]
    fn a_change_by_one_cgu_revisits_the_others() {
        let mut s = store(&["a", "b"]);
        let settled = settle(&mut s, now(), &NoUpdateGraph, |cgu, snap, _| {
            let mut d = decision(cgu);
            if cgu.metadata.name.as_deref() == Some("a") {
                // a reads b's status: it can only copy it after b has written it.
                d.status.computed_max_concurrency = snap
                    .cgu("ns", "b")
                    .and_then(|b| b.status.as_ref())
                    .and_then(|st| st.computed_max_concurrency)
                    .map(|v| v + 1);
            } else {
                d.status.computed_max_concurrency = Some(7);
            }
            d.requeue = Requeue::Never;
            d
        })
        .unwrap();
        let status_of = |n: &str| {
            let key = CguKey {
                namespace: "ns".into(),
                name: n.into(),
            };
            s.cgu(&key)
                .unwrap()
                .status
                .as_ref()
                .unwrap()
                .computed_max_concurrency
        };
        assert_eq!(status_of("b"), Some(7));
        assert_eq!(status_of("a"), Some(8), "a saw b's write in a later pass");
        assert_eq!(
            settled.passes, 3,
            "a and b change, a changes, nothing changes"
        );
    }

    #[test]
    fn an_engine_that_never_settles_is_an_error() {
        let calls = RefCell::new(0);
        let mut s = store(&["a", "b"]);
        let err = settle(&mut s, now(), &NoUpdateGraph, |cgu, _, _| {
            let mut d = decision(cgu);
            if cgu.metadata.name.as_deref() == Some("a") {
                *calls.borrow_mut() += 1;
                d.status.computed_max_concurrency = Some(*calls.borrow());
                d.requeue = Requeue::Immediately;
            }
            d
        })
        .unwrap_err();
        assert_eq!(usize::try_from(*calls.borrow()).unwrap(), MAX_PASSES);
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            format!(
                "the engine did not settle after {MAX_PASSES} passes at this time; still changing: ns/a"
            )
        );
    }

    #[test]
    fn a_cgu_deleted_by_its_decision_is_not_reconciled_again() {
        let text = cgu_yaml("a").replace(
            "namespace: ns}",
            "namespace: ns, deletionTimestamp: '2026-01-01T09:00:00Z', finalizers: [ran.openshift.io/cleanup-finalizer]}",
        );
        let mut s = Store::from_loaded(load_yaml_str("in.yaml", &text).unwrap(), now()).unwrap();
        let calls = RefCell::new(0);
        let settled = settle(&mut s, now(), &NoUpdateGraph, |cgu, _, _| {
            *calls.borrow_mut() += 1;
            let mut d = decision(cgu);
            d.finalizer = FinalizerChange::Remove;
            d.requeue = Requeue::Immediately;
            d
        })
        .unwrap();
        assert_eq!(*calls.borrow(), 1);
        assert!(s.cgu_keys().is_empty());
        let report = &settled.reports[&CguKey {
            namespace: "ns".into(),
            name: "a".into(),
        }];
        assert!(report.deleted);
        assert_eq!(
            settled.changes.values().collect::<Vec<_>>(),
            [&Verb::Deleted]
        );
    }

    #[test]
    fn the_context_carries_now_and_the_graph() {
        let mut s = store(&["a"]);
        let graph = graph::FileUpdateGraph::default();
        settle(&mut s, now(), &graph, |cgu, _, ctx| {
            assert_eq!(ctx.now, now());
            let e = ctx.graph.payload_for("http://u", "c", "4.1").unwrap_err();
            assert!(e.ends_with("not in --update-graph file"), "{e}");
            decision(cgu)
        })
        .unwrap();
    }

    #[test]
    fn net_changes_fold_create_update_delete() {
        let key = |n: &str| ObjectKey::typed(store::Kind::Placement, "Placement", "ns", n);
        let mut c = BTreeMap::new();
        record(&mut c, key("created-updated"), Verb::Created);
        record(&mut c, key("created-updated"), Verb::Updated);
        record(&mut c, key("created-deleted"), Verb::Created);
        record(&mut c, key("created-deleted"), Verb::Deleted);
        record(&mut c, key("deleted-created"), Verb::Deleted);
        record(&mut c, key("deleted-created"), Verb::Created);
        record(&mut c, key("updated-deleted"), Verb::Updated);
        record(&mut c, key("updated-deleted"), Verb::Deleted);
        let got: Vec<(String, Verb)> = c.into_iter().map(|(k, v)| (k.name, v)).collect();
        assert_eq!(
            got,
            [
                ("created-updated".to_string(), Verb::Created),
                ("deleted-created".to_string(), Verb::Updated),
                ("updated-deleted".to_string(), Verb::Deleted),
            ]
        );
    }

    #[test]
    fn now_is_parsed_as_rfc3339_or_defaults_to_the_clock() {
        let wall = now();
        assert_eq!(parse_now(None, wall).unwrap(), wall);
        assert_eq!(
            parse_now(Some("2026-03-01T12:30:00+02:00"), wall).unwrap(),
            "2026-03-01T10:30:00Z".parse::<Timestamp>().unwrap()
        );
        for bad in ["tomorrow", "2026-03-01", ""] {
            let e = parse_now(Some(bad), wall).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("--now: {bad:?} is not an RFC 3339 time")),
                "{text}"
            );
            assert!(!text.contains('\n'));
        }
    }

    /// Issue 14 item 12: offsets beyond ±23:59 and times talm cannot represent are refused,
    /// saying what is allowed.
    #[test]
    fn now_offsets_and_range_are_checked() {
        let wall = now();
        for bad in [
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00-23:60",
        ] {
            let e = parse_now(Some(bad), wall).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert_eq!(
                e.to_string(),
                format!(
                    "--now: {bad:?}: the UTC offset must be Z or +HH:MM/-HH:MM with HH at most 23 and MM at most 59"
                )
            );
        }
        assert!(parse_now(Some("2026-01-01T00:00:00-23:59"), wall).is_ok());
        for bad in ["9999-12-31T23:59:59Z", "0000-12-31T23:59:59Z"] {
            let e = parse_now(Some(bad), wall).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert_eq!(
                e.to_string(),
                format!(
                    "--now: {bad:?} is out of range: use a time from 0001-01-01T00:00:00Z to 9999-12-30T22:00:00Z"
                )
            );
        }
        assert!(parse_now(Some("9999-12-30T22:00:00Z"), wall).is_ok());
        assert!(parse_now(Some("0001-01-01T00:00:00Z"), wall).is_ok());
    }

    /// A fake engine shaped like the real one, used by the output tests: plans one batch per
    /// cluster and marks the first batch in progress.
    pub(crate) fn planning_engine(
        cgu: &ClusterGroupUpgrade,
        _: &Snapshot,
        _: &Context<'_>,
    ) -> Decision {
        let mut d = decision(cgu);
        let clusters = cgu.spec.clusters.clone().unwrap_or_default();
        let mut status = ClusterGroupUpgradeStatus {
            remediation_plan: Some(clusters.iter().map(|c| vec![c.clone()]).collect()),
            managed_policies_for_upgrade: Some(vec![ManagedPolicyForUpgrade {
                name: "policy1".into(),
                namespace: "policies".into(),
            }]),
            ..Default::default()
        };
        status.conditions.push(talm_shared::api::Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "InProgress".into(),
            message: "Remediating non-compliant policies".into(),
            last_transition_time: talm_shared::api::Time(now()),
            observed_generation: None,
        });
        d.status = status;
        d.notes
            .pending_actions
            .push("waiting for spoke1 to comply".into());
        d
    }

    #[test]
    fn yaml_output_round_trips_losslessly() {
        let text = format!(
            "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: x, annotations: {{v: '4.10', b: 'yes', n: '0123', e: ''}}}}\nspec:\n  strings: ['true', 'null', '~', '1e3', '- x', 'a: b', '#c', \"multi\\nline\\n\", ' lead']\n  numbers: [1, -2, 1.5, 18446744073709551615]\n  nested: {{empty_map: {{}}, empty_list: [], nothing: null, flag: false}}\n",
            cgu_yaml("a").replace(
                "maxConcurrency: 1}}",
                "maxConcurrency: 1}, clusters: [spoke1, spoke2]}"
            )
        );
        let mut s = Store::from_loaded(load_yaml_str("in.yaml", &text).unwrap(), now()).unwrap();
        settle(&mut s, now(), &NoUpdateGraph, planning_engine).unwrap();
        let first = output::to_yaml(&s).unwrap();
        let again = Store::from_loaded(load_yaml_str("out.yaml", &first).unwrap(), now()).unwrap();
        let second = output::to_yaml(&again).unwrap();
        assert_eq!(first, second);
        let a: Vec<&Map<String, Value>> = s.output_objects().collect();
        let b: Vec<&Map<String, Value>> = again.output_objects().collect();
        assert_eq!(a, b);
        let json = output::to_json(&s).unwrap();
        let from_json = Store::from_loaded(
            load::load_paths(
                &[std::path::PathBuf::from("-")],
                &mut std::io::Cursor::new(json),
            )
            .unwrap(),
            now(),
        )
        .unwrap();
        assert_eq!(output::to_yaml(&from_json).unwrap(), first);
        // The engine's state survives: a second run at a later time sees the status.
        let cgu = again
            .cgu(&CguKey {
                namespace: "ns".into(),
                name: "a".into(),
            })
            .unwrap();
        assert_eq!(
            cgu.status
                .as_ref()
                .unwrap()
                .remediation_plan
                .as_ref()
                .unwrap()
                .len(),
            2
        );
    }

    use serde_json::{Map, Value};
}
