//! Istio's MeshConfig (`istio-system/istio`, key `mesh`) as [`MeshSettings`].

use crate::http_path::PathNormalization;
use crate::istio;
use crate::routing::convert::{self, Problems};
use crate::settings::{
    AccessLogOutput, DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, MeshSettings,
    OutboundTrafficPolicy, TrustedProxies,
};

/// Istio's MeshConfig as [`MeshSettings`]; `field` prefixes the paths in errors (e.g.
/// `data.mesh`).
pub fn mesh_settings(
    config: &istio::MeshConfig,
    field: &str,
) -> Result<MeshSettings, Vec<(String, String)>> {
    let mut p = Problems::default();
    let outbound_traffic_policy = match config
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode.as_deref())
    {
        None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
        Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
        Some(other) => {
            p.add(
                format!("{field}.outboundTrafficPolicy.mode"),
                format!("unknown mode {other:?}: expected ALLOW_ANY or REGISTRY_ONLY"),
            );
            OutboundTrafficPolicy::AllowAny
        }
    };
    let protocol_detection_timeout = convert::opt_duration(
        &mut p,
        &format!("{field}.protocolDetectionTimeout"),
        config.protocol_detection_timeout.as_ref(),
    );
    let access_log = match config.access_log_file.as_deref() {
        None | Some("/dev/stdout") => AccessLogOutput::Stdout,
        Some("") => AccessLogOutput::Off,
        Some(other) => {
            p.add(
                format!("{field}.accessLogFile"),
                format!(
                    "{other:?}: shunt writes its access log to the node proxy's stdout only: \
                     use \"/dev/stdout\", or \"\" to turn it off"
                ),
            );
            AccessLogOutput::Stdout
        }
    };
    let trust_domain = match config.trust_domain.as_deref() {
        None => DEFAULT_TRUST_DOMAIN.to_owned(),
        Some(domain) => {
            if let Err(why) = check_trust_domain(domain) {
                p.add(format!("{field}.trustDomain"), why);
            }
            domain.to_owned()
        }
    };
    let root_namespace = match config.root_namespace.as_deref() {
        None => DEFAULT_ROOT_NAMESPACE.to_owned(),
        Some(namespace) => {
            if !convert::is_dns_label(namespace) {
                p.add(
                    format!("{field}.rootNamespace"),
                    format!(
                        "{namespace:?} is not a namespace name (lowercase letters, digits and \
                         '-', at most 63, starting and ending with a letter or digit)"
                    ),
                );
            }
            namespace.to_owned()
        }
    };
    // A bad provider is kept as invalid (the agent reports it from there), not a problem of
    // the whole mesh config: it costs only the CUSTOM policies that name it.
    let extension_providers = crate::ext_authz::extension_providers(
        &config.extension_providers,
        &format!("{field}.extensionProviders"),
    );
    let path_normalization = match config
        .path_normalization
        .as_ref()
        .and_then(|n| n.normalization.as_deref())
    {
        None => PathNormalization::default(),
        Some(name) => PathNormalization::from_istio(name).unwrap_or_else(|| {
            p.add(
                format!("{field}.pathNormalization.normalization"),
                format!(
                    "unknown path normalization {name:?}: expected NONE, BASE, MERGE_SLASHES or \
                     DECODE_AND_MERGE_SLASHES"
                ),
            );
            PathNormalization::default()
        }),
    };
    // Reported apart, like the providers: an invalid value costs only remote-IP conditions,
    // which then fail closed; not the whole mesh config.
    let num_trusted_proxies = trusted_proxies(config).0;
    let (tracing, tracing_problems) = crate::trace_config::tracing_settings(config, field);
    for (at, message) in tracing_problems {
        p.add(at, message);
    }
    if p.is_empty() {
        Ok(MeshSettings {
            num_trusted_proxies,
            ingress_class: config
                .ingress_class
                .clone()
                .unwrap_or_else(|| "istio".into()),
            ingress_selector: config
                .ingress_selector
                .clone()
                .unwrap_or_else(|| "ingressgateway".into()),
            outbound_traffic_policy,
            protocol_detection_timeout,
            access_log,
            trust_domain,
            root_namespace,
            extension_providers,
            path_normalization,
            tracing,
        })
    } else {
        Err(p.list)
    }
}

