//! MeshConfig `extensionProviders`: the external authorizers an AuthorizationPolicy with
//! `action: CUSTOM` names (`provider.name`), checked as Istio checks them.
//!
//! shunt serves `envoyExtAuthzHttp`, Envoy's HTTP ext_authz contract. Every provider is kept,
//! valid or not, so that a CUSTOM policy naming one always finds out why it cannot be used:
//! - [`ProviderKind::EnvoyExtAuthzHttp`], usable;
//! - [`ProviderKind::Other`], a provider of another kind (`envoyExtAuthzGrpc`, a tracer, an
//!   access log): not an authorizer shunt can call;
//! - [`ProviderKind::Invalid`], rejected, with the field and why (the agent reports it).
//!
//! A CUSTOM policy whose provider is missing, of another kind or invalid must deny what it
//! selects (Istio's "default-deny-all-due-to-bad-CUSTOM-action"): [`ExtensionProviders::http`]
//! says which, as an error. One bad provider costs only itself: the rest of the mesh config
//! applies.
//!
//! The providers arrive as raw JSON ([`crate::istio::MeshConfig::extension_providers`]) and are
//! read here field by field, so that each problem names its field path and a misspelt field
//! is refused rather than ignored (a typo in `failOpen` or a header list changes who gets in).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::istio::parse_duration;

/// Istio's default `timeout` for an ext_authz provider (600 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Envoy's default `status_on_error` (403 Forbidden).
pub const DEFAULT_STATUS_ON_ERROR: u16 = 403;

/// One entry of `extensionProviders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// `name`, as written (may be empty when that is what is wrong).
    pub name: String,
    /// What it is, or why it cannot be used.
    pub kind: ProviderKind,
}

/// What an extension provider is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProviderKind {
    /// `envoyExtAuthzHttp`, checked.
    EnvoyExtAuthzHttp(ExtAuthzHttp),
    /// Another kind (its field name, e.g. `envoyExtAuthzGrpc`, `zipkin`): not an HTTP
    /// authorizer.
    Other {
        /// The provider's field, as written.
        kind: String,
    },
    /// Rejected.
    Invalid {
        /// The field path, e.g. `data.mesh.extensionProviders[0].envoyExtAuthzHttp.port`.
        field: String,
        /// What is wrong (the first problem; the others are in the agent's errors).
        message: String,
    },
}

/// `envoyExtAuthzHttp`, as the proxy calls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    /// `service` as written: `[<namespace>/]<hostname>`.
    pub service: String,
    /// The namespace part of `service`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The hostname part of `service`: a Service's FQDN or a ServiceEntry host.
    pub host: String,
    /// `port`.
    pub port: u16,
    /// `timeout`: how long a check may take, connecting included; default [`DEFAULT_TIMEOUT`].
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// `pathPrefix`: put before the request's path in the check request; may be empty.
    #[serde(default)]
    pub path_prefix: String,
    /// `failOpen`: allow the request when the authorizer cannot be reached, times out or
    /// answers 5xx.
    #[serde(default)]
    pub fail_open: bool,
    /// `statusOnError`: the status answered instead when not failing open; default
    /// [`DEFAULT_STATUS_ON_ERROR`].
    pub status_on_error: u16,
    /// `includeRequestHeadersInCheck` (or the deprecated `includeHeadersInCheck` when that is
    /// unset): request headers sent along, beyond the ones always sent.
    #[serde(default)]
    pub include_request_headers: Vec<HeaderPattern>,
    /// `includeAdditionalHeadersInCheck`: fixed headers added to every check request, sorted
    /// by name (lowercase), overriding request headers of the same name.
    #[serde(default)]
    pub include_additional_headers: Vec<(String, String)>,
    /// `headersToUpstreamOnAllow`: headers of an allowing answer set on the request.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<HeaderPattern>,
    /// `headersToDownstreamOnAllow`: headers of an allowing answer added to the response.
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<HeaderPattern>,
    /// `headersToDownstreamOnDeny`: headers of a denying answer sent to the client; empty:
    /// every header but `Host`.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<HeaderPattern>,
}

