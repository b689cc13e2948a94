//! How one side of a connection or request is named in metrics and access logs: the one
//! place that turns a workload into Istio's per-peer labels (`*_workload`,
//! `*_workload_namespace`, `*_canonical_service`, `*_canonical_revision`, `*_app`,
//! `*_version`, `*_cluster`) and into its identity, for the TCP and HTTP reporters alike.
//!
//! [`PeerLabels`] are built once per workload object and shared by every series and
//! connection that names it ([`PeerCatalog`]), so a connection's labels cost two `Arc`
//! clones, not a dozen strings.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use shunt_mesh::model::Workload;

pub use super::UNKNOWN;
#[cfg(test)]
use super::security::principal_label;
use super::security::{PeerSecurity, Principal};

/// The trust domain identities are named in until the first mesh state says otherwise
/// (MeshConfig `trustDomain`; [`PeerCatalog::set_trust_domain`]).
pub const TRUST_DOMAIN: &str = shunt_mesh::settings::DEFAULT_TRUST_DOMAIN;

/// The cluster id of the `*_cluster` labels when `--cluster-id` is not given: Istio's default
/// (istiod's `CLUSTER_ID`).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The canonical revision of a workload without a version label, as Istio writes it.
pub const LATEST: &str = "latest";

/// `*_canonical_service`: `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
/// else `app`, else the workload's name (Istio's `CanonicalService`;
/// [`Workload::canonical_service`], which HBONE's `baggage` names too).
#[must_use]
pub fn canonical_service(workload: &Workload) -> &str {
    workload.canonical_service()
}

/// `*_canonical_revision`: `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
#[must_use]
pub fn canonical_revision(workload: &Workload) -> &str {
    workload.canonical_revision()
}

/// A peer as the access log names it; everything it does not know is `unknown`, as Istio
/// writes. Borrows the workload: nothing is built per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer<'a> {
    workload: Option<&'a Workload>,
}

impl<'a> Peer<'a> {
    #[must_use]
    pub fn new(workload: Option<&'a Workload>) -> Self {
        Self { workload }
    }

    /// `source_workload` / `destination_workload`: the owning workload's name.
    #[must_use]
    pub fn workload(self) -> &'a str {
        self.workload.map_or(UNKNOWN, |w| &w.workload_name)
    }

    /// `*_workload_namespace`.
    #[must_use]
    pub fn namespace(self) -> &'a str {
        self.workload.map_or(UNKNOWN, |w| &w.namespace)
    }
}

/// One workload's half of Istio's labels, built once ([`PeerCatalog`]). An unknown peer has
/// none: every label is `unknown` (see [`PeerLabels::or_unknown`]).
#[derive(Debug)]
pub struct PeerLabels {
    /// `*_workload`.
    pub workload: String,
    /// `*_workload_namespace`.
    pub namespace: String,
    /// `*_canonical_service` ([`canonical_service`]).
    pub canonical_service: String,
    /// `*_canonical_revision` ([`canonical_revision`]).
    pub canonical_revision: String,
    /// `*_app`: the `app` label, else `unknown` (Istio's sidecar rule).
    pub app: String,
    /// `*_version`: the `version` label, else `unknown`.
    pub version: String,
    /// `*_cluster`: the proxy's cluster id (every workload it knows is in its cluster).
    pub cluster: Arc<str>,
    /// The pod's identity: what a same-node delivery vouches for, and what an mTLS
    /// handshake with it should prove. Not a label by itself: principals come from the
    /// connection's [`PeerSecurity`].
    pub identity: Principal,
    /// A hash of every field, so hashing a label set that holds this costs a `u64`.
    fingerprint: u64,
}

impl PeerLabels {
    #[must_use]
    pub fn new(workload: &Workload, cluster: Arc<str>, trust_domain: &str) -> Self {
        let label = |key: &str| workload.labels.get(key).map_or(UNKNOWN, String::as_str);
        let mut labels = Self {
            workload: workload.workload_name.clone(),
            namespace: workload.namespace.clone(),
            canonical_service: canonical_service(workload).to_owned(),
            canonical_revision: canonical_revision(workload).to_owned(),
            app: label("app").to_owned(),
            version: label("version").to_owned(),
            cluster,
            identity: Principal::for_service_account(
                trust_domain,
                &workload.namespace,
                &workload.service_account,
            ),
            fingerprint: 0,
        };
        labels.fingerprint = labels.hash_fields();
        labels
    }

