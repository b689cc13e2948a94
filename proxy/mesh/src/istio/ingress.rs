//! Kubernetes `Ingress`: `networking.k8s.io/v1`, and `extensions/v1beta1` (the shape older
//! manifests carry) converted to it on read ([`IngressV1beta1::into_v1`]). Istio's ingress
//! controller serves the ones of its class as a Gateway and VirtualServices; so does
//! `crate::routing`.
//!
//! Hand-written rather than k8s-openapi's: shunt-mesh stays free of the Kubernetes client
//! types, and only what the conversion reads is here.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The API version of [`Ingress`].
pub const INGRESS_V1: &str = "networking.k8s.io/v1";
/// The API version of [`IngressV1beta1`].
pub const INGRESS_V1BETA1: &str = "extensions/v1beta1";
/// The annotation naming an Ingress's class, read before `spec.ingressClassName`.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// `networking.k8s.io/v1` `Ingress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Ingress {
    /// `metadata`.
    pub metadata: IngressMetadata,
    /// `spec`.
    #[serde(default)]
    pub spec: IngressSpec,
}

impl Ingress {
    /// `namespace/name`.
    #[must_use]
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// `kubernetes.io/ingress.class`, if set.
    #[must_use]
    pub fn class_annotation(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(INGRESS_CLASS_ANNOTATION)
            .map(String::as_str)
    }
}

/// An Ingress's `metadata`: what routing reads. Of the annotations only
/// [`INGRESS_CLASS_ANNOTATION`] is kept, so large ones (kubectl's last applied configuration)
/// never travel to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct IngressMetadata {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `default` when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// RFC 3339; orders the rules of several Ingresses for one host (the oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// `metadata.annotations`, only [`INGRESS_CLASS_ANNOTATION`].
    #[serde(
        default,
        deserialize_with = "class_annotation_only",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    super::DEFAULT_NAMESPACE.to_owned()
}

fn class_annotation_only<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let mut all =
        Option::<BTreeMap<String, String>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(all
        .remove_entry(INGRESS_CLASS_ANNOTATION)
        .into_iter()
        .collect())
}

istio_struct! {
    /// `Ingress.spec` (v1).
    pub struct IngressSpec {
        /// `ingressClassName`: the IngressClass; `istio` (MeshConfig `ingressClass`) is
        /// Istio's.
        pub ingress_class_name: Option<String>,
        /// `defaultBackend`: where requests that match no rule go.
        pub default_backend: Option<IngressBackend>,
        /// `rules`: hosts and their paths.
        pub rules: Vec<IngressRule>,
        /// `tls`: the hosts served over TLS on port 443, with their Secrets.
        pub tls: Vec<IngressTls>,
    }
}

istio_struct! {
    /// `spec.rules[]`.
    pub struct IngressRule {
        /// `host`: exact or `*.` wildcard; absent: every host.
        pub host: Option<String>,
        /// `http`: the paths; a rule without it serves nothing (Istio skips it).
        pub http: Option<HttpIngressRuleValue>,
    }
}

istio_struct! {
    /// `rules[].http`.
    pub struct HttpIngressRuleValue {
        /// `paths`.
        pub paths: Vec<HttpIngressPath>,
    }
}

istio_struct! {
    /// `rules[].http.paths[]`.
    pub struct HttpIngressPath {
        /// `path`: must start with `/` for `Exact` and `Prefix`.
        pub path: Option<String>,
        /// `pathType`: `Exact`, `Prefix` or `ImplementationSpecific`; required in v1.
        pub path_type: Option<String>,
        /// `backend`.
        pub backend: IngressBackend,
    }
}

istio_struct! {
    /// An Ingress backend: a Service (a `resource` backend is not served, as in Istio).
    pub struct IngressBackend {
        /// `service`.
        pub service: Option<IngressServiceBackend>,
        /// `resource`: not supported.
        pub resource: Option<serde_json::Value>,
    }
}

istio_struct! {
    /// `backend.service`.
    pub struct IngressServiceBackend {
        /// `name`: a Service in the Ingress's namespace.
        pub name: String,
        /// `port`: by number or by the Service port's name.
        pub port: Option<ServiceBackendPort>,
    }
}

