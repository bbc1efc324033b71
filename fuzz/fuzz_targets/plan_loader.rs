//! `talm-hub plan` input: the bytes are one input read from stdin (`-`), so the loader sniffs
//! JSON or YAML itself (multi-document, `kind: List`), then the objects go through the typed
//! checks (`Store::from_loaded`) and, when they load, the engine runs to a fixed point at a
//! fixed instant and the result is rendered as YAML, JSON and the table. Any panic, hang or
//! unbounded allocation is a finding; refusals are the expected outcome for most inputs.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use talm_hub::args::OutputFormat;
use talm_hub::plan::{load, output, settle, store::Store};
use talm_hub_core::NoUpdateGraph;

fuzz_target!(|data: &[u8]| {
    let mut stdin = data;
    let Ok(loaded) = load::load_paths(&[PathBuf::from("-")], &mut stdin) else {
        return;
    };
    // 2026-12-07T04:00:00Z: any fixed instant; time does not move within a run.
    let now = jiff::Timestamp::from_second(1_796_529_600).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let Ok(mut store) = Store::from_loaded(loaded, now) else {
        return;
    };
    let Ok(settled) = settle(&mut store, now, &NoUpdateGraph, talm_hub_core::reconcile) else {
        return;
    };
    for format in [OutputFormat::Yaml, OutputFormat::Json, OutputFormat::Table] {
        let mut sink = Vec::new();
        let _ = output::write(&mut sink, format, &store, &settled);
    }
});
