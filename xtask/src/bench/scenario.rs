//! The scenarios and the nodes each one runs on. Every scenario gets its own node (netns,
//! cgroup, agent instance), or its own two-node cluster (S5, S6), all alive at once, so
//! repetitions can interleave scenarios without restarting anything between them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use shunt_tests::certs::{TestCa, Usage};
use shunt_tests::istio::{self, ISTIO_SYSTEM};
use shunt_tests::wait::Check;
use shunt_tests::{
    AgentOptions, Binaries, CaptureMode, Cluster, ClusterConfig, Metrics, NamespaceConfig, Node,
    Pod, PodConfig, Process, ServiceConfig,
};

/// Host parts of the pods' addresses: on one node they are all in `10.244.0.0/24`; across
/// nodes the client is `10.244.0.10` on node 0 and the server `10.244.1.20` on node 1.
const CLIENT_HOST: u8 = 10;
const SERVER_HOST: u8 = 20;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, CLIENT_HOST);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, SERVER_HOST);
const HAPROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 30);
/// S8's gateway pod, and the uncaptured server pod behind its HAProxy.
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const PLAIN_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 21);
/// S8's external host: the certificate's name, the SNI, the `Host` and the Gateway's host.
pub const GATEWAY_HOST: &str = "gw.bench.test";
const GATEWAY_NAME: &str = "bench-gw";
const GATEWAY_SECRET: &str = "bench-gw-cert";
/// The ports S8's Gateway and HAProxy listen on, for HTTP and HTTPS.
pub const GATEWAY_HTTP_PORT: u16 = 80;
pub const GATEWAY_HTTPS_PORT: u16 = 443;
/// Node indexes of a cross-node scenario's cluster.
const CLIENT_NODE: usize = 0;
const SERVER_NODE: usize = 1;
/// The server's ports: echo (RR, idle), reply-and-close (CRR), sink (bulk), HTTP (L7).
const ECHO_PORT: u16 = 9000;
const CRR_PORT: u16 = 9001;
const SINK_PORT: u16 = 9002;
const HTTP_PORT: u16 = 8080;
/// S1–S3 address the HTTP server through this Service: port 80 named `http`, so the proxy
/// takes the connection as HTTP without sniffing and routes every request at L7, as Istio
/// would. The L4 workloads keep dialling the server pod's IP (no Service, so the proxy sniffs
/// them: the first RR byte, 'Z', looks like the start of an HTTP method, so a connection's
/// first request waits out the detection timeout; it falls in the warm-up, never measured).
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const SERVICE_HTTP_PORT: u16 = 80;
const SERVER_APP: &str = "bench-server";
/// Service accounts, so the pods' SPIFFE ids (and the HBONE pool's keys) differ, as two
/// workloads' would.
const CLIENT_SA: &str = "bench-client";
const SERVER_SA: &str = "bench-server";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to SIGKILL when a forwarder is restarted (the harness's proxy drains for 1 s).
const FORWARDER_STOP: Duration = Duration::from_secs(5);
const MESH_NAMESPACE: &str = "bench";
/// S7's security objects. The token is signed with the test-only RSA key of the httppod
/// crate (`shunt-httppod jwks mint`), and its public half is the rule's inline JWKS.
const AUTHZ_POLICY: &str = "bench-allow";
const REQUEST_AUTHN: &str = "bench-jwt";
const JWT_KEY: &str = "tests/httppod/testdata/rsa-2048.pem";
const JWT_KID: &str = "bench";
const JWT_ISSUER: &str = "https://bench.shunt.invalid";
const JWT_SUBJECT: &str = "bench-client";
const JWT_AUDIENCE: &str = "bench-server";
/// A day: longer than any bench run, so no token expires while it is measured.
const JWT_LIFETIME_SECS: u64 = 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Iptables,
    Ebpf,
    EbpfSockmap,
    Haproxy,
    CrossDirect,
    CrossMtls,
    EbpfAuthz,
    Gateway,
}

impl Scenario {
    pub const ALL: [Self; 9] = [
        Self::Direct,
        Self::Iptables,
        Self::Ebpf,
        Self::EbpfSockmap,
        Self::Haproxy,
        Self::CrossDirect,
        Self::CrossMtls,
        Self::EbpfAuthz,
        Self::Gateway,
    ];

