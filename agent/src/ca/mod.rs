//! The CA mode (`shunt-agent --ca-listen ADDR`): istiod's `IstioCertificateService` beside
//! the agent's other work, in the same process and under its shutdown.
//!
//! - Key material ([`material`]): the `cacerts` or `istio-ca-secret` Secret of the root
//!   namespace, else a self-signed root generated once in `<state dir>/self-signed/`.
//! - The trust bundle (the CA's root, then every `--ca-extra-root`) is written to
//!   `<state dir>/root-cert.pem` (or `--ca-root-out`), for the proxies' `--ca-root-cert`.
//! - Who may have what ([`authorizer`]): a node's token, then its own pods' identities.
//! - In a cluster ([`Cluster`], the CA-only process `shunt-agent --ca-only` of
//!   [`spawn_in_cluster`]): the node comes from a TokenReview of the proxy's projected token
//!   ([`token_review`]), and the trust bundle is also published in a ConfigMap that the proxy
//!   DaemonSet mounts.
//!
//! A CA that cannot start (bad Secret, port taken) logs why and reports it in
//! `shuntctl status`; the rest of the agent runs on, and the CA tries again at the next
//! config change. It never serves with key material other than what the config names.

pub mod authorizer;
mod error;
pub mod material;
pub mod token_review;

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use ring::digest::{SHA256, digest};
use shunt_api::admin as api;
use shunt_identity::ca::{CaSigner, SignerOptions};
use shunt_identity::cert;
use shunt_identity::grpc::{CaServer, CaServerConfig, DEFAULT_PORT};
use shunt_identity::trust::TrustBundle;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use authorizer::{NODE_TOKENS_SECRET, NodeAuthorizer};
pub use error::Error;
pub use material::{ISTIOD_SECRET, PLUGIN_SECRET};

use crate::config::{LoadOptions, Snapshot};
use crate::source::kube::KubeSource;
use crate::source::kube::resources::Watch;
use material::Inputs;
use token_review::{ReviewAuthorizer, ReviewOptions};

/// Where an instance's CA state lives by default: `/var/lib/shunt/<instance>/ca`.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/shunt";
/// The trust bundle's file name in the state folder.
pub const ROOT_FILE: &str = "root-cert.pem";
/// The self-signed root's folder in the state folder.
pub const SELF_SIGNED_DIR: &str = "self-signed";

/// `/var/lib/shunt/<instance>/ca`: durable, unlike the run folder.
#[must_use]
pub fn default_state_dir(instance: &str) -> PathBuf {
    Path::new(DEFAULT_STATE_ROOT).join(instance).join("ca")
}

/// `--ca-listen`: `IP:PORT`, or an IP alone for istiod's port 15012 (`[::]` or `::` for
/// IPv6).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            format!(
                "expected IP:PORT or an IP (port {DEFAULT_PORT}), e.g. 0.0.0.0:{DEFAULT_PORT}, \
                 got {text:?}"
            )
        })
}

/// How the CA mode runs.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// `--ca-listen`.
    pub listen: SocketAddr,
    /// `--ca-state-dir`: the self-signed root (`self-signed/`) and the trust bundle.
    pub state_dir: PathBuf,
    /// `--ca-root-out`: where the trust bundle goes instead of `<state dir>/root-cert.pem`.
    pub root_out: Option<PathBuf>,
    /// `--ca-extra-root`: more roots to trust (root rotation), PEM files.
    pub extra_roots: Vec<PathBuf>,
    /// `--ca-dns-name`: names of the CA's TLS certificate beyond `istiod.istio-system.svc`.
    pub dns_names: Vec<String>,
    /// `--ca-allow-unauthenticated`: anyone gets any identity. Local experiments only.
    pub allow_unauthenticated: bool,
    /// Lifetimes of what the CA issues.
    pub signer: SignerOptions,
}

