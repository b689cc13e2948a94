//! Why the CA mode could not start. The key-material errors are boxed: they are large and
//! rare.

use std::net::SocketAddr;
use std::path::PathBuf;

use shunt_identity::ca;
use shunt_identity::cert;

/// A CA that does not start; the rest of the agent runs on, and `shuntctl status` shows it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CA Secret is in the config but could not be read (bad YAML, base64, ...): it is
    /// never silently replaced by a self-signed root.
    #[error(
        "Secret {namespace}/{name} is in the config dir but could not be loaded: {errors}; fix \
         it (see `shuntctl config dump`), the CA does not start without it"
    )]
    SecretUnreadable {
        namespace: String,
        name: String,
        errors: String,
    },
    /// A key of a CA Secret is missing or empty.
    #[error(
        "Secret {namespace}/{name} has no {key} (or it is empty); {layout}, each a PEM value in \
         data (base64) or stringData"
    )]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
        layout: &'static str,
    },
    /// A key of a CA Secret is not text.
    #[error("Secret {namespace}/{name}: {key} is not UTF-8 text; it must hold PEM")]
    NotText {
        namespace: String,
        name: String,
        key: &'static str,
    },
    /// The PEMs of a CA Secret do not make a CA.
    #[error("Secret {namespace}/{name}: {source}")]
    SecretCa {
        namespace: String,
        name: String,
        source: Box<ca::Error>,
    },
    /// The self-signed root could not be loaded or made.
    #[error("the self-signed root in {dir}: {source}")]
    SelfSigned {
        dir: PathBuf,
        source: Box<ca::Error>,
    },
    /// An extra root (`--ca-extra-root`) could not be read.
    #[error("reading --ca-extra-root {path}: {source}")]
    ExtraRootRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An extra root is not a usable root certificate.
    #[error("--ca-extra-root {path}: {source}")]
    ExtraRoot {
        path: PathBuf,
        source: Box<ca::Error>,
    },
    /// A root of the trust bundle could not be read back.
    #[error("the CA's trust bundle: {0}")]
    Bundle(#[source] cert::Error),
    /// A folder could not be made.
    #[error("creating {path}: {source} (is it writable by shunt-agent? see --ca-state-dir)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The trust bundle could not be written for the proxies.
    #[error("writing the CA's roots to {path}: {source} (see --ca-root-out)")]
    WriteRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The trust bundle could not be published for the proxies in a cluster.
    #[error(
        "publishing the CA's roots to ConfigMap {namespace}/{name}: {source}; check that the \
         CA's service account may patch that ConfigMap (Role shunt-ca)"
    )]
    PublishRoot {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    /// The listening address is taken or not ours.
    #[error("cannot listen on {addr} (--ca-listen): {source} (is another CA or istiod there?)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("the CA server on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        source: Box<shunt_identity::grpc::ServerError>,
    },
}
