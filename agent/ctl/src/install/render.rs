//! The manifests, as typed k8s-openapi objects built from [`Values`], in the order they
//! apply: the namespace and what admits its pods, identities and RBAC, config, then the two
//! DaemonSets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, HostPathVolumeSource,
    Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, ScopeSelector,
    ScopedResourceSelectorRequirement, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, TCPSocketAction, Toleration, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::values::{self, CaMode, Values};

/// An object that cannot be written out (a bug: every object is built from typed values).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize {kind} {name}: {source}")]
pub struct Error {
    kind: &'static str,
    name: String,
    source: serde_yaml::Error,
}

pub const AGENT: &str = "shunt-agent";
pub const PROXY: &str = "shunt-proxy";
pub const CONFIG: &str = "shunt-config";
pub const QUOTA: &str = "shunt-critical-pods";
/// shunt's own CA (`ca.mode: shunt`): its Deployment, Service, account and roles.
pub const CA: &str = "shunt-ca";
/// istiod's CA port, which shunt's CA serves too.
const CA_PORT: u16 = 15012;
/// Where the CA keeps its state (a self-signed root when no CA Secret exists).
const CA_STATE: &str = "/var/lib/shunt";
/// Where Istio keeps the CA Secrets and the mesh config.
const ISTIO_NAMESPACE: &str = "istio-system";
/// Inside the image.
const BIN_DIR: &str = "/usr/local/bin";
/// The agent's run dir root, shared with the proxy: `control.sock` and `admin.sock` live in
/// `/run/shunt/default`.
const RUN_DIR: &str = "/run/shunt";
const CONFIG_DIR: &str = "/etc/shunt/config";
/// The installer's `meshConfig.*` as MeshConfig YAML: `shunt-agent --mesh-config`, under the
/// cluster's `istio-system/istio`.
const MESH_FILE: &str = "mesh.yaml";
const ISTIO_SECRETS: &str = "/var/run/secrets/istio";
const TOKENS: &str = "/var/run/secrets/tokens";
const TOKEN_FILE: &str = "istio-token";
/// Why the agent runs privileged, on the object itself where `kubectl describe` shows it.
pub const PRIVILEGED_REASON_ANNOTATION: &str = "shunt.io/privileged-reason";
const PRIVILEGED_REASON: &str = "mountPropagation Bidirectional on the bpffs mount (so the \
    programs and maps the agent pins outlive its container, and an agent restart adopts them \
    instead of dropping every pod's capture) is only allowed in a privileged container; \
    loading and attaching cgroup and sk_lookup programs, entering pod netns and iptables \
    capture also need CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_SYS_RESOURCE";

