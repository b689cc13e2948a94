//! `telemetry.istio.io` `Telemetry` (v1 and v1alpha1, one shape): per-workload tracing,
//! metrics and access-log settings. Values (modes, metric names, percentages, CEL) are checked
//! when `crate::telemetry` compiles them, so errors name the object and the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::decimal::Decimal;
use super::security::WorkloadSelector;

istio_struct! {
    /// `Telemetry.spec`.
    pub struct TelemetrySpec {
        /// `selector`: the workloads (pods of the object's namespace) it applies to; absent:
        /// the whole namespace, or the whole mesh in the root namespace.
        pub selector: Option<WorkloadSelector>,
        /// `targetRefs`: read so that an object using them is not mistaken for a
        /// namespace-wide one; shunt refuses them when compiled (no gateway/service targets).
        pub target_refs: Vec<TelemetryTargetRef>,
        /// `tracing`.
        pub tracing: Vec<TracingSpec>,
        /// `metrics`.
        pub metrics: Vec<MetricsSpec>,
        /// `accessLogging`.
        pub access_logging: Vec<AccessLoggingSpec>,
    }
}

istio_struct! {
    /// One entry of `targetRefs`.
    pub struct TelemetryTargetRef {
        /// `group`.
        pub group: String,
        /// `kind`.
        pub kind: String,
        /// `name`.
        pub name: String,
    }
}

istio_struct! {
    /// A provider reference (`providers[]`).
    pub struct ProviderRef {
        /// `name`: an extension provider of MeshConfig (or a built-in one).
        pub name: String,
    }
}

istio_struct! {
    /// `match` of a tracing or access-log entry.
    pub struct TrafficMatch {
        /// `mode`: `CLIENT`, `SERVER` or `CLIENT_AND_SERVER` (absent: both).
        pub mode: Option<String>,
    }
}

istio_struct! {
    /// One entry of `tracing`.
    pub struct TracingSpec {
        /// `match`.
        #[serde(rename = "match")]
        pub match_: Option<TrafficMatch>,
        /// `providers`.
        pub providers: Vec<ProviderRef>,
        /// `randomSamplingPercentage`: 0 to 100.
        pub random_sampling_percentage: Option<Decimal>,
        /// `disableSpanReporting`.
        pub disable_span_reporting: Option<bool>,
        /// `customTags`: tag name to its source.
        pub custom_tags: BTreeMap<String, CustomTagSpec>,
    }
}

istio_struct! {
    /// A custom tag: exactly one of `literal`, `environment`, `header`.
    pub struct CustomTagSpec {
        /// `literal`.
        pub literal: Option<LiteralTag>,
        /// `environment`.
        pub environment: Option<NamedTag>,
        /// `header`.
        pub header: Option<NamedTag>,
    }
}

istio_struct! {
    /// `literal` custom tag.
    pub struct LiteralTag {
        /// `value`.
        pub value: String,
    }
}

istio_struct! {
    /// `environment` or `header` custom tag.
    pub struct NamedTag {
        /// `name`: the variable or header.
        pub name: String,
        /// `defaultValue`: used when it is absent.
        pub default_value: Option<String>,
    }
}

istio_struct! {
    /// One entry of `metrics`.
    pub struct MetricsSpec {
        /// `providers`.
        pub providers: Vec<ProviderRef>,
        /// `overrides`.
        pub overrides: Vec<MetricsOverride>,
    }
}

istio_struct! {
    /// One entry of `overrides`.
    pub struct MetricsOverride {
        /// `match`: which metric(s); absent: all metrics, both modes.
        #[serde(rename = "match")]
        pub match_: Option<MetricSelector>,
        /// `disabled`.
        pub disabled: Option<bool>,
        /// `tagOverrides`: tag name to its change.
        pub tag_overrides: BTreeMap<String, TagOverride>,
    }
}

istio_struct! {
    /// `overrides[].match`.
    pub struct MetricSelector {
        /// `metric`: `ALL_METRICS`, `REQUEST_COUNT`, ...
        pub metric: Option<String>,
        /// `customMetric`: a metric name without the `istio_` prefix.
        pub custom_metric: Option<String>,
        /// `mode`: `CLIENT`, `SERVER` or `CLIENT_AND_SERVER`.
        pub mode: Option<String>,
    }
}

istio_struct! {
    /// `tagOverrides[name]`.
    pub struct TagOverride {
        /// `operation`: `UPSERT` (absent) or `REMOVE`.
        pub operation: Option<String>,
        /// `value`: a CEL expression in Istio; shunt carries it as written (not evaluated yet).
        pub value: Option<String>,
    }
}

istio_struct! {
    /// One entry of `accessLogging`.
    pub struct AccessLoggingSpec {
        /// `match`.
        #[serde(rename = "match")]
        pub match_: Option<TrafficMatch>,
        /// `providers`.
        pub providers: Vec<ProviderRef>,
        /// `disabled`.
        pub disabled: Option<bool>,
        /// `filter`.
        pub filter: Option<AccessLogFilter>,
    }
}

istio_struct! {
    /// `accessLogging[].filter`.
    pub struct AccessLogFilter {
        /// `expression`: CEL; a line is written when it yields true.
        pub expression: String,
    }
}
