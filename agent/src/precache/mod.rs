//! Filtered image pre-caching: `talm-agent precache run|status` and the hub-assigned `Precache`
//! task share one engine, [`run`].
//!
//! The run, as TALM's `precache.sh` but native:
//! 1. `Starting`: the space check (TALM's `check_space.sh`, when there is a release image or
//!    additional images), then the image list ([`list`]);
//! 2. `Active`: images already in containers-storage are skipped; the others' manifests are
//!    read, then their blobs pulled into the cache ([`pull`], [`cache`], [`limit`]) with
//!    bounded parallelism; each fetched image joins a queue that a separate, narrower stage
//!    imports from ([`import`], [`IMPORT_PARALLEL`] at a time by default). A hub-assigned run
//!    held by the hub's pre-cache budget ([`Options::grant`]) stays `Starting` through the
//!    manifests (so the byte total and the registries are known and reported) and waits there,
//!    downloading nothing, until the hub lets it in; the hub's cap (the lower of it and the
//!    node's applies) reaches the limiter at once, also mid-transfer;
//! 3. the space check again (no requirement: usage must stay under the image-GC threshold);
//! 4. `Succeeded`, or `PrecacheTimeout` (the deadline) or `UnrecoverableError` (anything else).
//!
//! The state, counters and per-image detail are journaled in `<state-dir>/precache/status.json`
//! ([`status`]). Everything a run fetched stays in the cache: a later run (after a kill, a
//! timeout or a cancellation) continues from there.
//!
//! - [`sources`]: the image list's inputs: release `image-references`, file-based operator
//!   catalogs, exclude patterns, `registries.conf` mirrors and the node's pull secret (pure
//!   parsing, no I/O beyond reading the files it is given).
//! - [`spec`]: the spec file of `precache run`.
//! - [`cli`]: the `precache` subcommands.
//! - [`manifest`], [`stall`], [`verify`]: the limits on what a registry or the cache can make
//!   a run do: manifests over 4 MiB are refused, a transfer that stalls fails (and is retried),
//!   and a cached blob is verified before it is used.

pub mod cache;
pub mod cli;
pub mod import;

/// How many `skopeo copy` imports run at once by default: two, a compromise. Each import is a
/// skopeo (up to ~39 MiB RSS) and, while it applies a layer, a re-executed child, and an import
/// is mostly containers-storage's synced metadata writes under its store locks: one at a time
/// took 1.4× as long as four in the recorded small-set run, and four cost 70–95 MiB more than
/// one (BENCHMARKS.md, Pre-caching).
pub const IMPORT_PARALLEL: usize = 2;
pub mod limit;
pub mod list;
pub mod manifest;
pub mod pull;
pub mod sources;
pub mod spec;
pub mod stall;
pub mod status;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use talm_shared::api::cgu::PrecachingSpec;
use talm_shared::clock::Clock;
use tokio::time::Instant;

