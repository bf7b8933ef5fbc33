//! The range rule for numbers in JSON Schema documents
//! (`spec/attestation.md`, "JSON Schema documents"): a check on the text of
//! every number token, made before the document is parsed, so that whether
//! a number is accepted never depends on how a JSON parser rounds it.
//!
//! A number token is `-? I ('.' F)? ([eE] [+-]? X)?` with I, F and X strings
//! of decimal digits. It is accepted when X, leading zeros removed, has at
//! most [`MAX_EXPONENT_DIGITS`] digits and either every digit of I and F is
//! 0, or the adjusted exponent A (the power of ten of the first non-zero
//! digit of I‖F, plus the exponent) satisfies |A| ≤
//! [`MAX_ADJUSTED_EXPONENT`]: a non-zero magnitude in [1e-300, 1e301).

/// Largest |adjusted exponent| of a non-zero number.
pub(crate) const MAX_ADJUSTED_EXPONENT: i64 = 300;
/// Most digits an exponent may have once its leading zeros are removed.
pub(crate) const MAX_EXPONENT_DIGITS: usize = 4;

/// The parts of one number token.
#[derive(Debug, PartialEq, Eq)]
struct Number<'a> {
    int: &'a [u8],
    frac: &'a [u8],
    exp_negative: bool,
    exp: &'a [u8],
}

