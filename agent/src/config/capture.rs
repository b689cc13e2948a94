//! Which pods shunt captures, as Istio users expect, and what capture needs to know of them.
//!
//! Opt-out wins over opt-in. Every decision carries its reason, which `shuntctl workloads`
//! shows, so an operator can tell exactly which label or annotation decided.

use shunt_mesh::ids::PodUid;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use shunt_api::control::PodRole;
use shunt_api::k8s::{Namespace, NodeName, Pod, PodPhase};

/// What the agent sets on each pod it captures (through `pods/status`), and removes when it
/// stops; other nodes read it to know the pod takes HBONE.
pub const CAPTURED_ANNOTATION: &str = "shunt.io/captured";
/// What istio-cni sets (`enabled`) on the pods ztunnel captures: HBONE peers too.
pub const AMBIENT_REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// The annotation naming a captured pod's network namespace file.
pub const NETNS_ANNOTATION: &str = "shunt.io/netns";
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// The pod annotation holding Istio's ProxyConfig for the pod's proxy (a gateway's trusted
/// hops are read from it: `super::mesh::num_trusted_proxies`).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// Where a capture rule looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    PodLabel,
    PodAnnotation,
    NamespaceLabel,
}

/// One label or annotation value that decides capture.
struct Rule {
    scope: Scope,
    key: &'static str,
    value: &'static str,
}

const fn rule(scope: Scope, key: &'static str, value: &'static str) -> Rule {
    Rule { scope, key, value }
}

/// Checked first, in this order: any match leaves the pod alone.
const OPT_OUT: [Rule; 8] = [
    rule(Scope::PodLabel, "sidecar.istio.io/inject", "false"),
    rule(Scope::PodAnnotation, "sidecar.istio.io/inject", "false"),
    rule(Scope::PodLabel, "shunt.io/capture", "disabled"),
    rule(Scope::PodAnnotation, "shunt.io/capture", "disabled"),
    rule(Scope::PodLabel, "istio.io/dataplane-mode", "none"),
    rule(Scope::NamespaceLabel, "shunt.io/capture", "disabled"),
    rule(Scope::NamespaceLabel, "istio-injection", "disabled"),
    rule(Scope::NamespaceLabel, "istio.io/dataplane-mode", "none"),
];

/// Then these: the first match captures the pod.
const OPT_IN: [Rule; 7] = [
    rule(Scope::PodLabel, "sidecar.istio.io/inject", "true"),
    rule(Scope::PodLabel, "istio-injection", "enabled"),
    rule(Scope::PodLabel, "istio.io/dataplane-mode", "ambient"),
    rule(Scope::PodLabel, "shunt.io/capture", "enabled"),
    rule(Scope::NamespaceLabel, "istio-injection", "enabled"),
    rule(Scope::NamespaceLabel, "istio.io/dataplane-mode", "ambient"),
    rule(Scope::NamespaceLabel, "shunt.io/capture", "enabled"),
];

/// Whether a pod's labels (and its namespace's) ask for capture, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub capture: bool,
    pub reason: String,
}

/// Applies the opt-out rules, then the opt-in rules. `namespace` is `None` when the config
/// has no Namespace object for the pod's namespace.
#[must_use]
pub fn decide(pod: &Pod, namespace: Option<&Namespace>) -> Decision {
    if pod.spec.host_network {
        return Decision {
            capture: false,
            reason: "not captured: spec.hostNetwork is true (the pod shares the node's network)"
                .to_owned(),
        };
    }
    let ns_name = pod.metadata.namespace();
    let lookup = |rule: &Rule| {
        let map = match rule.scope {
            Scope::PodLabel => &pod.metadata.labels,
            Scope::PodAnnotation => &pod.metadata.annotations,
            Scope::NamespaceLabel => &namespace?.metadata.labels,
        };
        (map.get(rule.key).map(String::as_str) == Some(rule.value)).then(|| {
            let holder = match rule.scope {
                Scope::PodLabel => "pod label".to_owned(),
                Scope::PodAnnotation => "pod annotation".to_owned(),
                Scope::NamespaceLabel => format!("namespace {ns_name} label"),
            };
            format!("{holder} {}={}", rule.key, rule.value)
        })
    };
    if let Some(why) = OPT_OUT.iter().find_map(lookup) {
        return Decision {
            capture: false,
            reason: format!("opted out by {why}"),
        };
    }
    if let Some(why) = OPT_IN.iter().find_map(lookup) {
        return Decision {
            capture: true,
            reason: format!("opted in by {why}"),
        };
    }
    Decision {
        capture: false,
        reason: format!(
            "not opted in: no istio-injection=enabled, istio.io/dataplane-mode=ambient or \
             shunt.io/capture=enabled label on the pod or namespace {ns_name}"
        ),
    }
}

