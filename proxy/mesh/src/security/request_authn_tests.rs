use std::time::Duration;

use serde_json::json;

use super::*;
use crate::istio;
use crate::model::{MeshState, Workload};
use crate::testing::pod;

fn ra(namespace: &str, name: &str, spec: serde_json::Value) -> istio::RequestAuthentication {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

fn rule(issuer: &str) -> serde_json::Value {
    json!({"issuer": issuer, "jwksUri": format!("https://{issuer}/jwks.json")})
}

/// shop: cart (app=cart), web (app=web); other: client (app=client); istio-system: gw (app=cart).
fn workloads() -> Vec<Workload> {
    vec![
        pod("shop", "cart", [10, 0, 0, 2], "cart"),
        pod("shop", "web", [10, 0, 0, 1], "web"),
        pod("other", "client", [10, 0, 1, 1], "client"),
        pod("istio-system", "gw", [10, 0, 2, 1], "cart"),
    ]
}

fn state(policies: Vec<istio::RequestAuthentication>) -> MeshState {
    MeshState {
        workloads: workloads(),
        request_authentications: policies,
        ..MeshState::default()
    }
}

/// `policy#index issuer` of each rule that applies to the pod.
fn applied(table: &RequestAuthnTable, state: &MeshState, pod: &str) -> Vec<String> {
    let workload = state.workloads.iter().find(|w| w.name == pod).unwrap();
    table
        .rules_for(workload)
        .iter()
        .map(|r| {
            format!(
                "{}#{} {}",
                r.policy.name,
                r.index,
                r.issuer.as_deref().unwrap_or("*")
            )
        })
        .collect()
}

#[test]
fn scopes_merge_every_policy_that_applies() {
    let policies = vec![
        ra(
            "istio-system",
            "mesh",
            json!({"jwtRules": [rule("mesh.example")]}),
        ),
        ra(
            "istio-system",
            "mesh-carts",
            json!({"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [rule("carts.example")]}),
        ),
        ra(
            "shop",
            "ns",
            json!({"jwtRules": [rule("a.example"), rule("b.example")]}),
        ),
        ra(
            "shop",
            "cart-only",
            json!({"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [rule("cart.example")]}),
        ),
        ra("shop", "empty", json!({})),
    ];
    let state = state(policies);
    let (table, errors) = RequestAuthnTable::build(&state);
    assert_eq!(errors, vec![]);
    let cases: [(&str, &[&str]); 4] = [
        (
            "cart",
            &[
                "mesh#0 mesh.example",
                "mesh-carts#0 carts.example",
                "cart-only#0 cart.example",
                "ns#0 a.example",
                "ns#1 b.example",
            ],
        ),
        (
            "web",
            &["mesh#0 mesh.example", "ns#0 a.example", "ns#1 b.example"],
        ),
        ("client", &["mesh#0 mesh.example"]),
        // The root namespace's own workloads get its policies once.
        ("gw", &["mesh#0 mesh.example", "mesh-carts#0 carts.example"]),
    ];
    for (pod, expected) in cases {
        assert_eq!(applied(&table, &state, pod), expected, "{pod}");
    }
    let cart = &state.workloads[0];
    let policies: Vec<String> = table
        .policies_for(cart)
        .iter()
        .map(|(p, rejected)| format!("{}/{} {rejected}", p.namespace, p.name))
        .collect();
    assert_eq!(
        policies,
        [
            "istio-system/mesh false",
            "istio-system/mesh-carts false",
            "shop/cart-only false",
            "shop/empty false",
            "shop/ns false"
        ]
    );
}

#[test]
fn a_rule_compiles_with_istio_defaults() {
    let state = state(vec![ra(
        "shop",
        "full",
        json!({"jwtRules": [
            {"issuer": "i", "jwksUri": "http://keys.shop:8080/jwks", "audiences": ["a", "b"]},
            {"issuer": "j", "jwks": "{\"keys\": [{\"kty\": \"EC\"}]}", "jwksUri": "https://ignored/",
             "fromHeaders": [{"name": "X-Jwt", "prefix": "Token "}, {"name": "x-raw"}],
             "fromParams": ["t"], "fromCookies": ["session"],
             "outputPayloadToHeader": "x-payload", "forwardOriginalToken": true,
             "outputClaimToHeaders": [{"header": "x-group", "claim": "realm.group"}],
             "timeout": "250ms"}
        ]}),
    )]);
    let (table, errors) = RequestAuthnTable::build(&state);
    assert_eq!(errors, vec![]);
    let rules = table.rules_for(&state.workloads[0]);
    let (first, second) = (&rules[0], &rules[1]);
    assert_eq!(
        first.jwks,
        JwksSource::Uri("http://keys.shop:8080/jwks".parse().unwrap())
    );
    assert_eq!(first.locations, TokenLocation::defaults());
    assert_eq!(first.timeout, Duration::from_secs(5));
    assert_eq!(first.audiences, ["a", "b"]);
    assert!(!first.forward_original_token && !first.rejected());
    assert!(first.checks_issuer("i") && !first.checks_issuer("j"));

    assert_eq!(
        second.jwks,
        JwksSource::Inline("{\"keys\": [{\"kty\": \"EC\"}]}".into())
    );
    assert_eq!(
        second.locations,
        [
            TokenLocation::Header {
                name: http::HeaderName::from_static("x-jwt"),
                prefix: "Token ".into()
            },
            TokenLocation::Header {
                name: http::HeaderName::from_static("x-raw"),
                prefix: String::new()
            },
            TokenLocation::Param("t".into()),
            TokenLocation::Cookie("session".into()),
        ]
    );
    assert_eq!(
        second.output_payload_to_header,
        Some(http::HeaderName::from_static("x-payload"))
    );
    assert_eq!(
        second.output_claim_to_headers,
        [ClaimToHeader {
            header: http::HeaderName::from_static("x-group"),
            claim: vec!["realm".into(), "group".into()]
        }]
    );
    assert!(second.forward_original_token);
    assert_eq!(second.timeout, Duration::from_millis(250));
}

#[test]
fn invalid_policies_are_named_by_field_and_stand_in_failing_closed() {
    // Each: the rule as written; the one field at fault.
    let cases = [
        (json!({"jwksUri": "https://k/"}), "spec.jwtRules[0].issuer"),
        (json!({"issuer": "i"}), "spec.jwtRules[0]"),
        (
            json!({"issuer": "i", "jwksUri": "ftp://k/keys"}),
            "spec.jwtRules[0].jwksUri",
        ),
        (
            json!({"issuer": "i", "jwksUri": "/keys"}),
            "spec.jwtRules[0].jwksUri",
        ),
        (
            json!({"issuer": "i", "jwks": "{\"keys\": []}"}),
            "spec.jwtRules[0].jwks",
        ),
        (
            json!({"issuer": "i", "jwks": "not json"}),
            "spec.jwtRules[0].jwks",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "audiences": [""]}),
            "spec.jwtRules[0].audiences[0]",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "fromHeaders": [{"name": ":authority"}]}),
            "spec.jwtRules[0].fromHeaders[0].name",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "fromParams": [""]}),
            "spec.jwtRules[0].fromParams[0]",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "fromCookies": ["a=b"]}),
            "spec.jwtRules[0].fromCookies[0]",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "outputPayloadToHeader": "bad header"}),
            "spec.jwtRules[0].outputPayloadToHeader",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "outputClaimToHeaders": [{"header": "x-a", "claim": "a..b"}]}),
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "timeout": "5"}),
            "spec.jwtRules[0].timeout",
        ),
        (
            json!({"issuer": "i", "jwksUri": "https://k/", "timeout": "0s"}),
            "spec.jwtRules[0].timeout",
        ),
    ];
    for (written, field) in cases {
        let state = state(vec![
            ra("shop", "bad", json!({"jwtRules": [written]})),
            ra("shop", "good", json!({"jwtRules": [rule("good.example")]})),
        ]);
        let (table, errors) = RequestAuthnTable::build(&state);
        let fields: Vec<&str> = errors.iter().map(Error::field).collect();
        assert_eq!(fields, [field], "{written}");
        assert!(errors[0].drops_object());
        assert_eq!(
            errors[0].object().to_string(),
            "RequestAuthentication shop/bad"
        );
        // The good policy still applies; the bad one stands in, its tokens refused.
        let rules = table.rules_for(&state.workloads[0]);
        let standing: Vec<(&str, Option<&str>, bool)> = rules
            .iter()
            .map(|r| (&*r.policy.name, r.issuer.as_deref(), r.rejected()))
            .collect();
        let issuer = written["issuer"].as_str();
        assert_eq!(
            standing,
            [("bad", issuer, true), ("good", Some("good.example"), false)],
            "{written}"
        );
    }
}

