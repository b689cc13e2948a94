//! Why an HBONE connection or stream failed.

/// Why an HBONE connection or stream could not be established.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HBONE: could not connect to the peer's port 15008: {0}")]
    Connect(#[source] Box<crate::socket::Error>),
    #[error(
        "HBONE: the mTLS handshake failed (check that both nodes trust the same root and that the peer's certificate names the destination's identity): {0}"
    )]
    Tls(std::io::Error),
    #[error("HBONE: no valid certificate for {identity}: {reason}")]
    NoCertificate { identity: String, reason: String },
    #[error("HBONE: HTTP/2 failed: {0}")]
    H2(#[from] h2::Error),
    #[error("HBONE: cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("HBONE: the peer answered the CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("HBONE: the connection closed before the stream could start")]
    Closed,
    #[error("HBONE: could not build the CONNECT request: {0}")]
    Request(String),
    #[error("HBONE: the dial timed out")]
    Timeout,
}

impl HboneError {
    /// The `reason` label of `shunt_hbone_handshake_failures_total`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) | Self::Timeout => "connect",
            Self::Tls(_) | Self::Config(_) => "tls",
            Self::NoCertificate { .. } => "no_certificate",
            Self::H2(_) | Self::Closed | Self::Request(_) => "h2",
            Self::Status(_) => "status",
        }
    }
}

