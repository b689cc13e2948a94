//! What authorization is asked about: the I/O-free facts of one connection or request, as the
//! proxy knows them when it enforces.

use std::net::Ipv4Addr;

use crate::spiffe::SpiffeId;

/// One connection (`http: None`) or one request on it, at the destination side.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The authenticated peer (HBONE client cert or same-node delivery), None = plaintext.
    pub peer: Option<&'a SpiffeId>,
    /// The direct peer's address (`ipBlocks`, `source.ip`).
    pub source_ip: Ipv4Addr,
    /// The destination workload's address (`destination.ip`).
    pub destination_ip: Ipv4Addr,
    /// The destination workload's port (`ports`, `destination.port`).
    pub destination_port: u16,
    /// The TLS SNI the client sent, if the proxy saw one (`connection.sni`).
    pub sni: Option<&'a str>,
    /// None: a TCP connection (L4 evaluation, with the TCP rewriting of HTTP-only fields).
    pub http: Option<HttpFacts<'a>>,
}

/// The HTTP request being authorized.
#[derive(Clone, Copy, Debug)]
pub struct HttpFacts<'a> {
    /// `:authority` / `Host` as sent (`hosts`; `request.headers[host]`).
    pub host: &'a str,
    /// The method (`methods`; `request.headers[:method]`).
    pub method: &'a str,
    /// The path, already normalized, with query and fragment removed (`paths`).
    pub path: &'a str,
    /// The request's headers (`request.headers[...]`); every value of a repeated header is
    /// checked.
    pub headers: &'a http::HeaderMap,
    /// The client's address from `X-Forwarded-For` (the integrator decides the hops).
    pub remote_ip: RemoteIp,
    /// The validated JWT, if the request carried one (`requestPrincipals`,
    /// `request.auth.*`).
    pub auth: Option<&'a RequestAuth>,
}

pub use crate::security::RequestAuth;

/// The client address `remoteIpBlocks` and `remote.ip` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteIp {
    /// The direct peer's, as Envoy's remote address falls back to it.
    Peer,
    /// Found from `X-Forwarded-For` and the trusted hops.
    Addr(Ipv4Addr),
    /// Cannot be known (the gateway's `numTrustedProxies` is invalid): a remote-IP field
    /// fails closed, as the TCP rewriting treats an HTTP-only one: it holds in a DENY (AUDIT,
    /// CUSTOM) rule, whether negated or not, and never in an ALLOW rule.
    Unknown,
}