/// One rendered object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ResourceQuota(ResourceQuota),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::ResourceQuota(_) => "ResourceQuota",
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::ClusterRole(_) => "ClusterRole",
            Self::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Self::Role(_) => "Role",
            Self::RoleBinding(_) => "RoleBinding",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Service(_) => "Service",
            Self::Deployment(_) => "Deployment",
            Self::DaemonSet(_) => "DaemonSet",
            Self::CustomResourceDefinition(_) => "CustomResourceDefinition",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Namespace(o) => &o.metadata,
            Self::ResourceQuota(o) => &o.metadata,
            Self::ServiceAccount(o) => &o.metadata,
            Self::ClusterRole(o) => &o.metadata,
            Self::ClusterRoleBinding(o) => &o.metadata,
            Self::Role(o) => &o.metadata,
            Self::RoleBinding(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::DaemonSet(o) => &o.metadata,
            Self::CustomResourceDefinition(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// The object as YAML, one document without `---`.
    pub fn to_yaml(&self) -> Result<String, Error> {
        fn yaml<T: Serialize>(object: &T) -> Result<String, serde_yaml::Error> {
            serde_yaml::to_string(object)
        }
        match self {
            Self::Namespace(o) => yaml(o),
            Self::ResourceQuota(o) => yaml(o),
            Self::ServiceAccount(o) => yaml(o),
            Self::ClusterRole(o) => yaml(o),
            Self::ClusterRoleBinding(o) => yaml(o),
            Self::Role(o) => yaml(o),
            Self::RoleBinding(o) => yaml(o),
            Self::ConfigMap(o) => yaml(o),
            Self::Service(o) => yaml(o.as_ref()),
            Self::Deployment(o) => yaml(o.as_ref()),
            Self::DaemonSet(o) => yaml(o.as_ref()),
            Self::CustomResourceDefinition(o) => yaml(o.as_ref()),
        }
        .map_err(|source| Error {
            kind: self.kind(),
            name: self.name().into(),
            source,
        })
    }
}

/// Every object of the install, in apply order.
pub fn render(values: &Values) -> Vec<Object> {
    // The kinds first: the agent lists them as it starts.
    let mut objects: Vec<Object> = super::crds::crds(values.crds.istio)
        .into_iter()
        .map(|crd| Object::CustomResourceDefinition(Box::new(crd)))
        .collect();
    objects.push(Object::Namespace(namespace(values)));
    if values.resource_quota.enabled {
        objects.push(Object::ResourceQuota(resource_quota(values)));
    }
    objects.push(Object::ServiceAccount(service_account(values, AGENT, true)));
    // The proxy calls no API: its token is not mounted. The CA token is a projected volume
    // with the CA's audience, useless against the API server.
    objects.push(Object::ServiceAccount(service_account(
        values, PROXY, false,
    )));
    objects.push(Object::ClusterRole(agent_cluster_role(values)));
    objects.push(Object::ClusterRoleBinding(agent_cluster_role_binding(
        values,
    )));
    objects.push(Object::ConfigMap(config_map(values)));
    if values.ca.mode == CaMode::Shunt {
        objects.extend(ca_objects(values));
    }
    objects.push(Object::DaemonSet(Box::new(agent_daemon_set(values))));
    objects.push(Object::DaemonSet(Box::new(proxy_daemon_set(values))));
    objects
}

/// The objects as one multi-document YAML stream, with a header saying where it came from.
pub fn to_yaml(objects: &[Object], header: &str) -> Result<String, Error> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
    }
    for object in objects {
        out.push_str("---\n");
        out.push_str(&object.to_yaml()?);
    }
    Ok(out)
}

fn labels(values: &Values, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), name.into()),
        ("app.kubernetes.io/part-of".into(), "shunt".into()),
        ("app.kubernetes.io/version".into(), values.image.tag.clone()),
        ("app.kubernetes.io/managed-by".into(), "shuntctl".into()),
    ])
}

/// What the DaemonSets select on: only the name, since a selector is immutable and the
/// version label changes at each upgrade.
fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), name.into())])
}

fn meta(values: &Values, name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespaced.then(|| values.namespace.clone()),
        labels: Some(labels(values, name)),
        ..ObjectMeta::default()
    }
}

fn namespace(values: &Values) -> Namespace {
    let mut metadata = meta(values, &values.namespace, false);
    // shunt's own pods are never captured, by shunt or by Istio.
    metadata.labels.get_or_insert_default().extend([
        ("shunt.io/capture".to_owned(), "disabled".to_owned()),
        ("istio-injection".to_owned(), "disabled".to_owned()),
        ("istio.io/dataplane-mode".to_owned(), "none".to_owned()),
    ]);
    Namespace {
        metadata,
        ..Namespace::default()
    }
}

