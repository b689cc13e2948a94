//! A node: a netns with a bridge, pods on veth pairs, a cgroup for the node's processes, a temp
//! dir, and the real `shunt-agent` and `shunt-proxy` running against them. Everything it makes
//! is named after the test and removed when it is dropped, panic or not.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::access_log::{self, AccessLog};
use crate::admin::{self, Admin, WorkloadView};
use crate::binaries::{self, Binaries};
use crate::cgroup::{self, Cgroup};
use crate::config::{self, ClusterConfig, PodConfig};
use crate::metrics::{self, Metrics};
use crate::mounts;
use crate::names::{self, Names};
use crate::netns::{self, Netns};
use crate::process::{self, Output, Placement, Process};
use crate::wait::{self, Check};

/// The bridge in the node's netns that every pod's veth joins.
const BRIDGE: &str = "br0";
/// The config file the harness writes in the agent's config dir.
pub const CONFIG_FILE: &str = "cluster.yaml";
/// The file [`Node::write_istio`] writes beside it, so a test can replace its Istio objects
/// (a hot reload) without touching the cluster's.
pub const ISTIO_FILE: &str = "istio.yaml";
/// How long the agent and proxy get to come up, and pods to be captured.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxy's drain deadline: short, so tests end quickly.
const PROXY_DRAIN_SECS: u64 = 1;
/// How long `shunt-agent --uninstall` may take.
const UNINSTALL_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Names(#[from] names::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Admin(#[from] admin::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
    #[error(transparent)]
    AccessLog(#[from] access_log::Error),
    #[error(transparent)]
    Wait(#[from] wait::Error),
    #[error("could not create {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not find a free port for the proxy's metrics: {0}")]
    Port(std::io::Error),
    #[error("the {0} is not running: start it first")]
    NotStarted(&'static str),
    #[error("`shunt-agent --uninstall` failed ({status}): {stderr}")]
    Uninstall { status: String, stderr: String },
    #[error("`iptables -t nat -S` in pod {pod}'s netns failed: {detail}")]
    NatTable { pod: String, detail: String },
    #[error(
        "pod {pod}: {ip} is not a pod address of node {node}'s subnet {subnet}/24 (use hosts \
         2-254 of it: .0 is the network, .1 the node's bridge, .255 the broadcast)"
    )]
    PodIp {
        pod: String,
        ip: Ipv4Addr,
        node: String,
        subnet: Ipv4Addr,
    },
}

/// A pod: its own netns on the node's bridge, `eth0` with a /24 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    netns: String,
    node_name: Option<String>,
}

impl Pod {
    /// The node it runs on, when its node has a name ([`NodeLayout::node_name`]): what its
    /// config's `spec.nodeName` says.
    #[must_use]
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// The netns name (`shunt-<short>-<pod>`).
    #[must_use]
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// `/run/netns/<netns>`: what the `shunt.io/netns` annotation names.
    #[must_use]
    pub fn netns_path(&self) -> PathBuf {
        netns::path_of(&self.netns)
    }

    /// `ip:port` of this pod.
    #[must_use]
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }
}

/// The agent's `--capture`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    #[default]
    Ebpf,
    Iptables,
}

impl CaptureMode {
    /// As `--capture` and `GET /status` spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Iptables => "iptables",
        }
    }
}

/// How to start the agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub capture: CaptureMode,
    /// On passes `--sockmap-shortcut` (the agent's default is off).
    pub sockmap_shortcut: bool,
    /// Appended to the command line.
    pub extra_args: Vec<String>,
}

/// How a node is laid out. The default is a node on its own, as [`Node::new`] builds it: no
/// node name, its own config dir, and a bridge with no address, so nothing leaves the node.
#[derive(Clone, Debug, Default)]
pub struct NodeLayout {
    /// The agent's `--node-name`, and the `spec.nodeName` of [`Node::pod_config`]; `None`
    /// passes neither (the agent's default, which every pod without a node name gets).
    pub node_name: Option<String>,
    /// A config dir the node shares with others (a cluster's); `None`: its own
    /// `<dir>/config`.
    pub config_dir: Option<PathBuf>,
    /// A routed pod subnet, as the network address of a /24 (`10.244.1.0`): the bridge gets
    /// `.1`, pods route through it, the node netns forwards, and [`Node::add_pod`] takes only
    /// addresses of it. `None`: pods route out of `eth0` onto the bridge and no further.
    pub pod_subnet: Option<Ipv4Addr>,
}

