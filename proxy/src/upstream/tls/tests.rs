//! TLS origination against rustls servers on loopback, each with certificates of its own CA
//! (made with rcgen), through a real cluster: what the server saw (SNI, ALPN, client
//! certificate) and what the cluster answered.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use shunt_mesh::routing::{ClusterKey, Host, OutlierDetection, PortProtocol, TrafficPolicy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::response_flag::{ResponseFlag, ResponseFlags};
use crate::socket::{CurrentNetnsSocketFactory, SocketFactory};
use crate::upstream::{
    Body, ClusterEndpoint, ClusterState, HttpVersion, UpstreamError, UpstreamMetrics, Upstreams,
    cluster_name,
};

/// The ServiceEntry host of every test cluster, and the DNS SAN of the servers' certificates.
const HOST: &str = "api.external.test";
/// A URI SAN the servers' certificates also carry.
const URI_SAN: &str = "spiffe://external.test/api";
const RULE: &str = "DestinationRule shop/api-tls";

fn rule() -> ObjectRef {
    ObjectRef {
        kind: "DestinationRule",
        namespace: "shop".into(),
        name: "api-tls".into(),
    }
}

/// A CA, its certificate written to `dir/<name>-ca.pem`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: PathBuf,
}

/// A certificate and key the CA issued: DER for a server, PEM files for a client.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem_path, issuer.pem()).unwrap();
        Self { issuer, pem_path }
    }

    /// A certificate for `HOST` (and `URI_SAN`), for a server or a client.
    fn issue(&self, dir: &Path, name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(URI_SAN.try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_path,
            key_path,
        }
    }
}

fn path(p: &Path) -> Arc<str> {
    p.to_str().unwrap().into()
}

/// What the server saw of one handshake.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    sni: Option<String>,
    alpn: Option<String>,
    client_certificate: bool,
    version: Option<rustls::ProtocolVersion>,
}

/// How a test server is set up.
struct ServerSetup {
    leaf: Leaf,
    /// Require a client certificate issued by this CA.
    client_ca: Option<CertificateDer<'static>>,
    tls12_only: bool,
    /// Echo bytes instead of serving HTTP.
    echo: bool,
}

impl ServerSetup {
    fn new(leaf: Leaf) -> Self {
        Self {
            leaf,
            client_ca: None,
            tls12_only: false,
            echo: false,
        }
    }
}

/// A TLS server on loopback: HTTP/1.1 or h2 by ALPN (answering `tls ok`), or an echo.
struct TlsServer {
    addr: EndpointAddr,
    /// TCP connections accepted, whether or not their handshake succeeded.
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<Mutex<Vec<Seen>>>,
}

impl TlsServer {
    async fn start(setup: ServerSetup) -> Self {
        let versions: &[&rustls::SupportedProtocolVersion] = if setup.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            VERSIONS
        };
        let builder = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match setup.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(setup.leaf.chain, setup.leaf.key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound IPv4");
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), handshakes.clone());
        let echo = setup.echo;
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, connection) = tls.get_ref();
                    let alpn = connection
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    seen.lock().unwrap().push(Seen {
                        sni: connection.server_name().map(str::to_owned),
                        alpn: alpn.clone(),
                        client_certificate: connection
                            .peer_certificates()
                            .is_some_and(|certs| !certs.is_empty()),
                        version: connection.protocol_version(),
                    });
                    if echo {
                        let mut buf = vec![0; 1024];
                        while let Ok(n @ 1..) = tls.read(&mut buf).await {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let service = service_fn(|_: http::Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"tls ok"),
                        )))
                    });
                    let io = TokioIo::new(tls);
                    let _ = if alpn.as_deref() == Some("h2") {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
        Self {
            addr: addr.into(),
            accepted,
            handshakes,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.handshakes.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn cluster_for(host: &str, addr: EndpointAddr, tls: Option<UpstreamTls>) -> Arc<Cluster> {
    Arc::new(Cluster {
        key: ClusterKey {
            host: Host(Arc::from(host)),
            subset: None,
            port: 443,
        },
        protocol: PortProtocol::Http,
        service: None,
        endpoints: vec![ClusterEndpoint {
            addr,
            workload: None,
            weight: 1,
        }],
        dns: Vec::new(),
        service_entry: None,
        policy: TrafficPolicy {
            tls,
            source: Some(rule()),
            // Counts every connect failure, so the tests can see it was counted.
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: None,
                consecutive_gateway_errors: Some(100),
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 10,
                min_health_percent: 0,
            }),
            ..TrafficPolicy::default()
        },
        version: None,
    })
}