    /// The scenarios of the main table, and of a run without `--scenarios`. S8 (the gateway)
    /// compares shunt with HAProxy inside itself, in its own table, and only runs when named.
    pub const MAIN: [Self; 8] = [
        Self::Direct,
        Self::Iptables,
        Self::Ebpf,
        Self::EbpfSockmap,
        Self::Haproxy,
        Self::CrossDirect,
        Self::CrossMtls,
        Self::EbpfAuthz,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::Direct => "S0",
            Self::Iptables => "S1",
            Self::Ebpf => "S2",
            Self::EbpfSockmap => "S3",
            Self::Haproxy => "S4",
            Self::CrossDirect => "S5",
            Self::CrossMtls => "S6",
            Self::EbpfAuthz => "S7",
            Self::Gateway => "S8",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iptables => "iptables",
            Self::Ebpf => "eBPF",
            Self::EbpfSockmap => "eBPF+sockmap",
            Self::Haproxy => "HAProxy",
            Self::CrossDirect => "cross-node direct",
            Self::CrossMtls => "cross-node mTLS",
            Self::EbpfAuthz => "eBPF+authz",
            Self::Gateway => "gateway",
        }
    }

    /// What stands between the client and the server, for the docs and the output header.
    pub fn description(self) -> &'static str {
        match self {
            Self::Direct => "no capture, no proxy: the client dials the server pod directly",
            Self::Iptables => {
                "both pods captured with `shunt-agent --capture=iptables` (REDIRECT to \
                 15001/15006), one shunt-proxy pass (same-node delivery)"
            }
            Self::Ebpf => {
                "both pods captured with eBPF (connect4 + sk_lookup), one shunt-proxy pass \
                 (same-node delivery), sockmap shortcut off (the default)"
            }
            Self::EbpfSockmap => "S2 with `--sockmap-shortcut`",
            Self::Haproxy => {
                "no capture; the client dials HAProxy (one hop: `mode tcp` for L4, `mode http` \
                 for L7) in a third pod, which forwards to the server"
            }
            Self::CrossDirect => {
                "two nodes joined by an underlay netns; the client pod on node 0 dials the \
                 server pod on node 1 over the nodes' routes: no capture, no proxy"
            }
            Self::CrossMtls => {
                "S5's pods, both captured with eBPF, a shunt-proxy on each node: the client's \
                 node proxy tunnels to the server's over HBONE (HTTP/2 CONNECT over mTLS to \
                 the server pod's port 15008; node 0's agent is the CA); both node proxies \
                 share the service CPU"
            }
            Self::EbpfAuthz => {
                "S2 with security on the server pod: an AuthorizationPolicy `ALLOW` of 5 rules \
                 (the L7 GET matches only the 5th, which also needs the token's request \
                 principal; the 4th allows the L4 ports) and a RequestAuthentication (RS256, \
                 inline `jwks`); every L7 request carries `Authorization: Bearer` with an \
                 RS256 token for it (verified once, then from the proxy's token cache). A pod \
                 with RequestAuthentication takes its own inbound pass (shunt's behaviour: \
                 its `authn` phase edits the request, so no same-node delivery to it), so \
                 every connection to the server crosses the proxy twice"
            }
            Self::Gateway => {
                "an outside client pod (not in the mesh config) → a gateway pod (an Istio \
                 Gateway with HTTP port 80 and HTTPS port 443, `credentialName` Secret, a \
                 VirtualService bound to it), served by the node proxy → a captured server pod; \
                 beside it, in the same run, HAProxy in its own pod terminating the same TLS \
                 (same certificate and key, `mode http`, keep-alive) to an uncaptured server pod \
                 running the same server. Its own table: shunt gateway against HAProxy"
            }
        }
    }

    /// Whether shunt-proxies carry the traffic (so shunt's metrics and proxy cost rows apply).
    pub fn runs_shunt(self) -> bool {
        matches!(
            self,
            Self::Iptables | Self::Ebpf | Self::EbpfSockmap | Self::CrossMtls | Self::EbpfAuthz
        )
    }

    /// Whether a process forwards the traffic (a shunt-proxy or HAProxy), whose CPU and
    /// memory the proxy rows measure.
    pub fn has_forwarder(self) -> bool {
        self.runs_shunt() || self == Self::Haproxy
    }

    /// Whether the client and the server are on two nodes.
    pub fn is_cross_node(self) -> bool {
        matches!(self, Self::CrossDirect | Self::CrossMtls)
    }

    /// Per plan, so a smoke run (inside `cargo xtask test`) never sweeps a bench's nodes.
    fn node_name(self, plan: &str) -> String {
        format!("xtask-bench-{plan}-{}", self.id().to_lowercase())
    }
}

/// Why a scenario cannot run on this build or machine, if it cannot.
pub fn unavailable_reason(scenario: Scenario, binaries: &Binaries) -> Option<String> {
    match scenario {
        Scenario::Iptables => {
            let agent = binaries.agent().ok()?;
            let help = Command::new(agent).arg("--help").output().ok()?;
            let has_flag = String::from_utf8_lossy(&help.stdout).contains("--capture");
            (!has_flag).then(|| "not available: agent has no --capture=iptables".to_owned())
        }
        Scenario::Haproxy => {
            let found = Command::new("haproxy")
                .arg("-v")
                .output()
                .is_ok_and(|out| out.status.success());
            (!found).then(|| {
                "not available: haproxy is not installed (`cargo xtask setup` installs it)"
                    .to_owned()
            })
        }
        Scenario::CrossMtls => {
            let has_flag = |binary: Option<PathBuf>, flag: &str| {
                binary
                    .and_then(|b| Command::new(b).arg("--help").output().ok())
                    .is_some_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
            };
            if !has_flag(binaries.agent().ok(), "--ca-listen") {
                Some("not available: agent has no --ca-listen (the node CA)".to_owned())
            } else if !has_flag(binaries.proxy().ok(), "--ca-address") {
                Some("not available: proxy has no --ca-address (workload certificates)".to_owned())
            } else {
                None
            }
        }
        Scenario::EbpfAuthz => {
            let minted = binaries
                .httppod()
                .ok()
                .and_then(|httppod| Command::new(httppod).args(["jwks", "--help"]).output().ok());
            (!minted.is_some_and(|out| out.status.success())).then(|| {
                "not available: no shunt-httppod with `jwks` (it mints S7's token)".to_owned()
            })
        }
        Scenario::Gateway => {
            let haproxy = unavailable_reason(Scenario::Haproxy, binaries);
            let client = binaries
                .httppod()
                .ok()
                .and_then(|httppod| Command::new(httppod).args(["max", "--help"]).output().ok());
            haproxy.or_else(|| {
                (!client.is_some_and(|out| out.status.success())).then(|| {
                    "not available: no shunt-httppod with `max` (S8's HTTPS client)".to_owned()
                })
            })
        }
        Scenario::Direct | Scenario::Ebpf | Scenario::EbpfSockmap | Scenario::CrossDirect => None,
    }
}

/// Where the client sends each workload.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub echo: SocketAddr,
    pub crr: SocketAddr,
    pub sink: SocketAddr,
    /// The HTTP server, as the scenario addresses it (also the requests' `Host`).
    pub http: SocketAddr,
}

impl Targets {
    fn at(ip: Ipv4Addr) -> Self {
        let addr = |port| SocketAddr::V4(SocketAddrV4::new(ip, port));
        Self {
            echo: addr(ECHO_PORT),
            crr: addr(CRR_PORT),
            sink: addr(SINK_PORT),
            http: addr(HTTP_PORT),
        }
    }
}

