//! The one retry-delay policy: exponential, capped, with "equal jitter"
//! (a delay drawn between half and the whole of the exponential step, so
//! instances that failed together do not retry together), and aware of the
//! caller's deadline: a wait that would end past it is not started.
//!
//! Every retry loop in the crate (the engine's items, Graph paging, the
//! token fetch, partial EventBridge and SQS failures) draws its delays here.
//! A server's own hint (`Retry-After`) still wins where there is one.

use std::time::Duration;

use tokio::time::Instant;

/// An exponential backoff policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The step before the first retry.
    pub base: Duration,
    /// The longest step.
    pub cap: Duration,
    /// Attempts in all (the first try included).
    pub attempts: u32,
}

impl Backoff {
    /// A policy of `attempts` tries, stepping from `base` up to `cap`.
    pub const fn new(base: Duration, cap: Duration, attempts: u32) -> Self {
        Self { base, cap, attempts }
    }

    /// The jittered delay before retry number `retry` (1 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.cap);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Whether another try is allowed after `tried` tries.
    pub fn allows(&self, tried: u32) -> bool {
        tried < self.attempts
    }

    /// Waits `wait` unless it would end past `deadline`; returns whether it
    /// waited (false: give up now, there is no time for another try).
    pub async fn sleep_within(wait: Duration, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }

    /// Waits before retry number `retry` (1 for the first) if the policy
    /// allows it and the wait ends before `deadline`; returns whether to
    /// try again.
    pub async fn wait(&self, retry: u32, deadline: Option<Instant>) -> bool {
        self.allows(retry) && Self::sleep_within(self.delay(retry), deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_between_half_and_whole() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 10);
        for retry in 1..12 {
            let step = Duration::from_millis(100 * (1 << (retry - 1).min(10))).min(Duration::from_secs(1));
            for _ in 0..50 {
                let d = b.delay(retry);
                assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?} outside {step:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_runs_past_the_deadline_or_the_attempts() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), 3);
        let start = Instant::now();
        assert!(b.wait(1, Some(start + Duration::from_secs(5))).await);
        assert!(Instant::now() > start);
        assert!(!b.wait(3, None).await, "three tries in all");
        let now = Instant::now();
        assert!(!b.wait(2, Some(now + Duration::from_millis(100))).await);
        assert_eq!(Instant::now(), now, "no wait was started");
    }
}
