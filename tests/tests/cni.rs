//! `shunt-cni` for real: the agent (local mode, `--install-cni` into a conf dir of the
//! test's) chains it after Debian's containernetworking-plugins (`bridge` + `host-local`),
//! and the test plays the runtime, running the conflist the agent wrote exactly as libcni
//! does. The pods' config carries no `shunt.io/netns`: the CNI ADD is how the agent learns
//! their netns and IP. Root only (skips, saying so, otherwise).
//!
//! The bridge and its veths live in the node's netns (the plugins run there), in a subnet
//! of the test's own, 10.246.0.0/24; nothing touches the host's interfaces.

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use shunt_tests::cni::{Runtime, Sandbox, result_ip};
use shunt_tests::kernel::{self, Needs};
use shunt_tests::wait::{self, Check};
use shunt_tests::{AgentOptions, Binaries, ClusterConfig, NamespaceConfig, Node, Pod};

/// Debian's containernetworking-plugins.
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
const MESH: &str = "mesh";
const NETWORK: &str = "shunt-test";
const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);

/// host-local hands out addresses in order from `rangeStart`: the pods' IPs, in the order
/// of their ADDs.
fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 246, 0, last)
}

/// The primary CNI, as a single-plugin `.conf` (the agent converts it to a `.conflist`).
fn bridge_conf(ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "bridge",
        "bridge": "cni-br0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{
                "subnet": "10.246.0.0/24",
                "rangeStart": "10.246.0.10",
                "rangeEnd": "10.246.0.20",
                "gateway": "10.246.0.1",
            }]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

struct Setup {
    node: Node,
    runtime: Runtime,
    conflist: Value,
    ipam_dir: PathBuf,
}

fn uid(n: u8) -> String {
    format!("5e1f0c2a-7b3d-4c4e-8f90-0000000000{n:02x}")
}

fn sandbox(pod: &Pod, n: u8) -> Sandbox {
    Sandbox::pod(
        &format!("sandbox-{}", pod.name),
        &pod.netns_path(),
        MESH,
        &pod.name,
        &uid(n),
    )
}

