//! Gateways: each Gateway's servers checked field by field, then merged per gateway pod (every
//! pod whose labels match a Gateway's `selector`) and per port into
//! [`crate::gateway::GatewayListeners`], as Istio merges the servers of every Gateway bound to
//! one workload. Also the VirtualServices' binding to Gateways (`gateways:` and per-match
//! `gateways`), compiled once per bound Gateway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::compiled::*;
use crate::gateway::{
    Credential, GatewayListeners, GatewayPort, GatewayProtocol, GatewayServer, ServerHost,
    ServerTls, ServerTlsMode, TlsVersion, cipher_suite_supported,
};
use crate::ids::PodUid;
use crate::istio;
use crate::model::{MeshState, Workload};
use crate::routing::Error;
use crate::routing::convert::{MISSING, Problems};
use crate::routing::decision::{ObjectRef, RateLimit};

/// The reserved gateway name of sidecar (here: captured pod) traffic.
pub(in crate::routing) const MESH_GATEWAY: &str = "mesh";

impl RouteTable {
    /// Compiles every Gateway and merges the servers of those selecting each pod.
    pub(super) fn add_gateways(&mut self, state: &MeshState, errors: &mut Vec<Error>) {
        // Per pod, per port: the merged port, and which Gateway set its protocol.
        let mut by_pod: BTreeMap<PodUid, BTreeMap<u16, (GatewayPort, ObjectRef)>> = BTreeMap::new();
        for gateway in merge_order(&state.gateways) {
            let object = object_ref("Gateway", &gateway.metadata);
            let mut p = Problems::default();
            let servers = compile_servers(&mut p, gateway, &object);
            if gateway.spec.selector.is_empty() {
                p.add(
                    "spec.selector",
                    "required: the labels of the gateway pods that serve this Gateway (e.g. \
                     istio: ingressgateway)",
                );
            }
            if !p.is_empty() {
                errors.extend(invalid(&object, p));
                continue;
            }
            let selected = state
                .workloads
                .iter()
                .filter(|w| selects(&gateway.spec.selector, w));
            for workload in selected {
                let ports = by_pod.entry(workload.uid.clone()).or_default();
                for (field, number, protocol, server) in &servers {
                    merge_server(ports, &object, field, *number, *protocol, server, errors);
                }
            }
        }
        let workloads: HashMap<&PodUid, &Workload> =
            state.workloads.iter().map(|w| (&w.uid, w)).collect();
        for (uid, ports) in by_pod {
            let Some(workload) = workloads.get(&uid) else {
                continue;
            };
            let listeners = GatewayListeners {
                ports: ports
                    .into_values()
                    .map(|(port, _)| Arc::new(port))
                    .collect(),
            };
            self.gateway_pods
                .insert(uid, (Arc::new((*workload).clone()), Arc::new(listeners)));
        }
    }

    /// Binds `vs` to every Gateway it names (`spec.gateways`, `http[].match[].gateways`, ...):
    /// for each, a copy holding only what binds there, compiled as the mesh's copy is.
    pub(super) fn bind_to_gateways(
        &mut self,
        vs: &istio::VirtualService,
        rate_limits: &HashMap<(String, String, String), Arc<RateLimit>>,
    ) {
        let namespace = vs.metadata.namespace.as_str();
        for gateway in bound_gateways(vs) {
            let copy = for_gateway(vs, &gateway);
            // Problems were reported by the mesh's pass over the same object.
            let mut ignored = Vec::new();
            let compiled = self.compile_virtual_service(&copy, rate_limits, &mut ignored);
            if let Some(compiled) = compiled
                && ignored.iter().all(|e| !matches!(e, Error::Invalid { .. }))
            {
                tracing::debug!(
                    virtual_service = %compiled.object,
                    gateway = %format!("{}/{}", gateway.0, gateway.1),
                    "bound to gateway"
                );
                let hosts = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| gateway_host(h, namespace))
                    .collect();
                self.gateway_virtual_services
                    .entry(gateway)
                    .or_default()
                    .push(Arc::new(CompiledVirtualService { hosts, ..compiled }));
            }
        }
    }
}

/// A VirtualService host as a gateway matches it against `:authority`: lowercase, as written
/// (a short name is the Service in the VirtualService's namespace, as Istio resolves it).
fn gateway_host(host: &str, namespace: &str) -> crate::routing::Host {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') {
        crate::routing::Host(host.into())
    } else {
        crate::routing::Host(format!("{host}.{namespace}.svc.cluster.local").into())
    }
}

/// Whether `selector` (non-empty) selects `workload`.
fn selects(selector: &BTreeMap<String, String>, workload: &Workload) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| workload.labels.get(k).is_some_and(|have| have == v))
}

