//! `Retry-After` as Graph really sends it: whole seconds (`10`), decimal
//! seconds (`2.128`), an HTTP-date, or nothing at all.

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value relative to `now`. A date in the past means
/// "now" (zero); garbage, negative or non-finite numbers give `None`, so the
/// caller falls back to exponential backoff.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v.parse().ok()?;
        // Anything beyond a day is treated as a day; the engine caps further.
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_form_seen_in_the_wild() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("10", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after(" 1 ", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("2.128", now), Some(Duration::from_millis(2128)));
        assert_eq!(parse_retry_after("0.249", now), Some(Duration::from_millis(249)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999", now), Some(Duration::from_secs(86_400)));
        for bad in ["", "-1", "soon", "1e3", "NaN", "1.2.3"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