/// Every pod annotation the agent reads, of any pod (its capture plan and its workload):
/// what the Kubernetes source keeps of another node's pods.
#[must_use]
pub fn annotations_read() -> Vec<&'static str> {
    let mut keys: Vec<&str> = OPT_OUT
        .iter()
        .chain(&OPT_IN)
        .filter(|rule| matches!(rule.scope, Scope::PodAnnotation))
        .map(|rule| rule.key)
        .collect();
    keys.extend([
        NETNS_ANNOTATION,
        EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
        EXCLUDE_INBOUND_PORTS_ANNOTATION,
        PROXY_CONFIG_ANNOTATION,
        CAPTURED_ANNOTATION,
        AMBIENT_REDIRECTION_ANNOTATION,
    ]);
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Where a captured pod's network namespace comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSource {
    /// `shunt.io/netns`: local mode names the netns file.
    Annotation(PathBuf),
    /// Nothing names it, as for a real cluster's pods: the agent's netns discovery finds it
    /// (`shunt-cni`'s ADD, or the `/proc` scan; `crate::discovery`).
    Discovered,
}

/// What capture needs of a captured pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    pub netns: NetnsSource,
    /// `status.podIP`. `None` only with [`NetnsSource::Discovered`]: kubelet sets a pod's IP
    /// after its sandbox is up, so the CNI plugin's ADD (the primary CNI's result) brings it.
    pub ip: Option<Ipv4Addr>,
    /// Sorted, without duplicates.
    pub excluded_outbound_ports: Vec<u16>,
    /// Sorted, without duplicates.
    pub excluded_inbound_ports: Vec<u16>,
    /// PeerAuthentication `STRICT` on any of its ports, or an AuthorizationPolicy that can
    /// deny (ALLOW, DENY, CUSTOM, or a rejected one standing in): with the proxy's listener
    /// missing, the kernel drops inbound connections instead of letting them reach the app.
    pub fail_closed: bool,
    /// A captured app pod, or a gateway pod: handed to the proxy, which serves the Gateways'
    /// ports in its netns, with no capture installed (its traffic is not app traffic).
    pub role: PodRole,
}

/// One pod as the agent plans to treat it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub uid: PodUid,
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    /// The node the pod runs on: `spec.nodeName`, else the agent's.
    pub node: String,
    /// Whether that is this agent's node. The agent captures only its own node's pods; the
    /// others' capture is decided the same way, for the mesh, and left to their node.
    pub on_this_node: bool,
    /// Why the pod is captured or not.
    pub reason: String,
    /// `Some` exactly when the pod is captured (by the shunt of its node).
    pub capture: Option<CaptureSpec>,
}

impl PodPlan {
    /// Captured by the shunt of the pod's node (as an app pod: a gateway pod's traffic is not
    /// captured).
    #[must_use]
    pub fn captured(&self) -> bool {
        self.capture
            .as_ref()
            .is_some_and(|spec| spec.role == PodRole::App)
    }

    /// What this agent hands to the proxy of the pod, when it is on this agent's node: a
    /// captured app pod's spec, or a gateway pod's.
    #[must_use]
    pub fn captured_here(&self) -> Option<&CaptureSpec> {
        self.capture.as_ref().filter(|_| self.on_this_node)
    }
}

