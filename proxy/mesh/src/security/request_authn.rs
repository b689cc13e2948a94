//! `RequestAuthentication`, compiled: the JWT rules each workload's inbound requests are
//! checked against ([`RequestAuthnTable::rules_for`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::Error;
use crate::istio::{self, RejectedRequestAuthentication, RejectedSelector};
use crate::model::{MeshState, Workload};
use crate::routing::ObjectRef;

/// How long a JWKS fetch may hold a request when a rule sets no `timeout` (Istio's default).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The header and prefix a token is read from when a rule names no location, before the
/// `access_token` query parameter.
pub const DEFAULT_TOKEN_PREFIX: &str = "Bearer ";

/// One `jwtRules` entry, checked: what the proxy's authenticator needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRule {
    /// The RequestAuthentication it is from.
    pub policy: ObjectRef,
    /// Its index in `spec.jwtRules`.
    pub index: usize,
    /// `issuer`: the `iss` a token must carry for this rule to check it. `None` only for the
    /// stand-in of a rejected policy whose issuers cannot be read: every token is its.
    pub issuer: Option<String>,
    /// `audiences`; empty: any.
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Where the token is looked for, in order.
    pub locations: Vec<TokenLocation>,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<HeaderName>,
    /// `outputClaimToHeaders`.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
    /// `timeout`: how long fetching the keys may hold a request.
    pub timeout: Duration,
}

impl JwtRule {
    /// Whether the rule is a rejected policy's stand-in (its tokens always fail).
    #[must_use]
    pub fn rejected(&self) -> bool {
        self.jwks == JwksSource::Rejected
    }

    /// Whether it checks tokens issued by `iss`.
    #[must_use]
    pub fn checks_issuer(&self, iss: &str) -> bool {
        self.issuer.as_deref().is_none_or(|issuer| issuer == iss)
    }
}

/// Where a rule's signing keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `jwksUri`: an `http` or `https` URI the proxy fetches.
    Uri(http::Uri),
    /// `jwks`: JWKS JSON, inline (its shape checked: an object with a `keys` list).
    Inline(Arc<str>),
    /// The stand-in of a rejected RequestAuthentication: no keys, so every token of its issuer
    /// fails (401) until the policy is fixed.
    Rejected,
}

/// One place a token is read from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenLocation {
    /// A header; the value is `prefix` then the token (the default `Bearer ` prefix is matched
    /// in any case, as Envoy does).
    Header {
        /// The header.
        name: HeaderName,
        /// What precedes the token.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Envoy's default: `Authorization: Bearer <token>`, then `?access_token=<token>`.
    #[must_use]
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::Header {
                name: http::header::AUTHORIZATION,
                prefix: DEFAULT_TOKEN_PREFIX.to_owned(),
            },
            Self::Param("access_token".to_owned()),
        ]
    }
}

/// One `outputClaimToHeaders` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// The request header set upstream.
    pub header: HeaderName,
    /// The claim, as its path of nested keys (`a.b` is `["a", "b"]`).
    pub claim: Vec<String>,
}

/// The compiled RequestAuthentications of one `MeshState`. Scope as Istio's
/// (`getConfigsForWorkload`): a policy applies to the workloads of its namespace its selector
/// matches (no selector: all of them); a policy in the root namespace applies to the
/// workloads of every namespace its selector matches. The rules of every policy that applies
/// are merged ([`Self::rules_for`]): a token is checked by the rules of its issuer, and valid
/// when one of them accepts it.
///
/// **Failing closed.** A policy that cannot be applied (a missing issuer, a bad `jwksUri`,
/// header or duration, a field shunt does not know) is rejected whole, with its object and
/// field; left out, the tokens it would have refused would pass unchecked, and a `DENY` on
/// their principals would not match. So it stands in over its scope as a rule per issuer
/// with no keys ([`JwksSource::Rejected`]; every issuer when they cannot be read): tokens of
/// those issuers get 401, requests without a token pass as before.
#[derive(Debug, Default)]
pub struct RequestAuthnTable {
    /// Per namespace, in order: creationTimestamp, then name.
    namespaces: HashMap<String, Vec<Policy>>,
    root: String,
}

