//! Times on the command line and in output: parsing `audit --since` and
//! printing the vault's millisecond timestamps as RFC 3339 (UTC).
//!
//! Pure functions without a time-zone database: input times must carry
//! their offset (`Z` or `±HH:MM`), and output is always UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lower bound given to `audit --since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(Duration),
    /// This instant, in milliseconds since the Unix epoch.
    At(i64),
}

impl Since {
    /// The bound in milliseconds since the epoch, given the current time.
    pub fn epoch_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::Ago(ago) => {
                now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
            }
            Since::At(ms) => ms,
        }
    }
}

/// Parses `--since`: a duration ago (`30s`, `10m`, `2h`, `7d`, `1w`,
/// `1h30m`), an RFC 3339 time (`2026-11-26T06:00:00Z`, a bare date means
/// midnight UTC) or unix seconds (`1764136800`).
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = s.parse().map_err(|_| format!("'{s}': too large"))?;
        return secs
            .checked_mul(1000)
            .map(Since::At)
            .ok_or_else(|| format!("'{s}': too large"));
    }
    if s.len() >= 10 && s.as_bytes()[4] == b'-' {
        return parse_rfc3339(s).map(Since::At);
    }
    parse_duration(s).map(Since::Ago).map_err(|e| {
        format!("{e}; expected a duration (30s, 10m, 2h, 7d), an RFC 3339 time or unix seconds")
    })
}

/// Parses a duration made of `<number><unit>` parts, units `s m h d w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("'{s}': expected a number"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            "" => return Err(format!("'{s}': missing unit after {number}")),
            other => return Err(format!("'{s}': unknown unit '{other}'")),
        };
        let number: u64 = number.parse().map_err(|_| format!("'{s}': too large"))?;
        total = number
            .checked_mul(scale)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("'{s}': too large"))?;
        rest = tail;
    }
    Ok(Duration::from_secs(total))
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = |what: &str| format!("'{s}': {what}; expected e.g. 2026-11-26T06:00:00Z");
    let mut p = Cursor {
        bytes: s.as_bytes(),
        pos: 0,
    };
    let year = p.digits(4).ok_or_else(|| bad("bad year"))?;
    p.expect(b'-').ok_or_else(|| bad("bad date"))?;
    let month = p.digits(2).ok_or_else(|| bad("bad month"))?;
    p.expect(b'-').ok_or_else(|| bad("bad date"))?;
    let day = p.digits(2).ok_or_else(|| bad("bad day"))?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let days = days_from_civil(year, month, day);
    if p.done() {
        return Ok(days * 86_400_000);
    }
    if !matches!(p.next(), Some(b'T' | b't' | b' ')) {
        return Err(bad("expected 'T' after the date"));
    }
    let hour = p.digits(2).ok_or_else(|| bad("bad hour"))?;
    p.expect(b':').ok_or_else(|| bad("bad time"))?;
    let minute = p.digits(2).ok_or_else(|| bad("bad minute"))?;
    p.expect(b':').ok_or_else(|| bad("bad time"))?;
    let second = p.digits(2).ok_or_else(|| bad("bad second"))?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time"));
    }
    let mut millis = 0;
    if p.peek() == Some(b'.') {
        p.pos += 1;
        let start = p.pos;
        while p.peek().is_some_and(|b| b.is_ascii_digit()) {
            if p.pos - start < 3 {
                millis = millis * 10 + i64::from(p.bytes[p.pos] - b'0');
            }
            p.pos += 1;
        }
        let n = p.pos - start;
        if n == 0 {
            return Err(bad("empty fraction"));
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match p.next() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let h = p.digits(2).ok_or_else(|| bad("bad offset"))?;
            p.expect(b':').ok_or_else(|| bad("bad offset"))?;
            let m = p.digits(2).ok_or_else(|| bad("bad offset"))?;
            if h > 23 || m > 59 {
                return Err(bad("bad offset"));
            }
            if sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return Err(bad("missing offset (Z or ±HH:MM)")),
    };
    if !p.done() {
        return Err(bad("trailing characters"));
    }
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Ok(secs * 1000 + millis)
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Formats a number of seconds as e.g. `3d 4h 5m 6s` (zero parts omitted).
pub fn format_secs(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A byte cursor over an ASCII time string.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn digits(&mut self, n: usize) -> Option<i64> {
        let field = self.bytes.get(self.pos..self.pos + n)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(
            field
                .iter()
                .fold(0, |acc, b| acc * 10 + i64::from(b - b'0')),
        )
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
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
    fn durations() {
        assert_eq!(
            parse_since("30s").unwrap(),
            Since::Ago(Duration::from_secs(30))
        );
        assert_eq!(
            parse_since("10m").unwrap(),
            Since::Ago(Duration::from_secs(600))
        );
        assert_eq!(
            parse_since("2h").unwrap(),
            Since::Ago(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_since("7d").unwrap(),
            Since::Ago(Duration::from_secs(604_800))
        );
        assert_eq!(
            parse_since("1h30m").unwrap(),
            Since::Ago(Duration::from_secs(5400))
        );
        assert!(parse_since("10").is_ok()); // unix seconds
        assert!(parse_since("10x").is_err());
        assert!(parse_since("h").is_err());
        assert!(parse_since("5m3").is_err());
        assert!(parse_since("").is_err());
        assert!(parse_since("99999999999999999999d").is_err());
    }

    #[test]
    fn ago_is_relative_to_now() {
        assert_eq!(
            Since::Ago(Duration::from_secs(30)).epoch_ms(100_000),
            70_000
        );
        assert_eq!(Since::At(5).epoch_ms(100_000), 5);
    }

    #[test]
    fn unix_seconds() {
        assert_eq!(
            parse_since("1764136800").unwrap(),
            Since::At(1_764_136_800_000)
        );
        assert_eq!(parse_since("0").unwrap(), Since::At(0));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_since("2026-11-26T06:00:00Z").unwrap(),
            Since::At(1_795_672_800_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.123456Z").unwrap(), 1123);
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00").unwrap(), 0);
        assert_eq!(parse_rfc3339("2000-03-01").unwrap(), 951_868_800_000);
        assert_eq!(
            parse_rfc3339("2024-02-29t12:00:00z").unwrap(),
            1_709_208_000_000
        );
        for bad in [
            "2026-11-26T06:00:00",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T06:00Z",
            "2026-11-26T06:00:00.Z",
            "2026-11-26T06:00:00Zx",
            "2026-11-26X06:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_795_672_800_999), "2026-11-26T06:00:00Z");
        assert_eq!(format_ms(-1000), "1969-12-31T23:59:59Z");
        for ms in [0, 951_868_800_000, 1_709_208_000_000, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_ms(ms)).unwrap(), ms);
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(59), "59s");
        assert_eq!(format_secs(3_600), "1h");
        assert_eq!(format_secs(93_784), "1d 2h 3m 4s");
    }
}
