//! Fleet load generator for pre-cache budgets (issue 17 §3).
//!
//! `cargo bench -p talm-hub --bench precache_budget -- --agents 1000` runs, for each mode
//! (`--mode both`: the baseline without budgets, then with budgets, side by side in one
//! invocation), the real operator binary as a **separate process** (`talm-hub run` with its
//! agent gateway, leader election on, pointed at `talm-kube-double` served from this process,
//! as the `operator` benchmark does), so its CPU time and peak RSS are its own, read from
//! `/proc` for its whole process tree. Against it:
//!
//! - N ManagedClusters (`--agents`, default 1,000), cluster `i` labelled `site=site-NN` with
//!   `NN = i mod --sites` (default 10); one inform root policy whose ClusterVersion names the
//!   release image, and its child policy per cluster, NonCompliant everywhere;
//! - with budgets: one PrecacheBudget per site (`site=site-NN` selector, `bandwidth`
//!   `--site-mib` Mi, `maxConcurrentClusters` `--site-max`) and one registry budget (no
//!   selector, `registries: [{host: mirror-a.example:5000, maxConcurrentClusters:
//!   --registry-max}]`);
//! - N simulated agents (`agent.rs`), each its own mTLS session on the gateway's port with a
//!   certificate of the hub's agent CA and an enrollment Secret (as the Enroll RPC records
//!   them); agent `i` pulls from mirror-a when `(i / sites)` is even, else from mirror-b, so
//!   every site has both;
//! - once every session is up, one CGU over every cluster with `preCaching: true`, `enable:
//!   false` and `maxConcurrency` `ceil(N / --batches)` (default 10 batches), run until every
//!   cluster's pre-cache is `Succeeded`.
//!
//! Each agent downloads `--total-mib` through a token bucket at the cap the hub gives it
//! (the node's own link, `--node-mib`, when there is none) and reports progress every 5 s.
//! Measured (`measure.rs`) and printed as Markdown tables: per site, the aggregate rate over
//! every 10 s window (1 s step) from when every cluster of the site had its task and one was
//! let in, to the site's last let-in (while it still had queued clusters), min and max as % of
//! its budget; the most clusters downloading at once per
//! registry and per site; for each batch k, batch k's last finish against batch k+2's first
//! let-in; and the hub's CPU seconds and peak RSS during pre-caching, with budgets against
//! the baseline, and their ratio.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::print_stderr,
    clippy::print_stdout
)]

#[path = "precache_budget/agent.rs"]
mod agent;
#[path = "precache_budget/fleet.rs"]
mod fleet;
#[path = "support/hub_process.rs"]
mod hub_process;
#[path = "precache_budget/measure.rs"]
mod measure;
#[path = "../gateway/benches/support/procfs.rs"]
mod procfs;
#[path = "precache_budget/report.rs"]
mod report;
#[path = "../gateway/benches/support/sim_agent.rs"]
mod sim_agent;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::Value;
use talm_agent::conn::{HubTarget, Identity};
use talm_kube_double::{KubeDouble, ResourceKind};
use talm_shared::clock::{Clock, SystemClock};
use talm_shared::pki::{self, Authority};
use tokio::sync::Semaphore;

use agent::{Download, Record, Shared};
use hub_process::{free_port, http_get, load_average, stop, write_kubeconfig};
use measure::Cluster;

/// Namespace of the CGU and the root policy.
const NS: &str = "ztp";
/// The hub's own namespace (the gateway's Secrets).
const HUB_NS: &str = "talm-system";
const CGU: &str = "fleet";
const POLICY: &str = "platform-upgrade";
/// The registries the agents pull from; the registry budget names the first.
const REGISTRIES: [&str; 2] = ["mirror-a.example:5000", "mirror-b.example:5000"];
const MIB: f64 = 1024.0 * 1024.0;
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The baseline (no budgets), then with budgets.
    Both,
    /// Without any PrecacheBudget.
    Baseline,
    /// With the site and registry budgets.
    Budget,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "pre-cache budget load generator: talm-hub run against simulated agents")]
