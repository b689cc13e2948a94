//! `shunt-agent --mesh-config FILE`: the mesh config shunt's installer renders (its
//! `meshConfig.*` values), under the cluster's own. As Istio's `SHARED_MESH_CONFIG`, the file
//! is the base and `data.mesh` of the ConfigMap `istio-system/istio` is merged over it, field
//! by field: maps deeply, any other value (lists included) replaced whole, the ConfigMap
//! winning. Without the ConfigMap, the file alone applies.
//!
//! The file is checked whole at start; a problem stops the agent, naming the file and the
//! field. The file is read once: a changed file takes effect as the agent restarts.

use std::path::{Path, PathBuf};

use super::routing::{self, MeshOrigin};

/// A checked `--mesh-config` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshBase {
    pub file: PathBuf,
    /// Its MeshConfig, a map.
    mesh: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the mesh config {}: {source}; check --mesh-config", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("the mesh config {} (--mesh-config), field {field}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

impl MeshBase {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Checks `text`, read from `file`: a MeshConfig map whose every field shunt reads and
    /// accepts.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |field: &str, message: String| Error::Invalid {
            file: file.to_owned(),
            field: if field.is_empty() {
                "(the document)".into()
            } else {
                field.to_owned()
            },
            message,
        };
        let mesh = match serde_yaml::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Null) => serde_json::Value::Object(serde_json::Map::new()),
            Ok(mesh @ serde_json::Value::Object(_)) => mesh,
            Ok(_) => return Err(invalid("", "expected a MeshConfig (a YAML map)".into())),
            Err(e) => return Err(invalid("", e.to_string())),
        };
        let base = Self {
            file: file.to_owned(),
            mesh,
        };
        // The file is shunt's own: a field it does not read is a mistake, not Istio's.
        let mut ignored = Vec::new();
        let _ = routing::deserialize_mesh(&base.text(), &mut ignored);
        if let Some(field) = ignored.first() {
            return Err(invalid(field, routing::IGNORED_MESH_FIELD.to_owned()));
        }
        let mut errors = Vec::new();
        let origin = MeshOrigin {
            file: file.to_owned(),
            config_map: false,
        };
        routing::parse_mesh(&base.text(), &origin, &mut errors);
        if let Some(error) = errors.into_iter().next() {
            return Err(invalid(
                error.field.as_deref().unwrap_or_default(),
                error.message,
            ));
        }
        Ok(base)
    }

    /// The file's MeshConfig as YAML.
    pub fn text(&self) -> String {
        serde_yaml::to_string(&self.mesh).unwrap_or_default()
    }

    /// `overlay` (a ConfigMap's `data.mesh`) merged over the file. An overlay that is not a
    /// YAML map comes back as it is, for its own error to name its own text.
    pub fn under(&self, overlay: &str) -> String {
        match serde_yaml::from_str::<serde_json::Value>(overlay) {
            Ok(serde_json::Value::Null) => self.text(),
            Ok(overlay @ serde_json::Value::Object(_)) => {
                let mut merged = self.mesh.clone();
                merge(&mut merged, overlay);
                serde_yaml::to_string(&merged).unwrap_or_default()
            }
            _ => overlay.to_owned(),
        }
    }
}

