//! Fleet-scale benchmark of `talm-hub run` (issue 6 §6).
//!
//! `cargo bench -p talm-hub --bench operator` runs, for each size (default 3,500 then 10,000
//! ManagedClusters), the real operator binary as a **separate process** (`talm-hub run`, leader
//! election on, pointed at the API double through a kubeconfig) against `talm-kube-double`
//! served from this process, with:
//!
//! - N ManagedClusters, P inform root policies in `ztp` and their N × P child policies (one per
//!   cluster namespace), every cluster NonCompliant with every policy;
//! - one CGU over every cluster and policy, `maxConcurrency` M, run to `Succeeded`;
//! - a **compliance simulator** that watches talm's Placements (a namespaced watch of its own)
//!   and, for each cluster released into a policy's Placement, turns that cluster Compliant
//!   after `--flip-delay-ms` plus a per-(cluster, policy) jitter in `[0, --flip-jitter-ms)`:
//!   it writes the child policy's `status.compliant`, then the root policy's `status.status`
//!   entry (as RHACM's status sync does and as TALM's kuttl suite patches). Flips due at the
//!   same time are grouped: one root write per policy per group.
//!
//! Measured, per size:
//! - API requests made by the operator (the double's request log, minus this benchmark's own
//!   Placement list/watch), per cluster and by verb and resource;
//! - the operator's peak RSS (`VmHWM` from `/proc/<pid>/status`), its RSS once its caches are
//!   synced, and its CPU time (`/proc/<pid>/stat`), beside this process's own CPU time over the
//!   same span (the double and the simulator share the machine with the operator);
//! - reconcile latency p50/p99 from the operator's own `talm_reconcile_duration_seconds`
//!   histogram (scraped from `/metrics` at the end; buckets double from 1 ms, so a percentile is
//!   given as its bucket's upper bound and, in brackets, linearly interpolated inside the bucket);
//! - reaction: for every root-policy write, the time from that write to the first Placement
//!   update it causes, as seen by a watcher (the cluster released into its next policy's
//!   Placement, or, when the write completed a batch, the Placement update that ends it). The
//!   watcher runs on a thread of its own and stamps each event as it arrives; the same
//!   reactions stamped when the simulator's loop handled the event (the measure before
//!   session 5, which adds the loop's own busy time) and that lag are printed too;
//! - the rollout's wall time, from the operator's start to `Succeeded`;
//! - the CGU watch events the operator read for their metadata only (echoes of its own writes,
//!   `talm_watch_bodies_skipped_total`), and the load average at the start and end of each size.
//!
//! `--rollout manifestwork` runs a ManifestWork rollout instead (docs/contract.md §3.13):
//! T ManifestWorkReplicaSet templates (`--templates`, default 3) in `ztp`, one CGU naming them
//! over every cluster, and a **work-agent simulator** that watches talm's ManifestWorks (by its
//! label, on a thread of its own) and, for each work talm creates, reports it `Applied` and
//! `Available` after the same delay and jitter, with a write of the work's status. The
//! reaction is then the time from that status write to the first ManifestWork event it causes
//! (the completed work's deletion or the cluster's next work; for a write that completed a
//! batch, the next ManifestWork event of any kind). The other figures are measured as above.
//!
//! There is no TALM to run here, so the baseline run side by side is the smaller size: the
//! table gives each figure of the larger sizes as a ratio to the first size.
//!
//! `-- --quick` runs one small size (300 clusters × 5 policies, `maxConcurrency` 100), a smoke
//! run that finishes in seconds. The binary exits non-zero if a rollout does not reach
//! `Succeeded` within `--timeout-secs` or the operator exits early.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::print_stderr,
    clippy::print_stdout
)]

#[path = "support/hub_process.rs"]
mod hub_process;
#[path = "../gateway/benches/support/procfs.rs"]
mod procfs;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};
use talm_kube_double::{KubeDouble, RequestRecord, Verb};
use talm_shared::api::rhacm::Placement;
use talm_shared::api::work::ManifestWork;

use hub_process::{free_port, http_get, load_average, stop, write_kubeconfig};

/// Namespace of the CGU, the root policies and talm's Placements.
const NS: &str = "ztp";
/// Name of the CGU.
const CGU: &str = "fleet";
/// The Placement label naming its policy.
const FOR_POLICY: &str = "openshift-cluster-group-upgrades/forPolicy";
/// The label talm puts on the ManifestWorks of a CGU.
const CGU_LABEL: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
/// The field selector that marks this benchmark's own ManifestWork list/watch requests.
const OWN_MW_WATCH: &str = "metadata.name!=talm-bench-own-watch";

/// What the CGU rolls out.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Rollout {
    /// Inform policies (`spec.managedPolicies`); the compliance simulator answers.
    Policy,
    /// ManifestWork templates (`spec.manifestWorkTemplates`); the work-agent simulator answers.
    Manifestwork,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "talm-hub operator fleet benchmark against the API double")]
struct Args {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Fleet sizes to run, in order (the first is the baseline of the ratios).
    #[arg(long, value_delimiter = ',', default_values_t = [3500, 10000])]
    clusters: Vec<usize>,
    /// What the CGU rolls out.
    #[arg(long, value_enum, default_value_t = Rollout::Policy)]
    rollout: Rollout,
    /// Managed policies of the CGU (`--rollout policy`).
    #[arg(long, default_value_t = 20)]
    policies: usize,
    /// ManifestWork templates of the CGU (`--rollout manifestwork`).
    #[arg(long, default_value_t = 3)]
    templates: usize,
    /// The CGU's `remediationStrategy.maxConcurrency`.
    #[arg(long, default_value_t = 500)]
    max_concurrency: usize,
    /// The operator's concurrent reconciles (`--worker-count`).
    #[arg(long, default_value_t = 5)]
    workers: u16,
    /// Smoke run: 300 clusters × 5 policies (or 3 templates), maxConcurrency 100 (overrides
    /// the sizes above).
    #[arg(long)]
    quick: bool,
    /// Fixed delay between a cluster's release into a Placement and its compliance flip.
    #[arg(long, default_value_t = 50)]
    flip_delay_ms: u64,
    /// Extra per-(cluster, policy) delay, spread uniformly in [0, this).
    #[arg(long, default_value_t = 200)]
    flip_jitter_ms: u64,
    /// Give up on a size after this long.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// The `talm-hub` binary (default: the one cargo built with this benchmark).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Keep the operator's log (printed path) instead of deleting it.
    #[arg(long)]
    keep_logs: bool,
    /// The operator's log filter (`--log-level`), e.g.
    /// `info,talm_hub::operator::reconciler=debug` with `--keep-logs` to look into a slow
    /// reaction (the log is JSON, with timestamps).
    #[arg(long, default_value = "info")]
    hub_log: String,
}

