//! Protocol detection on an outbound connection: a declared port protocol wins; otherwise the
//! client's first bytes decide between HTTP/2 prior knowledge, HTTP/1.x, TLS (with the SNI of
//! its ClientHello) and opaque TCP. Detection never waits past its timeout, so a server-first
//! protocol (the client sends nothing) is taken as TCP and works.
#![forbid(unsafe_code)]

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use shunt_mesh::routing::PortProtocol;

/// The HTTP/2 connection preface a prior-knowledge client opens with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TLS record is at most 16 KiB plus its 5-byte header; a ClientHello beyond one record is
/// taken as TLS without an SNI.
const MAX_PEEK: usize = 16 * 1024 + 5;

/// An HTTP/1 request line longer than this is not taken as HTTP (Envoy's http_inspector also
/// gives up after a bounded peek).
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The longest method token accepted in a request line.
const MAX_METHOD: usize = 24;

/// What the connection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (gRPC included).
    Http2,
    Tls {
        sni: Option<String>,
    },
    Tcp,
}

impl Protocol {
    #[must_use]
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Http1 | Self::Http2)
    }
}

/// The outcome of [`detect`]: the protocol and the bytes read to learn it, which the
/// connection's handler must see first (see [`super::rewind::Rewind`]).
#[derive(Debug)]
pub struct Detection {
    pub protocol: Protocol,
    pub consumed: Bytes,
}

/// Decides what `stream` carries. `declared` is the port's protocol; only `Sniff` and `Tls`
/// (which needs the SNI) read from the stream, for at most `timeout`.
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    declared: PortProtocol,
    timeout: Duration,
) -> io::Result<Detection> {
    let declared_answer = match declared {
        PortProtocol::Http => Some(Protocol::Http1),
        PortProtocol::Http2 => Some(Protocol::Http2),
        PortProtocol::Tcp => Some(Protocol::Tcp),
        PortProtocol::Tls | PortProtocol::Sniff => None,
    };
    if let Some(protocol) = declared_answer {
        return Ok(Detection {
            protocol,
            consumed: Bytes::new(),
        });
    }
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    let verdict = loop {
        if let Verdict::Done(protocol) = classify(&buf) {
            break protocol;
        }
        if buf.len() >= MAX_PEEK {
            break classify_final(&buf);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            // Timed out, or the client closed: what was read so far decides.
            Err(_) | Ok(Ok(0)) => break classify_final(&buf),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
        }
    };
    let protocol = match (declared, verdict) {
        // A `tls-*` port stays TLS even if the bytes do not parse: only the SNI is lost.
        (PortProtocol::Tls, Protocol::Tls { sni }) => Protocol::Tls { sni },
        (PortProtocol::Tls, _) => Protocol::Tls { sni: None },
        (_, protocol) => protocol,
    };
    Ok(Detection {
        protocol,
        consumed: buf.freeze(),
    })
}

enum Verdict {
    NeedMore,
    Done(Protocol),
}

/// Classifies the first bytes of a connection, or asks for more.
fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return Verdict::Done(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    if buf[0] == TLS_HANDSHAKE {
        return classify_tls(buf);
    }
    classify_http1(buf)
}

/// What the bytes are when no more will come (timeout, EOF or the peek limit).
fn classify_final(buf: &[u8]) -> Protocol {
    match classify(buf) {
        Verdict::Done(protocol) => protocol,
        Verdict::NeedMore if looks_like_tls_record(buf) => Protocol::Tls { sni: None },
        Verdict::NeedMore => Protocol::Tcp,
    }
}

fn classify_http1(buf: &[u8]) -> Verdict {
    let method_len = buf.iter().take_while(|b| is_method_char(**b)).count();
    if method_len == buf.len() {
        return if method_len <= MAX_METHOD {
            Verdict::NeedMore
        } else {
            Verdict::Done(Protocol::Tcp)
        };
    }
    if method_len == 0 || method_len > MAX_METHOD || buf[method_len] != b' ' {
        return Verdict::Done(Protocol::Tcp);
    }
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() < MAX_REQUEST_LINE {
            Verdict::NeedMore
        } else {
            Verdict::Done(Protocol::Tcp)
        };
    };
    let line = &buf[..line_end];
    let is_http1 = (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        // method SP target SP version: the target is not empty.
        && line.len() > method_len + 1 + " HTTP/1.1".len();
    Verdict::Done(if is_http1 {
        Protocol::Http1
    } else {
        Protocol::Tcp
    })
}

