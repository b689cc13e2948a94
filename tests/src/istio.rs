//! Istio objects (and shunt's RateLimitPolicy) for the agent's config dir, as JSON values that
//! [`crate::Node::write_istio`] writes. Tests give each object's `spec` as written in Istio's
//! docs; these only add the envelope.
#![forbid(unsafe_code)]

use serde_json::{Value, json};

/// The Istio networking API version the tests write (v1beta1 and v1alpha3 are accepted too).
pub const NETWORKING: &str = "networking.istio.io/v1";
/// shunt's own kinds.
pub const SHUNT: &str = "shunt.io/v1alpha1";
/// Where Istio keeps its mesh config: ConfigMap `istio` in this namespace.
pub const ISTIO_SYSTEM: &str = "istio-system";

/// `apiVersion`/`kind`/`metadata` around `spec`.
#[must_use]
pub fn object(api_version: &str, kind: &str, namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

#[must_use]
pub fn virtual_service(namespace: &str, name: &str, spec: Value) -> Value {
    object(NETWORKING, "VirtualService", namespace, name, spec)
}

#[must_use]
pub fn destination_rule(namespace: &str, name: &str, spec: Value) -> Value {
    object(NETWORKING, "DestinationRule", namespace, name, spec)
}

#[must_use]
pub fn service_entry(namespace: &str, name: &str, spec: Value) -> Value {
    object(NETWORKING, "ServiceEntry", namespace, name, spec)
}

#[must_use]
pub fn rate_limit_policy(namespace: &str, name: &str, spec: Value) -> Value {
    object(SHUNT, "RateLimitPolicy", namespace, name, spec)
}

/// A DestinationRule for `host` with one subset per `version` label value, named after it,
/// and `traffic_policy` (`Value::Null` for none) at the top level.
#[must_use]
pub fn subsets_by_version(
    namespace: &str,
    host: &str,
    versions: &[&str],
    traffic_policy: Value,
) -> Value {
    let subsets: Vec<Value> = versions
        .iter()
        .map(|v| json!({"name": v, "labels": {"version": v}}))
        .collect();
    let mut spec = json!({"host": host, "subsets": subsets});
    if !traffic_policy.is_null() {
        spec["trafficPolicy"] = traffic_policy;
    }
    destination_rule(namespace, &format!("{host}-versions"), spec)
}

/// The `istio-system` Namespace (not injected) that holds the mesh config.
#[must_use]
pub fn istio_system_namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_SYSTEM}})
}

/// ConfigMap `istio-system/istio` whose `data.mesh` sets `outboundTrafficPolicy.mode`
/// (`ALLOW_ANY` or `REGISTRY_ONLY`).
#[must_use]
pub fn mesh_config(outbound_mode: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ISTIO_SYSTEM},
        "data": {"mesh": format!("outboundTrafficPolicy:\n  mode: {outbound_mode}\n")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_subsets() {
        let vs = virtual_service("shop", "cart", json!({"hosts": ["cart"]}));
        assert_eq!(vs["apiVersion"], NETWORKING);
        assert_eq!(vs["kind"], "VirtualService");
        assert_eq!(vs["metadata"]["namespace"], "shop");
        assert_eq!(vs["spec"]["hosts"][0], "cart");

        let dr = subsets_by_version("shop", "cart", &["v1", "v2"], Value::Null);
        assert_eq!(
            dr["spec"]["subsets"][1],
            json!({"name": "v2", "labels": {"version": "v2"}})
        );
        assert!(dr["spec"].get("trafficPolicy").is_none());
        let dr = subsets_by_version(
            "shop",
            "cart",
            &["v1"],
            json!({"loadBalancer": {"simple": "RANDOM"}}),
        );
        assert_eq!(
            dr["spec"]["trafficPolicy"]["loadBalancer"]["simple"],
            "RANDOM"
        );

        let mesh = mesh_config("REGISTRY_ONLY");
        let parsed: serde_yaml::Value =
            serde_yaml::from_str(mesh["data"]["mesh"].as_str().unwrap()).unwrap();
        assert_eq!(
            parsed["outboundTrafficPolicy"]["mode"].as_str(),
            Some("REGISTRY_ONLY")
        );
    }
}
