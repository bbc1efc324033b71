//! The clock seam, the one for the whole workspace. Library code never reads the wall clock
//! directly (clippy bans it); it asks a [`Clock`]. Binaries pass [`SystemClock`]; tests pass a
//! [`ManualClock`] (or a clock of their own) to run at a chosen, movable time.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::{SignedDuration, Timestamp};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// The current time as Unix seconds.
    fn unix(&self) -> i64 {
        self.now().as_second()
    }

    /// The current time as a [`SystemTime`] (for certificate validity).
    fn system_time(&self) -> SystemTime {
        SystemTime::from(self.now())
    }
}

/// The real clock. The one place that reads the system time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        #[allow(clippy::disallowed_methods)] // the workspace's one wall-clock read behind the seam
        Timestamp::now()
    }
}

/// A clock that stands still until moved (for tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// A clock reading `secs` Unix seconds (the epoch when out of range).
    pub fn at_unix(secs: i64) -> Self {
        Self::new(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    /// Moves the clock by `by` (it stays put when that would leave jiff's range).
    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by).unwrap_or(*now);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `secs` seconds after the epoch (the epoch for negative values).
pub fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// RFC 3339 text of a Unix time, for JSON views and status (`1970-01-01T00:00:00Z` on overflow).
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let c = ManualClock::new(t);
        assert_eq!(c.now(), t);
        assert_eq!(c.now(), t);
        c.advance(SignedDuration::from_secs(90));
        assert_eq!(c.now(), "2026-01-01T00:01:30Z".parse().unwrap());
        assert_eq!(c.unix(), t.as_second() + 90);
        c.set(t);
        assert_eq!(c.now(), t);
        assert_eq!(c.system_time(), from_unix(t.as_second()));
        assert_eq!(ManualClock::at_unix(5).unix(), 5);
    }

    #[test]
    fn unix_conversions_clamp_instead_of_failing() {
        assert_eq!(unix_seconds(from_unix(1_700_000_000)), 1_700_000_000);
        assert_eq!(from_unix(-5), UNIX_EPOCH);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00Z");
    }
}
