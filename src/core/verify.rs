//! `verify`: after initiating, read the verdict back on a schedule. The
//! payload's `verify` option says when (`after` the run, then at that
//! interval while any device is pending or active, `until` a time after
//! the run started); a hosted run carries each follow-up check on the work
//! queue as a payload with a `check` member that only the service writes.
//! This module holds the schedule's arithmetic and the verdict document;
//! it knows nothing of queues.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::status::StatusDocument;

/// The shortest `verify.after` (tests and the simulator shorten time; a
/// real deployment uses minutes).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `verify.until` (the validation message says "24h"): a day (Intune says a device attests within
/// 15 minutes; a queue keeps messages four days).
pub const MAX_UNTIL: Duration = Duration::from_secs(24 * 3600);
/// The most checks one schedule may make.
pub const MAX_CHECKS: u32 = 10_000;
/// A schedule's checks take at most this share of the read budget: one in
/// four, so validation, `status` and other runs keep the rest.
pub const READ_SHARE: u32 = 4;

/// The payload's `verify` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPlan {
    /// The first check comes this long after the run, and each later one
    /// this long after the one before.
    pub after: Duration,
    /// No check after this long from the start of the run; the last check
    /// is at this time if devices were still pending or active.
    pub until: Duration,
}

impl VerifyPlan {
    /// The shortest interval between two checks of `devices` devices under
    /// a read budget of `budget` reads per `window`: each check reads every
    /// device once, so checks that come no closer than this take at most a
    /// [`READ_SHARE`]th of the budget (80 ms a device at Intune's 1,000
    /// reads every 20 s), and never less than [`MIN_INTERVAL`].
    pub fn interval_floor(devices: usize, budget: u32, window: Duration) -> Duration {
        let per_device = window * READ_SHARE / budget.max(1);
        let devices = u32::try_from(devices).unwrap_or(u32::MAX);
        per_device.saturating_mul(devices).clamp(MIN_INTERVAL, MAX_UNTIL)
    }

    /// This plan for `devices` devices under that read budget: `after`
    /// raised to [`VerifyPlan::interval_floor`], with a warning saying so
    /// when it was raised.
    pub fn for_devices(self, devices: usize, budget: u32, window: Duration) -> (Self, Option<String>) {
        let floor = Self::interval_floor(devices, budget, window);
        if self.after >= floor {
            return (self, None);
        }
        let warning = format!(
            "verify.after raised from {} to {}: checks of {devices} devices come no closer, so that they take at most a quarter of the read budget ({budget} every {})",
            humantime::format_duration(self.after),
            humantime::format_duration(round_to_ms(floor)),
            humantime::format_duration(window),
        );
        (
            Self {
                after: floor,
                until: self.until,
            },
            Some(warning),
        )
    }
}

fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// One scheduled check, as the work queue carries it (the payload's
/// `check`): its number, when it is due and when the schedule ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckTicket {
    /// 1 for the first check.
    pub number: u32,
    /// When the check is due.
    pub due_at: SystemTime,
    /// When the schedule ends.
    pub until_at: SystemTime,
}

/// What a check message asks for when it arrives at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Too early (a queue delay is capped, 15 minutes on SQS): send it on
    /// again, delayed by this much.
    Hop(Duration),
    /// Due: check now.
    Check,
}

/// A check counts as due this close to its time (queue delays are whole
/// seconds, and clocks differ a little).
const DUE_TOLERANCE: Duration = Duration::from_millis(500);

impl CheckTicket {
    /// The first check of a run that started at `started` and initiated
    /// its devices by `now`.
    pub fn first(plan: VerifyPlan, started: SystemTime, now: SystemTime) -> Self {
        let until_at = started + plan.until;
        Self {
            number: 1,
            due_at: (now + plan.after).min(until_at.max(now)),
            until_at,
        }
    }

    /// The check after this one, made at `now`: `after` later, or at the
    /// end of the schedule if that comes first; none once it has passed.
    pub fn next(&self, plan: VerifyPlan, now: SystemTime) -> Option<Self> {
        if now + DUE_TOLERANCE >= self.until_at || self.number >= MAX_CHECKS {
            return None;
        }
        Some(Self {
            number: self.number + 1,
            due_at: (now + plan.after).min(self.until_at),
            until_at: self.until_at,
        })
    }

    /// Whether the check is due at `now`, or must wait; a queue delays a
    /// message by at most `max_delay`.
    pub fn arrival(&self, now: SystemTime, max_delay: Duration) -> Arrival {
        match self.due_at.duration_since(now) {
            Ok(wait) if wait > DUE_TOLERANCE => Arrival::Hop(wait.min(max_delay)),
            _ => Arrival::Check,
        }
    }

    /// The delay to send the message with, at `now`.
    pub fn delay(&self, now: SystemTime, max_delay: Duration) -> Duration {
        self.due_at.duration_since(now).unwrap_or_default().min(max_delay)
    }
}

