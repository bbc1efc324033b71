//! talm-agent: the on-node agent (see the library docs for the layout).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    talm_agent::Cli::parse().run()?;
    Ok(())
}
