//! The CA mode (`shunt-agent --ca-listen`) over loopback TCP, with shunt-identity's client:
//! who may have which certificate, where the key material comes from, and what survives a
//! restart. Needs no root.
#![expect(clippy::unwrap_used, reason = "the tests fail by panicking")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use shunt_agent::ca::{CaMode, CaOptions, ROOT_FILE, SELF_SIGNED_DIR};
use shunt_agent::config::{LoadOptions, Snapshot};
use shunt_agent::source::local_dir;
use shunt_api::admin::{CaSource, CaStatus};
use shunt_api::k8s::NodeName;
use shunt_identity::SpiffeId;
use shunt_identity::cert;
use shunt_identity::grpc::pb::IstioCertificateRequest;
use shunt_identity::grpc::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use shunt_identity::grpc::{
    AUTHORIZATION, CaClient, CaClientConfig, ClientError, DEFAULT_SERVER_NAME,
    IMPERSONATED_IDENTITY,
};
use shunt_identity::trust::TrustBundle;
use shunt_identity::workload::WorkloadCert;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// Two nodes' tokens; `sleep` runs on node-a, `reviews` on node-b.
const MESH: &str = "
apiVersion: v1
kind: Secret
metadata: {name: shunt-node-tokens, namespace: istio-system}
stringData: {node-a: token-a, node-b: token-b}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default}
spec: {serviceAccountName: sleep, nodeName: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default}
spec: {serviceAccountName: reviews, nodeName: node-b}
";

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

/// A CA mode over a config dir and a state dir of its own, fed snapshots by the test.
struct Ca {
    dir: tempfile::TempDir,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: watch::Receiver<CaStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Ca {
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes `text` to the config file `name` and publishes the new snapshot, as the
    /// watcher would.
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.config_dir().join(name), text).unwrap();
        self.snapshots
            .send_replace(Arc::new(load(&self.config_dir())));
    }

    /// Waits until the CA serves (or fails), and returns its status.
    async fn settled(&mut self) -> CaStatus {
        self.status
            .wait_for(|status| status.serving.is_some() || status.error.is_some())
            .await
            .unwrap()
            .clone()
    }

    /// Waits until the CA serves, and returns its address.
    async fn serving(&mut self) -> SocketAddr {
        let status = self.settled().await;
        status
            .serving
            .unwrap_or_else(|| panic!("the CA does not serve: {:?}", status.error))
    }

    fn roots(&self) -> TrustBundle {
        let file = self.status.borrow().root_file.clone().unwrap();
        TrustBundle::from_pem(&std::fs::read_to_string(file).unwrap()).unwrap()
    }

    /// A client of the CA sending `token` (none: no token at all).
    async fn client(&mut self, token: Option<&str>) -> CaClient {
        let address = self.serving().await;
        let mut config = CaClientConfig::new(address.to_string(), self.roots());
        config.token_path = token.map(|token| {
            let path = self.dir.path().join(format!("token-{token}"));
            std::fs::write(&path, format!("{token}\n")).unwrap();
            path
        });
        CaClient::new(config).unwrap()
    }

    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.dir
    }
}

fn load(config_dir: &Path) -> Snapshot {
    let options = LoadOptions {
        node_name: NodeName::new("ca-node").unwrap(),
        ..LoadOptions::default()
    };
    local_dir::load(config_dir, &options).unwrap()
}

/// A CA over a new dir holding `config`.
fn start(config: &str) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/mesh.yaml"), config).unwrap();
    start_in(dir, |_| {})
}

/// A CA over `dir` (its `config/` and `state/`), with `tune` applied to its options.
fn start_in(dir: tempfile::TempDir, tune: impl FnOnce(&mut CaOptions)) -> Ca {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut options = CaOptions::new(listen, dir.path().join("state"));
    tune(&mut options);
    let (snapshots, receiver) = watch::channel(Arc::new(load(&dir.path().join("config"))));
    let (ca, status) = CaMode::new(options);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ca.run(receiver, shutdown.clone()));
    Ca {
        dir,
        snapshots,
        status,
        shutdown,
        task,
    }
}

