//! The `talm-agent` command line. Every flag has an environment fallback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use talm_shared::clock::SystemClock;

use crate::backup::task::BackupTaskConfig;
use crate::conn::{ConnConfig, HubTarget};
use crate::daemon::{Agent, AgentConfig, AgentError};
use crate::facts::Host;
use crate::host::exec::RealRunner;
use crate::runner::{HostRunner, PrecacheSettings};

/// `talm-agent run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Hub gateway URL, `https://host:port`.
    #[arg(long, env = "TALM_AGENT_HUB")]
    pub hub: String,
    /// CA bundle (PEM) that signed the hub's serving certificate.
    #[arg(long, env = "TALM_AGENT_CA")]
    pub ca: PathBuf,
    /// State directory: identity, journal, connection state.
    #[arg(long, env = "TALM_AGENT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// File holding a one-time bootstrap token (needed until the agent is enrolled).
    #[arg(long, env = "TALM_AGENT_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// The node's root filesystem as seen by the agent.
    #[arg(long, env = "TALM_AGENT_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// Name to verify in the hub's certificate (default: the URL's host).
    #[arg(long, env = "TALM_AGENT_SERVER_NAME")]
    pub server_name: Option<String>,
    /// First reconnect delay, milliseconds.
    #[arg(long, env = "TALM_AGENT_BACKOFF_INITIAL_MS", default_value_t = 1000)]
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay, seconds.
    #[arg(long, env = "TALM_AGENT_BACKOFF_MAX_SECS", default_value_t = 300)]
    pub backoff_max_secs: u64,
    /// HTTP/2 keepalive interval (dead-link detection), seconds.
    #[arg(long, env = "TALM_AGENT_KEEPALIVE_SECS", default_value_t = 30)]
    pub keepalive_secs: u64,
    /// At most one progress report per task to the hub this often, in seconds (plus one at
    /// each phase change, such as a pre-cache being let in).
    #[arg(long, env = "TALM_AGENT_PROGRESS_INTERVAL", default_value_t = 5)]
    pub progress_interval: u64,
    /// Where and how hub-assigned backups are taken (the same settings as `talm-agent backup`).
    #[command(flatten)]
    pub backup: crate::backup::cli::BackupOptions,
    /// Pre-cache tasks: images and blob downloads in flight at once.
    #[arg(long, env = "TALM_PRECACHE_PARALLEL", default_value_t = 4)]
    pub precache_parallel: usize,
    /// Pre-cache tasks: node-wide download cap in bytes per second (0: none).
    #[arg(long, env = "TALM_PRECACHE_BANDWIDTH_LIMIT", default_value_t = 0)]
    pub precache_bandwidth_limit: u64,
    /// Pre-cache tasks: containers-storage graph driver.
    #[arg(long, env = "TALM_PRECACHE_STORAGE_DRIVER", default_value = "overlay")]
    pub precache_storage_driver: String,
    /// Pre-cache tasks: a transfer that gets fewer than this many bytes in one stall period
    /// fails as stalled and is retried (0: no such rule).
    #[arg(long, env = "TALM_PRECACHE_STALL_MIN_BYTES", default_value_t = crate::precache::stall::DEFAULT_MIN_BYTES)]
    pub precache_stall_min_bytes: u64,
    /// Pre-cache tasks: the stall period, in seconds (0: no such rule).
    #[arg(long, env = "TALM_PRECACHE_STALL_PERIOD_SECS", default_value_t = crate::precache::stall::DEFAULT_PERIOD_SECS)]
    pub precache_stall_period_secs: u64,
    /// InstallPlan-approval tasks: kubeconfig of the spoke's own API server (default: the
    /// node's `localhost.kubeconfig` under the host root,
    /// `etc/kubernetes/static-pod-resources/kube-apiserver-certs/secrets/node-kubeconfigs/`).
    #[arg(long, env = "TALM_AGENT_SPOKE_KUBECONFIG")]
    pub spoke_kubeconfig: Option<PathBuf>,
    /// InstallPlan-approval tasks: seconds between passes over the Subscriptions.
    #[arg(long, env = "TALM_AGENT_APPROVAL_POLL_SECS", default_value_t = 10)]
    pub approval_poll_secs: u64,
    /// Rollback watchdog tasks: seconds between health checks (and between looks at the
    /// unattended recovery's outcome).
    #[arg(long, env = "TALM_AGENT_WATCHDOG_POLL_SECS", default_value_t = 30)]
    pub watchdog_poll_secs: u64,
}

/// Output format of `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A short table.
    #[default]
    Text,
    /// JSON.
    Json,
}

