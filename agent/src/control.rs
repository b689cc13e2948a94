//! The control socket the proxy dials (`<run-dir>/control.sock`,
//! `shunt_api::control`).
//!
//! One proxy at a time: a new connection replaces the old one. Each connection starts with the
//! proxy's `Hello`; the server then hands the connection to the reconciler
//! ([`ProxyEvent::Connected`] with an outbox), which sends `State`, the `AddPod`s and `Synced`,
//! and later the deltas. What the proxy answers goes back to the reconciler as
//! [`ProxyEvent::Message`]. The server itself keeps no state, so the order of messages is the
//! reconciler's.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shunt_api::control::{self as wire, AgentMessage, ProxyMessage};
use shunt_mesh::model::MeshState;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use shunt_api::run_dir;

use crate::config::Snapshot;
use crate::proxy_cgroup::{self, CgroupRequirement};

/// A proxy that connects must say hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers proxy connections, so that late events of a replaced connection are recognised.
pub type ConnectionId = u64;

/// A message for the proxy, with the descriptors it carries (a pod's netns for `AddPod`, the
/// splice maps for `SpliceMaps`).
#[derive(Debug)]
pub struct Outgoing {
    pub message: Frame,
    pub fds: Vec<Arc<OwnedFd>>,
}

/// What one frame for the proxy says.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "as AgentMessage itself: one frame is built, sent and dropped at a time"
)]
pub enum Frame {
    Message(AgentMessage),
    /// `AgentMessage::State` with this snapshot's mesh, written from the snapshot the
    /// reconciler shares: the mesh (tens of MiB at issue 18's scale) is not copied for it.
    State(Arc<Snapshot>),
}

impl From<AgentMessage> for Frame {
    fn from(message: AgentMessage) -> Self {
        Self::Message(message)
    }
}

/// `AgentMessage::State` of a borrowed mesh: the same JSON as that message.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StateRef<'a> {
    State { state: &'a MeshState },
}

/// What the control server tells the reconciler.
#[derive(Debug)]
pub enum ProxyEvent {
    /// A proxy said hello. Messages for it go into `outbox`; dropping the outbox closes the
    /// connection.
    Connected {
        connection: ConnectionId,
        pid: u32,
        version: String,
        outbox: mpsc::UnboundedSender<Outgoing>,
    },
    /// A message from the proxy, with the descriptors it carried.
    Message {
        connection: ConnectionId,
        message: ProxyMessage,
        fds: Vec<OwnedFd>,
    },
    /// A proxy said hello and was refused (see [`crate::proxy_cgroup`]); nothing was sent
    /// to it but the refusal.
    Refused {
        connection: ConnectionId,
        pid: u32,
        reason: String,
    },
    /// The connection ended.
    Disconnected {
        connection: ConnectionId,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] run_dir::Error),
    #[error("the proxy did not say hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("the proxy's first message must be hello, got {0}")]
    NotHello(String),
    #[error("cannot duplicate the proxy connection's socket: {0}")]
    Duplicate(std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::Error),
    #[error("refused the proxy: {0}")]
    Refused(#[from] proxy_cgroup::Error),
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// Under eBPF capture: the cgroup a proxy must run in to be served.
    cgroup: Option<CgroupRequirement>,
}

impl ControlServer {
    /// Listens on `path` (mode 0600), replacing a stale socket file.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            listener: run_dir::bind_socket(path)?,
            path: path.to_owned(),
            cgroup: None,
        })
    }

    /// Serves only proxies that run inside `requirement`'s cgroup; the others are refused,
    /// told why, and shown in `shuntctl status`.
    #[must_use]
    pub fn require_cgroup(mut self, requirement: Option<CgroupRequirement>) -> Self {
        self.cgroup = requirement;
        self
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts proxies until `shutdown`.
    pub async fn run(self, events: mpsc::Sender<ProxyEvent>, shutdown: CancellationToken) {
        tracing::info!(socket = %self.path.display(), "waiting for the proxy");
        let mut next_id: ConnectionId = 0;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a proxy connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            next_id += 1;
            let connection = next_id;
            let events = events.clone();
            let shutdown = shutdown.clone();
            let cgroup = self.cgroup.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(connection, stream, cgroup, events, shutdown).await {
                    tracing::warn!(connection, "proxy connection ended: {e}");
                }
            });
        }
    }
}

