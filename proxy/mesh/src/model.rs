//! The mesh as the proxy sees it: workloads (pods) and services. The agent builds it from its
//! config source and sends it whole on every change (`shunt_api::control::AgentMessage::State`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::PodUid;
use crate::istio;
use crate::settings::MeshSettings;

/// Everything the proxy needs to route and label connections. The Istio objects are the
/// agent's valid ones; every field after `services` defaults, so an older agent's state
/// still decodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshState {
    /// Every pod in the agent's config, captured or not (any may be an endpoint or a peer).
    pub workloads: Vec<Workload>,
    /// Every Service in the agent's config.
    pub services: Vec<Service>,
    /// VirtualServices from all namespaces that [`crate::routing::validate`] keeps.
    #[serde(default)]
    pub virtual_services: Vec<istio::VirtualService>,
    /// DestinationRules from all namespaces that [`crate::routing::validate`] keeps.
    #[serde(default)]
    pub destination_rules: Vec<istio::DestinationRule>,
    /// ServiceEntries from all namespaces that [`crate::routing::validate`] keeps.
    #[serde(default)]
    pub service_entries: Vec<istio::ServiceEntry>,
    /// Gateways from all namespaces that [`crate::routing::validate`] keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<istio::Gateway>,
    /// Kubernetes Ingresses (v1 shape), served when of the mesh's `ingressClass`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingresses: Vec<istio::Ingress>,
    /// `RateLimitPolicy` objects from all namespaces that [`crate::routing::validate`] keeps.
    #[serde(default)]
    pub rate_limit_policies: Vec<istio::RateLimitPolicy>,
    /// MeshConfig, with the agent's flags applied.
    #[serde(default)]
    pub mesh: MeshSettings,
    /// The node the receiving proxy runs on (its agent's `--node-name`): the workloads whose
    /// [`Workload::node`] it is are the ones this proxy serves; the others are another node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// PeerAuthentications (`security.istio.io` v1, v1beta1) from all namespaces that
    /// [`crate::security::validate`] keeps.
    #[serde(default)]
    pub peer_authentications: Vec<istio::PeerAuthentication>,
    /// AuthorizationPolicies (`security.istio.io` v1, v1beta1) from all namespaces that
    /// [`crate::security::authz::validate`] keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<istio::AuthorizationPolicy>,
    /// What the agent's rejected PeerAuthentications, DestinationRules and
    /// AuthorizationPolicies asked to secure:
    /// locked down until they are fixed (see [`istio::FailClosed`]).
    #[serde(default, skip_serializing_if = "istio::FailClosed::is_empty")]
    pub fail_closed: istio::FailClosed,
    /// RequestAuthentications (`security.istio.io` v1, v1beta1) from all namespaces that
    /// [`crate::security::RequestAuthnTable::build`] accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_authentications: Vec<istio::RequestAuthentication>,
    /// The rejected RequestAuthentications, standing in until they are fixed (see
    /// [`istio::RejectedRequestAuthentication`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_request_authentications: Vec<istio::RejectedRequestAuthentication>,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// `metadata.uid`, or `namespace/name` when the config gives none.
    pub uid: PodUid,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The owning workload's name as Istio reports it (`source_workload`): the Deployment for
    /// a ReplicaSet-owned pod, the owner's name for other controllers, else the pod's name.
    pub workload_name: String,
    /// `spec.serviceAccountName`; `default` when unset.
    pub service_account: String,
    /// `status.podIP`; `None` until the pod has one (such a pod is never an endpoint).
    pub ip: Option<Ipv4Addr>,
    /// `metadata.labels`: matched by Service selectors, subsets and `sourceLabels`.
    pub labels: BTreeMap<String, String>,
    /// Whether the shunt of the pod's node captures its traffic (decided from the config in
    /// the same way for every pod, whichever node it is on).
    pub captured: bool,
    /// Whether the pod may serve as a Service endpoint.
    pub ready: bool,
    /// `spec.containers[].ports`, used to resolve named `targetPort`s.
    pub ports: Vec<ContainerPort>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts`: ports its inbound capture leaves to
    /// the app, so the proxy never delivers to them on the pod's behalf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_inbound_ports: Vec<u16>,
    /// The node the pod runs on (`spec.nodeName`, or the agent's node for a pod that names
    /// none); `None` from an agent older than node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's `proxy.istio.io/config` `gatewayTopology.numTrustedProxies`: for a gateway
    /// pod, wins over MeshConfig's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_trusted_proxies: Option<crate::settings::TrustedProxies>,
}

impl Workload {
    /// Istio's canonical service: the `service.istio.io/canonical-name` label, else
    /// `app.kubernetes.io/name`, else `app`, else the workload's name.
    #[must_use]
    pub fn canonical_service(&self) -> &str {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|key| self.labels.get(*key))
        .map_or(self.workload_name.as_str(), String::as_str)
    }

    /// Istio's canonical revision: `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    #[must_use]
    pub fn canonical_revision(&self) -> &str {
        [
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ]
        .iter()
        .find_map(|key| self.labels.get(*key))
        .map_or("latest", String::as_str)
    }
}

