//! `shunt-proxy`: the node proxy holding listeners inside every captured pod's netns.
#![deny(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shunt_proxy::app::{self, Config};
use shunt_proxy::context::HttpLimits;
use shunt_proxy::socket::NetnsSocketFactory;
use tracing_subscriber::EnvFilter;

// Every request allocates (hyper's messages, headers, labels); glibc's malloc was ~8% of the
// proxy's CPU under L7 load, and mimalloc's per-thread free lists cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "shunt-proxy", version, about = "shunt's node proxy")]
struct Cli {
    /// The agent's control socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/shunt/default/control.sock"
    )]
    control_socket: PathBuf,
    /// Where to serve GET /metrics and /stats/prometheus (Prometheus), and /debug/clusters
    /// (every pod's upstream clusters as JSON, what `shuntctl clusters` shows).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// How long in-flight connections get to finish on SIGTERM or pod removal.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    drain_timeout: Duration,
    /// How long a dial to an upstream may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    connect_timeout: Duration,
    /// How long to wait for a client's first bytes to tell HTTP, TLS and opaque TCP apart
    /// on ports that declare no protocol; then the connection is opaque TCP (server-first
    /// protocols). The mesh config's `protocolDetectionTimeout` wins when set.
    #[arg(long, value_name = "SECS", default_value = "0.1", value_parser = parse_seconds)]
    protocol_detection_timeout: Duration,
    /// Send same-node traffic through the destination pod's inbound listener (two proxy
    /// passes) instead of delivering it from the destination pod's netns in one. For
    /// comparison and benchmarks; the istio_* metrics and access log report both sides either
    /// way.
    #[arg(long)]
    no_same_node_shortcut: bool,
    /// Connection and request events the flow ring keeps for `shuntctl flows` (GET /flows);
    /// 0 keeps none and builds none.
    #[arg(long, value_name = "N", default_value_t = shunt_proxy::telemetry::flows::DEFAULT_CAPACITY)]
    flows_capacity: usize,
    /// Worker threads that carry traffic (Envoy's `--concurrency`). Default: one per CPU this
    /// process may run on. With one, the proxy runs a single-threaded scheduler, which skips
    /// the cross-thread bookkeeping of work stealing.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// The CA that issues this node's workload certificates, speaking istiod's
    /// `IstioCertificateService` (shunt-agent `--ca-listen`, or istiod itself, e.g.
    /// `istiod.istio-system.svc:15012`). Without it the proxy holds no identities: it neither
    /// listens on 15008 nor tunnels, and all traffic between nodes stays plaintext.
    #[arg(long, value_name = "HOST:PORT")]
    ca_address: Option<String>,
    /// The mesh's root certificate(s), PEM: what the CA's TLS certificate, every issued chain
    /// and every HBONE peer must chain to (istiod's `root-cert.pem`).
    #[arg(long, value_name = "PATH", requires = "ca_address")]
    ca_root_cert: Option<PathBuf>,
    /// The bearer token sent to the CA, read again at each request (a projected service
    /// account token rotates).
    #[arg(long, value_name = "PATH", requires = "ca_address")]
    ca_token_file: Option<PathBuf>,
    /// The name the CA's TLS certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "istiod.istio-system.svc")]
    ca_server_name: String,
    /// The lifetime asked for workload certificates; each is rotated at half of it.
    #[arg(long, value_name = "SECS", default_value = "86400", value_parser = parse_seconds)]
    cert_lifetime: Duration,
    /// The cluster this node's workloads are in: the `source_cluster` and
    /// `destination_cluster` of Istio's metrics (istiod's `CLUSTER_ID`; Istio's default); also sent to the CA and in
    /// HBONE `baggage`.
    #[arg(
        long,
        value_name = "ID",
        default_value = shunt_proxy::telemetry::peer::DEFAULT_CLUSTER_ID,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    cluster_id: String,
    /// HTTP listeners (mesh and gateway): the request line and headers together may weigh
    /// this many KiB (Envoy's `max_request_headers_kb`); more gets a 431, a longer request
    /// line alone a 414.
    #[arg(long, value_name = "KIB", default_value = "60", value_parser = clap::value_parser!(u32).range(1..=8192))]
    max_request_headers_kb: u32,
    /// HTTP listeners: header lines a request may carry (`max_headers_count`); more get a
    /// 431.
    #[arg(long, value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_headers_count: u32,
    /// HTTP listeners: how long a request's headers may take from its first byte
    /// (`request_headers_timeout`), else 408 and the connection closes; 0 turns it off.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    request_headers_timeout: Duration,
    /// HTTP listeners: a connection with no request in flight for this long is closed
    /// (`idle_timeout`; GOAWAY on HTTP/2); 0 turns it off.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_seconds)]
    idle_timeout: Duration,
    /// HTTP listeners: a request whose bodies move no byte for this long ends
    /// (`stream_idle_timeout`): 408 before its response, a reset after; 0 turns it off.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    stream_idle_timeout: Duration,
    /// HTTP listeners: streams an HTTP/2 client may have open at once
    /// (`max_concurrent_streams`).
    #[arg(long, value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// HTTP listeners: refuse requests with `_` in a header name with a 400 (Envoy's
    /// `headers_with_underscores_action: REJECT_REQUEST`); by default they pass.
    #[arg(long)]
    reject_header_underscores: bool,
    /// Every listener: connections it holds at once; more are closed at accept and counted
    /// in `shunt_listener_connections_refused_total`. 0: no limit.
    #[arg(long, value_name = "N", default_value = "16384")]
    max_connections_per_listener: usize,
    /// HTTP/2 rapid-reset budget (CVE-2023-44487; Envoy's
    /// `overload.premature_reset_total_stream_count`): a connection whose client resets half
    /// of its streams before their response is over, once it has had this many streams (or
    /// half this many resets), is closed with GOAWAY.
    #[arg(long, value_name = "N", default_value = "500", value_parser = clap::value_parser!(u32).range(2..))]
    premature_reset_total_stream_count: u32,
    /// Format of the logs on stderr (the access log on stdout is always JSON).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Seconds, fractions allowed ("0.5").
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} seconds: {e}"))
}

