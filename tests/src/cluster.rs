//! A cluster: N [`Node`]s, each with its own agent and proxy (`--node-name node-<i>`), all
//! reading one shared config dir, and joined by an underlay network; plus a packet capture of
//! that underlay.
//!
//! Layout of a cluster named after test `T` (`short` as for a node, see [`crate::names`]):
//! - node `i` is a [`Node`] named `shunt-<short>-n<i>` (its netns, cgroups, agent instance and
//!   temp dir), with pods in `10.244.<i>.0/24`: the node's bridge is `10.244.<i>.1`, the pods'
//!   gateway, and the node netns forwards. Node 0 has the subnet a single node uses;
//! - netns `shunt-<short>-underlay` (the "network") with bridge `br0` (`192.168.200.1/24`, the
//!   capture's own address) and a veth `n<i>` to each node, whose end in the node netns is
//!   `uplink` with `192.168.200.<10+i>/24`; each node netns routes every other node's pod
//!   subnet through that node's uplink address;
//! - cgroup `<cgroup2>/shunt-<short>-cluster` for the cluster's own processes (tcpdump);
//! - temp dir `$TMPDIR/shunt-<short>` with `config/` (every agent's `--config-dir`), `logs/`
//!   and the captures' pcap files.
//!
//! Nothing routes out of these namespaces: the nodes have no default route, and the pods'
//! default route ends at their node. Everything is removed when the [`Cluster`] is dropped,
//! panic or not, and swept at the start when a crashed earlier run left it behind.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::admin::WorkloadView;
use crate::binaries::{self, Binaries};
use crate::cgroup::{self, Cgroup};
use crate::config::{self, ClusterConfig, PodConfig};
use crate::names::Names;
use crate::netns::{self, Netns};
use crate::node::{self, AgentOptions, CONFIG_FILE, ISTIO_FILE, Node, NodeLayout, Pod};
use crate::process::{self, Output, Placement, Process};
use crate::wait::{self, Check};

/// The file [`Cluster::start_with_mtls`] writes the node-token Secret to.
pub const CA_FILE: &str = "ca.yaml";

/// The local-mode Secret of node bearer tokens the agent's CA authenticates nodes with
/// (`istio-system/shunt-node-tokens`, a key per node name).
fn node_tokens_secret(tokens: &[(String, String)]) -> String {
    let data: String = tokens
        .iter()
        .map(|(node, token)| format!("  {node}: {token}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: shunt-node-tokens, namespace: istio-system}}\nstringData:\n{data}"
    )
}

/// At most this many nodes: underlay addresses and sweeps are laid out for them.
pub const MAX_NODES: usize = 8;
/// The bridge of the underlay netns.
const UNDERLAY_BRIDGE: &str = "br0";
/// Each node's veth onto the underlay, inside the node netns.
pub const UPLINK: &str = "uplink";
/// The underlay bridge's own address: where the capture's fences come from.
pub const UNDERLAY_BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
/// How long tcpdump gets to start capturing, and a fence to come through.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(15);
/// The discard port: a fence is answered (ICMP port unreachable) by the node, not served.
const FENCE_PORT: u16 = 9;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Wait(#[from] wait::Error),
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    #[error("a cluster has 1-{MAX_NODES} nodes, not {0}")]
    NodeCount(usize),
    #[error("the cluster has no node {index} (it has {count})")]
    NoNode { index: usize, count: usize },
    #[error("pod {0} already exists in the cluster: pod names are unique across its nodes")]
    DuplicatePod(String),
    #[error("pod {pod} is not on a node of this cluster (node name {node:?})")]
    ForeignPod { pod: String, node: Option<String> },
    #[error("could not create {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tcpdump not found in PATH, /usr/sbin or /sbin: `cargo xtask setup` installs it \
         (Debian package tcpdump)"
    )]
    NoTcpdump,
    #[error("could not read the capture {}: {source}", path.display())]
    ReadPcap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not send a fence from the underlay netns to {to}: {source}")]
    Fence {
        to: SocketAddrV4,
        source: std::io::Error,
    },
}

/// N nodes on one underlay, reading one config dir.
pub struct Cluster {
    names: Names,
    binaries: Binaries,
    dir: PathBuf,
    network: Netns,
    cgroup: Cgroup,
    nodes: Vec<Node>,
    captures: AtomicUsize,
    /// Processes started by [`Cluster::spawn_uncaptured`], for their labels.
    launches: AtomicUsize,
    torn_down: bool,
    /// Appended to every proxy's command line by [`Cluster::start_with_mtls`].
    proxy_args: Vec<String>,
}

