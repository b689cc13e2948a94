//! The agent's local-mode config: Kubernetes-style objects, written as a multi-document YAML
//! file. Each document is JSON, which is YAML too, so no escaping rules of our own.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The annotation naming a pod's netns file.
pub const NETNS_ANNOTATION: &str = "shunt.io/netns";
/// Opts a namespace (or pod) into capture, as Istio users write it.
pub const INJECTION_LABEL: &str = "istio-injection";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not write config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A Namespace object.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceConfig {
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: BTreeMap::new(),
        }
    }

    /// A namespace whose pods are captured (`istio-injection: enabled`).
    #[must_use]
    pub fn injected(name: &str) -> Self {
        Self::new(name).label(INJECTION_LABEL, "enabled")
    }

    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.name, "labels": self.labels},
        })
    }
}

/// A Pod object, running and ready.
#[derive(Clone, Debug)]
pub struct PodConfig {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The netns file, for the `shunt.io/netns` annotation.
    pub netns: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// `(name, containerPort)`.
    pub ports: Vec<(String, u16)>,
    /// `spec.nodeName`; `None` leaves it out (the pod is then the reading agent's).
    pub node_name: Option<String>,
    /// Whether `shunt.io/netns` names `netns`; without it, as a real cluster's pods, the
    /// agent's netns discovery finds it (CNI plugin, /proc scan).
    pub netns_annotation: bool,
    /// `metadata.uid`; `None`: `<namespace>-<name>`.
    pub uid: Option<String>,
}

impl PodConfig {
    #[must_use]
    pub fn new(namespace: &str, name: &str, ip: Ipv4Addr, netns: &Path) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
            netns: netns.to_path_buf(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            service_account: "default".to_owned(),
            ports: Vec::new(),
            node_name: None,
            netns_annotation: true,
            uid: None,
        }
    }

    /// Without the `shunt.io/netns` annotation: discovery must find the netns.
    #[must_use]
    pub fn discovered(mut self) -> Self {
        self.netns_annotation = false;
        self
    }

    /// `metadata.uid` (a real pod's is a UUID, which the /proc scan reads from cgroups).
    #[must_use]
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_owned());
        self
    }

    /// `spec.nodeName`.
    #[must_use]
    pub fn on_node(mut self, node_name: &str) -> Self {
        self.node_name = Some(node_name.to_owned());
        self
    }

    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    #[must_use]
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    #[must_use]
    pub fn port(mut self, name: &str, container_port: u16) -> Self {
        self.ports.push((name.to_owned(), container_port));
        self
    }

    fn to_json(&self) -> Value {
        let mut annotations = self.annotations.clone();
        if self.netns_annotation {
            annotations.insert(
                NETNS_ANNOTATION.to_owned(),
                self.netns.to_string_lossy().into_owned(),
            );
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let mut spec = json!({
            "serviceAccountName": self.service_account,
            "containers": [{"name": "app", "ports": ports}],
        });
        if let (Some(node_name), Some(spec)) = (&self.node_name, spec.as_object_mut()) {
            spec.insert("nodeName".to_owned(), json!(node_name));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}", self.namespace, self.name)),
                "labels": self.labels,
                "annotations": annotations,
            },
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": self.ip.to_string(),
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    }
}

/// A ClusterIP Service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub selector: BTreeMap<String, String>,
    /// `(name, port, targetPort)`; the target is a number or a container port's name.
    pub ports: Vec<(String, u16, Value)>,
}

impl ServiceConfig {
    #[must_use]
    pub fn new(namespace: &str, name: &str, cluster_ip: Ipv4Addr) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cluster_ip,
            selector: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    #[must_use]
    pub fn select(mut self, key: &str, value: &str) -> Self {
        self.selector.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A port forwarding to a numeric target port.
    #[must_use]
    pub fn port(mut self, name: &str, port: u16, target_port: u16) -> Self {
        self.ports.push((name.to_owned(), port, json!(target_port)));
        self
    }

    /// A port forwarding to a named container port.
    #[must_use]
    pub fn named_port(mut self, name: &str, port: u16, target_port: &str) -> Self {
        self.ports.push((name.to_owned(), port, json!(target_port)));
        self
    }

    /// `name.namespace.svc.cluster.local`, Istio's `destination_service`.
    #[must_use]
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    fn to_json(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port, target)| {
                json!({"name": name, "port": port, "targetPort": target, "protocol": "TCP"})
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip.to_string(),
                "selector": self.selector,
                "ports": ports,
            },
        })
    }
}

