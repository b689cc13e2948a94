//! A gateway pod's listeners as the data path serves them: the Gateways (and Kubernetes
//! Ingresses) that select one pod, compiled into one [`GatewayPort`] per port with its
//! servers merged by host, as Istio merges the servers of every Gateway bound to one
//! workload.
//!
//! These are the compiled values only; `routing::compile::gateway` builds them from the
//! `istio::Gateway` objects, and the proxy opens a listener per [`GatewayPort`] in the pod's
//! netns, terminating TLS as each server's [`ServerTls`] says.

use std::sync::Arc;

use crate::ids::ObjectRef;

/// Every port one gateway pod serves, in port order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayListeners {
    /// One entry per distinct `servers[].port.number`.
    pub ports: Vec<Arc<GatewayPort>>,
}

/// One port of a gateway pod: every server of every selecting Gateway on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPort {
    /// `servers[].port.number`: what the proxy binds in the pod's netns (all addresses).
    pub port: u16,
    /// The servers' protocol (they agree: a disagreement is a conflict, and the later
    /// server is dropped with an error naming both).
    pub protocol: GatewayProtocol,
    /// The servers, in Istio's order (the oldest Gateway first, then by namespace/name,
    /// then `servers[]` order).
    pub servers: Vec<Arc<GatewayServer>>,
}

impl GatewayPort {
    /// The server a TLS ClientHello's SNI reaches, as Envoy picks a filter chain by server
    /// name: an exact host, else the longest matching `*.` wildcard, else `*`; without SNI, the
    /// server whose hosts include `*`.
    #[must_use]
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&Arc<GatewayServer>> {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return self
                .servers
                .iter()
                .find(|s| s.hosts.iter().any(|h| &*h.host == "*"));
        };
        self.servers
            .iter()
            .filter_map(|server| {
                let best = server
                    .hosts
                    .iter()
                    .filter_map(|h| host_rank(&h.host, &sni))
                    .max()?;
                Some((best, server))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, server)| server)
    }
}

/// How specifically `pattern` (`a.b`, `*.b` or `*`) names `host`: `None` when it does not;
/// an exact name ranks above every wildcard, a longer wildcard above a shorter, `*` last.
#[must_use]
pub fn host_rank(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
        }
        None => (pattern == host).then_some(usize::MAX),
    }
}

/// `servers[].port.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GatewayProtocol {
    /// `HTTP`: plaintext HTTP/1.1 (and h2 prior knowledge).
    Http,
    /// `HTTPS`: TLS, terminated (or passed through, by `tls.mode`), then HTTP.
    Https,
    /// `HTTP2`: HTTP/2 (HTTP/1.1 too, as Envoy accepts both).
    Http2,
    /// `GRPC`: HTTP/2 carrying gRPC.
    Grpc,
    /// `TCP`: opaque bytes, routed by `tcp[]` routes.
    Tcp,
    /// `TLS`: TLS routed by SNI (`tls[]` routes) when passed through, or terminated into
    /// TCP (`tcp[]` routes).
    Tls,
}

impl GatewayProtocol {
    /// Whether requests on this port are HTTP once TLS (if any) is terminated.
    #[must_use]
    pub const fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https | Self::Http2 | Self::Grpc)
    }
}

/// One `servers[]` entry of one Gateway (or the server an Ingress stands for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayServer {
    /// The Gateway that defines it (kind `Gateway`, or `Ingress` for a converted Ingress).
    pub gateway: ObjectRef,
    /// Its index in `spec.servers`.
    pub index: usize,
    /// `servers[].name`, or `port.name`, for logs.
    pub name: Option<Arc<str>>,
    /// `servers[].hosts`, parsed.
    pub hosts: Vec<ServerHost>,
    /// `servers[].tls`; `None` for a plaintext server.
    pub tls: Option<Arc<ServerTls>>,
}

/// One entry of `servers[].hosts`: `[namespace/]host`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerHost {
    /// The namespace whose VirtualServices may bind: `None` for `*/` or no prefix (any),
    /// `./` resolved to the Gateway's own namespace.
    pub namespace: Option<Arc<str>>,
    /// The host: exact (`a.example.test`), a wildcard (`*.example.test`) or `*`; lowercase.
    pub host: Arc<str>,
}

/// `servers[].tls`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerTls {
    /// `httpsRedirect`: every HTTP request on this (plaintext) server gets a 301 to https.
    pub https_redirect: bool,
    /// `mode`; `None` on a plaintext server that only redirects.
    pub mode: Option<ServerTlsMode>,
    /// `minProtocolVersion`; TLS 1.2 when unset, as Envoy's gateway default.
    pub min_version: TlsVersion,
    /// `maxProtocolVersion`; TLS 1.3 when unset.
    pub max_version: TlsVersion,
    /// `cipherSuites`, as written (Envoy/OpenSSL names), checked against those the proxy
    /// supports; empty: the proxy's defaults. Applies to TLS 1.2 only, as in Envoy.
    pub cipher_suites: Vec<Arc<str>>,
    /// `subjectAltNames`: for `MUTUAL`, a client certificate must carry one of them.
    pub subject_alt_names: Vec<Arc<str>>,
}

/// `servers[].tls.mode`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerTlsMode {
    /// `SIMPLE`: terminate with the server certificate.
    Simple(Credential),
    /// `MUTUAL`: terminate, and require a client certificate signed by the credential's CA.
    Mutual(Credential),
    /// `PASSTHROUGH`: route by SNI without terminating.
    Passthrough,
    /// `ISTIO_MUTUAL`: terminate with the gateway pod's mesh identity; require a mesh
    /// client certificate.
    IstioMutual,
}

/// Where a terminating server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// `credentialName`: a Secret in the Gateway's namespace (`tls.crt`, `tls.key`, and for
    /// `MUTUAL` `ca.crt`, or a `<name>-cacert` Secret holding it, as Istio reads).
    Secret {
        /// The Gateway's namespace.
        namespace: Arc<str>,
        /// `credentialName`.
        name: Arc<str>,
    },
    /// `serverCertificate`, `privateKey` and `caCertificates`: files the proxy reads.
    Files {
        /// `serverCertificate`.
        certificate: Arc<str>,
        /// `privateKey`.
        private_key: Arc<str>,
        /// `caCertificates`; required for `MUTUAL`.
        ca_certificates: Option<Arc<str>>,
    },
}

/// `minProtocolVersion` / `maxProtocolVersion`. rustls speaks only 1.2 and 1.3: an older
/// version as the minimum is raised to 1.2 (reported as a warning when compiled), an older
/// maximum rejects the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// `TLSV1_2`.
    Tls12,
    /// `TLSV1_3`.
    Tls13,
}

/// The `cipherSuites` names the proxy can apply (Envoy/OpenSSL spelling): the ECDHE suites
/// with AEAD ciphers rustls offers for TLS 1.2. Others Envoy knows (plain RSA key exchange,
/// CBC modes) rustls does not implement; the compiler rejects them, naming the field, since
/// a server cannot honour them.
pub const SUPPORTED_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// Whether `name` (a `cipherSuites` entry) is one of [`SUPPORTED_CIPHER_SUITES`]. Exact and
/// case-sensitive, as Envoy parses the list.
#[must_use]
pub fn cipher_suite_supported(name: &str) -> bool {
    SUPPORTED_CIPHER_SUITES.contains(&name)
}
