//! The pre-upgrade backup (`talm-agent backup`, or the hub's backup task through [`run`]).
//!
//! Steps, each reported to a [`Progress`]: checks (no recovery in progress, the directory
//! exists, enough space) → ostree (drop standbys, pin the current deployment) → etcd snapshot
//! (native, verified) → static-pod resources of the latest revisions → `/etc` (minus the
//! exclusions), `/usr/local`, `/var/lib/kubelet` → extras (MachineConfig files elsewhere) →
//! manifest (with each tree's entry count and data size, the floor `recover` checks) →
//! completion marker → swap with the previous backup.
//!
//! The new backup is built in `<dir>/backup.new`; the previous one (`<dir>/backup`) is replaced
//! only once the new one is complete (an atomic directory exchange), so a failure at any point,
//! a kill or a full disk leaves the previous backup as it was. A run always starts over (a
//! snapshot and the files must be taken together), removing what a killed run left behind.

pub mod cli;
pub mod layout;
pub mod manifest;
pub mod task;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use talm_shared::task_state::TaskState;

use crate::host::archive::{
    ArchiveError, ArchiveWriter, Compression, FileDigest, Stop, digest_file,
};
use crate::host::disk::Disk;
use crate::host::etcd::{self, EtcdConfig, EtcdError};
use crate::host::exec::CommandRunner;
use crate::host::ostree::{Ostree, OstreeError};
use crate::host::root::{HostRoot, InRootError, remove_tree};
use crate::recovery::journal::{Journal, JournalError};
use layout::{CLUSTER_DIR, CURRENT, ETC_EXCLUDE, MANIFEST, MARKER, STAGING};
use manifest::{Artifact, Manifest, Marker, TreeCount};
use talm_shared::fsutil::{atomic_write, fsync_dir};

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// The host the agent works on: its root and the seams to it.
#[derive(Clone, Debug)]
pub struct Host {
    /// The node's `/`.
    pub root: HostRoot,
    /// Runs system commands.
    pub runner: Arc<dyn CommandRunner>,
    /// Disk queries.
    pub disk: Arc<dyn Disk>,
}

/// etcd access, with host paths (joined to the host root when used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdAccess {
    /// Endpoints, tried in order.
    pub endpoints: Vec<String>,
    /// Server CA bundle (host path).
    pub ca: Option<PathBuf>,
    /// Client certificate (host path).
    pub cert: Option<PathBuf>,
    /// Client key (host path).
    pub key: Option<PathBuf>,
}

/// Everything a backup needs.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// The host.
    pub host: Host,
    /// The recovery directory (host path, normally `/var/recovery`).
    pub dir: PathBuf,
    /// Free space required beyond the estimate (TALM: 10 GiB).
    pub margin: u64,
    /// The local etcd member.
    pub etcd: EtcdAccess,
    /// Compression of the directory archives.
    pub compression: Compression,
    /// Give up (with [`BackupError::Deadline`]) at this instant.
    pub deadline: Option<Instant>,
    /// The backup's timestamp (file names and manifest), e.g. `2026-11-25_204512`.
    pub timestamp: String,
}

/// A backup step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Preconditions.
    Checks,
    /// Drop standby deployments, pin the current one.
    Ostree,
    /// The etcd snapshot.
    Etcd,
    /// Static-pod resources.
    StaticPods,
    /// `/etc`, `/usr/local`, `/var/lib/kubelet`.
    Trees,
    /// MachineConfig files elsewhere.
    Extras,
    /// Manifest and marker.
    Seal,
    /// Replace the previous backup.
    Commit,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 8] = [
        Step::Checks,
        Step::Ostree,
        Step::Etcd,
        Step::StaticPods,
        Step::Trees,
        Step::Extras,
        Step::Seal,
        Step::Commit,
    ];

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Step::Checks => "checks",
            Step::Ostree => "ostree",
            Step::Etcd => "etcd snapshot",
            Step::StaticPods => "static pod resources",
            Step::Trees => "/etc, /usr/local, /var/lib/kubelet",
            Step::Extras => "extras",
            Step::Seal => "manifest",
            Step::Commit => "commit",
        }
    }
}

