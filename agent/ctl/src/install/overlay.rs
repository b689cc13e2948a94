//! Builds the values: the default profile, then the chosen profile, each `-f` file and each
//! `--set`, merged in that order (maps merge key by key; anything else is replaced), then read
//! into [`Values`], naming the key path of anything that does not fit.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::profiles::{self, UnknownProfile};
use super::set;
use super::values::Values;

/// Why the values cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Profile(#[from] UnknownProfile),
    #[error("profile {name}: not valid YAML (a bug in shuntctl's embedded profiles): {source}")]
    ProfileYaml {
        name: String,
        source: serde_yaml::Error,
    },
    #[error("cannot read values file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("values file {}: not valid YAML: {source}", path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("values file {}: expected a mapping of values at the top", path.display())]
    NotAMapping { path: PathBuf },
    #[error(transparent)]
    Set(#[from] set::Error),
    #[error(
        "values: {path}: {message} (from the profile, -f files and --set, merged; \
         `shuntctl profile show default` lists every key)"
    )]
    Invalid { path: String, message: String },
    #[error("values: {path}: {message}")]
    Refused { path: &'static str, message: String },
}

/// Where the values come from, in the order they apply.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub profile: String,
    pub files: Vec<PathBuf>,
    pub sets: Vec<String>,
}

impl Sources {
    pub fn profile(name: &str) -> Self {
        Self {
            profile: name.into(),
            ..Self::default()
        }
    }
}

/// The merged tree, before it is typed.
pub fn tree(sources: &Sources) -> Result<Value, Error> {
    let mut tree = profile_tree(profiles::DEFAULT)?;
    if sources.profile != profiles::DEFAULT {
        merge(&mut tree, profile_tree(&sources.profile)?);
    }
    for path in &sources.files {
        merge(&mut tree, file_tree(path)?);
    }
    for arg in &sources.sets {
        set::apply(&mut tree, arg)?;
    }
    Ok(tree)
}

/// The typed values of `sources`.
pub fn values(sources: &Sources) -> Result<Values, Error> {
    typed(tree(sources)?)
}

/// Reads a merged tree into [`Values`].
pub fn typed(tree: Value) -> Result<Values, Error> {
    let values: Values = serde_path_to_error::deserialize(tree).map_err(|e| Error::Invalid {
        path: match e.path().to_string() {
            path if path == "." => "(top level)".into(),
            path => path,
        },
        message: e.inner().to_string(),
    })?;
    check(&values)?;
    Ok(values)
}

/// What the types cannot say.
fn check(values: &Values) -> Result<(), Error> {
    use super::values::AccessLogEncoding;
    if values.values.global.proxy.access_log_encoding == AccessLogEncoding::Text {
        return Err(Error::Refused {
            path: "values.global.proxy.accessLogEncoding",
            message: "TEXT is not available: shunt-proxy writes its access log as JSON only; \
                      set JSON (the default)"
                .into(),
        });
    }
    if values.namespace.is_empty() {
        return Err(Error::Refused {
            path: "namespace",
            message: "must not be empty".into(),
        });
    }
    Ok(())
}

fn profile_tree(name: &str) -> Result<Value, Error> {
    serde_yaml::from_str(profiles::overlay(name)?).map_err(|source| Error::ProfileYaml {
        name: name.into(),
        source,
    })
}

fn file_tree(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let tree: Value = serde_yaml::from_str(&text).map_err(|source| Error::Yaml {
        path: path.into(),
        source,
    })?;
    match tree {
        Value::Mapping(_) => Ok(tree),
        // An empty file is no change.
        Value::Null => Ok(Value::Mapping(serde_yaml::Mapping::new())),
        _ => Err(Error::NotAMapping { path: path.into() }),
    }
}

/// Merges `overlay` into `base`: maps key by key, a `null` removing the key, anything else
/// replacing what was there (lists included, as Helm does).
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                    continue;
                }
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

/// Every leaf of `tree` with its dotted key path (`meshConfig.accessLogFile`), lists as one
/// leaf each, for `shuntctl profile diff`.
pub fn leaves(tree: &Value) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Mapping(map) if !map.is_empty() => {
                for (key, child) in map {
                    let key = match key {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", tree, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_sets(sets: &[&str]) -> Result<Values, Error> {
        values(&Sources {
            profile: "default".into(),
            files: Vec::new(),
            sets: sets.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    #[test]
    fn every_profile_reads_into_values() {
        for name in profiles::names() {
            values(&Sources::profile(name)).unwrap_or_else(|e| panic!("profile {name}: {e}"));
        }
    }

    #[test]
    fn the_default_tag_is_the_workspace_version() {
        let values = values(&Sources::profile("default")).unwrap();
        assert_eq!(values.image.tag, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn istio_keys_set_the_values() {
        use super::super::values::OutboundMode;
        let values = with_sets(&[
            "meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY",
            "meshConfig.accessLogFile=/dev/stdout",
            "values.global.proxy.accessLogEncoding=JSON",
            "image.tag=2",
        ])
        .unwrap();
        assert_eq!(
            values.mesh_config.outbound_traffic_policy.mode,
            OutboundMode::RegistryOnly
        );
        assert_eq!(values.mesh_config.access_log_file, "/dev/stdout");
        assert_eq!(values.image.tag, "2");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["meshConfig.outboundTraficPolicy.mode=REGISTRY_ONLY"],
                &["values: meshConfig.outboundTraficPolicy: unknown field"],
            ),
            (&["agent.capture=bpf"], &["values: agent.capture:", "bpf"]),
            (&["proxy.metricsPort=http"], &["values: proxy.metricsPort:"]),
            (&["typo=1"], &["values: typo: unknown field"]),
            (
                &["cni.binDir=null"],
                &["values: cni: missing field `binDir`"],
            ),
            (
                &["values.global.proxy.accessLogEncoding=TEXT"],
                &["values.global.proxy.accessLogEncoding", "JSON only"],
            ),
        ];
        for (sets, expected) in cases {
            let error = with_sets(sets).unwrap_err().to_string();
            for part in *expected {
                assert!(error.contains(part), "{sets:?}: {error:?} lacks {part:?}");
            }
        }
    }

    #[test]
    fn files_apply_in_order_after_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.yaml");
        let second = dir.path().join("b.yaml");
        std::fs::write(&first, "cni: {binDir: /a}\nagent: {logFormat: text}\n").unwrap();
        std::fs::write(&second, "cni: {binDir: /b}\n").unwrap();
        let values = values(&Sources {
            profile: "gke".into(),
            files: vec![first, second],
            sets: vec!["cni.confDir=/c".into()],
        })
        .unwrap();
        assert_eq!(values.cni.bin_dir, "/b");
        assert_eq!(values.cni.conf_dir, "/c");
        assert!(
            values.resource_quota.enabled,
            "the gke profile still applies"
        );
        assert_eq!(
            values.agent.log_format,
            super::super::values::LogFormat::Text
        );
    }

    #[test]
    fn a_values_file_that_is_not_a_mapping_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list.yaml");
        std::fs::write(&file, "- a\n").unwrap();
        let error = values(&Sources {
            profile: "default".into(),
            files: vec![file.clone()],
            sets: Vec::new(),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}
