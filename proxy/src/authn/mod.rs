//! RequestAuthentication at the destination: Envoy's `jwt_authn` filter as Istio configures
//! it, for one request ([`Authenticator::authenticate`]).
//!
//! Istio's behaviour (every rule of every RequestAuthentication that applies, with
//! `allow_missing`):
//! - a request without a token passes, with no request principal ([`AuthnOutcome::NoToken`]);
//!   so does a CORS preflight, which is never checked;
//! - a token is looked for where the workload's rules say (default `Authorization: Bearer`,
//!   then `?access_token=`); it is checked by the rules of its `iss` that read it from there
//!   and valid when one of them accepts it ([`AuthnOutcome::Valid`], principal `iss/sub`);
//! - a token that is present but invalid gets 401 with `www-authenticate: Bearer
//!   realm="<url>", error="invalid_token"`: bad signature, expired, not yet valid, an issuer no
//!   rule names, malformed, or keys that could not be fetched ([`AuthnOutcome::Invalid`]);
//! - an audience mismatch gets 403 ([`AuthnOutcome::AudienceMismatch`]).
//!
//! On success the token's header is removed before the request goes upstream unless the
//! rule says `forwardOriginalToken` (a token in a query parameter or cookie stays, as in
//! Envoy); `outputPayloadToHeader` and `outputClaimToHeaders` are set. Those output headers
//! are removed from every request the rules apply to first, token or not, so a client
//! cannot send them itself (stricter than Envoy, which only overwrites them).
//!
//! Keys come from [`jwks::JwksCache`] (`jwksUri`) or the rule itself (`jwks`); verified
//! tokens are cached ([`cache::VerifiedCache`]).

pub mod cache;
pub mod error;
pub mod jwks;
pub mod netns;
#[cfg(test)]
mod tests;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use shunt_mesh::security::{DEFAULT_TOKEN_PREFIX, JwksSource, JwtRule, RequestAuth, TokenLocation};

pub use error::{JwksError, JwtFailure};
pub use jwks::{
    ConnectFuture, Connector, DirectConnector, JwksCache, JwksSettings, JwksStatus, system_tls,
    tls_with_roots,
};

use cache::{TokenHash, VerifiedCache, token_hash};
use verify::{KeySet, Token};

/// Inline JWKS documents kept parsed, at most; past it they are parsed again.
const INLINE_CAPACITY: usize = 256;

/// What authentication made of a request.
#[derive(Clone, Debug)]
pub enum AuthnOutcome {
    /// No token (or no rule applies, or a CORS preflight): the request goes on without a
    /// request principal.
    NoToken,
    /// A token one of the rules accepted; the request's headers are already edited.
    Valid(Arc<RequestAuth>),
    /// A token is present but invalid: answer `status` (401) with `www_authenticate` and
    /// `failure.body()`.
    Invalid {
        /// 401.
        status: StatusCode,
        /// `Bearer realm="<url>", error="invalid_token"`.
        www_authenticate: HeaderValue,
        /// Why, for the body and the log.
        failure: JwtFailure,
    },
    /// A valid token for none of the rule's audiences: answer `status` (403) likewise.
    AudienceMismatch {
        /// 403.
        status: StatusCode,
        /// `Bearer realm="<url>", error="invalid_token"`.
        www_authenticate: HeaderValue,
        /// Why, for the body and the log.
        failure: JwtFailure,
    },
}

impl AuthnOutcome {
    /// The request principal, when a token was accepted.
    #[must_use]
    pub fn auth(&self) -> Option<&Arc<RequestAuth>> {
        match self {
            Self::Valid(auth) => Some(auth),
            _ => None,
        }
    }

    /// Why the request is refused, if it is.
    #[must_use]
    pub fn failure(&self) -> Option<&JwtFailure> {
        self.refusal().map(|refusal| refusal.failure)
    }

    /// The local reply to answer instead of forwarding, if the request is refused.
    #[must_use]
    pub fn refusal(&self) -> Option<Refusal<'_>> {
        match self {
            Self::Invalid {
                status,
                www_authenticate,
                failure,
            }
            | Self::AudienceMismatch {
                status,
                www_authenticate,
                failure,
            } => Some(Refusal {
                status: *status,
                www_authenticate,
                body: failure.body(),
                failure,
            }),
            Self::NoToken | Self::Valid(_) => None,
        }
    }
}

/// A refused request's local reply: `status` with `www-authenticate` and `body`
/// (`text/plain`), as Envoy's `jwt_authn` answers; `failure` for the log
/// (`failure.response_code_details()`).
#[derive(Clone, Copy, Debug)]
pub struct Refusal<'a> {
    /// 401, or 403 for an audience mismatch.
    pub status: StatusCode,
    /// `Bearer realm="<url>", error="invalid_token"`.
    pub www_authenticate: &'a HeaderValue,
    /// Envoy's text.
    pub body: &'static str,
    /// Why.
    pub failure: &'a JwtFailure,
}