    /// The labels of `peer`, or the all-`unknown` set when the peer is not known.
    #[must_use]
    pub fn or_unknown(peer: Option<&Self>) -> Known<'_> {
        Known(peer)
    }

    fn fields(&self) -> [&str; 7] {
        [
            &self.workload,
            &self.namespace,
            &self.canonical_service,
            &self.canonical_revision,
            &self.app,
            &self.version,
            &self.cluster,
        ]
    }

    fn hash_fields(&self) -> u64 {
        // Fixed keys: equal labels get equal fingerprints, in every series of the process.
        let mut hasher = std::hash::DefaultHasher::new();
        self.fields().hash(&mut hasher);
        self.identity.hash(&mut hasher);
        hasher.finish()
    }
}

impl PartialEq for PeerLabels {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
            || (self.fingerprint == other.fingerprint
                && self.fields() == other.fields()
                && self.identity == other.identity)
    }
}

impl Eq for PeerLabels {}

impl Hash for PeerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

/// A peer's label values, `unknown` for a peer the mesh does not know.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a>(Option<&'a PeerLabels>);

impl<'a> Known<'a> {
    fn get(self, field: impl FnOnce(&'a PeerLabels) -> &'a str) -> &'a str {
        self.0.map_or(UNKNOWN, field)
    }
    #[must_use]
    pub fn workload(self) -> &'a str {
        self.get(|p| &p.workload)
    }
    #[must_use]
    pub fn namespace(self) -> &'a str {
        self.get(|p| &p.namespace)
    }
    #[must_use]
    pub fn canonical_service(self) -> &'a str {
        self.get(|p| &p.canonical_service)
    }
    #[must_use]
    pub fn canonical_revision(self) -> &'a str {
        self.get(|p| &p.canonical_revision)
    }
    #[must_use]
    pub fn app(self) -> &'a str {
        self.get(|p| &p.app)
    }
    #[must_use]
    pub fn version(self) -> &'a str {
        self.get(|p| &p.version)
    }
    #[must_use]
    pub fn cluster(self) -> &'a str {
        self.get(|p| &p.cluster)
    }
}

/// Every known workload's [`PeerLabels`], built the first time a workload object is named
/// and shared from then on.
///
/// Keyed by the workload's allocation: a new mesh state brings new `Arc<Workload>`s, which
/// get their labels anew (a pod's labels may have changed). Each entry holds a `Weak` to its
/// workload, which keeps the address from being reused while the entry exists; entries
/// whose workload is gone (no index or connection holds it) are swept as the map grows.
#[derive(Debug)]
pub struct PeerCatalog {
    cluster_id: Arc<str>,
    /// The mesh's `trustDomain` ([`PeerCatalog::set_trust_domain`]).
    trust_domain: RwLock<Arc<str>>,
    entries: RwLock<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_workload: HashMap<usize, (Weak<Workload>, Arc<PeerLabels>)>,
    /// Entries past which the next insert sweeps the dead ones.
    sweep_at: usize,
}

/// Entries kept before the first sweep.
const MIN_SWEEP_AT: usize = 64;

impl PeerCatalog {
    /// Labels every workload as in `cluster_id`, with identities in `trust_domain`.
    #[must_use]
    pub fn new(cluster_id: &str, trust_domain: &str) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            trust_domain: RwLock::new(trust_domain.into()),
            entries: RwLock::new(Entries {
                by_workload: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
        }
    }

    /// The mesh's trust domain changed (MeshConfig `trustDomain`): labels built from now on
    /// name identities in it. Each state brings new workloads, so no old entry is reused.
    pub fn set_trust_domain(&self, trust_domain: &str) {
        let mut current = self
            .trust_domain
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if &**current != trust_domain {
            *current = trust_domain.into();
        }
    }