/// The first number token of `text`, outside strings, that the range rule
/// refuses; `None` if every number is accepted.
///
/// String contents are skipped (a backslash escapes the byte after it); any
/// other byte outside a string that is not `-` or a digit is passed over.
/// On text that is not JSON this still ends, in one pass, without panicking;
/// whatever it reports there, the field is `invalid_field`, as the parse
/// would make it.
pub(crate) fn first_refused(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => i = string_end(b, i),
            b'-' | b'0'..=b'9' => {
                let (n, end) = split(b, i);
                if !in_range(&n) {
                    // The token is ASCII, so both ends are char boundaries.
                    return Some(&text[i..end]);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    None
}

/// The index just past the string that opens at `b[start]` (a `"`), or the
/// length of `b` if it is not closed.
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Reads the longest `-? digits ('.' digits)? ([eE] [+-]? digits)?` at
/// `b[start]` (a `-` or a digit) and returns its parts and the index just
/// past it. The end is always past `start`.
fn split(b: &[u8], start: usize) -> (Number<'_>, usize) {
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_end = digits_end(b, i);
    let int = &b[i..int_end];
    i = int_end;
    let mut frac: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        let end = digits_end(b, i + 1);
        frac = &b[i + 1..end];
        i = end;
    }
    let mut exp_negative = false;
    let mut exp: &[u8] = &[];
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        match b.get(i) {
            Some(b'-') => {
                exp_negative = true;
                i += 1;
            }
            Some(b'+') => i += 1,
            _ => {}
        }
        let end = digits_end(b, i);
        exp = &b[i..end];
        i = end;
    }
    let n = Number {
        int,
        frac,
        exp_negative,
        exp,
    };
    (n, i.max(start + 1))
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The range rule on one number token.
fn in_range(n: &Number<'_>) -> bool {
    let first = n.exp.iter().position(|&d| d != b'0').unwrap_or(n.exp.len());
    let exp = &n.exp[first..];
    // Rule 1: at most four significant exponent digits.
    if exp.len() > MAX_EXPONENT_DIGITS {
        return false;
    }
    let magnitude = exp.iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    let exp = if n.exp_negative {
        -magnitude
    } else {
        magnitude
    };
    // Rule 2: zero, whatever its exponent.
    let Some(k) = n.int.iter().chain(n.frac).position(|&d| d != b'0') else {
        return true;
    };
    // Rule 3: the power of ten of the first non-zero digit, plus the exponent.
    // Both lengths are below the 16 KiB document limit, far inside i64.
    let adjusted = n.int.len() as i64 - 1 - k as i64 + exp;
    (-MAX_ADJUSTED_EXPONENT..=MAX_ADJUSTED_EXPONENT).contains(&adjusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(number: &str) -> bool {
        let (n, end) = split(number.as_bytes(), 0);
        assert_eq!(end, number.len(), "{number} is one token");
        in_range(&n)
    }

    #[test]
    fn splits_a_token_into_its_parts() {
        let (n, end) = split(b"-012.340E+0056,", 0);
        assert_eq!(end, 14);
        assert_eq!(
            n,
            Number {
                int: b"012",
                frac: b"340",
                exp_negative: false,
                exp: b"0056"
            }
        );
        let (n, end) = split(b"7e-3]", 0);
        assert_eq!(end, 4);
        assert!(n.exp_negative);
        assert_eq!(n.exp, b"3");
        // A lone minus sign is still a (one-byte) token, so the scan moves on.
        assert_eq!(split(b"-x", 0).1, 1);
    }

    #[test]
    fn upper_boundary() {
        for n in [
            "1e300",
            "9.999e300",
            "0.1e301",
            "1E+300",
            "99e299",
            "1e0300",
        ] {
            assert!(accepted(n), "{n}");
        }
        for n in [
            "1e301",
            "10e300",
            "9.999e301",
            "1.79769313486231581e308",
            "1e400",
            "1e9999",
        ] {
            assert!(!accepted(n), "{n}");
        }
    }

    #[test]
    fn lower_boundary() {
        for n in ["1e-300", "0.1e-299", "0.0001e-296", "9.9e-300"] {
            assert!(accepted(n), "{n}");
        }
        for n in ["1e-301", "0.1e-300", "0.9e-300", "1e-9999"] {
            assert!(!accepted(n), "{n}");
        }
    }

    #[test]
    fn negative_numbers_follow_their_magnitude() {
        assert!(accepted("-1e300"));
        assert!(accepted("-1e-300"));
        assert!(!accepted("-1e301"));
        assert!(!accepted("-1e-301"));
        assert!(accepted("-0e-9999"));
    }

    #[test]
    fn exponent_digits_and_zero() {
        assert!(accepted("0e9999"));
        assert!(accepted("0.000e-9999"));
        assert!(accepted("0e0009999"));
        assert!(!accepted("0e99999"));
        assert!(!accepted("0e10000"));
        assert!(!accepted("1e-10000"));
        assert!(accepted("0"));
        assert!(accepted("-0.0"));
    }

    #[test]
    fn long_integers_and_fractions() {
        let digits = |n: usize| format!("1{}", "0".repeat(n - 1));
        assert!(accepted(&digits(301)), "A = 300");
        assert!(!accepted(&digits(302)), "A = 301");
        assert!(accepted(&"9".repeat(301)));
        assert!(!accepted(&format!("-{}", digits(302))));
        // 0.(299 zeros)1 is 1e-300; one zero more is 1e-301.
        assert!(accepted(&format!("0.{}1", "0".repeat(299))));
        assert!(!accepted(&format!("0.{}1", "0".repeat(300))));
        // A large exponent brought back into range by leading zeros.
        assert!(accepted(&format!("0.{}1e9999", "0".repeat(9700))));
    }

    #[test]
    fn scans_numbers_outside_strings_only() {
        assert_eq!(first_refused(r#"{"maximum":1e300}"#), None);
        assert_eq!(first_refused(r#"{"maximum":1e301}"#), Some("1e301"));
        assert_eq!(
            first_refused(r#"{"a":[1,-2.5e-301,3],"b":1e999}"#),
            Some("-2.5e-301")
        );
        assert_eq!(first_refused(r#"{"const":"1e999"}"#), None);
        assert_eq!(first_refused(r#"{"1e999":{"2e-999":true}}"#), None);
        assert_eq!(
            first_refused(r#"{"a":"x\"1e999\\","b":1e-301}"#),
            Some("1e-301")
        );
        assert_eq!(first_refused(r#"{"a\\":1e400}"#), Some("1e400"));
        assert_eq!(first_refused(r#"{"a":"\\\"1e400"}"#), None);
        assert_eq!(first_refused("{\"é1e999\":0e9999}"), None);
        assert_eq!(first_refused("true"), None);
        assert_eq!(first_refused("[1e0300,1e0301]"), Some("1e0301"));
    }

    #[test]
    fn ends_on_text_that_is_not_json() {
        for text in [
            "",
            "\"",
            "\"\\",
            "{\"a\":\"unclosed\\",
            "-",
            "--",
            "1e",
            "1e+",
            "1.",
            ".5e999",
            "{type: object}",
            "00001e300",
            "1.2.3e4e5",
            "-\"",
        ] {
            let _ = first_refused(text);
        }
        // Leading zeros are not JSON; the rule still reads the digits.
        assert_eq!(first_refused("[00001e300]"), None);
        assert_eq!(first_refused("[00001e301]"), Some("00001e301"));
        // ".5e999": the 5e999 after the dot is the token.
        assert_eq!(first_refused(".5e999"), Some("5e999"));
        assert_eq!(first_refused("abc1e999"), Some("1e999"));
    }

    #[test]
    fn random_text_ends_and_reports_a_token_of_the_text() {
        let alphabet = b"\"\\-+.eE0193 {}[]:,x";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let text: String = (0..len)
                .map(|i| {
                    let r = state.rotate_left(i as u32 * 5) as usize;
                    alphabet[r % alphabet.len()] as char
                })
                .collect();
            if let Some(tok) = first_refused(&text) {
                assert!(text.contains(tok), "{text:?}: {tok:?}");
                assert!(
                    tok.starts_with(|c: char| c == '-' || c.is_ascii_digit()),
                    "{text:?}: {tok:?}"
                );
            }
        }
    }
}
