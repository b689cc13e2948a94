//! The harness itself, without agent or proxy: pods talk directly, and nothing is left behind.

mod common;

use std::os::unix::fs::MetadataExt as _;

use std::collections::BTreeSet;

use common::{MIB, OrPanic, binaries, client, pod_ip, send_ok, send_ok_with};
use shunt_tests::{Cluster, Names, Node, netns};

/// Everything named after `test` that a node could leave behind.
fn leftovers(names: &Names) -> Vec<String> {
    let mut found: Vec<String> = netns::list()
        .or_panic("listing netns")
        .into_iter()
        .filter(|n| names.owns_netns(n))
        .map(|n| format!("netns {n}"))
        .collect();
    for cgroup in [names.node_cgroup(), names.agent_cgroup()] {
        let cgroup = shunt_tests::cgroup::Cgroup::named(&cgroup).or_panic("cgroup2 mount");
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.path().display()));
        }
    }
    if names.temp_dir().exists() {
        found.push(format!("dir {}", names.temp_dir().display()));
    }
    found
}

#[test]
fn pods_talk_through_the_bridge_and_teardown_leaves_nothing() {
    const TEST: &str = "harness::pods_talk_through_the_bridge_and_teardown_leaves_nothing";
    if shunt_tests::skip_unless_root(TEST) {
        return;
    }
    let mut node = Node::with_binaries(TEST, binaries()).or_panic("creating the node");
    let a = node.add_pod("a", pod_ip(10)).or_panic("pod a");
    let b = node.add_pod("b", pod_ip(20)).or_panic("pod b");
    let names = node.names().clone();

    let echo = node
        .start_server(&b, &["echo-server", "--port", "8080"])
        .or_panic("echo server");
    let _held = node
        .start_server(&b, &["echo-server", "--port", "8081", "--hold-until-eof"])
        .or_panic("hold-until-eof echo server");

    // The server runs inside pod b's netns and the node's cgroup.
    let netns_inode = std::fs::metadata(b.netns_path())
        .or_panic("pod netns")
        .ino();
    let process_netns = std::fs::metadata(format!("/proc/{}/ns/net", echo.pid()))
        .or_panic("server's netns")
        .ino();
    assert_eq!(
        process_netns, netns_inode,
        "echo server is not in pod b's netns"
    );
    let procs = std::fs::read_to_string(node.cgroup_path().join("cgroup.procs"))
        .or_panic("node cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == echo.pid().to_string()),
        "echo server {} is not in the node cgroup: {procs:?}",
        echo.pid()
    );

    for (port, seed) in [(8080, 1), (8081, 2)] {
        send_ok(&node, &a, b.addr(port), MIB, seed);
    }
    let churn = client(
        &node,
        &a,
        &[
            "churn",
            "--to",
            &b.addr(8080).to_string(),
            "--count",
            "20",
            "--interval-ms",
            "0",
        ],
    );
    assert_eq!(
        (churn["succeeded"].as_u64(), churn["failed"].as_u64()),
        (Some(20), Some(0)),
        "{churn}"
    );
    let closed_port = b.addr(9).to_string();
    let refused = client(&node, &a, &["connect", "--to", &closed_port]);
    assert_eq!(refused["connected"], false, "{refused}");
    assert_eq!(refused["kind"], "ConnectionRefused", "{refused}");

    drop((echo, _held));
    let problems = node.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
    assert_eq!(leftovers(&names), Vec::<String>::new());
}

#[test]
fn a_crashed_runs_leftovers_are_swept() {
    const TEST: &str = "harness::a_crashed_runs_leftovers_are_swept";
    if shunt_tests::skip_unless_root(TEST) {
        return;
    }
    let mut node = Node::with_binaries(TEST, binaries()).or_panic("creating the node");
    let pod = node.add_pod("a", pod_ip(10)).or_panic("pod a");
    let server = node
        .start_server(&pod, &["echo-server", "--port", "8080"])
        .or_panic("echo server");
    let names = node.names().clone();
    // A crash: nothing of the node's cleanup runs, and its server keeps running. (`server`
    // stays in scope only so that this test process reaps it once the sweep killed it.)
    std::mem::forget(node);
    assert_eq!(leftovers(&names).len(), 5, "{:?}", leftovers(&names));

    let node = Node::with_binaries(TEST, binaries()).or_panic("recreating the node");
    assert!(
        std::fs::read_to_string(node.cgroup_path().join("cgroup.procs"))
            .or_panic("cgroup.procs")
            .trim()
            .is_empty(),
        "the crashed run's server survived the sweep"
    );
    let problems = node.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
    let swept = shunt_tests::node::sweep_stale(&names, &binaries());
    assert!(
        swept.is_empty(),
        "nothing should be left to sweep: {swept:?}"
    );
    assert_eq!(leftovers(&names), Vec::<String>::new());
    let mut server = server;
    assert!(
        server
            .exit_status()
            .or_panic("reaping the server")
            .is_some(),
        "the crashed run's server is still running"
    );
}

