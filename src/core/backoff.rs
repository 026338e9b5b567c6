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

    /// Sends `pending` in rounds for a batch API that reports failures entry
    /// by entry: `round` sends what is left and returns the entries that
    /// failed, which are sent again after this policy's wait. Returns what is
    /// still unsent when the attempts or the time before `deadline` ran out
    /// (no entries: all were sent). An error from `round` ends the sending.
    pub async fn resend_failed<T, E, Fut>(
        &self,
        pending: Vec<T>,
        deadline: Option<Instant>,
        mut round: impl FnMut(Vec<T>) -> Fut,
    ) -> Result<Unsent<T>, E>
    where
        Fut: Future<Output = Result<Unsent<T>, E>>,
    {
        let mut tried = 0;
        let mut left = Unsent {
            entries: pending,
            reason: String::new(),
        };
        loop {
            tried += 1;
            left = round(left.entries).await?;
            if left.entries.is_empty() || !self.wait(tried, deadline).await {
                return Ok(left);
            }
        }
    }
}

/// The entries a round of [`Backoff::resend_failed`] did not get through.
#[derive(Debug)]
pub struct Unsent<T> {
    /// The entries that failed.
    pub entries: Vec<T>,
    /// What the service said of the last one that failed.
    pub reason: String,
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

    #[tokio::test(start_paused = true)]
    async fn only_failed_entries_are_sent_again_until_the_attempts_run_out() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let mut rounds: Vec<Vec<u32>> = Vec::new();
        // Entries above 2 fail once; entry 9 always fails.
        let left = b
            .resend_failed(vec![1, 3, 9], None, |pending: Vec<u32>| {
                let failed: Vec<u32> = pending
                    .iter()
                    .copied()
                    .filter(|&e| e == 9 || (e > 2 && rounds.is_empty()))
                    .collect();
                rounds.push(pending);
                async move {
                    Ok::<_, ()>(Unsent {
                        entries: failed,
                        reason: "busy".into(),
                    })
                }
            })
            .await
            .unwrap();
        assert_eq!(rounds, vec![vec![1, 3, 9], vec![3, 9], vec![9]]);
        assert_eq!((left.entries, left.reason.as_str()), (vec![9], "busy"));

        let all_sent = b
            .resend_failed(vec![1], None, |_| async {
                Ok::<_, ()>(Unsent {
                    entries: Vec::new(),
                    reason: String::new(),
                })
            })
            .await
            .unwrap();
        assert!(all_sent.entries.is_empty());

        let mut calls = 0;
        let refused = b
            .resend_failed(vec![1], None, |_| {
                calls += 1;
                async { Err::<Unsent<u32>, _>("refused whole") }
            })
            .await;
        assert_eq!(
            (refused.unwrap_err(), calls),
            ("refused whole", 1),
            "an error ends the sending"
        );
    }
}
