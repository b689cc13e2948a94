use std::fs::File;
use std::os::unix::fs::MetadataExt;

use shunt_mesh::model::{MeshState, Workload};

use std::path::Path;

use super::*;
use shunt_api::control::PodRole;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Add {
        cookie: u64,
        ip: Ipv4Addr,
        outbound: Vec<u16>,
        inbound: Vec<u16>,
    },
    Listener {
        ip: Ipv4Addr,
    },
    Remove {
        cookie: u64,
        ip: Option<Ipv4Addr>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

/// Records calls; `captured` plays the pinned state of an earlier agent.
#[derive(Default)]
struct FakeCapture {
    calls: Vec<Call>,
    captured: Vec<u64>,
    fail_add: bool,
    inbound_bind: InboundBind,
    /// Plays eBPF capture with the shortcut on: three map descriptors for the proxy.
    splice_maps: bool,
}

impl CaptureMaps for FakeCapture {
    type Error = Injected;

    fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Injected> {
        if self.fail_add {
            return Err(Injected);
        }
        self.calls.push(Call::Add {
            cookie: pod.netns_cookie,
            ip: pod.pod_ip,
            outbound: pod.excluded_outbound_ports.clone(),
            inbound: pod.excluded_inbound_ports.clone(),
        });
        Ok(())
    }

    fn set_inbound_listener(&mut self, ip: Ipv4Addr, _: BorrowedFd<'_>) -> Result<(), Injected> {
        self.calls.push(Call::Listener { ip });
        Ok(())
    }

    fn remove_pod(&mut self, cookie: u64, ip: Option<Ipv4Addr>) -> Result<(), Injected> {
        self.calls.push(Call::Remove { cookie, ip });
        Ok(())
    }

    fn captured_netns(&self) -> Result<Vec<u64>, Injected> {
        Ok(self.captured.clone())
    }

    fn inbound_bind(&self) -> InboundBind {
        self.inbound_bind
    }

    fn splice_maps(&self) -> Option<Vec<OwnedFd>> {
        let fd = || OwnedFd::from(File::open("/dev/null").unwrap());
        self.splice_maps.then(|| vec![fd(), fd(), fd()])
    }
}

/// Plain files stand in for netns files; the inode number plays the cookie.
fn open_file(path: &Path) -> io::Result<PodNetns> {
    let file = File::open(path)?;
    let cookie = file.metadata()?.ino();
    Ok(PodNetns {
        fd: file.into(),
        cookie,
    })
}

struct Node {
    dir: tempfile::TempDir,
    reconciler: Reconciler<FakeCapture>,
    connections: ConnectionId,
}

impl Node {
    fn new() -> Self {
        Self::with_capture(FakeCapture::default())
    }

    fn with_capture(capture: FakeCapture) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            reconciler: Reconciler::new(capture).with_netns_opener(open_file),
            connections: 0,
        }
    }

    /// A "netns" file for a pod, and its cookie.
    fn netns(&self, name: &str) -> (PathBuf, u64) {
        let path = self.dir.path().join(name);
        if !path.exists() {
            std::fs::write(&path, name).unwrap();
        }
        let cookie = std::fs::metadata(&path).unwrap().ino();
        (path, cookie)
    }

    fn captured(&self, name: &str, ip: u8, outbound: &[u16]) -> PodPlan {
        let (netns, _) = self.netns(name);
        PodPlan {
            capture: Some(CaptureSpec {
                netns: NetnsSource::Annotation(netns),
                ip: Some(pod_ip(ip)),
                excluded_outbound_ports: outbound.to_vec(),
                excluded_inbound_ports: vec![],
                fail_closed: false,
                role: PodRole::App,
            }),
            ..uncaptured(name, ip)
        }
    }

    fn calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.reconciler.capture.calls)
    }

    fn connect(&mut self, pid: u32) -> Proxy {
        self.connections += 1;
        let (outbox, inbox) = mpsc::unbounded_channel();
        self.reconciler.handle(ProxyEvent::Connected {
            connection: self.connections,
            pid,
            version: "test".into(),
            outbox,
        });
        Proxy {
            connection: self.connections,
            inbox,
        }
    }

    fn ready(&mut self, proxy: &Proxy, uid: &str) {
        let listener: OwnedFd = File::open("/dev/null").unwrap().into();
        self.reconciler.handle(ProxyEvent::Message {
            connection: proxy.connection,
            message: ProxyMessage::PodReady {
                uid: uid.into(),
                listeners: Vec::new(),
            },
            fds: vec![listener],
        });
    }

    fn workload(&self, uid: &str) -> api::Workload {
        self.reconciler
            .view
            .borrow()
            .workloads
            .iter()
            .find(|w| w.uid == uid)
            .cloned()
            .unwrap()
    }
}