impl NodeLayout {
    /// The bridge's address in a routed subnet: the pods' gateway.
    #[must_use]
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.pod_subnet.map(|subnet| host_in(subnet, 1))
    }
}

/// Address `host` of the /24 whose network address is `subnet`.
#[must_use]
pub fn host_in(subnet: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// One node and everything running on it.
pub struct Node {
    names: Names,
    binaries: Binaries,
    layout: NodeLayout,
    dir: PathBuf,
    node_netns: Netns,
    cgroup: Cgroup,
    agent_cgroup: Cgroup,
    pods: Vec<Pod>,
    metrics_addr: SocketAddr,
    agent: Option<Process>,
    proxy: Option<Process>,
    agent_ever_started: bool,
    launches: AtomicUsize,
    torn_down: bool,
    /// Appended to the proxy's command line ([`Node::set_proxy_args`]).
    proxy_args: Vec<String>,
}

impl Node {
    /// A node named after `test_name`, running the binaries of [`Binaries::from_env`].
    pub fn new(test_name: &str) -> Result<Self, Error> {
        Self::with_binaries(test_name, Binaries::from_env())
    }

    /// A node named after `test_name`. Leftovers of an earlier run with the same name (a
    /// crashed test) are swept first.
    pub fn with_binaries(test_name: &str, binaries: Binaries) -> Result<Self, Error> {
        Self::with_layout(Names::new(test_name), binaries, NodeLayout::default())
    }

    /// A node with these names, laid out as `layout` says (a cluster's node: see
    /// [`crate::cluster::Cluster`]). Leftovers of an earlier run with the same names are swept
    /// first.
    pub fn with_layout(
        names: Names,
        binaries: Binaries,
        layout: NodeLayout,
    ) -> Result<Self, Error> {
        let swept = sweep_stale(&names, &binaries);
        if !swept.is_empty() {
            eprintln!(
                "shunt harness: swept leftovers of an earlier run of {}: {}",
                names.prefix(),
                swept.join("; ")
            );
        }
        let dir = names.temp_dir();
        let own_config = layout.config_dir.is_none().then_some("config");
        for sub in own_config.into_iter().chain(["run", "logs"]) {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| Error::Dir { path, source })?;
        }
        // The node exists (and cleans up on drop) from here on, even if a later step fails.
        let mut node = Self {
            node_netns: Netns::create(&names.node_netns())?,
            cgroup: Cgroup::named(&names.node_cgroup())?,
            agent_cgroup: Cgroup::named(&names.agent_cgroup())?,
            names,
            binaries,
            layout,
            dir,
            pods: Vec::new(),
            metrics_addr: free_local_port()?,
            agent: None,
            proxy: None,
            agent_ever_started: false,
            proxy_args: Vec::new(),
            launches: AtomicUsize::new(0),
            torn_down: false,
        };
        node.cgroup = Cgroup::create(&node.names.node_cgroup())?;
        node.agent_cgroup = Cgroup::create(&node.names.agent_cgroup())?;
        node.node_netns
            .ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        if let Some(gateway) = node.layout.gateway() {
            node.node_netns
                .ip(&["addr", "add", &format!("{gateway}/24"), "dev", BRIDGE])?;
            node.node_netns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        node.node_netns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(node)
    }

    /// How the node is laid out.
    #[must_use]
    pub fn layout(&self) -> &NodeLayout {
        &self.layout
    }

    /// The agent's `--node-name` ([`NodeLayout::node_name`]).
    #[must_use]
    pub fn node_name(&self) -> Option<&str> {
        self.layout.node_name.as_deref()
    }

    /// The node's netns, holding the pods' bridge (`br0`).
    #[must_use]
    pub fn node_netns(&self) -> &Netns {
        &self.node_netns
    }

    #[must_use]
    pub fn names(&self) -> &Names {
        &self.names
    }

    #[must_use]
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The node's temp dir (config/ unless shared, run/, logs/).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent's `--config-dir`: [`NodeLayout::config_dir`], else `<dir>/config`.
    #[must_use]
    pub fn config_dir(&self) -> PathBuf {
        self.layout
            .config_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("config"))
    }

    /// The agent's `--run-dir` (control.sock, admin.sock).
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Where every process's stdout and stderr go.
    #[must_use]
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The cgroup the pods and the proxy run in, and the agent attaches capture to.
    #[must_use]
    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    /// The agent's `--instance`.
    #[must_use]
    pub fn instance(&self) -> String {
        self.names.instance()
    }

    /// The proxy's `--metrics-addr`.
    #[must_use]
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    #[must_use]
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A client of the agent's admin socket.
    #[must_use]
    pub fn admin(&self) -> Admin {
        Admin::new(self.run_dir().join("admin.sock"))
    }

    /// Creates a pod: netns `shunt-<short>-<name>`, `eth0` with `ip/24` on the node's bridge,
    /// and a default route out of `eth0`, as a Kubernetes pod has: a Service ClusterIP must be
    /// routable for `connect()` to get as far as iptables' REDIRECT (eBPF capture rewrites it
    /// before routing). Nothing answers beyond the bridge, so no traffic leaves the node. With
    /// a routed [`NodeLayout::pod_subnet`], `ip` must be one of it, and the default route goes
    /// through the bridge's address, which the node netns routes on (to other nodes' pods).
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<Pod, Error> {
        if let Some(subnet) = self.layout.pod_subnet {
            let host = ip.octets()[3];
            if host_in(subnet, 0) != host_in(ip, 0) || matches!(host, 0 | 1 | 255) {
                return Err(Error::PodIp {
                    pod: name.to_owned(),
                    ip,
                    node: self.node_name().unwrap_or("(unnamed)").to_owned(),
                    subnet,
                });
            }
        }
        let netns_name = self.names.pod_netns(name)?;
        let netns = Netns::create(&netns_name)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            netns: netns_name.clone(),
            node_name: self.layout.node_name.clone(),
        };
        self.pods.push(pod.clone());
        // Interface names are per netns; this one lives in the node's, next to the bridge.
        let node_side = format!("veth{}", self.pods.len());
        self.node_netns.ip(&[
            "link",
            "add",
            &node_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns_name,
        ])?;
        self.node_netns
            .ip(&["link", "set", &node_side, "master", BRIDGE, "up"])?;
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        match self.layout.gateway() {
            Some(gateway) => {
                netns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            }
            None => netns.ip(&["route", "add", "default", "dev", "eth0"])?,
        }
        Ok(pod)
    }

    /// Creates a pod's netns and nothing in it (netns `shunt-<short>-<name>`, loopback up):
    /// a sandbox for a CNI plugin chain to wire up, as a runtime's. It is the node's pod
    /// (cleaned up with it, [`Node::spawn_in_pod`] places processes in it).
    pub fn add_bare_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<Pod, Error> {
        let netns_name = self.names.pod_netns(name)?;
        Netns::create(&netns_name)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            netns: netns_name,
            node_name: self.layout.node_name.clone(),
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// The pod as a config object in `namespace`, with its IP and netns annotation filled in,
    /// and `spec.nodeName` when the node has a name.
    #[must_use]
    pub fn pod_config(&self, pod: &Pod, namespace: &str) -> PodConfig {
        let config = PodConfig::new(namespace, &pod.name, pod.ip, &pod.netns_path());
        match pod.node_name() {
            Some(node_name) => config.on_node(node_name),
            None => config,
        }
    }

    /// Writes (or replaces) the agent's config file, [`CONFIG_FILE`].
    pub fn write_config(&self, config: &ClusterConfig) -> Result<PathBuf, Error> {
        Ok(config.write(&self.config_dir(), CONFIG_FILE)?)
    }

    /// Writes (or replaces) `<config dir>/<file_name>` with YAML written elsewhere (e.g. a
    /// shipped example whose `shunt.io/netns` values were filled in from [`Pod::netns_path`]).
    pub fn write_config_text(&self, file_name: &str, yaml: &str) -> Result<PathBuf, Error> {
        Ok(config::write_atomically(
            &self.config_dir(),
            file_name,
            yaml,
        )?)
    }

    /// Writes (or replaces) [`ISTIO_FILE`] with `objects` (see [`crate::istio`]); the agent's
    /// watcher picks it up. An empty list leaves a file with no objects (all removed).
    pub fn write_istio(&self, objects: &[serde_json::Value]) -> Result<PathBuf, Error> {
        let config = objects.iter().fold(ClusterConfig::new(), |config, object| {
            config.raw(object.clone())
        });
        self.write_config_text(ISTIO_FILE, &config.render())
    }

    fn next_label(&self, what: &str) -> String {
        let n = self.launches.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{n:03}-{what}")
    }

    /// Starts `shunt-agent` in local mode and waits until its admin API answers.
    pub fn start_agent(&mut self, options: &AgentOptions) -> Result<(), Error> {
        let mut command = Command::new(self.binaries.agent()?);
        command
            .arg("--config-dir")
            .arg(self.config_dir())
            .args(["--instance", &self.names.instance()])
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg(format!("--capture={}", options.capture.name()));
        if let Some(node_name) = &self.layout.node_name {
            command.args(["--node-name", node_name]);
        }
        if options.capture == CaptureMode::Ebpf {
            command.arg("--cgroup").arg(self.cgroup.path());
        }
        if options.sockmap_shortcut {
            command.arg("--sockmap-shortcut");
        }
        command.args(&options.extra_args);
        let placement = Placement {
            netns: None,
            cgroup: Some(self.agent_cgroup.path().to_path_buf()),
        };
        let label = self.next_label("agent");
        self.agent = Some(Process::spawn(
            &label,
            command,
            &placement,
            &self.log_dir(),
        )?);
        self.agent_ever_started = true;
        let admin = self.admin();
        self.wait_while_running(
            "the agent's admin API to answer",
            START_TIMEOUT,
            |_| match admin.status() {
                Ok(_) => Check::Done(()),
                Err(e) => Check::NotYet(e.to_string()),
            },
        )
    }

    /// `shunt-agent --uninstall` for this node's instance and run dir (through the agent when
    /// it runs).
    pub fn uninstall(&self) -> Result<(), Error> {
        uninstall(&self.names, &self.binaries, Some(&self.run_dir()))
    }

    /// `iptables -t nat -S` in `pod`'s netns (entered with nsenter, which keeps /sys).
    pub fn nat_table(&self, pod: &Pod) -> Result<String, Error> {
        let failed = |detail: String| Error::NatTable {
            pod: pod.name.clone(),
            detail,
        };
        let output = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns_path().display()))
            .args(["iptables", "-w", "5", "-t", "nat", "-S"])
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            return Err(failed(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// SIGKILLs the agent (capture stays pinned; the proxy keeps its state).
    pub fn kill_agent(&mut self) -> Result<(), Error> {
        let agent = self.agent.as_mut().ok_or(Error::NotStarted("agent"))?;
        agent.kill();
        Ok(())
    }

    /// SIGTERMs the agent and waits for it to exit (capture stays pinned).
    pub fn stop_agent(&mut self) -> Result<(), Error> {
        let agent = self.agent.as_mut().ok_or(Error::NotStarted("agent"))?;
        agent.stop(STOP_GRACE);
        Ok(())
    }

    /// Starts `shunt-proxy` (root netns, node cgroup) and waits until its metrics answer.
    pub fn start_proxy(&mut self) -> Result<(), Error> {
        let mut command = Command::new(self.binaries.proxy()?);
        command
            .arg("--control-socket")
            .arg(self.run_dir().join("control.sock"))
            .arg("--metrics-addr")
            .arg(self.metrics_addr.to_string())
            .arg("--drain-timeout")
            .arg(PROXY_DRAIN_SECS.to_string())
            .args(&self.proxy_args);
        // In the node's cgroup, so the getsockopt and sock_ops programs see its sockets.
        let placement = Placement {
            netns: None,
            cgroup: Some(self.cgroup.path().to_path_buf()),
        };
        let label = self.next_label("proxy");
        self.proxy = Some(Process::spawn(
            &label,
            command,
            &placement,
            &self.log_dir(),
        )?);
        let addr = self.metrics_addr;
        self.wait_while_running(
            "the proxy's metrics endpoint to answer",
            START_TIMEOUT,
            |_| match Metrics::scrape(addr) {
                Ok(_) => Check::Done(()),
                Err(e) => Check::NotYet(e.to_string()),
            },
        )
    }

    /// SIGTERMs the proxy and waits for it to exit (its listeners in the pods' netns close
    /// with it); [`Node::start_proxy`] starts another.
    pub fn stop_proxy(&mut self) -> Result<(), Error> {
        let mut proxy = self.proxy.take().ok_or(Error::NotStarted("proxy"))?;
        proxy.stop(STOP_GRACE + Duration::from_secs(PROXY_DRAIN_SECS));
        Ok(())
    }

    /// The first half of a proxy rollout: starts another `shunt-proxy` beside the running
    /// one (on a new metrics address, which [`Node::metrics`] scrapes from then on) and
    /// returns the old one, still running, for the test to stop.
    pub fn start_next_proxy(&mut self) -> Result<Process, Error> {
        let old = self.proxy.take().ok_or(Error::NotStarted("proxy"))?;
        self.metrics_addr = free_local_port()?;
        self.start_proxy()?;
        Ok(old)
    }

    /// Extra arguments for every later [`Node::start_proxy`] (e.g. its CA client flags).
    pub fn set_proxy_args(&mut self, args: Vec<String>) {
        self.proxy_args = args;
    }

    /// The agent process, if started.
    pub fn agent_process(&mut self) -> Option<&mut Process> {
        self.agent.as_mut()
    }

    /// The proxy process, if started.
    pub fn proxy_process(&mut self) -> Option<&mut Process> {
        self.proxy.as_mut()
    }

    /// Waits until every pod in `pods` is captured with its proxy listeners ready; returns the
    /// agent's view of them, in the order given.
    pub fn wait_captured(&mut self, pods: &[&Pod]) -> Result<Vec<WorkloadView>, Error> {
        let admin = self.admin();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        self.wait_while_running(
            &format!("pods {names:?} to be captured with proxy ready"),
            START_TIMEOUT,
            |_| {
                let workloads = match admin.workloads() {
                    Ok(workloads) => workloads,
                    Err(e) => return Check::NotYet(e.to_string()),
                };
                let found: Vec<Option<&WorkloadView>> = names
                    .iter()
                    .map(|name| workloads.iter().find(|w| w.name == *name))
                    .collect();
                if found.iter().all(|w| w.is_some_and(WorkloadView::is_ready)) {
                    Check::Done(found.into_iter().flatten().cloned().collect())
                } else {
                    Check::NotYet(format!("{workloads:?}"))
                }
            },
        )
    }

    /// Waits until `check` (given the node, for its admin API, metrics and logs) is done,
    /// failing early with their logs when the agent or the proxy (whichever was started) dies.
    pub fn wait_while_running<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Check<T>,
    ) -> Result<T, Error> {
        Ok(wait::until(what, timeout, || {
            for process in [self.agent.as_mut(), self.proxy.as_mut()]
                .into_iter()
                .flatten()
            {
                match process.exit_status() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        return Check::Abort(format!(
                            "{} exited ({status})\n{}",
                            process.label(),
                            process.tail()
                        ));
                    }
                    Err(e) => return Check::Abort(e.to_string()),
                }
            }
            check(self)
        })?)
    }

    /// One scrape of the proxy's metrics.
    pub fn metrics(&self) -> Result<Metrics, Error> {
        Ok(Metrics::scrape(self.metrics_addr)?)
    }

    /// Waits until the metrics satisfy `ready`; returns that scrape.
    pub fn wait_metrics(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics, Error> {
        self.wait_while_running(what, timeout, |node| match node.metrics() {
            Ok(metrics) if ready(&metrics) => Check::Done(metrics),
            Ok(metrics) => Check::NotYet(metrics.describe("istio_tcp_connections_opened_total")),
            Err(e) => Check::NotYet(e.to_string()),
        })
    }

    /// The proxy's access log so far.
    pub fn access_log(&self) -> Result<AccessLog, Error> {
        let proxy = self.proxy.as_ref().ok_or(Error::NotStarted("proxy"))?;
        Ok(AccessLog::read(proxy.stdout_path())?)
    }

    /// Waits until the access log satisfies `ready`; returns that read.
    pub fn wait_access_log(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&AccessLog) -> bool,
    ) -> Result<AccessLog, Error> {
        self.wait_while_running(what, timeout, |node| match node.access_log() {
            Ok(log) if ready(&log) => Check::Done(log),
            Ok(log) => Check::NotYet(log.describe()),
            Err(e) => Check::NotYet(e.to_string()),
        })
    }

    /// Starts `command` inside `pod` (its netns) and the node's cgroup (so capture applies).
    pub fn spawn_in_pod(&self, pod: &Pod, what: &str, command: Command) -> Result<Process, Error> {
        let placement = Placement {
            netns: Some(pod.netns_path()),
            cgroup: Some(self.cgroup.path().to_path_buf()),
        };
        let label = self.next_label(&format!("{}-{what}", pod.name));
        Ok(Process::spawn(
            &label,
            command,
            &placement,
            &self.log_dir(),
        )?)
    }

    /// Starts `shunt-testpod ARGS` inside `pod`.
    pub fn testpod(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut command = Command::new(self.binaries.testpod()?);
        command.args(args);
        self.spawn_in_pod(pod, args.first().copied().unwrap_or("testpod"), command)
    }

    /// Starts a `shunt-testpod` server inside `pod` and waits until it listens.
    pub fn start_server(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut server = self.testpod(pod, args)?;
        server.wait_for_line("ready", START_TIMEOUT)?;
        Ok(server)
    }

    /// Starts `shunt-httppod ARGS` inside `pod`.
    pub fn httppod(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut command = Command::new(self.binaries.httppod()?);
        command.args(args);
        let what = format!("http-{}", args.first().copied().unwrap_or("pod"));
        self.spawn_in_pod(pod, &what, command)
    }

    /// Starts a `shunt-httppod serve` inside `pod` and waits until it listens.
    pub fn start_httppod_server(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut server = self.httppod(pod, args)?;
        server.wait_for_line("ready", START_TIMEOUT)?;
        Ok(server)
    }

    /// Runs a `shunt-httppod` client inside `pod` to completion (killed after `timeout`).
    pub fn run_httppod(
        &self,
        pod: &Pod,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        Ok(self.httppod(pod, args)?.finish(timeout)?)
    }

    /// Runs the `shunt-httppod` client `args` in `pod` again and again until its JSON report
    /// satisfies `ready` (e.g. the proxy applied a new VirtualService); returns that report.
    pub fn poll_httppod(
        &mut self,
        pod: &Pod,
        args: &[&str],
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Error> {
        self.wait_while_running(what, timeout, |node| {
            let report = node
                .run_httppod(pod, args, timeout)
                .map_err(|e| e.to_string())
                .and_then(|output| output.json().map_err(|e| e.to_string()));
            match report {
                Ok(report) if ready(&report) => Check::Done(report),
                Ok(report) => Check::NotYet(report.to_string()),
                Err(e) => Check::NotYet(e),
            }
        })
    }

    /// Runs a `shunt-testpod` client inside `pod` to completion (killed after `timeout`).
    pub fn run_testpod(
        &self,
        pod: &Pod,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        Ok(self.testpod(pod, args)?.finish(timeout)?)
    }

    /// Stops everything and removes everything this node made. Returns what could not be
    /// cleaned (empty when all went). Dropping the node does the same, silently unless a
    /// step fails.
    pub fn teardown(mut self) -> Vec<String> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Some(mut proxy) = self.proxy.take() {
            proxy.stop(STOP_GRACE + Duration::from_secs(PROXY_DRAIN_SECS));
        }
        if let Some(mut agent) = self.agent.take() {
            agent.stop(STOP_GRACE);
        }
        if self.agent_ever_started {
            if let Err(e) = uninstall(&self.names, &self.binaries, Some(&self.run_dir())) {
                problems.push(e.to_string());
            }
        }
        problems.extend(remove_pins(&self.names).err());
        for cgroup in [&self.cgroup, &self.agent_cgroup] {
            if let Err(e) = cgroup.remove() {
                problems.push(e.to_string());
            }
        }
        for pod in &self.pods {
            if let Err(e) = netns::delete(&pod.netns) {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = self.node_netns.delete() {
            problems.push(e.to_string());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("could not remove {}: {e}", self.dir.display()));
        }
        problems
    }

    /// Prints the last lines of every log of this node to stderr.
    pub fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if text.is_empty() {
                continue;
            }
            eprintln!(
                "----- {} (last {} lines) -----\n{}",
                path.display(),
                process::TAIL_LINES,
                process::tail_of(&text, process::TAIL_LINES)
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "shunt harness: node {} failed; its logs:",
                self.names.prefix()
            );
            self.print_logs();
        }
        let problems = self.cleanup();
        for problem in problems {
            eprintln!(
                "shunt harness: cleanup of {}: {problem}",
                self.names.prefix()
            );
        }
    }
}

