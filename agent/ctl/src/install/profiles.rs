//! The built-in profiles: values overlays embedded from `agent/ctl/profiles/`. `default`
//! holds every value; the others change a few on top of it.

/// The profile every other one is applied on top of.
pub const DEFAULT: &str = "default";

/// Name and YAML, in the order `shuntctl profile list` shows them.
pub const PROFILES: &[(&str, &str, &str)] = &[
    (
        DEFAULT,
        "every value at its default: eBPF capture, certificates from istiod",
        include_str!("../../profiles/default.yaml"),
    ),
    (
        "minimal",
        "capture and routing only: no workload certificates, smaller requests",
        include_str!("../../profiles/minimal.yaml"),
    ),
    (
        "demo",
        "for trying shunt: access log on, text logs, eBPF warnings logged",
        include_str!("../../profiles/demo.yaml"),
    ),
    (
        "gke",
        "GKE: CNI binaries in /home/kubernetes/bin, the ResourceQuota for system-node-critical",
        include_str!("../../profiles/gke.yaml"),
    ),
    (
        "eks",
        "EKS: not on Fargate nodes",
        include_str!("../../profiles/eks.yaml"),
    ),
];

/// A profile name `shuntctl` does not have.
#[derive(Debug, thiserror::Error)]
#[error("no profile {name:?}: the profiles are {}", names().join(", "))]
pub struct UnknownProfile {
    pub name: String,
}

pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|(name, _, _)| *name).collect()
}

/// The YAML overlay of `name`.
pub fn overlay(name: &str) -> Result<&'static str, UnknownProfile> {
    PROFILES
        .iter()
        .find(|(profile, _, _)| *profile == name)
        .map(|(_, _, yaml)| *yaml)
        .ok_or_else(|| UnknownProfile { name: name.into() })
}
