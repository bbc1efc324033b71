//! On-node recovery after a failed upgrade (`talm-agent recover`), following TALM's
//! `upgrade-recovery.sh` stages, with a journal of finished steps.
//!
//! 0. Where it runs: the node commands (systemctl, crictl, crio, oc, ostree, rpm-ostree,
//!    `/usr/local/bin/cluster-restore.sh`) always act on the machine the agent runs on, while
//!    the files are taken under the host root. So with a host root other than `/` (or with
//!    `--dry-run`) a run is a dry run ([`RecoverConfig::dry_run`]): after the preflight it prints
//!    each command and each destructive file step it would carry out, and runs and changes
//!    nothing (not even the journal), unless `--force-host-root` says the split is intended.
//! 1. Preflight, every run, before anything changes: the backup is complete and every artifact
//!    matches the manifest; every archive passes a complete dry run of its restore (no absolute
//!    names, no `..`, no links out of the host root, not truncated, the layout its step expects,
//!    not empty where the live tree is not, not below the sanity floor: at least half the
//!    entries and half the bytes of file data the backup recorded for its tree, unless
//!    `--force`); every destination is resolved inside the host root
//!    as the host resolves it ([`crate::host::root::resolve_in_root`]: `/usr/local` is
//!    `/var/usrlocal` on RHCOS; nothing outside the root, no dangling link) to a place of its
//!    own ([`destination`]), and the archive's entries are written below it through real
//!    directories only (the extras, host paths, are each resolved the same way).
//! 2. OS: from `ostree admin status`, roll back to the pinned deployment (reboots), or say that
//!    none is needed. Without a pinned deployment, stop unless `--force`.
//! 3. `restore_files`: stop kubelet and the pods, wipe CRI-O, restore `/usr/local`, `/etc`
//!    (mirrored, minus the exclusions) and the extras; then ask for a reboot.
//! 4. `restore_cluster` (after the reboot, `--resume`): restore `/var/lib/kubelet`, restore etcd
//!    with `cluster-restore.sh`, restart the services, wait for the control-plane containers.
//! 5. `post_restore`: force a redeployment of etcd and the control-plane operators, wait for the
//!    new revisions, report.
//!
//! Every step is recorded in the journal once finished; a rerun skips finished steps, so a
//! kill or a failure anywhere resumes where it stopped. Every message says what to do next.

pub mod cli;
pub mod journal;
mod preflight;
pub mod unattended;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backup::layout::{CLUSTER_DIR, CURRENT};
use crate::backup::manifest::{self, Manifest, VerifyError};
use crate::backup::{Host, RECOVERY_JOURNAL};
use crate::host::archive::{self, ArchiveError, RestoreOptions};
use crate::host::exec::{Cmd, ExecError};
use crate::host::ostree::{Ostree, OstreeError, RollbackPlan};
use journal::{Journal, JournalError};
use preflight::{destination, preflight};

/// How this run relates to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new recovery; refused if one has started.
    Start,
    /// Continue from the journal (`--resume`).
    Resume,
    /// Clear the journal and start over (`--restart`).
    Restart,
}

/// Everything a recovery needs.
#[derive(Clone, Debug)]
pub struct RecoverConfig {
    /// The host.
    pub host: Host,
    /// The recovery directory (host path).
    pub dir: PathBuf,
    /// Start, resume or restart.
    pub mode: Mode,
    /// Run one stage, then stop (`--step`).
    pub single_stage: bool,
    /// Restore the files even without a pinned pre-upgrade deployment, and restore an archive
    /// below its sanity floor (`--force`).
    pub force: bool,
    /// Carry the run out although the host root is not `/` (`--force-host-root`): the node
    /// commands then run on this machine, the files are restored under the host root.
    pub force_host_root: bool,
    /// Only print what would be done (`--dry-run`); implied by a host root other than `/`
    /// without `force_host_root`.
    pub dry_run: bool,
    /// The kubeconfig for `oc` (host path), passed as `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Poll interval of the waits.
    pub poll: Duration,
    /// How long each wait may take (TALM: 1200 s).
    pub wait_timeout: Duration,
    /// `spec.forceRedeploymentReason` for the operators (`recovery-<timestamp>`).
    pub redeploy_reason: String,
}