    /// The cluster id of the `*_cluster` labels.
    #[must_use]
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The labels of `workload`, `None` for an unknown peer.
    #[must_use]
    pub fn get(&self, workload: Option<&Arc<Workload>>) -> Option<Arc<PeerLabels>> {
        workload.map(|w| self.labels(w))
    }

    /// The labels of `workload`, built on its first use.
    #[must_use]
    pub fn labels(&self, workload: &Arc<Workload>) -> Arc<PeerLabels> {
        let key = Arc::as_ptr(workload).addr();
        if let Some((_, labels)) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_workload
            .get(&key)
        {
            // The entry's `Weak` keeps this address from being reused, and the caller's `Arc`
            // is alive: it is the very workload the labels were built from.
            return labels.clone();
        }
        let trust_domain = self
            .trust_domain
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let labels = Arc::new(PeerLabels::new(
            workload,
            self.cluster_id.clone(),
            &trust_domain,
        ));
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.by_workload.len() >= entries.sweep_at {
            entries
                .by_workload
                .retain(|_, (weak, _)| weak.strong_count() > 0);
            entries.sweep_at = (2 * entries.by_workload.len()).max(MIN_SWEEP_AT);
        }
        entries
            .by_workload
            .entry(key)
            .or_insert_with(|| (Arc::downgrade(workload), labels))
            .1
            .clone()
    }

    /// The identity of `workload`, `None` for an unknown peer.
    #[must_use]
    pub fn identity(&self, workload: Option<&Arc<Workload>>) -> Option<Principal> {
        workload.map(|w| self.labels(w).identity.clone())
    }

