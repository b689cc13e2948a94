//! The CNI spec's side: the environment, the network config on stdin, results and errors.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};
use shunt_api::cni::{CniCommand, CniPod};

/// The result and error version when the config names none.
const DEFAULT_VERSION: &str = "1.0.0";
const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// `timeoutSeconds` when the config has none.
const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// The spec's error codes used here.
pub mod codes {
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is away, or the pod is not captured yet.
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin-specific.
    pub const PLUGIN: u32 = 999;
}

/// A CNI error result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// `{"cniVersion", "code", "msg"}`, as the spec's error result.
    #[must_use]
    pub fn to_json(&self) -> String {
        json!({"cniVersion": DEFAULT_VERSION, "code": self.code, "msg": self.msg}).to_string()
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Cni(CniCommand),
    Version,
}

impl Command {
    pub fn from_env(value: Option<&str>) -> Result<Self, CniError> {
        match value {
            Some("ADD") => Ok(Self::Cni(CniCommand::Add)),
            Some("DEL") => Ok(Self::Cni(CniCommand::Del)),
            Some("CHECK") => Ok(Self::Cni(CniCommand::Check)),
            Some("VERSION") => Ok(Self::Version),
            other => Err(CniError::new(
                codes::INVALID_ENV,
                format!("CNI_COMMAND must be ADD, DEL, CHECK or VERSION, got {other:?}"),
            )),
        }
    }
}

/// `VERSION`'s answer.
#[must_use]
pub fn version_info() -> String {
    json!({"cniVersion": DEFAULT_VERSION, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// The network config the runtime gives this plugin: its own fields, and the runtime's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    #[serde(default)]
    pub cni_version: Option<String>,
    /// The agent's `cni.sock`.
    pub agent_socket: PathBuf,
    /// Namespaces whose pods start without asking (shunt's own).
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// The primary CNI's result (and those of the plugins before this one).
    #[serde(default)]
    pub prev_result: Option<Value>,
}

fn default_excluded() -> Vec<String> {
    vec!["shunt-system".to_owned()]
}

const fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl PluginConfig {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let config: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                codes::DECODE,
                format!("the network config on stdin is not a shunt-cni config: {e}"),
            )
        })?;
        if !config.agent_socket.is_absolute() {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                format!(
                    "agentSocket must be an absolute path, got {}",
                    config.agent_socket.display()
                ),
            ));
        }
        Ok(config)
    }

    /// What ADD prints: `prevResult`, under the config's version.
    pub fn result(&self) -> Result<String, CniError> {
        let Some(Value::Object(result)) = &self.prev_result else {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                "no prevResult: shunt-cni must be chained after the primary CNI plugin, in a \
                 .conflist",
            ));
        };
        let mut result = result.clone();
        let version = self.cni_version.as_deref().unwrap_or(DEFAULT_VERSION);
        result.insert("cniVersion".to_owned(), json!(version));
        Ok(Value::Object(result).to_string())
    }

    /// The IPv4 addresses of `prevResult`: `ips[].address` (0.3.0 and later), or
    /// `ip4.ip` (0.2.0), without their prefix length.
    #[must_use]
    pub fn prev_result_ips(&self) -> Vec<Ipv4Addr> {
        let Some(result) = &self.prev_result else {
            return Vec::new();
        };
        let listed = result
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address"));
        let legacy = result.get("ip4").and_then(|ip4| ip4.get("ip"));
        listed
            .chain(legacy)
            .filter_map(Value::as_str)
            .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
            .collect()
    }
}

/// One run of the plugin, as the environment describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// `None`: not a Kubernetes pod's sandbox.
    pub pod: Option<CniPod>,
}