/// Receives the backup's progress. Implementations: a progress bar on a TTY, log lines, the
/// hub task reporter.
pub trait Progress: Sync {
    /// A step starts.
    fn step(&self, step: Step);
    /// The estimated total bytes to read (after the checks).
    fn total(&self, _bytes: u64) {}
    /// Bytes read so far increased by `n`.
    fn advance(&self, _n: u64) {}
    /// Something the operator should know (the backup continues).
    fn warn(&self, msg: &str);
    /// Called after each step finished; returning `false` stops the backup there as if it had
    /// been killed (the hub's cancel, and fault injection in tests).
    fn proceed(&self, _after: Step) -> bool {
        true
    }
}

/// What a successful backup produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup directory (under the host root).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Total bytes of the artifacts.
    pub bytes: u64,
    /// Warnings given along the way.
    pub warnings: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why a backup failed. The previous backup is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A recovery is in progress.
    #[error(
        "a recovery is in progress ({journal}); finish it with `talm-agent recover --resume` (or clear it with `talm-agent recover --restart`) before taking a backup"
    )]
    RecoveryInProgress {
        /// The recovery journal.
        journal: PathBuf,
    },
    /// The recovery journal cannot be read: a recovery may be under way.
    #[error("whether a recovery is in progress is unknown, so no backup is taken: {0}")]
    RecoveryJournal(#[from] JournalError),
    /// The recovery directory does not exist.
    #[error(
        "the recovery directory {dir} does not exist; create it (ideally a dedicated partition mounted there) and run the backup again"
    )]
    NoDir {
        /// The directory.
        dir: PathBuf,
    },
    /// Not enough free space.
    #[error(
        "insufficient disk space to trigger backup: {dir} has {free} bytes free, the backup needs {estimate} bytes plus a {margin}-byte margin; free space or mount a larger recovery partition there"
    )]
    NoSpace {
        /// The directory.
        dir: PathBuf,
        /// Free bytes.
        free: u64,
        /// The estimate.
        estimate: u64,
        /// The margin.
        margin: u64,
    },
    /// ostree failed.
    #[error("ostree: {0}; the backup was not taken")]
    Ostree(#[from] OstreeError),
    /// The etcd snapshot failed.
    #[error("{0}; the backup was not taken")]
    Etcd(#[from] EtcdError),
    /// Writing an archive failed.
    #[error("archiving {what}: {source}{}", if is_enospc(source) { "; the disk is full: the previous backup is intact; free space in the recovery directory and run the backup again" } else { "" })]
    Archive {
        /// What was being archived.
        what: String,
        /// The error.
        #[source]
        source: ArchiveError,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}{}", if source.raw_os_error() == Some(28) { "; the disk is full: the previous backup is intact; free space and run the backup again" } else { "" })]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The machine-config-daemon config could not be read.
    #[error("machine config: {0}")]
    MachineConfig(String),
    /// The deadline passed.
    #[error(
        "the backup did not finish before its deadline (step: {step}); the previous backup is intact"
    )]
    Deadline {
        /// The step that was running.
        step: &'static str,
    },
    /// Stopped after a step (cancelled).
    #[error(
        "the backup was stopped after step {step}; the previous backup is intact; run `talm-agent backup` again"
    )]
    Stopped {
        /// The last finished step.
        step: &'static str,
    },
}

fn is_enospc(e: &ArchiveError) -> bool {
    matches!(e, ArchiveError::Io { source, .. } if source.raw_os_error() == Some(28))
}

impl BackupError {
    /// The name of the TALM backup state this failure maps to (`BackupTimeout` or
    /// `UnrecoverableError`).
    pub fn talm_state(&self) -> &'static str {
        match self {
            BackupError::Deadline { .. } => TaskState::BackupTimeout,
            _ => TaskState::UnrecoverableError,
        }
        .as_str()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The recovery journal's name in the recovery directory.
pub const RECOVERY_JOURNAL: &str = "recovery.journal";

/// Whether a recovery journal says a recovery is under way. A journal that cannot be read is
/// an error: whether a recovery is under way is then unknown.
pub fn recovery_in_progress(dir: &Path) -> Result<bool, JournalError> {
    Ok(Journal::load(&dir.join(RECOVERY_JOURNAL))?.is_some_and(|j| !j.finished))
}

struct Ctx<'a> {
    cfg: &'a BackupConfig,
    progress: &'a dyn Progress,
    staging: PathBuf,
    artifacts: Vec<Artifact>,
    warnings: Vec<String>,
    changed: Vec<String>,
    trees: Vec<TreeCount>,
    step: Step,
}