    /// The security of a same-node delivery from `source` to `destination`
    /// ([`PeerSecurity::same_node`]).
    #[must_use]
    pub fn same_node(
        &self,
        source: Option<&Arc<Workload>>,
        destination: Option<&Arc<Workload>>,
    ) -> PeerSecurity {
        PeerSecurity::same_node(
            self.identity(source).as_ref(),
            self.identity(destination).as_ref(),
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_workload
            .len()
    }
}

impl Default for PeerCatalog {
    fn default() -> Self {
        Self::new(DEFAULT_CLUSTER_ID, TRUST_DOMAIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_mesh::testing::pod;

    fn workload(labels: &[(&str, &str)]) -> Workload {
        let mut web = pod("shop", "web-6d8f-abcde", [10, 0, 0, 1], "ignored");
        web.workload_name = "web".into();
        web.service_account = "web-sa".into();
        web.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        web
    }

    #[test]
    fn canonical_service_and_revision_fall_back_as_istio_does() {
        type Labels = &'static [(&'static str, &'static str)];
        let cases: [(Labels, &str, &str); 8] = [
            (&[], "web", "latest"),
            (&[("app", "shop-web"), ("version", "v1")], "shop-web", "v1"),
            (
                &[
                    ("app", "a"),
                    ("app.kubernetes.io/name", "k8s-name"),
                    ("version", "v1"),
                    ("app.kubernetes.io/version", "1.2.3"),
                ],
                "k8s-name",
                "1.2.3",
            ),
            (
                &[
                    ("app", "a"),
                    ("app.kubernetes.io/name", "k8s-name"),
                    ("service.istio.io/canonical-name", "canonical"),
                    ("version", "v1"),
                    ("app.kubernetes.io/version", "1.2.3"),
                    ("service.istio.io/canonical-revision", "rev-7"),
                ],
                "canonical",
                "rev-7",
            ),
            (&[("service.istio.io/canonical-name", "c")], "c", "latest"),
            (&[("service.istio.io/canonical-revision", "r")], "web", "r"),
            (&[("version", "v2")], "web", "v2"),
            // Present but empty still counts, as Istio's lookup has it.
            (&[("app", "")], "", "latest"),
        ];
        for (labels, service, revision) in cases {
            let w = workload(labels);
            assert_eq!(
                (canonical_service(&w), canonical_revision(&w)),
                (service, revision),
                "{labels:?}"
            );
        }
    }

    #[test]
    fn a_workload_gets_every_peer_label_and_its_identity() {
        let w = workload(&[
            ("app", "shop-web"),
            ("version", "v3"),
            ("service.istio.io/canonical-name", "storefront"),
        ]);
        let labels = PeerLabels::new(&w, "east".into(), "example.org");
        let known = PeerLabels::or_unknown(Some(&labels));
        assert_eq!(
            [
                known.workload(),
                known.namespace(),
                known.canonical_service(),
                known.canonical_revision(),
                known.app(),
                known.version(),
                known.cluster(),
                labels.identity.as_str(),
            ],
            [
                "web",
                "shop",
                "storefront",
                "v3",
                "shop-web",
                "v3",
                "east",
                "spiffe://example.org/ns/shop/sa/web-sa",
            ]
        );
        // No app or version label: `unknown`, while the canonical names fall back.
        let bare = PeerLabels::new(&workload(&[]), "east".into(), TRUST_DOMAIN);
        let bare = PeerLabels::or_unknown(Some(&bare));
        assert_eq!(
            [
                bare.app(),
                bare.version(),
                bare.canonical_service(),
                bare.canonical_revision()
            ],
            ["unknown", "unknown", "web", "latest"]
        );
        let unknown = PeerLabels::or_unknown(None);
        assert_eq!(
            [
                unknown.workload(),
                unknown.canonical_service(),
                unknown.canonical_revision(),
                unknown.cluster(),
            ],
            ["unknown"; 4]
        );
    }

    #[test]
    fn equal_labels_hash_alike_and_different_ones_differ() {
        let hash = |labels: &PeerLabels| {
            let mut hasher = std::hash::DefaultHasher::new();
            labels.hash(&mut hasher);
            hasher.finish()
        };
        let w = workload(&[("app", "a")]);
        let (one, two) = (
            PeerLabels::new(&w, "c".into(), TRUST_DOMAIN),
            PeerLabels::new(&w, "c".into(), TRUST_DOMAIN),
        );
        assert_eq!(one, two);
        assert_eq!(hash(&one), hash(&two));
        let other_cluster = PeerLabels::new(&w, "d".into(), TRUST_DOMAIN);
        let other_app = PeerLabels::new(&workload(&[("app", "b")]), "c".into(), TRUST_DOMAIN);
        let other_domain = PeerLabels::new(&w, "c".into(), "example.org");
        for other in [&other_cluster, &other_app, &other_domain] {
            assert_ne!(&one, other);
        }
    }

    #[test]
    fn the_catalog_builds_once_per_workload_object_and_forgets_dead_ones() {
        let catalog = PeerCatalog::new("east", TRUST_DOMAIN);
        let web = Arc::new(workload(&[("app", "a")]));
        let first = catalog.labels(&web);
        assert!(Arc::ptr_eq(&first, &catalog.labels(&web)), "reused");
        assert_eq!(&*first.cluster, "east");
        assert_eq!(catalog.get(None), None);

        // A new state's copy of the pod, relabelled: labelled anew.
        let relabelled = Arc::new(workload(&[("app", "b")]));
        assert_eq!(catalog.labels(&relabelled).app, "b");
        assert_eq!(catalog.labels(&web).app, "a");

        drop(relabelled);
        // Pods come and go: each one's entry dies with it, and the inserts that grow the map
        // past its threshold sweep the dead.
        for _ in 0..2 * MIN_SWEEP_AT {
            let _ = catalog.labels(&Arc::new(workload(&[])));
        }
        assert!(
            catalog.len() < MIN_SWEEP_AT,
            "{} entries left for 1 live workload",
            catalog.len()
        );
        assert!(
            Arc::ptr_eq(&first, &catalog.labels(&web)),
            "live entries stay"
        );
    }

    #[test]
    fn same_node_security_names_both_pods() {
        let catalog = PeerCatalog::default();
        let web = Arc::new(workload(&[]));
        let mut api = workload(&[]);
        api.service_account = "api-sa".into();
        let api = Arc::new(api);
        let security = catalog.same_node(Some(&web), Some(&api));
        assert_eq!(
            (
                principal_label(security.source_principal()),
                principal_label(security.destination_principal())
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/web-sa",
                "spiffe://cluster.local/ns/shop/sa/api-sa"
            )
        );
        assert_eq!(catalog.same_node(None, Some(&api)), PeerSecurity::None);
    }
}