/// Everything measured for one fleet size.
#[derive(Debug, Default)]
struct Outcome {
    clusters: usize,
    policies: usize,
    max_concurrency: usize,
    succeeded: bool,
    failure: Option<String>,
    setup: Duration,
    synced_after: Duration,
    rollout: Duration,
    requests: usize,
    watch_requests: usize,
    by_verb: BTreeMap<String, usize>,
    rss_synced_kib: u64,
    rss_peak_kib: u64,
    cpu_secs: f64,
    /// CPU time of this benchmark process (the double and the simulator) during the rollout.
    bench_cpu_secs: f64,
    reconciles: u64,
    reconcile_failures: u64,
    /// CGU watch events the operator read for their metadata only (echoes of its writes).
    bodies_skipped: u64,
    reconcile_p50: Option<Percentile>,
    reconcile_p99: Option<Percentile>,
    reconcile_mean: Option<f64>,
    /// Per reconcile phase (`talm_reconcile_phase_duration_seconds`): count, mean, p50, p99.
    phases: Vec<PhaseFigures>,
    reactions: Vec<Duration>,
    /// The same reactions, measured when the simulator's loop handled the Placement event
    /// (the measure of sessions 1–4; it adds the time the loop was busy writing flips).
    reactions_handled: Vec<Duration>,
    /// How long after its arrival the simulator's loop handled each Placement event.
    handling_lag: Vec<Duration>,
    /// The slowest reactions, described.
    slowest: Vec<String>,
    root_writes: usize,
    child_writes: usize,
    final_to_succeeded: Option<Duration>,
    placement_events: usize,
}

/// A percentile read from a histogram: its bucket's upper bound and a linear interpolation.
#[derive(Debug, Clone, Copy)]
struct Percentile {
    bucket_le: f64,
    interpolated: f64,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.clusters = vec![300];
        args.policies = 5;
        args.max_concurrency = 100;
    }
    if args.clusters.is_empty()
        || args.policies == 0
        || args.templates == 0
        || args.max_concurrency == 0
    {
        bail!(
            "--clusters, --policies, --templates and --max-concurrency must be non-empty and > 0"
        );
    }
    let hub_bin = args
        .hub_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_talm-hub")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for &n in &args.clusters {
        eprintln!(
            "== {n} clusters × {} {}, maxConcurrency {} ({})",
            per_cluster(&args),
            unit(args.rollout),
            args.max_concurrency,
            load_average()
        );
        let o = rt.block_on(run_size(&args, &hub_bin, n))?;
        print_detail(&o);
        outcomes.push(o);
    }
    print_table(&outcomes);
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.succeeded)
        .map(|o| {
            format!(
                "{} clusters: {}",
                o.clusters,
                o.failure.as_deref().unwrap_or("not Succeeded")
            )
        })
        .collect();
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join("; "));
        std::process::exit(1);
    }
    Ok(())
}

/// Policies or templates per cluster.
fn per_cluster(args: &Args) -> usize {
    match args.rollout {
        Rollout::Policy => args.policies,
        Rollout::Manifestwork => args.templates,
    }
}

fn unit(r: Rollout) -> &'static str {
    match r {
        Rollout::Policy => "policies",
        Rollout::Manifestwork => "templates",
    }
}

fn cluster(i: usize) -> String {
    format!("sno{i:05}")
}

fn policy(j: usize) -> String {
    format!("du-policy-{j:02}")
}

/// A deterministic jitter in `[0, max_ms)` for (cluster, policy): splitmix64 of the pair.
fn jitter(i: usize, j: usize, max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut z = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(j as u64)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(z % max_ms)
}

fn root_policy(j: usize, compliant: &[bool], names: &[String]) -> Value {
    let status: Vec<Value> = names
        .iter()
        .zip(compliant)
        .map(|(c, ok)| {
            json!({"clustername": c, "clusternamespace": c,
                   "compliant": if *ok { "Compliant" } else { "NonCompliant" }})
        })
        .collect();
    let all = compliant.iter().all(|ok| *ok);
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": policy(j), "namespace": NS},
        "spec": {"remediationAction": "inform", "disabled": false, "policy-templates": [{
            "objectDefinition": {"apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "ConfigurationPolicy", "metadata": {"name": format!("cfg-{j}")},
                "spec": {"remediationAction": "inform", "object-templates": []}}}]},
        "status": {"compliant": if all { "Compliant" } else { "NonCompliant" }, "status": status}
    })
}

fn child_policy(j: usize, c: &str, compliant: bool) -> Value {
    let name = format!("{NS}.{}", policy(j));
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "namespace": c,
            "labels": {"policy.open-cluster-management.io/root-policy": name,
                       "policy.open-cluster-management.io/cluster-name": c,
                       "policy.open-cluster-management.io/cluster-namespace": c}},
        "spec": {"remediationAction": "inform", "disabled": false, "policy-templates": []},
        "status": {"compliant": if compliant { "Compliant" } else { "NonCompliant" }}
    })
}

/// Fills the double with the fleet, the policies and the CGU of a policy rollout.
fn populate(double: &KubeDouble, names: &[String], p: usize, m: usize) -> anyhow::Result<()> {
    populate_clusters(double, names)?;
    populate_policies(double, names, p, m)
}

/// Fills the double with the fleet's ManagedClusters. The clusters are installed
/// (`ztp-done`), so the ZTP auto-CGU controller leaves them alone, as on a day-2 upgrade.
fn populate_clusters(double: &KubeDouble, names: &[String]) -> anyhow::Result<()> {
    for c in names {
        double
            .put_value(json!({
                "apiVersion": "cluster.open-cluster-management.io/v1",
                "kind": "ManagedCluster",
                "metadata": {"name": c, "labels": {"name": c, "vendor": "OpenShift", "ztp-done": ""}},
                "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                    "status": "True", "reason": "Available", "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .context("ManagedCluster")?;
    }
    Ok(())
}

/// Fills the double with the policies and the CGU of a policy rollout.
fn populate_policies(
    double: &KubeDouble,
    names: &[String],
    p: usize,
    m: usize,
) -> anyhow::Result<()> {
    let none = vec![false; names.len()];
    for j in 0..p {
        double
            .put_value(root_policy(j, &none, names))
            .context("root policy")?;
        for c in names {
            double
                .put_value(child_policy(j, c, false))
                .context("child policy")?;
        }
    }
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS},
            "spec": {"clusters": names, "managedPolicies": (0..p).map(policy).collect::<Vec<_>>(),
                     "remediationStrategy": {"maxConcurrency": m, "timeout": 6000},
                     "enable": true}
        }))
        .context("CGU")?;
    Ok(())
}

