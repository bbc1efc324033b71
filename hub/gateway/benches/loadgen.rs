//! Load generator for the hub↔agent channel (issue 3 §6).
//!
//! `cargo bench -p talm-gateway --bench loadgen -- run --sessions 10000` starts the gateway as a
//! separate process (this binary's `hub` mode, the same code as `talm-hub gateway` with the
//! file-backed stores), opens N simulated agent sessions against it on loopback (each its own
//! TCP + TLS 1.3 + HTTP/2 connection with its own client certificate), and measures:
//!
//! 1. time until all N sessions are established;
//! 2. steady state with heartbeats every `--heartbeat-secs`: hub RSS and CPU over
//!    `--steady-secs` (from /proc);
//! 3. a hub restart (SIGKILL, then a new process on the same state dir): time until all N are
//!    reconnected and re-synced (welcomed again; their completed tasks are not re-assigned);
//! 4. with `--agent-bin` (a relative path is taken from the workspace root, and checked before
//!    anything starts), the idle RSS and CPU of one real `talm-agent run`.
//!
//! Simulated agents (`support/sim_agent.rs`, shared with the hub's `precache_budget` benchmark)
//! answer every assignment at once (accepted + succeeded) and reconnect with the agent's own
//! jittered backoff. Results are printed as a Markdown table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::print_stderr
)]

#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/sim_agent.rs"]
mod sim_agent;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use procfs::{ProcStats, proc_stats};
use sim_agent::AgentSession;
use talm_agent::backoff::{Backoff, random_u64};
use talm_agent::conn::{ConnConfig, HubTarget, Identity};
use talm_gateway::cli::{GatewayArgs, PkiPaths, SessionArgs, run_gateway};
use talm_gateway::store::file::{FileEnrollmentStore, FileSpokeAgentStore};
use talm_gateway::store::{EnrollmentStore, SpokeAgentStore};
use talm_proto::v1::hub_message;
use talm_shared::api::Time;
use talm_shared::api::spokeagent::{CheckSpaceTask, SpokeAgentSpec};
use talm_shared::clock::{Clock, SystemClock};
use talm_shared::pki::Authority;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
struct Cli {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true, global = true)]
    bench: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (used as the child process).
    Hub {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long, default_value_t = 30)]
        heartbeat_secs: u64,
    },
    /// Run the benchmark.
    Run {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 30)]
        heartbeat_secs: u64,
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
        /// Connection attempts in flight at once during the initial ramp.
        #[arg(long, default_value_t = 512)]
        ramp_concurrency: usize,
        /// Skip the restart phase.
        #[arg(long)]
        no_restart: bool,
        /// A `talm-agent` binary to measure idle RSS/CPU of. A relative path is taken from the
        /// workspace root (cargo runs benches from the package directory), and a missing file
        /// is refused before anything starts.
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// How long the real agent idles before it is measured, seconds.
        #[arg(long, default_value_t = 60)]
        agent_idle_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Hub {
            state_dir,
            listen,
            admin,
            heartbeat_secs,
        } => rt.block_on(async move {
            talm_shared::telemetry::init(&talm_shared::telemetry::LogArgs {
                log_level: "warn".into(),
                log_format: talm_shared::telemetry::LogFormat::Plain,
            })?;
            let args = GatewayArgs {
                state_dir,
                listen,
                admin_listen: admin,
                session: SessionArgs {
                    server_names: vec!["127.0.0.1".into()],
                    heartbeat_interval_secs: heartbeat_secs,
                    heartbeat_timeout_secs: heartbeat_secs * 3,
                    cert_lifetime_secs: 86_400,
                    // The shipped defaults (idle timeout, unverified-connection cap).
                    idle_timeout_secs: talm_gateway::conns::DEFAULT_IDLE_TIMEOUT_SECS,
                    max_unverified_connections: talm_gateway::conns::DEFAULT_MAX_UNVERIFIED,
                    progress_write_interval_secs:
                        talm_gateway::cli::DEFAULT_PROGRESS_WRITE_INTERVAL_SECS,
                },
                poll_interval_ms: 2000,
            };
            run_gateway(args, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }),
        Cmd::Run {
            sessions,
            heartbeat_secs,
            steady_secs,
            ramp_concurrency,
            no_restart,
            agent_bin,
            agent_idle_secs,
        } => {
            // Checked now, not after the minutes of the hub phases that come before it.
            let agent_bin = agent_bin.map(|p| resolve_agent_bin(&p)).transpose()?;
            rt.block_on(run(
                sessions,
                heartbeat_secs,
                steady_secs,
                ramp_concurrency,
                !no_restart,
                agent_bin,
                agent_idle_secs,
            ))
        }
    }
}

