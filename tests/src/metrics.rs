//! The proxy's Prometheus text, parsed into samples that tests query by name and labels.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::http;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scraping metrics: {0}")]
    Scrape(#[from] http::Error),
    #[error("metrics line {line}: {message}: {text:?}")]
    Parse {
        line: usize,
        message: &'static str,
        text: String,
    },
}

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// `GET /metrics` on `addr`.
    pub fn scrape(addr: SocketAddr) -> Result<Self, Error> {
        let response = http::get_tcp(addr, "/metrics")?;
        Self::parse(&response.text())
    }

    /// Parses the Prometheus (or OpenMetrics) text format; comments and `# EOF` are skipped.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut samples = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message| Error::Parse {
                line: index + 1,
                message,
                text: line.to_owned(),
            };
            samples.push(parse_sample(line).map_err(error)?);
        }
        Ok(Self { samples })
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The sum of the matching samples (0 when none match).
    #[must_use]
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The matching samples, one per line, for assertion messages.
    #[must_use]
    pub fn describe(&self, name: &str) -> String {
        let lines: Vec<String> = self.matching(name, &[]).map(ToString::to_string).collect();
        if lines.is_empty() {
            format!("no {name} samples")
        } else {
            lines.join("\n")
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().map_err(|_| "value is not a number")?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value is not quoted");
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {
                    escaped = true;
                    continue;
                }
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = false;
        }
        let end = end.ok_or("unterminated label value")?;
        labels.insert(key, value);
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_tcp_connections_opened Connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="a",destination_workload="b"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="a",destination_workload="b"} 2
istio_tcp_sent_bytes_total{reporter="source",note="quote \" and \\ and, comma}"} 1.048576e6
up 1
# EOF
"#;

    /// Metric name, label filter, expected sum.
    type Case = (&'static str, &'static [(&'static str, &'static str)], f64);

    #[test]
    fn parses_and_queries() {
        let metrics = Metrics::parse(TEXT).unwrap();
        assert_eq!(metrics.samples.len(), 4);
        let cases: [Case; 5] = [
            ("istio_tcp_connections_opened_total", &[], 4.0),
            (
                "istio_tcp_connections_opened_total",
                &[("reporter", "source")],
                2.0,
            ),
            (
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination"), ("source_workload", "a")],
                2.0,
            ),
            (
                "istio_tcp_connections_opened_total",
                &[("reporter", "nobody")],
                0.0,
            ),
            (
                "istio_tcp_sent_bytes_total",
                &[("note", "quote \" and \\ and, comma}")],
                1_048_576.0,
            ),
        ];
        for (name, labels, want) in cases {
            assert!(
                (metrics.sum(name, labels) - want).abs() < f64::EPSILON,
                "{name} {labels:?}"
            );
        }
        assert_eq!(metrics.sum("up", &[]), 1.0);
    }

    #[test]
    fn rejects_malformed_lines() {
        for line in ["no_value", "m{a=\"x\" 1", "m{a=x} 1", "m{a} 1", "m abc"] {
            assert!(Metrics::parse(line).is_err(), "{line}");
        }
    }
}