fn cluster(addr: EndpointAddr, tls: Option<UpstreamTls>) -> Arc<Cluster> {
    cluster_for(HOST, addr, tls)
}

fn originate(
    client_certificate: Option<ClientCertificate>,
    verify: ServerVerification,
    sni: Option<&str>,
) -> Option<UpstreamTls> {
    Some(UpstreamTls::Originate(TlsOrigination {
        client_certificate,
        verify,
        sni: sni.map(Into::into),
    }))
}

fn verify(ca: &Path, subject_alt_names: &[&str]) -> ServerVerification {
    ServerVerification::Verify {
        roots: TrustRoots::CaFile(path(ca)),
        subject_alt_names: subject_alt_names.iter().map(|s| Arc::from(*s)).collect(),
    }
}

async fn upstreams() -> Upstreams {
    let sockets = CurrentNetnsSocketFactory
        .enter(crate::testing::own_netns(), "shop/client")
        .await
        .unwrap();
    let metrics = Arc::new(UpstreamMetrics::register(&mut Registry::default()));
    Upstreams::new(sockets, Duration::from_secs(2), metrics, Arc::default())
}

fn request(version: HttpVersion) -> http::Request<Body> {
    let uri = match version {
        HttpVersion::Http1 => "/".to_owned(),
        HttpVersion::Http2 => format!("http://{HOST}/"),
    };
    http::Request::builder()
        .uri(uri)
        .header(http::header::HOST, HOST)
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// One request through the cluster: (status, body).
async fn exchange(
    state: &ClusterState,
    version: HttpVersion,
) -> Result<(StatusCode, String), UpstreamError> {
    let picked = state.pick(None, &[])?;
    let response = state.send(&picked, request(version), version).await?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

/// The consecutive gateway errors outlier detection counted against the only endpoint.
fn gateway_errors(upstreams: &Upstreams, state: &ClusterState) -> u32 {
    let dump = upstreams.dump();
    dump.clusters[&cluster_name(state.key())].endpoints[0].consecutive_gateway_errors
}

/// The PKI every test uses: the servers' CA, another CA, a server certificate of each, a
/// client certificate of the first.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    other_ca: Ca,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        Self {
            ca: Ca::new(&path, "servers"),
            other_ca: Ca::new(&path, "other"),
            dir: path,
            _dir: dir,
        }
    }

    fn server(&self) -> Leaf {
        self.ca
            .issue(&self.dir, "server", ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self) -> Leaf {
        self.ca
            .issue(&self.dir, "client", ExtendedKeyUsagePurpose::ClientAuth)
    }
}

