//! `trafficPolicy.tls` (Istio's `ClientTLSSettings`) checked into an [`UpstreamTls`], with
//! Istio's validation rules; settings a mode does not use are warnings.

use std::sync::Arc;

use crate::istio;
use crate::routing::convert::Problems;
use crate::routing::decision::{
    ClientCertificate, ServerVerification, TlsOrigination, TrustRoots, UpstreamTls,
};

/// `tls` at `field`: problems that reject the rule go to `p`; settings that do nothing go to
/// `warnings`, when it is valid. `None` when it is invalid.
pub(super) fn upstream_tls(
    p: &mut Problems,
    all_warnings: &mut Problems,
    field: &str,
    tls: &istio::ClientTlsSettings,
) -> Option<UpstreamTls> {
    let at = |name: &str| format!("{field}.{name}");
    let before = p.list.len();
    let mut warnings = Problems::default();
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    let client_certificate = path(p, &at("clientCertificate"), tls.client_certificate.as_ref());
    let private_key = path(p, &at("privateKey"), tls.private_key.as_ref());
    let ca_certificates = path(p, &at("caCertificates"), tls.ca_certificates.as_ref());
    let credential_name = non_empty(p, &at("credentialName"), tls.credential_name.as_ref());
    let sni = tls.sni.as_deref().and_then(|sni| {
        if is_dns_name(sni) {
            Some(Arc::<str>::from(sni))
        } else {
            p.add(
                at("sni"),
                format!("{sni:?} is not a DNS name, which is all a TLS SNI may carry"),
            );
            None
        }
    });
    let mut subject_alt_names = Vec::new();
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        if san.is_empty() || san.chars().any(char::is_whitespace) {
            p.add(
                format!("{field}.subjectAltNames[{i}]"),
                format!("{san:?}: expected a DNS name or URI SAN without spaces"),
            );
        } else {
            subject_alt_names.push(Arc::<str>::from(san.as_str()));
        }
    }
    let skip_verify = tls.insecure_skip_verify == Some(true);
    if tls.ca_crl.is_some() {
        p.add(
            at("caCrl"),
            "certificate revocation lists are not supported yet; a CRL left unchecked would \
             accept revoked certificates, so the rule is refused",
        );
    }
    // What each mode does not read, said once per field.
    let mut unused = |fields: &[(&str, bool)], why: &str| {
        for (name, set) in fields {
            if *set {
                warnings.add(at(name), format!("{why}: ignored"));
            }
        }
    };
    let upstream = match mode {
        "DISABLE" => {
            unused(
                &[
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("credentialName", tls.credential_name.is_some()),
                    ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                    ("sni", tls.sni.is_some()),
                    ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
                ],
                if tls.mode.is_none() {
                    "mode is absent, which is DISABLE (Istio's default): no TLS, so this does \
                     nothing (set mode: SIMPLE or MUTUAL to originate TLS)"
                } else {
                    "mode DISABLE sends no TLS"
                },
            );
            UpstreamTls::Disable
        }
        "ISTIO_MUTUAL" => {
            unused(
                &[
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("credentialName", tls.credential_name.is_some()),
                    ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
                ],
                "ISTIO_MUTUAL uses the workload's mesh certificate and the mesh's CA",
            );
            UpstreamTls::IstioMutual {
                sni,
                subject_alt_names,
            }
        }
        "SIMPLE" | "MUTUAL" => {
            let mutual = mode == "MUTUAL";
            if credential_name.is_some() {
                for (name, set) in [
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                ] {
                    if set {
                        p.add(
                            at(name),
                            "set either credentialName or the certificate files, not both",
                        );
                    }
                }
            } else if mutual {
                for (name, set) in [
                    ("clientCertificate", tls.client_certificate.is_none()),
                    ("privateKey", tls.private_key.is_none()),
                ] {
                    if set {
                        p.add(
                            at(name),
                            "mode MUTUAL needs clientCertificate and privateKey (or \
                             credentialName)",
                        );
                    }
                }
            } else {
                unused(
                    &[
                        ("clientCertificate", tls.client_certificate.is_some()),
                        ("privateKey", tls.private_key.is_some()),
                    ],
                    "mode SIMPLE presents no client certificate (MUTUAL does)",
                );
            }
            if skip_verify {
                for (name, set) in [
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                    // Under MUTUAL a credential also carries the client certificate.
                    ("credentialName", !mutual && tls.credential_name.is_some()),
                ] {
                    if set {
                        p.add(
                            at(name),
                            "insecureSkipVerify: true verifies nothing, so this cannot apply: \
                             remove one of the two",
                        );
                    }
                }
            }
            let client_certificate = if !mutual {
                None
            } else if let Some(name) = &credential_name {
                Some(ClientCertificate::Credential(name.clone()))
            } else {
                client_certificate
                    .zip(private_key)
                    .map(
                        |(certificate_chain, private_key)| ClientCertificate::Files {
                            certificate_chain,
                            private_key,
                        },
                    )
            };
            let verify = if skip_verify {
                ServerVerification::InsecureSkipVerify
            } else {
                ServerVerification::Verify {
                    roots: match (ca_certificates, &credential_name) {
                        (Some(file), _) => TrustRoots::CaFile(file),
                        (None, Some(name)) => TrustRoots::Credential(name.clone()),
                        (None, None) => TrustRoots::System,
                    },
                    subject_alt_names,
                }
            };
            if credential_name.is_some() {
                warnings.add(
                    at("credentialName"),
                    "local mode reads no Secrets: until the proxy can find this one, \
                     connections under this policy are refused (name the PEM files with \
                     clientCertificate, privateKey and caCertificates instead)",
                );
            }
            UpstreamTls::Originate(TlsOrigination {
                client_certificate,
                verify,
                sni,
            })
        }
        other => {
            p.add(
                at("mode"),
                format!(
                    "unknown TLS mode {other:?}: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
                ),
            );
            UpstreamTls::Disable
        }
    };
    let valid = p.list.len() == before;
    if valid {
        all_warnings.list.append(&mut warnings.list);
    }
    valid.then_some(upstream)
}