/// A gateway name as a VirtualService writes it: `ns/name`, or a bare name in the
/// VirtualService's namespace. `None` for `mesh`.
pub(in crate::routing) fn resolve_gateway(name: &str, vs_namespace: &str) -> Option<GatewayKey> {
    if name == MESH_GATEWAY {
        return None;
    }
    Some(match name.split_once('/') {
        Some((ns, name)) => (ns.into(), name.into()),
        None => (vs_namespace.into(), name.into()),
    })
}

/// Every Gateway `vs` binds to anywhere.
fn bound_gateways(vs: &istio::VirtualService) -> BTreeSet<GatewayKey> {
    let ns = vs.metadata.namespace.as_str();
    let spec = &vs.spec;
    let per_match = spec
        .http
        .iter()
        .flat_map(|r| r.matches.iter().flat_map(|m| m.gateways.iter()))
        .chain(
            spec.tcp
                .iter()
                .flat_map(|r| r.matches.iter().flat_map(|m| m.gateways.iter())),
        )
        .chain(
            spec.tls
                .iter()
                .flat_map(|r| r.matches.iter().flat_map(|m| m.gateways.iter())),
        );
    spec.gateways
        .iter()
        .chain(per_match)
        .filter_map(|g| resolve_gateway(g, ns))
        .collect()
}

/// Whether a block bound to `list` (empty: the VirtualService's own `gateways`, `spec`)
/// applies at `gateway`.
fn binds(list: &[String], spec: &[String], ns: &str, gateway: &GatewayKey) -> bool {
    let list = if list.is_empty() { spec } else { list };
    list.iter()
        .any(|g| resolve_gateway(g, ns).as_ref() == Some(gateway))
}

/// What of `vs` applies at `gateway`, written as a mesh-bound VirtualService: blocks bound
/// there lose their `gateways`; the others get a gateway name no Gateway can have, which the
/// mesh compiler makes unmatchable (so route names and indexes stay those of the object).
fn for_gateway(vs: &istio::VirtualService, gateway: &GatewayKey) -> istio::VirtualService {
    const NOWHERE: &str = "/";
    let ns = vs.metadata.namespace.clone();
    let spec_gateways = vs.spec.gateways.clone();
    let mut copy = vs.clone();
    copy.spec.gateways = Vec::new();
    let rebind = |gateways: &mut Vec<String>| {
        *gateways = if binds(gateways, &spec_gateways, &ns, gateway) {
            Vec::new()
        } else {
            vec![NOWHERE.to_owned()]
        };
    };
    for route in &mut copy.spec.http {
        if route.matches.is_empty() {
            route.matches.push(istio::HttpMatchRequest::default());
        }
        route
            .matches
            .iter_mut()
            .for_each(|m| rebind(&mut m.gateways));
    }
    for route in &mut copy.spec.tcp {
        if route.matches.is_empty() {
            route.matches.push(istio::L4MatchAttributes::default());
        }
        route
            .matches
            .iter_mut()
            .for_each(|m| rebind(&mut m.gateways));
    }
    for route in &mut copy.spec.tls {
        route
            .matches
            .iter_mut()
            .for_each(|m| rebind(&mut m.gateways));
    }
    copy
}

/// One checked server: its field path, port number, protocol and compiled form.
type CheckedServer = (String, u16, GatewayProtocol, Arc<GatewayServer>);

fn compile_servers(
    p: &mut Problems,
    gateway: &istio::Gateway,
    object: &ObjectRef,
) -> Vec<CheckedServer> {
    let namespace = gateway.metadata.namespace.as_str();
    if gateway.spec.servers.is_empty() {
        p.add("spec.servers", MISSING);
    }
    let mut out = Vec::new();
    for (i, server) in gateway.spec.servers.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        let before = p.list.len();
        let port = server.port.as_ref();
        let number = match port.and_then(|p| p.number) {
            Some(n) => crate::routing::convert::port(p, &format!("{field}.port.number"), n),
            None => {
                p.add(format!("{field}.port.number"), MISSING);
                None
            }
        };
        let protocol = match port.and_then(|p| p.protocol.as_deref()) {
            None => {
                p.add(format!("{field}.port.protocol"), MISSING);
                None
            }
            Some(text) => protocol(p, &format!("{field}.port.protocol"), text),
        };
        if server.bind.as_deref().is_some_and(|b| !b.is_empty()) {
            p.add(
                format!("{field}.bind"),
                "not supported: shunt serves a Gateway port on every address of the gateway pod",
            );
        }
        if server.hosts.is_empty() {
            p.add(format!("{field}.hosts"), MISSING);
        }
        let hosts: Vec<ServerHost> = server
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(j, h)| server_host(p, &format!("{field}.hosts[{j}]"), h, namespace))
            .collect();
        let tls = server
            .tls
            .as_ref()
            .and_then(|tls| server_tls(p, &format!("{field}.tls"), tls, protocol, namespace));
        if server.tls.is_none() && matches!(protocol, Some(GatewayProtocol::Https)) {
            p.add(
                format!("{field}.tls"),
                "required for an HTTPS server: the mode and certificate to terminate with",
            );
        }
        if p.list.len() != before {
            continue;
        }
        let (Some(number), Some(protocol)) = (number, protocol) else {
            continue;
        };
        let name = server
            .name
            .clone()
            .or_else(|| port.and_then(|p| p.name.clone()))
            .map(Arc::from);
        out.push((
            field,
            number,
            protocol,
            Arc::new(GatewayServer {
                gateway: object.clone(),
                index: i,
                name,
                hosts,
                tls: tls.map(Arc::new),
            }),
        ));
    }
    out
}

