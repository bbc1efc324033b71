//! Batch and global timeouts (docs/contract.md §3.4 and §3.5), and the time that does not count
//! against them (talm extension: pauses and alert holds, recorded in `status.status`).
//!
//! Every deadline shifts by [`excluded`]: the global deadline by all of it, the current batch's
//! deadline by the part that accrued since the batch started. Both come from the status alone,
//! so a restarted hub computes the same deadlines.

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::cgu::UpgradeStatus;

/// The time that does not count against the global and batch timeouts (talm extension): the
/// closed intervals (`excludedSeconds`: pauses, alert holds, window waits) plus the open ones,
/// the current pause or hold (`now − pausedAt`) and the current wait for a maintenance window
/// (`now − waitingForWindowSince`). Every deadline shifts by it.
pub fn excluded(status: &UpgradeStatus, now: Timestamp) -> SignedDuration {
    let closed = SignedDuration::from_secs(status.excluded_seconds.unwrap_or(0).max(0));
    let open = |since: Option<&talm_shared::api::Time>| {
        since
            .map(|t| now.duration_since(t.0).max(SignedDuration::ZERO))
            .unwrap_or(SignedDuration::ZERO)
    };
    closed
        .saturating_add(open(status.paused_at.as_ref()))
        .saturating_add(open(status.waiting_for_window_since.as_ref()))
}

/// The part of [`excluded`] that accrued since the current batch started.
pub fn excluded_in_batch(status: &UpgradeStatus, now: Timestamp) -> SignedDuration {
    let at_start = SignedDuration::from_secs(status.batch_start_excluded_seconds.unwrap_or(0));
    excluded(status, now)
        .checked_sub(at_start)
        .unwrap_or(SignedDuration::ZERO)
        .max(SignedDuration::ZERO)
}

