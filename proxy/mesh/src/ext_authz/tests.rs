use serde_json::json;

use super::*;

const FIELD: &str = "data.mesh.extensionProviders";

fn one(entry: Value) -> ExtensionProvider {
    let mut providers = extension_providers(&[entry], FIELD).0;
    assert_eq!(providers.len(), 1);
    providers.remove(0)
}

fn http(entry: Value) -> ExtAuthzHttp {
    match one(entry).kind {
        ProviderKind::EnvoyExtAuthzHttp(http) => http,
        other => panic!("expected envoyExtAuthzHttp, got {other:?}"),
    }
}

fn exact(name: &str) -> HeaderPattern {
    HeaderPattern::Exact(name.into())
}

#[test]
fn every_field_is_read() {
    let got = http(json!({
        "name": "sample",
        "envoyExtAuthzHttp": {
            "service": "foo/ext-authz.foo.svc.cluster.local",
            "port": "8000",
            "timeout": "0.5s",
            "pathPrefix": "/check",
            "failOpen": true,
            "clearRouteCache": true,
            "statusOnError": "503",
            "includeRequestHeadersInCheck": ["x-ext-authz", "X-Trace-*", "*-ID"],
            "includeAdditionalHeadersInCheck": {"X-Static": "1", "x-added": "two words"},
            "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
            "headersToDownstreamOnAllow": ["set-cookie"],
            "headersToDownstreamOnDeny": ["x-ext-authz-check-result", "content-type"],
        }
    }));
    assert_eq!(
        got,
        ExtAuthzHttp {
            service: "foo/ext-authz.foo.svc.cluster.local".into(),
            namespace: Some("foo".into()),
            host: "ext-authz.foo.svc.cluster.local".into(),
            port: 8000,
            timeout: Duration::from_millis(500),
            path_prefix: "/check".into(),
            fail_open: true,
            status_on_error: 503,
            include_request_headers: vec![
                exact("x-ext-authz"),
                HeaderPattern::Prefix("x-trace-".into()),
                HeaderPattern::Suffix("-id".into()),
            ],
            include_additional_headers: vec![
                ("x-added".into(), "two words".into()),
                ("x-static".into(), "1".into()),
            ],
            headers_to_upstream_on_allow: vec![exact("x-ext-authz-check-result")],
            headers_to_downstream_on_allow: vec![exact("set-cookie")],
            headers_to_downstream_on_deny: vec![
                exact("x-ext-authz-check-result"),
                exact("content-type"),
            ],
        }
    );
}

#[test]
fn a_bare_provider_gets_istios_defaults() {
    let got = http(json!({
        "name": "sample",
        "envoyExtAuthzHttp": {"service": "ext-authz.foo.svc.cluster.local", "port": 9000},
    }));
    assert_eq!(
        got,
        ExtAuthzHttp {
            service: "ext-authz.foo.svc.cluster.local".into(),
            namespace: None,
            host: "ext-authz.foo.svc.cluster.local".into(),
            port: 9000,
            timeout: DEFAULT_TIMEOUT,
            path_prefix: String::new(),
            fail_open: false,
            status_on_error: 403,
            include_request_headers: Vec::new(),
            include_additional_headers: Vec::new(),
            headers_to_upstream_on_allow: Vec::new(),
            headers_to_downstream_on_allow: Vec::new(),
            headers_to_downstream_on_deny: Vec::new(),
        }
    );
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(600));
}

#[test]
fn the_deprecated_header_list_is_read_only_without_the_new_one() {
    let provider = |fields: Value| {
        let mut config = json!({"service": "a.b.svc.cluster.local", "port": 80});
        config
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        http(json!({"name": "p", "envoyExtAuthzHttp": config})).include_request_headers
    };
    assert_eq!(
        provider(json!({"includeHeadersInCheck": ["x-old"]})),
        vec![exact("x-old")]
    );
    assert_eq!(
        provider(
            json!({"includeHeadersInCheck": ["x-old"], "includeRequestHeadersInCheck": ["x-new"]})
        ),
        vec![exact("x-new")]
    );
}

