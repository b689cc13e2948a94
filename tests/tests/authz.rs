//! AuthorizationPolicy on one node, end to end: a policy per case, over HTTP and TCP, as the
//! destination's side enforces it. The client pod is captured on the same node (same-node
//! delivery: its identity is known, so principal rules can match it); the outsider is not
//! captured (plaintext: principal rules never match it). Runs as root (and skips, saying so,
//! otherwise). Across nodes (HBONE) is in `multinode.rs`.

#[expect(
    dead_code,
    reason = "the shared module's helpers are for several test binaries"
)]
mod common;

use std::time::{Duration, Instant};

use common::{OrPanic, client, pod_ip};
use serde_json::{Value, json};
use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node, Pod, ServiceConfig};

const MESH: &str = "mesh";
const LEGACY: &str = "legacy";
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9090;
const EXT_AUTHZ_PORT: u16 = 9000;
/// How long a config change may take to reach the agent and the proxy.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// One client run, at most.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

struct Authz {
    node: Node,
    server: Pod,
    inside: Pod,
    outsider: Pod,
    /// Uncaptured, for the helpers a test needs (a JWKS server, an ext_authz service).
    aux: Pod,
    _servers: Vec<shunt_tests::Process>,
}

/// What one case observes: HTTP statuses (0: no answer) and whether a TCP echo came back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// The captured client's `GET` of each probed path.
    inside: Vec<u16>,
    /// The captured client's TCP echo to the server's TCP port.
    inside_tcp: bool,
    /// The uncaptured outsider's `GET /x`.
    outsider: u16,
}

impl Authz {
    fn start(test: &str, extra_istio: &[Value]) -> Option<Self> {
        if shunt_tests::skip_unless_root(test) {
            return None;
        }
        let binaries = common::binaries();
        binaries.require_all().or_panic("binaries under test");
        binaries.httppod().or_panic("shunt-httppod");
        let mut node = Node::with_binaries(test, binaries).or_panic("creating the node");
        let server = node.add_pod("server", pod_ip(20)).or_panic("server pod");
        let inside = node.add_pod("client", pod_ip(10)).or_panic("client pod");
        let outsider = node
            .add_pod("outsider", pod_ip(30))
            .or_panic("outsider pod");
        let aux = node.add_pod("aux", pod_ip(40)).or_panic("aux pod");
        let mut server_config = node
            .pod_config(&server, MESH)
            .label("app", "server")
            .port("http", HTTP_PORT)
            .port("tcp-echo", TCP_PORT);
        server_config.service_account = "server".into();
        let mut client_config = node.pod_config(&inside, MESH).label("app", "client");
        client_config.service_account = "client".into();
        let config = ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH))
            .namespace(&NamespaceConfig::new(LEGACY))
            .pod(&server_config)
            .pod(&client_config)
            .pod(&node.pod_config(&outsider, LEGACY))
            .pod(&node.pod_config(&aux, LEGACY).label("app", "aux"))
            .service(
                &ServiceConfig::new(LEGACY, "ext-authz", std::net::Ipv4Addr::new(10, 96, 0, 40))
                    .select("app", "aux")
                    .port("http", EXT_AUTHZ_PORT, EXT_AUTHZ_PORT),
            );
        node.write_config(&config).or_panic("writing the config");
        node.write_istio(extra_istio)
            .or_panic("writing the Istio config");
        node.start_agent(&AgentOptions::default())
            .or_panic("starting the agent");
        node.start_proxy().or_panic("starting the proxy");
        node.wait_captured(&[&server, &inside])
            .or_panic("waiting for capture");
        let servers = vec![
            node.start_httppod_server(
                &server,
                &[
                    "serve",
                    "--port",
                    &HTTP_PORT.to_string(),
                    "--name",
                    "server",
                ],
            )
            .or_panic("http server"),
            node.start_server(&server, &["echo-server", "--port", &TCP_PORT.to_string()])
                .or_panic("echo server"),
        ];
        Some(Self {
            node,
            server,
            inside,
            outsider,
            aux,
            _servers: servers,
        })
    }

    /// One request from `pod` to the server's `path`: its report.
    fn get(&self, pod: &Pod, path: &str, extra: &[&str]) -> Value {
        let url = format!("http://{}{path}", self.server.addr(HTTP_PORT));
        let mut args = vec!["http", "--url", &url, "--timeout-ms", "5000"];
        args.extend_from_slice(extra);
        let output = self
            .node
            .run_httppod(pod, &args, CLIENT_TIMEOUT)
            .or_panic("shunt-httppod http");
        output
            .json()
            .or_panic(&format!("report of {args:?} (stderr: {})", output.stderr))
    }

    /// The status of that request, 0 when there was none.
    fn status(&self, pod: &Pod, path: &str, extra: &[&str]) -> u16 {
        status_of(&self.get(pod, path, extra))
    }

    fn tcp(&self, pod: &Pod) -> bool {
        let to = self.server.addr(TCP_PORT).to_string();
        let report = client(
            &self.node,
            pod,
            &["send", "--to", &to, "--bytes", "4096", "--seed", "3"],
        );
        report["ok"] == true
    }

    fn seen(&self, paths: &[&str]) -> Seen {
        Seen {
            inside: paths
                .iter()
                .map(|path| self.status(&self.inside, path, &[]))
                .collect(),
            inside_tcp: self.tcp(&self.inside),
            outsider: self.status(&self.outsider, "/x", &[]),
        }
    }

    /// Writes `policies` and polls until `expected` is what the probes see.
    fn expect(&self, case: &str, policies: &[Value], paths: &[&str], expected: &Seen) {
        self.node
            .write_istio(policies)
            .or_panic("writing the policies");
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            let seen = self.seen(paths);
            if seen == *expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{case}: expected {expected:?}, saw {seen:?} (paths {paths:?})"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn teardown(self) {
        let problems = self.node.teardown();
        assert!(problems.is_empty(), "cleanup problems: {problems:?}");
    }
}

