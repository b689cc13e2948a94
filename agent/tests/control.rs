//! The control server and the reconciler against a fake proxy speaking the real wire protocol
//! over the real socket. Needs no root: capture is a recording fake and plain files stand in
//! for network namespaces.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "the test helpers fail the test by panicking"
)]

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shunt_agent::capture::ebpf::PodCapture;
use shunt_agent::config::Snapshot;
use shunt_agent::control::ControlServer;
use shunt_agent::netns::PodNetns;
use shunt_agent::pods::{CaptureMaps, NodeView, Reconciler};
use shunt_agent::proxy_cgroup::CgroupRequirement;
use shunt_agent::source::local_dir;
use shunt_api::control::{self as wire, AgentMessage, InboundBind, ListenerKind, ProxyMessage};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Add {
        cookie: u64,
        ip: Ipv4Addr,
        outbound: Vec<u16>,
    },
    Listener {
        ip: Ipv4Addr,
    },
    Remove {
        cookie: u64,
        ip: Option<Ipv4Addr>,
    },
}

#[derive(Clone, Default)]
struct FakeCapture {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeCapture {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

impl CaptureMaps for FakeCapture {
    type Error = std::io::Error;

    fn add_pod(&mut self, pod: &PodCapture<'_>) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(Call::Add {
            cookie: pod.netns_cookie,
            ip: pod.pod_ip,
            outbound: pod.excluded_outbound_ports.clone(),
        });
        Ok(())
    }

    fn set_inbound_listener(&mut self, ip: Ipv4Addr, _: BorrowedFd<'_>) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(Call::Listener { ip });
        Ok(())
    }

    fn remove_pod(&mut self, cookie: u64, ip: Option<Ipv4Addr>) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(Call::Remove { cookie, ip });
        Ok(())
    }

    fn captured_netns(&self) -> std::io::Result<Vec<u64>> {
        Ok(vec![])
    }
}

fn open_file(path: &Path) -> std::io::Result<PodNetns> {
    let file = File::open(path)?;
    let cookie = file.metadata()?.ino();
    Ok(PodNetns {
        fd: file.into(),
        cookie,
    })
}

const TIMEOUT: Duration = Duration::from_secs(5);

struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    config_dir: PathBuf,
    netns: PathBuf,
    capture: FakeCapture,
    snapshots: watch::Sender<Arc<Snapshot>>,
    view: watch::Receiver<NodeView>,
    shutdown: CancellationToken,
}

impl Agent {
    async fn start() -> Self {
        Self::start_requiring(None).await
    }

