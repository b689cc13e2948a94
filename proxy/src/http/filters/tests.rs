//! Each phase alone, without I/O: a route, a request head, and the phase's [`Flow`].
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use shunt_mesh::routing::{
    AbortKind, CorsPolicy, Destination, Fault, FaultAbort, FaultDelay, HeaderOps, Host, ObjectRef,
    RateLimit, Redirect, StringMatch,
};

fn destination(weight: u32) -> WeightedDestination {
    WeightedDestination {
        destination: Destination {
            host: Host("web.shop.svc.cluster.local".into()),
            subset: None,
            port: None,
        },
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn route(action: HttpAction) -> HttpRoute {
    shunt_mesh::testing::http_route(action)
}

fn forwarding() -> HttpRoute {
    route(HttpAction::Forward(vec![destination(100)]))
}

fn head(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut request = Request::builder().method(method).uri("/items?id=7");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap().into_parts().0
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// The reply of a flow, or `None` for `Continue`; panics on a delay.
fn reply(flow: Flow) -> Option<LocalReply> {
    match flow {
        Flow::Continue => None,
        Flow::Reply(reply) => Some(reply),
        Flow::Delay(delay) => panic!("unexpected delay {delay:?}"),
    }
}

#[test]
fn the_outbound_order_is_envoys() {
    assert_eq!(
        Phase::OUTBOUND,
        [
            Phase::Cors,
            Phase::RateLimit,
            Phase::FaultDelay,
            Phase::FaultAbort,
            Phase::LocalAction,
            Phase::Destination,
            Phase::EditRequest,
        ]
    );
}

/// Name, route, method, request headers, whether the phase answers.
type CorsCase<'a> = (
    &'a str,
    &'a HttpRoute,
    Method,
    Vec<(&'a str, &'a str)>,
    bool,
);

#[test]
fn cors_answers_allowed_preflights_and_lets_the_rest_through() {
    let mut with_cors = forwarding();
    with_cors.cors = Some(CorsPolicy {
        allow_origins: vec![StringMatch::Exact("https://shop.example".into())],
        allow_methods: vec![Method::GET, Method::POST],
        allow_headers: vec![HeaderName::from_static("x-token")],
        expose_headers: vec![],
        max_age: Some(Duration::from_secs(600)),
        allow_credentials: None,
    });
    let preflight = |origin: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ]
    };
    let no_cors = forwarding();
    let cases: Vec<CorsCase<'_>> = vec![
        (
            "allowed preflight",
            &with_cors,
            Method::OPTIONS,
            preflight("https://shop.example"),
            true,
        ),
        (
            "origin not allowed",
            &with_cors,
            Method::OPTIONS,
            preflight("https://evil.example"),
            false,
        ),
        (
            "not a preflight: no request method",
            &with_cors,
            Method::OPTIONS,
            vec![("origin", "https://shop.example")],
            false,
        ),
        (
            "not a preflight: GET",
            &with_cors,
            Method::GET,
            preflight("https://shop.example"),
            false,
        ),
        (
            "no CORS policy",
            &no_cors,
            Method::OPTIONS,
            preflight("https://shop.example"),
            false,
        ),
    ];
    for (name, route, method, headers, answered) in cases {
        let flow = cors(route, &head(method, &headers));
        match reply(flow) {
            Some(reply) => {
                assert!(answered, "{name}");
                assert_eq!(reply.response.status(), StatusCode::OK, "{name}");
                assert!(reply.flags.is_empty(), "{name}");
                let headers = reply.response.headers();
                assert_eq!(
                    headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
                    "https://shop.example"
                );
                assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
                assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
                assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
            }
            None => assert!(!answered, "{name}"),
        }
    }
}

#[test]
fn rate_limit_answers_429_rl_once_the_burst_is_spent() {
    let limiter = RateLimiter::new();
    assert!(
        reply(rate_limit(&forwarding(), &limiter)).is_none(),
        "no limit"
    );
    let mut limited = forwarding();
    limited.rate_limit = Some(std::sync::Arc::new(RateLimit {
        policy: ObjectRef {
            kind: "RateLimitPolicy",
            namespace: "shop".into(),
            name: "two".into(),
        },
        requests_per_second: 0.001,
        burst: 2,
    }));
    for _ in 0..2 {
        assert!(reply(rate_limit(&limited, &limiter)).is_none());
    }
    let refused = reply(rate_limit(&limited, &limiter)).expect("the third is limited");
    assert_eq!(refused.response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.flags, "RL");
    assert_eq!(refused.response.headers()["x-ratelimit-limit"], "2");
}

fn faulty(delay: Option<f64>, abort: Option<(f64, AbortKind)>) -> HttpRoute {
    let mut route = forwarding();
    route.fault = Some(Fault {
        delay: delay.map(|percentage| FaultDelay {
            fixed_delay: Duration::from_millis(250),
            percentage,
        }),
        abort: abort.map(|(percentage, kind)| FaultAbort { kind, percentage }),
    });
    route
}