impl Cluster {
    /// The name of node `index`: its agent's `--node-name` and its pods' `spec.nodeName`.
    #[must_use]
    pub fn node_name(index: usize) -> String {
        format!("node-{index}")
    }

    /// Node `index`'s pod subnet, `10.244.<index>.0/24`, as its network address.
    #[must_use]
    pub fn pod_subnet(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(index), 0)
    }

    /// `10.244.<index>.<host>`: a pod address of node `index`.
    #[must_use]
    pub fn pod_ip(index: usize, host: u8) -> Ipv4Addr {
        node::host_in(Self::pod_subnet(index), host)
    }

    /// Node `index`'s address on the underlay, `192.168.200.<10+index>`.
    #[must_use]
    pub fn underlay_ip(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 200, 10 + octet(index))
    }

    /// A cluster of `count` nodes named after `test_name`, running the binaries of
    /// [`Binaries::from_env`].
    pub fn new(test_name: &str, count: usize) -> Result<Self, Error> {
        Self::with_binaries(test_name, count, Binaries::from_env())
    }

    /// A cluster of `count` nodes (1 to [`MAX_NODES`]) named after `test_name`, joined by the
    /// underlay. No agent or proxy runs yet ([`Cluster::start`]). Leftovers of an earlier run
    /// with the same name are swept first.
    pub fn with_binaries(test_name: &str, count: usize, binaries: Binaries) -> Result<Self, Error> {
        if !(1..=MAX_NODES).contains(&count) {
            return Err(Error::NodeCount(count));
        }
        let names = Names::new(test_name);
        let swept = sweep_stale(&names, &binaries);
        if !swept.is_empty() {
            eprintln!(
                "shunt harness: swept leftovers of an earlier run of {test_name}: {}",
                swept.join("; ")
            );
        }
        let dir = names.temp_dir();
        for sub in ["config", "logs"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| Error::Dir { path, source })?;
        }
        // The cluster exists (and cleans up on drop) from here on, even if a later step fails.
        let mut cluster = Self {
            network: Netns::create(&names.underlay_netns())?,
            cgroup: Cgroup::named(&names.cluster_cgroup())?,
            names,
            binaries,
            dir,
            nodes: Vec::new(),
            captures: AtomicUsize::new(0),
            launches: AtomicUsize::new(0),
            torn_down: false,
            proxy_args: Vec::new(),
        };
        cluster.cgroup = Cgroup::create(&cluster.names.cluster_cgroup())?;
        let network = &cluster.network;
        network.ip(&["link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
        network.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_BRIDGE_IP}/24"),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        network.ip(&["link", "set", UNDERLAY_BRIDGE, "up"])?;
        for index in 0..count {
            let layout = NodeLayout {
                node_name: Some(Self::node_name(index)),
                config_dir: Some(cluster.config_dir()),
                pod_subnet: Some(Self::pod_subnet(index)),
            };
            let node = Node::with_layout(
                cluster.names.cluster_node(index),
                cluster.binaries.clone(),
                layout,
            )?;
            cluster.nodes.push(node);
            cluster.join_underlay(index)?;
        }
        for (index, node) in cluster.nodes.iter().enumerate() {
            for other in (0..count).filter(|&other| other != index) {
                node.node_netns().ip(&[
                    "route",
                    "add",
                    &format!("{}/24", Self::pod_subnet(other)),
                    "via",
                    &Self::underlay_ip(other).to_string(),
                    "dev",
                    UPLINK,
                ])?;
            }
        }
        Ok(cluster)
    }

    /// A veth from the underlay bridge (`n<index>`) to node `index`'s netns (`uplink`).
    fn join_underlay(&self, index: usize) -> Result<(), Error> {
        let node_netns = self.nodes[index].node_netns();
        let port = format!("n{index}");
        self.network.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK,
            "netns",
            node_netns.name(),
        ])?;
        self.network
            .ip(&["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"])?;
        node_netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::underlay_ip(index)),
            "dev",
            UPLINK,
        ])?;
        node_netns.ip(&["link", "set", UPLINK, "up"])?;
        Ok(())
    }

    #[must_use]
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The cluster's temp dir (config/, logs/, pcap files).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every agent's `--config-dir`.
    #[must_use]
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Where the cluster's own processes (tcpdump) write their output.
    #[must_use]
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The underlay netns (the "network"), holding the bridge every node is on.
    #[must_use]
    pub fn network_netns(&self) -> &Netns {
        &self.network
    }

    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> Result<&Node, Error> {
        let count = self.nodes.len();
        self.nodes.get(index).ok_or(Error::NoNode { index, count })
    }

    /// Node `index`, to start or stop its processes.
    pub fn node_mut(&mut self, index: usize) -> Result<&mut Node, Error> {
        let count = self.nodes.len();
        self.nodes
            .get_mut(index)
            .ok_or(Error::NoNode { index, count })
    }

    /// The index of the node `pod` is on.
    pub fn index_of(&self, pod: &Pod) -> Result<usize, Error> {
        self.nodes
            .iter()
            .position(|node| node.pods().contains(pod))
            .ok_or_else(|| Error::ForeignPod {
                pod: pod.name.clone(),
                node: pod.node_name().map(str::to_owned),
            })
    }

    /// The node `pod` is on: the one whose cgroup its processes must run in, for capture
    /// ([`Node::run_testpod`], [`Node::start_server`]).
    pub fn node_of(&self, pod: &Pod) -> Result<&Node, Error> {
        self.node(self.index_of(pod)?)
    }

    /// Creates pod `name` on node `index`, at [`Cluster::pod_ip`]`(index, host)`.
    pub fn add_pod(&mut self, index: usize, name: &str, host: u8) -> Result<Pod, Error> {
        if self
            .nodes
            .iter()
            .any(|node| node.pods().iter().any(|pod| pod.name == name))
        {
            return Err(Error::DuplicatePod(name.to_owned()));
        }
        let ip = Self::pod_ip(index, host);
        Ok(self.node_mut(index)?.add_pod(name, ip)?)
    }

    /// The pod as a config object in `namespace`: its IP, netns and `spec.nodeName`.
    pub fn pod_config(&self, pod: &Pod, namespace: &str) -> Result<PodConfig, Error> {
        Ok(self.node_of(pod)?.pod_config(pod, namespace))
    }

    /// Writes (or replaces) [`CONFIG_FILE`] in the shared config dir.
    pub fn write_config(&self, config: &ClusterConfig) -> Result<PathBuf, Error> {
        Ok(config.write(&self.config_dir(), CONFIG_FILE)?)
    }

    /// Writes (or replaces) `<config dir>/<file_name>` with YAML written elsewhere.
    pub fn write_config_text(&self, file_name: &str, yaml: &str) -> Result<PathBuf, Error> {
        Ok(config::write_atomically(
            &self.config_dir(),
            file_name,
            yaml,
        )?)
    }

    /// Writes (or replaces) [`ISTIO_FILE`] in the shared config dir with `objects`.
    pub fn write_istio(&self, objects: &[serde_json::Value]) -> Result<PathBuf, Error> {
        let config = objects.iter().fold(ClusterConfig::new(), |config, object| {
            config.raw(object.clone())
        });
        self.write_config_text(ISTIO_FILE, &config.render())
    }

    /// Starts every node's agent (each waits for its admin API), then every node's proxy.
    pub fn start(&mut self, options: &AgentOptions) -> Result<(), Error> {
        for node in &mut self.nodes {
            node.start_agent(options)?;
        }
        for node in &mut self.nodes {
            node.start_proxy()?;
        }
        Ok(())
    }

    /// Extra arguments for every proxy [`Cluster::start_with_mtls`] starts (e.g.
    /// `--cert-lifetime`).
    pub fn add_proxy_args(&mut self, args: &[&str]) {
        self.proxy_args.extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// [`Cluster::start`] with mutual TLS: node 0's agent also runs the CA (`--ca-listen` on
    /// a free loopback port, its self-signed root in `<dir>/ca`), the config dir gets the
    /// node-token Secret, and every proxy asks that CA for its pods' certificates with its
    /// own node's token. Returns the CA's address.
    pub fn start_with_mtls(&mut self, options: &AgentOptions) -> Result<SocketAddrV4, Error> {
        let ca = match node::free_local_port()? {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
        };
        let state = self.dir.join("ca");
        let tokens: Vec<(String, String)> = (0..self.nodes.len())
            .map(|i| {
                (
                    Self::node_name(i),
                    format!("token-of-node-{i}-{}", self.names.short()),
                )
            })
            .collect();
        self.write_config_text(CA_FILE, &node_tokens_secret(&tokens))?;
        for (i, (_, token)) in tokens.iter().enumerate() {
            let path = self.dir.join(format!("token-{i}"));
            std::fs::write(&path, token).map_err(|source| Error::Dir {
                path: path.clone(),
                source,
            })?;
            let mut args = vec![
                "--ca-address".into(),
                ca.to_string(),
                "--ca-root-cert".into(),
                state.join("root-cert.pem").display().to_string(),
                "--ca-token-file".into(),
                path.display().to_string(),
            ];
            args.extend(self.proxy_args.iter().cloned());
            self.nodes[i].set_proxy_args(args);
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let mut options = options.clone();
            if i == 0 {
                options.extra_args.extend([
                    "--ca-listen".into(),
                    ca.to_string(),
                    "--ca-state-dir".into(),
                    state.display().to_string(),
                ]);
            }
            node.start_agent(&options)?;
        }
        let root = state.join("root-cert.pem");
        wait::until("the CA's root-cert.pem", node::START_TIMEOUT, || {
            if root.exists() {
                Check::Done(())
            } else {
                Check::NotYet(format!("{} does not exist yet", root.display()))
            }
        })?;
        for node in &mut self.nodes {
            node.start_proxy()?;
        }
        Ok(ca)
    }

    /// The folder of the self-signed root the CA of [`Cluster::start_with_mtls`] makes in its
    /// state dir (`<dir>/ca/self-signed`): the cluster's root (`root-cert.pem`) and its key
    /// (`root-key.pem`), with which a test can mint a certificate for any identity.
    #[must_use]
    pub fn ca_root_dir(&self) -> PathBuf {
        self.dir.join("ca").join("self-signed")
    }

    /// Starts `command` in `pod`'s netns but in the cluster's own cgroup, outside every node's
    /// capture cgroup: its connections are not captured, so it speaks to other pods'
    /// listeners directly, from the pod's address, as another node's proxy does. Its output
    /// goes to the cluster's log dir.
    pub fn spawn_uncaptured(
        &self,
        pod: &Pod,
        what: &str,
        command: Command,
    ) -> Result<Process, Error> {
        let n = self.launches.fetch_add(1, Ordering::Relaxed) + 1;
        let placement = Placement {
            netns: Some(pod.netns_path()),
            cgroup: Some(self.cgroup.path().to_path_buf()),
        };
        Ok(Process::spawn(
            &format!("{n:03}-{}-{what}", pod.name),
            command,
            &placement,
            &self.log_dir(),
        )?)
    }

    /// Starts `shunt-hbonepeer ARGS` in `pod`'s netns, uncaptured
    /// ([`Cluster::spawn_uncaptured`]).
    pub fn hbonepeer(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut command = Command::new(self.binaries.hbonepeer()?);
        command.args(args);
        let what = format!("hbone-{}", args.first().copied().unwrap_or("peer"));
        self.spawn_uncaptured(pod, &what, command)
    }

    /// Runs a `shunt-hbonepeer client` in `pod` to completion (killed after `timeout`).
    pub fn run_hbonepeer(
        &self,
        pod: &Pod,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        Ok(self.hbonepeer(pod, args)?.finish(timeout)?)
    }

    /// Starts a `shunt-hbonepeer server` in `pod` and waits until it listens.
    pub fn start_hbonepeer_server(&self, pod: &Pod, args: &[&str]) -> Result<Process, Error> {
        let mut server = self.hbonepeer(pod, args)?;
        server.wait_for_line("ready", node::START_TIMEOUT)?;
        Ok(server)
    }

    /// Waits until each pod in `pods` is captured, by its own node's agent, with that node's
    /// proxy ready; returns those agents' views of them, in the order given.
    pub fn wait_captured(&mut self, pods: &[&Pod]) -> Result<Vec<WorkloadView>, Error> {
        let mut views = Vec::with_capacity(pods.len());
        for pod in pods {
            let index = self.index_of(pod)?;
            views.extend(self.node_mut(index)?.wait_captured(&[pod])?);
        }
        Ok(views)
    }

    /// Starts `tcpdump` on the underlay bridge, writing `<dir>/<label>-<n>.pcap`, and returns
    /// once it captures. It sees every frame between the nodes, both ways.
    pub fn start_capture(&self, label: &str) -> Result<UnderlayCapture, Error> {
        let tcpdump = find_tcpdump().ok_or(Error::NoTcpdump)?;
        let n = self.captures.fetch_add(1, Ordering::Relaxed) + 1;
        let label = format!("{label}-{n}");
        let pcap = self.dir.join(format!("{label}.pcap"));
        let mut command = Command::new(tcpdump);
        // -U writes each packet as it comes (so a fence in the file means everything before
        // it is there too); -Z root keeps tcpdump from dropping to a user that cannot write
        // the root-owned temp dir; -n: no name lookups, which would go nowhere.
        command
            .args([
                "-i",
                UNDERLAY_BRIDGE,
                "-U",
                "-n",
                "-Z",
                "root",
                "-s",
                "0",
                "-w",
            ])
            .arg(&pcap);
        let placement = Placement {
            netns: Some(self.network.path()),
            cgroup: Some(self.cgroup.path().to_path_buf()),
        };
        let mut process = Process::spawn(
            &format!("tcpdump-{label}"),
            command,
            &placement,
            &self.log_dir(),
        )?;
        process.wait_for_stderr("listening on", CAPTURE_TIMEOUT)?;
        Ok(UnderlayCapture {
            process,
            pcap,
            network: self.network.path(),
            fence_to: SocketAddrV4::new(Self::underlay_ip(0), FENCE_PORT),
            fences: 0,
        })
    }

    /// Stops everything and removes everything this cluster made. Returns what could not be
    /// cleaned (empty when all went). Dropping the cluster does the same, silently unless a
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
        for node in self.nodes.drain(..) {
            problems.extend(node.teardown());
        }
        if let Err(e) = self.cgroup.remove() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.network.delete() {
            problems.push(e.to_string());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("could not remove {}: {e}", self.dir.display()));
        }
        problems
    }

    /// Prints the last lines of every log of every node, and of the cluster's own processes.
    pub fn print_logs(&self) {
        for node in &self.nodes {
            eprintln!("===== node {} =====", node.names().prefix());
            node.print_logs();
        }
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            if !text.is_empty() {
                eprintln!(
                    "----- {} (last {} lines) -----\n{}",
                    path.display(),
                    process::TAIL_LINES,
                    process::tail_of(&text, process::TAIL_LINES)
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.torn_down {
            eprintln!(
                "shunt harness: cluster {} failed; its logs:",
                self.names.prefix()
            );
            self.print_logs();
        }
        for problem in self.cleanup() {
            eprintln!(
                "shunt harness: cleanup of {}: {problem}",
                self.names.prefix()
            );
        }
    }
}

/// A running `tcpdump` on the underlay bridge. Stopped when dropped; its pcap file goes with
/// the cluster's temp dir.
pub struct UnderlayCapture {
    process: Process,
    pcap: PathBuf,
    network: PathBuf,
    fence_to: SocketAddrV4,
    fences: u32,
}

impl UnderlayCapture {
    /// The pcap file tcpdump writes.
    #[must_use]
    pub fn pcap_path(&self) -> &Path {
        &self.pcap
    }

    /// Returns once tcpdump has written every frame that crossed the underlay before this
    /// call: it sends a fence (a UDP datagram with a unique payload, from the underlay
    /// bridge to node 0's discard port) until the fence is in the file, since tcpdump
    /// writes frames in the order it reads them.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.fences += 1;
        let fence = format!(
            "shunt-underlay-fence-{}-{}",
            std::process::id(),
            self.fences
        );
        let to = self.fence_to;
        let fence_error = |source| Error::Fence { to, source };
        let socket = netns::in_netns(&self.network, || {
            UdpSocket::bind(SocketAddrV4::new(UNDERLAY_BRIDGE_IP, 0))
        })?
        .map_err(fence_error)?;
        let pcap = self.pcap.clone();
        // Only what is written from now on can hold this fence.
        let written_before = read_pcap(&pcap)?.len();
        let process = &mut self.process;
        let mut send_error = None;
        let seen = wait::until(
            &format!("fence {fence:?} in the underlay capture"),
            CAPTURE_TIMEOUT,
            || {
                match process.exit_status() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        return Check::Abort(format!(
                            "tcpdump exited ({status})\n{}",
                            process.tail()
                        ));
                    }
                    Err(e) => return Check::Abort(e.to_string()),
                }
                match read_pcap(&pcap) {
                    Ok(bytes)
                        if contains(
                            bytes.get(written_before..).unwrap_or_default(),
                            fence.as_bytes(),
                        ) =>
                    {
                        return Check::Done(());
                    }
                    Ok(_) => {}
                    Err(e) => return Check::Abort(e.to_string()),
                }
                // Sent again at every poll until seen: the first may wait on ARP, and
                // tcpdump may lag.
                if let Err(e) = socket.send_to(fence.as_bytes(), to) {
                    send_error = Some(e);
                    return Check::Abort("sending the fence failed".to_owned());
                }
                Check::NotYet("not captured yet".to_owned())
            },
        );
        match (seen, send_error) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(source)) => Err(fence_error(source)),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Every byte captured so far, after a [`UnderlayCapture::sync`]: the pcap file as is
    /// (global header, then each frame's record header and bytes).
    pub fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.sync()?;
        read_pcap(&self.pcap)
    }

    /// Whether `marker` appears anywhere in what crossed the underlay so far (after a
    /// [`UnderlayCapture::sync`]). The bytes are searched raw, frame by frame as captured, so
    /// a marker split over two TCP segments is not found: put it at the start of a stream
    /// (`shunt-testpod send --marker`), where it lies in the first segment.
    pub fn contains(&mut self, marker: &[u8]) -> Result<bool, Error> {
        Ok(contains(&self.bytes()?, marker))
    }

    /// Whether tcpdump still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.exit_status(), Ok(None))
    }

    /// Stops tcpdump (it flushes and closes the file); returns the pcap file's path.
    pub fn stop(mut self) -> PathBuf {
        self.process.stop(Duration::from_secs(5));
        self.pcap.clone()
    }
}

