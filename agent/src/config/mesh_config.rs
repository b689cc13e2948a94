//! The mesh settings: `data.mesh` of the ConfigMap `istio-system/istio`, parsed with field
//! paths and checked by the compiler the proxy runs, over `shunt-agent --mesh-config FILE`, the
//! mesh config shunt's installer renders (its
//! `meshConfig.*` values), under the cluster's own. As Istio's `SHARED_MESH_CONFIG`, the file
//! is the base and `data.mesh` of the ConfigMap `istio-system/istio` is merged over it, field
//! by field: maps deeply, any other value (lists included) replaced whole, the ConfigMap
//! winning. Without the ConfigMap, the file alone applies.
//!
//! The file is checked whole at start; a problem stops the agent, naming the file and the
//! field. The file is read once: a changed file takes effect as the agent restarts.

use std::path::{Path, PathBuf};

use shunt_api::config::{Config, LoadError};
use shunt_mesh::istio::{self, MESH_CONFIG_MAP};
use shunt_mesh::routing::{self, MeshSettings};
use shunt_mesh::settings::TrustedProxies;

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
        let _ = deserialize_mesh(&base.text(), &mut ignored);
        if let Some(field) = ignored.first() {
            return Err(invalid(field, IGNORED_MESH_FIELD.to_owned()));
        }
        let mut errors = Vec::new();
        let origin = MeshOrigin {
            file: file.to_owned(),
            config_map: false,
        };
        parse_mesh(&base.text(), &origin, &mut errors);
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

/// `numTrustedProxies` of a mesh config that is not a MeshConfig: read from the YAML if it
/// is YAML (its own problem is reported with the document's); not even YAML, it cannot be
/// known, and fails closed.
fn unparsed_trusted_proxies(text: &str) -> TrustedProxies {
    match serde_yaml::from_str::<serde_json::Value>(text) {
        Err(_) => TrustedProxies::Invalid,
        Ok(mesh) => match mesh.pointer("/defaultConfig/gatewayTopology/numTrustedProxies") {
            None => TrustedProxies::default(),
            Some(value) => {
                TrustedProxies::parse(value).map_or(TrustedProxies::Invalid, TrustedProxies::Hops)
            }
        },
    }
}

/// Where a mesh config's problems are reported: the ConfigMap `istio-system/istio` (fields
/// under `data.mesh`), or `--mesh-config`'s file (fields from its root).
struct MeshOrigin {
    file: PathBuf,
    config_map: bool,
}

impl MeshOrigin {
    fn prefix(&self) -> &'static str {
        if self.config_map { "data.mesh" } else { "" }
    }

    fn error(&self, field: &str, message: String) -> LoadError {
        let (namespace, name) = MESH_CONFIG_MAP;
        LoadError {
            file: self.file.clone(),
            object: self
                .config_map
                .then(|| format!("ConfigMap {namespace}/{name}")),
            field: Some(field.trim_start_matches('.').to_owned()),
            message,
        }
    }
}

/// The mesh settings: `--mesh-config`'s file ([`LoadOptions::mesh_base`]) with `data.mesh` of
/// the ConfigMap `istio-system/istio` merged over it, either of them alone, or the defaults.
pub(crate) fn mesh_settings(
    config: &Config,
    base: Option<&MeshBase>,
    errors: &mut Vec<LoadError>,
) -> MeshSettings {
    let (namespace, name) = MESH_CONFIG_MAP;
    let from_base = |errors: &mut Vec<LoadError>| match base {
        None => MeshSettings::default(),
        Some(base) => parse_mesh(
            &base.text(),
            &MeshOrigin {
                file: base.file.clone(),
                config_map: false,
            },
            errors,
        ),
    };
    let Some(sourced) = config.config_maps.iter().find(|c| {
        c.object["metadata"]["namespace"] == namespace && c.object["metadata"]["name"] == name
    }) else {
        return from_base(errors);
    };
    let origin = MeshOrigin {
        file: sourced.file.clone(),
        config_map: true,
    };
    match &sourced.object["data"]["mesh"] {
        serde_json::Value::Null => from_base(errors),
        serde_json::Value::String(text) => match base {
            None => parse_mesh(text, &origin, errors),
            Some(base) => parse_mesh(&base.under(text), &origin, errors),
        },
        _ => {
            errors.push(origin.error(
                "data.mesh",
                "expected a string holding MeshConfig YAML".into(),
            ));
            // Its numTrustedProxies cannot be known: remote-IP conditions fail closed.
            MeshSettings {
                num_trusted_proxies: TrustedProxies::Invalid,
                ..MeshSettings::default()
            }
        }
    }
}