struct Proxy {
    connection: ConnectionId,
    inbox: mpsc::UnboundedReceiver<Outgoing>,
}

/// What the proxy got, in a form tests can compare; `+fd` marks a frame carrying a descriptor.
impl Proxy {
    fn received(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(Outgoing { message, fds }) = self.inbox.try_recv() {
            let fd = if fds.is_empty() { "" } else { " +fd" };
            let message = match message {
                Frame::Message(message) => message,
                Frame::State(snapshot) => AgentMessage::State {
                    state: snapshot.mesh.clone(),
                },
            };
            got.push(match message {
                AgentMessage::State { state } => format!(
                    "State({})",
                    state
                        .workloads
                        .iter()
                        .map(|w| w.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                AgentMessage::AddPod {
                    uid,
                    netns_cookie,
                    inbound_bind: InboundBind::Loopback,
                    role: shunt_api::control::PodRole::App,
                    listeners: _,
                } => format!("AddPod({uid}, {netns_cookie}){fd}"),
                AgentMessage::AddPod {
                    uid,
                    netns_cookie,
                    inbound_bind,
                    role,
                    listeners: _,
                } => format!("AddPod({uid}, {netns_cookie}, {inbound_bind:?}, {role:?}){fd}"),
                AgentMessage::Superseded => "Superseded".to_owned(),
                AgentMessage::Credentials { credentials } => {
                    format!("Credentials({})", credentials.len())
                }
                AgentMessage::RemovePod { uid } => format!("RemovePod({uid})"),
                AgentMessage::Synced { pods } => format!("Synced({})", pods.join(",")),
                AgentMessage::SpliceMaps => format!("SpliceMaps({} fds)", fds.len()),
                AgentMessage::TcpEvents => format!("TcpEvents({} fds)", fds.len()),
                AgentMessage::Refused { reason } => format!("Refused({reason})"),
            });
        }
        got
    }
}

fn pod_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn uncaptured(name: &str, ip: u8) -> PodPlan {
    PodPlan {
        uid: format!("ns/{name}").into(),
        namespace: "ns".into(),
        name: name.into(),
        ip: Some(pod_ip(ip)),
        node: "local".into(),
        on_this_node: true,
        reason: "test".into(),
        capture: None,
    }
}

fn snapshot(plans: &[PodPlan]) -> Arc<Snapshot> {
    let workloads = plans
        .iter()
        .map(|plan| Workload {
            uid: plan.uid.clone(),
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            workload_name: plan.name.clone(),
            service_account: "default".into(),
            ip: plan.ip,
            labels: BTreeMap::new(),
            captured: plan.captured(),
            ready: true,
            ports: vec![],
            excluded_inbound_ports: vec![],
            node: Some(plan.node.clone()),
            num_trusted_proxies: None,
        })
        .collect();
    Arc::new(Snapshot {
        pods: plans.to_vec(),
        mesh: MeshState {
            workloads,
            services: vec![],
            ..Default::default()
        },
        ..Snapshot::default()
    })
}

#[test]
fn capture_turns_on_only_when_the_proxy_is_ready() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("a");
    let a = node.captured("a", 1, &[5432]);
    node.reconciler.apply(&snapshot(&[a]));
    assert_eq!(node.calls(), vec![], "no proxy yet: capture stays off");
    assert_eq!(node.workload("ns/a").proxy, "pending");
    assert_eq!(node.workload("ns/a").netns_cookie, Some(cookie));

    let mut proxy = node.connect(7);
    assert_eq!(
        proxy.received(),
        vec![
            "State(a)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd"),
            "Synced(ns/a)".to_owned(),
        ]
    );
    assert_eq!(node.calls(), vec![]);

