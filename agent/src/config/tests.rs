use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::*;
use crate::source::local_dir::Loader;

fn load(files: &[(&str, &str)]) -> (Config, Vec<LoadError>) {
    let loader = loader(files);
    (loader.config, loader.errors)
}

fn loader(files: &[(&str, &str)]) -> Loader {
    let mut loader = Loader::default();
    for (name, text) in files {
        loader.load_file(Path::new(name), text);
    }
    loader
}

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-v1-5f6d7-aaaaa
  namespace: shop
  labels: {app: cart}
  annotations: {shunt.io/netns: /run/netns/cart}
status: {podIP: 10.244.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: bare}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: tcp-echo, port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart, subset: v1}, weight: 100}]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {}
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec: {accessLogging: [{providers: [{name: envoy}]}]}
---
"#;

#[test]
fn good_documents_load_with_kubernetes_defaults() {
    let (config, errors) = load(&[("good.yaml", GOOD)]);
    assert_eq!(errors, vec![]);
    let namespaces: Vec<_> = config
        .namespaces
        .iter()
        .map(|n| (n.object.metadata.name.as_str(), n.document))
        .collect();
    assert_eq!(namespaces, vec![("shop", 1)]);
    let pods: Vec<_> = config
        .pods
        .iter()
        .map(|p| {
            (
                p.object.metadata.namespace(),
                p.object.metadata.name.as_str(),
                p.document,
            )
        })
        .collect();
    assert_eq!(
        pods,
        vec![("shop", "cart-v1-5f6d7-aaaaa", 2), ("default", "bare", 3)]
    );
    // The default namespace is written into the object, so dumps show it.
    assert_eq!(
        config.pods[1].object.metadata.namespace.as_deref(),
        Some("default")
    );
    assert_eq!(config.services.len(), 1);
    assert_eq!(
        config.services[0].object.spec.cluster_ip.0,
        Some(Ipv4Addr::new(10, 96, 0, 20))
    );
    assert!(config.pods.iter().all(|p| p.file == Path::new("good.yaml")));
}

#[test]
fn istio_kinds_are_kept_as_written() {
    let (config, errors) = load(&[("good.yaml", GOOD)]);
    assert_eq!(errors, vec![]);
    let kinds: Vec<_> = config
        .istio
        .iter()
        .map(|o| {
            (
                o.object["kind"].as_str().unwrap_or_default(),
                o.object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("VirtualService", "shop"),
            ("AuthorizationPolicy", "default"),
            ("Telemetry", "istio-system"),
        ]
    );
    assert_eq!(
        config.istio[0].object["spec"]["http"][0]["route"][0]["destination"]["subset"],
        "v1"
    );
}

/// Heads of documents that the cases below complete.
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n";

#[test]
fn bad_fields_are_named_by_file_object_and_path() {
    let service_ports = |ports: &str| format!("{SERVICE}spec:\n  ports: {ports}\n");
    let pod_with = |rest: &str| format!("{POD}{rest}\n");
    // (document, object, field, message)
    let cases: Vec<(String, &str, Option<&str>, &str)> = vec![
        (
            service_ports("[{port: 80}, {port: http}]"),
            "Service shop/cart",
            Some("spec.ports[1].port"),
            r#"invalid type: string "http", expected i32"#,
        ),
        (
            service_ports("[{port: 0}]"),
            "Service shop/cart",
            Some("spec.ports[0].port"),
            "required field is missing (or 0): expected an integer 1-65535",
        ),
        (
            service_ports("[{port: 70000}]"),
            "Service shop/cart",
            Some("spec.ports[0].port"),
            "expected an integer 1-65535, got 70000",
        ),
        (
            service_ports("[{targetPort: 80}]"),
            "Service shop/cart",
            Some("spec.ports[0].port"),
            "required field is missing (or 0): expected an integer 1-65535",
        ),
        (
            service_ports("[{port: 80, targetPort: Web_Port}]"),
            "Service shop/cart",
            Some("spec.ports[0].targetPort"),
            r#"expected an integer 1-65535 or a container port name, got "Web_Port""#,
        ),
        (
            service_ports("[{port: 80, protocol: tcp}]"),
            "Service shop/cart",
            Some("spec.ports[0].protocol"),
            r#"expected one of TCP, UDP, SCTP, got "tcp""#,
        ),
        (
            format!("{SERVICE}spec: {{clusterIP: 10.96.0}}"),
            "Service shop/cart",
            Some("spec.clusterIP"),
            r#"expected an IPv4 address or "None", got "10.96.0""#,
        ),
        (
            pod_with("status: {podIP: 10.0.0.300}"),
            "Pod default/web",
            Some("status.podIP"),
            r#"expected an IPv4 address, got "10.0.0.300""#,
        ),
        (
            pod_with("spec: {containers: [{name: app, ports: [{name: http}]}]}"),
            "Pod default/web",
            Some("spec.containers[0].ports[0].containerPort"),
            "required field is missing (or 0): expected an integer 1-65535",
        ),
        (
            pod_with("spec: {containers: [{ports: [{containerPort: 80, name: HTTP}]}]}"),
            "Pod default/web",
            Some("spec.containers[0].ports[0].name"),
            r#"expected a port name (at most 15 lowercase letters, digits and dashes, with a letter), got "HTTP""#,
        ),
        (
            pod_with("spec: {nodeName: Node_1}"),
            "Pod default/web",
            Some("spec.nodeName"),
            r#"expected a node name (a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit), got "Node_1""#,
        ),
        (
            pod_with("spec: {hostNetwork: \"yes\"}"),
            "Pod default/web",
            Some("spec.hostNetwork"),
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            pod_with("status: {phase: Sleeping}"),
            "Pod default/web",
            Some("status.phase"),
            r#"expected one of Pending, Running, Succeeded, Failed, Unknown, got "Sleeping""#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {sidecar.istio.io/inject: [no]}}"
                .to_owned(),
            "Pod default/web",
            Some("metadata.labels.sidecar.istio.io/inject"),
            "invalid type: sequence, expected a string",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: shop}".to_owned(),
            "document 1 (Pod)",
            Some("metadata.name"),
            "required field is missing",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: \"\"}".to_owned(),
            "document 1 (Pod)",
            Some("metadata.name"),
            r#"expected a non-empty string, got """#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: [shop]}".to_owned(),
            "Pod web",
            Some("metadata.namespace"),
            "expected a string, got a list",
        ),
        (
            "apiVersion: v1\nmetadata: {name: web}".to_owned(),
            "document 1",
            Some("kind"),
            "required field is missing",
        ),
        (
            "kind: Pod\nmetadata: {name: web}".to_owned(),
            "Pod web",
            Some("apiVersion"),
            "required field is missing",
        ),
        (
            "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: web}".to_owned(),
            "Pod web",
            Some("apiVersion"),
            r#"expected "v1" for a Pod, got "apps/v1""#,
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}".to_owned(),
            "Deployment web",
            Some("kind"),
            r#"unknown kind "Deployment" (apiVersion "apps/v1"): local mode reads Namespace, Pod, Service, ConfigMap and Secret (v1), EndpointSlice (discovery.k8s.io/v1), Ingress (networking.k8s.io/v1, extensions/v1beta1), RateLimitPolicy (shunt.io/v1alpha1) and the Istio kinds (networking.istio.io, security.istio.io, telemetry.istio.io)"#,
        ),
        (
            "- just\n- a list".to_owned(),
            "document 1",
            None,
            "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), got a list",
        ),
    ];
    for (document, object, field, message) in cases {
        let (config, errors) = load(&[("bad.yaml", &document)]);
        let want = LoadError {
            file: PathBuf::from("bad.yaml"),
            object: Some(object.to_owned()),
            field: field.map(str::to_owned),
            message: message.to_owned(),
        };
        assert_eq!(errors, vec![want], "document:\n{document}");
        assert_eq!(
            config,
            Config::default(),
            "the bad object is skipped:\n{document}"
        );
    }
}

