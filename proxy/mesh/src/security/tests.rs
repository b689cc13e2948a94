use serde_json::json;

use super::*;
use crate::istio;
use crate::model::{MeshState, Workload};
use crate::testing::pod;

/// `(namespace, name, creationTimestamp, spec)`.
type Written = (
    &'static str,
    &'static str,
    Option<&'static str>,
    serde_json::Value,
);

fn pa(written: &Written) -> istio::PeerAuthentication {
    let (namespace, name, created, spec) = written;
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }))
    .unwrap()
}

/// shop: cart (app=cart, version=v1), web (app=web); other: client (app=client).
fn workloads() -> Vec<Workload> {
    let mut cart = pod("shop", "cart", [10, 0, 0, 2], "cart");
    cart.labels.insert("version".into(), "v1".into());
    vec![
        cart,
        pod("shop", "web", [10, 0, 0, 1], "web"),
        pod("other", "client", [10, 0, 1, 1], "client"),
    ]
}

fn state(policies: &[Written]) -> MeshState {
    MeshState {
        workloads: workloads(),
        peer_authentications: policies.iter().map(pa).collect(),
        ..MeshState::default()
    }
}

fn workload<'a>(state: &'a MeshState, name: &str) -> &'a Workload {
    state.workloads.iter().find(|w| w.name == name).unwrap()
}

/// `(pod, port, "MODE by source (...)")`.
type Expect = (&'static str, u16, &'static str);

const OLD: Option<&str> = Some("2024-01-01T00:00:00Z");
const NEW: Option<&str> = Some("2024-06-01T00:00:00Z");

/// Each case: the policies; then `(pod, port, "MODE by source")` expectations.
#[test]
fn peer_authentications_merge_as_istio_composes_them() {
    let strict = || json!({"mtls": {"mode": "STRICT"}});
    let permissive = || json!({"mtls": {"mode": "PERMISSIVE"}});
    let disable = || json!({"mtls": {"mode": "DISABLE"}});
    let cart =
        |mode: &str| json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": mode}});
    let cases: Vec<(&str, Vec<Written>, Vec<Expect>)> = vec![
        (
            "no policy",
            vec![],
            vec![
                ("cart", 8080, "PERMISSIVE by default (no policy)"),
                ("client", 80, "PERMISSIVE by default (no policy)"),
            ],
        ),
        (
            "mesh-wide",
            vec![("istio-system", "default", None, strict())],
            vec![
                ("cart", 8080, "STRICT by istio-system/default (mesh-wide)"),
                ("client", 80, "STRICT by istio-system/default (mesh-wide)"),
            ],
        ),
        (
            "a namespace overrides the mesh",
            vec![
                ("istio-system", "default", None, strict()),
                ("shop", "relaxed", None, permissive()),
            ],
            vec![
                ("web", 8080, "PERMISSIVE by shop/relaxed (namespace-wide)"),
                ("client", 80, "STRICT by istio-system/default (mesh-wide)"),
            ],
        ),
        (
            "a workload overrides its namespace, for its pods only",
            vec![
                ("shop", "default", None, strict()),
                ("shop", "cart-plain", None, cart("DISABLE")),
            ],
            vec![
                (
                    "cart",
                    8080,
                    "DISABLE by shop/cart-plain (workload selector)",
                ),
                ("web", 8080, "STRICT by shop/default (namespace-wide)"),
                ("client", 80, "PERMISSIVE by default (no policy)"),
            ],
        ),
        (
            "UNSET inherits from the next broader scope",
            vec![
                ("istio-system", "default", None, strict()),
                ("shop", "default", None, json!({"mtls": {"mode": "UNSET"}})),
                (
                    "shop",
                    "cart",
                    None,
                    json!({"selector": {"matchLabels": {"app": "cart"}}}),
                ),
            ],
            vec![
                ("cart", 8080, "STRICT by istio-system/default (mesh-wide)"),
                ("web", 8080, "STRICT by istio-system/default (mesh-wide)"),
            ],
        ),
        (
            "the oldest namespace policy wins",
            vec![
                ("shop", "b-new", NEW, disable()),
                ("shop", "z-old", OLD, strict()),
            ],
            vec![("web", 8080, "STRICT by shop/z-old (namespace-wide)")],
        ),
        (
            "same age: the first by name wins",
            vec![("shop", "b", OLD, disable()), ("shop", "a", OLD, strict())],
            vec![("web", 8080, "STRICT by shop/a (namespace-wide)")],
        ),
        (
            "no creationTimestamp counts as oldest",
            vec![("shop", "a", OLD, disable()), ("shop", "z", None, strict())],
            vec![("web", 8080, "STRICT by shop/z (namespace-wide)")],
        ),
        (
            "the oldest matching workload policy wins",
            vec![
                (
                    "shop",
                    "by-version",
                    NEW,
                    json!({"selector": {"matchLabels": {"version": "v1"}}, "mtls": {"mode": "DISABLE"}}),
                ),
                ("shop", "by-app", OLD, cart("STRICT")),
                (
                    "shop",
                    "web-only",
                    None,
                    json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "DISABLE"}}),
                ),
            ],
            vec![
                ("cart", 8080, "STRICT by shop/by-app (workload selector)"),
                ("web", 8080, "DISABLE by shop/web-only (workload selector)"),
            ],
        ),
        (
            "portLevelMtls DISABLE on one port",
            vec![(
                "shop",
                "cart",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"9090": {"mode": "DISABLE"}, "9091": {"mode": "UNSET"}}}),
            )],
            vec![
                ("cart", 8080, "STRICT by shop/cart (workload selector)"),
                ("cart", 9090, "DISABLE by shop/cart (its portLevelMtls)"),
                // UNSET at the port inherits the workload's mode.
                ("cart", 9091, "STRICT by shop/cart (workload selector)"),
            ],
        ),
        (
            "port level over an inherited mode",
            vec![
                ("shop", "default", None, permissive()),
                (
                    "shop",
                    "cart",
                    None,
                    json!({"selector": {"matchLabels": {"app": "cart"}}, "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
                ),
            ],
            vec![
                ("cart", 8080, "STRICT by shop/cart (its portLevelMtls)"),
                ("cart", 9090, "PERMISSIVE by shop/default (namespace-wide)"),
            ],
        ),
        (
            "a selector in the root namespace is ignored",
            vec![("istio-system", "cart", None, cart("STRICT"))],
            vec![("cart", 8080, "PERMISSIVE by default (no policy)")],
        ),
    ];
    for (name, policies, expectations) in cases {
        let state = state(&policies);
        let (table, _) = PeerAuthnTable::build(&state);
        for (pod, port, want) in expectations {
            let w = workload(&state, pod);
            assert_eq!(
                table.explain(w, port).to_string(),
                want,
                "{name}: {pod}:{port}"
            );
            assert_eq!(table.mode(w, port), table.explain(w, port).mode);
        }
    }
}