/// A node whose agent installed shunt-cni after the bridge plugin; `pods` (name, IP) are in
/// its config without netns annotations, their sandboxes made but not wired.
fn setup(test: &str, pods: &[(&str, Ipv4Addr)]) -> Option<(Setup, Vec<Pod>)> {
    if shunt_tests::skip_unless_root(test) {
        return None;
    }
    let binaries = binaries();
    if kernel::skip_unless_supported(test, &binaries, Needs::EbpfCapture) {
        return None;
    }
    if !Path::new(DEBIAN_CNI_DIR).join("bridge").is_file() {
        eprintln!(
            "SKIPPED {test}: {DEBIAN_CNI_DIR}/bridge is missing (apt-get install \
             containernetworking-plugins)"
        );
        return None;
    }
    let mut node = Node::with_binaries(test, binaries).or_panic("node");
    let cni_dir = node.dir().join("cni");
    let (bin_dir, conf_dir, ipam_dir) = (
        cni_dir.join("bin"),
        cni_dir.join("net.d"),
        cni_dir.join("ipam"),
    );
    for dir in [&bin_dir, &conf_dir, &ipam_dir] {
        std::fs::create_dir_all(dir).or_panic("cni dirs");
    }
    std::fs::write(
        conf_dir.join("10-test.conf"),
        bridge_conf(&ipam_dir).to_string(),
    )
    .or_panic("bridge conf");

    let mut config = ClusterConfig::new().namespace(&NamespaceConfig::injected(MESH));
    let mut made = Vec::new();
    for (n, (name, pod_ip)) in pods.iter().enumerate() {
        let pod = node.add_bare_pod(name, *pod_ip).or_panic("pod netns");
        let n = u8::try_from(n).unwrap_or(u8::MAX);
        config = config.pod(&node.pod_config(&pod, MESH).discovered().with_uid(&uid(n)));
        made.push(pod);
    }
    node.write_config(&config).or_panic("config");
    let plugin = node.binaries().cni().or_panic("shunt-cni");
    let args = [
        "--install-cni".to_owned(),
        format!("--cni-bin-dir={}", bin_dir.display()),
        format!("--cni-conf-dir={}", conf_dir.display()),
        format!("--cni-plugin={}", plugin.display()),
        "--cni-timeout=20".to_owned(),
    ];
    node.start_agent(&AgentOptions {
        extra_args: args.to_vec(),
        ..AgentOptions::default()
    })
    .or_panic("agent");
    node.start_proxy().or_panic("proxy");

    // The agent converted the .conf and chained itself last.
    let conflist_path = conf_dir.join("10-test.conflist");
    let conflist = wait::until(
        "the agent to chain shunt-cni",
        WAIT,
        || match std::fs::read(&conflist_path) {
            Ok(text) => match serde_json::from_slice::<Value>(&text) {
                Ok(list) => Check::Done(list),
                Err(e) => Check::NotYet(e.to_string()),
            },
            Err(e) => Check::NotYet(e.to_string()),
        },
    )
    .or_panic("conflist");
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .or_panic_none("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["bridge", "shunt-cni"], "{conflist}");
    assert!(!conf_dir.join("10-test.conf").exists());
    assert!(bin_dir.join("shunt-cni").is_file());

    let runtime = Runtime {
        cni_path: vec![PathBuf::from(DEBIAN_CNI_DIR), bin_dir],
        host_netns: node.node_netns().path(),
    };
    Some((
        Setup {
            node,
            runtime,
            conflist,
            ipam_dir,
        },
        made,
    ))
}

/// The binaries under test; `shunt-testpod` is the one cargo just built for this run.
fn binaries() -> Binaries {
    Binaries::from_env().with_testpod(env!("CARGO_BIN_EXE_shunt-testpod"))
}

/// Failing with the error's message (which carries process log tails).
trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T, E: Display> OrPanic<T> for Result<T, E> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// `shunt-testpod send` of `bytes` bytes from `pod` to `to`, asserting the echo came back.
fn send_ok(node: &Node, pod: &Pod, to: std::net::SocketAddr, bytes: u64) {
    let (to, bytes_arg) = (to.to_string(), bytes.to_string());
    let args = ["send", "--to", &to, "--bytes", &bytes_arg, "--seed", "7"];
    let output = node
        .run_testpod(pod, &args, WAIT)
        .or_panic(&format!("send from {}", pod.name));
    let report = output
        .json()
        .or_panic(&format!("report (stderr: {})", output.stderr));
    assert_eq!(report["ok"], true, "{} → {to}: {report}", pod.name);
    assert_eq!(report["received"], bytes, "{report}");
}

trait OrPanicNone<T> {
    fn or_panic_none(self, what: &str) -> T;
}

impl<T> OrPanicNone<T> for Option<T> {
    fn or_panic_none(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("{what}: missing"))
    }
}