impl CaOptions {
    /// A CA on `listen` keeping its state in `state_dir`, with the defaults.
    #[must_use]
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> Self {
        Self {
            listen,
            state_dir,
            root_out: None,
            extra_roots: Vec::new(),
            dns_names: Vec::new(),
            allow_unauthenticated: false,
            signer: SignerOptions::default(),
        }
    }

    /// Where the trust bundle is written.
    #[must_use]
    pub fn root_file(&self) -> PathBuf {
        self.root_out
            .clone()
            .unwrap_or_else(|| self.state_dir.join(ROOT_FILE))
    }

    /// Where the self-signed root is kept.
    #[must_use]
    pub fn self_signed_dir(&self) -> PathBuf {
        self.state_dir.join(SELF_SIGNED_DIR)
    }
}

/// The CA in a cluster: nodes authenticated by TokenReview, and where the trust bundle is
/// published.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub review: ReviewOptions,
    /// The ConfigMap (`namespace`, `name`) that gets the trust bundle as `root-cert.pem`,
    /// applied server-side (verb `patch`).
    pub root_config_map: Option<(String, String)>,
}

/// The field manager of what the CA applies.
const FIELD_MANAGER: &str = "shunt-ca";

/// The CA mode: [`CaMode::run`] serves; its status is on the receiver [`CaMode::new`] gives.
pub struct CaMode {
    options: CaOptions,
    status: watch::Sender<api::CaStatus>,
    cluster: Option<Cluster>,
}

/// The CA-only process of a cluster (`shunt-agent --ca-only`): watches every pod, the mesh
/// config and the CA Secrets of `istio-system` ([`Watch::ca`]), and serves once they are
/// listed, until `shutdown`. Nothing is captured, no proxy is served.
pub fn spawn_in_cluster(
    options: CaOptions,
    cluster: Cluster,
    load: LoadOptions,
    shutdown: CancellationToken,
) -> (watch::Receiver<api::CaStatus>, JoinHandle<()>) {
    let (ca, status) = CaMode::new(options);
    let ca = ca.in_cluster(cluster.clone());
    let task = tokio::spawn(async move {
        let mut source = KubeSource::start_watches(
            cluster.client,
            load,
            crate::source::kube::DEFAULT_PAGE_SIZE,
            Watch::ca([PLUGIN_SECRET, ISTIOD_SECRET]),
        );
        tracing::info!("CA: listing pods, the mesh config and the CA Secrets");
        let initial = tokio::select! {
            () = shutdown.cancelled() => return,
            listed = source.listed() => listed,
        };
        let (snapshots_tx, snapshots) = watch::channel(Arc::new(initial));
        let watcher = source.spawn(snapshots_tx, shutdown.clone());
        ca.run(snapshots, shutdown).await;
        let _ = watcher.await;
    });
    (status, task)
}

/// A CA ready to serve.
struct Started {
    signer: CaSigner,
    listener: TcpListener,
}

impl CaMode {
    /// The CA mode, and its status for the admin API.
    #[must_use]
    pub fn new(options: CaOptions) -> (Self, watch::Receiver<api::CaStatus>) {
        let (status, receiver) = watch::channel(api::CaStatus {
            listen: options.listen,
            serving: None,
            source: None,
            roots: Vec::new(),
            root_file: None,
            allow_unauthenticated: options.allow_unauthenticated,
            error: None,
            note: None,
        });
        (
            Self {
                options,
                status,
                cluster: None,
            },
            receiver,
        )
    }

