//! `talm-agent precache run|status`: a by-hand pre-cache on a node (the same engine as the
//! hub-assigned task) and the status of the current or last run, daemon or manual.
//!
//! `run` shows a progress bar (images, bytes, rate, ETA) on a terminal and a log line every few
//! seconds otherwise, and exits non-zero with the reason on failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::status::{self, PrecacheStatus, human_bytes};
use super::{Deps, Options, PrecacheError};
use crate::args::Output;
use crate::facts::Host;
use crate::host::exec::RealRunner;

/// `talm-agent precache`.
#[derive(Clone, Debug, clap::Args)]
pub struct PrecacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PrecacheCommand,
}

/// The `precache` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum PrecacheCommand {
    /// Pre-cache the images of a spec file now.
    Run(RunArgs),
    /// Print the state of the current or last pre-cache (works while it runs).
    Status(StatusArgs),
}

/// `talm-agent precache run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The pre-cache spec (YAML or JSON, `PrecachingSpec` fields in camelCase).
    #[arg(long, env = "TALM_PRECACHE_SPEC")]
    pub spec: PathBuf,
    /// The agent's state directory (the cache is `<state-dir>/precache/oci`; a relative path is
    /// taken from the current directory).
    #[arg(long, env = "TALM_AGENT_STATE_DIR", value_parser = absolute_path)]
    pub state_dir: PathBuf,
    /// The node's root filesystem as seen by the agent (a relative path is taken from the
    /// current directory).
    #[arg(long, env = "TALM_AGENT_HOST_ROOT", default_value = "/", value_parser = absolute_path)]
    pub host_root: PathBuf,
    /// Images and blob downloads in flight at once.
    #[arg(long, env = "TALM_PRECACHE_PARALLEL", default_value_t = 4)]
    pub parallel: usize,
    /// Node-wide download cap in bytes per second (0: none).
    #[arg(long, env = "TALM_PRECACHE_BANDWIDTH_LIMIT", default_value_t = 0)]
    pub bandwidth_limit: u64,
    /// containers-storage graph driver.
    #[arg(long, env = "TALM_PRECACHE_STORAGE_DRIVER", default_value = "overlay")]
    pub storage_driver: String,
    /// Imports into containers-storage at once (each is a skopeo process of up to ~39 MiB RSS
    /// plus its untar child).
    #[arg(long, env = "TALM_PRECACHE_IMPORT_PARALLEL", default_value_t = super::IMPORT_PARALLEL)]
    pub import_parallel: usize,
    /// Only fill the cache; do not import into containers-storage.
    #[arg(long, env = "TALM_PRECACHE_NO_IMPORT")]
    pub no_import: bool,
    /// Give up at this time (RFC 3339), ending in PrecacheTimeout.
    #[arg(long, env = "TALM_PRECACHE_DEADLINE")]
    pub deadline: Option<String>,
    /// Retries of a failed download (with capped exponential backoff).
    #[arg(long, env = "TALM_PRECACHE_RETRIES", default_value_t = 5)]
    pub retries: u32,
    /// The low-speed rule: a transfer that gets fewer than this many bytes in one stall period
    /// fails as stalled and is retried (0: no such rule).
    #[arg(long, env = "TALM_PRECACHE_STALL_MIN_BYTES", default_value_t = super::stall::DEFAULT_MIN_BYTES)]
    pub stall_min_bytes: u64,
    /// The low-speed rule's period, in seconds (0: no such rule).
    #[arg(long, env = "TALM_PRECACHE_STALL_PERIOD_SECS", default_value_t = super::stall::DEFAULT_PERIOD_SECS)]
    pub stall_period_secs: u64,
}

/// A path made absolute against the current directory (the import hands paths to skopeo and
/// containers-storage, which refuse relative ones). Used as the value parser of the path flags.
pub fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    std::path::absolute(s)
        .map_err(|e| format!("{s:?}: cannot make the path absolute (current directory: {e})"))
}

/// `talm-agent precache status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, env = "TALM_AGENT_STATE_DIR", value_parser = absolute_path)]
    pub state_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Errors of the `precache` subcommands.
