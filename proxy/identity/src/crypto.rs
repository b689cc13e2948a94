//! The one rustls crypto provider every shunt TLS connection uses, as ztunnel's (ring):
//! TLS 1.3 only, with the two AES-GCM suites and nothing else (no ChaCha20-Poly1305), so
//! the node proxy negotiates exactly what ztunnel and Istio's FIPS-minded defaults accept.

use std::sync::{Arc, LazyLock};

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite;

/// The ALPN protocol both ends of an HBONE connection offer: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The protocol versions shunt speaks: TLS 1.3 only.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[expect(
    deprecated,
    reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring is \
              the provider shunt builds with (no aws-lc-rs), as ztunnel's tls-ring build"
)]
static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..rustls::crypto::ring::default_provider()
    })
});

/// ring with TLS 1.3's AES-128-GCM and AES-256-GCM suites only.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::clone(&PROVIDER)
}