/// A header name pattern of Istio's ext_authz lists: `abc` exact, `abc*` prefix, `*abc`
/// suffix, all case-insensitive (no presence match: a lone `*` is refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderPattern {
    /// The whole name, lowercase.
    Exact(String),
    /// Names starting with this, lowercase.
    Prefix(String),
    /// Names ending with this, lowercase.
    Suffix(String),
}

impl HeaderPattern {
    /// Reads one pattern as Istio does: a leading `*` makes a suffix, else a trailing `*` a
    /// prefix, else the name is exact.
    ///
    /// # Errors
    /// A lone `*`, an empty pattern, or one whose name part is not a header name.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Err(
                "a lone \"*\" is not supported: use a prefix (\"x-*\") or a suffix (\"*-id\") \
                 match"
                    .into(),
            );
        }
        let lower = pattern.to_ascii_lowercase();
        let (parsed, name) = if let Some(suffix) = lower.strip_prefix('*') {
            (Self::Suffix(suffix.to_owned()), suffix)
        } else if let Some(prefix) = lower.strip_suffix('*') {
            (Self::Prefix(prefix.to_owned()), prefix)
        } else {
            (Self::Exact(lower.clone()), lower.as_str())
        };
        if name.is_empty() {
            return Err(format!("{pattern:?} is empty: name a header"));
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "{pattern:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~), with \
                 an optional leading or trailing \"*\""
            ));
        }
        Ok(parsed)
    }

    /// Whether `name` matches, ignoring case.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let fits = |n: &str, part: &str| n.eq_ignore_ascii_case(part);
        match self {
            Self::Exact(exact) => fits(name, exact),
            Self::Prefix(prefix) => name
                .get(..prefix.len())
                .is_some_and(|start| fits(start, prefix)),
            Self::Suffix(suffix) => name
                .len()
                .checked_sub(suffix.len())
                .and_then(|at| name.get(at..))
                .is_some_and(|end| fits(end, suffix)),
        }
    }
}

/// Whether any pattern matches `name`.
#[must_use]
pub fn any_matches(patterns: &[HeaderPattern], name: &str) -> bool {
    patterns.iter().any(|pattern| pattern.matches(name))
}

/// Why a CUSTOM policy's provider cannot be called; the policy must then deny.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// No provider has that name.
    #[error(
        "no extension provider named {name:?} in MeshConfig extensionProviders (defined: \
         {defined:?})"
    )]
    NotFound {
        /// The name the policy gave.
        name: String,
        /// The names MeshConfig defines.
        defined: Vec<String>,
    },
    /// The provider is not `envoyExtAuthzHttp`.
    #[error(
        "extension provider {name:?} is {kind}, not envoyExtAuthzHttp: shunt calls HTTP \
         ext_authz services only"
    )]
    NotHttpAuthorizer {
        /// The provider's name.
        name: String,
        /// Its kind, as written.
        kind: String,
    },
    /// The provider was rejected.
    #[error("extension provider {name:?} is invalid: {field}: {message}")]
    Invalid {
        /// The provider's name.
        name: String,
        /// The field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// `extensionProviders` as checked, in MeshConfig order (`MeshSettings::extension_providers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExtensionProviders(pub Vec<ExtensionProvider>);

impl ExtensionProviders {
    /// Whether MeshConfig defines none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `envoyExtAuthzHttp` provider a CUSTOM policy names.
    ///
    /// # Errors
    /// When there is none by that name, it is of another kind, or it (or another provider of
    /// the same name) was rejected: the policy must deny what it selects.
    pub fn http(&self, name: &str) -> Result<&ExtAuthzHttp, ProviderError> {
        let mut found = None;
        for provider in self.0.iter().filter(|p| p.name == name) {
            match &provider.kind {
                ProviderKind::Invalid { field, message } => {
                    return Err(ProviderError::Invalid {
                        name: name.to_owned(),
                        field: field.clone(),
                        message: message.clone(),
                    });
                }
                ProviderKind::Other { kind } => {
                    found.get_or_insert(Err(ProviderError::NotHttpAuthorizer {
                        name: name.to_owned(),
                        kind: kind.clone(),
                    }));
                }
                ProviderKind::EnvoyExtAuthzHttp(http) => {
                    found.get_or_insert(Ok(http));
                }
            }
        }
        found.unwrap_or_else(|| {
            Err(ProviderError::NotFound {
                name: name.to_owned(),
                defined: self.0.iter().map(|p| p.name.clone()).collect(),
            })
        })
    }

    /// Every rejected provider's field and message, for the agent to report.
    pub fn problems(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|provider| match &provider.kind {
            ProviderKind::Invalid { field, message } => Some((field.as_str(), message.as_str())),
            _ => None,
        })
    }
}