/// The single status of a one-request report, 0 when it failed.
fn status_of(report: &Value) -> u16 {
    report["status"]
        .as_object()
        .and_then(|codes| codes.keys().next())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// An AuthorizationPolicy in `mesh` selecting the server.
fn policy(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if let Some(object) = spec.as_object_mut() {
        object.insert("selector".into(), json!({"matchLabels": {"app": "server"}}));
    }
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": MESH},
        "spec": spec,
    })
}

fn seen(inside: &[u16], inside_tcp: bool, outsider: u16) -> Seen {
    Seen {
        inside: inside.to_vec(),
        inside_tcp,
        outsider,
    }
}

#[test]
fn evaluation_order_and_empty_cases_over_http_and_tcp() {
    const TEST: &str = "authz::evaluation_order_and_empty_cases_over_http_and_tcp";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    let paths = ["/x", "/admin"];
    let all = json!([{}]);
    // (case, policies, [GET /x, GET /admin] from the client, its TCP echo, the outsider's GET)
    let cases: Vec<(&str, Vec<Value>, Seen)> = vec![
        ("no policy", vec![], seen(&[200, 200], true, 200)),
        (
            "ALLOW spec {}: allows nothing",
            vec![policy("allow-nothing", json!({}))],
            seen(&[403, 403], false, 403),
        ),
        (
            "ALLOW rules [{}]: allows everything",
            vec![policy("allow-all", json!({"rules": all}))],
            seen(&[200, 200], true, 200),
        ),
        (
            "DENY rules [{}]: denies everything",
            vec![policy("deny-all", json!({"action": "DENY", "rules": all}))],
            seen(&[403, 403], false, 403),
        ),
        (
            "DENY without rules: no effect",
            vec![policy("deny-none", json!({"action": "DENY"}))],
            seen(&[200, 200], true, 200),
        ),
        (
            "DENY over ALLOW on the same path",
            vec![
                policy("allow-all", json!({"rules": all})),
                policy(
                    "deny-admin",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {
                        "paths": ["/admin"], "ports": [HTTP_PORT.to_string()]}}]}]}),
                ),
            ],
            seen(&[200, 403], true, 200),
        ),
        (
            "AUDIT changes nothing",
            vec![policy(
                "audit-all",
                json!({"action": "AUDIT", "rules": all}),
            )],
            seen(&[200, 200], true, 200),
        ),
        (
            "ALLOW principals: only the authenticated client",
            vec![policy(
                "allow-client",
                json!({"rules": [{"from": [{"source": {
                    "principals": ["cluster.local/ns/mesh/sa/client"]}}]}]}),
            )],
            seen(&[200, 200], true, 403),
        ),
        (
            "DENY notPrincipals [*]: plaintext denied",
            vec![policy(
                "deny-plaintext",
                json!({"action": "DENY", "rules": [{"from": [{"source": {
                    "notPrincipals": ["*"]}}]}]}),
            )],
            seen(&[200, 200], true, 403),
        ),
        (
            "ALLOW namespaces [mesh]",
            vec![policy(
                "allow-mesh",
                json!({"rules": [{"from": [{"source": {"namespaces": [MESH]}}]}]}),
            )],
            seen(&[200, 200], true, 403),
        ),
        (
            "ALLOW of HTTP-only rules: all TCP denied",
            vec![policy(
                "allow-get",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
            )],
            seen(&[200, 200], false, 200),
        ),
        (
            "DENY methods: widened to all TCP",
            vec![policy(
                "deny-post",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {
                    "methods": ["POST"]}}]}]}),
            )],
            seen(&[200, 200], false, 200),
        ),
        (
            "mixed ALLOW rules keep their L4 part",
            vec![policy(
                "allow-mixed",
                json!({"rules": [
                    {"to": [{"operation": {"ports": [TCP_PORT.to_string()]}}]},
                    {"to": [{"operation": {"methods": ["GET"], "paths": ["/x"]}}]},
                ]}),
            )],
            seen(&[200, 403], true, 200),
        ),
    ];
    for (case, policies, expected) in &cases {
        authz.expect(case, policies, &paths, expected);
    }
    let metrics = authz.node.metrics().or_panic("metrics");
    const DECISIONS: &str = "shunt_authorization_decisions_total";
    for (labels, what) in [
        (
            [("action", "DENY"), ("decision", "deny")],
            "a DENY policy's denials",
        ),
        (
            [("action", "AUDIT"), ("decision", "audit")],
            "the AUDIT policy's marks",
        ),
        (
            [("action", "ALLOW"), ("decision", "allow")],
            "an ALLOW policy's allows",
        ),
    ] {
        assert!(
            metrics.sum(DECISIONS, &labels) >= 1.0,
            "{what}: {}",
            metrics.describe(DECISIONS)
        );
    }
    let log = authz.node.access_log().or_panic("access log");
    let denied = log.matching(&[("response_code", "403")]);
    assert!(
        denied.iter().any(|entry| entry["response_code_details"]
            .as_str()
            .is_some_and(|d| d.starts_with("rbac_access_denied_matched_policy"))),
        "no 403 names its policy: {}",
        log.describe()
    );
    authz.teardown();
}