#[tokio::test]
async fn origination_verifies_the_server_as_the_rule_says() {
    let pki = Pki::new();
    let (ca, other_ca) = (&pki.ca.pem_path, &pki.other_ca.pem_path);
    let client = pki.client();
    let client_files = ClientCertificate::Files {
        certificate_chain: path(&client.cert_path),
        private_key: path(&client.key_path),
    };
    enum Server {
        Plain,
        Tls12,
        /// Issued by the other CA: untrusted under `ca`.
        Untrusted,
        /// Requires a client certificate of `ca`.
        Mutual,
    }
    /// What the cluster should get: the server's view of the handshake, or an error text.
    enum Want {
        Ok(Seen),
        Err(&'static str),
    }
    let seen = |sni: &str, alpn: &str| Seen {
        sni: Some(sni.to_owned()),
        alpn: Some(alpn.to_owned()),
        client_certificate: false,
        version: Some(rustls::ProtocolVersion::TLSv1_3),
    };
    let cases: Vec<(&str, Server, Option<UpstreamTls>, HttpVersion, Want)> = vec![
        (
            "SIMPLE with the server's CA: SNI is the host, HTTP/1.1 offers http/1.1",
            Server::Plain,
            originate(None, verify(ca, &[]), None),
            HttpVersion::Http1,
            Want::Ok(seen(HOST, "http/1.1")),
        ),
        (
            "an h2 pool offers h2",
            Server::Plain,
            originate(None, verify(ca, &[]), None),
            HttpVersion::Http2,
            Want::Ok(seen(HOST, "h2")),
        ),
        (
            "a server that speaks only TLS 1.2",
            Server::Tls12,
            originate(None, verify(ca, &[]), None),
            HttpVersion::Http1,
            Want::Ok(Seen {
                version: Some(rustls::ProtocolVersion::TLSv1_2),
                ..seen(HOST, "http/1.1")
            }),
        ),
        (
            "SIMPLE with another CA",
            Server::Plain,
            originate(None, verify(other_ca, &[]), None),
            HttpVersion::Http1,
            Want::Err("UnknownIssuer"),
        ),
        (
            "the sni is sent and verified when no subjectAltNames are given",
            Server::Plain,
            originate(None, verify(ca, &[]), Some("front.external.test")),
            HttpVersion::Http1,
            Want::Err("certificate not valid for name \"front.external.test\""),
        ),
        (
            "subjectAltNames decide, whatever the sni (DNS SAN)",
            Server::Plain,
            originate(
                None,
                verify(ca, &["wrong.test", HOST]),
                Some("front.external.test"),
            ),
            HttpVersion::Http1,
            Want::Ok(seen("front.external.test", "http/1.1")),
        ),
        (
            "a URI SAN matches exactly",
            Server::Plain,
            originate(None, verify(ca, &[URI_SAN]), None),
            HttpVersion::Http1,
            Want::Ok(seen(HOST, "http/1.1")),
        ),
        (
            "subjectAltNames the certificate does not carry",
            Server::Plain,
            originate(
                None,
                verify(ca, &["wrong.test", "spiffe://external.test/other"]),
                None,
            ),
            HttpVersion::Http1,
            Want::Err("none of tls.subjectAltNames"),
        ),
        (
            "subjectAltNames still need the chain to verify",
            Server::Untrusted,
            originate(None, verify(ca, &[HOST]), None),
            HttpVersion::Http1,
            Want::Err("UnknownIssuer"),
        ),
        (
            "insecureSkipVerify accepts an untrusted certificate",
            Server::Untrusted,
            originate(None, ServerVerification::InsecureSkipVerify, None),
            HttpVersion::Http1,
            Want::Ok(seen(HOST, "http/1.1")),
        ),
        (
            "MUTUAL presents the client certificate the server requires",
            Server::Mutual,
            originate(Some(client_files.clone()), verify(ca, &[]), None),
            HttpVersion::Http1,
            Want::Ok(Seen {
                client_certificate: true,
                ..seen(HOST, "http/1.1")
            }),
        ),
    ];
    let upstreams = upstreams().await;
    for (name, server, tls, version, want) in cases {
        let mut setup = ServerSetup::new(match server {
            Server::Untrusted => {
                pki.other_ca
                    .issue(&pki.dir, "untrusted", ExtendedKeyUsagePurpose::ServerAuth)
            }
            _ => pki.server(),
        });
        match server {
            Server::Tls12 => setup.tls12_only = true,
            Server::Mutual => setup.client_ca = Some(pki.ca.issuer.der().clone()),
            Server::Plain | Server::Untrusted => {}
        }
        let server = TlsServer::start(setup).await;
        let state = upstreams.cluster(&cluster(server.addr, tls));
        let result = exchange(&state, version).await;
        match want {
            Want::Ok(seen) => {
                let (status, body) = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    (status, body.as_str()),
                    (StatusCode::OK, "tls ok"),
                    "{name}"
                );
                assert_eq!(server.seen(), vec![seen], "{name}");
            }
            Want::Err(text) => {
                let error = result.err().unwrap_or_else(|| panic!("{name}: succeeded"));
                let message = error.to_string();
                assert!(
                    matches!(&error, UpstreamError::Tls { source, .. } if source.is_handshake()),
                    "{name}: {message}"
                );
                assert!(message.contains(text), "{name}: {message}");
                assert!(
                    error.is_connect_failure(),
                    "{name}: retried on connect-failure"
                );
                assert_eq!(
                    error.response_flag(),
                    ResponseFlags::from(ResponseFlag::UpstreamConnectionFailure),
                    "{name}"
                );
                assert_eq!(server.accepted(), 1, "{name}");
                assert!(server.seen().is_empty(), "{name}: no handshake completed");
            }
        }
    }
}