/// The workspace root, where the documented commands run from.
const WORKSPACE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// `--agent-bin` as a path that exists: absolute paths as given, relative ones from the
/// workspace root.
fn resolve_agent_bin(given: &Path) -> anyhow::Result<PathBuf> {
    let path = if given.is_absolute() {
        given.to_path_buf()
    } else {
        Path::new(WORKSPACE_ROOT).join(given)
    };
    if !path.is_file() {
        anyhow::bail!(
            "--agent-bin {}: no such file ({}; relative paths are taken from the workspace \
             root; build it first with `cargo build --release -p talm-agent --bin talm-agent`)",
            given.display(),
            path.display()
        );
    }
    Ok(std::fs::canonicalize(&path)?)
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct HubProc {
    child: Child,
}

impl HubProc {
    fn spawn(state: &Path, listen: SocketAddr, admin: SocketAddr, hb: u64) -> Self {
        let log = std::fs::File::create(state.join("hub.log")).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "hub",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--heartbeat-secs", &hb.to_string(), "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn cpu_over(pid: u32, secs: u64) -> f64 {
    let t0 = proc_stats(pid).cpu_secs();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (proc_stats(pid).cpu_secs() - t0) / start.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    welcomes: AtomicU64,
    assignments: AtomicU64,
    generation: Vec<AtomicU64>,
}

async fn wait_pki(paths: &PkiPaths) {
    for _ in 0..600 {
        if paths.agent_ca_key.exists() && paths.hub_ca.exists() && paths.server_cert.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the hub did not write its PKI");
}

async fn run(
    n: usize,
    hb: u64,
    steady: u64,
    ramp: usize,
    restart: bool,
    agent_bin: Option<PathBuf>,
    agent_idle: u64,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("hub");
    std::fs::create_dir_all(&state)?;
    let (listen, admin) = (free_port(), free_port());
    let mut hub = HubProc::spawn(&state, listen, admin, hb);
    let paths = PkiPaths::under(&state);
    wait_pki(&paths).await;
    let hub_ca = std::fs::read(&paths.hub_ca)?;
    let ca = Authority {
        cert_pem: std::fs::read_to_string(&paths.agent_ca_cert)?,
        key_pem: std::fs::read_to_string(&paths.agent_ca_key)?,
    };

    // Enroll N clusters (certificates issued directly with the agent CA and recorded in the
    // enrollment store, as the Enroll RPC does) and give each a check-space task.
    let t = Instant::now();
    let enroll = FileEnrollmentStore::new(&state)?;
    let agents = FileSpokeAgentStore::new(&state)?;
    let now = SystemClock.unix();
    let deadline = Time(jiff::Timestamp::from_second(now + 86_400)?);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let cluster = format!("sno-{i:05}");
        let id = sim_agent::issue_identity(&ca, &cluster, i as u64 + 1, now)?;
        enroll
            .record_certificate(&cluster, &id.info.serial, id.info.not_after, now)
            .await?;
        agents
            .put_spec(
                &cluster,
                &SpokeAgentSpec {
                    check_space: Some(CheckSpaceTask {
                        id: format!("{cluster}/cs-1"),
                        space_required: "1".into(),
                        deadline: deadline.clone(),
                    }),
                    ..Default::default()
                },
            )
            .await?;
        ids.push(id);
    }
    eprintln!("enrolled {n} clusters in {:.1}s", t.elapsed().as_secs_f64());

    let target = HubTarget::parse(&format!("https://{listen}"), None)?;
    let stats = Arc::new(Stats {
        generation: (0..n).map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let ramp_sem = Arc::new(Semaphore::new(ramp));
    let ramping = Arc::new(AtomicBool::new(true));
    let t = Instant::now();
    for (i, id) in ids.into_iter().enumerate() {
        tokio::spawn(sim(
            i,
            target.clone(),
            hub_ca.clone(),
            id,
            stats.clone(),
            ramp_sem.clone(),
            ramping.clone(),
        ));
    }
    while stats.connected.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "only {} of {n} connected after 600 s",
                stats.connected.load(Ordering::Relaxed)
            );
        }
    }
    let ramp_secs = t.elapsed().as_secs_f64();
    ramping.store(false, Ordering::Relaxed);
    eprintln!("{n} sessions up in {ramp_secs:.1}s");
    // Let the task round trips and status writes settle.
    while stats.assignments.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pid = hub.pid();
    let cpu = cpu_over(pid, steady).await;
    let ProcStats {
        rss_kib: rss,
        hwm_kib: hwm,
        ..
    } = proc_stats(pid);
    eprintln!(
        "steady: hub CPU {cpu:.3} cores, RSS {} MiB (peak {} MiB)",
        rss / 1024,
        hwm / 1024
    );

    let mut restart_secs = None;
    let mut reassigned = 0;
    if restart {
        let before: Vec<u64> = stats
            .generation
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .collect();
        let assigned_before = stats.assignments.load(Ordering::Relaxed);
        let t = Instant::now();
        hub.kill();
        hub = HubProc::spawn(&state, listen, admin, hb);
        loop {
            let done = stats
                .generation
                .iter()
                .zip(&before)
                .filter(|(g, b)| g.load(Ordering::Relaxed) > **b)
                .count();
            if done == n && stats.connected.load(Ordering::Relaxed) == n {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("only {done} of {n} re-synced after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        restart_secs = Some(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
        reassigned = stats.assignments.load(Ordering::Relaxed) - assigned_before;
        eprintln!(
            "restart: all {n} re-synced in {:.1}s; {reassigned} completed tasks re-assigned",
            restart_secs.unwrap_or(0.0)
        );
    }
    let ProcStats {
        rss_kib: rss2,
        hwm_kib: hwm2,
        ..
    } = proc_stats(hub.pid());

    let mut agent_line = None;
    if let Some(bin) = agent_bin {
        agent_line =
            Some(measure_agent(&bin, dir.path(), &state, listen, &paths, agent_idle).await?);
    }

    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| sessions | {n} (heartbeat every {hb} s) | 10,000 at 30 s |");
    println!("| ramp: all sessions established | {ramp_secs:.1} s | — |");
    println!("| hub steady CPU over {steady} s | {cpu:.3} cores | < 0.5 core |");
    println!(
        "| hub RSS, steady | {:.0} MiB (peak {:.0} MiB) | < 1 GiB |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    if let Some(s) = restart_secs {
        println!("| hub restart → all reconnected and re-synced | {s:.1} s | < 60 s |");
        println!("| completed tasks re-assigned after restart | {reassigned} | 0 |");
        println!(
            "| restarted hub RSS | {:.0} MiB (peak {:.0} MiB) | < 1 GiB |",
            rss2 as f64 / 1024.0,
            hwm2 as f64 / 1024.0
        );
    }
    if let Some(l) = agent_line {
        println!("{l}");
    }
    drop(hub);
    Ok(())
}

async fn sim(
    i: usize,
    target: HubTarget,
    hub_ca: Vec<u8>,
    id: Identity,
    stats: Arc<Stats>,
    ramp: Arc<Semaphore>,
    ramping: Arc<AtomicBool>,
) {
    // The agent's defaults: 1 s initial, 300 s cap, jittered.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let conn = ConnConfig::default();
    let mut seq = 0u64;
    loop {
        let permit = if ramping.load(Ordering::Relaxed) {
            ramp.clone().acquire_owned().await.ok()
        } else {
            None
        };
        if session(i, &target, &hub_ca, &id, &conn, &stats, &mut seq, permit)
            .await
            .is_ok()
        {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay(random_u64())).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    i: usize,
    target: &HubTarget,
    hub_ca: &[u8],
    id: &Identity,
    conn: &ConnConfig,
    stats: &Stats,
    seq: &mut u64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(), ()> {
    let mut s = AgentSession::open(target, hub_ca, id, conn, Vec::new(), Vec::new())
        .await
        .map_err(|_| ())?;
    drop(permit);
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stats.welcomes.fetch_add(1, Ordering::Relaxed);
    stats.generation[i].fetch_add(1, Ordering::Relaxed);
    while let Some(m) = s.recv().await {
        if let Some(hub_message::Msg::Assign(a)) = m.msg {
            stats.assignments.fetch_add(1, Ordering::Relaxed);
            for body in [sim_agent::accepted(a.kind), sim_agent::succeeded()] {
                if !s.report(seq, &a.task_id, body).await {
                    break;
                }
            }
        }
    }
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

async fn measure_agent(
    bin: &Path,
    dir: &Path,
    state: &Path,
    listen: SocketAddr,
    paths: &PkiPaths,
    idle: u64,
) -> anyhow::Result<String> {
    let enroll = FileEnrollmentStore::new(state)?;
    let token = talm_gateway::enroll::issue_token(
        &enroll,
        &SystemClock,
        "sno-real",
        Duration::from_secs(600),
    )
    .await?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("var/lib/containers"))?;
    let agent_state = dir.join("agent");
    let mut child = Command::new(bin)
        .args(["run", "--hub", &format!("https://{listen}"), "--ca"])
        .arg(&paths.hub_ca)
        .arg("--state-dir")
        .arg(&agent_state)
        .arg("--bootstrap-token-file")
        .arg(&token_file)
        .arg("--host-root")
        .arg(&host)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let conn_file = agent_state.join("connection.json");
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(&conn_file).unwrap_or_default();
        if s.contains("\"connected\"") {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            anyhow::bail!("the real agent did not connect");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = cpu_over(child.id(), idle).await;
    let ProcStats {
        rss_kib: rss,
        hwm_kib: hwm,
        ..
    } = proc_stats(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Ok(format!(
        "| real talm-agent idle, over {idle} s | RSS {:.1} MiB (peak {:.1} MiB), CPU {:.4} cores | < 20 MiB, ~0 |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu
    ))
}