fn resource_quota(values: &Values) -> ResourceQuota {
    ResourceQuota {
        metadata: meta(values, QUOTA, true),
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([(
                "pods".into(),
                Quantity(values.resource_quota.pods.to_string()),
            )])),
            scope_selector: Some(ScopeSelector {
                match_expressions: Some(vec![ScopedResourceSelectorRequirement {
                    operator: "In".into(),
                    scope_name: "PriorityClass".into(),
                    values: Some(vec![values.priority_class_name.clone()]),
                }]),
            }),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn service_account(values: &Values, name: &str, automount: bool) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(values, name, true),
        automount_service_account_token: Some(automount),
        ..ServiceAccount::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// What the agent reads and writes through the API server. Kubernetes RBAC cannot narrow a
/// watch to "the Secrets some Gateway names", so the Secrets rule is cluster-wide; the agent
/// itself watches only those (field selector per name).
pub fn agent_rules() -> Vec<PolicyRule> {
    // Exactly what the agent's Kubernetes source calls (kube-rs watchers list, then watch);
    // `tests/tests/kube` fails when this and the calls differ.
    const WATCH: &[&str] = &["list", "watch"];
    let mut configmaps = rule(&[""], &["configmaps"], WATCH);
    // The mesh config, `istio-system/istio`: RBAC names it, though not its namespace.
    configmaps.resource_names = Some(vec!["istio".into()]);
    // Its own DaemonSet, read at SIGTERM: gone or being deleted, the agent uninstalls itself
    // from the node (CNI entries, capture); a rollout keeps them.
    let mut daemon_sets = rule(&["apps"], &["daemonsets"], &["get"]);
    daemon_sets.resource_names = Some(vec![AGENT.into()]);
    vec![
        rule(&[""], &["pods", "services", "namespaces"], WATCH),
        rule(&["discovery.k8s.io"], &["endpointslices"], WATCH),
        // `shunt.io/captured` on the pods the agent captures, as istio-cni marks ambient's
        // pods: the status subresource, so no write access to pods themselves.
        rule(&[""], &["pods/status"], &["patch"]),
        // Ingresses of class `istio`, which the gateway pods serve.
        rule(&["networking.k8s.io"], &["ingresses"], WATCH),
        rule(
            &["networking.istio.io"],
            &[
                "destinationrules",
                "gateways",
                "serviceentries",
                "virtualservices",
            ],
            WATCH,
        ),
        rule(
            &["security.istio.io"],
            &[
                "authorizationpolicies",
                "peerauthentications",
                "requestauthentications",
            ],
            WATCH,
        ),
        rule(&["shunt.io"], &["ratelimitpolicies"], WATCH),
        configmaps,
        // A watch of one Secret is a list and a watch filtered to its name; RBAC cannot name
        // Secrets that only the config knows.
        rule(&[""], &["secrets"], WATCH),
        // Events on invalid objects, so `kubectl describe` shows why.
        rule(&["events.k8s.io"], &["events"], &["create"]),
        daemon_sets,
    ]
}

fn agent_cluster_role(values: &Values) -> ClusterRole {
    ClusterRole {
        metadata: meta(values, AGENT, false),
        rules: Some(agent_rules()),
        ..ClusterRole::default()
    }
}

fn agent_cluster_role_binding(values: &Values) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(values, AGENT, false),
        role_ref: role_ref("ClusterRole", AGENT),
        subjects: Some(vec![account_subject(values, AGENT)]),
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
    }
}

/// The service account `name` of shunt's namespace.
fn account_subject(values: &Values, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(values.namespace.clone()),
        ..Subject::default()
    }
}

/// What shunt's CA (`shunt-agent --ca-only`) calls, cluster-wide: TokenReviews of the
/// proxies' tokens, the pod each token is bound to (`get`), and every pod's node
/// (`list`, `watch`).
pub fn ca_cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&[""], &["pods"], &["get", "list", "watch"]),
    ]
}

/// What shunt's CA reads in `istio-system`: the CA Secrets and the mesh config, each
/// watched by name (a list and a watch with `metadata.name`, which RBAC's resourceNames
/// allow).
pub fn ca_istio_rules() -> Vec<PolicyRule> {
    let named = |resource: &str, names: &[&str]| PolicyRule {
        resource_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        ..rule(&[""], &[resource], &["list", "watch"])
    };
    vec![
        named("secrets", &["cacerts", "istio-ca-secret"]),
        named("configmaps", &["istio"]),
    ]
}