#[test]
fn fault_delays_roll_their_percentage() {
    for (percentage, delayed) in [(0.0, false), (100.0, true)] {
        let flow = fault_delay(&faulty(Some(percentage), None), &mut rng());
        match flow {
            Flow::Delay(delay) => {
                assert!(delayed, "{percentage}%");
                assert_eq!(delay, Duration::from_millis(250));
            }
            Flow::Continue => assert!(!delayed, "{percentage}%"),
            Flow::Reply(_) => panic!("a delay never answers"),
        }
    }
    assert!(matches!(
        fault_delay(&forwarding(), &mut rng()),
        Flow::Continue
    ));
    // An abort alone delays nothing.
    let abort_only = faulty(
        None,
        Some((100.0, AbortKind::Http(StatusCode::BAD_REQUEST))),
    );
    assert!(matches!(
        fault_delay(&abort_only, &mut rng()),
        Flow::Continue
    ));
}

#[test]
fn fault_aborts_roll_their_percentage_and_answer_fi() {
    let cases = [
        (0.0, AbortKind::Http(StatusCode::SERVICE_UNAVAILABLE), None),
        (
            100.0,
            AbortKind::Http(StatusCode::SERVICE_UNAVAILABLE),
            Some((503, None)),
        ),
        (
            100.0,
            AbortKind::Http(StatusCode::BAD_REQUEST),
            Some((400, None)),
        ),
        (0.0, AbortKind::Grpc(14), None),
        (100.0, AbortKind::Grpc(14), Some((200, Some(14)))),
    ];
    for (percentage, kind, expected) in cases {
        let flow = fault_abort(&faulty(None, Some((percentage, kind))), &mut rng());
        let got = reply(flow).map(|reply| {
            assert_eq!(reply.flags, "FI", "{kind:?}");
            (reply.response.status().as_u16(), reply.grpc_status)
        });
        assert_eq!(got, expected, "{percentage}% {kind:?}");
    }
    assert!(reply(fault_abort(&forwarding(), &mut rng())).is_none());
}

#[test]
fn redirects_answer_their_code_and_location() {
    let redirect = |status: StatusCode, authority: Option<&str>, uri: Option<&str>| {
        route(HttpAction::Redirect(Redirect {
            uri: uri.map(Into::into),
            authority: authority.map(Into::into),
            port: None,
            scheme: None,
            status,
        }))
    };
    let uri: Uri = "/items?id=7".parse().unwrap();
    let cases = [
        (
            StatusCode::MOVED_PERMANENTLY,
            None,
            None,
            "http://web.shop:80/items?id=7",
        ),
        (
            StatusCode::FOUND,
            Some("new.shop"),
            None,
            "http://new.shop/items?id=7",
        ),
        (
            StatusCode::SEE_OTHER,
            None,
            Some("/moved"),
            "http://web.shop:80/moved",
        ),
        (
            StatusCode::TEMPORARY_REDIRECT,
            None,
            None,
            "http://web.shop:80/items?id=7",
        ),
        (
            StatusCode::PERMANENT_REDIRECT,
            None,
            None,
            "http://web.shop:80/items?id=7",
        ),
    ];
    for (status, authority, path, location) in cases {
        let reply = reply(local_action(
            &redirect(status, authority, path),
            &uri,
            Some("web.shop:80"),
        ))
        .expect("a redirect answers");
        assert_eq!(reply.response.status(), status);
        assert_eq!(
            reply.response.headers()[header::LOCATION],
            location,
            "{status}"
        );
        assert!(reply.flags.is_empty());
    }
}

#[test]
fn direct_responses_answer_with_their_body_and_response_headers_and_forwards_go_on() {
    let mut direct = route(HttpAction::DirectResponse {
        status: StatusCode::IM_A_TEAPOT,
        body: Some("tea".into()),
    });
    direct.response_headers.set = vec![(
        HeaderName::from_static("x-served-by"),
        HeaderValue::from_static("shunt"),
    )];
    let uri: Uri = "/".parse().unwrap();
    let answered = reply(local_action(&direct, &uri, None)).expect("answered");
    assert_eq!(answered.response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(answered.response.headers()["x-served-by"], "shunt");
    assert!(reply(local_action(&forwarding(), &uri, None)).is_none());
}

#[test]
fn request_edits_rewrite_edit_headers_and_add_forwarded_headers() {
    let mut edited_route = forwarding();
    edited_route.request_headers.set = vec![(
        HeaderName::from_static("x-route"),
        HeaderValue::from_static("yes"),
    )];
    let mut weighted = destination(100);
    weighted.request_headers.set = vec![(
        HeaderName::from_static("x-destination"),
        HeaderValue::from_static("yes"),
    )];
    let mut parts = head(
        Method::GET,
        &[("connection", "keep-alive"), ("keep-alive", "timeout=5")],
    );
    let edited = edit_request(
        &edited_route,
        &weighted,
        &mut parts,
        Some("web.shop:80"),
        false,
        Some([10, 1, 0, 5].into()),
    );
    assert_eq!(edited.authority.as_deref(), Some("web.shop:80"));
    assert_eq!(edited.x_forwarded_for.as_deref(), Some("10.1.0.5"));
    assert_eq!(parts.headers["x-route"], "yes");
    assert_eq!(parts.headers["x-destination"], "yes");
    assert!(!parts.headers.contains_key("keep-alive"));
    assert!(!parts.headers.contains_key(header::CONNECTION));
}
