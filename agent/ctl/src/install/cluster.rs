//! `shuntctl install` without `--render`, and `shuntctl uninstall --cluster`, against a
//! cluster (kube-rs).
//!
//! - Install applies the rendered objects with server-side apply (field manager
//!   [`FIELD_MANAGER`], forced, as istioctl does): the CustomResourceDefinitions first, waited
//!   for until Established, then the rest in render order, then waits for each DaemonSet's
//!   rollout (desired = updated = ready, `observedGeneration` current).
//! - Uninstall deletes them in reverse order; the CRDs (and with them every object of their
//!   kinds) only with `--purge`, as istioctl's `uninstall --purge`. Each node's agent removes
//!   its CNI entries and capture itself as it stops, once it sees its DaemonSet gone.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::time::Instant;

use super::render::{self, Object};

/// The field manager of every apply (`kubectl get -o yaml --show-managed-fields` shows it).
pub const FIELD_MANAGER: &str = "shuntctl";
/// How often CRDs and DaemonSets are read while waited for.
const POLL: Duration = Duration::from_millis(500);

/// Which cluster: the kubeconfig and its context.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig [default: $KUBECONFIG, else ~/.kube/config, else the pod's service
    /// account].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use [default: its current-context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kubeconfig: {0}; check --kubeconfig and --context")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error(
        "cannot find the Kubernetes API: no kubeconfig ($KUBECONFIG, ~/.kube/config) and no \
         in-cluster service account: {0}; give --kubeconfig"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error(transparent)]
    Serialize(#[from] render::Error),
    #[error("cannot read back {object} as JSON: {source}")]
    Reread {
        object: String,
        source: serde_yaml::Error,
    },
    #[error("cannot {verb} {object}: {}", hint(source, verb, plural))]
    Request {
        verb: &'static str,
        object: String,
        plural: String,
        source: Box<kube::Error>,
    },
    #[error(
        "CustomResourceDefinition {name} was not Established within {}s: check its \
         status.conditions (`kubectl get crd {name} -o yaml`: NamesAccepted, Established), \
         or give a longer --timeout", timeout.as_secs()
    )]
    NotEstablished { name: String, timeout: Duration },
    #[error(
        "{kind} {namespace}/{name} was not ready within {}s ({state}): check `kubectl -n \
         {namespace} describe {} {name}` and its pods' events (image pull, scheduling, \
         probes), or give a longer --timeout", timeout.as_secs(), kind.to_lowercase()
    )]
    NotReady {
        kind: String,
        namespace: String,
        name: String,
        state: String,
        timeout: Duration,
    },
}

/// What to check after a failed request.
fn hint(error: &kube::Error, verb: &str, plural: &str) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{}: forbidden; the kubeconfig's user needs RBAC rights to {verb} {plural} (check \
             `kubectl auth can-i {verb} {plural}`)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 422 => format!(
            "{}: the API server refused the object (validation or admission)",
            status.message
        ),
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => {
            format!("{other}; check that the API server is reachable (--kubeconfig, --context)")
        }
    }
}

/// A client for `args`' kubeconfig and context; with neither, the default kubeconfig or the
/// in-cluster service account.
pub async fn connect(args: &ClusterArgs) -> Result<kube::Client, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer().await?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// One rendered object as the API takes it.
struct Target {
    kind: &'static str,
    api: ApiResource,
    namespace: Option<String>,
    name: String,
    value: serde_json::Value,
}