use self::cache::{Cache, CacheError};
use self::import::{Importer, LayerGate, Present, Storage};
use self::limit::Limiter;
use self::pull::{PullConfig, PullError, Puller, RetryPolicy};
use self::sources::{Mirrors, PullSecret, SourceError};
use self::stall::StallPolicy;
use self::status::{ImageState, ImageStatus, Journal, PrecacheStatus, State};
use crate::facts::HostInfo;
use crate::host::exec::{CommandRunner, ExecError};
use crate::host::root::HostRoot;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PrecacheError {
    /// The spec cannot be used.
    #[error("invalid pre-cache spec: {0}")]
    Spec(String),
    /// Not enough space (the message says how much is needed and available).
    #[error("{0}")]
    Space(String),
    /// A spec or node-configuration input is wrong.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An operators index cannot be read.
    #[error("operators index {image}: {source}")]
    Index {
        /// The index image.
        image: String,
        /// Why.
        #[source]
        source: SourceError,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An image the list depends on (release or index) cannot be pulled.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Some images could not be pre-cached.
    #[error("{failed} of {total} images could not be pre-cached; first failure: {first}")]
    Images {
        /// How many failed.
        failed: usize,
        /// How many in the list.
        total: usize,
        /// The first failure, `image: reason`.
        first: String,
    },
    /// The deadline passed.
    #[error("the pre-cache deadline passed ({done} of {total} images done)")]
    Deadline {
        /// Images done.
        done: u64,
        /// Images in the list.
        total: u64,
    },
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// skopeo could not be run at all.
    #[error("import: {0}")]
    Exec(#[from] ExecError),
}

impl PrecacheError {
    /// The TALM state this failure ends in.
    pub fn state(&self) -> State {
        match self {
            Self::Deadline { .. } => State::PrecacheTimeout,
            _ => State::UnrecoverableError,
        }
    }
}

/// How a run is done.
#[derive(Clone, Debug)]
pub struct Options {
    /// The agent's state directory (the cache is `<state>/precache/oci`).
    pub state_dir: PathBuf,
    /// The node's `/`.
    pub host_root: PathBuf,
    /// Concurrent images and blob downloads.
    pub parallel: usize,
    /// Node-wide cap in bytes/s (0: none).
    pub bandwidth_limit: u64,
    /// containers-storage graph driver.
    pub storage_driver: String,
    /// Import into containers-storage (false: only fill the cache).
    pub import: bool,
    /// Retries.
    pub retry: RetryPolicy,
    /// The low-speed limit of every transfer.
    pub stall: StallPolicy,
    /// The hub task id ("" for a manual run).
    pub task_id: String,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
    /// Wrap skopeo in `ionice -c3 nice -n 10`.
    pub low_priority_tools: bool,
    /// The hub's grant of the task (hold, cap), as it changes (`None`: a manual run).
    pub grant: Option<tokio::sync::watch::Receiver<crate::journal::Grant>>,
    /// Imports (skopeo processes) at once, at least 1.
    pub import_parallel: usize,
}

impl Options {
    /// Defaults for `state_dir` and `host_root`.
    pub fn new(state_dir: &Path, host_root: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            host_root: host_root.to_path_buf(),
            parallel: 4,
            bandwidth_limit: 0,
            storage_driver: "overlay".into(),
            import: true,
            retry: RetryPolicy::default(),
            stall: StallPolicy::default(),
            task_id: String::new(),
            deadline: None,
            low_priority_tools: false,
            grant: None,
            import_parallel: IMPORT_PARALLEL,
        }
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("precache").join("oci")
    }
}

/// What the engine needs from the node.
#[derive(Clone, Debug)]
pub struct Deps {
    /// statvfs and the kubelet threshold (the space check).
    pub host: Arc<dyn HostInfo>,
    /// Runs skopeo.
    pub runner: Arc<dyn CommandRunner>,
    /// The wall clock (for the status file's times).
    pub clock: Arc<dyn Clock>,
}

/// Called about twice a second with the current status (progress bars, hub progress).
pub type Observer = Arc<dyn Fn(&PrecacheStatus) + Send + Sync>;

/// Runs a pre-cache to the end. The status file reflects every step; the returned status is
/// the final one. Dropping the future (a cancellation) leaves the cache resumable and marks
/// the status file as interrupted.
pub async fn run(
    opts: &Options,
    spec: &PrecachingSpec,
    deps: &Deps,
    observer: Observer,
) -> Result<PrecacheStatus, PrecacheError> {
    let journal = Arc::new(Journal::new(
        &opts.state_dir,
        &opts.task_id,
        &spec::hash(spec),
        deps.clock.clone(),
    ));
    journal.set_state(State::Starting, "");
    let ticker = {
        let (j, obs) = (journal.clone(), observer.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                j.update(false, |_| {});
                obs(&j.snapshot());
            }
        })
    };
    let mut guard = InterruptGuard {
        journal: journal.clone(),
        ticker: ticker.abort_handle(),
        armed: true,
    };
    let work = run_inner(opts, spec, deps, &journal, &observer);
    let result = match opts.deadline {
        // Already past: nothing is started (`timeout_at` would first poll the work, and a run
        // that fails at once would race the timer).
        Some(at) if Instant::now() >= at => {
            let s = journal.snapshot();
            Err(PrecacheError::Deadline {
                done: s.images_done,
                total: s.images_total,
            })
        }
        Some(at) => match tokio::time::timeout_at(at, work).await {
            Ok(r) => r,
            Err(_) => {
                let s = journal.snapshot();
                Err(PrecacheError::Deadline {
                    done: s.images_done,
                    total: s.images_total,
                })
            }
        },
        None => work.await,
    };
    ticker.abort();
    guard.armed = false;
    match &result {
        Ok(()) => journal.set_state(State::Succeeded, "every image is pre-cached"),
        Err(e) => journal.set_state(e.state(), &e.to_string()),
    }
    let last = journal.snapshot();
    observer(&last);
    result.map(|()| last)
}