/// MeshConfig's `defaultConfig.gatewayTopology.numTrustedProxies` as applied, and what is
/// wrong with it (the field below `defaultConfig`, the message).
#[must_use]
pub fn trusted_proxies(
    config: &istio::MeshConfig,
) -> (TrustedProxies, Option<(&'static str, String)>) {
    match config
        .default_config
        .as_ref()
        .and_then(|d| d.gateway_topology.as_ref())
        .and_then(|t| t.num_trusted_proxies.as_ref())
    {
        None => (TrustedProxies::default(), None),
        Some(value) => match TrustedProxies::parse(value) {
            Ok(hops) => (TrustedProxies::Hops(hops), None),
            Err(message) => (
                TrustedProxies::Invalid,
                Some(("defaultConfig.gatewayTopology.numTrustedProxies", message)),
            ),
        },
    }
}

/// A trust domain is a DNS name: dot-separated DNS-1123 labels, at most 255 characters. A
/// trailing dot is refused: `spiffe://cluster.local./...` would never equal a peer's
/// `spiffe://cluster.local/...`.
fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("an empty trust domain: leave the field out for \"cluster.local\"".into());
    }
    if domain.len() > 255 {
        return Err(format!(
            "a trust domain has at most 255 characters, this one {}",
            domain.len()
        ));
    }
    if domain.split('.').all(convert::is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "{domain:?} is not a DNS name: dot-separated labels of lowercase letters, digits \
             and '-', each starting and ending with a letter or digit (e.g. \"cluster.local\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_and_root_namespace_are_checked() {
        /// trustDomain, rootNamespace; the settings, or the field of the one problem.
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Result<(&'static str, &'static str), &'static str>,
        );
        let cases: [Case; 9] = [
            (None, None, Ok(("cluster.local", "istio-system"))),
            (
                Some("example.org"),
                Some("mesh-root"),
                Ok(("example.org", "mesh-root")),
            ),
            (Some("td1"), None, Ok(("td1", "istio-system"))),
            (Some(""), None, Err("data.mesh.trustDomain")),
            (Some("Cluster.Local"), None, Err("data.mesh.trustDomain")),
            (Some("cluster.local."), None, Err("data.mesh.trustDomain")),
            (Some("a..b"), None, Err("data.mesh.trustDomain")),
            (Some("-bad.local"), None, Err("data.mesh.trustDomain")),
            (None, Some("Istio_System"), Err("data.mesh.rootNamespace")),
        ];
        for (trust_domain, root_namespace, expected) in cases {
            let config = istio::MeshConfig {
                trust_domain: trust_domain.map(str::to_owned),
                root_namespace: root_namespace.map(str::to_owned),
                ..istio::MeshConfig::default()
            };
            let got = mesh_settings(&config, "data.mesh");
            match expected {
                Ok((domain, root)) => {
                    let settings = got.unwrap_or_else(|e| panic!("{trust_domain:?}: {e:?}"));
                    assert_eq!(
                        (
                            settings.trust_domain.as_str(),
                            settings.root_namespace.as_str()
                        ),
                        (domain, root)
                    );
                }
                Err(field) => {
                    let problems = got.expect_err(field);
                    assert_eq!(problems.len(), 1, "{problems:?}");
                    assert_eq!(problems[0].0, field, "{problems:?}");
                }
            }
        }
    }

    #[test]
    fn path_normalization_is_read_by_istios_names() {
        let read = |name: Option<&str>| {
            let config = istio::MeshConfig {
                path_normalization: Some(istio::PathNormalizationConfig {
                    normalization: name.map(str::to_owned),
                }),
                ..istio::MeshConfig::default()
            };
            mesh_settings(&config, "data.mesh").map(|settings| settings.path_normalization)
        };
        for (name, mode) in [
            (None, PathNormalization::Base),
            (Some("DEFAULT"), PathNormalization::Base),
            (Some("NONE"), PathNormalization::None),
            (Some("MERGE_SLASHES"), PathNormalization::MergeSlashes),
            (
                Some("DECODE_AND_MERGE_SLASHES"),
                PathNormalization::DecodeAndMergeSlashes,
            ),
        ] {
            assert_eq!(read(name), Ok(mode), "{name:?}");
        }
        let problems = read(Some("merge_slashes")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "data.mesh.pathNormalization.normalization");
    }

    #[test]
    fn workload_identity_is_istios_spiffe_uri() {
        let settings = MeshSettings {
            trust_domain: "example.org".into(),
            ..MeshSettings::default()
        };
        assert_eq!(
            settings.workload_identity("shop", "cart"),
            "spiffe://example.org/ns/shop/sa/cart"
        );
        assert_eq!(
            MeshSettings::default().workload_identity("default", "default"),
            "spiffe://cluster.local/ns/default/sa/default"
        );
    }
}
