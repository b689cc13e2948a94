use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use shunt_mesh::spiffe::SpiffeId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use super::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use super::pb::{IstioCertificateRequest, IstioCertificateResponse};
use super::*;
use crate::ca::{self, CaSigner};
use crate::csr;
use crate::test_support::{id, signer, signer_named};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ELSEWHERE: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// Node `node-a` (token `token-a`) runs the `sleep` pod; `reviews` runs on node-b.
struct Nodes {
    tokens: HashMap<&'static str, &'static str>,
    pods: HashMap<&'static str, Vec<SpiffeId>>,
}

impl Nodes {
    fn new() -> Self {
        Self {
            tokens: HashMap::from([("token-a", "node-a"), ("token-b", "node-b")]),
            pods: HashMap::from([("node-a", vec![id(SLEEP)]), ("node-b", vec![id(ELSEWHERE)])]),
        }
    }
}

impl Authorizer for Nodes {
    fn node_for_token<'a>(&'a self, token: &'a str) -> NodeLookup<'a> {
        let node = match token {
            // A token whose check cannot be made: the API server is down.
            "token-unavailable" => Err(TokenRefusal::Unavailable("the API server failed".into())),
            _ => self
                .tokens
                .get(token)
                .map(|node| (*node).to_owned())
                .ok_or(TokenRefusal::Unknown),
        };
        Box::pin(std::future::ready(node))
    }

    fn may_issue(&self, node: &str, id: &SpiffeId) -> Result<(), String> {
        if self.pods.get(node).is_some_and(|ids| ids.contains(id)) {
            Ok(())
        } else {
            Err(format!("no pod of node {node} runs as {id}"))
        }
    }
}

struct Running {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Running {
    fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.await.unwrap().unwrap();
    }
}

async fn start(signer: Arc<CaSigner>, config: CaServerConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let server = CaServer::new(signer, Arc::new(Nodes::new()), config);
    let served = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop: Some(stop),
        served,
    }
}

async fn channel(url: &str, signer: &CaSigner) -> Channel {
    let tls = ClientTlsConfig::new()
        .domain_name(DEFAULT_SERVER_NAME)
        .ca_certificate(Certificate::from_pem(signer.trust_bundle().to_pem()));
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

fn client(url: &str, signer: &CaSigner, token: Option<PathBuf>) -> CaClient {
    let mut config = CaClientConfig::new(url, signer.trust_bundle().clone());
    config.token_path = token;
    CaClient::new(config).unwrap()
}

fn request(
    csr_pem: String,
    impersonated: Option<&str>,
    validity: i64,
    token: Option<&str>,
) -> Request<IstioCertificateRequest> {
    let metadata = impersonated.map(|text| prost_types::Struct {
        fields: BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue(text.to_owned())),
            },
        )]),
    });
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr_pem,
        validity_duration: validity,
        metadata,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, token.parse().unwrap());
    }
    request
}

fn csr_for(text: &str) -> String {
    csr::generate(&id(text)).unwrap().csr_pem
}

