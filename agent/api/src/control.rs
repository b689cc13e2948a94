//! The agent ↔ proxy control protocol.
//!
//! A Unix stream socket that the agent listens on and the proxy dials. Each frame is a 4-byte
//! big-endian length and a JSON body. File descriptors (a pod's netns from the agent, a pod's
//! inbound listener from the proxy) ride as `SCM_RIGHTS` on the length bytes of their frame, so
//! they arrive together with the message that explains them.
//!
//! While a proxy is connected, the agent keeps a copy of every pod's listening sockets
//! (`PodReady` hands them over) and gives them to a next proxy that connects meanwhile
//! (`AddPod`), which accepts from the very same sockets instead of binding new ones; the old
//! one is told `Superseded`. A proxy rollout (the new proxy up before the old one stops)
//! therefore refuses no connection. A proxy that disconnects with no successor takes its
//! sockets with it, so that capture fails closed as before.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use shunt_mesh::ids::PodUid;
use shunt_mesh::model::MeshState;

/// The largest frame either side accepts: a bound on what a confused peer can make us allocate.
pub const MAX_FRAME: usize = 64 << 20;
/// The most descriptors one frame may carry.
const MAX_FDS_PER_FRAME: usize = 4;

/// Agent → proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "a message is built, sent and dropped one at a time; boxing the state would only \
              add an allocation per State"
)]
pub enum AgentMessage {
    /// The whole mesh; replaces what the proxy had.
    State { state: MeshState },
    /// A captured pod. Carries one descriptor: the pod's network namespace. The proxy opens
    /// its listeners there and answers with `PodReady` or `PodFailed`. Sent again for a pod the
    /// proxy already serves (after the agent restarts), which the proxy answers without
    /// touching its listeners.
    AddPod {
        uid: PodUid,
        netns_cookie: u64,
        /// Where the pod's inbound listener listens. Absent (an older agent): loopback, what
        /// eBPF capture needs.
        #[serde(default)]
        inbound_bind: InboundBind,
        /// What the pod is to the proxy. Absent (an older agent): a captured app pod.
        #[serde(default)]
        role: PodRole,
        /// The pod's listening sockets a previous proxy opened, one descriptor each after the
        /// netns, in this order: the proxy adopts them instead of binding its own.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listeners: Vec<ListenerKind>,
    },
    /// A pod is no longer captured: close its listeners (after draining) and forget it.
    RemovePod { uid: PodUid },
    /// Ends the burst of `AddPod`s sent after (re)connecting: pods not listed are gone.
    Synced { pods: Vec<PodUid> },
    /// The TLS credentials of this node's gateway servers, whole: replaces what the proxy
    /// had. Sent before the `State` that needs them, and again whenever one changes.
    Credentials {
        credentials: Vec<crate::credentials::GatewayCredential>,
    },
    /// The sockmap shortcut is on. Carries three descriptors, the `SHORTCUT_BYTES`,
    /// `SPLICED_BYTES` and `SPLICE_ROUTES` maps, with which the proxy splices opaque TCP
    /// connections between two pods of this node (see `proxy::splice`).
    SpliceMaps,
    /// Carries one descriptor, the `TCP_EVENTS` ring buffer: the `TcpEvent` of each closed
    /// connection that crossed the network, which the proxy matches to its own connections
    /// by socket cookie (kernel TCP telemetry). Sent with eBPF capture only.
    TcpEvents,
    /// A newer proxy has connected and takes over every pod. This proxy stops talking to the
    /// agent (it does not redial, which would take the pods back) and serves the connections
    /// it holds, and what it still accepts from the shared listeners, until it is stopped.
    Superseded,
    /// The agent will not serve this proxy, and says why (e.g. it runs outside the capture
    /// cgroup, where capture cannot answer its `SO_ORIGINAL_DST`). The connection then ends.
    Refused { reason: String },
}

/// What a pod handed to the proxy is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodRole {
    /// A captured app pod: outbound (15001) and inbound (15006) listeners, HBONE (15008).
    #[default]
    App,
    /// A gateway pod (selected by a Gateway, or an Ingress's `ingressSelector`): its traffic
    /// is not captured; the proxy opens the Gateways' server ports in its netns instead, as
    /// the state's gateway listeners for the pod say.
    Gateway,
}

/// One of an app pod's listening sockets, as `AddPod` and `PodReady` list their descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// `127.0.0.1:15001`, where connect4 sends the pod's outbound connections.
    Outbound,
    /// 15006, the inbound listener (the sk_lookup sockhash holds it).
    Inbound,
    /// `<pod IP>:15008`, HBONE.
    Hbone,
}

/// Where a pod's inbound listener (port 15006) listens, which depends on how the agent
/// captures the pod's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundBind {
    /// `127.0.0.1:15006`: eBPF capture, where `sk_lookup` hands connections to the listener
    /// whatever its address.
    #[default]
    Loopback,
    /// `0.0.0.0:15006`: iptables capture, where REDIRECT rewrites the destination to the
    /// address of the interface the connection came in on (the pod's IP).
    AnyAddress,
}

impl InboundBind {
    /// The inbound listener's address.
    #[must_use]
    pub fn addr(self) -> std::net::SocketAddr {
        let ip = match self {
            Self::Loopback => std::net::Ipv4Addr::LOCALHOST,
            Self::AnyAddress => std::net::Ipv4Addr::UNSPECIFIED,
        };
        std::net::SocketAddr::from((ip, shunt_common::INBOUND_PORT))
    }
}