#[derive(Debug)]
struct Policy {
    object: ObjectRef,
    /// A rejected policy's stand-in.
    rejected: bool,
    /// Labels a pod must carry; empty: every pod (no selector, or the unreadable selector of
    /// a rejected policy).
    labels: BTreeMap<String, String>,
    rules: Vec<Arc<JwtRule>>,
}

impl RequestAuthnTable {
    /// Compiles `state`'s RequestAuthentications and the stand-ins of the rejected ones
    /// (`state.rejected_request_authentications`). Returns every problem found; an invalid
    /// policy is left out and stands in as the type's docs say.
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
        let root = state.mesh.root_namespace.clone();
        let mut errors = Vec::new();
        let mut compiled: Vec<(Option<String>, Policy)> = Vec::new();
        let mut rejected: Vec<RejectedRequestAuthentication> = Vec::new();
        for written in &state.request_authentications {
            let object = object_ref(&written.metadata);
            match compile(written, &object) {
                Ok(policy) => {
                    compiled.push((written.metadata.creation_timestamp.clone(), policy));
                }
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|(field, message)| Error::Invalid {
                        object: object.clone(),
                        field,
                        message,
                    }));
                    // The agent sends only valid policies; should an invalid one arrive
                    // anyway, it stands in as the agent's rejected ones do.
                    if let Ok(mut raw) = serde_json::to_value(written) {
                        raw["kind"] = "RequestAuthentication".into();
                        rejected.extend(RejectedRequestAuthentication::from_raw(&raw));
                    }
                }
            }
        }
        for stand_in in state
            .rejected_request_authentications
            .iter()
            .chain(&rejected)
        {
            let object = object_ref(&stand_in.metadata);
            let policy = Policy {
                rules: stand_in_rules(stand_in, &object),
                object,
                rejected: true,
                labels: match &stand_in.selector {
                    RejectedSelector::Labels(labels) => labels.clone(),
                    RejectedSelector::None | RejectedSelector::Unreadable => BTreeMap::new(),
                },
            };
            compiled.push((stand_in.metadata.creation_timestamp.clone(), policy));
        }
        compiled.sort_by(|(a_time, a), (b_time, b)| {
            (a_time, &a.object.namespace, &a.object.name).cmp(&(
                b_time,
                &b.object.namespace,
                &b.object.name,
            ))
        });
        let mut namespaces: HashMap<String, Vec<Policy>> = HashMap::new();
        for (_, policy) in compiled {
            namespaces
                .entry(policy.object.namespace.to_string())
                .or_default()
                .push(policy);
        }
        (Self { namespaces, root }, errors)
    }

    /// Whether any RequestAuthentication applies to `workload` (without collecting its
    /// rules): its requests then take its own inbound pass.
    #[must_use]
    pub fn applies(&self, workload: &Workload) -> bool {
        self.applying(workload)
            .any(|policy| !policy.rules.is_empty())
    }

    /// The rules `workload`'s inbound requests are checked against: those of the root
    /// namespace's policies that select it, then those of its own namespace's; empty when no
    /// RequestAuthentication applies (tokens are then neither checked nor removed).
    #[must_use]
    pub fn rules_for(&self, workload: &Workload) -> Vec<Arc<JwtRule>> {
        self.applying(workload)
            .flat_map(|policy| policy.rules.iter().cloned())
            .collect()
    }

    /// The policies that apply to `workload`, in [`Self::rules_for`]'s order, for
    /// `shuntctl policies`: each with whether it is a rejected policy's stand-in.
    #[must_use]
    pub fn policies_for(&self, workload: &Workload) -> Vec<(ObjectRef, bool)> {
        self.applying(workload)
            .map(|policy| (policy.object.clone(), policy.rejected))
            .collect()
    }

    fn applying<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Policy> + 'a {
        let own = (workload.namespace != self.root).then_some(workload.namespace.as_str());
        [Some(self.root.as_str()), own]
            .into_iter()
            .flatten()
            .filter_map(|namespace| self.namespaces.get(namespace))
            .flatten()
            .filter(|policy| {
                policy
                    .labels
                    .iter()
                    .all(|(k, v)| workload.labels.get(k) == Some(v))
            })
    }
}