    node.ready(&proxy, "ns/a");
    assert_eq!(
        node.calls(),
        vec![
            Call::Add {
                cookie,
                ip: pod_ip(1),
                outbound: vec![5432],
                inbound: vec![],
            },
            Call::Listener { ip: pod_ip(1) },
        ]
    );
    let view = node.reconciler.view.borrow().clone();
    assert_eq!(
        view.proxy,
        api::ProxyStatus {
            connected: true,
            pid: Some(7),
            refused: None,
        }
    );
    assert_eq!(view.workloads[0].proxy, "ready");
    assert!(view.workloads[0].captured);
}

#[test]
fn only_this_nodes_captured_pods_are_captured_and_handed_to_the_proxy() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("a");
    let a = node.captured("a", 1, &[]);
    // Captured by its own node's agent: in the state, not in this agent's capture.
    let b = PodPlan {
        node: "node-1".into(),
        on_this_node: false,
        ..node.captured("b", 2, &[])
    };
    node.reconciler.apply(&snapshot(&[a, b]));
    let mut proxy = node.connect(7);
    assert_eq!(
        proxy.received(),
        vec![
            "State(a,b)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd"),
            "Synced(ns/a)".to_owned(),
        ]
    );
    node.ready(&proxy, "ns/a");
    assert_eq!(
        node.calls(),
        vec![
            Call::Add {
                cookie,
                ip: pod_ip(1),
                outbound: vec![],
                inbound: vec![],
            },
            Call::Listener { ip: pod_ip(1) },
        ]
    );
    let (a, b) = (node.workload("ns/a"), node.workload("ns/b"));
    assert_eq!(
        (
            a.node.as_deref(),
            a.captured,
            a.netns_cookie,
            a.proxy.as_str()
        ),
        (Some("local"), true, Some(cookie), "ready")
    );
    assert_eq!(
        (
            b.node.as_deref(),
            b.captured,
            b.netns_cookie,
            b.proxy.as_str()
        ),
        (Some("node-1"), true, None, "n/a")
    );
}

#[test]
fn every_proxy_session_gets_the_splice_maps_right_after_the_state_when_capture_has_them() {
    for (splice_maps, expected) in [
        (true, vec!["State(b)", "SpliceMaps(3 fds)", "Synced()"]),
        (false, vec!["State(b)", "Synced()"]),
    ] {
        let mut node = Node::with_capture(FakeCapture {
            splice_maps,
            ..FakeCapture::default()
        });
        node.reconciler
            .apply(&snapshot(std::slice::from_ref(&uncaptured("b", 2))));
        for pid in [7, 8] {
            let mut proxy = node.connect(pid);
            assert_eq!(proxy.received(), expected, "proxy {pid}");
        }
    }
}

#[test]
fn pods_added_while_the_proxy_is_connected_are_sent_as_deltas() {
    let mut node = Node::new();
    let b = uncaptured("b", 2);
    node.reconciler.apply(&snapshot(std::slice::from_ref(&b)));
    let mut proxy = node.connect(7);
    assert_eq!(proxy.received(), vec!["State(b)", "Synced()"]);

    let (_, cookie) = node.netns("a");
    let a = node.captured("a", 1, &[]);
    node.reconciler.apply(&snapshot(&[a, b.clone()]));
    assert_eq!(
        proxy.received(),
        vec![
            "State(a,b)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd")
        ]
    );
    assert_eq!(node.workload("ns/b").proxy, "n/a");
    assert_eq!(node.workload("ns/b").netns_cookie, None);
}

