//! Batch and global timeouts (docs/contract.md §3.4 and §3.5).

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::cgu::UpgradeStatus;

/// The time that does not count against the global and batch timeouts (talm extension): the
/// closed intervals recorded in `excludedSeconds` plus the open wait for a maintenance window
/// (`waitingForWindowSince` until `now`). Every deadline shifts by it.
pub fn excluded(status: &UpgradeStatus, now: Timestamp) -> SignedDuration {
    let closed = SignedDuration::from_secs(status.excluded_seconds.unwrap_or(0).max(0));
    let waiting = status
        .waiting_for_window_since
        .as_ref()
        .map(|since| now.duration_since(since.0).max(SignedDuration::ZERO))
        .unwrap_or(SignedDuration::ZERO);
    closed.saturating_add(waiting)
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

/// True when the whole CGU has run out of time: `now − startedAt > timeout`.
pub fn global_timed_out(timeout_minutes: i32, started_at: Timestamp, now: Timestamp) -> bool {
    now.duration_since(started_at) > SignedDuration::from_mins(i64::from(timeout_minutes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!global_timed_out(0, s, s));
        assert!(global_timed_out(0, s, s + SignedDuration::from_secs(1)));
        assert!(!global_timed_out(1, s, s + SignedDuration::from_secs(60)));
        assert!(global_timed_out(1, s, s + SignedDuration::from_secs(61)));
    }
}
