//! Inbound HBONE: the proxy's `<pod IP>:15008` listener in each captured pod's netns. A peer
//! (another node's shunt, or a ztunnel) opens an mTLS connection with the *destination pod's*
//! certificate, then one HTTP/2 `CONNECT` per tunnelled connection. Each stream is checked
//! as ztunnel checks it, then served by the same inbound path as a plaintext connection
//! ([`super::inbound::serve_accepted`]): detection, HTTP or L4, `reporter="destination"`, with
//! the peer's SPIFFE id as the source principal.
//!
//! Answers, as ztunnel's: 400 for anything but a `CONNECT` to `<this pod's IP>:<port>` (the
//! `:authority` must name the TCP destination's IP); 503 when the app cannot be reached (it is
//! dialled before the 200); 200 otherwise.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;

use super::inbound;
use super::l4::{self, Accepted};
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::context::{PodContext, ProxyContext};
use crate::hbone;
use crate::hbone::server::{self, Incoming};
use crate::peer_security::Principal;
use crate::telemetry::Reporter;
use crate::telemetry::access_log::Direction;
use crate::telemetry::security::PeerSecurity;
use shunt_mesh::spiffe::SpiffeId;

/// Serves one TCP connection accepted on `pod`'s HBONE listener.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    tcp: TcpStream,
    peer: ClientAddr,
) {
    let Some(hbone) = proxy.hbone.clone() else {
        return;
    };
    // The TLS records of a CONNECT's answer and of small payloads go out at once: with
    // Nagle on, each waited for the peer's delayed ACK (40 ms).
    super::preamble::nodelay(&tcp);
    let tls = &hbone.tls;
    let local = match tcp.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::debug!(%error, "HBONE: cannot read the accepted socket's address");
            return;
        }
    };
    let index = proxy.state.load();
    let Some(workload) = index.workload_by_uid(pod.pod.uid.as_str()).cloned() else {
        tracing::warn!(pod = %pod.pod.uid, "HBONE: the pod is not in the mesh state; refusing");
        return;
    };
    let Some(identity) = index.identity(&workload) else {
        tracing::warn!(pod = %pod.pod.uid, "HBONE: the pod has no SPIFFE identity; refusing");
        return;
    };
    // A pod just handed over may not have its certificate yet: wait a little for it.
    let _ = tokio::time::timeout(
        hbone::cert_wait(proxy.connect_timeout),
        tls.certificate_ready(&identity),
    )
    .await;
    let config = match tls.server_config(&identity) {
        Ok(config) => config,
        Err(error) => {
            hbone
                .metrics
                .failure(hbone::metrics::INBOUND, error.reason());
            tracing::warn!(pod = %pod.pod.uid, %error, "HBONE: refusing a connection");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(proxy.connect_timeout, acceptor.accept(tcp)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            hbone.metrics.failure(hbone::metrics::INBOUND, "tls");
            tracing::info!(pod = %pod.pod.uid, client = %peer.0, %error, "HBONE: TLS handshake failed");
            return;
        }
        Err(_) => {
            hbone.metrics.failure(hbone::metrics::INBOUND, "tls");
            tracing::info!(pod = %pod.pod.uid, client = %peer.0, "HBONE: TLS handshake timed out");
            return;
        }
    };
    let Some(source_principal) = tls.peer_identity(stream.get_ref().1) else {
        // The verifier requires a SPIFFE id; this is a belt to its braces.
        tracing::warn!(pod = %pod.pod.uid, "HBONE: the peer's certificate names no identity");
        return;
    };
    let drain = pod.pod.drain.clone();
    let served = server::serve(
        stream,
        hbone::SETTINGS,
        &hbone.metrics,
        drain.accepting_stopped(),
        |incoming| {
            let (proxy, pod, principal) = (proxy.clone(), pod.clone(), source_principal.clone());
            let identity = identity.clone();
            let hold = pod.pod.drain.hold();
            async move {
                let _hold = hold;
                serve_stream(
                    proxy,
                    pod,
                    incoming,
                    local,
                    peer,
                    principal.to_string(),
                    identity,
                )
                .await;
            }
        },
    );
    tokio::select! {
        biased;
        () = drain.force_closed() => {}
        result = served => if let Err(error) = result {
            tracing::debug!(pod = %pod.pod.uid, %error, "HBONE connection ended");
        }
    }
}