/// Receives recovery messages.
pub trait Reporter: Sync {
    /// A message for the operator.
    fn say(&self, msg: &str);
    /// Called after each finished (journaled) step; `false` stops the run there as if it had
    /// been killed (fault injection in tests).
    fn proceed(&self, _step: &str) -> bool {
        true
    }
}

/// How a run ended (successfully).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What the operator does next.
    pub next: String,
    /// The whole recovery is complete.
    pub finished: bool,
    /// The run stopped for a reboot that nobody has started yet (stage 1 done): a person
    /// runs `systemctl reboot`, `recover --unattended` runs it itself. (After the OS rollback
    /// `rpm-ostree rollback -r` reboots by itself, so this is false there.)
    pub reboot: bool,
}

/// Why a recovery run stopped. Each message ends with what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A recovery has started and neither `--resume`, `--step` nor `--restart` was given.
    #[error(
        "Restore has already started (last finished step: {last}). Use --resume to continue, --step to run only the next stage, or --restart to start over"
    )]
    AlreadyStarted {
        /// The last finished step.
        last: String,
    },
    /// The backup is missing, incomplete or corrupt.
    #[error("{0}. Recovery cannot use this backup")]
    Backup(#[from] VerifyError),
    /// An archive of the backup fails its dry run (damaged, hostile, or not what its step
    /// expects). Found by the preflight: nothing was changed.
    #[error(
        "backup archive {name}: {reason}. Recovery cannot use this backup; nothing was changed"
    )]
    Archive {
        /// The artifact (relative to the backup directory).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A destination cannot be restored into: a link on the way to it leads to nothing inside
    /// the host root, it resolves to the root or overlaps another restored tree or the recovery
    /// directory, a directory on the way to it or to one of its entries is not a directory (or,
    /// below the destination, is a symlink). Found by the preflight: nothing was changed.
    #[error(
        "destination {dest}: {reason}. Put the real directory in its place, then run the same command again; nothing was changed"
    )]
    Destination {
        /// The host directory restored into.
        dest: String,
        /// What is wrong.
        reason: String,
    },
    /// The OS cannot be brought back to the pre-upgrade deployment.
    #[error("{0}. Use --force to restore the files anyway")]
    NotPinned(String),
    /// ostree failed.
    #[error("ostree: {0}; fix it, then run `talm-agent recover --resume`")]
    Ostree(#[from] OstreeError),
    /// Stage 1 finished but the node has not rebooted.
    #[error(
        "the files are restored but the node has not rebooted since; run `systemctl reboot`, then `talm-agent recover --resume`"
    )]
    NotRebooted,
    /// A step failed.
    #[error(
        "step {step} failed: {reason}; fix the cause, then run `talm-agent recover --resume` to retry from this step"
    )]
    Step {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// A mirrored tree's archive is far below what the backup recorded for it (fewer than half
    /// its entries, or less than half its bytes of file data): restoring it would delete most
    /// of the live tree. Found by the preflight: nothing was changed.
    #[error(
        "backup archive {name} holds {entries} entries and {bytes} bytes of file data, but the backup recorded {recorded_entries} entries and {recorded_bytes} bytes for {dir} when it was taken: below the sanity floor (half of either), so restoring it would delete most of {dir}. Take a new backup, or use --force to restore this archive anyway; nothing was changed"
    )]
    BelowFloor {
        /// The artifact.
        name: String,
        /// The host directory it restores.
        dir: String,
        /// Entries in the archive now.
        entries: u64,
        /// Bytes of file data in the archive now.
        bytes: u64,
        /// Entries recorded in the manifest.
        recorded_entries: u64,
        /// Bytes recorded in the manifest.
        recorded_bytes: u64,
    },
    /// Stopped after a step (fault injection).
    #[error("stopped after step {0}; run `talm-agent recover --resume` to continue")]
    Stopped(String),
}

