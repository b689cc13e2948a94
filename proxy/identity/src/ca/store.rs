//! Where a CA's key material comes from: Istio's plug-in CA directory, or a self-signed root
//! that shunt generates once and keeps in its state directory.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

use super::error::Error;
use super::profile;

/// Istio's plug-in CA files (the `cacerts` Secret's keys): the signing certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing certificate's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The root the signing certificate chains to (the mesh's trust anchor).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Optional: the certificates from the signing certificate up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// The self-signed root's certificate, in the state directory.
pub const SELF_SIGNED_CERT_FILE: &str = "root-cert.pem";
/// The self-signed root's private key, in the state directory (mode 0600).
pub const SELF_SIGNED_KEY_FILE: &str = "root-key.pem";

/// A CA's key material as PEM text: Istio's plug-in layout, or the `istio-ca-secret` layout
/// (a self-signed `ca-cert.pem` and its key, no root).
#[derive(Clone)]
pub struct CaPems {
    /// The signing certificate (`ca-cert.pem`).
    pub ca_cert: String,
    /// Its private key, PKCS#8 (`ca-key.pem`).
    pub ca_key: String,
    /// The root(s) (`root-cert.pem`); `None` when `ca_cert` is itself the root. Several roots
    /// are all trusted; the first must be the one `ca_cert` chains to.
    pub root_cert: Option<String>,
    /// The chain from `ca_cert` towards the root (`cert-chain.pem`), if any.
    pub cert_chain: Option<String>,
}

impl std::fmt::Debug for CaPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPems")
            .field("ca_cert", &self.ca_cert)
            .field("ca_key", &"[elided]")
            .field("root_cert", &self.root_cert)
            .field("cert_chain", &self.cert_chain)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether `dir` holds a plug-in CA (its `ca-cert.pem` exists).
#[must_use]
pub fn has_plugin(dir: &Path) -> bool {
    dir.join(CA_CERT_FILE).exists()
}

/// Reads Istio's plug-in CA layout from `dir`: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`
/// and, if present, `cert-chain.pem`.
pub fn read_plugin(dir: &Path) -> Result<CaPems, Error> {
    Ok(CaPems {
        ca_cert: read(&dir.join(CA_CERT_FILE))?,
        ca_key: read(&dir.join(CA_KEY_FILE))?,
        root_cert: Some(read(&dir.join(ROOT_CERT_FILE))?),
        cert_chain: read_optional(&dir.join(CERT_CHAIN_FILE))?,
    })
}

/// The self-signed root kept in `state_dir`: loaded when both files are there, generated
/// (P-256, 10 years, `O=<trust domain>`) and written with mode 0600 when neither is. Never
/// regenerated while either file exists: a new root would make every certificate issued so
/// far untrusted.
pub fn self_signed_root(
    state_dir: &Path,
    trust_domain: &str,
    backdate: Duration,
) -> Result<CaPems, Error> {
    let cert_path = state_dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = state_dir.join(SELF_SIGNED_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            return Ok(CaPems {
                ca_cert: read(&cert_path)?,
                ca_key: read(&key_path)?,
                root_cert: None,
                cert_chain: None,
            });
        }
        (true, false) => {
            return Err(Error::PartialRoot {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, true) => {
            return Err(Error::PartialRoot {
                present: key_path,
                missing: cert_path,
            });
        }
        (false, false) => {}
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Issue)?;
    let cert = profile::root(trust_domain, SystemTime::now(), backdate)
        .self_signed(&key)
        .map_err(Error::Issue)?;
    let pems = CaPems {
        ca_cert: cert.pem(),
        ca_key: key.serialize_pem(),
        root_cert: None,
        cert_chain: None,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| Error::Write {
            path: state_dir.to_owned(),
            source,
        })?;
    // The key first: a crash between the two writes leaves a key without a certificate,
    // which the next start reports instead of silently making another root.
    write_private(&key_path, &pems.ca_key)?;
    write_private(&cert_path, &pems.ca_cert)?;
    tracing::info!(
        cert = %cert_path.display(),
        key = %key_path.display(),
        trust_domain,
        "generated a self-signed mesh root (valid 10 years); it is kept and reused at every start"
    );
    Ok(pems)
}

/// Writes `text` to `path` with mode 0600, whole or not at all (a temporary file renamed).
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let temporary = temporary_path(path);
    // A leftover of a crash of an earlier process with the same pid.
    let _ = fs::remove_file(&temporary);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(error)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}
