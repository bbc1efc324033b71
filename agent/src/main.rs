//! talm-agent: the on-node daemon for SNO clusters (see the library docs for the layout).

use clap::Parser;
use talm_agent::args::{Cli, Command, Output};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    talm_shared::telemetry::init(&cli.log);
    match cli.command {
        Command::Run(args) => args.run().await?,
        Command::Status(args) => {
            let view = talm_agent::status::load(&args.state_dir)?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Output::Text => print!("{}", talm_agent::status::render_text(&view)),
            }
        }
    }
    Ok(())
}
