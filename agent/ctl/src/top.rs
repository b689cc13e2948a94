//! `shuntctl top`: the golden signals per workload, as `istioctl x metrics` shows them, from
//! two scrapes of the proxy's `/metrics` an interval apart: requests per second, 5xx per
//! second, p50/p90/p99 latency (Prometheus's `histogram_quantile` over the interval's bucket
//! increases) and TCP bytes per second. The computation is pure ([`Scrape`], [`signals`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::output::{self, Output};
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The proxy's --metrics-addr.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15020")]
    proxy_addr: SocketAddr,
    /// Seconds between the two scrapes (and between refreshes).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    interval: Duration,
    /// Print one table (after one interval) and exit, instead of refreshing.
    #[arg(long)]
    once: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    text.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.1..=3600.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?}: expected seconds between 0.1 and 3600 (2, 0.5, 10s)"))
}

/// Prints the table every interval (or once).
pub async fn run(args: &TopArgs, output: Output) -> anyhow::Result<String> {
    let addr = args.proxy_addr;
    let mut before = (Instant::now(), scrape(addr).await?);
    loop {
        tokio::time::sleep(args.interval).await;
        let after = (Instant::now(), scrape(addr).await?);
        let rows = signals(&before.1, &after.1, after.0.duration_since(before.0));
        let text = render(&rows, output)?;
        if args.once {
            return Ok(text);
        }
        let mut out = std::io::stdout().lock();
        // Clear the screen and go home, as `top` does.
        out.write_all(format!("\x1b[2J\x1b[H{text}").as_bytes())
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
        before = after;
    }
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        crate::flows::read_all(addr, "/metrics"),
    )
    .await
    .with_context(|| format!("the proxy at {addr} did not answer a scrape within 5s"))??;
    Ok(Scrape::parse(&String::from_utf8_lossy(&body)))
}

/// One workload's counters in one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters {
    requests: f64,
    errors: f64,
    /// Cumulative bucket counts by upper bound's bits (for non-negative floats, +Inf included,
    /// the bits order as the numbers do).
    buckets: BTreeMap<u64, f64>,
    tcp_bytes: f64,
}

/// `namespace/workload` of the destination, and the reporter the series came from.
type Key = (String, &'static str);

/// What one scrape says, per destination workload and reporter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    workloads: BTreeMap<Key, Counters>,
}

impl Scrape {
    /// Reads Istio's series out of Prometheus text; other lines are skipped.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let label = |name: &str| labels.get(name).map_or("unknown", String::as_str);
            let reporter = match label("reporter") {
                "source" => "source",
                "destination" => "destination",
                _ => continue,
            };
            let key = (
                format!(
                    "{}/{}",
                    label("destination_workload_namespace"),
                    label("destination_workload")
                ),
                reporter,
            );
            if !matches!(
                name,
                "istio_requests_total"
                    | "istio_request_duration_milliseconds_bucket"
                    | "istio_tcp_sent_bytes_total"
                    | "istio_tcp_received_bytes_total"
            ) {
                continue;
            }
            let counters = scrape.workloads.entry(key).or_default();
            match name {
                "istio_requests_total" => {
                    counters.requests += value;
                    if label("response_code").starts_with('5') {
                        counters.errors += value;
                    }
                }
                "istio_request_duration_milliseconds_bucket" => {
                    let le = match label("le") {
                        "+Inf" => f64::INFINITY,
                        le => match le.parse::<f64>() {
                            Ok(le) if le >= 0.0 => le,
                            _ => continue,
                        },
                    };
                    *counters.buckets.entry(le.to_bits()).or_default() += value;
                }
                "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => {
                    counters.tcp_bytes += value;
                }
                _ => {}
            }
        }
        scrape
    }
}

