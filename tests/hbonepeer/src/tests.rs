//! The peer against shunt's own TLS configurations (`shunt_identity::tls`, what the node
//! proxy's HBONE listener and client use), over loopback: so a refusal the end-to-end tests
//! see is known to be told apart from a broken peer, and the alerts they look for are the
//! ones shunt's configuration sends.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use rustls::pki_types::ServerName;
use serde_json::Value;
use shunt_identity::SpiffeId;
use shunt_identity::ca::{CaSigner, SignerOptions};
use shunt_identity::provider::InProcessCa;
use shunt_identity::tls::FixedCert;
use shunt_identity::trust::TrustBundle;
use tokio::net::{TcpListener, TcpStream};

use crate::client::Report;
use crate::{Cli, Command, server};

const CLIENT: &str = "spiffe://cluster.local/ns/mesh/sa/sa-a";
const SERVER: &str = "spiffe://cluster.local/ns/mesh/sa/sa-b";

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

/// A root folder as the agent's CA leaves it (`<state dir>/self-signed`: `root-cert.pem`,
/// `root-key.pem`), and its signer.
fn ca_dir() -> (tempfile::TempDir, Arc<CaSigner>) {
    let dir = tempfile::tempdir().unwrap();
    let signer =
        CaSigner::self_signed(dir.path(), "cluster.local", SignerOptions::default()).unwrap();
    (dir, Arc::new(signer))
}

fn issue(signer: &Arc<CaSigner>, identity: &str) -> shunt_identity::workload::WorkloadCert {
    InProcessCa::new(signer.clone(), Duration::ZERO)
        .issue(&id(identity))
        .unwrap()
}

/// Serves connections on loopback with `config` (the peer server's connection handler);
/// the address, and the events of every connection.
async fn serve(
    config: rustls::ServerConfig,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            tokio::spawn(server::connection(
                tcp,
                peer,
                config.clone(),
                events.clone(),
            ));
        }
    });
    (addr, received)
}

/// `base` flags with `changes` replacing (or added to) them, as arguments.
fn with<'a>(base: &[(&'a str, &'a str)], changes: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut flags = base.to_vec();
    for &(flag, value) in changes {
        match flags.iter_mut().find(|(f, _)| *f == flag) {
            Some(slot) => slot.1 = value,
            None => flags.push((flag, value)),
        }
    }
    flags.into_iter().flat_map(|(f, v)| [f, v]).collect()
}

async fn client(to: SocketAddr, ca_dir: &Path, extra: &[&str]) -> Report {
    let to = to.to_string();
    let ca_dir = ca_dir.display().to_string();
    let mut args = vec![
        "shunt-hbonepeer",
        "client",
        "--to",
        &to,
        "--ca-dir",
        &ca_dir,
        "--send-bytes",
        "200000",
    ];
    args.extend_from_slice(extra);
    let Command::Client(args) = Cli::try_parse_from(args).unwrap().command else {
        panic!("not the client");
    };
    crate::client::run(args).await.unwrap()
}

#[tokio::test]
async fn the_client_is_refused_by_shunts_listener_exactly_where_it_misbehaves() {
    let (dir, signer) = ca_dir();
    let shunt_server = shunt_identity::tls::server_config(
        Arc::new(FixedCert(issue(&signer, SERVER).certified_key())),
        signer.trust_bundle(),
        "cluster.local",
    )
    .unwrap();
    let (addr, _events) = serve(shunt_server).await;
    let good = [
        ("--identity", CLIENT),
        ("--expect-server", SERVER),
        ("--authority", "10.0.0.1:8080"),
    ];
    let report = client(addr, dir.path(), &with(&good, &[])).await;
    assert_eq!(report.failed, None, "{report:?}");
    let tls = report.tls.as_ref().unwrap();
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    assert_eq!(tls.peer_identity.as_deref(), Some(SERVER));
    assert_eq!(report.server_identity.as_deref(), Some(SERVER));
    let stream = &report.streams[0];
    assert_eq!(
        (stream.status, stream.echo_ok, stream.echoed),
        (Some(200), true, 200_000),
        "{stream:?}"
    );

    // (case, the one flag changed from the good case, the alert or error the client sees)
    let cases = [
        ("TLS 1.2 only", ("--tls", "1.2"), "ProtocolVersion"),
        (
            "ChaCha20 only",
            ("--ciphers", "chacha20"),
            "HandshakeFailure",
        ),
        (
            "ALPN http/1.1 only",
            ("--alpn", "http/1.1"),
            "NoApplicationProtocol",
        ),
        (
            "no client certificate",
            ("--cert", "none"),
            "CertificateRequired",
        ),
        ("another CA", ("--cert", "other-ca"), "UnknownCA"),
        ("expired", ("--cert", "expired"), "CertificateExpired"),
        (
            "another trust domain",
            ("--identity", "spiffe://evil.local/ns/mesh/sa/sa-a"),
            "CertificateUnknown",
        ),
        (
            "the server is not who the client expects",
            ("--expect-server", CLIENT),
            "the server presented spiffe://cluster.local/ns/mesh/sa/sa-b, but \
             spiffe://cluster.local/ns/mesh/sa/sa-a was expected",
        ),
    ];
    for (case, flag, error) in cases {
        let report = client(addr, dir.path(), &with(&good, &[flag])).await;
        assert_eq!(report.failed, Some("tls"), "{case}: {report:?}");
        let text = report.error.as_deref().unwrap_or_default();
        assert!(text.contains(error), "{case}: {text}");
        assert!(report.streams.is_empty(), "{case}: {report:?}");
    }
}