#[test]
fn the_proxy_is_told_where_the_capture_needs_the_inbound_listener() {
    for inbound_bind in [InboundBind::Loopback, InboundBind::AnyAddress] {
        let mut node = Node::with_capture(FakeCapture {
            inbound_bind,
            ..FakeCapture::default()
        });
        let (_, cookie) = node.netns("a");
        let a = node.captured("a", 1, &[]);
        node.reconciler.apply(&snapshot(&[a]));
        let mut proxy = node.connect(7);
        let mut sent = None;
        while let Ok(outgoing) = proxy.inbox.try_recv() {
            if let Frame::Message(message @ AgentMessage::AddPod { .. }) = outgoing.message {
                sent = Some(message);
            }
        }
        assert_eq!(
            sent,
            Some(AgentMessage::AddPod {
                uid: "ns/a".into(),
                netns_cookie: cookie,
                inbound_bind,
                role: shunt_api::control::PodRole::App,
                listeners: Vec::new(),
            })
        );
    }
}

#[test]
fn a_pod_that_goes_away_or_opts_out_is_removed_completely() {
    for opted_out in [false, true] {
        let mut node = Node::new();
        let (_, cookie) = node.netns("a");
        let a = node.captured("a", 1, &[]);
        node.reconciler.apply(&snapshot(std::slice::from_ref(&a)));
        let mut proxy = node.connect(7);
        node.ready(&proxy, "ns/a");
        proxy.received();
        node.calls();

        let next = if opted_out {
            vec![uncaptured("a", 1)]
        } else {
            vec![]
        };
        node.reconciler.apply(&snapshot(&next));
        assert_eq!(
            node.calls(),
            vec![Call::Remove {
                cookie,
                ip: Some(pod_ip(1))
            }],
            "opted out: {opted_out}"
        );
        // An opted-out pod stays in the mesh, only its `captured` flag changes.
        let state = if opted_out { "State(a)" } else { "State()" };
        let want = vec![state.to_owned(), "RemovePod(ns/a)".to_owned()];
        assert_eq!(proxy.received(), want, "opted out: {opted_out}");
    }
}

#[test]
fn changes_that_do_not_concern_capture_leave_the_pod_alone() {
    let mut node = Node::new();
    let a = node.captured("a", 1, &[]);
    node.reconciler.apply(&snapshot(std::slice::from_ref(&a)));
    let mut proxy = node.connect(7);
    node.ready(&proxy, "ns/a");
    proxy.received();
    node.calls();

    // The same reading again (the periodic re-read): nothing at all.
    node.reconciler.apply(&snapshot(std::slice::from_ref(&a)));
    assert_eq!((node.calls(), proxy.received()), (vec![], vec![]));

    // Another pod's arrival, or a label change, only updates the proxy's state.
    let mut relabelled = snapshot(&[a.clone(), uncaptured("b", 2)]);
    Arc::make_mut(&mut relabelled).mesh.workloads[0]
        .labels
        .insert("version".into(), "v2".into());
    node.reconciler.apply(&relabelled);
    assert_eq!(node.calls(), vec![]);
    assert_eq!(proxy.received(), vec!["State(a,b)"]);
    assert_eq!(node.workload("ns/a").proxy, "ready");
}

#[test]
fn excluded_ports_are_updated_in_place() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("a");
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[5432])]));
    let mut proxy = node.connect(7);
    node.ready(&proxy, "ns/a");
    proxy.received();
    node.calls();

    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[5432, 6379])]));
    assert_eq!(
        node.calls(),
        vec![Call::Add {
            cookie,
            ip: pod_ip(1),
            outbound: vec![5432, 6379],
            inbound: vec![],
        }],
        "no remove: the pod's connections are not touched"
    );
    assert_eq!(proxy.received(), Vec::<String>::new());
}