/// `name{labels} value` (a timestamp after the value is ignored).
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (name, rest) = line.split_at(line.find(['{', ' '])?);
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut rest) = rest.strip_prefix('{') {
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                break after;
            }
            let (label, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(label.trim().to_owned(), value);
            rest = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signals {
    /// `namespace/workload`.
    pub workload: String,
    /// The reporter the figures are from: `destination` when the workload's own proxy
    /// reported it, else `source`.
    pub reporter: &'static str,
    pub rps: f64,
    pub error_rps: f64,
    /// Milliseconds; `None` without requests in the interval.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub tcp_bytes_per_second: f64,
}

/// What changed from `before` to `after`, `elapsed` apart, per workload (as its own proxy
/// reported it when it did, else as its clients' did).
#[must_use]
pub fn signals(before: &Scrape, after: &Scrape, elapsed: Duration) -> Vec<Signals> {
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    let workloads: BTreeSet<&String> = after.workloads.keys().map(|(w, _)| w).collect();
    let mut rows = Vec::new();
    for workload in workloads {
        let reporter = if after
            .workloads
            .contains_key(&(workload.clone(), "destination"))
        {
            "destination"
        } else {
            "source"
        };
        let key = (workload.clone(), reporter);
        let now = &after.workloads[&key];
        let empty = Counters::default();
        let then = before.workloads.get(&key).unwrap_or(&empty);
        let buckets: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .map(|(le, count)| {
                let earlier = then.buckets.get(le).copied().unwrap_or(0.0);
                (f64::from_bits(*le), increase(earlier, *count))
            })
            .collect();
        rows.push(Signals {
            workload: workload.clone(),
            reporter,
            rps: increase(then.requests, now.requests) / seconds,
            error_rps: increase(then.errors, now.errors) / seconds,
            p50_ms: quantile(0.5, &buckets),
            p90_ms: quantile(0.9, &buckets),
            p99_ms: quantile(0.99, &buckets),
            tcp_bytes_per_second: increase(then.tcp_bytes, now.tcp_bytes) / seconds,
        });
    }
    rows
}

/// A counter's increase; one that went down was reset (the proxy restarted) and counts from 0.
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// Prometheus's `histogram_quantile` over cumulative `(upper bound, count)` buckets, in
/// order: linear within the bucket the rank falls in; the highest finite bound when it falls
/// in `+Inf`'s.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            if count == below {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (le, count);
    }
    None
}

