use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

struct Example {
    name: &'static str,
    config: ForwardedConfig,
    peer: &'static str,
    request: &'static [(&'static str, &'static str)],
    client: &'static str,
    /// `x-forwarded-for`, `x-envoy-external-address`, `x-envoy-internal` afterwards.
    after: (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    ),
}

const EDGE: ForwardedConfig = ForwardedConfig {
    use_remote_address: true,
    num_trusted_hops: 0,
};
const INTERNAL: ForwardedConfig = ForwardedConfig {
    use_remote_address: false,
    num_trusted_hops: 0,
};
const EDGE_BEHIND_TWO: ForwardedConfig = ForwardedConfig {
    use_remote_address: true,
    num_trusted_hops: 2,
};
const INTERNAL_BEHIND_TWO: ForwardedConfig = ForwardedConfig {
    use_remote_address: false,
    num_trusted_hops: 2,
};

/// Envoy's documented examples (HTTP connection management, "x-forwarded-for").
const EXAMPLES: &[Example] = &[
    Example {
        name: "1: edge proxy without a trusted proxy in front",
        config: EDGE,
        peer: "192.0.2.5",
        request: &[(
            "x-forwarded-for",
            "203.0.113.128, 203.0.113.10, 203.0.113.1",
        )],
        client: "192.0.2.5",
        after: (
            Some("203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"),
            Some("192.0.2.5"),
            None,
        ),
    },
    Example {
        name: "2: internal proxy behind the edge proxy of 1",
        config: INTERNAL,
        peer: "10.11.12.13",
        request: &[
            (
                "x-forwarded-for",
                "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5",
            ),
            ("x-envoy-external-address", "192.0.2.5"),
            ("x-envoy-internal", "true"),
        ],
        client: "192.0.2.5",
        after: (
            Some("203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"),
            Some("192.0.2.5"),
            None,
        ),
    },
    Example {
        name: "3: edge proxy with two trusted external proxies in front",
        config: EDGE_BEHIND_TWO,
        peer: "192.0.2.5",
        request: &[(
            "x-forwarded-for",
            "203.0.113.128, 203.0.113.10, 203.0.113.1",
        )],
        client: "203.0.113.10",
        after: (
            Some("203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"),
            Some("203.0.113.10"),
            None,
        ),
    },
    Example {
        name: "4: internal proxy behind the edge proxy of 3",
        config: INTERNAL_BEHIND_TWO,
        peer: "10.11.12.13",
        request: &[
            (
                "x-forwarded-for",
                "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5",
            ),
            ("x-envoy-external-address", "203.0.113.10"),
        ],
        client: "203.0.113.10",
        after: (
            Some("203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"),
            Some("203.0.113.10"),
            None,
        ),
    },
    Example {
        name: "5: internal proxy, a request from an internal client",
        config: INTERNAL,
        peer: "10.20.30.40",
        request: &[],
        client: "10.20.30.40",
        after: (None, None, Some("true")),
    },
    Example {
        name: "6: the proxy of 5, the request proxied by another Envoy",
        config: INTERNAL,
        peer: "10.20.30.50",
        request: &[("x-forwarded-for", "10.20.30.40")],
        client: "10.20.30.40",
        after: (Some("10.20.30.40"), None, Some("true")),
    },
];

#[test]
fn envoys_documented_examples() {
    for example in EXAMPLES {
        let mut map = headers(example.request);
        let found = apply(&mut map, ip(example.peer), example.config);
        assert_eq!(found.client, ip(example.client), "{}", example.name);
        let get = |name: &str| map.get(name).map(|v| v.to_str().unwrap().to_owned());
        let after = (
            get(X_FORWARDED_FOR),
            get(X_ENVOY_EXTERNAL_ADDRESS),
            get(X_ENVOY_INTERNAL),
        );
        let expected = (
            example.after.0.map(str::to_owned),
            example.after.1.map(str::to_owned),
            example.after.2.map(str::to_owned),
        );
        assert_eq!(after, expected, "{}", example.name);
    }
}

#[test]
fn short_or_garbled_forwarded_for_falls_back_to_the_peer() {
    let peer = ip("192.0.2.5");
    type Headers = &'static [(&'static str, &'static str)];
    let cases: &[(Headers, ForwardedConfig, &str)] = &[
        // Fewer addresses than trusted hops.
        (
            &[("x-forwarded-for", "203.0.113.1")],
            EDGE_BEHIND_TWO,
            "192.0.2.5",
        ),
        (&[], INTERNAL, "192.0.2.5"),
        // The entry counted to is no address.
        (
            &[("x-forwarded-for", "203.0.113.1, unknown")],
            INTERNAL,
            "192.0.2.5",
        ),
        // Lines count as one list, in order.
        (
            &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "203.0.113.2"),
            ],
            ForwardedConfig {
                use_remote_address: true,
                num_trusted_hops: 1,
            },
            "203.0.113.2",
        ),
        (
            &[("x-forwarded-for", "203.0.113.1,,203.0.113.2")],
            INTERNAL_BEHIND_TWO,
            "192.0.2.5",
        ),
        (
            &[("x-forwarded-for", "2001:db8::1, 203.0.113.2")],
            ForwardedConfig {
                use_remote_address: true,
                num_trusted_hops: 2,
            },
            "2001:db8::1",
        ),
    ];
    for (request, config, client) in cases {
        let found = client_address(&headers(request), peer, *config);
        assert_eq!(found.client, ip(client), "{request:?} {config:?}");
    }
    let map = headers(&[
        ("x-forwarded-for", "203.0.113.1"),
        ("x-forwarded-for", " 203.0.113.2 "),
    ]);
    assert_eq!(appended(&map, peer), "203.0.113.1, 203.0.113.2, 192.0.2.5");
    assert_eq!(appended(&HeaderMap::new(), peer), "192.0.2.5");
}

#[test]
fn internal_addresses_are_envoys_defaults() {
    for (address, internal) in [
        ("10.1.2.3", true),
        ("172.16.0.1", true),
        ("192.168.1.1", true),
        ("127.0.0.1", true),
        ("169.254.1.1", true),
        ("::1", true),
        ("fd00::1", true),
        ("::ffff:10.0.0.1", true),
        ("192.0.2.5", false),
        ("8.8.8.8", false),
        ("2001:db8::1", false),
    ] {
        assert_eq!(is_internal(ip(address)), internal, "{address}");
    }
}

#[test]
fn an_edge_request_from_an_internal_client_drops_a_forged_external_address() {
    let mut map = headers(&[("x-envoy-external-address", "203.0.113.9")]);
    let found = apply(&mut map, ip("10.0.0.7"), EDGE);
    assert!(found.internal);
    assert!(map.get(X_ENVOY_EXTERNAL_ADDRESS).is_none());
    assert_eq!(map.get(X_FORWARDED_FOR).unwrap(), "10.0.0.7");
    assert_eq!(map.get(X_ENVOY_INTERNAL).unwrap(), "true");
}
