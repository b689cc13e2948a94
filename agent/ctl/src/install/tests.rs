//! The rendered objects: what every profile must hold (capabilities, host paths, priority
//! class, tolerations, GKE's ResourceQuota), and that the YAML reads back into the same
//! k8s-openapi objects.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PodSpec, ResourceQuota};

use super::overlay::{self, Sources};
use super::profiles;
use super::render::{self, Object};

fn objects(profile: &str, sets: &[&str]) -> Vec<Object> {
    let values = overlay::values(&Sources {
        profile: profile.into(),
        files: Vec::new(),
        sets: sets.iter().map(|s| (*s).to_owned()).collect(),
    })
    .unwrap();
    render::render(&values)
}

fn daemon_set<'a>(objects: &'a [Object], name: &str) -> &'a DaemonSet {
    objects
        .iter()
        .find_map(|o| match o {
            Object::DaemonSet(ds) if ds.metadata.name.as_deref() == Some(name) => Some(ds),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no DaemonSet {name}"))
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().unwrap()
}

/// (volume name, host path, mount path, read only, propagation) of a DaemonSet's host paths.
fn host_mounts(ds: &DaemonSet) -> Vec<(String, String, String, bool, Option<String>)> {
    let pod = pod(ds);
    let container = &pod.containers[0];
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let host = v.host_path.as_ref()?;
            let mount = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == v.name)?;
            Some((
                v.name.clone(),
                host.path.clone(),
                mount.mount_path.clone(),
                mount.read_only.unwrap_or(false),
                mount.mount_propagation.clone(),
            ))
        })
        .collect()
}

#[test]
fn every_profile_reads_back_into_the_same_objects() {
    let shunt_ca: &[&str] = &["ca.mode=shunt"];
    let renders = profiles::names()
        .into_iter()
        .map(|name| (name, &[][..]))
        .chain([("default", shunt_ca)]);
    for (name, sets) in renders {
        let rendered = objects(name, sets);
        let text = render::to_yaml(&rendered, "test").unwrap();
        let documents: Vec<&str> = text.split("\n---\n").skip(1).collect();
        assert_eq!(documents.len(), rendered.len(), "profile {name}");
        for (document, object) in documents.iter().zip(&rendered) {
            let back = match object {
                Object::Namespace(_) => Object::Namespace(serde_yaml::from_str(document).unwrap()),
                Object::ResourceQuota(_) => {
                    Object::ResourceQuota(serde_yaml::from_str(document).unwrap())
                }
                Object::ServiceAccount(_) => {
                    Object::ServiceAccount(serde_yaml::from_str(document).unwrap())
                }
                Object::ClusterRole(_) => {
                    Object::ClusterRole(serde_yaml::from_str(document).unwrap())
                }
                Object::ClusterRoleBinding(_) => {
                    Object::ClusterRoleBinding(serde_yaml::from_str(document).unwrap())
                }
                Object::Role(_) => Object::Role(serde_yaml::from_str(document).unwrap()),
                Object::RoleBinding(_) => {
                    Object::RoleBinding(serde_yaml::from_str(document).unwrap())
                }
                Object::ConfigMap(_) => Object::ConfigMap(serde_yaml::from_str(document).unwrap()),
                Object::Service(_) => {
                    Object::Service(Box::new(serde_yaml::from_str(document).unwrap()))
                }
                Object::Deployment(_) => {
                    Object::Deployment(Box::new(serde_yaml::from_str(document).unwrap()))
                }
                Object::DaemonSet(_) => {
                    Object::DaemonSet(Box::new(serde_yaml::from_str(document).unwrap()))
                }
                Object::CustomResourceDefinition(_) => Object::CustomResourceDefinition(Box::new(
                    serde_yaml::from_str(document).unwrap(),
                )),
            };
            assert_eq!(
                &back,
                object,
                "profile {name}: {} {}",
                object.kind(),
                object.name()
            );
        }
    }
}

