//! `talm-agent recover`: flags (each with an env fallback) and console messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Mode, Outcome, RecoverConfig, Reporter};
use crate::backup::Host;
use crate::host::disk::RealDisk;
use crate::host::exec::RealRunner;
use crate::host::root::HostRoot;

/// `talm-agent recover`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecoverArgs {
    /// The node's `/`.
    #[arg(long, env = "TALM_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// The recovery directory (a host path).
    #[arg(long, env = "TALM_RECOVERY_DIR", default_value = "/var/recovery")]
    pub dir: PathBuf,
    /// Continue a recovery from its journal (after the reboot between stages, or a failure).
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Clear the journal and start over.
    #[arg(long)]
    pub restart: bool,
    /// Run only the next stage.
    #[arg(long)]
    pub step: bool,
    /// Restore the files even without a pinned pre-upgrade deployment, and restore an archive
    /// below its sanity floor (fewer than half the entries or bytes the backup recorded).
    #[arg(long)]
    pub force: bool,
    /// With a --host-root other than `/`: carry the recovery out anyway, running the node
    /// commands (systemctl, crictl, crio, oc, ostree, rpm-ostree, cluster-restore.sh) on this
    /// machine and restoring the files under the host root. Without it such a run is a dry run.
    #[arg(long)]
    pub force_host_root: bool,
    /// Only check the backup and print what would be done (every command and file step);
    /// run and change nothing.
    #[arg(long, conflicts_with = "force_host_root")]
    pub dry_run: bool,
    /// kubeconfig for `oc`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run as `talm-recover.service` does for the rollback watchdog: resume from the journal,
    /// no prompts, run `systemctl reboot` where a person would be asked to, and record the
    /// outcome (`recovery.outcome.json`) for the agent. Refused unless the watchdog armed the
    /// node (`recovery.unattended` in the recovery directory); never a dry run.
    #[arg(long, conflicts_with_all = ["restart", "step", "force", "dry_run"])]
    pub unattended: bool,
    /// How long each wait (containers, revisions) may take, in seconds.
    #[arg(long, env = "TALM_RECOVERY_WAIT_SECONDS", default_value_t = 1200)]
    pub wait_seconds: u64,
}

impl RecoverArgs {
    /// The configuration these flags describe, on the real host.
    pub fn config(&self, timestamp: &str) -> RecoverConfig {
        RecoverConfig {
            host: Host {
                root: HostRoot::new(&self.host_root),
                runner: Arc::new(RealRunner::new()),
                disk: Arc::new(RealDisk),
            },
            dir: self.dir.clone(),
            mode: if self.restart {
                Mode::Restart
            } else if self.resume {
                Mode::Resume
            } else {
                Mode::Start
            },
            single_stage: self.step,
            force: self.force,
            force_host_root: self.force_host_root,
            dry_run: self.dry_run,
            kubeconfig: self.kubeconfig.clone(),
            poll: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(self.wait_seconds),
            redeploy_reason: format!("recovery-{timestamp}"),
        }
    }

    /// Runs the recovery, printing its messages.
    pub fn run(&self, timestamp: &str) -> Result<Outcome, super::unattended::UnattendedRunError> {
        if self.unattended {
            super::unattended::run(&self.config(timestamp), &Console)
        } else {
            Ok(super::run(&self.config(timestamp), &Console)?)
        }
    }
}

/// Prints messages as `##### <msg>` lines on stdout and logs them.
#[derive(Debug)]
struct Console;

impl Reporter for Console {
    fn say(&self, msg: &str) {
        println!("##### {msg}");
        tracing::info!(target: "talm_agent::recovery", "{msg}");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn unattended_takes_no_flag_that_changes_what_it_does() {
        let ok = crate::Cli::try_parse_from(["talm-agent", "recover", "--resume", "--unattended"]);
        assert!(ok.is_ok(), "{:?}", ok.err());
        for bad in ["--restart", "--step", "--force", "--dry-run"] {
            let e = crate::Cli::try_parse_from(["talm-agent", "recover", "--unattended", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot be used with"), "{bad}: {e}");
        }
    }
}