impl Target {
    fn of(object: &Object) -> Result<Self, Error> {
        let api = match object {
            Object::Namespace(_) => ApiResource::erase::<Namespace>(&()),
            Object::ResourceQuota(_) => ApiResource::erase::<ResourceQuota>(&()),
            Object::ServiceAccount(_) => ApiResource::erase::<ServiceAccount>(&()),
            Object::ClusterRole(_) => ApiResource::erase::<ClusterRole>(&()),
            Object::ClusterRoleBinding(_) => ApiResource::erase::<ClusterRoleBinding>(&()),
            Object::Role(_) => ApiResource::erase::<Role>(&()),
            Object::RoleBinding(_) => ApiResource::erase::<RoleBinding>(&()),
            Object::ConfigMap(_) => ApiResource::erase::<ConfigMap>(&()),
            Object::Service(_) => ApiResource::erase::<Service>(&()),
            Object::Deployment(_) => ApiResource::erase::<Deployment>(&()),
            Object::DaemonSet(_) => ApiResource::erase::<DaemonSet>(&()),
            Object::CustomResourceDefinition(_) => {
                ApiResource::erase::<CustomResourceDefinition>(&())
            }
        };
        let mut target = Self {
            kind: object.kind(),
            api,
            namespace: object.metadata().namespace.clone(),
            name: object.name().to_owned(),
            value: serde_json::Value::Null,
        };
        target.value =
            serde_yaml::from_str(&object.to_yaml()?).map_err(|source| Error::Reread {
                object: target.to_string(),
                source,
            })?;
        Ok(target)
    }

    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &self.api),
            None => Api::all_with(client.clone(), &self.api),
        }
    }

    fn failed(&self, verb: &'static str) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::Request {
            verb,
            object: self.to_string(),
            plural: self.api.plural.clone(),
            source: Box::new(source),
        }
    }

    async fn get(&self, client: &kube::Client) -> Result<DynamicObject, Error> {
        self.api(client)
            .get(&self.name)
            .await
            .map_err(self.failed("get"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

fn targets(objects: &[Object]) -> Result<Vec<Target>, Error> {
    objects.iter().map(Target::of).collect()
}

fn is_crd(target: &Target) -> bool {
    target.kind == "CustomResourceDefinition"
}

/// Applies `objects` and waits for them, `timeout` in all, printing progress.
pub async fn install(
    client: &kube::Client,
    objects: &[Object],
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let targets = targets(objects)?;
    let (crds, rest): (Vec<&Target>, Vec<&Target>) = targets.iter().partition(|t| is_crd(t));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let apply = async |target: &Target| {
        target
            .api(client)
            .patch(&target.name, &params, &Patch::Apply(&target.value))
            .await
            .map_err(target.failed("apply (patch)"))
    };
    for crd in &crds {
        apply(crd).await?;
        println!("✔ {crd} applied");
    }
    // The kinds must be served before the agent lists them.
    for crd in &crds {
        loop {
            if established(&crd.get(client).await?) {
                println!("✔ {crd} established");
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotEstablished {
                    name: crd.name.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
    for target in &rest {
        apply(target).await?;
        println!("✔ {target} applied");
    }
    // The DaemonSets, and shunt's CA when it is installed: the proxies need it for their
    // first certificates.
    for workload in rest.iter().filter(|t| Rollout::KINDS.contains(&t.kind)) {
        let mut last = None;
        loop {
            let rollout = Rollout::of(workload.kind, &workload.get(client).await?);
            if rollout.done() {
                println!("✔ {workload} ready ({})", rollout.summary());
                break;
            }
            if last.as_ref() != Some(&rollout) {
                println!("… {} {}", workload.name, rollout.summary());
                last = Some(rollout.clone());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    kind: workload.kind.to_owned(),
                    namespace: workload.namespace.clone().unwrap_or_default(),
                    name: workload.name.clone(),
                    state: rollout.summary(),
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
    println!("shunt is installed");
    Ok(())
}

/// Deletes `objects` in reverse order, the CRDs only when `purge`, printing each.
pub async fn uninstall(
    client: &kube::Client,
    objects: &[Object],
    purge: bool,
) -> Result<(), Error> {
    let targets = targets(objects)?;
    for target in targets.iter().rev() {
        if is_crd(target) && !purge {
            continue;
        }
        match target
            .api(client)
            .delete(&target.name, &DeleteParams::background())
            .await
        {
            Ok(_) => println!("✔ {target} deleted"),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                println!("… {target} not found (already gone)");
            }
            Err(e) => return Err(target.failed("delete")(e)),
        }
    }
    if !purge && targets.iter().any(is_crd) {
        println!(
            "the CustomResourceDefinitions are kept, with every object of their kinds \
             (--purge deletes them)"
        );
    }
    println!(
        "each node's {} removes its CNI config entries and capture as it stops",
        render::AGENT
    );
    Ok(())
}

/// Whether a CRD's `Established` condition is `True`.
fn established(crd: &DynamicObject) -> bool {
    crd.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// A DaemonSet's or a Deployment's rollout, from its status, as `kubectl rollout status`
/// judges it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rollout {
    kind: String,
    generation: i64,
    /// `None` until the controller has seen the object.
    observed_generation: Option<i64>,
    desired: i64,
    updated: i64,
    ready: i64,
    /// Pods of any spec (a Deployment's `status.replicas`): old ones must be gone. `None` for
    /// a DaemonSet, whose old pods are replaced in place.
    running: Option<i64>,
}

impl Rollout {
    /// The kinds whose rollout `install` waits for.
    const KINDS: [&str; 2] = ["DaemonSet", "Deployment"];

    fn of(kind: &str, object: &DynamicObject) -> Self {
        let status = &object.data["status"];
        let number = |field: &str| status[field].as_i64().unwrap_or_default();
        let (desired, updated, ready, running) = if kind == "Deployment" {
            (
                // Kubernetes' default.
                object.data["spec"]["replicas"].as_i64().unwrap_or(1),
                number("updatedReplicas"),
                number("availableReplicas"),
                Some(number("replicas")),
            )
        } else {
            (
                number("desiredNumberScheduled"),
                number("updatedNumberScheduled"),
                number("numberReady"),
                None,
            )
        };
        Self {
            kind: kind.to_owned(),
            generation: object.metadata.generation.unwrap_or_default(),
            observed_generation: status["observedGeneration"].as_i64(),
            desired,
            updated,
            ready,
            running,
        }
    }

    /// Every wanted pod updated and ready (a Deployment: available), no pod of an old spec
    /// left, as seen by a controller that has seen the current spec.
    fn done(&self) -> bool {
        self.observed_generation
            .is_some_and(|observed| observed >= self.generation)
            && self.updated == self.desired
            && self.ready == self.desired
            && self.running.is_none_or(|running| running == self.updated)
    }

    fn summary(&self) -> String {
        if !self
            .observed_generation
            .is_some_and(|observed| observed >= self.generation)
        {
            return format!(
                "waiting for the {} controller to see the new spec",
                self.kind
            );
        }
        if let Some(old) = self.running.map(|running| running - self.updated)
            && old > 0
        {
            return format!(
                "{}/{} ready, {} updated, {old} of the old spec",
                self.ready, self.desired, self.updated
            );
        }
        format!(
            "{}/{} ready, {} updated",
            self.ready, self.desired, self.updated
        )
    }
}

/// `--timeout`: a duration such as `90s`, `5m` or `1m30s`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    shunt_mesh::istio::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_is_done_when_every_pod_is_updated_and_ready() {
        let current = Rollout {
            kind: "DaemonSet".into(),
            generation: 2,
            observed_generation: Some(2),
            desired: 3,
            updated: 3,
            ready: 3,
            running: None,
        };
        let deployment = Rollout {
            kind: "Deployment".into(),
            desired: 1,
            updated: 1,
            ready: 1,
            running: Some(1),
            ..current.clone()
        };
        let cases = [
            ("every pod updated and ready", current.clone(), true),
            (
                "no node to run on",
                Rollout {
                    desired: 0,
                    updated: 0,
                    ready: 0,
                    ..current.clone()
                },
                true,
            ),
            (
                "one pod not ready",
                Rollout {
                    ready: 2,
                    ..current.clone()
                },
                false,
            ),
            (
                "one pod of the old spec",
                Rollout {
                    updated: 2,
                    ..current.clone()
                },
                false,
            ),
            (
                "the status is of the previous spec",
                Rollout {
                    observed_generation: Some(1),
                    ..current.clone()
                },
                false,
            ),
            (
                "no status yet",
                Rollout {
                    observed_generation: None,
                    ..current.clone()
                },
                false,
            ),
            (
                "a Deployment's one replica available",
                deployment.clone(),
                true,
            ),
            (
                "a Deployment's old pod still running",
                Rollout {
                    running: Some(2),
                    ..deployment.clone()
                },
                false,
            ),
            (
                "a Deployment's new pod not available yet",
                Rollout {
                    ready: 0,
                    ..deployment
                },
                false,
            ),
        ];
        for (name, rollout, want) in cases {
            assert_eq!(rollout.done(), want, "{name}: {rollout:?}");
        }
    }

    #[test]
    fn rendered_objects_become_api_targets() {
        let values = super::super::overlay::values(&super::super::Sources::profile("default"))
            .unwrap_or_else(|e| panic!("{e}"));
        let objects = render::render(&values);
        let targets = targets(&objects).unwrap_or_else(|e| panic!("{e}"));
        for target in &targets {
            assert_eq!(target.value["kind"], target.kind, "{target}");
            assert_eq!(
                target.value["apiVersion"], target.api.api_version,
                "{target}"
            );
            assert_eq!(target.value["metadata"]["name"], target.name.as_str());
        }
        let agent = targets
            .iter()
            .find(|t| t.kind == "DaemonSet" && t.name == render::AGENT)
            .unwrap_or_else(|| panic!("no agent DaemonSet"));
        assert_eq!(agent.to_string(), "DaemonSet shunt-system/shunt-agent");
        assert_eq!(agent.api.plural, "daemonsets");
    }
}
