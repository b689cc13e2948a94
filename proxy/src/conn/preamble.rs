//! What every accepted connection goes through before it is HTTP or L4, inbound and outbound
//! alike: `TCP_NODELAY`, protocol detection under the pod's drain, the refusal when the first
//! bytes cannot be read, and the stream that replays what detection read.

use std::time::Duration;

use shunt_mesh::routing::{PortProtocol, Routes};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;

use super::detect::{self, Protocol};
use super::l4::{Accepted, Plan};
use super::rewind::Rewind;
use crate::context::{PodContext, ProxyContext};
use crate::telemetry::access_log::CloseReason;

/// An accepted connection after detection (a TCP socket, or an HBONE stream).
pub(super) enum Preamble<S = TcpStream> {
    /// The pod's drain cut the connection before its first bytes: nothing to report.
    Cut,
    /// Its first bytes could not be read: the plan that refuses it, and the stream.
    Refused(Box<Plan>, S),
    /// Detected: what it carries, and the stream that replays the bytes detection read.
    Detected(Box<Accepted>, Protocol, Rewind<S>),
}

/// Small writes (a request head, a TLS record) go out at once, as a sidecar's do.
pub(super) fn nodelay(downstream: &TcpStream) {
    if let Err(error) = downstream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
    }
}

/// How long detection waits for a client's first bytes: the mesh config's
/// `protocolDetectionTimeout`, else the proxy's flag.
pub(super) fn detection_timeout(proxy: &ProxyContext, routes: &dyn Routes) -> Duration {
    routes
        .mesh()
        .protocol_detection_timeout
        .unwrap_or(proxy.protocol_detection_timeout)
}

/// Detects what `downstream` carries (`declared` wins where it says), giving up when the
/// pod's drain cuts the connection.
pub(super) async fn detect<S: AsyncRead + Unpin>(
    pod: &PodContext,
    mut downstream: S,
    accepted: Accepted,
    declared: PortProtocol,
    timeout: Duration,
) -> Preamble<S> {
    let detection = tokio::select! {
        biased;
        () = pod.pod.drain.force_closed() => return Preamble::Cut,
        detection = detect::detect(&mut downstream, declared, timeout) => detection,
    };
    match detection {
        Ok(detection) => Preamble::Detected(
            Box::new(accepted),
            detection.protocol,
            Rewind::new(detection.consumed, downstream),
        ),
        Err(error) => Preamble::Refused(
            Box::new(accepted.refuse(
                CloseReason::Error,
                format!("reading the first bytes to detect the protocol failed: {error}"),
            )),
            downstream,
        ),
    }
}