/// A bad field of a pod, found while planning its capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Decides capture for `pod` and checks what capture needs, for an agent on node
/// `agent_node`. A captured pod that lacks its IP or netns, or has a bad excluded-ports
/// annotation, is not captured; the errors say why. A pod on another node is planned exactly
/// as one on this node (its `captured` is what its own node's agent decides), and marked as
/// not this node's.
#[must_use]
pub fn plan(
    pod: &Pod,
    namespace: Option<&Namespace>,
    agent_node: &NodeName,
) -> (PodPlan, Vec<FieldError>) {
    let decision = decide(pod, namespace);
    let annotations = &pod.metadata.annotations;
    let mut errors = Vec::new();
    // Checked whether or not the pod is captured: a typo should show before it matters.
    let outbound = excluded_ports(annotations, EXCLUDE_OUTBOUND_PORTS_ANNOTATION)
        .map_err(|e| errors.push(e))
        .ok();
    let inbound = excluded_ports(annotations, EXCLUDE_INBOUND_PORTS_ANNOTATION)
        .map_err(|e| errors.push(e))
        .ok();
    let ip = pod.status.pod_ip.map(|ip| ip.0);
    let mut reason = decision.reason;
    let mut capture = None;
    if decision.capture {
        let netns = netns_source(annotations).map_err(|e| errors.push(e)).ok();
        // A netns named by annotation is local mode's: the config must give the IP too.
        if ip.is_none() && matches!(netns, Some(NetnsSource::Annotation(_))) {
            errors.push(FieldError {
                field: "status.podIP".to_owned(),
                message: "required for a captured pod: the pod's IPv4 address".to_owned(),
            });
        }
        match (netns, outbound, inbound) {
            (Some(netns), Some(outbound), Some(inbound)) if errors.is_empty() => {
                if netns == NetnsSource::Discovered {
                    let what = if ip.is_none() {
                        "netns and IP come"
                    } else {
                        "netns comes"
                    };
                    reason = format!(
                        "{reason}; no {NETNS_ANNOTATION} annotation: the {what} from netns \
                         discovery (the CNI plugin or the /proc scan)"
                    );
                }
                capture = Some(CaptureSpec {
                    netns,
                    ip,
                    excluded_outbound_ports: outbound,
                    excluded_inbound_ports: inbound,
                    // Set once the mesh's PeerAuthentications are known (`Snapshot`).
                    fail_closed: false,
                    role: PodRole::App,
                });
            }
            _ => {
                let problems: Vec<_> = errors.iter().map(ToString::to_string).collect();
                reason = format!("{reason}, but not captured: {}", problems.join("; "));
            }
        }
    }
    let node = pod.spec.node_name.as_ref().unwrap_or(agent_node);
    let on_this_node = node == agent_node;
    if capture.is_some() && !on_this_node {
        reason = format!("{reason}; on node {node}, whose agent captures it");
    }
    let plan = PodPlan {
        uid: pod.uid(),
        namespace: pod.metadata.namespace().to_owned(),
        name: pod.metadata.name.clone(),
        ip,
        node: node.to_string(),
        on_this_node,
        reason,
        capture,
    };
    (plan, errors)
}

