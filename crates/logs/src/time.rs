//! Timestamps as tracing-subscriber writes them (RFC 3339 in UTC, `2026-12-05T19:32:36.597431Z`),
//! parsed to microseconds since the Unix epoch so that reports can subtract them, and printed
//! back. A small parser rather than a date crate: the logs only ever hold this one shape.

use std::fmt;

/// A point in time, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// From microseconds since the Unix epoch.
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let second = digits(&b[17..19])?;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return None;
        }
        if second > 60 {
            return None;
        }
        let mut rest = &b[19..];
        let mut micros = 0i64;
        if let Some((&b'.', fraction)) = rest.split_first() {
            let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if len == 0 {
                return None;
            }
            // Microsecond precision: later digits are dropped, fewer are scaled up.
            let mut scale = 100_000i64;
            for &c in &fraction[..len.min(6)] {
                micros += i64::from(c - b'0') * scale;
                scale /= 10;
            }
            rest = &fraction[len..];
        }
        let offset_s = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let h = digits(&[*h1, *h2])?;
                let m = digits(&[*m1, *m2])?;
                let s = h * 3600 + m * 60;
                if *sign == b'+' { s } else { -s }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
        Some(Self(seconds * 1_000_000 + micros))
    }

    /// The time of day, `HH:MM:SS.mmm` (UTC): enough for a report's columns.
    pub fn time_of_day(self) -> String {
        let (_, rest) = self.split();
        let ms = rest.rem_euclid(86_400_000_000) / 1000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }

    fn split(self) -> (i64, i64) {
        (
            self.0.div_euclid(86_400_000_000),
            self.0.rem_euclid(86_400_000_000),
        )
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, as the node writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, in_day) = self.split();
        let (year, month, day) = civil_from_days(days);
        let seconds = in_day / 1_000_000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            in_day % 1_000_000
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A duration in milliseconds for reports: `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
pub fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0).round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_nodes_timestamps_and_prints_them_back() {
        let text = "2026-12-05T19:32:36.597431Z";
        let t = Timestamp::parse(text).expect("valid");
        assert_eq!(t.to_string(), text);
        assert_eq!(t.time_of_day(), "19:32:36.597");
    }

    #[test]
    fn knows_the_epoch_and_leap_days() {
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z").map(Timestamp::micros),
            Some(0)
        );
        let before = Timestamp::parse("2024-02-28T23:59:59Z").expect("valid");
        let after = Timestamp::parse("2024-03-01T00:00:00Z").expect("valid");
        assert_eq!(after.micros() - before.micros(), 86_401_000_000);
    }

    #[test]
    fn applies_offsets_and_scales_short_fractions() {
        let utc = Timestamp::parse("2026-01-01T10:00:00.5Z").expect("valid");
        let cet = Timestamp::parse("2026-01-01T11:00:00.500+01:00").expect("valid");
        assert_eq!(utc, cet);
        assert_eq!(utc.micros() % 1_000_000, 500_000);
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn prints_durations_for_people() {
        assert_eq!(human_ms(850.0), "850 ms");
        assert_eq!(human_ms(12_345.0), "12.3 s");
        assert_eq!(human_ms(245_000.0), "4m 05s");
        assert_eq!(human_ms(7_380_000.0), "2h 03m");
    }
}