/// The stages and their steps, in order.
pub const STAGES: [(&str, &[&str]); 3] = [
    (
        "restore_files",
        &[
            "status",
            "setenforce-0",
            "stop-kubelet",
            "remove-pods",
            "stop-crio",
            "wipe-crio",
            "restore-usr-local",
            "restore-etc",
            "restore-extras",
            "daemon-reload",
            "disable-kubelet",
            "setenforce-1",
        ],
    ),
    (
        "restore_cluster",
        &[
            "setenforce-0",
            "restore-kubelet",
            "start-crio",
            "record-containers",
            "cluster-restore",
            "restart-kubelet",
            "enable-kubelet",
            "restart-crio",
            "wait-containers",
            "setenforce-1",
        ],
    ),
    (
        "post_restore",
        &[
            "record-revisions",
            "force-redeploy",
            "wait-revisions",
            "status",
        ],
    ),
];

/// The control-plane containers that must come back after the etcd restore.
pub const CONTAINERS: [&str; 5] = [
    "etcd",
    "etcd-operator",
    "kube-apiserver-operator",
    "kube-controller-manager-operator",
    "kube-scheduler-operator-container",
];
/// The operators whose redeployment is forced.
pub const OPERATORS: [&str; 4] = [
    "etcd",
    "kubeapiserver",
    "kubecontrollermanager",
    "kubescheduler",
];

/// The restores: step, archive base name, host directory, mirrored (what the archive does not
/// hold is deleted).
const RESTORES: [(&str, &str, &str, bool); 4] = [
    ("restore-usr-local", "local", "/usr/local", true),
    ("restore-etc", "etc", "/etc", true),
    ("restore-extras", "extras", "/", false),
    ("restore-kubelet", "kubelet", "/var/lib/kubelet", true),
];
/// The static-pod resources tarball (restored by `cluster-restore.sh` into `/etc/kubernetes`)
/// and the etcd snapshot, by name prefix.
const STATIC_PODS_ARCHIVE: &str = "cluster/static_kuberesources_";
const STATIC_PODS_TOP: &str = "static-pod-resources";
const STATIC_PODS_DEST: &str = "/etc/kubernetes";
const SNAPSHOT: &str = "cluster/snapshot_";

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const OS_STEP: &str = "os/rollback";

struct Run<'a> {
    cfg: &'a RecoverConfig,
    /// Print what would be done; run and change nothing.
    dry: bool,
    rep: &'a dyn Reporter,
    journal: Journal,
    journal_path: PathBuf,
    backup: PathBuf,
    manifest: Manifest,
    /// The `/etc` exclusions of the backup (kept on disk by the `/etc` mirror).
    exclusions: Vec<String>,
    /// Entries of each restore's archive, by archive base name (for the dry run's plan).
    entries: Vec<(&'static str, usize)>,
}

/// Why this run is a dry run, if it is one: `--dry-run`, or a host root other than `/` without
/// `--force-host-root` (the node commands would act on this machine, not on that root).
pub(crate) fn dry_run_reason(cfg: &RecoverConfig) -> Option<String> {
    if cfg.dry_run {
        Some("--dry-run given".into())
    } else if !cfg.force_host_root && !cfg.host.root.is_slash() {
        Some(format!(
            "--host-root {} is not /, and the node commands (systemctl, crictl, crio, oc, ostree, rpm-ostree, cluster-restore.sh) would act on this machine, not on it",
            cfg.host.root.path().display()
        ))
    } else {
        None
    }
}

