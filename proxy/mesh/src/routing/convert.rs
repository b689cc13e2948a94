//! Checks one Istio value and turns it into its decision form. Every function reports what is
//! wrong at the field path it is given, into [`Problems`], and returns `None` for a bad value.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::decision::{
    AbortKind, ConnectionPool, CorsPolicy, Fault, FaultAbort, FaultDelay, HashAlgorithm, HashKey,
    HeaderOps, LoadBalancer, OutlierDetection, PortProtocol, RetryOn, RetryPolicy, StringMatch,
};
use crate::istio;
use crate::model::{Service, Workload, reaches};

/// The problems of one object: `(field path, what is wrong)`.
#[derive(Debug, Default)]
pub(super) struct Problems {
    pub(super) list: Vec<(String, String)>,
}

impl Problems {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push((field.into(), message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

pub(super) const MISSING: &str = "required field is missing";

/// The Kubernetes cluster domain Istio assumes.
pub(super) const DOMAIN_SUFFIX: &str = "svc.cluster.local";

pub(super) fn duration(p: &mut Problems, field: &str, value: &str) -> Option<Duration> {
    istio::parse_duration(value)
        .map_err(|e| p.add(field, e.to_string()))
        .ok()
}

pub(super) fn opt_duration(
    p: &mut Problems,
    field: &str,
    value: Option<&String>,
) -> Option<Duration> {
    value.and_then(|v| duration(p, field, v))
}

/// An integer in `range`, named in the error.
pub(super) fn int_in<T: TryFrom<i64>>(
    p: &mut Problems,
    field: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Option<T> {
    if value < min || value > max {
        p.add(
            field,
            format!("expected an integer {min}-{max}, got {value}"),
        );
        return None;
    }
    T::try_from(value).ok()
}

pub(super) fn port(p: &mut Problems, field: &str, value: i64) -> Option<u16> {
    int_in(p, field, value, 1, 65535)
}

pub(super) fn percentage(p: &mut Problems, field: &str, value: f64) -> Option<f64> {
    if !(0.0..=100.0).contains(&value) {
        p.add(field, format!("expected a percentage 0-100, got {value}"));
        return None;
    }
    Some(value)
}

/// `value`, or `legacy` (a deprecated integer percentage), else 100.
pub(super) fn percent_or_legacy(
    p: &mut Problems,
    field: &str,
    value: Option<&istio::Percent>,
    legacy_field: &str,
    legacy: Option<i64>,
) -> Option<f64> {
    match (value, legacy) {
        (Some(percent), _) => percentage(p, &format!("{field}.value"), percent.value.0),
        #[expect(clippy::cast_precision_loss, reason = "checked to be 0-100 first")]
        (None, Some(legacy)) => int_in::<i64>(p, legacy_field, legacy, 0, 100).map(|v| v as f64),
        (None, None) => Some(100.0),
    }
}

/// A regex that must match the whole value (Istio's regexes are RE2 full matches).
pub(super) fn anchored_regex(
    p: &mut Problems,
    field: &str,
    pattern: &str,
    ignore_case: bool,
) -> Option<regex::Regex> {
    let flags = if ignore_case { "(?i)" } else { "" };
    regex::Regex::new(&format!("{flags}^(?:{pattern})$"))
        .map_err(|e| p.add(field, format!("regex {pattern:?} does not compile: {e}")))
        .ok()
}

/// Istio's `StringMatch`. `Ok(None)` is "no matcher" (presence only), allowed where
/// `presence_ok`.
pub(super) fn string_match(
    p: &mut Problems,
    field: &str,
    m: &istio::StringMatch,
    presence_ok: bool,
    ignore_case: bool,
) -> Option<Option<StringMatch>> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        p.add(field, "set only one of exact, prefix and regex");
        return None;
    }
    if let Some(exact) = &m.exact {
        return Some(Some(StringMatch::Exact(exact.as_str().into())));
    }
    if let Some(prefix) = &m.prefix {
        return Some(Some(StringMatch::Prefix(prefix.as_str().into())));
    }
    if let Some(regex) = &m.regex {
        return anchored_regex(p, &format!("{field}.regex"), regex, ignore_case)
            .map(|re| Some(StringMatch::Regex(re)));
    }
    if presence_ok {
        Some(None)
    } else {
        p.add(field, "expected one of exact, prefix and regex");
        None
    }
}

pub(super) fn header_name(p: &mut Problems, field: &str, name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| p.add(field, format!("{name:?} is not a valid HTTP header name")))
        .ok()
}

pub(super) fn header_value(p: &mut Problems, field: &str, value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value)
        .map_err(|_| p.add(field, format!("{value:?} is not a valid HTTP header value")))
        .ok()
}