#[test]
fn root_namespace_comes_from_the_mesh_config() {
    let mut state = state(&[
        (
            "mesh-root",
            "default",
            None,
            json!({"mtls": {"mode": "STRICT"}}),
        ),
        (
            "istio-system",
            "default",
            None,
            json!({"mtls": {"mode": "DISABLE"}}),
        ),
    ]);
    state.mesh.root_namespace = "mesh-root".into();
    let (table, errors) = PeerAuthnTable::build(&state);
    assert_eq!(errors, vec![]);
    let client = workload(&state, "client");
    assert_eq!(
        table.explain(client, 80).to_string(),
        "STRICT by mesh-root/default (mesh-wide)"
    );
    // istio-system is a namespace like any other here.
    let mut system_pod = pod("istio-system", "istiod", [10, 0, 9, 9], "istiod");
    system_pod.labels.clear();
    assert_eq!(
        table.explain(&system_pod, 15012).to_string(),
        "DISABLE by istio-system/default (namespace-wide)"
    );
}

#[test]
fn fail_closed_is_strict_anywhere_on_the_workload() {
    let cases: Vec<(Vec<Written>, bool)> = vec![
        (vec![], false),
        (
            vec![("shop", "default", None, json!({"mtls": {"mode": "STRICT"}}))],
            true,
        ),
        (
            vec![(
                "shop",
                "default",
                None,
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            )],
            false,
        ),
        // STRICT with one port relaxed: still STRICT elsewhere.
        (
            vec![(
                "shop",
                "c",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"9090": {"mode": "DISABLE"}}}),
            )],
            true,
        ),
        // PERMISSIVE with one port STRICT.
        (
            vec![(
                "shop",
                "c",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"9090": {"mode": "STRICT"}}}),
            )],
            true,
        ),
        // A port-level UNSET under a STRICT namespace.
        (
            vec![
                ("shop", "default", None, json!({"mtls": {"mode": "STRICT"}})),
                (
                    "shop",
                    "c",
                    None,
                    json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "DISABLE"}, "portLevelMtls": {"9090": {"mode": "UNSET"}}}),
                ),
            ],
            false,
        ),
        // Mesh STRICT, the pod's own policy DISABLE.
        (
            vec![
                (
                    "istio-system",
                    "default",
                    None,
                    json!({"mtls": {"mode": "STRICT"}}),
                ),
                (
                    "shop",
                    "c",
                    None,
                    json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "DISABLE"}}),
                ),
            ],
            false,
        ),
    ];
    for (policies, expected) in cases {
        let state = state(&policies);
        let (table, errors) = PeerAuthnTable::build(&state);
        assert_eq!(errors, vec![]);
        assert_eq!(
            table.fail_closed(workload(&state, "cart")),
            expected,
            "{policies:?}"
        );
    }
}