/// Makes `plan` a gateway pod's: `gateways` names what selects it (`Gateway edge/web`, ...).
/// A gateway pod is served whether or not it is opted in to capture; it needs its IP and
/// netns like a captured pod, and the errors say when it lacks them.
pub fn make_gateway(pod: &Pod, plan: &mut PodPlan, gateways: &[String]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let selected = format!("gateway pod (selected by {})", gateways.join(", "));
    if let Some(spec) = plan.capture.as_mut() {
        spec.role = PodRole::Gateway;
        spec.fail_closed = false;
        plan.reason = format!(
            "{selected}: its traffic is not captured; the proxy serves the Gateways' ports in \
             its netns"
        );
        return errors;
    }
    let netns = netns_source(&pod.metadata.annotations)
        .map_err(|e| errors.push(e))
        .ok();
    if plan.ip.is_none() && matches!(netns, Some(NetnsSource::Annotation(_))) {
        errors.push(FieldError {
            field: "status.podIP".to_owned(),
            message: "required for a gateway pod: the pod's IPv4 address".to_owned(),
        });
    }
    match netns {
        Some(netns) if errors.is_empty() => {
            plan.capture = Some(CaptureSpec {
                netns,
                ip: plan.ip,
                excluded_outbound_ports: Vec::new(),
                excluded_inbound_ports: Vec::new(),
                fail_closed: false,
                role: PodRole::Gateway,
            });
            plan.reason = format!("{selected}: the proxy serves the Gateways' ports in its netns");
        }
        _ => {
            let problems: Vec<_> = errors.iter().map(ToString::to_string).collect();
            plan.reason = format!("{selected}, but not served: {}", problems.join("; "));
        }
    }
    errors
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations.{key}")
}

/// `shunt.io/netns` when present (it must be an absolute path), else discovery.
fn netns_source(annotations: &BTreeMap<String, String>) -> Result<NetnsSource, FieldError> {
    match annotations.get(NETNS_ANNOTATION) {
        None => Ok(NetnsSource::Discovered),
        Some(path) if !path.starts_with('/') => Err(FieldError {
            field: annotation_field(NETNS_ANNOTATION),
            message: format!(
                "expected an absolute path such as /run/netns/NAME, got {path:?} (or leave \
                 the annotation out to have the agent discover the netns)"
            ),
        }),
        Some(path) => Ok(NetnsSource::Annotation(PathBuf::from(path))),
    }
}