/// The global deadline: `startedAt + timeout + excluded`.
pub fn global_deadline(
    timeout_minutes: i32,
    started_at: Timestamp,
    excluded: SignedDuration,
) -> Timestamp {
    SignedDuration::from_mins(i64::from(timeout_minutes))
        .checked_add(excluded)
        .and_then(|d| started_at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The current batch's deadline: its start, plus its [`batch_timeout`] computed with the
/// excluded time before the batch (`status.batchStartExcludedSeconds`), plus the excluded time
/// that accrued during the batch.
pub fn batch_deadline(
    timeout_minutes: i32,
    started_at: Timestamp,
    batch_started_at: Timestamp,
    plan_len: usize,
    current_batch: usize,
    status: &UpgradeStatus,
    now: Timestamp,
) -> Timestamp {
    let before = SignedDuration::from_secs(status.batch_start_excluded_seconds.unwrap_or(0).max(0));
    // Time excluded before the batch started counts as not used.
    let effective_start = started_at.checked_add(before).unwrap_or(Timestamp::MAX);
    let bt = batch_timeout(
        timeout_minutes,
        effective_start.min(batch_started_at),
        batch_started_at,
        plan_len,
        current_batch,
    );
    bt.checked_add(excluded_in_batch(status, now))
        .and_then(|d| batch_started_at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The current batch's timeout: the time left of the CGU's `timeout` at the batch's start,
/// shared equally by the batches that remain (the last batch gets all of it).
pub fn batch_timeout(
    timeout_minutes: i32,
    started_at: Timestamp,
    batch_started_at: Timestamp,
    plan_len: usize,
    current_batch: usize,
) -> SignedDuration {
    let total = SignedDuration::from_mins(i64::from(timeout_minutes));
    let used = batch_started_at.duration_since(started_at);
    let remaining = total.checked_sub(used).unwrap_or(SignedDuration::ZERO);
    let remaining_batches = i64::try_from(plan_len).unwrap_or(i64::MAX)
        - (i64::try_from(current_batch).unwrap_or(0) - 1);
    if remaining_batches <= 1 {
        remaining
    } else {
        let nanos = remaining.as_nanos() / i128::from(remaining_batches);
        SignedDuration::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

/// True when the whole CGU has run out of time: `now − startedAt − excluded > timeout`.
pub fn global_timed_out(
    timeout_minutes: i32,
    started_at: Timestamp,
    excluded: SignedDuration,
    now: Timestamp,
) -> bool {
    now > global_deadline(timeout_minutes, started_at, excluded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::Time;

    fn t0() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap()
    }

    fn case(timeout: i32, offset_s: i64, batches: usize, current: usize) -> SignedDuration {
        let start = t0();
        let batch_start = start + SignedDuration::from_secs(offset_s);
        batch_timeout(timeout, start, batch_start, batches, current)
    }

    #[test]
    fn talm_vectors() {
        let m = SignedDuration::from_mins;
        assert_eq!(case(100, 0, 1, 1), m(100));
        assert_eq!(case(200, 0, 2, 1), m(100));
        assert_eq!(case(200, 6000, 2, 2), m(100));
        assert_eq!(case(240, 0, 5, 1), m(48));
        assert_eq!(case(240, 2400, 5, 2), m(50));
        assert_eq!(case(240, 6000, 5, 5), m(140));
        assert_eq!(case(100, 3000, 100, 100), m(50));
    }

    #[test]
    fn excluded_adds_closed_and_open_intervals() {
        let now = t0();
        let mut us = UpgradeStatus::default();
        assert_eq!(excluded(&us, now), SignedDuration::ZERO);
        us.excluded_seconds = Some(600);
        assert_eq!(excluded(&us, now), SignedDuration::from_secs(600));
        us.waiting_for_window_since =
            Some(talm_shared::api::Time(now - SignedDuration::from_secs(120)));
        assert_eq!(excluded(&us, now), SignedDuration::from_secs(720));
        // A wait recorded in the future (an edited status) counts as nothing, not negative.
        us.waiting_for_window_since =
            Some(talm_shared::api::Time(now + SignedDuration::from_secs(120)));
        us.excluded_seconds = Some(-5);
        assert_eq!(excluded(&us, now), SignedDuration::ZERO);
    }

    #[test]
    fn global_timeout_is_strict() {
        let s = t0();
        let z = SignedDuration::ZERO;
        assert!(!global_timed_out(0, s, z, s));
        assert!(global_timed_out(0, s, z, s + SignedDuration::from_secs(1)));
        assert!(!global_timed_out(
            1,
            s,
            z,
            s + SignedDuration::from_secs(60)
        ));
        assert!(global_timed_out(1, s, z, s + SignedDuration::from_secs(61)));
    }

    #[test]
    fn excluded_adds_the_open_interval() {
        let now = t0() + SignedDuration::from_secs(1000);
        let mut us = UpgradeStatus::default();
        assert_eq!(excluded(&us, now), SignedDuration::ZERO);
        us.excluded_seconds = Some(120);
        assert_eq!(excluded(&us, now), SignedDuration::from_secs(120));
        us.paused_at = Some(Time(t0() + SignedDuration::from_secs(700)));
        assert_eq!(excluded(&us, now), SignedDuration::from_secs(420));
        // A pausedAt in the future (a skewed clock) adds nothing rather than subtracting.
        us.paused_at = Some(Time(now + SignedDuration::from_secs(50)));
        assert_eq!(excluded(&us, now), SignedDuration::from_secs(120));
        // A negative total from an edited status counts as none.
        us.paused_at = None;
        us.excluded_seconds = Some(-5);
        assert_eq!(excluded(&us, now), SignedDuration::ZERO);
    }

    #[test]
    fn global_deadline_moves_with_the_excluded_time() {
        let s = t0();
        let m = SignedDuration::from_mins;
        assert!(!global_timed_out(10, s, m(5), s + m(15)));
        assert!(global_timed_out(
            10,
            s,
            m(5),
            s + m(15) + SignedDuration::from_secs(1)
        ));
        assert_eq!(global_deadline(10, s, m(5)), s + m(15));
    }

    /// Timeout 240 min, 4 batches of 60 min each. Batch 1 runs 30 min; batch 2 starts at +30
    /// and is paused from +40 to +70 (30 min). Batch 2's deadline and the global deadline both
    /// move by the 30 paused minutes, and the same deadlines come from the status alone at any
    /// later time (a restarted hub).
    #[test]
    fn a_pause_in_batch_2_extends_batch_2_and_the_global_deadline_alike() {
        let m = SignedDuration::from_mins;
        let s = t0();
        let b2 = s + m(30);
        // Unpaused: batch 2 gets (240 − 30) / 3 = 70 min.
        let plain = UpgradeStatus {
            batch_start_excluded_seconds: Some(0),
            ..Default::default()
        };
        let d_plain = batch_deadline(240, s, b2, 4, 2, &plain, b2);
        assert_eq!(d_plain, b2 + m(70));
        // While paused (open interval), at +60: both deadlines have moved by 20 min so far.
        let open = UpgradeStatus {
            batch_start_excluded_seconds: Some(0),
            paused_at: Some(Time(s + m(40))),
            ..Default::default()
        };
        let now = s + m(60);
        assert_eq!(batch_deadline(240, s, b2, 4, 2, &open, now), b2 + m(90));
        assert_eq!(
            global_deadline(240, s, excluded(&open, now)),
            s + m(240) + m(20)
        );
        // Resumed at +70: 30 min recorded as closed.
        let closed = UpgradeStatus {
            batch_start_excluded_seconds: Some(0),
            excluded_seconds: Some(30 * 60),
            ..Default::default()
        };
        for later in [s + m(70), s + m(100), s + m(500)] {
            let bd = batch_deadline(240, s, b2, 4, 2, &closed, later);
            let gd = global_deadline(240, s, excluded(&closed, later));
            assert_eq!(bd, d_plain + m(30));
            assert_eq!(gd, s + m(240) + m(30));
        }
    }

    /// A pause in batch 1 does not stretch batch 2 by itself: batch 2 starts with the paused
    /// time already excluded, so it gets its fair share of the remaining active time, and
    /// only time excluded during batch 2 moves its deadline.
    #[test]
    fn a_pause_in_an_earlier_batch_gives_the_next_batch_its_fair_share() {
        let m = SignedDuration::from_mins;
        let s = t0();
        // Batch 1 paused 30 min; ran 30 active minutes; batch 2 starts at +60.
        let b2 = s + m(60);
        let us = UpgradeStatus {
            excluded_seconds: Some(30 * 60),
            batch_start_excluded_seconds: Some(30 * 60),
            ..Default::default()
        };
        // Active time used: 30 min; (240 − 30) / 3 = 70 min, as without the pause.
        assert_eq!(batch_deadline(240, s, b2, 4, 2, &us, b2), b2 + m(70));
        // Global: 240 + 30.
        assert_eq!(global_deadline(240, s, excluded(&us, b2)), s + m(270));
    }
}