fn protocol(p: &mut Problems, field: &str, text: &str) -> Option<GatewayProtocol> {
    Some(match text.to_ascii_uppercase().as_str() {
        "HTTP" => GatewayProtocol::Http,
        "HTTPS" => GatewayProtocol::Https,
        "HTTP2" => GatewayProtocol::Http2,
        "GRPC" => GatewayProtocol::Grpc,
        // Istio serves these as TCP too.
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => GatewayProtocol::Tcp,
        "TLS" => GatewayProtocol::Tls,
        _ => {
            p.add(
                field,
                format!("unknown protocol {text:?}: expected HTTP, HTTPS, HTTP2, GRPC, TCP or TLS"),
            );
            return None;
        }
    })
}

/// `[namespace/]host`: `*/` or no prefix allows VirtualServices of every namespace, `./`
/// the Gateway's own.
fn server_host(p: &mut Problems, field: &str, text: &str, own: &str) -> Option<ServerHost> {
    let (namespace, host) = match text.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(own), host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, text),
    };
    let valid = host == "*"
        || host
            .strip_prefix("*.")
            .unwrap_or(host)
            .split('.')
            .all(|label| !label.is_empty() && !label.contains('*'));
    if !valid {
        p.add(
            field,
            format!("invalid host {text:?}: expected [namespace/]host, *.suffix or *"),
        );
        return None;
    }
    Some(ServerHost {
        namespace: namespace.map(Arc::from),
        host: host.to_ascii_lowercase().into(),
    })
}

