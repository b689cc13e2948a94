//! Compiles Istio `Telemetry` objects into what applies to each workload, with Istio's
//! scoping: an object in the root namespace without a selector covers the mesh, one in another
//! namespace without a selector covers that namespace, one with a selector covers the matching
//! pods of its namespace. The most specific scope wins field by field (workload over
//! namespace over mesh); metric overrides accumulate in that order, so a workload can re-enable
//! what its namespace disabled. A bad object is left out with an error naming it and the field;
//! the others still apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::istio::{AccessLoggingSpec, MetricsOverride, Telemetry, TracingSpec, TrafficMatch};

mod cel;

pub use cel::{AccessLogAttributes, CelFilter};

#[cfg(test)]
mod tests;

/// Why a Telemetry object (or one field of it) was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TelemetryError {
    /// A mode that is not CLIENT, SERVER or CLIENT_AND_SERVER.
    #[error(
        "Telemetry {object}: {field}: mode {value:?} is not CLIENT, SERVER or CLIENT_AND_SERVER"
    )]
    Mode {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// What was written.
        value: String,
    },
    /// A sampling percentage outside 0..=100.
    #[error("Telemetry {object}: {field}: {value} is not a percentage between 0 and 100")]
    Percentage {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// What was written.
        value: String,
    },
    /// A provider that MeshConfig does not define.
    #[error(
        "Telemetry {object}: {field}: provider {name:?} is not among MeshConfig's extensionProviders (nor built in); check the name"
    )]
    Provider {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// The provider name.
        name: String,
    },
    /// A metric name Istio does not define.
    #[error(
        "Telemetry {object}: {field}: metric {value:?} is not one of Istio's (REQUEST_COUNT, REQUEST_DURATION, ..., ALL_METRICS)"
    )]
    Metric {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// What was written.
        value: String,
    },
    /// A tag operation other than UPSERT or REMOVE.
    #[error("Telemetry {object}: {field}: operation {value:?} is not UPSERT or REMOVE")]
    TagOperation {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// What was written.
        value: String,
    },
    /// A custom tag with not exactly one of literal, environment, header.
    #[error(
        "Telemetry {object}: {field}: a custom tag needs exactly one of literal, environment, header"
    )]
    CustomTag {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
    },
    /// A CEL filter that does not parse.
    #[error("Telemetry {object}: {field}: the CEL expression does not parse: {reason}")]
    Cel {
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// The parser's message.
        reason: String,
    },
    /// `targetRefs`, which shunt does not act on (no gateway/service targets here).
    #[error(
        "Telemetry {object}: spec.targetRefs: shunt applies Telemetry by selector or namespace only; use spec.selector"
    )]
    TargetRefs {
        /// `namespace/name`.
        object: String,
    },
}

/// Which side of a connection a setting is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The outbound (client) side.
    Client,
    /// The inbound (server) side.
    Server,
}

/// The metrics Istio's standard set defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

impl Metric {
    /// Every metric, for `ALL_METRICS`.
    pub const ALL: [Self; 10] = [
        Self::RequestCount,
        Self::RequestDuration,
        Self::RequestSize,
        Self::ResponseSize,
        Self::TcpOpenedConnections,
        Self::TcpClosedConnections,
        Self::TcpSentBytes,
        Self::TcpReceivedBytes,
        Self::GrpcRequestMessages,
        Self::GrpcResponseMessages,
    ];

    /// The Prometheus name this metric is exported under.
    #[must_use]
    pub const fn prometheus_name(self) -> &'static str {
        match self {
            Self::RequestCount => "istio_requests_total",
            Self::RequestDuration => "istio_request_duration_milliseconds",
            Self::RequestSize => "istio_request_bytes",
            Self::ResponseSize => "istio_response_bytes",
            Self::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            Self::TcpClosedConnections => "istio_tcp_connections_closed_total",
            Self::TcpSentBytes => "istio_tcp_sent_bytes_total",
            Self::TcpReceivedBytes => "istio_tcp_received_bytes_total",
            Self::GrpcRequestMessages => "istio_request_messages_total",
            Self::GrpcResponseMessages => "istio_response_messages_total",
        }
    }

    fn parse(name: &str) -> Option<Vec<Self>> {
        Some(match name {
            "ALL_METRICS" => Self::ALL.to_vec(),
            "REQUEST_COUNT" => vec![Self::RequestCount],
            "REQUEST_DURATION" => vec![Self::RequestDuration],
            "REQUEST_SIZE" => vec![Self::RequestSize],
            "RESPONSE_SIZE" => vec![Self::ResponseSize],
            "TCP_OPENED_CONNECTIONS" => vec![Self::TcpOpenedConnections],
            "TCP_CLOSED_CONNECTIONS" => vec![Self::TcpClosedConnections],
            "TCP_SENT_BYTES" => vec![Self::TcpSentBytes],
            "TCP_RECEIVED_BYTES" => vec![Self::TcpReceivedBytes],
            "GRPC_REQUEST_MESSAGES" => vec![Self::GrpcRequestMessages],
            "GRPC_RESPONSE_MESSAGES" => vec![Self::GrpcResponseMessages],
            _ => return None,
        })
    }

    /// The metric a custom name (Istio's, without the `istio_` prefix) stands for.
    fn from_custom(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|metric| metric.prometheus_name().strip_prefix("istio_") == Some(name))
    }
}

