//! `shuntctl install` (server-side apply, then waiting) and `shuntctl uninstall --cluster`: the
//! real binary against the FAKE API server, through a kubeconfig. The test plays the cluster's
//! controllers: it marks each applied CRD Established, and sets each DaemonSet's status.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use shunt_tests::binaries::Binaries;

use crate::fake_apiserver::{FakeApiServer, Resource};

const CRDS: Resource = "apiextensions.k8s.io/v1/customresourcedefinitions";
const DAEMON_SETS: Resource = "apps/v1/daemonsets";
const DEPLOYMENTS: Resource = "apps/v1/deployments";
/// How often the controllers look at the objects.
const TICK: Duration = Duration::from_millis(50);
/// The most any shuntctl run may take (bounded by its own --timeout well before).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What the test's stand-in controllers do with a DaemonSet.
#[derive(Clone, Copy)]
enum DaemonSets {
    /// Its one pod updated and ready.
    Ready,
    /// Its one pod never ready.
    NeverReady,
}

/// One step of the controllers: CRDs Established, DaemonSets' status written. Panics when
/// anything but a CRD was applied while a CRD is not yet Established.
fn control(server: &FakeApiServer, daemon_sets: DaemonSets) {
    let others = server.applied().iter().any(|a| !a.starts_with(CRDS));
    let crds = server.objects(CRDS);
    let pending: Vec<&String> = crds
        .iter()
        .filter(|(_, crd)| crd["status"]["conditions"].is_null())
        .map(|(name, _)| name)
        .collect();
    assert!(
        !others || pending.is_empty(),
        "objects applied before these CRDs were Established: {pending:?}"
    );
    for (_, mut crd) in crds {
        if crd["status"]["conditions"].is_null() {
            crd["status"] = json!({"conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": "True"}]});
            server.apply(CRDS, crd);
        }
    }
    for (_, mut daemon_set) in server.objects(DAEMON_SETS) {
        let generation = daemon_set["metadata"]["generation"].clone();
        if daemon_set["status"]["observedGeneration"] == generation {
            continue;
        }
        let ready = match daemon_sets {
            DaemonSets::Ready => 1,
            DaemonSets::NeverReady => 0,
        };
        daemon_set["status"] = json!({"observedGeneration": generation,
            "desiredNumberScheduled": 1, "updatedNumberScheduled": 1, "numberReady": ready});
        server.apply(DAEMON_SETS, daemon_set);
    }
    // shunt's CA: its one replica available.
    for (_, mut deployment) in server.objects(DEPLOYMENTS) {
        let generation = deployment["metadata"]["generation"].clone();
        if deployment["status"]["observedGeneration"] == generation {
            continue;
        }
        deployment["status"] = json!({"observedGeneration": generation, "replicas": 1,
            "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1});
        server.apply(DEPLOYMENTS, deployment);
    }
}

/// The fake API server and a kubeconfig for it.
struct Cluster {
    server: FakeApiServer,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// How a shuntctl run ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Cluster {
    async fn start() -> Self {
        let server = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kubeconfig = server.kubeconfig(dir.path());
        Self {
            server,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Runs `shuntctl ARGS --kubeconfig KUBECONFIG` while the controllers act.
    async fn shuntctl(&self, daemon_sets: DaemonSets, args: &[&str]) -> Run {
        let binary = Binaries::from_env()
            .shuntctl()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(binary)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running shuntctl: {e}"));
        let ticks = RUN_LIMIT.as_millis() / TICK.as_millis();
        for _ in 0..ticks {
            if child.try_wait().ok().flatten().is_some() {
                let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                return Run {
                    success: output.status.success(),
                    stdout: text(&output.stdout),
                    stderr: text(&output.stderr),
                };
            }
            control(&self.server, daemon_sets);
            tokio::time::sleep(TICK).await;
        }
        let _ = child.kill();
        panic!("shuntctl {args:?} did not finish within {RUN_LIMIT:?}");
    }
}

/// The recorded applies (`resource key`) whose objects the server still holds.
fn held(server: &FakeApiServer, applied: &[String]) -> Vec<String> {
    applied
        .iter()
        .filter(|entry| {
            let (resource, key) = entry.split_once(' ').unwrap_or_default();
            server.objects(resource).contains_key(key)
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_crds_first_waits_for_the_daemon_sets_and_uninstall_deletes_the_rest() {
    let cluster = Cluster::start().await;
    let server = &cluster.server;
    let Run {
        success,
        stdout,
        stderr,
    } = cluster
        .shuntctl(
            DaemonSets::Ready,
            &["install", "--timeout=60s", "--set", "ca.mode=shunt"],
        )
        .await;
    assert!(success, "{stdout}\n{stderr}");

    // Every CRD before anything else, and each Established before the rest was applied.
    let applied = server.applied();
    let crds = applied.iter().take_while(|a| a.starts_with(CRDS)).count();
    assert!(crds >= 1, "{applied:?}");
    assert!(
        applied[crds..].iter().all(|a| !a.starts_with(CRDS)),
        "CRDs applied after other objects: {applied:?}"
    );
    let first_other = stdout
        .find("✔ Namespace shunt-system applied")
        .unwrap_or_else(|| panic!("{stdout}"));
    for crd in &applied[..crds] {
        let name = crd.rsplit(' ').next().unwrap_or_default();
        let line = format!("✔ CustomResourceDefinition {name} established");
        let at = stdout
            .find(&line)
            .unwrap_or_else(|| panic!("{line}: {stdout}"));
        assert!(at < first_other, "{stdout}");
    }
    for daemon_set in ["shunt-agent", "shunt-proxy"] {
        assert!(
            applied.contains(&format!("{DAEMON_SETS} shunt-system/{daemon_set}")),
            "{applied:?}"
        );
        assert!(
            stdout.contains(&format!(
                "✔ DaemonSet shunt-system/{daemon_set} ready (1/1 ready, 1 updated)"
            )),
            "{stdout}"
        );
    }

    assert!(
        stdout.contains("✔ Deployment shunt-system/shunt-ca ready (1/1 ready, 1 updated)"),
        "the CA is waited for: {stdout}"
    );

    let uninstall = cluster
        .shuntctl(
            DaemonSets::Ready,
            &["uninstall", "--cluster", "--set", "ca.mode=shunt"],
        )
        .await;
    assert!(
        uninstall.success,
        "{}\n{}",
        uninstall.stdout, uninstall.stderr
    );
    let left = held(server, &applied);
    assert_eq!(left, applied[..crds].to_vec(), "{}", uninstall.stdout);

    let purge = cluster
        .shuntctl(
            DaemonSets::Ready,
            &[
                "uninstall",
                "--cluster",
                "--purge",
                "--set",
                "ca.mode=shunt",
            ],
        )
        .await;
    assert!(purge.success, "{}", purge.stderr);
    assert_eq!(held(server, &applied), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_fails_after_its_timeout_naming_the_daemon_set_that_is_not_ready() {
    let cluster = Cluster::start().await;
    let Run {
        success,
        stdout,
        stderr,
    } = cluster
        .shuntctl(DaemonSets::NeverReady, &["install", "--timeout=3s"])
        .await;
    assert!(!success, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("DaemonSet shunt-system/shunt-agent was not ready within 3s (0/1 ready"),
        "{stderr}"
    );
    assert!(
        stdout.contains("… shunt-agent 0/1 ready, 1 updated"),
        "{stdout}"
    );
}

/// The agent's SIGTERM question, through the real client: its DaemonSet gone, present, or
/// being deleted.
#[tokio::test]
async fn the_agent_reads_its_own_daemon_set_at_stop() {
    use shunt_agent::own_daemon_set::{self, OwnDaemonSet};
    let cluster = Cluster::start().await;
    let client = shunt_agent::source::kube::connect(Some(&cluster.kubeconfig))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let daemon_set = |deleting: bool| {
        let mut object = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": own_daemon_set::DAEMON_SET, "namespace": "shunt-system"}});
        if deleting {
            object["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        object
    };
    assert_eq!(
        own_daemon_set::check(&client, "shunt-system").await,
        OwnDaemonSet::Gone
    );
    cluster.server.apply(DAEMON_SETS, daemon_set(false));
    assert_eq!(
        own_daemon_set::check(&client, "shunt-system").await,
        OwnDaemonSet::Present
    );
    // Another namespace's DaemonSet of that name is not the agent's.
    assert_eq!(
        own_daemon_set::check(&client, "other").await,
        OwnDaemonSet::Gone
    );
    cluster.server.apply(DAEMON_SETS, daemon_set(true));
    assert_eq!(
        own_daemon_set::check(&client, "shunt-system").await,
        OwnDaemonSet::Deleting
    );
}