impl Invocation {
    pub fn from_env(
        command: CniCommand,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CniError> {
        let container_id = env("CNI_CONTAINERID")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| CniError::new(codes::INVALID_ENV, "CNI_CONTAINERID is required"))?;
        let netns = env("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from);
        if netns.is_none() && command != CniCommand::Del {
            return Err(CniError::new(
                codes::INVALID_ENV,
                format!("CNI_NETNS is required for {command:?}"),
            ));
        }
        let args = parse_args(env("CNI_ARGS").as_deref().unwrap_or(""));
        let arg = |key: &str| {
            args.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let pod = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
            (Some(namespace), Some(name)) => Some(CniPod {
                namespace,
                name,
                uid: arg("K8S_POD_UID"),
            }),
            _ => None,
        };
        Ok(Self {
            container_id,
            netns,
            pod,
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (`IgnoreUnknown=1;K8S_POD_NAME=web;...`).
fn parse_args(args: &str) -> Vec<(String, String)> {
    args.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(extra: &str) -> PluginConfig {
        PluginConfig::parse(
            format!(r#"{{"cniVersion": "1.0.0", "name": "k8s", "type": "shunt-cni", "agentSocket": "/run/shunt/default/cni.sock"{extra}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_environment_names_the_pod() {
        /// CNI_ARGS, the expected pod's namespace, name and uid.
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, Option<&'a str>)>);
        let cases: &[Case<'_>] = &[
            (
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b0c",
                Some(("shop", "web-1", Some("0b0c"))),
            ),
            (
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1",
                Some(("shop", "web-1", None)),
            ),
            ("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=", None),
            ("IgnoreUnknown=1", None),
            ("", None),
        ];
        for (args, want) in cases {
            let vars = HashMap::from([
                ("CNI_CONTAINERID", "abc".to_owned()),
                ("CNI_NETNS", "/var/run/netns/cni-1".to_owned()),
                ("CNI_ARGS", (*args).to_owned()),
            ]);
            let env = |k: &str| vars.get(k).cloned();
            let got = Invocation::from_env(CniCommand::Add, &env).unwrap();
            let want = want.map(|(namespace, name, uid)| CniPod {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.map(Into::into),
            });
            assert_eq!(got.pod, want, "{args}");
            assert_eq!(got.container_id, "abc");
        }
    }

    #[test]
    fn missing_environment_fails_except_a_del_without_netns() {
        /// The command, its environment, what the error names.
        type Case<'a> = (CniCommand, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                CniCommand::Add,
                &[("CNI_NETNS", "/n")],
                Some("CNI_CONTAINERID"),
            ),
            (
                CniCommand::Add,
                &[("CNI_CONTAINERID", "c")],
                Some("CNI_NETNS"),
            ),
            (
                CniCommand::Check,
                &[("CNI_CONTAINERID", "c"), ("CNI_NETNS", "")],
                Some("CNI_NETNS"),
            ),
            (CniCommand::Del, &[("CNI_CONTAINERID", "c")], None),
        ];
        for (command, vars, want) in cases {
            let vars: HashMap<&str, String> =
                vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            let env = |k: &str| vars.get(k).cloned();
            let got = Invocation::from_env(*command, &env);
            match want {
                Some(want) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.code, codes::INVALID_ENV);
                    assert!(e.msg.contains(want), "{e:?}");
                }
                None => assert!(got.is_ok(), "{got:?}"),
            }
        }
        assert!(Command::from_env(Some("ADDX")).is_err());
        assert_eq!(
            Command::from_env(Some("VERSION")).unwrap(),
            Command::Version
        );
    }

    #[test]
    fn the_result_is_prev_result_and_its_ips_go_to_the_agent() {
        // (prevResult, expected IPv4 addresses)
        let cases: &[(&str, &[[u8; 4]])] = &[
            (
                r#"{"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.246.0.10/24", "gateway": "10.246.0.1", "interface": 0}, {"address": "fd00::a/64"}]}"#,
                &[[10, 246, 0, 10]],
            ),
            (
                r#"{"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.2.3/16"}]}"#,
                &[[10, 1, 2, 3]],
            ),
            (
                r#"{"cniVersion": "0.2.0", "ip4": {"ip": "10.9.9.9/8"}}"#,
                &[[10, 9, 9, 9]],
            ),
            (r#"{"cniVersion": "1.0.0"}"#, &[]),
        ];
        for (prev, want) in cases {
            let config = config(&format!(r#", "prevResult": {prev}"#));
            let ips: Vec<[u8; 4]> = config
                .prev_result_ips()
                .iter()
                .map(|ip| ip.octets())
                .collect();
            assert_eq!(ips, *want, "{prev}");
            let result: Value = serde_json::from_str(&config.result().unwrap()).unwrap();
            let mut expected: Value = serde_json::from_str(prev).unwrap();
            expected["cniVersion"] = json!("1.0.0");
            assert_eq!(result, expected);
        }
        let e = config("").result().unwrap_err();
        assert!(e.msg.contains("must be chained"), "{e:?}");
    }

    #[test]
    fn the_config_has_defaults_and_checks_the_socket() {
        let plain = config("");
        assert_eq!(plain.exclude_namespaces, ["shunt-system"]);
        assert_eq!(plain.timeout_seconds, 30);
        let custom = config(r#", "excludeNamespaces": ["mesh-system"], "timeoutSeconds": 5"#);
        assert_eq!(custom.exclude_namespaces, ["mesh-system"]);
        assert_eq!(custom.timeout_seconds, 5);
        let cases: &[(&str, u32)] = &[
            (r#"{"agentSocket": "cni.sock"}"#, codes::INVALID_CONFIG),
            (r#"{"type": "shunt-cni"}"#, codes::DECODE),
            ("not json", codes::DECODE),
        ];
        for (text, code) in cases {
            assert_eq!(
                PluginConfig::parse(text.as_bytes()).unwrap_err().code,
                *code,
                "{text}"
            );
        }
        let error: Value = serde_json::from_str(&CniError::new(11, "x").to_json()).unwrap();
        assert_eq!(
            error,
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "x"})
        );
        let version: Value = serde_json::from_str(&version_info()).unwrap();
        assert_eq!(version["supportedVersions"][3], "1.0.0");
    }
}
