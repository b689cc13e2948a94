//! Real rustls handshakes (over in-memory duplex pipes) against the configs gateway servers
//! get: certificates from rcgen CAs, and from shunt-identity's CA for `ISTIO_MUTUAL`.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ProtocolVersion};
use shunt_api::credentials::GatewayCredential;
use shunt_identity::ca::{CaSigner, SignerOptions};
use shunt_identity::manager::ManagerConfig;
use shunt_identity::provider::InProcessCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::*;
use crate::upstream::SkipVerify;

static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

const A_HOST: &str = "a.example.test";
const B_HOST: &str = "b.example.test";
const CLIENT_SAN: &str = "client.example.test";

/// A CA made with rcgen.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key, PEM.
#[derive(Clone)]
struct Leaf {
    chain: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A leaf for `dns` names and `uris`, for a server or a client.
    fn leaf(&self, dns: &[&str], uris: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, host: &str) -> Leaf {
        self.leaf(&[host], &[], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, dns: &[&str], uris: &[&str]) -> Leaf {
        self.leaf(dns, uris, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn present(name: &str, leaf: &Leaf, ca: Option<&Ca>) -> GatewayCredential {
    GatewayCredential {
        namespace: "edge".into(),
        name: name.into(),
        resource_version: None,
        material: CredentialMaterial::Present {
            certificate_chain: leaf.chain.clone(),
            private_key: leaf.key.clone(),
            ca_certificates: ca.map(Ca::pem),
        },
    }
}

fn secret(name: &str) -> Credential {
    Credential::Secret {
        namespace: "edge".into(),
        name: name.into(),
    }
}

fn tls(mode: ServerTlsMode) -> ServerTls {
    ServerTls {
        https_redirect: false,
        mode: Some(mode),
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls13,
        cipher_suites: Vec::new(),
        subject_alt_names: Vec::new(),
    }
}

fn server(index: usize, tls: ServerTls) -> GatewayServer {
    GatewayServer {
        gateway: ObjectRef {
            kind: "Gateway",
            namespace: "edge".into(),
            name: "web".into(),
        },
        index,
        name: None,
        hosts: Vec::new(),
        tls: Some(Arc::new(tls)),
    }
}

fn gateway_tls() -> (GatewayTls, Arc<GatewayMetrics>) {
    let metrics = Arc::new(GatewayMetrics::default());
    let store = Arc::new(CredentialStore::new(metrics.clone()));
    (GatewayTls::new(store, metrics.clone()), metrics)
}

fn errors(metrics: &GatewayMetrics, credential: &str, reason: &'static str) -> u64 {
    metrics
        .credential_errors(&CredentialErrorLabels {
            gateway: "edge/web".into(),
            credential: credential.into(),
            reason,
        })
        .get()
}

#[expect(deprecated, reason = "ring is the provider under test")]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// How a test client connects.
struct Client {
    roots: RootCertStore,
    cert: Option<Leaf>,
    versions: &'static [&'static SupportedProtocolVersion],
    suites: Option<Vec<SupportedCipherSuite>>,
    alpn: &'static [&'static str],
    sni: &'static str,
}

impl Client {
    fn trusting(ca: &Ca, sni: &'static str) -> Self {
        Self {
            roots: ca.roots(),
            cert: None,
            versions: rustls::ALL_VERSIONS,
            suites: None,
            alpn: &[],
            sni,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut provider = ring();
        if let Some(suites) = &self.suites {
            provider.cipher_suites.clone_from(suites);
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(self.versions)
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(leaf.chain.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

/// What the client saw of an established connection.
#[derive(Debug)]
struct Seen {
    /// The served leaf's SANs.
    sans: Vec<String>,
    alpn: Option<String>,
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    /// The SANs of the client certificate the server got.
    client_sans: Vec<String>,
}

/// Both ends of an established connection.
struct Open {
    client: client::TlsStream<DuplexStream>,
    server: server::TlsStream<DuplexStream>,
}

impl Open {
    fn seen(&self) -> Seen {
        let (_, client) = self.client.get_ref();
        let (_, server) = self.server.get_ref();
        let sans = |certs: Option<&[CertificateDer<'_>]>| {
            certs
                .and_then(|certs| certs.first())
                .map(|leaf| cert::subject_alt_names(leaf, "test").unwrap())
                .unwrap_or_default()
        };
        Seen {
            sans: sans(client.peer_certificates()),
            alpn: client
                .alpn_protocol()
                .map(|p| String::from_utf8(p.to_vec()).unwrap()),
            version: client.protocol_version(),
            suite: client.negotiated_cipher_suite().map(|s| s.suite()),
            client_sans: sans(server.peer_certificates()),
        }
    }

    /// Bytes both ways: the connection still works.
    async fn exchange(&mut self) {
        self.client.write_all(b"ping").await.unwrap();
        self.client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        self.server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        self.server.write_all(b"pong").await.unwrap();
        self.server.flush().await.unwrap();
        self.client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}

/// A handshake; on failure, each side's error.
async fn connect(
    config: Arc<ServerConfig>,
    client: ClientConfig,
    sni: &str,
) -> Result<Open, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(config);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let (client, server) = tokio::join!(
        connector.connect(name, client_io),
        acceptor.accept(server_io)
    );
    match (client, server) {
        (Ok(client), Ok(server)) => {
            let mut open = Open { client, server };
            // TLS 1.3 clients learn of a refused certificate only at their first read.
            open.exchange().await;
            Ok(open)
        }
        (client, server) => Err(format!(
            "client: {:?}; server: {:?}",
            client.err().map(|e| e.to_string()),
            server.err().map(|e| e.to_string())
        )),
    }
}

/// Like [`connect`], but a failure may show only in the first exchange (TLS 1.3's client
/// certificate is checked after the client's handshake completes).
async fn try_connect(
    config: Arc<ServerConfig>,
    client: ClientConfig,
    sni: &str,
) -> Result<Seen, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(config);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let (client, server) = tokio::join!(
        async {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"c").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, std::io::Error>(tls)
        },
        async {
            let mut tls = acceptor.accept(server_io).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(b"s").await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(tls)
        }
    );
    match (client, server) {
        (Ok(client), Ok(server)) => Ok(Open { client, server }.seen()),
        (client, server) => Err(format!(
            "client: {:?}; server: {:?}",
            client.err().map(|e| e.to_string()),
            server.err().map(|e| e.to_string())
        )),
    }
}

/// An established connection as a case expects it: the served certificate names `host`,
/// with this ALPN, version and suite (when given), and the server saw a client certificate
/// naming `client_san` (when given; none otherwise).
#[derive(Clone, Copy)]
struct Established {
    host: &'static str,
    alpn: Option<&'static str>,
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    client_san: Option<&'static str>,
}

/// What a case expects.
enum Expect {
    Ok(Established),
    /// Refused, the error text containing this.
    Refused(&'static str),
}

const A: Established = Established {
    host: A_HOST,
    alpn: None,
    version: None,
    suite: None,
    client_san: None,
};

#[tokio::test]
async fn terminating_servers_apply_their_tls_settings() {
    let ca = Ca::new("site");
    let other_ca = Ca::new("other");
    let site_a = ca.server(A_HOST);
    let good_client = ca.client(&[CLIENT_SAN], &["spiffe://partners/ns/x/sa/y"]);
    let wrong_client = ca.client(&["stranger.example.test"], &[]);
    let foreign_client = other_ca.client(&[CLIENT_SAN], &[]);
    let (gateway, metrics) = gateway_tls();
    gateway.credentials().replace(vec![
        present("a", &site_a, Some(&ca)),
        present("no-ca", &site_a, None),
        GatewayCredential {
            material: CredentialMaterial::Unusable {
                reason: "Secret edge/broken: no tls.key".into(),
            },
            ..present("broken", &site_a, None)
        },
    ]);

    let mutual = |sans: &[&str]| ServerTls {
        subject_alt_names: sans.iter().map(|s| Arc::from(*s)).collect(),
        ..tls(ServerTlsMode::Mutual(secret("a")))
    };
    let with_client = |leaf: &Leaf| Client {
        cert: Some(leaf.clone()),
        ..Client::trusting(&ca, A_HOST)
    };
    let ecdsa = |suites: &[SupportedCipherSuite]| Client {
        versions: TLS12_ONLY,
        suites: Some(suites.to_vec()),
        ..Client::trusting(&ca, A_HOST)
    };
    let aes128 = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let aes256 = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    let restricted = ServerTls {
        cipher_suites: vec!["ECDHE-ECDSA-AES256-GCM-SHA384".into()],
        ..tls(ServerTlsMode::Simple(secret("a")))
    };

    let cases: Vec<(&str, ServerTls, GatewayProtocol, Client, Expect)> = vec![
        (
            "SIMPLE",
            tls(ServerTlsMode::Simple(secret("a"))),
            GatewayProtocol::Tls,
            Client::trusting(&ca, A_HOST),
            Expect::Ok(Established {
                version: Some(ProtocolVersion::TLSv1_3),
                ..A
            }),
        ),
        (
            "SIMPLE, the client trusts another CA",
            tls(ServerTlsMode::Simple(secret("a"))),
            GatewayProtocol::Tls,
            Client::trusting(&other_ca, A_HOST),
            Expect::Refused("UnknownIssuer"),
        ),
        (
            "MUTUAL without a client certificate",
            mutual(&[]),
            GatewayProtocol::Https,
            Client::trusting(&ca, A_HOST),
            Expect::Refused("CertificateRequired"),
        ),
        (
            "MUTUAL, any SAN",
            mutual(&[]),
            GatewayProtocol::Https,
            with_client(&wrong_client),
            Expect::Ok(Established {
                client_san: Some("stranger.example.test"),
                ..A
            }),
        ),
        (
            "MUTUAL, the DNS SAN listed",
            mutual(&["other.example.test", CLIENT_SAN]),
            GatewayProtocol::Https,
            with_client(&good_client),
            Expect::Ok(Established {
                client_san: Some(CLIENT_SAN),
                ..A
            }),
        ),
        (
            "MUTUAL, the URI SAN listed",
            mutual(&["spiffe://partners/ns/x/sa/y"]),
            GatewayProtocol::Https,
            with_client(&good_client),
            Expect::Ok(Established {
                client_san: Some(CLIENT_SAN),
                ..A
            }),
        ),
        (
            "MUTUAL, a SAN not listed",
            mutual(&[CLIENT_SAN]),
            GatewayProtocol::Https,
            with_client(&wrong_client),
            Expect::Refused("ApplicationVerificationFailure"),
        ),
        (
            "MUTUAL, a client of another CA",
            mutual(&[]),
            GatewayProtocol::Https,
            with_client(&foreign_client),
            Expect::Refused("UnknownIssuer"),
        ),
        (
            "MUTUAL over TLS 1.2 without a client certificate",
            mutual(&[]),
            GatewayProtocol::Https,
            Client {
                versions: TLS12_ONLY,
                ..Client::trusting(&ca, A_HOST)
            },
            Expect::Refused("peer sent no certificates"),
        ),
        (
            "MUTUAL, but the Secret has no CA",
            tls(ServerTlsMode::Mutual(secret("no-ca"))),
            GatewayProtocol::Https,
            with_client(&good_client),
            Expect::Refused("no server certificate chain resolved"),
        ),
        (
            "minProtocolVersion 1.3 against a TLS 1.2 client",
            ServerTls {
                min_version: TlsVersion::Tls13,
                ..tls(ServerTlsMode::Simple(secret("a")))
            },
            GatewayProtocol::Tls,
            Client {
                versions: TLS12_ONLY,
                ..Client::trusting(&ca, A_HOST)
            },
            Expect::Refused("ProtocolVersion"),
        ),
        (
            "maxProtocolVersion 1.2",
            ServerTls {
                max_version: TlsVersion::Tls12,
                ..tls(ServerTlsMode::Simple(secret("a")))
            },
            GatewayProtocol::Tls,
            Client::trusting(&ca, A_HOST),
            Expect::Ok(Established {
                version: Some(ProtocolVersion::TLSv1_2),
                ..A
            }),
        ),
        (
            "cipherSuites: the client offers only another suite",
            restricted.clone(),
            GatewayProtocol::Tls,
            ecdsa(&[aes128]),
            Expect::Refused("HandshakeFailure"),
        ),
        (
            "cipherSuites: the listed suite is chosen",
            restricted.clone(),
            GatewayProtocol::Tls,
            ecdsa(&[aes128, aes256]),
            Expect::Ok(Established {
                suite: Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
                ..A
            }),
        ),
        (
            "cipherSuites do not restrict TLS 1.3",
            restricted,
            GatewayProtocol::Tls,
            Client::trusting(&ca, A_HOST),
            Expect::Ok(Established {
                version: Some(ProtocolVersion::TLSv1_3),
                ..A
            }),
        ),
        (
            "an unsupported cipher suite refuses the server",
            ServerTls {
                cipher_suites: vec!["AES128-SHA".into()],
                ..tls(ServerTlsMode::Simple(secret("a")))
            },
            GatewayProtocol::Tls,
            Client::trusting(&ca, A_HOST),
            Expect::Refused("no server certificate chain resolved"),
        ),
        (
            "ALPN on an HTTPS server: h2",
            tls(ServerTlsMode::Simple(secret("a"))),
            GatewayProtocol::Https,
            Client {
                alpn: &["http/1.1", "h2"],
                ..Client::trusting(&ca, A_HOST)
            },
            Expect::Ok(Established {
                alpn: Some("h2"),
                ..A
            }),
        ),
        (
            "ALPN on a GRPC server, an HTTP/1.1 client",
            tls(ServerTlsMode::Simple(secret("a"))),
            GatewayProtocol::Grpc,
            Client {
                alpn: &["http/1.1"],
                ..Client::trusting(&ca, A_HOST)
            },
            Expect::Ok(Established {
                alpn: Some("http/1.1"),
                ..A
            }),
        ),
        (
            "no ALPN on a TLS server",
            tls(ServerTlsMode::Simple(secret("a"))),
            GatewayProtocol::Tls,
            Client {
                alpn: &["h2"],
                ..Client::trusting(&ca, A_HOST)
            },
            Expect::Ok(A),
        ),
        (
            "a Secret the agent did not send",
            tls(ServerTlsMode::Simple(secret("absent"))),
            GatewayProtocol::Https,
            Client::trusting(&ca, A_HOST),
            Expect::Refused("no server certificate chain resolved"),
        ),
        (
            "an unusable Secret",
            tls(ServerTlsMode::Simple(secret("broken"))),
            GatewayProtocol::Https,
            Client::trusting(&ca, A_HOST),
            Expect::Refused("no server certificate chain resolved"),
        ),
        (
            "ISTIO_MUTUAL on a proxy without mesh certificates",
            tls(ServerTlsMode::IstioMutual),
            GatewayProtocol::Https,
            Client::trusting(&ca, A_HOST),
            Expect::Refused("no server certificate chain resolved"),
        ),
    ];
    for (index, (case, settings, protocol, client, expect)) in cases.into_iter().enumerate() {
        let config = gateway.server_config(&server(index, settings), protocol, None);
        let outcome = try_connect(config, client.config(), client.sni).await;
        match (expect, outcome) {
            (
                Expect::Ok(Established {
                    host,
                    alpn,
                    version,
                    suite,
                    client_san,
                }),
                Ok(seen),
            ) => {
                assert_eq!(seen.sans, [host], "{case}");
                assert_eq!(seen.alpn.as_deref(), alpn, "{case}");
                if let Some(version) = version {
                    assert_eq!(seen.version, Some(version), "{case}");
                }
                if let Some(suite) = suite {
                    assert_eq!(seen.suite, Some(suite), "{case}");
                }
                match client_san {
                    Some(san) => assert!(seen.client_sans.iter().any(|s| s == san), "{case}"),
                    None => assert!(seen.client_sans.is_empty(), "{case}"),
                }
            }
            (Expect::Refused(reason), Err(error)) => {
                assert!(error.contains(reason), "{case}: {error}");
            }
            (Expect::Ok(_), Err(error)) => panic!("{case}: refused: {error}"),
            (Expect::Refused(_), Ok(seen)) => panic!("{case}: established: {seen:?}"),
        }
    }
    let counted = [
        ("edge/no-ca", "invalid"),
        ("edge/a", "settings"),
        ("edge/absent", "missing"),
        ("edge/broken", "unusable"),
        ("ISTIO_MUTUAL", "no_workload_certificate"),
    ];
    for (credential, reason) in counted {
        assert_eq!(
            errors(&metrics, credential, reason),
            1,
            "{credential} {reason}"
        );
    }
    assert_eq!(errors(&metrics, "edge/a", "missing"), 0);
}

#[tokio::test]
async fn each_server_serves_its_own_certificate_and_a_broken_one_spoils_no_other() {
    let ca = Ca::new("site");
    let (gateway, metrics) = gateway_tls();
    gateway.credentials().replace(vec![
        present("a", &ca.server(A_HOST), None),
        present("b", &ca.server(B_HOST), None),
    ]);
    let servers = [
        (
            server(0, tls(ServerTlsMode::Simple(secret("a")))),
            Some(A_HOST),
        ),
        (
            server(1, tls(ServerTlsMode::Simple(secret("b")))),
            Some(B_HOST),
        ),
        (server(2, tls(ServerTlsMode::Simple(secret("c")))), None),
    ];
    for round in 0..2 {
        for (server, host) in &servers {
            let config = gateway.server_config(server, GatewayProtocol::Https, None);
            let sni = host.unwrap_or(A_HOST);
            let outcome = try_connect(config, Client::trusting(&ca, sni).config(), sni).await;
            match host {
                Some(host) => assert_eq!(outcome.unwrap().sans, [*host], "round {round}"),
                None => assert!(outcome.is_err(), "round {round}"),
            }
        }
    }
    assert_eq!(errors(&metrics, "edge/c", "missing"), 2);
}

#[tokio::test]
async fn configs_are_cached_until_a_credential_changes() {
    let ca = Ca::new("site");
    let (gateway, _) = gateway_tls();
    let leaf = ca.server(A_HOST);
    gateway
        .credentials()
        .replace(vec![present("a", &leaf, None)]);
    let https = server(0, tls(ServerTlsMode::Simple(secret("a"))));
    let first = gateway.server_config(&https, GatewayProtocol::Https, None);
    let again = gateway.server_config(&https, GatewayProtocol::Https, None);
    assert!(Arc::ptr_eq(&first, &again), "cached");
    let tcp = gateway.server_config(&https, GatewayProtocol::Tcp, None);
    assert!(!Arc::ptr_eq(&first, &tcp), "ALPN differs by protocol");

    gateway
        .credentials()
        .replace(vec![present("a", &leaf, None)]);
    let unchanged = gateway.server_config(&https, GatewayProtocol::Https, None);
    assert!(
        Arc::ptr_eq(&first, &unchanged),
        "the same credentials again"
    );
    gateway
        .credentials()
        .replace(vec![present("a", &ca.server(A_HOST), None)]);
    let rebuilt = gateway.server_config(&https, GatewayProtocol::Https, None);
    assert!(!Arc::ptr_eq(&first, &rebuilt), "a new version");
}

fn leaf_der(leaf: &Leaf) -> Vec<u8> {
    CertificateDer::from_pem_slice(leaf.chain.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_rotated_secret_serves_new_handshakes_while_open_connections_continue() {
    let ca = Ca::new("site");
    let (gateway, _) = gateway_tls();
    let (old, new) = (ca.server(A_HOST), ca.server(A_HOST));
    let https = server(0, tls(ServerTlsMode::Simple(secret("a"))));
    let client = Client::trusting(&ca, A_HOST);
    let served = |open: &Open| {
        let (_, conn) = open.client.get_ref();
        conn.peer_certificates().unwrap()[0].to_vec()
    };

    gateway
        .credentials()
        .replace(vec![present("a", &old, None)]);
    let config = gateway.server_config(&https, GatewayProtocol::Https, None);
    let mut before = connect(config, client.config(), A_HOST).await.unwrap();
    assert_eq!(served(&before), leaf_der(&old));

    gateway
        .credentials()
        .replace(vec![present("a", &new, None)]);
    let config = gateway.server_config(&https, GatewayProtocol::Https, None);
    let mut after = connect(config, client.config(), A_HOST).await.unwrap();
    assert_eq!(
        served(&after),
        leaf_der(&new),
        "new handshakes get the new certificate"
    );
    before.exchange().await;
    after.exchange().await;
    assert_eq!(served(&before), leaf_der(&old));
}

#[tokio::test]
async fn certificate_files_are_read_and_re_read_when_replaced() {
    let ca = Ca::new("site");
    let dir = tempfile::tempdir().unwrap();
    let (gateway, metrics) = gateway_tls();
    let gateway = gateway.with_file_check_interval(Duration::ZERO);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (cert_path, key_path) = (path("tls.crt"), path("tls.key"));
    // Written aside and renamed into place, as a Secret volume's update swaps its files.
    let install = |leaf: &Leaf| {
        std::fs::write(path("new.crt"), &leaf.chain).unwrap();
        std::fs::write(path("new.key"), &leaf.key).unwrap();
        std::fs::rename(path("new.crt"), &cert_path).unwrap();
        std::fs::rename(path("new.key"), &key_path).unwrap();
    };
    let https = server(
        0,
        tls(ServerTlsMode::Simple(Credential::Files {
            certificate: cert_path.as_str().into(),
            private_key: key_path.as_str().into(),
            ca_certificates: None,
        })),
    );
    let client = Client::trusting(&ca, A_HOST);
    let handshake = || async {
        let config = gateway.server_config(&https, GatewayProtocol::Https, None);
        try_connect(config, client.config(), A_HOST).await
    };

    let error = handshake().await.expect_err("no files yet");
    assert!(
        error.contains("no server certificate chain resolved"),
        "{error}"
    );
    assert_eq!(errors(&metrics, &cert_path, "files"), 1);

    let (first, second) = (ca.server(A_HOST), ca.server(A_HOST));
    install(&first);
    let seen = handshake().await.unwrap();
    assert_eq!(seen.sans, [A_HOST]);
    let config = gateway.server_config(&https, GatewayProtocol::Https, None);
    assert!(
        Arc::ptr_eq(
            &config,
            &gateway.server_config(&https, GatewayProtocol::Https, None)
        ),
        "unchanged files: the cached config"
    );
    let mut open = connect(config, client.config(), A_HOST).await.unwrap();

    install(&second);
    let config = gateway.server_config(&https, GatewayProtocol::Https, None);
    let later = connect(config, client.config(), A_HOST).await.unwrap();
    let (_, conn) = later.client.get_ref();
    assert_eq!(
        conn.peer_certificates().unwrap()[0].to_vec(),
        leaf_der(&second)
    );
    open.exchange().await;
}

fn any_server_client(cert: Option<(Vec<CertificateDer<'static>>, String)>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(Arc::new(ring()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        // Any server certificate: the cases below test the server's refusals.
        .with_custom_certificate_verifier(Arc::new(SkipVerify {
            provider: Arc::new(ring()),
        }));
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test]
async fn istio_mutual_uses_the_pods_workload_certificate_and_requires_a_mesh_client() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Arc::new(
        CaSigner::self_signed(dir.path(), "cluster.local", SignerOptions::default()).unwrap(),
    );
    let roots = signer.trust_bundle().clone();
    let ca = InProcessCa::new(signer.clone(), Duration::ZERO);
    let manager = CertManager::new(
        Arc::new(InProcessCa::new(signer, Duration::ZERO)),
        ManagerConfig::default(),
    );
    let id = |sa: &str| -> SpiffeId {
        format!("spiffe://cluster.local/ns/edge/sa/{sa}")
            .parse()
            .unwrap()
    };
    let gateway_id = id("ingressgateway");
    let mut changes = manager.subscribe();
    manager.track(gateway_id.clone());
    tokio::time::timeout(Duration::from_secs(30), async {
        while manager.certificate(&gateway_id).is_none() {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the gateway's certificate");

    let (tls_gateway, metrics) = gateway_tls();
    let tls_gateway = tls_gateway.with_mesh_identity(MeshIdentity {
        manager: manager.clone(),
        roots: roots.clone(),
    });
    let mesh_client = ca.issue(&id("sleep")).unwrap();
    let other_root = Ca::new("not the mesh");
    let stranger = other_root.client(&[CLIENT_SAN], &["spiffe://cluster.local/ns/edge/sa/sleep"]);
    let stranger_chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(stranger.chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let istio_mutual = server(0, tls(ServerTlsMode::IstioMutual));
    let only_sleep = server(
        1,
        ServerTls {
            subject_alt_names: vec!["spiffe://cluster.local/ns/edge/sa/other".into()],
            ..tls(ServerTlsMode::IstioMutual)
        },
    );

    let good =
        shunt_identity::tls::client_config(&mesh_client, gateway_id.clone(), &roots).unwrap();
    let config =
        tls_gateway.server_config(&istio_mutual, GatewayProtocol::Https, Some(&gateway_id));
    let seen = try_connect(config, good.clone(), "gw.edge.svc.cluster.local")
        .await
        .expect("a mesh client");
    assert_eq!(
        seen.sans,
        [gateway_id.to_string()],
        "the gateway's workload certificate"
    );
    assert_eq!(
        seen.client_sans,
        ["spiffe://cluster.local/ns/edge/sa/sleep"]
    );
    assert_eq!(seen.alpn.as_deref(), Some("h2"));

    let refused: [(&str, &GatewayServer, Option<&SpiffeId>, ClientConfig, &str); 5] = [
        (
            "no client certificate",
            &istio_mutual,
            Some(&gateway_id),
            any_server_client(None),
            "CertificateRequired",
        ),
        (
            "a client certificate from another root",
            &istio_mutual,
            Some(&gateway_id),
            any_server_client(Some((stranger_chain, stranger.key.clone()))),
            "UnknownIssuer",
        ),
        (
            "subjectAltNames not naming the client",
            &only_sleep,
            Some(&gateway_id),
            good.clone(),
            "ApplicationVerificationFailure",
        ),
        (
            "no identity for the pod",
            &istio_mutual,
            None,
            good.clone(),
            "no server certificate chain resolved",
        ),
        (
            "an identity this proxy holds no certificate for",
            &istio_mutual,
            Some(&id("untracked")),
            good,
            "no server certificate chain resolved",
        ),
    ];
    for (case, server, identity, client, reason) in refused {
        let config = tls_gateway.server_config(server, GatewayProtocol::Https, identity);
        let error = try_connect(config, client, "gw.edge.svc.cluster.local")
            .await
            .expect_err(case);
        assert!(error.contains(reason), "{case}: {error}");
    }
    assert_eq!(
        errors(&metrics, "ISTIO_MUTUAL", "no_workload_certificate"),
        1
    );
    assert_eq!(
        errors(
            &metrics,
            &id("untracked").to_string(),
            "no_workload_certificate"
        ),
        1
    );
}

#[test]
fn every_supported_cipher_suite_name_maps_to_a_tls12_suite() {
    for name in SUPPORTED_CIPHER_SUITES {
        let suite = tls12_cipher_suite(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(suite.version(), &rustls::version::TLS12, "{name}");
    }
    assert!(tls12_cipher_suite("AES128-GCM-SHA256").is_none());
    let error =
        provider(&["ECDHE-RSA-AES128-GCM-SHA256".into(), "DES-CBC3-SHA".into()]).expect_err("3DES");
    assert!(
        error
            .to_string()
            .contains("\"DES-CBC3-SHA\" is not supported"),
        "{error}"
    );
    assert!(matches!(
        protocol_versions(TlsVersion::Tls13, TlsVersion::Tls12),
        Err(Error::Versions { .. })
    ));
}

#[tokio::test]
async fn refusals_and_unusable_secrets_show_on_the_metrics_endpoint() {
    let metrics = crate::telemetry::metrics::Metrics::new();
    let store = Arc::new(CredentialStore::new(metrics.gateway.clone()));
    let gateway = GatewayTls::new(store, metrics.gateway.clone());
    gateway.credentials().replace(vec![GatewayCredential {
        namespace: "edge".into(),
        name: "broken".into(),
        resource_version: None,
        material: CredentialMaterial::Unusable {
            reason: "Secret edge/broken has no tls.key".into(),
        },
    }]);
    let ca = Ca::new("site");
    let config = gateway.server_config(
        &server(0, tls(ServerTlsMode::Simple(secret("absent")))),
        GatewayProtocol::Https,
        None,
    );
    try_connect(config, Client::trusting(&ca, A_HOST).config(), A_HOST)
        .await
        .expect_err("no certificate");
    let text = metrics.encode().unwrap();
    for line in [
        r#"shunt_gateway_credential_errors_total{gateway="edge/web",credential="edge/absent",reason="missing"} 1"#,
        r#"shunt_gateway_credential_unusable{credential="edge/broken"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}