/// A certificate file: an absolute path, since the node proxy reads it and has no
/// working directory the config could be relative to.
fn path(p: &mut Problems, field: &str, value: Option<&String>) -> Option<Arc<str>> {
    let value = non_empty(p, field, value)?;
    if value.starts_with('/') {
        Some(value)
    } else {
        p.add(
            field,
            format!("{value:?}: expected an absolute path of a PEM file on the node"),
        );
        None
    }
}

fn non_empty(p: &mut Problems, field: &str, value: Option<&String>) -> Option<Arc<str>> {
    let value = value?;
    if value.is_empty() {
        p.add(field, "an empty string: leave the field out instead");
        return None;
    }
    Some(value.as_str().into())
}

/// A host name as SNI carries it: dot-separated labels of letters, digits and `-`, at most
/// 253 characters (an IP address is not a DNS name, and SNI cannot carry one).
fn is_dns_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.len() <= 253
        && name.split('.').all(label)
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn arcs(items: &[&str]) -> Vec<Arc<str>> {
        items.iter().map(|s| Arc::<str>::from(*s)).collect()
    }

    /// Each case: `tls` as written; the compiled value or the rejected fields; the warned
    /// fields.
    #[test]
    fn client_tls_settings_parse_validate_and_compile() {
        let simple = |roots, sans: &[&str], sni: Option<&str>| {
            Ok(UpstreamTls::Originate(TlsOrigination {
                client_certificate: None,
                verify: ServerVerification::Verify {
                    roots,
                    subject_alt_names: arcs(sans),
                },
                sni: sni.map(Into::into),
            }))
        };
        type Case = (
            serde_json::Value,
            Result<UpstreamTls, Vec<&'static str>>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (json!({"mode": "DISABLE"}), Ok(UpstreamTls::Disable), vec![]),
            (json!({}), Ok(UpstreamTls::Disable), vec![]),
            (
                json!({"sni": "a.example"}),
                Ok(UpstreamTls::Disable),
                vec!["tls.sni"],
            ),
            (
                json!({"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.pem", "sni": "api.example.com", "subjectAltNames": ["api.example.com"]}),
                simple(
                    TrustRoots::CaFile("/etc/certs/ca.pem".into()),
                    &["api.example.com"],
                    Some("api.example.com"),
                ),
                vec![],
            ),
            // SIMPLE with nothing to verify against: the system roots.
            (
                json!({"mode": "SIMPLE"}),
                simple(TrustRoots::System, &[], None),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
                Ok(UpstreamTls::Originate(TlsOrigination {
                    client_certificate: None,
                    verify: ServerVerification::InsecureSkipVerify,
                    sni: None,
                })),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "clientCertificate": "/c.pem", "insecureSkipVerify": false}),
                simple(TrustRoots::System, &[], None),
                vec!["tls.clientCertificate"],
            ),
            (
                json!({"mode": "SIMPLE", "credentialName": "api-ca"}),
                simple(TrustRoots::Credential("api-ca".into()), &[], None),
                vec!["tls.credentialName"],
            ),
            (
                json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"}),
                Ok(UpstreamTls::Originate(TlsOrigination {
                    client_certificate: Some(ClientCertificate::Files {
                        certificate_chain: "/c.pem".into(),
                        private_key: "/k.pem".into(),
                    }),
                    verify: ServerVerification::Verify {
                        roots: TrustRoots::CaFile("/ca.pem".into()),
                        subject_alt_names: vec![],
                    },
                    sni: None,
                })),
                vec![],
            ),
            (
                json!({"mode": "MUTUAL", "credentialName": "db-client", "insecureSkipVerify": true}),
                Ok(UpstreamTls::Originate(TlsOrigination {
                    client_certificate: Some(ClientCertificate::Credential("db-client".into())),
                    verify: ServerVerification::InsecureSkipVerify,
                    sni: None,
                })),
                vec!["tls.credentialName"],
            ),
            (
                json!({"mode": "ISTIO_MUTUAL", "sni": "cart.shop", "subjectAltNames": ["spiffe://cluster.local/ns/shop/sa/cart"], "caCertificates": "/ca.pem"}),
                Ok(UpstreamTls::IstioMutual {
                    sni: Some("cart.shop".into()),
                    subject_alt_names: arcs(&["spiffe://cluster.local/ns/shop/sa/cart"]),
                }),
                vec!["tls.caCertificates"],
            ),
            // Rejected.
            (
                json!({"mode": "MUTUAL", "caCertificates": "/ca.pem"}),
                Err(vec!["tls.clientCertificate", "tls.privateKey"]),
                vec![],
            ),
            (
                json!({"mode": "MUTUAL", "clientCertificate": "/c.pem"}),
                Err(vec!["tls.privateKey"]),
                vec![],
            ),
            (
                json!({"mode": "MUTUAL", "credentialName": "db", "clientCertificate": "/c.pem", "privateKey": "/k.pem"}),
                Err(vec!["tls.clientCertificate", "tls.privateKey"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "insecureSkipVerify": true, "caCertificates": "/ca.pem", "subjectAltNames": ["a"]}),
                Err(vec!["tls.caCertificates", "tls.subjectAltNames"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "insecureSkipVerify": true, "credentialName": "x"}),
                Err(vec!["tls.credentialName"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "caCertificates": "certs/ca.pem"}),
                Err(vec!["tls.caCertificates"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "caCertificates": ""}),
                Err(vec!["tls.caCertificates"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "sni": "10.0.0.1"}),
                Err(vec!["tls.sni"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "sni": "bad name"}),
                Err(vec!["tls.sni"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "subjectAltNames": [""]}),
                Err(vec!["tls.subjectAltNames[0]"]),
                vec![],
            ),
            (
                json!({"mode": "SIMPLE", "caCrl": "/crl.pem"}),
                Err(vec!["tls.caCrl"]),
                vec![],
            ),
            (json!({"mode": "simple"}), Err(vec!["tls.mode"]), vec![]),
        ];
        for (written, expected, expected_warnings) in cases {
            let tls: istio::ClientTlsSettings = serde_json::from_value(written.clone()).unwrap();
            let (mut p, mut warnings) = (Problems::default(), Problems::default());
            let got = upstream_tls(&mut p, &mut warnings, "tls", &tls);
            let fields = |p: &Problems| p.list.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
            match expected {
                Ok(want) => {
                    assert_eq!(p.list, vec![], "{written}");
                    assert_eq!(got, Some(want), "{written}");
                }
                Err(rejected) => {
                    assert_eq!(got, None, "{written}");
                    assert_eq!(fields(&p), rejected, "{written}: {:?}", p.list);
                }
            }
            assert_eq!(
                fields(&warnings),
                expected_warnings,
                "{written}: {:?}",
                warnings.list
            );
        }
    }
}