fn server_tls(
    p: &mut Problems,
    field: &str,
    tls: &istio::ServerTlsSettings,
    protocol: Option<GatewayProtocol>,
    namespace: &str,
) -> Option<ServerTls> {
    let before = p.list.len();
    let version = |p: &mut Problems, name: &str, v: Option<&str>, default: TlsVersion| match v {
        None | Some("TLS_AUTO") => Some(default),
        Some("TLSV1_2") => Some(TlsVersion::Tls12),
        Some("TLSV1_3") => Some(TlsVersion::Tls13),
        // rustls speaks 1.2 and 1.3 only: an older minimum is raised to 1.2.
        Some("TLSV1_0" | "TLSV1_1") if name == "minProtocolVersion" => Some(TlsVersion::Tls12),
        Some(other) => {
            p.add(
                format!("{field}.{name}"),
                format!("unsupported TLS version {other:?}: shunt speaks TLSV1_2 and TLSV1_3"),
            );
            None
        }
    };
    let min = version(
        p,
        "minProtocolVersion",
        tls.min_protocol_version.as_deref(),
        TlsVersion::Tls12,
    );
    let max = version(
        p,
        "maxProtocolVersion",
        tls.max_protocol_version.as_deref(),
        TlsVersion::Tls13,
    );
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        p.add(
            format!("{field}.minProtocolVersion"),
            "is above maxProtocolVersion",
        );
    }
    for (i, suite) in tls.cipher_suites.iter().enumerate() {
        if !cipher_suite_supported(suite) {
            p.add(
                format!("{field}.cipherSuites[{i}]"),
                format!(
                    "unsupported cipher suite {suite:?}: expected one of {}",
                    crate::gateway::SUPPORTED_CIPHER_SUITES.join(", ")
                ),
            );
        }
    }
    if tls.credential_names.len() > 1 {
        p.add(
            format!("{field}.credentialNames"),
            "more than one credential (RSA and ECDSA together) is not supported: name one",
        );
    }
    let credential_name = tls
        .credential_name
        .clone()
        .or_else(|| tls.credential_names.first().cloned());
    let credential = |p: &mut Problems, needs_ca: bool| -> Option<Credential> {
        if let Some(name) = &credential_name {
            return Some(Credential::Secret {
                namespace: namespace.into(),
                name: name.as_str().into(),
            });
        }
        match (&tls.server_certificate, &tls.private_key) {
            (Some(cert), Some(key)) => {
                if needs_ca && tls.ca_certificates.is_none() {
                    p.add(
                        format!("{field}.caCertificates"),
                        "required for MUTUAL without credentialName: the CA that signs clients",
                    );
                }
                Some(Credential::Files {
                    certificate: cert.as_str().into(),
                    private_key: key.as_str().into(),
                    ca_certificates: tls.ca_certificates.as_deref().map(Arc::from),
                })
            }
            _ => {
                p.add(
                    format!("{field}.credentialName"),
                    "required: a kubernetes.io/tls Secret in the Gateway's namespace (or \
                     serverCertificate and privateKey files)",
                );
                None
            }
        }
    };
    let mode = match tls.mode.as_deref() {
        None if tls.https_redirect => None,
        None | Some("SIMPLE") => credential(p, false).map(ServerTlsMode::Simple),
        Some("MUTUAL") => credential(p, true).map(ServerTlsMode::Mutual),
        Some("PASSTHROUGH") => Some(ServerTlsMode::Passthrough),
        Some("ISTIO_MUTUAL") => Some(ServerTlsMode::IstioMutual),
        Some(other @ ("AUTO_PASSTHROUGH" | "OPTIONAL_MUTUAL")) => {
            p.add(
                format!("{field}.mode"),
                format!("{other} is not supported by shunt's gateways"),
            );
            None
        }
        Some(other) => {
            p.add(
                format!("{field}.mode"),
                format!(
                    "unknown mode {other:?}: expected SIMPLE, MUTUAL, PASSTHROUGH or ISTIO_MUTUAL"
                ),
            );
            None
        }
    };
    let terminates_plaintext = matches!(
        protocol,
        Some(
            GatewayProtocol::Http
                | GatewayProtocol::Http2
                | GatewayProtocol::Grpc
                | GatewayProtocol::Tcp
        )
    );
    if mode.is_some() && terminates_plaintext {
        p.add(
            format!("{field}.mode"),
            "TLS settings on a plaintext port: use protocol HTTPS or TLS (only httpsRedirect \
             applies to an HTTP server)",
        );
    }
    (p.list.len() == before).then(|| ServerTls {
        https_redirect: tls.https_redirect,
        mode,
        min_version: min.unwrap_or(TlsVersion::Tls12),
        max_version: max.unwrap_or(TlsVersion::Tls13),
        cipher_suites: tls
            .cipher_suites
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect(),
        subject_alt_names: tls
            .subject_alt_names
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect(),
    })
}

/// Adds one server to a pod's ports: a port another Gateway opened with another protocol, or
/// on a TLS port a host an earlier server there already has, is a conflict; the later server is
/// dropped, and the error names both.
fn merge_server(
    ports: &mut BTreeMap<u16, (GatewayPort, ObjectRef)>,
    object: &ObjectRef,
    field: &str,
    number: u16,
    protocol: GatewayProtocol,
    server: &Arc<GatewayServer>,
    errors: &mut Vec<Error>,
) {
    let (port, owner) = ports.entry(number).or_insert_with(|| {
        (
            GatewayPort {
                port: number,
                protocol,
                servers: Vec::new(),
            },
            object.clone(),
        )
    });
    if port.protocol != protocol {
        errors.push(Error::Warning {
            object: object.clone(),
            field: format!("{field}.port.protocol"),
            message: format!(
                "port {number} is already {:?} on the same gateway pod by {owner}; this \
                 server ({protocol:?}) is ignored",
                port.protocol
            ),
        });
        return;
    }
    // Plaintext servers on one port merge into one set of virtual hosts (Istio's
    // `http.<port>` route); only TLS servers, chosen by SNI, cannot share a host.
    if !matches!(protocol, GatewayProtocol::Https | GatewayProtocol::Tls) {
        port.servers.push(server.clone());
        return;
    }
    let duplicate = port.servers.iter().find(|earlier| {
        earlier
            .hosts
            .iter()
            .any(|h| server.hosts.iter().any(|mine| mine == h))
    });
    if let Some(earlier) = duplicate {
        if !Arc::ptr_eq(earlier, server) {
            errors.push(Error::Warning {
                object: object.clone(),
                field: format!("{field}.hosts"),
                message: format!(
                    "port {number} of the same gateway pod already serves one of these hosts, \
                     by {} spec.servers[{}]; this server is ignored",
                    earlier.gateway, earlier.index
                ),
            });
        }
        return;
    }
    port.servers.push(server.clone());
}