#[test]
fn bad_providers_name_their_field_and_are_kept_as_invalid() {
    // The `envoyExtAuthzHttp` object, the field (after `[0].envoyExtAuthzHttp`), and a part
    // of the message.
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"port": 80}), ".service", "required"),
        (
            json!({"service": "a.b", "port": 80, "failopen": true}),
            ".failopen",
            "unknown field \"failopen\"",
        ),
        (
            json!({"service": "Foo.Bar", "port": 80}),
            ".service",
            "is not [<namespace>/]<hostname>",
        ),
        (
            json!({"service": "*.foo.svc", "port": 80}),
            ".service",
            "no wildcard",
        ),
        (
            json!({"service": "Bad_NS/a.b", "port": 80}),
            ".service",
            "is not a namespace name",
        ),
        (
            json!({"service": "a/b/c", "port": 80}),
            ".service",
            "is not [<namespace>/]<hostname>",
        ),
        (json!({"service": "a.b"}), ".port", "required"),
        (
            json!({"service": "a.b", "port": 0}),
            ".port",
            "expected 1 to 65535",
        ),
        (
            json!({"service": "a.b", "port": 70000}),
            ".port",
            "expected 1 to 65535",
        ),
        (
            json!({"service": "a.b", "port": "http"}),
            ".port",
            "expected 1 to 65535",
        ),
        (
            json!({"service": "a.b", "port": true}),
            ".port",
            "expected a port number",
        ),
        (
            json!({"service": "a.b", "port": 80, "timeout": "soon"}),
            ".timeout",
            "is not a duration",
        ),
        (
            json!({"service": "a.b", "port": 80, "timeout": "0s"}),
            ".timeout",
            "at least 1ms",
        ),
        (
            json!({"service": "a.b", "port": 80, "pathPrefix": "check"}),
            ".pathPrefix",
            "must begin with \"/\"",
        ),
        (
            json!({"service": "a.b", "port": 80, "pathPrefix": "/c?x=1"}),
            ".pathPrefix",
            "holds '?'",
        ),
        (
            json!({"service": "a.b", "port": 80, "pathPrefix": "/a b"}),
            ".pathPrefix",
            "holds ' '",
        ),
        (
            json!({"service": "a.b", "port": 80, "statusOnError": "forbidden"}),
            ".statusOnError",
            "not an HTTP status",
        ),
        (
            json!({"service": "a.b", "port": 80, "statusOnError": "299"}),
            ".statusOnError",
            "not an HTTP status",
        ),
        (
            json!({"service": "a.b", "port": 80, "statusOnError": "100"}),
            ".statusOnError",
            "not an HTTP status",
        ),
        (
            json!({"service": "a.b", "port": 80, "failOpen": "yes"}),
            ".failOpen",
            "expected true or false",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeRequestHeadersInCheck": ["*"]}),
            ".includeRequestHeadersInCheck[0]",
            "a lone \"*\"",
        ),
        (
            json!({"service": "a.b", "port": 80, "headersToUpstreamOnAllow": ["ok", "bad header"]}),
            ".headersToUpstreamOnAllow[1]",
            "is not a header name",
        ),
        (
            json!({"service": "a.b", "port": 80, "headersToDownstreamOnDeny": "x-a"}),
            ".headersToDownstreamOnDeny",
            "expected a list",
        ),
        (
            json!({"service": "a.b", "port": 80, "headersToDownstreamOnAllow": [7]}),
            ".headersToDownstreamOnAllow[0]",
            "expected a header name",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeAdditionalHeadersInCheck": {"x a": "1"}}),
            ".includeAdditionalHeadersInCheck.x a",
            "is not a header name",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeAdditionalHeadersInCheck": {"x-a": "line\nbreak"}}),
            ".includeAdditionalHeadersInCheck.x-a",
            "is not a header value",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeAdditionalHeadersInCheck": {"x-a": 1}}),
            ".includeAdditionalHeadersInCheck.x-a",
            "expected a string",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeAdditionalHeadersInCheck": {"X-A": "1", "x-a": "2"}}),
            ".includeAdditionalHeadersInCheck",
            "given twice",
        ),
        (
            json!({"service": "a.b", "port": 80, "includeRequestBodyInCheck": {"maxRequestBytes": 10}}),
            ".includeRequestBodyInCheck",
            "does not send request bodies",
        ),
        (json!("a.b:80"), "", "expected an object"),
    ];
    for (config, field, message) in cases {
        let got = one(json!({"name": "p", "envoyExtAuthzHttp": config}));
        assert_eq!(got.name, "p", "{config}");
        let ProviderKind::Invalid {
            field: got_field,
            message: got_message,
        } = &got.kind
        else {
            panic!("{config}: accepted as {:?}", got.kind);
        };
        assert_eq!(
            got_field,
            &format!("{FIELD}[0].envoyExtAuthzHttp{field}"),
            "{config}: {got_message}"
        );
        assert!(
            got_message.contains(message),
            "{config}: {got_message:?} does not say {message:?}"
        );
    }
}

