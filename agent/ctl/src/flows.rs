//! `shuntctl flows`: the proxy's connection and request events, in the spirit of `hubble
//! observe`, read from the proxy's flow ring (`GET /flows` on its metrics port, NDJSON) and
//! filtered here ([`crate::flows_filter`]). With `--follow` the lines are printed as they
//! come.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use shunt_api::flows::{Flow, FlowType, Verdict};

use crate::flows_filter::{self, Filter, StatusMatch};
use crate::table::Table;

/// How long connecting, and a read without `--follow`, may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What is shown without `--last` or `--follow`, as `hubble observe`.
const DEFAULT_LAST: usize = 20;

/// How each flow is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One line a flow: time, source -> destination, type, verdict, summary.
    Compact,
    /// Columns with a header.
    Table,
    /// The flow as the proxy sent it, one JSON object a line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// The proxy's --metrics-addr.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15020")]
    proxy_addr: SocketAddr,
    /// Keep printing new flows as they come.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The last N matching flows of the ring [default: 20, or none with --follow].
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Only flows this recent: 30s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = flows_filter::parse_since)]
    since: Option<Duration>,
    /// Either end in this namespace (and the namespace of a bare --pod NAME).
    #[arg(short = 'n', long = "namespace", value_name = "NS")]
    namespace: Option<String>,
    /// Either end is this pod, NS/NAME (or NAME).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,
    /// The client is this pod.
    #[arg(long, value_name = "POD")]
    from_pod: Option<String>,
    /// The server is this pod.
    #[arg(long, value_name = "POD")]
    to_pod: Option<String>,
    /// Either end is this workload.
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// The destination Service: its FQDN or its leading labels (web, web.shop).
    #[arg(long, value_name = "HOST")]
    service: Option<String>,
    /// The destination port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// tcp, http or grpc.
    #[arg(long, value_name = "PROTO", value_parser = flows_filter::parse_protocol)]
    protocol: Option<String>,
    /// HTTP status: a code (404), a class (5+) or a range (500-504).
    #[arg(long, value_name = "CODES", value_parser = parse_status)]
    http_status: Option<StatusMatch>,
    /// FORWARDED, DROPPED (authorization denial, REGISTRY_ONLY block) or ERROR (UF, UH,
    /// URX, ...).
    #[arg(long, value_name = "VERDICT", value_parser = flows_filter::parse_verdict)]
    verdict: Option<Verdict>,
}

fn parse_status(text: &str) -> Result<StatusMatch, flows_filter::Error> {
    text.parse()
}

impl FlowsArgs {
    fn filter(&self, now: SystemTime) -> Filter {
        let since_ms = self.since.map(|since| {
            now.checked_sub(since)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        Filter {
            since_ms,
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            from_pod: self.from_pod.clone(),
            to_pod: self.to_pod.clone(),
            workload: self.workload.clone(),
            service: self.service.clone(),
            port: self.port,
            protocol: self.protocol.clone(),
            http_status: self.http_status,
            verdict: self.verdict,
        }
    }
}

/// Prints the flows `args` ask for to stdout (as they come with `--follow`); returns what is
/// left to print (nothing).
pub async fn run(args: &FlowsArgs, format: Format) -> anyhow::Result<String> {
    let filter = args.filter(SystemTime::now());
    let addr = args.proxy_addr;
    let mut out = std::io::stdout().lock();
    let mut write = |text: String| -> anyhow::Result<()> {
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to stdout")
    };
    let backlog_wanted = args
        .last
        .unwrap_or(if args.follow { 0 } else { DEFAULT_LAST });
    let mut after = None;
    if backlog_wanted > 0 || !args.follow {
        let body = tokio::time::timeout(TIMEOUT, read_all(addr, "/flows"))
            .await
            .with_context(|| {
                format!(
                    "the proxy at {addr} did not answer within {TIMEOUT:?} (is {addr} \
                     shunt-proxy's --metrics-addr?)"
                )
            })??;
        let flows = parse_lines(&body, addr)?;
        after = flows.last().map(|f| f.seq);
        let matching: Vec<&Flow> = flows.iter().filter(|f| filter.matches(f)).collect();
        let shown = &matching[matching.len().saturating_sub(backlog_wanted)..];
        write(render_all(shown, format, args.follow))?;
    } else if format == Format::Table {
        write(table_header())?;
    }
    if !args.follow {
        return Ok(String::new());
    }
    let path = match after {
        Some(after) => format!("/flows?follow=1&after={after}"),
        None => "/flows?follow=1&last=0".to_owned(),
    };
    let mut pending = Vec::new();
    follow(addr, &path, |chunk| {
        pending.extend_from_slice(chunk);
        let mut text = String::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let flow: Flow = serde_json::from_slice(&line)
                .with_context(|| format!("a line of /flows from the proxy at {addr} is not a flow (a shunt-proxy of another version?)"))?;
            if filter.matches(&flow) {
                text.push_str(&render_streamed(&flow, format));
            }
        }
        write(text)
    })
    .await?;
    Ok(String::new())
}

fn parse_lines(body: &[u8], addr: SocketAddr) -> anyhow::Result<Vec<Flow>> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).with_context(|| {
                format!(
                    "a line of /flows from the proxy at {addr} is not a flow (a shunt-proxy \
                     of another version?)"
                )
            })
        })
        .collect()
}