/// The client address a stream names in `forwarded: for="ip:port"`.
fn forwarded_for(incoming: &Incoming) -> Option<SocketAddr> {
    let value = incoming.header(http::header::FORWARDED.as_str())?;
    value.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.eq_ignore_ascii_case("for")
            .then(|| value.trim_matches('"').parse().ok())
            .flatten()
    })
}

/// Checks a `CONNECT` against the connection it came on; the status to refuse it with.
fn check_target(
    incoming: &Incoming,
    local: SocketAddr,
) -> Result<SocketAddr, (StatusCode, String)> {
    let target = incoming
        .target()
        .map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
    if target.ip() != local.ip() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "the CONNECT's :authority {target} names another IP than the connection's \
                 destination {}",
                local.ip()
            ),
        ));
    }
    if target.port() == hbone::PORT {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("the CONNECT's :authority {target} is the HBONE port itself"),
        ));
    }
    Ok(target)
}

async fn serve_stream(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    incoming: Incoming,
    local: SocketAddr,
    peer: ClientAddr,
    principal: String,
    identity: SpiffeId,
) {
    let target = match check_target(&incoming, local) {
        Ok(target) => target,
        Err((status, reason)) => {
            tracing::info!(pod = %pod.pod.uid, client = %peer.0, %principal, %reason, "HBONE: refused");
            incoming.refuse(status);
            return;
        }
    };
    // The peer dials from the source pod's netns, so the connection's own source IP is the
    // pod's. A `forwarded` header is the peer's word: only its port is taken, and only when
    // it names that same IP (a peer cannot claim to be another pod).
    let client = ClientAddr(
        forwarded_for(&incoming)
            .filter(|forwarded| forwarded.ip() == peer.0.ip())
            .unwrap_or(peer.0),
    );
    let index = proxy.state.load();
    let mut accepted = Accepted::new(
        Direction::Inbound,
        Reporter::Destination,
        client,
        &index,
        &pod.pod,
    );
    accepted.peers.destination = index.workload_by_uid(pod.pod.uid.as_str()).cloned();
    accepted.peers.source = index.workload_by_ip(client.0.ip()).cloned();
    accepted.orig_dst = Some(OrigDstAddr(target));
    accepted.peers.service = accepted
        .peers
        .destination
        .as_ref()
        .and_then(|w| index.destination_service(w, target.port()))
        .cloned();
    accepted.security = PeerSecurity::MutualTls {
        source: Some(Principal::new(principal)),
        destination: Some(Principal::new(identity.to_string())),
    };
    // Policies that cannot depend on HTTP decide now, as ztunnel does: a denied CONNECT gets
    // 401. Otherwise TCP is decided after detection, and HTTP request by request.
    if let (Some(destination), SocketAddr::V4(app_addr)) =
        (accepted.peers.destination.as_deref(), target)
        && !index.authz().needs_http(destination)
    {
        match l4::authorize(&proxy, &accepted, app_addr, None) {
            // Decided once: a TCP stream is not evaluated again after detection.
            Ok(watched) => accepted.authz = watched,
            Err(reason) => {
                tracing::info!(pod = %pod.pod.uid, client = %peer.0, %reason, "HBONE: denied");
                incoming.refuse(StatusCode::UNAUTHORIZED);
                return;
            }
        }
    }
    // The app first: a peer whose app is down gets 503, not a tunnel that resets.
    let app = match pod.pod.sockets.connect(target, proxy.connect_timeout).await {
        Ok(app) => app,
        Err(error) => {
            tracing::info!(pod = %pod.pod.uid, %target, %error, "HBONE: the app cannot be reached");
            incoming.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let stream = match incoming.accept() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, "HBONE: the stream closed before its answer");
            return;
        }
    };
    inbound::serve_accepted(proxy, pod, accepted, target, stream, Some(app.into())).await;
}