/// Marks the status file when the run is dropped half-way (cancelled by the hub, or the
/// daemon's own deadline fired first).
struct InterruptGuard {
    journal: Arc<Journal>,
    ticker: tokio::task::AbortHandle,
    armed: bool,
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        self.ticker.abort();
        if self.armed {
            self.journal.set_state(
                State::UnrecoverableError,
                "interrupted (cancelled or the agent stopped); the cache is kept and a new run resumes from it",
            );
        }
    }
}

fn space_check(host: &Arc<dyn HostInfo>, gib: u64) -> Result<String, PrecacheError> {
    let (outcome, message) = crate::runner::check_space(host.as_ref(), gib);
    if outcome == talm_proto::v1::TaskOutcome::Succeeded {
        Ok(message)
    } else {
        Err(PrecacheError::Space(message))
    }
}

fn pull_config(opts: &Options) -> Result<PullConfig, PrecacheError> {
    let mirrors = Mirrors::load(&opts.host_root)?;
    let secret_path = HostRoot::new(&opts.host_root).join("/var/lib/kubelet/config.json");
    let secret = if secret_path.exists() {
        Some(PullSecret::load(&secret_path)?)
    } else {
        None
    };
    Ok(PullConfig {
        mirrors,
        secret,
        ca_pems: pull::certs_d(&opts.host_root),
        parallel: opts.parallel.max(1),
        retry: opts.retry,
        arch: pull::node_arch().to_string(),
        stall: opts.stall,
    })
}

/// The cap in force: the lower of the node's and the hub's, where 0 is "none" on either side.
pub fn effective_cap(node: u64, hub: u64) -> u64 {
    match (node, hub) {
        (0, h) => h,
        (n, 0) => n,
        (n, h) => n.min(h),
    }
}

/// Aborts the task on drop.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// The registry hosts (`host[:port]`) the resolved images will be pulled from, sorted.
fn registries(ready: &[pull::Resolved]) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = ready
        .iter()
        .filter_map(|r| r.sources.first())
        .filter_map(|s| s.pull_spec.parse::<sources::ImageRef>().ok())
        .map(|i| i.registry)
        .collect();
    set.into_iter().collect()
}