/// Checks `state`'s RequestAuthentications exactly as [`RequestAuthnTable::build`] compiles
/// them.
#[must_use]
pub fn validate_request_authentications(state: &MeshState) -> Vec<Error> {
    RequestAuthnTable::build(state).1
}

fn object_ref(metadata: &istio::Metadata) -> ObjectRef {
    ObjectRef {
        kind: "RequestAuthentication",
        namespace: metadata.namespace.as_str().into(),
        name: metadata.name.as_str().into(),
    }
}

fn stand_in_rules(
    stand_in: &RejectedRequestAuthentication,
    object: &ObjectRef,
) -> Vec<Arc<JwtRule>> {
    let rule = |index, issuer| {
        Arc::new(JwtRule {
            policy: object.clone(),
            index,
            issuer,
            audiences: Vec::new(),
            jwks: JwksSource::Rejected,
            locations: TokenLocation::defaults(),
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
            forward_original_token: false,
            timeout: DEFAULT_JWKS_TIMEOUT,
        })
    };
    match &stand_in.issuers {
        Some(issuers) => issuers
            .iter()
            .enumerate()
            .map(|(index, issuer)| rule(index, Some(issuer.clone())))
            .collect(),
        None => vec![rule(0, None)],
    }
}

type Problems = Vec<(String, String)>;

/// Checks one policy; the problems by field path.
fn compile(written: &istio::RequestAuthentication, object: &ObjectRef) -> Result<Policy, Problems> {
    let mut problems = Vec::new();
    let labels = written
        .spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    for (key, value) in &labels {
        if key.is_empty() {
            problems.push((
                "spec.selector.matchLabels".to_owned(),
                "an empty label key".to_owned(),
            ));
        } else if key.contains('*') || value.contains('*') {
            problems.push((
                format!("spec.selector.matchLabels.{key}"),
                "wildcards are not supported in a selector (Istio rejects them): name the \
                 exact label value"
                    .to_owned(),
            ));
        }
    }
    let rules = written
        .spec
        .jwt_rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| compile_rule(rule, object, index, &mut problems).map(Arc::new))
        .collect();
    if problems.is_empty() {
        Ok(Policy {
            object: object.clone(),
            rejected: false,
            labels,
            rules,
        })
    } else {
        Err(problems)
    }
}