#[test]
fn a_bad_object_is_skipped_and_the_rest_applies() {
    let text = format!("{POD}---\n{SERVICE}spec: {{ports: [{{port: x}}]}}\n---\n{SERVICE}");
    let (config, errors) = load(&[("mixed.yaml", &text)]);
    assert_eq!(config.pods.len(), 1);
    assert_eq!(
        config.services.len(),
        1,
        "the later, good Service still loads"
    );
    assert_eq!(config.services[0].document, 3);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        r#"mixed.yaml: Service shop/cart: spec.ports[0].port: invalid type: string "x", expected i32"#
    );
}

#[test]
fn duplicates_name_both_places() {
    let (config, errors) = load(&[
        ("a.yaml", &format!("{POD}---\n{SERVICE}")),
        ("b.yaml", &format!("{SERVICE}---\n{POD}")),
    ]);
    assert_eq!((config.pods.len(), config.services.len()), (1, 1));
    let messages: Vec<_> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "b.yaml: Service shop/cart: Service shop/cart is already defined in a.yaml \
             (document 2); this one is ignored",
            "b.yaml: Pod default/web: Pod default/web is already defined in a.yaml \
             (document 1); this one is ignored",
        ]
    );
    // Same name, other kind or other namespace: not a duplicate.
    let (config, errors) = load(&[(
        "c.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart, namespace: shop}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: cart, namespace: other}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cart, namespace: shop}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: shop}\n",
    )]);
    assert_eq!(errors, vec![]);
    assert_eq!((config.pods.len(), config.istio.len()), (2, 2));
}

#[test]
fn pods_sharing_a_uid_are_rejected() {
    let (config, errors) = load(&[(
        "uids.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, uid: u1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, uid: u1}\n",
    )]);
    assert_eq!(config.pods.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "uids.yaml: Pod default/b: metadata.uid: uid \"u1\" is already used by Pod default/a \
         in uids.yaml (document 1); this pod is ignored"
    );
}