struct Args {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Simulated agents (clusters).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Sites (one budget each).
    #[arg(long, default_value_t = 10)]
    sites: usize,
    /// Each site budget's bandwidth, MiB/s.
    #[arg(long, default_value_t = 50)]
    site_mib: u64,
    /// Each site budget's maxConcurrentClusters.
    #[arg(long, default_value_t = 10)]
    site_max: usize,
    /// The registry budget's maxConcurrentClusters for mirror-a.
    #[arg(long, default_value_t = 30)]
    registry_max: usize,
    /// What each agent downloads, MiB.
    #[arg(long, default_value_t = 50)]
    total_mib: u64,
    /// Each node's own link, MiB/s (the rate without a hub cap).
    #[arg(long, default_value_t = 100)]
    node_mib: u64,
    /// Batches of the CGU's plan (maxConcurrency = ceil(agents / batches)).
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// The heartbeat interval the hub asks for, seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    ramp: usize,
    /// Give up on a mode after this long (from the CGU's creation).
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// The `talm-hub` binary (default: the one cargo built with this benchmark).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Keep the operator's log (printed path).
    #[arg(long)]
    keep_logs: bool,
    /// The operator's log filter.
    #[arg(long, default_value = "info")]
    hub_log: String,
}

/// Everything measured in one mode.
#[derive(Debug, Default)]
struct Outcome {
    budgets: bool,
    succeeded: bool,
    failure: Option<String>,
    /// CGU created → every cluster's pre-cache Succeeded, seconds.
    precache_secs: f64,
    /// Hub (process tree) CPU seconds over that span, and over the whole run.
    cpu_precache: f64,
    cpu_total: f64,
    /// Peak RSS (summed VmHWM of the tree), KiB, and RSS once the sessions were up.
    hwm_kib: u64,
    rss_connected_kib: u64,
    /// When the CGU was created, on the agents' clock.
    cgu_at: f64,
    clusters: Vec<Cluster>,
    batches: usize,
    sessions: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0
        || args.sites == 0
        || args.batches == 0
        || args.site_mib == 0
        || args.site_max == 0
        || args.registry_max == 0
        || args.total_mib == 0
        || args.node_mib == 0
    {
        bail!(
            "--agents, --sites, --batches, --site-mib, --site-max, --registry-max, --total-mib \
             and --node-mib must be > 0"
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
    let modes: &[bool] = match args.mode {
        Mode::Both => &[false, true],
        Mode::Baseline => &[false],
        Mode::Budget => &[true],
    };
    // One agent CA and one certificate per cluster, shared by the modes.
    let t = Instant::now();
    let now = SystemClock.unix();
    let ca = pki::new_ca("talm agent CA", std::time::SystemTime::now(), TEN_YEARS)?;
    let ids: Vec<Identity> = (0..args.agents)
        .map(|i| sim_agent::issue_identity(&ca, &cluster(i), i as u64 + 1, now))
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "issued {} agent certificates in {:.1}s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let mut outcomes = Vec::new();
    for &budgets in modes {
        eprintln!(
            "== {} agents, {}, {} ({})",
            args.agents,
            if budgets {
                "with budgets"
            } else {
                "baseline: no budgets"
            },
            fleet_summary(&args),
            load_average()
        );
        let o = rt.block_on(run_mode(&args, &hub_bin, &ca, &ids, budgets))?;
        eprintln!("   done ({})", load_average());
        outcomes.push(o);
    }
    report::print_report(&args, &outcomes);
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.succeeded)
        .map(|o| {
            format!(
                "{}: {}",
                mode_name(o.budgets),
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

fn mode_name(budgets: bool) -> &'static str {
    if budgets { "budgets" } else { "baseline" }
}

fn fleet_summary(a: &Args) -> String {
    format!(
        "{} sites × {} MiB/s (max {} clusters), mirror-a max {}, {} MiB per agent, node link {} \
         MiB/s, {} batches",
        a.sites, a.site_mib, a.site_max, a.registry_max, a.total_mib, a.node_mib, a.batches
    )
}

fn cluster(i: usize) -> String {
    format!("sno{i:05}")
}

fn site(a: &Args, i: usize) -> usize {
    i % a.sites
}

fn registry(a: &Args, i: usize) -> usize {
    (i / a.sites) % 2
}

fn site_label(s: usize) -> String {
    format!("site-{s:02}")
}

fn max_concurrency(a: &Args) -> usize {
    a.agents.div_ceil(a.batches)
}

fn spawn_hub(
    bin: &Path,
    kubeconfig: &Path,
    admin: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    a: &Args,
    log: &Path,
) -> anyhow::Result<Child> {
    let log_file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    Command::new(bin)
        .args([
            "run",
            "--health-addr",
            &admin.to_string(),
            "--metrics-addr",
            &admin.to_string(),
            "--admin-auth",
            "none",
            "--lease-namespace",
            "default",
            "--identity",
            "bench",
            "--grpc-addr",
            &grpc.to_string(),
            "--namespace",
            HUB_NS,
            "--heartbeat-interval-secs",
            &a.heartbeat_secs.to_string(),
            "--heartbeat-timeout-secs",
            &(a.heartbeat_secs * 3).to_string(),
            "--log-format",
            "json",
            "--log-level",
            &a.hub_log,
        ])
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

/// The pre-cache states of the CGU's clusters (`status.precaching.status`).
fn precache_states(double: &KubeDouble) -> Option<BTreeMap<String, String>> {
    let c = double.get_value(
        "ran.openshift.io/v1alpha1",
        "ClusterGroupUpgrade",
        Some(NS),
        CGU,
    )?;
    let m = c["status"]["precaching"]["status"].as_object()?;
    Some(
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

async fn run_mode(
    a: &Args,
    hub_bin: &Path,
    ca: &Authority,
    ids: &[Identity],
    budgets: bool,
) -> anyhow::Result<Outcome> {
    let n = a.agents;
    let mut out = Outcome {
        budgets,
        ..Outcome::default()
    };
    let kinds: Vec<ResourceKind> = talm_kube_double::default_kinds()
        .into_iter()
        .filter(|k| k.plural == "clustergroupupgrades")
        .map(|k| k.with_history_limit(256))
        .collect();
    let double = KubeDouble::builder()
        .history_limit(16 * n + 4096)
        .kinds(kinds)
        .record_requests(false)
        .start()
        .await
        .context("starting the API double")?;
    let hub_ca = fleet::populate(&double, a, ca, ids, budgets).await?;

    let dir = tempfile::Builder::new()
        .prefix("talm-precache-budget-bench-")
        .tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &double.url())?;
    let log = dir.path().join("talm-hub.log");
    let (admin, grpc) = (free_port()?, free_port()?);
    let mut child = spawn_hub(hub_bin, &kubeconfig, admin, grpc, a, &log)?;
    let pid = child.id();
    let result = drive(a, &double, &mut child, admin, grpc, &hub_ca, ids, &mut out).await;
    if let Err(e) = &result {
        out.failure = Some(format!("{e:#}"));
    }
    out.succeeded = result.is_ok();
    let end = procfs::tree_stats(pid);
    out.cpu_total = end.cpu_secs();
    out.hwm_kib = end.hwm_kib;
    if out.cpu_precache == 0.0 {
        out.cpu_precache = out.cpu_total;
    }
    stop(&mut child).await;
    if !out.succeeded || a.keep_logs {
        let kept = std::env::temp_dir().join(format!(
            "talm-precache-budget-bench-{}.log",
            mode_name(budgets)
        ));
        if std::fs::copy(&log, &kept).is_ok() {
            eprintln!("   operator log: {}", kept.display());
        }
    }
    double.shutdown().await;
    Ok(out)
}

/// Connects the agents, creates the CGU and waits until every cluster's pre-cache succeeded.
#[allow(clippy::too_many_arguments)]
async fn drive(
    a: &Args,
    double: &KubeDouble,
    child: &mut Child,
    admin: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    hub_ca: &str,
    ids: &[Identity],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = a.agents;
    let pid = child.id();
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("talm-hub exited early: {st}");
        }
        if matches!(http_get(admin, "/readyz").await, Some((200, _))) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("talm-hub not ready after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("   hub ready after {:.1}s", started.elapsed().as_secs_f64());

    let shared = Shared {
        target: HubTarget::parse(&format!("https://{grpc}"), None)?,
        hub_ca: hub_ca.as_bytes().to_vec(),
        download: Download {
            total: a.total_mib * MIB as u64,
            node_rate: a.node_mib * MIB as u64,
        },
        t0: Instant::now(),
        connected: Arc::new(AtomicUsize::new(0)),
        finished: Arc::new(AtomicUsize::new(0)),
        ramp: Arc::new(Semaphore::new(a.ramp)),
    };
    let recs: Vec<Arc<Mutex<Record>>> = (0..n).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        tasks.spawn(agent::run(
            shared.clone(),
            id.clone(),
            REGISTRIES[registry(a, i)].to_string(),
            recs[i].clone(),
        ));
    }
    let t = Instant::now();
    while shared.connected.load(Ordering::Relaxed) < n {
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {n} sessions up after 300 s",
                shared.connected.load(Ordering::Relaxed)
            );
        }
        if let Some(st) = child.try_wait()? {
            bail!("talm-hub exited early: {st}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("   {n} sessions up in {:.1}s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.rss_connected_kib = procfs::tree_stats(pid).rss_kib;

    let cpu0 = procfs::tree_stats(pid).cpu_secs();
    let created = Instant::now();
    out.cgu_at = shared.t0.elapsed().as_secs_f64();
    double.put_value(fleet::cgu_object(a)).context("CGU")?;
    let deadline = created + Duration::from_secs(a.timeout_secs);
    let mut last_line = Instant::now();
    let result = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(st) = child.try_wait()? {
            break Err(anyhow::anyhow!("talm-hub exited early: {st}"));
        }
        let states = precache_states(double).unwrap_or_default();
        let ok = states.values().filter(|s| *s == "Succeeded").count();
        if ok == n {
            out.precache_secs = created.elapsed().as_secs_f64();
            out.cpu_precache = procfs::tree_stats(pid).cpu_secs() - cpu0;
            break Ok(());
        }
        if let Some((c, s)) = states
            .iter()
            .find(|(_, s)| s.contains("Timeout") || s.contains("Failed"))
        {
            break Err(anyhow::anyhow!("{c}: pre-cache {s}"));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "{ok} of {n} pre-caches Succeeded after {}s",
                a.timeout_secs
            ));
        }
        if last_line.elapsed() >= Duration::from_secs(15) {
            last_line = Instant::now();
            let s = procfs::tree_stats(pid);
            eprintln!(
                "   {:>5.0}s: {} of {n} downloads finished, {ok} Succeeded in the CGU; {} sessions; \
                 hub RSS {} MiB, CPU {:.1}s",
                created.elapsed().as_secs_f64(),
                shared.finished.load(Ordering::Relaxed),
                shared.connected.load(Ordering::Relaxed),
                s.rss_kib / 1024,
                s.cpu_secs() - cpu0
            );
        }
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    // The plan's batches, read from the CGU.
    let mut batch_of: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(c) = double.get_value(
        "ran.openshift.io/v1alpha1",
        "ClusterGroupUpgrade",
        Some(NS),
        CGU,
    ) && let Some(plan) = c["status"]["remediationPlan"].as_array()
    {
        out.batches = plan.len();
        for (k, b) in plan.iter().enumerate() {
            for c in b.as_array().into_iter().flatten().filter_map(Value::as_str) {
                batch_of.insert(c.to_string(), k);
            }
        }
    }
    out.clusters = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec = r.lock().map(|g| g.clone()).unwrap_or_default();
            out.sessions += rec.sessions;
            Cluster {
                site: site(a, i),
                registry: registry(a, i),
                batch: batch_of.get(&cluster(i)).copied(),
                rec,
            }
        })
        .collect();
    result
}
