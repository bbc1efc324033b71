//! Logging setup for both binaries: one set of flags ([`LogArgs`], flattened into `talm-hub`'s
//! and `talm-agent`'s arguments) and one [`init`]. Logs go to stderr (stdout carries results),
//! as plain lines or JSON, filtered by tracing `EnvFilter` directives.
//!
//! The flags and their environment fallbacks are `--log-level` / `TALM_LOG_LEVEL` (default
//! `info`) and `--log-format` / `TALM_LOG_FORMAT` (default `plain`). `RUST_LOG` is not read.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The environment fallback of `--log-level`.
pub const LOG_LEVEL_ENV: &str = "TALM_LOG_LEVEL";
/// The environment fallback of `--log-format`.
pub const LOG_FORMAT_ENV: &str = "TALM_LOG_FORMAT";

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Logging flags, flattened into each binary's arguments (accepted before or after the
/// subcommand).
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log filter directives (tracing `EnvFilter` syntax), e.g. `info` or
    /// `talm_hub=debug,warn`.
    #[arg(long, global = true, env = LOG_LEVEL_ENV, default_value = "info")]
    pub log_level: String,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, env = LOG_FORMAT_ENV, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Plain,
        }
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--log-level` is not valid filter syntax.
    #[error("invalid log level {level:?}: {message}")]
    InvalidLevel {
        /// The directives given.
        level: String,
        /// What is wrong with them.
        message: String,
    },
    /// A global subscriber was installed before.
    #[error("logging was already set up: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber. Fails on an invalid filter, or when a subscriber is already
/// installed (tests that call it twice may ignore that error).
pub fn init(args: &LogArgs) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|e| TelemetryError::InvalidLevel {
        level: args.log_level.clone(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| TelemetryError::AlreadySet(e.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_parse_and_default() {
        let c = Cli::try_parse_from(["x", "--log-level", "debug", "--log-format", "json"]).unwrap();
        assert_eq!(c.log.log_level, "debug");
        assert_eq!(c.log.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn an_invalid_level_is_an_error() {
        let args = LogArgs {
            log_level: "talm=[".into(),
            log_format: LogFormat::Plain,
        };
        assert!(matches!(
            init(&args),
            Err(TelemetryError::InvalidLevel { .. })
        ));
    }
}