fn spawn_hub(
    bin: &Path,
    kubeconfig: &Path,
    admin: SocketAddr,
    args: &Args,
    log: &Path,
) -> anyhow::Result<Child> {
    let log_file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    // The gateway's gRPC port on a free loopback port: nothing else (another bench, a stray
    // hub) may hold the default 8443.
    let grpc = free_port()?;
    Command::new(bin)
        .args([
            "run",
            "--health-addr",
            &admin.to_string(),
            "--metrics-addr",
            &admin.to_string(),
            // The bench reads /metrics without a token; the guard is not what it measures.
            "--admin-auth",
            "none",
            "--lease-namespace",
            "default",
            "--identity",
            "bench",
            "--worker-count",
            &args.workers.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
            "--log-format",
            "json",
            "--log-level",
            &args.hub_log,
        ])
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

/// The reconcile-duration histogram and counters from a `/metrics` body.
#[derive(Debug, Default)]
struct Scraped {
    /// `talm_reconcile_duration_seconds`.
    reconcile: Histo,
    runs: u64,
    failures: u64,
    bodies_skipped: u64,
    /// Per reconcile phase (`talm_reconcile_phase_duration_seconds`).
    phases: BTreeMap<String, Histo>,
}

/// One histogram, as scraped.
#[derive(Debug, Default)]
struct Histo {
    /// Cumulative `(le, count)` buckets.
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl Histo {
    /// Records one `_bucket{le=...}` (labels after `le` ignored), `_count` or `_sum` sample;
    /// `rest` is the sample name after the histogram's name and `_`.
    fn sample(&mut self, rest: &str, v: f64) {
        if let Some(labels) = rest.strip_prefix("bucket{le=\"") {
            let le = labels.split('"').next().unwrap_or("+Inf");
            self.buckets.push((parse_le(le), v as u64));
        } else if rest.starts_with("count") {
            self.count = v as u64;
        } else if rest.starts_with("sum") {
            self.sum = v;
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// One reconcile phase's figures.
#[derive(Debug)]
struct PhaseFigures {
    name: String,
    count: u64,
    mean: f64,
    p50: Option<Percentile>,
    p99: Option<Percentile>,
}

fn parse_le(le: &str) -> f64 {
    if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap_or(f64::INFINITY)
    }
}

/// The phase label of a `talm_reconcile_phase_duration_seconds*` sample's labels.
fn phase_label(labels: &str) -> Option<String> {
    let rest = labels.split("phase=\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

fn parse_metrics(body: &str) -> Scraped {
    let mut s = Scraped::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        if let Some(rest) = key.strip_prefix("talm_reconcile_duration_seconds_") {
            s.reconcile.sample(rest, v);
        } else if let Some(rest) = key.strip_prefix("talm_reconcile_phase_duration_seconds_") {
            let Some(phase) = phase_label(rest) else {
                continue;
            };
            s.phases.entry(phase).or_default().sample(rest, v);
        } else if key == "talm_watch_bodies_skipped_total" {
            s.bodies_skipped = v as u64;
        } else if key == "talm_reconcile_runs_total" {
            s.runs = v as u64;
        } else if key.starts_with("talm_reconcile_failures_total") {
            s.failures += v as u64;
        }
    }
    for h in std::iter::once(&mut s.reconcile).chain(s.phases.values_mut()) {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    s
}

/// The q-quantile of a cumulative histogram.
fn histogram_quantile(buckets: &[(f64, u64)], q: f64) -> Option<Percentile> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, cum) in buckets {
        if cum as f64 >= rank {
            let in_bucket = (cum - prev.1) as f64;
            let upper = if le.is_finite() { le } else { prev.0 * 2.0 };
            let frac = if in_bucket > 0.0 {
                (rank - prev.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(Percentile {
                bucket_le: le,
                interpolated: prev.0 + (upper - prev.0) * frac,
            });
        }
        prev = (le, cum);
    }
    None
}

/// Requests this benchmark makes itself (its namespaced Placement watch, its ManifestWork
/// watch marked by [`OWN_MW_WATCH`]), left out of counts.
fn is_own(r: &RequestRecord) -> bool {
    let own_watch = match r.resource.as_str() {
        "placements" => r.namespace.as_deref() == Some(NS),
        "manifestworks" => r.query.contains("talm-bench-own-watch"),
        _ => false,
    };
    own_watch && matches!(r.verb, Verb::List | Verb::Watch)
}

fn cgu_succeeded(double: &KubeDouble) -> Option<bool> {
    let cgu = double.get_value(
        "ran.openshift.io/v1alpha1",
        "ClusterGroupUpgrade",
        Some(NS),
        CGU,
    )?;
    let conds = cgu.pointer("/status/conditions")?.as_array()?;
    let succeeded = conds.iter().find(|c| c["type"] == "Succeeded")?;
    Some(succeeded["status"] == "True")
}

/// A root-policy write waiting for the Placement update it causes.
/// How many of the slowest reactions are described at the end of a size.
const SLOWEST: usize = 8;

struct Pending {
    at: Instant,
    resolved: bool,
    /// The policy whose root was written, and how many clusters it turned Compliant.
    policy: usize,
    flips: usize,
    /// Clusters done (Compliant with every policy) before this write, and whether this write
    /// completed a batch.
    done_before: usize,
    completed_batch: bool,
}

/// The compliance simulator's state.
struct Simulator {
    names: Vec<String>,
    index: HashMap<String, usize>,
    p: usize,
    compliant: Vec<Vec<bool>>,
    /// Clusters seen released into each policy's Placement.
    seen: Vec<HashSet<usize>>,
    /// Per policy, its root policy as last written (built on its first flip, then updated in
    /// place: building a 10,000-entry status anew for every write was a fifth of this
    /// process's CPU).
    roots: Vec<Option<Value>>,
    /// Flips due: (when, cluster, policy).
    due: BinaryHeap<Reverse<(Instant, usize, usize)>>,
    /// (cluster, policy it should be released into next) → root write that causes it.
    expect: HashMap<(usize, usize), usize>,
    /// A root write that completed a batch: resolved by the next Placement event of any kind.
    expect_any: Vec<usize>,
    writes: Vec<Pending>,
    /// Clusters released into the first policy and not yet Compliant with the last one.
    open: HashSet<usize>,
    done: usize,
    reactions: Vec<Duration>,
    reactions_handled: Vec<Duration>,
    handling_lag: Vec<Duration>,
    /// The slowest reactions: (reaction, root write).
    slowest: Vec<(Duration, usize)>,
    child_writes: usize,
    final_flip: Option<Instant>,
    placement_events: usize,
    delay: Duration,
    jitter_ms: u64,
}

impl Simulator {
    fn new(names: Vec<String>, p: usize, args: &Args) -> Self {
        let n = names.len();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        Simulator {
            names,
            index,
            p,
            compliant: vec![vec![false; n]; p],
            seen: vec![HashSet::new(); p],
            roots: vec![None; p],
            due: BinaryHeap::new(),
            expect: HashMap::new(),
            expect_any: Vec::new(),
            writes: Vec::new(),
            open: HashSet::new(),
            done: 0,
            reactions: Vec::new(),
            reactions_handled: Vec::new(),
            handling_lag: Vec::new(),
            slowest: Vec::new(),
            child_writes: 0,
            final_flip: None,
            placement_events: 0,
            delay: Duration::from_millis(args.flip_delay_ms),
            jitter_ms: args.flip_jitter_ms,
        }
    }

    /// Records the reaction to root write `w`: the Placement update it caused arrived at
    /// `seen` and is being handled at `handled`.
    fn resolve(&mut self, w: usize, seen: Instant, handled: Instant) {
        if let Some(pw) = self.writes.get_mut(w)
            && !pw.resolved
        {
            pw.resolved = true;
            let took = seen.saturating_duration_since(pw.at);
            self.reactions.push(took);
            self.slowest.push((took, w));
            self.slowest.sort_by_key(|&(took, _)| Reverse(took));
            self.slowest.truncate(SLOWEST);
            self.reactions_handled
                .push(handled.saturating_duration_since(pw.at));
        }
    }

    /// A Placement was added or changed (or deleted: `pl` None). `seen` is when the watch event
    /// arrived (on the watcher's own thread); flips are scheduled from then.
    fn on_placement(&mut self, pl: Option<&Placement>, seen: Instant) {
        let handled = Instant::now();
        self.placement_events += 1;
        self.handling_lag
            .push(handled.saturating_duration_since(seen));
        let now = seen;
        for w in std::mem::take(&mut self.expect_any) {
            self.resolve(w, now, handled);
        }
        let Some(pl) = pl else { return };
        let Some(j) = pl
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(FOR_POLICY))
            .and_then(|name| (0..self.p).find(|j| policy(*j) == *name))
        else {
            return;
        };
        let fresh: Vec<usize> = pl
            .selected_names()
            .iter()
            .filter_map(|c| self.index.get(c).copied())
            .filter(|i| !self.seen[j].contains(i))
            .collect();
        for i in fresh {
            self.seen[j].insert(i);
            if j == 0 {
                self.open.insert(i);
            }
            if let Some(w) = self.expect.remove(&(i, j)) {
                self.resolve(w, now, handled);
            }
            let at = now + self.delay + jitter(i, j, self.jitter_ms);
            self.due.push(Reverse((at, i, j)));
        }
    }

    /// Writes every flip due by `now`: child policies, then one root write per policy.
    fn flip_due(&mut self, double: &KubeDouble, now: Instant) -> anyhow::Result<()> {
        let mut by_policy: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        while let Some(Reverse((t, i, j))) = self.due.peek().copied() {
            if t > now {
                break;
            }
            self.due.pop();
            by_policy.entry(j).or_default().push(i);
        }
        for (j, clusters) in by_policy {
            for &i in &clusters {
                self.compliant[j][i] = true;
                double
                    .put_value_shared(child_policy(j, &self.names[i], true))
                    .context("child policy flip")?;
                self.child_writes += 1;
            }
            let root = match &mut self.roots[j] {
                Some(root) => {
                    for &i in &clusters {
                        root["status"]["status"][i]["compliant"] = json!("Compliant");
                    }
                    let all = self.compliant[j].iter().all(|ok| *ok);
                    root["status"]["compliant"] =
                        json!(if all { "Compliant" } else { "NonCompliant" });
                    root
                }
                slot => slot.insert(root_policy(j, &self.compliant[j], &self.names)),
            };
            double
                .put_value_shared(root.clone())
                .context("root policy flip")?;
            let w = self.writes.len();
            let at = Instant::now();
            self.writes.push(Pending {
                at,
                resolved: false,
                policy: j,
                flips: clusters.len(),
                done_before: self.done,
                completed_batch: false,
            });
            let mut completed_batch = false;
            for &i in &clusters {
                if j + 1 < self.p {
                    self.expect.insert((i, j + 1), w);
                } else {
                    self.done += 1;
                    self.open.remove(&i);
                    completed_batch = self.open.is_empty();
                }
            }
            if completed_batch {
                if let Some(pw) = self.writes.get_mut(w) {
                    pw.completed_batch = true;
                }
                self.expect_any.push(w);
                if self.done == self.names.len() {
                    self.final_flip = Some(at);
                }
            }
        }
        Ok(())
    }
}

/// A simulator of what the fleet reports: fed the events of the kind it watches (stamped on
/// arrival), it writes the reports when they are due and measures the operator's reactions.
trait Sim {
    /// The watched kind.
    type Watched: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static;
    /// The watch of the simulator's own thread (namespaced or marked, so [`is_own`] can leave
    /// its requests out of the operator's counts).
    fn watch(client: kube::Client) -> (Api<Self::Watched>, watcher::Config);
    /// An object was added or changed, or (`deleted`) deleted; the event arrived at `seen`.
    fn on_event(&mut self, obj: &Self::Watched, deleted: bool, seen: Instant);
    /// When the next report is due.
    fn next_due(&self) -> Option<Instant>;
    /// Writes every report due by `now`.
    fn flip_due(&mut self, double: &KubeDouble, now: Instant) -> anyhow::Result<()>;
    /// Clusters done.
    fn done(&self) -> usize;
    /// Reports written so far.
    fn writes(&self) -> usize;
    /// When the report that completed the rollout was written.
    fn final_flip(&self) -> Option<Instant>;
    /// Moves the measures into `out`.
    fn finish(self, out: &mut Outcome, started: Instant, m: usize);
}

impl Sim for Simulator {
    type Watched = Placement;

    fn watch(client: kube::Client) -> (Api<Placement>, watcher::Config) {
        (Api::namespaced(client, NS), watcher::Config::default())
    }

    fn on_event(&mut self, obj: &Placement, deleted: bool, seen: Instant) {
        self.on_placement((!deleted).then_some(obj), seen);
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((t, _, _))| *t)
    }

    fn flip_due(&mut self, double: &KubeDouble, now: Instant) -> anyhow::Result<()> {
        Simulator::flip_due(self, double, now)
    }

    fn done(&self) -> usize {
        self.done
    }

    fn writes(&self) -> usize {
        self.writes.len()
    }

    fn final_flip(&self) -> Option<Instant> {
        self.final_flip
    }

    fn finish(mut self, out: &mut Outcome, started: Instant, m: usize) {
        self.reactions.sort();
        out.reactions = self.reactions;
        self.reactions_handled.sort();
        out.reactions_handled = self.reactions_handled;
        self.handling_lag.sort();
        out.handling_lag = self.handling_lag;
        out.slowest = self
            .slowest
            .iter()
            .filter_map(|&(took, w)| {
                let pw = self.writes.get(w)?;
                Some(format!(
                    "{:>5.0} ms: root write at {:>6.1} s, policy {}, {} flip(s), batch {}{}",
                    ms(took),
                    pw.at.saturating_duration_since(started).as_secs_f64(),
                    pw.policy,
                    pw.flips,
                    pw.done_before / m + 1,
                    if pw.completed_batch {
                        " (completed the batch)"
                    } else {
                        ""
                    }
                ))
            })
            .collect();
        out.root_writes = self.writes.len();
        out.child_writes = self.child_writes;
        out.placement_events = self.placement_events;
    }
}

fn template(j: usize) -> String {
    format!("du-template-{j:02}")
}

/// Fills the double with the fleet, the ManifestWork templates and the CGU.
fn populate_works(double: &KubeDouble, names: &[String], t: usize, m: usize) -> anyhow::Result<()> {
    populate_clusters(double, names)?;
    for j in 0..t {
        double
            .put_value(json!({
                "apiVersion": "work.open-cluster-management.io/v1alpha1",
                "kind": "ManifestWorkReplicaSet",
                "metadata": {"name": template(j), "namespace": NS},
                "spec": {"placementRefs": [{"name": "unused"}], "manifestWorkTemplate": {
                    "workload": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("cm-{j}"), "namespace": "default"},
                        "data": {"step": format!("{j}")}}]}}}
            }))
            .context("ManifestWorkReplicaSet")?;
    }
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS},
            "spec": {"clusters": names, "manifestWorkTemplates": (0..t).map(template).collect::<Vec<_>>(),
                     "remediationStrategy": {"maxConcurrency": m, "timeout": 6000},
                     "enable": true}
        }))
        .context("CGU")?;
    Ok(())
}