pub(super) fn header_ops(
    p: &mut Problems,
    field: &str,
    ops: Option<&istio::HeaderOperations>,
) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let pairs = |p: &mut Problems, kind: &str, map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .filter_map(|(name, value)| {
                let at = format!("{field}.{kind}.{name}");
                let name = header_name(p, &at, name);
                let value = header_value(p, &at, value);
                Some((name?, value?))
            })
            .collect()
    };
    HeaderOps {
        set: pairs(p, "set", &ops.set),
        add: pairs(p, "add", &ops.add),
        remove: ops
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, name)| header_name(p, &format!("{field}.remove[{i}]"), name))
            .collect(),
    }
}

/// Istio's default retry policy: 2 attempts on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` (503).
#[must_use]
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: default_retry_on(),
    }
}

fn default_retry_on() -> RetryOn {
    RetryOn {
        connect_failure: true,
        refused_stream: true,
        retriable_status_codes: vec![503],
        grpc_codes: vec![GRPC_UNAVAILABLE, GRPC_CANCELLED],
        ..RetryOn::default()
    }
}

const GRPC_CANCELLED: u32 = 1;
const GRPC_UNAVAILABLE: u32 = 14;

/// gRPC status names as Istio spells them, and their codes.
const GRPC_STATUSES: [(&str, u32); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The name of a gRPC status code, for `shuntctl`.
#[must_use]
pub fn grpc_status_name(code: u32) -> &'static str {
    GRPC_STATUSES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("UNKNOWN", |(name, _)| name)
}

pub(super) fn retries(
    p: &mut Problems,
    field: &str,
    retry: Option<&istio::HttpRetry>,
) -> RetryPolicy {
    let Some(retry) = retry else {
        return default_retry_policy();
    };
    let attempts = retry
        .attempts
        .and_then(|a| int_in(p, &format!("{field}.attempts"), a, 0, i64::from(u32::MAX)))
        .unwrap_or(0);
    let per_try_timeout = opt_duration(
        p,
        &format!("{field}.perTryTimeout"),
        retry.per_try_timeout.as_ref(),
    )
    .filter(|d| !d.is_zero());
    let retry_on = match &retry.retry_on {
        None => default_retry_on(),
        Some(list) => retry_on(p, &format!("{field}.retryOn"), list),
    };
    RetryPolicy {
        attempts,
        per_try_timeout,
        retry_on,
    }
}

fn retry_on(p: &mut Problems, field: &str, list: &str) -> RetryOn {
    let mut on = RetryOn::default();
    for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            // The codes come as numbers in the same list; 503 when none is given, as Istio.
            "retriable-status-codes" => {}
            "cancelled" => on.grpc_codes.push(1),
            "deadline-exceeded" => on.grpc_codes.push(4),
            "resource-exhausted" => on.grpc_codes.push(8),
            "internal" => on.grpc_codes.push(13),
            "unavailable" => on.grpc_codes.push(14),
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => on.retriable_status_codes.push(code),
                _ => p.add(
                    field,
                    format!(
                        "unknown retry condition {other:?}: expected 5xx, gateway-error, \
                         connect-failure, reset, refused-stream, retriable-4xx, \
                         retriable-status-codes, an HTTP status, or a gRPC code (cancelled, \
                         deadline-exceeded, internal, resource-exhausted, unavailable)"
                    ),
                ),
            },
        }
    }
    if list
        .split(',')
        .any(|t| t.trim() == "retriable-status-codes")
        && on.retriable_status_codes.is_empty()
    {
        on.retriable_status_codes.push(503);
    }
    on
}