/// A timeout of 0 is none (Envoy's convention).
fn nonzero(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then_some(timeout)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a terminal; in a log file they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let workers = cli.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let error = shunt_api::report::chain(&error);
            tracing::error!(%error, "shunt-proxy cannot start its async runtime");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(workers, "worker threads");
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let config = Config {
        control_socket: cli.control_socket,
        metrics_addr: cli.metrics_addr,
        drain_timeout: cli.drain_timeout,
        connect_timeout: cli.connect_timeout,
        protocol_detection_timeout: cli.protocol_detection_timeout,
        same_node_shortcut: !cli.no_same_node_shortcut,
        flows_capacity: cli.flows_capacity,
        ca: cli.ca_address.map(|address| app::CaConfig {
            address,
            root_cert: cli.ca_root_cert,
            token_file: cli.ca_token_file,
            server_name: cli.ca_server_name,
            cert_lifetime: cli.cert_lifetime,
        }),
        cluster_id: cli.cluster_id,
        http_limits: HttpLimits {
            max_request_headers_bytes: usize::try_from(cli.max_request_headers_kb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024),
            max_headers_count: usize::try_from(cli.max_headers_count).unwrap_or(usize::MAX),
            request_headers_timeout: nonzero(cli.request_headers_timeout),
            idle_timeout: nonzero(cli.idle_timeout),
            stream_idle_timeout: nonzero(cli.stream_idle_timeout),
            max_concurrent_streams: cli.max_concurrent_streams,
            reject_header_underscores: cli.reject_header_underscores,
            max_connections_per_listener: (cli.max_connections_per_listener > 0)
                .then_some(cli.max_connections_per_listener),
            premature_reset_total_stream_count: cli.premature_reset_total_stream_count,
        },
    };
    match app::run(config, Arc::new(NetnsSocketFactory)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Through the logger, so a JSON log stays JSON.
            let error = shunt_api::report::chain(&error);
            tracing::error!(%error, "shunt-proxy failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_cli() {
        let cli = Cli::try_parse_from(["shunt-proxy"]).unwrap();
        assert_eq!(
            cli.control_socket,
            PathBuf::from("/run/shunt/default/control.sock")
        );
        assert_eq!(cli.metrics_addr, "0.0.0.0:15020".parse().unwrap());
        assert_eq!(cli.drain_timeout, Duration::from_secs(5));
        assert_eq!(cli.connect_timeout, Duration::from_secs(10));
        assert_eq!(cli.protocol_detection_timeout, Duration::from_millis(100));
        assert!(matches!(cli.log_format, LogFormat::Text));
        assert!(!cli.no_same_node_shortcut);
        assert_eq!(cli.worker_threads, None);
        assert_eq!(cli.cluster_id, "Kubernetes");
        let east = Cli::try_parse_from(["shunt-proxy", "--cluster-id", "east"]).unwrap();
        assert_eq!(east.cluster_id, "east");
        assert!(Cli::try_parse_from(["shunt-proxy", "--cluster-id", ""]).is_err());
        assert!(Cli::try_parse_from(["shunt-proxy", "--worker-threads", "0"]).is_err());
    }

    #[test]
    fn http_limit_flags_default_to_envoys_edge_values() {
        let cli = Cli::try_parse_from(["shunt-proxy"]).unwrap();
        assert_eq!(cli.max_request_headers_kb, 60);
        assert_eq!(cli.max_headers_count, 100);
        assert_eq!(cli.request_headers_timeout, Duration::from_secs(10));
        assert_eq!(cli.idle_timeout, Duration::from_secs(3600));
        assert_eq!(cli.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(cli.max_concurrent_streams, 100);
        assert!(!cli.reject_header_underscores);
        assert_eq!(cli.max_connections_per_listener, 16_384);
        assert_eq!(cli.premature_reset_total_stream_count, 500);
        assert_eq!(nonzero(Duration::ZERO), None);
        assert_eq!(
            nonzero(Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
        for bad in [
            &["shunt-proxy", "--max-request-headers-kb", "0"][..],
            &["shunt-proxy", "--max-concurrent-streams", "0"],
            &["shunt-proxy", "--premature-reset-total-stream-count", "1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_accept_fractions_and_reject_nonsense() {
        for (text, expected) in [
            ("0.5", Some(Duration::from_millis(500))),
            ("3", Some(Duration::from_secs(3))),
            ("-1", None),
            ("soon", None),
        ] {
            assert_eq!(parse_seconds(text).ok(), expected, "{text}");
        }
    }
}
