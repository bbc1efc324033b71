//! The node-wide bandwidth cap: one token bucket shared by every download of a pre-cache run.
//!
//! Each download asks for its bytes before writing them ([`Limiter::acquire`]). The bucket
//! refills at `rate` bytes/s up to a burst of a tenth of a second (at least 64 KiB); a request
//! larger than the tokens left takes the bucket into debt and waits for the debt to be paid,
//! so concurrent downloads queue up fairly and the long-run rate is `rate` whatever the chunk
//! sizes. Time is `tokio::time`, so tests run it on the paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A shared bandwidth limiter (`rate == 0`: unlimited).
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    burst: f64,
    state: Mutex<Bucket>,
    granted: AtomicU64,
    waited_us: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Limiter {
    /// A limiter of `rate` bytes/s; 0 disables the cap.
    pub fn new(rate: u64) -> Self {
        let burst = (rate as f64 / 10.0).max(64.0 * 1024.0);
        Self {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: None,
            }),
            granted: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
        }
    }

    /// The cap in bytes/s (0: none).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `n` more bytes may be transferred.
    pub async fn acquire(&self, n: u64) {
        self.granted.fetch_add(n, Ordering::Relaxed);
        if self.rate == 0 || n == 0 {
            return;
        }
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let rate = self.rate as f64;
            match b.last {
                // The first request starts with a full burst.
                None => b.tokens = self.burst,
                Some(last) => {
                    let refill = now.saturating_duration_since(last).as_secs_f64() * rate;
                    b.tokens = (b.tokens + refill).min(self.burst);
                }
            }
            b.last = Some(now);
            b.tokens -= n as f64;
            if b.tokens < 0.0 {
                Duration::from_secs_f64(-b.tokens / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            self.waited_us.fetch_add(
                u64::try_from(wait.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes granted so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Total time callers were told to wait (summed over callers).
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn one_caller_gets_the_rate() {
        let l = Limiter::new(100_000);
        let t0 = Instant::now();
        for _ in 0..100 {
            l.acquire(10_000).await; // 1 MB in total
        }
        // 1 MB at 100 kB/s is 10 s, minus the first burst of 64 KiB.
        let took = t0.elapsed().as_secs_f64();
        let want = (1_000_000.0 - 65_536.0) / 100_000.0;
        assert!((took - want).abs() < 0.05, "took {took} s, want {want} s");
        assert_eq!(l.granted(), 1_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let l = Arc::new(Limiter::new(1_000_000));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    l.acquire(25_000).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 8 × 50 × 25 kB = 10 MB at 1 MB/s: about 10 s for all of them together, not 10 s each.
        let took = t0.elapsed().as_secs_f64();
        let want = (10_000_000.0 - 100_000.0) / 1_000_000.0;
        assert!((took - want).abs() < 0.1, "took {took} s, want {want} s");
        assert_eq!(l.granted(), 10_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let l = Limiter::new(0);
        let t0 = Instant::now();
        l.acquire(u64::MAX / 2).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(l.waited(), Duration::ZERO);
    }
}