/// The provider kinds Istio's `ExtensionProvider` defines besides `envoyExtAuthzHttp`.
const OTHER_KINDS: [&str; 14] = [
    "envoyExtAuthzGrpc",
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
];

/// `extensionProviders` (raw JSON, as MeshConfig holds them) checked; `field` is their path
/// (e.g. `data.mesh.extensionProviders`). Every entry gives one [`ExtensionProvider`].
#[must_use]
pub fn extension_providers(raw: &[Value], field: &str) -> ExtensionProviders {
    let mut seen = BTreeSet::new();
    let providers = raw
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("{field}[{i}]");
            let mut provider = one_provider(entry, &at);
            let duplicate = !provider.name.is_empty() && !seen.insert(provider.name.clone());
            if duplicate && !matches!(provider.kind, ProviderKind::Invalid { .. }) {
                provider.kind = ProviderKind::Invalid {
                    field: format!("{at}.name"),
                    message: format!(
                        "a second provider named {:?}: names must be unique (CUSTOM policies \
                         naming it deny until one is renamed)",
                        provider.name
                    ),
                };
            }
            provider
        })
        .collect();
    ExtensionProviders(providers)
}

fn one_provider(entry: &Value, at: &str) -> ExtensionProvider {
    let invalid = |name: String, field: String, message: String| ExtensionProvider {
        name,
        kind: ProviderKind::Invalid { field, message },
    };
    let Value::Object(object) = entry else {
        return invalid(
            String::new(),
            at.to_owned(),
            "expected an object with a name and one provider field".into(),
        );
    };
    let name = match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | None => {
            return invalid(
                String::new(),
                format!("{at}.name"),
                "a provider needs a non-empty name (AuthorizationPolicy provider.name refers \
                 to it)"
                    .into(),
            );
        }
        Some(other) => {
            return invalid(
                String::new(),
                format!("{at}.name"),
                format!("expected a string, got {}", kind_of(other)),
            );
        }
    };
    let kinds: Vec<&String> = object.keys().filter(|key| *key != "name").collect();
    let kind = match kinds.as_slice() {
        [kind] => kind.as_str(),
        [] => {
            return invalid(
                name,
                at.to_owned(),
                "no provider field: expected one of envoyExtAuthzHttp, envoyExtAuthzGrpc, ..."
                    .into(),
            );
        }
        several => {
            return invalid(
                name,
                at.to_owned(),
                format!("one provider field expected, found {several:?}"),
            );
        }
    };
    if kind == "envoyExtAuthzHttp" {
        let field = format!("{at}.envoyExtAuthzHttp");
        return match ext_authz_http(&object[kind], &field) {
            Ok(http) => ExtensionProvider {
                name,
                kind: ProviderKind::EnvoyExtAuthzHttp(http),
            },
            Err((field, message)) => invalid(name, field, message),
        };
    }
    if OTHER_KINDS.contains(&kind) {
        ExtensionProvider {
            name,
            kind: ProviderKind::Other {
                kind: kind.to_owned(),
            },
        }
    } else {
        invalid(
            name,
            format!("{at}.{kind}"),
            format!(
                "unknown provider field {kind:?}: expected envoyExtAuthzHttp or another of \
                 Istio's ExtensionProvider kinds"
            ),
        )
    }
}

/// A problem: the field path and what is wrong.
type Problem = (String, String);

