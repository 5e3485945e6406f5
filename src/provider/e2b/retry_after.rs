//! Parsing of the HTTP `Retry-After` header (delta-seconds or IMF-fixdate).
//!
//! Copied from `policies1::retry_policy::parse_retry_after` so the provider can hand the
//! worker a ready `Duration`; it only parses and never decides how long to actually wait.

use std::time::Duration;

/// Parses an HTTP `Retry-After` value: delta-seconds (`"7"`) or an IMF-fixdate
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`). A date in the past means "now" and gives
/// `Duration::ZERO`; anything else unparseable gives `None`.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at_secs = parse_imf_fixdate(value)?;
    let at_ms = at_secs.checked_mul(1000)?;
    let now_ms = i128::from(now_ms);
    let at_ms = i128::from(at_ms);
    if at_ms <= now_ms {
        return Some(Duration::ZERO);
    }
    u64::try_from(at_ms - now_ms)
        .ok()
        .map(Duration::from_millis)
}

/// Parses `Sun, 06 Nov 1994 08:49:37 GMT` into unix seconds. Only the fixed
/// format is accepted, because that is the only one senders may generate and
/// guessing at the obsolete forms risks misreading a date as far in the future.
fn parse_imf_fixdate(s: &str) -> Option<i64> {
    const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29 {
        return None;
    }
    let lit = |at: usize, expected: &[u8]| b.get(at..at + expected.len()) == Some(expected);
    if !DAYS.iter().any(|d| lit(0, &d[..]))
        || !lit(3, b", ")
        || b[7] != b' '
        || b[11] != b' '
        || b[16] != b' '
        || b[19] != b':'
        || b[22] != b':'
        || !lit(25, b" GMT")
    {
        return None;
    }
    let day = digits(&b[5..7])?;
    let month = MONTHS.iter().position(|m| lit(8, &m[..]))? as i64 + 1;
    let year = digits(&b[12..16])?;
    let hour = digits(&b[17..19])?;
    let minute = digits(&b[20..22])?;
    let second = digits(&b[23..25])?;
    // 60 allows a leap second, which unix time folds into the next second.
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's
/// algorithm), done by hand to keep this crate free of date dependencies.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon", 0), None);
        let at = 784_111_777_000u64;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 2_000),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 1),
            Some(Duration::ZERO)
        );
    }
}