#[test]
fn a_yaml_syntax_error_keeps_earlier_documents_and_other_files() {
    let (config, errors) = load(&[
        ("a.yaml", &format!("{POD}---\nkind: [Pod\n---\n{SERVICE}")),
        ("b.yaml", SERVICE),
    ]);
    assert_eq!((config.pods.len(), config.services.len()), (1, 1));
    assert_eq!(config.services[0].file, Path::new("b.yaml"));
    assert_eq!(errors.len(), 1);
    let error = &errors[0];
    assert_eq!(error.object.as_deref(), Some("document 2"));
    assert!(
        error.message.starts_with("invalid YAML: ")
            && error
                .message
                .ends_with("; the rest of this file is skipped"),
        "{error}"
    );
}

#[test]
fn load_dir_reads_yaml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let pod = |name: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n");
    write("20-b.yml", &pod("b"));
    write("10-a.yaml", &pod("a"));
    write("notes.txt", &pod("ignored-txt"));
    write(".hidden.yaml", &pod("ignored-hidden"));
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let snapshot = crate::source::local_dir::load(dir.path(), &Default::default()).unwrap();
    let names: Vec<_> = snapshot
        .config
        .pods
        .iter()
        .map(|p| p.object.metadata.name.as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(snapshot.config.pods[0].file, dir.path().join("10-a.yaml"));

    let missing = dir.path().join("nope");
    let err = crate::source::local_dir::load(&missing, &Default::default()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "cannot read the config directory {}: ",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn snapshots_plan_capture_and_build_the_mesh() {
    let text = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: shop, annotations: {shunt.io/netns: /run/netns/ok}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-netns, namespace: shop, annotations: {shunt.io/netns: run/netns/x}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: discovered, namespace: shop}
status: {podIP: 10.0.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: outside}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
";
    let (config, errors) = load(&[("node.yaml", text)]);
    assert_eq!(errors, vec![]);
    let snapshot = Snapshot::from_config(Path::new("/cfg"), config, errors);
    let plans: Vec<_> = snapshot
        .pods
        .iter()
        .map(|p| (p.uid.as_str(), p.captured()))
        .collect();
    assert_eq!(
        plans,
        vec![
            ("shop/ok", true),
            ("shop/bad-netns", false),
            ("shop/discovered", true),
            ("default/outside", false)
        ]
    );
    assert_eq!(
        snapshot.errors,
        vec![LoadError {
            file: "node.yaml".into(),
            object: Some("Pod shop/bad-netns".into()),
            field: Some("metadata.annotations.shunt.io/netns".into()),
            message: "expected an absolute path such as /run/netns/NAME, got \"run/netns/x\" \
                      (or leave the annotation out to have the agent discover the netns)"
                .into(),
        }]
    );
    let workloads: Vec<_> = snapshot
        .mesh
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.captured))
        .collect();
    assert_eq!(
        workloads,
        vec![
            ("ok", true),
            ("bad-netns", false),
            ("discovered", true),
            ("outside", false)
        ]
    );
    assert_eq!(snapshot.mesh.services.len(), 1);
    assert_eq!(
        snapshot.mesh.services[0].hostname(),
        "web.shop.svc.cluster.local"
    );
}

const ROUTING: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
    - name: checkout
      match: [{uri: {prefix: /checkout}}]
      route: [{destination: {host: cart, subset: v1}}]
    - route:
        - {destination: {host: cart, subset: v1}, weight: 50}
        - {destination: {host: cart, subset: v2}, weight: 40}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: typo, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}}], retries: {attempts: many}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: shunt.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: cart-limit, namespace: shop}
spec: {service: cart, requestsPerSecond: 10, burst: 20}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
    protocolDetectionTimeout: 250ms
    accessLogFile: ""
    trustDomain: example.org
    rootNamespace: mesh-root
"#;

#[test]
fn routing_objects_are_checked_and_the_valid_ones_reach_the_mesh() {
    let (config, errors) = load(&[("routes.yaml", ROUTING)]);
    assert_eq!(errors, vec![]);
    let snapshot = Snapshot::from_config(Path::new("/cfg"), config, errors);
    let errors: Vec<String> = snapshot.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![
            "routes.yaml: VirtualService shop/typo: spec.http[0].retries.attempts: invalid type: \
             string \"many\", expected i64",
            "routes.yaml: VirtualService shop/cart: spec.http[1].route: the weights of several \
             destinations must sum to 100, got 90",
        ]
    );
    let mesh = &snapshot.mesh;
    assert!(
        mesh.virtual_services.is_empty(),
        "both VirtualServices are invalid"
    );
    assert_eq!(mesh.destination_rules.len(), 1);
    assert_eq!(mesh.service_entries[0].spec.hosts, vec!["api.example.com"]);
    assert_eq!(mesh.rate_limit_policies[0].spec.burst, Some(20));
    assert_eq!(
        mesh.mesh,
        shunt_mesh::routing::MeshSettings {
            outbound_traffic_policy: shunt_mesh::routing::OutboundTrafficPolicy::RegistryOnly,
            protocol_detection_timeout: Some(std::time::Duration::from_millis(250)),
            access_log: shunt_mesh::routing::AccessLogOutput::Off,
            trust_domain: "example.org".into(),
            root_namespace: "mesh-root".into(),
            extension_providers: Default::default(),
            path_normalization: shunt_mesh::http_path::PathNormalization::Base,
            num_trusted_proxies: shunt_mesh::settings::TrustedProxies::Hops(0),
            ingress_class: "istio".into(),
            ingress_selector: "ingressgateway".into(),
            tracing: shunt_mesh::trace_config::TracingSettings::default(),
        }
    );
    // What the agent sends compiles without a problem in the proxy.
    assert_eq!(shunt_mesh::routing::validate(mesh), vec![]);
}

