//! Config sources: where the agent's objects come from. Each publishes whole
//! [`crate::config::Snapshot`]s; the capture decisions, the reconciler and the proxy never
//! know which source made one. Local mode's directory ([`local_dir`]) and the Kubernetes API ([`kube`]).

pub mod kube;
pub mod local_dir;