#[test]
fn a_pod_that_moves_to_another_ip_is_removed_and_added_again() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("a");
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[])]));
    let mut proxy = node.connect(7);
    node.ready(&proxy, "ns/a");
    proxy.received();
    node.calls();

    node.reconciler
        .apply(&snapshot(&[node.captured("a", 9, &[])]));
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie,
            ip: Some(pod_ip(1))
        }]
    );
    assert_eq!(
        proxy.received(),
        vec![
            "State(a)".to_owned(),
            "RemovePod(ns/a)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd"),
        ]
    );
    node.ready(&proxy, "ns/a");
    assert!(
        matches!(&node.calls()[..], [Call::Add { ip, .. }, Call::Listener { .. }] if *ip == pod_ip(9))
    );
}

#[test]
fn after_a_restart_capture_is_kept_for_wanted_pods_and_removed_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    std::fs::write(&path, "a").unwrap();
    let kept = std::fs::metadata(&path).unwrap().ino();
    let stale = kept + 1_000_000;
    let mut node = Node::with_capture(FakeCapture {
        captured: vec![kept, stale],
        ..FakeCapture::default()
    });
    node.dir = dir;
    let a = node.captured("a", 1, &[]);
    node.reconciler.apply(&snapshot(std::slice::from_ref(&a)));
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie: stale,
            ip: None
        }],
        "only the netns no pod wants loses its capture"
    );

    // The proxy (which kept its listeners) answers the re-sent AddPod: the same listener goes
    // in again, harmlessly.
    let mut proxy = node.connect(7);
    assert_eq!(proxy.received().len(), 3);
    node.ready(&proxy, "ns/a");
    assert_eq!(node.calls().len(), 2);

    // Kept capture counts as on: the pod's removal removes it.
    node.reconciler.apply(&snapshot(&[]));
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie: kept,
            ip: Some(pod_ip(1))
        }]
    );
}

#[test]
fn kept_capture_is_removed_when_the_proxy_cannot_serve_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    std::fs::write(&path, "a").unwrap();
    let kept = std::fs::metadata(&path).unwrap().ino();
    let mut node = Node::with_capture(FakeCapture {
        captured: vec![kept],
        ..FakeCapture::default()
    });
    node.dir = dir;
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[])]));
    assert_eq!(node.calls(), vec![]);
    let proxy = node.connect(7);
    node.reconciler.handle(ProxyEvent::Message {
        connection: proxy.connection,
        message: ProxyMessage::PodFailed {
            uid: "ns/a".into(),
            error: "no such netns".into(),
        },
        fds: vec![],
    });
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie: kept,
            ip: Some(pod_ip(1))
        }]
    );
    assert_eq!(
        node.workload("ns/a").proxy,
        "failed: the proxy cannot serve pod ns/a: no such netns"
    );
}

#[test]
fn a_netns_that_cannot_be_opened_is_retried_on_the_next_reading() {
    let mut node = Node::new();
    let mut proxy = node.connect(7);
    let missing = node.dir.path().join("later");
    let plan = PodPlan {
        capture: Some(CaptureSpec {
            netns: NetnsSource::Annotation(missing.clone()),
            ip: Some(pod_ip(1)),
            excluded_outbound_ports: vec![],
            excluded_inbound_ports: vec![],
            fail_closed: false,
            role: PodRole::App,
        }),
        ..uncaptured("a", 1)
    };
    node.reconciler
        .apply(&snapshot(std::slice::from_ref(&plan)));
    let proxy_column = node.workload("ns/a").proxy;
    assert!(
        proxy_column.starts_with(&format!(
            "failed: cannot open the network namespace {} of pod ns/a (from its \
             shunt.io/netns annotation): ",
            missing.display()
        )),
        "{proxy_column}"
    );
    assert_eq!(proxy.received(), vec!["State()", "Synced()", "State(a)"]);

    let (_, cookie) = node.netns("later");
    node.reconciler
        .apply(&snapshot(std::slice::from_ref(&plan)));
    assert_eq!(
        proxy.received(),
        vec![format!("AddPod(ns/a, {cookie}) +fd")]
    );
    assert_eq!(node.workload("ns/a").proxy, "pending");
}