#[test]
fn paths_match_prefix_suffix_and_templates_after_normalization() {
    const TEST: &str = "authz::paths_match_prefix_suffix_and_templates_after_normalization";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    let allow = policy(
        "allow-paths",
        json!({"rules": [{"to": [{"operation": {
            "paths": ["/api/*", "*.html", "/users/{*}/profile", "/files/{**}"]}}]}]}),
    );
    let deny = policy(
        "deny-admin",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {
            "paths": ["/api/admin", "/api/admin/*"]}}]}]}),
    );
    authz
        .node
        .write_istio(&[allow, deny])
        .or_panic("the policies");
    // (path as sent, status): the rule sees the normalized path, query excluded.
    let cases: &[(&str, u16)] = &[
        ("/api/items", 200),
        ("/api/items?x=1", 200),
        ("/index.html", 200),
        ("/users/7/profile", 200),
        ("/users/7/8/profile", 403),
        ("/files/a/b/c", 200),
        ("/other", 403),
        ("/api/admin", 403),
        // The classic bypasses, denied because normalization runs first.
        ("//api/admin", 403),
        ("/api/./admin", 403),
        ("/api/x/../admin", 403),
        ("/api/admin?debug=1", 403),
    ];
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while authz.status(&authz.inside, "/other", &[]) != 403 {
        assert!(Instant::now() < deadline, "the policies never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen: Vec<(&str, u16)> = cases
        .iter()
        .map(|(path, _)| (*path, authz.status(&authz.inside, path, &[])))
        .collect();
    assert_eq!(seen, cases, "expected ← seen");
    authz.teardown();
}

#[test]
fn decode_and_merge_slashes_closes_the_escaped_slash_bypass() {
    const TEST: &str = "authz::decode_and_merge_slashes_closes_the_escaped_slash_bypass";
    let mesh = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "pathNormalization:\n  normalization: DECODE_AND_MERGE_SLASHES\n"},
    });
    let Some(authz) = Authz::start(
        TEST,
        &[shunt_tests::istio::istio_system_namespace(), mesh.clone()],
    ) else {
        return;
    };
    let deny = policy(
        "deny-admin",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {
            "paths": ["/admin", "/admin/*"]}}]}]}),
    );
    authz
        .node
        .write_istio(&[shunt_tests::istio::istio_system_namespace(), mesh, deny])
        .or_panic("the policies");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while authz.status(&authz.inside, "/admin", &[]) != 403 {
        assert!(Instant::now() < deadline, "the policy never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    let cases: &[(&str, u16)] = &[
        ("/public", 200),
        ("/admin%2Fusers", 403),
        ("/admin%5Cusers", 403),
        ("//admin//users", 403),
        ("/%61dmin", 403),
        ("/admin%00", 400),
    ];
    let seen: Vec<(&str, u16)> = cases
        .iter()
        .map(|(path, _)| (*path, authz.status(&authz.inside, path, &[])))
        .collect();
    assert_eq!(seen, cases, "expected ← seen");
    authz.teardown();
}

