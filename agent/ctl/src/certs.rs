//! `shuntctl certs`: the workload certificates the node's proxy holds, read live from its
//! metrics endpoint (`/debug/certs`), as `istioctl ztunnel-config certificates` shows
//! ztunnel's: a row per certificate of each identity's chain, leaf first, up to the root.

use std::net::SocketAddr;

use shunt_api::certs::{CertStatus, ChainCertStatus};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::output::Output;
use crate::proxy_client;
use crate::table::{Table, or_dash};

const PATH: &str = "/debug/certs";

pub async fn run(addr: SocketAddr, output: Output) -> anyhow::Result<String> {
    let body = proxy_client::get_json(addr, PATH).await?;
    output.show(body, PATH, |certs: Vec<CertStatus>| {
        render(&certs, OffsetDateTime::now_utc())
    })
}

/// What a certificate of the chain is: the first is the workload's own; a self-issued one
/// is a root; anything between is an intermediate.
fn kind(index: usize, cert: &ChainCertStatus) -> &'static str {
    if index == 0 {
        "Leaf"
    } else if cert.subject == cert.issuer {
        "Root"
    } else {
        "Intermediate"
    }
}

fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Whether `now` is inside the window (an end that does not parse is not valid).
fn valid_at(not_before: Option<&str>, not_after: &str, now: OffsetDateTime) -> bool {
    let started = not_before.is_none_or(|text| parse(text).is_some_and(|t| t <= now));
    started && parse(not_after).is_some_and(|t| now < t)
}

