//! Sockets inside a pod's network namespace: the seam between the proxy and the pods.
//!
//! A socket belongs to the netns it was created in, so only `socket(2)` has to run inside the
//! pod's netns. [`NetnsSocketFactory`] gives every pod a long-lived worker thread that entered
//! the pod's netns once and creates sockets on request; binding, connecting and I/O then
//! happen on the tokio runtime like any other socket. The worker keeps a few unconnected IPv4
//! sockets ready, so a dial takes one without waiting for the worker thread. [`CurrentNetnsSocketFactory`] creates
//! sockets in the proxy's own netns, for tests without pod namespaces.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// A boxed future, so the traits below stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Unconnected IPv4 sockets each pod's worker keeps ready for dials. A dial that finds the
/// pool empty asks the worker directly, so this bounds idle descriptors, not dials.
const READY_SOCKETS: usize = 8;

/// A dial that leaves this few ready sockets (or finds none) asks the worker to top the pool
/// up. Waking the worker is a context switch on the proxy's CPU, so it happens once per few
/// dials, not on every one.
const REFILL_BELOW: usize = READY_SOCKETS / 2;

/// Listen backlog of the pod listeners: apps open connections in bursts.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start a socket worker thread for pod {pod}: {source}")]
    SpawnWorker { pod: String, source: io::Error },
    #[error(
        "cannot enter pod {pod}'s network namespace (was the pod deleted? setns needs \
         CAP_SYS_ADMIN): {source}"
    )]
    EnterNetns { pod: String, source: io::Error },
    #[error("the socket worker for pod {pod} has stopped; the pod can no longer be served")]
    WorkerGone { pod: String },
    #[error("cannot create a TCP socket in pod {pod}'s network namespace: {source}")]
    Create { pod: String, source: io::Error },
    #[error(
        "cannot listen on {addr} in pod {pod}'s network namespace (does something in the pod \
         already use that port?): {source}"
    )]
    Listen {
        pod: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(
        "cannot set SO_MARK {mark:#x} on a socket in pod {pod}'s network namespace (needs \
         CAP_NET_ADMIN): {source}"
    )]
    Mark {
        pod: String,
        mark: u32,
        source: io::Error,
    },
    #[error("connecting to {addr} from pod {pod} timed out after {timeout:?}")]
    ConnectTimeout {
        pod: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("connecting to {addr} from pod {pod} was refused (nothing listens there?)")]
    ConnectRefused {
        pod: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{addr} is unreachable from pod {pod}: {source}")]
    Unreachable {
        pod: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {addr} from pod {pod} failed: {source}")]
    Connect {
        pod: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// Makes the [`PodSockets`] of a pod from its network namespace.
pub trait SocketFactory: Send + Sync + 'static {
    /// Takes ownership of `netns`; `pod` names the pod in errors and logs.
    fn enter(&self, netns: OwnedFd, pod: &str)
    -> BoxFuture<'_, Result<Arc<dyn PodSockets>, Error>>;
}

/// Sockets inside one pod's network namespace.
pub trait PodSockets: Send + Sync + 'static {
    /// A listener on `addr` (SO_REUSEADDR), ready for tokio. An implementation may pick
    /// another port; callers use the listener's `local_addr()`.
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpListener, Error>>;

    /// A connection to `addr`, marked against recapture before `connect`, given up after
    /// `timeout`.
    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<TcpStream, Error>>;
}

/// The production factory: one netns worker thread per pod; every dial carries
/// [`shunt_common::PROXY_MARK`].
#[derive(Debug, Default)]
pub struct NetnsSocketFactory;

impl SocketFactory for NetnsSocketFactory {
    fn enter(
        &self,
        netns: OwnedFd,
        pod: &str,
    ) -> BoxFuture<'_, Result<Arc<dyn PodSockets>, Error>> {
        let pod = pod.to_owned();
        Box::pin(async move {
            let worker = NetnsWorker::spawn(netns, &pod).await?;
            Ok(Arc::new(worker) as Arc<dyn PodSockets>)
        })
    }
}