impl Ctx<'_> {
    fn warn(&mut self, msg: String) {
        self.progress.warn(&msg);
        self.warnings.push(msg);
    }

    fn check_deadline(&self) -> Result<(), BackupError> {
        match self.cfg.deadline {
            Some(d) if Instant::now() >= d => Err(BackupError::Deadline {
                step: self.step.name(),
            }),
            _ => Ok(()),
        }
    }

    fn remaining(&self) -> Duration {
        self.cfg.deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    fn record(&mut self, name: String, d: FileDigest) {
        self.artifacts.push(Artifact {
            name,
            size: d.size,
            sha256: d.sha256,
        });
    }

    fn archive_error(&self, what: &str, source: ArchiveError) -> BackupError {
        if matches!(source, ArchiveError::Stopped(_)) {
            BackupError::Deadline {
                step: self.step.name(),
            }
        } else {
            BackupError::Archive {
                what: what.to_owned(),
                source,
            }
        }
    }
}

/// Takes a backup. Blocking (call it from `spawn_blocking` in async code).
pub fn run(cfg: &BackupConfig, progress: &dyn Progress) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let dir = cfg.host.root.join(&cfg.dir);
    let staging = dir.join(STAGING);
    let mut ctx = Ctx {
        cfg,
        progress,
        staging: staging.clone(),
        artifacts: Vec::new(),
        warnings: Vec::new(),
        changed: Vec::new(),
        trees: Vec::new(),
        step: Step::Checks,
    };
    let result = steps(&mut ctx, &dir);
    if result.is_err() && !matches!(result, Err(BackupError::Stopped { .. })) {
        // Give the space back (a full disk must not stay full); the previous backup is untouched.
        let _ = remove_tree(&staging);
    }
    let manifest = result?;
    let bytes = manifest.artifacts.iter().map(|a| a.size).sum();
    Ok(BackupReport {
        dir: dir.join(CURRENT),
        manifest,
        bytes,
        warnings: ctx.warnings,
        elapsed: started.elapsed(),
    })
}

/// Ticks: progress, and the deadline (as a [`Stop`] error that ends the archive).
fn ticker(
    progress: &dyn Progress,
    deadline: Option<Instant>,
) -> impl Fn(u64) -> io::Result<()> + Sync + '_ {
    move |n| {
        progress.advance(n);
        match deadline {
            Some(d) if Instant::now() >= d => Err(Stop::error("deadline")),
            _ => Ok(()),
        }
    }
}

fn begin(ctx: &mut Ctx<'_>, step: Step) -> Result<(), BackupError> {
    ctx.check_deadline()?;
    ctx.step = step;
    ctx.progress.step(step);
    Ok(())
}

fn end(ctx: &Ctx<'_>, step: Step) -> Result<(), BackupError> {
    if ctx.progress.proceed(step) {
        Ok(())
    } else {
        Err(BackupError::Stopped { step: step.name() })
    }
}

