//! Pods, Services and Namespaces: read as k8s-openapi's types (local mode's files and the kube
//! source's objects alike), then checked into the forms shunt works with (`shunt_api::k8s`).
//!
//! k8s-openapi reads a missing required field as its default and keeps every value as
//! Kubernetes' wire type (`i32` ports, string addresses), so what shunt relies on is checked
//! here, each failure naming its field path as the loader reports it.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shunt_api::k8s;

use super::capture::FieldError;

/// `Err` at `field`.
fn at<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Names `field` on a check's message.
fn field(field: impl Into<String>) -> impl FnOnce(String) -> FieldError {
    move |message| FieldError {
        field: field.into(),
        message,
    }
}

/// `items` in an allocation of their own size. A `collect` from a `Vec`'s `into_iter` reuses
/// the source's buffer, sized for k8s-openapi's far larger element (a `Container` is over a
/// kilobyte): without this, every pod kept its wire types' buffers (a fifth of the agent's
/// memory at issue 18's scale, `cargo xtask bench --kube-scale`).
fn compact<T>(mut items: Vec<T>) -> Vec<T> {
    items.shrink_to_fit();
    items
}

/// A Namespace: only its metadata is read.
pub fn namespace(raw: core::Namespace) -> Result<k8s::Namespace, FieldError> {
    Ok(k8s::Namespace {
        metadata: metadata(raw.metadata)?,
    })
}

pub fn pod(raw: core::Pod) -> Result<k8s::Pod, FieldError> {
    let metadata = metadata(raw.metadata)?;
    let spec = raw.spec.unwrap_or_default();
    let node_name = match spec.node_name.as_deref() {
        // An unscheduled pod, or one of local mode's that leaves its node to the agent.
        None | Some("") => None,
        Some(name) => Some(k8s::NodeName::new(name).map_err(field("spec.nodeName"))?),
    };
    let containers = spec
        .containers
        .into_iter()
        .enumerate()
        .map(|(i, c)| container(i, c))
        .collect::<Result<_, _>>()
        .map(compact)?;
    let status = raw.status.unwrap_or_default();
    let phase = status
        .phase
        .as_deref()
        .map(k8s::PodPhase::parse)
        .transpose()
        .map_err(field("status.phase"))?;
    let pod_ip = status
        .pod_ip
        .as_deref()
        .map(k8s::PodIp::parse)
        .transpose()
        .map_err(field("status.podIP"))?;
    let conditions = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| k8s::PodCondition {
            kind: c.type_,
            status: c.status,
        })
        .collect();
    let conditions = compact(conditions);
    Ok(k8s::Pod {
        metadata,
        spec: k8s::PodSpec {
            service_account_name: spec.service_account_name.filter(|name| !name.is_empty()),
            host_network: spec.host_network.unwrap_or_default(),
            node_name,
            containers,
        },
        status: k8s::PodStatus {
            phase,
            pod_ip,
            conditions,
        },
    })
}

pub fn service(raw: core::Service) -> Result<k8s::Service, FieldError> {
    let metadata = metadata(raw.metadata)?;
    let spec = raw.spec.unwrap_or_default();
    let cluster_ip = k8s::ClusterIp::parse(spec.cluster_ip.as_deref().unwrap_or_default())
        .map_err(field("spec.clusterIP"))?;
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, p)| service_port(i, p))
        .collect::<Result<_, _>>()
        .map(compact)?;
    Ok(k8s::Service {
        metadata,
        spec: k8s::ServiceSpec {
            cluster_ip,
            ports,
            selector: spec.selector.unwrap_or_default(),
        },
    })
}

fn metadata(raw: meta::ObjectMeta) -> Result<k8s::ObjectMeta, FieldError> {
    let non_empty = |text: String| Some(text).filter(|t| !t.is_empty());
    let owner_references = raw
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, owner)| {
            for (name, value) in [("kind", &owner.kind), ("name", &owner.name)] {
                if value.is_empty() {
                    return at(
                        format!("metadata.ownerReferences[{i}].{name}"),
                        "required field is missing",
                    );
                }
            }
            Ok(k8s::OwnerReference {
                api_version: non_empty(owner.api_version),
                kind: owner.kind,
                name: owner.name,
                uid: non_empty(owner.uid),
                controller: owner.controller,
            })
        })
        .collect::<Result<_, _>>()
        .map(compact)?;
    Ok(k8s::ObjectMeta {
        // The loader has checked it.
        name: raw.name.unwrap_or_default(),
        namespace: raw.namespace,
        uid: raw.uid.and_then(non_empty),
        labels: raw.labels.unwrap_or_default(),
        annotations: raw.annotations.unwrap_or_default(),
        owner_references,
    })
}

fn container(i: usize, raw: core::Container) -> Result<k8s::Container, FieldError> {
    let ports = raw
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, port)| {
            let path = |name: &str| format!("spec.containers[{i}].ports[{j}].{name}");
            Ok(k8s::ContainerPort {
                name: port
                    .name
                    .as_deref()
                    .map(k8s::PortName::new)
                    .transpose()
                    .map_err(field(path("name")))?,
                container_port: k8s::Port::new(port.container_port)
                    .map_err(field(path("containerPort")))?,
                protocol: protocol(port.protocol.as_deref()).map_err(field(path("protocol")))?,
            })
        })
        .collect::<Result<_, _>>()
        .map(compact)?;
    Ok(k8s::Container {
        name: Some(raw.name).filter(|name| !name.is_empty()),
        ports,
    })
}

