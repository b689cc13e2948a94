//! Installs `shunt-cni` as a chained plugin of the node's primary CNI (opt-in:
//! `shunt-agent --install-cni`): the binary goes into the CNI bin dir (atomically), and an
//! entry `{"type": "shunt-cni", ...}` goes at the end of the plugins list of the config the
//! runtime uses — the first `.conf`/`.conflist`/`.json` of the conf dir in lexical order, as
//! libcni (kubelet, containerd, CRI-O) picks it. A single-plugin `.conf` becomes a
//! `.conflist`. Installing again changes nothing; the agent re-checks periodically, because
//! a primary CNI may rewrite its config. Uninstall removes this instance's entries (they
//! name its socket) and, when no entry is left, the binary.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The plugin's `type`, and its binary's name in the bin dir.
pub const PLUGIN_TYPE: &str = "shunt-cni";
/// The defaults of `--cni-bin-dir` and `--cni-conf-dir` (GKE: `/home/kubernetes/bin`).
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The namespace shunt's own pods run in: the plugin lets them start without asking.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "shunt-system";
/// What libcni reads as network configs.
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the CNI {what} directory {} cannot be read (check --cni-{what}-dir; is the node's \
         primary CNI installed?): {source}",
        path.display()
    )]
    Dir {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "no CNI network config (.conf, .conflist, .json) in {} yet: shunt-cni is chained \
         after the primary CNI, which has not written its config (retried)",
        path.display()
    )]
    NoConfig { path: PathBuf },
    #[error("the CNI config {} is not JSON: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the CNI config {}: {problem}", path.display())]
    Shape { path: PathBuf, problem: String },
    #[error("cannot install the plugin binary {} as {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Where the plugin goes and what its entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniInstall {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The `shunt-cni` binary to copy (shipped beside `shunt-agent`).
    pub plugin: PathBuf,
    /// The agent's `cni.sock`, as the node sees it (the plugin runs on the node).
    pub agent_socket: PathBuf,
    pub system_namespace: String,
    /// How long an ADD waits for the pod to be captured.
    pub timeout_seconds: u64,
}

/// What an install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The config file that now chains shunt-cni.
    pub config: PathBuf,
    /// Whether a config was written (false: it already held this entry).
    pub changed: bool,
    /// A `.conf` that was converted to `config` and removed.
    pub converted_from: Option<PathBuf>,
}

impl CniInstall {
    /// The plugin's entry in the conflist.
    #[must_use]
    pub fn entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "agentSocket": self.agent_socket,
            "excludeNamespaces": [self.system_namespace],
            "timeoutSeconds": self.timeout_seconds,
        })
    }

    /// Copies the binary and chains the entry; idempotent.
    pub fn install(&self) -> Result<Installed, Error> {
        read_dir(&self.bin_dir, "bin")?;
        install_binary(&self.plugin, &self.bin_dir.join(PLUGIN_TYPE))?;
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Err(Error::NoConfig {
                path: self.conf_dir.clone(),
            });
        };
        let config = read_config(&primary)?;
        let chained = with_entry(&config, &self.entry()).map_err(|problem| Error::Shape {
            path: primary.clone(),
            problem,
        })?;
        let is_list = config.get("plugins").is_some();
        if is_list && chained == config {
            return Ok(Installed {
                config: primary,
                changed: false,
                converted_from: None,
            });
        }
        let target = if is_list {
            primary.clone()
        } else {
            primary.with_extension("conflist")
        };
        write_config(&target, &chained)?;
        let converted_from = (target != primary).then(|| primary.clone());
        if let Some(old) = &converted_from {
            // After the conflist is in place: a crash between the two leaves the .conf
            // first in order, and the next install converts it again.
            std::fs::remove_file(old).map_err(|source| Error::Remove {
                path: old.clone(),
                source,
            })?;
        }
        Ok(Installed {
            config: target,
            changed: true,
            converted_from,
        })
    }
}

/// Removes the entries naming `agent_socket` from every config in `conf_dir`, then the
/// binary from `bin_dir` when no config chains shunt-cni any more. Missing dirs are fine.
/// Returns what it changed or removed.
pub fn uninstall(
    bin_dir: &Path,
    conf_dir: &Path,
    agent_socket: &Path,
) -> Result<Vec<PathBuf>, Error> {
    let mut changed = Vec::new();
    let mut still_chained = false;
    for path in config_files(conf_dir)? {
        let Ok(config) = read_config(&path) else {
            continue; // Not ours to judge.
        };
        let Some(plugins) = config.get("plugins").and_then(Value::as_array) else {
            continue;
        };
        let ours = |p: &Value| {
            p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
                && p.get("agentSocket").and_then(Value::as_str) == agent_socket.to_str()
        };
        let kept: Vec<Value> = plugins.iter().filter(|p| !ours(p)).cloned().collect();
        still_chained |= kept
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE));
        if kept.len() != plugins.len() {
            let mut config = config.clone();
            config["plugins"] = Value::Array(kept);
            write_config(&path, &config)?;
            changed.push(path);
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    if !still_chained {
        match std::fs::remove_file(&binary) {
            Ok(()) => changed.push(binary),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Remove {
                    path: binary,
                    source,
                });
            }
        }
    }
    Ok(changed)
}

