//! Tracing as MeshConfig configures it: the `zipkin` and `opentelemetry` entries of
//! `extensionProviders`, `defaultProviders.tracing` (which of them the mesh reports to) and
//! `defaultConfig.tracing.sampling`, read field by field so that each problem names its
//! field.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::istio;

/// Istio's default sampling, in millionths: 1%.
pub const DEFAULT_SAMPLING_PER_MILLION: u32 = 10_000;

/// Istio's default `maxTagLength`.
pub const DEFAULT_MAX_TAG_LENGTH: u32 = 256;

/// How long an export may take unless the provider says (Envoy's default for collectors).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracing as applied: off (no provider) unless `defaultProviders.tracing` names one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// The providers `defaultProviders.tracing` names, in its order; empty: no spans (only
    /// `x-request-id`, as without tracing).
    #[serde(default)]
    pub providers: Vec<TracingProvider>,
    /// `defaultConfig.tracing.sampling`, in millionths of the requests that arrive without
    /// a sampling decision.
    #[serde(default = "default_sampling")]
    pub sampling_per_million: u32,
}

fn default_sampling() -> u32 {
    DEFAULT_SAMPLING_PER_MILLION
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            sampling_per_million: DEFAULT_SAMPLING_PER_MILLION,
        }
    }
}

impl TracingSettings {
    /// Whether spans are made at all.
    #[must_use]
    pub fn is_on(&self) -> bool {
        !self.providers.is_empty()
    }

    /// Whether any provider is Zipkin (B3 headers are read and written).
    #[must_use]
    pub fn b3(&self) -> bool {
        self.providers
            .iter()
            .any(|p| matches!(p.protocol, TraceProtocol::Zipkin))
    }

    /// Whether any provider is OpenTelemetry (W3C headers are read and written).
    #[must_use]
    pub fn w3c(&self) -> bool {
        self.providers
            .iter()
            .any(|p| !matches!(p.protocol, TraceProtocol::Zipkin))
    }
}

/// How spans reach a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TraceProtocol {
    /// Zipkin v2 JSON over HTTP.
    Zipkin,
    /// OTLP over gRPC (`opentelemetry` without `http`).
    OtlpGrpc,
    /// OTLP over HTTP, protobuf (`opentelemetry.http`).
    OtlpHttp,
}

/// One tracing provider of `extensionProviders`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingProvider {
    /// `name`.
    pub name: String,
    /// `zipkin`, or `opentelemetry` with `grpc` (the default) or `http`.
    pub protocol: TraceProtocol,
    /// `service`: the collector's host (a Service's FQDN or short `name.namespace`).
    pub service: String,
    /// `port`.
    pub port: u16,
    /// The HTTP path spans are posted to: Zipkin `path` (default `/api/v2/spans`), OTLP
    /// `http.path` (default `/v1/traces`); empty for gRPC.
    pub path: String,
    /// Headers (gRPC: metadata) sent with each export.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// How long one export may take before it counts as failed.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// `maxTagLength`: longer tag values are cut.
    pub max_tag_length: u32,
}

/// The tracing settings of `config`, and its problems (the field under `field`, the
/// message). Problems leave tracing off rather than half-configured.
#[must_use]
pub fn tracing_settings(
    config: &istio::MeshConfig,
    field: &str,
) -> (TracingSettings, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let sampling_per_million = match config
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref())
        .and_then(|t| t.sampling.as_ref())
    {
        None => DEFAULT_SAMPLING_PER_MILLION,
        Some(value) => match value.as_f64().filter(|v| (0.0..=100.0).contains(v)) {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked to be within 0..=100, so at most 1e6"
            )]
            Some(percent) => (percent * 10_000.0).round() as u32,
            None => {
                problems.push((
                    format!("{field}.defaultConfig.tracing.sampling"),
                    format!(
                        "expected a percentage from 0.0 to 100.0 (Istio's default is 1.0), \
                         got {value}"
                    ),
                ));
                DEFAULT_SAMPLING_PER_MILLION
            }
        },
    };
    let mut defined: Vec<TracingProvider> = Vec::new();
    for (i, entry) in config.extension_providers.iter().enumerate() {
        let at = format!("{field}.extensionProviders[{i}]");
        let Some(object) = entry.as_object() else {
            continue; // ext_authz reports an entry that is not an object.
        };
        let name = object.get("name").and_then(Value::as_str).unwrap_or("");
        for (kind, protocol) in [
            ("zipkin", TraceProtocol::Zipkin),
            ("opentelemetry", TraceProtocol::OtlpGrpc),
        ] {
            if let Some(spec) = object.get(kind) {
                let before = problems.len();
                let provider =
                    one_provider(name, protocol, spec, &format!("{at}.{kind}"), &mut problems);
                if name.is_empty() {
                    problems.push((
                        format!("{at}.name"),
                        "a tracing provider needs a non-empty name (defaultProviders.tracing \
                         refers to it)"
                            .into(),
                    ));
                } else if problems.len() == before {
                    defined.push(provider);
                }
            }
        }
    }
    let mut providers = Vec::new();
    let names = config
        .default_providers
        .as_ref()
        .map(|d| d.tracing.as_slice())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        match defined.iter().find(|p| &p.name == name) {
            Some(provider) => providers.push(provider.clone()),
            None => {
                let known: Vec<&str> = defined.iter().map(|p| p.name.as_str()).collect();
                problems.push((
                    format!("{field}.defaultProviders.tracing[{i}]"),
                    format!(
                        "{name:?} is not a valid zipkin or opentelemetry provider of \
                         extensionProviders (the valid ones: {known:?})"
                    ),
                ));
            }
        }
    }
    if !problems.is_empty() {
        providers.clear();
    }
    (
        TracingSettings {
            providers,
            sampling_per_million,
        },
        problems,
    )
}