#[test]
fn when_conditions_check_every_value_of_a_repeated_header() {
    const TEST: &str = "authz::when_conditions_check_every_value_of_a_repeated_header";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    let allow = policy(
        "allow-tagged",
        json!({"rules": [{"when": [{"key": "request.headers[x-tag]", "values": ["blue"]}]}]}),
    );
    let deny = policy(
        "deny-red",
        json!({"action": "DENY", "rules": [{"when": [
            {"key": "request.headers[x-tag]", "values": ["red"]}]}]}),
    );
    authz
        .node
        .write_istio(&[allow, deny])
        .or_panic("the policies");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while authz.status(&authz.inside, "/x", &[]) != 403 {
        assert!(Instant::now() < deadline, "the policies never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    // (headers sent, status)
    let cases: &[(&[&str], u16)] = &[
        (&[], 403),
        (&["-H", "x-tag: blue"], 200),
        (&["-H", "x-tag: green"], 403),
        // Repeated: a DENY value in any of them denies; an ALLOW value in any allows.
        (&["-H", "x-tag: green", "-H", "x-tag: blue"], 200),
        (&["-H", "x-tag: blue", "-H", "x-tag: red"], 403),
    ];
    for (headers, want) in cases {
        assert_eq!(
            authz.status(&authz.inside, "/x", headers),
            *want,
            "headers {headers:?}"
        );
    }
    authz.teardown();
}

#[test]
fn a_policy_change_closes_open_connections_it_denies_and_invalid_policies_fail_closed() {
    const TEST: &str =
        "authz::a_policy_change_closes_open_connections_it_denies_and_invalid_policies_fail_closed";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    assert!(authz.tcp(&authz.outsider), "no policy: TCP reaches the app");
    // One long connection from the outsider, pinging; a DENY arrives while it is open.
    let to = authz.server.addr(TCP_PORT).to_string();
    let mut hold = authz
        .node
        .testpod(
            &authz.outsider,
            &[
                "hold",
                "--to",
                &to,
                "--seconds",
                "40",
                "--interval-ms",
                "100",
            ],
        )
        .or_panic("hold");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        hold.exit_status().or_panic("hold").is_none(),
        "the connection ended before any policy: {}",
        hold.tail()
    );
    let deny = policy(
        "deny-tcp",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {
            "ports": [TCP_PORT.to_string()]}}]}]}),
    );
    authz.node.write_istio(&[deny]).or_panic("the DENY");
    let ended = hold
        .wait(APPLY_TIMEOUT)
        .or_panic("the held connection closed");
    assert!(
        !ended.success(),
        "the held connection should have been cut: {}",
        hold.tail()
    );

    // An ALLOW the agent cannot compile (an unknown `when` key) denies everything of the
    // workloads it selects until it is fixed: never open.
    let broken = policy(
        "broken",
        json!({"rules": [{"when": [{"key": "request.nonsense", "values": ["x"]}]}]}),
    );
    authz.expect(
        "an invalid ALLOW fails closed",
        &[broken],
        &["/x"],
        &seen(&[403], false, 403),
    );
    let config = authz.node.admin().config().or_panic("GET /config");
    let errors = config["errors"].to_string();
    assert!(
        errors.contains("AuthorizationPolicy mesh/broken") && errors.contains("request.nonsense"),
        "the agent's errors must name the object and the key: {errors}"
    );
    authz.expect("fixed", &[], &["/x"], &seen(&[200], true, 200));
    authz.teardown();
}

