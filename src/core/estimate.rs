//! How long a run needs at the write budget, so that a timeout that cannot
//! cover it is said before any write (devices past the timeout end
//! `not_attempted`). The budget's first permits go at once, and each
//! further budgetful waits a window; validation reads have a budget of
//! their own and overlap the writes.

use std::time::Duration;

use super::engine::EngineConfig;

/// Time a run needs beyond its windows: a token, round trips, the result.
const SLACK: Duration = Duration::from_secs(5);

/// About how long a run of `devices` takes at the configured budgets.
pub fn run_time(devices: usize, validate: bool, cfg: &EngineConfig) -> Duration {
    if devices == 0 {
        return Duration::ZERO;
    }
    let windows = |budget: u32, window: Duration| -> Duration {
        let full = devices.div_ceil(budget.max(1) as usize).saturating_sub(1);
        window.saturating_mul(u32::try_from(full).unwrap_or(u32::MAX))
    };
    let writes = windows(cfg.writes.budget, cfg.writes.window);
    let reads = if validate {
        windows(cfg.reads.budget, cfg.reads.window)
    } else {
        Duration::ZERO
    };
    writes.max(reads) + SLACK
}

/// The warning for a run of `devices` whose `timeout` is shorter than it
/// needs, naming a timeout that would do (whole minutes); `None` when the
/// timeout covers it.
pub fn timeout_warning(devices: usize, validate: bool, timeout: Duration, cfg: &EngineConfig) -> Option<String> {
    let needed = run_time(devices, validate, cfg);
    if needed <= timeout {
        return None;
    }
    let minutes = needed.as_secs().div_ceil(60).max(1);
    Some(format!(
        "timeouts.invoke is {}, but {devices} device(s) at the write budget ({} per {}) need about {}: \
         the devices past it would end not_attempted; set timeouts.invoke to at least \"{minutes}m\"",
        super::duration::format_go_duration(timeout),
        cfg.writes.budget,
        super::duration::format_go_duration(cfg.writes.window),
        super::duration::format_go_duration(Duration::from_secs(needed.as_secs())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_covers_about_three_windows_of_intunes_budget() {
        let cfg = EngineConfig::default();
        // 190 per 20 s: 570 devices go in three windows' starts.
        assert_eq!(timeout_warning(570, true, Duration::from_secs(60), &cfg), None);
        let warning = timeout_warning(1610, true, Duration::from_secs(60), &cfg).unwrap();
        assert!(warning.contains("1610 device(s)"), "{warning}");
        assert!(warning.contains("at least \"3m\""), "{warning}");
        assert_eq!(run_time(1610, false, &cfg), Duration::from_secs(8 * 20 + 5));
        assert_eq!(run_time(0, true, &cfg), Duration::ZERO);
        // Reads have a budget of their own; they overlap the writes.
        assert_eq!(run_time(1610, true, &cfg), run_time(1610, false, &cfg));
    }
}
