//! Go's `time.ParseDuration` grammar, which the Terraform action's
//! `timeouts.invoke` uses: `"30s"`, `"2h45m"`, `"1h30m10s"`, `"500ms"`,
//! `"1.5h"`. Parsed exactly (humantime accepts a wider grammar, such as `1d`
//! or spaces, that Go configs would not carry).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not follow the grammar.
    #[error("expected a Go duration such as \"30s\", \"2h45m\" or \"500ms\"")]
    Syntax,
    /// A sign was given: timeouts cannot be negative.
    #[error("a timeout cannot be negative")]
    Negative,
    /// The value does not fit.
    #[error("the duration is too large")]
    Overflow,
}

/// Parses a Go duration. Units: `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`.
/// A leading `+` is allowed, `-` is refused, and `"0"` alone needs no unit.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let mut rest = text;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(DurationError::Syntax);
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, tail) = after_num.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Syntax),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| DurationError::Overflow)?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or(DurationError::Overflow)?;
        // The fraction, truncated at nanosecond precision as Go does.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or(DurationError::Overflow)?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Writes a duration in Go's grammar, exactly (whole seconds as `"90s"`,
/// whole milliseconds as `"1500ms"`, anything finer in `ns`), so that
/// [`parse_go_duration`] reads back the same value.
pub fn format_go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// A time as RFC 3339 in UTC, to the millisecond (the documents' form).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the Unix epoch: the clock instances share (each its
/// own, so every comparison allows for skew).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_reads_back_exactly() {
        for d in [
            Duration::from_secs(90),
            Duration::from_millis(1500),
            Duration::from_nanos(1_000_000_001),
            Duration::ZERO,
        ] {
            assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(format_go_duration(Duration::from_secs(900)), "900s");
    }

    fn ok(text: &str) -> Duration {
        parse_go_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn parses_the_forms_terraform_users_write() {
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("2h45m"), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(ok("1h30m10s"), Duration::from_secs(5410));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("3us"), Duration::from_micros(3));
        assert_eq!(ok("3µs"), Duration::from_micros(3));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("1m1m"), Duration::from_secs(120));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "", "10", "1d", "1 h", "h", ".s", "1.5", "5S", "1h 30m", "abc", "1e3s", "+",
        ] {
            assert_eq!(parse_go_duration(bad), Err(DurationError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_go_duration("-1s"), Err(DurationError::Negative));
        assert_eq!(
            parse_go_duration("9999999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(parse_go_duration("3000000h"), Err(DurationError::Overflow));
    }
}
