//! Timestamps for the files we create in the ESP: the UTC clock, or a fixed
//! instant when the build must be reproducible.

use fatfs::{Date, DateTime, Time, TimeProvider};

/// Time for reproducible builds: 2000-01-01 00:00:00.
#[derive(Debug)]
pub(crate) struct FixedTime;

/// The system clock in UTC (FAT has no time zones; UTC is what firmware sees
/// on most machines).
#[derive(Debug)]
pub(crate) struct UtcClock;

pub(crate) static FIXED_TIME: FixedTime = FixedTime;
pub(crate) static UTC_CLOCK: UtcClock = UtcClock;

const FIXED: DateTime = DateTime {
    date: Date {
        year: 2000,
        month: 1,
        day: 1,
    },
    time: Time {
        hour: 0,
        min: 0,
        sec: 0,
        millis: 0,
    },
};

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        FIXED.date
    }
    fn get_current_date_time(&self) -> DateTime {
        FIXED
    }
}

/// Converts days since 1970-01-01 to (year, month, day) (H. Hinnant's
/// civil-from-days algorithm).
fn civil_from_days(days: i64) -> (i64, u16, u16) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// FAT date-time of `unix_seconds`, clamped to FAT's 1980..=2107 range.
pub(crate) fn fat_date_time(unix_seconds: i64) -> DateTime {
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    if year < 1980 {
        return DateTime {
            date: Date {
                year: 1980,
                month: 1,
                day: 1,
            },
            time: FIXED.time,
        };
    }
    if year > 2107 {
        return DateTime {
            date: Date {
                year: 2107,
                month: 12,
                day: 31,
            },
            time: Time {
                hour: 23,
                min: 59,
                sec: 58,
                millis: 0,
            },
        };
    }
    let secs = unix_seconds.rem_euclid(86_400);
    DateTime {
        date: Date {
            year: year as u16,
            month,
            day,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

impl TimeProvider for UtcClock {
    fn get_current_date(&self) -> Date {
        self.get_current_date_time().date
    }
    fn get_current_date_time(&self) -> DateTime {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        fat_date_time(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_known_instants() {
        let t = fat_date_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = fat_date_time(951_782_400); // 2000-02-29 00:00:00 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        assert_eq!(fat_date_time(0).date.year, 1980);
        assert_eq!(fat_date_time(i64::MAX / 2).date.year, 2107);
    }
}
