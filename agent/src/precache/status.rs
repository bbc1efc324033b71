//! The pre-cache status journal: `<state-dir>/precache/status.json`, rewritten atomically
//! (temp file + rename) at every state change and at most about once a second in between.
//! `talm-agent precache status` reads it, also while the daemon or a `precache run` is pulling.
//!
//! States use TALM's names (`Starting`, `Active`, `Succeeded`, `PrecacheTimeout`,
//! `UnrecoverableError`). The file also carries the counters of the run (bytes fetched, blobs,
//! images, retries): the agent has no metrics endpoint, so this file is where they are read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use talm_shared::clock::{Clock, rfc3339};
use tokio::time::Instant;

/// The file name under `<state-dir>/precache/`.
pub const STATUS_FILE: &str = "status.json";

/// The state of a run (TALM's pre-cache state names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Checking space and building the image list.
    #[default]
    Starting,
    /// Pulling and importing.
    Active,
    /// Every image is cached (and imported).
    Succeeded,
    /// The deadline passed.
    PrecacheTimeout,
    /// Failed for another reason (see `message` and the images' errors).
    UnrecoverableError,
}

impl State {
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Starting | Self::Active)
    }
}

/// Where a run is, finer than [`State`]: the hub hears of each change at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The space check, the image list, the manifests (the byte total).
    #[default]
    Listing,
    /// Listed, and held by the hub's pre-cache budget: nothing is downloaded.
    Held,
    /// Downloading blobs.
    Fetching,
    /// Imports into containers-storage have started (downloads of other images may go on).
    Importing,
}

/// Where one image is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageState {
    /// Not started.
    #[default]
    Pending,
    /// Already in containers-storage: skipped.
    Present,
    /// Downloading.
    Pulling,
    /// All its blobs are in the cache (and it is not imported: `--no-import`).
    Cached,
    /// Imported into containers-storage.
    Imported,
    /// Failed (see `error`).
    Failed,
}

impl ImageState {
    /// Whether the image needs nothing more.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Present | Self::Cached | Self::Imported)
    }
}

/// One image of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The pull spec from the image list.
    pub name: String,
    /// Its state.
    pub state: ImageState,
    /// Where it was pulled from (a mirror, or the source).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pulled_from: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Bytes received from registries (blobs and manifests).
    pub bytes_fetched: u64,
    /// Blobs downloaded and verified in this run.
    pub blobs_fetched: u64,
    /// Blobs found complete in the cache.
    pub blobs_cached: u64,
    /// Downloads resumed from a partial file.
    pub blobs_resumed: u64,
    /// Images pulled into the cache in this run.
    pub images_pulled: u64,
    /// Images imported into containers-storage.
    pub images_imported: u64,
    /// Images skipped because containers-storage has them.
    pub images_present: u64,
    /// Retried requests.
    pub retries: u64,
    /// Blobs rejected by digest or size (downloads, and bad blobs found in the cache).
    pub digest_mismatches: u64,
    /// Transfers ended by the low-speed rule (fewer bytes than the minimum in one period).
    #[serde(default)]
    pub stalls: u64,
}