/// What shunt's CA writes in shunt's namespace: its trust bundle, applied server-side
/// (`patch`, which creates it too).
pub fn ca_root_rules(values: &Values) -> Vec<PolicyRule> {
    vec![PolicyRule {
        resource_names: Some(vec![values.ca.root_cert_config_map.clone()]),
        ..rule(&[""], &["configmaps"], &["patch"])
    }]
}

/// The CA's DNS name in the cluster, which its TLS certificate carries.
fn ca_host(values: &Values) -> String {
    format!("{CA}.{}.svc", values.namespace)
}

/// `ca.mode: shunt`: the CA's account, roles, Service and Deployment.
fn ca_objects(values: &Values) -> Vec<Object> {
    let role = |namespace: &str, name: &str, rules: Vec<PolicyRule>| Role {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            ..meta(values, name, true)
        },
        rules: Some(rules),
    };
    let binding = |namespace: &str, name: &str| RoleBinding {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            ..meta(values, name, true)
        },
        role_ref: role_ref("Role", name),
        subjects: Some(vec![account_subject(values, CA)]),
    };
    let istio_role = format!("{CA}-istio");
    vec![
        Object::ServiceAccount(service_account(values, CA, true)),
        Object::ClusterRole(ClusterRole {
            metadata: meta(values, CA, false),
            rules: Some(ca_cluster_rules()),
            ..ClusterRole::default()
        }),
        Object::ClusterRoleBinding(ClusterRoleBinding {
            metadata: meta(values, CA, false),
            role_ref: role_ref("ClusterRole", CA),
            subjects: Some(vec![account_subject(values, CA)]),
        }),
        Object::Role(role(ISTIO_NAMESPACE, &istio_role, ca_istio_rules())),
        Object::RoleBinding(binding(ISTIO_NAMESPACE, &istio_role)),
        Object::Role(role(&values.namespace, CA, ca_root_rules(values))),
        Object::RoleBinding(binding(&values.namespace, CA)),
        Object::Service(Box::new(ca_service(values))),
        Object::Deployment(Box::new(ca_deployment(values))),
    ]
}

