//! `PeerAuthentication`, compiled: the mTLS mode of each workload port, as Istio merges it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::istio::{self, FailClosed, RejectedPeerAuthentication, RejectedSelector};
use crate::model::{MeshState, Workload};
use crate::routing::ObjectRef;

/// The mTLS mode inbound connections to a workload port are held to, once `UNSET` is
/// resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// `DISABLE`: plaintext only; the proxy does not terminate mTLS on this port.
    Disable,
    /// `PERMISSIVE`: mTLS and plaintext alike (Istio's default, with no policy at all).
    Permissive,
    /// `STRICT`: mTLS only; plaintext connections are refused.
    Strict,
}

impl MtlsMode {
    /// Istio's name: `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which workloads a PeerAuthentication applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerAuthnScope {
    /// In the root namespace, without a selector: every workload.
    Mesh,
    /// Without a selector: every workload of its namespace.
    Namespace,
    /// With a selector: the workloads of its namespace that carry its labels.
    Workload,
}

/// The mode of one workload port and what decided it: [`PeerAuthnTable::explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsDecision {
    /// The effective mode.
    pub mode: MtlsMode,
    /// The policy whose setting it is.
    pub source: MtlsSource,
}

/// What decided a workload port's mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MtlsSource {
    /// No policy sets a mode for it: Istio's default, `PERMISSIVE`.
    Default,
    /// The narrowest policy that sets a mode (`UNSET` levels inherit from the broader ones).
    Policy {
        /// The PeerAuthentication.
        policy: ObjectRef,
        /// Its scope.
        scope: PeerAuthnScope,
        /// Whether the mode came from its `portLevelMtls`.
        port_level: bool,
        /// It was rejected and stands in as `STRICT` on every port (failing closed).
        rejected: bool,
    },
}

impl fmt::Display for MtlsSource {
    /// `namespace/name`, or `default (no policy)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default (no policy)"),
            Self::Policy { policy, .. } => write!(f, "{}/{}", policy.namespace, policy.name),
        }
    }
}

