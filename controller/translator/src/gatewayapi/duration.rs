//! Gateway API durations: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.

/// Milliseconds, or `None` when the string is not a Gateway API duration.
pub fn parse_ms(s: &str) -> Option<u64> {
    let re_ok = !s.is_empty();
    if !re_ok {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (mult, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * mult;
        parts += 1;
    }
    (parts <= 4).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_ms("10s"), Some(10_000));
        assert_eq!(parse_ms("1h2m3s4ms"), Some(3_723_004));
        assert_eq!(parse_ms("500ms"), Some(500));
        assert_eq!(parse_ms("0s"), Some(0));
        assert_eq!(parse_ms("10"), None);
        assert_eq!(parse_ms("1.5s"), None);
        assert_eq!(parse_ms(""), None);
    }
}
