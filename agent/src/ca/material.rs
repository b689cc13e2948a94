//! Where the CA's signing key and root come from, in istiod's order: Istio's plug-in CA
//! Secret `cacerts`, else istiod's own `istio-ca-secret`, both in the mesh's root namespace
//! (MeshConfig `rootNamespace`); else a self-signed root generated once and kept in the
//! state folder.

use std::path::Path;

use shunt_api::admin as api;
use shunt_api::k8s::Secret;
use shunt_identity::ca::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaPems, CaSigner, ROOT_CERT_FILE, SignerOptions,
};

use super::error::Error;
use crate::config::Snapshot;

/// Istio's plug-in CA Secret: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, optional
/// `cert-chain.pem`.
pub const PLUGIN_SECRET: &str = "cacerts";
/// istiod's self-signed CA Secret: `ca-cert.pem` (its own root) and `ca-key.pem`;
/// `root-cert.pem` and `cert-chain.pem` when not empty.
pub const ISTIOD_SECRET: &str = "istio-ca-secret";

const PLUGIN_LAYOUT: &str = "Istio's plug-in CA layout is ca-cert.pem, ca-key.pem, \
     root-cert.pem and optionally cert-chain.pem";
const ISTIOD_LAYOUT: &str = "istio-ca-secret holds ca-cert.pem (a self-signed CA) and ca-key.pem";

/// One CA Secret as the config has it: the object, or the errors that kept it out.
#[derive(Clone, Debug, PartialEq)]
struct SecretInput {
    name: &'static str,
    secret: Option<Secret>,
    errors: Vec<String>,
}

impl SecretInput {
    fn of(snapshot: &Snapshot, namespace: &str, name: &'static str) -> Self {
        let object = format!("Secret {namespace}/{name}");
        Self {
            name,
            secret: snapshot.secret(namespace, name).cloned(),
            errors: snapshot
                .errors
                .iter()
                .filter(|error| error.object.as_deref() == Some(object.as_str()))
                .map(ToString::to_string)
                .collect(),
        }
    }

    fn is_present(&self) -> bool {
        self.secret.is_some() || !self.errors.is_empty()
    }
}

/// What the choice of key material depends on in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    root_namespace: String,
    trust_domain: String,
    plugin: SecretInput,
    istiod: SecretInput,
}

impl Inputs {
    /// The CA Secrets of `snapshot`'s root namespace, and its trust domain.
    #[must_use]
    pub fn of(snapshot: &Snapshot) -> Self {
        let settings = &snapshot.mesh.mesh;
        let namespace = settings.root_namespace.as_str();
        Self {
            root_namespace: namespace.to_owned(),
            trust_domain: settings.trust_domain.clone(),
            plugin: SecretInput::of(snapshot, namespace, PLUGIN_SECRET),
            istiod: SecretInput::of(snapshot, namespace, ISTIOD_SECRET),
        }
    }

    /// The namespace whose Secrets are read.
    #[must_use]
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// What differs from `earlier` that a CA started from `earlier` would load differently.
    #[must_use]
    pub fn changes_since(&self, earlier: &Self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.root_namespace != earlier.root_namespace {
            changes.push(format!(
                "MeshConfig rootNamespace ({} -> {})",
                earlier.root_namespace, self.root_namespace
            ));
        }
        for (now, then) in [
            (&self.plugin, &earlier.plugin),
            (&self.istiod, &earlier.istiod),
        ] {
            if now != then {
                changes.push(format!("Secret {}/{}", self.root_namespace, now.name));
            }
        }
        changes
    }
}

/// A loaded CA and where it came from.
pub struct Material {
    pub signer: CaSigner,
    pub source: api::CaSource,
}

/// The CA of `inputs`: a Secret's when there is one (a broken one is an error, never
/// replaced), else the self-signed root in `self_signed_dir`.
pub fn load(
    inputs: &Inputs,
    self_signed_dir: &Path,
    options: SignerOptions,
) -> Result<Material, Error> {
    for (input, root_required, layout) in [
        (&inputs.plugin, true, PLUGIN_LAYOUT),
        (&inputs.istiod, false, ISTIOD_LAYOUT),
    ] {
        if !input.is_present() {
            continue;
        }
        let namespace = inputs.root_namespace.clone();
        let name = input.name.to_owned();
        let Some(secret) = &input.secret else {
            return Err(Error::SecretUnreadable {
                namespace,
                name,
                errors: input.errors.join("; "),
            });
        };
        let pems = secret_pems(secret, &namespace, input.name, root_required, layout)?;
        let signer = CaSigner::from_pem(&pems, options).map_err(|source| Error::SecretCa {
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?;
        return Ok(Material {
            signer,
            source: api::CaSource::Secret { namespace, name },
        });
    }
    let signer = CaSigner::self_signed(self_signed_dir, &inputs.trust_domain, options).map_err(
        |source| Error::SelfSigned {
            dir: self_signed_dir.to_owned(),
            source: Box::new(source),
        },
    )?;
    Ok(Material {
        signer,
        source: api::CaSource::SelfSigned {
            dir: self_signed_dir.to_owned(),
        },
    })
}

/// The PEMs of a CA Secret; `root-cert.pem` required or not.
fn secret_pems(
    secret: &Secret,
    namespace: &str,
    name: &str,
    root_required: bool,
    layout: &'static str,
) -> Result<CaPems, Error> {
    // An empty value counts as absent: istio-ca-secret carries empty optional keys.
    let optional = |key: &'static str| -> Result<Option<String>, Error> {
        let Some(bytes) = secret
            .get(key)
            .filter(|value| !value.trim_ascii().is_empty())
        else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Error::NotText {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key,
            })
    };
    let required = |key: &'static str| -> Result<String, Error> {
        optional(key)?.ok_or_else(|| Error::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key,
            layout,
        })
    };
    Ok(CaPems {
        ca_cert: required(CA_CERT_FILE)?,
        ca_key: required(CA_KEY_FILE)?,
        root_cert: if root_required {
            Some(required(ROOT_CERT_FILE)?)
        } else {
            optional(ROOT_CERT_FILE)?
        },
        cert_chain: optional(CERT_CHAIN_FILE)?,
    })
}