#[test]
fn mesh_config_fields_shunt_does_not_read_are_warned_about_and_the_rest_applies() {
    let document = "apiVersion: v1\nkind: ConfigMap\n\
                    metadata: {name: istio, namespace: istio-system}\n\
                    data:\n  mesh: |\n    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n    \
                    accessLogEncoding: TEXT\n    enableTracing: true\n";
    let (config, errors) = load(&[("mesh.yaml", document)]);
    let snapshot = Snapshot::from_config(Path::new("/cfg"), config, errors);
    let warned: Vec<_> = snapshot
        .errors
        .iter()
        .map(|e| (e.object.as_deref(), e.field.as_deref()))
        .collect();
    assert_eq!(
        warned,
        vec![
            (
                Some("ConfigMap istio-system/istio"),
                Some("data.mesh.accessLogEncoding")
            ),
            (
                Some("ConfigMap istio-system/istio"),
                Some("data.mesh.enableTracing")
            ),
        ]
    );
    assert!(
        snapshot.errors[0]
            .message
            .contains("a warning: the rest of the mesh config applies"),
        "{:?}",
        snapshot.errors[0]
    );
    assert_eq!(
        snapshot.mesh.mesh.outbound_traffic_policy,
        shunt_mesh::routing::OutboundTrafficPolicy::RegistryOnly
    );
}

#[test]
fn the_outbound_policy_flag_wins_over_the_config_map() {
    let (config, errors) = load(&[("routes.yaml", ROUTING)]);
    let options = LoadOptions {
        outbound_traffic_policy: Some(shunt_mesh::routing::OutboundTrafficPolicy::AllowAny),
        ..LoadOptions::default()
    };
    let snapshot = Snapshot::from_config_with(Path::new("/cfg"), config, errors, &options);
    assert_eq!(
        snapshot.mesh.mesh.outbound_traffic_policy,
        shunt_mesh::routing::OutboundTrafficPolicy::AllowAny
    );
    assert_eq!(snapshot.options, options);
}

#[test]
fn bad_mesh_settings_and_shunt_kinds_are_named() {
    for (document, object, field, message) in [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
             data: {mesh: 'outboundTrafficPolicy: {mode: DENY}'}",
            "ConfigMap istio-system/istio",
            "data.mesh.outboundTrafficPolicy.mode",
            "unknown mode \"DENY\": expected ALLOW_ANY or REGISTRY_ONLY",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
             data: {mesh: 'protocolDetectionTimeout: soon'}",
            "ConfigMap istio-system/istio",
            "data.mesh.protocolDetectionTimeout",
            "\"soon\" is not a duration: expected a number with a unit h, m, s, ms, us or ns, \
             e.g. \"1s\", \"0.5s\", \"100ms\"",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
             data: {mesh: 'accessLogFile: /var/log/access.log'}",
            "ConfigMap istio-system/istio",
            "data.mesh.accessLogFile",
            "\"/var/log/access.log\": shunt writes its access log to the node proxy's stdout \
             only: use \"/dev/stdout\", or \"\" to turn it off",
        ),
        (
            "apiVersion: shunt.io/v1\nkind: RateLimitPolicy\nmetadata: {name: r}",
            "RateLimitPolicy r",
            "apiVersion",
            "expected \"shunt.io/v1alpha1\" for a RateLimitPolicy, got \"shunt.io/v1\"",
        ),
        (
            "apiVersion: shunt.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: r}\n\
             spec: {service: cart}",
            "RateLimitPolicy default/r",
            "spec.requestsPerSecond",
            "required field is missing",
        ),
        (
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: v}",
            "VirtualService default/v",
            "apiVersion",
            "unsupported apiVersion \"networking.istio.io/v2\" for VirtualService: expected one \
             of networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
        ),
    ] {
        let (config, errors) = load(&[("bad.yaml", document)]);
        let snapshot = Snapshot::from_config(Path::new("/cfg"), config, errors);
        assert_eq!(
            snapshot.errors,
            vec![LoadError {
                file: PathBuf::from("bad.yaml"),
                object: Some(object.to_owned()),
                field: Some(field.to_owned()),
                message: message.to_owned(),
            }],
            "{document}"
        );
    }
}

#[test]
fn fields_shunt_does_not_read_are_warned_about_and_the_object_still_applies() {
    let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: cart, namespace: shop, labels: {team: a}, resourceVersion: "7"}
spec:
  hosts: [cart]
  http:
  - timout: 2s
    match: [{uri: {prefix: /a}, ignoreUriCse: true}]
    route: [{destination: {host: cart}}]