fn steps(ctx: &mut Ctx<'_>, dir: &Path) -> Result<Manifest, BackupError> {
    let cfg = ctx.cfg;
    let root = &cfg.host.root;

    // -- checks
    begin(ctx, Step::Checks)?;
    if recovery_in_progress(dir)? {
        return Err(BackupError::RecoveryInProgress {
            journal: dir.join(RECOVERY_JOURNAL),
        });
    }
    if !dir.is_dir() {
        return Err(BackupError::NoDir {
            dir: cfg.dir.clone(),
        });
    }
    if !cfg.host.disk.is_mount_point(dir).map_err(io_err(dir))? {
        ctx.warn(format!(
            "{} is not its own mount: a backup there competes with the node for space (a dedicated recovery partition is recommended)",
            cfg.dir.display()
        ));
    }
    // What a killed run left behind.
    remove_tree(&ctx.staging).map_err(io_err(&ctx.staging))?;
    let estimate = layout::estimate(root);
    let free = cfg.host.disk.stats(dir).map_err(io_err(dir))?.available;
    if free <= estimate.saturating_add(cfg.margin) {
        return Err(BackupError::NoSpace {
            dir: cfg.dir.clone(),
            free,
            estimate,
            margin: cfg.margin,
        });
    }
    ctx.progress.total(estimate);
    std::fs::create_dir_all(ctx.staging.join(CLUSTER_DIR)).map_err(io_err(&ctx.staging))?;
    end(ctx, Step::Checks)?;

    // -- ostree
    begin(ctx, Step::Ostree)?;
    let ostree = Ostree::new(cfg.host.runner.as_ref(), root.join("/sysroot"));
    let status = ostree.status()?;
    if !status.is_booted() {
        ctx.warn(
            "ostree: no deployment is marked booted; treating the default one (index 0) as current"
                .into(),
        );
    }
    for index in status.standbys_to_undeploy() {
        ostree.undeploy(index)?;
    }
    let status = ostree.status()?;
    let pinned_deployment = match status.current() {
        Some(cur) => {
            if !cur.pinned {
                ostree.pin(cur.index)?;
            }
            Some(cur.id.clone())
        }
        None => {
            ctx.warn("ostree: no deployments".into());
            None
        }
    };
    end(ctx, Step::Ostree)?;

    // -- etcd
    begin(ctx, Step::Etcd)?;
    let snap_name = format!("{CLUSTER_DIR}/snapshot_{}.db", cfg.timestamp);
    let etcd_cfg = EtcdConfig {
        endpoints: cfg.etcd.endpoints.clone(),
        ca: cfg.etcd.ca.as_ref().map(|p| root.join(p)),
        client_cert: cfg.etcd.cert.as_ref().map(|p| root.join(p)),
        client_key: cfg.etcd.key.as_ref().map(|p| root.join(p)),
        connect_timeout: Duration::from_secs(10).min(ctx.remaining()),
    };
    let on_bytes = |n: u64| ctx.progress.advance(n);
    let info = etcd::snapshot_to_file(
        &etcd_cfg,
        &ctx.staging.join(&snap_name),
        ctx.remaining(),
        &on_bytes,
    )
    .map_err(|e| match e {
        EtcdError::Deadline => BackupError::Deadline {
            step: "etcd snapshot",
        },
        e => BackupError::Etcd(e),
    })?;
    let etcd_revision = info.revision;
    ctx.record(
        snap_name,
        FileDigest {
            size: info.size,
            sha256: info.file_sha256,
        },
    );
    end(ctx, Step::Etcd)?;

    // -- static pod resources (gzip tar, as cluster-restore.sh expects)
    begin(ctx, Step::StaticPods)?;
    let pods = layout::latest_static_pods(root);
    if pods.len() < layout::STATIC_POD_NAMES.len() {
        ctx.warn(format!(
            "static pod resources: found only {:?} under {}",
            pods,
            layout::STATIC_PODS
        ));
    }
    let name = format!(
        "{CLUSTER_DIR}/static_kuberesources_{}.tar.gz",
        cfg.timestamp
    );
    let path = ctx.staging.join(&name);
    let tick = ticker(ctx.progress, cfg.deadline);
    let digest = (|| {
        let mut w = ArchiveWriter::create(&path, Compression::Gzip(6), &tick)?;
        let base = root.join(layout::STATIC_PODS);
        w.add_one(&base, Path::new("static-pod-resources"))?;
        for p in &pods {
            w.add_tree(
                &base.join(p),
                &Path::new("static-pod-resources").join(p),
                &|_| false,
            )?;
        }
        w.finish()
    })()
    .map_err(|e| ctx.archive_error("static pod resources", e))?;
    ctx.record(name, digest);
    end(ctx, Step::StaticPods)?;

    // -- trees
    begin(ctx, Step::Trees)?;
    let exclusions = layout::etc_exclusions(root);
    let list_path = ctx.staging.join(ETC_EXCLUDE);
    let mut list = exclusions.join("\n");
    list.push('\n');
    std::fs::write(&list_path, list).map_err(io_err(&list_path))?;
    let d = digest_file(&list_path).map_err(io_err(&list_path))?;
    ctx.record(ETC_EXCLUDE.into(), d);
    for (host_dir, base) in layout::TREES {
        let name = format!("{base}{}", cfg.compression.suffix());
        let path = ctx.staging.join(&name);
        // The directory the host sees there: on RHCOS, /usr/local is a link to /var/usrlocal,
        // whose content is archived (as the content of /usr/local).
        let src = match root.resolve_dir(host_dir) {
            Ok(src) if src.is_dir() => Some(src),
            Ok(_) => {
                ctx.warn(format!(
                    "{host_dir} does not exist; backing up an empty directory"
                ));
                None
            }
            Err(e @ InRootError::Dangling { .. }) => {
                ctx.warn(format!("{host_dir}: {e}; backing up an empty directory"));
                None
            }
            Err(e) => {
                return Err(BackupError::Io {
                    path: root.join(host_dir),
                    source: io::Error::other(e),
                });
            }
        };
        let tick = ticker(ctx.progress, cfg.deadline);
        let is_etc = host_dir == "/etc";
        let excl = |rel: &Path| is_etc && layout::is_excluded(&exclusions, rel);
        let (digest, changed, count) = (|| {
            let mut w = ArchiveWriter::create(&path, cfg.compression, &tick)?;
            if let Some(src) = &src {
                w.add_tree(src, Path::new(""), &excl)?;
            }
            let changed: Vec<String> = w.changed.iter().map(|p| p.display().to_string()).collect();
            let count = TreeCount {
                dir: host_dir.to_owned(),
                archive: name.clone(),
                entries: w.entries,
                bytes: w.bytes,
            };
            Ok::<_, ArchiveError>((w.finish()?, changed, count))
        })()
        .map_err(|e| ctx.archive_error(host_dir, e))?;
        ctx.changed.extend(changed);
        ctx.trees.push(count);
        ctx.record(name, digest);
        ctx.check_deadline()?;
    }
    end(ctx, Step::Trees)?;

    // -- extras
    begin(ctx, Step::Extras)?;
    let extras = layout::extras(root).map_err(BackupError::MachineConfig)?;
    let name = format!("extras{}", cfg.compression.suffix());
    let path = ctx.staging.join(&name);
    let tick = ticker(ctx.progress, cfg.deadline);
    let mut missing = Vec::new();
    let digest = (|| {
        let mut w = ArchiveWriter::create(&path, cfg.compression, &tick)?;
        for p in &extras {
            // Its directory as the host sees it (RHCOS: /opt is a link to /var/opt).
            let host = Path::new(p);
            let src = host
                .parent()
                .and_then(|d| root.resolve_dir(d).ok())
                .zip(host.file_name())
                .map(|(d, f)| d.join(f));
            let Some(src) = src.filter(|s| s.symlink_metadata().is_ok()) else {
                missing.push(p.clone());
                continue;
            };
            w.add_one(&src, Path::new(p.trim_start_matches('/')))?;
        }
        w.finish()
    })()
    .map_err(|e| ctx.archive_error("extras", e))?;
    for p in missing {
        ctx.warn(format!(
            "machine config file {p} does not exist; not backed up"
        ));
    }
    ctx.record(name, digest);
    end(ctx, Step::Extras)?;

    // -- manifest, then the marker (last, atomically)
    begin(ctx, Step::Seal)?;
    let manifest = Manifest {
        format: 1,
        created: cfg.timestamp.clone(),
        pinned_deployment,
        etcd_revision,
        artifacts: std::mem::take(&mut ctx.artifacts),
        changed_while_reading: std::mem::take(&mut ctx.changed),
        trees: std::mem::take(&mut ctx.trees),
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Io {
        path: ctx.staging.join(MANIFEST),
        source: io::Error::other(e),
    })?;
    let manifest_path = ctx.staging.join(MANIFEST);
    atomic_write(&manifest_path, &text, 0o644).map_err(io_err(&manifest_path))?;
    // Everything durable before the marker says so.
    for a in &manifest.artifacts {
        let p = ctx.staging.join(&a.name);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&p))?;
    }
    fsync_dir(&ctx.staging.join(CLUSTER_DIR)).map_err(io_err(&ctx.staging))?;
    let marker = Marker {
        manifest_sha256: talm_shared::hex::encode(
            ring::digest::digest(&ring::digest::SHA256, &text).as_ref(),
        ),
    };
    let marker_text = serde_json::to_vec(&marker).map_err(|e| BackupError::Io {
        path: ctx.staging.join(MARKER),
        source: io::Error::other(e),
    })?;
    let marker_path = ctx.staging.join(MARKER);
    atomic_write(&marker_path, &marker_text, 0o644).map_err(io_err(&marker_path))?;
    end(ctx, Step::Seal)?;

    // -- commit: swap atomically with the previous backup, then drop the previous one
    begin(ctx, Step::Commit)?;
    let current = dir.join(CURRENT);
    if current.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &ctx.staging,
            rustix::fs::CWD,
            &current,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| io_err(&current)(e.into()))?;
        fsync_dir(dir).map_err(io_err(dir))?;
        remove_tree(&ctx.staging).map_err(io_err(&ctx.staging))?;
    } else {
        std::fs::rename(&ctx.staging, &current).map_err(io_err(&current))?;
    }
    fsync_dir(dir).map_err(io_err(dir))?;
    end(ctx, Step::Commit)?;
    Ok(manifest)
}
