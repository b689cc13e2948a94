//! A Service's endpoints from its EndpointSlices (`discovery.k8s.io/v1`), read as kube-proxy
//! reads them:
//!
//! - a slice belongs to the Service its `kubernetes.io/service-name` label names, in its own
//!   namespace; a Service's slices are joined, and one without any keeps local mode's
//!   selector evaluation (`shunt_mesh::model::ServicePort::endpoints` is `None` then);
//! - an endpoint is served when `conditions.ready` is true or absent (Kubernetes marks a
//!   not-ready pod ready when its Service has `publishNotReadyAddresses`);
//! - a Service port's endpoints are those of the slice port of the same name and protocol;
//!   only the first address counts, and only `IPv4` slices are read (as the capture is);
//! - an endpoint's pod is the one its `targetRef` names, else the one pod with its address;
//!   with none (or a `targetRef` whose pod has another address) it has no pod and no identity.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use shunt_api::config::{CompactJson, Sourced};
use shunt_api::k8s::{Pod, PodPhase, ServicePort};
use shunt_mesh::model as mesh;

use super::capture::FieldError;

/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The address types Kubernetes defines; shunt reads `IPv4` slices.
const ADDRESS_TYPES: [&str; 3] = ["IPv4", "IPv6", "FQDN"];
const IPV4: &str = "IPv4";
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// Checks what shunt reads of `slice`; the error names the field.
pub fn check(slice: &EndpointSlice) -> Result<(), FieldError> {
    let at = |field: String, message: String| Err(FieldError { field, message });
    let labels = slice.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_none_or(String::is_empty)
    {
        return at(
            format!("metadata.labels.{SERVICE_NAME_LABEL}"),
            "required: the name of the Service whose endpoints the slice holds (without it \
             the slice belongs to no Service, and kube-proxy ignores it too)"
                .into(),
        );
    }
    if slice.address_type.is_empty() {
        // k8s-openapi reads a missing addressType as "".
        return at("addressType".into(), "required field is missing".into());
    }
    if !ADDRESS_TYPES.contains(&slice.address_type.as_str()) {
        return at(
            "addressType".into(),
            format!(
                "expected one of {}, got {:?}",
                ADDRESS_TYPES.join(", "),
                slice.address_type
            ),
        );
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(number) = port.port
            && !(1..=65535).contains(&number)
        {
            return at(
                format!("ports[{i}].port"),
                format!("expected an integer 1-65535, got {number}"),
            );
        }
        if let Some(protocol) = &port.protocol
            && !PROTOCOLS.contains(&protocol.as_str())
        {
            return at(
                format!("ports[{i}].protocol"),
                format!("expected one of {}, got {protocol:?}", PROTOCOLS.join(", ")),
            );
        }
    }
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        let Some(first) = endpoint.addresses.first() else {
            return at(
                format!("endpoints[{i}].addresses"),
                "required: at least one address".into(),
            );
        };
        if slice.address_type == IPV4 && first.parse::<Ipv4Addr>().is_err() {
            return at(
                format!("endpoints[{i}].addresses[0]"),
                format!("expected an IPv4 address (the slice's addressType), got {first:?}"),
            );
        }
    }
    Ok(())
}

/// The slices of a config, by the Service they belong to: their text, each parsed only when
/// its Service is built (parsing them all at once held every slice twice at the peak).
#[derive(Default)]
pub struct Slices<'a> {
    by_service: HashMap<(String, String), Vec<&'a str>>,
}

/// What grouping a slice needs of it.
#[derive(serde::Deserialize)]
struct SliceOwner {
    metadata: SliceOwnerMeta,
}

#[derive(serde::Deserialize)]
struct SliceOwnerMeta {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
}

