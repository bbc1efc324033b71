//! The node-wide bandwidth cap: one token bucket shared by every download of a pre-cache run.
//!
//! Each download asks for its bytes before writing them ([`Limiter::acquire`]). The bucket is a
//! queue in byte space: a request reserves the next `n` bytes of the stream (its place is
//! fixed when it asks), and returns once the bucket has paid out up to the end of its
//! reservation. The bucket pays at `rate` bytes/s; after an idle spell it holds at most a small
//! burst (a hundredth of a second of the rate, at least 16 KiB), and it starts empty. So over
//! any interval of length `T`, the bytes granted are at most `rate × T + burst + one request`:
//! a cap is an upper bound, whatever the chunk sizes and however many downloads share it.
//!
//! The rate can change while downloads wait ([`Limiter::set_rate`], the hub's cap arriving in
//! flight): the bytes already paid out stay paid, the rest of every reservation is paid at the
//! new rate from that instant on (waiters are woken to recompute). Time is `tokio::time`, so
//! tests run it on the paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The idle burst: this share of a second of the rate…
const BURST_SECONDS: f64 = 0.01;
/// …but at least this many bytes.
const MIN_BURST: f64 = 16.0 * 1024.0;

/// A shared bandwidth limiter (`rate == 0`: unlimited).
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<Bucket>,
    /// Woken on every rate change, so waiting requests recompute their wait.
    changed: Notify,
    granted: AtomicU64,
    waited_us: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    rate: u64,
    /// Bytes the bucket has paid out since it was (re)started, including its burst allowance.
    paid: f64,
    /// Bytes reserved by requests so far (`issued - paid > 0`: requests are waiting).
    issued: f64,
    /// When `paid` was last brought up to date.
    last: Instant,
}

impl Bucket {
    fn burst(&self) -> f64 {
        (self.rate as f64 * BURST_SECONDS).max(MIN_BURST)
    }

    /// Pays out what the time since `last` earned, keeping at most a burst in hand.
    fn advance(&mut self, now: Instant) {
        if self.rate > 0 {
            let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate as f64;
            self.paid = (self.paid + earned).min(self.issued + self.burst());
        }
        self.last = now;
    }
}

