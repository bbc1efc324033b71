//! talm-agent: the on-node agent of a single-node OpenShift cluster.
//!
//! # Layout
//! - [`host`]: host access behind seams, every path under a configurable host root: the one
//!   process-spawning module ([`host::exec`]), ostree, disk, the native etcd snapshot client,
//!   and archives with a safe restore.
//! - [`backup`]: `talm-agent backup`, the pre-upgrade backup (also a library entry point for the
//!   hub-driven task: [`backup::run`]).
//! - [`recovery`]: `talm-agent recover`, the journaled on-node recovery.

/// Host operations (module files in `src/host/`).
pub mod host {
    pub mod archive;
    pub mod disk;
    pub mod etcd;
    pub mod exec;
    pub mod ostree;
    pub mod root;
}
pub mod backup;
pub mod recovery;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(name = "talm-agent", version, about = "talm on-node agent")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Take the pre-upgrade backup (ostree pin, etcd snapshot, node files).
    Backup(backup::cli::BackupArgs),
    /// Recover the node from its backup after a failed upgrade.
    Recover(recovery::cli::RecoverArgs),
}

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backup failed.
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    /// The recovery stopped.
    #[error(transparent)]
    Recover(#[from] recovery::RecoverError),
}

impl Cli {
    /// Runs the command. The wall clock is read here only (timestamps of file names and of the
    /// redeployment reason).
    pub fn run(self) -> Result<(), Error> {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        #[allow(clippy::disallowed_methods)] // the entry point reads the clock
        let now = jiff::Timestamp::now();
        match self.command {
            Command::Backup(a) => a
                .run(now.strftime("%Y-%m-%d_%H%M%S").to_string())
                .map(drop)?,
            Command::Recover(a) => a.run(&now.to_string()).map(drop)?,
        }
        Ok(())
    }
}
