//! The scenarios and the node each one runs on. Every scenario gets its own node (netns,
//! cgroup, agent instance), all alive at once, so repetitions can interleave scenarios
//! without restarting anything between them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use shunt_tests::wait::Check;
use shunt_tests::{
    AgentOptions, Binaries, CaptureMode, ClusterConfig, NamespaceConfig, Node, Pod, Process,
    ServiceConfig,
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const HAPROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 30);
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
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to SIGKILL when a forwarder is restarted (the harness's proxy drains for 1 s).
const FORWARDER_STOP: Duration = Duration::from_secs(5);
const MESH_NAMESPACE: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Iptables,
    Ebpf,
    EbpfSockmap,
    Haproxy,
}

impl Scenario {
    pub const ALL: [Self; 5] = [
        Self::Direct,
        Self::Iptables,
        Self::Ebpf,
        Self::EbpfSockmap,
        Self::Haproxy,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::Direct => "S0",
            Self::Iptables => "S1",
            Self::Ebpf => "S2",
            Self::EbpfSockmap => "S3",
            Self::Haproxy => "S4",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iptables => "iptables",
            Self::Ebpf => "eBPF",
            Self::EbpfSockmap => "eBPF+sockmap",
            Self::Haproxy => "HAProxy",
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
        }
    }

    /// Whether a shunt-proxy carries the traffic (so proxy cost rows apply).
    pub fn runs_shunt(self) -> bool {
        matches!(self, Self::Iptables | Self::Ebpf | Self::EbpfSockmap)
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
        Scenario::Direct | Scenario::Ebpf | Scenario::EbpfSockmap => None,
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

/// One scenario's running node: client and server pods, the server, and its forwarder.
pub struct Deployment {
    pub scenario: Scenario,
    pub node: Node,
    pub client: Pod,
    server: Pod,
    pub targets: Targets,
    pub loadgen: PathBuf,
    _server: Process,
    haproxy: Option<Process>,
    haproxy_config: Option<PathBuf>,
}

impl Deployment {
    /// Builds the node, starts capture (S1–S3) or HAProxy (S4), and the server; returns once
    /// the client can reach the server through the scenario's path.
    pub fn start(
        scenario: Scenario,
        plan: &str,
        binaries: &Binaries,
        loadgen: &Path,
    ) -> Result<Self> {
        let mut node = Node::with_binaries(&scenario.node_name(plan), binaries.clone())?;
        let client = node.add_pod("client", CLIENT_IP)?;
        let server = node.add_pod("server", SERVER_IP)?;
        let mut targets = Targets::at(SERVER_IP);
        let mut haproxy = None;
        let mut haproxy_config_path = None;
        match scenario {
            Scenario::Direct => {}
            Scenario::Iptables | Scenario::Ebpf | Scenario::EbpfSockmap => {
                node.write_config(
                    &ClusterConfig::new()
                        .namespace(&NamespaceConfig::injected(MESH_NAMESPACE))
                        .pod(&node.pod_config(&client, MESH_NAMESPACE))
                        .pod(
                            &node
                                .pod_config(&server, MESH_NAMESPACE)
                                .label("app", SERVER_APP),
                        )
                        .service(
                            &ServiceConfig::new(MESH_NAMESPACE, SERVER_APP, SERVICE_IP)
                                .select("app", SERVER_APP)
                                .port("http", SERVICE_HTTP_PORT, HTTP_PORT),
                        ),
                )?;
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
                targets.http = SocketAddr::V4(SocketAddrV4::new(SERVICE_IP, SERVICE_HTTP_PORT));
            }
            Scenario::Haproxy => {
                let lb = node.add_pod("haproxy", HAPROXY_IP)?;
                let config = node.dir().join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(HAPROXY_IP, SERVER_IP))
                    .with_context(|| format!("could not write {}", config.display()))?;
                haproxy = Some(spawn_haproxy(&node, &lb, &config)?);
                haproxy_config_path = Some(config);
                targets = Targets::at(HAPROXY_IP);
            }
        }
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
        let mut server_process = node.spawn_in_pod(&server, "loadgen-serve", serve)?;
        server_process.wait_for_line("ready", READY_TIMEOUT)?;
        let deployment = Self {
            scenario,
            node,
            client,
            server,
            targets,
            loadgen: loadgen.to_path_buf(),
            _server: server_process,
            haproxy,
            haproxy_config: haproxy_config_path,
        };
        deployment.wait_reachable()?;
        Ok(deployment)
    }

    /// Waits until the client can connect to every target, and the HTTP server answers a
    /// request through the scenario's path.
    fn wait_reachable(&self) -> Result<()> {
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
            }
            let output = self
                .node
                .spawn_in_pod(&self.client, "loadgen-wait", wait)?
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

    /// Replaces the forwarder with a fresh process and waits until it carries traffic again.
    /// A memory measurement starts from there: a process that already ran other workloads
    /// keeps freed memory in its allocator, and new connections reuse it unseen.
    pub fn restart_forwarder(&mut self) -> Result<()> {
        if self.scenario.runs_shunt() {
            if let Some(old) = self.node.proxy_process() {
                old.stop(FORWARDER_STOP);
            }
            self.node.start_proxy()?;
            let pid = self.node.proxy_process().map(|p| u64::from(p.pid()));
            let admin = self.node.admin();
            // Once the agent reports the new proxy, it has marked every pod pending again,
            // so waiting for them to be captured waits for the new proxy's listeners.
            self.node.wait_while_running(
                "the agent to serve the restarted proxy",
                READY_TIMEOUT,
                |_| match admin.status() {
                    Ok(status) if status["proxy"]["pid"].as_u64() == pid => Check::Done(()),
                    Ok(status) => Check::NotYet(status["proxy"].to_string()),
                    Err(e) => Check::NotYet(e.to_string()),
                },
            )?;
            self.node.wait_captured(&[&self.client, &self.server])?;
        } else if let (Some(haproxy), Some(config)) = (&mut self.haproxy, &self.haproxy_config) {
            haproxy.stop(FORWARDER_STOP);
            let lb = self
                .node
                .pods()
                .iter()
                .find(|p| p.ip == HAPROXY_IP)
                .cloned()
                .context("the HAProxy pod is gone")?;
            self.haproxy = Some(spawn_haproxy(&self.node, &lb, config)?);
        }
        self.wait_reachable()
    }

    /// The PID of the process that forwards this scenario's traffic (none for S0).
    pub fn forwarder_pid(&mut self) -> Option<u32> {
        if self.scenario.runs_shunt() {
            return self.node.proxy_process().map(|p| p.pid());
        }
        self.haproxy.as_ref().map(Process::pid)
    }

    /// Stops everything and removes the node; returns what could not be removed.
    pub fn teardown(mut self) -> Vec<String> {
        if let Some(mut haproxy) = self.haproxy.take() {
            haproxy.kill();
        }
        self.node.teardown()
    }
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
fn haproxy_config(listen: Ipv4Addr, server: Ipv4Addr) -> String {
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
    fn haproxy_forwards_l4_ports_in_tcp_mode_and_http_in_http_mode() {
        let config = haproxy_config(HAPROXY_IP, SERVER_IP);
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
}