/// Proxy → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMessage {
    /// First frame on every connection.
    Hello { pid: u32, version: String },
    /// The pod's listeners are open. Carries a descriptor for each of them, in the order
    /// `listeners` gives; the agent puts the inbound one in the sk_lookup sockhash and keeps
    /// them all for the next proxy. `listeners` absent (an older proxy): one descriptor, the
    /// inbound listener.
    PodReady {
        uid: PodUid,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listeners: Vec<ListenerKind>,
    },
    /// The proxy could not serve the pod; `error` says why.
    PodFailed { uid: PodUid, error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("control peer closed the connection")]
    Closed,
    #[error("control frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("control frame is not valid JSON for this protocol version: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("control frame carried {0} descriptors, more than {MAX_FDS_PER_FRAME}")]
    TooManyFds(usize),
}

/// Writes one frame with `fds` attached.
pub async fn send<T: Serialize>(
    stream: &mut UnixStream,
    message: &T,
    fds: &[RawFd],
) -> Result<(), Error> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(Error::TooManyFds(fds.len()));
    }
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME {
        return Err(Error::TooLarge(body.len()));
    }
    let header = u32::try_from(body.len())
        .map_err(|_| Error::TooLarge(body.len()))?
        .to_be_bytes();
    // The descriptors travel with the header; its 4 bytes always fit in one sendmsg unless the
    // buffer is full, in which case try_io reports WouldBlock and we wait.
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&header)];
            let cmsgs = if fds.is_empty() {
                vec![]
            } else {
                vec![ControlMessage::ScmRights(fds)]
            };
            sendmsg::<()>(
                stream.as_fd().as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(n) if n == header.len() => break,
            Ok(n) => {
                return Err(Error::Io(io::Error::other(format!(
                    "short write of a control frame header ({n} of 4 bytes)"
                ))));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    stream.write_all(&body).await?;
    Ok(())
}

/// Reads one frame and the descriptors that came with it.
#[expect(
    unsafe_code,
    reason = "SCM_RIGHTS descriptors arrive as raw fds that only this frame owns"
)]
pub async fn recv<T: for<'de> Deserialize<'de>>(
    stream: &mut UnixStream,
) -> Result<(T, Vec<OwnedFd>), Error> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    let mut fds = Vec::new();
    while filled < header.len() {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut header[filled..])];
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
            let msg = recvmsg::<()>(
                stream.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    received.extend(raw);
                }
            }
            Ok((msg.bytes, received))
        });
        match got {
            Ok((0, _)) => return Err(Error::Closed),
            Ok((n, raw)) => {
                filled += n;
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process and
                // nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(Error::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Closed
        } else {
            Error::Io(e)
        }
    })?;
    Ok((serde_json::from_slice(&body)?, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn frames_round_trip_with_their_descriptors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let sent = AgentMessage::AddPod {
            uid: "ns/pod".into(),
            netns_cookie: 42,
            inbound_bind: InboundBind::AnyAddress,
            role: PodRole::App,
            listeners: vec![ListenerKind::Outbound, ListenerKind::Inbound],
        };
        let fds = [file.as_raw_fd(); 3];
        send(&mut a, &sent, &fds).await.unwrap();
        send(&mut a, &AgentMessage::Synced { pods: vec![] }, &[])
            .await
            .unwrap();
        let (got, fds): (AgentMessage, _) = recv(&mut b).await.unwrap();
        assert_eq!(got, sent);
        assert_eq!(fds.len(), 3);
        let (got, fds): (AgentMessage, _) = recv(&mut b).await.unwrap();
        assert_eq!(got, AgentMessage::Synced { pods: vec![] });
        assert!(fds.is_empty());
        drop(a);
        assert!(matches!(
            recv::<AgentMessage>(&mut b).await,
            Err(Error::Closed)
        ));
    }

    #[test]
    fn add_pod_from_an_agent_without_inbound_bind_means_loopback() {
        let cases = [
            (
                r#"{"type":"add_pod","uid":"u","netns_cookie":7}"#,
                InboundBind::Loopback,
            ),
            (
                r#"{"type":"add_pod","uid":"u","netns_cookie":7,"inbound_bind":"any_address"}"#,
                InboundBind::AnyAddress,
            ),
        ];
        for (json, inbound_bind) in cases {
            let got: AgentMessage = serde_json::from_str(json).unwrap();
            assert_eq!(
                got,
                AgentMessage::AddPod {
                    uid: "u".into(),
                    netns_cookie: 7,
                    inbound_bind,
                    role: PodRole::App,
                    listeners: Vec::new(),
                },
                "{json}"
            );
        }
        // A proxy that predates the listener handover sends its inbound listener alone.
        let ready: ProxyMessage =
            serde_json::from_str(r#"{"type":"pod_ready","uid":"u"}"#).unwrap();
        assert_eq!(
            ready,
            ProxyMessage::PodReady {
                uid: "u".into(),
                listeners: Vec::new()
            }
        );
        assert_eq!(InboundBind::Loopback.addr().to_string(), "127.0.0.1:15006");
        assert_eq!(InboundBind::AnyAddress.addr().to_string(), "0.0.0.0:15006");
    }

    #[tokio::test]
    async fn large_state_frames_cross_the_socket_buffer() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut state = MeshState::default();
        for i in 0..5000 {
            state.services.push(shunt_mesh::model::Service {
                namespace: "ns".into(),
                name: format!("svc-{i}"),
                cluster_ip: None,
                ports: vec![],
                selector: Default::default(),
            });
        }
        let sent = AgentMessage::State { state };
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move { send(&mut a, &sent, &[]).await })
        };
        let (got, _): (AgentMessage, _) = recv(&mut b).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got, sent);
    }
}