#[derive(Debug, thiserror::Error)]
pub enum PrecacheCliError {
    /// Bad arguments or spec file.
    #[error("{0}")]
    Usage(String),
    /// The run failed.
    #[error("pre-cache failed: {0}")]
    Run(#[from] PrecacheError),
    /// The status file cannot be read.
    #[error("{0}")]
    Status(std::io::Error),
}

impl PrecacheArgs {
    /// Runs the subcommand; `now` is the wall clock read at the entry point.
    pub fn run(&self, now: jiff::Timestamp) -> Result<(), PrecacheCliError> {
        match &self.command {
            PrecacheCommand::Run(a) => a.run(now).map(drop),
            PrecacheCommand::Status(a) => a.run(),
        }
    }
}

impl StatusArgs {
    /// Prints the status.
    pub fn run(&self) -> Result<(), PrecacheCliError> {
        let s = status::load(&self.state_dir).map_err(PrecacheCliError::Status)?;
        match self.output {
            Output::Json => {
                let text = serde_json::to_string_pretty(&s)
                    .map_err(|e| PrecacheCliError::Status(std::io::Error::other(e)))?;
                println!("{text}");
            }
            Output::Text => print!("{}", status::render_text(&s)),
        }
        Ok(())
    }
}

impl RunArgs {
    /// The engine options these flags describe (`now`: the wall clock, for `--deadline`).
    pub fn options(&self, now: jiff::Timestamp) -> Result<Options, PrecacheCliError> {
        let mut o = Options::new(&self.state_dir, &self.host_root);
        if self.parallel == 0 {
            return Err(PrecacheCliError::Usage(
                "--parallel must be at least 1".into(),
            ));
        }
        if self.import_parallel == 0 {
            return Err(PrecacheCliError::Usage(
                "--import-parallel must be at least 1".into(),
            ));
        }
        o.parallel = self.parallel;
        o.import_parallel = self.import_parallel;
        o.bandwidth_limit = self.bandwidth_limit;
        o.storage_driver = self.storage_driver.clone();
        o.import = !self.no_import;
        o.retry.retries = self.retries;
        o.stall = super::stall::StallPolicy {
            min_bytes: self.stall_min_bytes,
            period: Duration::from_secs(self.stall_period_secs),
        };
        let runner = RealRunner::new();
        o.low_priority_tools = runner.available("ionice") && runner.available("nice");
        if let Some(d) = &self.deadline {
            let at: jiff::Timestamp = d.parse().map_err(|e| {
                PrecacheCliError::Usage(format!("--deadline {d:?}: not an RFC 3339 time: {e}"))
            })?;
            let left = at.duration_since(now);
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            o.deadline = Some(tokio::time::Instant::now() + left);
        }
        Ok(o)
    }

    /// Runs the pre-cache with console progress. Lowers the process's priority first (nice 10,
    /// before the runtime's threads exist, so they all inherit it).
    pub fn run(&self, now: jiff::Timestamp) -> Result<PrecacheStatus, PrecacheCliError> {
        let spec = super::spec::load(&self.spec).map_err(PrecacheCliError::Usage)?;
        let opts = self.options(now)?;
        super::import::lower_priority();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| PrecacheCliError::Usage(format!("tokio runtime: {e}")))?;
        let deps = Deps {
            host: Arc::new(Host::new(&self.host_root)),
            runner: Arc::new(RealRunner::new()),
            clock: Arc::new(talm_shared::clock::SystemClock),
        };
        let console = Arc::new(Console::new(std::io::stderr().is_terminal()));
        let c2 = console.clone();
        let result = rt.block_on(super::run(
            &opts,
            &spec,
            &deps,
            Arc::new(move |s: &PrecacheStatus| c2.show(s)),
        ));
        console.finish();
        match result {
            Ok(s) => {
                tracing::info!(
                    images = s.images_total,
                    present = s.counters.images_present,
                    fetched = %human_bytes(s.counters.bytes_fetched),
                    "pre-cache succeeded"
                );
                Ok(s)
            }
            Err(e) => {
                if let Ok(s) = status::load(&self.state_dir) {
                    for f in s.failures() {
                        tracing::error!("{f}");
                    }
                }
                Err(e.into())
            }
        }
    }
}

/// Progress on the console: a bar on a terminal, a log line every 5 s otherwise.
#[derive(Debug)]
struct Console {
    bar: Option<indicatif::ProgressBar>,
    last_log: Mutex<Option<std::time::Instant>>,
}

impl Console {
    fn new(tty: bool) -> Self {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            last_log: Mutex::new(None),
        }
    }

    fn show(&self, s: &PrecacheStatus) {
        match &self.bar {
            Some(b) => {
                b.set_length(s.bytes_total);
                b.set_position(s.bytes_done);
                b.set_message(format!(
                    "{:?} images {}/{}",
                    s.state, s.images_done, s.images_total
                ));
            }
            None => {
                let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                if due || s.state.is_final() {
                    *last = Some(std::time::Instant::now());
                    tracing::info!(
                        state = ?s.state,
                        images = format!("{}/{}", s.images_done, s.images_total),
                        bytes = format!("{}/{}", human_bytes(s.bytes_done), human_bytes(s.bytes_total)),
                        rate = format!("{}/s", human_bytes(s.rate_bytes_per_sec)),
                        eta_s = s.eta_seconds.unwrap_or(0),
                        "pre-cache progress"
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
