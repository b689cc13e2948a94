//! Typed identifiers of mesh objects, so that a pod's uid is never mistaken for its name or a
//! namespace on its way through the agent, the control protocol and the proxy.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A pod's `metadata.uid`, or `namespace/name` when the config gives none (local mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodUid(String);

impl PodUid {
    /// The uid as it was given.
    #[must_use]
    pub fn new(uid: impl Into<String>) -> Self {
        Self(uid.into())
    }

    /// The uid as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Maps keyed by uid can be asked with a `&str` from a message or a test.
impl Borrow<str> for PodUid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for PodUid {
    fn from(uid: String) -> Self {
        Self(uid)
    }
}

impl From<&str> for PodUid {
    fn from(uid: &str) -> Self {
        Self(uid.to_owned())
    }
}

impl PartialEq<str> for PodUid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PodUid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