#[tokio::test]
async fn the_server_issues_only_what_the_node_may_have() {
    let signer = signer();
    let server = start(Arc::clone(&signer), CaServerConfig::default()).await;
    let mut raw = IstioCertificateServiceClient::new(channel(&server.url(), &signer).await);

    let day = 24 * 3600;
    // (case, token header, ImpersonatedIdentity, CSR, validity, expected outcome)
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        String,
        i64,
        Code,
    );
    let cases: Vec<Case> = vec![
        (
            "a pod of the node",
            Some("Bearer token-a"),
            Some(SLEEP),
            csr_for(SLEEP),
            day,
            Code::Ok,
        ),
        (
            "no ImpersonatedIdentity: the CSR's, a pod of the node",
            Some("Bearer token-a"),
            None,
            csr_for(SLEEP),
            0,
            Code::Ok,
        ),
        (
            "a pod of another node",
            Some("Bearer token-a"),
            Some(ELSEWHERE),
            csr_for(ELSEWHERE),
            day,
            Code::PermissionDenied,
        ),
        (
            "no ImpersonatedIdentity, the CSR names a pod of another node",
            Some("Bearer token-a"),
            None,
            csr_for(ELSEWHERE),
            day,
            Code::PermissionDenied,
        ),
        (
            "no token",
            None,
            Some(SLEEP),
            csr_for(SLEEP),
            day,
            Code::Unauthenticated,
        ),
        (
            "an unknown token",
            Some("Bearer nobody"),
            Some(SLEEP),
            csr_for(SLEEP),
            day,
            Code::Unauthenticated,
        ),
        (
            "a token that cannot be checked: fails closed",
            Some("Bearer token-unavailable"),
            Some(SLEEP),
            csr_for(SLEEP),
            day,
            Code::Unavailable,
        ),
        (
            "not a bearer token",
            Some("Basic token-a"),
            Some(SLEEP),
            csr_for(SLEEP),
            day,
            Code::Unauthenticated,
        ),
        (
            "an unknown token with a bad CSR: authentication first",
            Some("Bearer nobody"),
            Some(SLEEP),
            "garbage".to_owned(),
            day,
            Code::Unauthenticated,
        ),
        (
            "a bad CSR",
            Some("Bearer token-a"),
            Some(SLEEP),
            "garbage".to_owned(),
            day,
            Code::InvalidArgument,
        ),
        (
            "a CSR for another identity than the one impersonated",
            Some("Bearer token-b"),
            Some(ELSEWHERE),
            csr_for(SLEEP),
            day,
            Code::InvalidArgument,
        ),
        (
            "a malformed ImpersonatedIdentity",
            Some("Bearer token-a"),
            Some("spiffe://cluster.local/sleep"),
            csr_for(SLEEP),
            day,
            Code::InvalidArgument,
        ),
        (
            "a negative validity",
            Some("Bearer token-a"),
            Some(SLEEP),
            csr_for(SLEEP),
            -1,
            Code::InvalidArgument,
        ),
        (
            "a validity over the CA's maximum",
            Some("Bearer token-a"),
            Some(SLEEP),
            csr_for(SLEEP),
            365 * day,
            Code::InvalidArgument,
        ),
    ];
    for (case, token, impersonated, csr_pem, validity, expected) in cases {
        let result = raw
            .create_certificate(request(csr_pem, impersonated, validity, token))
            .await;
        match (result, expected) {
            (Ok(response), Code::Ok) => {
                let chain = response.into_inner().cert_chain;
                assert_eq!(chain.len(), 2, "{case}");
                assert_eq!(chain[1], signer.root_pem(), "{case}");
            }
            (Ok(_), expected) => panic!("{case}: issued, expected {expected:?}"),
            (Err(status), expected) => {
                assert_eq!(status.code(), expected, "{case}: {}", status.message());
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_client_fetches_a_verified_certificate_and_rereads_its_token() {
    let signer = signer();
    let server = start(Arc::clone(&signer), CaServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "token-a\n");
    let client = client(&server.url(), &signer, Some(token.clone()));

    let cert = client.fetch(&id(SLEEP)).await.unwrap();
    assert_eq!(cert.identity(), &id(SLEEP));
    assert_eq!(cert.chain().len(), 2);
    signer
        .trust_bundle()
        .verify(cert.chain(), SystemTime::now())
        .unwrap();
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert_eq!(lifetime, Duration::from_secs(24 * 3600 + 120));

    // Not this node's pod: the CA's reason reaches the caller.
    let error = client.fetch(&id(ELSEWHERE)).await.unwrap_err();
    let ClientError::Rpc { code, message, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*code, Code::PermissionDenied);
    assert!(message.contains("no pod of node node-a"), "{message}");

    // The token is read at each request: a rotated token takes effect at once.
    std::fs::write(&token, "rotated-unknown").unwrap();
    let error = client.fetch(&id(SLEEP)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::Rpc {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{error:?}"
    );
    std::fs::write(&token, "token-a").unwrap();
    client.fetch(&id(SLEEP)).await.unwrap();

    // No token file at all.
    std::fs::remove_file(&token).unwrap();
    let error = client.fetch(&id(SLEEP)).await.unwrap_err();
    assert!(matches!(error, ClientError::Token { .. }), "{error:?}");

    // Without a token.
    let anonymous = self::client(&server.url(), &signer, None);
    let error = anonymous.fetch(&id(SLEEP)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::Rpc {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{error:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn allow_unauthenticated_skips_the_token_but_not_the_csr() {
    let signer = signer();
    let config = CaServerConfig {
        allow_unauthenticated: true,
        ..CaServerConfig::default()
    };
    let server = start(Arc::clone(&signer), config).await;
    let anonymous = client(&server.url(), &signer, None);
    // Any identity, no token.
    anonymous.fetch(&id(ELSEWHERE)).await.unwrap();

    let mut raw = IstioCertificateServiceClient::new(channel(&server.url(), &signer).await);
    let status = raw
        .create_certificate(request("garbage".to_owned(), Some(SLEEP), 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .create_certificate(request(csr_for(SLEEP), Some(ELSEWHERE), 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_the_ca_by_its_name() {
    let signer = signer();
    let server = start(Arc::clone(&signer), CaServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = CaClientConfig::new(server.url(), signer.trust_bundle().clone());
    config.token_path = Some(token_file(dir.path(), "token-a"));
    config.server_name = "not-the-ca.example".to_owned();
    let error = CaClient::new(config)
        .unwrap()
        .fetch(&id(SLEEP))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::Rpc {
                code: Code::Unavailable | Code::Unknown,
                ..
            }
        ),
        "{error:?}"
    );
    // Extra names in the serving certificate are accepted.
    server.stop().await;
    let config = CaServerConfig {
        extra_dns_names: vec!["ca.shunt.local".to_owned()],
        ..CaServerConfig::default()
    };
    let server = start(Arc::clone(&signer), config).await;
    let mut config = CaClientConfig::new(server.url(), signer.trust_bundle().clone());
    config.token_path = Some(token_file(dir.path(), "token-a"));
    config.server_name = "ca.shunt.local".to_owned();
    CaClient::new(config)
        .unwrap()
        .fetch(&id(SLEEP))
        .await
        .unwrap();
    server.stop().await;
}

#[test]
fn plain_http_is_refused() {
    let signer = signer();
    let config = CaClientConfig::new("http://127.0.0.1:15012", signer.trust_bundle().clone());
    let error = CaClient::new(config).unwrap_err();
    assert!(matches!(error, ClientError::Config { .. }), "{error:?}");
}

/// A CA that answers what the test says, to check what the client accepts.
enum Answer {
    Empty,
    WrongIdentity(Arc<CaSigner>),
    OtherCa(Arc<CaSigner>),
}

#[tonic::async_trait]
impl IstioCertificateService for Answer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let request = request.into_inner();
        let now = SystemTime::now();
        let cert_chain = match self {
            Self::Empty => Vec::new(),
            Self::WrongIdentity(signer) => signer
                .sign_with_validity(
                    &request.csr,
                    &id(ELSEWHERE),
                    now,
                    now + Duration::from_secs(60),
                )
                .unwrap(),
            Self::OtherCa(other) => other
                .sign(&request.csr, &id(SLEEP), Duration::ZERO)
                .unwrap(),
        };
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

#[tokio::test]
async fn the_client_checks_what_the_ca_returns() {
    let signer = signer();
    let other = signer_named("another mesh", ca::SignerOptions::default());
    type Check = fn(&ClientError) -> bool;
    let cases: Vec<(&str, Answer, Check)> = vec![
        ("an empty chain", Answer::Empty, |e| {
            matches!(e, ClientError::EmptyResponse { .. })
        }),
        (
            "another identity",
            Answer::WrongIdentity(Arc::clone(&signer)),
            |e| matches!(e, ClientError::WrongIdentity { .. }),
        ),
        ("a chain to an unknown root", Answer::OtherCa(other), |e| {
            matches!(e, ClientError::Untrusted { .. })
        }),
    ];
    for (case, answer, check) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (incoming, accepting) =
            server::tls_incoming(listener, Arc::clone(&signer), &CaServerConfig::default())
                .unwrap();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IstioCertificateServiceServer::new(answer))
                .serve_with_incoming(incoming),
        );
        let error = client(&url, &signer, None)
            .fetch(&id(SLEEP))
            .await
            .expect_err(case);
        assert!(check(&error), "{case}: {error:?}");
        serving.abort();
        accepting.abort();
    }
}

/// What a test's tracing subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_refusal_logs_node_identity_and_reason() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // The test runtime is single-threaded: the server's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let signer = signer();
    let server = start(Arc::clone(&signer), CaServerConfig::default()).await;
    let mut raw = IstioCertificateServiceClient::new(channel(&server.url(), &signer).await);
    let cases = [
        (
            Some("Bearer token-a"),
            csr_for(ELSEWHERE),
            ELSEWHERE,
            "node-a",
            "no pod of node node-a",
        ),
        (None, csr_for(SLEEP), SLEEP, "-", "no bearer token"),
        (
            Some("Bearer token-a"),
            "garbage".to_owned(),
            SLEEP,
            "node-a",
            "malformed",
        ),
    ];
    for (token, csr_pem, identity, node, reason) in cases {
        captured.0.lock().unwrap().clear();
        raw.create_certificate(request(csr_pem, Some(identity), 0, token))
            .await
            .unwrap_err();
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = logged
            .lines()
            .find(|line| line.contains("refused a certificate request"))
            .unwrap_or_else(|| panic!("no refusal logged: {logged}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("node={node}")), "{line}");
        assert!(line.contains(&format!("identity={identity}")), "{line}");
        assert!(line.contains(reason), "{line}");
    }
    server.stop().await;
}