pub(super) fn fault(
    p: &mut Problems,
    field: &str,
    fault: &istio::HttpFaultInjection,
) -> Option<Fault> {
    let before = p.list.len();
    if fault.delay.is_none() && fault.abort.is_none() {
        p.add(field, "set delay, abort or both");
        return None;
    }
    let delay = fault.delay.as_ref().and_then(|delay| {
        let at = format!("{field}.delay");
        if delay.exponential_delay.is_some() {
            p.add(
                format!("{at}.exponentialDelay"),
                "exponentialDelay is not supported; use fixedDelay",
            );
        }
        let Some(fixed) = &delay.fixed_delay else {
            p.add(format!("{at}.fixedDelay"), MISSING);
            return None;
        };
        let fixed_delay = duration(p, &format!("{at}.fixedDelay"), fixed)?;
        let percentage = percent_or_legacy(
            p,
            &format!("{at}.percentage"),
            delay.percentage.as_ref(),
            &format!("{at}.percent"),
            delay.percent,
        )?;
        Some(FaultDelay {
            fixed_delay,
            percentage,
        })
    });
    let abort = fault.abort.as_ref().and_then(|abort| {
        let at = format!("{field}.abort");
        let kind = match (&abort.http_status, &abort.grpc_status, &abort.http2_error) {
            (Some(status), None, None) => {
                let status: u16 = int_in(p, &format!("{at}.httpStatus"), *status, 200, 599)?;
                AbortKind::Http(StatusCode::from_u16(status).ok()?)
            }
            (None, Some(name), None) => {
                let code = GRPC_STATUSES
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| *c)
                    .or_else(|| name.parse().ok().filter(|c| *c <= 16));
                let Some(code) = code else {
                    p.add(
                        format!("{at}.grpcStatus"),
                        format!("unknown gRPC status {name:?}: expected a name such as UNAVAILABLE or a code 0-16"),
                    );
                    return None;
                };
                AbortKind::Grpc(code)
            }
            (None, None, Some(_)) => {
                p.add(format!("{at}.http2Error"), "http2Error is not supported; use httpStatus or grpcStatus");
                return None;
            }
            _ => {
                p.add(at, "set exactly one of httpStatus and grpcStatus");
                return None;
            }
        };
        let percentage = percent_or_legacy(p, &format!("{at}.percentage"), abort.percentage.as_ref(), &format!("{at}.percent"), None)?;
        Some(FaultAbort { kind, percentage })
    });
    (p.list.len() == before).then_some(Fault { delay, abort })
}

pub(super) fn cors(p: &mut Problems, field: &str, cors: &istio::CorsPolicy) -> CorsPolicy {
    let mut allow_origins: Vec<StringMatch> = cors
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            string_match(p, &format!("{field}.allowOrigins[{i}]"), m, false, false)?
        })
        .collect();
    allow_origins.extend(cors.allow_origin.iter().map(|origin| {
        if origin == "*" {
            StringMatch::Prefix("".into())
        } else {
            StringMatch::Exact(origin.as_str().into())
        }
    }));
    let names = |p: &mut Problems, kind: &str, list: &[String]| -> Vec<HeaderName> {
        list.iter()
            .enumerate()
            .filter_map(|(i, name)| header_name(p, &format!("{field}.{kind}[{i}]"), name))
            .collect()
    };
    CorsPolicy {
        allow_origins,
        allow_methods: cors
            .allow_methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| {
                        p.add(
                            format!("{field}.allowMethods[{i}]"),
                            format!("{m:?} is not an HTTP method"),
                        )
                    })
                    .ok()
            })
            .collect(),
        allow_headers: names(p, "allowHeaders", &cors.allow_headers),
        expose_headers: names(p, "exposeHeaders", &cors.expose_headers),
        max_age: opt_duration(p, &format!("{field}.maxAge"), cors.max_age.as_ref()),
        allow_credentials: cors.allow_credentials,
    }
}

/// `exportTo`: who sees an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// No `exportTo`, or `*`: every namespace.
    All,
    /// Only these namespaces (`.` is the object's own namespace; `~` adds none).
    Namespaces(BTreeSet<String>),
}

impl Visibility {
    /// Whether a pod in `namespace` sees the object; an unknown namespace sees only `All`.
    #[must_use]
    pub fn allows(&self, namespace: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(set) => namespace.is_some_and(|ns| set.contains(ns)),
        }
    }
}

pub(super) fn export_to(p: &mut Problems, field: &str, list: &[String], own: &str) -> Visibility {
    if list.is_empty() || list.iter().any(|e| e == "*") {
        return Visibility::All;
    }
    let mut set = BTreeSet::new();
    for (i, entry) in list.iter().enumerate() {
        match entry.as_str() {
            "." => {
                set.insert(own.to_owned());
            }
            // Istio's "exported nowhere".
            "~" => {}
            ns if is_dns_label(ns) => {
                set.insert(ns.to_owned());
            }
            other => p.add(
                format!("{field}[{i}]"),
                format!("{other:?} is not \".\", \"*\" or a namespace name"),
            ),
        }
    }
    Visibility::Namespaces(set)
}

/// Kubernetes' DNS-1123 label: a namespace name, or one label of a DNS name.
pub(super) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An IPv4 subnet; a bare address is a /32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    #[must_use]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub(super) fn subnet(p: &mut Problems, field: &str, text: &str) -> Option<Subnet> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    if addr.contains(':') {
        p.add(field, format!("{text:?} is IPv6; shunt captures IPv4 only"));
        return None;
    }
    match (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) {
        (Ok(addr), Ok(prefix)) if prefix <= 32 => Some(Subnet { addr, prefix }),
        _ => {
            p.add(field, format!("{text:?} is not an IPv4 address or CIDR"));
            None
        }
    }
}