/// The table, then each identity's last fetch error.
fn render(certs: &[CertStatus], now: OffsetDateTime) -> String {
    if certs.is_empty() {
        return "the proxy holds no workload certificate (no captured pod needs one yet)\n"
            .to_owned();
    }
    let mut table = Table::new(&[
        "IDENTITY",
        "TYPE",
        "STATE",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
        "NEXT ROTATION",
        "ISSUER",
    ]);
    for status in certs {
        let identity = status.identity.to_string();
        let state = status.state.name().to_owned();
        if status.chain.is_empty() {
            table.row(vec![
                identity,
                "-".into(),
                state,
                "false".into(),
                or_dash(status.serial.as_ref()),
                or_dash(status.not_after.as_ref()),
                or_dash(status.not_before.as_ref()),
                or_dash(status.next_rotation.as_ref()),
                "-".into(),
            ]);
            continue;
        }
        for (index, cert) in status.chain.iter().enumerate() {
            // The leaf's window and rotation are the identity's; the CA certificates above
            // it report their end only.
            let leaf = index == 0;
            let not_before = status.not_before.as_deref().filter(|_| leaf);
            table.row(vec![
                identity.clone(),
                kind(index, cert).into(),
                state.clone(),
                valid_at(not_before, &cert.not_after, now).to_string(),
                cert.serial.clone(),
                cert.not_after.clone(),
                or_dash(not_before),
                or_dash(status.next_rotation.as_ref().filter(|_| leaf)),
                cert.issuer.clone(),
            ]);
        }
    }
    let mut out = table.render();
    for status in certs {
        if let Some(error) = &status.last_error {
            out.push_str(&format!("error: {}: {error}\n", status.identity));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-07-01T12:00:00Z";

    fn sample() -> serde_json::Value {
        serde_json::json!([
            {
                "identity": "spiffe://cluster.local/ns/shop/sa/cart",
                "state": "valid",
                "serial": "0a1b",
                "not_before": "2026-07-01T00:00:00Z",
                "not_after": "2026-07-02T00:00:00Z",
                "next_rotation": "2026-07-01T12:00:00Z",
                "chain": [
                    {"subject": "", "issuer": "O=intermediate", "serial": "0a1b",
                     "not_after": "2026-07-02T00:00:00Z"},
                    {"subject": "O=intermediate", "issuer": "O=root", "serial": "02",
                     "not_after": "2027-01-01T00:00:00Z"},
                    {"subject": "O=root", "issuer": "O=root", "serial": "01",
                     "not_after": "2036-01-01T00:00:00Z"},
                ],
                "last_error": "the CA at https://10.0.0.1:15012 answered Unavailable",
            },
            {
                "identity": "spiffe://cluster.local/ns/shop/sa/old",
                "state": "expired",
                "serial": "ff",
                "not_before": "2026-06-01T00:00:00Z",
                "not_after": "2026-06-02T00:00:00Z",
                "next_rotation": "2026-06-01T12:00:00Z",
                "chain": [
                    {"subject": "", "issuer": "O=root", "serial": "ff",
                     "not_after": "2026-06-02T00:00:00Z"},
                    {"subject": "O=root", "issuer": "O=root", "serial": "01",
                     "not_after": "2036-01-01T00:00:00Z"},
                ],
                "last_error": null,
            },
            {
                "identity": "spiffe://cluster.local/ns/shop/sa/web",
                "state": "error",
                "serial": null, "not_before": null, "not_after": null, "next_rotation": null,
                "chain": [],
                "last_error": "node node-a may not have a certificate",
            },
            {
                "identity": "spiffe://cluster.local/ns/shop/sa/new",
                "state": "pending",
                "serial": null, "not_before": null, "not_after": null, "next_rotation": null,
                "chain": [],
                "last_error": null,
            },
        ])
    }

    #[test]
    fn each_certificate_of_each_chain_is_a_row() {
        let certs: Vec<CertStatus> = serde_json::from_value(sample()).unwrap();
        let now = parse(NOW).unwrap();
        assert_eq!(
            render(&certs, now),
            "IDENTITY                                TYPE          STATE    VALID CERT  SERIAL NUMBER  NOT AFTER             NOT BEFORE            NEXT ROTATION         ISSUER\n\
             spiffe://cluster.local/ns/shop/sa/cart  Leaf          valid    true        0a1b           2026-07-02T00:00:00Z  2026-07-01T00:00:00Z  2026-07-01T12:00:00Z  O=intermediate\n\
             spiffe://cluster.local/ns/shop/sa/cart  Intermediate  valid    true        02             2027-01-01T00:00:00Z  -                     -                     O=root\n\
             spiffe://cluster.local/ns/shop/sa/cart  Root          valid    true        01             2036-01-01T00:00:00Z  -                     -                     O=root\n\
             spiffe://cluster.local/ns/shop/sa/old   Leaf          expired  false       ff             2026-06-02T00:00:00Z  2026-06-01T00:00:00Z  2026-06-01T12:00:00Z  O=root\n\
             spiffe://cluster.local/ns/shop/sa/old   Root          expired  true        01             2036-01-01T00:00:00Z  -                     -                     O=root\n\
             spiffe://cluster.local/ns/shop/sa/web   -             error    false       -              -                     -                     -                     -\n\
             spiffe://cluster.local/ns/shop/sa/new   -             pending  false       -              -                     -                     -                     -\n\
             error: spiffe://cluster.local/ns/shop/sa/cart: the CA at https://10.0.0.1:15012 answered Unavailable\n\
             error: spiffe://cluster.local/ns/shop/sa/web: node node-a may not have a certificate\n"
        );
        assert_eq!(
            render(&[], now),
            "the proxy holds no workload certificate (no captured pod needs one yet)\n"
        );
    }

    #[test]
    fn validity_is_the_window_around_now() {
        let now = parse(NOW).unwrap();
        for (not_before, not_after, valid) in [
            (Some("2026-07-01T00:00:00Z"), "2026-07-02T00:00:00Z", true),
            (None, "2026-07-02T00:00:00Z", true),
            (Some("2026-07-01T12:00:00Z"), "2026-07-02T00:00:00Z", true),
            (Some("2026-07-01T13:00:00Z"), "2026-07-02T00:00:00Z", false),
            (None, "2026-07-01T12:00:00Z", false),
            (None, "2026-06-01T00:00:00Z", false),
            (None, "@1234", false),
            (Some("yesterday"), "2026-07-02T00:00:00Z", false),
        ] {
            assert_eq!(
                valid_at(not_before, not_after, now),
                valid,
                "{not_before:?} {not_after}"
            );
        }
    }

    #[test]
    fn chain_certificates_are_named_by_their_place() {
        let cert = |subject: &str, issuer: &str| ChainCertStatus {
            subject: subject.into(),
            issuer: issuer.into(),
            serial: "01".into(),
            not_after: NOW.into(),
        };
        for (index, cert, expected) in [
            (0, cert("", "O=root"), "Leaf"),
            // A self-signed leaf is still the leaf.
            (0, cert("O=x", "O=x"), "Leaf"),
            (1, cert("O=intermediate", "O=root"), "Intermediate"),
            (2, cert("O=root", "O=root"), "Root"),
        ] {
            assert_eq!(kind(index, &cert), expected, "{index} {cert:?}");
        }
    }

    #[tokio::test]
    async fn json_is_the_answer_as_it_came_and_a_bad_answer_is_named() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for (body, output, expected) in [
            (
                sample().to_string(),
                Output::Json,
                Ok(format!("{:#}\n", sample())),
            ),
            (
                r#"{"not": "a list"}"#.to_owned(),
                Output::Table,
                Err("unexpected answer from /debug/certs: invalid type: map, expected a sequence"),
            ),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let served = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                }
                stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                String::from_utf8(request).unwrap()
            });
            let got = run(addr, output).await.map_err(|e| format!("{e:#}"));
            let request = served.await.unwrap();
            assert!(
                request.starts_with("GET /debug/certs HTTP/1.1\r\n"),
                "{request}"
            );
            assert_eq!(got, expected.map_err(str::to_owned));
        }
    }
}
