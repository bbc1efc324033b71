//! Admission: which queued tasks are let in now.
//!
//! Active tasks (not held) keep their place whatever the limits say now (no preemption). Queued
//! tasks are walked in queue order; one is let in when every limiter that applies to it has
//! room ([`Limit::concurrency`](super::budgets::Limit::concurrency)). A task that finds a
//! limiter full blocks that limiter for the rest of the walk (head-of-line per limiter), so a
//! later batch never overtakes an earlier one under the same budget, while tasks under other
//! budgets go on. A task waiting for its agent's registry report waits without blocking anyone
//! (the agent reports while held; an agent that never does must not stop its budget).
//!
//! Batch window: under one limiter at most two consecutive batches pre-cache at once. A queued
//! task of batch `b` waits while a live task (queued or downloading) of batch `b - 2` or
//! earlier shares any limiter with it, so every cluster of batch 1 has finished before a
//! cluster of batch 3 under the same budget starts, even when another limit (a registry) holds
//! batch 1 back and would otherwise hand its site's free slots to later batches. A budget that
//! selects the whole fleet makes the window fleet-wide.

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
    // The earliest batch still live under each limiter (tasks without an order have none).
    let mut earliest: Vec<Option<i64>> = vec![None; fleet.limiters.len()];
    for t in fleet.tasks.iter().filter(|t| t.play == Play::Live) {
        if let Some(o) = t.order {
            for &l in &t.limiters {
                earliest[l] = Some(earliest[l].map_or(o.batch, |e| e.min(o.batch)));
            }
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
        if let Some(o) = t.order
            && t.limiters
                .iter()
                .any(|&l| earliest[l].is_some_and(|e| e < o.batch.saturating_sub(1)))
        {
            // Outside the batch window: later tasks are of this batch or later, so they wait
            // too; the limiters stay open for tasks of other budgets.
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