/// An inline JWKS document, parsed, or why it cannot be used.
type InlineKeys = Result<Arc<KeySet>, String>;

/// The proxy's authenticator: the JWKS cache, the parsed inline key sets and the verified
/// tokens, shared by every pod.
pub struct Authenticator {
    jwks: JwksCache,
    inline: Mutex<HashMap<Arc<str>, InlineKeys>>,
    verified: VerifiedCache,
}

impl Authenticator {
    /// An authenticator that dials JWKS servers through `connector`, verifies HTTPS ones with
    /// the system CA bundle, and refreshes keys every 20 minutes: the proxy's.
    #[must_use]
    pub fn with_connector(connector: Arc<dyn Connector>) -> Self {
        Self::new(JwksCache::new(
            connector,
            system_tls(),
            JwksSettings::default(),
        ))
    }

    /// An authenticator fetching remote keys through `jwks`.
    #[must_use]
    pub fn new(jwks: JwksCache) -> Self {
        Self {
            jwks,
            inline: Mutex::new(HashMap::new()),
            verified: VerifiedCache::default(),
        }
    }

    /// The JWKS cache (for `/debug`).
    #[must_use]
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// Starts fetching the remote keys of `rules` that were never fetched, so the first
    /// request does not wait for them (call it when the mesh state changes). Needs a tokio
    /// runtime.
    pub fn prefetch(&self, rules: &[Arc<JwtRule>]) {
        for rule in rules {
            if let JwksSource::Uri(uri) = &rule.jwks {
                self.jwks.prefetch(uri);
            }
        }
    }