/// `talm-agent status`.
#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    /// State directory of the daemon.
    #[arg(long, env = "TALM_AGENT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl StatusArgs {
    /// Prints the status.
    pub fn run(&self) -> Result<(), CliError> {
        let view = crate::status::load(&self.state_dir)?;
        match self.output {
            Output::Json => {
                let text = serde_json::to_string_pretty(&view)
                    .map_err(|e| CliError::Read("status".into(), std::io::Error::other(e)))?;
                println!("{text}");
            }
            Output::Text => print!("{}", crate::status::render_text(&view)),
        }
        Ok(())
    }
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("{0}: {1}")]
    Read(String, #[source] std::io::Error),
    /// The daemon failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Bad arguments.
    #[error(transparent)]
    Conn(#[from] crate::conn::ConnError),
    /// The --ca file is not a usable PEM CA bundle.
    #[error("--ca {path}: not a usable PEM CA bundle: {source}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: talm_shared::tls::TlsError,
    },
    /// Status failed.
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Read(path.display().to_string(), e))
}

impl RunArgs {
    /// The daemon configuration.
    pub fn config(&self) -> Result<AgentConfig, CliError> {
        let token = match &self.bootstrap_token_file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some(t.trim().to_string()),
                // Once enrolled the token file may be gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(CliError::Read(p.display().to_string(), e)),
            },
            None => None,
        };
        let keepalive = Duration::from_secs(self.keepalive_secs.max(1));
        let target = HubTarget::parse(&self.hub, self.server_name.as_deref())?;
        let hub_ca_pem = read(&self.ca)?;
        // Configuration errors that no retry can fix end the daemon here, with a clear line.
        talm_shared::tls::client_config(&hub_ca_pem, None).map_err(|source| CliError::Ca {
            path: self.ca.display().to_string(),
            source,
        })?;
        Ok(AgentConfig {
            target,
            hub_ca_pem,
            state_dir: self.state_dir.clone(),
            bootstrap_token: token,
            conn: ConnConfig {
                keepalive_interval: keepalive,
                keepalive_timeout: keepalive.min(Duration::from_secs(20)),
                ..ConnConfig::default()
            },
            backoff_initial: Duration::from_millis(self.backoff_initial_ms.max(1)),
            backoff_max: Duration::from_secs(self.backoff_max_secs.max(1)),
            renew_at_fraction: 2.0 / 3.0,
            progress_interval: Duration::from_secs(self.progress_interval.max(1)),
        })
    }

    /// How the daemon runs `Precache` tasks.
    pub fn precache_settings(&self) -> PrecacheSettings {
        let runner = RealRunner::new();
        let mut options = crate::precache::Options::new(&self.state_dir, &self.host_root);
        options.parallel = self.precache_parallel.max(1);
        options.bandwidth_limit = self.precache_bandwidth_limit;
        options.storage_driver = self.precache_storage_driver.clone();
        options.stall = crate::precache::stall::StallPolicy {
            min_bytes: self.precache_stall_min_bytes,
            period: Duration::from_secs(self.precache_stall_period_secs),
        };
        // skopeo and containers-storage refuse relative paths (issue 14 item 14).
        for p in [&mut options.state_dir, &mut options.host_root] {
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
        options.low_priority_tools = runner.available("ionice") && runner.available("nice");
        PrecacheSettings {
            options,
            runner: Arc::new(runner),
        }
    }

    /// How the daemon runs `ApproveInstallPlans` tasks.
    pub fn approval_settings(&self) -> crate::installplans::ApprovalSettings {
        let mut s = crate::installplans::ApprovalSettings::new(
            &self.host_root,
            self.spoke_kubeconfig.as_deref(),
        );
        s.poll = Duration::from_secs(self.approval_poll_secs.max(1));
        s
    }

    /// How the daemon runs `Rollback` (watchdog) tasks: health through the same kubeconfig as
    /// the InstallPlan task, the recovery directory of `--recovery-dir` under the host root.
    pub fn watchdog_settings(&self) -> crate::watchdog::WatchdogSettings {
        let host = crate::host::root::HostRoot::new(&self.host_root);
        crate::watchdog::WatchdogSettings {
            kubeconfig: self.approval_settings().kubeconfig,
            state_dir: self.state_dir.clone(),
            recovery_dir: host.join(&self.backup.dir),
            poll: Duration::from_secs(self.watchdog_poll_secs.max(1)),
            check_timeout: Duration::from_secs(60),
            runner: Arc::new(RealRunner::new()),
        }
    }

    /// Runs the daemon until SIGINT/SIGTERM on a single-threaded runtime (the agent is small:
    /// one thread plus blocking-pool threads for fsyncs, spawned on demand).
    pub fn run_blocking(&self) -> Result<(), CliError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Read("tokio runtime".into(), e))?;
        rt.block_on(self.run())
    }

    /// Runs the daemon until SIGINT/SIGTERM.
    pub async fn run(&self) -> Result<(), CliError> {
        let cfg = self.config()?;
        let host = Arc::new(Host::new(&self.host_root));
        let clock = Arc::new(SystemClock);
        let backup = BackupTaskConfig {
            template: self.backup.config(&self.host_root, String::new(), None),
            clock: clock.clone(),
        };
        let runner = HostRunner::new(host.clone())
            .with_clock(clock.clone())
            .with_precache(self.precache_settings())
            .with_backup(backup)
            .with_approvals(self.approval_settings())
            .with_watchdog(self.watchdog_settings());
        let agent = Agent::new(cfg, host, Arc::new(runner), clock)?;
        agent.run(shutdown_signal()).await?;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