fn ca_service(values: &Values) -> Service {
    Service {
        metadata: meta(values, CA, true),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(CA)),
            ports: Some(vec![ServicePort {
                name: Some("grpc-ca".into()),
                port: i32::from(CA_PORT),
                target_port: Some(IntOrString::Int(i32::from(CA_PORT))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn ca_deployment(values: &Values) -> Deployment {
    let port = i32::from(CA_PORT);
    let args = vec![
        "--source=kube".to_owned(),
        "--ca-only".to_owned(),
        format!("--ca-listen=0.0.0.0:{port}"),
        format!("--ca-state-dir={CA_STATE}/ca"),
        format!("--ca-dns-name={}", ca_host(values)),
        format!("--ca-root-config-map={}", values.ca.root_cert_config_map),
        format!("--ca-token-audience={}", values.ca.token_audience),
        format!("--ca-trusted-node-account={}/{PROXY}", values.namespace),
        format!("--system-namespace={}", values.namespace),
        format!("--log-format={}", values.agent.log_format.as_str()),
    ];
    // The CA listens once its key material is loaded and its roots published.
    let listening = |period: i32, failures: i32| {
        probe(
            Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(port),
                    ..TCPSocketAction::default()
                }),
                ..Probe::default()
            },
            period,
            failures,
        )
    };
    let container = Container {
        ports: Some(vec![tcp_port("grpc-ca", port)]),
        resources: Some(resources(&values.ca.resources)),
        // No privilege at all: the CA only talks to the API server and its clients.
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        readiness_probe: Some(listening(5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(30),
            ..listening(15, 3)
        }),
        volume_mounts: Some(vec![mount("state", CA_STATE, false, None)]),
        ..container(values, "ca", "shunt-agent", args)
    };
    let pod = PodSpec {
        service_account_name: Some(CA.into()),
        automount_service_account_token: Some(true),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            // The image has no users: a fixed non-root uid (distroless's nonroot).
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: Some(node_selector(values)),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "state".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    Deployment {
        metadata: meta(values, CA, true),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(CA)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(values, CA)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The installer's `meshConfig.*`, the agent's `--mesh-config`: Istio's `SHARED_MESH_CONFIG`
/// practice, where the cluster's `istio-system/istio` (if any) is merged over it and wins.
fn config_map(values: &Values) -> ConfigMap {
    ConfigMap {
        metadata: meta(values, CONFIG, true),
        data: Some(BTreeMap::from([(
            MESH_FILE.into(),
            serde_yaml::to_string(&values.mesh_config).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    }
}

fn resources(resources: &values::Resources) -> ResourceRequirements {
    let list = |list: &values::ResourceList| {
        let mut out = BTreeMap::new();
        if let Some(cpu) = &list.cpu {
            out.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(memory) = &list.memory {
            out.insert("memory".to_owned(), Quantity(memory.clone()));
        }
        out
    };
    ResourceRequirements {
        requests: Some(list(&resources.requests)),
        limits: resources.limits.as_ref().map(list),
        ..ResourceRequirements::default()
    }
}

fn tolerations(values: &Values) -> Vec<Toleration> {
    values
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.map(|op| format!("{op:?}")),
            value: t.value.clone(),
            effect: t.effect.map(|effect| format!("{effect:?}")),
            toleration_seconds: t.toleration_seconds,
        })
        .collect()
}

fn affinity(values: &Values) -> Option<Affinity> {
    if values.exclude_node_labels.is_empty() {
        return None;
    }
    let match_expressions = values
        .exclude_node_labels
        .iter()
        .map(|(key, excluded)| NodeSelectorRequirement {
            key: key.clone(),
            operator: "NotIn".into(),
            values: Some(excluded.clone()),
        })
        .collect();
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(match_expressions),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    })
}

fn node_selector(values: &Values) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
    selector.extend(values.node_selector.clone());
    selector
}

/// Pod labels: the selector's, the rest of the set, and the opt-outs that keep shunt and
/// Istio from capturing or injecting shunt's own pods.
fn pod_labels(values: &Values, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels(values, name);
    labels.insert("shunt.io/capture".into(), "disabled".into());
    labels.insert("sidecar.istio.io/inject".into(), "false".into());
    labels
}

/// The container `name` running `{BIN_DIR}/<binary> <args>` from shunt's image.
fn container(values: &Values, name: &str, binary: &str, args: Vec<String>) -> Container {
    Container {
        name: name.into(),
        image: Some(values.image.reference()),
        image_pull_policy: Some(values.image.pull_policy.as_str().into()),
        command: Some(vec![format!("{BIN_DIR}/{binary}")]),
        args: Some(args),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn tcp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// `action` every `period` seconds, each try given 5 s, failing after `failures` misses.
fn probe(action: Probe, period: i32, failures: i32) -> Probe {
    Probe {
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..action
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool, propagation: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        mount_propagation: propagation.map(str::to_owned),
        ..VolumeMount::default()
    }
}

/// Where a host path appears inside the agent: under `/host`, so it never shadows the
/// container's own `/proc` or `/sys/fs/cgroup`.
fn in_host(path: &str) -> String {
    format!("/host{path}")
}

fn daemon_set(
    values: &Values,
    name: &str,
    strategy: RollingUpdateDaemonSet,
    annotations: BTreeMap<String, String>,
    pod: PodSpec,
) -> DaemonSet {
    DaemonSet {
        metadata: meta(values, name, true),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(strategy),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(values, name)),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    priority_class_name: Some(values.priority_class_name.clone()),
                    node_selector: Some(node_selector(values)),
                    tolerations: Some(tolerations(values)),
                    affinity: affinity(values),
                    ..pod
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}

fn agent_daemon_set(values: &Values) -> DaemonSet {
    let agent = &values.agent;
    let cgroup = in_host(&agent.cgroup_host_path);
    let mut args = vec![
        // The API server's objects; NODE_NAME (below) says which pods are this node's.
        "--source=kube".into(),
        format!("--mesh-config={CONFIG_DIR}/{MESH_FILE}"),
        // Where the agent finds its own DaemonSet at SIGTERM, and whose pods shunt-cni admits.
        format!("--system-namespace={}", values.namespace),
        format!("--bpffs={}", agent.bpffs_host_path),
        format!("--cgroup={cgroup}"),
        format!(
            "--capture={}",
            match agent.capture {
                values::CaptureMode::Ebpf => "ebpf",
                values::CaptureMode::Iptables => "iptables",
            }
        ),
        format!("--bpf-log={}", agent.bpf_log.as_str()),
        format!("--log-format={}", agent.log_format.as_str()),
        // shunt-cni (beside shunt-agent in the image) into the node's CNI bin dir, chained into
        // its primary CNI's conflist: a pod whose capture the agent cannot set up does not
        // start. Its entry names the CNI socket under the run dir, the same path on the host.
        "--install-cni".into(),
        format!("--cni-bin-dir={}", in_host(&values.cni.bin_dir)),
        format!("--cni-conf-dir={}", in_host(&values.cni.conf_dir)),
    ];
    if agent.sockmap_shortcut {
        args.push("--sockmap-shortcut".into());
    }
    // `shuntctl status` answers once the agent serves its admin socket, which it does after
    // loading capture and the config.
    let status_probe = |period: i32, failures: i32| {
        probe(
            Probe {
                exec: Some(ExecAction {
                    command: Some(vec![
                        format!("{BIN_DIR}/shuntctl"),
                        "status".into(),
                        "--output=json".into(),
                    ]),
                }),
                ..Probe::default()
            },
            period,
            failures,
        )
    };
    let container = Container {
        env: Some(vec![EnvVar {
            // shunt-agent's --node-name reads NODE_NAME.
            name: "NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        resources: Some(resources(&agent.resources)),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        readiness_probe: Some(status_probe(5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(30),
            ..status_probe(30, 3)
        }),
        volume_mounts: Some(vec![
            mount(
                "bpffs",
                &agent.bpffs_host_path,
                false,
                Some("Bidirectional"),
            ),
            mount("cgroup", &cgroup, true, None),
            mount("proc", &in_host("/proc"), true, None),
            mount("netns", "/var/run/netns", false, Some("HostToContainer")),
            mount("cni-bin", &in_host(&values.cni.bin_dir), false, None),
            mount("cni-conf", &in_host(&values.cni.conf_dir), false, None),
            mount("run", RUN_DIR, false, None),
            mount("config", CONFIG_DIR, true, None),
        ]),
        ..container(values, "agent", "shunt-agent", args)
    };
    let pod = PodSpec {
        service_account_name: Some(AGENT.into()),
        containers: vec![container],
        volumes: Some(vec![
            host_path("bpffs", &agent.bpffs_host_path, "DirectoryOrCreate"),
            host_path("cgroup", &agent.cgroup_host_path, "Directory"),
            host_path("proc", "/proc", "Directory"),
            host_path("netns", "/var/run/netns", "DirectoryOrCreate"),
            host_path("cni-bin", &values.cni.bin_dir, "DirectoryOrCreate"),
            host_path("cni-conf", &values.cni.conf_dir, "DirectoryOrCreate"),
            host_path("run", RUN_DIR, "DirectoryOrCreate"),
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: CONFIG.into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    daemon_set(
        values,
        AGENT,
        // One node at a time: a node whose agent restarts keeps its pinned programs, so
        // capture goes on; only new pods wait.
        RollingUpdateDaemonSet {
            max_unavailable: Some(IntOrString::Int(1)),
            ..RollingUpdateDaemonSet::default()
        },
        BTreeMap::from([(
            PRIVILEGED_REASON_ANNOTATION.into(),
            PRIVILEGED_REASON.into(),
        )]),
        pod,
    )
}

fn proxy_daemon_set(values: &Values) -> DaemonSet {
    let proxy = &values.proxy;
    let port = i32::from(proxy.metrics_port);
    let mut args = vec![
        format!("--control-socket={RUN_DIR}/default/control.sock"),
        format!("--metrics-addr=0.0.0.0:{port}"),
        format!("--drain-timeout={}", proxy.drain_timeout_seconds),
        format!("--log-format={}", proxy.log_format.as_str()),
        format!(
            "--cluster-id={}",
            values.values.global.multi_cluster.cluster_name
        ),
    ];
    if let Some(threads) = proxy.worker_threads {
        args.push(format!("--worker-threads={threads}"));
    }
    let mut mounts = vec![mount("run", RUN_DIR, false, None)];
    let mut volumes = vec![host_path("run", RUN_DIR, "DirectoryOrCreate")];
    let ca = match values.ca.mode {
        CaMode::Istiod => Some((values.ca.address.clone(), values.ca.server_name.clone())),
        CaMode::Shunt => Some((format!("{}:{CA_PORT}", ca_host(values)), ca_host(values))),
        CaMode::None => None,
    };
    if let Some((address, server_name)) = ca {
        args.extend([
            format!("--ca-address={address}"),
            format!("--ca-server-name={server_name}"),
            format!("--ca-root-cert={ISTIO_SECRETS}/root-cert.pem"),
            format!("--ca-token-file={TOKENS}/{TOKEN_FILE}"),
        ]);
        mounts.push(mount("istio-ca-root", ISTIO_SECRETS, true, None));
        mounts.push(mount("istio-token", TOKENS, true, None));
        volumes.push(Volume {
            name: "istio-ca-root".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: values.ca.root_cert_config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        volumes.push(Volume {
            name: "istio-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(values.ca.token_audience.clone()),
                        expiration_seconds: Some(43200),
                        path: TOKEN_FILE.into(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let metrics_probe = |period: i32, failures: i32| {
        probe(
            Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/metrics".into()),
                    port: IntOrString::Int(port),
                    ..HTTPGetAction::default()
                }),
                ..Probe::default()
            },
            period,
            failures,
        )
    };
    let container = Container {
        ports: Some(vec![tcp_port("http-monitoring", port)]),
        resources: Some(resources(&proxy.resources)),
        // No hostNetwork and no privilege: entering each pod's netns (through the fds the
        // agent sends) needs SYS_ADMIN, its listeners NET_ADMIN, and SO_MARK NET_RAW.
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec![
                    "NET_ADMIN".into(),
                    "SYS_ADMIN".into(),
                    "NET_RAW".into(),
                ]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        readiness_probe: Some(metrics_probe(5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..metrics_probe(15, 3)
        }),
        volume_mounts: Some(mounts),
        ..container(values, "proxy", "shunt-proxy", args)
    };
    let pod = PodSpec {
        service_account_name: Some(PROXY.into()),
        automount_service_account_token: Some(false),
        // Drain, then a margin before SIGKILL.
        termination_grace_period_seconds: Some(i64::from(proxy.drain_timeout_seconds) + 10),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".into(), "true".into()),
        ("prometheus.io/port".into(), port.to_string()),
        ("prometheus.io/path".into(), "/stats/prometheus".into()),
    ]);
    daemon_set(
        values,
        PROXY,
        // The new proxy starts beside the old one and takes over every pod's listening
        // sockets, which the agent hands it, before the old one drains.
        RollingUpdateDaemonSet {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        },
        annotations,
        pod,
    )
}