#[test]
fn entries_without_a_usable_name_or_kind_are_invalid() {
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!({"envoyExtAuthzHttp": {}}),
            "",
            "[0].name",
            "non-empty name",
        ),
        (
            json!({"name": "", "envoyExtAuthzHttp": {}}),
            "",
            "[0].name",
            "non-empty name",
        ),
        (
            json!({"name": 3, "envoyExtAuthzHttp": {}}),
            "",
            "[0].name",
            "expected a string",
        ),
        (json!({"name": "p"}), "p", "[0]", "no provider field"),
        (
            json!({"name": "p", "zipkin": {}, "envoyExtAuthzHttp": {}}),
            "p",
            "[0]",
            "one provider field expected",
        ),
        (
            json!({"name": "p", "envoyExtAuthzHTTP": {}}),
            "p",
            "[0].envoyExtAuthzHTTP",
            "unknown provider field",
        ),
        (json!(["p"]), "", "[0]", "expected an object"),
    ];
    for (entry, name, field, message) in cases {
        let got = one(entry.clone());
        assert_eq!(got.name, name, "{entry}");
        match &got.kind {
            ProviderKind::Invalid {
                field: got_field,
                message: got_message,
            } => {
                assert_eq!(got_field, &format!("{FIELD}{field}"), "{entry}");
                assert!(got_message.contains(message), "{entry}: {got_message:?}");
            }
            other => panic!("{entry}: accepted as {other:?}"),
        }
    }
}

#[test]
fn other_kinds_are_kept_but_are_not_http_authorizers() {
    for kind in [
        "envoyExtAuthzGrpc",
        "zipkin",
        "opentelemetry",
        "envoyFileAccessLog",
    ] {
        let mut entry = Map::new();
        entry.insert("name".into(), json!("p"));
        entry.insert(kind.into(), json!({"service": "x", "port": 1}));
        let got = one(Value::Object(entry));
        assert_eq!(
            got.kind,
            ProviderKind::Other { kind: kind.into() },
            "{kind}"
        );
    }
}

fn settings(providers: &[Value]) -> ExtensionProviders {
    extension_providers(providers, FIELD)
}

