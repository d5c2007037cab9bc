//! Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as integers.

/// A quantity in thousandths of its unit (millicores for cpu), rounded up as
/// Kubernetes rounds requests. None if the text is not a quantity.
pub fn parse_milli(text: &str) -> Option<i128> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return None;
    }
    // (numerator, denominator) of the suffix's multiplier, times 1000 for milli-units.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1024 * 1000, 1),
        "Mi" => (1024_i128.pow(2) * 1000, 1),
        "Gi" => (1024_i128.pow(3) * 1000, 1),
        "Ti" => (1024_i128.pow(4) * 1000, 1),
        "Pi" => (1024_i128.pow(5) * 1000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok().filter(|e| *e <= 18)?;
            (10_i128.pow(exp) * 1000, 1)
        }
        _ => return None,
    };
    let negative = num.starts_with('-');
    let digits = num.trim_start_matches(['+', '-']);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 18
        || int.len() > 20
    {
        return None;
    }
    let scale = 10_i128.pow(frac.len() as u32);
    let whole: i128 = format!("{int}{frac}").parse().unwrap_or(0);
    let den = scale * div;
    let value = (whole * mul + den - 1) / den; // round up
    Some(if negative { -value } else { value })
}

/// A quantity in whole units (bytes, pods), rounded up.
pub fn parse_units(text: &str) -> Option<i128> {
    parse_milli(text).map(|m| (m + 999).div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("0.1"), Some(100));
        assert_eq!(parse_units("1Gi"), Some(1 << 30));
        assert_eq!(parse_units("128Mi"), Some(128 << 20));
        assert_eq!(parse_units("1k"), Some(1000));
        assert_eq!(parse_units("1e3"), Some(1000));
        assert_eq!(parse_units("1.5Ki"), Some(1536));
        assert_eq!(parse_milli("1n"), Some(1), "rounds up");
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Xi"), None);
        assert_eq!(parse_milli(""), None);
    }
}