/// Parses an Istio excluded-ports annotation (`"5432,6379"`); absent means none.
pub fn excluded_ports(
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Result<Vec<u16>, FieldError> {
    let Some(list) = annotations.get(key) else {
        return Ok(Vec::new());
    };
    let mut ports = Vec::new();
    for item in list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        match item.parse::<u16>() {
            Ok(port) if port != 0 => ports.push(port),
            _ => {
                return Err(FieldError {
                    field: annotation_field(key),
                    message: format!(
                        "{item:?} is not a port number 1-65535 (expected a comma-separated \
                         list such as \"5432,6379\")"
                    ),
                });
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// The workload name Istio reports (`source_workload`): the Deployment of a ReplicaSet-owned
/// pod (the ReplicaSet's name minus its `-<pod-template-hash>`), the owner of a pod with
/// another controller, else the pod's own name.
#[must_use]
pub fn workload_name(pod: &Pod) -> String {
    let owners = &pod.metadata.owner_references;
    let owner = owners
        .iter()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| owners.first());
    match owner {
        Some(owner) if owner.kind == "ReplicaSet" => match owner.name.rsplit_once('-') {
            Some((deployment, _hash)) if !deployment.is_empty() => deployment.to_owned(),
            _ => owner.name.clone(),
        },
        Some(owner) => owner.name.clone(),
        None => pod.metadata.name.clone(),
    }
}

/// Whether the pod may serve as a Service endpoint: yes unless its phase is known and not
/// Running, or its Ready condition is "False".
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    let running = pod
        .status
        .phase
        .is_none_or(|phase| phase == PodPhase::Running);
    let not_ready = pod
        .status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "False");
    running && !not_ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        let mut pod: Pod = serde_yaml::from_str(yaml).unwrap();
        pod.metadata.namespace.get_or_insert_with(|| "shop".into());
        pod
    }

    fn namespace(labels: &str) -> Namespace {
        serde_yaml::from_str(&format!("metadata: {{name: shop, labels: {{{labels}}}}}")).unwrap()
    }

    #[test]
    fn capture_decisions() {
        const NOT_OPTED_IN: &str = "not opted in: no istio-injection=enabled, \
            istio.io/dataplane-mode=ambient or shunt.io/capture=enabled label on the pod or \
            namespace shop";
        // (pod metadata extras, spec.hostNetwork, namespace labels or no Namespace, captured,
        // reason)
        let cases: &[(&str, bool, Option<&str>, bool, &str)] = &[
            ("", false, None, false, NOT_OPTED_IN),
            ("", false, Some(""), false, NOT_OPTED_IN),
            (
                "",
                false,
                Some("istio-injection: enabled"),
                true,
                "opted in by namespace shop label istio-injection=enabled",
            ),
            (
                "",
                false,
                Some("istio.io/dataplane-mode: ambient"),
                true,
                "opted in by namespace shop label istio.io/dataplane-mode=ambient",
            ),
            (
                "",
                false,
                Some("shunt.io/capture: enabled"),
                true,
                "opted in by namespace shop label shunt.io/capture=enabled",
            ),
            (
                "labels: {istio-injection: enabled}",
                false,
                None,
                true,
                "opted in by pod label istio-injection=enabled",
            ),
            (
                "labels: {istio.io/dataplane-mode: ambient}",
                false,
                None,
                true,
                "opted in by pod label istio.io/dataplane-mode=ambient",
            ),
            (
                "labels: {shunt.io/capture: enabled}",
                false,
                None,
                true,
                "opted in by pod label shunt.io/capture=enabled",
            ),
            (
                "labels: {sidecar.istio.io/inject: \"true\"}",
                false,
                None,
                true,
                "opted in by pod label sidecar.istio.io/inject=true",
            ),
            // Opt-out beats opt-in, from the pod or from the namespace.
            (
                "labels: {sidecar.istio.io/inject: \"false\"}",
                false,
                Some("istio-injection: enabled"),
                false,
                "opted out by pod label sidecar.istio.io/inject=false",
            ),
            (
                "annotations: {sidecar.istio.io/inject: \"false\"}",
                false,
                Some("istio-injection: enabled"),
                false,
                "opted out by pod annotation sidecar.istio.io/inject=false",
            ),
            (
                "labels: {shunt.io/capture: disabled}",
                false,
                Some("istio-injection: enabled"),
                false,
                "opted out by pod label shunt.io/capture=disabled",
            ),
            (
                "annotations: {shunt.io/capture: disabled}",
                false,
                Some("istio-injection: enabled"),
                false,
                "opted out by pod annotation shunt.io/capture=disabled",
            ),
            (
                "labels: {istio.io/dataplane-mode: none}",
                false,
                Some("istio-injection: enabled"),
                false,
                "opted out by pod label istio.io/dataplane-mode=none",
            ),
            (
                "labels: {shunt.io/capture: enabled}",
                false,
                Some("shunt.io/capture: disabled"),
                false,
                "opted out by namespace shop label shunt.io/capture=disabled",
            ),
            (
                "labels: {istio-injection: enabled}",
                false,
                Some("istio-injection: disabled"),
                false,
                "opted out by namespace shop label istio-injection=disabled",
            ),
            (
                "labels: {sidecar.istio.io/inject: \"true\"}",
                false,
                Some("istio.io/dataplane-mode: none"),
                false,
                "opted out by namespace shop label istio.io/dataplane-mode=none",
            ),
            (
                "labels: {shunt.io/capture: enabled}",
                true,
                Some("istio-injection: enabled"),
                false,
                "not captured: spec.hostNetwork is true (the pod shares the node's network)",
            ),
            // Only the exact values count.
            (
                "labels: {istio-injection: Enabled, sidecar.istio.io/inject: \"no\"}",
                false,
                None,
                false,
                NOT_OPTED_IN,
            ),
        ];
        for (meta, host_network, ns_labels, captured, reason) in cases {
            let pod = pod(&format!(
                "metadata: {{name: p, {meta}}}\nspec: {{hostNetwork: {host_network}}}"
            ));
            let ns = ns_labels.map(namespace);
            let decision = decide(&pod, ns.as_ref());
            assert_eq!(
                (decision.capture, decision.reason.as_str()),
                (*captured, *reason),
                "pod {meta:?}, hostNetwork {host_network}, namespace {ns_labels:?}"
            );
        }
    }

    #[test]
    fn excluded_ports_parse_or_name_the_annotation() {
        let cases: &[(&str, Result<&[u16], &str>)] = &[
            ("5432", Ok(&[5432])),
            ("6379, 5432,5432,", Ok(&[5432, 6379])),
            ("", Ok(&[])),
            (
                "5432,x",
                Err(
                    "\"x\" is not a port number 1-65535 (expected a comma-separated list such as \"5432,6379\")",
                ),
            ),
            (
                "0",
                Err(
                    "\"0\" is not a port number 1-65535 (expected a comma-separated list such as \"5432,6379\")",
                ),
            ),
            (
                "70000",
                Err(
                    "\"70000\" is not a port number 1-65535 (expected a comma-separated list such as \"5432,6379\")",
                ),
            ),
        ];
        for (value, want) in cases {
            let annotations = BTreeMap::from([(
                EXCLUDE_INBOUND_PORTS_ANNOTATION.to_owned(),
                (*value).to_owned(),
            )]);
            let got = excluded_ports(&annotations, EXCLUDE_INBOUND_PORTS_ANNOTATION);
            match (got, want) {
                (Ok(ports), Ok(want)) => assert_eq!(ports, *want, "{value:?}"),
                (Err(e), Err(want)) => {
                    assert_eq!(
                        e.field,
                        "metadata.annotations.traffic.sidecar.istio.io/excludeInboundPorts"
                    );
                    assert_eq!(e.message, *want, "{value:?}");
                }
                (got, _) => panic!("{value:?}: got {got:?}"),
            }
        }
        assert_eq!(
            excluded_ports(&BTreeMap::new(), EXCLUDE_OUTBOUND_PORTS_ANNOTATION),
            Ok(vec![])
        );
    }

    #[test]
    fn plans_check_what_a_captured_pod_needs() {
        const OPTED_IN: &str = "opted in by pod label shunt.io/capture=enabled";
        let captured = "labels: {shunt.io/capture: enabled}";
        let discovered = |ip: Option<Ipv4Addr>| CaptureSpec {
            netns: NetnsSource::Discovered,
            ip,
            excluded_outbound_ports: vec![],
            excluded_inbound_ports: vec![],
            fail_closed: false,
            role: PodRole::App,
        };
        /// The capture spec and the reason's tail after `OPTED_IN`, or the fields of the
        /// errors.
        type Want = Result<(CaptureSpec, &'static str), &'static [&'static str]>;
        // (metadata extras, status, expected)
        let cases: &[(&str, &str, Want)] = &[
            (
                "annotations: {shunt.io/netns: /run/netns/a, traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\", traffic.sidecar.istio.io/excludeInboundPorts: \"9000,8000\"}",
                "{podIP: 10.0.0.5}",
                Ok((
                    CaptureSpec {
                        netns: NetnsSource::Annotation("/run/netns/a".into()),
                        ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                        excluded_outbound_ports: vec![5432],
                        excluded_inbound_ports: vec![8000, 9000],
                        fail_closed: false,
                        role: PodRole::App,
                    },
                    "",
                )),
            ),
            // Local mode names the netns, so it must name the IP too.
            (
                "annotations: {shunt.io/netns: /run/netns/a}",
                "{}",
                Err(&["status.podIP"]),
            ),
            // A real cluster's pod: discovery finds the netns.
            (
                "annotations: {}",
                "{podIP: 10.0.0.5}",
                Ok((
                    discovered(Some(Ipv4Addr::new(10, 0, 0, 5))),
                    "; no shunt.io/netns annotation: the netns comes from netns discovery \
                     (the CNI plugin or the /proc scan)",
                )),
            ),
            // Its sandbox not up yet: the CNI plugin's ADD brings the IP as well.
            (
                "annotations: {}",
                "{}",
                Ok((
                    discovered(None),
                    "; no shunt.io/netns annotation: the netns and IP come from netns \
                     discovery (the CNI plugin or the /proc scan)",
                )),
            ),
            (
                "annotations: {shunt.io/netns: run/netns/a}",
                "{podIP: 10.0.0.5}",
                Err(&["metadata.annotations.shunt.io/netns"]),
            ),
            (
                "annotations: {shunt.io/netns: /run/netns/a, traffic.sidecar.istio.io/excludeOutboundPorts: \"db\"}",
                "{podIP: 10.0.0.5}",
                Err(&["metadata.annotations.traffic.sidecar.istio.io/excludeOutboundPorts"]),
            ),
            (
                "annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: \"db\"}",
                "{}",
                Err(&["metadata.annotations.traffic.sidecar.istio.io/excludeOutboundPorts"]),
            ),
        ];
        for (meta, status, want) in cases {
            let pod = pod(&format!(
                "metadata: {{name: p, {captured}, {meta}}}\nstatus: {status}"
            ));
            let (plan, errors) = plan(&pod, None, &NodeName::default());
            assert_eq!(plan.uid, "shop/p");
            match want {
                Ok((spec, tail)) => {
                    assert_eq!(errors, vec![], "{meta}");
                    assert_eq!(plan.capture.as_ref(), Some(spec));
                    assert_eq!(
                        plan.reason,
                        format!("{OPTED_IN}{tail}"),
                        "{meta} / {status}"
                    );
                }
                Err(fields) => {
                    let got: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                    assert_eq!(&got, fields, "{meta} / {status}");
                    assert!(!plan.captured());
                    assert!(
                        plan.reason
                            .starts_with(&format!("{OPTED_IN}, but not captured: "))
                            && plan.reason.contains(fields[0]),
                        "{}",
                        plan.reason
                    );
                }
            }
        }
    }

    #[test]
    fn an_agent_captures_only_its_own_nodes_pods() {
        const CAPTURED: &str = "labels: {shunt.io/capture: enabled}, \
            annotations: {shunt.io/netns: /run/netns/p}";
        const NOT_OPTED_IN: &str = "labels: {}";
        /// The pod's node, whether it is this agent's, whether this agent captures it.
        type Placed = (&'static str, bool, bool);
        // (pod metadata, spec.nodeName, agent's --node-name, captured (by its node's shunt),
        // placed)
        let cases: &[(&str, Option<&str>, &str, bool, Placed)] = &[
            // Today's single-node configs: no node names anywhere.
            (CAPTURED, None, "local", true, ("local", true, true)),
            // A pod without nodeName is the agent's, whatever the agent is called.
            (CAPTURED, None, "node-1", true, ("node-1", true, true)),
            (
                CAPTURED,
                Some("\"\""),
                "node-1",
                true,
                ("node-1", true, true),
            ),
            (
                CAPTURED,
                Some("node-0"),
                "node-0",
                true,
                ("node-0", true, true),
            ),
            // Another node's pod is captured by that node's agent, not by this one.
            (
                CAPTURED,
                Some("node-1"),
                "node-0",
                true,
                ("node-1", false, false),
            ),
            (
                CAPTURED,
                Some("node-1"),
                "local",
                true,
                ("node-1", false, false),
            ),
            (
                NOT_OPTED_IN,
                Some("node-1"),
                "node-0",
                false,
                ("node-1", false, false),
            ),
            (
                NOT_OPTED_IN,
                Some("node-0"),
                "node-0",
                false,
                ("node-0", true, false),
            ),
        ];
        for (meta, node_name, agent, captured, (pod_node, on_this_node, here)) in cases {
            let spec = node_name.map_or_else(String::new, |n| format!("nodeName: {n}"));
            let pod = pod(&format!(
                "metadata: {{name: p, {meta}}}\nspec: {{{spec}}}\nstatus: {{podIP: 10.0.0.5}}"
            ));
            let (plan, errors) = plan(&pod, None, &NodeName::new(agent).unwrap());
            let case = format!("{meta} / nodeName {node_name:?} / agent {agent}");
            assert_eq!(errors, vec![], "{case}");
            assert_eq!(
                (
                    plan.captured(),
                    plan.node.as_str(),
                    plan.on_this_node,
                    plan.captured_here().is_some()
                ),
                (*captured, *pod_node, *on_this_node, *here),
                "{case}"
            );
        }
    }

    #[test]
    fn another_nodes_captured_pod_says_whose_agent_captures_it() {
        let pod = pod("metadata: {name: p, labels: {shunt.io/capture: enabled}, \
             annotations: {shunt.io/netns: /run/netns/p}}\n\
             spec: {nodeName: node-1}\nstatus: {podIP: 10.0.0.5}");
        let (plan, _) = plan(&pod, None, &NodeName::new("node-0").unwrap());
        assert_eq!(
            plan.reason,
            "opted in by pod label shunt.io/capture=enabled; on node node-1, whose agent \
             captures it"
        );
    }

    #[test]
    fn node_names_are_checked() {
        for (name, ok) in [
            ("node-0", true),
            ("ip-10-0-0-1.ec2.internal", true),
            ("local", true),
            ("Node-0", false),
            ("-node", false),
            ("node-", false),
            ("a..b", false),
            ("node_0", false),
        ] {
            assert_eq!(NodeName::new(name).is_ok(), ok, "{name:?}");
            let yaml = format!("metadata: {{name: p}}\nspec: {{nodeName: {name:?}}}");
            let parsed: Result<Pod, _> = serde_yaml::from_str(&yaml);
            assert_eq!(parsed.is_ok(), ok, "{yaml}");
        }
        assert_eq!(
            NodeName::default().as_str(),
            shunt_api::k8s::DEFAULT_NODE_NAME
        );
        assert!(NodeName::new(shunt_api::k8s::DEFAULT_NODE_NAME).is_ok());
    }

    #[test]
    fn an_uncaptured_pod_needs_no_netns_but_its_annotations_are_still_checked() {
        let pod = pod(
            "metadata: {name: p, annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"x\"}}",
        );
        let (plan, errors) = plan(&pod, None, &NodeName::default());
        assert!(!plan.captured());
        assert!(plan.reason.starts_with("not opted in"));
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].field,
            "metadata.annotations.traffic.sidecar.istio.io/excludeInboundPorts"
        );
    }

    #[test]
    fn workload_names_follow_istio() {
        let cases = [
            ("", "web-abcde"),
            (
                "ownerReferences: [{kind: ReplicaSet, name: web-v1-5f6d7b, controller: true}]",
                "web-v1",
            ),
            (
                "ownerReferences: [{kind: ReplicaSet, name: loner}]",
                "loner",
            ),
            (
                "ownerReferences: [{kind: StatefulSet, name: db, controller: true}]",
                "db",
            ),
            (
                "ownerReferences: [{kind: Job, name: batch-28000000}]",
                "batch-28000000",
            ),
            (
                "ownerReferences: [{kind: ConfigMap, name: other}, {kind: DaemonSet, name: agent, controller: true}]",
                "agent",
            ),
        ];
        for (owners, want) in cases {
            let pod = pod(&format!("metadata: {{name: web-abcde, {owners}}}"));
            assert_eq!(workload_name(&pod), want, "{owners}");
        }
    }

    #[test]
    fn readiness() {
        let cases = [
            ("{}", true),
            ("{phase: Running}", true),
            ("{phase: Pending}", false),
            ("{phase: Succeeded}", false),
            (
                "{phase: Running, conditions: [{type: Ready, status: \"True\"}]}",
                true,
            ),
            (
                "{phase: Running, conditions: [{type: Ready, status: \"False\"}]}",
                false,
            ),
            ("{conditions: [{type: Ready, status: \"Unknown\"}]}", true),
            (
                "{conditions: [{type: ContainersReady, status: \"False\"}]}",
                true,
            ),
        ];
        for (status, want) in cases {
            let pod = pod(&format!("metadata: {{name: p}}\nstatus: {status}"));
            assert_eq!(is_ready(&pod), want, "{status}");
        }
    }
}