fn service_port(i: usize, raw: core::ServicePort) -> Result<k8s::ServicePort, FieldError> {
    let path = |name: &str| format!("spec.ports[{i}].{name}");
    let target_port = match &raw.target_port {
        None => None,
        Some(IntOrString::Int(number)) => Some(k8s::TargetPort::from_number(*number)),
        Some(IntOrString::String(name)) => Some(k8s::TargetPort::from_name(name)),
    }
    .transpose()
    .map_err(field(path("targetPort")))?;
    Ok(k8s::ServicePort {
        port: k8s::Port::new(raw.port).map_err(field(path("port")))?,
        target_port,
        protocol: protocol(raw.protocol.as_deref()).map_err(field(path("protocol")))?,
        name: raw.name.filter(|name| !name.is_empty()),
        app_protocol: raw.app_protocol,
    })
}

/// Kubernetes' default is TCP.
fn protocol(raw: Option<&str>) -> Result<k8s::Protocol, String> {
    raw.map_or(Ok(k8s::Protocol::Tcp), k8s::Protocol::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_of(yaml: &str) -> Result<k8s::Pod, FieldError> {
        let raw: core::Pod = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        pod(raw)
    }

    fn service_of(yaml: &str) -> Result<k8s::Service, FieldError> {
        let raw: core::Service = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        service(raw)
    }

    #[test]
    fn a_pod_keeps_what_shunt_reads_with_kubernetes_defaults() {
        let pod = pod_of(concat!(
            "metadata: {name: web, namespace: shop, uid: u1, labels: {app: web},\n",
            "  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-1,\n",
            "                     uid: rs1, controller: true}]}\n",
            "spec: {serviceAccountName: web, nodeName: node-a,\n",
            "  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}\n",
            "status: {phase: Running, podIP: 10.0.0.5,\n",
            "  conditions: [{type: Ready, status: 'True'}]}\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pod.metadata.labels["app"], "web");
        assert_eq!(pod.metadata.owner_references[0].name, "web-1");
        assert_eq!(
            pod.spec.node_name.as_ref().map(k8s::NodeName::as_str),
            Some("node-a")
        );
        assert!(!pod.spec.host_network);
        let port = &pod.spec.containers[0].ports[0];
        assert_eq!(port.container_port, k8s::Port(8080));
        assert_eq!(port.protocol, k8s::Protocol::Tcp, "TCP by default");
        assert_eq!(pod.status.phase, Some(k8s::PodPhase::Running));
        assert_eq!(pod.status.pod_ip, Some(k8s::PodIp([10, 0, 0, 5].into())));
        assert_eq!(pod.status.conditions[0].kind, "Ready");
    }

    #[test]
    fn a_service_keeps_its_ports_and_selector() {
        let service = service_of(concat!(
            "metadata: {name: web, namespace: shop}\n",
            "spec: {clusterIP: None, selector: {app: web},\n",
            "  ports: [{name: http, port: 80, targetPort: http},\n",
            "          {port: 9090, targetPort: 9091, protocol: UDP}]}\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(service.spec.cluster_ip, k8s::ClusterIp(None), "headless");
        assert_eq!(
            service.spec.ports[0].target_port,
            Some(k8s::TargetPort::Name(k8s::PortName("http".into())))
        );
        assert_eq!(
            service.spec.ports[1].target_port,
            Some(k8s::TargetPort::Number(k8s::Port(9091)))
        );
        assert_eq!(service.spec.ports[1].protocol, k8s::Protocol::Udp);
    }

    #[test]
    fn bad_values_are_named_by_their_field() {
        // (object, field, message)
        let cases = [
            (
                pod_of("metadata: {name: w, ownerReferences: [{apiVersion: v1, name: x}]}")
                    .map(drop),
                "metadata.ownerReferences[0].kind",
                "required field is missing",
            ),
            (
                pod_of("metadata: {name: w}\nspec: {containers: [{name: a, ports: [{}]}]}")
                    .map(drop),
                "spec.containers[0].ports[0].containerPort",
                "required field is missing (or 0): expected an integer 1-65535",
            ),
            (
                pod_of(concat!(
                    "metadata: {name: w}\n",
                    "spec: {containers: [{name: a, ports: [{containerPort: 80, protocol: tcp}]}]}",
                ))
                .map(drop),
                "spec.containers[0].ports[0].protocol",
                r#"expected one of TCP, UDP, SCTP, got "tcp""#,
            ),
            (
                pod_of("metadata: {name: w}\nstatus: {podIP: ''}").map(drop),
                "status.podIP",
                r#"expected an IPv4 address, got """#,
            ),
            (
                service_of("metadata: {name: s}\nspec: {ports: [{port: 80, targetPort: 0}]}")
                    .map(drop),
                "spec.ports[0].targetPort",
                "expected an integer 1-65535 or a container port name, got 0",
            ),
        ];
        for (result, want_field, want_message) in cases {
            let error = result
                .err()
                .unwrap_or_else(|| panic!("{want_field}: accepted"));
            assert_eq!(
                (error.field.as_str(), error.message.as_str()),
                (want_field, want_message)
            );
        }
    }
}