"#;
    let (config, errors) = load(&[("routes.yaml", text)]);
    assert_eq!(errors, vec![]);
    let snapshot = Snapshot::from_config(Path::new("/cfg"), config, errors);
    let errors: Vec<(Option<&str>, Option<&str>)> = snapshot
        .errors
        .iter()
        .map(|e| (e.object.as_deref(), e.field.as_deref()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                Some("VirtualService shop/cart"),
                Some("spec.http[0].match[0].ignoreUriCse")
            ),
            (
                Some("VirtualService shop/cart"),
                Some("spec.http[0].timout")
            ),
        ],
        "metadata fields are not warned about: {:#?}",
        snapshot.errors
    );
    assert!(
        snapshot.errors[1]
            .message
            .contains("a warning: the object still applies"),
        "{}",
        snapshot.errors[1]
    );
    assert_eq!(snapshot.mesh.virtual_services.len(), 1);
}

const SECRETS: &str = "
apiVersion: v1
kind: Secret
metadata: {name: cacerts, namespace: istio-system}
data:
  ca-cert.pem: Y2VydA==
  ca-key.pem: |
    a2V5LWJ5dGVz
    LW1vcmU=
  root-cert.pem: cm9vdA==
stringData:
  root-cert.pem: plain root
  cert-chain.pem: chain
---
apiVersion: v1
kind: Secret
metadata: {name: web-tls, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: Y3J0, tls.key: a2V5}
---
apiVersion: v1
kind: Secret
metadata: {name: empty}
data:
stringData:
";

#[test]
fn secrets_decode_merge_string_data_and_stay_out_of_the_config() {
    let loader = loader(&[("secrets.yaml", SECRETS)]);
    assert_eq!(loader.errors, vec![]);
    assert_eq!(
        loader.config,
        Config::default(),
        "GET /config never shows a Secret"
    );
    let snapshot = Snapshot {
        secrets: loader.secrets,
        ..Snapshot::default()
    };
    let cacerts = snapshot.secret("istio-system", "cacerts").unwrap();
    assert_eq!(cacerts.kind, "Opaque");
    // (key, value): base64 decoded, line breaks ignored, stringData over data.
    let cases: &[(&str, &[u8])] = &[
        ("ca-cert.pem", b"cert"),
        ("ca-key.pem", b"key-bytes-more"),
        ("root-cert.pem", b"plain root"),
        ("cert-chain.pem", b"chain"),
    ];
    for (key, value) in cases {
        assert_eq!(cacerts.get(key), Some(*value), "{key}");
    }
    assert_eq!(cacerts.data.len(), cases.len());
    let tls = snapshot.secret("shop", "web-tls").unwrap();
    assert_eq!(
        (tls.kind.as_str(), tls.get("tls.crt"), tls.get("tls.key")),
        ("kubernetes.io/tls", Some(&b"crt"[..]), Some(&b"key"[..]))
    );
    let empty = snapshot.secret("default", "empty").unwrap();
    assert!(empty.data.is_empty());
    assert!(snapshot.secret("shop", "cacerts").is_none());
    let shown = format!("{cacerts:?}");
    assert!(
        shown.contains("\"ca-key.pem\": \"<14 bytes>\"") && !shown.contains("key-bytes"),
        "Debug must not show a value: {shown}"
    );
}

#[test]
fn bad_secrets_are_named_by_file_object_and_field() {
    let secret = |rest: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\n{rest}\n")
    };
    // (document, object, field, message)
    let cases: Vec<(String, &str, Option<&str>, &str)> = vec![
        (
            secret("data: {key: not*base64}"),
            "Secret ns/s",
            Some("data.key"),
            "expected base64 (the standard alphabet, padded; stringData takes plain text): \
             Invalid symbol 42, offset 3.",
        ),
        (
            secret("data: {key: 42}"),
            "Secret ns/s",
            Some("data.key"),
            "expected a base64 string, got 42",
        ),
        (
            secret("data: {bad/key: YQ==}"),
            "Secret ns/s",
            Some("data.bad/key"),
            r#"expected a Secret key (at most 253 letters, digits, '-', '_' and '.'), got "bad/key""#,
        ),
        (
            secret("stringData: {\"a b\": x}"),
            "Secret ns/s",
            Some("stringData.a b"),
            r#"expected a Secret key (at most 253 letters, digits, '-', '_' and '.'), got "a b""#,
        ),
        (
            secret("stringData: {key: [x]}"),
            "Secret ns/s",
            Some("stringData.key"),
            "invalid type: sequence, expected a string",
        ),
        (
            secret("type: [Opaque]"),
            "Secret ns/s",
            Some("type"),
            "invalid type: sequence, expected a string",
        ),
        (
            secret("type: kubernetes.io/tls\ndata: {tls.crt: YQ==}"),
            "Secret ns/s",
            Some("data"),
            r#"a Secret of type "kubernetes.io/tls" needs the keys tls.crt, tls.key (in data or stringData); missing: tls.key"#,
        ),
        (
            "apiVersion: v2\nkind: Secret\nmetadata: {name: s}".to_owned(),
            "Secret s",
            Some("apiVersion"),
            r#"expected "v1" for a Secret, got "v2""#,
        ),
    ];
    for (document, object, field, message) in cases {
        let loader = loader(&[("bad.yaml", &document)]);
        let want = LoadError {
            file: PathBuf::from("bad.yaml"),
            object: Some(object.to_owned()),
            field: field.map(str::to_owned),
            message: message.to_owned(),
        };
        assert_eq!(loader.errors, vec![want], "document:\n{document}");
        assert!(
            loader.secrets.is_empty(),
            "the bad Secret is skipped:\n{document}"
        );
    }
    let twice = format!("{}---\n{}", secret(""), secret(""));
    let loader = loader(&[("dup.yaml", &twice)]);
    assert_eq!(loader.secrets.len(), 1);
    assert_eq!(
        loader.errors[0].message,
        "Secret ns/s is already defined in dup.yaml (document 1); this one is ignored"
    );
}

