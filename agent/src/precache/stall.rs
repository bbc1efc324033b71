//! The low-speed rule of pre-cache downloads (issue 14 item 9): a transfer that receives fewer
//! than `min_bytes` in any `period` is stalled, and the attempt fails with an error that says
//! so ("stalled: fewer than 1024 bytes in 60s from <registry> for <blob>"). The pull's retry
//! machinery then tries again (the next candidate, then after a backoff, resuming the partial
//! file), so a registry that trickles ends the run with a clear error instead of keeping it
//! `Active` for hours.
//!
//! - A window starts when the request is sent: a registry that never answers, answers its
//!   headers slowly, or stops sending the body mid-way is caught the same way.
//! - Time spent waiting for the node-wide bandwidth limiter ([`super::limit::Limiter`]) is the
//!   agent's own doing: [`Watch::pause`] moves the window's end by that much.
//! - `min_bytes == 0` turns the rule off (only the per-read timeout of the HTTP client is left).
//!
//! Time is `tokio::time`, so tests can run it on the paused clock.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Default: fewer than this many bytes ...
pub const DEFAULT_MIN_BYTES: u64 = 1024;
/// ... in this many seconds is a stall.
pub const DEFAULT_PERIOD_SECS: u64 = 60;

/// The low-speed limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallPolicy {
    /// Fewer bytes than this in one period is a stall (0: the rule is off).
    pub min_bytes: u64,
    /// The period.
    pub period: Duration,
}

impl Default for StallPolicy {
    fn default() -> Self {
        Self {
            min_bytes: DEFAULT_MIN_BYTES,
            period: Duration::from_secs(DEFAULT_PERIOD_SECS),
        }
    }
}

impl StallPolicy {
    /// Whether the rule is on.
    pub fn enabled(&self) -> bool {
        self.min_bytes > 0 && !self.period.is_zero()
    }

    /// `stalled: fewer than N bytes in P`, the start of every stall message.
    pub fn describe(&self) -> String {
        format!(
            "stalled: fewer than {} bytes in {}",
            self.min_bytes,
            human_period(self.period)
        )
    }
}

/// `60s`, or `1500ms` for a period that is not whole seconds.
fn human_period(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A transfer was stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.describe())]
pub struct Stalled(pub StallPolicy);

/// Watches one transfer.
#[derive(Debug)]
pub struct Watch {
    policy: StallPolicy,
    window_end: Instant,
    bytes: u64,
}

impl Watch {
    /// Starts the first window now.
    pub fn start(policy: StallPolicy) -> Self {
        Self {
            policy,
            window_end: Instant::now() + policy.period,
            bytes: 0,
        }
    }

    /// Counts received bytes, and checks the window if it is over.
    pub fn add(&mut self, n: u64) -> Result<(), Stalled> {
        self.bytes = self.bytes.saturating_add(n);
        self.check(Instant::now())
    }

    /// Moves the window's end by `d` (time the agent itself made the transfer wait).
    pub fn pause(&mut self, d: Duration) {
        self.window_end += d;
    }

    /// At or after the window's end: a stall if too few bytes came, otherwise a new window.
    fn check(&mut self, now: Instant) -> Result<(), Stalled> {
        if !self.policy.enabled() || now < self.window_end {
            return Ok(());
        }
        if self.bytes < self.policy.min_bytes {
            return Err(Stalled(self.policy));
        }
        self.bytes = 0;
        self.window_end = now + self.policy.period;
        Ok(())
    }

    /// Awaits `fut` (a request, or the next chunk of a body), failing when a window ends with
    /// too few bytes before it completes.
    pub async fn guard<F: Future>(&mut self, fut: F) -> Result<F::Output, Stalled> {
        if !self.policy.enabled() {
            return Ok(fut.await);
        }
        let mut fut = std::pin::pin!(fut);
        loop {
            match tokio::time::timeout_at(self.window_end, &mut fut).await {
                Ok(v) => return Ok(v),
                Err(_) => self.check(Instant::now())?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min_bytes: u64, secs: u64) -> StallPolicy {
        StallPolicy {
            min_bytes,
            period: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_a_stall_after_one_period() {
        let mut w = Watch::start(policy(1024, 60));
        let t0 = Instant::now();
        // One byte a second: 60 bytes in the first window.
        let err = loop {
            let r = w
                .guard(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .and_then(|()| w.add(1));
            if let Err(e) = r {
                break e;
            }
        };
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
        assert_eq!(err.to_string(), "stalled: fewer than 1024 bytes in 60s");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_a_stall_and_enough_bytes_open_a_new_window() {
        let t0 = Instant::now();
        let mut w = Watch::start(policy(100, 10));
        // 100 bytes in the first window: fine, and the next window starts at its end.
        tokio::time::sleep(Duration::from_secs(5)).await;
        w.add(100).unwrap();
        let e = w.guard(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(e, Stalled(policy(100, 10)));
        // The second window (10 s → 20 s) saw nothing.
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_waits_do_not_count_and_zero_turns_it_off() {
        let mut w = Watch::start(policy(100, 10));
        tokio::time::sleep(Duration::from_secs(8)).await;
        w.pause(Duration::from_secs(8));
        tokio::time::sleep(Duration::from_secs(8)).await;
        // 16 s have passed, but 8 of them were the agent's own: still the first window.
        w.add(100).unwrap();
        let mut off = Watch::start(policy(0, 10));
        let r = off
            .guard(tokio::time::sleep(Duration::from_secs(3600)))
            .await;
        assert!(r.is_ok());
        assert_eq!(
            StallPolicy {
                min_bytes: 1,
                period: Duration::from_millis(1500)
            }
            .describe(),
            "stalled: fewer than 1 bytes in 1500ms"
        );
    }
}