    /// An agent that serves only proxies inside `cgroup` (eBPF capture's rule).
    async fn start_requiring(cgroup: Option<CgroupRequirement>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        let netns = dir.path().join("netns-web");
        std::fs::write(&netns, "web").unwrap();
        let socket = dir.path().join("run/control.sock");
        std::fs::create_dir(dir.path().join("run")).unwrap();

        let capture = FakeCapture::default();
        let reconciler = Reconciler::new(capture.clone()).with_netns_opener(open_file);
        let view = reconciler.view();
        let server = ControlServer::bind(&socket).unwrap().require_cgroup(cgroup);
        let (events_tx, events) = mpsc::channel(16);
        let (snapshots, snapshots_rx) = watch::channel(Arc::new(Snapshot::default()));
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(events_tx, shutdown.clone()));
        tokio::spawn(reconciler.run(snapshots_rx, events, shutdown.clone()));
        Self {
            _dir: dir,
            socket,
            config_dir,
            netns,
            capture,
            snapshots,
            view,
            shutdown,
        }
    }

    /// Writes the config dir and publishes it, as the watcher would.
    fn configure(&self, pods: &[(&str, &str)]) {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n",
        );
        for (name, ip) in pods {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  \
                 uid: uid-{name}\n  annotations:\n    shunt.io/netns: {}\n    \
                 traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\"\nstatus: {{podIP: {ip}}}\n",
                self.netns.display()
            ));
        }
        std::fs::write(self.config_dir.join("node.yaml"), yaml).unwrap();
        let snapshot = local_dir::load(&self.config_dir, &Default::default()).unwrap();
        assert_eq!(snapshot.errors, vec![]);
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    fn cookie(&self) -> u64 {
        std::fs::metadata(&self.netns).unwrap().ino()
    }

    async fn wait_for(&mut self, what: &str, done: impl Fn(&NodeView) -> bool) {
        tokio::time::timeout(TIMEOUT, self.view.wait_for(|view| done(view)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }
}

/// A proxy speaking the wire protocol.
struct FakeProxy {
    stream: UnixStream,
}

impl FakeProxy {
    async fn connect(socket: &Path, pid: u32) -> Self {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        let hello = ProxyMessage::Hello {
            pid,
            version: "test".into(),
        };
        wire::send(&mut stream, &hello, &[]).await.unwrap();
        Self { stream }
    }

    async fn recv(&mut self) -> (AgentMessage, Vec<OwnedFd>) {
        tokio::time::timeout(TIMEOUT, wire::recv(&mut self.stream))
            .await
            .expect("the agent sends within the timeout")
            .unwrap()
    }

    async fn send(&mut self, message: ProxyMessage, fds: &[BorrowedFd<'_>]) {
        let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        wire::send(&mut self.stream, &message, &raw).await.unwrap();
    }
}

#[tokio::test]
async fn the_proxy_gets_state_and_pods_and_capture_follows_its_answers() {
    let mut agent = Agent::start().await;
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "only root may drive the proxy");
    agent.configure(&[("web", "10.0.0.5")]);
    agent
        .wait_for("the pod to be planned", |view| view.workloads.len() == 1)
        .await;

    let mut proxy = FakeProxy::connect(&agent.socket, 4242).await;
    let (state, _) = proxy.recv().await;
    let AgentMessage::State { state } = state else {
        panic!("expected State first, got {state:?}");
    };
    assert_eq!(state.workloads.len(), 1);
    assert_eq!(state.workloads[0].uid, "uid-web");
    assert!(state.workloads[0].captured);

    let (add, fds) = proxy.recv().await;
    assert_eq!(
        add,
        AgentMessage::AddPod {
            uid: "uid-web".into(),
            netns_cookie: agent.cookie(),
            inbound_bind: InboundBind::Loopback,
            role: shunt_api::control::PodRole::App,
            listeners: Vec::new(),
        }
    );
    assert_eq!(fds.len(), 1, "AddPod carries the pod's netns");
    let passed = nix::sys::stat::fstat(fds[0].as_fd()).unwrap();
    assert_eq!(passed.st_ino, agent.cookie(), "it is the pod's netns file");
    assert_eq!(
        proxy.recv().await.0,
        AgentMessage::Synced {
            pods: vec!["uid-web".into()]
        }
    );
    agent
        .wait_for("the proxy to show as connected", |view| {
            view.proxy.connected && view.proxy.pid == Some(4242)
        })
        .await;
    assert_eq!(agent.capture.take(), vec![], "capture waits for PodReady");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    proxy
        .send(
            ProxyMessage::PodReady {
                uid: "uid-web".into(),
                listeners: Vec::new(),
            },
            &[listener.as_fd()],
        )
        .await;
    agent
        .wait_for("the pod to be ready", |view| {
            view.workloads[0].proxy == "ready"
        })
        .await;
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    assert_eq!(
        agent.capture.take(),
        vec![
            Call::Add {
                cookie: agent.cookie(),
                ip,
                outbound: vec![5432],
            },
            Call::Listener { ip },
        ]
    );

    // The pod leaves the config: the proxy hears of it and capture goes.
    agent.configure(&[]);
    let (state, _) = proxy.recv().await;
    assert!(matches!(state, AgentMessage::State { state } if state.workloads.is_empty()));
    assert_eq!(
        proxy.recv().await.0,
        AgentMessage::RemovePod {
            uid: "uid-web".into()
        }
    );
    agent
        .wait_for("the pod to be gone", |view| view.workloads.is_empty())
        .await;
    assert_eq!(
        agent.capture.take(),
        vec![Call::Remove {
            cookie: agent.cookie(),
            ip: Some(ip)
        }]
    );
    agent.shutdown.cancel();
}

#[tokio::test]
async fn a_new_proxy_connection_replaces_the_old_one() {
    let mut agent = Agent::start().await;
    agent.configure(&[("web", "10.0.0.5")]);
    agent
        .wait_for("the pod to be planned", |view| view.workloads.len() == 1)
        .await;
    let mut old = FakeProxy::connect(&agent.socket, 1).await;
    for _ in 0..3 {
        old.recv().await;
    }
    // The old proxy serves the pod with two listeners, which the agent keeps.
    let outbound = TcpListener::bind("127.0.0.1:0").unwrap();
    let inbound = TcpListener::bind("127.0.0.1:0").unwrap();
    old.send(
        ProxyMessage::PodReady {
            uid: "uid-web".into(),
            listeners: vec![ListenerKind::Outbound, ListenerKind::Inbound],
        },
        &[outbound.as_fd(), inbound.as_fd()],
    )
    .await;
    agent
        .wait_for("the pod to be ready", |view| {
            view.workloads[0].proxy == "ready"
        })
        .await;
    assert_eq!(
        agent.capture.take().len(),
        2,
        "capture on, with the inbound listener"
    );
    let mut new = FakeProxy::connect(&agent.socket, 2).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (message, fds) = new.recv().await;
        kinds.push(match message {
            AgentMessage::State { .. } => "state",
            AgentMessage::AddPod { listeners, .. } => {
                // The netns, then the old proxy's own sockets, for the new one to accept from.
                assert_eq!(listeners, [ListenerKind::Outbound, ListenerKind::Inbound]);
                assert_eq!(fds.len(), 3);
                for (fd, listener) in fds[1..].iter().zip([&outbound, &inbound]) {
                    let handed = TcpListener::from(fd.try_clone().unwrap());
                    assert_eq!(handed.local_addr().unwrap(), listener.local_addr().unwrap());
                }
                "add_pod"
            }
            AgentMessage::Synced { .. } => "synced",
            AgentMessage::RemovePod { .. } => "remove_pod",
            AgentMessage::SpliceMaps => "splice_maps",
            AgentMessage::TcpEvents => "tcp_events",
            AgentMessage::Refused { .. } => "refused",
            AgentMessage::Credentials { .. } => "credentials",
            AgentMessage::Superseded => "superseded",
        });
    }
    assert_eq!(kinds, vec!["state", "add_pod", "synced"]);
    // The old proxy hears that it is superseded (so it does not redial), then the close.
    let (told, _) = old.recv().await;
    assert_eq!(told, AgentMessage::Superseded);
    let closed = tokio::time::timeout(TIMEOUT, wire::recv::<AgentMessage>(&mut old.stream))
        .await
        .expect("the old connection is closed promptly");
    assert!(matches!(closed, Err(wire::Error::Closed)), "{closed:?}");
    agent
        .wait_for("the new proxy to be the one", |view| {
            view.proxy.pid == Some(2)
        })
        .await;

    // The new proxy leaving does not touch capture.
    drop(new);
    agent
        .wait_for("the proxy to show as gone", |view| !view.proxy.connected)
        .await;
    assert_eq!(agent.capture.take(), vec![]);
    agent.shutdown.cancel();
}

