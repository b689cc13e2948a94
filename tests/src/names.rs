//! Names derived from a test name, so parallel tests never share a netns, cgroup, pin folder or
//! temp dir, and a rerun of the same test finds (and sweeps) what a crashed run left behind.

use std::path::PathBuf;

/// Longest readable part kept from the test name.
const ABBREV_LEN: usize = 8;
/// Longest pod name: keeps netns names short and readable.
const MAX_POD_NAME: usize = 20;
/// Pod names that would collide with the harness's own `shunt-<short>-node` / `-agent`.
const RESERVED_POD_NAMES: [&str; 2] = ["node", "agent"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "pod name {0:?} is not usable: use 1-{MAX_POD_NAME} characters of a-z, 0-9 and '-', \
         starting with a letter, and not one of {RESERVED_POD_NAMES:?}"
    )]
    BadPodName(String),
}

/// Every name one node uses, all starting with `shunt-<short>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    short: String,
}

impl Names {
    /// `short` is up to 8 letters and digits of the test name, then 6 hex digits of its hash:
    /// readable in `ip netns list`, unique per test, and the same on every run.
    #[must_use]
    pub fn new(test_name: &str) -> Self {
        let abbrev: String = test_name
            .rsplit("::")
            .next()
            .unwrap_or(test_name)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .take(ABBREV_LEN)
            .collect();
        let hash = fnv1a32(test_name.as_bytes()) & 0x00ff_ffff;
        let short = if abbrev.is_empty() {
            format!("{hash:06x}")
        } else {
            format!("{abbrev}-{hash:06x}")
        };
        Self { short }
    }

    #[must_use]
    pub fn short(&self) -> &str {
        &self.short
    }

    /// `shunt-<short>`: the prefix of every name below.
    #[must_use]
    pub fn prefix(&self) -> String {
        format!("shunt-{}", self.short)
    }

    /// The node's netns, holding the bridge the pods hang off.
    #[must_use]
    pub fn node_netns(&self) -> String {
        format!("{}-node", self.prefix())
    }

    /// A pod's netns.
    pub fn pod_netns(&self, pod: &str) -> Result<String, Error> {
        validate_pod_name(pod)?;
        Ok(format!("{}-{pod}", self.prefix()))
    }

    /// True for every netns name this node may create.
    #[must_use]
    pub fn owns_netns(&self, netns: &str) -> bool {
        netns
            .strip_prefix(&self.prefix())
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// The cgroup the pods' processes and the proxy run in, and the agent attaches to.
    #[must_use]
    pub fn node_cgroup(&self) -> String {
        self.prefix()
    }

    /// The agent's own cgroup: outside the node's, so capture never sees the agent's sockets,
    /// and killable as a whole when a crashed run left an agent behind.
    #[must_use]
    pub fn agent_cgroup(&self) -> String {
        format!("{}-agent", self.prefix())
    }

    /// The agent instance: its pin folder is `<bpffs>/shunt/<instance>`.
    #[must_use]
    pub fn instance(&self) -> String {
        self.prefix()
    }

    /// Config, run dir and process logs.
    #[must_use]
    pub fn temp_dir(&self) -> PathBuf {
        std::env::temp_dir().join(self.prefix())
    }

    /// The names of node `index` of a cluster named like this: every one of them starts with
    /// `shunt-<short>-n<index>`, so the cluster's own [`Names::owns_netns`] covers its nodes'
    /// netns too.
    #[must_use]
    pub fn cluster_node(&self, index: usize) -> Self {
        Self {
            short: format!("{}-n{index}", self.short),
        }
    }

    /// A cluster's underlay: the netns with the bridge that joins its nodes.
    #[must_use]
    pub fn underlay_netns(&self) -> String {
        format!("{}-underlay", self.prefix())
    }

    /// A cluster's own processes (the underlay capture), so a sweep can kill what a crashed
    /// run left running.
    #[must_use]
    pub fn cluster_cgroup(&self) -> String {
        format!("{}-cluster", self.prefix())
    }
}

fn validate_pod_name(pod: &str) -> Result<(), Error> {
    let well_formed = (1..=MAX_POD_NAME).contains(&pod.len())
        && pod.starts_with(|c: char| c.is_ascii_lowercase())
        && pod
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if well_formed && !RESERVED_POD_NAMES.contains(&pod) {
        Ok(())
    } else {
        Err(Error::BadPodName(pod.to_owned()))
    }
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_readable_stable_and_distinct() {
        let a = Names::new("e2e::pod_to_pod_echo");
        assert!(a.short().starts_with("podtopod-"), "{}", a.short());
        assert_eq!(a, Names::new("e2e::pod_to_pod_echo"));
        assert_ne!(a.short(), Names::new("e2e::pod_to_pod_other").short());
        assert_eq!(Names::new("").short().len(), 6);
    }

    #[test]
    fn node_owns_only_its_own_netns() {
        let names = Names::new("t");
        let other = Names::new("u");
        let pod = names.pod_netns("client").unwrap();
        for (netns, owned) in [
            (names.node_netns(), true),
            (pod, true),
            (other.node_netns(), false),
            (format!("{}x-node", names.prefix()), false),
            ("unrelated".to_owned(), false),
        ] {
            assert_eq!(names.owns_netns(&netns), owned, "{netns}");
        }
    }

    #[test]
    fn a_clusters_names_cover_its_nodes_and_no_other_clusters() {
        let cluster = Names::new("multinode::t");
        let node = cluster.cluster_node(1);
        assert_eq!(node.prefix(), format!("{}-n1", cluster.prefix()));
        let other = Names::new("multinode::u");
        for (netns, owned) in [
            (cluster.underlay_netns(), true),
            (node.node_netns(), true),
            (node.pod_netns("a").unwrap(), true),
            (other.underlay_netns(), false),
            (other.cluster_node(1).node_netns(), false),
        ] {
            assert_eq!(cluster.owns_netns(&netns), owned, "{netns}");
        }
        let cgroups = [
            cluster.cluster_cgroup(),
            node.node_cgroup(),
            node.agent_cgroup(),
            cluster.cluster_node(0).node_cgroup(),
            cluster.cluster_node(0).agent_cgroup(),
        ];
        let unique: std::collections::BTreeSet<_> = cgroups.iter().collect();
        assert_eq!(unique.len(), cgroups.len(), "{cgroups:?}");
    }

    #[test]
    fn pod_names_are_validated() {
        let names = Names::new("t");
        for (pod, ok) in [
            ("client", true),
            ("backend-2", true),
            ("", false),
            ("Client", false),
            ("2pods", false),
            ("a_b", false),
            ("node", false),
            ("agent", false),
            ("a-very-long-pod-name-indeed", false),
        ] {
            assert_eq!(names.pod_netns(pod).is_ok(), ok, "{pod:?}");
        }
    }
}