#[tokio::test]
async fn l4_connections_are_tls_without_alpn_and_failures_count_against_the_endpoint() {
    let pki = Pki::new();
    let upstreams = upstreams().await;
    let mut setup = ServerSetup::new(pki.server());
    setup.echo = true;
    let server = TlsServer::start(setup).await;

    let state = upstreams.cluster(&cluster(
        server.addr,
        originate(None, verify(&pki.ca.pem_path, &[]), None),
    ));
    let picked = state.pick(None, &[]).unwrap();
    let (mut stream, _held) = state.connect_tcp(&picked, None).await.unwrap();
    assert!(
        matches!(stream, Transport::Tls(_)),
        "an originated connection is TLS"
    );
    assert!(stream.plain_tcp().is_none(), "never spliced");
    stream.write_all(b"ping over tls").await.unwrap();
    let mut echoed = [0; 13];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over tls");
    assert_eq!(
        server.seen(),
        vec![Seen {
            sni: Some(HOST.to_owned()),
            alpn: None,
            client_certificate: false,
            version: Some(rustls::ProtocolVersion::TLSv1_3),
        }]
    );
    drop(stream);

    // The same endpoint under a rule with the wrong CA: a connect failure, counted.
    let wrong = upstreams.cluster(&cluster(
        server.addr,
        originate(None, verify(&pki.other_ca.pem_path, &[]), None),
    ));
    assert_eq!(gateway_errors(&upstreams, &wrong), 0);
    let picked = wrong.pick(None, &[]).unwrap();
    let error = wrong.connect_tcp(&picked, None).await.unwrap_err();
    assert!(error.is_connect_failure(), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    assert_eq!(
        gateway_errors(&upstreams, &wrong),
        1,
        "outlier detection counted it"
    );
}

#[tokio::test]
async fn clusters_that_cannot_originate_refuse_without_connecting() {
    let pki = Pki::new();
    let not_pem = pki.dir.join("not-pem.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = pki.dir.join("missing.pem");
    let client = pki.client();
    let credential_roots = ServerVerification::Verify {
        roots: TrustRoots::Credential("api-ca".into()),
        subject_alt_names: Vec::new(),
    };
    let cases: Vec<(&str, &str, Option<UpstreamTls>, Vec<String>)> = vec![
        (
            "a rejected rule",
            HOST,
            Some(UpstreamTls::Refuse { rule: rule() }),
            vec![format!("{RULE} asks for TLS but was rejected")],
        ),
        (
            "credentialName for the CA",
            HOST,
            originate(None, credential_roots, None),
            vec![
                format!("{RULE}: tls.credentialName \"api-ca\""),
                "needs the Kubernetes mode".to_owned(),
            ],
        ),
        (
            "credentialName for the client certificate",
            HOST,
            originate(
                Some(ClientCertificate::Credential("api-client".into())),
                verify(&pki.ca.pem_path, &[]),
                None,
            ),
            vec![
                format!("{RULE}: tls.credentialName \"api-client\""),
                "needs the Kubernetes mode".to_owned(),
            ],
        ),
        (
            "a missing CA file",
            HOST,
            originate(None, verify(&missing, &[]), None),
            vec![format!(
                "{RULE}: cannot read tls.caCertificates {}",
                missing.display()
            )],
        ),
        (
            "a CA file without PEM",
            HOST,
            originate(None, verify(&not_pem, &[]), None),
            vec![format!(
                "{RULE}: tls.caCertificates {}: no PEM CERTIFICATE block",
                not_pem.display()
            )],
        ),
        (
            "a private key file without a key",
            HOST,
            originate(
                Some(ClientCertificate::Files {
                    certificate_chain: path(&client.cert_path),
                    private_key: path(&client.cert_path),
                }),
                verify(&pki.ca.pem_path, &[]),
                None,
            ),
            vec![format!(
                "{RULE}: tls.privateKey {}: no usable PEM private key",
                client.cert_path.display()
            )],
        ),
        (
            "a wildcard host without sni",
            "*.external.test",
            originate(None, verify(&pki.ca.pem_path, &[]), None),
            vec![
                format!("{RULE}: host \"*.external.test\""),
                "set tls.sni".to_owned(),
            ],
        ),
    ];
    let upstreams = upstreams().await;
    let server = TlsServer::start(ServerSetup::new(pki.server())).await;
    for (name, host, tls, texts) in cases {
        let state = upstreams.cluster(&cluster_for(host, server.addr, tls));
        let picked = state.pick(None, &[]).unwrap();
        let http = exchange(&state, HttpVersion::Http1).await.unwrap_err();
        let l4 = state.connect_tcp(&picked, None).await.unwrap_err();
        for error in [&http, &l4] {
            let message = error.to_string();
            assert!(
                matches!(error, UpstreamError::Tls { source, .. } if !source.is_handshake()),
                "{name}: {message}"
            );
            for text in &texts {
                assert!(message.contains(text.as_str()), "{name}: {message}");
            }
            assert_eq!(
                error.response_flag(),
                ResponseFlags::from(ResponseFlag::UpstreamConnectionFailure),
                "{name}"
            );
            assert!(
                !error.is_connect_failure(),
                "{name}: not retried: another try is refused the same way"
            );
        }
        assert_eq!(
            gateway_errors(&upstreams, &state),
            0,
            "{name}: not the endpoint's fault"
        );
    }
    assert_eq!(server.accepted(), 0, "no refused cluster connected");
}

#[tokio::test]
async fn pooled_connections_are_reused_only_under_the_policy_they_were_made_with() {
    let pki = Pki::new();
    let upstreams = upstreams().await;
    let server = TlsServer::start(ServerSetup::new(pki.server())).await;
    let simple = originate(None, verify(&pki.ca.pem_path, &[]), None);
    let state = upstreams.cluster(&cluster(server.addr, simple.clone()));
    exchange(&state, HttpVersion::Http1).await.unwrap();
    exchange(&state, HttpVersion::Http1).await.unwrap();
    assert_eq!(server.accepted(), 1, "the idle TLS connection is reused");

    // A reload with the same `tls`: the pool stays.
    upstreams.cluster(&cluster(server.addr, simple));
    exchange(&state, HttpVersion::Http1).await.unwrap();
    assert_eq!(
        server.accepted(),
        1,
        "an unchanged policy keeps its connections"
    );

    // Another `tls`: connections secured the old way are not reused.
    upstreams.cluster(&cluster(
        server.addr,
        originate(None, verify(&pki.ca.pem_path, &[HOST]), None),
    ));
    exchange(&state, HttpVersion::Http1).await.unwrap();
    assert_eq!(server.accepted(), 2, "a changed policy dials anew");
    exchange(&state, HttpVersion::Http2).await.unwrap();
    exchange(&state, HttpVersion::Http2).await.unwrap();
    assert_eq!(server.accepted(), 3, "h2 shares one connection");
    upstreams.cluster(&cluster(
        server.addr,
        originate(None, ServerVerification::InsecureSkipVerify, None),
    ));
    exchange(&state, HttpVersion::Http2).await.unwrap();
    assert_eq!(
        server.accepted(),
        4,
        "not the h2 connection of the old policy either"
    );
}

#[tokio::test]
async fn a_ca_file_fixed_later_is_used_at_the_next_table_change() {
    let pki = Pki::new();
    let upstreams = upstreams().await;
    let server = TlsServer::start(ServerSetup::new(pki.server())).await;
    let later = pki.dir.join("later-ca.pem");
    let tls = originate(None, verify(&later, &[]), None);
    let state = upstreams.cluster(&cluster(server.addr, tls.clone()));
    let error = exchange(&state, HttpVersion::Http1).await.unwrap_err();
    assert!(error.to_string().contains("cannot read"), "{error}");
    std::fs::copy(&pki.ca.pem_path, &later).unwrap();
    upstreams.cluster(&cluster(server.addr, tls));
    let (status, _) = exchange(&state, HttpVersion::Http1).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn plain_policies_leave_the_dial_alone() {
    // `DISABLE`, `ISTIO_MUTUAL` and no `tls` at all: HBONE's business, not origination's.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!("bound IPv4");
    };
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 5];
                if tcp.read_exact(&mut buf).await.is_ok() {
                    let _ = tcp.write_all(&buf).await;
                }
            });
        }
    });
    let upstreams = upstreams().await;
    for tls in [
        None,
        Some(UpstreamTls::Disable),
        Some(UpstreamTls::IstioMutual {
            sni: None,
            subject_alt_names: Vec::new(),
        }),
    ] {
        let state = upstreams.cluster(&cluster(addr.into(), tls.clone()));
        let picked = state.pick(None, &[]).unwrap();
        let (mut stream, _held) = state.connect_tcp(&picked, None).await.unwrap();
        assert!(matches!(stream, Transport::Tcp(_)), "{tls:?}");
        stream.write_all(b"plain").await.unwrap();
        let mut echoed = [0; 5];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"plain", "{tls:?}");
    }
}