/// Runs (or resumes) the recovery.
pub fn run(cfg: &RecoverConfig, rep: &dyn Reporter) -> Result<Outcome, RecoverError> {
    let dir = cfg.host.root.join(&cfg.dir);
    let journal_path = dir.join(RECOVERY_JOURNAL);
    let dry = dry_run_reason(cfg);
    if let Some(why) = &dry {
        rep.say(&format!(
            "dry run ({why}): checking the backup, then printing what would be done; nothing is run or changed"
        ));
    }
    let mut journal = match (cfg.mode, Journal::load(&journal_path)) {
        (Mode::Restart, Err(e)) if dry.is_some() => {
            rep.say(&format!(
                "[dry run] --restart: the recovery journal {} is unreadable ({}); would move it aside for diagnosis and start over",
                journal_path.display(),
                e.reason
            ));
            None
        }
        (Mode::Restart, Err(e)) => {
            // Whatever it holds: kept for diagnosis, out of the way.
            let kept = Journal::set_aside(&journal_path)?;
            rep.say(&format!(
                "--restart: the recovery journal {} is unreadable ({}); moved it to {} for diagnosis; starting over",
                journal_path.display(),
                e.reason,
                kept.display()
            ));
            None
        }
        (_, loaded) => loaded?.filter(|j| !j.finished),
    };
    match (cfg.mode, &journal) {
        (Mode::Restart, _) => {
            if journal.is_some() {
                rep.say("--restart: clearing the recovery journal; starting over");
            }
            journal = None;
        }
        (Mode::Start, Some(j)) if !cfg.single_stage && !j.done.is_empty() => {
            return Err(RecoverError::AlreadyStarted {
                last: j.done.last().cloned().unwrap_or_default(),
            });
        }
        _ => {}
    }
    let journal = journal.unwrap_or(Journal {
        format: 1,
        ..Journal::default()
    });
    let backup = dir.join(CURRENT);
    rep.say(&format!(
        "checking the backup in {} against its manifest",
        backup.display()
    ));
    let manifest = manifest::verify(&backup)?;
    rep.say(&format!(
        "backup of {} verified ({} artifacts)",
        manifest.created,
        manifest.artifacts.len(),
    ));
    rep.say("checking every archive (a dry run of its restore) and every destination");
    let checked = preflight(cfg, rep, &backup, &manifest)?;
    rep.say("archives and destinations checked");
    let mut r = Run {
        cfg,
        dry: dry.is_some(),
        rep,
        journal,
        journal_path,
        backup,
        manifest,
        exclusions: checked.exclusions,
        entries: checked.entries,
    };
    if r.dry {
        return r.plan();
    }
    r.journal.save(&r.journal_path)?;

    if !r.journal.is_done(OS_STEP) {
        if let Some(outcome) = r.os_rollback()? {
            return Ok(outcome);
        }
        r.finish_step(OS_STEP)?;
    }

    for (si, (stage, steps)) in STAGES.iter().enumerate() {
        let all_done = steps
            .iter()
            .all(|s| r.journal.is_done(&format!("{stage}/{s}")));
        if all_done {
            continue;
        }
        if si == 1 {
            r.check_rebooted()?;
        }
        rep.say(&format!("stage {}: {stage}", si + 1));
        for step in steps.iter() {
            let key = format!("{stage}/{step}");
            if r.journal.is_done(&key) {
                continue;
            }
            r.step(stage, step)?;
            r.finish_step(&key)?;
        }
        match si {
            0 => {
                let next = "Please reboot now with 'systemctl reboot', then run 'talm-agent recover --resume'".to_owned();
                rep.say(&next);
                return Ok(Outcome {
                    next,
                    finished: false,
                    reboot: true,
                });
            }
            1 if cfg.single_stage => {
                let next = "stage 2 done; run 'talm-agent recover --step' (or --resume) for the post-restore stage".to_owned();
                rep.say(&next);
                return Ok(Outcome {
                    next,
                    finished: false,
                    reboot: false,
                });
            }
            _ => {}
        }
    }
    r.journal.finished = true;
    r.journal.save(&r.journal_path)?;
    let next = "Recovery complete. Check `oc get co` and `oc get nodes`; the node runs its pre-upgrade state".to_owned();
    rep.say(&next);
    Ok(Outcome {
        next,
        finished: true,
        reboot: false,
    })
}

