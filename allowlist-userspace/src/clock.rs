//! Wall-clock times as the allowlist stores them (whole seconds since the Unix epoch),
//! with the bounds that keep every computation on them in range.
//!
//! Times come from operators (`--expires 10000y`), from raw socket requests
//! (`expires_in_secs: u64::MAX`) and from state files written by older versions, so
//! nothing here may overflow or panic on any `u64`: deadlines are computed checked and
//! refused past their documented maximum, and printing or waiting for a time that is far
//! out of range degrades (a raw number, a capped sleep) instead of failing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest `--expires`: a temporary entry lives at most 365 days. Longer is not
/// temporary; list the address without an expiry instead.
pub const MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest `activate --confirm`: a day. Commit-confirm protects a change while its
/// author is watching; it is not a scheduler.
pub const MAX_CONFIRM: Duration = Duration::from_secs(24 * 3600);

/// Seconds since the Unix epoch now (0 on a clock set before 1970).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// A time limit that is out of its documented range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{what} of {given} is too long: at most {max}. {hint}")]
    TooLong {
        what: &'static str,
        given: String,
        max: String,
        hint: &'static str,
    },
    #[error("{what} must be at least 1 second")]
    Zero { what: &'static str },
}

/// Checks `secs` against `max` for `what` ("--expires", "--confirm").
pub fn check_duration(what: &'static str, secs: u64, max: Duration) -> Result<(), DurationError> {
    if secs == 0 {
        return Err(DurationError::Zero { what });
    }
    if secs > max.as_secs() {
        return Err(DurationError::TooLong {
            what,
            given: format_duration(secs),
            max: format_duration(max.as_secs()),
            hint: if what == "--confirm" {
                "Commit-confirm guards a change while you watch it: confirm sooner"
            } else {
                "For longer, leave the expiry out (a permanent entry) and remove it when it is no longer needed"
            },
        });
    }
    Ok(())
}

/// The deadline `secs` from `now`, once `secs` is within `max`.
pub fn deadline_after(
    what: &'static str,
    now: u64,
    secs: u64,
    max: Duration,
) -> Result<u64, DurationError> {
    check_duration(what, secs, max)?;
    // Within `max` of a `now` read from the clock: cannot overflow, but stay checked.
    Ok(now.saturating_add(secs))
}

/// A duration for messages, in the largest whole unit `--expires` accepts: "365d",
/// "90m", "61s".
pub fn format_duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        _ if secs.is_multiple_of(86_400) => format!("{}d", secs / 86_400),
        _ if secs.is_multiple_of(3_600) => format!("{}h", secs / 3_600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

/// A time for people: RFC 3339 in UTC, e.g. 2026-11-30T12:00:00Z. Times past the year
/// 9999 (which RFC 3339 cannot write) show as seconds since the epoch.
pub fn format_time(unix_secs: u64) -> String {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    if unix_secs >= YEAR_10000 {
        return format!("@{unix_secs} (seconds since 1970)");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// How long until `unix_secs`, never more than `cap`: zero for a time passed, `cap` for
/// one further away (or out of any clock's range).
pub fn until(unix_secs: u64, cap: Duration) -> Duration {
    let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(unix_secs)) else {
        return cap;
    };
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_u64_time_prints_and_waits_without_panicking() {
        for secs in [0, 1, 253_402_300_799, 253_402_300_800, 1 << 63, u64::MAX] {
            assert!(!format_time(secs).is_empty());
            assert!(until(secs, Duration::from_secs(3600)) <= Duration::from_secs(3600));
            assert!(!format_duration(secs).is_empty());
        }
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert!(format_time(u64::MAX).contains(&u64::MAX.to_string()));
    }

    #[test]
    fn durations_past_their_maximum_or_zero_are_refused() {
        let now = 1_800_000_000;
        assert_eq!(
            deadline_after("--expires", now, 3600, MAX_EXPIRY),
            Ok(now + 3600)
        );
        assert!(deadline_after("--expires", now, MAX_EXPIRY.as_secs(), MAX_EXPIRY).is_ok());
        for secs in [MAX_EXPIRY.as_secs() + 1, 1 << 63, u64::MAX] {
            let error = deadline_after("--expires", now, secs, MAX_EXPIRY).unwrap_err();
            assert!(error.to_string().contains("at most 365d"), "{error}");
        }
        assert_eq!(
            check_duration("--confirm", 0, MAX_CONFIRM),
            Err(DurationError::Zero { what: "--confirm" })
        );
    }
}