#[test]
fn daemon_sets_hold_their_invariants_in_every_profile() {
    for name in profiles::names() {
        let rendered = objects(name, &[]);
        let values = overlay::values(&Sources::profile(name)).unwrap();
        for ds_name in [render::AGENT, render::PROXY] {
            let ds = daemon_set(&rendered, ds_name);
            let pod = pod(ds);
            assert_eq!(
                pod.priority_class_name.as_deref(),
                Some("system-node-critical"),
                "{name}/{ds_name}"
            );
            let tolerations = pod.tolerations.as_ref().unwrap();
            assert!(
                tolerations
                    .iter()
                    .any(|t| t.operator.as_deref() == Some("Exists")
                        && t.key.is_none()
                        && t.effect.is_none()),
                "{name}/{ds_name}: tolerates every taint"
            );
            assert_eq!(
                pod.node_selector
                    .as_ref()
                    .unwrap()
                    .get("kubernetes.io/os")
                    .map(String::as_str),
                Some("linux")
            );
            assert_ne!(
                pod.host_network,
                Some(true),
                "{name}/{ds_name}: no hostNetwork"
            );
            let container = &pod.containers[0];
            assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
            let requests = container
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap();
            assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        }

        let proxy = daemon_set(&rendered, render::PROXY);
        let strategy = proxy
            .spec
            .update_strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(
            (strategy.max_surge.clone(), strategy.max_unavailable.clone()),
            (
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
            )
        );
        let security = pod(proxy).containers[0].security_context.as_ref().unwrap();
        assert_ne!(security.privileged, Some(true));
        let caps = security.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.add.as_deref().unwrap(),
            ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"],
            "{name}: the proxy's capabilities, only"
        );
        assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
        assert_eq!(
            host_mounts(proxy),
            [(
                "run".into(),
                "/run/shunt".into(),
                "/run/shunt".into(),
                false,
                None
            )],
            "{name}: the proxy's only host path is the UDS dir"
        );
        assert_eq!(pod(proxy).automount_service_account_token, Some(false));

        let agent = daemon_set(&rendered, render::AGENT);
        let strategy = agent
            .spec
            .update_strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(
            strategy.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        let security = pod(agent).containers[0].security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(true));
        let reason = agent
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert!(reason[render::PRIVILEGED_REASON_ANNOTATION].contains("Bidirectional"));
        let bidirectional = Some("Bidirectional".to_owned());
        let host_to_container = Some("HostToContainer".to_owned());
        assert_eq!(
            host_mounts(agent),
            [
                (
                    "bpffs".into(),
                    "/sys/fs/bpf".into(),
                    "/sys/fs/bpf".into(),
                    false,
                    bidirectional
                ),
                (
                    "cgroup".into(),
                    "/sys/fs/cgroup".into(),
                    "/host/sys/fs/cgroup".into(),
                    true,
                    None
                ),
                (
                    "proc".into(),
                    "/proc".into(),
                    "/host/proc".into(),
                    true,
                    None
                ),
                (
                    "netns".into(),
                    "/var/run/netns".into(),
                    "/var/run/netns".into(),
                    false,
                    host_to_container
                ),
                (
                    "cni-bin".into(),
                    values.cni.bin_dir.clone(),
                    format!("/host{}", values.cni.bin_dir),
                    false,
                    None
                ),
                (
                    "cni-conf".into(),
                    values.cni.conf_dir.clone(),
                    format!("/host{}", values.cni.conf_dir),
                    false,
                    None
                ),
                (
                    "run".into(),
                    "/run/shunt".into(),
                    "/run/shunt".into(),
                    false,
                    None
                ),
            ],
            "{name}: the agent's host paths"
        );
        let args = pod(agent).containers[0].args.as_ref().unwrap();
        assert!(
            args.contains(&"--cgroup=/host/sys/fs/cgroup".to_owned()),
            "{args:?}"
        );
    }
}

#[test]
fn gke_has_the_resource_quota_for_its_priority_class() {
    let quota = |objects: &[Object]| -> Option<ResourceQuota> {
        objects.iter().find_map(|o| match o {
            Object::ResourceQuota(q) => Some(q.clone()),
            _ => None,
        })
    };
    assert!(quota(&objects("default", &[])).is_none());
    let gke = objects("gke", &[]);
    let quota = quota(&gke).expect("the gke profile renders a ResourceQuota");
    assert_eq!(quota.metadata.namespace.as_deref(), Some("shunt-system"));
    let spec = quota.spec.unwrap();
    let scope = &spec.scope_selector.unwrap().match_expressions.unwrap()[0];
    assert_eq!(
        (
            scope.scope_name.as_str(),
            scope.operator.as_str(),
            scope.values.as_deref()
        ),
        (
            "PriorityClass",
            "In",
            Some(&["system-node-critical".to_owned()][..])
        )
    );
    assert!(spec.hard.unwrap().contains_key("pods"));
    let agent = daemon_set(&gke, render::AGENT);
    let bin = host_mounts(agent)
        .into_iter()
        .find(|m| m.0 == "cni-bin")
        .unwrap();
    assert_eq!(bin.1, "/home/kubernetes/bin");
}

