//! Problems in the Istio config, each naming its object and field.

use super::decision::{Host, ObjectRef};

/// A problem in the Istio config. [`Error::Invalid`] drops its object whole; the others
/// leave it applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value Istio rejects, or a feature shunt does not support: the object is left out whole.
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// The object the problem is in.
        object: ObjectRef,
        /// The field path, e.g. `spec.http[1].route[0].destination.host`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The object is valid but part of it does nothing yet (a missing subset, host or route, a
    /// duplicate host); the object still applies.
    #[error("{object}: {field}: {message}")]
    Warning {
        /// The object the problem is in.
        object: ObjectRef,
        /// The field path, e.g. `spec.http[1].route[0].destination.subset`.
        field: String,
        /// What is wrong, and what happens meanwhile.
        message: String,
    },
    /// Two DestinationRules in one namespace for one host; only `kept` applies.
    #[error(
        "{ignored}: spec.host: host {host} already has {kept} (in its namespace the \
         first DestinationRule by creationTimestamp, then name, wins); this one is ignored"
    )]
    DuplicateDestinationRule {
        /// The host both rules name.
        host: Host,
        /// The rule in force: the earliest by `creationTimestamp`, then name.
        kept: ObjectRef,
        /// The rule left out.
        ignored: ObjectRef,
    },
}

impl Error {
    /// The object the problem is about.
    #[must_use]
    pub fn object(&self) -> &ObjectRef {
        match self {
            Self::Invalid { object, .. } | Self::Warning { object, .. } => object,
            Self::DuplicateDestinationRule { ignored, .. } => ignored,
        }
    }

    /// The field path, e.g. `spec.http[1].route[0].destination.host`.
    #[must_use]
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Warning { field, .. } => field,
            Self::DuplicateDestinationRule { .. } => "spec.host",
        }
    }

    /// What is wrong, without the object and field.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::Invalid { message, .. } | Self::Warning { message, .. } => message.clone(),
            Self::DuplicateDestinationRule { host, kept, .. } => format!(
                "host {host} already has {kept} (in its namespace the first DestinationRule by \
                 creationTimestamp, then name, wins); this one is ignored"
            ),
        }
    }

    /// Whether the object was left out of the table.
    #[must_use]
    pub fn drops_object(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }
}
