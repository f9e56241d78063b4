//! Numbers, below both the model and the report: counts as `f64` for the
//! arithmetic, and counts and rates written for people.

/// `u64` → `f64`; above 2^53 the nearest value, which is what a count
/// that large needs.
#[allow(clippy::cast_precision_loss)]
pub(super) fn to_f64(n: u64) -> f64 {
    n as f64
}

/// `usize` → `u64` (the same width on every target mqttlb builds for;
/// saturates otherwise).
pub(super) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A count or rate for people: 1,234,567 / 123 / 12.3 / 1.23.
pub(super) fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        x.to_string()
    } else if a >= 999.5 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 { format!("-{out}") } else { out }
    } else if a >= 99.95 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if a >= 9.995 {
        format!("{x:.1}")
    } else if a >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(27.78), "27.8");
        assert_eq!(fmt_num(1234567.4), "1,234,567");
        assert_eq!(fmt_num(999.6), "1,000");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(15.0), "15");
        assert_eq!(fmt_num(0.5), "0.50");
    }
}