/// A ManifestWork status write waiting for the ManifestWork event it causes.
struct WorkWrite {
    at: Instant,
    resolved: bool,
    cluster: usize,
    template: usize,
    done_before: usize,
    completed_batch: bool,
}

/// The work-agent simulator: reports each ManifestWork talm creates applied and available.
struct WorkSimulator {
    names: Vec<String>,
    index: HashMap<String, usize>,
    t: usize,
    /// The works created and not yet reported or deleted, as last seen.
    live: HashMap<(usize, usize), ManifestWork>,
    /// Reports due: (when, cluster, template).
    due: BinaryHeap<Reverse<(Instant, usize, usize)>>,
    /// (cluster, template) whose deletion by the operator resolves a status write.
    expect_gone: HashMap<(usize, usize), usize>,
    /// (cluster, template) whose creation by the operator resolves a status write.
    expect_new: HashMap<(usize, usize), usize>,
    /// Writes that completed a batch: resolved by the next ManifestWork event of any kind.
    expect_any: Vec<usize>,
    writes: Vec<WorkWrite>,
    /// Clusters given their first work and not yet through the last template.
    open: HashSet<usize>,
    started: HashSet<usize>,
    done: usize,
    reactions: Vec<Duration>,
    reactions_handled: Vec<Duration>,
    handling_lag: Vec<Duration>,
    slowest: Vec<(Duration, usize)>,
    final_flip: Option<Instant>,
    events: usize,
    delay: Duration,
    jitter_ms: u64,
}

