//! talm-agent: the on-node daemon for SNO clusters. A stub until the agent issues land
//! (pre-cache, backup, recovery, and the hub channel).

use clap::Parser;

/// talm-agent command line.
#[derive(Debug, Parser)]
#[command(
    name = "talm-agent",
    version,
    about = "talm on-node agent (not implemented yet)"
)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("talm-agent has no commands yet: see the agent issues")
}
