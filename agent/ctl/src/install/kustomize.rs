//! `deploy/` as a kustomize tree: `base/` is the default profile's render, one file per
//! object; `overlays/<profile>/` turns it into that profile's render with JSON 6902 patches
//! (computed from the two renders), the objects only the profile has, and deletions. The
//! tests hold each overlay's `kubectl kustomize` output to the profile's own render.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::render::{self, Object};

/// What can fail writing the tree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Render(#[from] render::Error),
    #[error("cannot encode {what} as YAML: {source}")]
    Yaml {
        what: String,
        source: serde_yaml::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file name of one object in `base/` or an overlay.
pub fn file_name(object: &Object) -> String {
    format!("{}-{}.yaml", object.kind().to_lowercase(), object.name())
}

/// Every file of the tree, path relative to its root, with its text.
pub fn files(
    base: &[Object],
    overlays: &[(&str, Vec<Object>)],
    header: &str,
) -> Result<BTreeMap<PathBuf, String>, Error> {
    let mut files = BTreeMap::new();
    let comment = |extra: &str| {
        format!("{header}\n{extra}")
            .lines()
            .map(|line| format!("# {line}").trim_end().to_owned() + "\n")
            .collect::<String>()
    };
    files.insert(
        PathBuf::from("shunt.yaml"),
        render::to_yaml(
            base,
            &format!("{header}\nThe default profile, all in one file."),
        )?,
    );
    let mut resources = Vec::new();
    for object in base {
        let name = file_name(object);
        files.insert(
            Path::new("base").join(&name),
            comment("") + "---\n" + &object.to_yaml()?,
        );
        resources.push(name);
    }
    files.insert(
        PathBuf::from("base/kustomization.yaml"),
        comment("The default profile, one object a file.") + &kustomization(&resources, &[])?,
    );
    for (profile, objects) in overlays {
        let dir = Path::new("overlays").join(profile);
        let mut resources = vec!["../../base".to_owned()];
        let mut patches = Vec::new();
        for object in objects {
            let name = file_name(object);
            match base
                .iter()
                .find(|b| b.kind() == object.kind() && b.name() == object.name())
            {
                None => {
                    files.insert(dir.join(&name), comment("") + "---\n" + &object.to_yaml()?);
                    resources.push(name);
                }
                Some(original) => {
                    let ops = json_patch(&to_json(original)?, &to_json(object)?);
                    if ops.is_empty() {
                        continue;
                    }
                    let patch_name = name.replace(".yaml", ".patch.yaml");
                    let text = serde_yaml::to_string(&ops).map_err(|source| Error::Yaml {
                        what: patch_name.clone(),
                        source,
                    })?;
                    files.insert(dir.join(&patch_name), comment("") + &text);
                    patches.push(Patch {
                        path: Some(patch_name),
                        patch: None,
                        target: Target::of(original),
                    });
                }
            }
        }
        for original in base {
            if !objects
                .iter()
                .any(|o| o.kind() == original.kind() && o.name() == original.name())
            {
                patches.push(Patch {
                    path: None,
                    patch: Some(format!(
                        "$patch: delete\napiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n",
                        api_version(original)?,
                        original.kind(),
                        original.name()
                    )),
                    target: Target::of(original),
                });
            }
        }
        files.insert(
            dir.join("kustomization.yaml"),
            comment(&format!(
                "The {profile} profile: the default one with the {profile} overlay \
                 (`shuntctl profile diff default {profile}`)."
            )) + &kustomization(&resources, &patches)?,
        );
    }
    Ok(files)
}

/// Writes [`files`] under `root`.
pub fn write(root: &Path, files: &BTreeMap<PathBuf, String>) -> Result<(), Error> {
    for (relative, text) in files {
        let path = root.join(relative);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)
        };
        write(&path).map_err(|source| Error::Write { path, source })?;
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization<'a> {
    api_version: &'static str,
    kind: &'static str,
    resources: &'a [String],
    #[serde(skip_serializing_if = "<[Patch]>::is_empty")]
    patches: &'a [Patch],
}

#[derive(Clone, Debug, Serialize)]
struct Patch {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    target: Target,
}

#[derive(Clone, Debug, Serialize)]
struct Target {
    kind: &'static str,
    name: String,
}

impl Target {
    fn of(object: &Object) -> Self {
        Self {
            kind: object.kind(),
            name: object.name().into(),
        }
    }
}

fn kustomization(resources: &[String], patches: &[Patch]) -> Result<String, Error> {
    serde_yaml::to_string(&Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources,
        patches,
    })
    .map_err(|source| Error::Yaml {
        what: "kustomization.yaml".into(),
        source,
    })
}

pub fn to_json(object: &Object) -> Result<Value, Error> {
    let yaml = object.to_yaml()?;
    serde_yaml::from_str(&yaml).map_err(|source| Error::Yaml {
        what: format!("{} {}", object.kind(), object.name()),
        source,
    })
}

fn api_version(object: &Object) -> Result<String, Error> {
    Ok(to_json(object)?["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// One RFC 6902 operation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Op {
    op: &'static str,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

/// The operations that turn `from` into `to`: maps key by key, lists item by item when
/// their lengths agree, otherwise replaced whole.
pub fn json_patch(from: &Value, to: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    diff("", from, to, &mut ops);
    ops
}

fn diff(path: &str, from: &Value, to: &Value, ops: &mut Vec<Op>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                ops.push(Op {
                    op: "remove",
                    path: format!("{path}/{}", escape(key)),
                    value: None,
                });
            }
            for (key, value) in b {
                let child = format!("{path}/{}", escape(key));
                match a.get(key) {
                    Some(old) => diff(&child, old, value, ops),
                    None => ops.push(Op {
                        op: "add",
                        path: child,
                        value: Some(value.clone()),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), old, new, ops);
            }
        }
        _ => ops.push(Op {
            op: "replace",
            path: path.to_owned(),
            value: Some(to.clone()),
        }),
    }
}

/// RFC 6901: `~` and `/` in a key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies `ops` as kustomize would, for the round trip below.
    fn apply(mut value: Value, ops: &[Op]) -> Value {
        for op in ops {
            let (parent, last) = op.path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = value.pointer_mut(parent).unwrap();
            match (op.op, target) {
                ("remove", Value::Object(map)) => {
                    map.remove(&last);
                }
                ("add" | "replace", Value::Object(map)) => {
                    map.insert(last, op.value.clone().unwrap());
                }
                ("replace", Value::Array(items)) => {
                    items[last.parse::<usize>().unwrap()] = op.value.clone().unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        value
    }

    #[test]
    fn patches_turn_one_value_into_the_other() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1})),
            (
                json!({"a": 1, "b": {"c": 2}}),
                json!({"a": 2, "b": {"d": 3}}),
            ),
            (json!({"l": [1, 2]}), json!({"l": [1, 3]})),
            (json!({"l": [1, 2]}), json!({"l": [1, 2, 3]})),
            (json!({"a/b~c": 1}), json!({"a/b~c": 2, "x": null})),
            (json!({"v": [{"p": "/a"}]}), json!({"v": [{"p": "/b"}]})),
        ];
        for (from, to) in cases {
            let ops = json_patch(&from, &to);
            assert_eq!(apply(from.clone(), &ops), to, "{from} -> {to}: {ops:?}");
            assert_eq!(ops.is_empty(), from == to);
        }
    }

    #[test]
    fn keys_are_escaped_as_json_pointers() {
        let ops = json_patch(&json!({"a/b~c": 1}), &json!({"a/b~c": 2}));
        assert_eq!(ops[0].path, "/a~1b~0c");
    }
}
