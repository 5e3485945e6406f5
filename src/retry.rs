//! Owns the retry decision for a failed provider call: whether to try again and
//! after how long, given the error category, the retries already spent and the
//! step's deadline. It must never sleep, read a clock or draw random numbers:
//! the caller passes elapsed time, `now_ms` and a random value in, so the same
//! inputs always give the same decision.

use crate::provider::error::ErrorCategory;
use std::time::Duration;

/// How randomness spreads the backoff so many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// The exact exponential delay.
    None,
    /// Anywhere in `[0, d)`.
    Full,
    /// Anywhere in `[d/2, d)`, keeping a guaranteed minimum wait.
    Equal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries allowed after the first failure.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound for the exponential backoff (not for rate-limit waits).
    pub cap: Duration,
    /// Growth per retry; values below 1.0 are treated as 1.0.
    pub multiplier: f64,
    pub jitter: Jitter,
    /// Wait after a rate-limit answer that did not say how long to wait.
    pub rate_limit_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: Jitter::None,
            rate_limit_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    Retry { delay: Duration },
    GiveUp(GiveUp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// The error will not go away by asking again.
    Permanent,
    /// `max_retries` retries were already spent.
    AttemptsExhausted,
    /// The wait would end at or past the step's deadline.
    DeadlineExceeded,
}

impl GiveUp {
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUp::Permanent => "permanent",
            GiveUp::AttemptsExhausted => "attempts_exhausted",
            GiveUp::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

impl RetryPolicy {
    /// Decides what to do after a failure.
    ///
    /// `retries_done` is how many retries already happened for this call (0 after
    /// the first failure), `elapsed` the time since the step started, `deadline`
    /// the step's overall budget, and `random` a caller-supplied value in `[0, 1)`
    /// used only for jitter. Rate-limited retries count against `max_retries` too,
    /// so a provider that keeps saying "slow down" cannot hold a step forever.
    pub fn decide(
        &self,
        category: ErrorCategory,
        retry_after: Option<Duration>,
        retries_done: u32,
        elapsed: Duration,
        deadline: Duration,
        random: f64,
    ) -> RetryDecision {
        let delay = match category {
            ErrorCategory::Permanent | ErrorCategory::ResourceLimit => {
                return RetryDecision::GiveUp(GiveUp::Permanent);
            }
            // The provider told us when it will accept us again; backing off less
            // would only earn another rejection, so neither `cap` nor jitter apply.
            ErrorCategory::RateLimited => retry_after.unwrap_or(self.rate_limit_delay),
            ErrorCategory::Transient | ErrorCategory::Timeout => self.backoff(retries_done, random),
        };
        if retries_done >= self.max_retries {
            return RetryDecision::GiveUp(GiveUp::AttemptsExhausted);
        }
        // Waiting until the deadline leaves no time for the call itself.
        if elapsed.saturating_add(delay) >= deadline {
            return RetryDecision::GiveUp(GiveUp::DeadlineExceeded);
        }
        RetryDecision::Retry { delay }
    }