/// Opens `GET path` on the proxy; the response's body, once the status is a success.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<hyper::body::Incoming> {
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from {addr} within {TIMEOUT:?}: is shunt-proxy running with \
                 --metrics-addr {addr}?"
            )
        })?
        .map_err(|error| {
            anyhow::anyhow!(
                "no proxy at {addr} ({error}): is shunt-proxy running with --metrics-addr {addr}?"
            )
        })?;
    let failed = |what: String| format!("{what} with the proxy at {addr} failed");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| failed("the HTTP handshake".to_owned()))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| failed(format!("GET {path}")))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        anyhow::bail!(
            "the proxy at {addr} answered {status} to GET {path} (a shunt-proxy older than \
             this shuntctl?): {}",
            body.as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default()
        );
    }
    Ok(response.into_body())
}

/// `GET path`'s whole body (also `shuntctl top`'s scrapes).
pub(crate) async fn read_all(addr: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    Ok(get(addr, path)
        .await?
        .collect()
        .await
        .with_context(|| format!("reading {path} from the proxy at {addr}"))?
        .to_bytes())
}

/// Hands each chunk of `GET path` to `chunk` until the proxy ends the response.
async fn follow(
    addr: SocketAddr,
    path: &str,
    mut chunk: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut body = get(addr, path).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading {path} from the proxy at {addr}"))?;
        if let Some(data) = frame.data_ref() {
            chunk(data)?;
        }
    }
    Ok(())
}

/// `time_ms` as `Dec  7 21:30:01.123` (UTC).
fn time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_or_else(
        |_| ms.to_string(),
        |t| {
            let month = format!("{:?}", t.month());
            format!(
                "{} {:>2} {:02}:{:02}:{:02}.{:03}",
                &month[..3],
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        },
    )
}

/// `ns/workload`, or `unknown` (then the address says more).
fn end(namespace: &str, workload: &str, addr: &str) -> String {
    if workload == "unknown" {
        addr.to_owned()
    } else {
        format!("{namespace}/{workload}")
    }
}

fn source(flow: &Flow) -> String {
    end(&flow.src_namespace, &flow.src_workload, &flow.src_addr)
}

fn destination(flow: &Flow) -> String {
    let workload = end(&flow.dst_namespace, &flow.dst_workload, &flow.dst_addr);
    if flow.dst_service == "unknown" {
        workload
    } else {
        format!("{workload} ({})", flow.dst_service)
    }
}

fn kind(flow: &Flow) -> &str {
    match flow.kind {
        FlowType::Http => &flow.protocol,
        other => other.name(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n}B"),
        1_000..1_000_000 => format!("{:.1}kB", n as f64 / 1e3),
        _ => format!("{:.1}MB", n as f64 / 1e6),
    }
}