impl Limiter {
    /// A limiter of `rate` bytes/s; 0 disables the cap.
    pub fn new(rate: u64) -> Self {
        Self {
            state: Mutex::new(Bucket {
                rate,
                paid: 0.0,
                issued: 0.0,
                last: Instant::now(),
            }),
            changed: Notify::new(),
            granted: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cap in bytes/s (0: none).
    pub fn rate(&self) -> u64 {
        self.lock().rate
    }

    /// Changes the cap (0: none) for every request from now on, including those waiting now.
    pub fn set_rate(&self, rate: u64) {
        {
            let mut b = self.lock();
            if b.rate == rate {
                return;
            }
            let now = Instant::now();
            b.advance(now);
            if b.rate == 0 {
                // Nothing was reserved while unlimited: start empty, as a new limiter does.
                b.paid = b.issued;
            }
            b.rate = rate;
        }
        self.changed.notify_waiters();
    }

    /// Waits until `n` more bytes may be transferred.
    pub async fn acquire(&self, n: u64) {
        if n == 0 {
            return;
        }
        let start = Instant::now();
        let end = {
            let mut b = self.lock();
            if b.rate == 0 {
                drop(b);
                self.granted.fetch_add(n, Ordering::Relaxed);
                return;
            }
            b.advance(start);
            b.issued += n as f64;
            b.issued
        };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut b = self.lock();
                if b.rate == 0 {
                    break;
                }
                b.advance(Instant::now());
                if b.paid >= end {
                    break;
                }
                Duration::from_secs_f64((end - b.paid) / b.rate as f64)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed => {}
            }
        }
        let waited = start.elapsed();
        if !waited.is_zero() {
            self.waited_us.fetch_add(
                u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        self.granted.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes granted so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Total time callers waited (summed over callers).
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
        // 1 MB at 100 kB/s is 10 s: the bucket starts empty, so there is no initial burst.
        let took = t0.elapsed().as_secs_f64();
        assert!((took - 10.0).abs() < 0.05, "took {took} s, want 10 s");
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
        assert!((took - 10.0).abs() < 0.1, "took {took} s, want 10 s");
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

    #[tokio::test(start_paused = true)]
    async fn lifting_the_cap_releases_waiters_and_setting_one_limits_again() {
        let l = Arc::new(Limiter::new(1_000));
        let t0 = Instant::now();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(1_000_000).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "1 MB at 1 kB/s cannot be granted in 1 s"
        );
        l.set_rate(0);
        waiter.await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(1_100));
        // Capped again: starts empty, no credit from the unlimited spell.
        l.set_rate(100_000);
        let t1 = Instant::now();
        l.acquire(100_000).await;
        let took = t1.elapsed().as_secs_f64();
        assert!((took - 1.0).abs() < 0.01, "took {took} s");
        assert_eq!(l.rate(), 100_000);
    }

    /// Bytes granted in the window `[from, to)` of `events` (grant instant, bytes).
    fn in_window(events: &[(f64, u64)], from: f64, to: f64) -> u64 {
        events
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, n)| n)
            .sum()
    }

    /// The integral of a piecewise-constant cap (`(from, bytes/s)` segments, sorted) over
    /// `[from, to)`.
    fn cap_integral(segments: &[(f64, f64)], from: f64, to: f64) -> f64 {
        let mut sum = 0.0;
        for (i, (start, rate)) in segments.iter().enumerate() {
            let stop = segments.get(i + 1).map_or(f64::MAX, |s| s.0);
            sum += (to.min(stop) - from.max(*start)).max(0.0) * rate;
        }
        sum
    }

    /// Several downloaders with mixed chunk sizes (4 KiB to 1 MiB, as hyper hands them out,
    /// split as the pull splits them) and think times, a rate cut from 16 MiB/s to 6 MiB/s at
    /// 25 s, then back up to 12 MiB/s at 45 s: every 10 s window (sliding in 10 ms steps) gets
    /// at most the cap's integral + 1%, and the long-run rate is within 2% of it.
    #[tokio::test(start_paused = true)]
    async fn every_ten_second_window_stays_under_the_cap_through_rate_changes() {
        const MIB: f64 = 1048576.0;
        let l = Arc::new(Limiter::new((16.0 * MIB) as u64));
        let t0 = Instant::now();
        let events = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for d in 0..6u64 {
            let (l, events, stop) = (l.clone(), events.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                // A deterministic mix of chunk sizes per downloader.
                let sizes = [4096u64, 16_384, 65_536, 262_144, 1_048_576, 9_000, 131_072];
                let mut i = d as usize;
                while !stop.load(Ordering::Relaxed) {
                    let chunk = sizes[i % sizes.len()];
                    i += 1 + d as usize;
                    // The pull acquires at most 64 KiB at a time.
                    let mut left = chunk;
                    while left > 0 {
                        let piece = left.min(64 * 1024);
                        l.acquire(piece).await;
                        events
                            .lock()
                            .unwrap()
                            .push((t0.elapsed().as_secs_f64(), piece));
                        left -= piece;
                    }
                    // Downloader 0 pauses between "blobs" (a new request's round trip).
                    if d == 0 && i.is_multiple_of(5) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }));
        }
        let (change1, change2, end) = (25.0, 45.0, 70.0);
        tokio::time::sleep(Duration::from_secs_f64(change1)).await;
        l.set_rate((6.0 * MIB) as u64);
        tokio::time::sleep(Duration::from_secs_f64(change2 - change1)).await;
        l.set_rate((12.0 * MIB) as u64);
        tokio::time::sleep(Duration::from_secs_f64(end - change2)).await;
        stop.store(true, Ordering::Relaxed);
        l.set_rate(0);
        for t in tasks {
            t.await.unwrap();
        }
        let events: Vec<(f64, u64)> = events
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|(t, _)| *t < end)
            .collect();
        let segments = [
            (0.0, 16.0 * MIB),
            (change1, 6.0 * MIB),
            (change2, 12.0 * MIB),
        ];
        let cap = |from: f64, to: f64| cap_integral(&segments, from, to);
        let mut worst = f64::MIN;
        let mut start = 0.0;
        while start + 10.0 <= end {
            let got = in_window(&events, start, start + 10.0) as f64;
            let allowed = cap(start, start + 10.0);
            worst = worst.max(got / allowed - 1.0);
            assert!(
                got <= allowed * 1.01,
                "window [{start:.2}, {:.2}): {got} bytes, cap allows {allowed} (+{:.2}%)",
                start + 10.0,
                (got / allowed - 1.0) * 100.0
            );
            start += 0.01;
        }
        let total: u64 = events.iter().map(|(_, n)| n).sum();
        let allowed = cap(0.0, end);
        assert!(
            total as f64 >= allowed * 0.98,
            "long run: {total} bytes of {allowed} allowed ({:.2}%)",
            (total as f64 / allowed - 1.0) * 100.0
        );
        assert!(
            worst > -0.05,
            "the windows were not even near the cap: {worst}"
        );
    }
}