/// The node, or the two nodes, a scenario runs on. Both boxed: each is a few hundred bytes.
enum Nodes {
    One(Box<Node>),
    /// A cross-node scenario: the client on node [`CLIENT_NODE`], the server on
    /// [`SERVER_NODE`].
    Two(Box<Cluster>),
}

/// Where a forwarder sits on the scenario's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The one forwarder of a single-node scenario.
    Only,
    /// The client node's proxy (cross-node).
    Source,
    /// The server node's proxy (cross-node).
    Destination,
}

impl Role {
    /// The prefix of the metrics a cross-node scenario keeps per node proxy, beside their sum.
    pub fn metric_prefix(self) -> Option<&'static str> {
        match self {
            Self::Only => None,
            Self::Source => Some("src_"),
            Self::Destination => Some("dst_"),
        }
    }
}

/// A process that forwards the scenario's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarder {
    pub role: Role,
    pub pid: u32,
}

/// One scenario's running nodes: client and server pods, the server, and its forwarders.
pub struct Deployment {
    pub scenario: Scenario,
    nodes: Nodes,
    client: Pod,
    server: Pod,
    pub targets: Targets,
    /// Sent with every L7 request (`--header`): S7's bearer token; empty elsewhere.
    pub http_headers: Vec<String>,
    pub loadgen: PathBuf,
    _server: Process,
    haproxy: Option<Process>,
    haproxy_config: Option<PathBuf>,
    /// S8's parts beside the common ones.
    pub gateway: Option<GatewayParts>,
}

/// What S8 adds: the CA its clients trust, its client, and HAProxy's own server.
pub struct GatewayParts {
    pub ca: PathBuf,
    pub httppod: PathBuf,
    _plain_server: Process,
}

/// One of S8's two paths and one of its protocols: where its client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewaySide {
    Shunt,
    Haproxy,
}

impl GatewaySide {
    pub fn name(self) -> &'static str {
        match self {
            Self::Shunt => "shunt",
            Self::Haproxy => "haproxy",
        }
    }

    pub fn address(self, tls: bool) -> SocketAddr {
        let ip = match self {
            Self::Shunt => GATEWAY_IP,
            Self::Haproxy => HAPROXY_IP,
        };
        let port = if tls {
            GATEWAY_HTTPS_PORT
        } else {
            GATEWAY_HTTP_PORT
        };
        SocketAddr::V4(SocketAddrV4::new(ip, port))
    }
}

impl Deployment {
    /// Builds the node (or the two nodes), starts capture (S1–S3, S6) or HAProxy (S4), and
    /// the server; returns once the client can reach the server through the scenario's path.
    pub fn start(
        scenario: Scenario,
        plan: &str,
        binaries: &Binaries,
        loadgen: &Path,
    ) -> Result<Self> {
        let name = scenario.node_name(plan);
        let mut haproxy = None;
        let mut haproxy_config = None;
        let mut http_headers = Vec::new();
        let mut gateway = None;
        let (nodes, client, server, targets) = if scenario.is_cross_node() {
            let mut cluster = Cluster::with_binaries(&name, 2, binaries.clone())?;
            let client = cluster.add_pod(CLIENT_NODE, "client", CLIENT_HOST)?;
            let server = cluster.add_pod(SERVER_NODE, "server", SERVER_HOST)?;
            let mut targets = Targets::at(server.ip);
            if scenario == Scenario::CrossMtls {
                cluster.write_config(&mesh_config(
                    cluster.pod_config(&client, MESH_NAMESPACE)?,
                    cluster.pod_config(&server, MESH_NAMESPACE)?,
                ))?;
                // eBPF capture, sockmap shortcut off: S2's capture on both nodes.
                cluster.start_with_mtls(&AgentOptions::default())?;
                cluster.wait_captured(&[&client, &server])?;
                targets.http = service_http();
            }
            (Nodes::Two(Box::new(cluster)), client, server, targets)
        } else {
            let mut node = Node::with_binaries(&name, binaries.clone())?;
            let client = node.add_pod("client", CLIENT_IP)?;
            let server = node.add_pod("server", SERVER_IP)?;
            let mut targets = Targets::at(SERVER_IP);
            match scenario {
                Scenario::Iptables
                | Scenario::Ebpf
                | Scenario::EbpfSockmap
                | Scenario::EbpfAuthz => {
                    node.write_config(&mesh_config(
                        node.pod_config(&client, MESH_NAMESPACE),
                        node.pod_config(&server, MESH_NAMESPACE),
                    ))?;
                    if scenario == Scenario::EbpfAuthz {
                        // Before the agent starts: the proxy serves the pods with the
                        // policies from its first snapshot on.
                        let security = Security::mint(&binaries.httppod()?)?;
                        node.write_istio(&security.objects)?;
                        http_headers.push(security.header);
                    }
                    let options = AgentOptions {
                        capture: if scenario == Scenario::Iptables {
                            CaptureMode::Iptables
                        } else {
                            CaptureMode::Ebpf
                        },
                        sockmap_shortcut: scenario == Scenario::EbpfSockmap,
                        ..AgentOptions::default()
                    };
                    node.start_agent(&options)?;
                    node.start_proxy()?;
                    node.wait_captured(&[&client, &server])?;
                    targets.http = service_http();
                }
                Scenario::Haproxy => {
                    let lb = node.add_pod("haproxy", HAPROXY_IP)?;
                    let config = node.dir().join("haproxy.cfg");
                    std::fs::write(&config, haproxy_config_text(HAPROXY_IP, SERVER_IP))
                        .with_context(|| format!("could not write {}", config.display()))?;
                    haproxy = Some(spawn_haproxy(&node, &lb, &config)?);
                    haproxy_config = Some(config);
                    targets = Targets::at(HAPROXY_IP);
                }
                Scenario::Gateway => {
                    let (parts, lb, config) = start_gateway(&mut node, &server, binaries, loadgen)?;
                    haproxy = Some(spawn_haproxy(&node, &lb, &config)?);
                    haproxy_config = Some(config);
                    gateway = Some(parts);
                }
                Scenario::Direct | Scenario::CrossDirect | Scenario::CrossMtls => {}
            }
            (Nodes::One(Box::new(node)), client, server, targets)
        };
        let serve = serve_command(loadgen);
        let server_node = match &nodes {
            Nodes::One(node) => node,
            Nodes::Two(cluster) => cluster.node(SERVER_NODE)?,
        };
        let mut server_process = server_node.spawn_in_pod(&server, "loadgen-serve", serve)?;
        server_process.wait_for_line("ready", READY_TIMEOUT)?;
        let deployment = Self {
            scenario,
            nodes,
            client,
            server,
            targets,
            http_headers,
            loadgen: loadgen.to_path_buf(),
            _server: server_process,
            haproxy,
            haproxy_config,
            gateway,
        };
        deployment.wait_reachable()?;
        if scenario == Scenario::CrossMtls {
            // The reachability check's HTTP request crossed to node 1: it must have been
            // tunnelled, or S6 would measure plaintext between the proxies.
            let streams = deployment.hbone_streams_opened()?;
            if streams < 1.0 {
                bail!(
                    "S6: the client's node proxy opened no HBONE stream for the reachability \
                     check (shunt_hbone_streams_opened_total{{direction=\"outbound\"}} = \
                     {streams}): do the proxies have their certificates?"
                );
            }
        }
        if scenario == Scenario::EbpfAuthz {
            // The reachability check's GET carried the token: the policy's last rule must
            // have allowed it, or S7 would measure a proxy that skips the checks.
            let allowed = deployment.authz_allowed()?;
            if allowed < 1.0 {
                bail!(
                    "S7: the server's policy {MESH_NAMESPACE}/{AUTHZ_POLICY} allowed nothing \
                     for the reachability check ({AUTHZ_DECISIONS}{{action=\"ALLOW\", \
                     decision=\"allow\"}} = {allowed}): did the agent accept the policies? \
                     (`shuntctl config dump`)"
                );
            }
        }
        Ok(deployment)
    }

