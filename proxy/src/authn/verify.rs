//! One token: its sections parsed ([`Token::parse`]), its signature checked against a JWKS
//! ([`KeySet::verify`], with `jsonwebtoken`'s ring verifiers), its times and audiences.
//!
//! Only asymmetric algorithms are accepted: RS256/384/512, PS256/384/512, ES256, ES384 and
//! EdDSA (Ed25519), each only with a key of its own type and curve, so neither `none` nor an
//! HMAC "signed" with a public key can pass.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::JwtFailure;

/// Clock skew allowed on `exp` and `nbf`: Envoy's default `clock_skew_seconds`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// base64url, with or without padding (the JWS spec says without; a few issuers pad).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Token<'a> {
    /// `alg`.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: Option<String>,
    /// The payload.
    pub claims: serde_json::Value,
    /// `header.payload`, what is signed.
    signing_input: &'a str,
    /// The payload section as sent (what `outputPayloadToHeader` forwards).
    pub payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    /// Splits and decodes `raw` (`header.payload.signature`).
    pub fn parse(raw: &'a str) -> Result<Self, JwtFailure> {
        let malformed = |why: &str| JwtFailure::Malformed {
            why: why.to_owned(),
        };
        let mut sections = raw.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            sections.next(),
            sections.next(),
            sections.next(),
            sections.next(),
        ) else {
            return Err(malformed("not three sections separated by '.'"));
        };
        let signing_input = &raw[..header.len() + 1 + payload.len()];
        let decode = |section: &str, what: &str| -> Result<serde_json::Value, JwtFailure> {
            let bytes = BASE64URL
                .decode(section)
                .map_err(|_| malformed(&format!("the {what} is not base64url")))?;
            serde_json::from_slice(&bytes)
                .map_err(|_| malformed(&format!("the {what} is not JSON")))
        };
        let head = decode(header, "header")?;
        let claims = decode(payload, "payload")?;
        if !claims.is_object() {
            return Err(malformed("the payload is not a JSON object"));
        }
        if head.get("crit").is_some() {
            // RFC 7515 4.1.11: an extension the verifier does not understand must be refused.
            return Err(malformed("the header has critical extensions (crit)"));
        }
        let alg_text = head["alg"].as_str().unwrap_or_default();
        let alg = accepted_algorithm(alg_text).ok_or_else(|| JwtFailure::Algorithm {
            alg: alg_text.to_owned(),
        })?;
        let kid = match &head["kid"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(kid) => Some(kid.clone()),
            _ => return Err(malformed("kid is not a string")),
        };
        Ok(Self {
            alg,
            kid,
            claims,
            signing_input,
            payload,
            signature,
        })
    }

    /// `iss`, empty when absent.
    #[must_use]
    pub fn issuer(&self) -> &str {
        self.claims["iss"].as_str().unwrap_or_default()
    }

    /// Checks `exp` and `nbf` at `now` (unix seconds), with [`CLOCK_SKEW_SECS`]; absent
    /// claims do not limit the token, as in Envoy. Returns `exp`.
    pub fn check_times(&self, now: u64) -> Result<Option<u64>, JwtFailure> {
        let exp = numeric_date(&self.claims, "exp")?;
        let nbf = numeric_date(&self.claims, "nbf")?;
        if let Some(exp) = exp
            && exp.saturating_add(CLOCK_SKEW_SECS) <= now
        {
            return Err(JwtFailure::Expired { exp });
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(JwtFailure::NotYetValid { nbf });
        }
        Ok(exp)
    }

    /// Whether the token's `aud` holds one of `wanted` (any, when `wanted` is empty).
    pub fn check_audience(&self, wanted: &[String]) -> Result<(), JwtFailure> {
        if wanted.is_empty() {
            return Ok(());
        }
        let got: Vec<String> = match &self.claims["aud"] {
            serde_json::Value::String(aud) => vec![aud.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if got.iter().any(|aud| wanted.contains(aud)) {
            Ok(())
        } else {
            Err(JwtFailure::AudienceNotAllowed {
                got,
                wanted: wanted.to_vec(),
            })
        }
    }
}

/// `exp`/`nbf`: a number of seconds (fractions allowed, as RFC 7519 says).
fn numeric_date(claims: &serde_json::Value, name: &str) -> Result<Option<u64>, JwtFailure> {
    match &claims[name] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            // Whole seconds are enough: the skew allowed is a minute.
            (None, Some(secs)) if secs >= 0.0 => Ok(Some(secs as u64)),
            _ => Err(JwtFailure::Malformed {
                why: format!("{name} is not a NumericDate"),
            }),
        },
        _ => Err(JwtFailure::Malformed {
            why: format!("{name} is not a number"),
        }),
    }
}

fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The kind of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn kind_for(alg: Algorithm) -> Option<KeyKind> {
    Some(match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => KeyKind::Rsa,
        Algorithm::ES256 => KeyKind::P256,
        Algorithm::ES384 => KeyKind::P384,
        Algorithm::EdDSA => KeyKind::Ed25519,
        _ => return None,
    })
}

struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

/// The signing keys of one JWKS that shunt can use.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.kind)))
            .finish()
    }
}

impl KeySet {
    /// Reads JWKS JSON. Keys shunt cannot verify with (encryption keys, symmetric keys,
    /// other curves, malformed ones) are skipped; a JWKS without a usable one is an error.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let listed = value["keys"]
            .as_array()
            .ok_or("the JWKS has no `keys` list")?;
        let keys: Vec<Key> = listed
            .iter()
            .filter_map(|key| serde_json::from_value::<Jwk>(key.clone()).ok())
            .filter_map(|jwk| usable(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "none of the JWKS's {} keys is a signature key shunt can use (RSA, EC P-256 or \
                 P-384, Ed25519)",
                listed.len()
            ));
        }
        Ok(Self { keys })
    }

    /// How many keys are usable.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, for a set [`Self::from_json`] made).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token`'s signature with the keys that fit it: its `kid` (keys without one
    /// fit any), its `alg` (keys naming another do not fit) and the key type and curve the
    /// algorithm needs.
    pub fn verify(&self, token: &Token<'_>) -> Result<(), JwtFailure> {
        let kind = kind_for(token.alg);
        let mut candidates = self
            .keys
            .iter()
            .filter(|key| Some(key.kind) == kind)
            .filter(|key| key.alg.is_none_or(|alg| alg == token.alg))
            .filter(|key| match (&token.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtFailure::NoMatchingKey {
                iss: token.issuer().to_owned(),
                kid: token.kid.clone(),
                alg: format!("{:?}", token.alg),
            });
        }
        let verified = candidates.any(|key| {
            jsonwebtoken::crypto::verify(
                token.signature,
                token.signing_input.as_bytes(),
                &key.key,
                token.alg,
            )
            .unwrap_or(false)
        });
        if verified {
            Ok(())
        } else {
            Err(JwtFailure::BadSignature {
                iss: token.issuer().to_owned(),
            })
        }
    }
}

/// A JWK as a verification key, if shunt can use it.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        _ => return None,
    };
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            let alg = key_algorithm(named)?;
            // A key that names an algorithm of another type is not a key for it.
            if kind_for(alg) != Some(kind) {
                return None;
            }
            Some(alg)
        }
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        kind,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A JWK's `alg` as a signature algorithm shunt accepts; `None` for others (HMAC, the
/// encryption algorithms).
fn key_algorithm(alg: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