impl WorkSimulator {
    fn new(names: Vec<String>, t: usize, args: &Args) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        WorkSimulator {
            names,
            index,
            t,
            live: HashMap::new(),
            due: BinaryHeap::new(),
            expect_gone: HashMap::new(),
            expect_new: HashMap::new(),
            expect_any: Vec::new(),
            writes: Vec::new(),
            open: HashSet::new(),
            started: HashSet::new(),
            done: 0,
            reactions: Vec::new(),
            reactions_handled: Vec::new(),
            handling_lag: Vec::new(),
            slowest: Vec::new(),
            final_flip: None,
            events: 0,
            delay: Duration::from_millis(args.flip_delay_ms),
            jitter_ms: args.flip_jitter_ms,
        }
    }

    fn resolve(&mut self, w: usize, seen: Instant, handled: Instant) {
        if let Some(ww) = self.writes.get_mut(w)
            && !ww.resolved
        {
            ww.resolved = true;
            let took = seen.saturating_duration_since(ww.at);
            self.reactions.push(took);
            self.slowest.push((took, w));
            self.slowest.sort_by_key(|&(took, _)| Reverse(took));
            self.slowest.truncate(SLOWEST);
            self.reactions_handled
                .push(handled.saturating_duration_since(ww.at));
        }
    }

    /// (cluster, template) of one of talm's works: `<NS>.<template>` in the cluster namespace.
    fn key_of(&self, w: &ManifestWork) -> Option<(usize, usize)> {
        let i = *self.index.get(w.metadata.namespace.as_deref()?)?;
        let name = w
            .metadata
            .name
            .as_deref()?
            .strip_prefix(&format!("{NS}."))?;
        let j = (0..self.t).find(|j| template(*j) == name)?;
        Some((i, j))
    }
}

impl Sim for WorkSimulator {
    type Watched = ManifestWork;

    fn watch(client: kube::Client) -> (Api<ManifestWork>, watcher::Config) {
        (
            Api::all(client),
            watcher::Config::default()
                .labels(CGU_LABEL)
                .fields(OWN_MW_WATCH),
        )
    }

