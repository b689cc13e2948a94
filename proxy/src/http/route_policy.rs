//! The per-request policies of a route that need no upstream: weighted picks, percentages,
//! CORS, redirects, rewrites, fault aborts and retry conditions.
#![forbid(unsafe_code)]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use rand::Rng;

use shunt_mesh::routing::{AbortKind, CorsPolicy, Redirect, RetryOn, Rewrite, WeightedDestination};

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// One destination by weight. `None` only for an empty list (the router never gives one).
pub fn pick_weighted<'a>(
    destinations: &'a [WeightedDestination],
    rng: &mut impl Rng,
) -> Option<&'a WeightedDestination> {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return destinations.first();
    }
    let mut ticket = rng.random_range(0..total);
    for destination in destinations {
        let weight = u64::from(destination.weight);
        if ticket < weight {
            return Some(destination);
        }
        ticket -= weight;
    }
    destinations.last()
}

/// Whether an event with `percentage` (0–100) chance happens this time.
pub fn roll(percentage: f64, rng: &mut impl Rng) -> bool {
    if percentage >= 100.0 {
        return true;
    }
    if percentage <= 0.0 {
        return false;
    }
    rng.random_range(0.0..100.0) < percentage
}

/// Whether `headers` come from a gRPC client.
#[must_use]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `grpc-status` of a response's headers (trailers-only) or trailers.
#[must_use]
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The response of a fault abort: an HTTP status, or for gRPC an HTTP 200 in trailers-only
/// form carrying `grpc-status`.
#[must_use]
pub fn abort_head(kind: AbortKind) -> (StatusCode, HeaderMap) {
    let mut headers = HeaderMap::new();
    match kind {
        AbortKind::Http(status) => (status, headers),
        AbortKind::Grpc(code) => {
            headers.insert(header::CONTENT_TYPE, APPLICATION_GRPC.clone());
            headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
            (StatusCode::OK, headers)
        }
    }
}

/// Why an attempt failed, as retry conditions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Response {
        status: StatusCode,
        grpc_status: Option<u32>,
    },
    ConnectFailure,
    RefusedStream,
    Reset,
    /// The per-try timeout fired.
    Timeout,
    /// Anything else (overflow, no healthy upstream): never retried.
    Other,
}

/// Whether `retry_on` retries an attempt that ended with `outcome` (Envoy's `retry_on`
/// semantics: `5xx` includes connect failures and resets; `gateway-error` is 502/503/504).
#[must_use]
pub fn should_retry(retry_on: &RetryOn, outcome: AttemptOutcome) -> bool {
    match outcome {
        AttemptOutcome::Response {
            status,
            grpc_status,
        } => {
            let code = status.as_u16();
            (retry_on.five_xx && status.is_server_error())
                || (retry_on.gateway_error && matches!(code, 502..=504))
                || (retry_on.retriable_4xx && code == 409)
                || retry_on.retriable_status_codes.contains(&code)
                || grpc_status.is_some_and(|g| retry_on.grpc_codes.contains(&g))
        }
        AttemptOutcome::ConnectFailure => {
            retry_on.connect_failure || retry_on.five_xx || retry_on.gateway_error
        }
        AttemptOutcome::RefusedStream => retry_on.refused_stream || retry_on.five_xx,
        AttemptOutcome::Reset => retry_on.reset || retry_on.five_xx,
        AttemptOutcome::Timeout => retry_on.five_xx || retry_on.gateway_error,
        AttemptOutcome::Other => false,
    }
}