fn ext_authz_http(value: &Value, at: &str) -> Result<ExtAuthzHttp, Problem> {
    let Value::Object(object) = value else {
        return Err((
            at.to_owned(),
            format!("expected an object, got {}", kind_of(value)),
        ));
    };
    let fields = Fields { object, at };
    fields.refuse_unknown(&[
        "service",
        "port",
        "timeout",
        "pathPrefix",
        "failOpen",
        "clearRouteCache",
        "statusOnError",
        "includeHeadersInCheck",
        "includeRequestHeadersInCheck",
        "includeAdditionalHeadersInCheck",
        "includeRequestBodyInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
    ])?;
    if object.contains_key("includeRequestBodyInCheck") {
        return Err((
            fields.path("includeRequestBodyInCheck"),
            "shunt does not send request bodies to an ext_authz service yet: remove the field \
             (CUSTOM policies naming this provider deny until then, since the authorizer would \
             decide without the body it asked for)"
                .into(),
        ));
    }

    let service = fields.string("service")?.ok_or_else(|| {
        (
            fields.path("service"),
            "required: [<namespace>/]<hostname>".into(),
        )
    })?;
    let (namespace, host) = split_service(&service).map_err(|m| (fields.path("service"), m))?;
    let port = fields
        .port("port")?
        .ok_or_else(|| (fields.path("port"), "required: the service's port".into()))?;
    let timeout = match fields.string("timeout")? {
        None => DEFAULT_TIMEOUT,
        Some(text) => {
            let timeout =
                parse_duration(&text).map_err(|e| (fields.path("timeout"), e.to_string()))?;
            if timeout < Duration::from_millis(1) {
                return Err((
                    fields.path("timeout"),
                    format!("{text:?}: a timeout is at least 1ms"),
                ));
            }
            timeout
        }
    };
    let path_prefix = fields.string("pathPrefix")?.unwrap_or_default();
    if !path_prefix.is_empty() {
        check_path_prefix(&path_prefix).map_err(|m| (fields.path("pathPrefix"), m))?;
    }
    let fail_open = fields.bool("failOpen")?.unwrap_or(false);
    // Inbound requests are not routed again after the check: there is no route cache to clear.
    fields.bool("clearRouteCache")?;
    let status_on_error = fields
        .status("statusOnError")?
        .unwrap_or(DEFAULT_STATUS_ON_ERROR);
    let include_request_headers = match fields.patterns("includeRequestHeadersInCheck")? {
        Some(patterns) => patterns,
        // The deprecated name, read only when the new one is unset, as Istio does.
        None => fields
            .patterns("includeHeadersInCheck")?
            .unwrap_or_default(),
    };
    let include_additional_headers = fields.header_map("includeAdditionalHeadersInCheck")?;
    Ok(ExtAuthzHttp {
        service,
        namespace,
        host,
        port,
        timeout,
        path_prefix,
        fail_open,
        status_on_error,
        include_request_headers,
        include_additional_headers,
        headers_to_upstream_on_allow: fields
            .patterns("headersToUpstreamOnAllow")?
            .unwrap_or_default(),
        headers_to_downstream_on_allow: fields
            .patterns("headersToDownstreamOnAllow")?
            .unwrap_or_default(),
        headers_to_downstream_on_deny: fields
            .patterns("headersToDownstreamOnDeny")?
            .unwrap_or_default(),
    })
}

/// `[<namespace>/]<hostname>`.
fn split_service(service: &str) -> Result<(Option<String>, String), String> {
    let (namespace, host) = match service.split_once('/') {
        Some((namespace, host)) => (Some(namespace), host),
        None => (None, service),
    };
    if let Some(namespace) = namespace
        && !is_dns_label(namespace)
    {
        return Err(format!(
            "{service:?}: {namespace:?} is not a namespace name (lowercase letters, digits and \
             '-')"
        ));
    }
    let host_ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label);
    if !host_ok {
        return Err(format!(
            "{service:?} is not [<namespace>/]<hostname>: the hostname is a Service's FQDN \
             (e.g. \"ext-authz.foo.svc.cluster.local\") or a ServiceEntry host, lowercase, no \
             wildcard"
        ));
    }
    Ok((namespace.map(str::to_owned), host.to_owned()))
}