    fn on_event(&mut self, w: &ManifestWork, deleted: bool, seen: Instant) {
        let handled = Instant::now();
        self.events += 1;
        self.handling_lag
            .push(handled.saturating_duration_since(seen));
        // The echo of this simulator's own status write is no reaction.
        if !deleted && w.status.is_some() {
            return;
        }
        for x in std::mem::take(&mut self.expect_any) {
            self.resolve(x, seen, handled);
        }
        let Some((i, j)) = self.key_of(w) else { return };
        if deleted {
            if let Some(x) = self.expect_gone.remove(&(i, j)) {
                self.resolve(x, seen, handled);
            }
            self.live.remove(&(i, j));
            return;
        }
        if let Some(x) = self.expect_new.remove(&(i, j)) {
            self.resolve(x, seen, handled);
        }
        if !self.live.contains_key(&(i, j)) {
            if self.started.insert(i) {
                self.open.insert(i);
            }
            self.live.insert((i, j), w.clone());
            let at = seen + self.delay + jitter(i, j, self.jitter_ms);
            self.due.push(Reverse((at, i, j)));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((t, _, _))| *t)
    }

    fn flip_due(&mut self, double: &KubeDouble, now: Instant) -> anyhow::Result<()> {
        while let Some(Reverse((at, i, j))) = self.due.peek().copied() {
            if at > now {
                break;
            }
            self.due.pop();
            // Deleted meanwhile (a timeout, a cleanup): a status write would re-create it.
            let Some(w) = self.live.remove(&(i, j)) else {
                continue;
            };
            let mut v = serde_json::to_value(&w).context("ManifestWork")?;
            let cond = |t: &str| {
                json!({"type": t, "status": "True", "reason": t, "message": "ok",
                       "lastTransitionTime": "2026-01-01T00:00:00Z"})
            };
            v["status"] = json!({
                "conditions": [cond("Applied"), cond("Available")],
                "resourceStatus": {"manifests": [{
                    "resourceMeta": {"ordinal": 0, "group": "", "version": "v1",
                        "kind": "ConfigMap", "resource": "configmaps",
                        "name": format!("cm-{j}"), "namespace": "default"},
                    "conditions": [cond("Applied"), cond("Available"),
                                   cond("StatusFeedbackSynced")]}]}
            });
            double.put_value_shared(v).context("ManifestWork status")?;
            let x = self.writes.len();
            let at = Instant::now();
            self.writes.push(WorkWrite {
                at,
                resolved: false,
                cluster: i,
                template: j,
                done_before: self.done,
                completed_batch: false,
            });
            // Resolved by the completed work's deletion or the cluster's next work (a cluster's
            // last work stays until its batch ends).
            if j + 1 < self.t {
                self.expect_gone.insert((i, j), x);
                self.expect_new.insert((i, j + 1), x);
            } else {
                self.done += 1;
                self.open.remove(&i);
                if self.open.is_empty() {
                    if let Some(ww) = self.writes.get_mut(x) {
                        ww.completed_batch = true;
                    }
                    self.expect_any.push(x);
                }
                if self.done == self.names.len() {
                    self.final_flip = Some(at);
                }
            }
        }
        Ok(())
    }

    fn done(&self) -> usize {
        self.done
    }

    fn writes(&self) -> usize {
        self.writes.len()
    }

    fn final_flip(&self) -> Option<Instant> {
        self.final_flip
    }

    fn finish(mut self, out: &mut Outcome, started: Instant, m: usize) {
        self.reactions.sort();
        out.reactions = self.reactions;
        self.reactions_handled.sort();
        out.reactions_handled = self.reactions_handled;
        self.handling_lag.sort();
        out.handling_lag = self.handling_lag;
        out.slowest = self
            .slowest
            .iter()
            .filter_map(|&(took, x)| {
                let ww = self.writes.get(x)?;
                Some(format!(
                    "{:>5.0} ms: status write at {:>6.1} s, {} template {}, batch {}{}",
                    ms(took),
                    ww.at.saturating_duration_since(started).as_secs_f64(),
                    self.names.get(ww.cluster).map_or("?", String::as_str),
                    ww.template,
                    ww.done_before / m + 1,
                    if ww.completed_batch {
                        " (completed the batch)"
                    } else {
                        ""
                    }
                ))
            })
            .collect();
        out.root_writes = self.writes.len();
        out.placement_events = self.events;
    }
}

async fn run_size(args: &Args, hub_bin: &Path, n: usize) -> anyhow::Result<Outcome> {
    let (p, m) = (per_cluster(args), args.max_concurrency);
    let mut out = Outcome {
        clusters: n,
        policies: p,
        max_concurrency: m,
        ..Outcome::default()
    };
    // A real apiserver keeps minutes of watch history; keep enough events that a watcher a few
    // simulator bursts behind is not sent back to re-list.
    let history = 16 * (m + p) + 1024;
    // CGU versions are the big ones (about a megabyte each at 10,000 clusters, and the
    // operator writes thousands): a history of that many would hold gigabytes. Only the
    // operator watches CGUs, and it never falls minutes behind; keep 256 of them.
    let cgus = talm_kube_double::default_kinds()
        .into_iter()
        .filter(|k| k.plural == "clustergroupupgrades")
        .map(|k| k.with_history_limit(256));
    let double = KubeDouble::builder()
        .history_limit(history)
        .kinds(cgus)
        .start()
        .await
        .context("starting the API double")?;
    let names: Vec<String> = (0..n).map(cluster).collect();
    let t = Instant::now();
    match args.rollout {
        Rollout::Policy => populate(&double, &names, p, m)?,
        Rollout::Manifestwork => populate_works(&double, &names, p, m)?,
    }
    out.setup = t.elapsed();
    double.clear_requests();
    match args.rollout {
        Rollout::Policy => {
            let sim = Simulator::new(names, p, args);
            drive(sim, args, hub_bin, &double, &mut out).await?;
        }
        Rollout::Manifestwork => {
            let sim = WorkSimulator::new(names, p, args);
            drive(sim, args, hub_bin, &double, &mut out).await?;
        }
    }
    double.shutdown().await;
    Ok(out)
}