/// RFC 9110 method tokens in practice: upper-case letters, `-` and `_`.
fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

const TLS_HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const SNI_EXTENSION: u16 = 0;
const SNI_HOST_NAME: u8 = 0;

fn looks_like_tls_record(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] == TLS_HANDSHAKE && buf[1] == 0x03
}

/// A TLS record header then a ClientHello; waits for the whole first record.
fn classify_tls(buf: &[u8]) -> Verdict {
    if buf.len() < 5 {
        return if buf.len() < 2 || buf[1] == 0x03 {
            Verdict::NeedMore
        } else {
            Verdict::Done(Protocol::Tcp)
        };
    }
    if buf[1] != 0x03 {
        return Verdict::Done(Protocol::Tcp);
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + record_len {
        return Verdict::NeedMore;
    }
    let record = &buf[5..5 + record_len];
    if record.first() != Some(&CLIENT_HELLO) {
        return Verdict::Done(Protocol::Tcp);
    }
    Verdict::Done(Protocol::Tls {
        sni: client_hello_sni(record),
    })
}

/// A cursor over a ClientHello that fails (None) rather than reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

/// The `server_name` of a ClientHello handshake message (RFC 8446 §4.1.2, RFC 6066 §3),
/// lower-cased. `None` when absent or malformed; a handshake cut at the record end yields
/// whatever extensions arrived whole.
fn client_hello_sni(handshake: &[u8]) -> Option<String> {
    let mut r = Reader(handshake);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let len = r.u24()?;
    let mut hello = Reader(r.0.get(..len).unwrap_or(r.0));
    hello.take(2)?; // legacy_version
    hello.take(32)?; // random
    hello.vec8()?; // legacy_session_id
    hello.vec16()?; // cipher_suites
    hello.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != SNI_EXTENSION {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == SNI_HOST_NAME {
                let name = std::str::from_utf8(name).ok()?;
                return (!name.is_empty() && name.is_ascii()).then(|| name.to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A minimal TLS 1.2-framed ClientHello record, with `sni` if given.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_versions), as real clients send several.
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let name = name.as_bytes();
            let entry_len = 3 + name.len();
            let list_len = u16::try_from(entry_len).unwrap();
            let ext_len = u16::try_from(entry_len + 2).unwrap();
            extensions.extend_from_slice(&[0x00, 0x00]);
            extensions.extend_from_slice(&ext_len.to_be_bytes());
            extensions.extend_from_slice(&list_len.to_be_bytes());
            extensions.push(0);
            extensions.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            extensions.extend_from_slice(name);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // no session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut handshake = vec![CLIENT_HELLO];
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        handshake.extend_from_slice(&len[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![TLS_HANDSHAKE, 0x03, 0x01];
        record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    /// Sends `chunks` (with a pause between them), then keeps the stream open; returns what
    /// detection saw.
    async fn detect_over_duplex(
        chunks: Vec<Vec<u8>>,
        declared: PortProtocol,
        close: bool,
    ) -> Detection {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if close {
                client.shutdown().await.unwrap();
            }
            // Held open until detection is done, so a timeout is a timeout and not an EOF.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(client);
        });
        let detection = detect(&mut server, declared, Duration::from_millis(200))
            .await
            .unwrap();
        writer.abort();
        detection
    }

    #[tokio::test]
    async fn first_bytes_decide_the_protocol_and_are_kept() {
        let hello = client_hello(Some("API.Example.com"));
        let split_hello = vec![
            hello[..3].to_vec(),
            hello[3..40].to_vec(),
            hello[40..].to_vec(),
        ];
        let cases: Vec<(&str, Vec<Vec<u8>>, bool, Protocol)> = vec![
            (
                "h2 preface",
                vec![H2_PREFACE.to_vec(), b"\0\0\0\x04".to_vec()],
                false,
                Protocol::Http2,
            ),
            (
                "h2 preface split",
                vec![H2_PREFACE[..5].to_vec(), H2_PREFACE[5..].to_vec()],
                false,
                Protocol::Http2,
            ),
            (
                "http/1.1",
                vec![b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
                false,
                Protocol::Http1,
            ),
            (
                "http/1.0 split in the method",
                vec![b"PO".to_vec(), b"ST /x HTTP/1.0\r\n".to_vec()],
                false,
                Protocol::Http1,
            ),
            (
                "http/1 extension method",
                vec![b"PROPFIND /d HTTP/1.1\r\n".to_vec()],
                false,
                Protocol::Http1,
            ),
            (
                "not http: wrong version",
                vec![b"GET / SMTP/2\r\n".to_vec()],
                false,
                Protocol::Tcp,
            ),
            (
                "redis inline command",
                vec![b"*1\r\n$4\r\nPING\r\n".to_vec()],
                false,
                Protocol::Tcp,
            ),
            (
                "lower-case is not a method",
                vec![b"get / HTTP/1.1\r\n".to_vec()],
                false,
                Protocol::Tcp,
            ),
            (
                "tls with sni",
                vec![hello.clone()],
                false,
                Protocol::Tls {
                    sni: Some("api.example.com".into()),
                },
            ),
            (
                "tls split over reads",
                split_hello.clone(),
                false,
                Protocol::Tls {
                    sni: Some("api.example.com".into()),
                },
            ),
            (
                "tls without sni",
                vec![client_hello(None)],
                false,
                Protocol::Tls { sni: None },
            ),
            (
                "tls cut short then closed",
                vec![hello[..20].to_vec()],
                true,
                Protocol::Tls { sni: None },
            ),
            ("server-first: nothing sent", vec![], false, Protocol::Tcp),
            (
                "a method prefix then silence",
                vec![b"GE".to_vec()],
                false,
                Protocol::Tcp,
            ),
            (
                "a request line that never ends",
                vec![b"GET /aaaa".to_vec()],
                true,
                Protocol::Tcp,
            ),
        ];
        for (name, chunks, close, expected) in cases {
            let sent: Vec<u8> = chunks.concat();
            let detection = detect_over_duplex(chunks, PortProtocol::Sniff, close).await;
            assert_eq!(detection.protocol, expected, "{name}");
            assert!(
                sent.starts_with(&detection.consumed),
                "{name}: consumed bytes are not what was sent"
            );
        }
    }

    #[tokio::test]
    async fn declared_ports_skip_sniffing_except_tls_which_reads_the_sni() {
        let hello = client_hello(Some("db.internal"));
        for (declared, chunks, expected, consumed) in [
            (
                PortProtocol::Http,
                vec![b"GET / HTTP/1.1\r\n".to_vec()],
                Protocol::Http1,
                0,
            ),
            (
                PortProtocol::Http2,
                vec![H2_PREFACE.to_vec()],
                Protocol::Http2,
                0,
            ),
            (
                PortProtocol::Tcp,
                vec![b"GET / HTTP/1.1\r\n".to_vec()],
                Protocol::Tcp,
                0,
            ),
            (
                PortProtocol::Tls,
                vec![hello.clone()],
                Protocol::Tls {
                    sni: Some("db.internal".into()),
                },
                hello.len(),
            ),
            (
                PortProtocol::Tls,
                vec![b"hello".to_vec()],
                Protocol::Tls { sni: None },
                5,
            ),
        ] {
            let detection = detect_over_duplex(chunks, declared, false).await;
            assert_eq!(detection.protocol, expected, "{declared:?}");
            assert_eq!(detection.consumed.len(), consumed, "{declared:?}");
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp_after_the_timeout_and_not_before() {
        let (_client, mut server) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let detection = detect(&mut server, PortProtocol::Sniff, Duration::from_millis(100))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(detection.protocol, Protocol::Tcp);
        assert!(detection.consumed.is_empty());
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn malformed_client_hellos_yield_no_sni_and_never_panic() {
        let hello = client_hello(Some("a.example"));
        let handshake = &hello[5..];
        assert_eq!(client_hello_sni(handshake).as_deref(), Some("a.example"));
        for cut in 0..handshake.len() {
            // Every truncation parses without panicking; none invents a name.
            let sni = client_hello_sni(&handshake[..cut]);
            assert!(
                sni.is_none() || sni.as_deref() == Some("a.example"),
                "{cut}"
            );
        }
        let mut not_hello = handshake.to_vec();
        not_hello[0] = 2;
        assert_eq!(client_hello_sni(&not_hello), None);
    }
}