#[test]
fn every_workload_carries_its_node_and_the_mesh_names_the_agents() {
    let text = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: here, namespace: shop, annotations: {shunt.io/netns: /run/netns/here}}
spec: {nodeName: node-0}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: there, namespace: shop, annotations: {shunt.io/netns: /run/netns/there}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: unnamed, namespace: shop, annotations: {shunt.io/netns: /run/netns/u}}
status: {podIP: 10.244.0.11}
";
    let (config, errors) = load(&[("mesh.yaml", text)]);
    /// Each pod's name, node, captured (by its node's shunt), captured by this agent.
    type Pods = [(&'static str, &'static str, bool, bool); 3];
    // (agent's --node-name, pods)
    let cases: &[(Option<&str>, Pods)] = &[
        (
            Some("node-0"),
            [
                ("here", "node-0", true, true),
                ("there", "node-1", true, false),
                ("unnamed", "node-0", true, true),
            ],
        ),
        (
            Some("node-1"),
            [
                ("here", "node-0", true, false),
                ("there", "node-1", true, true),
                ("unnamed", "node-1", true, true),
            ],
        ),
        (
            None,
            [
                ("here", "node-0", true, false),
                ("there", "node-1", true, false),
                ("unnamed", "local", true, true),
            ],
        ),
    ];
    for (agent, want) in cases {
        let options = LoadOptions {
            node_name: agent.map_or_else(Default::default, |n| n.parse().unwrap()),
            ..LoadOptions::default()
        };
        let snapshot =
            Snapshot::from_config_with(Path::new("."), config.clone(), errors.clone(), &options);
        assert_eq!(snapshot.errors, vec![], "{agent:?}");
        assert_eq!(
            snapshot.mesh.node_name.as_deref(),
            Some(agent.unwrap_or("local"))
        );
        let got: Vec<_> = snapshot
            .mesh
            .workloads
            .iter()
            .zip(&snapshot.pods)
            .map(|(w, plan)| {
                (
                    w.name.as_str(),
                    w.node.as_deref().unwrap_or("?"),
                    w.captured,
                    plan.captured_here().is_some(),
                )
            })
            .collect();
        assert_eq!(got, want.to_vec(), "agent {agent:?}");
    }
}

#[test]
fn another_nodes_pod_marked_captured_by_shunt_or_ztunnel_is_an_hbone_peer() {
    // (pod's node, its annotations, captured in the mesh)
    let cases = [
        ("node-1", "{shunt.io/captured: 'true'}", true),
        ("node-1", "{ambient.istio.io/redirection: enabled}", true),
        ("node-1", "{ambient.istio.io/redirection: disabled}", false),
        ("node-1", "{shunt.io/captured: 'false'}", false),
        ("node-1", "{}", false),
        // This node's pods are this agent's to decide: a stale mark counts for nothing.
        ("node-0", "{shunt.io/captured: 'true'}", false),
        ("node-0", "{ambient.istio.io/redirection: enabled}", false),
    ];
    let options = LoadOptions {
        node_name: "node-0".parse().unwrap(),
        ..LoadOptions::default()
    };
    for (node, annotations, want) in cases {
        // Not opted in by labels: only the annotation can make it a peer.
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: shop, \
             annotations: {annotations}}}\nspec: {{nodeName: {node}}}\n\
             status: {{podIP: 10.244.1.10}}\n"
        );
        let (config, errors) = load(&[("pod.yaml", &text)]);
        let snapshot = Snapshot::from_config_with(Path::new("."), config, errors, &options);
        assert_eq!(snapshot.errors, vec![], "{node} {annotations}");
        assert_eq!(
            snapshot.mesh.workloads[0].captured, want,
            "{node} {annotations}"
        );
        assert!(
            !snapshot.pods[0].captured(),
            "the plan is the labels' alone"
        );
    }
}

const SECURITY_MESH: &str = r"
apiVersion: v1
kind: Pod
metadata:
  name: cart
  namespace: shop
  labels: {app: cart}
  annotations: {shunt.io/netns: /run/netns/cart}
status: {podIP: 10.244.0.21}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {shunt.io/netns: /run/netns/web}
status: {podIP: 10.244.0.22}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