/// A path prefix: starts with `/`, and holds only what a request target may (no query, no
/// fragment, no spaces or controls), since it is put in front of every checked path.
fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must begin with \"/\""));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if let Some(bad) = prefix.bytes().find(|b| !allowed(*b)) {
        return Err(format!(
            "{prefix:?} holds {:?}, which a request path may not (no query, fragment, spaces \
             or controls)",
            char::from(bad)
        ));
    }
    Ok(())
}

/// Kubernetes' DNS-1123 label.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The HTTP statuses Envoy's `type.v3.StatusCode` knows (`statusOnError` must be one), less
/// the informational ones, which cannot end a request.
const ENVOY_STATUS_CODES: [u16; 55] = [
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400,
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422,
    423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// One ext_authz provider object, read field by field.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    at: &'a str,
}

impl Fields<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn refuse_unknown(&self, known: &[&str]) -> Result<(), Problem> {
        match self
            .object
            .keys()
            .find(|key| !known.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => Err((
                self.path(key),
                format!(
                    "unknown field {key:?} of envoyExtAuthzHttp (a misspelt field could change \
                     who is let in, so the provider is refused): expected one of {}",
                    known.join(", ")
                ),
            )),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        // YAML's empty value (`pathPrefix:`) is a null; Kubernetes reads it as absent.
        self.object.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "true or false", other)),
        }
    }

    /// A port: a number, or a string holding one (protobuf JSON writes uint32 either way).
    fn port(&self, key: &str) -> Result<Option<u16>, Problem> {
        let number = match self.get(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(other) => return Err(self.wrong(key, "a port number", other)),
        };
        match number
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
        {
            Some(port) => Ok(Some(port)),
            None => Err((
                self.path(key),
                format!("{} is not a port: expected 1 to 65535", self.object[key]),
            )),
        }
    }

    /// `statusOnError`: a string holding a status (a bare number is read too).
    fn status(&self, key: &str) -> Result<Option<u16>, Problem> {
        let number = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) if s.is_empty() => return Ok(None),
            Some(Value::String(s)) => s.trim().parse::<u16>().ok(),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Some(other) => return Err(self.wrong(key, "a status such as \"403\"", other)),
        };
        match number.filter(|n| ENVOY_STATUS_CODES.contains(n)) {
            Some(status) => Ok(Some(status)),
            None => Err((
                self.path(key),
                format!(
                    "{} is not an HTTP status Envoy answers with (200-511, e.g. \"403\" or \
                     \"503\")",
                    self.object[key]
                ),
            )),
        }
    }

    fn patterns(&self, key: &str) -> Result<Option<Vec<HeaderPattern>>, Problem> {
        let items = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "a list of header names", other)),
        };
        let mut patterns = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{}[{i}]", self.path(key));
            let Value::String(text) = item else {
                return Err((at, format!("expected a header name, got {}", kind_of(item))));
            };
            patterns.push(HeaderPattern::parse(text).map_err(|message| (at, message))?);
        }
        Ok(Some(patterns))
    }

    fn header_map(&self, key: &str) -> Result<Vec<(String, String)>, Problem> {
        let entries = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Object(entries)) => entries,
            Some(other) => return Err(self.wrong(key, "a map of header name to value", other)),
        };
        let mut headers = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            let at = format!("{}.{name}", self.path(key));
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() || lower.starts_with(':') {
                return Err((at, format!("{name:?} is not a header name")));
            }
            let Value::String(value) = value else {
                return Err((at, format!("expected a string, got {}", kind_of(value))));
            };
            if http::HeaderValue::from_str(value).is_err() {
                return Err((
                    at,
                    format!("{value:?} is not a header value (visible ASCII, spaces, tabs)"),
                ));
            }
            headers.push((lower, value.clone()));
        }
        headers.sort();
        // `X-A` and `x-a` name one header: refuse the ambiguity rather than pick one.
        if let Some(pair) = headers.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err((
                self.path(key),
                format!("{:?} is given twice (header names ignore case)", pair[0].0),
            ));
        }
        Ok(headers)
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> Problem {
        (
            self.path(key),
            format!("expected {expected}, got {}", kind_of(got)),
        )
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

mod millis {
    //! A `Duration` as whole milliseconds on the control wire.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests;
