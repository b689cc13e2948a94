//! Problems in the security config, each naming its object and field.

use crate::routing::ObjectRef;

/// A problem in a security policy. [`Error::Invalid`] leaves the object out (a PeerAuthentication
/// that asked for `STRICT` then fails closed, see [`crate::istio::FailClosed`]); the others
/// leave it in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value Istio rejects: the object is left out whole.
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// The object the problem is in.
        object: ObjectRef,
        /// The field path, e.g. `spec.portLevelMtls.8080.mode`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A valid object that does nothing, as in Istio (a selector in the root namespace, a
    /// second namespace-wide policy); it stays in the config.
    #[error("{object}: {field}: {message}")]
    Ignored {
        /// The object that does nothing.
        object: ObjectRef,
        /// The field that makes it so.
        field: String,
        /// Why, and what to change.
        message: String,
    },
}

impl Error {
    /// The object the problem is about.
    #[must_use]
    pub fn object(&self) -> &ObjectRef {
        match self {
            Self::Invalid { object, .. } | Self::Ignored { object, .. } => object,
        }
    }

    /// The field path.
    #[must_use]
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Ignored { field, .. } => field,
        }
    }

    /// What is wrong, without the object and field.
    #[must_use]
    pub fn message(&self) -> &str {
        match self {
            Self::Invalid { message, .. } | Self::Ignored { message, .. } => message,
        }
    }

    /// Whether the object was left out.
    #[must_use]
    pub fn drops_object(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }
}