/// host-local's reservation files of the network.
fn reserved(ipam_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ipam_dir.join(NETWORK))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_pod_is_captured_as_soon_as_add_returns_and_del_releases_it() {
    let test = "cni::a_pod_is_captured_as_soon_as_add_returns_and_del_releases_it";
    let Some((mut s, pods)) = setup(test, &[("srv", ip(10)), ("cli", ip(11))]) else {
        return;
    };
    let [srv, cli] = [&pods[0], &pods[1]];
    let srv_sandbox = sandbox(srv, 0);
    let cli_sandbox = sandbox(cli, 1);

    let result = s.runtime.add(&s.conflist, &srv_sandbox).or_panic("ADD srv");
    assert_eq!(result_ip(&result), Some(srv.ip), "{result}");
    // Returned only once captured: no waiting here.
    let workloads = s.node.admin().workloads().or_panic("workloads");
    let view = workloads
        .iter()
        .find(|w| w.name == "srv")
        .or_panic_none("srv");
    assert!(view.is_ready(), "{view:?}");
    let _echo = s
        .node
        .start_server(srv, &["echo-server", "--port", &ECHO_PORT.to_string()])
        .or_panic("echo server");

    let result = s.runtime.add(&s.conflist, &cli_sandbox).or_panic("ADD cli");
    assert_eq!(result_ip(&result), Some(cli.ip), "{result}");
    // The first connection right after ADD already goes through the proxy.
    send_ok(&s.node, cli, srv.addr(ECHO_PORT), 4096);
    let dst = srv.addr(ECHO_PORT).to_string();
    let log = s
        .node
        .wait_access_log("the outbound line of cli", WAIT, |log| {
            !log.matching(&[("direction", "outbound"), ("pod", "mesh/cli")])
                .is_empty()
        })
        .or_panic("access log");
    let lines = log.matching(&[
        ("direction", "outbound"),
        ("pod", "mesh/cli"),
        ("dst_addr", &dst),
        ("dst_workload", "srv"),
    ]);
    assert_eq!(lines.len(), 1, "{}", log.describe());
    let workloads = s.node.admin().workloads().or_panic("workloads");
    let view = workloads
        .iter()
        .find(|w| w.name == "cli")
        .or_panic_none("cli");
    assert_eq!(
        view.netns.as_deref(),
        Some(cli.netns_path().as_path()),
        "{view:?}"
    );
    assert!(
        view.reason
            .contains("found by the CNI plugin's ADD (sandbox sandbox-cli)"),
        "{view:?}"
    );
    assert_eq!(
        reserved(&s.ipam_dir),
        [ip(10).to_string(), ip(11).to_string()]
    );

    // CHECK agrees.
    let check = s.runtime.check(&s.conflist, &cli_sandbox, &result);
    check.or_panic("CHECK cli");

    // DEL: the bridge's veth and the address go, and the agent forgets the netns.
    s.runtime
        .del(&s.conflist, &cli_sandbox, Some(&result))
        .or_panic("DEL cli");
    let workloads = s.node.admin().workloads().or_panic("workloads");
    let view = workloads
        .iter()
        .find(|w| w.name == "cli")
        .or_panic_none("cli");
    assert_eq!(view.proxy, "pending netns discovery", "{view:?}");
    assert_eq!(view.netns, None, "{view:?}");
    assert_eq!(reserved(&s.ipam_dir), [ip(10).to_string()]);
    let links = link_names(cli);
    assert_eq!(links, ["lo"], "the pod's eth0 is gone");
    // Idempotent: a second DEL succeeds too.
    s.runtime
        .del(&s.conflist, &cli_sandbox, Some(&result))
        .or_panic("DEL cli again");
}

#[test]
fn add_fails_while_the_agent_is_away_and_del_still_succeeds() {
    let test = "cni::add_fails_while_the_agent_is_away_and_del_still_succeeds";
    let Some((mut s, pods)) = setup(test, &[("late", ip(10))]) else {
        return;
    };
    let late = &pods[0];
    s.node.stop_agent().or_panic("stop agent");
    let late_sandbox = sandbox(late, 0);
    let e = s
        .runtime
        .add(&s.conflist, &late_sandbox)
        .expect_err("ADD must fail without the agent");
    let error = e.error_result().or_panic_none("the plugin's error result");
    let socket = s.node.run_dir().join("cni.sock");
    assert_eq!(error["code"], 11, "{e}");
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(&socket.display().to_string()), "{e}");
    assert!(e.to_string().contains("plugin shunt-cni"), "{e}");

    // The runtime cleans a failed ADD up with DEL, which succeeds without the agent.
    s.runtime
        .del(&s.conflist, &late_sandbox, None)
        .or_panic("DEL without the agent");
    assert_eq!(reserved(&s.ipam_dir), Vec::<String>::new());
    assert_eq!(link_names(late), ["lo"]);
}

/// The interfaces in the pod's netns.
fn link_names(pod: &Pod) -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["-n", pod.netns_name(), "-o", "link", "show"])
        .output()
        .or_panic("ip link");
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}
