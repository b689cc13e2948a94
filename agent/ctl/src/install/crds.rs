//! The CustomResourceDefinitions of the kinds shunt reads: `shunt.io` RateLimitPolicy, and
//! the Istio kinds it implements (left out with `crds.istio=false`, for a cluster that has
//! Istio's own). Each schema is generated from shunt-mesh's serde types (feature `schema`)
//! and made structural by kube-core's rewriter, so it validates what shunt reads exactly as
//! shunt reads it. Every object in it also keeps fields shunt does not model
//! (`x-kubernetes-preserve-unknown-fields`): shunt implements a subset of Istio's API, and an
//! Istio field it does not know must reach Istio (or a later shunt), not be pruned by the API
//! server.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use shunt_mesh::istio;

/// One kind's CRD.
struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    /// Served versions, the first one stored.
    versions: &'static [&'static str],
    istio: bool,
    schema: fn() -> Value,
}

const NETWORKING: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
const SECURITY: [&str; 2] = ["v1", "v1beta1"];

const KINDS: [Kind; 8] = [
    Kind {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        versions: &NETWORKING,
        istio: true,
        schema: spec::<istio::VirtualServiceSpec>,
    },
    Kind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        versions: &NETWORKING,
        istio: true,
        schema: spec::<istio::DestinationRuleSpec>,
    },
    Kind {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        versions: &NETWORKING,
        istio: true,
        schema: spec::<istio::GatewaySpec>,
    },
    Kind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        versions: &NETWORKING,
        istio: true,
        schema: spec::<istio::ServiceEntrySpec>,
    },
    Kind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        versions: &SECURITY,
        istio: true,
        schema: spec::<istio::PeerAuthenticationSpec>,
    },
    Kind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short_names: &["ra"],
        versions: &SECURITY,
        istio: true,
        schema: spec::<istio::RequestAuthenticationSpec>,
    },
    Kind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        versions: &SECURITY,
        istio: true,
        schema: spec::<istio::AuthorizationPolicySpec>,
    },
    Kind {
        group: "shunt.io",
        kind: "RateLimitPolicy",
        plural: "ratelimitpolicies",
        short_names: &["rlp"],
        versions: &["v1alpha1"],
        istio: false,
        schema: spec::<istio::RateLimitPolicySpec>,
    },
];

/// The CRDs, shunt's own always, Istio's when `istio`.
pub fn crds(istio: bool) -> Vec<CustomResourceDefinition> {
    KINDS
        .iter()
        .filter(|kind| istio || !kind.istio)
        .map(crd)
        .collect()
}

fn crd(kind: &Kind) -> CustomResourceDefinition {
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": (kind.schema)(),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let schema: JSONSchemaProps = serde_json::from_value(schema).unwrap_or_else(|e| {
        // Built from shunt's own types: a failure here is a bug the CRD tests catch.
        panic!(
            "{}'s schema is not a Kubernetes JSONSchemaProps: {e}",
            kind.kind
        )
    });
    let versions = kind
        .versions
        .iter()
        .enumerate()
        .map(|(at, version)| CustomResourceDefinitionVersion {
            name: (*version).to_owned(),
            served: true,
            storage: at == 0,
            schema: Some(CustomResourceValidation {
                open_api_v3_schema: Some(schema.clone()),
            }),
            subresources: Some(CustomResourceSubresources {
                status: Some(CustomResourceSubresourceStatus(json!({}))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", kind.plural, kind.group)),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "shunt".to_owned())].into()),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: kind.group.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: kind.kind.to_owned(),
                list_kind: Some(format!("{}List", kind.kind)),
                plural: kind.plural.to_owned(),
                singular: Some(kind.kind.to_lowercase()),
                short_names: Some(kind.short_names.iter().map(|s| (*s).to_owned()).collect()),
                categories: kind.istio.then(|| vec!["istio-io".to_owned()]),
            },
            scope: "Namespaced".to_owned(),
            versions,
            ..Default::default()
        },
        status: None,
    }
}

/// `S`'s schema as a CRD wants it: subschemas inlined, structural (kube-core's rewriter),
/// and every object keeping the fields shunt does not model.
fn spec<S: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let schema = settings
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator()
        .into_root_schema_for::<S>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        // A root schema's bookkeeping, which a CRD's schema may not carry.
        for key in ["$schema", "title", "definitions", "$defs", "components"] {
            object.remove(key);
        }
    }
    preserve_unknown(&mut value);
    value
}