    /// Exponential backoff `base * multiplier^retries_done`, capped at `cap`, then
    /// jittered. Never exceeds `cap`.
    pub fn backoff(&self, retries_done: u32, random: f64) -> Duration {
        let cap = self.cap;
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            // Shrinking delays would hammer a struggling provider harder over time.
            1.0
        };
        let factor = multiplier.powf(f64::from(retries_done));
        let secs = self.base.as_secs_f64() * factor;
        let d = if self.base.is_zero() {
            // Zero times an overflowing factor is not a reason to wait `cap`.
            Duration::ZERO
        } else if secs.is_finite() && secs < cap.as_secs_f64() {
            // Bounded by `cap` above, so the conversion cannot overflow.
            self.base.mul_f64(factor).min(cap)
        } else {
            cap
        };
        // Out-of-range randomness is clamped rather than trusted, so a bad caller
        // cannot push the delay past the cap or make it negative.
        let r = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => d.mul_f64(r),
            Jitter::Equal => {
                let half = d / 2;
                half + (d - half).mul_f64(r)
            }
        }
    }
}

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
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const HOUR: Duration = Duration::from_secs(3600);

    fn retry(delay: Duration) -> RetryDecision {
        RetryDecision::Retry { delay }
    }

    #[test]
    fn defaults_give_one_two_four_then_exhausted() {
        let p = RetryPolicy::default();
        let d = |n| p.decide(ErrorCategory::Transient, None, n, Duration::ZERO, HOUR, 0.5);
        assert_eq!(d(0), retry(S(1)));
        assert_eq!(d(1), retry(S(2)));
        assert_eq!(d(2), retry(S(4)));
        assert_eq!(d(3), RetryDecision::GiveUp(GiveUp::AttemptsExhausted));
        assert_eq!(d(99), RetryDecision::GiveUp(GiveUp::AttemptsExhausted));
    }

    #[test]
    fn timeout_backs_off_like_transient() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(ErrorCategory::Timeout, None, 1, Duration::ZERO, HOUR, 0.0),
            retry(S(2))
        );
    }

    #[test]
    fn permanent_and_resource_limit_never_retry() {
        let p = RetryPolicy::default();
        for c in [ErrorCategory::Permanent, ErrorCategory::ResourceLimit] {
            assert_eq!(
                p.decide(c, Some(S(1)), 0, Duration::ZERO, HOUR, 0.0),
                RetryDecision::GiveUp(GiveUp::Permanent)
            );
        }
    }

    #[test]
    fn rate_limited_uses_retry_after_uncapped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(
                ErrorCategory::RateLimited,
                Some(S(45)),
                0,
                Duration::ZERO,
                HOUR,
                0.9
            ),
            retry(S(45))
        );
        assert_eq!(
            p.decide(
                ErrorCategory::RateLimited,
                None,
                0,
                Duration::ZERO,
                HOUR,
                0.9
            ),
            retry(S(30))
        );
        assert_eq!(
            p.decide(
                ErrorCategory::RateLimited,
                Some(S(2)),
                3,
                Duration::ZERO,
                HOUR,
                0.0
            ),
            RetryDecision::GiveUp(GiveUp::AttemptsExhausted)
        );
    }

    #[test]
    fn rate_limited_still_bound_by_deadline() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(
                ErrorCategory::RateLimited,
                Some(S(45)),
                0,
                S(20),
                S(60),
                0.0
            ),
            RetryDecision::GiveUp(GiveUp::DeadlineExceeded)
        );
        assert_eq!(
            p.decide(ErrorCategory::RateLimited, None, 0, S(29), S(60), 0.0),
            retry(S(30))
        );
    }

    #[test]
    fn deadline_is_exclusive() {
        let p = RetryPolicy::default();
        let d = |elapsed| p.decide(ErrorCategory::Transient, None, 2, elapsed, S(10), 0.0);
        assert_eq!(d(S(5)), retry(S(4)));
        assert_eq!(d(S(6)), RetryDecision::GiveUp(GiveUp::DeadlineExceeded));
        assert_eq!(d(S(11)), RetryDecision::GiveUp(GiveUp::DeadlineExceeded));
    }

    #[test]
    fn backoff_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(3, 0.0), S(8));
        assert_eq!(p.backoff(4, 0.0), S(10));
        assert_eq!(p.backoff(u32::MAX, 0.0), S(10));
        let big = RetryPolicy {
            base: S(60),
            ..RetryPolicy::default()
        };
        assert_eq!(big.backoff(0, 0.0), S(10));
    }

    #[test]
    fn jitter_modes() {
        let none = RetryPolicy::default();
        assert_eq!(none.backoff(2, 0.99), S(4));
        let full = RetryPolicy {
            jitter: Jitter::Full,
            ..RetryPolicy::default()
        };
        assert_eq!(full.backoff(2, 0.0), Duration::ZERO);
        assert_eq!(full.backoff(2, 0.25), S(1));
        let equal = RetryPolicy {
            jitter: Jitter::Equal,
            ..RetryPolicy::default()
        };
        assert_eq!(equal.backoff(2, 0.0), S(2));
        assert_eq!(equal.backoff(2, 0.5), S(3));
    }

    #[test]
    fn bad_inputs_are_tamed() {
        let full = RetryPolicy {
            jitter: Jitter::Full,
            multiplier: f64::NAN,
            ..RetryPolicy::default()
        };
        assert_eq!(full.backoff(5, f64::NAN), Duration::ZERO);
        assert_eq!(full.backoff(5, 7.0), S(1));
        assert_eq!(full.backoff(5, -3.0), Duration::ZERO);
        let shrinking = RetryPolicy {
            multiplier: 0.5,
            ..RetryPolicy::default()
        };
        assert_eq!(shrinking.backoff(3, 0.0), S(1));
        let zero = RetryPolicy {
            base: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.backoff(u32::MAX, 0.0), Duration::ZERO);
    }

    #[test]
    fn give_up_names() {
        assert_eq!(GiveUp::Permanent.as_str(), "permanent");
        assert_eq!(GiveUp::AttemptsExhausted.as_str(), "attempts_exhausted");
        assert_eq!(GiveUp::DeadlineExceeded.as_str(), "deadline_exceeded");
    }

    // 2015-10-21T07:28:00Z
    const RFC_EXAMPLE_MS: u64 = 1_445_412_480_000;

    #[test]
    fn parses_delta_seconds() {
        assert_eq!(parse_retry_after("7", 0), Some(S(7)));
        assert_eq!(parse_retry_after(" 120 ", 0), Some(S(120)));
        assert_eq!(parse_retry_after("0", 0), Some(Duration::ZERO));
    }

    #[test]
    fn parses_imf_fixdate() {
        let v = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(
            parse_retry_after(v, RFC_EXAMPLE_MS - 7_500),
            Some(Duration::from_millis(7_500))
        );
        assert_eq!(parse_retry_after(v, RFC_EXAMPLE_MS), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(v, RFC_EXAMPLE_MS + 1),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_imf_fixdate("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(
            parse_imf_fixdate("Fri, 31 Dec 1999 23:59:60 GMT"),
            Some(946_684_800)
        );
    }

    #[test]
    fn past_dates_give_zero() {
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", RFC_EXAMPLE_MS),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_gives_none() {
        for v in [
            "",
            "   ",
            "-5",
            "+5",
            "7.5",
            "7s",
            "soon",
            "99999999999999999999999",
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 21 oct 2015 07:28:00 GMT",
            "Xyz, 21 Oct 2015 07:28:00 GMT",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 00 Oct 2015 07:28:00 GMT",
            "Thu, 29 Feb 2001 07:28:00 GMT",
            "Mon, 29 Feb 1900 00:00:00 GMT",
            "Wed, 21 Oct 2015 24:00:00 GMT",
            "Wed, 21 Oct 2015 07:60:00 GMT",
            "Wed, 21 Oct 2015 07:28:61 GMT",
            "Wed, 21 Oct 15 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
            "Wed, 21 Oct 2015 07:28:00 GMT extra",
            "Wed, 2 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 7:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:0a GMT",
        ] {
            assert_eq!(parse_retry_after(v, RFC_EXAMPLE_MS), None, "{v:?}");
        }
    }

    /// Inverse of `days_from_civil`, used only to build dates for round trips.
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    fn format_imf(secs: i64) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[days.rem_euclid(7) as usize],
            d,
            MONTHS[(m - 1) as usize],
            y,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    #[test]
    fn formatter_matches_rfc_example() {
        assert_eq!(format_imf(1_445_412_480), "Wed, 21 Oct 2015 07:28:00 GMT");
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_cap(
            base_ms in 0u64..100_000,
            cap_ms in 0u64..100_000,
            multiplier in -1.0f64..10.0,
            n in any::<u32>(),
            random in any::<f64>(),
            jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
        ) {
            let p = RetryPolicy {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(cap_ms),
                multiplier,
                jitter,
                ..RetryPolicy::default()
            };
            prop_assert!(p.backoff(n, random) <= p.cap);
        }

        #[test]
        fn decide_never_retries_past_deadline(
            category in prop_oneof![
                Just(ErrorCategory::Transient),
                Just(ErrorCategory::RateLimited),
                Just(ErrorCategory::Permanent),
                Just(ErrorCategory::Timeout),
                Just(ErrorCategory::ResourceLimit),
            ],
            retry_after in proptest::option::of(0u64..u64::MAX),
            retries_done in 0u32..10,
            elapsed in 0u64..u64::MAX,
            deadline in 0u64..u64::MAX,
            random in 0.0f64..1.0,
            jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
        ) {
            let p = RetryPolicy { jitter, ..RetryPolicy::default() };
            let elapsed = Duration::from_millis(elapsed);
            let deadline = Duration::from_millis(deadline);
            let d = p.decide(category, retry_after.map(Duration::from_millis), retries_done, elapsed, deadline, random);
            if let RetryDecision::Retry { delay } = d {
                prop_assert!(elapsed + delay < deadline);
                prop_assert!(retries_done < p.max_retries);
                prop_assert!(matches!(
                    category,
                    ErrorCategory::Transient | ErrorCategory::Timeout | ErrorCategory::RateLimited
                ));
            }
        }

        #[test]
        fn parse_retry_after_never_panics(s in ".*", now in any::<u64>()) {
            let _ = parse_retry_after(&s, now);
        }

        #[test]
        fn parse_retry_after_never_panics_near_dates(
            day in "[A-Za-z]{3}", dd in "[0-9]{2}", mon in "[A-Za-z]{3}", yyyy in "[0-9]{4}",
            hh in "[0-9]{2}", mi in "[0-9]{2}", ss in "[0-9]{2}", now in any::<u64>(),
        ) {
            let s = format!("{day}, {dd} {mon} {yyyy} {hh}:{mi}:{ss} GMT");
            let _ = parse_retry_after(&s, now);
        }

        #[test]
        fn imf_dates_round_trip(secs in 0i64..253_402_300_800, now_s in 0u64..253_402_300_800) {
            let s = format_imf(secs);
            prop_assert_eq!(parse_imf_fixdate(&s), Some(secs));
            let expected = (secs as u64).saturating_sub(now_s);
            prop_assert_eq!(parse_retry_after(&s, now_s * 1000), Some(Duration::from_secs(expected)));
        }
    }
}