/// `loadBalancer`, or `None` when it says nothing.
pub(super) fn load_balancer(
    p: &mut Problems,
    field: &str,
    lb: &istio::LoadBalancerSettings,
) -> Option<LoadBalancer> {
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => {
            p.add(field, "set only one of simple and consistentHash");
            None
        }
        (Some(simple), None) => match simple.as_str() {
            "ROUND_ROBIN" | "UNSPECIFIED" => Some(LoadBalancer::RoundRobin),
            "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
            "RANDOM" => Some(LoadBalancer::Random),
            "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
            other => {
                p.add(
                    format!("{field}.simple"),
                    format!(
                        "unknown load balancer {other:?}: expected ROUND_ROBIN, LEAST_REQUEST, \
                         LEAST_CONN, RANDOM or PASSTHROUGH"
                    ),
                );
                None
            }
        },
        (None, Some(hash)) => consistent_hash(p, &format!("{field}.consistentHash"), hash),
        (None, None) => None,
    }
}

fn consistent_hash(
    p: &mut Problems,
    field: &str,
    hash: &istio::ConsistentHash,
) -> Option<LoadBalancer> {
    let keys = usize::from(hash.http_header_name.is_some())
        + usize::from(hash.http_cookie.is_some())
        + usize::from(hash.use_source_ip == Some(true))
        + usize::from(hash.http_query_parameter_name.is_some());
    if keys != 1 {
        p.add(
            field,
            "set exactly one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName",
        );
        return None;
    }
    let key = if let Some(name) = &hash.http_header_name {
        HashKey::Header(header_name(p, &format!("{field}.httpHeaderName"), name)?)
    } else if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            p.add(format!("{field}.httpCookie.name"), MISSING);
            return None;
        }
        HashKey::Cookie {
            name: cookie.name.as_str().into(),
            path: cookie.path.as_deref().map(Arc::from),
            ttl: opt_duration(p, &format!("{field}.httpCookie.ttl"), cookie.ttl.as_ref()),
        }
    } else if let Some(name) = &hash.http_query_parameter_name {
        HashKey::QueryParameter(name.as_str().into())
    } else {
        HashKey::SourceIp
    };
    let algorithm = match (&hash.ring_hash, &hash.maglev) {
        (Some(_), Some(_)) => {
            p.add(field, "set only one of ringHash and maglev");
            return None;
        }
        (None, Some(maglev)) => {
            let table_size = match maglev.table_size {
                None => 65537,
                Some(size) => {
                    let size: u64 =
                        int_in(p, &format!("{field}.maglev.tableSize"), size, 1, 5_000_011)?;
                    if !is_prime(size) {
                        p.add(
                            format!("{field}.maglev.tableSize"),
                            format!("{size} is not a prime number"),
                        );
                        return None;
                    }
                    size
                }
            };
            HashAlgorithm::Maglev { table_size }
        }
        (ring, None) => {
            let (at, size) = match ring.as_ref().and_then(|r| r.minimum_ring_size) {
                Some(size) => (format!("{field}.ringHash.minimumRingSize"), Some(size)),
                None => (format!("{field}.minimumRingSize"), hash.minimum_ring_size),
            };
            let minimum_ring_size = match size {
                None => 1024,
                Some(size) => int_in(p, &at, size, 1, 8_388_608)?,
            };
            HashAlgorithm::RingHash { minimum_ring_size }
        }
    };
    Some(LoadBalancer::ConsistentHash { key, algorithm })
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