/// The path (and query) after `rewrite`: `uri` replaces the matched prefix (or the whole path
/// without a prefix match), then `uriRegexRewrite` rewrites every match.
#[must_use]
pub fn rewrite_path(rewrite: &Rewrite, uri: &Uri) -> Option<String> {
    if rewrite.uri.is_none() && rewrite.uri_regex.is_none() {
        return None;
    }
    let mut path = uri.path().to_owned();
    if let Some(replacement) = &rewrite.uri {
        path = match rewrite.matched_prefix.as_deref() {
            Some(prefix) if path.len() >= prefix.len() => {
                format!("{replacement}{}", &path[prefix.len()..])
            }
            _ => replacement.to_string(),
        };
    }
    if let Some((pattern, replacement)) = &rewrite.uri_regex {
        let expanded = envoy_to_regex_replacement(replacement);
        path = pattern.replace_all(&path, expanded.as_str()).into_owned();
    }
    if path.is_empty() {
        path.push('/');
    }
    Some(match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

/// RE2/Envoy substitutions `\1` become the `regex` crate's `${1}`; a literal `$` is escaped.
fn envoy_to_regex_replacement(replacement: &str) -> String {
    let mut out = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// The `Location` of a redirect: each part the redirect names replaces the request's.
#[must_use]
pub fn redirect_location(redirect: &Redirect, uri: &Uri, authority: Option<&str>) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let request_host = authority.map_or("", |a| a.rsplit_once(':').map_or(a, |(host, _)| host));
    let host = redirect.authority.as_deref().unwrap_or(request_host);
    let port = redirect
        .port
        .map(|p| format!(":{p}"))
        .or_else(|| {
            // The request's explicit port is kept when the redirect names no authority.
            (redirect.authority.is_none())
                .then(|| {
                    authority
                        .and_then(|a| a.rsplit_once(':'))
                        .map(|(_, p)| format!(":{p}"))
                })
                .flatten()
        })
        .unwrap_or_default();
    let path = match &redirect.uri {
        Some(uri) => uri.to_string(),
        None => uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string),
    };
    format!("{scheme}://{host}{port}{path}")
}

/// The CORS preflight answer (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
/// when the origin is allowed; `None` when the request is not a preflight or the origin is not
/// allowed (Envoy then forwards it).
#[must_use]
pub fn cors_preflight(
    cors: &CorsPolicy,
    method: &Method,
    headers: &HeaderMap,
) -> Option<HeaderMap> {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let mut answer = cors_allowed_origin(cors, headers)?;
    let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(",")).ok();
    if !cors.allow_methods.is_empty()
        && let Some(v) = join(cors.allow_methods.iter().map(Method::as_str).collect())
    {
        answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cors.allow_headers.is_empty()
        && let Some(v) = join(cors.allow_headers.iter().map(HeaderName::as_str).collect())
    {
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(max_age) = cors.max_age {
        answer.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(max_age.as_secs()),
        );
    }
    Some(answer)
}

/// The CORS headers of an actual (non-preflight) response, when the origin is allowed.
#[must_use]
pub fn cors_response_headers(cors: &CorsPolicy, request: &HeaderMap) -> Option<HeaderMap> {
    let mut answer = cors_allowed_origin(cors, request)?;
    if !cors.expose_headers.is_empty() {
        let names: Vec<&str> = cors.expose_headers.iter().map(HeaderName::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
            answer.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    Some(answer)
}

fn cors_allowed_origin(cors: &CorsPolicy, headers: &HeaderMap) -> Option<HeaderMap> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if !cors.allow_origins.iter().any(|m| m.matches(text, false)) {
        return None;
    }
    let mut answer = HeaderMap::new();
    answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials == Some(true) {
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use shunt_mesh::routing::{Destination, HeaderOps, Host, StringMatch};
    use std::time::Duration;

    fn destination(name: &str, weight: u32) -> WeightedDestination {
        WeightedDestination {
            destination: Destination {
                host: Host(name.into()),
                subset: None,
                port: None,
            },
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let destinations = [
            destination("v1", 80),
            destination("v2", 20),
            destination("v3", 0),
        ];
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let picked = pick_weighted(&destinations, &mut rng).unwrap();
            let index = destinations
                .iter()
                .position(|d| std::ptr::eq(d, picked))
                .unwrap();
            counts[index] += 1;
        }
        assert!((7_700..=8_300).contains(&counts[0]), "{counts:?}");
        assert!((1_700..=2_300).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0);
        assert!(pick_weighted(&[], &mut rng).is_none());
    }

    #[test]
    fn percentages_roll_in_proportion() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (percentage, low, high) in [(0.0, 0, 0), (100.0, 1000, 1000), (25.0, 180, 320)] {
            let hits = (0..1000).filter(|_| roll(percentage, &mut rng)).count();
            assert!((low..=high).contains(&hits), "{percentage}: {hits}");
        }
    }

    #[test]
    fn retry_conditions_follow_envoy() {
        let on = |f: fn(&mut RetryOn)| {
            let mut r = RetryOn::default();
            f(&mut r);
            r
        };
        let status = |code: u16, grpc: Option<u32>| AttemptOutcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc_status: grpc,
        };
        let cases = [
            (on(|r| r.five_xx = true), status(500, None), true),
            (on(|r| r.five_xx = true), status(404, None), false),
            (
                on(|r| r.five_xx = true),
                AttemptOutcome::ConnectFailure,
                true,
            ),
            (on(|r| r.gateway_error = true), status(500, None), false),
            (on(|r| r.gateway_error = true), status(503, None), true),
            (on(|r| r.retriable_4xx = true), status(409, None), true),
            (
                on(|r| r.retriable_status_codes = vec![503]),
                status(503, None),
                true,
            ),
            (
                on(|r| r.retriable_status_codes = vec![503]),
                status(502, None),
                false,
            ),
            (on(|r| r.grpc_codes = vec![14]), status(200, Some(14)), true),
            (on(|r| r.grpc_codes = vec![14]), status(200, Some(0)), false),
            (on(|r| r.reset = true), AttemptOutcome::Reset, true),
            (
                on(|r| r.connect_failure = true),
                AttemptOutcome::Reset,
                false,
            ),
            (
                on(|r| r.refused_stream = true),
                AttemptOutcome::RefusedStream,
                true,
            ),
            (on(|r| r.five_xx = true), AttemptOutcome::Other, false),
        ];
        for (retry_on, outcome, expected) in cases {
            assert_eq!(
                should_retry(&retry_on, outcome),
                expected,
                "{retry_on:?} {outcome:?}"
            );
        }
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_regex() {
        let uri: Uri = "/api/v1/items?x=1".parse().unwrap();
        let rewrite =
            |uri: Option<&str>, prefix: Option<&str>, regex: Option<(&str, &str)>| Rewrite {
                uri: uri.map(Into::into),
                authority: None,
                uri_regex: regex.map(|(p, r)| (regex::Regex::new(p).unwrap(), r.into())),
                matched_prefix: prefix.map(Into::into),
            };
        let cases = [
            (
                rewrite(Some("/v2/"), Some("/api/v1/"), None),
                Some("/v2/items?x=1"),
            ),
            (
                rewrite(Some("/"), Some("/api/v1/"), None),
                Some("/items?x=1"),
            ),
            (rewrite(Some("/other"), None, None), Some("/other?x=1")),
            (
                rewrite(None, None, Some(("^/api/(v[0-9])/(.*)$", "/\\2/\\1"))),
                Some("/items/v1?x=1"),
            ),
            (rewrite(None, None, None), None),
        ];
        for (rewrite, expected) in cases {
            assert_eq!(
                rewrite_path(&rewrite, &uri).as_deref(),
                expected,
                "{rewrite:?}"
            );
        }
    }

    #[test]
    fn redirects_replace_only_what_they_name() {
        let uri: Uri = "/old?q=1".parse().unwrap();
        let redirect =
            |uri: Option<&str>, authority: Option<&str>, port, scheme: Option<&str>| Redirect {
                uri: uri.map(Into::into),
                authority: authority.map(Into::into),
                port,
                scheme: scheme.map(Into::into),
                status: StatusCode::MOVED_PERMANENTLY,
            };
        let cases = [
            (
                redirect(Some("/new"), None, None, None),
                Some("web:8080"),
                "http://web:8080/new",
            ),
            (
                redirect(None, Some("other"), None, None),
                Some("web:8080"),
                "http://other/old?q=1",
            ),
            (
                redirect(None, None, Some(9090), Some("https")),
                Some("web"),
                "https://web:9090/old?q=1",
            ),
        ];
        for (redirect, authority, expected) in cases {
            assert_eq!(redirect_location(&redirect, &uri, authority), expected);
        }
    }

    #[test]
    fn cors_preflights_are_answered_for_allowed_origins_only() {
        let cors = CorsPolicy {
            allow_origins: vec![StringMatch::Exact("https://shop.example".into())],
            allow_methods: vec![Method::GET, Method::POST],
            allow_headers: vec![HeaderName::from_static("x-token")],
            expose_headers: vec![HeaderName::from_static("x-trace")],
            max_age: Some(Duration::from_secs(600)),
            allow_credentials: Some(true),
        };
        let request = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("POST"),
            );
            h
        };
        let answer =
            cors_preflight(&cors, &Method::OPTIONS, &request("https://shop.example")).unwrap();
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
        assert_eq!(answer[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(
            cors_preflight(&cors, &Method::OPTIONS, &request("https://evil.example")).is_none()
        );
        assert!(cors_preflight(&cors, &Method::GET, &request("https://shop.example")).is_none());
        let actual = cors_response_headers(&cors, &request("https://shop.example")).unwrap();
        assert_eq!(actual[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
    }

    #[test]
    fn a_compiled_uri_regex_rewrite_rewrites_as_envoy_does() {
        use shunt_mesh::model::{MeshState, TargetPort};
        use shunt_mesh::routing::{HttpDecision, RequestFacts, RouteTable, Routes as _};
        use shunt_mesh::testing::{pod, service};

        let virtual_service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"hosts": ["cart"], "http": [{
                "match": [{"uri": {"regex": "/items/[0-9]+"}}],
                "rewrite": {"uriRegexRewrite": {"match": "/items/([0-9]+)", "rewrite": "/item?id=\\1&price=$5"}},
                "route": [{"destination": {"host": "cart"}}]
            }]}
        }))
        .unwrap();
        let state = MeshState {
            workloads: vec![pod("shop", "cart-v1", [10, 0, 0, 2], "cart")],
            services: vec![service(
                "shop",
                "cart",
                [10, 96, 0, 20],
                "cart",
                &[(80, TargetPort::Number(8080))],
            )],
            virtual_services: vec![virtual_service],
            ..MeshState::default()
        };
        let (table, errors) = RouteTable::build(&state);
        assert_eq!(errors, vec![]);
        let target = table.outbound_target("10.96.0.20:80".parse().unwrap(), None);
        let (method, uri, headers) = (
            http::Method::GET,
            "/items/42".parse::<http::Uri>().unwrap(),
            http::HeaderMap::new(),
        );
        let facts = RequestFacts {
            method: &method,
            uri: &uri,
            authority: None,
            headers: &headers,
            port: 80,
            source: None,
        };
        let HttpDecision::Route(r) = table.http_route(&target, &facts) else {
            panic!("no route")
        };
        let rewrite = r.rewrite.as_ref().unwrap();
        assert_eq!(
            rewrite_path(rewrite, &uri).as_deref(),
            Some("/item?id=42&price=$5")
        );
    }
}