    fn client_node(&self) -> &Node {
        match &self.nodes {
            Nodes::One(node) => node,
            Nodes::Two(cluster) => &cluster.nodes()[CLIENT_NODE],
        }
    }

    fn server_node(&self) -> &Node {
        match &self.nodes {
            Nodes::One(node) => node,
            Nodes::Two(cluster) => &cluster.nodes()[SERVER_NODE],
        }
    }

    /// Starts `command` in the client pod (on its node, in that node's cgroup).
    pub fn spawn_client(&self, what: &str, command: Command) -> Result<Process> {
        Ok(self
            .client_node()
            .spawn_in_pod(&self.client, what, command)?)
    }

    /// One scrape of the client node's proxy (the source reporter).
    pub fn client_metrics(&self) -> Result<Metrics> {
        self.client_node()
            .metrics()
            .context("could not scrape the client node's proxy metrics")
    }

    /// One scrape of the server node's proxy (the destination reporter; on one node, the same
    /// proxy as [`Deployment::client_metrics`]).
    pub fn server_metrics(&self) -> Result<Metrics> {
        self.server_node()
            .metrics()
            .context("could not scrape the server node's proxy metrics")
    }

    /// HBONE streams the client node's proxy has opened so far (S6's tunnels).
    pub fn hbone_streams_opened(&self) -> Result<f64> {
        Ok(self
            .client_metrics()?
            .sum(HBONE_STREAMS_OPENED, &[("direction", "outbound")]))
    }

    /// Requests and connections S7's ALLOW policy has allowed so far, on the server's node.
    /// Its only rule that an L7 GET can match needs the token's request principal, so each
    /// allowed request was also authenticated.
    pub fn authz_allowed(&self) -> Result<f64> {
        let policy = format!("{MESH_NAMESPACE}.{AUTHZ_POLICY}");
        Ok(self.server_metrics()?.sum(
            AUTHZ_DECISIONS,
            &[
                ("action", "ALLOW"),
                ("policy", &policy),
                ("decision", "allow"),
            ],
        ))
    }