#[test]
fn validation_errors_name_the_object_and_the_field() {
    let cases: Vec<(Written, Vec<&str>)> = vec![
        (
            ("shop", "p", None, json!({"mtls": {"mode": "STRICTER"}})),
            vec!["PeerAuthentication shop/p: spec.mtls.mode: unknown mTLS mode \"STRICTER\""],
        ),
        (
            (
                "shop",
                "p",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "portLevelMtls": {"http": {"mode": "DISABLE"}, "0": {"mode": "DISABLE"}, "70000": {"mode": "DISABLE"}}}),
            ),
            vec![
                "PeerAuthentication shop/p: spec.portLevelMtls.0: \"0\" is not a port",
                "PeerAuthentication shop/p: spec.portLevelMtls.70000: \"70000\" is not a port",
                "PeerAuthentication shop/p: spec.portLevelMtls.http: \"http\" is not a port",
            ],
        ),
        (
            (
                "shop",
                "p",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "portLevelMtls": {"80": {"mode": "strict"}}}),
            ),
            vec![
                "PeerAuthentication shop/p: spec.portLevelMtls.80.mode: unknown mTLS mode \"strict\"",
            ],
        ),
        (
            (
                "shop",
                "p",
                None,
                json!({"mtls": {"mode": "STRICT"}, "portLevelMtls": {"80": {"mode": "DISABLE"}}}),
            ),
            vec!["PeerAuthentication shop/p: spec.portLevelMtls: portLevelMtls needs a selector"],
        ),
        (
            (
                "shop",
                "p",
                None,
                json!({"selector": {"matchLabels": {"app": "*"}}}),
            ),
            vec![
                "PeerAuthentication shop/p: spec.selector.matchLabels.app: wildcards are not supported",
            ],
        ),
        // Valid, but does nothing.
        (
            (
                "istio-system",
                "p",
                None,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "STRICT"}}),
            ),
            vec![
                "PeerAuthentication istio-system/p: spec.selector: a PeerAuthentication with a selector in the root namespace \"istio-system\" applies to no workload",
            ],
        ),
    ];
    for (written, expected) in cases {
        let errors = validate(&state(std::slice::from_ref(&written)));
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), expected.len(), "{got:#?}");
        for (got, want) in got.iter().zip(&expected) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        let dropped = errors.iter().any(Error::drops_object);
        assert_eq!(dropped, written.0 != "istio-system", "{got:?}");
    }
}

#[test]
fn a_second_namespace_wide_policy_is_reported_and_does_nothing() {
    let state = state(&[
        ("shop", "first", OLD, json!({"mtls": {"mode": "STRICT"}})),
        ("shop", "second", NEW, json!({"mtls": {"mode": "DISABLE"}})),
    ]);
    let (table, errors) = PeerAuthnTable::build(&state);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(&*errors[0].object().name, "second");
    assert!(
        errors[0].message().contains("older policy shop/first"),
        "{errors:?}"
    );
    assert!(!errors[0].drops_object());
    assert_eq!(table.mode(workload(&state, "web"), 80), MtlsMode::Strict);
}