fn one_provider(
    name: &str,
    mut protocol: TraceProtocol,
    spec: &Value,
    at: &str,
    problems: &mut Vec<(String, String)>,
) -> TracingProvider {
    let empty = Map::new();
    let spec = spec.as_object().unwrap_or_else(|| {
        problems.push((at.to_owned(), "expected an object".into()));
        &empty
    });
    let service = match spec.get("service") {
        Some(Value::String(service)) if !service.is_empty() => service.clone(),
        _ => {
            problems.push((
                format!("{at}.service"),
                "the collector's host is required, e.g. \"zipkin.istio-system.svc.cluster.local\""
                    .into(),
            ));
            String::new()
        }
    };
    let port = match spec.get("port").and_then(Value::as_u64) {
        Some(port @ 1..=65535) => u16::try_from(port).unwrap_or_default(),
        _ => {
            problems.push((
                format!("{at}.port"),
                "the collector's port is required, 1-65535 (Zipkin 9411, OTLP gRPC 4317, OTLP \
                 HTTP 4318)"
                    .into(),
            ));
            0
        }
    };
    let max_tag_length = match spec.get("maxTagLength") {
        None => DEFAULT_MAX_TAG_LENGTH,
        Some(value) => match value.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(0) => DEFAULT_MAX_TAG_LENGTH,
            Some(length) => length,
            None => {
                problems.push((
                    format!("{at}.maxTagLength"),
                    format!("expected a positive integer, got {value}"),
                ));
                DEFAULT_MAX_TAG_LENGTH
            }
        },
    };
    // OpenTelemetry keeps its transport settings under `http` or `grpc`; Zipkin at its top.
    let (transport, transport_at) = match protocol {
        TraceProtocol::Zipkin => (Some(spec), at.to_owned()),
        _ => match (spec.get("http"), spec.get("grpc")) {
            (Some(http), None) => {
                protocol = TraceProtocol::OtlpHttp;
                (http.as_object(), format!("{at}.http"))
            }
            (None, grpc) => (grpc.and_then(Value::as_object), format!("{at}.grpc")),
            (Some(_), Some(_)) => {
                problems.push((at.to_owned(), "set http or grpc, not both".into()));
                (None, at.to_owned())
            }
        },
    };
    let transport = transport.unwrap_or(&empty);
    let path = match protocol {
        TraceProtocol::OtlpGrpc => String::new(),
        _ => match transport.get("path") {
            None => match protocol {
                TraceProtocol::Zipkin => "/api/v2/spans".to_owned(),
                _ => "/v1/traces".to_owned(),
            },
            Some(Value::String(path)) if path.starts_with('/') => path.clone(),
            Some(other) => {
                problems.push((
                    format!("{transport_at}.path"),
                    format!("expected an absolute path such as \"/v1/traces\", got {other}"),
                ));
                String::new()
            }
        },
    };
    let timeout = match transport.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(Value::String(text)) => match istio::parse_duration(text) {
            Ok(timeout) if !timeout.is_zero() => timeout,
            _ => {
                problems.push((
                    format!("{transport_at}.timeout"),
                    format!("expected a positive duration such as \"5s\", got {text:?}"),
                ));
                DEFAULT_TIMEOUT
            }
        },
        Some(other) => {
            problems.push((
                format!("{transport_at}.timeout"),
                format!("expected a duration string such as \"5s\", got {other}"),
            ));
            DEFAULT_TIMEOUT
        }
    };
    let headers_key = match protocol {
        TraceProtocol::OtlpGrpc => "initialMetadata",
        _ => "headers",
    };
    let headers = headers(
        transport.get(headers_key),
        &format!("{transport_at}.{headers_key}"),
        problems,
    );
    TracingProvider {
        name: name.to_owned(),
        protocol,
        service,
        port,
        path,
        headers,
        timeout,
        max_tag_length,
    }
}

/// Istio's `[{name, value}]` header lists.
fn headers(
    value: Option<&Value>,
    at: &str,
    problems: &mut Vec<(String, String)>,
) -> Vec<(String, String)> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(list) = value.as_array() else {
        problems.push((at.to_owned(), "expected a list of {name, value}".into()));
        return Vec::new();
    };
    let mut headers = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let name = entry.get("name").and_then(Value::as_str).unwrap_or("");
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid_name {
            problems.push((
                format!("{at}[{i}].name"),
                "a header name is required (letters, digits and -_.)".into(),
            ));
            continue;
        }
        match entry.get("value").and_then(Value::as_str) {
            Some(value)
                if value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) =>
            {
                headers.push((name.to_ascii_lowercase(), value.to_owned()));
            }
            _ => problems.push((
                format!("{at}[{i}].value"),
                "a header value is required: a string of visible ASCII".into(),
            )),
        }
    }
    headers
}

mod millis {
    //! A `Duration` as whole milliseconds on the control wire.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests;
