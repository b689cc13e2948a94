//! Config sources: where the agent's objects come from. Each publishes whole
//! [`crate::config::Snapshot`]s; the capture decisions, the reconciler and the proxy never
//! know which source made one. Local mode's directory today; the Kubernetes API next.

pub mod local_dir;