/// What a socket is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// An upstream connection: Nagle off, and, when a mark is given, marked against
    /// recapture (connect4 decides on the connect call, so the mark must come first). Both
    /// are set when the socket is made, which for pooled sockets is on the worker thread,
    /// off the dial's path.
    Dial { mark: Option<u32> },
    /// A listener: neither.
    Listen,
}

/// What a pod's worker thread is asked to do.
enum WorkerRequest {
    /// Create one socket of a domain and send it back.
    Socket {
        domain: Domain,
        purpose: Purpose,
        reply: oneshot::Sender<Result<Socket, Error>>,
    },
    /// Top the ready pool up to [`READY_SOCKETS`].
    Refill,
}

/// Unconnected IPv4 dial sockets the worker made ahead of time in the pod's netns.
type ReadyPool = Arc<Mutex<Vec<Socket>>>;

/// What the dials of a pod's worker carry.
const POD_DIAL: Purpose = Purpose::Dial {
    mark: Some(shunt_common::PROXY_MARK),
};

/// A thread inside a pod's netns that creates sockets on request. It ends when the last
/// handle is dropped (its request channel closes).
struct NetnsWorker {
    pod: String,
    requests: mpsc::Sender<WorkerRequest>,
    ready: ReadyPool,
}

impl NetnsWorker {
    async fn spawn(netns: OwnedFd, pod: &str) -> Result<Self, Error> {
        let (requests, incoming) = mpsc::channel::<WorkerRequest>();
        let (entered_tx, entered_rx) = oneshot::channel();
        let ready = ReadyPool::default();
        let pool = ready.clone();
        let worker_pod = pod.to_owned();
        std::thread::Builder::new()
            .name("shunt-netns".into())
            .spawn(move || {
                let entered = setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
                // Only this thread's netns changed; the descriptor is not needed past setns.
                drop(netns);
                let ok = entered.is_ok();
                if ok {
                    // Ready before the pod is announced, so its first dial does not wait.
                    refill(&pool, &worker_pod);
                }
                if entered_tx.send(entered).is_err() || !ok {
                    return;
                }
                while let Ok(request) = incoming.recv() {
                    match request {
                        // The requester may have given up (its connection was cancelled); the
                        // socket is then just closed.
                        WorkerRequest::Socket {
                            domain,
                            purpose,
                            reply,
                        } => {
                            let _ = reply.send(new_socket(domain, purpose, &worker_pod));
                        }
                        WorkerRequest::Refill => refill(&pool, &worker_pod),
                    }
                }
            })
            .map_err(|source| Error::SpawnWorker {
                pod: pod.to_owned(),
                source,
            })?;
        match entered_rx.await {
            Ok(Ok(())) => Ok(Self {
                pod: pod.to_owned(),
                requests,
                ready,
            }),
            Ok(Err(source)) => Err(Error::EnterNetns {
                pod: pod.to_owned(),
                source,
            }),
            Err(_) => Err(Error::WorkerGone {
                pod: pod.to_owned(),
            }),
        }
    }

    async fn socket(&self, domain: Domain, purpose: Purpose) -> Result<Socket, Error> {
        let gone = || Error::WorkerGone {
            pod: self.pod.clone(),
        };
        let pooled = domain == Domain::IPV4 && purpose == POD_DIAL;
        if pooled {
            let taken = self
                .ready
                .lock()
                .ok()
                .and_then(|mut ready| ready.pop().map(|socket| (socket, ready.len())));
            if let Some((socket, left)) = taken {
                if left <= REFILL_BELOW {
                    // Best effort: a worker that is gone shows up on the next empty pool.
                    let _ = self.requests.send(WorkerRequest::Refill);
                }
                return Ok(socket);
            }
        }
        let (reply, socket) = oneshot::channel();
        self.requests
            .send(WorkerRequest::Socket {
                domain,
                purpose,
                reply,
            })
            .map_err(|_| gone())?;
        if pooled {
            // The pool ran dry (dials outpaced the worker, or a refill ran out of descriptors):
            // the worker is awake for this socket anyway.
            let _ = self.requests.send(WorkerRequest::Refill);
        }
        socket.await.map_err(|_| gone())?
    }
}