async fn serve(
    connection: ConnectionId,
    mut reader: UnixStream,
    cgroup: Option<CgroupRequirement>,
    events: mpsc::Sender<ProxyEvent>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (hello, _fds) = tokio::time::timeout(HELLO_TIMEOUT, wire::recv(&mut reader))
        .await
        .map_err(|_| Error::HelloTimeout)??;
    let ProxyMessage::Hello { pid, version } = hello else {
        return Err(Error::NotHello(format!("{hello:?}")));
    };
    tracing::info!(connection, pid, %version, "proxy connected");
    if let Some(requirement) = &cgroup {
        // The kernel's word for who is at the other end, in the agent's pid namespace; the
        // hello's pid is the proxy's own view, which differs inside a container.
        let peer = reader
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or(pid);
        if let Err(refused) = requirement.check(peer) {
            let reason = refused.to_string();
            tracing::error!(connection, pid = peer, "{reason}");
            // Best effort: the proxy logs the reason; the agent shows it either way.
            let _ = wire::send(
                &mut reader,
                &AgentMessage::Refused {
                    reason: reason.clone(),
                },
                &[],
            )
            .await;
            let _ = events
                .send(ProxyEvent::Refused {
                    connection,
                    pid: peer,
                    reason,
                })
                .await;
            return Err(refused.into());
        }
    }
    // wire::recv and wire::send each need the stream to themselves, and a read cut short
    // would lose its place in the stream; so reading and writing go through two descriptors
    // of the same socket, each used by one side only.
    let mut writer = duplicate(&reader).map_err(Error::Duplicate)?;
    let (outbox, mut outgoing) = mpsc::unbounded_channel();
    let connected = ProxyEvent::Connected {
        connection,
        pid,
        version,
        outbox,
    };
    if events.send(connected).await.is_err() {
        return Ok(()); // The reconciler is gone: the agent is stopping.
    }
    let ended = tokio::select! {
        ended = read_messages(connection, &mut reader, &events) => ended,
        ended = write_messages(&mut writer, &mut outgoing) => ended,
        () = shutdown.cancelled() => Ok("the agent is stopping"),
    };
    let reason = match &ended {
        Ok(reason) => (*reason).to_owned(),
        Err(e) => e.to_string(),
    };
    tracing::info!(connection, pid, "proxy connection closed: {reason}");
    let _ = events
        .send(ProxyEvent::Disconnected { connection, reason })
        .await;
    ended.map(drop)
}

/// Forwards the proxy's messages until it closes the connection.
async fn read_messages(
    connection: ConnectionId,
    reader: &mut UnixStream,
    events: &mpsc::Sender<ProxyEvent>,
) -> Result<&'static str, Error> {
    loop {
        let (message, fds) = match wire::recv::<ProxyMessage>(reader).await {
            Ok(received) => received,
            Err(wire::Error::Closed) => return Ok("the proxy closed it"),
            Err(e) => return Err(e.into()),
        };
        if let ProxyMessage::Hello { .. } = message {
            tracing::warn!(connection, "ignoring a second hello from the proxy");
            continue;
        }
        let event = ProxyEvent::Message {
            connection,
            message,
            fds,
        };
        if events.send(event).await.is_err() {
            return Ok("the agent is stopping");
        }
    }
}

/// Sends what the reconciler puts in the outbox, until it drops the outbox.
async fn write_messages(
    writer: &mut UnixStream,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<&'static str, Error> {
    while let Some(Outgoing { message, fds }) = outgoing.recv().await {
        let fds: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        match &message {
            Frame::Message(message) => wire::send(writer, message, &fds).await?,
            Frame::State(snapshot) => {
                let state = StateRef::State {
                    state: &snapshot.mesh,
                };
                wire::send(writer, &state, &fds).await?;
            }
        }
    }
    Ok("a newer proxy connection replaced it")
}

fn duplicate(stream: &UnixStream) -> std::io::Result<UnixStream> {
    let fd = stream.as_fd().try_clone_to_owned()?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_state_is_written_as_the_state_message() {
        let mut snapshot = Snapshot::default();
        snapshot.mesh.node_name = Some("node-a".into());
        let borrowed = serde_json::to_value(StateRef::State {
            state: &snapshot.mesh,
        })
        .unwrap();
        let owned = serde_json::to_value(AgentMessage::State {
            state: snapshot.mesh.clone(),
        })
        .unwrap();
        assert_eq!(borrowed, owned);
        let read: AgentMessage = serde_json::from_value(borrowed).unwrap();
        assert_eq!(
            read,
            AgentMessage::State {
                state: snapshot.mesh
            }
        );
    }
}
