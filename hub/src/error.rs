//! The library's error type. Every variant renders as one line (the binary prints it after
//! `error: `) and maps to an exit code: 2 for bad input or usage, 1 for everything else.

use std::path::PathBuf;

use crate::operator::OperatorError;
use crate::plan::load::InputError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file or document is unreadable or invalid (exit 2).
    #[error(transparent)]
    Input(#[from] InputError),
    /// A flag value is invalid, e.g. `--now` is not RFC 3339 (exit 2).
    #[error("{flag}: {message}")]
    Usage {
        /// The flag, e.g. `--now`.
        flag: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The log filter or subscriber could not be set up (exit 2).
    #[error("logging: {0}")]
    Telemetry(#[from] talm_shared::telemetry::TelemetryError),
    /// A file could not be written or read back (exit 1).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `crds --check` found generated files that are missing or out of date (exit 1).
    #[error("CRD manifests out of date (run `talm-hub crds` to regenerate): {}", .0.join(", "))]
    CrdDrift(Vec<String>),
    /// The engine kept asking for immediate requeues with changes (exit 1).
    #[error(
        "the engine did not settle after {passes} passes at this time; still changing: {}",
        .cgus.join(", ")
    )]
    NotConverged {
        /// Passes run.
        passes: usize,
        /// `namespace/name` of the CGUs still requeueing.
        cgus: Vec<String>,
    },
    /// An object could not be converted between its typed and raw forms (exit 1); a bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// Writing the result to stdout failed (exit 1).
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
    /// `gateway` or `agents` failed (exit 1).
    #[error("{0}")]
    Gateway(String),
    /// `run` (the operator, its gateway) or `agents` on Secrets failed at run time: no client
    /// configuration, a listener, the runtime, the gateway's key material (exit 1; exit 2 for
    /// an unreadable `--update-graph`).
    #[error(transparent)]
    Operator(Box<OperatorError>),
}

impl Error {
    /// Wraps an operator error.
    pub fn operator(e: OperatorError) -> Self {
        Error::Operator(Box::new(e))
    }
}

impl Error {
    /// The process exit code for this error: 2 for bad input or usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) | Error::Usage { .. } | Error::Telemetry(_) => 2,
            Error::Operator(e) if matches!(**e, OperatorError::UpdateGraph(_)) => 2,
            Error::Io { .. }
            | Error::CrdDrift(_)
            | Error::NotConverged { .. }
            | Error::Internal(_)
            | Error::Output(_)
            | Error::Gateway(_)
            | Error::Operator(_) => 1,
        }
    }
}
