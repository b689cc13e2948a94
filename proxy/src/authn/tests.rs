//! The authenticator over tokens signed in the test (RSA from the test-only keys in
//! `testdata/`, EC and Ed25519 generated with ring), with inline keys and with JWKS servers on
//! loopback (HTTP and HTTPS).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use shunt_mesh::istio;
use shunt_mesh::model::MeshState;
use shunt_mesh::security::RequestAuthnTable;
use shunt_mesh::testing::pod;
use tokio::net::TcpListener;

use super::*;

const ISS: &str = "https://issuer.example";
/// Test-only keys, committed: they sign nothing but these tests' tokens.
const RSA_PEM: &[u8] = include_bytes!("testdata/rsa-2048.pem");
const OTHER_RSA_PEM: &[u8] = include_bytes!("testdata/rsa-other.pem");

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn rsa(alg: Algorithm, kid: &str, pem: &[u8]) -> Self {
        let PrivateKeyDer::Pkcs1(der) = PrivateKeyDer::from_pem_slice(pem).unwrap() else {
            panic!("the test keys are PKCS#1");
        };
        let pair = signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public_key().into();
        Self {
            alg,
            kid: kid.into(),
            key: EncodingKey::from_rsa_der(der.secret_pkcs1_der()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig",
                "n": b64(&public.n),
                "e": b64(&public.e),
            }),
        }
    }

    fn ec(alg: Algorithm, kid: &str) -> Self {
        let (signing, curve) = match alg {
            Algorithm::ES256 => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
            _ => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
        };
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let half = (point.len() - 1) / 2;
        Self {
            alg,
            kid: kid.into(),
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "kid": kid, "crv": curve,
                "x": b64(&point[1..=half]), "y": b64(&point[1 + half..]),
            }),
        }
    }

    fn ed(kid: &str) -> Self {
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(pair.public_key().as_ref()),
            }),
        }
    }

    fn mint(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn now() -> u64 {
    now_unix()
}

/// `iss`, `sub` `user-1`, `aud` `shop`, expiring in an hour, and `extra` over them.
fn claims(extra: &serde_json::Value) -> serde_json::Value {
    let mut claims = json!({"iss": ISS, "sub": "user-1", "aud": "shop", "exp": now() + 3600});
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

/// The rules of one RequestAuthentication in `shop` for the pod `web`.
fn rules_of(jwt_rules: serde_json::Value) -> Vec<Arc<JwtRule>> {
    let policy: istio::RequestAuthentication = serde_json::from_value(json!({
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": jwt_rules},
    }))
    .unwrap();
    let state = MeshState {
        workloads: vec![pod("shop", "web", [10, 0, 0, 1], "web")],
        request_authentications: vec![policy],
        ..MeshState::default()
    };
    let (table, errors) = RequestAuthnTable::build(&state);
    assert_eq!(errors, vec![]);
    table.rules_for(&state.workloads[0])
}

fn inline_rule(keys: &str, extra: &serde_json::Value) -> Vec<Arc<JwtRule>> {
    let mut rule = json!({"issuer": ISS, "audiences": ["shop"], "jwks": keys});
    for (key, value) in extra.as_object().unwrap() {
        rule[key] = value.clone();
    }
    rules_of(json!([rule]))
}

fn offline() -> Authenticator {
    Authenticator::with_connector(Arc::new(DirectConnector))
}

fn request<V: AsRef<str>>(uri: &str, headers: &[(&str, V)]) -> Parts {
    let mut builder = http::Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_ref());
    }
    builder.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The outcome as `valid <principal>`, `none`, or `<status> <Envoy's body>`.
fn summary(outcome: &AuthnOutcome) -> String {
    match outcome {
        AuthnOutcome::NoToken => "none".into(),
        AuthnOutcome::Valid(auth) => format!("valid {}", auth.principal),
        AuthnOutcome::Invalid {
            status, failure, ..
        }
        | AuthnOutcome::AudienceMismatch {
            status, failure, ..
        } => format!("{} {}", status.as_u16(), failure.body()),
    }
}

#[tokio::test]
async fn tokens_are_judged_as_envoy_judges_them() {
    let rs256 = Signer::rsa(Algorithm::RS256, "rsa", RSA_PEM);
    let ps384 = Signer::rsa(Algorithm::PS384, "rsa", RSA_PEM);
    let rs384 = Signer::rsa(Algorithm::RS384, "rsa", RSA_PEM);
    let ps256 = Signer::rsa(Algorithm::PS256, "rsa", RSA_PEM);
    let es256 = Signer::ec(Algorithm::ES256, "p256");
    let es384 = Signer::ec(Algorithm::ES384, "p384");
    let ed = Signer::ed("ed");
    let forger = Signer::rsa(Algorithm::RS256, "rsa", OTHER_RSA_PEM);
    let wrong_curve = Signer {
        kid: "p384".into(),
        ..Signer::ec(Algorithm::ES256, "x")
    };
    let rules = inline_rule(&jwks(&[&rs256, &es256, &es384, &ed]), &json!({}));
    let authenticator = offline();
    let none_alg = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims(&json!({})).to_string().as_bytes())
    );
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&json!({})),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let valid = format!("valid {ISS}/user-1");
    let cases: Vec<(&str, String, String)> =
        vec![
        ("RS256", rs256.mint(&claims(&json!({}))), valid.clone()),
        ("RS384", rs384.mint(&claims(&json!({}))), valid.clone()),
        ("PS256", ps256.mint(&claims(&json!({}))), valid.clone()),
        ("PS384", ps384.mint(&claims(&json!({}))), valid.clone()),
        ("ES256", es256.mint(&claims(&json!({}))), valid.clone()),
        ("ES384", es384.mint(&claims(&json!({}))), valid.clone()),
        ("EdDSA", ed.mint(&claims(&json!({}))), valid.clone()),
        (
            "aud list",
            ed.mint(&claims(&json!({"aud": ["other", "shop"]}))),
            valid.clone(),
        ),
        (
            "no exp",
            ed.mint(&claims(&json!({"exp": null}))),
            valid.clone(),
        ),
        (
            "expired within the skew",
            ed.mint(&claims(&json!({"exp": now() - 30}))),
            valid.clone(),
        ),
        (
            "expired",
            ed.mint(&claims(&json!({"exp": now() - 120}))),
            "401 Jwt is expired".into(),
        ),
        (
            "not yet valid",
            ed.mint(&claims(&json!({"nbf": now() + 3600}))),
            "401 Jwt not yet valid".into(),
        ),
        (
            "bad signature",
            forger.mint(&claims(&json!({}))),
            "401 Jwt verification fails".into(),
        ),
        (
            "unknown issuer",
            ed.mint(&claims(&json!({"iss": "https://other.example"}))),
            "401 Jwt issuer is not configured".into(),
        ),
        (
            "wrong audience",
            ed.mint(&claims(&json!({"aud": "bank"}))),
            "403 Audiences in Jwt are not allowed".into(),
        ),
        (
            "unknown kid",
            Signer::ed("nope").mint(&claims(&json!({}))),
            "401 Jwks doesn't have key to match kid or alg from Jwt".into(),
        ),
        (
            "a P-256 token for a P-384 key",
            wrong_curve.mint(&claims(&json!({}))),
            "401 Jwks doesn't have key to match kid or alg from Jwt".into(),
        ),
        (
            "malformed",
            "abc.def".into(),
            "401 Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
                .into(),
        ),
        (
            "alg none",
            none_alg,
            "401 Jwt header [alg] is not supported".into(),
        ),
        ("HS256", hs256, "401 Jwt header [alg] is not supported".into()),
    ];
    for (name, token, expected) in cases {
        let mut parts = request("http://web.shop/p", &[("authorization", &bearer(&token))]);
        let outcome = authenticator.authenticate(&rules, &mut parts).await;
        assert_eq!(summary(&outcome), expected, "{name}");
        // The token goes upstream only when it was not accepted (the request is refused then).
        assert_eq!(
            parts.headers.contains_key("authorization"),
            outcome.auth().is_none(),
            "{name}"
        );
        if let Some(refusal) = outcome.refusal() {
            assert_eq!(
                refusal.www_authenticate,
                "Bearer realm=\"http://web.shop/p\", error=\"invalid_token\"",
                "{name}"
            );
            assert_eq!(refusal.body, refusal.failure.body(), "{name}");
            assert_eq!(
                refusal.status.as_u16(),
                expected[..3].parse::<u16>().unwrap(),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn where_tokens_are_found_and_what_passes_without_one() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({})));
    let default = inline_rule(&jwks(&[&ed]), &json!({}));
    let custom = inline_rule(
        &jwks(&[&ed]),
        &json!({"fromHeaders": [{"name": "x-jwt", "prefix": "Token "}], "fromCookies": ["session"]}),
    );
    let valid = format!("valid {ISS}/user-1");
    let query = format!("http://web.shop/p?a=1&access_token={token}");
    let lower = format!("bearer {token}");
    let prefixed = format!("Token {token}");
    let cookie = format!("theme=dark; session={token}");
    let options = [
        ("origin", "http://a.example"),
        ("access-control-request-method", "GET"),
    ];
    // Each: the rules, method, URI, headers; the outcome.
    type Case<'a> = (
        &'a [Arc<JwtRule>],
        Method,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
    );
    let no_rules: &[Arc<JwtRule>] = &[];
    let (default, custom) = (default.as_slice(), custom.as_slice());
    let cases: Vec<Case<'_>> =
        vec![
        (default, Method::GET, "/p", vec![], "none".into()),
        (no_rules, Method::GET, "/p", vec![("authorization", "Bearer junk")], "none".into()),
        (default, Method::GET, query.as_str(), vec![], valid.clone()),
        (default, Method::GET, "/p", vec![("authorization", lower.as_str())], valid.clone()),
        (default, Method::GET, "/p", vec![("authorization", "Basic dXNlcg==")], "none".into()),
        (custom, Method::GET, "/p", vec![("x-jwt", prefixed.as_str())], valid.clone()),
        (custom, Method::GET, "/p", vec![("cookie", cookie.as_str())], valid.clone()),
        // A rule with its own locations does not read the default ones.
        (custom, Method::GET, "/p", vec![("authorization", "Bearer junk")], "none".into()),
        // A CORS preflight is never checked.
        (
            default,
            Method::OPTIONS,
            "/p",
            [options.as_slice(), &[("authorization", "Bearer junk")]].concat(),
            "none".into(),
        ),
        (
            default,
            Method::OPTIONS,
            "/p",
            vec![("authorization", "Bearer junk")],
            "401 Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
                .into(),
        ),
    ];
    let authenticator = offline();
    for (rules, method, uri, headers, expected) in cases {
        let mut parts = request(uri, &headers);
        parts.method = method;
        let outcome = authenticator.authenticate(rules, &mut parts).await;
        assert_eq!(summary(&outcome), expected, "{uri} {headers:?}");
    }
    // A token in the query stays (Envoy leaves parameters alone).
    let mut parts = request::<&str>(&query, &[]);
    authenticator.authenticate(default, &mut parts).await;
    assert_eq!(parts.uri.to_string(), query);
}

