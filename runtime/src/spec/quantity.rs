//! Kubernetes resource quantities ("250m", "1.5Gi", "1e3") parsed exactly, in integer
//! arithmetic: the point of the format is that it never goes through a float.

use super::SpecError;

/// Parse a quantity into thousandths of its unit, rounding up as Kubernetes' MilliValue
/// does ("0.1m" is 1). Negative quantities are allowed here.
///
/// Grammar: `[+-] (digits | digits.digits | digits. | .digits) suffix` where suffix is one
/// of "", n, u, m, k, M, G, T, P, E (decimal SI), Ki, Mi, Gi, Ti, Pi, Ei (binary SI) or an
/// exponent `e<signed int>` / `E<signed int>`.
pub fn parse_quantity_milli(q: &str) -> Result<i128, SpecError> {
    let err = |reason: &str| SpecError::InvalidQuantity {
        value: q.to_string(),
        reason: reason.to_string(),
    };
    let s = q.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no number"));
    }
    if frac_part.contains('.') {
        return Err(err("more than one decimal point"));
    }
    // Digits beyond this would overflow the i128 arithmetic below; no real quantity has them.
    let digits = format!("{int_part}{frac_part}");
    let digits_trimmed = digits.trim_start_matches('0');
    if digits_trimmed.len() > 24 || frac_part.len() > 24 {
        return Err(err("too many digits"));
    }
    let mantissa: i128 = if digits_trimmed.is_empty() {
        0
    } else {
        digits_trimmed.parse().map_err(|_| err("bad number"))?
    };

    // value = mantissa * 2^bin * 10^dec / 10^frac_len
    let (bin, dec): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        other if other.starts_with(['e', 'E']) => {
            let exp = &other[1..];
            let body = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad exponent"));
            }
            let e: i32 = exp.parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&e) {
                return Err(err("exponent out of range"));
            }
            (0, e)
        }
        _ => return Err(err("unknown suffix")),
    };
    // Work in milli-units: one more factor of 10^3.
    let dec = dec + 3 - frac_part.len() as i32;
    let too_large = || err("too large");
    let mut numerator = mantissa.checked_mul(1i128 << bin).ok_or_else(too_large)?;
    let mut denominator: i128 = 1;
    if dec >= 0 {
        numerator = numerator
            .checked_mul(10i128.checked_pow(dec as u32).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    } else {
        denominator = 10i128
            .checked_pow((-dec) as u32)
            .ok_or_else(|| err("too small"))?;
    }
    // Round up (away from zero for positives, towards zero for negatives), like
    // Kubernetes' ScaledValue which ceils.
    let mut milli = numerator / denominator;
    if numerator % denominator != 0 {
        milli += 1;
    }
    Ok(if negative { -milli } else { milli })
}

fn non_negative_i64(q: &str, v: i128) -> Result<i64, SpecError> {
    if v < 0 {
        return Err(SpecError::InvalidQuantity {
            value: q.to_string(),
            reason: "must not be negative".to_string(),
        });
    }
    i64::try_from(v).map_err(|_| SpecError::InvalidQuantity {
        value: q.to_string(),
        reason: "too large".to_string(),
    })
}

/// A CPU quantity in millicores: "1" is 1000, "250m" is 250, "0.5" is 500.
pub fn parse_quantity_milli_cpu(q: &str) -> Result<i64, SpecError> {
    non_negative_i64(q, parse_quantity_milli(q)?)
}

/// A memory (or storage) quantity in bytes, rounded up: "1Ki" is 1024, "1k" is 1000.
pub fn parse_quantity_bytes(q: &str) -> Result<i64, SpecError> {
    let milli = parse_quantity_milli(q)?;
    let bytes = if milli >= 0 {
        (milli + 999) / 1000
    } else {
        milli / 1000
    };
    non_negative_i64(q, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        for (q, want) in [
            ("1", 1000),
            ("250m", 250),
            ("0.5", 500),
            ("1.5", 1500),
            (".5", 500),
            ("2.", 2000),
            ("100m", 100),
            ("0.1m", 1), // rounds up
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("5e+2", 500_000),
            ("+2", 2000),
            ("0", 0),
            ("0.0001", 1),
            ("1k", 1_000_000),
            // Nano and micro units, which kube-apiserver accepts too.
            ("500000u", 500),
            ("250000000n", 250),
            ("1n", 1), // rounds up
        ] {
            assert_eq!(parse_quantity_milli_cpu(q).unwrap(), want, "{q}");
        }
    }

    #[test]
    fn bytes_table() {
        for (q, want) in [
            ("1", 1),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1Ki", 1024),
            ("1k", 1000),
            ("1.5Gi", 1_610_612_736),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("500m", 1), // half a byte rounds up
            ("0.5Ki", 512),
        ] {
            assert_eq!(parse_quantity_bytes(q).unwrap(), want, "{q}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for q in [
            "",
            "abc",
            "1x",
            "1.2.3",
            "1KiB",
            "1mi",
            "--1",
            "1e",
            "1e+",
            "1ee3",
            ".",
            "1 Gi",
            "1e99",
            "8Ei",
            "99999999999999999999999999Ki",
        ] {
            let e = parse_quantity_bytes(q).unwrap_err();
            assert!(matches!(e, SpecError::InvalidQuantity { .. }), "{q}: {e:?}");
        }
    }

    #[test]
    fn negative_quantities() {
        assert_eq!(parse_quantity_milli("-1").unwrap(), -1000);
        let e = parse_quantity_milli_cpu("-1").unwrap_err().to_string();
        assert!(e.contains("must not be negative"), "{e}");
    }
}