fn render(rows: &[Signals], output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(output::json(&serde_json::to_value(rows)?));
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}ms"));
    let mut table = Table::new(&[
        "WORKLOAD",
        "REPORTER",
        "RPS",
        "ERROR RPS",
        "P50",
        "P90",
        "P99",
        "TCP B/S",
    ]);
    for row in rows {
        table.row(vec![
            row.workload.clone(),
            row.reporter.to_owned(),
            format!("{:.2}", row.rps),
            format!("{:.2}", row.error_rps),
            ms(row.p50_ms),
            ms(row.p90_ms),
            ms(row.p99_ms),
            format!("{:.0}", row.tcp_bytes_per_second),
        ]);
    }
    Ok(table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(reporter: &str, workload: &str, code: u16, n: u64) -> String {
        format!(
            "istio_requests_total{{reporter=\"{reporter}\",source_workload=\"client\",\
             destination_workload=\"{workload}\",destination_workload_namespace=\"shop\",\
             response_code=\"{code}\"}} {n}\n"
        )
    }

    fn buckets(workload: &str, counts: &[(&str, u64)]) -> String {
        counts
            .iter()
            .map(|(le, n)| {
                format!(
                    "istio_request_duration_milliseconds_bucket{{reporter=\"destination\",\
                     destination_workload=\"{workload}\",destination_workload_namespace=\"shop\",\
                     le=\"{le}\"}} {n}\n"
                )
            })
            .collect()
    }

    fn tcp(workload: &str, sent: u64, received: u64) -> String {
        let labels = format!(
            "reporter=\"destination\",destination_workload=\"{workload}\",\
             destination_workload_namespace=\"data\""
        );
        format!(
            "istio_tcp_sent_bytes_total{{{labels}}} {sent}\n\
             istio_tcp_received_bytes_total{{{labels}}} {received}\n"
        )
    }

    #[test]
    fn samples_parse_with_escapes_and_without_labels() {
        for (line, expected) in [
            ("up 1", Some(("up", vec![], 1.0))),
            (
                "m{a=\"x\",b=\"q\\\"uo\\\\te\"} 2.5 1700000000",
                Some(("m", vec![("a", "x"), ("b", "q\"uo\\te")], 2.5)),
            ),
            ("m{a=\"x,}\"} 3", Some(("m", vec![("a", "x,}")], 3.0))),
            ("m{a=\"x\"} NaN-ish", None),
            ("m{a=\"unterminated} 1", None),
        ] {
            let parsed = sample(line);
            let expected = expected.map(|(name, labels, value)| {
                let labels: BTreeMap<String, String> = labels
                    .into_iter()
                    .map(|(k, v): (&str, &str)| (k.to_owned(), v.to_owned()))
                    .collect();
                (name, labels, value)
            });
            assert_eq!(parsed, expected, "{line}");
        }
    }

    #[test]
    fn quantiles_interpolate_as_prometheus() {
        let inf = f64::INFINITY;
        for (q, buckets, expected) in [
            // 10 requests, all within (25, 50]: interpolated inside that bucket.
            (
                0.5,
                vec![(25.0, 0.0), (50.0, 10.0), (inf, 10.0)],
                Some(37.5),
            ),
            (
                0.9,
                vec![(25.0, 0.0), (50.0, 10.0), (inf, 10.0)],
                Some(47.5),
            ),
            // Within the first bucket: from 0.
            (0.5, vec![(10.0, 4.0), (inf, 4.0)], Some(5.0)),
            // In +Inf's bucket: the highest finite bound.
            (0.99, vec![(10.0, 1.0), (inf, 10.0)], Some(10.0)),
            // Nothing in the interval.
            (0.5, vec![(10.0, 0.0), (inf, 0.0)], None),
            // No +Inf bucket: not a histogram.
            (0.5, vec![(10.0, 3.0)], None),
        ] {
            assert_eq!(quantile(q, &buckets), expected, "q {q} {buckets:?}");
        }
    }

    #[test]
    fn signals_are_the_increases_over_the_interval() {
        let before = Scrape::parse(
            &[
                "# HELP istio_requests_total Requests\n".to_owned(),
                requests("destination", "web", 200, 10),
                requests("destination", "web", 503, 2),
                requests("source", "web", 200, 10),
                requests("source", "ext", 200, 5),
                buckets("web", &[("25", 2), ("50", 12), ("+Inf", 12)]),
                tcp("db", 1000, 100),
            ]
            .concat(),
        );
        let after = Scrape::parse(
            &[
                requests("destination", "web", 200, 26),
                requests("destination", "web", 503, 6),
                requests("source", "web", 200, 26),
                // A restarted proxy: its counter went down.
                requests("source", "ext", 200, 3),
                buckets("web", &[("25", 2), ("50", 32), ("+Inf", 32)]),
                tcp("db", 3000, 500),
            ]
            .concat(),
        );
        let rows = signals(&before, &after, Duration::from_secs(2));
        let get = |w: &str| rows.iter().find(|r| r.workload == w).unwrap();
        let web = get("shop/web");
        assert_eq!(
            (web.reporter, web.rps, web.error_rps),
            ("destination", 10.0, 2.0)
        );
        // 20 new requests, all in (25, 50].
        assert_eq!(
            (web.p50_ms, web.p90_ms, web.p99_ms),
            (Some(37.5), Some(47.5), Some(49.75))
        );
        let ext = get("shop/ext");
        assert_eq!((ext.reporter, ext.rps, ext.p50_ms), ("source", 1.5, None));
        let db = get("data/db");
        assert_eq!((db.rps, db.tcp_bytes_per_second), (0.0, 1200.0));
        assert_eq!(rows.len(), 3);

        let table = render(&rows, Output::Table).unwrap();
        assert!(table.starts_with("WORKLOAD "), "{table}");
        assert!(
            table.contains("shop/web  destination  10.00  2.00       37.50ms  47.50ms  49.75ms  0"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Output::Json).unwrap()).unwrap();
        assert_eq!(json[2]["rps"], 10.0);
    }

    #[test]
    fn intervals_parse_or_say_what_is_expected() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5s"), Ok(Duration::from_millis(500)));
        for bad in ["0", "abc", "-1", "inf", "7200"] {
            assert!(
                parse_interval(bad)
                    .unwrap_err()
                    .contains("expected seconds"),
                "{bad}"
            );
        }
    }
}
