//! SPIFFE ids of workloads as Istio names them: `spiffe://<trust domain>/ns/<namespace>/sa/<service
//! account>`. The id is what a workload certificate certifies (its URI SAN), what mTLS peers
//! are checked against, and the `principal` of Istio's telemetry and authorization.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scheme every SPIFFE id starts with.
const SCHEME: &str = "spiffe://";

/// The SPIFFE specification's limit on the length of an id, in bytes.
const MAX_LEN: usize = 2048;

/// A workload's identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
///
/// Every constructor checks the parts, so a `SpiffeId` always prints as a valid id that
/// parses back to itself. Serialized as that string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a text (or the parts given to [`SpiffeId::new`]) is not a SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SPIFFE id {id:?}: {kind} (expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
)]
pub struct SpiffeIdError {
    /// The text that was refused (for [`SpiffeId::new`], the id its parts would make).
    pub id: String,
    /// What is wrong with it.
    pub kind: SpiffeIdErrorKind,
}

/// The part of a SPIFFE id that is wrong, and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdErrorKind {
    /// It does not start with `spiffe://` (lower case, as Istio and ztunnel require).
    #[error("it does not start with \"spiffe://\"")]
    Scheme,
    /// It is longer than the 2048 bytes the SPIFFE specification allows.
    #[error("it is {0} bytes long, more than the 2048 the SPIFFE specification allows")]
    TooLong(usize),
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character other than `a-z`, `0-9`, `.`, `-` and `_`.
    #[error(
        "the trust domain has {0:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    /// The path is not `/ns/<namespace>/sa/<service account>`.
    #[error("the path is not /ns/<namespace>/sa/<service account>")]
    Path,
    /// The namespace or the service account is empty.
    #[error("the {0} is empty")]
    EmptySegment(Segment),
    /// The namespace or the service account is `.` or `..`.
    #[error("the {0} is {1:?}, which a SPIFFE path may not hold")]
    DotSegment(Segment, String),
    /// The namespace or the service account has a character other than letters, digits,
    /// `.`, `-` and `_`.
    #[error("the {0} has {1:?}; only letters, digits, '.', '-' and '_' are allowed")]
    SegmentChar(Segment, char),
}

/// A path segment of a SPIFFE id, to name it in an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// The namespace (after `/ns/`).
    Namespace,
    /// The service account (after `/sa/`).
    ServiceAccount,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::ServiceAccount => "service account",
        })
    }
}

impl SpiffeId {
    /// The id of service account `service_account` in `namespace`, in `trust_domain`
    /// (`cluster.local` in most meshes). Fails when a part could not appear in a SPIFFE id.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.check().map_err(|kind| SpiffeIdError {
            id: id.to_string(),
            kind,
        })?;
        Ok(id)
    }

    /// The trust domain, e.g. `cluster.local`.
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    #[must_use]
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    fn check(&self) -> Result<(), SpiffeIdErrorKind> {
        let len = SCHEME.len()
            + self.trust_domain.len()
            + "/ns/".len()
            + self.namespace.len()
            + "/sa/".len()
            + self.service_account.len();
        if len > MAX_LEN {
            return Err(SpiffeIdErrorKind::TooLong(len));
        }
        check_trust_domain(&self.trust_domain)?;
        check_segment(Segment::Namespace, &self.namespace)?;
        check_segment(Segment::ServiceAccount, &self.service_account)
    }
}

