//! JSON values written byte for byte as PostgreSQL writes them in the export document
//! (`store::document`): the assembly in Rust must publish the very bytes the SQL builder
//! did, so each function here mirrors one PostgreSQL output routine, including its
//! corner cases (BC and five-digit years, `1e+20`, `NaN`, control characters).

use std::fmt::Write;

/// `to_json(text)`: `\b \f \n \r \t \" \\` by name, other characters below U+0020 as
/// `\u00XX` (lower-case hex), everything else (DEL, non-ASCII, astral) as it is.
pub fn text(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'\x08' => "\\b",
            b'\x0c' => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// From here on the digits may differ from PostgreSQL's (2^53).
const FLOAT8_EXACT_BELOW: f64 = 9_007_199_254_740_992.0;

/// `float8::text` with the default `extra_float_digits` (1): the shortest digits that
/// read back as the same double, fixed notation for decimal exponents -4..14, otherwise
/// `d.ddde+XX` with at least two exponent digits; `NaN`, `Infinity`, `-Infinity`, `-0`.
///
/// The digits are Ryu's, as PostgreSQL's are (its `float8out` runs a copy of Ryu's `d2s`,
/// of which the `ryu` crate is a port), so ties between two shortest candidates go to the
/// even one alike (165752775928597.12, where std writes .13). One corner is left to
/// PostgreSQL as `Exotic` (money never gets there): shortest digits that lie exactly on the
/// rounding boundary to the next double, which PostgreSQL does not take and the crate
/// does (4.0691907000000004e+19 against 4.0691907e+19). A boundary is short enough to be
/// those digits only from 2^53 on.
pub fn float8(out: &mut String, v: f64) -> Result<(), Exotic> {
    if v.is_nan() {
        out.push_str("NaN");
        return Ok(());
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return Ok(());
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
        return Ok(());
    }
    if v.abs() >= FLOAT8_EXACT_BELOW {
        return Err(Exotic);
    }
    let (mut ryu, mut buf) = (ryu::Buffer::new(), [0; 24]);
    let (digits, exp) = decimal(ryu.format_finite(v.abs()), &mut buf);
    if v < 0.0 {
        out.push('-');
    }
    if !(-4..15).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        padded(out, exp.unsigned_abs().into(), 2);
    } else if exp < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.push_str(digits);
    } else {
        let whole = exp as usize + 1;
        if digits.len() <= whole {
            out.push_str(digits);
            out.extend(std::iter::repeat_n('0', whole - digits.len()));
        } else {
            out.push_str(&digits[..whole]);
            out.push('.');
            out.push_str(&digits[whole..]);
        }
    }
    Ok(())
}

/// The significant digits of a positive number as Ryu writes it (`1.5E-5`, `1E20`,
/// `0.0001`, `123.45`) and the decimal exponent of the first: (`15`, -5), (`1`, 20),
/// (`1`, -4), (`12345`, 2). The digits are gathered in `buf`: Ryu's whole output is no
/// longer than 24 bytes.
fn decimal<'b>(ryu: &str, buf: &'b mut [u8; 24]) -> (&'b str, i32) {
    let (mantissa, exp) = match ryu.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse().unwrap_or(0)),
        None => (ryu, 0),
    };
    let whole = mantissa.find('.').unwrap_or(mantissa.len()) as i32;
    let (mut len, mut first) = (0, None);
    for (i, b) in mantissa.bytes().filter(|&b| b != b'.').enumerate() {
        if first.is_none() && b == b'0' {
            continue;
        }
        first.get_or_insert(i as i32);
        buf[len] = b;
        len += 1;
    }
    let digits = std::str::from_utf8(&buf[..len]).unwrap_or_default();
    (digits.trim_end_matches('0'), exp + whole - 1 - first.unwrap_or(0))
}