pub(super) fn connection_pool(
    p: &mut Problems,
    field: &str,
    pool: &istio::ConnectionPoolSettings,
) -> ConnectionPool {
    let count = |p: &mut Problems, at: &str, v: Option<i64>| {
        v.and_then(|v| int_in::<u32>(p, &format!("{field}.{at}"), v, 0, i64::from(i32::MAX)))
            .filter(|v| *v > 0)
    };
    let tcp = pool.tcp.clone().unwrap_or_default();
    let http = pool.http.clone().unwrap_or_default();
    ConnectionPool {
        max_connections: count(p, "tcp.maxConnections", tcp.max_connections),
        connect_timeout: opt_duration(
            p,
            &format!("{field}.tcp.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        ),
        http1_max_pending_requests: count(
            p,
            "http.http1MaxPendingRequests",
            http.http1_max_pending_requests,
        ),
        http2_max_requests: count(p, "http.http2MaxRequests", http.http2_max_requests),
        max_requests_per_connection: count(
            p,
            "http.maxRequestsPerConnection",
            http.max_requests_per_connection,
        ),
        max_retries: count(p, "http.maxRetries", http.max_retries),
        idle_timeout: opt_duration(
            p,
            &format!("{field}.http.idleTimeout"),
            http.idle_timeout.as_ref(),
        ),
    }
}

pub(super) fn outlier_detection(
    p: &mut Problems,
    field: &str,
    od: &istio::OutlierDetection,
) -> OutlierDetection {
    // 0 turns a kind of error off; Istio's default is 5 consecutive 5xx.
    let errors = |p: &mut Problems, at: &str, v: Option<i64>, default: Option<u32>| match v {
        None => default,
        Some(v) => {
            int_in::<u32>(p, &format!("{field}.{at}"), v, 0, i64::from(u32::MAX)).filter(|v| *v > 0)
        }
    };
    let percent = |p: &mut Problems, at: &str, v: Option<i64>, default: u32| {
        v.map_or(Some(default), |v| {
            int_in(p, &format!("{field}.{at}"), v, 0, 100)
        })
        .unwrap_or(default)
    };
    OutlierDetection {
        consecutive_5xx_errors: errors(
            p,
            "consecutive5xxErrors",
            od.consecutive_5xx_errors,
            Some(5),
        ),
        consecutive_gateway_errors: errors(
            p,
            "consecutiveGatewayErrors",
            od.consecutive_gateway_errors,
            None,
        ),
        interval: opt_duration(p, &format!("{field}.interval"), od.interval.as_ref())
            .unwrap_or(Duration::from_secs(10)),
        base_ejection_time: opt_duration(
            p,
            &format!("{field}.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        )
        .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: percent(p, "maxEjectionPercent", od.max_ejection_percent, 10),
        min_health_percent: percent(p, "minHealthPercent", od.min_health_percent, 0),
    }
}

/// A Kubernetes Service port's protocol, from `appProtocol`, else its name's prefix.
#[must_use]
pub fn service_port_protocol(name: Option<&str>, app_protocol: Option<&str>) -> PortProtocol {
    let by_name = |n: &str| match n.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(PortProtocol::Http),
        "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => Some(PortProtocol::Http2),
        "https" | "tls" => Some(PortProtocol::Tls),
        "tcp" | "mongo" | "mysql" | "redis" => Some(PortProtocol::Tcp),
        _ => None,
    };
    if let Some(protocol) = app_protocol.and_then(by_name) {
        return protocol;
    }
    name.and_then(|n| {
        by_name(n).or_else(|| {
            // `grpc-web-*` before `grpc-*`.
            if n.starts_with("grpc-web-") {
                return Some(PortProtocol::Http2);
            }
            n.split_once('-').and_then(|(prefix, _)| by_name(prefix))
        })
    })
    .unwrap_or(PortProtocol::Sniff)
}

pub(super) fn service_entry_protocol(
    p: &mut Problems,
    field: &str,
    protocol: Option<&str>,
) -> Option<PortProtocol> {
    let Some(protocol) = protocol else {
        return Some(PortProtocol::Sniff);
    };
    Some(match protocol.to_ascii_uppercase().as_str() {
        "HTTP" => PortProtocol::Http,
        "HTTP2" | "GRPC" | "GRPC-WEB" => PortProtocol::Http2,
        "HTTPS" | "TLS" => PortProtocol::Tls,
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => PortProtocol::Tcp,
        _ => {
            p.add(
                field,
                format!(
                    "unknown protocol {protocol:?}: expected HTTP, HTTP2, GRPC, GRPC-WEB, HTTPS, \
                     TLS, TCP, MONGO, MYSQL or REDIS"
                ),
            );
            return None;
        }
    })
}

/// The protocol `service` declares (port name or `appProtocol`) for its port that reaches
/// `workload` at `port` ([`reaches`]); `Sniff` when nothing declares it.
pub fn declared_protocol(
    service: Option<&Service>,
    workload: Option<&Workload>,
    port: u16,
) -> PortProtocol {
    let (Some(service), Some(workload)) = (service, workload) else {
        return PortProtocol::Sniff;
    };
    service
        .ports
        .iter()
        .find(|p| p.protocol.eq_ignore_ascii_case("TCP") && reaches(service, p, workload, port))
        .map_or(PortProtocol::Sniff, |p| {
            service_port_protocol(p.name.as_deref(), p.app_protocol.as_deref())
        })
}