impl Run<'_> {
    /// The dry run: what the remaining steps would do, each command and each file step, in
    /// order; nothing is run, written or deleted (the journal neither).
    fn plan(&mut self) -> Result<Outcome, RecoverError> {
        if !self.journal.is_done(OS_STEP) {
            self.rep.say(&format!(
                "[dry run] OS rollback: would run `ostree admin status` on {} and, unless the running deployment is the pinned pre-upgrade one, undeploy the newer deployments with `ostree admin undeploy` and run `rpm-ostree rollback -r` (the node reboots); {}",
                self.cfg.host.root.join("/sysroot").display(),
                if self.cfg.force {
                    "with no pinned deployment, --force restores the files only"
                } else {
                    "with no pinned deployment, it would stop there (--force restores the files only)"
                }
            ));
        }
        for (si, (stage, steps)) in STAGES.iter().enumerate() {
            let key = |s: &str| format!("{stage}/{s}");
            if steps.iter().all(|s| self.journal.is_done(&key(s))) {
                continue;
            }
            if si == 1 {
                self.rep.say(
                    "[dry run] would check that the node has rebooted since stage 1 (its boot id)",
                );
            }
            self.rep
                .say(&format!("[dry run] stage {}: {stage}", si + 1));
            for step in steps.iter() {
                if !self.journal.is_done(&key(step)) {
                    self.step(stage, step)?;
                }
            }
            if si == 0 {
                self.rep.say("[dry run] would stop here and ask for a reboot (`systemctl reboot`); `talm-agent recover --resume` then runs stage 2");
            }
        }
        let next = format!(
            "Dry run: nothing was run or changed. On the node itself, run it with --host-root /; to run the node commands on this machine against the files under {}, add --force-host-root",
            self.cfg.host.root.path().display()
        );
        self.rep.say(&next);
        Ok(Outcome {
            next,
            finished: false,
            reboot: false,
        })
    }

    /// Prints a command the dry run would run.
    fn would_run(&self, cmd: &Cmd) {
        let env: String = cmd.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        self.rep
            .say(&format!("[dry run] would run: {env}{}", cmd.display()));
    }

    fn finish_step(&mut self, key: &str) -> Result<(), RecoverError> {
        self.journal.done.push(key.to_owned());
        if key.starts_with("restore_files/")
            && let Some(id) = self.boot_id()
        {
            // Saved with the step: stage 2 must not start in the boot that ran stage 1.
            self.journal.notes.insert("boot_id".into(), id);
        }
        self.journal.save(&self.journal_path)?;
        if self.rep.proceed(key) {
            Ok(())
        } else {
            Err(RecoverError::Stopped(key.to_owned()))
        }
    }

    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string(self.cfg.host.root.join(BOOT_ID))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    fn check_rebooted(&self) -> Result<(), RecoverError> {
        match (self.journal.notes.get("boot_id"), self.boot_id()) {
            (Some(before), Some(now)) if *before == now => Err(RecoverError::NotRebooted),
            _ => Ok(()),
        }
    }

    fn os_rollback(&mut self) -> Result<Option<Outcome>, RecoverError> {
        let ostree = Ostree::new(
            self.cfg.host.runner.as_ref(),
            self.cfg.host.root.join("/sysroot"),
        );
        let status = ostree.status()?;
        match status.rollback_plan() {
            RollbackPlan::NoneNeeded => {
                self.rep.say("OS rollback: none needed (the running deployment is the pinned pre-upgrade one)");
                Ok(None)
            }
            RollbackPlan::Rollback { undeploy, target } => {
                for i in undeploy {
                    self.rep.say(&format!("OS rollback: undeploying deployment {i}"));
                    ostree.undeploy(i)?;
                }
                self.rep.say(&format!(
                    "OS rollback: rolling back to the pinned deployment {target}; the node reboots"
                ));
                self.cmd("os/rollback", Cmd::new("rpm-ostree").args(["rollback", "-r"]))?;
                self.journal.done.push(OS_STEP.into());
                self.journal.save(&self.journal_path)?;
                let next = format!(
                    "The node is rebooting into the pre-upgrade OS ({target}); when it is back, run 'talm-agent recover --resume'"
                );
                self.rep.say(&next);
                Ok(Some(Outcome {
                    next,
                    finished: false,
                    reboot: false,
                }))
            }
            RollbackPlan::NoPinned | RollbackPlan::NoDeployments if self.cfg.force => {
                self.rep.say("OS rollback: no pinned deployment; --force given, restoring the files only");
                Ok(None)
            }
            RollbackPlan::NoPinned => Err(RecoverError::NotPinned(
                "the running deployment is not pinned and no deployment is, so the pre-upgrade OS is gone".into(),
            )),
            RollbackPlan::NoDeployments => Err(RecoverError::NotPinned(
                "`ostree admin status` lists no deployments".into(),
            )),
        }
    }

    fn cmd(&self, step: &str, cmd: Cmd) -> Result<crate::host::exec::Output, RecoverError> {
        let cmd = match &self.cfg.kubeconfig {
            Some(k) if cmd.program == "oc" && !cmd.env.iter().any(|(n, _)| n == "KUBECONFIG") => {
                cmd.env("KUBECONFIG", k.display().to_string())
            }
            _ => cmd,
        };
        if self.dry {
            self.would_run(&cmd);
            return Ok(crate::host::exec::Output::ok(""));
        }
        self.cfg
            .host
            .runner
            .run(&cmd)
            .map_err(|e| step_err(step, &e))
    }

    /// A command whose failure is only worth a warning (status printing, setenforce).
    fn soft(&self, cmd: Cmd) {
        if self.dry {
            return self.would_run(&cmd);
        }
        match self.cfg.host.runner.run(&cmd) {
            Ok(out) => {
                let text = out.stdout_text();
                if !text.trim().is_empty() {
                    self.rep.say(text.trim_end());
                }
            }
            Err(e) => self.rep.say(&format!("warning: {e}")),
        }
    }

    fn oc(&self, args: &[&str]) -> Cmd {
        let c = Cmd::new("oc").args(args.iter().copied());
        match &self.cfg.kubeconfig {
            Some(k) => c.env("KUBECONFIG", k.display().to_string()),
            None => c,
        }
    }

    fn print_status(&self) {
        for args in [
            &["adm", "upgrade"][..],
            &["get", "co"],
            &["get", "nodes", "-o", "wide"],
            &["get", "mcp"],
        ] {
            self.soft(self.oc(args));
        }
    }

    fn artifact(&self, base: &str) -> Result<PathBuf, RecoverError> {
        self.manifest
            .artifacts
            .iter()
            .find(|a| a.name.starts_with(&format!("{base}.tar")))
            .map(|a| self.backup.join(&a.name))
            .ok_or_else(|| RecoverError::Step {
                step: format!("restore {base}"),
                reason: format!("the manifest lists no {base} archive"),
            })
    }

    fn restore(
        &self,
        step: &str,
        base: &str,
        host_dir: &str,
        mirror: bool,
    ) -> Result<(), RecoverError> {
        let archive_path = self.artifact(base)?;
        let root = &self.cfg.host.root;
        if self.dry {
            let entries = self
                .entries
                .iter()
                .find(|(b, _)| *b == base)
                .map_or(0, |(_, n)| *n);
            let effect = match (mirror, base) {
                (false, _) => " (each entry at its host path; nothing is deleted)".to_owned(),
                (true, "etc") => format!(
                    ", then delete everything in it the archive does not hold, except the {} /etc exclusions",
                    self.exclusions.len()
                ),
                (true, _) => ", then delete everything in it the archive does not hold".to_owned(),
            };
            let at = if mirror {
                destination(self.cfg, host_dir)
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|e| e.to_string())
            } else {
                root.path().display().to_string()
            };
            self.rep.say(&format!(
                "[dry run] {step}: would restore {} ({entries} entries) into {host_dir} ({at}){effect}",
                archive_path.display()
            ));
            return Ok(());
        }
        // The preflight's rule again (the host may have changed since).
        let dest = if mirror {
            destination(self.cfg, host_dir).map_err(|e| RecoverError::Step {
                step: step.into(),
                reason: match e {
                    RecoverError::Destination { dest, reason } => {
                        format!("destination {dest}: {reason}")
                    }
                    e => e.to_string(),
                },
            })?
        } else {
            root.path().to_owned()
        };
        let exclusions: &[String] = if base == "etc" { &self.exclusions } else { &[] };
        let keep = |rel: &Path| crate::backup::layout::is_excluded(exclusions, rel);
        let opts = RestoreOptions {
            jail: root.path(),
            allow_absolute_symlinks: true,
            mirror_keep: mirror.then_some(&keep as &dyn Fn(&Path) -> bool),
            host_paths: host_dir == "/",
        };
        let stats = archive::restore(&archive_path, &dest, &opts).map_err(|e: ArchiveError| {
            RecoverError::Step {
                step: step.into(),
                reason: e.to_string(),
            }
        })?;
        let resolved = if dest == root.join(host_dir) {
            String::new()
        } else {
            format!(" (resolved to {})", dest.display())
        };
        self.rep.say(&format!(
            "{step}: {} entries restored into {host_dir}{resolved}, {} stale paths removed",
            stats.entries, stats.deleted
        ));
        Ok(())
    }

    fn step(&mut self, stage: &str, step: &str) -> Result<(), RecoverError> {
        let key = format!("{stage}/{step}");
        let systemctl = |args: &[&str]| Cmd::new("systemctl").args(args.iter().copied());
        match step {
            "status" => self.print_status(),
            "setenforce-0" => self.soft(Cmd::new("setenforce").arg("0")),
            "setenforce-1" => self.soft(Cmd::new("setenforce").arg("1")),
            "stop-kubelet" => drop(self.cmd(&key, systemctl(&["stop", "kubelet"]))?),
            "remove-pods" => drop(self.cmd(&key, Cmd::new("crictl").args(["rmp", "-fa"]))?),
            "stop-crio" => drop(self.cmd(&key, systemctl(&["stop", "crio"]))?),
            "wipe-crio" => drop(self.cmd(&key, Cmd::new("crio").args(["wipe", "-f"]))?),
            "restore-usr-local" | "restore-etc" | "restore-extras" | "restore-kubelet" => {
                let (_, base, host_dir, mirror) = RESTORES
                    .into_iter()
                    .find(|r| r.0 == step)
                    .ok_or_else(|| RecoverError::Step {
                        step: key.clone(),
                        reason: "no such restore".into(),
                    })?;
                self.restore(&key, base, host_dir, mirror)?;
            }
            "daemon-reload" => drop(self.cmd(&key, systemctl(&["daemon-reload"]))?),
            "disable-kubelet" => drop(self.cmd(&key, systemctl(&["disable", "kubelet"]))?),
            "start-crio" if self.dry => self.rep.say(
                "[dry run] would run: systemctl is-active --quiet crio, then systemctl start crio if it is not active",
            ),
            "start-crio" => {
                let active = self
                    .cfg
                    .host
                    .runner
                    .output(&systemctl(&["is-active", "--quiet", "crio"]))
                    .is_ok_and(|o| o.success());
                if !active {
                    self.cmd(&key, systemctl(&["start", "crio"]))?;
                }
            }
            "record-containers" => {
                for name in CONTAINERS {
                    let out = self.cmd(&key, crictl_ps(name, false))?;
                    let id = first_line(&out.stdout_text());
                    self.journal.notes.insert(format!("container/{name}"), id);
                }
            }
            "cluster-restore" => {
                let dir = self.cfg.dir.join(CURRENT).join(CLUSTER_DIR);
                self.cmd(
                    &key,
                    Cmd::new("/usr/local/bin/cluster-restore.sh")
                        .arg(dir)
                        .timeout(Some(Duration::from_secs(1800))),
                )?;
            }
            "restart-kubelet" => drop(self.cmd(&key, systemctl(&["restart", "kubelet"]))?),
            "enable-kubelet" => drop(self.cmd(&key, systemctl(&["enable", "kubelet"]))?),
            "restart-crio" => drop(self.cmd(&key, systemctl(&["restart", "crio"]))?),
            "wait-containers" => {
                for name in CONTAINERS {
                    let before = self
                        .journal
                        .notes
                        .get(&format!("container/{name}"))
                        .cloned()
                        .unwrap_or_default();
                    self.rep
                        .say(&format!("waiting for a new running {name} container"));
                    self.wait(&key, &format!("a new running {name} container"), || {
                        let out = self.cfg.host.runner.run(&crictl_ps(name, true)).ok()?;
                        let id = first_line(&out.stdout_text());
                        (!id.is_empty() && id != before).then_some(())
                    })?;
                }
            }
            "record-revisions" => {
                for op in OPERATORS {
                    let out = self.cmd(
                        &key,
                        self.oc(&[
                            "get",
                            op,
                            "cluster",
                            "-o",
                            "jsonpath={.status.latestAvailableRevision}",
                        ]),
                    )?;
                    let rev = out.stdout_text().trim().to_owned();
                    self.journal.notes.insert(format!("revision/{op}"), rev);
                }
            }
            "force-redeploy" => {
                let patch = serde_json::json!({"spec": {"forceRedeploymentReason": self.cfg.redeploy_reason}}).to_string();
                for op in OPERATORS {
                    self.cmd(
                        &key,
                        self.oc(&["patch", op, "cluster", "--type=merge", "-p", &patch]),
                    )?;
                }
            }
            "wait-revisions" => {
                for op in OPERATORS {
                    let before: i64 = self
                        .journal
                        .notes
                        .get(&format!("revision/{op}"))
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                    self.rep.say(&format!(
                        "waiting for {op} to roll out revision {}",
                        before + 1
                    ));
                    self.wait(&key, &format!("{op} revision {}", before + 1), || {
                        let out = self
                            .cfg
                            .host
                            .runner
                            .run(&self.oc(&[
                                "get",
                                op,
                                "cluster",
                                "-o",
                                "jsonpath={.status.nodeStatuses[0].currentRevision}",
                            ]))
                            .ok()?;
                        let cur: i64 = out.stdout_text().trim().parse().ok()?;
                        (cur > before).then_some(())
                    })?;
                }
            }
            other => {
                return Err(RecoverError::Step {
                    step: key.clone(),
                    reason: format!("unknown step {other}"),
                });
            }
        }
        Ok(())
    }

    fn wait(
        &self,
        step: &str,
        what: &str,
        mut ready: impl FnMut() -> Option<()>,
    ) -> Result<(), RecoverError> {
        if self.dry {
            self.rep.say(&format!(
                "[dry run] would wait up to {:?} for {what}",
                self.cfg.wait_timeout
            ));
            return Ok(());
        }
        let start = Instant::now();
        loop {
            if ready().is_some() {
                return Ok(());
            }
            if start.elapsed() >= self.cfg.wait_timeout {
                return Err(RecoverError::Step {
                    step: step.into(),
                    reason: format!(
                        "{what} did not appear within {:?} (check `crictl ps -a` and `oc get co`)",
                        self.cfg.wait_timeout
                    ),
                });
            }
            std::thread::sleep(self.cfg.poll);
        }
    }
}

fn crictl_ps(name: &str, running: bool) -> Cmd {
    let c = Cmd::new("crictl").args(["ps", "-a", "--name", &format!("^{name}$"), "-q"]);
    if running {
        c.args(["--state", "running"])
    } else {
        c
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

fn step_err(step: &str, e: &ExecError) -> RecoverError {
    RecoverError::Step {
        step: step.into(),
        reason: e.to_string(),
    }
}