#[test]
fn two_pods_cannot_share_a_netns() {
    let mut node = Node::new();
    let a = node.captured("a", 1, &[]);
    let mut b = node.captured("b", 2, &[]);
    if let Some(spec) = &mut b.capture {
        spec.netns = NetnsSource::Annotation(node.netns("a").0);
    }
    node.reconciler.apply(&snapshot(&[a, b]));
    assert_eq!(node.workload("ns/a").proxy, "pending");
    assert!(
        node.workload("ns/b")
            .proxy
            .starts_with("failed: pod ns/b uses network namespace "),
        "{}",
        node.workload("ns/b").proxy
    );
}

#[test]
fn a_failing_capture_is_rolled_back_and_reported() {
    let mut node = Node::with_capture(FakeCapture {
        fail_add: true,
        ..FakeCapture::default()
    });
    let (_, cookie) = node.netns("a");
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[])]));
    let proxy = node.connect(7);
    node.ready(&proxy, "ns/a");
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie,
            ip: Some(pod_ip(1))
        }]
    );
    assert_eq!(
        node.workload("ns/a").proxy,
        "failed: capture could not turn capture on for pod ns/a: injected failure"
    );

    // A PodReady without the listener is a failure too.
    let mut node = Node::new();
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[])]));
    let proxy = node.connect(7);
    node.reconciler.handle(ProxyEvent::Message {
        connection: proxy.connection,
        message: ProxyMessage::PodReady {
            uid: "ns/a".into(),
            listeners: Vec::new(),
        },
        fds: vec![],
    });
    assert_eq!(
        node.workload("ns/a").proxy,
        "failed: the proxy answered PodReady for pod ns/a without its inbound listener descriptor"
    );
}

#[test]
fn a_new_proxy_connection_replaces_the_old_one() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("a");
    node.reconciler
        .apply(&snapshot(&[node.captured("a", 1, &[])]));
    let mut old = node.connect(7);
    node.ready(&old, "ns/a");
    node.calls();
    let mut new = node.connect(8);
    assert_eq!(
        new.received(),
        vec![
            "State(a)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd"),
            "Synced(ns/a)".to_owned(),
        ]
    );
    assert_eq!(node.workload("ns/a").proxy, "pending");
    old.received();
    assert!(
        old.inbox.is_closed(),
        "the old connection's outbox is dropped"
    );

    // Late events of the old connection change nothing.
    node.ready(&old, "ns/a");
    node.reconciler.handle(ProxyEvent::Disconnected {
        connection: old.connection,
        reason: "replaced".into(),
    });
    assert_eq!(node.calls(), vec![]);
    assert_eq!(node.reconciler.view.borrow().proxy.pid, Some(8));

    node.reconciler.handle(ProxyEvent::Disconnected {
        connection: new.connection,
        reason: "gone".into(),
    });
    assert_eq!(
        node.reconciler.view.borrow().proxy,
        api::ProxyStatus {
            connected: false,
            pid: None,
            refused: None,
        }
    );
    assert_eq!(
        node.calls(),
        vec![],
        "capture stays while the proxy is away"
    );
}

