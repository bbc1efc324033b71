//! The `talm-hub` binary: parse the command line, read the clock once, run, map errors to exit
//! codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use talm_hub::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    #[allow(clippy::disallowed_methods)] // the entry point is the one place that reads the clock
    let now = jiff::Timestamp::now();
    talm_hub::main(args, now)
}