/// The status file's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrecacheStatus {
    /// State.
    pub state: State,
    /// Detail of the state (the failure reason, the space check).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The hub task id (empty for `precache run`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_id: String,
    /// sha256 of the spec's canonical JSON.
    pub spec_hash: String,
    /// The agent process that writes the file.
    pub pid: u32,
    /// When the run started, RFC 3339.
    pub started_at: String,
    /// Last write, RFC 3339.
    pub updated_at: String,
    /// Images done (present, cached or imported).
    pub images_done: u64,
    /// Images in the list.
    pub images_total: u64,
    /// Blob bytes in the cache, of all the images to pull.
    pub bytes_done: u64,
    /// Blob bytes of all the images to pull (known once their manifests are read).
    pub bytes_total: u64,
    /// Download rate, bytes/s (over the last seconds).
    pub rate_bytes_per_sec: u64,
    /// Estimated seconds left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The phase.
    #[serde(default)]
    pub phase: Phase,
    /// The cap in force, bytes/s: the lower of the node's and the hub's (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_bytes_per_sec: u64,
    /// The registry hosts (`host[:port]`) the images are pulled from after mirror resolution,
    /// sorted (known once the manifests are read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// Counters.
    pub counters: Counters,
    /// Per image.
    pub images: Vec<ImageStatus>,
    /// Set by [`load`] when the state is not final but the process that wrote the file is
    /// gone (killed mid-run): the run is over, and a new one resumes from the cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PrecacheStatus {
    /// The failed images, `name: error`.
    pub fn failures(&self) -> Vec<String> {
        self.images
            .iter()
            .filter(|i| i.state == ImageState::Failed)
            .map(|i| format!("{}: {}", i.name, i.error))
            .collect()
    }
}

/// Live counters updated by the downloads without taking the status lock.
#[derive(Debug, Default)]
pub struct Live {
    /// Blob bytes in the cache (of this run's images).
    pub bytes_done: AtomicU64,
    /// Blob bytes in total.
    pub bytes_total: AtomicU64,
    /// Bytes received from registries.
    pub bytes_fetched: AtomicU64,
    /// Blobs downloaded.
    pub blobs_fetched: AtomicU64,
    /// Blobs already cached.
    pub blobs_cached: AtomicU64,
    /// Resumed downloads.
    pub blobs_resumed: AtomicU64,
    /// Retries.
    pub retries: AtomicU64,
    /// Digest or size mismatches.
    pub digest_mismatches: AtomicU64,
    /// Stalled transfers.
    pub stalls: AtomicU64,
}

