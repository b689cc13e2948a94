//! The credentials gateway servers on this node name, read from the config's Secrets as
//! Istio's SDS reads them for a gateway, and checked here so the proxy gets either usable
//! key material or the reason there is none (naming the Secret and the key).
//!
//! A Secret holds `tls.crt`/`tls.key` (type `kubernetes.io/tls`, with `ca.crt` for MUTUAL),
//! or `cert`/`key` (Istio's generic form, with `cacert`). When it has no CA, the CA comes from
//! its `<name>-cacert` companion (`ca.crt` or `cacert`), as Istio looks for one.

use shunt_api::credentials::{CredentialMaterial, GatewayCredential};
use shunt_api::k8s::{SECRET_TYPE_TLS, Secret};
use shunt_identity::{cert, keypair};

use super::Snapshot;

/// The key names of one Secret layout.
struct Layout {
    cert: &'static str,
    key: &'static str,
}

const TLS: Layout = Layout {
    cert: "tls.crt",
    key: "tls.key",
};
const GENERIC: Layout = Layout {
    cert: "cert",
    key: "key",
};
/// The keys a CA is read from, in order.
const CA_KEYS: [&str; 2] = ["ca.crt", "cacert"];

/// One credential per `(namespace, name)` of `refs`, in their order: the Secret's chain,
/// key and CA when they parse (and the key belongs to the chain's leaf), else why not.
#[must_use]
pub fn gateway_credentials(
    snapshot: &Snapshot,
    refs: &[(String, String)],
) -> Vec<GatewayCredential> {
    refs.iter()
        .map(|(namespace, name)| GatewayCredential {
            namespace: namespace.clone(),
            name: name.clone(),
            resource_version: None,
            material: material(snapshot, namespace, name)
                .unwrap_or_else(|reason| CredentialMaterial::Unusable { reason }),
        })
        .collect()
}

fn material(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
) -> Result<CredentialMaterial, String> {
    let what = format!("Secret {namespace}/{name}");
    let secret = snapshot.secret(namespace, name).ok_or_else(|| {
        format!("{what} not found (a gateway server names it in tls.credentialName)")
    })?;
    // Istio's order: the generic keys when both are there, else the TLS Secret's.
    let layout = if secret.kind != SECRET_TYPE_TLS
        && secret.get(GENERIC.cert).is_some()
        && secret.get(GENERIC.key).is_some()
    {
        GENERIC
    } else {
        TLS
    };
    let certificate_chain = text(secret, &what, layout.cert)?
        .ok_or_else(|| format!("{what} has no {} (the certificate chain)", layout.cert))?;
    let private_key = text(secret, &what, layout.key)?
        .ok_or_else(|| format!("{what} has no {} (the private key)", layout.key))?;
    keypair::certified_key(
        &certificate_chain,
        &private_key,
        &format!("{what} key {}", layout.cert),
    )
    .map_err(|error| match error {
        keypair::Error::Chain(error) => error.to_string(),
        keypair::Error::Key(_) | keypair::Error::KeyMismatch(_) => {
            format!("{what} key {}: {error}", layout.key)
        }
    })?;
    let ca_certificates = match ca(secret, &what)? {
        Some(ca) => Some(ca),
        None => {
            let companion = format!("{name}-cacert");
            match snapshot.secret(namespace, &companion) {
                Some(secret) => Some(
                    ca(secret, &format!("Secret {namespace}/{companion}"))?.ok_or_else(|| {
                        format!("Secret {namespace}/{companion} has neither ca.crt nor cacert")
                    })?,
                ),
                None => None,
            }
        }
    };
    Ok(CredentialMaterial::Present {
        certificate_chain,
        private_key,
        ca_certificates,
    })
}

/// The value of `key`, which must be UTF-8 text.
fn text(secret: &Secret, what: &str, key: &str) -> Result<Option<String>, String> {
    secret
        .get(key)
        .map(|bytes| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| format!("{what} key {key} is not PEM text (not UTF-8)"))
        })
        .transpose()
}