fn read_pcap(path: &Path) -> Result<Vec<u8>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        // tcpdump creates the file once it captures; before that, nothing was captured.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::ReadPcap {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `needle` occurs in `haystack`; an empty needle is never "found", so a test
/// cannot pass on a marker it forgot to set.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// `tcpdump` in PATH, or where Debian puts it for root.
fn find_tcpdump() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("tcpdump"))
        .find(|candidate| candidate.is_file())
}

/// `index` as an address octet; a cluster has at most [`MAX_NODES`] nodes.
fn octet(index: usize) -> u8 {
    u8::try_from(index.min(MAX_NODES)).unwrap_or(u8::MAX)
}

/// Removes what a previous run of the same cluster left behind: every node slot's
/// leftovers (its processes, pins, netns and temp dir), the cluster's processes (a tcpdump),
/// its underlay netns and its temp dir. Returns what it removed or failed to remove.
#[must_use]
pub fn sweep_stale(names: &Names, binaries: &Binaries) -> Vec<String> {
    let mut report = Vec::new();
    for index in 0..MAX_NODES {
        report.extend(node::sweep_stale(&names.cluster_node(index), binaries));
    }
    match Cgroup::named(&names.cluster_cgroup()) {
        Ok(cgroup) if cgroup.exists() => match cgroup.remove() {
            Ok(()) => report.push(format!("cgroup {}", cgroup.path().display())),
            Err(e) => report.push(e.to_string()),
        },
        Ok(_) => {}
        Err(e) => report.push(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_layout() {
        let cases = [
            (Cluster::pod_subnet(0), Ipv4Addr::new(10, 244, 0, 0)),
            (Cluster::pod_subnet(1), Ipv4Addr::new(10, 244, 1, 0)),
            (Cluster::pod_ip(1, 20), Ipv4Addr::new(10, 244, 1, 20)),
            (Cluster::underlay_ip(0), Ipv4Addr::new(192, 168, 200, 10)),
            (Cluster::underlay_ip(2), Ipv4Addr::new(192, 168, 200, 12)),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        assert_eq!(Cluster::node_name(1), "node-1");
    }

    #[test]
    fn markers_are_found_anywhere_and_an_empty_one_never() {
        for (haystack, needle, found) in [
            (&b"..frame..MARK..frame.."[..], &b"MARK"[..], true),
            (b"MARK", b"MARK", true),
            (b"MAR", b"MARK", false),
            (b"MA RK", b"MARK", false),
            (b"anything", b"", false),
        ] {
            assert_eq!(
                contains(haystack, needle),
                found,
                "{haystack:?} / {needle:?}"
            );
        }
    }

    #[test]
    fn node_counts_are_checked_before_anything_is_made() {
        for count in [0, MAX_NODES + 1] {
            let err = Cluster::with_binaries("cluster::unit", count, Binaries::in_dir("/x"))
                .err()
                .map(|e| e.to_string());
            assert_eq!(
                err,
                Some(format!("a cluster has 1-{MAX_NODES} nodes, not {count}"))
            );
        }
    }
}
