//! talm-agent: the on-node agent of a single-node OpenShift cluster. As a daemon (`run`) it
//! dials the hub over one mTLS gRPC stream, runs the tasks the hub assigns, and never loses a
//! report; as a tool it takes the pre-upgrade backup and recovers the node.
//!
//! # Layout
//! - [`host`]: host access behind seams, every path under a configurable host root: the one
//!   process-spawning module ([`host::exec`]), ostree, disk, the native etcd snapshot client,
//!   and archives with a safe restore.
//! - [`backup`]: `talm-agent backup`, the pre-upgrade backup (also a library entry point for the
//!   hub-driven task: [`backup::run`]).
//! - [`recovery`]: `talm-agent recover`, the journaled on-node recovery.
//! - [`watchdog`]: the automatic-rollback watchdog (the hub's `Rollback` task: local health
//!   checks, then `talm-recover.service` running `recover --unattended`) and
//!   `talm-agent rollback disarm`.
//! - [`precache`]: `talm-agent precache run|status` and the engine of the hub's `Precache` task:
//!   filtered image lists, a resumable content-addressed blob cache, native OCI pulls with
//!   mirrors, auth, retries and a node-wide bandwidth cap, then import into containers-storage.
//! - The hub channel (`talm-agent run` and `status`):
//!   - [`args`]: the clap arguments of `run` and `status`, every flag with an env fallback;
//!   - [`journal`]: the durable journal (accepted tasks, their states, unacknowledged
//!     reports), written atomically and fsynced on every change;
//!   - [`conn`]: TLS 1.3 connections to the hub, enrollment (bootstrap token + CSR), rotation;
//!   - [`facts`]: node facts for Hello and statvfs, behind a trait rooted at `--host-root`;
//!   - [`runner`]: task execution (`check-space`, `precache`, `backup` through
//!     [`backup::task`], and `approve-install-plans` through [`installplans`]);
//!   - [`daemon`]: the session loop, reconnects with jittered capped backoff, heartbeats,
//!     certificate rotation, and the connection state file read by `talm-agent status`;
//!   - [`backoff`]: the reconnect backoff;
//!   - [`status`]: `talm-agent status` rendering.

/// Host operations (module files in `src/host/`).
pub mod host {
    pub mod archive;
    pub mod disk;
    pub mod etcd;
    pub mod exec;
    pub mod ostree;
    pub mod root;
}
pub mod args;
pub mod backoff;
pub mod backup;
pub mod conn;
pub mod daemon;
pub mod facts;
pub mod installplans;
pub mod journal;
pub mod precache;
pub mod recovery;
pub mod runner;
pub mod status;
pub mod watchdog;

/// This agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(name = "talm-agent", version, about = "talm on-node agent")]
pub struct Cli {
    /// Logging flags (accepted before or after the subcommand), shared with talm-hub.
    #[command(flatten)]
    pub log: talm_shared::telemetry::LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the daemon: keep a session with the hub and run the tasks it assigns. (Boxed: its
    /// flags make it much larger than the other variants.)
    Run(Box<args::RunArgs>),
    /// Print the daemon's connection state and journaled tasks (works while it runs).
    Status(args::StatusArgs),
    /// Take the pre-upgrade backup (ostree pin, etcd snapshot, node files).
    Backup(backup::cli::BackupArgs),
    /// Recover the node from its backup after a failed upgrade.
    Recover(recovery::cli::RecoverArgs),
    /// Pre-cache images (`run --spec FILE`) or show the pre-cache status (`status`).
    Precache(precache::cli::PrecacheArgs),
    /// The automatic-rollback watchdog on this node (`rollback disarm`).
    Rollback(watchdog::RollbackArgs),
}

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backup failed.
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    /// The recovery stopped.
    #[error(transparent)]
    Recover(#[from] recovery::unattended::UnattendedRunError),
    /// `rollback` failed.
    #[error(transparent)]
    Rollback(#[from] watchdog::WatchdogError),
    /// The daemon or `status` failed.
    #[error(transparent)]
    Channel(#[from] args::CliError),
    /// `precache` failed.
    #[error(transparent)]
    Precache(#[from] precache::cli::PrecacheCliError),
    /// Logging could not be set up (`--log-level`).
    #[error("logging: {0}")]
    Logging(#[from] talm_shared::telemetry::TelemetryError),
}

impl Cli {
    /// Runs the command. The wall clock is read here only (timestamps of file names and of the
    /// redeployment reason); the daemon gets the clock seam.
    pub fn run(self) -> Result<(), Error> {
        talm_shared::telemetry::init(&self.log)?;
        #[allow(clippy::disallowed_methods)] // the entry point reads the clock
        let now = jiff::Timestamp::now();
        match self.command {
            Command::Run(a) => a.run_blocking()?,
            Command::Status(a) => a.run()?,
            Command::Backup(a) => a
                .run(now.strftime("%Y-%m-%d_%H%M%S").to_string())
                .map(drop)?,
            Command::Recover(a) => a.run(&now.to_string()).map(drop)?,
            Command::Precache(a) => a.run(now)?,
            Command::Rollback(a) => a.run()?,
        }
        Ok(())
    }
}