/// An integer's `::text`.
pub fn int(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// A non-negative number in at least `width` digits, zero-padded as `to_char` pads.
fn padded(out: &mut String, v: i64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(v);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

/// Days from 2000-01-01 to the Julian day number PostgreSQL counts from.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = 86_400_000_000;
/// The first Julian day a timestamp cannot hold (294277-01-01).
const TIMESTAMP_END_JULIAN: i64 = 109_203_528;

/// PostgreSQL's `j2date`: a Julian day number to (year, month, day), year 0 being 1 BC.
fn j2date(jd: i64) -> (i64, u32, u32) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 { (julian + 305) % 365 } else { (julian + 306) % 366 } + 123;
    y += quad * 4;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (y - 4800, month as u32, day as u32)
}

/// `to_char`'s `YYYY-MM-DD`: BC years count up from 1 with no marker, at least four
/// digits, more when the year needs them.
fn ymd(out: &mut String, jd: i64) {
    let (year, month, day) = j2date(jd);
    let year = if year <= 0 { 1 - year } else { year };
    padded(out, year, 4);
    out.push('-');
    padded(out, month.into(), 2);
    out.push('-');
    padded(out, day.into(), 2);
}

/// What the assembly cannot write as PostgreSQL would: the page goes to the SQL builder.
#[derive(Debug)]
pub struct Exotic;

/// `to_char(date, 'YYYY-MM-DD')` as a JSON string, `null` for ±infinity (to_char yields
/// NULL). A date past the last timestamp makes PostgreSQL's cast fail: `Exotic`, so the
/// SQL builder reports that error itself.
pub fn date(out: &mut String, days: i32) -> Result<(), Exotic> {
    if days == i32::MIN || days == i32::MAX {
        out.push_str("null");
        return Ok(());
    }
    let jd = days as i64 + POSTGRES_EPOCH_JDATE;
    if jd >= TIMESTAMP_END_JULIAN {
        return Err(Exotic);
    }
    out.push('"');
    ymd(out, jd);
    out.push('"');
    Ok(())
}

/// `to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')` as a JSON string,
/// from microseconds since 2000-01-01 UTC; `null` for ±infinity.
pub fn timestamp(out: &mut String, micros: i64) {
    if micros == i64::MIN || micros == i64::MAX {
        out.push_str("null");
        return;
    }
    let (days, time) = (micros.div_euclid(USECS_PER_DAY), micros.rem_euclid(USECS_PER_DAY));
    out.push('"');
    ymd(out, days + POSTGRES_EPOCH_JDATE);
    let secs = time / 1_000_000;
    for (separator, v, width) in [('T', secs / 3600, 2), (':', secs / 60 % 60, 2), (':', secs % 60, 2), ('.', time % 1_000_000, 6)] {
        out.push(separator);
        padded(out, v, width);
    }
    out.push_str("Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut s = String::new();
        match float8(&mut s, v) {
            Ok(()) => s,
            Err(Exotic) => "exotic".into(),
        }
    }

    #[test]
    fn floats_are_laid_out_as_postgresql_does() {
        let cases = [
            (1e20, "exotic"),
            (4.0691907e19, "exotic"), // PostgreSQL writes 4.0691907000000004e+19
            (1e14, "100000000000000"),
            (5.6e14, "560000000000000"),
            (f64::from_bits(0x42e2_d80a_6a8d_62a4), "165752775928597.12"), // …597.125 exactly: std writes .13
            (123456789012345.6, "123456789012345.6"),
            (0.000015, "1.5e-05"),
            (1234567890123456.0, "1.234567890123456e+15"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0"),
            (128.23, "128.23"),
            (-12.5, "-12.5"),
            (1e-300, "1e-300"),
            (1.5e-310, "1.5e-310"),
            (9007199254740991.0, "9.007199254740991e+15"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(f(v), want, "{v:e}");
        }
    }

    #[test]
    fn text_escapes_what_to_json_escapes_and_nothing_else() {
        let mut s = String::new();
        text(&mut s, "a\u{1}\u{7f}é😀\u{8}\u{c}\n\r\t\"\\/");
        assert_eq!(s, "\"a\\u0001\u{7f}é😀\\b\\f\\n\\r\\t\\\"\\\\/\"");
    }

    #[test]
    fn dates_and_timestamps_follow_to_char() {
        let mut s = String::new();
        timestamp(&mut s, -1);
        date(&mut s, -730_119 - 366).unwrap(); // 1 BC-01-01: 1 BC is a leap year
        timestamp(&mut s, i64::MAX);
        assert_eq!(s, "\"1999-12-31T23:59:59.999999Z\"\"0001-01-01\"null");
    }
}
