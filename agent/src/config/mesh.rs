//! The config as the proxy sees it: `shunt_mesh::model::MeshState`.

use shunt_mesh::model as mesh;
use shunt_mesh::settings::TrustedProxies;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::capture::{EXCLUDE_INBOUND_PORTS_ANNOTATION, excluded_ports, is_ready, workload_name};
use super::endpoints;
use shunt_api::k8s::{self as kinds, DEFAULT_SERVICE_ACCOUNT, Pod, Service};

/// One pod as a mesh workload. `captured` and `node` come from the pod's capture plan.
#[must_use]
pub fn workload(pod: &Pod, captured: bool, node: &str) -> mesh::Workload {
    mesh::Workload {
        uid: pod.uid(),
        namespace: pod.metadata.namespace().to_owned(),
        name: pod.metadata.name.clone(),
        workload_name: workload_name(pod),
        service_account: pod
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        ip: pod.status.pod_ip.map(|ip| ip.0),
        labels: pod.metadata.labels.clone(),
        captured,
        ready: is_ready(pod),
        ports: pod
            .spec
            .containers
            .iter()
            .flat_map(|container| &container.ports)
            .map(|port| mesh::ContainerPort {
                name: port.name.as_ref().map(|name| name.0.clone()),
                container_port: port.container_port.0,
                protocol: port.protocol.as_str().to_owned(),
            })
            .collect(),
        // A bad annotation leaves the pod uncaptured (the capture plan reports it), so no
        // port needs excluding then.
        excluded_inbound_ports: excluded_ports(
            &pod.metadata.annotations,
            EXCLUDE_INBOUND_PORTS_ANNOTATION,
        )
        .unwrap_or_default(),
        node: Some(node.to_owned()),
        // A bad annotation is reported with the pod's plan, and fails closed: the client's
        // address is unknown to remote-IP conditions, never the load balancer's.
        num_trusted_proxies: match num_trusted_proxies(pod) {
            Ok(hops) => hops.map(TrustedProxies::Hops),
            Err(_) => Some(TrustedProxies::Invalid),
        },
    }
}

/// Whether the pod says that its node's data plane (shunt, or Istio ambient's ztunnel)
/// captures it, so it takes HBONE. Only meaningful of another node's pod: this node's are
/// this agent's to decide.
#[must_use]
pub fn marked_captured(pod: &Pod) -> bool {
    let annotations = &pod.metadata.annotations;
    annotations.get(CAPTURED_ANNOTATION).map(String::as_str) == Some("true")
        || annotations
            .get(AMBIENT_REDIRECTION_ANNOTATION)
            .map(String::as_str)
            == Some("enabled")
}

pub use super::capture::{
    AMBIENT_REDIRECTION_ANNOTATION, CAPTURED_ANNOTATION, PROXY_CONFIG_ANNOTATION,
};

/// `gatewayTopology.numTrustedProxies` of the pod's `proxy.istio.io/config` annotation
/// (ProxyConfig as YAML or JSON; only that field is read). `Err` says what is wrong.
pub fn num_trusted_proxies(pod: &Pod) -> Result<Option<u32>, String> {
    let Some(text) = pod.metadata.annotations.get(PROXY_CONFIG_ANNOTATION) else {
        return Ok(None);
    };
    let config: shunt_mesh::istio::ProxyConfigDefaults =
        serde_yaml::from_str(text).map_err(|e| {
            format!(
                "not a ProxyConfig (YAML or JSON): {e}; until it is fixed the gateway's client \
             address is unknown and remote-IP conditions fail closed"
            )
        })?;
    match config.gateway_topology.and_then(|t| t.num_trusted_proxies) {
        None => Ok(None),
        Some(value) => TrustedProxies::parse(&value)
            .map(Some)
            .map_err(|message| format!("gatewayTopology.numTrustedProxies: {message}")),
    }
}