    /// Authenticates one request against `rules` (the destination workload's:
    /// `RequestAuthnTable::rules_for`), editing its headers as the module docs say.
    pub async fn authenticate(&self, rules: &[Arc<JwtRule>], parts: &mut Parts) -> AuthnOutcome {
        if rules.is_empty() {
            return AuthnOutcome::NoToken;
        }
        for rule in rules {
            if let Some(name) = &rule.output_payload_to_header {
                parts.headers.remove(name);
            }
            for output in &rule.output_claim_to_headers {
                parts.headers.remove(&output.header);
            }
        }
        if is_cors_preflight(parts) {
            return AuthnOutcome::NoToken;
        }
        let mut locations: Vec<&TokenLocation> = Vec::new();
        for location in rules.iter().flat_map(|rule| &rule.locations) {
            if !locations.contains(&location) {
                locations.push(location);
            }
        }
        let found: Vec<(&TokenLocation, String)> = locations
            .into_iter()
            .filter_map(|location| Some((location, extract(parts, location)?)))
            .collect();
        let mut failure: Option<JwtFailure> = None;
        for (location, raw) in &found {
            match self.check(rules, location, raw).await {
                Ok((rule, auth)) => {
                    apply(parts, &rule, location, raw, &auth);
                    return AuthnOutcome::Valid(auth);
                }
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
        let Some(failure) = failure else {
            return AuthnOutcome::NoToken;
        };
        let www_authenticate = www_authenticate(parts);
        if matches!(failure, JwtFailure::AudienceNotAllowed { .. }) {
            AuthnOutcome::AudienceMismatch {
                status: StatusCode::FORBIDDEN,
                www_authenticate,
                failure,
            }
        } else {
            AuthnOutcome::Invalid {
                status: StatusCode::UNAUTHORIZED,
                www_authenticate,
                failure,
            }
        }
    }

    /// Checks one token found at `location` against the rules that read it from there.
    async fn check(
        &self,
        rules: &[Arc<JwtRule>],
        location: &TokenLocation,
        raw: &str,
    ) -> Result<(Arc<JwtRule>, Arc<RequestAuth>), JwtFailure> {
        let hash = token_hash(raw);
        if let Some(hit) = self.cached(rules, location, &hash).await {
            return Ok(hit);
        }
        let token = Token::parse(raw)?;
        let iss = token.issuer().to_owned();
        let now = now_unix();
        let mut failure = None;
        for rule in rules
            .iter()
            .filter(|rule| rule.checks_issuer(&iss) && rule.locations.contains(location))
        {
            match self.check_rule(rule, &token, hash, now).await {
                Ok(auth) => return Ok((rule.clone(), auth)),
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
        Err(failure.unwrap_or(JwtFailure::UnknownIssuer { iss }))
    }

    /// A verified token, if the cache holds it for one of these rules and its current keys.
    async fn cached(
        &self,
        rules: &[Arc<JwtRule>],
        location: &TokenLocation,
        hash: &TokenHash,
    ) -> Option<(Arc<JwtRule>, Arc<RequestAuth>)> {
        let (held_rule, held_keys, auth) = self.verified.entry(hash)?;
        let rule = rules.iter().find(|rule| {
            rule.locations.contains(location)
                && (Arc::ptr_eq(rule, &held_rule) || ***rule == *held_rule)
        })?;
        let keys = self.keys(rule, "").await.ok()?;
        Arc::ptr_eq(&keys, &held_keys).then(|| (rule.clone(), auth))
    }

    /// Envoy's order: times, audience, then keys and signature.
    async fn check_rule(
        &self,
        rule: &Arc<JwtRule>,
        token: &Token<'_>,
        hash: TokenHash,
        now: u64,
    ) -> Result<Arc<RequestAuth>, JwtFailure> {
        let exp = token.check_times(now)?;
        token.check_audience(&rule.audiences)?;
        let keys = self.keys(rule, token.issuer()).await?;
        keys.verify(token)?;
        let auth = Arc::new(RequestAuth::from_claims(token.claims.clone()));
        self.verified.insert(hash, rule, &keys, &auth, exp, now);
        Ok(auth)
    }

    async fn keys(&self, rule: &JwtRule, iss: &str) -> Result<Arc<KeySet>, JwtFailure> {
        let no_keys = |why: String| JwtFailure::NoKeys {
            iss: iss.to_owned(),
            why,
        };
        match &rule.jwks {
            JwksSource::Uri(uri) => self
                .jwks
                .keys(uri, rule.timeout)
                .await
                .map_err(|e| no_keys(e.to_string())),
            JwksSource::Inline(json) => self.inline_keys(json).map_err(no_keys),
            JwksSource::Rejected => Err(no_keys(format!(
                "{} was rejected (the agent's config errors say why): the tokens it covers are \
                 refused until it is fixed",
                rule.policy
            ))),
        }
    }

    fn inline_keys(&self, json: &Arc<str>) -> InlineKeys {
        let mut inline = self.inline.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(parsed) = inline.get(json) {
            return parsed.clone();
        }
        if inline.len() >= INLINE_CAPACITY {
            inline.clear();
        }
        let parsed = KeySet::from_json(json.as_bytes())
            .map(Arc::new)
            .map_err(|why| format!("the rule's inline jwks: {why}"));
        inline.insert(json.clone(), parsed.clone());
        parsed
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn is_cors_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The token at `location`, if the request has one there.
fn extract(parts: &Parts, location: &TokenLocation) -> Option<String> {
    let token = match location {
        TokenLocation::Header { name, prefix } => {
            parts.headers.get_all(name).iter().find_map(|value| {
                let value = value.to_str().ok()?.trim_start();
                let rest = if prefix == DEFAULT_TOKEN_PREFIX {
                    // Envoy matches the default `Bearer ` in any case.
                    value
                        .get(..prefix.len())
                        .filter(|head| head.eq_ignore_ascii_case(prefix))
                        .map(|_| &value[prefix.len()..])
                } else {
                    value.strip_prefix(prefix.as_str())
                }?;
                Some(rest.trim().to_owned())
            })?
        }
        TokenLocation::Param(name) => parts.uri.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })?,
        TokenLocation::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| value.trim_matches('"').to_owned())
            })?,
    };
    (!token.is_empty()).then_some(token)
}

/// The accepted token's edits: its header removed (unless forwarded), the payload and claims
/// copied to their headers.
fn apply(
    parts: &mut Parts,
    rule: &JwtRule,
    location: &TokenLocation,
    raw: &str,
    auth: &RequestAuth,
) {
    if !rule.forward_original_token
        && let TokenLocation::Header { name, .. } = location
    {
        parts.headers.remove(name);
    }
    if let Some(name) = &rule.output_payload_to_header
        && let Some(payload) = raw.split('.').nth(1)
        && let Ok(value) = HeaderValue::from_str(payload)
    {
        parts.headers.insert(name.clone(), value);
    }
    for output in &rule.output_claim_to_headers {
        let claim = output
            .claim
            .iter()
            .try_fold(&auth.claims, |value, key| value.get(key));
        if let Some(text) = claim.and_then(claim_text)
            && let Ok(value) = HeaderValue::from_str(&text)
        {
            parts.headers.insert(output.header.clone(), value);
        }
    }
}

/// A claim as a header value: strings as they are, numbers and booleans written out, a list
/// of those joined by `,` (Envoy's `claim_to_headers`); objects are not copied.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
                other => claim_text(other),
            })
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.join(",")),
        _ => None,
    }
}

/// `Bearer realm="<scheme>://<host><path>", error="invalid_token"`, as Envoy answers.
fn www_authenticate(parts: &Parts) -> HeaderValue {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let value = format!(
        "Bearer realm=\"{scheme}://{host}{}\", error=\"invalid_token\"",
        parts.uri.path()
    );
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}
