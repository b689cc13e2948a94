//! Who may have which certificate in a cluster, istiod's model for ztunnel: a node's proxy
//! sends its projected service-account token (audience `istio-ca`); a TokenReview says
//! whose it is, it must be a trusted node account's (`CA_TRUSTED_NODE_ACCOUNTS`, here
//! `--ca-trusted-node-account`), and bound to a pod; the node is that pod's `spec.nodeName`,
//! read from the API (its uid must be the token's). Then, as in local mode, the node may
//! have only the identities of its own pods (the watched pods' `spec.nodeName`).
//!
//! Any failure of the API server refuses the request (`Unavailable`): a token is never taken
//! as valid unless the API server said so. Successful reviews are kept [`CACHE_TTL`] (at
//! most [`CACHE_SIZE`], keyed by the token's SHA-256).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use ring::digest::{SHA256, digest};
use shunt_identity::SpiffeId;
use shunt_identity::grpc::{Authorizer, NodeLookup, TokenRefusal};
use tokio::sync::watch;

use super::authorizer::may_issue;
use crate::config::Snapshot;

/// The audience istiod's CA checks, and the proxies' projected tokens carry.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The service account of shunt's node proxies, in shunt's namespace.
pub const PROXY_SERVICE_ACCOUNT: &str = "shunt-proxy";
/// The `status.user.extra` keys of a token bound to a pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// How long a successful review is trusted without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// How many reviews are kept at most.
pub const CACHE_SIZE: usize = 1024;

/// A service account whose pods' tokens name a node: `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// `NAMESPACE/NAME`, as istiod's `CA_TRUSTED_NODE_ACCOUNTS` names them.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "expected NAMESPACE/NAME of a service account, e.g. shunt-system/shunt-proxy, \
                 got {text:?}"
            )),
        }
    }

    fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How tokens are reviewed.
#[derive(Clone, Debug)]
pub struct ReviewOptions {
    /// `--ca-token-audience`.
    pub audience: String,
    /// `--ca-trusted-node-account`.
    pub trusted: Vec<ServiceAccountRef>,
}

/// The [`Authorizer`] of a CA in a cluster: TokenReviews, then the watched pods.
pub struct ReviewAuthorizer {
    client: kube::Client,
    options: ReviewOptions,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    cache: Mutex<HashMap<Vec<u8>, (String, Instant)>>,
}

impl ReviewAuthorizer {
    #[must_use]
    pub fn new(
        client: kube::Client,
        options: ReviewOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        Self {
            client,
            options,
            snapshots,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The trusted node accounts, for messages.
    fn trusted(&self) -> String {
        self.options
            .trusted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn cached(&self, key: &[u8]) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(node, _)| node.clone())
    }

    fn remember(&self, key: Vec<u8>, node: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_SIZE {
            let now = Instant::now();
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
        }
        cache.insert(key, (node.to_owned(), Instant::now() + CACHE_TTL));
    }

    /// The node of `token`: the review, the account, the bound pod and its node.
    async fn review(&self, token: &str) -> Result<String, TokenRefusal> {
        let audience = &self.options.audience;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                TokenRefusal::Unavailable(format!(
                    "the CA could not review the token with the API server ({e}); check that \
                     the CA's service account may create tokenreviews \
                     (authentication.k8s.io) and that the API server is reachable"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(TokenRefusal::Refused(format!(
                "the API server does not authenticate the token for audience {audience}{}; the \
                 proxy must send a projected service-account token with audience {audience} \
                 (--ca-token-file)",
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        if let Some(audiences) = &status.audiences
            && !audiences.iter().any(|a| a == audience)
        {
            return Err(TokenRefusal::Refused(format!(
                "the token is for {}, not for audience {audience}",
                audiences.join(", ")
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(account) = self
            .options
            .trusted
            .iter()
            .find(|account| account.username() == username)
        else {
            return Err(TokenRefusal::Refused(format!(
                "the token is {username:?}'s, not a node proxy's; the CA trusts the service \
                 accounts {} (--ca-trusted-node-account)",
                self.trusted()
            )));
        };
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| {
            extra
                .get(key)
                .and_then(|values| match values.as_slice() {
                    [value] if !value.is_empty() => Some(value.clone()),
                    _ => None,
                })
                .ok_or_else(|| {
                    TokenRefusal::Refused(format!(
                        "the token of {account} is not bound to a pod (no {key} in the \
                         review); the proxy must send its pod's projected service-account \
                         token, not a long-lived Secret token"
                    ))
                })
        };
        let (pod_name, pod_uid) = (one(POD_NAME)?, one(POD_UID)?);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &account.namespace);
        let pod = pods.get_opt(&pod_name).await.map_err(|e| {
            TokenRefusal::Unavailable(format!(
                "the CA could not read pod {}/{pod_name}, which the token is bound to ({e}); \
                 check that the CA's service account may get pods",
                account.namespace
            ))
        })?;
        let what = format!("pod {}/{pod_name}", account.namespace);
        let Some(pod) = pod else {
            return Err(TokenRefusal::Refused(format!(
                "{what}, which the token is bound to, no longer exists"
            )));
        };
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(TokenRefusal::Refused(format!(
                "{what} is not the pod the token is bound to (uid {pod_uid}): it was replaced"
            )));
        }
        pod.spec
            .and_then(|spec| spec.node_name)
            .filter(|node| !node.is_empty())
            .ok_or_else(|| {
                TokenRefusal::Refused(format!(
                    "{what}, which the token is bound to, is not scheduled on a node \
                     (spec.nodeName)"
                ))
            })
    }
}

impl Authorizer for ReviewAuthorizer {
    fn node_for_token<'a>(&'a self, token: &'a str) -> NodeLookup<'a> {
        Box::pin(async move {
            let key = digest(&SHA256, token.as_bytes()).as_ref().to_vec();
            if let Some(node) = self.cached(&key) {
                return Ok(node);
            }
            let node = self.review(token).await?;
            self.remember(key, &node);
            Ok(node)
        })
    }

    fn may_issue(&self, node: &str, id: &SpiffeId) -> Result<(), String> {
        may_issue(&Arc::clone(&self.snapshots.borrow()), node, id)
    }

    fn token_hint(&self) -> Option<String> {
        Some(format!(
            "a node's proxy must send its projected service-account token (audience {}) of \
             one of the service accounts {} with --ca-token-file",
            self.options.audience,
            self.trusted()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_accounts_are_namespace_slash_name() {
        for (text, expected) in [
            (
                "shunt-system/shunt-proxy",
                Some(("shunt-system", "shunt-proxy")),
            ),
            ("istio-system/ztunnel", Some(("istio-system", "ztunnel"))),
            ("shunt-proxy", None),
            ("/shunt-proxy", None),
            ("shunt-system/", None),
            ("a/b/c", None),
        ] {
            let parsed = ServiceAccountRef::parse(text).ok();
            assert_eq!(
                parsed
                    .as_ref()
                    .map(|a| (a.namespace.as_str(), a.name.as_str())),
                expected,
                "{text}"
            );
        }
        let account = ServiceAccountRef::parse("shunt-system/shunt-proxy").unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert_eq!(
            account.username(),
            "system:serviceaccount:shunt-system:shunt-proxy"
        );
    }
}