#[test]
fn a_gateway_pod_is_served_without_capture_and_changing_role_serves_it_afresh() {
    let mut node = Node::new();
    let (_, cookie) = node.netns("gw");
    let gateway = |node: &Node| {
        let mut plan = node.captured("gw", 9, &[]);
        if let Some(spec) = plan.capture.as_mut() {
            spec.role = PodRole::Gateway;
        }
        plan
    };
    node.reconciler.apply(&snapshot(&[gateway(&node)]));
    let mut proxy = node.connect(7);
    assert_eq!(
        proxy.received(),
        vec![
            "State(gw)".to_owned(),
            format!("AddPod(ns/gw, {cookie}, Loopback, Gateway) +fd"),
            "Synced(ns/gw)".to_owned(),
        ]
    );
    // PodReady for a gateway pod carries no listener, and turns no capture on.
    node.reconciler.handle(ProxyEvent::Message {
        connection: proxy.connection,
        message: ProxyMessage::PodReady {
            listeners: Vec::new(),
            uid: "ns/gw".into(),
        },
        fds: vec![],
    });
    assert_eq!(
        node.calls(),
        vec![],
        "a gateway pod's traffic is not captured"
    );
    let workload = node.workload("ns/gw");
    assert_eq!(workload.proxy, "ready");
    assert!(
        !workload.captured,
        "a gateway pod is not a captured app pod"
    );

    // The same pod opted in as an app pod instead (the state changes: it is captured now):
    // removed, then handed over as an app.
    let app = node.captured("gw", 9, &[]);
    node.reconciler.apply(&snapshot(&[app]));
    assert_eq!(
        proxy.received(),
        vec![
            "State(gw)".to_owned(),
            "RemovePod(ns/gw)".to_owned(),
            format!("AddPod(ns/gw, {cookie}) +fd"),
        ]
    );
    assert_eq!(
        node.calls(),
        vec![],
        "nothing was captured, so nothing to remove"
    );
}

/// A captured pod that no annotation places, as a real cluster's.
fn discovered_plan(name: &str, ip: Option<u8>) -> PodPlan {
    PodPlan {
        capture: Some(CaptureSpec {
            netns: NetnsSource::Discovered,
            ip: ip.map(pod_ip),
            excluded_outbound_ports: vec![],
            excluded_inbound_ports: vec![],
            fail_closed: false,
            role: PodRole::App,
        }),
        ip: ip.map(pod_ip),
        ..uncaptured(name, 0)
    }
}

fn found(name: &str, netns: &Path, ips: &[u8], origin: Origin) -> DiscoveryEvent {
    DiscoveryEvent::Found(crate::discovery::Discovered {
        pod: PodRef {
            namespace: "ns".into(),
            name: name.into(),
            uid: Some(format!("ns/{name}").into()),
        },
        netns: netns.to_owned(),
        ips: ips.iter().copied().map(pod_ip).collect(),
        origin,
    })
}

fn sandbox(id: &str) -> Origin {
    Origin::Cni {
        container_id: id.into(),
    }
}