impl PodSockets for NetnsWorker {
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpListener, Error>> {
        Box::pin(async move {
            let socket = self
                .socket(Domain::for_address(addr), Purpose::Listen)
                .await?;
            listen_on(socket, addr, &self.pod)
        })
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<TcpStream, Error>> {
        Box::pin(async move {
            let socket = self.socket(Domain::for_address(addr), POD_DIAL).await?;
            connect_from(socket, addr, timeout, &self.pod).await
        })
    }
}

/// Sockets in the proxy's own network namespace, for tests that have no pod netns: listeners
/// take a free port on the requested IP instead of the requested port (so several "pods" fit
/// in one netns), and dials are not marked (marking needs CAP_NET_ADMIN).
#[derive(Debug, Default)]
pub struct CurrentNetnsSocketFactory;

impl SocketFactory for CurrentNetnsSocketFactory {
    fn enter(
        &self,
        _netns: OwnedFd,
        pod: &str,
    ) -> BoxFuture<'_, Result<Arc<dyn PodSockets>, Error>> {
        let pod = pod.to_owned();
        Box::pin(async move { Ok(Arc::new(CurrentNetns { pod }) as Arc<dyn PodSockets>) })
    }
}

struct CurrentNetns {
    pod: String,
}

impl PodSockets for CurrentNetns {
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpListener, Error>> {
        Box::pin(async move {
            let socket = new_socket(Domain::for_address(addr), Purpose::Listen, &self.pod)?;
            listen_on(socket, SocketAddr::new(addr.ip(), 0), &self.pod)
        })
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<TcpStream, Error>> {
        Box::pin(async move {
            let socket = new_socket(
                Domain::for_address(addr),
                Purpose::Dial { mark: None },
                &self.pod,
            )?;
            connect_from(socket, addr, timeout, &self.pod).await
        })
    }
}

/// Tops `pool` up with IPv4 sockets made in the calling (worker) thread's netns. A failure
/// (e.g. out of descriptors) just leaves the pool short: dials then ask the worker directly
/// and report the error themselves.
fn refill(pool: &ReadyPool, pod: &str) {
    // Made outside the lock, so a dial popping a socket never waits for socket(2) calls.
    let missing = pool
        .lock()
        .map_or(0, |ready| READY_SOCKETS.saturating_sub(ready.len()));
    let made: Vec<Socket> = (0..missing)
        .map_while(|_| new_socket(Domain::IPV4, POD_DIAL, pod).ok())
        .collect();
    if let Ok(mut ready) = pool.lock() {
        ready.extend(made);
        // Two refills can race past each other; keep the bound.
        ready.truncate(READY_SOCKETS);
    }
}

/// A non-blocking, close-on-exec TCP socket for `purpose` in the calling thread's netns.
fn new_socket(domain: Domain, purpose: Purpose, pod: &str) -> Result<Socket, Error> {
    let socket = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|source| Error::Create {
        pod: pod.to_owned(),
        source,
    })?;
    if let Purpose::Dial { mark } = purpose {
        if let Some(mark) = mark {
            socket.set_mark(mark).map_err(|source| Error::Mark {
                pod: pod.to_owned(),
                mark,
                source,
            })?;
        }
        // A proxy adds latency to every small write unless Nagle is off.
        if let Err(error) = socket.set_tcp_nodelay(true) {
            tracing::debug!(%error, %pod, "could not set TCP_NODELAY on an upstream socket");
        }
    }
    Ok(socket)
}