/// A rejected policy that asked for STRICT stands in its place as STRICT on every port.
#[test]
fn rejected_strict_policies_fail_closed() {
    let rejected = |namespace: &str, name: &str, created: Option<&str>, selector| {
        istio::RejectedPeerAuthentication {
            metadata: istio::Metadata {
                name: name.into(),
                namespace: namespace.into(),
                creation_timestamp: created.map(str::to_owned),
            },
            selector,
        }
    };
    let cart = || istio::RejectedSelector::Labels(crate::testing::labels(&[("app", "cart")]));
    type Case = (
        Vec<Written>,
        Vec<istio::RejectedPeerAuthentication>,
        Vec<Expect>,
    );
    let cases: Vec<Case> = vec![
        // A broken workload policy over a PERMISSIVE namespace: its pods go STRICT, on every
        // port, others keep the namespace's mode.
        (
            vec![(
                "shop",
                "default",
                None,
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            )],
            vec![rejected("shop", "cart", None, cart())],
            vec![
                (
                    "cart",
                    9090,
                    "STRICT by shop/cart (workload selector; the policy is rejected and fails closed until it is fixed)",
                ),
                ("web", 80, "PERMISSIVE by shop/default (namespace-wide)"),
            ],
        ),
        // Where an older policy of the same scope would have won anyway, it still does.
        (
            vec![(
                "shop",
                "old",
                OLD,
                json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "DISABLE"}}),
            )],
            vec![rejected("shop", "new", NEW, cart())],
            vec![("cart", 80, "DISABLE by shop/old (workload selector)")],
        ),
        // An unreadable selector stands in for every pod of the namespace, at workload scope.
        (
            vec![(
                "shop",
                "web",
                NEW,
                json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "DISABLE"}}),
            )],
            vec![rejected(
                "shop",
                "broken",
                OLD,
                istio::RejectedSelector::Unreadable,
            )],
            vec![
                (
                    "cart",
                    80,
                    "STRICT by shop/broken (workload selector; the policy is rejected and fails closed until it is fixed)",
                ),
                (
                    "web",
                    80,
                    "STRICT by shop/broken (workload selector; the policy is rejected and fails closed until it is fixed)",
                ),
                ("client", 80, "PERMISSIVE by default (no policy)"),
            ],
        ),
        // A broken mesh-wide policy; namespaces with their own keep it.
        (
            vec![(
                "other",
                "default",
                None,
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            )],
            vec![rejected(
                "istio-system",
                "default",
                None,
                istio::RejectedSelector::None,
            )],
            vec![
                (
                    "cart",
                    80,
                    "STRICT by istio-system/default (mesh-wide; the policy is rejected and fails closed until it is fixed)",
                ),
                ("client", 80, "PERMISSIVE by other/default (namespace-wide)"),
            ],
        ),
        // A selector in the root namespace applies to nothing, broken or not.
        (
            vec![],
            vec![rejected(
                "istio-system",
                "x",
                None,
                istio::RejectedSelector::Unreadable,
            )],
            vec![("cart", 80, "PERMISSIVE by default (no policy)")],
        ),
    ];
    for (policies, fail_closed, expectations) in cases {
        let mut state = state(&policies);
        state.fail_closed.peer_authentications = fail_closed;
        let (table, errors) = PeerAuthnTable::build(&state);
        assert_eq!(errors, vec![]);
        for (pod, port, want) in expectations {
            let w = workload(&state, pod);
            assert_eq!(table.explain(w, port).to_string(), want, "{pod}:{port}");
        }
    }
}

/// The proxy never gets an invalid policy from the agent; should it, the policy fails closed
/// there too.
#[test]
fn an_invalid_policy_in_the_state_fails_closed_in_the_table() {
    let state = state(&[
        (
            "shop",
            "default",
            None,
            json!({"mtls": {"mode": "DISABLE"}}),
        ),
        (
            "shop",
            "cart",
            None,
            json!({"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"http": {"mode": "DISABLE"}}}),
        ),
    ]);
    let (table, errors) = PeerAuthnTable::build(&state);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field(), "spec.portLevelMtls.http");
    let cart = workload(&state, "cart");
    assert_eq!(table.mode(cart, 8080), MtlsMode::Strict);
    assert!(table.fail_closed(cart));
    assert_eq!(table.mode(workload(&state, "web"), 8080), MtlsMode::Disable);
}
