//! A container runtime's side of CNI, as libcni does it: each plugin of a conflist run in
//! order with the CNI environment and its config (plus the previous plugin's result as
//! `prevResult`) on stdin; DEL in reverse order with the ADD's result. Plugins run in the
//! netns given (the node's: the bridge plugin makes its bridge there), through `nsenter`,
//! which changes only the netns.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the conflist has no plugins list: {0}")]
    NotAList(String),
    #[error("plugin type {plugin:?} is in none of CNI_PATH {path}")]
    NoPlugin { plugin: String, path: String },
    #[error("could not run plugin {plugin}: {source}")]
    Spawn {
        plugin: String,
        source: std::io::Error,
    },
    #[error("{command} failed in plugin {plugin} ({status}): stdout {stdout}, stderr {stderr}")]
    Failed {
        command: &'static str,
        plugin: String,
        status: std::process::ExitStatus,
        /// The plugin's error result (JSON), as the spec has it print.
        stdout: String,
        stderr: String,
    },
    #[error("plugin {plugin}'s result is not JSON: {stdout}")]
    BadResult { plugin: String, stdout: String },
}

impl Error {
    /// The plugin's error result, for a failed command.
    #[must_use]
    pub fn error_result(&self) -> Option<Value> {
        match self {
            Self::Failed { stdout, .. } => serde_json::from_str(stdout).ok(),
            _ => None,
        }
    }
}

/// One pod sandbox, as the runtime hands it to CNI.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
    pub args: Vec<(String, String)>,
}

impl Sandbox {
    /// A Kubernetes pod's sandbox, with the `CNI_ARGS` kubelet passes.
    #[must_use]
    pub fn pod(container_id: &str, netns: &Path, namespace: &str, name: &str, uid: &str) -> Self {
        let args = [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", namespace),
            ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", container_id),
            ("K8S_POD_UID", uid),
        ];
        Self {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// A runtime: where plugins are, and the netns they run in.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub cni_path: Vec<PathBuf>,
    /// The netns the plugins run in (the "host" side of the pod's network).
    pub host_netns: PathBuf,
}

impl Runtime {
    /// ADD through the conflist; returns the last plugin's result.
    pub fn add(&self, conflist: &Value, sandbox: &Sandbox) -> Result<Value, Error> {
        let mut previous: Option<Value> = None;
        for plugin in plugins(conflist)? {
            let result = self.exec("ADD", conflist, &plugin, previous.as_ref(), sandbox)?;
            previous = Some(result);
        }
        Ok(previous.unwrap_or(Value::Null))
    }

    /// CHECK through the conflist, each plugin given the ADD's `result`.
    pub fn check(&self, conflist: &Value, sandbox: &Sandbox, result: &Value) -> Result<(), Error> {
        for plugin in plugins(conflist)? {
            self.exec("CHECK", conflist, &plugin, Some(result), sandbox)?;
        }
        Ok(())
    }

    /// DEL through the conflist in reverse, each plugin given `result` (the ADD's, when it
    /// got one) as `prevResult`.
    pub fn del(
        &self,
        conflist: &Value,
        sandbox: &Sandbox,
        result: Option<&Value>,
    ) -> Result<(), Error> {
        for plugin in plugins(conflist)?.iter().rev() {
            self.exec("DEL", conflist, plugin, result, sandbox)?;
        }
        Ok(())
    }

    fn exec(
        &self,
        command: &'static str,
        conflist: &Value,
        plugin: &Value,
        prev_result: Option<&Value>,
        sandbox: &Sandbox,
    ) -> Result<Value, Error> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let binary = self
            .cni_path
            .iter()
            .map(|dir| dir.join(&kind))
            .find(|path| path.is_file())
            .ok_or_else(|| Error::NoPlugin {
                plugin: kind.clone(),
                path: self.joined_path(),
            })?;
        // libcni's injection: the list's name and version, and the previous result.
        let mut config = plugin.clone();
        config["name"] = conflist["name"].clone();
        config["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(prev) = prev_result {
            config["prevResult"] = prev.clone();
        }
        let args: Vec<String> = sandbox
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let spawn_error = |source| Error::Spawn {
            plugin: kind.clone(),
            source,
        };
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.host_netns.display()))
            .arg(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", &sandbox.netns)
            .env("CNI_IFNAME", &sandbox.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", self.joined_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config.to_string().as_bytes())
                .map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() {
            return Err(Error::Failed {
                command,
                plugin: kind,
                status: output.status,
                stdout,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        if stdout.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&stdout).map_err(|_| Error::BadResult {
            plugin: kind,
            stdout,
        })
    }

    fn joined_path(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn plugins(conflist: &Value) -> Result<Vec<Value>, Error> {
    conflist["plugins"]
        .as_array()
        .cloned()
        .ok_or_else(|| Error::NotAList(conflist.to_string()))
}

/// The IPv4 address (without prefix) of a CNI result's first `ips` entry.
#[must_use]
pub fn result_ip(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"][0]["address"]
        .as_str()?
        .split('/')
        .next()?
        .parse()
        .ok()
}