/// Everything named after `test` that a cluster of `count` nodes could leave behind.
fn cluster_leftovers(names: &Names, count: usize) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = leftovers(names).into_iter().collect();
    for index in 0..count {
        found.extend(leftovers(&names.cluster_node(index)));
    }
    let cgroup = shunt_tests::cgroup::Cgroup::named(&names.cluster_cgroup()).or_panic("cgroup2");
    if cgroup.exists() {
        found.insert(format!("cgroup {}", cgroup.path().display()));
    }
    found
}

#[test]
fn cluster_pods_talk_across_the_underlay_and_teardown_leaves_nothing() {
    const TEST: &str = "harness::cluster_pods_talk_across_the_underlay_and_teardown_leaves_nothing";
    const MARKER: &str = "shunt-harness-underlay-marker";
    if shunt_tests::skip_unless_root(TEST) {
        return;
    }
    let mut cluster = Cluster::with_binaries(TEST, 2, binaries()).or_panic("creating the cluster");
    let a = cluster.add_pod(0, "a", 10).or_panic("pod a");
    let b = cluster.add_pod(1, "b", 20).or_panic("pod b");
    assert_eq!(
        (a.ip, b.ip, a.node_name(), b.node_name()),
        (
            pod_ip(10),
            Cluster::pod_ip(1, 20),
            Some("node-0"),
            Some("node-1")
        )
    );
    let bad = cluster.add_pod(1, "a", 30).err().map(|e| e.to_string());
    assert_eq!(
        bad.as_deref(),
        Some("pod a already exists in the cluster: pod names are unique across its nodes")
    );
    let names = cluster.names().clone();
    let config = cluster.pod_config(&b, "mesh").or_panic("pod config");
    assert_eq!(config.node_name.as_deref(), Some("node-1"));

    let mut capture = cluster.start_capture("direct").or_panic("underlay capture");
    let b_node = cluster.node_of(&b).or_panic("b's node");
    let a_node = cluster.node_of(&a).or_panic("a's node");
    let echoes = [(b_node, &b), (a_node, &a)].map(|(node, pod)| {
        node.start_server(pod, &["echo-server", "--port", "8080"])
            .or_panic("echo server")
    });
    // No agent, no proxy: the pods reach each other, both ways, through their nodes' routes.
    send_ok_with(a_node, &a, b.addr(8080), MIB, 1, &["--marker", MARKER]);
    send_ok(b_node, &b, a.addr(8080), 1000, 2);
    assert!(
        capture
            .contains(MARKER.as_bytes())
            .or_panic("reading the capture")
    );
    assert!(
        !capture
            .contains(b"a marker nobody sent")
            .or_panic("reading the capture"),
        "the search finds only what crossed the underlay"
    );
    assert!(capture.is_running());

    drop((echoes, capture));
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
    assert_eq!(cluster_leftovers(&names, 2), BTreeSet::new());
}

#[test]
fn a_crashed_clusters_leftovers_are_swept() {
    const TEST: &str = "harness::a_crashed_clusters_leftovers_are_swept";
    if shunt_tests::skip_unless_root(TEST) {
        return;
    }
    let mut cluster = Cluster::with_binaries(TEST, 2, binaries()).or_panic("creating the cluster");
    let b = cluster.add_pod(1, "b", 20).or_panic("pod b");
    let server = cluster
        .node_of(&b)
        .or_panic("b's node")
        .start_server(&b, &["echo-server", "--port", "8080"])
        .or_panic("echo server");
    let mut capture = cluster.start_capture("crash").or_panic("underlay capture");
    let names = cluster.names().clone();
    // A crash: nothing of the cluster's cleanup runs; its server and tcpdump keep running.
    // (They stay in scope only so that this test process reaps them once the sweep killed
    // them.)
    std::mem::forget(cluster);
    // netns: the underlay, 2 nodes, pod b; cgroups: the cluster's, 2 nodes' and their
    // agents'; temp dirs: the cluster's and 2 nodes'.
    assert_eq!(
        cluster_leftovers(&names, 2).len(),
        4 + 5 + 3,
        "{:?}",
        cluster_leftovers(&names, 2)
    );

    let cluster = Cluster::with_binaries(TEST, 2, binaries()).or_panic("recreating the cluster");
    assert!(
        !capture.is_running(),
        "the crashed run's tcpdump survived the sweep"
    );
    let mut server = server;
    assert!(
        server
            .exit_status()
            .or_panic("reaping the server")
            .is_some(),
        "the crashed run's server survived the sweep"
    );
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
    let swept = shunt_tests::cluster::sweep_stale(&names, &binaries());
    assert!(
        swept.is_empty(),
        "nothing should be left to sweep: {swept:?}"
    );
    assert_eq!(cluster_leftovers(&names, 2), BTreeSet::new());
}
