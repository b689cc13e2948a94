//! The mesh graph from the proxy's own Istio counters: scrapes (Prometheus text) in, edges with
//! rate, error %, p95 latency, TCP bytes/s, mTLS share and a Kiali-style health out. I/O-free
//! so that every number is table-tested.
use std::collections::{BTreeMap, VecDeque};

/// A scrape that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    /// A sample line that is not `name{labels} value`.
    #[error(
        "proxy metrics line {line}: {reason}; check that the address given is the proxy's Prometheus endpoint"
    )]
    BadLine {
        /// 1-based line number in the scrape.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric (series) name, e.g. `istio_requests_total`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Reads classic Prometheus text: comments and blank lines skipped, timestamps ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, GraphError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| GraphError::BadLine {
            line: i + 1,
            reason,
        };
        let name_end = line.find(['{', ' ']).ok_or(bad("no value"))?;
        let name = &line[..name_end];
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let close = loop {
                let Some((at, c)) = chars.next() else {
                    return Err(bad("unclosed labels"));
                };
                match c {
                    '}' => break at,
                    ',' | ' ' => {}
                    '=' => {
                        if chars.next().map(|(_, q)| q) != Some('"') {
                            return Err(bad("label value not quoted"));
                        }
                        let mut value = String::new();
                        loop {
                            match chars.next() {
                                None => return Err(bad("unterminated label value")),
                                Some((_, '"')) => break,
                                Some((_, '\\')) => match chars.next() {
                                    Some((_, 'n')) => value.push('\n'),
                                    Some((_, e)) => value.push(e),
                                    None => return Err(bad("unterminated label value")),
                                },
                                Some((_, v)) => value.push(v),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    k => key.push(k),
                }
            };
            rest = &body[close + 1..];
        }
        let value = rest.split_whitespace().next().ok_or(bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// One scrape of the proxy: when (seconds, any monotonic origin) and what.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When it was taken.
    pub at_secs: f64,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// The scrapes kept: the newest within `span_secs`, at most `cap`.
#[derive(Debug)]
pub struct Window {
    span_secs: f64,
    cap: usize,
    scrapes: VecDeque<Scrape>,
}

impl Window {
    /// An empty window over `span_secs`, keeping at most `cap` scrapes (at least 2).
    pub fn new(span_secs: f64, cap: usize) -> Self {
        Self {
            span_secs,
            cap: cap.max(2),
            scrapes: VecDeque::new(),
        }
    }

    /// Adds a scrape and drops those that fell out of the window (keeping one at or before
    /// its start, so the rates cover the whole span).
    pub fn push(&mut self, scrape: Scrape) {
        let now = scrape.at_secs;
        self.scrapes.push_back(scrape);
        while self.scrapes.len() > self.cap
            || (self.scrapes.len() > 2 && self.scrapes[1].at_secs <= now - self.span_secs)
        {
            self.scrapes.pop_front();
        }
    }

    /// The graph between the oldest and newest scrape kept; empty until there are two.
    pub fn graph(&self) -> Graph {
        match (self.scrapes.front(), self.scrapes.back()) {
            (Some(first), Some(last)) if last.at_secs > first.at_secs => compute(first, last),
            _ => Graph::default(),
        }
    }
}

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    /// A workload: namespace, name.
    Workload(String, String),
    /// A service, by its host name.
    Service(String),
}

/// Kiali's default health thresholds on the 5xx share: above 0 degraded, 10% or more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No 5xx (or no requests).
    Healthy,
    /// Some 5xx, under 10%.
    Degraded,
    /// 10% or more 5xx.
    Failure,
}

impl Health {
    /// The health of an edge whose requests fail `error_pct` percent of the time.
    pub fn of(error_pct: f64) -> Self {
        if error_pct >= 10.0 {
            Self::Failure
        } else if error_pct > 0.0 {
            Self::Degraded
        } else {
            Self::Healthy
        }
    }
}

/// An edge: traffic from a workload to a service (or workload when the service is unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// Where the traffic comes from.
    pub source: Node,
    /// Where it goes.
    pub destination: Node,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests answered 5xx, in percent.
    pub error_pct: f64,
    /// The 95th percentile of request duration, in milliseconds, if there were requests.
    pub p95_ms: Option<f64>,
    /// TCP bytes per second, both directions.
    pub tcp_bytes_per_sec: f64,
    /// Share of requests and TCP connections under mutual TLS, in percent.
    pub mtls_pct: f64,
    /// The edge's health from `error_pct`.
    pub health: Health,
}

/// The mesh graph: its nodes and edges, both sorted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// Every node that an edge touches.
    pub nodes: Vec<Node>,
    /// The edges.
    pub edges: Vec<Edge>,
}

