//! `security.istio.io` `RequestAuthentication` (v1 and v1beta1, one shape): which JWTs a
//! workload accepts, and [`RejectedRequestAuthentication`], what a rejected one stands in as.

use serde::{Deserialize, Serialize};

use super::object::Metadata;
use super::security::{RejectedSelector, WorkloadSelector};

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// `selector`: the workloads (pods of the policy's namespace) it applies to; absent or with
    /// no `matchLabels`: the whole namespace, or the whole mesh in the root namespace.
    pub selector: Option<WorkloadSelector>,
    /// `jwtRules`: the issuers whose tokens are validated; all rules of all policies that apply
    /// to a workload are merged.
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// One entry of `jwtRules`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct JwtRuleSpec {
    /// `issuer`: the token's `iss`; required.
    pub issuer: String,
    /// `audiences`: the token's `aud` must hold one of them; empty: any audience.
    pub audiences: Vec<String>,
    /// `jwksUri`: where the signing keys are fetched (http or https).
    pub jwks_uri: Option<String>,
    /// `jwks`: the keys inline, as JWKS JSON; wins over `jwksUri`.
    pub jwks: Option<String>,
    /// `fromHeaders`: where the token is looked for; with `fromParams` and `fromCookies`
    /// empty: `Authorization: Bearer`, then the `access_token` query parameter.
    pub from_headers: Vec<JwtHeaderSpec>,
    /// `fromParams`: query parameters that carry the token.
    pub from_params: Vec<String>,
    /// `fromCookies`: cookies that carry the token.
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`: a header set to the token's payload (base64url) upstream.
    pub output_payload_to_header: Option<String>,
    /// `forwardOriginalToken`: keep the token's header upstream (by default it is removed).
    pub forward_original_token: bool,
    /// `outputClaimToHeaders`: claims copied into request headers upstream.
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// `timeout`: how long a JWKS fetch may hold a request (a duration string); default 5s.
    pub timeout: Option<String>,
}

/// One entry of `fromHeaders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct JwtHeaderSpec {
    /// `name`: the header.
    pub name: String,
    /// `prefix`: what precedes the token in the value (e.g. `"Bearer "`); empty: nothing.
    pub prefix: Option<String>,
}

/// One entry of `outputClaimToHeaders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct ClaimToHeaderSpec {
    /// `header`: the request header to set.
    pub header: String,
    /// `claim`: the claim to copy; nested claims separated by `.`.
    pub claim: String,
}

/// A rejected RequestAuthentication, kept so that leaving it out does not let tokens it
/// would have refused through unchecked. It stands in over its scope as a rule for each of
/// its issuers (or, when they cannot be read, for every issuer) that has no keys: a request
/// carrying such a token gets 401, a request without a token passes as before, until it is
/// fixed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedRequestAuthentication {
    /// The rejected object's `metadata`.
    pub metadata: Metadata,
    /// Its scope, as far as it can be read.
    pub selector: RejectedSelector,
    /// The `issuer` of each of its rules; `None` when they cannot all be read (every token
    /// is refused in its scope then).
    pub issuers: Option<Vec<String>>,
}

impl RejectedRequestAuthentication {
    /// What the rejected object `raw` (as written: `kind`, `metadata`, `spec`) stands in as;
    /// `None` unless it is a RequestAuthentication with a string `metadata.name`.
    #[must_use]
    pub fn from_raw(raw: &serde_json::Value) -> Option<Self> {
        if raw["kind"] != "RequestAuthentication" {
            return None;
        }
        let metadata = super::security::raw_metadata(raw)?;
        let spec = &raw["spec"];
        let selector = super::security::raw_selector(spec.get("selector"));
        let issuers = match spec.get("jwtRules") {
            None | Some(serde_json::Value::Null) => Some(Vec::new()),
            Some(serde_json::Value::Array(rules)) => rules
                .iter()
                .map(|rule| {
                    rule["issuer"]
                        .as_str()
                        .filter(|issuer| !issuer.is_empty())
                        .map(str::to_owned)
                })
                .collect::<Option<Vec<_>>>(),
            Some(_) => None,
        };
        Some(Self {
            metadata,
            selector,
            issuers,
        })
    }
}
