//! Who may have which certificate, ztunnel's model in local mode: a node's proxy presents
//! its node's token (Secret `shunt-node-tokens` in the root namespace), and may have the
//! identity of a pod only if such a pod is scheduled on that node. Both are read from the
//! current config at each request, so a token or a pod added later counts without a
//! restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use shunt_api::k8s::Secret;
use shunt_identity::SpiffeId;
use shunt_identity::grpc::{Authorizer, NodeLookup, TokenRefusal};
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;

use crate::config::Snapshot;

/// The Secret of node tokens, in the root namespace: `data: {<node name>: <token>}`.
pub const NODE_TOKENS_SECRET: &str = "shunt-node-tokens";

/// The agent's [`Authorizer`]: tokens and pods from the latest config snapshot.
pub struct NodeAuthorizer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl NodeAuthorizer {
    #[must_use]
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self { snapshots }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }
}

impl Authorizer for NodeAuthorizer {
    fn node_for_token<'a>(&'a self, token: &'a str) -> NodeLookup<'a> {
        let snapshot = self.snapshot();
        let namespace = &snapshot.mesh.mesh.root_namespace;
        let node = match snapshot.secret(namespace, NODE_TOKENS_SECRET) {
            Some(secret) => node_for_token(secret, token),
            None => {
                tracing::warn!(
                    "CA: a node presented a token, but there is no Secret \
                     {namespace}/{NODE_TOKENS_SECRET} in the config dir: every node is refused \
                     until it exists"
                );
                None
            }
        };
        Box::pin(std::future::ready(node.ok_or(TokenRefusal::Unknown)))
    }

    fn may_issue(&self, node: &str, id: &SpiffeId) -> Result<(), String> {
        may_issue(&self.snapshot(), node, id)
    }

    fn token_hint(&self) -> Option<String> {
        let snapshot = self.snapshot();
        Some(format!(
            "a node's proxy must send its node's token from Secret {}/{NODE_TOKENS_SECRET} \
             (data: {{<node name>: <token>}}) with --ca-token-file",
            snapshot.mesh.mesh.root_namespace
        ))
    }
}

/// The node whose token `token` is. Every token of the Secret is compared, each in constant
/// time over SHA-256 digests (so neither a token's bytes nor its length leak); a token that
/// two nodes share names neither.
fn node_for_token(secret: &Secret, token: &str) -> Option<String> {
    let presented = digest(&SHA256, token.as_bytes());
    let mut matched = Vec::new();
    for (node, value) in &secret.data {
        let value = value.trim_ascii();
        if value.is_empty() {
            continue;
        }
        let expected = digest(&SHA256, value);
        if bool::from(expected.as_ref().ct_eq(presented.as_ref())) {
            matched.push(node.as_str());
        }
    }
    match matched.as_slice() {
        [node] => Some((*node).to_owned()),
        [] => None,
        nodes => {
            tracing::warn!(
                nodes = %nodes.join(", "),
                "CA: Secret {}/{NODE_TOKENS_SECRET} gives several nodes the same token; it \
                 names none of them: give each node a token of its own",
                secret.metadata.namespace()
            );
            None
        }
    }
}

/// Whether a pod running as `id` is scheduled on `node`; the error says what to fix.
pub(super) fn may_issue(snapshot: &Snapshot, node: &str, id: &SpiffeId) -> Result<(), String> {
    let trust_domain = &snapshot.mesh.mesh.trust_domain;
    if id.trust_domain() != trust_domain {
        return Err(format!(
            "its trust domain is not the mesh's, {trust_domain} (MeshConfig trustDomain); ask \
             for spiffe://{trust_domain}/ns/{}/sa/{}",
            id.namespace(),
            id.service_account()
        ));
    }
    let mut nodes = BTreeSet::new();
    for workload in &snapshot.mesh.workloads {
        if workload.namespace != id.namespace() || workload.service_account != id.service_account()
        {
            continue;
        }
        let on = workload.node.as_deref().unwrap_or_default();
        if on == node {
            return Ok(());
        }
        nodes.insert(on);
    }
    let (namespace, account) = (id.namespace(), id.service_account());
    Err(if nodes.is_empty() {
        format!(
            "no pod in the config runs as service account {account} in namespace {namespace}; a \
             node may only have the identities of its own pods: check the pod's \
             metadata.namespace and spec.serviceAccountName"
        )
    } else {
        format!(
            "the pods running as service account {account} in namespace {namespace} are \
             scheduled on {}, not on {node}; a node may only have the identities of its own \
             pods: check the pods' spec.nodeName, and that this proxy sends its own node's token",
            nodes.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shunt_api::k8s::ObjectMeta;

    use super::*;

    fn tokens(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: NODE_TOKENS_SECRET.into(),
                namespace: Some("istio-system".into()),
                uid: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                owner_references: Vec::new(),
            },
            kind: "Opaque".into(),
            data: data
                .iter()
                .map(|(node, token)| ((*node).to_owned(), token.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_token_names_its_node_only() {
        let secret = tokens(&[
            ("node-a", "token-a\n"),
            ("node-b", "token-b"),
            ("empty", " \n"),
            ("twin-1", "same"),
            ("twin-2", "same"),
        ]);
        for (token, expected) in [
            ("token-a", Some("node-a")),
            ("token-b", Some("node-b")),
            ("token-", None),
            ("token-ab", None),
            ("", None),
            ("same", None),
        ] {
            assert_eq!(
                node_for_token(&secret, token).as_deref(),
                expected,
                "{token:?}"
            );
        }
    }
}
