//! The shunt test harness: a node of pods in network namespaces, running the real
//! `shunt-agent`, `shunt-proxy` and `shunt-testpod` binaries.
//!
//! ```no_run
//! use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node};
//! # fn main() -> Result<(), shunt_tests::node::Error> {
//! let mut node = Node::new("example")?;
//! let a = node.add_pod("a", "10.244.0.10".parse().unwrap())?;
//! let b = node.add_pod("b", "10.244.0.20".parse().unwrap())?;
//! node.write_config(
//!     &ClusterConfig::new()
//!         .namespace(&NamespaceConfig::injected("mesh"))
//!         .pod(&node.pod_config(&a, "mesh"))
//!         .pod(&node.pod_config(&b, "mesh")),
//! )?;
//! node.start_agent(&AgentOptions::default())?;
//! node.start_proxy()?;
//! node.wait_captured(&[&a, &b])?;
//! let _server = node.start_server(&b, &["echo-server", "--port", "8080"])?;
//! let to = b.addr(8080).to_string();
//! let sent = node.run_testpod(&a, &["send", "--to", &to, "--bytes", "1000", "--seed", "1"],
//!     std::time::Duration::from_secs(30))?;
//! println!("{}", sent.stdout);
//! # Ok(())
//! # }
//! ```
//!
//! Layout of a node named after test `T` (`short` = abbreviation + hash of `T`):
//! - netns `shunt-<short>-node` with bridge `br0`; one netns `shunt-<short>-<pod>` per pod, its
//!   `eth0` on a veth whose other end is on the bridge;
//! - cgroup `<cgroup2>/shunt-<short>` for the pods' processes and the proxy (the agent
//!   attaches capture there) and `<cgroup2>/shunt-<short>-agent` for the agent;
//! - agent instance `shunt-<short>` (pins in `<bpffs>/shunt/shunt-<short>`);
//! - temp dir `$TMPDIR/shunt-<short>` with `config/`, `run/` and `logs/`.
//!
//! Everything is removed when the [`Node`] is dropped, and swept at the start when a crashed
//! earlier run left it behind.
//!
//! Several nodes joined by an underlay network, each with its own agent and proxy and all
//! reading one config dir, make a [`Cluster`] (`cluster.rs`).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod binaries;
pub mod certs;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod config;
pub mod http;
pub mod istio;
pub mod kernel;
pub mod metrics;
pub mod mounts;
pub mod names;
pub mod netns;
pub mod node;
pub mod process;
pub mod wait;

pub use access_log::AccessLog;
pub use admin::{Admin, WorkloadView};
pub use binaries::Binaries;
pub use cluster::{Cluster, UnderlayCapture};
pub use config::{ClusterConfig, NamespaceConfig, PodConfig, ServiceConfig};
pub use metrics::Metrics;
pub use names::Names;
pub use node::{AgentOptions, CaptureMode, Node, NodeLayout, Pod};
pub use process::{Output, Process};

/// Whether this process has the privileges the harness needs (netns, cgroups, eBPF).
#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For a privileged test: true (after printing why to stderr) when it must be skipped because
/// this process is not root.
#[must_use]
pub fn skip_unless_root(test_name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "skipping {test_name}: it needs root (network namespaces, cgroups, eBPF); \
         `cargo xtask test` runs it under sudo"
    );
    true
}
