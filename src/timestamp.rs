//! Timestamps as order-cdc reads and writes them: UTC, microsecond precision (PostgreSQL's),
//! RFC 3339 with six fractional digits and `Z` on the way out.

use std::ops::RangeInclusive;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, SubsecRound, Utc};

/// Formats a timestamp the one way order-cdc writes them: `2024-01-15T10:30:00.000000Z`.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a UTC datetime in the forms the export API accepts (seed 000: `2024-01-01`,
/// `2024-01-01T00:00:00Z`, `2024-01-01 00:00:00`) and RFC 3339 with offsets and fractions.
/// A time without an offset is UTC. Precision is cut to microseconds.
pub fn parse(input: &str) -> Result<DateTime<Utc>, String> {
    let s = input.trim();
    // `?since=2024-01-01T00:00:00+02:00` sent without encoding the `+` arrives with a
    // space for it (form encoding); a space after the time can only have been a `+`.
    let restored;
    let s = match s.rfind(' ') {
        Some(i) if i > 10 && s[i + 1..].bytes().all(|b| b.is_ascii_digit() || b == b':') => {
            restored = format!("{}+{}", &s[..i], &s[i + 1..]);
            restored.as_str()
        }
        _ => s,
    };
    let parsed = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            // A space for the `T`, and offsets as PostgreSQL prints them (`+00`, `+0530`).
            DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
                .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%#z"))
                .map(|t| t.with_timezone(&Utc))
        })
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|t| t.and_utc()))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        })
        .map_err(|_| {
            format!("{input:?} is not a UTC datetime (expected e.g. 2024-01-01, 2024-01-01T00:00:00Z or 2024-01-01 00:00:00)")
        })?;
    Ok(parsed.trunc_subsecs(6))
}

/// The years a client may give or be given a date or instant in (UTC): RFC 3339's four
/// digits. PostgreSQL holds them all, so a bound from a client never fails in the database
/// (it cannot hold 4714 BC), and every instant derived from one prints as RFC 3339.
pub const YEARS: RangeInclusive<i32> = 1..=9999;

/// Whether `t` is in [`YEARS`].
pub fn representable(t: DateTime<Utc>) -> bool {
    YEARS.contains(&t.year())
}

/// The Unix epoch: where a pipeline without a checkpoint starts unless told otherwise,
/// so a first run is a full snapshot.
pub fn epoch() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_documented_form() {
        let midnight = parse("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(parse("2024-01-01").unwrap(), midnight);
        assert_eq!(parse("2024-01-01 00:00:00").unwrap(), midnight);
        assert_eq!(parse("2024-01-01T02:00:00+02:00").unwrap(), midnight);
        assert_eq!(parse("2024-01-01T00:00:00").unwrap(), midnight);
        assert_eq!(parse("2024-01-01 00:00:00Z").unwrap(), midnight);
        assert_eq!(parse("2024-01-01 00:00:00+00").unwrap(), midnight);
        assert_eq!(parse("2024-01-01T05:30:00+0530").unwrap(), midnight);
        assert_eq!(parse("2024-01-01 01:00:00.000+01").unwrap(), midnight);
        assert_eq!(parse("2024-01-01T02:00:00 02:00").unwrap(), midnight, "a + lost to form encoding");
        assert_eq!(parse("2024-01-01 02:00:00 02:00").unwrap(), midnight);
        assert_eq!(format(parse("2024-01-01T00:00:00.1234567Z").unwrap()), "2024-01-01T00:00:00.123456Z");
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        let e = parse("yesterday").unwrap_err();
        assert!(e.contains("yesterday"), "{e}");
        assert!(parse("2024-13-01").is_err());
    }

    #[test]
    fn only_four_digit_utc_years_are_representable() {
        assert!(representable(parse("0001-01-01").unwrap()));
        assert!(representable(parse("9999-12-31T23:59:59.999999Z").unwrap()));
        for outside in ["-4714-01-01", "0000-12-31", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-14:00"] {
            assert!(!representable(parse(outside).unwrap()), "{outside}");
        }
    }
}