    /// Waits until the client can connect to every target, and the HTTP server answers a
    /// request through the scenario's path.
    fn wait_reachable(&self) -> Result<()> {
        if let Some(gateway) = &self.gateway {
            return self.wait_gateway_reachable(gateway);
        }
        let t = self.targets;
        for (to, http) in [
            (t.echo, false),
            (t.crr, false),
            (t.sink, false),
            (t.http, true),
        ] {
            let mut wait = Command::new(&self.loadgen);
            wait.args(["wait", "--to", &to.to_string()]);
            if http {
                wait.args(["--http-host", &to.to_string()]);
                for header in &self.http_headers {
                    wait.args(["--header", header]);
                }
            }
            let output = self
                .spawn_client("loadgen-wait", wait)?
                .finish(READY_TIMEOUT)?;
            if !output.status.success() {
                let forwarder_log = self.haproxy.as_ref().map(Process::tail);
                bail!(
                    "{} ({}): the client cannot reach {to}: {}\n{}",
                    self.scenario.id(),
                    self.scenario.title(),
                    output.stderr.trim(),
                    forwarder_log.unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// S8: retries one short `shunt-httppod max` run to each of its four endpoints (the
    /// gateway's listeners open when the proxy applies the Gateway) until it completes
    /// requests without an error.
    fn wait_gateway_reachable(&self, gateway: &GatewayParts) -> Result<()> {
        for side in [GatewaySide::Shunt, GatewaySide::Haproxy] {
            for tls in [false, true] {
                let to = side.address(tls);
                let deadline = std::time::Instant::now() + READY_TIMEOUT;
                loop {
                    let mut probe = Command::new(&gateway.httppod);
                    probe.args(gateway_client_args(gateway, to, tls, 1, 200, 0));
                    let output = self
                        .spawn_client("httppod-max-wait", probe)?
                        .finish(READY_TIMEOUT)?;
                    let report: Option<Value> = output.json().ok();
                    let served = output.status.success()
                        && report.as_ref().is_some_and(|r| {
                            r["requests"].as_f64().unwrap_or(0.0) >= 1.0
                                && r["errors"].as_array().is_some_and(Vec::is_empty)
                        });
                    if served {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        let forwarder_log = self.haproxy.as_ref().map(Process::tail);
                        bail!(
                            "S8: the outside client gets no answer from {} at {to}: {} {}\n{}",
                            side.name(),
                            output.stdout.trim(),
                            output.stderr.trim(),
                            forwarder_log.unwrap_or_default()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        Ok(())
    }

    /// S8's two forwarders: the node proxy (serving the gateway) and HAProxy.
    pub fn gateway_forwarder(&mut self, side: GatewaySide) -> Option<Forwarder> {
        let pid = match (side, &mut self.nodes) {
            (GatewaySide::Shunt, Nodes::One(node)) => node.proxy_process()?.pid(),
            (GatewaySide::Haproxy, _) => self.haproxy.as_ref()?.pid(),
            (GatewaySide::Shunt, Nodes::Two(_)) => return None,
        };
        Some(Forwarder {
            role: Role::Only,
            pid,
        })
    }

    /// Replaces the forwarders with fresh processes and waits until they carry traffic again.
    /// A memory measurement starts from there: a process that already ran other workloads
    /// keeps freed memory in its allocator, and new connections reuse it unseen. Across
    /// nodes both proxies are replaced, so neither keeps what earlier workloads left.
    pub fn restart_forwarder(&mut self) -> Result<()> {
        let shunt = self.scenario.runs_shunt();
        match &mut self.nodes {
            Nodes::One(node) if shunt => restart_proxy(node, &[&self.client, &self.server])?,
            Nodes::Two(cluster) if shunt => {
                restart_proxy(cluster.node_mut(CLIENT_NODE)?, &[&self.client])?;
                restart_proxy(cluster.node_mut(SERVER_NODE)?, &[&self.server])?;
            }
            Nodes::One(node) => {
                if let (Some(haproxy), Some(config)) = (&mut self.haproxy, &self.haproxy_config) {
                    haproxy.stop(FORWARDER_STOP);
                    let lb = node
                        .pods()
                        .iter()
                        .find(|p| p.ip == HAPROXY_IP)
                        .cloned()
                        .context("the HAProxy pod is gone")?;
                    self.haproxy = Some(spawn_haproxy(node, &lb, config)?);
                }
            }
            Nodes::Two(_) => {}
        }
        self.wait_reachable()
    }

    /// The processes that forward this scenario's traffic: none for S0 and S5, the proxy or
    /// HAProxy on one node, both node proxies across nodes (client's node first).
    pub fn forwarders(&mut self) -> Vec<Forwarder> {
        let shunt = self.scenario.runs_shunt();
        match &mut self.nodes {
            Nodes::One(node) => {
                let process = if shunt {
                    node.proxy_process().map(|p| p.pid())
                } else {
                    self.haproxy.as_ref().map(Process::pid)
                };
                process
                    .map(|pid| Forwarder {
                        role: Role::Only,
                        pid,
                    })
                    .into_iter()
                    .collect()
            }
            Nodes::Two(_) if !shunt => Vec::new(),
            Nodes::Two(cluster) => [
                (CLIENT_NODE, Role::Source),
                (SERVER_NODE, Role::Destination),
            ]
            .into_iter()
            .filter_map(|(index, role)| {
                let pid = cluster.node_mut(index).ok()?.proxy_process()?.pid();
                Some(Forwarder { role, pid })
            })
            .collect(),
        }
    }

    /// Stops everything and removes the nodes; returns what could not be removed.
    pub fn teardown(mut self) -> Vec<String> {
        if let Some(mut haproxy) = self.haproxy.take() {
            haproxy.kill();
        }
        match self.nodes {
            Nodes::One(node) => node.teardown(),
            Nodes::Two(cluster) => cluster.teardown(),
        }
    }
}

/// `shunt_hbone_streams_opened_total`: one per tunnelled connection.
const HBONE_STREAMS_OPENED: &str = "shunt_hbone_streams_opened_total";
/// `shunt_authorization_decisions_total{action, policy, decision}`.
const AUTHZ_DECISIONS: &str = "shunt_authorization_decisions_total";

/// S7's security: the Istio objects and the header every L7 request carries.
struct Security {
    objects: Vec<Value>,
    header: String,
}

impl Security {
    /// The JWKS and a token from `shunt-httppod jwks`, and the policies around them.
    fn mint(httppod: &Path) -> Result<Self> {
        let key = crate::build::workspace_root().join(JWT_KEY);
        let key = key.to_string_lossy();
        let common = ["--key", &key, "--alg", "RS256", "--kid", JWT_KID];
        let jwks = run_httppod(httppod, &["jwks", "export"], &common)?;
        let lifetime = JWT_LIFETIME_SECS.to_string();
        let minted = run_httppod(
            httppod,
            &["jwks", "mint"],
            &common
                .into_iter()
                .chain([
                    "--iss",
                    JWT_ISSUER,
                    "--sub",
                    JWT_SUBJECT,
                    "--aud",
                    JWT_AUDIENCE,
                    "--exp-offset",
                    &lifetime,
                ])
                .collect::<Vec<_>>(),
        )?;
        let minted: Value = serde_json::from_str(&minted)
            .with_context(|| format!("`shunt-httppod jwks mint` printed no JSON: {minted}"))?;
        let token = minted["token"]
            .as_str()
            .with_context(|| format!("`shunt-httppod jwks mint` printed no token: {minted}"))?;
        Ok(Self {
            objects: security_objects(jwks.trim()),
            header: format!("authorization: Bearer {token}"),
        })
    }
}

fn run_httppod(httppod: &Path, command: &[&str], args: &[&str]) -> Result<String> {
    let what = format!("shunt-httppod {}", command.join(" "));
    let output = Command::new(httppod)
        .args(command)
        .args(args)
        .output()
        .with_context(|| format!("could not run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{what} printed non-UTF-8"))
}

/// S7's AuthorizationPolicy and RequestAuthentication on the server pod. The bench's GET
/// (`GET /bench` to port 8080 with the token) matches only the last of the 5 rules, so the
/// policy is evaluated through all of them; the 4th allows the L4 workloads' ports (an
/// ALLOW rule with an HTTP-only field is dropped on TCP, so rules 1, 2 and 5 never allow
/// TCP, and rule 3 names a principal no bench pod has).
fn security_objects(jwks: &str) -> Vec<Value> {
    let selector = json!({"matchLabels": {"app": SERVER_APP}});
    let port = |p: u16| p.to_string();
    let rules = json!([
        {"to": [{"operation": {"methods": ["POST", "PUT"], "paths": ["/bench"]}}]},
        {"to": [{"operation": {"paths": ["/admin/*", "/debug/*"]}}]},
        {"from": [{"source": {
            "principals": [format!("cluster.local/ns/{MESH_NAMESPACE}/sa/bench-admin")]}}]},
        {"to": [{"operation": {"ports": [port(ECHO_PORT), port(CRR_PORT), port(SINK_PORT)]}}]},
        {
            "from": [{"source": {"requestPrincipals": [format!("{JWT_ISSUER}/{JWT_SUBJECT}")]}}],
            "to": [{"operation": {
                "methods": ["GET"], "paths": ["/bench"], "ports": [port(HTTP_PORT)]}}],
            "when": [{"key": "request.auth.audiences", "values": [JWT_AUDIENCE]}],
        },
    ]);
    let object = |kind: &str, name: &str, spec: Value| {
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": MESH_NAMESPACE},
            "spec": spec,
        })
    };
    vec![
        object(
            "AuthorizationPolicy",
            AUTHZ_POLICY,
            json!({"selector": selector, "action": "ALLOW", "rules": rules}),
        ),
        object(
            "RequestAuthentication",
            REQUEST_AUTHN,
            json!({"selector": selector, "jwtRules": [{
                "issuer": JWT_ISSUER, "audiences": [JWT_AUDIENCE], "jwks": jwks,
            }]}),
        ),
    ]
}

/// The Service address S1–S3 and S6 send the L7 workload to.
fn service_http() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(SERVICE_IP, SERVICE_HTTP_PORT))
}

/// The mesh of a shunt scenario: both pods in the injected namespace, the server behind the
/// Service whose port 80 is named `http`.
fn mesh_config(mut client: PodConfig, server: PodConfig) -> ClusterConfig {
    client.service_account = CLIENT_SA.to_owned();
    let mut server = server.label("app", SERVER_APP);
    server.service_account = SERVER_SA.to_owned();
    ClusterConfig::new()
        .namespace(&NamespaceConfig::injected(MESH_NAMESPACE))
        .pod(&client)
        .pod(&server)
        .service(
            &ServiceConfig::new(MESH_NAMESPACE, SERVER_APP, SERVICE_IP)
                .select("app", SERVER_APP)
                .port("http", SERVICE_HTTP_PORT, HTTP_PORT),
        )
}

/// `shunt-httppod max` arguments for one S8 run to `to`.
pub fn gateway_client_args(
    gateway: &GatewayParts,
    to: SocketAddr,
    tls: bool,
    connections: usize,
    duration_ms: u128,
    warmup_ms: u128,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "max",
        "--to",
        &to.to_string(),
        "--host",
        GATEWAY_HOST,
        "--connections",
        &connections.to_string(),
        "--duration-ms",
        &duration_ms.to_string(),
        "--warmup-ms",
        &warmup_ms.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    if tls {
        args.push("--tls-ca".to_owned());
        args.push(gateway.ca.to_string_lossy().into_owned());
    }
    args
}

/// `shunt-loadgen serve` with the bench server's ports.
fn serve_command(loadgen: &Path) -> Command {
    let mut serve = Command::new(loadgen);
    serve.args([
        "serve",
        "--echo-port",
        &ECHO_PORT.to_string(),
        "--crr-port",
        &CRR_PORT.to_string(),
        "--sink-port",
        &SINK_PORT.to_string(),
        "--http-port",
        &HTTP_PORT.to_string(),
    ]);
    serve
}

/// S8's node beyond the client and server pods: the gateway pod and its Gateway,
/// VirtualService and Secret, capture of the server, the certificate, HAProxy's pod and
/// config, and the uncaptured server behind HAProxy (so HAProxy's path crosses no shunt
/// proxy, as the gateway's crosses no HAProxy). Returns HAProxy's pod and config file.
fn start_gateway(
    node: &mut Node,
    server: &Pod,
    binaries: &Binaries,
    loadgen: &Path,
) -> Result<(GatewayParts, Pod, PathBuf)> {
    let ingress = node.add_pod("ingress", GATEWAY_IP)?;
    let lb = node.add_pod("haproxy", HAPROXY_IP)?;
    let plain = node.add_pod("plain", PLAIN_SERVER_IP)?;
    let files = node.dir().join("gateway-tls");
    let mut ca = TestCa::new(&files, "bench-gateway-ca")
        .with_context(|| format!("could not make S8's CA in {}", files.display()))?;
    let issued = ca
        .issue(GATEWAY_HOST, &[GATEWAY_HOST], Usage::Server)
        .context("could not issue S8's server certificate")?;
    let (cert, key) = issued.pem().context("could not read S8's certificate")?;
    // HAProxy takes the certificate and its key in one file.
    let haproxy_pem = files.join("haproxy.pem");
    std::fs::write(&haproxy_pem, format!("{cert}{key}"))
        .with_context(|| format!("could not write {}", haproxy_pem.display()))?;

    let gateway_pod = node
        .pod_config(&ingress, ISTIO_SYSTEM)
        .label("istio", "ingressgateway")
        .label("app", "istio-ingressgateway");
    let mut server_config = node
        .pod_config(server, MESH_NAMESPACE)
        .label("app", SERVER_APP);
    server_config.service_account = SERVER_SA.to_owned();
    node.write_config(
        &ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH_NAMESPACE))
            .namespace(&NamespaceConfig::new(ISTIO_SYSTEM))
            .pod(&gateway_pod)
            .pod(&server_config)
            .service(
                &ServiceConfig::new(MESH_NAMESPACE, SERVER_APP, SERVICE_IP)
                    .select("app", SERVER_APP)
                    .port("http", SERVICE_HTTP_PORT, HTTP_PORT),
            ),
    )?;
    node.write_istio(&gateway_objects(&cert, &key))?;
    node.start_agent(&AgentOptions::default())?;
    node.start_proxy()?;
    node.wait_captured(&[server])?;
    let admin = node.admin();
    node.wait_while_running(
        "the gateway pod to be served",
        READY_TIMEOUT,
        |_| match admin.workloads() {
            Ok(workloads) => match workloads.iter().find(|w| w.name == "ingress") {
                Some(w) if w.proxy == "ready" && !w.captured => Check::Done(()),
                other => Check::NotYet(format!("{other:?}")),
            },
            Err(e) => Check::NotYet(e.to_string()),
        },
    )?;

    let mut plain_server =
        node.spawn_in_pod(&plain, "loadgen-serve-plain", serve_command(loadgen))?;
    plain_server.wait_for_line("ready", READY_TIMEOUT)?;
    let config = node.dir().join("haproxy-gateway.cfg");
    std::fs::write(
        &config,
        haproxy_gateway_config_text(HAPROXY_IP, PLAIN_SERVER_IP, &haproxy_pem),
    )
    .with_context(|| format!("could not write {}", config.display()))?;
    let parts = GatewayParts {
        ca: ca.cert(),
        httppod: binaries.httppod()?,
        _plain_server: plain_server,
    };
    Ok((parts, lb, config))
}

/// S8's Istio objects: the Secret, a Gateway with HTTP port 80 and HTTPS port 443 for
/// [`GATEWAY_HOST`], and a VirtualService bound to it routing to the server's Service.
fn gateway_objects(cert: &str, key: &str) -> Vec<Value> {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": GATEWAY_SECRET, "namespace": ISTIO_SYSTEM},
        "stringData": {"tls.crt": cert, "tls.key": key},
    });
    let gateway = istio::object(
        istio::NETWORKING,
        "Gateway",
        ISTIO_SYSTEM,
        GATEWAY_NAME,
        json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": GATEWAY_HTTP_PORT, "name": "http", "protocol": "HTTP"},
             "hosts": [GATEWAY_HOST]},
            {"port": {"number": GATEWAY_HTTPS_PORT, "name": "https", "protocol": "HTTPS"},
             "hosts": [GATEWAY_HOST],
             "tls": {"mode": "SIMPLE", "credentialName": GATEWAY_SECRET}},
        ]}),
    );
    let route = istio::virtual_service(
        MESH_NAMESPACE,
        "bench-gw",
        json!({
            "hosts": [GATEWAY_HOST],
            "gateways": [format!("{ISTIO_SYSTEM}/{GATEWAY_NAME}")],
            "http": [{"route": [{"destination": {
                "host": format!("{SERVER_APP}.{MESH_NAMESPACE}.svc.cluster.local"),
                "port": {"number": SERVICE_HTTP_PORT},
            }}]}],
        }),
    );
    vec![secret, gateway, route]
}