impl fmt::Display for MtlsDecision {
    /// `STRICT by shop/strict (namespace-wide)`, for `shuntctl`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", self.mode, self.source)?;
        if let MtlsSource::Policy {
            scope,
            port_level,
            rejected,
            ..
        } = &self.source
        {
            let scope = match (scope, port_level) {
                (_, true) => "its portLevelMtls",
                (PeerAuthnScope::Mesh, false) => "mesh-wide",
                (PeerAuthnScope::Namespace, false) => "namespace-wide",
                (PeerAuthnScope::Workload, false) => "workload selector",
            };
            write!(f, " ({scope}")?;
            if *rejected {
                f.write_str("; the policy is rejected and fails closed until it is fixed")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The compiled PeerAuthentications of one `MeshState`: the mTLS mode of every workload port,
/// merged as Istio does (`pilot/pkg/security/authn`'s `ComposePeerAuthentication`):
/// - scopes: a policy in the root namespace (MeshConfig `rootNamespace`) without a selector
///   is mesh-wide; any other without a selector is namespace-wide; one with a selector applies
///   to the matching pods of its namespace. A selector in the root namespace makes a policy
///   apply to nothing, as in Istio ([`Error::Ignored`]);
/// - the narrowest scope that sets a mode wins; `UNSET` (or no `mtls`) inherits from the next
///   broader scope; with no policy at all the mode is `PERMISSIVE`;
/// - within one scope the oldest policy wins: `creationTimestamp` (absent first), then name;
/// - `portLevelMtls` (only with a selector) overrides the winning workload policy's mode for
///   those workload ports; `UNSET` there inherits the workload's resolved mode.
///
/// **Failing closed.** A policy that cannot be applied (a bad mode, port, selector, a field
/// shunt does not know, or a shape that does not parse) is rejected whole, with its file,
/// object and field. If it asked for `STRICT` anywhere — or any of its modes cannot be read,
/// even under a misspelt field — it is not simply left out, which would weaken the pods it
/// covers to whatever the broader scope says: it takes its place in the merge (its namespace,
/// scope and age) as `STRICT` on every port, until it is fixed. So a broken policy can only make
/// its pods stricter than the valid one would have, never looser: where it would have won,
/// mTLS is required on every port (also those its `portLevelMtls` relaxed); where an older
/// policy would have won anyway, that one still does. If its selector cannot be read, it
/// stands in for every pod of its namespace (at workload scope). A rejected policy that asked
/// for nothing `STRICT` is left out: what remains is at least as strict as a
/// `PERMISSIVE`/`DISABLE` it would have set. Unknown fields reject a PeerAuthentication
/// (rather than warn, as for the networking kinds): a misspelt `matchLabels` would otherwise
/// widen a workload policy to the whole namespace.
#[derive(Debug, Default)]
pub struct PeerAuthnTable {
    mesh: Option<Policy>,
    namespaces: HashMap<String, Policy>,
    /// Per namespace, oldest first.
    workloads: HashMap<String, Vec<Policy>>,
}

#[derive(Clone, Debug)]
struct Policy {
    object: ObjectRef,
    creation_timestamp: Option<String>,
    scope: PeerAuthnScope,
    /// For [`PeerAuthnScope::Workload`]: the labels a pod must carry (empty: every pod of the
    /// namespace, which only a rejected policy with an unreadable selector has).
    labels: BTreeMap<String, String>,
    /// `None`: `UNSET`.
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, Option<MtlsMode>>,
    rejected: bool,
}

impl Policy {
    /// Istio's order within a scope: creationTimestamp (absent first), name, namespace.
    fn order(&self) -> (&Option<String>, &str, &str) {
        (
            &self.creation_timestamp,
            &self.object.name,
            &self.object.namespace,
        )
    }

    fn selects(&self, workload: &Workload) -> bool {
        *self.object.namespace == *workload.namespace
            && self
                .labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
    }

    fn source(&self, port_level: bool) -> MtlsSource {
        MtlsSource::Policy {
            policy: self.object.clone(),
            scope: self.scope,
            port_level,
            rejected: self.rejected,
        }
    }
}

impl PeerAuthnTable {
    /// Compiles `state`'s PeerAuthentications and the rejected ones it locks down
    /// (`state.fail_closed`). Returns every problem found; an invalid policy is left out (and,
    /// if it asked for `STRICT`, stands in as `STRICT`, as the type's docs say).
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
        let root = state.mesh.root_namespace.as_str();
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut fail_closed = FailClosed::default();
        for written in &state.peer_authentications {
            match compile(written, root) {
                Ok(policy) => policies.push(policy),
                Err(problems) => {
                    let object = object_ref(&written.metadata);
                    errors.extend(problems.into_iter().map(|(field, message)| Error::Invalid {
                        object: object.clone(),
                        field,
                        message,
                    }));
                    // The agent sends only valid policies, with the rejected ones in
                    // `fail_closed`; should an invalid one arrive anyway, it fails closed here
                    // as it would have there.
                    if let Ok(mut raw) = serde_json::to_value(written) {
                        raw["kind"] = "PeerAuthentication".into();
                        fail_closed.add_rejected(&raw);
                    }
                }
            }
        }
        policies.extend(
            state
                .fail_closed
                .peer_authentications
                .iter()
                .chain(&fail_closed.peer_authentications)
                .filter_map(|rejected| stand_in(rejected, root)),
        );
        policies.sort_by(|a, b| a.order().cmp(&b.order()));

        let mut table = Self::default();
        for policy in policies {
            let namespace = policy.object.namespace.to_string();
            match policy.scope {
                PeerAuthnScope::Mesh => match &table.mesh {
                    Some(held) => errors.push(shadowed(&policy, held)),
                    None => table.mesh = Some(policy),
                },
                PeerAuthnScope::Namespace => match table.namespaces.get(&namespace) {
                    Some(held) => errors.push(shadowed(&policy, held)),
                    None => {
                        table.namespaces.insert(namespace, policy);
                    }
                },
                // A stand-in never lands here: `stand_in` leaves these out.
                PeerAuthnScope::Workload if namespace == root => errors.push(Error::Ignored {
                    object: policy.object.clone(),
                    field: "spec.selector".into(),
                    message: format!(
                        "a PeerAuthentication with a selector in the root namespace {root:?} \
                         applies to no workload (Istio ignores it): move it to the workloads' \
                         namespace, or remove the selector to make it mesh-wide"
                    ),
                }),
                PeerAuthnScope::Workload => {
                    table.workloads.entry(namespace).or_default().push(policy);
                }
            }
        }
        (table, errors)
    }

    /// The mode inbound connections to `port` (a workload port: the pod's own, not a Service
    /// port) of `workload` are held to.
    #[must_use]
    pub fn mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        self.explain(workload, port).mode
    }

    /// Whether any inbound port of `workload` is `STRICT` (its own mode, or one of its
    /// `portLevelMtls`): such a pod must not be reachable without the proxy's inbound
    /// listener, so capture drops its inbound connections rather than let them reach the app
    /// in plaintext while the listener is missing.
    #[must_use]
    pub fn fail_closed(&self, workload: &Workload) -> bool {
        let (mode, _, winner) = self.workload_level(workload);
        mode == MtlsMode::Strict
            || winner.is_some_and(|policy| {
                policy
                    .ports
                    .values()
                    .any(|port| port.unwrap_or(mode) == MtlsMode::Strict)
            })
    }

    /// [`Self::mode`], with the policy that decided it, for `shuntctl`.
    #[must_use]
    pub fn explain(&self, workload: &Workload, port: u16) -> MtlsDecision {
        let (mode, source, winner) = self.workload_level(workload);
        match winner.and_then(|policy| Some((policy, policy.ports.get(&port)?))) {
            Some((policy, Some(port_mode))) => MtlsDecision {
                mode: *port_mode,
                source: policy.source(true),
            },
            // A port-level UNSET inherits the workload's mode.
            _ => MtlsDecision { mode, source },
        }
    }

    /// The workload's mode before port-level settings, what decided it, and the workload
    /// policy in force (whose `portLevelMtls` apply).
    fn workload_level(&self, workload: &Workload) -> (MtlsMode, MtlsSource, Option<&Policy>) {
        let winner = self
            .workloads
            .get(&workload.namespace)
            .and_then(|list| list.iter().find(|p| p.selects(workload)));
        let mut decided = (MtlsMode::Permissive, MtlsSource::Default);
        let levels = [
            self.mesh.as_ref(),
            self.namespaces.get(&workload.namespace),
            winner,
        ];
        for policy in levels.into_iter().flatten() {
            if let Some(mode) = policy.mode {
                decided = (mode, policy.source(false));
            }
        }
        (decided.0, decided.1, winner)
    }
}

fn object_ref(metadata: &istio::Metadata) -> ObjectRef {
    ObjectRef {
        kind: "PeerAuthentication",
        namespace: metadata.namespace.as_str().into(),
        name: metadata.name.as_str().into(),
    }
}

/// A second mesh- or namespace-wide policy: the older one applies.
fn shadowed(policy: &Policy, held: &Policy) -> Error {
    let scope = if policy.scope == PeerAuthnScope::Mesh {
        "the mesh".to_owned()
    } else {
        format!("namespace {}", policy.object.namespace)
    };
    let how = if held.rejected {
        " (rejected, standing in as STRICT)"
    } else {
        ""
    };
    Error::Ignored {
        object: policy.object.clone(),
        field: "spec.selector".into(),
        message: format!(
            "{scope} already has the older policy {}/{}{how}; of several policies without a \
             selector in one namespace the oldest applies and the others do nothing (merge \
             them, or delete this one)",
            held.object.namespace, held.object.name
        ),
    }
}

fn scope_of(has_selector: bool, namespace: &str, root: &str) -> PeerAuthnScope {
    match (has_selector, namespace == root) {
        (true, _) => PeerAuthnScope::Workload,
        (false, true) => PeerAuthnScope::Mesh,
        (false, false) => PeerAuthnScope::Namespace,
    }
}

/// A rejected policy in its place, `STRICT` on every port; `None` where a selector makes it
/// apply to nothing anyway (the root namespace).
fn stand_in(rejected: &RejectedPeerAuthentication, root: &str) -> Option<Policy> {
    let labels = match &rejected.selector {
        RejectedSelector::None => None,
        RejectedSelector::Labels(labels) => Some(labels.clone()),
        RejectedSelector::Unreadable => Some(BTreeMap::new()),
    };
    let scope = scope_of(labels.is_some(), &rejected.metadata.namespace, root);
    (scope != PeerAuthnScope::Workload || rejected.metadata.namespace != root).then(|| Policy {
        object: object_ref(&rejected.metadata),
        creation_timestamp: rejected.metadata.creation_timestamp.clone(),
        scope,
        labels: labels.unwrap_or_default(),
        mode: Some(MtlsMode::Strict),
        ports: BTreeMap::new(),
        rejected: true,
    })
}

/// Checks one policy; the problems by field path.
fn compile(
    written: &istio::PeerAuthentication,
    root: &str,
) -> Result<Policy, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let spec = &written.spec;
    let labels = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    for (key, value) in &labels {
        let field = format!("spec.selector.matchLabels.{key}");
        if key.is_empty() {
            problems.push((
                "spec.selector.matchLabels".to_owned(),
                "an empty label key".to_owned(),
            ));
        } else if key.contains('*') || value.contains('*') {
            problems.push((
                field,
                "wildcards are not supported in a selector (Istio rejects them): name the \
                 exact label value"
                    .to_owned(),
            ));
        }
    }
    let mode = parse_mode(
        &mut problems,
        "spec.mtls.mode",
        spec.mtls.as_ref().and_then(|m| m.mode.as_deref()),
    );
    let mut ports = BTreeMap::new();
    if !spec.port_level_mtls.is_empty() && labels.is_empty() {
        problems.push((
            "spec.portLevelMtls".to_owned(),
            "portLevelMtls needs a selector: a namespace- or mesh-wide PeerAuthentication \
             cannot set modes per port (Istio rejects it); add spec.selector.matchLabels, or \
             move the ports into a policy that has one"
                .to_owned(),
        ));
    }
    for (key, mtls) in &spec.port_level_mtls {
        let field = format!("spec.portLevelMtls.{key}");
        let port = key.parse::<u16>().ok().filter(|p| *p != 0);
        if port.is_none() {
            problems.push((
                field.clone(),
                format!(
                    "{key:?} is not a port: the keys of portLevelMtls are workload port numbers \
                     1-65535"
                ),
            ));
        }
        let mode = parse_mode(
            &mut problems,
            &format!("{field}.mode"),
            mtls.mode.as_deref(),
        );
        if let Some(port) = port {
            ports.insert(port, mode);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Policy {
        object: object_ref(&written.metadata),
        creation_timestamp: written.metadata.creation_timestamp.clone(),
        scope: scope_of(!labels.is_empty(), &written.metadata.namespace, root),
        labels,
        mode,
        ports,
        rejected: false,
    })
}

/// `None` (`UNSET` or absent) inherits.
fn parse_mode(
    problems: &mut Vec<(String, String)>,
    field: &str,
    mode: Option<&str>,
) -> Option<MtlsMode> {
    match mode {
        None | Some("UNSET") => None,
        Some("DISABLE") => Some(MtlsMode::Disable),
        Some("PERMISSIVE") => Some(MtlsMode::Permissive),
        Some("STRICT") => Some(MtlsMode::Strict),
        Some(other) => {
            problems.push((
                field.to_owned(),
                format!(
                    "unknown mTLS mode {other:?}: expected UNSET, DISABLE, PERMISSIVE or STRICT"
                ),
            ));
            None
        }
    }
}