impl<'a> Slices<'a> {
    /// Groups `slices` (as the loader kept them, checked) by `(namespace, service name)`.
    #[must_use]
    pub fn new(slices: &'a [Sourced<CompactJson>]) -> Self {
        let mut by_service: HashMap<(String, String), Vec<&str>> = HashMap::new();
        for sourced in slices {
            let text = sourced.object.as_str();
            // The loader kept only slices that parse and pass `check`.
            let Ok(owner) = serde_json::from_str::<SliceOwner>(text) else {
                continue;
            };
            let Some(service) = owner
                .metadata
                .labels
                .and_then(|mut labels| labels.remove(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let namespace = owner.metadata.namespace.unwrap_or_default();
            by_service
                .entry((namespace, service))
                .or_default()
                .push(text);
        }
        Self { by_service }
    }

    /// The slices of Service `namespace/name`, parsed; `None` when it has none.
    #[must_use]
    pub fn of(&self, namespace: &str, name: &str) -> Option<Vec<EndpointSlice>> {
        let texts = self
            .by_service
            .get(&(namespace.to_owned(), name.to_owned()))?;
        Some(
            texts
                .iter()
                .filter_map(|text| serde_json::from_str(text).ok())
                .collect(),
        )
    }
}

/// The config's pods, by name and by address: whose an endpoint is.
pub struct Pods<'a> {
    by_name: HashMap<(&'a str, &'a str), &'a Pod>,
    /// Only pods that have not finished (a finished pod's address may be reused).
    by_ip: HashMap<Ipv4Addr, Vec<&'a Pod>>,
}

impl<'a> Pods<'a> {
    #[must_use]
    pub fn new(pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut by_name = HashMap::new();
        let mut by_ip: HashMap<Ipv4Addr, Vec<&Pod>> = HashMap::new();
        for pod in pods {
            by_name.insert((pod.metadata.namespace(), pod.metadata.name.as_str()), pod);
            let finished = matches!(
                pod.status.phase,
                Some(PodPhase::Succeeded | PodPhase::Failed)
            );
            if let Some(ip) = pod.status.pod_ip
                && !finished
            {
                by_ip.entry(ip.0).or_default().push(pod);
            }
        }
        Self { by_name, by_ip }
    }

    /// The pod behind an endpoint at `address` of a slice in `namespace`: the pod its
    /// `targetRef` names (when that pod has no other address), else the one pod with the
    /// address. Several pods with it (host network) or none: no pod, so no identity.
    fn endpoint_pod(
        &self,
        namespace: &str,
        target: Option<&k8s_openapi::api::core::v1::ObjectReference>,
        address: Ipv4Addr,
    ) -> Option<&'a Pod> {
        match target.filter(|t| t.kind.as_deref() == Some("Pod")) {
            Some(target) => {
                let namespace = target.namespace.as_deref().unwrap_or(namespace);
                let pod = *self.by_name.get(&(namespace, target.name.as_deref()?))?;
                pod.status
                    .pod_ip
                    .is_none_or(|ip| ip.0 == address)
                    .then_some(pod)
            }
            None => match self.by_ip.get(&address)?.as_slice() {
                [pod] => Some(pod),
                _ => None,
            },
        }
    }
}

/// `port`'s endpoints in `slices` (one Service's): every address of the slice port with
/// `port`'s name and protocol, with its readiness and its pod, sorted.
#[must_use]
pub fn port_endpoints(
    port: &ServicePort,
    slices: &[EndpointSlice],
    pods: &Pods<'_>,
) -> Vec<mesh::Endpoint> {
    let name = port.name.as_deref().unwrap_or_default();
    let same_port = |p: &&EndpointPort| {
        p.name.as_deref().unwrap_or_default() == name
            && p.protocol.as_deref().unwrap_or("TCP") == port.protocol.as_str()
    };
    let mut endpoints = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == IPV4) {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(same_port)
            .and_then(|p| p.port)
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(address) = endpoint.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let pod = pods.endpoint_pod(namespace, endpoint.target_ref.as_ref(), address);
            endpoints.push(mesh::Endpoint {
                address,
                port: number,
                workload: pod.map(Pod::uid),
                ready: endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true),
            });
        }
    }
    // In one order whatever the slices' order (a list's, or the files'), each once.
    endpoints.sort_by(|a, b| {
        (a.address, a.port, &a.workload, a.ready).cmp(&(b.address, b.port, &b.workload, b.ready))
    });
    endpoints.dedup();
    endpoints
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Snapshot;
    use crate::source::local_dir::Loader;

    /// Pods `a` (10.0.0.1, uid a), `b` (10.0.0.2), `c` and `d` sharing 10.0.0.9 (host
    /// network), and Service `shop/web` with ports `http` (80 → http) and `grpc` (9000).
    const BASE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, uid: a, labels: {app: web}}
spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, uid: b, labels: {app: web}}
spec: {containers: [{ports: [{name: http, containerPort: 8081}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: shop, uid: c}
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: shop, uid: d}
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: grpc, port: 9000}]
";

    /// An EndpointSlice of `shop/web` named `name`, with `ports` and `endpoints` (flow YAML).
    fn slice(name: &str, ports: &str, endpoints: &str) -> String {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: {ports}
endpoints: {endpoints}
"
        )
    }

    const HTTP: &str = "[{name: http, port: 8080}]";

    fn snapshot(extra: &str) -> Snapshot {
        let mut loader = Loader::default();
        loader.load_file(Path::new("t.yaml"), &format!("{BASE}{extra}"));
        let loaded = loader.finish();
        assert_eq!(loaded.errors, vec![], "{extra}");
        loaded.into_snapshot(Path::new("/cfg"), &Default::default())
    }

    /// A port's name and its endpoints as `address:port pod ready`; `None` without slice
    /// endpoints (selector evaluation).
    type Port = (String, Option<Vec<String>>);

    /// Each port of `shop/web`.
    fn endpoints(extra: &str) -> Vec<Port> {
        let snapshot = snapshot(extra);
        let service = snapshot
            .mesh
            .services
            .iter()
            .find(|s| s.name == "web")
            .unwrap();
        service
            .ports
            .iter()
            .map(|port| {
                let endpoints = port.endpoints.as_ref().map(|endpoints| {
                    endpoints
                        .iter()
                        .map(|e| {
                            let pod = e.workload.as_ref().map_or("-", |uid| uid.as_str());
                            let ready = if e.ready { "ready" } else { "not-ready" };
                            format!("{}:{} {pod} {ready}", e.address, e.port)
                        })
                        .collect()
                });
                (port.name.clone().unwrap_or_default(), endpoints)
            })
            .collect()
    }

    #[test]
    fn a_services_endpoints_come_from_its_slices() {
        let http_only = |got: &[&str]| {
            vec![
                (
                    "http".to_owned(),
                    Some(got.iter().map(|s| (*s).to_owned()).collect()),
                ),
                ("grpc".to_owned(), Some(vec![])),
            ]
        };
        let ref_a = "targetRef: {kind: Pod, name: a}";
        let cases: Vec<(&str, String, Vec<Port>)> = vec![
            (
                "no slice: the selector picks the pods",
                String::new(),
                vec![("http".into(), None), ("grpc".into(), None)],
            ),
            (
                "ready true, false and absent",
                slice(
                    "w1",
                    HTTP,
                    &format!(
                        "[{{addresses: [10.0.0.1], conditions: {{ready: true}}, {ref_a}}},
                          {{addresses: [10.0.0.2], conditions: {{ready: false}}}},
                          {{addresses: [10.0.0.3], conditions: {{}}}},
                          {{addresses: [10.0.0.4]}}]"
                    ),
                ),
                http_only(&[
                    "10.0.0.1:8080 a ready",
                    "10.0.0.2:8080 b not-ready",
                    "10.0.0.3:8080 - ready",
                    "10.0.0.4:8080 - ready",
                ]),
            ),
            (
                "each Service port takes the slice port of its name and protocol",
                slice(
                    "w1",
                    "[{name: grpc, port: 9443}, {name: http, port: 8081}, \
                      {name: http, port: 7000, protocol: UDP}]",
                    "[{addresses: [10.0.0.2]}]",
                ),
                vec![
                    ("http".into(), Some(vec!["10.0.0.2:8081 b ready".into()])),
                    ("grpc".into(), Some(vec!["10.0.0.2:9443 b ready".into()])),
                ],
            ),
            (
                "a slice without the port: none for it, and no selector fallback",
                slice(
                    "w1",
                    "[{name: metrics, port: 9090}]",
                    "[{addresses: [10.0.0.1]}]",
                ),
                vec![("http".into(), Some(vec![])), ("grpc".into(), Some(vec![]))],
            ),
            (
                "targetRef, else the address; a stale or unknown pod gives no identity",
                slice(
                    "w1",
                    HTTP,
                    "[{addresses: [10.0.0.7], targetRef: {kind: Pod, name: gone}},
                      {addresses: [10.0.0.8], targetRef: {kind: Pod, name: b}},
                      {addresses: [10.0.0.2], targetRef: {kind: Pod, namespace: shop, name: b}},
                      {addresses: [10.0.0.1]},
                      {addresses: [10.0.0.9]},
                      {addresses: [10.0.0.6], targetRef: {kind: Node, name: a}}]",
                ),
                http_only(&[
                    "10.0.0.1:8080 a ready",
                    "10.0.0.2:8080 b ready",
                    "10.0.0.6:8080 - ready",
                    "10.0.0.7:8080 - ready",
                    "10.0.0.8:8080 - ready",
                    "10.0.0.9:8080 - ready",
                ]),
            ),
            (
                "several slices are joined, an address listed twice counted once",
                format!(
                    "{}{}{}",
                    slice("w1", HTTP, &format!("[{{addresses: [10.0.0.1], {ref_a}}}]")),
                    slice(
                        "w2",
                        HTTP,
                        "[{addresses: [10.0.0.2]}, {addresses: [10.0.0.1]}]"
                    ),
                    slice(
                        "w3",
                        "[{name: grpc, port: 9000}]",
                        "[{addresses: [10.0.0.2]}]"
                    ),
                ),
                vec![
                    (
                        "http".into(),
                        Some(vec![
                            "10.0.0.1:8080 a ready".into(),
                            "10.0.0.2:8080 b ready".into(),
                        ]),
                    ),
                    ("grpc".into(), Some(vec!["10.0.0.2:9000 b ready".into()])),
                ],
            ),
            (
                "an IPv6 slice counts as the Service's, but has no IPv4 endpoint",
                slice("w1", HTTP, "[{addresses: ['fd00::1']}]")
                    .replace("addressType: IPv4", "addressType: IPv6"),
                vec![("http".into(), Some(vec![])), ("grpc".into(), Some(vec![]))],
            ),
            (
                "another Service's slice is not this one's",
                slice("o1", HTTP, "[{addresses: [10.0.0.1]}]")
                    .replace("service-name: web", "service-name: other"),
                vec![("http".into(), None), ("grpc".into(), None)],
            ),
        ];
        for (name, extra, want) in cases {
            assert_eq!(endpoints(&extra), want, "{name}");
        }
    }

    #[test]
    fn slices_route_and_name_the_destination_service() {
        use shunt_mesh::index::MeshIndex;
        use shunt_mesh::routing::{Destination, Host, Routes as _};
        let snapshot = snapshot(&slice(
            "w1",
            HTTP,
            "[{addresses: [10.0.0.2], conditions: {ready: false}},
              {addresses: [10.0.0.1], targetRef: {kind: Pod, name: a}},
              {addresses: [10.0.0.5]}]",
        ));
        let (index, _) = MeshIndex::build(&snapshot.mesh);
        let host = "web.shop.svc.cluster.local";
        // The lowest ready endpoint, which the selector (pods a and b at 8080, 8081) would
        // not have given.
        assert_eq!(
            index.service_pod_addr(host, 80),
            Some("10.0.0.1:8080".parse().unwrap())
        );
        let workload = |ip: &str| index.workload_by_ip(ip.parse().unwrap()).unwrap();
        let service = |ip: &str, port| {
            index
                .destination_service(workload(ip), port)
                .map(|s| s.name.clone())
        };
        assert_eq!(service("10.0.0.1", 8080), Some("web".into()));
        // b is an endpoint at 8080 (not ready: still its Service), not at its own 8081.
        assert_eq!(service("10.0.0.2", 8080), Some("web".into()));
        assert_eq!(service("10.0.0.2", 8081), None);
        let destination = Destination {
            host: Host(host.into()),
            subset: None,
            port: Some(80),
        };
        let cluster = index
            .cluster(&destination, 80, None)
            .expect("the cluster of web:80");
        let addrs: Vec<String> = cluster
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        // Ready only; the address without a pod is dialled, without a workload.
        assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.5:8080"]);
        assert!(cluster.endpoints[0].workload.is_some());
        assert!(cluster.endpoints[1].workload.is_none());
    }

    #[test]
    fn bad_slices_are_named_by_object_and_field_and_the_rest_applies() {
        // (the slice's document, field, part of the message)
        let cases = [
            (
                slice("w1", HTTP, "[{addresses: [10.0.0.1]}]")
                    .replace("labels: {kubernetes.io/service-name: web}", "labels: {}"),
                Some("metadata.labels.kubernetes.io/service-name"),
                "required",
            ),
            (
                slice("w1", HTTP, "[{addresses: [10.0.0.1]}]")
                    .replace("addressType: IPv4", "addressType: IPv5"),
                Some("addressType"),
                r#"expected one of IPv4, IPv6, FQDN, got "IPv5""#,
            ),
            (
                slice("w1", HTTP, "[{addresses: [10.0.0.1]}]").replace("addressType: IPv4\n", ""),
                Some("addressType"),
                "required field is missing",
            ),
            (
                slice(
                    "w1",
                    "[{name: http, port: 70000}]",
                    "[{addresses: [10.0.0.1]}]",
                ),
                Some("ports[0].port"),
                "expected an integer 1-65535, got 70000",
            ),
            (
                slice("w1", "[{name: http, port: 80, protocol: ICMP}]", "[]"),
                Some("ports[0].protocol"),
                r#"got "ICMP""#,
            ),
            (
                slice(
                    "w1",
                    HTTP,
                    "[{addresses: [10.0.0.1]}, {addresses: [web-1]}]",
                ),
                Some("endpoints[1].addresses[0]"),
                r#"expected an IPv4 address (the slice's addressType), got "web-1""#,
            ),
            (
                slice("w1", HTTP, "[{addresses: []}]"),
                Some("endpoints[0].addresses"),
                "at least one address",
            ),
            (
                slice(
                    "w1",
                    HTTP,
                    "[{addresses: [10.0.0.1], conditions: {ready: maybe}}]",
                ),
                Some("endpoints[0].conditions.ready"),
                "",
            ),
            (
                slice("w1", HTTP, "[]").replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"),
                Some("apiVersion"),
                r#"expected "discovery.k8s.io/v1" for an EndpointSlice"#,
            ),
        ];
        for (document, field, message) in cases {
            let mut loader = Loader::default();
            loader.load_file(Path::new("t.yaml"), &format!("{BASE}{document}"));
            let loaded = loader.finish();
            let [error] = loaded.errors.as_slice() else {
                panic!("{document}: {:?}", loaded.errors);
            };
            // Its namespace is read after its kind and apiVersion.
            let object = if field == Some("apiVersion") {
                "EndpointSlice w1"
            } else {
                "EndpointSlice shop/w1"
            };
            assert_eq!(error.object.as_deref(), Some(object), "{document}");
            assert_eq!(error.field.as_deref(), field, "{document}");
            assert!(
                error.message.contains(message),
                "{document}: {}",
                error.message
            );
            // Everything else applies: the pods, and the Service (its selector, since the
            // bad slice was its only one).
            let snapshot = loaded.into_snapshot(Path::new("/cfg"), &Default::default());
            assert_eq!(snapshot.mesh.workloads.len(), 4, "{document}");
            assert_eq!(
                snapshot.mesh.services[0].ports[0].endpoints, None,
                "{document}"
            );
        }
    }
}