#[test]
fn a_custom_policy_finds_its_provider_or_why_not() {
    let settings = settings(&[
        json!({"name": "good", "envoyExtAuthzHttp": {"service": "a.b", "port": 80}}),
        json!({"name": "grpc", "envoyExtAuthzGrpc": {"service": "a.b", "port": 80}}),
        json!({"name": "broken", "envoyExtAuthzHttp": {"service": "a.b"}}),
        // A second "good": both become unusable, as in Istio (the duplicate carries the error).
        json!({"name": "twice", "envoyExtAuthzHttp": {"service": "a.b", "port": 80}}),
        json!({"name": "twice", "envoyExtAuthzHttp": {"service": "c.d", "port": 80}}),
    ]);
    assert_eq!(settings.http("good").map(|p| p.port), Ok(80));
    assert_eq!(
        settings.http("grpc"),
        Err(ProviderError::NotHttpAuthorizer {
            name: "grpc".into(),
            kind: "envoyExtAuthzGrpc".into()
        })
    );
    assert_eq!(
        settings.http("broken"),
        Err(ProviderError::Invalid {
            name: "broken".into(),
            field: format!("{FIELD}[2].envoyExtAuthzHttp.port"),
            message: "required: the service's port".into(),
        })
    );
    match settings.http("twice") {
        Err(ProviderError::Invalid { field, message, .. }) => {
            assert_eq!(field, format!("{FIELD}[4].name"));
            assert!(message.contains("names must be unique"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        settings.http("missing"),
        Err(ProviderError::NotFound {
            name: "missing".into(),
            defined: vec![
                "good".into(),
                "grpc".into(),
                "broken".into(),
                "twice".into(),
                "twice".into()
            ],
        })
    );
    assert_eq!(
        settings.problems().collect::<Vec<_>>(),
        vec![
            (
                format!("{FIELD}[2].envoyExtAuthzHttp.port").as_str(),
                "required: the service's port"
            ),
            (
                format!("{FIELD}[4].name").as_str(),
                "a second provider named \"twice\": names must be unique (CUSTOM policies \
                 naming it deny until one is renamed)"
            ),
        ]
    );
}

#[test]
fn header_patterns_match_as_istio_says() {
    // pattern, name, matches
    let cases = [
        ("x-ext-authz", "x-ext-authz", true),
        ("x-ext-authz", "X-Ext-Authz", true),
        ("x-ext-authz", "x-ext-authz-2", false),
        ("X-Trace-*", "x-trace-id", true),
        ("x-trace-*", "x-trace-", true),
        ("x-trace-*", "x-trac", false),
        ("*-id", "x-request-id", true),
        ("*-ID", "x-request-id", true),
        ("*-id", "id", false),
        ("*-id", "x-idx", false),
    ];
    for (pattern, name, matches) in cases {
        let parsed = HeaderPattern::parse(pattern).unwrap();
        assert_eq!(parsed.matches(name), matches, "{pattern} vs {name}");
    }
    for bad in ["*", "", "x y*", "*:path"] {
        assert!(HeaderPattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn providers_survive_the_control_wire() {
    let settings = crate::settings::MeshSettings {
        extension_providers: settings(&[
            json!({"name": "good", "envoyExtAuthzHttp": {
                "service": "ns/a.b", "port": 80, "timeout": "2s",
                "includeRequestHeadersInCheck": ["x-*"],
                "includeAdditionalHeadersInCheck": {"x-a": "1"},
            }}),
            json!({"name": "grpc", "envoyExtAuthzGrpc": {}}),
            json!({"name": "bad", "envoyExtAuthzHttp": {}}),
        ]),
        ..crate::settings::MeshSettings::default()
    };
    let wire = serde_json::to_string(&settings).unwrap();
    let back: crate::settings::MeshSettings = serde_json::from_str(&wire).unwrap();
    assert_eq!(back, settings);
    // An older agent's settings have no providers.
    let old: crate::settings::MeshSettings = serde_json::from_str("{}").unwrap();
    assert!(old.extension_providers.is_empty());
}

#[test]
fn a_bad_provider_costs_only_itself() {
    let config = crate::istio::MeshConfig {
        trust_domain: Some("example.org".into()),
        extension_providers: vec![
            json!({"name": "bad", "envoyExtAuthzHttp": {"service": "a.b", "port": 0}}),
            json!({"name": "good", "envoyExtAuthzHttp": {"service": "a.b", "port": 80}}),
        ],
        ..crate::istio::MeshConfig::default()
    };
    let settings = crate::routing::mesh_settings(&config, "data.mesh").unwrap();
    assert_eq!(settings.trust_domain, "example.org");
    let providers = &settings.extension_providers;
    assert!(providers.http("good").is_ok());
    assert!(matches!(
        providers.http("bad"),
        Err(ProviderError::Invalid { .. })
    ));
    assert_eq!(providers.problems().count(), 1);
}