fn compile_rule(
    rule: &istio::JwtRuleSpec,
    object: &ObjectRef,
    index: usize,
    problems: &mut Problems,
) -> Option<JwtRule> {
    let field = &format!("spec.jwtRules[{index}]");
    let before = problems.len();
    let mut problem = |at: String, message: String| problems.push((at, message));
    if rule.issuer.is_empty() {
        problem(
            format!("{field}.issuer"),
            "a JWT rule needs an issuer: the `iss` its tokens carry".to_owned(),
        );
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            problem(
                format!("{field}.audiences[{i}]"),
                "an empty audience: remove it, or name the `aud` tokens must carry".to_owned(),
            );
        }
    }
    let jwks = match (&rule.jwks, &rule.jwks_uri) {
        // Istio: with both set, `jwks` is used and `jwksUri` ignored.
        (Some(jwks), _) => match check_jwks(jwks) {
            Ok(()) => Some(JwksSource::Inline(jwks.as_str().into())),
            Err(why) => {
                problem(format!("{field}.jwks"), why);
                None
            }
        },
        (None, Some(uri)) => match check_jwks_uri(uri) {
            Ok(uri) => Some(JwksSource::Uri(uri)),
            Err(why) => {
                problem(format!("{field}.jwksUri"), why);
                None
            }
        },
        (None, None) => {
            problem(
                field.to_owned(),
                "neither jwksUri nor jwks: shunt does not discover keys through the issuer's \
                 OpenID configuration; set jwksUri (or jwks inline)"
                    .to_owned(),
            );
            None
        }
    };
    let mut locations = Vec::new();
    for (i, header) in rule.from_headers.iter().enumerate() {
        match header_name(&header.name) {
            Ok(name) => locations.push(TokenLocation::Header {
                name,
                prefix: header.prefix.clone().unwrap_or_default(),
            }),
            Err(why) => problem(format!("{field}.fromHeaders[{i}].name"), why),
        }
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            problem(
                format!("{field}.fromParams[{i}]"),
                "an empty query parameter name".to_owned(),
            );
        } else {
            locations.push(TokenLocation::Param(param.clone()));
        }
    }
    for (i, cookie) in rule.from_cookies.iter().enumerate() {
        if cookie.is_empty() || cookie.contains(['=', ';', ' ', ',']) {
            problem(
                format!("{field}.fromCookies[{i}]"),
                format!("{cookie:?} is not a cookie name"),
            );
        } else {
            locations.push(TokenLocation::Cookie(cookie.clone()));
        }
    }
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        locations = TokenLocation::defaults();
    }
    let output_payload_to_header = rule.output_payload_to_header.as_deref().and_then(|name| {
        header_name(name)
            .map_err(|why| problem(format!("{field}.outputPayloadToHeader"), why))
            .ok()
    });
    let mut output_claim_to_headers = Vec::new();
    for (i, entry) in rule.output_claim_to_headers.iter().enumerate() {
        let header = header_name(&entry.header)
            .map_err(|why| problem(format!("{field}.outputClaimToHeaders[{i}].header"), why))
            .ok();
        let claim: Vec<String> = entry.claim.split('.').map(str::to_owned).collect();
        if claim.iter().any(String::is_empty) {
            problem(
                format!("{field}.outputClaimToHeaders[{i}].claim"),
                format!(
                    "{:?} is not a claim: a name, or nested names separated by '.'",
                    entry.claim
                ),
            );
        } else if let Some(header) = header {
            output_claim_to_headers.push(ClaimToHeader { header, claim });
        }
    }
    let timeout = match rule.timeout.as_deref() {
        None => DEFAULT_JWKS_TIMEOUT,
        Some(text) => match istio::parse_duration(text) {
            Ok(timeout) if !timeout.is_zero() => timeout,
            Ok(_) => {
                problem(
                    format!("{field}.timeout"),
                    "the timeout must be above zero".to_owned(),
                );
                DEFAULT_JWKS_TIMEOUT
            }
            Err(e) => {
                problem(format!("{field}.timeout"), e.to_string());
                DEFAULT_JWKS_TIMEOUT
            }
        },
    };
    if problems.len() > before {
        return None;
    }
    Some(JwtRule {
        policy: object.clone(),
        index,
        issuer: Some(rule.issuer.clone()),
        audiences: rule.audiences.clone(),
        jwks: jwks?,
        locations,
        output_payload_to_header,
        output_claim_to_headers,
        forward_original_token: rule.forward_original_token,
        timeout,
    })
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("{name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~; no pseudo-headers)")
    })
}

fn check_jwks_uri(uri: &str) -> Result<http::Uri, String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("{uri:?} is not a URI: {e}"))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{uri:?}: the JWKS is fetched over http or https; write the URI with its scheme"
            ));
        }
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("{uri:?} names no host"));
    }
    Ok(parsed)
}

/// The shape of inline JWKS JSON: an object with a list of key objects under `keys`, each
/// with a `kty`; the keys themselves are read by the proxy.
fn check_jwks(jwks: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value["keys"]
        .as_array()
        .ok_or("a JWKS is an object with a `keys` list")?;
    if keys.is_empty() {
        return Err("the JWKS has no keys: no token could be verified".to_owned());
    }
    for (i, key) in keys.iter().enumerate() {
        if !key["kty"].is_string() {
            return Err(format!("keys[{i}] has no `kty`: not a JSON Web Key"));
        }
    }
    Ok(())
}
