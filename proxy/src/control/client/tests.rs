//! The control client against a fake agent speaking the real wire protocol.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::inpod::PodRegistry;
use crate::socket::{CurrentNetnsSocketFactory, NetnsSocketFactory, SocketFactory};
use crate::testing::*;
use shunt_api::control::{recv, send};
use shunt_mesh::model::MeshState;
use shunt_mesh::testing::pod;

const WEB: &str = "uid-shop-web-1";
const API: &str = "uid-shop-api-1";

fn mesh() -> MeshState {
    MeshState {
        workloads: vec![
            pod("shop", "web-1", [127, 0, 0, 10], "web"),
            pod("shop", "api-1", [127, 0, 0, 2], "api"),
        ],
        services: vec![],
        ..Default::default()
    }
}

fn client(
    test: &TestProxy,
    factory: Arc<dyn SocketFactory>,
    path: &Path,
) -> (ControlClient, Arc<PodRegistry>) {
    let registry = Arc::new(test.registry(factory, Duration::from_secs(1)));
    let client = ControlClient::new(
        path.to_owned(),
        test.proxy.state.clone(),
        registry.clone(),
        test.proxy.splice.clone(),
        test.proxy.gateway_tls.credentials().clone(),
    );
    (client, registry)
}

/// The fake agent's side of a session.
struct Agent(UnixStream);

impl Agent {
    async fn expect_hello(&mut self) {
        let (hello, fds): (ProxyMessage, _) = recv(&mut self.0).await.unwrap();
        assert_eq!(
            hello,
            ProxyMessage::Hello {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }
        );
        assert!(fds.is_empty());
    }

    async fn send(&mut self, message: AgentMessage, fds: &[BorrowedFd<'_>]) {
        let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        send(&mut self.0, &message, &raw).await.unwrap();
    }

    async fn add_pod(
        &mut self,
        uid: &str,
        netns_cookie: u64,
        netns: Option<BorrowedFd<'_>>,
    ) -> (ProxyMessage, Vec<OwnedFd>) {
        let message = AgentMessage::AddPod {
            uid: uid.into(),
            netns_cookie,
            inbound_bind: InboundBind::Loopback,
            role: shunt_api::control::PodRole::App,
            listeners: Vec::new(),
        };
        self.send(message, netns.as_slice()).await;
        recv(&mut self.0).await.unwrap()
    }

    /// Adds `uid` and returns the inbound listener the proxy handed back.
    async fn add_ready_pod(
        &mut self,
        uid: &str,
        netns_cookie: u64,
        netns: BorrowedFd<'_>,
    ) -> OwnedFd {
        let (reply, fds) = self.add_pod(uid, netns_cookie, Some(netns)).await;
        assert_eq!(
            reply,
            ProxyMessage::PodReady {
                uid: uid.into(),
                listeners: vec![ListenerKind::Outbound, ListenerKind::Inbound],
            }
        );
        assert_eq!(fds.len(), 2, "PodReady must carry both listeners");
        fds.into_iter().nth(1).unwrap()
    }
}

/// Where a received socket descriptor listens, and its inode (the socket's identity).
fn listener_identity(fd: &OwnedFd) -> (SocketAddr, u64) {
    let listening =
        nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn).unwrap();
    assert!(listening, "the descriptor is not a listening socket");
    let addr = socket2::SockRef::from(fd)
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap();
    (addr, nix::sys::stat::fstat(fd).unwrap().st_ino)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_session_serves_pods_and_answers_with_their_inbound_listener() {
    let test = TestProxy::new(false);
    let (client, registry) = client(
        &test,
        Arc::new(CurrentNetnsSocketFactory),
        Path::new("/unused"),
    );
    let (agent_end, proxy_end) = UnixStream::pair().unwrap();
    let session = tokio::spawn(async move { client.serve(proxy_end).await });
    let mut agent = Agent(agent_end);
    let (netns, cookie) = (own_netns(), own_netns_cookie());

    agent.expect_hello().await;
    agent.send(AgentMessage::State { state: mesh() }, &[]).await;
    let listener = agent.add_ready_pod(WEB, cookie, netns.as_fd()).await;
    let (addr, inode) = listener_identity(&listener);
    assert_eq!(Some(addr), registry.listeners(WEB).map(|l| l.inbound));
    assert_eq!(
        test.proxy.state.load().workload_count(),
        2,
        "State was applied"
    );
    tokio::net::TcpStream::connect(addr).await.unwrap();

    // The agent restarted and announces the pod again: same listener, nothing reopened.
    let again = agent.add_ready_pod(WEB, cookie, netns.as_fd()).await;
    assert_eq!(listener_identity(&again), (addr, inode));

    for (uid, cookie, fds, error_has) in [
        (API, cookie, None, "expected 1: the pod's network namespace"),
        (API, cookie + 1, Some(netns.as_fd()), "cookie"),
    ] {
        let (reply, fds) = agent.add_pod(uid, cookie, fds).await;
        let ProxyMessage::PodFailed { uid: failed, error } = reply else {
            panic!("expected PodFailed, got {reply:?}");
        };
        assert_eq!(failed, uid);
        assert!(error.contains(error_has), "{error}");
        assert!(fds.is_empty());
    }

    agent.add_ready_pod(API, cookie, netns.as_fd()).await;
    let outbound = registry.listeners(WEB).unwrap().outbound;
    agent
        .send(AgentMessage::RemovePod { uid: WEB.into() }, &[])
        .await;
    wait_until("WEB is removed", || registry.served() == [API]).await;
    // The proxy closed its listeners; the inbound one lives on only while the agent keeps the
    // copy it was handed, so an agent closes that copy once the sockhash holds it.
    drop((listener, again));
    for addr in [addr, outbound] {
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}"
        );
    }

    agent.send(AgentMessage::Synced { pods: vec![] }, &[]).await;
    wait_until("Synced removes every unlisted pod", || {
        registry.served().is_empty()
    })
    .await;

    drop(agent);
    let ended = session.await.unwrap().unwrap_err();
    assert!(matches!(ended, Error::Wire(wire::Error::Closed)), "{ended}");
}