impl Live {
    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes from a counter (never below zero).
    pub fn sub(c: &AtomicU64, n: u64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

/// Writes the status file.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Counters updated lock-free by the downloads.
    pub live: Live,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    status: PrecacheStatus,
    last_write: Option<Instant>,
    /// (when, bytes fetched) samples for the rate.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// The rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Writes between state changes are at least this far apart.
const WRITE_EVERY: Duration = Duration::from_secs(1);

impl Journal {
    /// A journal writing `<state_dir>/precache/status.json`.
    pub fn new(state_dir: &Path, task_id: &str, spec_hash: &str, clock: Arc<dyn Clock>) -> Self {
        let started = rfc3339(clock.unix());
        Self {
            path: status_path(state_dir),
            inner: Mutex::new(Inner {
                status: PrecacheStatus {
                    task_id: task_id.to_string(),
                    spec_hash: spec_hash.to_string(),
                    pid: std::process::id(),
                    started_at: started.clone(),
                    updated_at: started,
                    ..Default::default()
                },
                last_write: None,
                samples: Default::default(),
            }),
            live: Live::default(),
            clock,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the status with `f`; writes at once when `force` or the state changed,
    /// otherwise at most once a second.
    pub fn update(&self, force: bool, f: impl FnOnce(&mut PrecacheStatus)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = inner.status.state;
        f(&mut inner.status);
        let changed = inner.status.state != before;
        self.refresh(&mut inner);
        let due = inner.last_write.is_none_or(|t| t.elapsed() >= WRITE_EVERY);
        if force || changed || due {
            inner.last_write = Some(Instant::now());
            inner.status.updated_at = rfc3339(self.clock.unix());
            if let Err(e) = write_status(&self.path, &inner.status) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the pre-cache status");
            }
        }
    }

    /// Sets the state and message and writes the file.
    pub fn set_state(&self, state: State, message: &str) {
        self.update(true, |s| {
            s.state = state;
            s.message = message.to_string();
        });
    }

    /// Sets one image's state.
    pub fn image(&self, name: &str, f: impl FnOnce(&mut ImageStatus)) {
        self.update(false, |s| {
            if let Some(i) = s.images.iter_mut().find(|i| i.name == name) {
                f(i);
            }
        });
    }

    /// A copy of the current status (counters refreshed).
    pub fn snapshot(&self) -> PrecacheStatus {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut inner);
        inner.status.clone()
    }

    fn refresh(&self, inner: &mut Inner) {
        let l = &self.live;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &mut inner.status;
        s.bytes_done = get(&l.bytes_done);
        s.bytes_total = get(&l.bytes_total).max(s.bytes_done);
        s.counters.bytes_fetched = get(&l.bytes_fetched);
        s.counters.blobs_fetched = get(&l.blobs_fetched);
        s.counters.blobs_cached = get(&l.blobs_cached);
        s.counters.blobs_resumed = get(&l.blobs_resumed);
        s.counters.retries = get(&l.retries);
        s.counters.digest_mismatches = get(&l.digest_mismatches);
        s.counters.stalls = get(&l.stalls);
        s.counters.images_pulled = 0;
        s.counters.images_imported = 0;
        s.counters.images_present = 0;
        for i in &s.images {
            match i.state {
                ImageState::Present => s.counters.images_present += 1,
                ImageState::Imported => {
                    s.counters.images_imported += 1;
                    s.counters.images_pulled += 1;
                }
                ImageState::Cached => s.counters.images_pulled += 1,
                _ => {}
            }
        }
        s.images_total = s.images.len() as u64;
        s.images_done = s.images.iter().filter(|i| i.state.is_done()).count() as u64;
        let now = Instant::now();
        inner.samples.push_back((now, s.counters.bytes_fetched));
        while inner.samples.len() > 2
            && inner
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            inner.samples.pop_front();
        }
        let (t0, b0) = inner.samples.front().copied().unwrap_or((now, 0));
        let secs = now.saturating_duration_since(t0).as_secs_f64();
        let rate = if secs >= 0.5 {
            (s.counters.bytes_fetched.saturating_sub(b0)) as f64 / secs
        } else {
            s.rate_bytes_per_sec as f64
        };
        s.rate_bytes_per_sec = rate as u64;
        let left = s.bytes_total.saturating_sub(s.bytes_done);
        s.eta_seconds = if left == 0 {
            Some(0)
        } else if rate >= 1.0 {
            Some((left as f64 / rate).ceil() as u64)
        } else {
            None
        };
    }
}

/// `<state_dir>/precache/status.json`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("precache").join(STATUS_FILE)
}

fn write_status(path: &Path, s: &PrecacheStatus) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    talm_shared::fsutil::atomic_write(path, &bytes, 0o644)
}

/// Reads the status file of `state_dir`.
pub fn load(state_dir: &Path) -> Result<PrecacheStatus, std::io::Error> {
    let path = status_path(state_dir);
    let bytes = std::fs::read(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (no pre-cache has run with this state dir)",
                path.display()
            ),
        )
    })?;
    let mut s: PrecacheStatus = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if !s.state.is_final() && s.pid != 0 && !Path::new(&format!("/proc/{}", s.pid)).exists() {
        s.interrupted = true;
    }
    Ok(s)
}