fn snapshot_of(files: &[(&str, &str)]) -> Snapshot {
    let (config, errors) = load(files);
    Snapshot::from_config(Path::new("/cfg"), config, errors)
}

/// `(pod, port)` → the mode, as the proxy's table says, from the snapshot's mesh.
fn mtls_mode(snapshot: &Snapshot, pod: &str, port: u16) -> String {
    let (table, errors) = shunt_mesh::security::PeerAuthnTable::build(&snapshot.mesh);
    assert!(
        !errors.iter().any(shunt_mesh::security::Error::drops_object),
        "the agent sends only valid policies: {errors:?}"
    );
    let workload = snapshot
        .mesh
        .workloads
        .iter()
        .find(|w| w.name == pod)
        .unwrap();
    table.explain(workload, port).to_string()
}

#[test]
fn peer_authentications_reach_the_mesh_and_merge() {
    let policies = r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: cart, namespace: shop}
spec:
  selector:
    matchLabels: {app: cart}
  mtls: {mode: UNSET}
  portLevelMtls:
    9090: {mode: DISABLE}
";
    let snapshot = snapshot_of(&[("mesh.yaml", SECURITY_MESH), ("pa.yaml", policies)]);
    assert_eq!(snapshot.errors, vec![]);
    assert_eq!(snapshot.mesh.peer_authentications.len(), 2);
    assert!(snapshot.mesh.fail_closed.is_empty());
    let cases = [
        ("web", 8080, "STRICT by shop/default (namespace-wide)"),
        ("cart", 8080, "STRICT by shop/default (namespace-wide)"),
        ("cart", 9090, "DISABLE by shop/cart (its portLevelMtls)"),
    ];
    for (pod, port, want) in cases {
        assert_eq!(mtls_mode(&snapshot, pod, port), want, "{pod}:{port}");
    }
}