/// Removes what a previous run of the same test left behind (a crashed or killed test run):
/// processes in its cgroups, its pins, its netns and its temp dir. Returns what it removed or
/// failed to remove.
#[must_use]
pub fn sweep_stale(names: &Names, binaries: &Binaries) -> Vec<String> {
    let mut report = Vec::new();
    for name in [names.agent_cgroup(), names.node_cgroup()] {
        match Cgroup::named(&name) {
            Ok(cgroup) if cgroup.exists() => match cgroup.remove() {
                Ok(()) => report.push(format!("cgroup {}", cgroup.path().display())),
                Err(e) => report.push(e.to_string()),
            },
            Ok(_) => {}
            Err(e) => report.push(e.to_string()),
        }
    }
    if pin_dir(names).is_some_and(|dir| dir.exists()) {
        match uninstall(names, binaries, None) {
            Ok(()) => report.push(format!("pins of instance {}", names.instance())),
            Err(e) => report.push(e.to_string()),
        }
        if let Err(e) = remove_pins(names) {
            report.push(e);
        }
    }
    match netns::list() {
        Ok(all) => {
            for name in all.iter().filter(|n| names.owns_netns(n)) {
                match netns::delete(name) {
                    Ok(()) => report.push(format!("netns {name}")),
                    Err(e) => report.push(e.to_string()),
                }
            }
        }
        Err(e) => report.push(e.to_string()),
    }
    let dir = names.temp_dir();
    if dir.exists() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.push(format!("dir {}", dir.display())),
            Err(e) => report.push(format!("could not remove {}: {e}", dir.display())),
        }
    }
    report
}