    /// Authenticates nodes by TokenReview, and publishes the trust bundle, as `cluster` says.
    #[must_use]
    pub fn in_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Starts the CA from the latest snapshot and serves until `shutdown`. A start that
    /// fails is retried at each new snapshot (a fixed Secret starts the CA without a
    /// restart).
    pub async fn run(
        self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let inputs = Inputs::of(&snapshots.borrow_and_update());
            let failed = match self.start(&inputs).await {
                Ok(started) => {
                    let stopped = self
                        .serve(started, &inputs, &mut snapshots, &shutdown)
                        .await;
                    match stopped {
                        Ok(()) => return,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            let reason = shunt_api::report::chain(&failed);
            tracing::error!(
                error = %reason,
                "CA: not serving (the rest of the agent runs on); it tries again when the \
                 config dir changes"
            );
            self.status.send_modify(|status| {
                status.serving = None;
                status.error = Some(reason);
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // No more snapshots: nothing could fix it.
                        shutdown.cancelled().await;
                        return;
                    }
                }
            }
        }
    }

    /// Loads the key material, writes the trust bundle and binds.
    async fn start(&self, inputs: &Inputs) -> Result<Started, Error> {
        if self.options.root_out.is_none() {
            // Readable by all: the trust bundle goes here, the key below it in 0700.
            create_dir(&self.options.state_dir, 0o755)?;
        }
        let material =
            material::load(inputs, &self.options.self_signed_dir(), self.options.signer)?;
        let mut signer = material.signer;
        for path in &self.options.extra_roots {
            let pem = fs::read_to_string(path).map_err(|source| Error::ExtraRootRead {
                path: path.clone(),
                source,
            })?;
            signer = signer
                .with_extra_roots(&pem)
                .map_err(|source| Error::ExtraRoot {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
        }
        let roots = root_statuses(signer.trust_bundle())?;
        let root_file = self.options.root_file();
        let bundle = signer.trust_bundle().to_pem();
        write_public(&root_file, &bundle)?;
        if let Some(cluster) = &self.cluster {
            if let Some((namespace, name)) = &cluster.root_config_map {
                publish_root(&cluster.client, namespace, name, &bundle).await?;
            }
            if matches!(material.source, api::CaSource::SelfSigned { .. }) {
                tracing::warn!(
                    "CA: no Secret {}/{PLUGIN_SECRET} or {ISTIOD_SECRET}: serving a self-signed \
                     root kept in {}; if that is not durable, a restart makes a new root and \
                     every proxy must fetch again: create {PLUGIN_SECRET} for a lasting root",
                    inputs.root_namespace(),
                    self.options.self_signed_dir().display()
                );
            }
        }
        let listener = TcpListener::bind(self.options.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: self.options.listen,
                source,
            })?;
        let serving = listener.local_addr().map_err(|source| Error::Listen {
            addr: self.options.listen,
            source,
        })?;
        tracing::info!(
            %serving,
            source = %source_text(&material.source),
            root = roots.first().map_or("-", |root| root.subject.as_str()),
            root_sha256 = roots.first().map_or("-", |root| root.sha256.as_str()),
            trust_bundle = %root_file.display(),
            "CA: serving istio.v1.auth.IstioCertificateService; give the proxies \
             --ca-address {serving} --ca-root-cert {}",
            root_file.display()
        );
        self.status.send_modify(|status| {
            status.serving = Some(serving);
            status.source = Some(material.source);
            status.roots = roots;
            status.root_file = Some(root_file);
            status.error = None;
            status.note = None;
        });
        Ok(Started { signer, listener })
    }

    /// Serves until `shutdown` (`Ok`) or the server fails; meanwhile notes CA Secrets that
    /// change (they are loaded at the next start only).
    async fn serve(
        &self,
        started: Started,
        inputs: &Inputs,
        snapshots: &mut watch::Receiver<Arc<Snapshot>>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let listen = self.options.listen;
        let ip_addresses = if listen.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![listen.ip()]
        };
        let authorizer: Arc<dyn shunt_identity::grpc::Authorizer> = match &self.cluster {
            Some(cluster) => Arc::new(ReviewAuthorizer::new(
                cluster.client.clone(),
                cluster.review.clone(),
                snapshots.clone(),
            )),
            None => Arc::new(NodeAuthorizer::new(snapshots.clone())),
        };
        let server = CaServer::new(
            Arc::new(started.signer),
            authorizer,
            CaServerConfig {
                extra_dns_names: self.options.dns_names.clone(),
                ip_addresses,
                allow_unauthenticated: self.options.allow_unauthenticated,
                ..CaServerConfig::default()
            },
        );
        let serving = server.serve(started.listener, shutdown.clone().cancelled_owned());
        tokio::pin!(serving);
        let mut watching = true;
        loop {
            tokio::select! {
                served = &mut serving => {
                    return served.map_err(|source| Error::Serve {
                        addr: listen,
                        source: Box::new(source),
                    });
                }
                changed = snapshots.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let changes = Inputs::of(&snapshots.borrow_and_update()).changes_since(inputs);
                    let note = (!changes.is_empty()).then(|| {
                        format!(
                            "{} changed since the CA started; restart shunt-agent to load it \
                             (the CA keeps its key material meanwhile)",
                            changes.join(", ")
                        )
                    });
                    if let Some(note) = &note {
                        tracing::warn!("CA: {note}");
                    }
                    self.status.send_modify(|status| status.note = note);
                }
            }
        }
    }
}

