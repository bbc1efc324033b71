//! Reconnect backoff: exponential from `initial`, capped at `max`, with "equal jitter" (half of
//! the step fixed, half random) so thousands of agents cut off together do not return together.

use std::time::Duration;

/// Backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The cap for the current attempt (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay; `random` is any uniformly random u64.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % span)
    }

    /// Back to `initial` (after a session that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random u64 from the system RNG (0 if it fails: the backoff is then unjittered).
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut ceilings = Vec::new();
        for i in 0..10u64 {
            let c = b.ceiling();
            let d = b.next_delay(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(d >= c / 2 && d <= c, "{d:?} not in [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_secs());
        }
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // Different random inputs give different delays (jitter).
        let mut b1 = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
        let mut b2 = b1.clone();
        assert_ne!(b1.next_delay(1), b2.next_delay(3000));
        b1.reset();
        assert_eq!(b1.ceiling(), Duration::from_secs(8));
    }
}