#[test]
fn values_reach_the_objects() {
    let rendered = objects(
        "default",
        &[
            "meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY",
            "meshConfig.accessLogFile=/dev/stdout",
            "ca.mode=none",
            "agent.sockmapShortcut=true",
            "proxy.workerThreads=2",
            "image.repository=registry.test/shunt",
        ],
    );
    let config = rendered
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c),
            _ => None,
        })
        .unwrap();
    // MeshConfig itself: the agent's --mesh-config, under the cluster's istio-system/istio.
    let mesh: serde_yaml::Value =
        serde_yaml::from_str(&config.data.as_ref().unwrap()["mesh.yaml"]).unwrap();
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(mesh["accessLogFile"], "/dev/stdout");

    let proxy = &pod(daemon_set(&rendered, render::PROXY)).containers[0];
    let args = proxy.args.as_ref().unwrap();
    assert!(args.contains(&"--worker-threads=2".to_owned()));
    assert!(
        !args.iter().any(|a| a.starts_with("--ca-")),
        "ca.mode=none: {args:?}"
    );
    assert_eq!(proxy.image.as_deref(), Some("registry.test/shunt:0.1.0"));
    let agent = &pod(daemon_set(&rendered, render::AGENT)).containers[0];
    let args = agent.args.as_ref().unwrap();
    for arg in [
        "--sockmap-shortcut",
        "--source=kube",
        "--mesh-config=/etc/shunt/config/mesh.yaml",
    ] {
        assert!(args.contains(&arg.to_owned()), "{arg}: {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--config-dir")),
        "{args:?}"
    );
}

#[test]
fn eks_keeps_off_fargate() {
    let rendered = objects("eks", &[]);
    for name in [render::AGENT, render::PROXY] {
        let affinity = pod(daemon_set(&rendered, name)).affinity.clone().unwrap();
        let terms = affinity
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let expression = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(expression.key, "eks.amazonaws.com/compute-type");
        assert_eq!(expression.operator, "NotIn");
        assert_eq!(
            expression.values.as_deref(),
            Some(&["fargate".to_owned()][..])
        );
    }
}

#[test]
fn crds_come_first_and_istios_can_be_left_out() {
    let crd_names = |objects: &[Object]| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o.kind() == "CustomResourceDefinition")
            .map(|o| o.name().to_owned())
            .collect()
    };
    let all = objects("default", &[]);
    assert_eq!(crd_names(&all).len(), 8);
    assert!(
        all.iter()
            .take(8)
            .all(|o| o.kind() == "CustomResourceDefinition"),
        "the kinds apply before the agent that lists them"
    );
    let without = objects("default", &["crds.istio=false"]);
    assert_eq!(crd_names(&without), ["ratelimitpolicies.shunt.io"]);
}