/// A set of objects for one config file.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    objects: Vec<Value>,
}

impl ClusterConfig {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn namespace(mut self, namespace: &NamespaceConfig) -> Self {
        self.objects.push(namespace.to_json());
        self
    }

    #[must_use]
    pub fn pod(mut self, pod: &PodConfig) -> Self {
        self.objects.push(pod.to_json());
        self
    }

    #[must_use]
    pub fn service(mut self, service: &ServiceConfig) -> Self {
        self.objects.push(service.to_json());
        self
    }

    /// Any other object (an Istio kind, a deliberately broken one), as JSON.
    #[must_use]
    pub fn raw(mut self, object: Value) -> Self {
        self.objects.push(object);
        self
    }

    /// Multi-document YAML.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::from("# Written by the shunt test harness.\n");
        for object in &self.objects {
            out.push_str("---\n");
            out.push_str(&render_object(object));
            out.push('\n');
        }
        out
    }

    /// Writes `<dir>/<file_name>` atomically (see [`write_atomically`]).
    pub fn write(&self, dir: &Path, file_name: &str) -> Result<PathBuf, Error> {
        write_atomically(dir, file_name, &self.render())
    }
}

/// Writes `<dir>/<file_name>` through a staging file beside `dir` and a rename, so the agent's
/// watcher never reads half a file.
pub fn write_atomically(dir: &Path, file_name: &str, contents: &str) -> Result<PathBuf, Error> {
    let path = dir.join(file_name);
    let staging = dir
        .parent()
        .unwrap_or(dir)
        .join(format!(".{file_name}.staging"));
    let write_error = |source| Error::Write {
        path: path.clone(),
        source,
    };
    std::fs::write(&staging, contents).map_err(write_error)?;
    std::fs::rename(&staging, &path).map_err(write_error)?;
    Ok(path)
}

fn render_object(object: &Value) -> String {
    // One key per line at the top level keeps the file readable when a test fails.
    match object {
        Value::Object(map) => {
            let mut out = String::from("{\n");
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("  {}: {}", Value::String(k.clone()), v))
                .collect();
            out.push_str(&entries.join(",\n"));
            out.push_str("\n}");
            out
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        ClusterConfig::new()
            .namespace(&NamespaceConfig::injected("mesh"))
            .pod(
                &PodConfig::new(
                    "mesh",
                    "b",
                    Ipv4Addr::new(10, 244, 0, 20),
                    Path::new("/run/netns/x"),
                )
                .label("app", "b")
                .annotation(EXCLUDE_INBOUND_PORTS, "9091")
                .port("tcp-echo", 8080)
                .on_node("node-1"),
            )
            .pod(&PodConfig::new(
                "mesh",
                "c",
                Ipv4Addr::new(10, 244, 0, 30),
                Path::new("/run/netns/y"),
            ))
            .service(
                &ServiceConfig::new("mesh", "b", Ipv4Addr::new(10, 96, 0, 10))
                    .select("app", "b")
                    .named_port("tcp", 80, "tcp-echo"),
            )
    }

    #[test]
    fn renders_yaml_the_agent_can_read() {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&sample().render())
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect();
        assert_eq!(docs.len(), 4);
        let pod = &docs[1];
        assert_eq!(pod["spec"]["nodeName"].as_str(), Some("node-1"));
        assert!(
            docs[2]["spec"].get("nodeName").is_none(),
            "a pod without a node names none: {:?}",
            docs[2]
        );
        let cases = [
            (&pod["kind"], "Pod"),
            (
                &pod["metadata"]["annotations"][NETNS_ANNOTATION],
                "/run/netns/x",
            ),
            (
                &pod["metadata"]["annotations"][EXCLUDE_INBOUND_PORTS],
                "9091",
            ),
            (&pod["status"]["podIP"], "10.244.0.20"),
            (&docs[0]["metadata"]["labels"][INJECTION_LABEL], "enabled"),
            (&docs[3]["spec"]["clusterIP"], "10.96.0.10"),
            (&docs[3]["spec"]["ports"][0]["targetPort"], "tcp-echo"),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_str(), Some(want), "{got:?}");
        }
        assert_eq!(
            pod["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64(),
            Some(8080)
        );
    }
}