/// S8's HAProxy: `mode http` on port 80 and, terminating TLS with the gateway's certificate
/// and key, on 443 (HTTP/1.1 by ALPN, as the gateway's clients speak); keep-alive on both
/// sides (HAProxy's default) to the uncaptured server. No `log` line, as in S4.
fn haproxy_gateway_config_text(listen: Ipv4Addr, server: Ipv4Addr, pem: &Path) -> String {
    format!(
        "global\n    maxconn 8000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    \
         timeout server 120s\n\n\
         frontend http\n    bind {listen}:{GATEWAY_HTTP_PORT}\n    \
         bind {listen}:{GATEWAY_HTTPS_PORT} ssl crt {} alpn http/1.1\n    \
         default_backend server\n\n\
         backend server\n    server server {server}:{HTTP_PORT}\n",
        pem.display()
    )
}

/// Replaces `node`'s proxy and waits until its agent serves `pods` through the new one.
fn restart_proxy(node: &mut Node, pods: &[&Pod]) -> Result<()> {
    if let Some(old) = node.proxy_process() {
        old.stop(FORWARDER_STOP);
    }
    node.start_proxy()?;
    let pid = node.proxy_process().map(|p| u64::from(p.pid()));
    let admin = node.admin();
    // Once the agent reports the new proxy, it has marked every pod pending again, so
    // waiting for them to be captured waits for the new proxy's listeners.
    node.wait_while_running(
        "the agent to serve the restarted proxy",
        READY_TIMEOUT,
        |_| match admin.status() {
            Ok(status) if status["proxy"]["pid"].as_u64() == pid => Check::Done(()),
            Ok(status) => Check::NotYet(status["proxy"].to_string()),
            Err(e) => Check::NotYet(e.to_string()),
        },
    )?;
    node.wait_captured(pods)?;
    Ok(())
}