fn check_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdErrorKind> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdErrorKind::EmptyTrustDomain);
    }
    // The SPIFFE specification's trust domain alphabet; it leaves out ':' (no port), '@' (no
    // user info) and upper case, so two spellings of one domain cannot both be valid.
    match trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdErrorKind::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn check_segment(segment: Segment, value: &str) -> Result<(), SpiffeIdErrorKind> {
    if value.is_empty() {
        return Err(SpiffeIdErrorKind::EmptySegment(segment));
    }
    if value == "." || value == ".." {
        return Err(SpiffeIdErrorKind::DotSegment(segment, value.to_owned()));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdErrorKind::SegmentChar(segment, c)),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |kind| SpiffeIdError {
            id: text.to_owned(),
            kind,
        };
        if text.len() > MAX_LEN {
            return Err(error(SpiffeIdErrorKind::TooLong(text.len())));
        }
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| error(SpiffeIdErrorKind::Scheme))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(trust_domain).map_err(error)?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(error(SpiffeIdErrorKind::Path));
        };
        check_segment(Segment::Namespace, namespace).map_err(error)?;
        check_segment(Segment::ServiceAccount, service_account).map_err(error)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids_parse_and_print_back() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/default",
                ("cluster.local", "default", "default"),
            ),
            ("spiffe://td/ns/ns1/sa/sa1", ("td", "ns1", "sa1")),
            (
                "spiffe://my-mesh_1.example.com/ns/kube-system/sa/Some.Account_2",
                ("my-mesh_1.example.com", "kube-system", "Some.Account_2"),
            ),
            // A namespace called "sa" and an account called "ns" are just names.
            (
                "spiffe://cluster.local/ns/sa/sa/ns",
                ("cluster.local", "sa", "ns"),
            ),
        ];
        for (text, (td, ns, sa)) in cases {
            let id: SpiffeId = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (id.trust_domain(), id.namespace(), id.service_account()),
                (td, ns, sa),
                "{text}"
            );
            assert_eq!(id.to_string(), text);
            assert_eq!(SpiffeId::new(td, ns, sa).unwrap(), id, "{text}");
        }
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        use Segment::{Namespace, ServiceAccount};
        use SpiffeIdErrorKind as K;
        let long = format!("spiffe://cluster.local/ns/default/sa/{}", "a".repeat(2048));
        let cases: Vec<(&str, SpiffeIdErrorKind)> = vec![
            ("", K::Scheme),
            ("cluster.local/ns/default/sa/default", K::Scheme),
            ("SPIFFE://cluster.local/ns/default/sa/default", K::Scheme),
            ("https://cluster.local/ns/default/sa/default", K::Scheme),
            ("spiffe:/cluster.local/ns/default/sa/default", K::Scheme),
            ("spiffe:///ns/default/sa/default", K::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/default/sa/default",
                K::TrustDomainChar('C'),
            ),
            (
                "spiffe://cluster.local:443/ns/default/sa/default",
                K::TrustDomainChar(':'),
            ),
            (
                "spiffe://user@cluster.local/ns/default/sa/default",
                K::TrustDomainChar('@'),
            ),
            ("spiffe://cluster.local", K::Path),
            ("spiffe://cluster.local/", K::Path),
            ("spiffe://cluster.local/ns/default", K::Path),
            ("spiffe://cluster.local/ns/default/sa", K::Path),
            ("spiffe://cluster.local/ns/default/sa/default/", K::Path),
            (
                "spiffe://cluster.local/ns/default/sa/default/extra",
                K::Path,
            ),
            ("spiffe://cluster.local/sa/default/ns/default", K::Path),
            ("spiffe://cluster.local//ns/default/sa/default", K::Path),
            (
                "spiffe://cluster.local/ns//sa/default",
                K::EmptySegment(Namespace),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/",
                K::EmptySegment(ServiceAccount),
            ),
            (
                "spiffe://cluster.local/ns/../sa/default",
                K::DotSegment(Namespace, "..".into()),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/.",
                K::DotSegment(ServiceAccount, ".".into()),
            ),
            (
                "spiffe://cluster.local/ns/def%41ult/sa/default",
                K::SegmentChar(Namespace, '%'),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/de fault",
                K::SegmentChar(ServiceAccount, ' '),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/default?x=1",
                K::SegmentChar(ServiceAccount, '?'),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/default#f",
                K::SegmentChar(ServiceAccount, '#'),
            ),
            (&long, K::TooLong(long.len())),
        ];
        for (text, kind) in cases {
            let error = text.parse::<SpiffeId>().expect_err(text);
            assert_eq!(error.kind, kind, "{text}");
            assert_eq!(error.id, text);
            assert!(
                error.to_string().contains("spiffe://<trust domain>"),
                "{error}"
            );
        }
    }

    #[test]
    fn new_refuses_parts_that_would_not_parse() {
        let cases = [
            (("", "ns", "sa"), SpiffeIdErrorKind::EmptyTrustDomain),
            (
                ("td", "a/b", "sa"),
                SpiffeIdErrorKind::SegmentChar(Segment::Namespace, '/'),
            ),
            (
                ("td", "ns", ""),
                SpiffeIdErrorKind::EmptySegment(Segment::ServiceAccount),
            ),
        ];
        for ((td, ns, sa), kind) in cases {
            let error = SpiffeId::new(td, ns, sa).expect_err(td);
            assert_eq!(error.kind, kind);
        }
    }

    #[test]
    fn serde_is_the_string() {
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""spiffe://cluster.local/ns/default/sa/sleep""#);
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        let error = serde_json::from_str::<SpiffeId>(r#""spiffe://cluster.local/ns/default""#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("the path is not"), "{error}");
    }
}
