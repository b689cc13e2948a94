//! What the Kubernetes source watches, and what it keeps of each object.

use k8s_openapi::api::core::v1 as core;
use kube::core::{ApiResource, DynamicObject};
use shunt_api::k8s::NodeName;

use crate::config::capture::annotations_read;
use crate::config::endpoints::SERVICE_NAME_LABEL;
use shunt_mesh::istio::{NETWORKING_VERSIONS, SECURITY_VERSIONS, SHUNT_API_VERSION};

/// The Istio kinds shunt implements. Each is watched at one version: the newest of those shunt
/// reads that the API server serves ([`Resource::older`]). The API server converts a stored
/// object to any version its CRD serves, so one watch sees them all; but Istio releases before
/// 1.22 serve no `v1`, and there the older versions are the only way to see any of them.
const ISTIO_KINDS: [(&str, &str, &str); 7] = [
    ("networking.istio.io", "VirtualService", "virtualservices"),
    ("networking.istio.io", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "Gateway", "gateways"),
    (
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ),
];

/// The namespace and name of Istio's MeshConfig ConfigMap.
pub const MESH_CONFIG: (&str, &str) = ("istio-system", "istio");

/// One watch of the source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watch {
    /// The pods of this node, whole.
    NodePods,
    /// Every pod, trimmed ([`trim_pod`]): other nodes' pods are peers and endpoints.
    AllPods,
    Namespaces,
    Services,
    /// `discovery.k8s.io/v1` EndpointSlices, trimmed ([`trim_endpoint_slice`]): the
    /// Services' endpoints.
    EndpointSlices,
    /// `networking.k8s.io/v1` Ingresses (class `istio`, served by the gateway pods).
    Ingresses,
    /// An index into the Istio kinds.
    Istio(usize),
    RateLimitPolicies,
    /// `istio-system/istio`.
    MeshConfig,
    /// A CA Secret of `istio-system` (`cacerts`, `istio-ca-secret`): the CA-only process's.
    CaSecret(&'static str),
    /// A Secret a gateway on this node names.
    Secret {
        namespace: String,
        name: String,
    },
}

/// How to watch a [`Watch`].
pub struct Resource {
    pub api: ApiResource,
    /// Older versions of `api`, newest first, each watched instead when the API server answers
    /// 404 for every version before it.
    pub older: Vec<ApiResource>,
    /// Only this namespace's objects, when set.
    pub namespace: Option<String>,
    pub fields: Option<String>,
    /// A custom resource: a cluster without its CRD (the list answers 404) has none of them,
    /// rather than keeping the source from ever being listed.
    pub optional: bool,
}

impl Watch {
    /// Every watch that does not depend on the config itself.
    pub fn base() -> Vec<Self> {
        let mut watches = vec![
            Self::NodePods,
            Self::AllPods,
            Self::Namespaces,
            Self::Services,
            Self::EndpointSlices,
            Self::Ingresses,
        ];
        watches.extend((0..ISTIO_KINDS.len()).map(Self::Istio));
        watches.extend([Self::RateLimitPolicies, Self::MeshConfig]);
        watches
    }