/// A test-only RSA key of the httppod crate, and a second one (another signer).
const JWT_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/httppod/testdata/rsa-2048.pem");
const OTHER_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../proxy/src/authn/testdata/rsa-other.pem"
);
const ISSUER: &str = "https://issuer.shunt.test";
const JWKS_PORT: u16 = 8000;

impl Authz {
    /// `shunt-httppod jwks ARGS` (no network), its JSON.
    fn jwks_tool(&self, args: &[&str]) -> Value {
        let mut all = vec!["jwks"];
        all.extend_from_slice(args);
        let output = self
            .node
            .run_httppod(&self.aux, &all, CLIENT_TIMEOUT)
            .or_panic("shunt-httppod jwks");
        assert!(output.status.success(), "jwks {args:?}: {}", output.stderr);
        output.json().or_panic("jwks output")
    }

    /// A token for `sub` with audience `aud`, expiring `exp` seconds from now, signed by
    /// `key` under kid `k1`.
    fn token(&self, key: &str, sub: &str, aud: &str, exp: &str) -> String {
        let minted = self.jwks_tool(&[
            "mint",
            "--key",
            key,
            "--alg",
            "RS256",
            "--kid",
            "k1",
            "--iss",
            ISSUER,
            "--sub",
            sub,
            "--aud",
            aud,
            "--exp-offset",
            exp,
        ]);
        minted["token"]
            .as_str()
            .or_panic_none("token", &minted)
            .to_owned()
    }

    fn with_token(&self, path: &str, token: Option<&str>) -> Value {
        match token {
            Some(token) => {
                let header = format!("authorization: Bearer {token}");
                self.get(&self.inside, path, &["-H", &header])
            }
            None => self.get(&self.inside, path, &[]),
        }
    }
}

trait OrPanicNone<T> {
    fn or_panic_none(self, what: &str, context: &Value) -> T;
}

impl<T> OrPanicNone<T> for Option<T> {
    fn or_panic_none(self, what: &str, context: &Value) -> T {
        self.unwrap_or_else(|| panic!("no {what} in {context}"))
    }
}

fn request_authentication(forward: bool) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": MESH},
        "spec": {
            "selector": {"matchLabels": {"app": "server"}},
            "jwtRules": [{
                "issuer": ISSUER,
                "audiences": ["shop"],
                "jwksUri": format!("http://{}:{JWKS_PORT}/jwks.json", pod_ip(40)),
                "forwardOriginalToken": forward,
            }],
        },
    })
}

