//! The figures of the `precache_budget` benchmark, computed from the simulated agents'
//! [`Record`]s after a run: per-site aggregate rates over sliding windows, the most clusters
//! downloading at once per registry and per site, and the batch order of starts and finishes.

use crate::agent::{Record, TICK};

/// One cluster: where it is, and what its agent recorded.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub site: usize,
    pub registry: usize,
    /// Its batch in the CGU's remediation plan (0-based), when it is in the plan.
    pub batch: Option<usize>,
    pub rec: Record,
}

/// Length of a rate window, in ticks (10 s).
pub const WINDOW_TICKS: usize = 100;
/// Step between windows, in ticks (1 s).
pub const STEP_TICKS: usize = 10;

/// A site's aggregate rate over its windows.
#[derive(Debug, Clone, Copy)]
pub struct SiteRate {
    /// Windows measured.
    pub windows: usize,
    /// Lowest and highest window rate, bytes/s.
    pub min: f64,
    pub max: f64,
    /// The span the windows cover (see [`site_rate`]), seconds.
    pub from: f64,
    pub to: f64,
}

fn tick_of(secs: f64) -> usize {
    (secs / TICK.as_secs_f64()).ceil() as usize
}

/// Bytes per tick of the clusters `of`, summed.
fn per_tick<'a>(of: impl Iterator<Item = &'a Cluster>) -> Vec<u64> {
    let mut sum: Vec<u64> = Vec::new();
    for c in of {
        let r = &c.rec;
        if sum.len() < r.first_tick + r.bytes.len() {
            sum.resize(r.first_tick + r.bytes.len(), 0);
        }
        for (i, b) in r.bytes.iter().enumerate() {
            sum[r.first_tick + i] += b;
        }
    }
    sum
}

/// The aggregate rate of `site` over every 10 s window (1 s step) that lies between the
/// moment every cluster of the site had its task (the later of the site's first let-in and its
/// last assignment, as the agents received them) and the site's last let-in: throughout such a
/// window the site still had a queued cluster, so the budget, not the lack of work, is what
/// should bound it. `None` when that span is shorter than one window.
pub fn site_rate(clusters: &[Cluster], site: usize) -> Option<SiteRate> {
    let of_site = || clusters.iter().filter(move |c| c.site == site);
    let lets: Vec<f64> = of_site().filter_map(|c| c.rec.let_in).collect();
    let last_assigned = of_site()
        .filter_map(|c| c.rec.assigned)
        .fold(f64::NEG_INFINITY, f64::max);
    let from = lets
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(last_assigned);
    let to = lets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !from.is_finite() || to - from < WINDOW_TICKS as f64 * TICK.as_secs_f64() {
        return None;
    }
    let ticks = per_tick(of_site());
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let (first, last) = (tick_of(from), (to / TICK.as_secs_f64()).floor() as usize);
    let secs = WINDOW_TICKS as f64 * TICK.as_secs_f64();
    let mut out = SiteRate {
        windows: 0,
        min: f64::INFINITY,
        max: 0.0,
        from,
        to,
    };
    let mut w = first;
    while w + WINDOW_TICKS <= last {
        let bytes: u64 = (w..w + WINDOW_TICKS).map(at).sum();
        let rate = bytes as f64 / secs;
        out.min = out.min.min(rate);
        out.max = out.max.max(rate);
        out.windows += 1;
        w += STEP_TICKS;
    }
    Some(out)
}

/// The highest aggregate rate of `site` over any 10 s window (1 s step) of the run, bytes/s.
pub fn peak_site_rate(clusters: &[Cluster], site: usize) -> f64 {
    let ticks = per_tick(clusters.iter().filter(|c| c.site == site));
    let secs = WINDOW_TICKS as f64 * TICK.as_secs_f64();
    let mut best = 0.0f64;
    let mut w = 0;
    loop {
        let bytes: u64 = ticks.iter().skip(w).take(WINDOW_TICKS).sum();
        best = best.max(bytes as f64 / secs);
        if w + WINDOW_TICKS >= ticks.len() {
            return best;
        }
        w += STEP_TICKS;
    }
}

/// The most clusters of `of` downloading at once: intervals from let-in to finish (a cluster
/// that never finished counts until the end).
pub fn max_concurrent<'a>(of: impl Iterator<Item = &'a Cluster>) -> usize {
    let mut events: Vec<(f64, i32)> = Vec::new();
    for c in of {
        if let Some(start) = c.rec.let_in {
            events.push((start, 1));
            events.push((c.rec.finished.unwrap_or(f64::INFINITY), -1));
        }
    }
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max.max(0) as usize
}

/// One batch pair of the order check: batch `k` against batch `k + 2` (0-based).
#[derive(Debug, Clone, Copy)]
pub struct BatchPair {
    pub k: usize,
    /// The last finish in batch `k`, seconds.
    pub last_finish: f64,
    /// The first let-in in batch `k + 2`, seconds.
    pub first_start: f64,
}

impl BatchPair {
    /// Every cluster of batch `k` finished before any cluster of batch `k + 2` started.
    pub fn ordered(&self) -> bool {
        self.last_finish <= self.first_start
    }
}

/// For each batch `k` with a batch `k + 2`: batch `k`'s last finish against batch `k + 2`'s
/// first let-in. `None` for a pair when some cluster of batch `k` never finished or no cluster
/// of batch `k + 2` started.
pub fn batch_order(clusters: &[Cluster]) -> Vec<Option<BatchPair>> {
    let batches = clusters
        .iter()
        .filter_map(|c| c.batch)
        .max()
        .map_or(0, |m| m + 1);
    (0..batches.saturating_sub(2))
        .map(|k| {
            let mut last_finish = f64::NEG_INFINITY;
            for c in clusters.iter().filter(|c| c.batch == Some(k)) {
                last_finish = last_finish.max(c.rec.finished?);
            }
            let first_start = clusters
                .iter()
                .filter(|c| c.batch == Some(k + 2))
                .filter_map(|c| c.rec.let_in)
                .fold(f64::INFINITY, f64::min);
            (last_finish.is_finite() && first_start.is_finite()).then_some(BatchPair {
                k,
                last_finish,
                first_start,
            })
        })
        .collect()
}

/// For every let-in in `site` that came after one of the site's clusters finished: the time
/// from the latest such finish to the let-in, seconds (the hand-over from a finished cluster to
/// a queued one: the agent's result, the scheduler's run, the grant reaching the agent).
pub fn handover_gaps(clusters: &[Cluster], site: usize) -> Vec<f64> {
    let of_site = || clusters.iter().filter(move |c| c.site == site);
    let mut finishes: Vec<f64> = of_site().filter_map(|c| c.rec.finished).collect();
    finishes.sort_by(f64::total_cmp);
    of_site()
        .filter_map(|c| c.rec.let_in)
        .filter_map(|l| {
            let before = finishes.partition_point(|f| *f <= l);
            before.checked_sub(1).map(|i| l - finishes[i])
        })
        .collect()
}