/// `config` with `entry` last in its plugins list (a single-plugin config becomes a list
/// holding it), and no other shunt-cni entry.
pub fn with_entry(config: &Value, entry: &Value) -> Result<Value, String> {
    let Some(object) = config.as_object() else {
        return Err("expected a JSON object".to_owned());
    };
    let mut plugins = match object.get("plugins") {
        Some(Value::Array(plugins)) => plugins.clone(),
        Some(_) => return Err("plugins: expected a list".to_owned()),
        // libcni's ConfListFromConf: the list takes the conf's name and version, and the
        // conf itself is its one plugin.
        None => {
            if object.get("type").and_then(Value::as_str).is_none() {
                return Err("expected a plugins list or a plugin type".to_owned());
            }
            vec![config.clone()]
        }
    };
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry.clone());
    let mut list = serde_json::Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = object.get(key) {
            list.insert(key.to_owned(), value.clone());
        }
    }
    if object.contains_key("plugins") {
        list = object.clone();
    }
    list.insert("plugins".to_owned(), Value::Array(plugins));
    Ok(Value::Object(list))
}

fn read_dir(path: &Path, what: &'static str) -> Result<std::fs::ReadDir, Error> {
    std::fs::read_dir(path).map_err(|source| Error::Dir {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The network configs of `conf_dir`, in libcni's order; a missing dir has none.
fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Dir {
                what: "conf",
                path: conf_dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| CONF_EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The config the runtime uses: the first in lexical order.
fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, Error> {
    read_dir(conf_dir, "conf")?;
    Ok(config_files(conf_dir)?.into_iter().next())
}

fn read_config(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Dir {
        what: "conf",
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes beside `path`, then renames: the runtime never reads half a config.
fn write_config(path: &Path, config: &Value) -> Result<(), Error> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(config).map_err(|e| write_error(e.into()))?;
    text.push(b'\n');
    let tmp = hidden_tmp(path);
    std::fs::write(&tmp, text).map_err(write_error)?;
    std::fs::rename(&tmp, path).map_err(write_error)
}

/// Copies to a hidden file in the bin dir, then renames over the old binary: a runtime
/// running the plugin meanwhile runs the old or the new one, never half a file.
fn install_binary(from: &Path, to: &Path) -> Result<(), Error> {
    let copy_error = |source| Error::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let tmp = hidden_tmp(to);
    std::fs::copy(from, &tmp).map_err(copy_error)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(copy_error)?;
    std::fs::rename(&tmp, to).map_err(copy_error)
}

/// `.<name>.tmp-<pid>` beside `path`: not a config libcni reads, nor a plugin it runs.
fn hidden_tmp(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_CONF: &str = r#"{"cniVersion": "1.0.0", "name": "k8s", "type": "bridge",
        "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}"#;
    const LIST: &str = r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    struct Dirs {
        _tmp: tempfile::TempDir,
        install: CniInstall,
    }

    fn dirs(files: &[(&str, &str)]) -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let conf = tmp.path().join("net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        for (name, text) in files {
            std::fs::write(conf.join(name), text).unwrap();
        }
        let plugin = tmp.path().join("shunt-cni-build");
        std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
        Dirs {
            install: CniInstall {
                bin_dir: bin,
                conf_dir: conf,
                plugin,
                agent_socket: "/run/shunt/default/cni.sock".into(),
                system_namespace: DEFAULT_SYSTEM_NAMESPACE.into(),
                timeout_seconds: 30,
            },
            _tmp: tmp,
        }
    }

    fn types(config: &Value) -> Vec<String> {
        config["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_plugin_is_chained_into_the_first_config() {
        // (files in net.d, the config that chains shunt-cni, its plugin types, converted
        // from, files after)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static [&'static str],
            Option<&'static str>,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                &[("10-bridge.conf", BRIDGE_CONF)],
                "10-bridge.conflist",
                &["bridge", "shunt-cni"],
                Some("10-bridge.conf"),
                &["10-bridge.conflist"],
            ),
            (
                &[("10-k8s.conflist", LIST)],
                "10-k8s.conflist",
                &["ptp", "portmap", "shunt-cni"],
                None,
                &["10-k8s.conflist"],
            ),
            // Lexical order, as kubelet picks: only the first is touched.
            (
                &[
                    ("20-b.conflist", LIST),
                    ("05-a.conf", BRIDGE_CONF),
                    ("README", "x"),
                ],
                "05-a.conflist",
                &["bridge", "shunt-cni"],
                Some("05-a.conf"),
                &["05-a.conflist", "20-b.conflist", "README"],
            ),
            (
                &[("99-x.json", LIST), ("a.txt", "x")],
                "99-x.json",
                &["ptp", "portmap", "shunt-cni"],
                None,
                &["99-x.json", "a.txt"],
            ),
        ];
        for (files, config, plugin_types, converted, after) in cases {
            let d = dirs(files);
            let installed = d.install.install().unwrap();
            let conf = &d.install.conf_dir;
            assert_eq!(installed.config, conf.join(config), "{files:?}");
            assert!(installed.changed);
            assert_eq!(installed.converted_from, converted.map(|c| conf.join(c)));
            let written = read_config(&installed.config).unwrap();
            assert_eq!(types(&written), *plugin_types, "{files:?}");
            assert_eq!(written["name"], "k8s");
            assert_eq!(written["cniVersion"], "1.0.0");
            assert_eq!(
                written["plugins"].as_array().unwrap().last(),
                Some(&d.install.entry())
            );
            assert_eq!(listing(conf), *after, "{files:?}");
            let binary = d.install.bin_dir.join(PLUGIN_TYPE);
            assert_eq!(std::fs::read_to_string(&binary).unwrap(), "#!/bin/sh\n");
            let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
            assert_eq!(listing(&d.install.bin_dir), vec![PLUGIN_TYPE]);

            // Again: nothing changes.
            let again = d.install.install().unwrap();
            assert!(!again.changed, "{files:?}");
            assert_eq!(read_config(&again.config).unwrap(), written);
            assert_eq!(listing(conf), *after);
        }
    }

    #[test]
    fn an_older_entry_is_replaced_not_repeated() {
        let old = r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [
            {"type": "ptp"}, {"type": "shunt-cni", "agentSocket": "/old"}, {"type": "portmap"}]}"#;
        let d = dirs(&[("10-k8s.conflist", old)]);
        let installed = d.install.install().unwrap();
        let written = read_config(&installed.config).unwrap();
        assert_eq!(types(&written), ["ptp", "portmap", "shunt-cni"]);
        assert_eq!(written["plugins"][2], d.install.entry());
    }

    #[test]
    fn what_cannot_be_installed_says_why() {
        /// Files in net.d, whether the dir is removed, a part of the message.
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a str);
        let cases: &[Case<'_>] = &[
            (&[], false, "no CNI network config"),
            (&[], true, "check --cni-conf-dir"),
            (&[("10-x.conf", "{not json")], false, "is not JSON"),
            (
                &[("10-x.conf", "{\"name\": \"x\"}")],
                false,
                "a plugins list or a plugin type",
            ),
            (
                &[("10-x.conflist", "{\"plugins\": 3}")],
                false,
                "plugins: expected a list",
            ),
        ];
        for (files, remove_dir, want) in cases {
            let d = dirs(files);
            if *remove_dir {
                std::fs::remove_dir_all(&d.install.conf_dir).unwrap();
            }
            let e = d.install.install().unwrap_err().to_string();
            assert!(e.contains(want), "{files:?}: {e}");
        }
        let mut d = dirs(&[("10-k8s.conflist", LIST)]);
        d.install.bin_dir = d.install.bin_dir.join("missing");
        let e = d.install.install().unwrap_err().to_string();
        assert!(e.contains("check --cni-bin-dir"), "{e}");
    }

    #[test]
    fn uninstall_removes_this_instances_entries_and_then_the_binary() {
        let d = dirs(&[("10-bridge.conf", BRIDGE_CONF), ("20-k8s.conflist", LIST)]);
        d.install.install().unwrap();
        let conf = &d.install.conf_dir;
        // Another instance chained in another config keeps the binary.
        let other = CniInstall {
            agent_socket: "/run/shunt/other/cni.sock".into(),
            ..d.install.clone()
        };
        let mut second = read_config(&conf.join("20-k8s.conflist")).unwrap();
        second["plugins"]
            .as_array_mut()
            .unwrap()
            .push(other.entry());
        write_config(&conf.join("20-k8s.conflist"), &second).unwrap();

        let removed = uninstall(&d.install.bin_dir, conf, &d.install.agent_socket).unwrap();
        assert_eq!(removed, vec![conf.join("10-bridge.conflist")]);
        let first = read_config(&conf.join("10-bridge.conflist")).unwrap();
        assert_eq!(types(&first), ["bridge"]);
        assert!(d.install.bin_dir.join(PLUGIN_TYPE).exists());

        let removed = uninstall(&d.install.bin_dir, conf, &other.agent_socket).unwrap();
        assert_eq!(
            removed,
            vec![
                conf.join("20-k8s.conflist"),
                d.install.bin_dir.join(PLUGIN_TYPE)
            ]
        );
        assert_eq!(
            types(&read_config(&conf.join("20-k8s.conflist")).unwrap()),
            ["ptp", "portmap"]
        );
        // Nothing left, and missing dirs: nothing to do.
        assert_eq!(
            uninstall(&d.install.bin_dir, conf, &other.agent_socket).unwrap(),
            Vec::<PathBuf>::new()
        );
        let gone = Path::new("/nonexistent/shunt");
        assert_eq!(
            uninstall(gone, gone, &other.agent_socket).unwrap(),
            Vec::<PathBuf>::new()
        );
    }
}