/// A custom tracing tag's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomTag {
    /// A fixed value.
    Literal(String),
    /// An environment variable of the proxy, with its default.
    Environment(String, Option<String>),
    /// A request header, with its default.
    Header(String, Option<String>),
}

/// The tracing settings that apply to one workload on one side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracingSettings {
    /// The provider names; empty: MeshConfig's default.
    pub providers: Vec<String>,
    /// `randomSamplingPercentage`; `None`: MeshConfig's default.
    pub sampling_percentage: Option<f64>,
    /// `disableSpanReporting`.
    pub disable_span_reporting: bool,
    /// `customTags`, merged over the scopes.
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// What happens to one metric of one workload on one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricSettings {
    /// Not recorded at all.
    pub disabled: bool,
    /// Tags to add or replace, with their `value` as written (Istio's CEL, not evaluated yet).
    pub upsert: BTreeMap<String, String>,
    /// Tags to drop.
    pub remove: BTreeSet<String>,
}

/// The access-log settings of one workload on one side.
#[derive(Clone, Debug, Default)]
pub struct AccessLogSettings {
    /// No lines at all.
    pub disabled: bool,
    /// Only lines for which this yields true.
    pub filter: Option<Arc<CelFilter>>,
}

impl PartialEq for AccessLogSettings {
    fn eq(&self, other: &Self) -> bool {
        self.disabled == other.disabled
            && self.filter.as_ref().map(|f| f.source()) == other.filter.as_ref().map(|f| f.source())
    }
}

impl AccessLogSettings {
    /// Whether a line with these attributes is written.
    #[must_use]
    pub fn should_log(&self, attributes: &AccessLogAttributes) -> bool {
        !self.disabled
            && self
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(attributes))
    }
}

/// Everything Telemetry resolves to for one workload on one side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadTelemetry {
    /// Tracing.
    pub tracing: TracingSettings,
    /// Per metric; a metric not listed is recorded as usual.
    pub metrics: BTreeMap<Metric, MetricSettings>,
    /// Access logs.
    pub access_log: AccessLogSettings,
}

impl WorkloadTelemetry {
    /// Whether `metric` is recorded.
    #[must_use]
    pub fn metric_enabled(&self, metric: Metric) -> bool {
        self.metrics
            .get(&metric)
            .is_none_or(|settings| !settings.disabled)
    }
}

/// One validated Telemetry object.
#[derive(Clone, Debug)]
struct Compiled {
    namespace: String,
    selector: Option<BTreeMap<String, String>>,
    name: String,
    tracing: Vec<(BTreeSet<Mode>, TracingSettingsPart)>,
    metrics: Vec<(BTreeSet<Mode>, Vec<Metric>, MetricsPart)>,
    access_log: Vec<(BTreeSet<Mode>, AccessLogPart)>,
}

#[derive(Clone, Debug, Default)]
struct TracingSettingsPart {
    providers: Vec<String>,
    sampling: Option<f64>,
    disable: Option<bool>,
    tags: BTreeMap<String, CustomTag>,
}

#[derive(Clone, Debug, Default)]
struct MetricsPart {
    disabled: Option<bool>,
    upsert: BTreeMap<String, String>,
    remove: BTreeSet<String>,
}

#[derive(Clone, Debug, Default)]
struct AccessLogPart {
    disabled: Option<bool>,
    filter: Option<Arc<CelFilter>>,
}

/// Every Telemetry object, validated and ready to resolve per workload.
#[derive(Clone, Debug, Default)]
pub struct TelemetryIndex {
    root_namespace: String,
    objects: Vec<Compiled>,
}

/// Built-in provider names, valid without a MeshConfig entry.
const BUILTIN_PROVIDERS: [&str; 2] = ["prometheus", "envoy"];

impl TelemetryIndex {
    /// Validates `objects`; `providers` are MeshConfig's `extensionProviders` names. Returns
    /// the index of the good objects and an error for each bad one.
    #[must_use]
    pub fn compile(
        objects: &[Telemetry],
        root_namespace: &str,
        providers: &BTreeSet<String>,
    ) -> (Self, Vec<TelemetryError>) {
        let mut errors = Vec::new();
        let mut compiled = Vec::new();
        for object in objects {
            match compile_one(object, providers) {
                Ok(one) => compiled.push(one),
                Err(error) => errors.push(error),
            }
        }
        // Deterministic order inside a scope: by name (Istio picks the oldest; names keep the
        // result independent of watch order).
        compiled.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (
            Self {
                root_namespace: root_namespace.to_owned(),
                objects: compiled,
            },
            errors,
        )
    }

