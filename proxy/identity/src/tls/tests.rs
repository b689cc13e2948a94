use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::CaSigner;
use crate::test_support::{id, signer, workload_cert, workload_cert_valid};
use crate::trust::TrustBundle;
use crate::workload::WorkloadCert;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/httpbin";

/// What each side saw of a handshake over an in-memory pipe.
struct Outcome {
    client: Result<ClientSide, String>,
    server: Result<ServerSide, String>,
}

#[derive(Debug)]
struct ClientSide {
    peer: Option<SpiffeId>,
    alpn: Option<Vec<u8>>,
}

#[derive(Debug)]
struct ServerSide {
    peer: Option<SpiffeId>,
    alpn: Option<Vec<u8>>,
    sni: Option<String>,
}

use shunt_mesh::spiffe::SpiffeId;

/// Runs one handshake and one byte each way (in TLS 1.3 the client may finish before the
/// server has judged its certificate; the exchange makes a refusal visible to both).
async fn handshake(client: ClientConfig, server: ServerConfig) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(Arc::new(server));
    // A DNS name, so the test shows that the client sends no SNI even when it could.
    let name = ServerName::try_from("httpbin.default.svc.cluster.local").unwrap();
    let client = async move {
        let mut tls = connector
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"c").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        Ok(ClientSide {
            peer: peer_identity(conn),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    };
    let server = async move {
        let mut tls = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(b"s").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        Ok(ServerSide {
            peer: peer_identity(conn),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            sni: conn.server_name().map(str::to_owned),
        })
    };
    let (client, server) = tokio::join!(client, server);
    Outcome { client, server }
}

fn server_for(cert: &WorkloadCert, roots: &TrustBundle) -> ServerConfig {
    server_config(
        Arc::new(FixedCert(cert.certified_key())),
        roots,
        "cluster.local",
    )
    .unwrap()
}