/// Applies `bundle` as `root-cert.pem` of ConfigMap `namespace/name` (server-side apply:
/// created or updated by the one `patch`).
async fn publish_root(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    bundle: &str,
) -> Result<(), Error> {
    let config_map = ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            ROOT_FILE.to_owned(),
            bundle.to_owned(),
        )])),
        ..ConfigMap::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut value = serde_json::to_value(&config_map).unwrap_or_default();
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(|source| Error::PublishRoot {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source: Box::new(source),
    })?;
    tracing::info!("CA: published the trust bundle to ConfigMap {namespace}/{name}");
    Ok(())
}

fn source_text(source: &api::CaSource) -> String {
    match source {
        api::CaSource::Secret { namespace, name } => format!("Secret {namespace}/{name}"),
        api::CaSource::SelfSigned { dir } => format!("self-signed root in {}", dir.display()),
    }
}

/// Each root of `bundle`: subject, SHA-256 fingerprint, end of validity.
fn root_statuses(bundle: &TrustBundle) -> Result<Vec<api::CaRootStatus>, Error> {
    bundle
        .roots()
        .iter()
        .enumerate()
        .map(|(index, der)| {
            let info =
                cert::info(der, &format!("trust bundle root {index}")).map_err(Error::Bundle)?;
            Ok(api::CaRootStatus {
                subject: info.subject,
                sha256: fingerprint(der),
                not_after: rfc3339(info.not_after),
            })
        })
        .collect()
}

/// SHA-256 of `der` as `openssl x509 -fingerprint -sha256` prints it.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    digest(&SHA256, der)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn create_dir(path: &Path, mode: u32) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| Error::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Writes `text` to `path` (mode 0644: roots are public), whole or not at all; left alone
/// when it already says that.
fn write_public(path: &Path, text: &str) -> Result<(), Error> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent, 0o755)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let _ = fs::remove_file(&temporary);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(|source| Error::WriteRoot {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_istiods_port() {
        for (text, expected) in [
            ("0.0.0.0:15012", Ok("0.0.0.0:15012")),
            ("127.0.0.1:0", Ok("127.0.0.1:0")),
            ("0.0.0.0", Ok("0.0.0.0:15012")),
            ("::", Ok("[::]:15012")),
            ("[::1]", Ok("[::1]:15012")),
            ("[::1]:9000", Ok("[::1]:9000")),
            ("localhost:15012", Err(())),
            ("0.0.0.0:99999", Err(())),
        ] {
            let parsed = parse_listen(text)
                .map(|addr| addr.to_string())
                .map_err(|_| ());
            assert_eq!(parsed, expected.map(str::to_owned), "{text}");
        }
        assert!(
            parse_listen("nope")
                .unwrap_err()
                .contains("e.g. 0.0.0.0:15012")
        );
    }

    #[test]
    fn fingerprints_read_as_openssl_prints_them() {
        // SHA-256 of the empty input.
        assert_eq!(
            fingerprint(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }
}