/// Walks every schema node: an object keeps fields shunt does not model, a node of any type
/// (a `serde_json::Value` field) keeps whatever it holds, and schemars' `default`s go (the
/// API server would write them into every stored object, where shunt's own serde defaults
/// already apply when it reads).
fn preserve_unknown(value: &mut Value) {
    let Some(schema) = value.as_object_mut() else {
        return;
    };
    schema.remove("default");
    let typed = schema.contains_key("type");
    let composed = ["anyOf", "oneOf", "allOf"]
        .iter()
        .any(|k| schema.contains_key(*k));
    let is_object = schema.get("type").and_then(Value::as_str) == Some("object");
    if (is_object && !schema.contains_key("additionalProperties")) || (!typed && !composed) {
        schema.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    }
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.values_mut().for_each(preserve_unknown);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get_mut(key) {
            preserve_unknown(child);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = schema.get_mut(key) {
            branches.iter_mut().for_each(preserve_unknown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` is inlined: the API server resolves none.
    fn refs(value: &Value, at: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    if key == "$ref" {
                        found.push(at.to_owned());
                    }
                    refs(child, &format!("{at}.{key}"), found);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    refs(child, &format!("{at}[{i}]"), found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_kind_is_rendered_once_with_its_versions_and_istio_ones_can_be_left_out() {
        let all = crds(true);
        let names: Vec<&str> = all
            .iter()
            .map(|crd| crd.metadata.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "virtualservices.networking.istio.io",
                "destinationrules.networking.istio.io",
                "gateways.networking.istio.io",
                "serviceentries.networking.istio.io",
                "peerauthentications.security.istio.io",
                "requestauthentications.security.istio.io",
                "authorizationpolicies.security.istio.io",
                "ratelimitpolicies.shunt.io",
            ]
        );
        let shunt_only = crds(false);
        assert_eq!(shunt_only.len(), 1);
        assert_eq!(shunt_only[0].spec.group, "shunt.io");
        for crd in &all {
            let versions = &crd.spec.versions;
            assert_eq!(
                versions.iter().filter(|v| v.storage).count(),
                1,
                "{:?}",
                crd.metadata.name
            );
            let schema = serde_json::to_value(&versions[0].schema).unwrap();
            let mut found = Vec::new();
            refs(&schema, "schema", &mut found);
            assert!(
                found.is_empty(),
                "{:?}: $ref at {found:?}",
                crd.metadata.name
            );
        }
    }

    /// A structural schema's first rule: every node says its type, unless it keeps unknown
    /// fields or is an int-or-string; `anyOf`/`oneOf` may only restate what is typed.
    fn untyped(value: &Value, at: &str, found: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            found.push(format!("{at}: not a schema object"));
            return;
        };
        let escaped = object.get("x-kubernetes-preserve-unknown-fields")
            == Some(&Value::Bool(true))
            || object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if object.get("type").and_then(Value::as_str).is_none() && !escaped {
            found.push(at.to_owned());
        }
        for (key, child) in object
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            untyped(child, &format!("{at}.{key}"), found);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = object.get(key).filter(|c| c.is_object()) {
                untyped(child, &format!("{at}.{key}"), found);
            }
        }
    }

    #[test]
    fn every_schema_node_is_typed() {
        for crd in crds(true) {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let mut found = Vec::new();
            untyped(&schema["openAPIV3Schema"], "", &mut found);
            assert!(
                found.is_empty(),
                "{:?}: untyped at {found:?}",
                crd.metadata.name
            );
        }
    }

    #[test]
    fn the_schema_is_shunts_own_fields_and_keeps_unknown_ones() {
        let vs = &crds(true)[0];
        let schema = serde_json::to_value(&vs.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true, "{spec}");
        // Fields as shunt's serde names them (camelCase), down into the routes.
        for field in ["hosts", "gateways", "http", "tcp", "tls", "exportTo"] {
            assert!(
                spec["properties"].get(field).is_some(),
                "VirtualService spec.{field}: {spec}"
            );
        }
        let route = &spec["properties"]["http"]["items"];
        assert_eq!(route["type"], "object", "{route}");
        assert_eq!(
            route["x-kubernetes-preserve-unknown-fields"], true,
            "{route}"
        );
        assert!(route["properties"].get("match").is_some(), "{route}");
    }
}
