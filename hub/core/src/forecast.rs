//! The rollout forecast (`status.forecast`, a talm extension): learn each managed policy's time
//! to compliance from the CGU's own clusters, and project the end of every remaining batch and of
//! the CGU from it, the maintenance windows and the timeouts included.
//!
//! - **Learning.** One [`Histogram`] per policy: log-scale bins (10 s × 1.15^i), so its size is
//!   bounded by the range of durations (at most [`BINS`] bins), whatever the fleet, while it
//!   keeps every observation's bin (the tail that decides a batch's end is not sampled away).
//!   A root Policy annotation `talm.dev/expected-duration: 45m` is a prior: it counts as
//!   [`PRIOR_WEIGHT`] observations of that duration.
//! - **Projection.** A cluster's time is the sum of the policies it needs, drawn [`SAMPLES`]
//!   times from the learned distributions with a fixed pseudo-random sequence (deterministic).
//!   A batch of `n` clusters ends with its slowest one: its p90 duration (the window-fit
//!   rule's need) is the draws' quantile `0.9^(1/n)`, and its mean and variance come from the
//!   same order statistics. The expected chain adds the batches' means; the p90 chain adds the
//!   means plus 1.28 standard deviations of their sum (a sum of many batches is about normal;
//!   adding each batch's own p90 would be far too wide). Each batch is capped by its timeout
//!   (the last batch: the global one). Batches are chained from now: each one starts when the
//!   previous one ends, or later when the maintenance windows make it wait
//!   ([`crate::windows::gate`], with the batch's p90 duration as its
//!   need), and waits do not count against the timeouts.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{BatchForecast, Forecast, PolicyForecast};

use crate::timeouts::batch_timeout;
use crate::windows::{self, Schedule};

/// Root-policy annotation holding the expected time to compliance, e.g. `45m`.
pub const EXPECTED_DURATION_ANNOTATION: &str = "talm.dev/expected-duration";
/// How many observations a prior counts as.
pub const PRIOR_WEIGHT: u64 = 3;
/// The number of histogram bins: 10 s × 1.15^120 is about 2.1 years.
pub const BINS: usize = 120;

const BASE_SECS: f64 = 10.0;
const RATIO: f64 = 1.15;

/// A fixed-range log-scale histogram of durations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<usize, u64>,
}

fn bin_of(d: SignedDuration) -> usize {
    let secs = d.as_secs_f64();
    if secs < BASE_SECS * RATIO {
        return 0;
    }
    let i = ((secs / BASE_SECS).ln() / RATIO.ln()).floor();
    if i.is_finite() && i > 0.0 {
        (i as usize).min(BINS - 1)
    } else {
        0
    }
}

fn bin_lower(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        BASE_SECS * RATIO.powi(i32::try_from(i).unwrap_or(i32::MAX))
    }
}

fn bin_upper(i: usize) -> f64 {
    BASE_SECS * RATIO.powi(i32::try_from(i + 1).unwrap_or(i32::MAX))
}

