//! Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.
//!
//! Supports `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists `a,b`; day-of-week 0
//! and 7 are Sunday. As in classic cron, when both day fields are restricted a day matches if
//! either does. Plain data: it never reads a clock.

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
    text: String,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} is not a cron expression: expected 5 fields (minute hour day month weekday), found {}",
                fields.len()
            ));
        }
        let minutes = field(fields[0], 0, 59, "minute")?;
        let hours = field(fields[1], 0, 23, "hour")? as u32;
        let days = field(fields[2], 1, 31, "day of month")? as u32;
        let months = field(fields[3], 1, 12, "month")? as u16;
        let mut weekdays = field(fields[4], 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays: (weekdays & 0x7f) as u8,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
            text: text.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        if self.minutes & (1 << minute) == 0
            || self.hours & (1 << hour) == 0
            || self.months & (1 << month) == 0
        {
            return false;
        }
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => d || w,
            (true, false) => d,
            (false, true) => w,
            (false, false) => true,
        }
    }

    /// The first matching minute strictly after `after_ms` (unix ms, UTC), within five years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let mut minute = after_ms / 60_000 + 1;
        let limit = minute + 5 * 366 * 24 * 60;
        while minute < limit {
            let days = (minute / 1440) as i64;
            let (_, month, day) = civil_from_days(days);
            let weekday = ((days + 4).rem_euclid(7)) as u32; // 1970-01-01 was a Thursday
            let in_day = (minute % 1440) as u32;
            if self.months & (1 << month) == 0 || !self.day_ok(day, weekday) {
                minute = (days as u64 + 1) * 1440; // skip to the next day
                continue;
            }
            if self.matches(in_day % 60, in_day / 60, day, month, weekday) {
                return Some(minute * 60_000);
            }
            minute += 1;
        }
        None
    }

    fn day_ok(&self, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => d || w,
            (true, false) => d,
            (false, true) => w,
            (false, false) => true,
        }
    }
}

fn field(text: &str, min: u32, max: u32, name: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{name}: step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{name}: step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a, min, max, name)?, num(b, min, max, name)?)
        } else {
            let v = num(range, min, max, name)?;
            (v, if step > 1 { max } else { v })
        };
        if lo > hi {
            return Err(format!("{name}: range {range:?} runs backwards"));
        }
        // Checked: a step near u32::MAX would overflow (a panic, or in release a wrap back
        // into the range that sets a bit the expression never asked for).
        let mut v = Some(lo);
        while let Some(n) = v.filter(|n| *n <= hi) {
            bits |= 1 << n;
            v = n.checked_add(step);
        }
    }
    Ok(bits)
}

fn num(text: &str, min: u32, max: u32, name: &str) -> Result<u32, String> {
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{name}: {text:?} is not a number"))?;
    if v < min || v > max {
        return Err(format!("{name}: {v} is out of range ({min} to {max})"));
    }
    Ok(v)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    // 2026-11-26T00:00:00Z, a Thursday.
    const T0: u64 = 1_795_651_200_000;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days((T0 / DAY) as i64), (2026, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_default_schedules() {
        let every5 = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(T0), Some(T0 + 5 * MIN));
        assert_eq!(every5.next_after(T0 + 7 * MIN), Some(T0 + 10 * MIN));
        let hourly = Cron::parse("0 * * * *").unwrap();
        assert_eq!(hourly.next_after(T0), Some(T0 + HOUR));
        let nightly = Cron::parse("0 2 * * *").unwrap();
        assert_eq!(nightly.next_after(T0), Some(T0 + 2 * HOUR));
        assert_eq!(nightly.next_after(T0 + 2 * HOUR), Some(T0 + DAY + 2 * HOUR));
        // Over a simulated day, */5 fires 288 times and 0 2 once.
        let (mut t, mut n5, mut n2) = (T0, 0, 0);
        while let Some(next) = every5.next_after(t).filter(|n| *n < T0 + DAY) {
            n5 += 1;
            t = next;
        }
        t = T0 - 1;
        while let Some(next) = nightly.next_after(t).filter(|n| *n < T0 + DAY) {
            n2 += 1;
            t = next;
        }
        assert_eq!((n5, n2), (287, 1));
    }

    #[test]
    fn weekdays_ranges_and_lists() {
        // Mondays at 09:30: T0 is a Thursday, so the next is 2026-11-30.
        let c = Cron::parse("30 9 * * 1").unwrap();
        assert_eq!(c.next_after(T0), Some(T0 + 4 * DAY + 9 * HOUR + 30 * MIN));
        let sunday = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(sunday.next_after(T0), Some(T0 + 3 * DAY));
        let c = Cron::parse("0,30 8-9 1 * *").unwrap();
        assert_eq!(c.next_after(T0), Some(T0 + 5 * DAY + 8 * HOUR)); // 2026-12-01 08:00
    }

    #[test]
    fn bad_expressions_say_why() {
        for (text, needle) in [
            ("* * * *", "5 fields"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