/// `service` as the mesh sees it: its ports' endpoints from its EndpointSlices (`slices`,
/// `None` when it has none), whose pods are found in `pods`.
#[must_use]
pub fn service(
    service: &Service,
    slices: Option<&[EndpointSlice]>,
    pods: &endpoints::Pods<'_>,
) -> mesh::Service {
    mesh::Service {
        namespace: service.metadata.namespace().to_owned(),
        name: service.metadata.name.clone(),
        cluster_ip: service.spec.cluster_ip.0,
        ports: service
            .spec
            .ports
            .iter()
            .map(|port| mesh::ServicePort {
                name: port.name.clone(),
                port: port.port.0,
                target_port: match &port.target_port {
                    // Kubernetes' default: the same number as the Service port.
                    None => mesh::TargetPort::Number(port.port.0),
                    Some(kinds::TargetPort::Number(n)) => mesh::TargetPort::Number(n.0),
                    Some(kinds::TargetPort::Name(name)) => mesh::TargetPort::Name(name.0.clone()),
                },
                protocol: port.protocol.as_str().to_owned(),
                app_protocol: port.app_protocol.clone(),
                endpoints: slices.map(|slices| endpoints::port_endpoints(port, slices, pods)),
            })
            .collect(),
        selector: service.spec.selector.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn pods_become_workloads() {
        let pod: Pod = serde_yaml::from_str(
            "
metadata:
  name: cart-v1-5f6d7-aaaaa
  namespace: shop
  uid: u-1234
  labels: {app: cart}
  annotations: {traffic.sidecar.istio.io/excludeInboundPorts: '9090'}
  ownerReferences: [{kind: ReplicaSet, name: cart-v1-5f6d7, controller: true}]
spec:
  serviceAccountName: cart
  containers:
    - name: app
      ports: [{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]
    - name: metrics
      ports: [{containerPort: 9090}]
status: {phase: Running, podIP: 10.244.0.21}
",
        )
        .unwrap();
        let port = |name: Option<&str>, container_port, protocol: &str| mesh::ContainerPort {
            name: name.map(str::to_owned),
            container_port,
            protocol: protocol.to_owned(),
        };
        assert_eq!(
            workload(&pod, true, "node-1"),
            mesh::Workload {
                uid: "u-1234".into(),
                namespace: "shop".into(),
                name: "cart-v1-5f6d7-aaaaa".into(),
                workload_name: "cart-v1".into(),
                service_account: "cart".into(),
                ip: Some(Ipv4Addr::new(10, 244, 0, 21)),
                labels: BTreeMap::from([("app".into(), "cart".into())]),
                captured: true,
                ready: true,
                ports: vec![
                    port(Some("http"), 8080, "TCP"),
                    port(None, 53, "UDP"),
                    port(None, 9090, "TCP"),
                ],
                excluded_inbound_ports: vec![9090],
                node: Some("node-1".into()),
                num_trusted_proxies: None,
            }
        );
    }

    #[test]
    fn a_bare_pod_gets_kubernetes_defaults() {
        let pod: Pod = serde_yaml::from_str("metadata: {name: solo}").unwrap();
        let got = workload(&pod, false, "local");
        assert_eq!(
            (
                got.uid.as_str(),
                got.namespace.as_str(),
                got.workload_name.as_str(),
                got.service_account.as_str(),
                got.ip,
                got.ready,
                got.captured,
            ),
            (
                "default/solo",
                "default",
                "solo",
                "default",
                None,
                true,
                false
            )
        );
    }

    #[test]
    fn services_convert_with_default_target_ports() {
        let svc: Service = serde_yaml::from_str(
            "
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports:
    - {name: http, port: 80, targetPort: http, appProtocol: http}
    - {name: grpc, port: 9000, targetPort: 9443}
    - {name: dns, port: 53, protocol: UDP}
",
        )
        .unwrap();
        let port =
            |name: &str, port, target_port, protocol: &str, app: Option<&str>| mesh::ServicePort {
                name: Some(name.into()),
                port,
                target_port,
                protocol: protocol.into(),
                app_protocol: app.map(str::to_owned),
                endpoints: None,
            };
        assert_eq!(
            service(&svc, None, &endpoints::Pods::new([])),
            mesh::Service {
                namespace: "shop".into(),
                name: "cart".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 20)),
                ports: vec![
                    port(
                        "http",
                        80,
                        mesh::TargetPort::Name("http".into()),
                        "TCP",
                        Some("http")
                    ),
                    port("grpc", 9000, mesh::TargetPort::Number(9443), "TCP", None),
                    port("dns", 53, mesh::TargetPort::Number(53), "UDP", None),
                ],
                selector: BTreeMap::from([("app".into(), "cart".into())]),
            }
        );
    }

    #[test]
    fn headless_services_have_no_cluster_ip() {
        for cluster_ip in ["None", "\"\""] {
            let svc: Service = serde_yaml::from_str(&format!(
                "metadata: {{name: db}}\nspec: {{clusterIP: {cluster_ip}}}"
            ))
            .unwrap();
            let got = service(&svc, None, &endpoints::Pods::new([]));
            assert_eq!(got.cluster_ip, None, "{cluster_ip}");
        }
    }

    #[test]
    fn the_proxy_config_annotation_gives_a_gateways_trusted_hops() {
        /// (annotation, trusted hops or a part of the error)
        type Case<'a> = (Option<&'a str>, Result<Option<u32>, &'a str>);
        let cases: [Case<'_>; 9] = [
            (None, Ok(None)),
            (Some("gatewayTopology: {numTrustedProxies: 2}"), Ok(Some(2))),
            (
                Some(r#"{"gatewayTopology": {"numTrustedProxies": 0}}"#),
                Ok(Some(0)),
            ),
            (Some("concurrency: 2"), Ok(None)),
            (
                Some("gatewayTopology: {numTrustedProxies: -1}"),
                Err("numTrustedProxies: expected a number of hops 0-64, got -1"),
            ),
            (
                Some("gatewayTopology: {numTrustedProxies: 65}"),
                Err("got 65"),
            ),
            (
                Some("gatewayTopology: {numTrustedProxies: two}"),
                Err("got \"two\""),
            ),
            (
                Some(r#"{"gatewayTopology": {"numTrustedProxies": "2"}}"#),
                Err("got \"2\""),
            ),
            (
                Some("gatewayTopology: [numTrustedProxies"),
                Err("not a ProxyConfig"),
            ),
        ];
        for (annotation, want) in cases {
            let mut pod: Pod = serde_yaml::from_str("metadata: {name: gw}").unwrap();
            if let Some(text) = annotation {
                pod.metadata
                    .annotations
                    .insert(PROXY_CONFIG_ANNOTATION.into(), text.into());
            }
            // What the workload carries: the hops, or invalid (failing closed).
            let applied = workload(&pod, true, "node").num_trusted_proxies;
            match (num_trusted_proxies(&pod), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "{annotation:?}");
                    assert_eq!(applied, want.map(TrustedProxies::Hops), "{annotation:?}");
                }
                (Err(got), Err(want)) => {
                    assert!(got.contains(want), "{annotation:?}: {got}");
                    assert_eq!(applied, Some(TrustedProxies::Invalid), "{annotation:?}");
                }
                (got, want) => panic!("{annotation:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