    /// What the CA-only process watches (`shunt-agent --ca-only`): every pod (trimmed: the
    /// node of each identity), the mesh config, and the CA Secrets of `istio-system`.
    pub fn ca(secrets: [&'static str; 2]) -> Vec<Self> {
        let mut watches = vec![Self::AllPods, Self::MeshConfig];
        watches.extend(secrets.map(Self::CaSecret));
        watches
    }

    pub fn resource(&self, node: &NodeName) -> Resource {
        let core = |api: ApiResource| Resource {
            api,
            older: Vec::new(),
            namespace: None,
            fields: None,
            optional: false,
        };
        let custom_api = |api_version: &str, kind: &str, plural: &str| {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            ApiResource {
                group: group.to_owned(),
                version: version.to_owned(),
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
            }
        };
        let custom = |newest: &str, older: &[&str], kind: &str, plural: &str| Resource {
            api: custom_api(newest, kind, plural),
            older: older.iter().map(|v| custom_api(v, kind, plural)).collect(),
            namespace: None,
            fields: None,
            optional: true,
        };
        match self {
            Self::NodePods => Resource {
                fields: Some(format!("spec.nodeName={node}")),
                ..core(ApiResource::erase::<core::Pod>(&()))
            },
            Self::AllPods => core(ApiResource::erase::<core::Pod>(&())),
            Self::Namespaces => core(ApiResource::erase::<core::Namespace>(&())),
            Self::Services => core(ApiResource::erase::<core::Service>(&())),
            Self::EndpointSlices => core(ApiResource::erase::<
                k8s_openapi::api::discovery::v1::EndpointSlice,
            >(&())),
            Self::Ingresses => core(ApiResource::erase::<
                k8s_openapi::api::networking::v1::Ingress,
            >(&())),
            Self::Istio(index) => {
                let (group, kind, plural) = ISTIO_KINDS[*index];
                let (newest, older): (&str, &[&str]) = if group == "security.istio.io" {
                    let [newest, older @ ..] = &SECURITY_VERSIONS;
                    (newest, older)
                } else {
                    let [newest, older @ ..] = &NETWORKING_VERSIONS;
                    (newest, older)
                };
                custom(newest, older, kind, plural)
            }
            Self::RateLimitPolicies => custom(
                SHUNT_API_VERSION,
                &[],
                "RateLimitPolicy",
                "ratelimitpolicies",
            ),
            Self::MeshConfig => Resource {
                namespace: Some(MESH_CONFIG.0.to_owned()),
                fields: Some(format!("metadata.name={}", MESH_CONFIG.1)),
                ..core(ApiResource::erase::<core::ConfigMap>(&()))
            },
            Self::CaSecret(name) => Self::Secret {
                namespace: MESH_CONFIG.0.to_owned(),
                name: (*name).to_owned(),
            }
            .resource(node),
            Self::Secret { namespace, name } => Resource {
                namespace: Some(namespace.clone()),
                fields: Some(format!("metadata.name={name}")),
                ..core(ApiResource::erase::<core::Secret>(&()))
            },
        }
    }
}

/// What the source keeps of an object, as JSON with its `apiVersion` and `kind` (list items
/// come without them). Managed fields are dropped from every object; other nodes' pods keep
/// only what a peer or an endpoint needs, Namespaces only their metadata.
pub fn keep(watch: &Watch, api: &ApiResource, object: DynamicObject) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api.api_version.clone().into());
        map.insert("kind".into(), api.kind.clone().into());
    }
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("managedFields");
    }
    match watch {
        Watch::AllPods => trim_pod(&value),
        Watch::EndpointSlices => trim_endpoint_slice(&value),
        Watch::Namespaces => pick(&value, &["apiVersion", "kind", "metadata"]),
        _ => value,
    }
}

/// A pod of another node: its IP, node, labels, service account, owner and phase, the
/// annotations the agent reads ([`annotations_read`]: capture, workload, and the marks saying
/// its node captures it), and the two things selector evaluation needs of an endpoint (its
/// Ready condition and its container ports).
pub fn trim_pod(pod: &serde_json::Value) -> serde_json::Value {
    let mut trimmed = pick(pod, &["apiVersion", "kind"]);
    trimmed["metadata"] = pick(
        &pod["metadata"],
        &[
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "labels",
            "ownerReferences",
        ],
    );
    // Those that decide its capture and its workload, as local mode reads them.
    let annotations = pick(&pod["metadata"]["annotations"], &annotations_read());
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        trimmed["metadata"]["annotations"] = annotations;
    }
    let mut spec = pick(
        &pod["spec"],
        &["nodeName", "serviceAccountName", "hostNetwork"],
    );
    if let Some(containers) = pod["spec"]["containers"].as_array() {
        spec["containers"] = containers
            .iter()
            .map(|container| pick(container, &["name", "ports"]))
            .collect();
    }
    trimmed["spec"] = spec;
    let mut status = pick(&pod["status"], &["phase", "podIP"]);
    if let Some(conditions) = pod["status"]["conditions"].as_array() {
        status["conditions"] = conditions
            .iter()
            .filter(|condition| condition["type"] == "Ready")
            .map(|condition| pick(condition, &["type", "status"]))
            .collect();
    }
    trimmed["status"] = status;
    trimmed
}