fn listen_on(socket: Socket, addr: SocketAddr, pod: &str) -> Result<TcpListener, Error> {
    let listen_error = |source| Error::Listen {
        pod: pod.to_owned(),
        addr,
        source,
    };
    // SO_REUSEADDR: a restarted proxy can listen again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(listen_error)?;
    socket.bind(&addr.into()).map_err(listen_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
    TcpListener::from_std(socket.into()).map_err(listen_error)
}

/// Connects `socket`, made by [`new_socket`] for a dial.
async fn connect_from(
    socket: Socket,
    addr: SocketAddr,
    timeout: Duration,
    pod: &str,
) -> Result<TcpStream, Error> {
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(classify_connect_error(pod, addr, timeout, source)),
        Err(_) => {
            return Err(Error::ConnectTimeout {
                pod: pod.to_owned(),
                addr,
                timeout,
            });
        }
    };
    Ok(stream)
}

fn classify_connect_error(
    pod: &str,
    addr: SocketAddr,
    timeout: Duration,
    source: io::Error,
) -> Error {
    let pod = pod.to_owned();
    match source.kind() {
        io::ErrorKind::ConnectionRefused => Error::ConnectRefused { pod, addr, source },
        // The kernel gave up (SYN retries) before our own deadline did.
        io::ErrorKind::TimedOut => Error::ConnectTimeout { pod, addr, timeout },
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => Error::Unreachable { pod, addr, source },
        _ => Error::Connect { pod, addr, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn own_netns() -> OwnedFd {
        shunt_api::netns::open_netns(std::path::Path::new("/proc/self/ns/net")).unwrap()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn connect_errors_are_classified() {
        // A port with no listener: bind one, note its address, close it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sockets = CurrentNetnsSocketFactory
            .enter(own_netns(), "t/p")
            .await
            .unwrap();
        let err = sockets
            .connect(closed, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ConnectRefused { .. }), "{err}");
        assert!(err.to_string().contains(&closed.to_string()), "{err}");

        for (kind, expected) in [
            (io::ErrorKind::HostUnreachable, "unreachable"),
            (io::ErrorKind::NetworkUnreachable, "unreachable"),
            (io::ErrorKind::TimedOut, "timed out"),
            (io::ErrorKind::PermissionDenied, "failed"),
        ] {
            let err = classify_connect_error(
                "t/p",
                closed,
                Duration::from_secs(1),
                io::Error::from(kind),
            );
            assert!(err.to_string().contains(expected), "{kind:?}: {err}");
        }
    }

    #[tokio::test]
    async fn current_netns_listeners_take_free_ports_on_the_requested_ip() {
        let sockets = CurrentNetnsSocketFactory
            .enter(own_netns(), "t/p")
            .await
            .unwrap();
        let a = sockets
            .listen("127.0.0.1:15001".parse().unwrap())
            .await
            .unwrap();
        let b = sockets
            .listen("127.0.0.1:15001".parse().unwrap())
            .await
            .unwrap();
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_ne!(a.port(), b.port());
        assert!(a.ip().is_loopback() && b.ip().is_loopback());
    }

    #[tokio::test]
    async fn the_netns_worker_creates_marked_upstream_sockets() {
        if !is_root() {
            eprintln!("skipped: setting SO_MARK needs root (CAP_NET_ADMIN)");
            return;
        }
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sockets = NetnsSocketFactory.enter(own_netns(), "t/p").await.unwrap();
        let (upstream, accepted) = tokio::join!(
            sockets.connect(server.local_addr().unwrap(), Duration::from_secs(5)),
            server.accept()
        );
        let upstream = upstream.unwrap();
        accepted.unwrap();
        let mark = socket2::SockRef::from(&upstream).mark().unwrap();
        assert_eq!(mark, shunt_common::PROXY_MARK);
        assert!(upstream.nodelay().unwrap());

        let listener = sockets
            .listen("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let listener_ref = socket2::SockRef::from(&listener);
        assert!(listener_ref.reuse_address().unwrap());
        // Only dials are marked: the pool of marked sockets is not where listeners come from.
        assert_eq!(listener_ref.mark().unwrap(), 0);
        assert_eq!(
            shunt_api::netns::socket_netns_cookie(listener.as_fd()).unwrap(),
            shunt_api::netns::netns_cookie(own_netns().as_fd()).unwrap()
        );
    }

    #[tokio::test]
    async fn dials_from_a_pod_netns_time_out_or_fail_as_unreachable() {
        if !is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let netns = crate::testing::TestNetns::create("socket-dials");
        // SYNs to 10.99.0.2 leave through v0 to a fixed neighbour, the peer end v1, which
        // drops them (not its address, no forwarding): a dial that never completes. The
        // `unreachable` route answers EHOSTUNREACH at once. Nothing leaves the namespace.
        for args in [
            &[
                "link",
                "add",
                "v0",
                "type",
                "veth",
                "peer",
                "name",
                "v1",
                "address",
                "02:00:00:00:00:02",
            ][..],
            &["addr", "add", "10.99.0.1/24", "dev", "v0"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            &[
                "neigh",
                "add",
                "10.99.0.2",
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "v0",
                "nud",
                "permanent",
            ],
            &["route", "add", "unreachable", "10.98.0.0/16"],
        ] {
            netns.ip(args);
        }
        let sockets = NetnsSocketFactory.enter(netns.open(), "t/p").await.unwrap();
        for (addr, expected) in [
            ("10.99.0.2:80", "timed out"),
            ("10.98.0.1:80", "unreachable"),
        ] {
            let started = std::time::Instant::now();
            let err = sockets
                .connect(addr.parse().unwrap(), Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{addr}: {err}");
            assert!(err.to_string().contains(addr), "{addr}: {err}");
            assert!(started.elapsed() < Duration::from_secs(5), "{addr}");
        }
    }

    #[tokio::test]
    async fn dials_take_ready_sockets_and_the_worker_refills_the_pool() {
        if !is_root() {
            eprintln!("skipping: entering a netns needs root");
            return;
        }
        let worker = NetnsWorker::spawn(own_netns(), "test/pool").await.unwrap();
        let ready_len = || worker.ready.lock().unwrap().len();
        assert_eq!(
            ready_len(),
            READY_SOCKETS,
            "filled once the worker entered the netns"
        );
        // Dials that leave more than REFILL_BELOW ready do not wake the worker.
        for _ in 0..READY_SOCKETS - REFILL_BELOW - 1 {
            worker.socket(Domain::IPV4, POD_DIAL).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ready_len(), REFILL_BELOW + 1, "refilled before it ran low");
        // The dial that leaves REFILL_BELOW does; then a dry pool, served by the worker
        // directly, is refilled as well.
        worker.socket(Domain::IPV4, POD_DIAL).await.unwrap();
        wait_for_full(&ready_len).await;
        // Dry (as after a refill that ran out of descriptors), with no refill pending.
        worker.ready.lock().unwrap().clear();
        worker.socket(Domain::IPV4, POD_DIAL).await.unwrap();
        wait_for_full(&ready_len).await;
        // IPv6 is not pooled; it still comes from the worker.
        worker.socket(Domain::IPV6, POD_DIAL).await.unwrap();
        assert_eq!(ready_len(), READY_SOCKETS);
    }

    async fn wait_for_full(ready_len: &impl Fn() -> usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ready_len() < READY_SOCKETS {
            assert!(
                std::time::Instant::now() < deadline,
                "pool not refilled: {}",
                ready_len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_netns_fails_to_enter() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = NetnsSocketFactory
            .enter(OwnedFd::from(file), "t/p")
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::EnterNetns { .. }), "{err}");
        assert!(err.to_string().contains("pod t/p"), "{err}");
    }
}