#[tokio::test]
async fn a_peer_that_does_not_say_hello_is_dropped() {
    let agent = Agent::start().await;
    let mut stream = UnixStream::connect(&agent.socket).await.unwrap();
    let not_hello = ProxyMessage::PodReady {
        uid: "x".into(),
        listeners: Vec::new(),
    };
    wire::send(&mut stream, &not_hello, &[]).await.unwrap();
    let answer = tokio::time::timeout(TIMEOUT, wire::recv::<AgentMessage>(&mut stream))
        .await
        .expect("the agent hangs up promptly");
    assert!(matches!(answer, Err(wire::Error::Closed)), "{answer:?}");
    assert!(!agent.view.borrow().proxy.connected);
    agent.shutdown.cancel();
}

/// This test process is the proxy here: the agent reads its cgroup from `/proc` by the pid
/// the kernel gives for the socket, so a made-up mount decides inside or outside.
fn requirement(cgroup: &str) -> CgroupRequirement {
    CgroupRequirement {
        cgroup: PathBuf::from(cgroup),
        cgroup2_mount: PathBuf::from("/cg"),
    }
}

#[tokio::test]
async fn a_proxy_outside_the_capture_cgroup_is_refused_and_shown_why() {
    let mut agent = Agent::start_requiring(Some(requirement("/cg/shunt-no-such-cgroup"))).await;
    agent.configure(&[("web", "10.244.0.10")]);
    let mut proxy = FakeProxy::connect(&agent.socket, 41).await;
    let (answer, _) = proxy.recv().await;
    let AgentMessage::Refused { reason } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    let own = std::process::id();
    for needle in [
        format!("pid {own}"),
        "outside the capture cgroup /cg/shunt-no-such-cgroup (--cgroup)".to_owned(),
        "/cg/shunt-no-such-cgroup/cgroup.procs".to_owned(),
    ] {
        assert!(reason.contains(&needle), "{needle:?} missing: {reason}");
    }
    // Nothing else is sent: no state, no pod, and capture is not touched.
    let closed = tokio::time::timeout(TIMEOUT, wire::recv::<AgentMessage>(&mut proxy.stream))
        .await
        .expect("the agent hangs up promptly");
    assert!(matches!(closed, Err(wire::Error::Closed)), "{closed:?}");
    agent
        .wait_for("the refusal in the view", |view| {
            view.proxy.refused.is_some()
        })
        .await;
    let status = agent.view.borrow().proxy.clone();
    assert!(!status.connected);
    assert_eq!(status.pid, Some(own));
    assert_eq!(status.refused.as_deref(), Some(reason.as_str()));
    assert_eq!(agent.capture.take(), vec![]);

    // Inside: served as usual, and the refusal is gone from the view.
    agent.shutdown.cancel();
    let mut agent = Agent::start_requiring(Some(requirement("/cg"))).await;
    agent.configure(&[("web", "10.244.0.10")]);
    let mut proxy = FakeProxy::connect(&agent.socket, 42).await;
    let (answer, _) = proxy.recv().await;
    assert!(matches!(answer, AgentMessage::State { .. }), "{answer:?}");
    agent
        .wait_for("the proxy to be served", |view| view.proxy.connected)
        .await;
    assert_eq!(agent.view.borrow().proxy.refused, None);
    agent.shutdown.cancel();
}