/// Each case: the document; the (object, field) of every error, in order (field `None`:
/// the line saying how it fails closed); the pod and port, and the mode they end with.
#[test]
fn bad_peer_authentications_are_named_and_strict_ones_fail_closed() {
    let head = |api: &str, name: &str| {
        format!(
            "apiVersion: {api}\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\n"
        )
    };
    let v1 =
        |name: &str, spec: &str| format!("{}spec: {spec}\n", head("security.istio.io/v1", name));
    type Case = (
        String,
        Vec<(&'static str, Option<&'static str>)>,
        (&'static str, u16, &'static str),
    );
    let cases: Vec<Case> = vec![
        (
            v1("p", "{mtls: {mode: STRICTER}}"),
            vec![
                ("PeerAuthentication shop/p", Some("spec.mtls.mode")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "web",
                8080,
                "STRICT by shop/p (namespace-wide; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        // A misspelt matchLabels is refused, not read as namespace-wide; the pods it may have
        // meant are all locked down.
        (
            v1(
                "p",
                "{selector: {matchLabel: {app: cart}}, mtls: {mode: STRICT}}",
            ),
            vec![
                (
                    "PeerAuthentication shop/p",
                    Some("spec.selector.matchLabel"),
                ),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "web",
                8080,
                "STRICT by shop/p (workload selector; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        // STRICT with a bad port: every port STRICT, the relaxed one too.
        (
            v1(
                "p",
                "{selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}, portLevelMtls: {http: {mode: DISABLE}}}",
            ),
            vec![
                ("PeerAuthentication shop/p", Some("spec.portLevelMtls.http")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "cart",
                9090,
                "STRICT by shop/p (workload selector; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        (
            v1(
                "p",
                "{mtls: {mode: DISABLE}, portLevelMtls: {8080: {mode: STRICT}}}",
            ),
            vec![
                ("PeerAuthentication shop/p", Some("spec.portLevelMtls")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "web",
                80,
                "STRICT by shop/p (namespace-wide; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        (
            format!(
                "{}spec: {{mtls: {{mode: STRICT}}}}\n",
                head("security.istio.io/v1alpha1", "p")
            ),
            vec![
                ("PeerAuthentication shop/p", Some("apiVersion")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "cart",
                80,
                "STRICT by shop/p (namespace-wide; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        // Does not parse at all.
        (
            v1("p", "{mtls: {mode: [STRICT]}}"),
            vec![
                ("PeerAuthentication shop/p", Some("spec.mtls.mode")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "cart",
                80,
                "STRICT by shop/p (namespace-wide; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        // A mode that cannot be read may mean STRICT: locked down too.
        (
            v1("p", "{mtls: {mode: PERMISIVE}}"),
            vec![
                ("PeerAuthentication shop/p", Some("spec.mtls.mode")),
                ("PeerAuthentication shop/p", None),
            ],
            (
                "web",
                80,
                "STRICT by shop/p (namespace-wide; the policy is rejected and fails closed until it is fixed)",
            ),
        ),
        // Nothing STRICT asked for: left out, nothing to lock down.
        (
            v1(
                "p",
                "{mtls: {mode: PERMISSIVE}, portLevelMtls: {80: {mode: DISABLE}}}",
            ),
            vec![("PeerAuthentication shop/p", Some("spec.portLevelMtls"))],
            ("web", 80, "PERMISSIVE by default (no policy)"),
        ),
        // Valid, but a selector in the root namespace does nothing.
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {name: r, namespace: istio-system}\n\
             spec: {selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}}\n"
                .to_owned(),
            vec![("PeerAuthentication istio-system/r", Some("spec.selector"))],
            ("cart", 80, "PERMISSIVE by default (no policy)"),
        ),
    ];
    for (document, expected, (pod, port, mode)) in cases {
        let snapshot = snapshot_of(&[("mesh.yaml", SECURITY_MESH), ("pa.yaml", &document)]);
        let got: Vec<_> = snapshot
            .errors
            .iter()
            .map(|e| (e.object.as_deref().unwrap_or_default(), e.field.as_deref()))
            .collect();
        assert_eq!(got, expected, "{document}\n{:#?}", snapshot.errors);
        assert!(
            snapshot
                .errors
                .iter()
                .all(|e| e.file == Path::new("pa.yaml")),
            "{:?}",
            snapshot.errors
        );
        if let Some(line) = snapshot.errors.iter().find(|e| e.field.is_none()) {
            assert!(line.message.contains("failing closed"), "{line}");
        }
        assert_eq!(mtls_mode(&snapshot, pod, port), mode, "{document}");
    }
}

/// A DestinationRule whose TLS cannot be applied is rejected and its host's connections are
/// refused, never sent in plaintext.
#[test]
fn a_destination_rule_whose_tls_cannot_apply_fails_closed() {
    let rule = |name: &str, created: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {name}, namespace: shop, creationTimestamp: '{created}'}}\n\
             spec: {{host: cart, trafficPolicy: {{tls: {tls}}}}}\n"
        )
    };
    type Case = (String, Vec<(&'static str, Option<&'static str>)>, bool);
    let cases: Vec<Case> = vec![
        (
            rule(
                "d",
                "2024-01-01T00:00:00Z",
                "{mode: MUTUAL, caCertificates: /etc/ca.pem}",
            ),
            vec![
                (
                    "DestinationRule shop/d",
                    Some("spec.trafficPolicy.tls.clientCertificate"),
                ),
                (
                    "DestinationRule shop/d",
                    Some("spec.trafficPolicy.tls.privateKey"),
                ),
                ("DestinationRule shop/d", None),
            ],
            true,
        ),
        // A misspelt field inside tls rejects the rule (a misspelt mode would read DISABLE).
        (
            rule("d", "2024-01-01T00:00:00Z", "{mdoe: SIMPLE}"),
            vec![
                (
                    "DestinationRule shop/d",
                    Some("spec.trafficPolicy.tls.mdoe"),
                ),
                ("DestinationRule shop/d", None),
            ],
            true,
        ),
        // An older rejected rule shadows a newer valid one in its namespace, and says so.
        (
            format!(
                "{}---\n{}",
                rule(
                    "old",
                    "2024-01-01T00:00:00Z",
                    "{mode: SIMPLE, caCertificates: relative.pem}"
                ),
                rule("new", "2024-06-01T00:00:00Z", "{mode: DISABLE}")
            ),
            vec![
                (
                    "DestinationRule shop/old",
                    Some("spec.trafficPolicy.tls.caCertificates"),
                ),
                ("DestinationRule shop/old", None),
                ("DestinationRule shop/new", Some("spec.host")),
            ],
            true,
        ),
        // Valid, with a setting it does not use: a warning, the rule applies.
        (
            rule(
                "d",
                "2024-01-01T00:00:00Z",
                "{mode: DISABLE, sni: cart.example.com}",
            ),
            vec![("DestinationRule shop/d", Some("spec.trafficPolicy.tls.sni"))],
            false,
        ),
    ];
    for (document, expected, refused) in cases {
        let snapshot = snapshot_of(&[("mesh.yaml", SECURITY_MESH), ("dr.yaml", &document)]);
        let got: Vec<_> = snapshot
            .errors
            .iter()
            .map(|e| (e.object.as_deref().unwrap_or_default(), e.field.as_deref()))
            .collect();
        assert_eq!(got, expected, "{document}\n{:#?}", snapshot.errors);
        assert!(
            snapshot
                .errors
                .iter()
                .all(|e| e.file == Path::new("dr.yaml")),
            "{:?}",
            snapshot.errors
        );
        let (table, _) = shunt_mesh::routing::RouteTable::build(&snapshot.mesh);
        let web = snapshot.mesh.workloads.iter().find(|w| w.name == "web");
        let cluster = shunt_mesh::routing::Routes::cluster(
            &table,
            &shunt_mesh::routing::Destination {
                host: shunt_mesh::routing::Host("cart.shop.svc.cluster.local".into()),
                subset: None,
                port: None,
            },
            80,
            web,
        )
        .unwrap();
        assert_eq!(
            matches!(
                cluster.policy.tls,
                Some(shunt_mesh::routing::UpstreamTls::Refuse { .. })
            ),
            refused,
            "{document}: {:?}",
            cluster.policy
        );
    }
}