    /// What applies to a pod of `namespace` with `labels`, on side `mode`.
    #[must_use]
    pub fn resolve(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        mode: Mode,
    ) -> WorkloadTelemetry {
        let mesh = self
            .objects
            .iter()
            .filter(|o| o.namespace == self.root_namespace && o.selector.is_none());
        let ns = self
            .objects
            .iter()
            .filter(|o| o.namespace == namespace && o.namespace != self.root_namespace)
            .filter(|o| o.selector.is_none());
        let workload = self.objects.iter().filter(|o| {
            o.namespace == namespace
                && o.selector
                    .as_ref()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        let mut out = WorkloadTelemetry::default();
        for object in mesh.chain(ns).chain(workload) {
            apply(&mut out, object, mode);
        }
        out
    }
}

fn apply(out: &mut WorkloadTelemetry, object: &Compiled, mode: Mode) {
    for (modes, part) in &object.tracing {
        if !modes.contains(&mode) {
            continue;
        }
        if !part.providers.is_empty() {
            out.tracing.providers.clone_from(&part.providers);
        }
        if let Some(sampling) = part.sampling {
            out.tracing.sampling_percentage = Some(sampling);
        }
        if let Some(disable) = part.disable {
            out.tracing.disable_span_reporting = disable;
        }
        out.tracing
            .custom_tags
            .extend(part.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for (modes, metrics, part) in &object.metrics {
        if !modes.contains(&mode) {
            continue;
        }
        for metric in metrics {
            let settings = out.metrics.entry(*metric).or_default();
            if let Some(disabled) = part.disabled {
                settings.disabled = disabled;
            }
            for (tag, value) in &part.upsert {
                settings.remove.remove(tag);
                settings.upsert.insert(tag.clone(), value.clone());
            }
            for tag in &part.remove {
                settings.upsert.remove(tag);
                settings.remove.insert(tag.clone());
            }
        }
    }
    for (modes, part) in &object.access_log {
        if !modes.contains(&mode) {
            continue;
        }
        if let Some(disabled) = part.disabled {
            out.access_log.disabled = disabled;
        }
        if let Some(filter) = &part.filter {
            out.access_log.filter = Some(Arc::clone(filter));
        }
    }
}

fn modes(
    object: &str,
    field: &str,
    matched: Option<&str>,
) -> Result<BTreeSet<Mode>, TelemetryError> {
    Ok(match matched {
        None | Some("CLIENT_AND_SERVER") => BTreeSet::from([Mode::Client, Mode::Server]),
        Some("CLIENT") => BTreeSet::from([Mode::Client]),
        Some("SERVER") => BTreeSet::from([Mode::Server]),
        Some(other) => {
            return Err(TelemetryError::Mode {
                object: object.to_owned(),
                field: field.to_owned(),
                value: other.to_owned(),
            });
        }
    })
}

fn check_providers(
    object: &str,
    field: &str,
    refs: &[crate::istio::ProviderRef],
    providers: &BTreeSet<String>,
) -> Result<Vec<String>, TelemetryError> {
    refs.iter()
        .enumerate()
        .map(|(i, p)| {
            if providers.contains(&p.name) || BUILTIN_PROVIDERS.contains(&p.name.as_str()) {
                Ok(p.name.clone())
            } else {
                Err(TelemetryError::Provider {
                    object: object.to_owned(),
                    field: format!("{field}.providers[{i}].name"),
                    name: p.name.clone(),
                })
            }
        })
        .collect()
}

fn match_mode(matched: Option<&TrafficMatch>) -> Option<&str> {
    matched.and_then(|m| m.mode.as_deref())
}

fn compile_one(
    object: &Telemetry,
    providers: &BTreeSet<String>,
) -> Result<Compiled, TelemetryError> {
    let name = object.qualified_name();
    if !object.spec.target_refs.is_empty() {
        return Err(TelemetryError::TargetRefs { object: name });
    }
    let tracing = object
        .spec
        .tracing
        .iter()
        .enumerate()
        .map(|(i, spec)| compile_tracing(&name, &format!("spec.tracing[{i}]"), spec, providers))
        .collect::<Result<_, _>>()?;
    let mut metrics = Vec::new();
    for (i, spec) in object.spec.metrics.iter().enumerate() {
        let field = format!("spec.metrics[{i}]");
        check_providers(&name, &field, &spec.providers, providers)?;
        for (j, over) in spec.overrides.iter().enumerate() {
            metrics.push(compile_override(
                &name,
                &format!("{field}.overrides[{j}]"),
                over,
            )?);
        }
    }
    let access_log = object
        .spec
        .access_logging
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            compile_access_log(&name, &format!("spec.accessLogging[{i}]"), spec, providers)
        })
        .collect::<Result<_, _>>()?;
    Ok(Compiled {
        namespace: object.metadata.namespace.clone(),
        selector: object
            .spec
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
            .map(|s| s.match_labels.clone()),
        name: object.metadata.name.clone(),
        tracing,
        metrics,
        access_log,
    })
}

fn compile_tracing(
    name: &str,
    field: &str,
    spec: &TracingSpec,
    providers: &BTreeSet<String>,
) -> Result<(BTreeSet<Mode>, TracingSettingsPart), TelemetryError> {
    let modes = modes(
        name,
        &format!("{field}.match.mode"),
        match_mode(spec.match_.as_ref()),
    )?;
    let providers = check_providers(name, field, &spec.providers, providers)?;
    let sampling = spec.random_sampling_percentage.map(|d| d.0);
    if let Some(value) = sampling.filter(|v| !(0.0..=100.0).contains(v)) {
        return Err(TelemetryError::Percentage {
            object: name.to_owned(),
            field: format!("{field}.randomSamplingPercentage"),
            value: value.to_string(),
        });
    }
    let mut tags = BTreeMap::new();
    for (tag, source) in &spec.custom_tags {
        let parsed = match (&source.literal, &source.environment, &source.header) {
            (Some(lit), None, None) => CustomTag::Literal(lit.value.clone()),
            (None, Some(env), None) => {
                CustomTag::Environment(env.name.clone(), env.default_value.clone())
            }
            (None, None, Some(h)) => CustomTag::Header(h.name.clone(), h.default_value.clone()),
            _ => {
                return Err(TelemetryError::CustomTag {
                    object: name.to_owned(),
                    field: format!("{field}.customTags.{tag}"),
                });
            }
        };
        tags.insert(tag.clone(), parsed);
    }
    Ok((
        modes,
        TracingSettingsPart {
            providers,
            sampling,
            disable: spec.disable_span_reporting,
            tags,
        },
    ))
}

fn compile_override(
    name: &str,
    field: &str,
    over: &MetricsOverride,
) -> Result<(BTreeSet<Mode>, Vec<Metric>, MetricsPart), TelemetryError> {
    let selector = over.match_.clone().unwrap_or_default();
    let modes = modes(
        name,
        &format!("{field}.match.mode"),
        selector.mode.as_deref(),
    )?;
    let metrics = match (&selector.metric, &selector.custom_metric) {
        (_, Some(custom)) => Metric::from_custom(custom)
            .map(|m| vec![m])
            .ok_or_else(|| TelemetryError::Metric {
                object: name.to_owned(),
                field: format!("{field}.match.customMetric"),
                value: custom.clone(),
            })?,
        (Some(metric), None) => Metric::parse(metric).ok_or_else(|| TelemetryError::Metric {
            object: name.to_owned(),
            field: format!("{field}.match.metric"),
            value: metric.clone(),
        })?,
        (None, None) => Metric::ALL.to_vec(),
    };
    let mut part = MetricsPart {
        disabled: over.disabled,
        ..MetricsPart::default()
    };
    for (tag, change) in &over.tag_overrides {
        match change.operation.as_deref() {
            None | Some("UPSERT") => {
                part.upsert
                    .insert(tag.clone(), change.value.clone().unwrap_or_default());
            }
            Some("REMOVE") => {
                part.remove.insert(tag.clone());
            }
            Some(other) => {
                return Err(TelemetryError::TagOperation {
                    object: name.to_owned(),
                    field: format!("{field}.tagOverrides.{tag}.operation"),
                    value: other.to_owned(),
                });
            }
        }
    }
    Ok((modes, metrics, part))
}

fn compile_access_log(
    name: &str,
    field: &str,
    spec: &AccessLoggingSpec,
    providers: &BTreeSet<String>,
) -> Result<(BTreeSet<Mode>, AccessLogPart), TelemetryError> {
    let modes = modes(
        name,
        &format!("{field}.match.mode"),
        match_mode(spec.match_.as_ref()),
    )?;
    check_providers(name, field, &spec.providers, providers)?;
    let filter = spec
        .filter
        .as_ref()
        .map(|f| {
            CelFilter::compile(&f.expression).map_err(|reason| TelemetryError::Cel {
                object: name.to_owned(),
                field: format!("{field}.filter.expression"),
                reason,
            })
        })
        .transpose()?
        .map(Arc::new);
    Ok((
        modes,
        AccessLogPart {
            disabled: spec.disabled,
            filter,
        },
    ))
}
