//! The clock seam. Library code never reads the wall clock directly (clippy bans it); it asks a
//! [`Clock`]. Binaries pass [`SystemClock`]; tests pass a fixed or stepped clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as Unix seconds (0 before the epoch).
    fn unix(&self) -> i64 {
        unix_seconds(self.now())
    }
}

/// The real clock. The one place that reads the system time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that returns the real time shifted by a fixed offset (tests use it to make
/// certificates that are already expired or not yet valid).
#[derive(Clone, Copy, Debug)]
pub struct OffsetClock {
    /// Seconds to add (may be negative).
    pub offset_secs: i64,
}

impl Clock for OffsetClock {
    fn now(&self) -> SystemTime {
        let now = SystemClock.now();
        if self.offset_secs >= 0 {
            now + Duration::from_secs(self.offset_secs.unsigned_abs())
        } else {
            now - Duration::from_secs(self.offset_secs.unsigned_abs())
        }
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
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}