#[derive(Default)]
struct Acc {
    requests: f64,
    errors: f64,
    mtls: f64,
    secured_total: f64,
    tcp_bytes: f64,
    buckets: BTreeMap<u64, f64>,
}

fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
    s.labels.get(key).map_or("", String::as_str)
}

fn edge_of(s: &Sample) -> Option<(Node, Node)> {
    let src = label(s, "source_workload");
    if src.is_empty() || src == "unknown" {
        return None;
    }
    let source = Node::Workload(
        label(s, "source_workload_namespace").to_owned(),
        src.to_owned(),
    );
    let service = label(s, "destination_service");
    let destination = if !service.is_empty() && service != "unknown" {
        Node::Service(service.to_owned())
    } else {
        Node::Workload(
            label(s, "destination_workload_namespace").to_owned(),
            label(s, "destination_workload").to_owned(),
        )
    };
    Some((source, destination))
}

/// A series' identity: name and labels.
type Key = (String, Vec<(String, String)>);

fn key(s: &Sample) -> Key {
    (
        s.name.clone(),
        s.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// A counter's increase, with Prometheus's reset rule: a drop means it restarted from 0.
fn increase(before: Option<f64>, after: f64) -> f64 {
    match before {
        Some(b) if after >= b => after - b,
        Some(_) => after,
        None => after,
    }
}

/// The graph of the traffic between two scrapes. A request seen by both proxies (source and
/// destination reporter) counts once: the destination's report is used where the edge has one.
pub fn compute(first: &Scrape, last: &Scrape) -> Graph {
    let secs = last.at_secs - first.at_secs;
    if secs <= 0.0 {
        return Graph::default();
    }
    let before: BTreeMap<Key, f64> = first.samples.iter().map(|s| (key(s), s.value)).collect();
    let mut has_dest_report = std::collections::BTreeSet::new();
    for s in &last.samples {
        if label(s, "reporter") == "destination"
            && let Some(e) = edge_of(s)
        {
            has_dest_report.insert(e);
        }
    }
    let mut accs: BTreeMap<(Node, Node), Acc> = BTreeMap::new();
    for s in &last.samples {
        let Some(e) = edge_of(s) else { continue };
        let reporter = label(s, "reporter");
        if has_dest_report.contains(&e) && reporter != "destination" {
            continue;
        }
        let d = increase(before.get(&key(s)).copied(), s.value);
        let mtls = label(s, "connection_security_policy") == "mutual_tls";
        let acc = accs.entry(e).or_default();
        match s.name.as_str() {
            "istio_requests_total" => {
                acc.requests += d;
                acc.secured_total += d;
                if mtls {
                    acc.mtls += d;
                }
                if label(s, "response_code").starts_with('5') {
                    acc.errors += d;
                }
            }
            "istio_tcp_connections_opened_total" => {
                acc.secured_total += d;
                if mtls {
                    acc.mtls += d;
                }
            }
            "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => acc.tcp_bytes += d,
            "istio_request_duration_milliseconds_bucket" => {
                let le = match label(s, "le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::NAN),
                };
                if !le.is_nan() {
                    *acc.buckets.entry(le.to_bits()).or_default() += d;
                }
            }
            _ => {}
        }
    }
    let mut nodes = std::collections::BTreeSet::new();
    let mut edges = Vec::new();
    for ((source, destination), acc) in accs {
        if acc.requests == 0.0
            && acc.tcp_bytes == 0.0
            && acc.secured_total == 0.0
            && acc.buckets.values().all(|c| *c == 0.0)
        {
            continue;
        }
        let pct = |part: f64, whole: f64| {
            if whole > 0.0 {
                100.0 * part / whole
            } else {
                0.0
            }
        };
        let error_pct = pct(acc.errors, acc.requests);
        nodes.insert(source.clone());
        nodes.insert(destination.clone());
        edges.push(Edge {
            source,
            destination,
            rps: acc.requests / secs,
            error_pct,
            p95_ms: quantile(0.95, &acc.buckets),
            tcp_bytes_per_sec: acc.tcp_bytes / secs,
            mtls_pct: pct(acc.mtls, acc.secured_total),
            health: Health::of(error_pct),
        });
    }
    Graph {
        nodes: nodes.into_iter().collect(),
        edges,
    }
}

/// `histogram_quantile`'s rule on cumulative buckets (keyed by the bound's bits, which sort
/// like the bounds for non-negative bounds): linear within the bucket, the last finite bound
/// when the rank falls in `+Inf`.
fn quantile(q: f64, buckets: &BTreeMap<u64, f64>) -> Option<f64> {
    let bounds: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(b, c)| (f64::from_bits(*b), *c))
        .collect();
    let total = bounds.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, count) in bounds {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * frac);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests;