/// `overlay` over `base`: maps merged key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shunt_mesh::routing::OutboundTrafficPolicy;
    use shunt_mesh::settings::{AccessLogOutput, MeshSettings, TrustedProxies};

    use super::*;
    use crate::config::{LoadOptions, Snapshot};
    use crate::source::local_dir::Loader;

    const FILE: &str = "/etc/shunt/config/mesh.yaml";

    /// The settings of `base` (the file) under the ConfigMap `config_map` (`data.mesh`, when
    /// there is one), and the snapshot's errors.
    fn settings(base: &str, config_map: Option<&str>) -> (MeshSettings, Vec<String>) {
        let base = MeshBase::parse(Path::new(FILE), base).unwrap_or_else(|e| panic!("{e}"));
        let mut loader = Loader::default();
        if let Some(mesh) = config_map {
            let indented: String = mesh.lines().map(|line| format!("    {line}\n")).collect();
            let text = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: \
                 istio-system}}\ndata:\n  mesh: |\n{indented}"
            );
            loader.load_file(Path::new("istio.yaml"), &text);
        }
        let options = LoadOptions {
            mesh_base: Some(Arc::new(base)),
            ..LoadOptions::default()
        };
        let snapshot =
            Snapshot::from_config_with(Path::new("/cfg"), loader.config, loader.errors, &options);
        let errors = snapshot.errors.iter().map(ToString::to_string).collect();
        (snapshot.mesh.mesh, errors)
    }

    #[test]
    fn the_config_map_is_merged_over_the_file_field_by_field() {
        struct Case {
            name: &'static str,
            base: &'static str,
            config_map: Option<&'static str>,
            outbound: OutboundTrafficPolicy,
            access_log: AccessLogOutput,
            trust_domain: &'static str,
            hops: TrustedProxies,
        }
        let base = "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\naccessLogFile: \"\"\n\
                    trustDomain: base.example\n\
                    defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n";
        let cases = [
            Case {
                name: "no ConfigMap: the file alone",
                base,
                config_map: None,
                outbound: OutboundTrafficPolicy::RegistryOnly,
                access_log: AccessLogOutput::Off,
                trust_domain: "base.example",
                hops: TrustedProxies::Hops(1),
            },
            Case {
                name: "a ConfigMap without data.mesh: the file alone",
                base,
                config_map: Some(""),
                outbound: OutboundTrafficPolicy::RegistryOnly,
                access_log: AccessLogOutput::Off,
                trust_domain: "base.example",
                hops: TrustedProxies::Hops(1),
            },
            Case {
                name: "the ConfigMap wins for the fields it sets, the file keeps the rest",
                base,
                config_map: Some("accessLogFile: /dev/stdout\ntrustDomain: cluster.example"),
                outbound: OutboundTrafficPolicy::RegistryOnly,
                access_log: AccessLogOutput::Stdout,
                trust_domain: "cluster.example",
                hops: TrustedProxies::Hops(1),
            },
            Case {
                name: "nested fields: a leaf of the ConfigMap replaces the file's leaf only",
                base: "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n\
                       defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n",
                config_map: Some(
                    "outboundTrafficPolicy: {mode: ALLOW_ANY}\n\
                     defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}",
                ),
                outbound: OutboundTrafficPolicy::AllowAny,
                access_log: AccessLogOutput::Stdout,
                trust_domain: "cluster.local",
                hops: TrustedProxies::Hops(2),
            },
            Case {
                name: "nested fields: a sibling in the ConfigMap keeps the file's leaf",
                base: "defaultConfig: {gatewayTopology: {numTrustedProxies: 3}}\n",
                config_map: Some("defaultConfig: {gatewayTopology: {}}\ntrustDomain: c.example"),
                outbound: OutboundTrafficPolicy::AllowAny,
                access_log: AccessLogOutput::Stdout,
                trust_domain: "c.example",
                hops: TrustedProxies::Hops(3),
            },
        ];
        for case in cases {
            let (got, errors) = settings(case.base, case.config_map);
            assert_eq!(errors, Vec::<String>::new(), "{}", case.name);
            assert_eq!(got.outbound_traffic_policy, case.outbound, "{}", case.name);
            assert_eq!(got.access_log, case.access_log, "{}", case.name);
            assert_eq!(got.trust_domain, case.trust_domain, "{}", case.name);
            assert_eq!(got.num_trusted_proxies, case.hops, "{}", case.name);
        }
    }

    #[test]
    fn a_bad_config_map_field_is_the_config_maps() {
        let (got, errors) = settings(
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            Some("outboundTrafficPolicy: {mode: SOMETIMES}"),
        );
        assert_eq!(got.outbound_traffic_policy, OutboundTrafficPolicy::AllowAny);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("istio.yaml")
                && errors[0].contains("ConfigMap istio-system/istio")
                && errors[0].contains("data.mesh.outboundTrafficPolicy.mode"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_field() {
        let cases = [
            (
                "outboundTrafficPolicy: {mode: SOMETIMES}\n",
                "outboundTrafficPolicy.mode",
            ),
            ("accessLogFile: /var/log/x\n", "accessLogFile"),
            (
                "outboundTrafficPolicy: {mod: ALLOW_ANY}\n",
                "outboundTrafficPolicy.mod",
            ),
            ("trustDomain: [a]\n", "trustDomain"),
            ("- a list\n", "(the document)"),
            ("a: [\n", "(the document)"),
        ];
        for (text, field) in cases {
            let e = MeshBase::parse(Path::new(FILE), text).expect_err(text);
            let message = e.to_string();
            assert!(
                message.starts_with(&format!(
                    "the mesh config {FILE} (--mesh-config), field {field}: "
                )),
                "{text}: {message}"
            );
        }
    }

    /// What `deploy/` renders is a file the agent accepts, at the path its flag names.
    #[test]
    fn the_rendered_mesh_config_is_accepted() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/shunt.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut file = None;
        let mut flag = None;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: serde_json::Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{e}"));
            if object["kind"] == "ConfigMap" && object["metadata"]["name"] == "shunt-config" {
                file = object["data"]["mesh.yaml"].as_str().map(str::to_owned);
            }
            if object["kind"] == "DaemonSet" && object["metadata"]["name"] == "shunt-agent" {
                flag = object["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|arg| arg.as_str()?.strip_prefix("--mesh-config="))
                    .map(str::to_owned)
                    .next();
            }
        }
        assert_eq!(flag.as_deref(), Some("/etc/shunt/config/mesh.yaml"));
        let file = file.unwrap_or_else(|| panic!("no mesh.yaml in shunt-config"));
        MeshBase::parse(Path::new("mesh.yaml"), &file).unwrap_or_else(|e| panic!("{e}"));
    }
}
