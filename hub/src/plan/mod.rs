//! `talm-hub plan`: the offline adapter.
pub mod load;

use crate::args::PlanArgs;
use crate::error::Error;

/// Runs `talm-hub plan`.
pub fn run(_args: &PlanArgs, _now: jiff::Timestamp) -> Result<(), Error> {
    Ok(())
}
