//! What can go wrong: why a token is refused ([`JwtFailure`], with Envoy's texts) and why a
//! JWKS could not be had ([`JwksError`]).

use std::sync::Arc;
use std::time::Duration;

/// Why a JWT was not accepted. Each is a 401 but [`JwtFailure::AudienceNotAllowed`] (403),
/// as Envoy's `jwt_authn` answers; [`JwtFailure::body`] is Envoy's text for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtFailure {
    /// Not three base64url sections of JSON, or a claim of the wrong type.
    #[error("malformed token: {why}")]
    Malformed {
        /// What is wrong.
        why: String,
    },
    /// An `alg` shunt does not verify (`none`, HMAC, ...).
    #[error("the token's algorithm {alg:?} is not accepted (RS/PS 256-512, ES256, ES384, EdDSA)")]
    Algorithm {
        /// `alg` as written.
        alg: String,
    },
    /// No rule checks tokens of this issuer at the location it came from.
    #[error("no RequestAuthentication rule of this workload accepts issuer {iss:?}")]
    UnknownIssuer {
        /// `iss`, empty when absent.
        iss: String,
    },
    /// The issuer's JWKS could not be had (never fetched, or the fetch failed), or a rejected
    /// RequestAuthentication stands in for it: failing closed.
    #[error("no keys for issuer {iss:?}: {why}")]
    NoKeys {
        /// `iss`.
        iss: String,
        /// Why.
        why: String,
    },
    /// No key of the JWKS matches the token's `kid` and `alg`.
    #[error("no key of issuer {iss:?}'s JWKS matches the token's kid {kid:?} and alg {alg}")]
    NoMatchingKey {
        /// `iss`.
        iss: String,
        /// `kid`, if the token has one.
        kid: Option<String>,
        /// `alg`.
        alg: String,
    },
    /// The signature does not verify with any candidate key.
    #[error("the signature does not verify with issuer {iss:?}'s keys")]
    BadSignature {
        /// `iss`.
        iss: String,
    },
    /// `exp` is past (beyond the clock skew allowed).
    #[error("the token expired at {exp} (unix time)")]
    Expired {
        /// `exp`.
        exp: u64,
    },
    /// `nbf` is ahead (beyond the clock skew allowed).
    #[error("the token is not valid before {nbf} (unix time)")]
    NotYetValid {
        /// `nbf`.
        nbf: u64,
    },
    /// The token's `aud` holds none of the rule's audiences.
    #[error("the token's audiences {got:?} hold none of {wanted:?}")]
    AudienceNotAllowed {
        /// The token's audiences.
        got: Vec<String>,
        /// The rule's.
        wanted: Vec<String>,
    },
}

impl JwtFailure {
    /// The response body, as Envoy's `jwt_authn` words it.
    #[must_use]
    pub fn body(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::Algorithm { .. } => "Jwt header [alg] is not supported",
            Self::UnknownIssuer { .. } => "Jwt issuer is not configured",
            Self::NoKeys { .. } => "Jwks remote fetch is failed",
            Self::NoMatchingKey { .. } => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::BadSignature { .. } => "Jwt verification fails",
            Self::Expired { .. } => "Jwt is expired",
            Self::NotYetValid { .. } => "Jwt not yet valid",
            Self::AudienceNotAllowed { .. } => "Audiences in Jwt are not allowed",
        }
    }

    /// `response_code_details` for the access log: `jwt_authn_access_denied{<body>}` with
    /// spaces as `_`, as Envoy writes it.
    #[must_use]
    pub fn response_code_details(&self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.body().replace(' ', "_")
        )
    }
}

/// Why an issuer's JWKS could not be fetched. Cloned to every request that waits for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The URI cannot be fetched (not http or https, or no host).
    #[error("jwksUri {uri}: {why}")]
    Uri {
        /// The URI.
        uri: Arc<str>,
        /// What is wrong.
        why: &'static str,
    },
    /// The TCP connection failed.
    #[error(
        "jwksUri {uri}: cannot connect to {host}:{port} (is the JWKS server up and reachable from the proxy?): {message}"
    )]
    Connect {
        /// The URI.
        uri: Arc<str>,
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// The I/O error.
        message: String,
    },
    /// `https`, but the proxy has no trust roots to verify the server with.
    #[error(
        "jwksUri {uri}: no CA bundle to verify the server with (the proxy read none of \
         {bundles:?}); install the system CA certificates, or use http"
    )]
    NoTrustRoots {
        /// The URI.
        uri: Arc<str>,
        /// Where the bundle was looked for.
        bundles: &'static [&'static str],
    },
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("jwksUri {uri}: TLS handshake failed: {message}")]
    Tls {
        /// The URI.
        uri: Arc<str>,
        /// The error.
        message: String,
    },
    /// The HTTP exchange failed.
    #[error("jwksUri {uri}: HTTP request failed: {message}")]
    Http {
        /// The URI.
        uri: Arc<str>,
        /// The error.
        message: String,
    },
    /// The server answered, but not 200.
    #[error("jwksUri {uri}: the server answered {status}, not 200")]
    Status {
        /// The URI.
        uri: Arc<str>,
        /// The status.
        status: http::StatusCode,
    },
    /// The body is not a JWKS with a key shunt can use.
    #[error("jwksUri {uri}: {message}")]
    Keys {
        /// The URI.
        uri: Arc<str>,
        /// What is wrong.
        message: String,
    },
    /// The first fetch did not finish within the rule's timeout (it goes on in the
    /// background).
    #[error("jwksUri {uri}: not fetched within {timeout:?} (the fetch goes on)")]
    Timeout {
        /// The URI.
        uri: Arc<str>,
        /// The rule's timeout.
        timeout: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_envoys() {
        assert_eq!(
            JwtFailure::Expired { exp: 1 }.response_code_details(),
            "jwt_authn_access_denied{Jwt_is_expired}"
        );
        assert_eq!(
            JwtFailure::AudienceNotAllowed {
                got: vec![],
                wanted: vec!["a".into()]
            }
            .body(),
            "Audiences in Jwt are not allowed"
        );
    }
}