/// An EndpointSlice: what the endpoints of its Service need ([`crate::config::endpoints`]):
/// its Service's label, address type, ports, and each endpoint's addresses, readiness and pod.
pub fn trim_endpoint_slice(slice: &serde_json::Value) -> serde_json::Value {
    let mut trimmed = pick(slice, &["apiVersion", "kind", "addressType"]);
    trimmed["metadata"] = pick(
        &slice["metadata"],
        &["name", "namespace", "uid", "resourceVersion"],
    );
    trimmed["metadata"]["labels"] = pick(&slice["metadata"]["labels"], &[SERVICE_NAME_LABEL]);
    if let Some(ports) = slice["ports"].as_array() {
        trimmed["ports"] = ports
            .iter()
            .map(|port| pick(port, &["name", "port", "protocol"]))
            .collect();
    }
    if let Some(endpoints) = slice["endpoints"].as_array() {
        trimmed["endpoints"] = endpoints
            .iter()
            .map(|endpoint| {
                let mut kept = pick(endpoint, &["addresses"]);
                if endpoint.get("conditions").is_some() {
                    kept["conditions"] = pick(&endpoint["conditions"], &["ready"]);
                }
                if endpoint.get("targetRef").is_some() {
                    kept["targetRef"] =
                        pick(&endpoint["targetRef"], &["kind", "namespace", "name"]);
                }
                kept
            })
            .collect();
    }
    trimmed
}

/// The listed fields of `value` (an object), those it has.
fn pick(value: &serde_json::Value, fields: &[&str]) -> serde_json::Value {
    let mut picked = serde_json::Map::new();
    for field in fields {
        if let Some(v) = value.get(field) {
            picked.insert((*field).to_owned(), v.clone());
        }
    }
    picked.into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn another_nodes_pod_keeps_only_what_a_peer_needs() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app": "db"},
                         "annotations": {"big": "x", "sidecar.istio.io/inject": "false",
                                         "shunt.io/captured": "true",
                                         "ambient.istio.io/redirection": "enabled"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "db-1"}],
                         "managedFields": [{}]},
            "spec": {"nodeName": "node-b", "serviceAccountName": "db", "volumes": [{}],
                     "containers": [{"name": "app", "image": "db:1", "env": [{}],
                                     "ports": [{"containerPort": 5432}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7", "hostIP": "192.0.2.2",
                       "conditions": [{"type": "Ready", "status": "True", "reason": "x"},
                                      {"type": "Initialized", "status": "True"}]}
        });
        let want = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app": "db"},
                         "annotations": {"sidecar.istio.io/inject": "false",
                                         "shunt.io/captured": "true",
                                         "ambient.istio.io/redirection": "enabled"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "db-1"}]},
            "spec": {"nodeName": "node-b", "serviceAccountName": "db",
                     "containers": [{"name": "app", "ports": [{"containerPort": 5432}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        assert_eq!(trim_pod(&pod), want);
    }

    #[test]
    fn an_endpoint_slice_keeps_only_what_its_services_endpoints_need() {
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "cart-x", "namespace": "shop", "uid": "s1",
                         "resourceVersion": "9", "generateName": "cart-",
                         "labels": {"kubernetes.io/service-name": "cart",
                                    "endpointslice.kubernetes.io/managed-by": "c"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "t"},
                         "ownerReferences": [{"kind": "Service", "name": "cart"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "n", "zone": "z",
                 "conditions": {"ready": false, "serving": true, "terminating": true},
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "cart-1",
                               "uid": "u", "resourceVersion": "3"},
                 "hints": {"forZones": [{"name": "z"}]}},
                {"addresses": ["10.0.0.2"]}
            ]
        });
        let want = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "cart-x", "namespace": "shop", "uid": "s1",
                         "resourceVersion": "9",
                         "labels": {"kubernetes.io/service-name": "cart"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "cart-1"}},
                {"addresses": ["10.0.0.2"]}
            ]
        });
        assert_eq!(trim_endpoint_slice(&slice), want);
    }

    #[test]
    fn list_items_get_their_kind_and_lose_managed_fields() {
        let api = ApiResource::erase::<core::Namespace>(&());
        let mut object = DynamicObject::new("shop", &api);
        object.types = None; // As list items come.
        object.metadata.managed_fields = Some(vec![Default::default()]);
        object.data = json!({"spec": {"finalizers": ["kubernetes"]}});
        let kept = keep(&Watch::Namespaces, &api, object);
        assert_eq!(
            kept,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        );
    }
}