#[test]
fn the_agents_rejected_policies_stand_in_over_their_scope() {
    let rejected = |spec: serde_json::Value| {
        istio::RejectedRequestAuthentication::from_raw(&json!({
            "kind": "RequestAuthentication",
            "metadata": {"name": "broken", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    };
    /// The rejected spec as written; the pods it stands in for; the issuers refused (`None`:
    /// every one).
    type Case = (
        serde_json::Value,
        &'static [&'static str],
        Option<&'static [&'static str]>,
    );
    let cases: [Case; 5] = [
        (
            json!({"jwtRules": [{"issuer": "a", "bogus": 1}, {"issuer": "b"}]}),
            &["cart", "web"],
            Some(&["a", "b"][..]),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [{"issuer": "a"}]}),
            &["cart"],
            Some(&["a"][..]),
        ),
        // A misspelt selector cannot widen anything: it stands in for the whole namespace.
        (
            json!({"selector": {"matchLabel": {"app": "cart"}}, "jwtRules": [{"issuer": "a"}]}),
            &["cart", "web"],
            Some(&["a"][..]),
        ),
        // An issuer that cannot be read: every token is refused.
        (
            json!({"jwtRules": [{"isuer": "a"}]}),
            &["cart", "web"],
            None,
        ),
        (json!({"jwtRules": "a"}), &["cart", "web"], None),
    ];
    for (spec, pods, issuers) in cases {
        let state = MeshState {
            workloads: workloads(),
            rejected_request_authentications: vec![rejected(spec.clone())],
            ..MeshState::default()
        };
        let (table, errors) = RequestAuthnTable::build(&state);
        assert_eq!(errors, vec![]);
        for workload in &state.workloads {
            let rules = table.rules_for(workload);
            if pods.contains(&workload.name.as_str()) {
                assert!(rules.iter().all(|r| r.rejected()), "{spec}");
                let got: Vec<Option<&str>> = rules.iter().map(|r| r.issuer.as_deref()).collect();
                let want: Vec<Option<&str>> = match issuers {
                    Some(list) => list.iter().map(|i| Some(*i)).collect(),
                    None => vec![None],
                };
                assert_eq!(got, want, "{spec}");
            } else {
                assert!(rules.is_empty(), "{spec}: {}", workload.name);
            }
        }
    }
    let (table, _) = RequestAuthnTable::build(&MeshState {
        workloads: workloads(),
        rejected_request_authentications: vec![rejected(json!({"jwtRules": [{}]}))],
        ..MeshState::default()
    });
    let rules = table.rules_for(&workloads()[0]);
    assert!(rules[0].checks_issuer("anyone") && rules[0].rejected());
}