/// The gRPC status of a refused fetch.
fn refusal(result: Result<WorkloadCert, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn der(pem: &str) -> Vec<u8> {
    cert::parse_pem(pem, "test").unwrap().remove(0).to_vec()
}

/// The subjects of `cert`'s chain, leaf first.
fn subjects(cert: &WorkloadCert) -> Vec<String> {
    cert.chain_info()
        .iter()
        .map(|info| info.subject.clone())
        .collect()
}

#[tokio::test]
async fn a_node_gets_its_own_pods_identities_and_no_others() {
    let mut ca = start(MESH);
    let node_a = ca.client(Some("token-a")).await;

    let cert = node_a.fetch(&id(SLEEP)).await.unwrap();
    assert_eq!(cert.identity(), &id(SLEEP));
    // The chain ends at the root the proxies are given.
    let roots = ca.roots();
    assert_eq!(roots.roots().len(), 1);
    assert_eq!(cert.chain().last().unwrap(), &roots.roots()[0]);
    assert_eq!(cert.chain().len(), 2);
    roots.verify(cert.chain(), SystemTime::now()).unwrap();

    // reviews runs on node-b only.
    let (code, message) = refusal(node_a.fetch(&id(REVIEWS)).await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    for part in [
        "node node-a may not have a certificate for spiffe://cluster.local/ns/default/sa/reviews",
        "scheduled on node-b, not on node-a",
        "spec.nodeName",
    ] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    // Another trust domain, or a service account no pod has.
    for (asked, part) in [
        (
            "spiffe://evil.example/ns/default/sa/sleep",
            "its trust domain is not the mesh's, cluster.local",
        ),
        (
            "spiffe://cluster.local/ns/default/sa/nobody",
            "no pod in the config runs as service account nobody in namespace default",
        ),
    ] {
        let (code, message) = refusal(node_a.fetch(&id(asked)).await);
        assert_eq!(code, Code::PermissionDenied, "{message}");
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    let node_b = ca.client(Some("token-b")).await;
    node_b.fetch(&id(REVIEWS)).await.unwrap();

    // A reviews pod scheduled on node-a later: issuable at once, no restart.
    ca.write(
        "more.yaml",
        "
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default}
spec: {serviceAccountName: reviews, nodeName: node-a}
",
    );
    let cert = node_a.fetch(&id(REVIEWS)).await.unwrap();
    assert_eq!(cert.identity(), &id(REVIEWS));
    drop((node_a, node_b));
    ca.stop().await;
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_unauthenticated() {
    let mut ca = start(MESH);
    for (token, part) in [
        (None, "no bearer token"),
        (Some("token-c"), "the bearer token is not known to this CA"),
        // Another node's token with a character more: compared whole.
        (Some("token-aa"), "the bearer token is not known to this CA"),
    ] {
        let client = ca.client(token).await;
        let (code, message) = refusal(client.fetch(&id(SLEEP)).await);
        assert_eq!(code, Code::Unauthenticated, "{token:?}: {message}");
        assert!(message.contains(part), "{part:?} in {message:?}");
        // What to fix.
        assert!(
            message.contains("Secret istio-system/shunt-node-tokens")
                && message.contains("--ca-token-file"),
            "{message}"
        );
    }
    ca.stop().await;
}

#[tokio::test]
async fn a_bad_csr_is_an_invalid_argument() {
    let mut ca = start(MESH);
    let address = ca.serving().await;
    let tls = ClientTlsConfig::new()
        .domain_name(DEFAULT_SERVER_NAME)
        .ca_certificate(Certificate::from_pem(ca.roots().to_pem()));
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = IstioCertificateServiceClient::new(channel);
    // A well-formed request for another identity than the one asked for.
    let other = shunt_identity::csr::generate(&id(REVIEWS)).unwrap().csr_pem;
    for (csr, part) in [
        ("not a CSR".to_owned(), "malformed"),
        (
            other,
            "must name exactly spiffe://cluster.local/ns/default/sa/sleep",
        ),
    ] {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: Some(prost_types::Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY.to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(SLEEP.to_owned())),
                    },
                )]),
            }),
        });
        request
            .metadata_mut()
            .insert(AUTHORIZATION, "Bearer token-a".parse().unwrap());
        let status = client.create_certificate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(part), "{part:?} in {status:?}");
    }
    drop(client);
    ca.stop().await;
}

