//! Which text format a scrape gets: classic Prometheus text (`text/plain; version=0.0.4`) by
//! default, as Istio's proxies serve it, and OpenMetrics when the scraper's `Accept` prefers
//! it. `prometheus-client` writes OpenMetrics only; the classic text is derived from it.
#![forbid(unsafe_code)]

use std::collections::HashSet;

/// The two formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what scrapers and tools that do not ask get.
    Classic,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: the supported media range with the highest
    /// `q`; a tie, no header or nothing supported gets the classic text (a scrape is never
    /// refused over its `Accept`).
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best = (Self::Classic, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f32, None);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                match key.trim().to_ascii_lowercase().as_str() {
                    // A malformed q is not a preference.
                    "q" => q = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().trim_matches('"').to_owned()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Self::OpenMetrics
                }
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Self::Classic,
                _ => continue,
            };
            // Strictly higher only: at equal q the classic text (seen first or not) wins.
            if q > best.1 || (q == best.1 && q > 0.0 && format == Self::Classic) {
                best = (format, q);
            }
        }
        best.0
    }
}

/// OpenMetrics text (as `prometheus-client` writes it: no exemplars, no `_created`, no
/// info/stateset/gaugehistogram families) rewritten as classic Prometheus text: a counter's
/// HELP and TYPE name its `_total` series, `# UNIT` and `# EOF` go, `unknown` is `untyped`.
#[must_use]
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let tail = if tail == "unknown" { "untyped" } else { tail };
            let suffix = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            Some(format!("{prefix}{name}{suffix} {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.x and 3.x send, and what other clients send.
    #[test]
    fn accept_headers_pick_the_format() {
        use Format::{Classic, OpenMetrics};
        for (accept, want) in [
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain"), Classic),
            (Some("application/json"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("application/openmetrics-text;version=1.0.0"),
                OpenMetrics,
            ),
            // Prometheus 2.x's default scrape.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            // Prometheus 3.x with `scrape_protocols: [PrometheusText0.0.4]`.
            (Some("text/plain;version=0.0.4;q=0.9,*/*;q=0.1"), Classic),
            // Prometheus 3.x's default (protobuf first, which is not served).
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                     encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;\
                     q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            (Some("text/plain, application/openmetrics-text"), Classic),
            (Some("application/openmetrics-text, text/plain"), Classic),
            (
                Some("application/openmetrics-text;q=0, text/plain;q=0.1"),
                Classic,
            ),
            (Some("application/openmetrics-text;version=2.0.0"), Classic),
            (Some("APPLICATION/OpenMetrics-Text; Q=0.9"), OpenMetrics),
            (Some("application/openmetrics-text;q=bogus"), Classic),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_becomes_classic_text() {
        for (name, openmetrics, want) in [
            (
                "counter",
                "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{k=\"v\"} 1\n# EOF\n",
                "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total{k=\"v\"} 1\n",
            ),
            (
                "gauge with a unit",
                "# HELP b_seconds B.\n# TYPE b_seconds gauge\n# UNIT b_seconds seconds\n\
                 b_seconds 2.5\n# EOF\n",
                "# HELP b_seconds B.\n# TYPE b_seconds gauge\nb_seconds 2.5\n",
            ),
            (
                "histogram",
                "# HELP h H.\n# TYPE h histogram\nh_sum 3.0\nh_count 1\n\
                 h_bucket{le=\"+Inf\"} 1\n# EOF\n",
                "# HELP h H.\n# TYPE h histogram\nh_sum 3.0\nh_count 1\nh_bucket{le=\"+Inf\"} 1\n",
            ),
            (
                "unknown",
                "# HELP u U.\n# TYPE u unknown\nu 1\n# EOF\n",
                "# HELP u U.\n# TYPE u untyped\nu 1\n",
            ),
            (
                "a gauge whose HELP says counter",
                "# HELP g A counter\n# TYPE g gauge\ng 1\n# EOF\n",
                "# HELP g A counter\n# TYPE g gauge\ng 1\n",
            ),
        ] {
            assert_eq!(classic(openmetrics), want, "{name}");
        }
    }
}