istio_struct! {
    /// `backend.service.port`: exactly one of `number` and `name`.
    pub struct ServiceBackendPort {
        /// `name`: a port name of the Service.
        pub name: Option<String>,
        /// `number`: a port number of the Service.
        pub number: Option<i64>,
    }
}

istio_struct! {
    /// `spec.tls[]`.
    pub struct IngressTls {
        /// `hosts`; empty: every host (`*`).
        pub hosts: Vec<String>,
        /// `secretName`: a `kubernetes.io/tls` Secret in the Ingress's namespace.
        pub secret_name: Option<String>,
    }
}

/// `extensions/v1beta1` `Ingress`, as older manifests carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressV1beta1 {
    /// `metadata`.
    pub metadata: IngressMetadata,
    /// `spec`.
    #[serde(default)]
    pub spec: IngressV1beta1Spec,
}

istio_struct! {
    /// `Ingress.spec` (v1beta1).
    pub struct IngressV1beta1Spec {
        /// `ingressClassName`.
        pub ingress_class_name: Option<String>,
        /// `backend`: v1's `defaultBackend`.
        pub backend: Option<IngressV1beta1Backend>,
        /// `rules`.
        pub rules: Vec<IngressV1beta1Rule>,
        /// `tls`: as in v1.
        pub tls: Vec<IngressTls>,
    }
}

istio_struct! {
    /// `spec.rules[]` (v1beta1).
    pub struct IngressV1beta1Rule {
        /// `host`.
        pub host: Option<String>,
        /// `http`.
        pub http: Option<IngressV1beta1Http>,
    }
}

istio_struct! {
    /// `rules[].http` (v1beta1).
    pub struct IngressV1beta1Http {
        /// `paths`.
        pub paths: Vec<IngressV1beta1Path>,
    }
}

istio_struct! {
    /// `rules[].http.paths[]` (v1beta1).
    pub struct IngressV1beta1Path {
        /// `path`.
        pub path: Option<String>,
        /// `pathType`; Kubernetes' default for v1beta1 is `ImplementationSpecific`.
        pub path_type: Option<String>,
        /// `backend`.
        pub backend: IngressV1beta1Backend,
    }
}

istio_struct! {
    /// A v1beta1 backend: `serviceName` and `servicePort` (a number or a port name).
    pub struct IngressV1beta1Backend {
        /// `serviceName`.
        pub service_name: Option<String>,
        /// `servicePort`.
        pub service_port: Option<IntOrString>,
        /// `resource`: not supported.
        pub resource: Option<serde_json::Value>,
    }
}

/// Kubernetes' `IntOrString`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    String(String),
}

impl IngressV1beta1 {
    /// The same Ingress in v1's shape, as the API server converts it: `backend` becomes
    /// `defaultBackend`, `serviceName`/`servicePort` become `service.name`/`service.port`,
    /// and an absent `pathType` is `ImplementationSpecific`.
    #[must_use]
    pub fn into_v1(self) -> Ingress {
        let spec = self.spec;
        Ingress {
            metadata: self.metadata,
            spec: IngressSpec {
                ingress_class_name: spec.ingress_class_name,
                default_backend: spec.backend.map(IngressV1beta1Backend::into_v1),
                rules: spec
                    .rules
                    .into_iter()
                    .map(|rule| IngressRule {
                        host: rule.host,
                        http: rule.http.map(|http| HttpIngressRuleValue {
                            paths: http
                                .paths
                                .into_iter()
                                .map(|path| HttpIngressPath {
                                    path: path.path,
                                    path_type: Some(
                                        path.path_type
                                            .unwrap_or_else(|| "ImplementationSpecific".into()),
                                    ),
                                    backend: path.backend.into_v1(),
                                })
                                .collect(),
                        }),
                    })
                    .collect(),
                tls: spec.tls,
            },
        }
    }
}

impl IngressV1beta1Backend {
    fn into_v1(self) -> IngressBackend {
        IngressBackend {
            service: self.service_name.map(|name| IngressServiceBackend {
                name,
                port: self.service_port.map(|port| match port {
                    IntOrString::Int(number) => ServiceBackendPort {
                        name: None,
                        number: Some(number),
                    },
                    IntOrString::String(name) => ServiceBackendPort {
                        name: Some(name),
                        number: None,
                    },
                }),
            }),
            resource: self.resource,
        }
    }
}