/// Human-readable bytes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The text view of `precache status`.
pub fn render_text(s: &PrecacheStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if s.interrupted {
        let _ = writeln!(
            out,
            "state:    {:?} (interrupted: process {} is gone; a new run resumes from the cache)",
            s.state, s.pid
        );
    } else {
        let _ = writeln!(out, "state:    {:?} ({:?})", s.state, s.phase);
    }
    if !s.message.is_empty() {
        let _ = writeln!(out, "message:  {}", s.message);
    }
    if !s.task_id.is_empty() {
        let _ = writeln!(out, "task:     {}", s.task_id);
    }
    let _ = writeln!(
        out,
        "started:  {}   updated: {}",
        s.started_at, s.updated_at
    );
    let _ = writeln!(out, "images:   {}/{}", s.images_done, s.images_total);
    let _ = writeln!(
        out,
        "bytes:    {} / {}",
        human_bytes(s.bytes_done),
        human_bytes(s.bytes_total)
    );
    let eta = s
        .eta_seconds
        .map_or_else(|| "-".to_string(), |e| format!("{e} s"));
    let cap = if s.rate_limit_bytes_per_sec == 0 {
        "none".to_string()
    } else {
        format!("{}/s", human_bytes(s.rate_limit_bytes_per_sec))
    };
    let _ = writeln!(
        out,
        "rate:     {}/s   cap: {cap}   eta: {eta}",
        human_bytes(s.rate_bytes_per_sec)
    );
    if !s.registries.is_empty() {
        let _ = writeln!(out, "from:     {}", s.registries.join(", "));
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters: fetched {} in {} blobs ({} cached, {} resumed), {} retries, {} digest mismatches, {} stalls; images {} pulled, {} imported, {} already present",
        human_bytes(c.bytes_fetched),
        c.blobs_fetched,
        c.blobs_cached,
        c.blobs_resumed,
        c.retries,
        c.digest_mismatches,
        c.stalls,
        c.images_pulled,
        c.images_imported,
        c.images_present
    );
    let failures = s.failures();
    if !failures.is_empty() {
        let _ = writeln!(out, "failures:");
        for f in failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::clock::ManualClock;

    fn journal(dir: &Path) -> Journal {
        let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        Journal::new(dir, "t1", "abc", Arc::new(clock))
    }

    #[tokio::test(start_paused = true)]
    async fn writes_on_state_changes_and_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path());
        j.update(false, |s| {
            s.images = vec![
                ImageStatus {
                    name: "a".into(),
                    ..Default::default()
                },
                ImageStatus {
                    name: "b".into(),
                    ..Default::default()
                },
            ]
        });
        assert_eq!(load(dir.path()).unwrap().images_total, 2);
        // Within the second: not written.
        j.live.bytes_total.store(1000, Ordering::Relaxed);
        j.image("a", |i| i.state = ImageState::Imported);
        assert_eq!(load(dir.path()).unwrap().images_done, 0);
        // A state change is written at once.
        j.set_state(State::Active, "");
        let s = load(dir.path()).unwrap();
        assert_eq!(
            (s.state, s.images_done, s.bytes_total),
            (State::Active, 1, 1000)
        );
        assert_eq!(s.counters.images_imported, 1);
        // After a second, an update is written.
        tokio::time::advance(Duration::from_millis(1100)).await;
        j.live.bytes_done.store(500, Ordering::Relaxed);
        j.live.bytes_fetched.store(500, Ordering::Relaxed);
        j.image("b", |i| {
            i.state = ImageState::Failed;
            i.error = "boom".into();
        });
        let s = load(dir.path()).unwrap();
        assert_eq!(s.bytes_done, 500);
        assert_eq!(s.failures(), vec!["b: boom".to_string()]);
        assert!(s.rate_bytes_per_sec > 0);
        assert!(s.eta_seconds.is_some());
        let text = render_text(&s);
        assert!(
            text.contains("state:    Active") && text.contains("b: boom"),
            "{text}"
        );
    }

    #[test]
    fn a_run_whose_process_is_gone_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PrecacheStatus {
            state: State::Active,
            pid: std::process::id(),
            ..Default::default()
        };
        write_status(&status_path(dir.path()), &s).unwrap();
        assert!(!load(dir.path()).unwrap().interrupted);
        s.pid = u32::MAX - 1; // no such process
        write_status(&status_path(dir.path()), &s).unwrap();
        let got = load(dir.path()).unwrap();
        assert!(got.interrupted);
        assert!(render_text(&got).contains("interrupted"));
        s.state = State::Succeeded;
        write_status(&status_path(dir.path()), &s).unwrap();
        assert!(!load(dir.path()).unwrap().interrupted);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("status.json"), "{e}");
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
