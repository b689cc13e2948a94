//! Kubernetes mode, at SIGTERM: is this an uninstall, or a rollout? The agent's own DaemonSet
//! says. Gone (404) or being deleted (`deletionTimestamp`): shunt is being uninstalled, so the
//! agent removes its CNI config entries and unpins capture as it stops, as `POST /uninstall`
//! does. Present, or unknown (an API error): a rollout or a restart, so everything stays for
//! the next agent to adopt; pods keep failing closed rather than starting uncaptured.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;

/// The agent's DaemonSet, in its namespace (`--system-namespace`); the name the installer
/// renders.
pub const DAEMON_SET: &str = "shunt-agent";
/// How long the agent asks, within the pod's termination grace period.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API server says of the agent's DaemonSet.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnDaemonSet {
    Present,
    Deleting,
    Gone,
    /// It could not be read: why.
    Unknown(String),
}

impl OwnDaemonSet {
    /// What `GET daemonsets/<DAEMON_SET>` answered.
    #[must_use]
    pub fn of(answer: Result<Option<DaemonSet>, String>) -> Self {
        match answer {
            Ok(None) => Self::Gone,
            Ok(Some(daemon_set)) if daemon_set.metadata.deletion_timestamp.is_some() => {
                Self::Deleting
            }
            Ok(Some(_)) => Self::Present,
            Err(why) => Self::Unknown(why),
        }
    }

    /// Whether the agent removes its CNI entries and capture as it stops.
    #[must_use]
    pub fn uninstalls(&self) -> bool {
        matches!(self, Self::Gone | Self::Deleting)
    }
}

/// Asks the API server about the DaemonSet [`DAEMON_SET`] in `namespace`.
pub async fn check(client: &kube::Client, namespace: &str) -> OwnDaemonSet {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let answer = match tokio::time::timeout(CHECK_TIMEOUT, api.get_opt(DAEMON_SET)).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    OwnDaemonSet::of(answer)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    #[test]
    fn only_a_daemon_set_gone_or_being_deleted_uninstalls() {
        let daemon_set = |deleting: bool| DaemonSet {
            metadata: ObjectMeta {
                name: Some(DAEMON_SET.into()),
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
        };
        let cases = [
            ("404: deleted", Ok(None), OwnDaemonSet::Gone, true),
            (
                "deletionTimestamp: being deleted",
                Ok(Some(daemon_set(true))),
                OwnDaemonSet::Deleting,
                true,
            ),
            (
                "present: a rollout or a restart",
                Ok(Some(daemon_set(false))),
                OwnDaemonSet::Present,
                false,
            ),
            (
                "unreadable (403, timeout): kept",
                Err("forbidden".to_owned()),
                OwnDaemonSet::Unknown("forbidden".into()),
                false,
            ),
        ];
        for (name, answer, want, uninstalls) in cases {
            let got = OwnDaemonSet::of(answer);
            assert_eq!(got, want, "{name}");
            assert_eq!(got.uninstalls(), uninstalls, "{name}");
        }
    }
}