#[tokio::test]
async fn a_restarted_ca_keeps_its_self_signed_root() {
    let mut ca = start(MESH);
    let first = ca.settled().await;
    let state = ca.state_dir();
    assert_eq!(
        first.source,
        Some(CaSource::SelfSigned {
            dir: state.join(SELF_SIGNED_DIR)
        })
    );
    assert_eq!(first.root_file, Some(state.join(ROOT_FILE)));
    assert_eq!(first.roots.len(), 1);
    assert_eq!(first.roots[0].subject, "O=cluster.local");
    let root_pem = std::fs::read_to_string(state.join(ROOT_FILE)).unwrap();
    for file in ["root-key.pem", "root-cert.pem"] {
        let mode = std::fs::metadata(state.join(SELF_SIGNED_DIR).join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let dir = ca.stop().await;

    let mut again = start_in(dir, |_| {});
    let second = again.settled().await;
    assert_eq!(second.error, None);
    assert_eq!(second.roots, first.roots, "the same root, not a new one");
    assert_eq!(
        std::fs::read_to_string(again.state_dir().join(ROOT_FILE)).unwrap(),
        root_pem
    );
    // And what it issues chains to it.
    let client = again.client(Some("token-a")).await;
    let cert = client.fetch(&id(SLEEP)).await.unwrap();
    assert_eq!(cert.chain().last().unwrap().as_ref(), der(&root_pem));
    drop(client);
    again.stop().await;
}

fn ca_params(organization: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    params
}

/// A root and an intermediate it signed: (root PEM, intermediate PEM, intermediate key PEM).
fn plugin_ca() -> (String, String, String) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("plug-in root");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params("plug-in intermediate");
    params.use_authority_key_identifier_extension = true;
    let intermediate = params.signed_by(&key, &issuer).unwrap();
    (root.pem(), intermediate.pem(), key.serialize_pem())
}

/// A Secret in istio-system with `data` as stringData (JSON is YAML).
fn secret(name: &str, data: &[(&str, &str)]) -> String {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "istio-system"},
        "stringData": data,
    })
    .to_string()
}

#[tokio::test]
async fn a_ca_secret_is_used_when_present() {
    let (root, intermediate, key) = plugin_ca();
    let (other_root, _, _) = plugin_ca();
    let chain = format!("{intermediate}{root}");
    // istiod's own Secret: a self-signed ca-cert.pem, empty optional keys.
    let istiod_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let istiod_cert = ca_params("cluster.local")
        .self_signed(&istiod_key)
        .unwrap()
        .pem();
    let istiod_key = istiod_key.serialize_pem();
    let cases = [
        (
            secret(
                "cacerts",
                &[
                    ("ca-cert.pem", &intermediate),
                    ("ca-key.pem", &key),
                    ("root-cert.pem", &root),
                    ("cert-chain.pem", &chain),
                ],
            ),
            "cacerts",
            vec!["", "O=plug-in intermediate", "O=plug-in root"],
            root.clone(),
        ),
        (
            secret(
                "istio-ca-secret",
                &[
                    ("ca-cert.pem", &istiod_cert),
                    ("ca-key.pem", &istiod_key),
                    ("root-cert.pem", ""),
                    ("cert-chain.pem", ""),
                ],
            ),
            "istio-ca-secret",
            vec!["", "O=cluster.local"],
            istiod_cert.clone(),
        ),
        (
            // Both: the plug-in CA wins, as in istiod.
            format!(
                "{}\n---\n{}",
                secret(
                    "cacerts",
                    &[
                        ("ca-cert.pem", &intermediate),
                        ("ca-key.pem", &key),
                        ("root-cert.pem", &root),
                    ],
                ),
                secret(
                    "istio-ca-secret",
                    &[("ca-cert.pem", &istiod_cert), ("ca-key.pem", &istiod_key)],
                )
            ),
            "cacerts",
            vec!["", "O=plug-in intermediate", "O=plug-in root"],
            root.clone(),
        ),
    ];
    for (secrets, name, chain_subjects, expected_root) in cases {
        let extra = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(extra.path(), &other_root).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(
            dir.path().join("config/mesh.yaml"),
            format!("{MESH}\n---\n{secrets}"),
        )
        .unwrap();
        let root_out = dir.path().join("out/roots.pem");
        let root_out_option = root_out.clone();
        let mut ca = start_in(dir, |options| {
            options.extra_roots = vec![extra.path().to_owned()];
            options.root_out = Some(root_out_option);
        });
        let status = ca.settled().await;
        assert_eq!(status.error, None, "{name}");
        assert_eq!(
            status.source,
            Some(CaSource::Secret {
                namespace: "istio-system".into(),
                name: name.into()
            })
        );
        assert_eq!(status.root_file.as_ref(), Some(&root_out));
        // The trust bundle: the CA's root, then the extra root.
        let bundle = TrustBundle::from_pem(&std::fs::read_to_string(&root_out).unwrap()).unwrap();
        assert_eq!(bundle.roots().len(), 2, "{name}");
        assert_eq!(bundle.roots()[0].as_ref(), der(&expected_root));
        assert_eq!(bundle.roots()[1].as_ref(), der(&other_root));
        assert_eq!(status.roots.len(), 2);
        assert_eq!(
            status.roots[0].sha256,
            shunt_agent::ca::fingerprint(&der(&expected_root))
        );
        // No self-signed root was made beside it.
        assert!(!ca.state_dir().join(SELF_SIGNED_DIR).exists(), "{name}");

        let client = ca.client(Some("token-a")).await;
        let cert = client.fetch(&id(SLEEP)).await.unwrap();
        assert_eq!(subjects(&cert), chain_subjects, "{name}");
        assert_eq!(cert.chain().last().unwrap().as_ref(), der(&expected_root));
        drop(client);
        ca.stop().await;
    }
}