/// `<bpffs>/shunt/<instance>`, when bpffs is mounted.
fn pin_dir(names: &Names) -> Option<PathBuf> {
    mounts::bpffs()
        .ok()
        .flatten()
        .map(|bpffs| bpffs.join("shunt").join(names.instance()))
}

/// `shunt-agent --uninstall` for the node's instance.
fn uninstall(names: &Names, binaries: &Binaries, run_dir: Option<&Path>) -> Result<(), Error> {
    let mut command = Command::new(binaries.agent()?);
    command.args(["--uninstall", "--instance", &names.instance()]);
    if let Some(run_dir) = run_dir {
        command.arg("--run-dir").arg(run_dir);
    }
    let log_dir = std::env::temp_dir();
    let label = format!("{}-uninstall-{}", names.prefix(), std::process::id());
    let output =
        Process::spawn(&label, command, &Placement::default(), &log_dir)?.finish(UNINSTALL_TIMEOUT);
    for stream in ["stdout", "stderr"] {
        let _gone = std::fs::remove_file(log_dir.join(format!("{label}.{stream}")));
    }
    let output = output?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Uninstall {
            status: output.status.to_string(),
            stderr: output.stderr,
        })
    }
}

/// Removes the pin folder if anything is left in it (unpinning detaches what it pinned).
fn remove_pins(names: &Names) -> Result<(), String> {
    let Some(dir) = pin_dir(names) else {
        return Ok(());
    };
    if !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| format!("pins left in {} could not be removed: {e}", dir.display()))?;
    Err(format!(
        "`shunt-agent --uninstall` left pins in {}; removed them",
        dir.display()
    ))
}

pub fn free_local_port() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::Port)?;
    listener.local_addr().map_err(Error::Port)
}