/// Runs the operator against the populated double with `sim` answering, until the CGU
/// succeeds (or fails, or times out), and measures it into `out`.
async fn drive<S: Sim>(
    mut sim: S,
    args: &Args,
    hub_bin: &Path,
    double: &KubeDouble,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let (n, m) = (out.clusters, out.max_concurrency);
    let dir = tempfile::Builder::new()
        .prefix("talm-operator-bench-")
        .tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &double.url())?;
    let log = dir.path().join("talm-hub.log");
    let admin = free_port()?;
    let started = Instant::now();
    let bench_cpu_start = procfs::proc_stats(std::process::id()).cpu_secs();
    let mut child = spawn_hub(hub_bin, &kubeconfig, admin, args, &log)?;
    if args.keep_logs {
        // To line the "N s into the run" figures up with the log's timestamps.
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!("  operator started at Unix time {:.3}", unix.as_secs_f64());
    }
    let pid = child.id();

    let mut events = spawn_watch::<S>(double.config())?;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut check = tokio::time::interval(Duration::from_millis(200));
    let mut synced = false;
    let mut last_progress = Instant::now();
    let result: anyhow::Result<()> = loop {
        let sleep_to = sim
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => {
                match ev {
                    Some((seen, Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)))) => {
                        sim.on_event(&o, false, seen);
                    }
                    Some((seen, Ok(watcher::Event::Delete(o)))) => sim.on_event(&o, true, seen),
                    Some((_, Ok(_))) => {}
                    Some((_, Err(e))) => eprintln!("  simulator watch: {e}"),
                    None => break Err(anyhow::anyhow!("simulator watch ended")),
                }
            }
            () = tokio::time::sleep_until(sleep_to.into()) => {
                if let Err(e) = sim.flip_due(double, Instant::now()) {
                    break Err(e);
                }
            }
            _ = check.tick() => {
                if let Some(status) = child.try_wait()? {
                    break Err(anyhow::anyhow!("talm-hub exited early: {status}"));
                }
                if !synced && matches!(http_get(admin, "/readyz").await, Some((200, _))) {
                    synced = true;
                    out.synced_after = started.elapsed();
                    out.rss_synced_kib = procfs::proc_stats(pid).rss_kib;
                }
                if cgu_succeeded(double) == Some(true) {
                    out.rollout = started.elapsed();
                    out.final_to_succeeded = sim.final_flip().map(|t| t.elapsed());
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(anyhow::anyhow!(
                        "no Succeeded after {}s ({} of {n} clusters done)",
                        args.timeout_secs, sim.done()
                    ));
                }
                if last_progress.elapsed() > Duration::from_secs(15) {
                    last_progress = Instant::now();
                    eprintln!(
                        "  {:>5.0?}: {}/{n} clusters done, {} reports written, operator RSS {} MiB",
                        started.elapsed(), sim.done(), sim.writes(), procfs::proc_stats(pid).rss_kib / 1024
                    );
                }
            }
        }
    };
    if let Err(e) = &result {
        out.failure = Some(e.to_string());
    }
    out.succeeded = result.is_ok();
    if out.rollout.is_zero() {
        out.rollout = started.elapsed();
    }
    // Measure before stopping: the scrape, the RSS high-water mark and the CPU time.
    if let Some((200, body)) = http_get(admin, "/metrics").await {
        let s = parse_metrics(&body);
        out.reconciles = s.runs;
        out.reconcile_failures = s.failures;
        out.bodies_skipped = s.bodies_skipped;
        out.reconcile_p50 = histogram_quantile(&s.reconcile.buckets, 0.50);
        out.reconcile_p99 = histogram_quantile(&s.reconcile.buckets, 0.99);
        out.reconcile_mean = s.reconcile.mean();
        out.phases = s
            .phases
            .iter()
            .map(|(name, ph)| PhaseFigures {
                name: name.clone(),
                count: ph.count,
                mean: ph.mean().unwrap_or(0.0),
                p50: histogram_quantile(&ph.buckets, 0.5),
                p99: histogram_quantile(&ph.buckets, 0.99),
            })
            .collect();
    }
    let hub = procfs::proc_stats(pid);
    out.rss_peak_kib = hub.hwm_kib;
    out.cpu_secs = hub.cpu_secs();
    out.bench_cpu_secs = procfs::proc_stats(std::process::id()).cpu_secs() - bench_cpu_start;
    stop(&mut child).await;

    let reqs = double.requests();
    for r in reqs.iter().filter(|r| !is_own(r)) {
        match r.verb {
            Verb::Watch => out.watch_requests += 1,
            Verb::Discovery => {}
            v => {
                out.requests += 1;
                *out.by_verb
                    .entry(format!("{} {}", v.as_str(), r.rbac_resource()))
                    .or_default() += 1;
            }
        }
    }
    // Ends the watcher thread (its next event finds the receiver gone).
    drop(events);
    sim.finish(out, started, m);
    if !out.succeeded || args.keep_logs {
        let kept = std::env::temp_dir().join(format!("talm-operator-bench-{n}.log"));
        if std::fs::copy(&log, &kept).is_ok() {
            eprintln!("  operator log: {}", kept.display());
        }
    }
    Ok(())
}

/// A watch event of the simulator's kind and when it arrived.
type Stamped<K> = (Instant, Result<watcher::Event<K>, watcher::Error>);

/// Watches the simulator's kind ([`Sim::watch`]) on a thread of its own (a current-thread
/// runtime and its own client), timestamping each event as it arrives. The simulator's loop
/// also writes the reports, and a burst of them (hundreds of child policies and several
/// 10,000-entry root policies) keeps it busy for milliseconds: an event stamped when the loop
/// gets to it would charge that time to the operator's reaction.
fn spawn_watch<S: Sim>(
    config: kube::Config,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<Stamped<S::Watched>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Stamped<S::Watched>>();
    std::thread::Builder::new()
        .name("simulator-watch".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("  simulator watch: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let client = match kube::Client::try_from(config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("  simulator watch: no client: {e}");
                        return;
                    }
                };
                let (api, wc) = S::watch(client);
                let mut events = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(
                    watcher(api, wc)
                ));
                while let Some(ev) = events.next().await {
                    if tx.send((Instant::now(), ev)).is_err() {
                        break;
                    }
                }
            });
        })
        .context("starting the simulator's watch thread")?;
    Ok(rx)
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_pct(p: Option<Percentile>) -> String {
    match p {
        Some(p) if p.bucket_le.is_finite() => format!(
            "≤ {:.0} ms ({:.1})",
            p.bucket_le * 1000.0,
            p.interpolated * 1000.0
        ),
        Some(p) => format!("> 8192 ms ({:.0})", p.interpolated * 1000.0),
        None => "-".into(),
    }
}