#[test]
fn request_authentication_validates_tokens_against_a_jwks_server_in_a_pod() {
    const TEST: &str =
        "authz::request_authentication_validates_tokens_against_a_jwks_server_in_a_pod";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    let jwks = authz.jwks_tool(&["export", "--key", JWT_KEY, "--alg", "RS256", "--kid", "k1"]);
    let jwks_file = authz.node.dir().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).or_panic("writing the JWKS");
    let good = authz.token(JWT_KEY, "alice", "shop", "3600");

    // The JWKS server is not up: the issuer's keys were never fetched, so its tokens fail
    // closed (401), and requests without one pass.
    authz
        .node
        .write_istio(&[request_authentication(false)])
        .or_panic("the RequestAuthentication");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let report = authz.with_token("/x", Some(&good));
        if status_of(&report) == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never fetched: the token is not refused: {report}; config: {}",
            authz.node.admin().config().or_panic("config")["errors"]
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(status_of(&authz.with_token("/x", None)), 200);

    let jwks_path = jwks_file.display().to_string();
    let port = JWKS_PORT.to_string();
    let mut server = authz
        .node
        .httppod(
            &authz.aux,
            &["jwks", "serve", "--port", &port, "--file", &jwks_path],
        )
        .or_panic("JWKS server");
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .or_panic("JWKS server ready");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let report = loop {
        let report = authz.with_token("/x", Some(&good));
        if status_of(&report) == 200 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the keys never arrived: {report}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let seen = &report["first_response"]["body"]["headers"];
    assert!(
        seen.get("authorization").is_none(),
        "the token must be removed before the app: {report}"
    );

    // (case, token, status)
    let expired = authz.token(JWT_KEY, "alice", "shop", "-600");
    let forged = authz.token(OTHER_KEY, "alice", "shop", "3600");
    let elsewhere = authz.token(JWT_KEY, "alice", "other", "3600");
    let cases: [(&str, Option<&str>, u16); 4] = [
        ("expired", Some(&expired), 401),
        ("a bad signature", Some(&forged), 401),
        ("another audience", Some(&elsewhere), 403),
        ("no token", None, 200),
    ];
    for (case, token, want) in cases {
        let report = authz.with_token("/x", token);
        assert_eq!(status_of(&report), want, "{case}: {report}");
        if want == 401 {
            let answer = &report["first_response"]["headers"];
            let challenge = answer["www-authenticate"].as_str().unwrap_or_default();
            assert!(challenge.contains("invalid_token"), "{case}: {report}");
        }
    }

    // The JWKS server gone after one fetch: the keys are kept, so a token never seen before
    // (not in the verified-token cache) still verifies.
    server.kill();
    let fresh = authz.token(JWT_KEY, "bob", "shop", "3600");
    assert_eq!(status_of(&authz.with_token("/x", Some(&fresh))), 200);

    // No principal, no entry; and forwardOriginalToken keeps the header.
    let deny_anonymous = policy(
        "require-jwt",
        json!({"action": "DENY", "rules": [{"from": [{"source": {
            "notRequestPrincipals": ["*"]}}]}]}),
    );
    authz
        .node
        .write_istio(&[request_authentication(true), deny_anonymous])
        .or_panic("DENY and forwardOriginalToken");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while status_of(&authz.with_token("/x", None)) != 403 {
        assert!(Instant::now() < deadline, "the DENY never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = authz.with_token("/x", Some(&good));
    assert_eq!(status_of(&report), 200, "{report}");
    let forwarded = report["first_response"]["body"]["headers"]["authorization"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(forwarded, format!("Bearer {good}"), "{report}");

    // `when` on claims: a list claim matches if any element does; nested ones by [a][b].
    let by_claims = policy(
        "by-claims",
        json!({"rules": [{"when": [
            {"key": "request.auth.claims[groups]", "values": ["admins"]},
            {"key": "request.auth.claims[org][team]", "values": ["pay"]},
        ]}]}),
    );
    authz
        .node
        .write_istio(&[request_authentication(false), by_claims])
        .or_panic("ALLOW by claims");
    let with_claims = |claims: &str| {
        authz.jwks_tool(&[
            "mint", "--key", JWT_KEY, "--alg", "RS256", "--kid", "k1", "--iss", ISSUER, "--sub",
            "carol", "--aud", "shop", "--claims", claims,
        ])["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let member = with_claims(r#"{"groups": ["dev", "admins"], "org": {"team": "pay"}}"#);
    let outsider = with_claims(r#"{"groups": ["dev"], "org": {"team": "pay"}}"#);
    let other_team = with_claims(r#"{"groups": ["admins"], "org": {"team": "ops"}}"#);
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while status_of(&authz.with_token("/x", Some(&outsider))) != 403 {
        assert!(Instant::now() < deadline, "the claims policy never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    // (case, token, status)
    let cases = [
        ("in the list, the right team", Some(member.as_str()), 200),
        ("not in the list", Some(outsider.as_str()), 403),
        ("another team", Some(other_team.as_str()), 403),
        ("no token", None, 403),
    ];
    for (case, token, want) in cases {
        let report = authz.with_token("/x", token);
        assert_eq!(status_of(&report), want, "{case}: {report}");
    }
    authz.teardown();
}

/// MeshConfig with the ext_authz provider `ext`: the aux pod's `ext-authz` Service.
fn ext_authz_mesh_config(fail_open: bool) -> [Value; 2] {
    let mesh = format!(
        "extensionProviders:\n\
         - name: ext\n\
         \x20 envoyExtAuthzHttp:\n\
         \x20   service: ext-authz.{LEGACY}.svc.cluster.local\n\
         \x20   port: {EXT_AUTHZ_PORT}\n\
         \x20   includeRequestHeadersInCheck: [x-ext-authz]\n\
         \x20   headersToUpstreamOnAllow: [x-ext-authz-check-result]\n\
         \x20   headersToDownstreamOnDeny: [x-ext-authz-check-result]\n\
         \x20   failOpen: {fail_open}\n"
    );
    [
        shunt_tests::istio::istio_system_namespace(),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh},
        }),
    ]
}

#[test]
fn custom_authorization_asks_a_real_ext_authz_service() {
    const TEST: &str = "authz::custom_authorization_asks_a_real_ext_authz_service";
    let Some(authz) = Authz::start(TEST, &[]) else {
        return;
    };
    let port = EXT_AUTHZ_PORT.to_string();
    let mut service = authz
        .node
        .start_httppod_server(&authz.aux, &["ext-authz", "--port", &port])
        .or_panic("ext_authz service");
    let custom = policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext"},
               "rules": [{"to": [{"operation": {"paths": ["/guarded/*"]}}]}]}),
    );
    let objects = |fail_open| {
        let mut objects = ext_authz_mesh_config(fail_open).to_vec();
        objects.push(custom.clone());
        objects
    };
    authz.node.write_istio(&objects(false)).or_panic("CUSTOM");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while authz.status(&authz.inside, "/guarded/a", &[]) != 403 {
        assert!(Instant::now() < deadline, "the CUSTOM policy never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    let config = authz.node.admin().config().or_panic("GET /config");
    assert_eq!(config["errors"], json!([]), "{config}");

    // Not guarded: no check at all.
    assert_eq!(authz.status(&authz.inside, "/open", &[]), 200);
    // Allowed: the service's header reaches the app.
    let allowed = authz.get(&authz.inside, "/guarded/a", &["-H", "x-ext-authz: allow"]);
    assert_eq!(status_of(&allowed), 200, "{allowed}");
    assert_eq!(
        allowed["first_response"]["body"]["headers"]["x-ext-authz-check-result"], "allowed",
        "{allowed}"
    );
    // Denied: the service's own answer, its header passed back to the client.
    let denied = authz.get(&authz.inside, "/guarded/a", &["-H", "x-ext-authz: no"]);
    assert_eq!(status_of(&denied), 403, "{denied}");
    assert_eq!(
        denied["first_response"]["headers"]["x-ext-authz-check-result"], "denied",
        "{denied}"
    );
    assert!(
        denied["first_response"]["body"]
            .as_str()
            .is_some_and(|body| body.contains("denied by ext_authz")),
        "{denied}"
    );

    // The service gone: denied (statusOnError 403), unless failOpen.
    service.kill();
    assert_eq!(
        authz.status(&authz.inside, "/guarded/a", &["-H", "x-ext-authz: allow"]),
        403
    );
    authz.node.write_istio(&objects(true)).or_panic("failOpen");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while authz.status(&authz.inside, "/guarded/a", &[]) != 200 {
        assert!(Instant::now() < deadline, "failOpen never applied");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = authz.node.access_log().or_panic("access log");
    assert!(
        !log.matching(&[("response_flags", "UAEX")]).is_empty(),
        "the denial is flagged UAEX: {}",
        log.describe()
    );
    authz.teardown();
}
