//! talm-hub: the hub side of talm.
//!
//! # Layout
//! - [`args`]: the command line (clap derive): the global logging flags of
//!   [`talm_shared::telemetry`] (which also sets up the logs) and one subcommand each.
//! - [`crds`]: `talm-hub crds`, the generated CRD manifests and their drift check.
//! - [`plan`]: `talm-hub plan`, the offline adapter: read objects from files, run the engine to a
//!   fixed point at a given time, print the resulting objects or a table.
//! - [`operator`]: `talm-hub run`, the CGU operator (watchers, controller, leader election).
//! - [`admin`] and [`metrics`]: the operator's `/healthz`, `/readyz` and `/metrics`.
//! - [`admin_auth`]: bearer-token authentication and authorization of the admin endpoints
//!   that expose fleet data (kube-rbac-proxy style, `talm-hub run --admin-auth`).
//! - [`error`]: the library's error type and its exit codes.
//!
//! The binary (`main.rs`) only parses arguments and reads the clock; [`main`] does the rest.
#![warn(missing_docs)]

pub mod admin;
pub mod admin_auth;
pub mod args;
pub mod crds;
pub mod error;
pub mod events;
pub mod metrics;
pub mod operator;
pub mod plan;

use std::process::ExitCode;

pub use args::Args;
pub use error::Error;

use args::Command;

/// Runs one command. `now` is the wall-clock time read by the entry point; subcommands that
/// take `--now` use it as their default.
pub fn run(args: Args, now: jiff::Timestamp) -> Result<(), Error> {
    let Args { log, command } = args;
    talm_shared::telemetry::init(&log)?;
    match command {
        Command::Plan(plan_args) => plan::run(&plan_args, now),
        Command::Crds(crds_args) => crds::run(&crds_args),
        Command::Run(run_args) => operator::cli::run(&run_args),
        Command::Gateway(gw_args) => gateway(gw_args),
        Command::Agents(agents_args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Gateway(format!("tokio runtime: {e}")))?;
            let out = if agents_args.state_dir.is_some() {
                rt.block_on(talm_gateway::cli::run_agents(&agents_args))
                    .map_err(|e| Error::Gateway(e.to_string()))?
            } else {
                rt.block_on(operator::agents::run_agents_kube(&agents_args))
                    .map_err(Error::operator)?
            };
            println!("{out}");
            Ok(())
        }
    }
}

/// `talm-hub gateway`: runs until SIGTERM or SIGINT.
fn gateway(args: talm_gateway::cli::GatewayArgs) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Gateway(format!("tokio runtime: {e}")))?;
    rt.block_on(talm_gateway::cli::run_gateway(
        args,
        operator::cli::wait_for_signal(),
    ))
    .map_err(|e| Error::Gateway(e.to_string()))
}

/// [`run`], with errors printed as one line on stderr and mapped to the process exit code
/// (see [`Error::exit_code`]).
pub fn main(args: Args, now: jiff::Timestamp) -> ExitCode {
    match run(args, now) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