impl Histogram {
    /// Reads the `bin:count,...` form kept in status; anything malformed (an edited status)
    /// is dropped, never an error.
    pub fn parse(s: &str) -> Histogram {
        let mut counts = BTreeMap::new();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let Some((b, c)) = pair.split_once(':') else {
                continue;
            };
            if let (Ok(b), Ok(c)) = (b.trim().parse::<usize>(), c.trim().parse::<u64>())
                && b < BINS
                && c > 0
            {
                *counts.entry(b).or_insert(0u64) += c;
            }
        }
        Histogram { counts }
    }

    /// The `bin:count,...` form kept in status.
    pub fn render(&self) -> String {
        self.counts
            .iter()
            .map(|(b, c)| format!("{b}:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Adds one observation.
    pub fn add(&mut self, d: SignedDuration) {
        *self.counts.entry(bin_of(d)).or_insert(0) += 1;
    }

    /// The number of observations.
    pub fn len(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Whether there is no observation.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The distribution of the observations plus the prior (weighted [`PRIOR_WEIGHT`]);
    /// `None` with neither.
    pub fn cdf(&self, prior: Option<SignedDuration>) -> Option<Cdf> {
        let mut counts = self.counts.clone();
        if let Some(p) = prior {
            *counts.entry(bin_of(p)).or_insert(0) += PRIOR_WEIGHT;
        }
        let mut cum = 0.0;
        let steps: Vec<(f64, usize)> = counts
            .iter()
            .map(|(&b, &c)| {
                cum += c as f64;
                (cum, b)
            })
            .collect();
        (cum > 0.0).then_some(Cdf { steps, total: cum })
    }

    /// Quantile `q` (0..=1) of the observations plus the prior (weighted [`PRIOR_WEIGHT`]),
    /// interpolated geometrically inside a bin; `None` with neither.
    pub fn quantile(&self, q: f64, prior: Option<SignedDuration>) -> Option<SignedDuration> {
        let mut counts = self.counts.clone();
        if let Some(p) = prior {
            *counts.entry(bin_of(p)).or_insert(0) += PRIOR_WEIGHT;
        }
        let total: u64 = counts.values().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0.0;
        let last = counts.keys().next_back().copied().unwrap_or(0);
        for (&b, &c) in &counts {
            let c = c as f64;
            if below + c >= rank || b == last {
                let frac = ((rank - below) / c).clamp(0.0, 1.0);
                let (lo, hi) = (bin_lower(b).max(1.0), bin_upper(b));
                let v = lo * (hi / lo).powf(frac);
                return Some(SignedDuration::from_secs_f64(v.min(1e10)));
            }
            below += c;
        }
        None
    }
}

/// The prior of a root policy, from its annotation value; `None` when it is not a positive
/// duration.
pub fn prior(annotation: Option<&str>) -> Option<SignedDuration> {
    annotation?
        .trim()
        .parse::<SignedDuration>()
        .ok()
        .filter(|d| *d > SignedDuration::ZERO)
}

/// One managed policy's learner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyModel {
    /// Root policy name.
    pub name: String,
    /// The observations.
    pub histogram: Histogram,
    /// The prior, when the root Policy has a valid annotation.
    pub prior: Option<SignedDuration>,
}

impl PolicyModel {
    /// Whether it can predict: an observation or a prior.
    pub fn has_basis(&self) -> bool {
        !self.histogram.is_empty() || self.prior.is_some()
    }
}

/// What the forecast knows, per managed policy (in `managedPoliciesForUpgrade` order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// The learners.
    pub policies: Vec<PolicyModel>,
}

impl Model {
    /// The model for these policies (names and priors), with what `previous` had learned.
    pub fn new(
        policies: impl IntoIterator<Item = (String, Option<SignedDuration>)>,
        previous: Option<&Forecast>,
    ) -> Model {
        let learned: BTreeMap<&str, &PolicyForecast> = previous
            .map(|f| f.policies.iter().map(|p| (p.name.as_str(), p)).collect())
            .unwrap_or_default();
        Model {
            policies: policies
                .into_iter()
                .map(|(name, prior)| PolicyModel {
                    histogram: learned
                        .get(name.as_str())
                        .map(|p| Histogram::parse(&p.histogram))
                        .unwrap_or_default(),
                    name,
                    prior,
                })
                .collect(),
        }
    }

    /// Records that a cluster took `d` to move past policy `index`.
    pub fn observe(&mut self, index: usize, d: SignedDuration) {
        if let Some(p) = self.policies.get_mut(index) {
            p.histogram.add(d.max(SignedDuration::ZERO));
        }
    }

    /// Quantile `q` of the duration of a batch of `clusters` clusters that need the policies
    /// `needed` (indexes): `None` unless each of them has a basis.
    pub fn batch_duration(
        &self,
        needed: &[usize],
        clusters: usize,
        q: f64,
    ) -> Option<SignedDuration> {
        Some(batch_quantile(&self.cluster_times(needed)?, clusters, q))
    }

    /// A cluster's time through the policies `needed`, as [`SAMPLES`] sorted draws (seconds):
    /// each draw sums one draw from each policy's distribution (the policies are taken as
    /// independent). The draws come from a fixed pseudo-random sequence, so the result depends
    /// only on the model. `None` unless every policy has a basis.
    pub fn cluster_times(&self, needed: &[usize]) -> Option<Vec<f64>> {
        let cdfs = needed
            .iter()
            .map(|&i| {
                let p = self.policies.get(i)?;
                p.histogram.cdf(p.prior)
            })
            .collect::<Option<Vec<Cdf>>>()?;
        let mut rng = SplitMix(0x07a1_df0e_ca57_u64);
        let mut out: Vec<f64> = (0..SAMPLES)
            .map(|_| cdfs.iter().map(|c| c.sample(rng.unit())).sum())
            .collect();
        out.sort_by(f64::total_cmp);
        Some(out)
    }

    /// The basis as kept in status.
    pub fn basis(&self) -> Vec<PolicyForecast> {
        let fmt = |d: Option<SignedDuration>| d.map(|d| format!("{:#}", round(d)));
        self.policies
            .iter()
            .map(|p| PolicyForecast {
                name: p.name.clone(),
                observations: p.histogram.len(),
                prior: fmt(p.prior),
                p50: fmt(p.histogram.quantile(0.5, p.prior)),
                p90: fmt(p.histogram.quantile(0.9, p.prior)),
                histogram: p.histogram.render(),
            })
            .collect()
    }
}

/// A duration rounded to whole seconds (the forecast's precision).
fn round(d: SignedDuration) -> SignedDuration {
    SignedDuration::from_secs(d.as_secs())
}

/// How many draws of a cluster's time the projection makes.
pub const SAMPLES: usize = 4096;

/// Quantile `q` of the slowest of `clusters` clusters whose times are the sorted draws
/// `times`: the draws' quantile `q^(1/clusters)`.
fn batch_quantile(times: &[f64], clusters: usize, q: f64) -> SignedDuration {
    let n = clusters.max(1) as f64;
    let level = q.clamp(0.0, 1.0).powf(1.0 / n);
    let idx = ((level * times.len() as f64).ceil() as usize)
        .saturating_sub(1)
        .min(times.len().saturating_sub(1));
    let secs = times.get(idx).copied().unwrap_or(0.0);
    round(SignedDuration::from_secs_f64(secs.clamp(0.0, 1e10)))
}

/// The standard normal's 90th percentile.
const Z90: f64 = 1.281_551_565_5;

/// Seconds as a whole-second duration.
fn secs(s: f64) -> SignedDuration {
    round(SignedDuration::from_secs_f64(s.clamp(0.0, 1e10)))
}

/// The mean and variance (seconds, seconds²) of the slowest of `clusters` clusters whose
/// times are the sorted draws `times` (the draws taken as the distribution: the slowest is draw
/// `i` of `K` with probability `(i/K)^n − ((i−1)/K)^n`).
fn batch_stats(times: &[f64], clusters: usize) -> (f64, f64) {
    let n = i32::try_from(clusters.max(1)).unwrap_or(i32::MAX);
    let k = times.len() as f64;
    let (mut m1, mut m2) = (0.0, 0.0);
    let mut below = 0.0f64;
    for (i, x) in times.iter().enumerate() {
        let at = ((i + 1) as f64 / k).powi(n);
        let w = at - below;
        below = at;
        m1 += w * x;
        m2 += w * x * x;
    }
    (m1, (m2 - m1 * m1).max(0.0))
}

/// splitmix64: a small, fixed pseudo-random sequence (determinism, not secrecy). The forecast
/// draws its cluster times from it; the forecast benchmark draws its simulated fleets from it.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 bits of the sequence.
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A histogram's distribution, for drawing from it.
#[derive(Clone, Debug)]
pub struct Cdf {
    /// (cumulative count up to and including the bin, bin).
    steps: Vec<(f64, usize)>,
    total: f64,
}

impl Cdf {
    /// The duration (seconds) at cumulative probability `u`, interpolated linearly inside its
    /// bin (cheap: the projection draws thousands).
    fn sample(&self, u: f64) -> f64 {
        let rank = u.clamp(0.0, 1.0) * self.total;
        let i = self
            .steps
            .partition_point(|(cum, _)| *cum < rank)
            .min(self.steps.len().saturating_sub(1));
        let Some(&(cum, b)) = self.steps.get(i) else {
            return 0.0;
        };
        let before = if i == 0 { 0.0 } else { self.steps[i - 1].0 };
        let frac = ((rank - before) / (cum - before).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
        let (lo, hi) = (bin_lower(b), bin_upper(b));
        lo + (hi - lo) * frac
    }
}

/// One batch as the projection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBatch {
    /// 1-based index in the plan.
    pub index: usize,
    /// How many clusters it has.
    pub clusters: usize,
    /// The policies (indexes into the model) some cluster of it still needs.
    pub needed: Vec<usize>,
}

/// The rollout's state, for the projection.
#[derive(Clone, Debug)]
pub struct Rollout<'a> {
    /// The current time.
    pub now: Timestamp,
    /// The number of batches in the plan.
    pub plan_len: usize,
    /// The batches left, the current one first.
    pub batches: Vec<PlannedBatch>,
    /// When the current (first) batch started, if it has.
    pub current_started: Option<Timestamp>,
    /// `remediationStrategy.timeout` in minutes.
    pub timeout_minutes: i32,
    /// `startedAt` shifted by the excluded time so far ([`crate::timeouts::excluded`]).
    pub clock_start: Timestamp,
    /// The maintenance windows, if any.
    pub schedule: Option<&'a Schedule>,
}