#[tokio::test]
async fn a_broken_ca_secret_keeps_the_ca_down_until_it_is_fixed() {
    let (root, intermediate, key) = plugin_ca();
    let (_, _, other_key) = plugin_ca();
    let cases = [
        (
            secret(
                "cacerts",
                &[("ca-cert.pem", &intermediate), ("root-cert.pem", &root)],
            ),
            vec!["Secret istio-system/cacerts has no ca-key.pem"],
        ),
        (
            secret(
                "cacerts",
                &[("ca-cert.pem", &intermediate), ("ca-key.pem", &key)],
            ),
            vec!["Secret istio-system/cacerts has no root-cert.pem"],
        ),
        (
            secret(
                "cacerts",
                &[
                    ("ca-cert.pem", &intermediate),
                    ("ca-key.pem", &other_key),
                    ("root-cert.pem", &root),
                ],
            ),
            vec!["Secret istio-system/cacerts: ", "self-check", "ca-key.pem"],
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: cacerts, namespace: istio-system}\n\
             data: {ca-cert.pem: '%%% not base64'}\n"
                .to_owned(),
            vec!["Secret istio-system/cacerts is in the config dir but could not be loaded"],
        ),
        (
            secret(
                "istio-ca-secret",
                &[("ca-cert.pem", "garbage"), ("ca-key.pem", &key)],
            ),
            vec!["Secret istio-system/istio-ca-secret: ", "ca-cert.pem"],
        ),
    ];
    for (broken, parts) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/mesh.yaml"), MESH).unwrap();
        std::fs::write(dir.path().join("config/ca.yaml"), &broken).unwrap();
        let mut ca = start_in(dir, |_| {});
        let status = ca.settled().await;
        let error = status.error.clone().unwrap_or_default();
        for part in &parts {
            assert!(error.contains(part), "{part:?} in {error:?}");
        }
        assert_eq!(status.serving, None);
        // Fail closed: no self-signed root instead.
        assert!(!ca.state_dir().join(SELF_SIGNED_DIR).exists(), "{error}");

        // Fixed in the config dir: the CA starts, without a restart.
        ca.write(
            "ca.yaml",
            &secret(
                "cacerts",
                &[
                    ("ca-cert.pem", &intermediate),
                    ("ca-key.pem", &key),
                    ("root-cert.pem", &root),
                ],
            ),
        );
        ca.status
            .wait_for(|status| status.serving.is_some())
            .await
            .unwrap();
        assert_eq!(ca.status.borrow().error, None);
        let client = ca.client(Some("token-a")).await;
        client.fetch(&id(SLEEP)).await.unwrap();
        drop(client);
        ca.stop().await;
    }
}

#[tokio::test]
async fn a_changed_ca_secret_is_noted_until_a_restart() {
    let mut ca = start(MESH);
    ca.serving().await;
    let (root, intermediate, key) = plugin_ca();
    ca.write(
        "ca.yaml",
        &secret(
            "cacerts",
            &[
                ("ca-cert.pem", &intermediate),
                ("ca-key.pem", &key),
                ("root-cert.pem", &root),
            ],
        ),
    );
    let note = ca
        .status
        .wait_for(|status| status.note.is_some())
        .await
        .unwrap()
        .note
        .clone()
        .unwrap();
    assert!(
        note.starts_with("Secret istio-system/cacerts changed since the CA started; restart"),
        "{note}"
    );
    // Still the self-signed root meanwhile.
    assert!(matches!(
        ca.status.borrow().source,
        Some(CaSource::SelfSigned { .. })
    ));
    ca.stop().await;
}

#[tokio::test]
async fn unauthenticated_mode_issues_to_anyone_and_a_taken_port_is_reported() {
    let mut open = start_in(
        {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("config")).unwrap();
            std::fs::write(dir.path().join("config/mesh.yaml"), MESH).unwrap();
            dir
        },
        |options| options.allow_unauthenticated = true,
    );
    let client = open.client(None).await;
    // Not even a pod of that identity: anything goes.
    client
        .fetch(&id("spiffe://cluster.local/ns/x/sa/y"))
        .await
        .unwrap();
    assert!(open.status.borrow().allow_unauthenticated);
    drop(client);

    let taken = open.serving().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/mesh.yaml"), MESH).unwrap();
    let mut second = start_in(dir, |options| options.listen = taken);
    let status = second.settled().await;
    let error = status.error.unwrap();
    assert!(
        error.starts_with(&format!("cannot listen on {taken} (--ca-listen)")),
        "{error}"
    );
    second.stop().await;
    open.stop().await;
}