/// The verdict document: a status document for the devices of one check,
/// with the check's place in the schedule (`schema/verdict.schema.json`).
/// Published as `Device Attestation Verdict` events.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The status of the devices.
    #[serde(flatten)]
    pub status: StatusDocument,
    /// Where this check stands in the schedule.
    pub check: CheckReport,
}

impl Verdict {
    /// The verdict without its device list: correlation id, counts and
    /// the check (what a front door answers or logs).
    pub fn brief(&self) -> serde_json::Value {
        serde_json::json!({
            "correlation_id": self.status.correlation_id,
            "checked_at": self.status.checked_at,
            "summary": self.status.summary,
            "check": self.check,
        })
    }
}

/// The verdict's `check` member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// 1 for the first check.
    pub number: u32,
    /// Whether no check follows: every device's action is over, or the
    /// schedule ended.
    pub last: bool,
    /// When the next check is due (RFC 3339), unless this is the last.
    pub next_check_at: Option<String>,
    /// When the schedule ends (RFC 3339).
    pub until: String,
    /// Which part of the run's devices this check covers (a large run's
    /// devices are checked in several messages).
    pub part: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn plan(after: u64, until: u64) -> VerifyPlan {
        VerifyPlan {
            after: MIN * after as u32,
            until: MIN * until as u32,
        }
    }

    #[test]
    fn checks_come_every_interval_and_the_last_at_the_end_of_the_schedule() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let p = plan(15, 40);
        let first = CheckTicket::first(p, t0, t0 + MIN);
        assert_eq!((first.number, first.due_at), (1, t0 + MIN * 16));
        let second = first.next(p, first.due_at).unwrap();
        assert_eq!((second.number, second.due_at), (2, t0 + MIN * 31));
        let third = second.next(p, second.due_at).unwrap();
        assert_eq!(third.due_at, t0 + MIN * 40, "cut to the end of the schedule");
        assert_eq!(third.next(p, third.due_at), None);
    }

    #[test]
    fn a_check_due_beyond_the_queues_longest_delay_hops() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let first = CheckTicket::first(plan(40, 120), t0, t0);
        let max = MIN * 15;
        assert_eq!(first.delay(t0, max), max);
        assert_eq!(first.arrival(t0 + max, max), Arrival::Hop(max));
        assert_eq!(first.arrival(t0 + max * 2, max), Arrival::Hop(MIN * 10));
        assert_eq!(first.arrival(t0 + MIN * 40, max), Arrival::Check);
        // A whole-second queue delay may deliver it a little early.
        assert_eq!(
            first.arrival(t0 + MIN * 40 - Duration::from_millis(300), max),
            Arrival::Check
        );
    }

    #[test]
    fn the_interval_grows_with_the_number_of_devices_and_keeps_to_a_quarter_of_the_read_budget() {
        let window = Duration::from_secs(20);
        let floor = |n| VerifyPlan::interval_floor(n, 1000, window);
        assert_eq!(floor(1), MIN_INTERVAL);
        assert_eq!(floor(100), Duration::from_millis(8_000));
        assert_eq!(floor(10_000), Duration::from_secs(800));
        assert_eq!(floor(usize::MAX), MAX_UNTIL);
        // `{"after": "1s", "until": "24h"}` on 10,000 pending devices: at
        // most 108 checks in the day, not 10,000, each read at most a
        // quarter of the read budget on average.
        let asked = VerifyPlan {
            after: Duration::from_secs(1),
            until: MAX_UNTIL,
        };
        let (plan, warning) = asked.for_devices(10_000, 1000, window);
        assert_eq!(plan.after, Duration::from_secs(800));
        assert!(warning.is_some_and(|w| w.contains("raised from 1s to 13m 20s")));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut ticket = CheckTicket::first(plan, t0, t0);
        let mut checks = 1u64;
        while let Some(next) = ticket.next(plan, ticket.due_at) {
            ticket = next;
            checks += 1;
        }
        assert_eq!(checks, 108, "one check every 800 s, the last at the end of the day");
        let reads_per_window = 10_000 * 20 / 800;
        assert!(reads_per_window <= 1000 / 4, "{reads_per_window} reads a window");
        // A plan already slower than the floor is kept as it is.
        let slow = VerifyPlan {
            after: Duration::from_secs(3600),
            until: MAX_UNTIL,
        };
        assert_eq!(slow.for_devices(10_000, 1000, window), (slow, None));
    }

    #[test]
    fn a_long_run_is_checked_once_at_the_end_of_its_schedule() {
        // The run itself took ten of the schedule's twenty minutes.
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let first = CheckTicket::first(plan(15, 20), t0, t0 + MIN * 10);
        assert_eq!(first.due_at, t0 + MIN * 20);
        assert_eq!(first.next(plan(15, 20), first.due_at), None);
    }
}