#[tokio::test]
async fn the_server_reports_what_shunts_client_offers_and_proves() {
    let (_dir, signer) = ca_dir();
    let roots = TrustBundle::from_pem(&signer.root_pem()).unwrap();
    // The peer server as the end-to-end test runs it, presenting `presented`.
    for (presented, accepted) in [
        (SERVER, true),
        ("spiffe://cluster.local/ns/mesh/sa/impostor", false),
    ] {
        let server = crate::tls::server_config(&issue(&signer, presented), &roots).unwrap();
        let (addr, mut events) = serve(server).await;
        let shunt_client = shunt_identity::tls::client_config(
            &issue(&signer, CLIENT),
            id(SERVER),
            signer.trust_bundle(),
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connected = tokio_rustls::TlsConnector::from(Arc::new(shunt_client))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await;
        assert_eq!(connected.is_ok(), accepted, "{presented}: {connected:?}");

        let hello = events.recv().await.unwrap();
        assert_eq!(hello["event"], "client_hello", "{hello}");
        assert_eq!(hello["sni"], Value::Null, "{hello}");
        assert_eq!(hello["alpn"], serde_json::json!(["h2"]), "{hello}");
        let mut suites: Vec<&str> = hello["cipher_suites"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.contains("EMPTY_RENEGOTIATION"))
            .collect();
        suites.sort_unstable();
        assert_eq!(
            suites,
            ["TLS13_AES_128_GCM_SHA256", "TLS13_AES_256_GCM_SHA384"],
            "{hello}"
        );
        let handshake = events.recv().await.unwrap();
        assert_eq!(handshake["event"], "handshake", "{handshake}");
        assert_eq!(handshake["ok"], accepted, "{handshake}");
        if accepted {
            assert_eq!(
                handshake["negotiated"]["peer_identity"], CLIENT,
                "{handshake}"
            );
        }
    }
}

#[tokio::test]
async fn the_peers_talk_hbone_to_each_other() {
    let (dir, signer) = ca_dir();
    let roots = TrustBundle::from_pem(&signer.root_pem()).unwrap();
    let server = crate::tls::server_config(&issue(&signer, SERVER), &roots).unwrap();
    let (addr, mut events) = serve(server).await;
    let report = client(
        addr,
        dir.path(),
        &[
            "--identity",
            CLIENT,
            "--expect-server",
            SERVER,
            "--tls",
            "any",
            "--authority",
            "10.0.0.2:80",
            "--authority",
            "10.0.0.2:81",
            "--header",
            "forwarded: for=\"10.0.0.9:4000\"",
        ],
    )
    .await;
    assert_eq!(report.failed, None, "{report:?}");
    assert_eq!(report.streams.len(), 2);
    for stream in &report.streams {
        assert_eq!(
            (stream.status, stream.echo_ok),
            (Some(200), true),
            "{stream:?}"
        );
    }
    let mut connects = Vec::new();
    while connects.len() < 2 {
        let event = events.recv().await.unwrap();
        if event["event"] == "connect" {
            assert_eq!(event["method"], "CONNECT", "{event}");
            assert_eq!(event["forwarded"], "for=\"10.0.0.9:4000\"", "{event}");
            connects.push(event["authority"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(connects, ["10.0.0.2:80", "10.0.0.2:81"]);
}
