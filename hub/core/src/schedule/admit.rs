//! Admission: which queued tasks are let in now.
//!
//! Active tasks (not held) keep their place whatever the limits say now (no preemption). Queued
//! tasks are walked in queue order; one is let in when every limiter that applies to it has
//! room ([`Limit::concurrency`](super::budgets::Limit::concurrency)). A task that finds a
//! limiter full blocks that limiter for the rest of the walk (head-of-line per limiter), so a
//! later batch never overtakes an earlier one under the same budget, while tasks under other
//! budgets go on. A task waiting for its agent's registry report waits without blocking anyone
//! (the agent reports while held; an agent that never does must not stop its budget).

use super::fleet::{Fleet, Play};

/// The `hold` each task should have (indexed like [`Fleet::tasks`]; tasks not in play keep
/// theirs).
pub(super) fn admit(fleet: &Fleet<'_>) -> Vec<bool> {
    let mut active = vec![0i64; fleet.limiters.len()];
    for t in fleet
        .tasks
        .iter()
        .filter(|t| t.play == Play::Live && !t.held)
    {
        for &l in &t.limiters {
            active[l] += 1;
        }
    }
    let mut blocked = vec![false; fleet.limiters.len()];
    let mut hold: Vec<bool> = fleet.tasks.iter().map(|t| t.held).collect();
    for (i, t) in fleet.tasks.iter().enumerate() {
        if t.play != Play::Live || !t.held || t.awaits_registries {
            continue;
        }
        if t.limiters.iter().any(|&l| blocked[l]) {
            continue;
        }
        let mut room = true;
        for &l in &t.limiters {
            if fleet.limiters[l]
                .concurrency()
                .is_some_and(|c| active[l] >= c)
            {
                blocked[l] = true;
                room = false;
            }
        }
        if room {
            hold[i] = false;
            for &l in &t.limiters {
                active[l] += 1;
            }
        }
    }
    hold
}