async fn run_inner(
    opts: &Options,
    spec: &PrecachingSpec,
    deps: &Deps,
    journal: &Arc<Journal>,
    observer: &Observer,
) -> Result<(), PrecacheError> {
    let mut grant = opts.grant.clone();
    let hub = grant
        .as_mut()
        .map(|g| *g.borrow_and_update())
        .unwrap_or_default();
    let gib = spec::space_gib(&spec.space_required).map_err(PrecacheError::Spec)?;
    let check = !spec.platform_image.trim().is_empty()
        || spec.additional_images.iter().any(|i| !i.trim().is_empty());
    if check {
        let host = deps.host.clone();
        let msg = tokio::task::spawn_blocking(move || space_check(&host, gib))
            .await
            .map_err(|e| PrecacheError::Io("space check".into(), std::io::Error::other(e)))??;
        tracing::info!("space check: {msg}");
        journal.update(true, |s| s.message = msg);
    }
    let cache_dir = opts.cache_dir();
    let cache = Arc::new(Cache::open(&cache_dir)?);
    let cap = effective_cap(opts.bandwidth_limit, hub.rate_limit);
    let limiter = Arc::new(Limiter::new(cap));
    journal.update(true, |s| s.rate_limit_bytes_per_sec = cap);
    // The hub's new caps reach the limiter (and the downloads in flight) as they come.
    let _follow = AbortOnDrop(opts.grant.clone().map(|mut g| {
        let (limiter, journal, node) = (limiter.clone(), journal.clone(), opts.bandwidth_limit);
        tokio::spawn(async move {
            while g.changed().await.is_ok() {
                let cap = effective_cap(node, g.borrow_and_update().rate_limit);
                if cap != limiter.rate() {
                    tracing::info!(cap, "the pre-cache cap changed");
                    limiter.set_rate(cap);
                    journal.update(true, |s| s.rate_limit_bytes_per_sec = cap);
                }
            }
        })
    }));
    let puller = Arc::new(Puller::new(
        pull_config(opts)?,
        cache.clone(),
        limiter.clone(),
        journal.clone(),
    )?);
    let list = list::build(spec, &puller).await?;
    tracing::info!(
        images = list.images.len(),
        excluded = list.excluded.len(),
        "image list"
    );
    let storage = Storage::under(&opts.host_root, &opts.storage_driver);
    let present = if opts.import {
        let s = storage.clone();
        tokio::task::spawn_blocking(move || Present::load(&s))
            .await
            .unwrap_or_default()
    } else {
        Present::default()
    };
    journal.update(true, |s| {
        s.images = list
            .names()
            .into_iter()
            .map(|name| ImageStatus {
                state: if present.contains(&name) {
                    ImageState::Present
                } else {
                    ImageState::Pending
                },
                name,
                ..Default::default()
            })
            .collect();
    });
    // Held: `Starting` until let in.
    if !hub.hold {
        journal.set_state(State::Active, "");
    }
    let todo: Vec<String> = journal
        .snapshot()
        .images
        .into_iter()
        .filter(|i| i.state == ImageState::Pending)
        .map(|i| i.name)
        .collect();

    // Manifests first: the byte total (and so the ETA) is known before the long part.
    let parallel = opts.parallel.max(1);
    let resolved: Vec<_> = futures_util::stream::iter(todo.into_iter().map(|name| {
        let puller = puller.clone();
        async move {
            let r = puller.resolve(&name).await;
            (name, r)
        }
    }))
    .buffer_unordered(parallel * 2)
    .collect()
    .await;
    let mut sizes = std::collections::HashMap::new();
    let mut ready = Vec::new();
    for (name, r) in resolved {
        match r {
            Ok(r) => {
                for b in &r.blobs {
                    sizes.insert(b.digest.clone(), b.size);
                }
                ready.push(r);
            }
            Err(e) => fail(journal, &name, &e.message),
        }
    }
    journal
        .live
        .bytes_total
        .store(sizes.values().sum(), std::sync::atomic::Ordering::Relaxed);
    // Blobs fetched while building the list were counted as they came; recount from the cache
    // so done ≤ total and the ETA starts right.
    let cached: u64 = sizes
        .iter()
        .filter(|(d, size)| cache::Digest::parse(d).is_ok_and(|d| cache.has_blob(&d, **size)))
        .map(|(_, s)| *s)
        .sum();
    journal
        .live
        .bytes_done
        .store(cached, std::sync::atomic::Ordering::Relaxed);
    let hosts = registries(&ready);
    journal.update(true, |s| s.registries = hosts);

    // The hold point: listed, nothing downloaded; wait for the hub to let us in.
    if let Some(g) = grant.as_mut()
        && g.borrow_and_update().hold
    {
        journal.update(true, |s| s.phase = status::Phase::Held);
        observer(&journal.snapshot());
        tracing::info!("held by the hub's pre-cache budget: waiting to be let in");
        if g.wait_for(|g| !g.hold).await.is_err() {
            // No one can lift the hold any more: the deadline or a cancellation ends the run.
            std::future::pending::<()>().await;
        }
        tracing::info!("let in by the hub's pre-cache budget");
    }
    if hub.hold {
        journal.set_state(State::Active, "");
    }
    journal.update(true, |s| s.phase = status::Phase::Fetching);
    observer(&journal.snapshot());

    let importer = Importer {
        runner: deps.runner.clone(),
        storage,
        cache_dir: cache_dir.clone(),
        low_priority: opts.low_priority_tools,
        arch: pull::node_arch().to_string(),
    };
    // Fetching and importing are two stages joined by a queue: `parallel` images are fetched
    // at once whatever the imports are doing, and `import_parallel` imports take fetched images
    // in the order they complete. (A fetch slot no longer waits for an import slot.)
    let (fetched_tx, fetched_rx) = tokio::sync::mpsc::unbounded_channel::<pull::Resolved>();
    let do_import = opts.import;
    let fetch = {
        let (puller, journal) = (puller.clone(), journal.clone());
        async move {
            futures_util::stream::iter(ready)
                .for_each_concurrent(parallel, |r| {
                    let (puller, journal, tx) =
                        (puller.clone(), journal.clone(), fetched_tx.clone());
                    async move {
                        let name = r.name.clone();
                        journal.image(&name, |i| {
                            i.state = ImageState::Pulling;
                            i.pulled_from = r
                                .sources
                                .first()
                                .map(|s| s.pull_spec.clone())
                                .unwrap_or_default();
                        });
                        if let Err(e) = puller.pull(&r).await {
                            tracing::warn!(image = %name, error = %e.message, "pull failed");
                            fail(&journal, &name, &e.message);
                            return;
                        }
                        if !do_import {
                            journal.image(&name, |i| i.state = ImageState::Cached);
                            return;
                        }
                        if tx.send(r).is_err() {
                            fail(&journal, &name, "import: the import queue is gone");
                        }
                    }
                })
                .await;
            // The last sender goes here: the import stage ends once its queue is empty.
            drop(fetched_tx);
        }
    };
    let gate = Arc::new(LayerGate::default());
    let import = tokio_stream::wrappers::UnboundedReceiverStream::new(fetched_rx)
        .for_each_concurrent(opts.import_parallel.max(1), |r| {
            let (journal, importer, gate) = (journal.clone(), importer.clone(), gate.clone());
            async move {
                let name = r.name;
                let layers: Vec<String> = r.layers.iter().map(|l| l.digest.clone()).collect();
                let pass = gate.enter(&layers).await;
                journal.update(false, |s| s.phase = status::Phase::Importing);
                let ref_name = pull::oci_ref_name(&name);
                let n2 = name.clone();
                let out =
                    tokio::task::spawn_blocking(move || importer.import(&n2, &ref_name)).await;
                match out {
                    Ok(Ok(())) => {
                        pass.landed();
                        journal.image(&name, |i| i.state = ImageState::Imported);
                    }
                    Ok(Err(e)) => fail(&journal, &name, &format!("import: {e}")),
                    Err(e) => fail(&journal, &name, &format!("import: {e}")),
                }
            }
        });
    tokio::join!(fetch, import);

    let s = journal.snapshot();
    let failures = s.failures();
    if let Some(first) = failures.first() {
        return Err(PrecacheError::Images {
            failed: failures.len(),
            total: s.images.len(),
            first: first.clone(),
        });
    }
    if check && opts.import {
        let host = deps.host.clone();
        let msg = tokio::task::spawn_blocking(move || space_check(&host, 0))
            .await
            .map_err(|e| PrecacheError::Io("space check".into(), std::io::Error::other(e)))??;
        tracing::info!("space check after pre-caching: {msg}");
    }
    Ok(())
}

fn fail(journal: &Journal, name: &str, message: &str) {
    journal.image(name, |i| {
        i.state = ImageState::Failed;
        i.error = message.to_string();
    });
}