fn print_detail(o: &Outcome) {
    eprintln!(
        "  {}: rollout {:.1?} (operator synced after {:.1?}; fleet setup {:.1?})",
        if o.succeeded { "Succeeded" } else { "FAILED" },
        o.rollout,
        o.synced_after,
        o.setup
    );
    eprintln!("  at the end: {}", load_average());
    eprintln!(
        "  {} API requests ({:.2} per cluster) + {} watch requests; {} reconciles ({} failed)",
        o.requests,
        o.requests as f64 / o.clusters as f64,
        o.watch_requests,
        o.reconciles,
        o.reconcile_failures
    );
    eprintln!(
        "  operator: {} CGU watch events read for their metadata only (echoes of its writes)",
        o.bodies_skipped
    );
    for (k, v) in &o.by_verb {
        eprintln!("    {v:>8}  {k}");
    }
    for ph in &o.phases {
        eprintln!(
            "  reconcile phase {:<7} {:>6} runs, mean {:.1} ms, p50 {}, p99 {}",
            ph.name,
            ph.count,
            ph.mean * 1000.0,
            fmt_pct(ph.p50),
            fmt_pct(ph.p99)
        );
    }
    eprintln!(
        "  simulator writes: {} root policies or ManifestWork statuses, {} child policies; \
         {} Placement or ManifestWork events seen",
        o.root_writes, o.child_writes, o.placement_events
    );
    if !o.slowest.is_empty() {
        eprintln!("  slowest reactions:");
        for line in &o.slowest {
            eprintln!("    {line}");
        }
    }
    if let Some(d) = o.final_to_succeeded {
        eprintln!("  last simulator write → Succeeded observed (200 ms poll): {d:.1?}");
    }
}

/// One summary row: the cell text and the number compared across sizes.
type Row = Box<dyn Fn(&Outcome) -> (String, f64)>;

fn print_table(all: &[Outcome]) {
    let Some(base) = all.first() else { return };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!(" ({:.2}×)", a / b)
        } else {
            String::new()
        }
    };
    let rows: Vec<(&str, Row)> = vec![
        (
            "rollout to Succeeded",
            Box::new(|o: &Outcome| {
                (
                    format!("{:.1} s", o.rollout.as_secs_f64()),
                    o.rollout.as_secs_f64(),
                )
            }),
        ),
        (
            "API requests (non-watch)",
            Box::new(|o: &Outcome| (format!("{}", o.requests), o.requests as f64)),
        ),
        (
            "API requests per cluster",
            Box::new(|o: &Outcome| {
                let v = o.requests as f64 / o.clusters as f64;
                (format!("{v:.2}"), v)
            }),
        ),
        (
            "peak operator RSS (VmHWM)",
            Box::new(|o: &Outcome| {
                let v = o.rss_peak_kib as f64 / 1024.0;
                (format!("{v:.0} MiB"), v)
            }),
        ),
        (
            "operator RSS when synced",
            Box::new(|o: &Outcome| {
                let v = o.rss_synced_kib as f64 / 1024.0;
                (format!("{v:.0} MiB"), v)
            }),
        ),
        (
            "operator CPU time",
            Box::new(|o: &Outcome| (format!("{:.1} s", o.cpu_secs), o.cpu_secs)),
        ),
        (
            "benchmark process CPU time (double + simulator)",
            Box::new(|o: &Outcome| (format!("{:.1} s", o.bench_cpu_secs), o.bench_cpu_secs)),
        ),
        (
            "reconciles",
            Box::new(|o: &Outcome| (format!("{}", o.reconciles), o.reconciles as f64)),
        ),
        (
            "reconcile p50 (bucket, interpolated)",
            Box::new(|o: &Outcome| {
                (
                    fmt_pct(o.reconcile_p50),
                    o.reconcile_p50.map_or(0.0, |p| p.interpolated),
                )
            }),
        ),
        (
            "reconcile p99 (bucket, interpolated)",
            Box::new(|o: &Outcome| {
                (
                    fmt_pct(o.reconcile_p99),
                    o.reconcile_p99.map_or(0.0, |p| p.interpolated),
                )
            }),
        ),
        (
            "reconcile mean",
            Box::new(|o: &Outcome| {
                let v = o.reconcile_mean.unwrap_or(0.0);
                (format!("{:.1} ms", v * 1000.0), v)
            }),
        ),
        (
            "reaction samples",
            Box::new(|o: &Outcome| (format!("{}", o.reactions.len()), o.reactions.len() as f64)),
        ),
        (
            "reaction p50",
            Box::new(|o: &Outcome| {
                let v = ms(pct(&o.reactions, 0.5));
                (format!("{v:.0} ms"), v)
            }),
        ),
        (
            "reaction p90",
            Box::new(|o: &Outcome| {
                let v = ms(pct(&o.reactions, 0.9));
                (format!("{v:.0} ms"), v)
            }),
        ),
        (
            "reaction p99",
            Box::new(|o: &Outcome| {
                let v = ms(pct(&o.reactions, 0.99));
                (format!("{v:.0} ms"), v)
            }),
        ),
        (
            "reaction max",
            Box::new(|o: &Outcome| {
                let v = ms(o.reactions.last().copied().unwrap_or_default());
                (format!("{v:.0} ms"), v)
            }),
        ),
        (
            "reaction p50 / p99, as handled by the simulator's loop",
            Box::new(|o: &Outcome| {
                let (a, b) = (
                    ms(pct(&o.reactions_handled, 0.5)),
                    ms(pct(&o.reactions_handled, 0.99)),
                );
                (format!("{a:.0} / {b:.0} ms"), b)
            }),
        ),
        (
            "watch event arrival → handled by the loop, p50 / p99 / max",
            Box::new(|o: &Outcome| {
                let (a, b, c) = (
                    ms(pct(&o.handling_lag, 0.5)),
                    ms(pct(&o.handling_lag, 0.99)),
                    ms(o.handling_lag.last().copied().unwrap_or_default()),
                );
                (format!("{a:.1} / {b:.1} / {c:.1} ms"), b)
            }),
        ),
    ];
    let mut header = "| measure |".to_string();
    let mut rule = "|---|".to_string();
    for o in all {
        header.push_str(&format!(
            " {} × {}, mc {} |",
            o.clusters, o.policies, o.max_concurrency
        ));
        rule.push_str("---|");
    }
    println!("\n{header}\n{rule}");
    for (name, f) in &rows {
        let (_, b) = f(base);
        let mut line = format!("| {name} |");
        for (k, o) in all.iter().enumerate() {
            let (s, v) = f(o);
            if k == 0 || !o.succeeded {
                line.push_str(&format!(" {s} |"));
            } else {
                line.push_str(&format!(" {s}{} |", ratio(v, b)));
            }
        }
        println!("{line}");
    }
}
