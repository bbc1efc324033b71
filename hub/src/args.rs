//! The command line. One [`Args`] for the binary: global logging flags plus one subcommand.
//!
//! To add a subcommand, add a variant to [`Command`] with its own `*Args` struct here and a
//! match arm in [`crate::run`]. Every flag that makes sense in a Deployment has an `env`
//! fallback named `TALM_...`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use talm_shared::telemetry::LogArgs;

use crate::admin_auth::AdminAuthMode;

/// talm hub: rolls RHACM policies out to fleets of clusters in batches.
#[derive(Clone, Debug, Parser)]
#[command(name = "talm-hub", version, about, propagate_version = true)]
pub struct Args {
    /// Logging flags (accepted before or after the subcommand), shared with talm-agent.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start-up and moved into its runner: boxing the large `run` flags would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the engine offline over objects read from files and print the result.
    Plan(PlanArgs),
    /// Write (or check) the CRD manifests of the kinds talm owns.
    Crds(CrdsArgs),
    /// Run the ClusterGroupUpgrade operator against the cluster (in-cluster config or
    /// KUBECONFIG) until SIGTERM or SIGINT. Every replica also serves the agent gateway
    /// (--grpc-addr), with enrollment in Secrets and SpokeAgent status in the API.
    Run(RunArgs),
    /// Serve the agent channel (mTLS gRPC), enrollment and the /agents view, with the
    /// file-backed enrollment and SpokeAgent stores under --state-dir, until SIGTERM or SIGINT.
    Gateway(talm_gateway::cli::GatewayArgs),
    /// Manage agent enrollment: `agents token CLUSTER`, `agents revoke CLUSTER`. With
    /// --state-dir, the files of `talm-hub gateway`; without, the Secrets of `talm-hub run`.
    Agents(talm_gateway::cli::AgentsArgs),
}

/// `talm-hub plan`.
#[derive(Clone, Debug, clap::Args)]
pub struct PlanArgs {
    /// Input: a YAML/JSON file, a directory (its *.yaml, *.yml and *.json files, by name, not
    /// recursive) or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// The time the engine runs at (RFC 3339, e.g. 2026-01-01T10:00:00Z). Default: now.
    #[arg(long, value_name = "RFC3339", env = "TALM_PLAN_NOW")]
    pub now: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, env = "TALM_PLAN_OUTPUT", default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Cincinnati graphs to answer update-graph lookups from: a YAML/JSON mapping of
    /// `<upstream>?channel=<channel>` to `{nodes: [{version, payload}]}`.
    #[arg(long, value_name = "FILE", env = "TALM_UPDATE_GRAPH")]
    pub update_graph: Option<PathBuf>,
}

/// `talm-hub plan -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A per-CGU summary: state, batches, cluster states, exclusions, pending actions.
    Table,
    /// Every object after the run, as multi-document YAML (feed it back with a later --now).
    Yaml,
    /// Every object after the run, as one JSON `List`.
    Json,
}

/// `talm-hub crds`.
#[derive(Clone, Debug, clap::Args)]
pub struct CrdsArgs {
    /// Directory to write the CRD manifests to.
    #[arg(
        long,
        value_name = "DIR",
        env = "TALM_CRDS_DIR",
        default_value = "deploy/crds"
    )]
    pub dir: PathBuf,
    /// Write nothing; exit 1 naming each file that is missing or differs.
    #[arg(long)]
    pub check: bool,
}

/// `talm-hub run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the `/metrics` endpoint.
    #[arg(long, env = "TALM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of the `/healthz` and `/readyz` endpoints (may equal --metrics-addr).
    #[arg(long, env = "TALM_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// How `/metrics` and `/agents` are guarded on both admin ports: `kube` (a bearer token,
    /// checked with a TokenReview and a SubjectAccessReview of the path, as kube-rbac-proxy
    /// does) or `none` (open, for local runs). `/healthz` and `/readyz` are always open.
    #[arg(long, env = "TALM_ADMIN_AUTH", value_enum, default_value_t = AdminAuthMode::Kube)]
    pub admin_auth: AdminAuthMode,
    /// Elect a leader with a Lease; only the leader reconciles (`--leader-elect false` for a
    /// single replica without a Lease).
    #[arg(long, env = "TALM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "TALM_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "TALM_LEASE_NAME", default_value = "talm-hub-leader")]
    pub lease_name: String,
    /// This replica's identity (Lease holder, events' reportingInstance); default: the pod
    /// name (`HOSTNAME`) and the process id.
    #[arg(long, env = "TALM_IDENTITY")]
    pub identity: Option<String>,
    /// Concurrent CGU reconciles; an invalid value or one below 1 means 5 (as in TALM).
    #[arg(
        long,
        env = "TALM_CGU_CTRL_WORKER_COUNT",
        default_value = "5",
        value_parser = parse_worker_count
    )]
    pub worker_count: u16,
    /// Answer update-graph lookups from this file (as `talm-hub plan --update-graph`).
    #[arg(long, value_name = "FILE", env = "TALM_UPDATE_GRAPH")]
    pub update_graph: Option<PathBuf>,
    /// Skip TLS verification of update-graph requests (TALM's `INSECURE_GRAPH_CALL`).
    #[arg(long, env = "TALM_UPDATE_GRAPH_INSECURE", action = clap::ArgAction::SetTrue)]
    pub update_graph_insecure: bool,
    /// Run the ZTP auto-CGU controller: one CGU `ztp-install/<cluster>` per Available cluster
    /// without `ztp-done` (`--ztp false` turns it off).
    #[arg(long, env = "TALM_ZTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub ztp: bool,
    /// The agent gateway every replica serves.
    #[command(flatten)]
    pub gateway: crate::operator::agents::GatewayArgs,
    /// The Alertmanager webhook receiver (talm extension; off unless --alert-receiver-addr).
    #[command(flatten)]
    pub alerts: crate::operator::alerts::AlertReceiverArgs,
}