#[tokio::test]
async fn while_the_agent_is_away_the_proxy_keeps_everything_and_redials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let test = TestProxy::new(false);
    let (client, registry) = client(&test, Arc::new(CurrentNetnsSocketFactory), &path);
    let shutdown = CancellationToken::new();
    let running = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { client.run(shutdown).await })
    };
    // The agent comes up after the proxy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = UnixListener::bind(&path).unwrap();
    let accept = || async {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(3), listener.accept())
            .await
            .expect("the proxy did not dial")
            .unwrap();
        let mut agent = Agent(stream);
        agent.expect_hello().await;
        agent
    };

    let mut agent = accept().await;
    let (netns, cookie) = (own_netns(), own_netns_cookie());
    agent.send(AgentMessage::State { state: mesh() }, &[]).await;
    let (_, inode) = listener_identity(&agent.add_ready_pod(WEB, cookie, netns.as_fd()).await);
    drop(agent);

    // Agent gone: the state and the pod's listeners stay.
    let gone = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(test.proxy.state.load().workload_count(), 2);
    let outbound = registry.listeners(WEB).unwrap().outbound;
    tokio::net::TcpStream::connect(outbound).await.unwrap();

    let mut agent = accept().await;
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "redialled after {:?}",
        gone.elapsed()
    );
    let again = agent.add_ready_pod(WEB, cookie, netns.as_fd()).await;
    assert_eq!(
        listener_identity(&again).1,
        inode,
        "the listener was reopened"
    );
    agent
        .send(
            AgentMessage::Synced {
                pods: vec![WEB.into()],
            },
            &[],
        )
        .await;
    // Synced is processed before the next frame; a further AddPod proves it kept WEB.
    agent.add_ready_pod(API, cookie, netns.as_fd()).await;
    assert_eq!(registry.served(), [API, WEB]);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_pod_netns_gets_listeners_inside_it_and_traffic_flows_through_them() {
    if !is_root() {
        eprintln!("skipped: creating a network namespace needs root");
        return;
    }
    let netns = TestNetns::create("client-listeners");
    let cookie = shunt_api::netns::netns_cookie(netns.open().as_fd()).unwrap();
    let test = TestProxy::new(false);
    test.proxy.state.replace(&mesh());
    let (client, registry) = client(&test, Arc::new(NetnsSocketFactory), Path::new("/unused"));
    let (agent_end, proxy_end) = UnixStream::pair().unwrap();
    let session = tokio::spawn(async move { client.serve(proxy_end).await });
    let mut agent = Agent(agent_end);
    agent.expect_hello().await;

    let inbound = agent.add_ready_pod(WEB, cookie, netns.open().as_fd()).await;
    assert_eq!(
        shunt_api::netns::socket_netns_cookie(inbound.as_fd()).unwrap(),
        cookie
    );
    assert_eq!(
        listener_identity(&inbound).0,
        "127.0.0.1:15006".parse().unwrap()
    );
    assert_eq!(
        registry.listeners(WEB).unwrap().outbound,
        "127.0.0.1:15001".parse().unwrap()
    );

    // An app server and an app client, both inside the pod's netns.
    let server = netns
        .run(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:7000")?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .unwrap();
    let server = tokio::net::TcpListener::from_std(server).unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.unwrap();
        let (mut rx, mut tx) = stream.split();
        tokio::io::copy(&mut rx, &mut tx).await.unwrap();
        tx.shutdown().await.unwrap();
    });
    let new_client_socket = || {
        let socket = netns
            .run(|| {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .unwrap();
        TcpSocket::from_std_stream(socket.into())
    };
    let app = new_client_socket();
    test.outbound
        .insert(app.local_addr().unwrap(), "127.0.0.1:7000".parse().unwrap());
    let mut app = app
        .connect("127.0.0.1:15001".parse().unwrap())
        .await
        .unwrap();
    app.write_all(b"through the pod's own listener")
        .await
        .unwrap();
    app.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    app.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"through the pod's own listener");
    let line = &test.log_lines(1).await[0];
    assert_eq!(line["pod"], "shop/web-1");
    assert_eq!(line["upstream_addr"], "127.0.0.1:7000");
    assert_eq!(line["close_reason"], "eof");

    agent
        .send(AgentMessage::RemovePod { uid: WEB.into() }, &[])
        .await;
    wait_until("WEB is removed", || registry.served().is_empty()).await;
    let refused = new_client_socket()
        .connect("127.0.0.1:15001".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    drop(agent);
    assert!(session.await.unwrap().is_err());
}

#[tokio::test]
async fn credentials_replace_the_gateway_credential_store() {
    use shunt_api::credentials::{CredentialMaterial, GatewayCredential};

    let test = TestProxy::new(false);
    let (client, _registry) = client(
        &test,
        Arc::new(CurrentNetnsSocketFactory),
        Path::new("/unused"),
    );
    let (agent_end, proxy_end) = UnixStream::pair().unwrap();
    let session = tokio::spawn(async move { client.serve(proxy_end).await });
    let mut agent = Agent(agent_end);
    agent.expect_hello().await;
    let store = test.proxy.gateway_tls.credentials().clone();
    let mut changes = store.subscribe();
    let unusable = |name: &str| GatewayCredential {
        namespace: "edge".into(),
        name: name.into(),
        resource_version: None,
        material: CredentialMaterial::Unusable {
            reason: format!("Secret edge/{name} has no tls.key"),
        },
    };
    for names in [vec!["a", "b"], vec!["b"]] {
        let credentials = names.iter().map(|name| unusable(name)).collect();
        agent
            .send(AgentMessage::Credentials { credentials }, &[])
            .await;
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the store changed")
            .unwrap();
        let current = store.current();
        assert_eq!(current.len(), names.len(), "{names:?}");
        for name in &names {
            assert!(current.get("edge", name).is_some(), "{name}");
        }
    }
    assert!(store.current().get("edge", "a").is_none(), "replaced whole");
    assert_eq!(
        test.proxy.metrics.gateway.unusable_credentials(),
        ["edge/b"]
    );
    drop(agent);
    session.await.unwrap().unwrap_err();
}