fn spawn_haproxy(node: &Node, pod: &Pod, config: &Path) -> Result<Process> {
    let mut command = Command::new("haproxy");
    // -db: stay in the foreground, one process, so its PID is the one we measure.
    command.arg("-db").arg("-f").arg(config);
    Ok(node.spawn_in_pod(pod, "haproxy", command)?)
}

/// HAProxy as an explicit forwarder: one frontend per L4 server port in `mode tcp`, and one
/// in `mode http` for the HTTP server (keep-alive on both sides, HAProxy's default). Timeouts
/// are long enough for the idle-connection hold; `maxconn` is above the largest idle count,
/// and HAProxy needs 2 descriptors per connection within the harness's RLIMIT_NOFILE. No
/// `log` line, so HAProxy writes no per-request log, while shunt keeps its default (a JSON
/// access-log line per request and reporter); the README's Performance section says so.
fn haproxy_config_text(listen: Ipv4Addr, server: Ipv4Addr) -> String {
    let mut config = String::from(
        "global\n    maxconn 8000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    \
         timeout server 120s\n\n",
    );
    for (name, port) in [("echo", ECHO_PORT), ("crr", CRR_PORT), ("sink", SINK_PORT)] {
        config.push_str(&format!(
            "listen {name}\n    bind {listen}:{port}\n    server {name} {server}:{port}\n\n"
        ));
    }
    config.push_str(&format!(
        "listen http\n    mode http\n    bind {listen}:{HTTP_PORT}\n    \
         server http {server}:{HTTP_PORT}\n"
    ));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s7s_policy_allows_the_bench_get_only_by_its_last_rule_and_the_l4_ports_by_its_4th() {
        let objects = security_objects(r#"{"keys":[]}"#);
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds, ["AuthorizationPolicy", "RequestAuthentication"]);
        let policy = &objects[0]["spec"];
        assert_eq!(policy["action"], "ALLOW");
        let rules = policy["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 5);
        let ports = |rule: &Value| -> Vec<String> {
            rule["to"][0]["operation"]["ports"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let l4: Vec<String> = [ECHO_PORT, CRR_PORT, SINK_PORT]
            .map(|p| p.to_string())
            .into();
        assert_eq!(ports(&rules[3]), l4);
        // Only the last rule names the HTTP port, GET and the token's principal.
        for (i, rule) in rules.iter().enumerate() {
            let methods = &rule["to"][0]["operation"]["methods"];
            let gets = methods
                .as_array()
                .is_some_and(|m| m.contains(&json!("GET")));
            assert_eq!(gets, i == 4, "rule {}: {rule}", i + 1);
            assert_eq!(
                ports(rule).contains(&HTTP_PORT.to_string()),
                i == 4,
                "rule {}",
                i + 1
            );
        }
        assert_eq!(
            rules[4]["from"][0]["source"]["requestPrincipals"][0],
            format!("{JWT_ISSUER}/{JWT_SUBJECT}")
        );
        let authn = &objects[1]["spec"]["jwtRules"][0];
        assert_eq!(authn["issuer"], JWT_ISSUER);
        assert_eq!(authn["audiences"][0], JWT_AUDIENCE);
        assert_eq!(authn["jwks"], r#"{"keys":[]}"#);
        for object in &objects {
            assert_eq!(object["spec"]["selector"]["matchLabels"]["app"], SERVER_APP);
        }
    }

    #[test]
    fn haproxy_forwards_l4_ports_in_tcp_mode_and_http_in_http_mode() {
        let config = haproxy_config_text(HAPROXY_IP, SERVER_IP);
        assert!(config.contains("defaults\n    mode tcp"), "{config}");
        assert!(
            config.contains("listen http\n    mode http\n    bind 10.244.0.30:8080\n"),
            "{config}"
        );
        for port in [ECHO_PORT, CRR_PORT, SINK_PORT, HTTP_PORT] {
            assert!(
                config.contains(&format!("bind 10.244.0.30:{port}")),
                "{config}"
            );
            assert!(
                config.contains(&format!("10.244.0.20:{port}\n")),
                "{config}"
            );
        }
    }

    #[test]
    fn s8s_haproxy_terminates_tls_with_the_gateways_pem_in_http_mode() {
        let config = haproxy_gateway_config_text(
            HAPROXY_IP,
            PLAIN_SERVER_IP,
            Path::new("/tmp/x/haproxy.pem"),
        );
        for want in [
            "defaults\n    mode http\n",
            "bind 10.244.0.30:80\n",
            "bind 10.244.0.30:443 ssl crt /tmp/x/haproxy.pem alpn http/1.1\n",
            "server server 10.244.0.21:8080\n",
        ] {
            assert!(config.contains(want), "{want:?} in {config}");
        }
        assert!(!config.contains("log "), "{config}");
    }

    #[test]
    fn s8s_gateway_serves_its_host_on_http_and_https_and_routes_to_the_server() {
        let objects = gateway_objects("CERT", "KEY");
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds, ["Secret", "Gateway", "VirtualService"]);
        assert_eq!(objects[0]["type"], "kubernetes.io/tls");
        assert_eq!(objects[0]["stringData"]["tls.key"], "KEY");
        let servers = objects[1]["spec"]["servers"].as_array().expect("servers");
        let ports: Vec<(u64, &str)> = servers
            .iter()
            .map(|s| {
                (
                    s["port"]["number"].as_u64().unwrap_or(0),
                    s["port"]["protocol"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(ports, [(80, "HTTP"), (443, "HTTPS")]);
        assert_eq!(servers[1]["tls"]["credentialName"], GATEWAY_SECRET);
        let route = &objects[2]["spec"];
        assert_eq!(route["gateways"][0], "istio-system/bench-gw");
        assert_eq!(route["hosts"][0], GATEWAY_HOST);
        assert_eq!(
            route["http"][0]["route"][0]["destination"]["host"],
            "bench-server.bench.svc.cluster.local"
        );
    }
}