#[test]
fn a_pod_without_a_netns_waits_for_discovery_and_is_captured_once_found() {
    let mut node = Node::new();
    let mut proxy = node.connect(7);
    let plan = discovered_plan("a", Some(1));
    node.reconciler
        .apply(&snapshot(std::slice::from_ref(&plan)));
    // Not an error: it waits, and the scan is told to look for it.
    assert_eq!(node.workload("ns/a").proxy, "pending netns discovery");
    assert_eq!(node.workload("ns/a").netns, None);
    let pending = node.reconciler.pending_discovery().borrow().clone();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.uid.as_str(), p.ip))
            .collect::<Vec<_>>(),
        vec![("ns/a", pod_ip(1))]
    );
    assert_eq!(proxy.received(), vec!["State()", "Synced()", "State(a)"]);

    let (path, cookie) = node.netns("sandbox-1");
    node.reconciler
        .discovered(found("a", &path, &[1], sandbox("c1")));
    assert_eq!(
        proxy.received(),
        vec![format!("AddPod(ns/a, {cookie}) +fd")]
    );
    assert!(node.reconciler.pending_discovery().borrow().is_empty());
    node.ready(&proxy, "ns/a");
    let workload = node.workload("ns/a");
    assert_eq!(workload.proxy, "ready");
    assert_eq!(workload.netns.as_deref(), Some(path.as_path()));
    assert!(
        workload.reason.ends_with(&format!(
            "; netns {} found by the CNI plugin's ADD (sandbox c1)",
            path.display()
        )),
        "{}",
        workload.reason
    );
    let state = node.reconciler.view.borrow().pods[&PodUid::new("ns/a")].clone();
    assert_eq!(
        (state.netns.as_deref(), &state.status),
        (Some(path.as_path()), &PodStatus::Ready)
    );
    node.calls();

    // A DEL of another sandbox changes nothing; of this one, the pod is forgotten.
    node.reconciler.discovered(DiscoveryEvent::Gone {
        pod: PodRef {
            namespace: "ns".into(),
            name: "a".into(),
            uid: None,
        },
        container_id: "c0".into(),
    });
    assert_eq!(proxy.received(), Vec::<String>::new());
    node.reconciler.discovered(DiscoveryEvent::Gone {
        pod: PodRef {
            namespace: "ns".into(),
            name: "a".into(),
            uid: Some("ns/a".into()),
        },
        container_id: "c1".into(),
    });
    assert_eq!(proxy.received(), vec!["RemovePod(ns/a)"]);
    assert_eq!(
        node.calls(),
        vec![Call::Remove {
            cookie,
            ip: Some(pod_ip(1))
        }]
    );
    assert_eq!(node.workload("ns/a").proxy, "pending netns discovery");
}

#[test]
fn discovery_gives_the_ip_of_a_pod_that_has_none_yet_and_must_agree_with_one_it_has() {
    // (status.podIP, the find's addresses, expected proxy column prefix, capture's IP)
    type Case<'a> = (Option<u8>, &'a [u8], &'a str, Option<u8>);
    let cases: &[Case<'_>] = &[
        // Kubelet sets status.podIP only after ADD: the CNI result's IP is used.
        (None, &[9], "pending", Some(9)),
        (Some(9), &[9], "pending", Some(9)),
        (Some(9), &[], "pending", Some(9)),
        (Some(9), &[8], "failed: pod ns/a: its netns", None),
        (None, &[], "failed: pod ns/a: its netns", None),
    ];
    for (status_ip, found_ips, want, capture_ip) in cases {
        let mut node = Node::new();
        let proxy = node.connect(7);
        node.reconciler
            .apply(&snapshot(&[discovered_plan("a", *status_ip)]));
        let (path, _) = node.netns("sandbox");
        node.reconciler
            .discovered(found("a", &path, found_ips, sandbox("c1")));
        let case = format!("{status_ip:?} {found_ips:?}");
        let column = node.workload("ns/a").proxy;
        assert!(column.starts_with(want), "{case}: {column}");
        node.ready(&proxy, "ns/a");
        let listener_ip = node.calls().into_iter().find_map(|call| match call {
            Call::Listener { ip } => Some(ip),
            _ => None,
        });
        assert_eq!(listener_ip, capture_ip.map(pod_ip), "{case}");
    }
}

#[test]
fn a_scan_find_does_not_replace_a_sandbox_the_cni_named() {
    let mut node = Node::new();
    let mut proxy = node.connect(7);
    node.reconciler
        .apply(&snapshot(&[discovered_plan("a", Some(1))]));
    let (cni, cookie) = node.netns("cni");
    let (scanned, _) = node.netns("scanned");
    node.reconciler
        .discovered(found("a", &cni, &[1], sandbox("c1")));
    node.reconciler
        .discovered(found("a", &scanned, &[1], Origin::ProcScan { pid: 42 }));
    assert_eq!(
        proxy.received(),
        vec![
            "State()".to_owned(),
            "Synced()".to_owned(),
            "State(a)".to_owned(),
            format!("AddPod(ns/a, {cookie}) +fd")
        ]
    );
    assert_eq!(node.workload("ns/a").netns.as_deref(), Some(cni.as_path()));
}