/// Method path code latency; or bytes each way, RTT, retransmits and duration; then the
/// flags and the reason when it was not forwarded.
fn summary(flow: &Flow) -> String {
    let mut text = match (&flow.http, &flow.tcp) {
        (Some(http), _) => format!(
            "{} {} {} {}ms",
            http.method, http.path, http.code, http.latency_ms
        ),
        (None, Some(tcp)) => {
            let mut text = format!(
                "{} up {} down",
                bytes(tcp.bytes_received),
                bytes(tcp.bytes_sent)
            );
            if let Some(rtt) = tcp.rtt_us {
                text.push_str(&format!(" rtt {}.{:03}ms", rtt / 1000, rtt % 1000));
            }
            if let Some(retransmits) = tcp.retransmits {
                text.push_str(&format!(" retrans {retransmits}"));
            }
            text.push_str(&format!(" {}ms", tcp.duration_ms));
            text
        }
        (None, None) => format!("to {}", flow.dst_addr),
    };
    if flow.response_flags != "-" {
        text.push_str(&format!(" {}", flow.response_flags));
    }
    if flow.verdict != Verdict::Forwarded
        && let Some(reason) = &flow.reason
    {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

fn compact(flow: &Flow) -> String {
    format!(
        "{}: {} -> {} {} {} {}\n",
        time(flow.time_ms),
        source(flow),
        destination(flow),
        kind(flow),
        flow.verdict.name(),
        summary(flow)
    )
}

fn json(flow: &Flow) -> String {
    // A Flow is strings and numbers: it always serializes.
    serde_json::to_string(flow).map_or_else(|_| String::new(), |line| line + "\n")
}

const HEADER: [&str; 6] = [
    "TIME",
    "SOURCE",
    "DESTINATION",
    "TYPE",
    "VERDICT",
    "SUMMARY",
];

fn cells(flow: &Flow) -> Vec<String> {
    vec![
        time(flow.time_ms),
        source(flow),
        destination(flow),
        kind(flow).to_owned(),
        flow.verdict.name().to_owned(),
        summary(flow),
    ]
}

/// Widths for lines printed one at a time, when the widest cell is not known yet.
const STREAMED_WIDTHS: [usize; 5] = [19, 24, 50, 9, 9];

fn fixed_row(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match STREAMED_WIDTHS.get(i) {
            Some(width) => line.push_str(&format!("{cell:<width$}  ")),
            None => line.push_str(cell),
        }
    }
    line.trim_end().to_owned() + "\n"
}

fn table_header() -> String {
    fixed_row(&HEADER.map(str::to_owned))
}

/// The backlog: a table sized to it, unless more rows follow.
fn render_all(flows: &[&Flow], format: Format, more_follow: bool) -> String {
    match format {
        Format::Table if more_follow => {
            table_header()
                + &flows
                    .iter()
                    .map(|f| fixed_row(&cells(f)))
                    .collect::<String>()
        }
        Format::Table => {
            let mut table = Table::new(&HEADER);
            for flow in flows {
                table.row(cells(flow));
            }
            table.render()
        }
        _ => flows.iter().map(|f| render_streamed(f, format)).collect(),
    }
}

fn render_streamed(flow: &Flow, format: Format) -> String {
    match format {
        Format::Compact => compact(flow),
        Format::Json => json(flow),
        Format::Table => fixed_row(&cells(flow)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_api::flows::{HttpSummary, TcpSummary};

    fn flow() -> Flow {
        Flow {
            seq: 3,
            // 2026-12-07T21:30:01.123Z
            time_ms: 1_796_679_001_123,
            kind: FlowType::Http,
            verdict: Verdict::Forwarded,
            reporter: "source".into(),
            pod: "shop/client-1".into(),
            src_pod: "shop/client-1".into(),
            dst_pod: "shop/web-1".into(),
            protocol: "http".into(),
            src_addr: "10.0.0.1:40000".into(),
            dst_addr: "10.96.0.10:80".into(),
            dst_port: 80,
            src_workload: "client".into(),
            src_namespace: "shop".into(),
            dst_workload: "web".into(),
            dst_namespace: "shop".into(),
            dst_service: "web.shop.svc.cluster.local".into(),
            response_flags: "-".into(),
            reason: None,
            tcp: None,
            http: Some(HttpSummary {
                method: "GET".into(),
                path: "/items".into(),
                code: 200,
                latency_ms: 12,
            }),
        }
    }

    #[test]
    fn compact_lines_say_who_what_and_how() {
        let denied = Flow {
            verdict: Verdict::Dropped,
            reason: Some("rbac_access_denied_matched_policy[ns[shop]-policy[deny]-rule[0]]".into()),
            http: Some(HttpSummary {
                method: "POST".into(),
                path: "/admin".into(),
                code: 403,
                latency_ms: 0,
            }),
            ..flow()
        };
        let tcp = Flow {
            kind: FlowType::TcpClose,
            protocol: "tcp".into(),
            http: None,
            dst_service: "unknown".into(),
            dst_workload: "unknown".into(),
            dst_addr: "192.0.2.1:5432".into(),
            tcp: Some(TcpSummary {
                bytes_received: 512,
                bytes_sent: 20_480,
                duration_ms: 40,
                rtt_us: Some(1_250),
                retransmits: Some(2),
            }),
            ..flow()
        };
        let failed = Flow {
            kind: FlowType::TcpClose,
            protocol: "tcp".into(),
            http: None,
            verdict: Verdict::Error,
            response_flags: "UF".into(),
            reason: Some("connection refused".into()),
            tcp: Some(TcpSummary {
                bytes_received: 0,
                bytes_sent: 0,
                duration_ms: 1,
                rtt_us: None,
                retransmits: None,
            }),
            ..flow()
        };
        let open = Flow {
            kind: FlowType::TcpOpen,
            protocol: "tcp".into(),
            http: None,
            ..flow()
        };
        for (flow, expected) in [
            (
                flow(),
                "Dec  7 21:30:01.123: shop/client -> shop/web (web.shop.svc.cluster.local) \
                 http FORWARDED GET /items 200 12ms\n",
            ),
            (
                denied,
                "Dec  7 21:30:01.123: shop/client -> shop/web (web.shop.svc.cluster.local) \
                 http DROPPED POST /admin 403 0ms \
                 (rbac_access_denied_matched_policy[ns[shop]-policy[deny]-rule[0]])\n",
            ),
            (
                tcp,
                "Dec  7 21:30:01.123: shop/client -> 192.0.2.1:5432 tcp_close FORWARDED 512B \
                 up 20.5kB down rtt 1.250ms retrans 2 40ms\n",
            ),
            (
                failed,
                "Dec  7 21:30:01.123: shop/client -> shop/web (web.shop.svc.cluster.local) \
                 tcp_close ERROR 0B up 0B down 1ms UF (connection refused)\n",
            ),
            (
                open,
                "Dec  7 21:30:01.123: shop/client -> shop/web (web.shop.svc.cluster.local) \
                 tcp_open FORWARDED to 10.96.0.10:80\n",
            ),
        ] {
            assert_eq!(compact(&flow), expected);
        }
    }

    #[test]
    fn each_format_renders_the_backlog() {
        let grpc = Flow {
            protocol: "grpc".into(),
            seq: 4,
            ..flow()
        };
        let (first, second) = (flow(), grpc);
        let flows = [&first, &second];
        let table = render_all(&flows, Format::Table, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("TIME "), "{table}");
        assert!(
            lines[2].contains("  grpc  FORWARDED  GET /items 200 12ms"),
            "{table}"
        );

        let streamed = render_all(&flows, Format::Table, true);
        assert_eq!(streamed.lines().count(), 3, "{streamed}");
        assert_eq!(streamed.lines().next(), Some(table_header().trim_end()));

        let json = render_all(&flows, Format::Json, false);
        let parsed: Vec<Flow> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed, [first.clone(), second.clone()]);

        assert_eq!(
            render_all(&flows, Format::Compact, false).lines().count(),
            2
        );
    }

    #[test]
    fn byte_counts_are_short() {
        for (n, expected) in [
            (0, "0B"),
            (999, "999B"),
            (1_500, "1.5kB"),
            (2_500_000, "2.5MB"),
        ] {
            assert_eq!(bytes(n), expected);
        }
    }
}