#[tokio::test]
async fn accepted_tokens_edit_the_request_as_the_rule_says() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({
        "realm": {"group": "admins", "level": 3}, "roles": ["a", "b"], "flag": true
    })));
    let outputs = json!({
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [
            {"header": "x-group", "claim": "realm.group"},
            {"header": "x-level", "claim": "realm.level"},
            {"header": "x-roles", "claim": "roles"},
            {"header": "x-flag", "claim": "flag"},
            {"header": "x-realm", "claim": "realm"},
            {"header": "x-missing", "claim": "nope"},
        ],
    });
    let rules = inline_rule(&jwks(&[&ed]), &outputs);
    let authenticator = offline();
    let spoofed = [
        ("x-jwt-payload", "forged"),
        ("x-group", "forged"),
        ("x-realm", "forged"),
        ("x-missing", "forged"),
    ];
    let mut parts = request(
        "/p",
        &[
            [("authorization", bearer(&token).as_str())].as_slice(),
            &spoofed,
        ]
        .concat(),
    );
    let outcome = authenticator.authenticate(&rules, &mut parts).await;
    assert!(outcome.auth().is_some(), "{outcome:?}");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("x-jwt-payload").as_deref(), token.split('.').nth(1));
    assert_eq!(header("x-group").as_deref(), Some("admins"));
    assert_eq!(header("x-level").as_deref(), Some("3"));
    assert_eq!(header("x-roles").as_deref(), Some("a,b"));
    assert_eq!(header("x-flag").as_deref(), Some("true"));
    // Objects and missing claims are not copied, and what the client sent is gone.
    assert_eq!((header("x-realm"), header("x-missing")), (None, None));
    assert_eq!(header("authorization"), None);

    // Without a token, the client's copies are removed all the same.
    let mut parts = request("/p", &spoofed);
    assert_eq!(
        summary(&authenticator.authenticate(&rules, &mut parts).await),
        "none"
    );
    assert!(
        spoofed
            .iter()
            .all(|(name, _)| !parts.headers.contains_key(*name))
    );

    // forwardOriginalToken keeps the token's header.
    let forward = inline_rule(&jwks(&[&ed]), &json!({"forwardOriginalToken": true}));
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    assert!(
        authenticator
            .authenticate(&forward, &mut parts)
            .await
            .auth()
            .is_some()
    );
    assert_eq!(header_of(&parts, "authorization"), Some(bearer(&token)));
}

