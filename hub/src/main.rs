//! The `talm-hub` binary: parse the command line, read the clock once, run, map errors to exit
//! codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use talm_hub::Args;

/// mimalloc instead of glibc's malloc: at fleet scale the operator builds and drops
/// megabyte-sized watch objects all the time, and with glibc `malloc`/`free` (and their
/// consolidation) were about 40% of its CPU samples (`perf`, 10,000-cluster benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    #[allow(clippy::disallowed_methods)] // the entry point is the one place that reads the clock
    let now = jiff::Timestamp::now();
    talm_hub::main(args, now)
}
