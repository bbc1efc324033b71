//! Logging setup: a `tracing` subscriber writing to stderr (stdout carries results), in plain
//! text or JSON, filtered by `--log-level` / `RUST_LOG` directives.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::{LogArgs, LogFormat};
use crate::error::Error;

/// Installs the global subscriber. Fails on an invalid filter directive, or when a subscriber is
/// already installed.
pub fn init(log: &LogArgs) -> Result<(), Error> {
    let filter = EnvFilter::try_new(&log.log_level)
        .map_err(|e| Error::Telemetry(format!("invalid log level {:?}: {e}", log.log_level)))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match log.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| Error::Telemetry(e.to_string()))
}