fn header_of(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn rules_of_one_issuer_accept_when_any_does_and_stand_ins_refuse() {
    let ed = Signer::ed("ed");
    let keys = jwks(&[&ed]);
    let rules = rules_of(json!([
        {"issuer": ISS, "audiences": ["bank"], "jwks": keys},
        {"issuer": ISS, "audiences": ["shop"], "jwks": keys},
    ]));
    let authenticator = offline();
    let token = ed.mint(&claims(&json!({})));
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    assert_eq!(
        summary(&authenticator.authenticate(&rules, &mut parts).await),
        format!("valid {ISS}/user-1")
    );
    let mut parts = request(
        "/p",
        &[(
            "authorization",
            &bearer(&ed.mint(&claims(&json!({"aud": "x"})))),
        )],
    );
    assert_eq!(
        summary(&authenticator.authenticate(&rules, &mut parts).await),
        "403 Audiences in Jwt are not allowed"
    );

    // A rejected policy's stand-in: its issuer's tokens are refused, others' still pass.
    let state = MeshState {
        workloads: vec![pod("shop", "web", [10, 0, 0, 1], "web")],
        rejected_request_authentications: vec![
            istio::RejectedRequestAuthentication::from_raw(&json!({
                "kind": "RequestAuthentication",
                "metadata": {"name": "broken", "namespace": "shop"},
                "spec": {"jwtRules": [{"issuer": ISS, "jwksUri": 3}]},
            }))
            .unwrap(),
        ],
        ..MeshState::default()
    };
    let (table, _) = RequestAuthnTable::build(&state);
    let mut stand_in = table.rules_for(&state.workloads[0]);
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    let outcome = authenticator.authenticate(&stand_in, &mut parts).await;
    assert_eq!(summary(&outcome), "401 Jwks remote fetch is failed");
    assert!(
        outcome
            .failure()
            .unwrap()
            .to_string()
            .contains("RequestAuthentication shop/broken was rejected"),
        "{outcome:?}"
    );
    stand_in.extend(inline_rule(&keys, &json!({"issuer": "other"})));
    let other = ed.mint(&claims(&json!({"iss": "other"})));
    let mut parts = request("/p", &[("authorization", &bearer(&other))]);
    assert_eq!(
        summary(&authenticator.authenticate(&stand_in, &mut parts).await),
        "valid other/user-1"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_for_their_rule_and_keys() {
    let ed = Signer::ed("ed");
    let rules = inline_rule(&jwks(&[&ed]), &json!({}));
    let authenticator = offline();
    let token = ed.mint(&claims(&json!({})));
    let auth = |rules: Vec<Arc<JwtRule>>| {
        let authenticator = &authenticator;
        let token = token.clone();
        async move {
            let mut parts = request("/p", &[("authorization", &bearer(&token))]);
            authenticator
                .authenticate(&rules, &mut parts)
                .await
                .auth()
                .cloned()
                .unwrap()
        }
    };
    let first = auth(rules.clone()).await;
    let second = auth(rules.clone()).await;
    assert!(
        Arc::ptr_eq(&first, &second),
        "the second request is a cache hit"
    );
    assert_eq!(authenticator.verified.len(), 1);
    // An equal rule from a new mesh state still hits; a changed one verifies again.
    let rebuilt = inline_rule(&jwks(&[&ed]), &json!({}));
    assert!(Arc::ptr_eq(&first, &auth(rebuilt).await));
    let changed = inline_rule(&jwks(&[&ed]), &json!({"audiences": ["shop", "more"]}));
    assert!(!Arc::ptr_eq(&first, &auth(changed).await));
    // An expired token is never served from the cache.
    let short = ed.mint(&claims(&json!({"exp": now() - 58})));
    let mut parts = request("/p", &[("authorization", &bearer(&short))]);
    assert!(
        authenticator
            .authenticate(&rules, &mut parts)
            .await
            .auth()
            .is_some()
    );
    let (_, _, _) = authenticator
        .verified
        .entry(&token_hash(&short))
        .expect("held until exp + skew, a second or two");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(authenticator.verified.entry(&token_hash(&short)).is_none());
}

/// What a [`JwksServer`] answers.
#[derive(Clone)]
enum Answer {
    Keys(String),
    /// The keys, after a while.
    Slow(String, Duration),
    Status(u16),
    /// Accept the request and never answer.
    Hang,
}

/// A JWKS server on loopback, plain or TLS, counting requests.
struct JwksServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    answer: Arc<std::sync::Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(answer: Answer, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(std::sync::Mutex::new(answer));
        let (count, current) = (requests.clone(), answer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (count, current, tls) = (count.clone(), current.clone(), tls.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            count.fetch_add(1, Ordering::SeqCst);
                            let answer = current.lock().unwrap().clone();
                            async move {
                                assert_eq!(request.uri().path(), "/keys.json");
                                let (status, body) = match answer {
                                    Answer::Keys(body) => (200, body),
                                    Answer::Slow(body, delay) => {
                                        tokio::time::sleep(delay).await;
                                        (200, body)
                                    }
                                    Answer::Status(status) => (status, String::new()),
                                    Answer::Hang => {
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                        (500, String::new())
                                    }
                                };
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                            }
                        });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            answer,
            task,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn uri(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/keys.json", self.addr.port())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn remote_rule(uri: &str, timeout: &str) -> Vec<Arc<JwtRule>> {
    rules_of(json!([{"issuer": ISS, "jwksUri": uri, "timeout": timeout}]))
}

fn settings(refresh: Duration, retry: Duration) -> JwksSettings {
    JwksSettings {
        refresh_interval: refresh,
        failure_retry: retry,
        ..JwksSettings::default()
    }
}

async fn judge(authenticator: &Authenticator, rules: &[Arc<JwtRule>], token: &str) -> String {
    let mut parts = request("/p", &[("authorization", &bearer(token))]);
    summary(&authenticator.authenticate(rules, &mut parts).await)
}

#[tokio::test]
async fn remote_keys_are_fetched_once_refreshed_and_kept_through_failures() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({})));
    let valid = format!("valid {ISS}/user-1");
    let server = JwksServer::start(Answer::Keys(jwks(&[&ed])), None).await;
    let rules = remote_rule(&server.uri("http", "127.0.0.1"), "5s");
    let cache = JwksCache::new(
        Arc::new(DirectConnector),
        None,
        settings(Duration::from_millis(300), Duration::from_millis(50)),
    );
    let authenticator = Authenticator::new(cache.clone());
    assert_eq!(judge(&authenticator, &rules, &token).await, valid);
    assert_eq!(judge(&authenticator, &rules, &token).await, valid);
    assert_eq!(server.requests(), 1, "one fetch for both requests");

    // Past the refresh interval a request triggers a refresh and does not wait for it; the
    // server failing then keeps the last keys.
    server.set(Answer::Status(503));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(judge(&authenticator, &rules, &token).await, valid);
    wait_for(|| server.requests() == 2).await;
    wait_for(|| cache.status()[0].error.is_some()).await;
    assert_eq!(judge(&authenticator, &rules, &token).await, valid);
    let status = &cache.status()[0];
    assert_eq!(status.keys, Some(1));
    assert!(
        status.error.as_deref().unwrap().contains("answered 503"),
        "{status:?}"
    );

    // A refresh brings new keys: a token of a new key verifies.
    let rotated = Signer::ed("rotated");
    server.set(Answer::Keys(jwks(&[&ed, &rotated])));
    tokio::time::sleep(Duration::from_millis(350)).await;
    judge(&authenticator, &rules, &token).await;
    wait_for(|| cache.status()[0].keys == Some(2)).await;
    assert_eq!(
        judge(&authenticator, &rules, &rotated.mint(&claims(&json!({})))).await,
        valid
    );
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_fetch() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({})));
    let server =
        JwksServer::start(Answer::Slow(jwks(&[&ed]), Duration::from_millis(200)), None).await;
    let rules = remote_rule(&server.uri("http", "127.0.0.1"), "5s");
    let authenticator = Arc::new(offline());
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let (authenticator, rules, token) =
                (authenticator.clone(), rules.clone(), token.clone());
            tokio::spawn(async move { judge(&authenticator, &rules, &token).await })
        })
        .collect();
    for request in waiting {
        assert_eq!(request.await.unwrap(), format!("valid {ISS}/user-1"));
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn an_issuer_never_fetched_fails_closed_and_recovers() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({})));
    let server = JwksServer::start(Answer::Status(500), None).await;
    let rules = remote_rule(&server.uri("http", "127.0.0.1"), "5s");
    let authenticator = Authenticator::new(JwksCache::new(
        Arc::new(DirectConnector),
        None,
        settings(Duration::from_secs(1200), Duration::from_millis(100)),
    ));
    assert_eq!(
        judge(&authenticator, &rules, &token).await,
        "401 Jwks remote fetch is failed"
    );
    // Within the retry interval the failure is answered without another fetch.
    assert_eq!(
        judge(&authenticator, &rules, &token).await,
        "401 Jwks remote fetch is failed"
    );
    assert_eq!(server.requests(), 1);
    server.set(Answer::Keys(jwks(&[&ed])));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        judge(&authenticator, &rules, &token).await,
        format!("valid {ISS}/user-1")
    );

    // Nothing listening at all.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let rules = remote_rule(&format!("http://127.0.0.1:{port}/keys.json"), "5s");
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    let outcome = authenticator.authenticate(&rules, &mut parts).await;
    assert_eq!(summary(&outcome), "401 Jwks remote fetch is failed");
    assert!(
        outcome
            .failure()
            .unwrap()
            .to_string()
            .contains("cannot connect to 127.0.0.1"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_fetch_never_holds_a_request_beyond_the_rules_timeout() {
    let ed = Signer::ed("ed");
    let token = ed.mint(&claims(&json!({})));
    let server = JwksServer::start(Answer::Hang, None).await;
    let rules = remote_rule(&server.uri("http", "127.0.0.1"), "200ms");
    let authenticator = offline();
    let started = std::time::Instant::now();
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    let outcome = authenticator.authenticate(&rules, &mut parts).await;
    let waited = started.elapsed();
    assert_eq!(summary(&outcome), "401 Jwks remote fetch is failed");
    assert!(
        outcome
            .failure()
            .unwrap()
            .to_string()
            .contains("not fetched within 200ms"),
        "{outcome:?}"
    );
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn https_jwks_is_verified_and_dialled_through_the_connector() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["jwks.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    #[expect(deprecated, reason = "ring is the provider shunt builds with")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let ed = Signer::ed("ed");
    let server = JwksServer::start(Answer::Keys(jwks(&[&ed])), Some(Arc::new(server_config))).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    // The connector is the seam: it sees the URI's host and port, and dials loopback.
    let dialled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = dialled.clone();
    let target = server.addr;
    let connector = move |host: &str, port: u16| -> ConnectFuture {
        seen.lock().unwrap().push(format!("{host}:{port}"));
        Box::pin(async move { tokio::net::TcpStream::connect(target).await })
    };
    let rules = remote_rule(&server.uri("https", "jwks.test"), "5s");
    let token = ed.mint(&claims(&json!({})));
    let trusting = Authenticator::new(JwksCache::new(
        Arc::new(connector.clone()),
        tls_with_roots(roots),
        JwksSettings::default(),
    ));
    assert_eq!(
        judge(&trusting, &rules, &token).await,
        format!("valid {ISS}/user-1")
    );
    assert_eq!(
        *dialled.lock().unwrap(),
        [format!("jwks.test:{}", target.port())]
    );

    // Without the CA (the system bundle does not hold it), the server is refused.
    let untrusting = Authenticator::new(JwksCache::new(
        Arc::new(connector),
        system_tls(),
        JwksSettings::default(),
    ));
    let mut parts = request("/p", &[("authorization", &bearer(&token))]);
    let outcome = untrusting.authenticate(&rules, &mut parts).await;
    assert_eq!(summary(&outcome), "401 Jwks remote fetch is failed");
    assert!(
        outcome
            .failure()
            .unwrap()
            .to_string()
            .contains("TLS handshake failed"),
        "{outcome:?}"
    );
}