/// One entry of a container's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// `name`: what a Service's named `targetPort` refers to.
    pub name: Option<String>,
    /// `containerPort`.
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// One Kubernetes Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.clusterIP`; `None` for a headless Service (`None` or `""`).
    pub cluster_ip: Option<Ipv4Addr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; a Service without one has no endpoints in local mode.
    pub selector: BTreeMap<String, String>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`, Istio's `destination_service`.
    #[must_use]
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// One entry of a Service's `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `name`; its prefix (`http-`, `grpc-`, ...) gives the protocol when `appProtocol` does not.
    pub name: Option<String>,
    /// `port`: the port clients dial on the cluster IP.
    pub port: u16,
    /// `targetPort`; Kubernetes' default (the same number as `port`) is filled in by the agent.
    pub target_port: TargetPort,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `appProtocol`; wins over the name's prefix in choosing the port's protocol.
    pub app_protocol: Option<String>,
    /// The port's endpoints from the Service's EndpointSlices (`discovery.k8s.io/v1`, the
    /// slice port of this port's name and protocol), as kube-proxy reads them; `None` when
    /// the Service has no EndpointSlice at all, and then its selector picks the pods
    /// ([`selects`], [`target_port`]). Every port of a Service is `None`, or none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// One address of an EndpointSlice, at one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The first of the endpoint's `addresses` (kube-proxy reads no other).
    pub address: Ipv4Addr,
    /// The slice port's `port`.
    pub port: u16,
    /// The pod behind it (its [`Workload::uid`]), by `targetRef` or else by address; `None`
    /// when no known pod is: such an endpoint is dialled, but has no workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<PodUid>,
    /// `conditions.ready` (absent means ready): only a ready endpoint is served. Kubernetes
    /// marks not-ready pods ready when the Service has `publishNotReadyAddresses`.
    pub ready: bool,
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    /// A port number on the pod.
    Number(u16),
    /// The `name` of a container port; resolved per pod by [`target_port`].
    Name(String),
}

/// Whether `service`'s selector picks `workload`. A Service without a selector has no
/// endpoints in local mode.
pub fn selects(service: &Service, workload: &Workload) -> bool {
    !service.selector.is_empty()
        && service.namespace == workload.namespace
        && service
            .selector
            .iter()
            .all(|(key, value)| workload.labels.get(key) == Some(value))
}

/// Whether `port` of `service` reaches `workload` at `number` (ready or not): an endpoint of
/// the pod at that port when the Service has EndpointSlices, else its selector and the
/// port's `targetPort`.
pub fn reaches(service: &Service, port: &ServicePort, workload: &Workload, number: u16) -> bool {
    match &port.endpoints {
        Some(endpoints) => endpoints
            .iter()
            .any(|e| e.port == number && e.workload.as_ref() == Some(&workload.uid)),
        None => selects(service, workload) && target_port(port, workload) == Some(number),
    }
}

/// `port`'s `targetPort` on `workload`: a number as is; a name through the pod's container
/// ports (a pod without that named port is not an endpoint of it, as in Kubernetes).
pub fn target_port(port: &ServicePort, workload: &Workload) -> Option<u16> {
    match &port.target_port {
        TargetPort::Number(number) => Some(*number),
        TargetPort::Name(name) => workload
            .ports
            .iter()
            .find(|c| {
                c.name.as_deref() == Some(name) && c.protocol.eq_ignore_ascii_case(&port.protocol)
            })
            .map(|c| c.container_port),
    }
}