/// Projects the remaining batches and the CGU's completion.
pub fn project(model: &Model, r: &Rollout<'_>) -> Forecast {
    let mut out = Forecast {
        policies: model.basis(),
        ..Default::default()
    };
    let global = SignedDuration::from_mins(i64::from(r.timeout_minutes));
    let plan_len = r.plan_len;
    // Two chains: the median and the 90th percentile. Each keeps its own excluded wait time.
    let mut chain: [(Option<Timestamp>, SignedDuration); 2] =
        [(Some(r.now), SignedDuration::ZERO); 2];
    let mut based = true;
    // Most batches need the same policies and have the same size: draw each set's cluster
    // times once, and work out each (set, size)'s statistics once.
    let mut times: BTreeMap<&[usize], Option<Vec<f64>>> = BTreeMap::new();
    type Stats = Option<((f64, f64), SignedDuration)>;
    let mut stats_of: BTreeMap<(&[usize], usize), Stats> = BTreeMap::new();
    // The variance of the sum of the batch durations so far (seconds²).
    let mut var_sum = 0.0f64;
    for (k, b) in r.batches.iter().enumerate() {
        let key = (b.needed.as_slice(), b.clusters);
        let cached = match stats_of.get(&key) {
            Some(c) => *c,
            None => {
                let t = times
                    .entry(b.needed.as_slice())
                    .or_insert_with(|| model.cluster_times(&b.needed));
                let c = t.as_deref().map(|t| {
                    (
                        batch_stats(t, b.clusters),
                        batch_quantile(t, b.clusters, 0.9),
                    )
                });
                stats_of.insert(key, c);
                c
            }
        };
        // The expected chain adds each batch's mean duration; the p90 chain adds the mean plus
        // what the batch adds to 1.28 standard deviations of the sum (the sum of many batches
        // is about normal, so this is its 90th percentile, not the far wider sum of the
        // batches' own 90th percentiles).
        let stats = cached.map(|c| c.0);
        let d90 = cached.map(|c| c.1);
        let (d50, d90_chain) = match stats {
            Some((mean, var)) => {
                let before = var_sum.sqrt();
                var_sum += var;
                let extra = Z90 * (var_sum.sqrt() - before);
                (Some(secs(mean)), Some(secs(mean + extra)))
            }
            None => (None, None),
        };
        based &= d50.is_some() && d90.is_some();
        let mut f = BatchForecast {
            batch: i32::try_from(b.index).unwrap_or(i32::MAX),
            duration_p90: d90.map(|d| format!("{:#}", round(d))),
            ..Default::default()
        };
        let started = if k == 0 { r.current_started } else { None };
        if let (Some(s), Some(d90)) = (r.schedule, d90)
            && started.is_none()
        {
            f.fits_window = Some(d90 <= s.longest(r.now));
        }
        for (ci, d) in [d50, d90_chain].into_iter().enumerate() {
            let (Some(t), waited) = chain[ci] else {
                continue;
            };
            let Some(d) = d.filter(|_| based) else {
                chain[ci].0 = None;
                continue;
            };
            // When does it start?
            let start = match started {
                Some(s) => s,
                None => {
                    let mut t = t;
                    let mut first = true;
                    if let Some(s) = r.schedule {
                        for _ in 0..32 {
                            match windows::gate(s, t, d90) {
                                Ok(()) => break,
                                Err(w) => {
                                    if ci == 0 && first {
                                        f.waits_for = Some(w.describe());
                                    }
                                    first = false;
                                    match w.until() {
                                        Some(u) => t = u,
                                        None => break,
                                    }
                                }
                            }
                        }
                    }
                    t
                }
            };
            let waited = waited.saturating_add(start.duration_since(t).max(SignedDuration::ZERO));
            let clock = r.clock_start.checked_add(waited).unwrap_or(r.clock_start);
            // The batch cannot outlast its timeout (the last batch: the global timeout).
            let limit = if b.index < plan_len {
                batch_timeout(r.timeout_minutes, clock, start, plan_len, b.index)
            } else {
                global.saturating_sub(start.duration_since(clock))
            }
            .max(SignedDuration::ZERO);
            let mut end = start.checked_add(d.min(limit)).unwrap_or(Timestamp::MAX);
            if started.is_some() && end < r.now {
                // Running longer than predicted: it ends no earlier than now.
                end = r.now;
            }
            if ci == 0 {
                f.start = Some(Time(start));
                f.end = Some(Time(end));
            } else {
                f.end_p90 = Some(Time(end));
            }
            chain[ci] = (Some(end), waited);
        }
        out.batches.push(f);
    }
    if based {
        out.completion = chain[0].0.map(Time);
        out.completion_p90 = chain[1].0.map(Time);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::cgu::MaintenanceWindow;

    fn m(n: i64) -> SignedDuration {
        SignedDuration::from_mins(n)
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn histogram_round_trips_and_is_bounded() {
        let mut h = Histogram::default();
        for s in [1, 30, 30, 600, 3600, 86_400 * 365 * 10] {
            h.add(SignedDuration::from_secs(s));
        }
        assert_eq!(h.len(), 6);
        let text = h.render();
        assert_eq!(Histogram::parse(&text), h);
        assert!(h.counts.keys().all(|b| *b < BINS));
        // Malformed text is dropped, not an error.
        assert_eq!(Histogram::parse("x,3:,:4,5:0,999:2").len(), 0);
        // Many observations never add bins beyond the range.
        let mut h = Histogram::default();
        for s in 0..100_000 {
            h.add(SignedDuration::from_secs(s));
        }
        assert!(h.counts.len() <= BINS);
    }

    #[test]
    fn quantiles_are_within_a_bin() {
        let mut h = Histogram::default();
        for i in 1..=100 {
            h.add(m(i));
        }
        for (q, want) in [(0.5, 50.0), (0.9, 90.0), (0.1, 10.0)] {
            let got = h.quantile(q, None).unwrap().as_secs_f64() / 60.0;
            assert!((got - want).abs() / want < 0.15, "q{q}: {got} vs {want}");
        }
        assert_eq!(Histogram::default().quantile(0.5, None), None);
        // A prior alone predicts its own bin.
        let p = Histogram::default().quantile(0.5, Some(m(45))).unwrap();
        assert!((p.as_secs_f64() / 60.0 - 45.0).abs() < 45.0 * 0.15, "{p:?}");
    }

    #[test]
    fn priors_parse_from_the_annotation() {
        assert_eq!(prior(Some("45m")), Some(m(45)));
        assert_eq!(prior(Some(" 1h30m ")), Some(m(90)));
        assert_eq!(prior(Some("0s")), None);
        assert_eq!(prior(Some("soon")), None);
        assert_eq!(prior(None), None);
    }

    #[test]
    fn a_batch_ends_with_its_slowest_cluster() {
        let mut model = Model::new([("p".to_string(), None)], None);
        for i in 1..=100 {
            model.observe(0, m(i));
        }
        let one = model.batch_duration(&[0], 1, 0.5).unwrap();
        let fifty = model.batch_duration(&[0], 50, 0.5).unwrap();
        assert!(one < m(60) && one > m(40), "{one:?}");
        assert!(fifty > m(90), "{fifty:?}");
        // Two policies add up; a policy without a basis leaves the batch without one.
        let mut model = Model::new([("a".into(), None), ("b".into(), Some(m(30)))], None);
        assert_eq!(model.batch_duration(&[0, 1], 1, 0.5), None);
        model.observe(0, m(10));
        let d = model.batch_duration(&[0, 1], 1, 0.5).unwrap();
        assert!(d > m(30) && d < m(50), "{d:?}");
    }

    #[test]
    fn the_model_keeps_what_it_learned_across_passes() {
        let mut model = Model::new([("a".into(), Some(m(45)))], None);
        model.observe(0, m(20));
        let f = project(
            &model,
            &Rollout {
                now: ts("2026-03-02T00:00:00Z"),
                plan_len: 1,
                batches: vec![],
                current_started: None,
                timeout_minutes: 240,
                clock_start: ts("2026-03-02T00:00:00Z"),
                schedule: None,
            },
        );
        assert_eq!(f.policies[0].observations, 1);
        assert_eq!(f.policies[0].prior.as_deref(), Some("45m"));
        let again = Model::new([("a".into(), Some(m(45)))], Some(&f));
        assert_eq!(again, model);
    }

    fn rollout<'a>(batches: usize, schedule: Option<&'a Schedule>, now: &str) -> Rollout<'a> {
        Rollout {
            now: ts(now),
            plan_len: batches,
            batches: (1..=batches)
                .map(|i| PlannedBatch {
                    index: i,
                    clusters: 1,
                    needed: vec![0],
                })
                .collect(),
            current_started: None,
            timeout_minutes: 24 * 60,
            clock_start: ts(now),
            schedule,
        }
    }

    #[test]
    fn batches_chain_and_wait_for_windows() {
        let model = Model::new([("p".into(), Some(m(40)))], None);
        let f = project(&model, &rollout(3, None, "2026-03-02T00:00:00Z"));
        let ends: Vec<_> = f.batches.iter().map(|b| b.end.clone().unwrap().0).collect();
        // A prior alone: about 40 min per batch (within a bin), chained.
        let first = ends[0].duration_since(ts("2026-03-02T00:00:00Z"));
        assert!(first > m(35) && first < m(46), "{first:?}");
        assert_eq!(ends[1].duration_since(ends[0]), first);
        assert_eq!(f.completion.unwrap().0, ends[2]);
        assert!(f.batches.iter().all(|b| b.fits_window.is_none()));

        // A daily 1 h window at 02:00: one 40-min batch per window.
        let s = windows::parse(&[MaintenanceWindow {
            start: "02:00".into(),
            duration: "1h".into(),
            ..Default::default()
        }])
        .unwrap();
        let f = project(&model, &rollout(3, Some(&s), "2026-03-02T00:00:00Z"));
        let starts: Vec<_> = f
            .batches
            .iter()
            .map(|b| b.start.clone().unwrap().0)
            .collect();
        assert_eq!(
            starts,
            [
                ts("2026-03-02T02:00:00Z"),
                ts("2026-03-03T02:00:00Z"),
                ts("2026-03-04T02:00:00Z")
            ]
        );
        assert!(f.batches.iter().all(|b| b.fits_window == Some(true)));
        assert_eq!(
            f.batches[0].waits_for.as_deref(),
            Some("waits for the next maintenance window, which opens at 2026-03-02T02:00:00Z")
        );
        assert!(
            f.batches[1]
                .waits_for
                .as_deref()
                .unwrap()
                .starts_with("does not fit in the open maintenance window"),
            "{:?}",
            f.batches[1].waits_for
        );
        // The waits do not count against the timeout: 24 h of timeout, 2 days of waiting.
        assert!(f.completion.unwrap().0 > ts("2026-03-04T02:30:00Z"));
    }

    #[test]
    fn a_batch_never_outlasts_its_timeout() {
        let model = Model::new([("p".into(), Some(m(600)))], None);
        let mut r = rollout(2, None, "2026-03-02T00:00:00Z");
        r.timeout_minutes = 120;
        let f = project(&model, &r);
        // Batch 1 gets half of 120 min; batch 2 (the last) the rest of the global timeout.
        assert_eq!(
            f.batches[0].end.clone().unwrap().0,
            ts("2026-03-02T01:00:00Z")
        );
        assert_eq!(f.completion.unwrap().0, ts("2026-03-02T02:00:00Z"));
    }

    #[test]
    fn no_basis_no_completion() {
        let model = Model::new([("p".into(), None)], None);
        let f = project(&model, &rollout(2, None, "2026-03-02T00:00:00Z"));
        assert_eq!(f.completion, None);
        assert!(
            f.batches
                .iter()
                .all(|b| b.end.is_none() && b.duration_p90.is_none())
        );
        assert_eq!(f.policies[0].observations, 0);
    }
}