#[tokio::test]
async fn a_good_pair_handshakes_and_names_each_other() {
    let signer = signer();
    let roots = signer.trust_bundle();
    let client_cert = workload_cert(&signer, &id(CLIENT));
    let server_cert = workload_cert(&signer, &id(SERVER));
    let outcome = handshake(
        client_config(&client_cert, id(SERVER), roots).unwrap(),
        server_for(&server_cert, roots),
    )
    .await;
    let client = outcome.client.unwrap();
    let server = outcome.server.unwrap();
    assert_eq!(server.peer, Some(id(CLIENT)), "the source principal");
    assert_eq!(client.peer, Some(id(SERVER)));
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(server.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(server.sni, None, "HBONE sends no SNI");
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Server,
}

#[tokio::test]
async fn verifiers_refuse_the_wrong_peer() {
    let signer = signer();
    let roots = signer.trust_bundle().clone();
    let other_ca = signer_other();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let good_client = workload_cert(&signer, &id(CLIENT));
    let good_server = workload_cert(&signer, &id(SERVER));

    // (case, client's cert, the server identity it expects, server's cert, who refuses, why)
    let cases: Vec<(&str, WorkloadCert, &str, WorkloadCert, Side, &str)> = vec![
        (
            "server's SAN is not the expected identity",
            workload_cert(&signer, &id(CLIENT)),
            "spiffe://cluster.local/ns/default/sa/reviews",
            workload_cert(&signer, &id(SERVER)),
            Side::Client,
            "but spiffe://cluster.local/ns/default/sa/reviews was expected",
        ),
        (
            "server from another CA",
            workload_cert(&signer, &id(CLIENT)),
            SERVER,
            workload_cert(&other_ca, &id(SERVER)),
            Side::Client,
            "UnknownIssuer",
        ),
        (
            "server's certificate expired",
            workload_cert(&signer, &id(CLIENT)),
            SERVER,
            workload_cert_valid(&signer, &id(SERVER), now - 2 * hour, now - hour),
            Side::Client,
            "certificate expired",
        ),
        (
            "client from another trust domain",
            workload_cert(&signer, &id("spiffe://evil.local/ns/default/sa/sleep")),
            SERVER,
            workload_cert(&signer, &id(SERVER)),
            Side::Server,
            "not in trust domain cluster.local",
        ),
        (
            "client from another CA",
            workload_cert(&other_ca, &id(CLIENT)),
            SERVER,
            workload_cert(&signer, &id(SERVER)),
            Side::Server,
            "UnknownIssuer",
        ),
        (
            "client's certificate expired",
            workload_cert_valid(&signer, &id(CLIENT), now - 2 * hour, now - hour),
            SERVER,
            workload_cert(&signer, &id(SERVER)),
            Side::Server,
            "certificate expired",
        ),
        (
            "client's certificate not valid yet",
            workload_cert_valid(&signer, &id(CLIENT), now + hour, now + 2 * hour),
            SERVER,
            workload_cert(&signer, &id(SERVER)),
            Side::Server,
            "not valid yet",
        ),
    ];
    for (case, client_cert, expected, server_cert, refuser, reason) in cases {
        let outcome = handshake(
            client_config(&client_cert, id(expected), &roots).unwrap(),
            server_for(&server_cert, &roots),
        )
        .await;
        let (refused, other) = match refuser {
            Side::Client => (outcome.client.as_ref().err(), outcome.server.as_ref().err()),
            Side::Server => (outcome.server.as_ref().err(), outcome.client.as_ref().err()),
        };
        let refused = refused.unwrap_or_else(|| panic!("{case}: the {refuser:?} accepted"));
        assert!(refused.contains(reason), "{case}: {refused}");
        assert!(other.is_some(), "{case}: the other side must fail too");
    }
    // The same pair with nothing wrong works, so the refusals above are the verifiers'.
    let outcome = handshake(
        client_config(&good_client, id(SERVER), &roots).unwrap(),
        server_for(&good_server, &roots),
    )
    .await;
    outcome.client.unwrap();
    outcome.server.unwrap();
}

fn signer_other() -> Arc<CaSigner> {
    crate::test_support::signer_named("another mesh", crate::ca::SignerOptions::default())
}

/// A client that would negotiate something shunt's provider does not offer.
fn foreign_client(
    cert: &WorkloadCert,
    roots: &TrustBundle,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots.root_store())
        .with_client_auth_cert(cert.chain().to_vec(), {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap()
        })
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test]
async fn old_protocols_and_other_ciphers_fail_the_handshake() {
    use rustls::crypto::ring::cipher_suite;
    #[expect(deprecated, reason = "ring is the provider under test")]
    let ring = rustls::crypto::ring::default_provider;

    let signer = signer();
    let roots = signer.trust_bundle();
    let client_cert = workload_cert(&signer, &id(CLIENT));
    let server_cert = workload_cert(&signer, &id(SERVER));
    let tls12_only = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ],
        ..ring()
    };
    let chacha_only = rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..ring()
    };
    let cases = [
        (
            "TLS 1.2 only",
            foreign_client(&client_cert, roots, tls12_only, &[&rustls::version::TLS12]),
        ),
        (
            "ChaCha20 only",
            foreign_client(&client_cert, roots, chacha_only, &[&rustls::version::TLS13]),
        ),
    ];
    for (case, client) in cases {
        let outcome = handshake(client, server_for(&server_cert, roots)).await;
        let error = outcome.server.expect_err(case);
        assert!(error.contains("peer is incompatible"), "{case}: {error}");
        assert!(outcome.client.is_err(), "{case}");
    }
}

#[test]
fn the_provider_offers_tls13_aes_gcm_only() {
    let provider = crate::crypto::provider();
    let mut suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
    suites.sort_by_key(|s| u16::from(*s));
    assert_eq!(
        suites,
        vec![
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        ]
    );
    assert!(provider.cipher_suites.iter().all(|s| s.tls13().is_some()));
}

#[derive(Debug)]
struct Nothing;

impl CurrentCert for Nothing {
    fn current(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

#[tokio::test]
async fn a_server_with_no_certificate_refuses_every_handshake() {
    let signer = signer();
    let roots = signer.trust_bundle();
    let client_cert = workload_cert(&signer, &id(CLIENT));
    let server = server_config(Arc::new(Nothing), roots, "cluster.local").unwrap();
    let outcome = handshake(
        client_config(&client_cert, id(SERVER), roots).unwrap(),
        server,
    )
    .await;
    assert!(outcome.server.is_err());
    assert!(outcome.client.is_err());
}
