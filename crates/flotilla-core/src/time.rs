//! A UTC timestamp in milliseconds since the Unix epoch, and its calendar form.
//!
//! The core never reads a clock: callers pass a `Timestamp` in. Calendar conversion is done here
//! (rather than with a date crate) because ids only need the proleptic Gregorian calendar in UTC.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// A timestamp from whole seconds since the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// This timestamp moved forward by `d` (saturating).
    pub fn plus(self, d: Duration) -> Timestamp {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(add))
    }

    /// The calendar date and time in UTC.
    pub fn utc(self) -> UtcDateTime {
        let secs = self.as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        UtcDateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: ((rem % 3600) / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The timestamp for a UTC calendar date and time, or `None` if a field is out of range.
    pub fn from_utc(dt: UtcDateTime) -> Option<Timestamp> {
        if !(1..=12).contains(&dt.month)
            || dt.day == 0
            || dt.day > days_in_month(dt.year, dt.month)
            || dt.hour > 23
            || dt.minute > 59
            || dt.second > 59
            || dt.year < 1970
        {
            return None;
        }
        let days = days_from_civil(dt.year, dt.month, dt.day);
        let secs = days * 86_400
            + u64::from(dt.hour) * 3600
            + u64::from(dt.minute) * 60
            + u64::from(dt.second);
        Some(Timestamp::from_secs(secs))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC to the second, e.g. `2026-11-25T19:06:33Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.utc();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )
    }
}

/// A calendar date and time in UTC, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcDateTime {
    /// The year, e.g. 2026.
    pub year: u32,
    /// The month, 1 to 12.
    pub month: u8,
    /// The day of the month, 1 to 31.
    pub day: u8,
    /// The hour, 0 to 23.
    pub hour: u8,
    /// The minute, 0 to 59.
    pub minute: u8,
    /// The second, 0 to 59.
    pub second: u8,
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days, restricted to dates from 1970 on.
fn days_from_civil(year: u32, month: u8, day: u8) -> u64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u64
}

fn civil_from_days(days: u64) -> (u32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + i64::from(m <= 2)) as u32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let check =
            |secs: u64, want: &str| assert_eq!(Timestamp::from_secs(secs).to_string(), want);
        check(0, "1970-01-01T00:00:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(1_764_097_593, "2025-11-25T19:06:33Z");
        check(4_102_444_799, "2099-12-31T23:59:59Z");
    }

    #[test]
    fn calendar_round_trips_every_day_for_a_century() {
        for day in 0..(365 * 130) {
            let t = Timestamp::from_secs(day * 86_400 + 3723);
            assert_eq!(Timestamp::from_utc(t.utc()), Some(t));
        }
    }

    #[test]
    fn rejects_impossible_dates() {
        let dt = |year, month, day| UtcDateTime {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(Timestamp::from_utc(dt(2025, 2, 29)), None);
        assert!(Timestamp::from_utc(dt(2024, 2, 29)).is_some());
        assert_eq!(Timestamp::from_utc(dt(2025, 13, 1)), None);
        assert_eq!(Timestamp::from_utc(dt(2025, 4, 31)), None);
    }

    #[test]
    fn since_saturates_at_zero() {
        let a = Timestamp::from_secs(10);
        let b = Timestamp::from_secs(4);
        assert_eq!(a.since(b), Duration::from_secs(6));
        assert_eq!(b.since(a), Duration::ZERO);
        assert_eq!(b.plus(Duration::from_secs(6)), a);
    }
}