/// The Secret's CA, checked to be PEM certificates, if it has one.
fn ca(secret: &Secret, what: &str) -> Result<Option<String>, String> {
    let Some(key) = CA_KEYS.into_iter().find(|key| secret.get(key).is_some()) else {
        return Ok(None);
    };
    let Some(pem) = text(secret, what, key)? else {
        return Ok(None);
    };
    let source = format!("{what} key {key}");
    let certs = cert::parse_pem(&pem, &source).map_err(|e| e.to_string())?;
    for (index, der) in certs.iter().enumerate() {
        cert::info(der, &format!("{source}: certificate {index}")).map_err(|e| e.to_string())?;
    }
    Ok(Some(pem))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shunt_api::config::Sourced;
    use shunt_api::k8s::{ObjectMeta, SECRET_TYPE_OPAQUE};

    use super::*;

    fn secret(name: &str, kind: &str, data: &[(&str, impl AsRef<str>)]) -> Sourced<Secret> {
        Sourced {
            file: "secrets.yaml".into(),
            document: 1,
            object: Secret {
                metadata: ObjectMeta {
                    name: name.into(),
                    namespace: Some("edge".into()),
                    uid: None,
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                    owner_references: Vec::new(),
                },
                kind: kind.into(),
                data: data
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_ref().as_bytes().to_vec()))
                    .collect(),
            },
        }
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// What a case expects: the material, or a reason containing each of these.
    enum Expect {
        Present { ca: Option<String> },
        Unusable(&'static [&'static str]),
    }

    #[test]
    fn secrets_of_each_shape_become_credentials_or_say_what_is_wrong() {
        let (cert, key) = self_signed("a.example.test");
        let (ca, _) = self_signed("ca.example.test");
        let (_, other_key) = self_signed("b.example.test");
        let bad_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let tls = |extra: Option<(&'static str, String)>| -> Vec<(&'static str, String)> {
            let mut data = vec![("tls.crt", cert.clone()), ("tls.key", key.clone())];
            data.extend(extra);
            data
        };
        let snapshot = Snapshot {
            secrets: vec![
                secret("plain", SECRET_TYPE_TLS, &tls(None)),
                secret(
                    "with-ca",
                    SECRET_TYPE_TLS,
                    &tls(Some(("ca.crt", ca.clone()))),
                ),
                secret("companion", SECRET_TYPE_TLS, &tls(None)),
                secret(
                    "companion-cacert",
                    SECRET_TYPE_OPAQUE,
                    &[("cacert", ca.as_str())],
                ),
                secret(
                    "generic",
                    SECRET_TYPE_OPAQUE,
                    &[("cert", &cert), ("key", &key), ("cacert", &ca)],
                ),
                secret("no-key", SECRET_TYPE_TLS, &[("tls.crt", cert.as_str())]),
                secret(
                    "bad-cert",
                    SECRET_TYPE_TLS,
                    &[("tls.crt", bad_pem), ("tls.key", &key)],
                ),
                secret(
                    "not-a-cert",
                    SECRET_TYPE_TLS,
                    &[("tls.crt", "hello"), ("tls.key", &key)],
                ),
                secret(
                    "bad-key",
                    SECRET_TYPE_TLS,
                    &[("tls.crt", cert.as_str()), ("tls.key", "nope")],
                ),
                secret(
                    "other-key",
                    SECRET_TYPE_TLS,
                    &[("tls.crt", &cert), ("tls.key", &other_key)],
                ),
                secret(
                    "bad-ca",
                    SECRET_TYPE_TLS,
                    &tls(Some(("ca.crt", bad_pem.to_owned()))),
                ),
                secret("bad-companion", SECRET_TYPE_TLS, &tls(None)),
                secret(
                    "bad-companion-cacert",
                    SECRET_TYPE_OPAQUE,
                    &[("other", "x")],
                ),
                secret("opaque-empty", SECRET_TYPE_OPAQUE, &[] as &[(&str, &str)]),
            ],
            ..Snapshot::default()
        };
        let cases: Vec<(&str, Expect)> = vec![
            ("plain", Expect::Present { ca: None }),
            (
                "with-ca",
                Expect::Present {
                    ca: Some(ca.clone()),
                },
            ),
            (
                "companion",
                Expect::Present {
                    ca: Some(ca.clone()),
                },
            ),
            (
                "generic",
                Expect::Present {
                    ca: Some(ca.clone()),
                },
            ),
            (
                "absent",
                Expect::Unusable(&["Secret edge/absent not found"]),
            ),
            (
                "no-key",
                Expect::Unusable(&["Secret edge/no-key has no tls.key"]),
            ),
            (
                "bad-cert",
                Expect::Unusable(&["Secret edge/bad-cert key tls.crt", "malformed PEM"]),
            ),
            (
                "not-a-cert",
                Expect::Unusable(&["Secret edge/not-a-cert key tls.crt", "no PEM CERTIFICATE"]),
            ),
            (
                "bad-key",
                Expect::Unusable(&["Secret edge/bad-key key tls.key", "not a PEM private key"]),
            ),
            (
                "other-key",
                Expect::Unusable(&["Secret edge/other-key key tls.key", "does not belong"]),
            ),
            (
                "bad-ca",
                Expect::Unusable(&["Secret edge/bad-ca key ca.crt"]),
            ),
            (
                "bad-companion",
                Expect::Unusable(&[
                    "Secret edge/bad-companion-cacert has neither ca.crt nor cacert",
                ]),
            ),
            (
                "opaque-empty",
                Expect::Unusable(&["Secret edge/opaque-empty has no tls.crt"]),
            ),
        ];
        let refs: Vec<(String, String)> = cases
            .iter()
            .map(|(name, _)| ("edge".to_owned(), (*name).to_owned()))
            .collect();
        let credentials = gateway_credentials(&snapshot, &refs);
        assert_eq!(credentials.len(), cases.len());
        for ((name, expect), credential) in cases.iter().zip(&credentials) {
            assert_eq!(
                (credential.namespace.as_str(), credential.name.as_str()),
                ("edge", *name)
            );
            match (expect, &credential.material) {
                (
                    Expect::Present { ca: expected_ca },
                    CredentialMaterial::Present {
                        certificate_chain,
                        private_key,
                        ca_certificates,
                    },
                ) => {
                    assert_eq!(certificate_chain, &cert, "{name}");
                    assert_eq!(private_key, &key, "{name}");
                    assert_eq!(ca_certificates, expected_ca, "{name}");
                }
                (Expect::Unusable(parts), CredentialMaterial::Unusable { reason }) => {
                    for part in *parts {
                        assert!(reason.contains(part), "{name}: {reason}");
                    }
                }
                (_, material) => panic!("{name}: {material:?}"),
            }
        }
    }

    #[test]
    fn a_value_that_is_not_text_is_named() {
        let (_, key) = self_signed("a.example.test");
        let mut sourced = secret("binary", SECRET_TYPE_TLS, &[("tls.key", &key)]);
        sourced
            .object
            .data
            .insert("tls.crt".into(), vec![0xff, 0xfe]);
        let snapshot = Snapshot {
            secrets: vec![sourced],
            ..Snapshot::default()
        };
        let credentials =
            gateway_credentials(&snapshot, &[("edge".to_owned(), "binary".to_owned())]);
        assert_eq!(
            credentials[0].material,
            CredentialMaterial::Unusable {
                reason: "Secret edge/binary key tls.crt is not PEM text (not UTF-8)".into()
            }
        );
    }
}