/// Deserializes MeshConfig YAML with serde_ignored, the fields it does not read in `ignored`.
fn deserialize_mesh(
    text: &str,
    ignored: &mut Vec<String>,
) -> Result<istio::MeshConfig, serde_path_to_error::Error<serde_yaml::Error>> {
    serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        serde_yaml::Deserializer::from_str(text),
        &mut |path: serde_ignored::Path<'_>| ignored.push(field_path(&path)),
    ))
}

/// MeshConfig YAML as settings; every problem goes to `errors`, named as `origin` says.
fn parse_mesh(text: &str, origin: &MeshOrigin, errors: &mut Vec<LoadError>) -> MeshSettings {
    let prefix = origin.prefix();
    let mut ignored = Vec::new();
    let parsed = deserialize_mesh(text, &mut ignored);
    // A real Istio mesh config sets much shunt does not act on; say so, field by field,
    // rather than let a setting look as if it took effect.
    for field in ignored {
        errors.push(origin.error(
            &format!("{prefix}.{field}"),
            format!(
                "{IGNORED_MESH_FIELD}: ignored (a warning: the rest of the mesh config applies)"
            ),
        ));
    }
    match parsed {
        Ok(mesh) => {
            let mut settings = routing::mesh_settings(&mesh, prefix).unwrap_or_else(|problems| {
                errors.extend(
                    problems
                        .into_iter()
                        .map(|(field, message)| origin.error(&field, message)),
                );
                MeshSettings::default()
            });
            // Kept whatever else is wrong, so that a bad value fails closed everywhere.
            let (hops, problem) = routing::trusted_proxies(&mesh);
            settings.num_trusted_proxies = hops;
            if let Some((field, message)) = problem {
                errors.push(origin.error(&format!("{prefix}.{field}"), message));
            }
            // Rejected extension providers stay in the settings (CUSTOM policies naming them
            // deny); each is reported here.
            errors.extend(
                settings
                    .extension_providers
                    .problems()
                    .map(|(field, message)| origin.error(field, message.to_owned())),
            );
            settings
        }
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                prefix.to_owned()
            } else {
                format!("{prefix}.{path}")
            };
            errors.push(origin.error(&field, e.inner().to_string()));
            MeshSettings {
                num_trusted_proxies: unparsed_trusted_proxies(text),
                ..MeshSettings::default()
            }
        }
    }
}

/// What shunt reads of a MeshConfig, said of every other field.
const IGNORED_MESH_FIELD: &str = "a MeshConfig field shunt does not read (it reads \
    outboundTrafficPolicy.mode, protocolDetectionTimeout, accessLogFile, trustDomain, \
    rootNamespace, extensionProviders, pathNormalization.normalization, ingressClass, \
    ingressSelector, defaultProviders.tracing, defaultConfig.gatewayTopology.numTrustedProxies \
    and defaultConfig.tracing.sampling)";

/// `spec.http[0].timout`, from serde_ignored's path.
pub(crate) fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
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
    fn tracing_providers_reach_the_settings_and_bad_ones_name_the_config_map() {
        let (got, errors) = settings(
            "",
            Some(
                "extensionProviders: [{name: z, zipkin: {service: zipkin.obs, port: 9411}}]\n\
                 defaultProviders: {tracing: [z]}\ndefaultConfig: {tracing: {sampling: 100}}",
            ),
        );
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(got.tracing.providers[0].service, "zipkin.obs");
        assert_eq!(got.tracing.sampling_per_million, 1_000_000);
        let (got, errors) = settings(
            "",
            Some("defaultConfig: {tracing: {sampling: 150}}\ndefaultProviders: {tracing: [z]}"),
        );
        assert!(!got.tracing.is_on());
        for field in [
            "data.mesh.defaultConfig.tracing.sampling",
            "data.mesh.defaultProviders.tracing[0]",
        ] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("ConfigMap istio-system/istio") && e.contains(field)),
                "{field}: {errors:?}"
            );
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