/// `ca.mode=shunt`: the CA's one-replica Deployment without privileges, its Service on
/// 15012, its account and exactly the verbs it uses, and the proxy pointed at it.
#[test]
fn shunts_own_ca_is_rendered_with_its_service_and_roles() {
    use k8s_openapi::api::rbac::v1::PolicyRule;

    let rendered = objects("default", &["ca.mode=shunt", "namespace=mesh"]);
    let find = |kind: &str, namespace: Option<&str>, name: &str| {
        rendered
            .iter()
            .find(|o| {
                o.kind() == kind
                    && o.name() == name
                    && o.metadata().namespace.as_deref() == namespace
            })
            .unwrap_or_else(|| panic!("no {kind} {namespace:?}/{name}"))
    };
    let Object::Deployment(deployment) = find("Deployment", Some("mesh"), render::CA) else {
        unreachable!()
    };
    assert_eq!(deployment.spec.replicas, Some(1));
    let ca_pod = deployment.spec.template.spec.as_ref().unwrap();
    assert_eq!(ca_pod.service_account_name.as_deref(), Some(render::CA));
    assert!(ca_pod.host_network.is_none() && ca_pod.priority_class_name.is_none());
    let ca = &ca_pod.containers[0];
    let args = ca.args.as_ref().unwrap();
    for arg in [
        "--source=kube",
        "--ca-only",
        "--ca-listen=0.0.0.0:15012",
        "--ca-dns-name=shunt-ca.mesh.svc",
        "--ca-root-config-map=istio-ca-root-cert",
        "--ca-token-audience=istio-ca",
        "--ca-trusted-node-account=mesh/shunt-proxy",
    ] {
        assert!(args.contains(&arg.to_owned()), "{arg} in {args:?}");
    }
    let security = ca.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert!(security.capabilities.as_ref().unwrap().add.is_none());
    assert!(ca.readiness_probe.is_some() && ca.liveness_probe.is_some());
    assert!(ca.resources.as_ref().unwrap().requests.is_some());
    assert!(
        ca_pod
            .volumes
            .iter()
            .flatten()
            .all(|v| v.host_path.is_none()),
        "no host paths"
    );

    let Object::Service(service) = find("Service", Some("mesh"), render::CA) else {
        unreachable!()
    };
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.ports.as_ref().unwrap()[0].port, 15012);
    assert_eq!(
        spec.selector, deployment.spec.selector.match_labels,
        "the Service selects the CA's pods"
    );
    find("ServiceAccount", Some("mesh"), render::CA);

    // (resource, resourceNames, verbs) of each rule.
    let rules = |rules: &[PolicyRule]| -> Vec<(String, Vec<String>, Vec<String>)> {
        rules
            .iter()
            .flat_map(|r| {
                r.resources.iter().flatten().map(move |resource| {
                    (
                        resource.clone(),
                        r.resource_names.clone().unwrap_or_default(),
                        r.verbs.clone(),
                    )
                })
            })
            .collect()
    };
    let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let Object::ClusterRole(cluster) = find("ClusterRole", None, render::CA) else {
        unreachable!()
    };
    assert_eq!(
        rules(cluster.rules.as_deref().unwrap()),
        [
            ("tokenreviews".into(), vec![], owned(&["create"])),
            ("pods".into(), vec![], owned(&["get", "list", "watch"])),
        ]
    );
    let Object::Role(istio) = find("Role", Some("istio-system"), "shunt-ca-istio") else {
        unreachable!()
    };
    assert_eq!(
        rules(istio.rules.as_deref().unwrap()),
        [
            (
                "secrets".into(),
                owned(&["cacerts", "istio-ca-secret"]),
                owned(&["list", "watch"])
            ),
            (
                "configmaps".into(),
                owned(&["istio"]),
                owned(&["list", "watch"])
            ),
        ]
    );
    let Object::Role(root) = find("Role", Some("mesh"), render::CA) else {
        unreachable!()
    };
    assert_eq!(
        rules(root.rules.as_deref().unwrap()),
        [(
            "configmaps".into(),
            owned(&["istio-ca-root-cert"]),
            owned(&["patch"])
        )]
    );
    for (namespace, name, role) in [
        (None, render::CA, "ClusterRole"),
        (Some("istio-system"), "shunt-ca-istio", "Role"),
        (Some("mesh"), render::CA, "Role"),
    ] {
        let kind = if role == "Role" {
            "RoleBinding"
        } else {
            "ClusterRoleBinding"
        };
        let (role_ref, subjects) = match find(kind, namespace, name) {
            Object::RoleBinding(b) => (&b.role_ref, &b.subjects),
            Object::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects),
            _ => unreachable!(),
        };
        assert_eq!(
            (role_ref.kind.as_str(), role_ref.name.as_str()),
            (role, name)
        );
        let subject = &subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (render::CA, Some("mesh"))
        );
    }

    let proxy = pod(daemon_set(&rendered, render::PROXY));
    let args = proxy.containers[0].args.as_ref().unwrap();
    for arg in [
        "--ca-address=shunt-ca.mesh.svc:15012",
        "--ca-server-name=shunt-ca.mesh.svc",
        "--ca-root-cert=/var/run/secrets/istio/root-cert.pem",
    ] {
        assert!(args.contains(&arg.to_owned()), "{arg} in {args:?}");
    }
    let root = proxy
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .unwrap();
    assert_eq!(
        root.name, "istio-ca-root-cert",
        "the ConfigMap the CA publishes"
    );

    let default = objects("default", &[]);
    assert!(
        !default.iter().any(|o| o.name() == render::CA),
        "the default (istiod) renders no CA"
    );
}