/// TALM's rule for `TALM_CGU_CTRL_WORKER_COUNT`: anything but an integer >= 1 means 5.
fn parse_worker_count(s: &str) -> Result<u16, std::convert::Infallible> {
    Ok(s.trim()
        .parse::<u16>()
        .ok()
        .filter(|n| *n >= 1)
        .unwrap_or(5))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use talm_shared::telemetry::LogFormat;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn global_log_flags_are_accepted_after_the_subcommand() {
        let args = Args::try_parse_from([
            "talm-hub",
            "crds",
            "--check",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(args.log.log_format, LogFormat::Json);
        assert_eq!(args.log.log_level, "debug");
        let Command::Crds(crds) = args.command else {
            panic!("expected crds");
        };
        assert!(crds.check);
        assert_eq!(crds.dir, PathBuf::from("deploy/crds"));
    }

    #[test]
    fn plan_takes_repeated_files_and_output() {
        let args = Args::try_parse_from([
            "talm-hub",
            "plan",
            "-f",
            "a.yaml",
            "-f",
            "-",
            "-o",
            "yaml",
            "--now",
            "2026-01-01T00:00:00Z",
        ])
        .unwrap();
        let Command::Plan(plan) = args.command else {
            panic!("expected plan");
        };
        assert_eq!(
            plan.files,
            vec![PathBuf::from("a.yaml"), PathBuf::from("-")]
        );
        assert_eq!(plan.output, OutputFormat::Yaml);
        assert_eq!(plan.now.as_deref(), Some("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn run_defaults_and_worker_count_fallback() {
        let args = Args::try_parse_from(["talm-hub", "run"]).unwrap();
        let Command::Run(run) = args.command else {
            panic!("expected run");
        };
        assert!(run.leader_elect);
        assert_eq!(run.admin_auth, AdminAuthMode::Kube, "guarded unless asked");
        assert_eq!(run.worker_count, 5);
        assert_eq!(run.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        let args = Args::try_parse_from([
            "talm-hub",
            "run",
            "--worker-count",
            "0",
            "--leader-elect",
            "false",
            "--update-graph-insecure",
            "--admin-auth",
            "none",
        ])
        .unwrap();
        let Command::Run(run) = args.command else {
            panic!("expected run");
        };
        assert_eq!(run.worker_count, 5);
        assert!(!run.leader_elect);
        assert!(run.update_graph_insecure);
        assert_eq!(run.admin_auth, AdminAuthMode::None);
        assert!(
            Args::try_parse_from(["talm-hub", "run", "--admin-auth", "off"]).is_err(),
            "only kube or none"
        );
        for (v, want) in [("12", 12), ("x", 5), ("-3", 5)] {
            assert_eq!(parse_worker_count(v).unwrap(), want);
        }
    }

    #[test]
    fn progress_write_interval_defaults_to_20_seconds() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["talm-hub", "run"];
            argv.extend_from_slice(extra);
            match Args::try_parse_from(argv).unwrap().command {
                Command::Run(run) => run.gateway.session,
                _ => panic!("expected run"),
            }
        };
        let s = run(&[]);
        assert_eq!(
            s.progress_write_interval(),
            std::time::Duration::from_secs(20)
        );
        let s = run(&["--progress-write-interval", "5"]);
        assert_eq!(
            s.progress_write_interval(),
            std::time::Duration::from_secs(5)
        );
        // 0 would write on every report: at least a second.
        let s = run(&["--progress-write-interval", "0"]);
        assert_eq!(
            s.progress_write_interval(),
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn plan_requires_a_file() {
        assert!(Args::try_parse_from(["talm-hub", "plan"]).is_err());
    }
}
