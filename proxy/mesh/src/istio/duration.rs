//! Istio's (protobuf JSON) duration strings: `1s`, `0.5s`, `100ms`, `1m`, `1h`, `250us`.

use std::time::Duration;

/// A string [`parse_duration`] rejects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a duration: expected a number with a unit h, m, s, ms, us or ns, \
     e.g. \"1s\", \"0.5s\", \"100ms\""
)]
pub struct DurationError {
    /// The string as given.
    pub value: String,
}

/// Parses one duration. Several parts (`1m30s`) are accepted, as Go's `time.ParseDuration`
/// (which Istio's validation uses) does.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        value: value.to_owned(),
    };
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(error());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(error)?;
        if number_len == 0 {
            return Err(error());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| error())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(error()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| error())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, expected) in [
            ("1s", Some(Duration::from_secs(1))),
            ("0.5s", Some(Duration::from_millis(500))),
            ("100ms", Some(Duration::from_millis(100))),
            ("1m", Some(Duration::from_secs(60))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("250us", Some(Duration::from_micros(250))),
            ("0s", Some(Duration::ZERO)),
            ("", None),
            ("1", None),
            ("s", None),
            ("-1s", None),
            ("1 day", None),
            ("1.2.3s", None),
        ] {
            assert_eq!(parse_duration(text).ok(), expected, "{text:?}");
        }
        assert_eq!(
            parse_duration("5 s").unwrap_err().to_string(),
            "\"5 s\" is not a duration: expected a number with a unit h, m, s, ms, us or ns, \
             e.g. \"1s\", \"0.5s\", \"100ms\""
        );
    }
}
