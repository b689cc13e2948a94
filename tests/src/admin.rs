//! A client of the agent's admin API (HTTP/1.1 on `<run-dir>/admin.sock`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::http;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent admin API: {0}")]
    Http(#[from] http::Error),
    #[error("agent admin API {path} returned invalid JSON ({source}): {body}")]
    Json {
        path: String,
        body: String,
        source: serde_json::Error,
    },
    #[error("agent admin API {path}: {message}: {body}")]
    Shape {
        path: String,
        message: &'static str,
        body: String,
    },
}

/// One entry of `GET /workloads`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadView {
    pub namespace: String,
    pub name: String,
    pub ip: Option<String>,
    /// The pod's node, as the agent places it (`spec.nodeName`, else the agent's own).
    pub node: Option<String>,
    /// Captured by the shunt of the pod's node (this agent's only when `node` is its own).
    pub captured: bool,
    pub reason: String,
    /// The netns file the agent holds the pod by (its annotation, or what discovery found).
    pub netns: Option<PathBuf>,
    pub netns_cookie: Option<u64>,
    /// `ready`, `pending`, `failed: <error>` or `n/a`.
    pub proxy: String,
}

impl WorkloadView {
    fn from_json(value: &Value) -> Option<Self> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            namespace: text("namespace")?,
            name: text("name")?,
            ip: text("ip"),
            node: text("node"),
            captured: value.get("captured")?.as_bool()?,
            reason: text("reason").unwrap_or_default(),
            netns: text("netns").map(PathBuf::from),
            netns_cookie: value.get("netns_cookie").and_then(Value::as_u64),
            proxy: text("proxy").unwrap_or_default(),
        })
    }

    /// Captured, and the proxy has its listeners open.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.captured && self.proxy == "ready"
    }
}

/// The admin socket of one agent.
#[derive(Clone, Debug)]
pub struct Admin {
    socket: PathBuf,
}

impl Admin {
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path` as JSON (non-2xx is an error).
    pub fn get(&self, path: &str) -> Result<Value, Error> {
        let response = http::get_unix(&self.socket, path)?;
        serde_json::from_slice(&response.body).map_err(|source| Error::Json {
            path: path.to_owned(),
            body: response.text(),
            source,
        })
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<Value, Error> {
        self.get("/status")
    }

    /// `GET /config`: every object loaded, and under `errors` what the last load rejected.
    pub fn config(&self) -> Result<Value, Error> {
        self.get("/config")
    }

    /// `GET /workloads`.
    pub fn workloads(&self) -> Result<Vec<WorkloadView>, Error> {
        let path = "/workloads";
        let value = self.get(path)?;
        let shape_error = |message| Error::Shape {
            path: path.to_owned(),
            message,
            body: value.to_string(),
        };
        value
            .as_array()
            .ok_or_else(|| shape_error("not a list"))?
            .iter()
            .map(|entry| {
                WorkloadView::from_json(entry)
                    .ok_or_else(|| shape_error("an entry lacks namespace, name or captured"))
            })
            .collect()
    }

    /// `GET /maps/<name>`.
    pub fn map(&self, name: &str) -> Result<Value, Error> {
        self.get(&format!("/maps/{name}"))
    }

    /// `POST /uninstall`: the agent unpins everything and exits.
    pub fn uninstall(&self) -> Result<(), Error> {
        http::request_ok(
            &http::Target::Unix(self.socket.clone()),
            "POST",
            "/uninstall",
        )?;
        Ok(())
    }
}

/// Whether `value` holds the number `n` anywhere (a netns cookie in a map dump's keys).
#[must_use]
pub fn mentions_u64(value: &Value, n: u64) -> bool {
    match value {
        Value::Number(number) => number.as_u64() == Some(n),
        Value::Array(items) => items.iter().any(|v| mentions_u64(v, n)),
        Value::Object(map) => map.values().any(|v| mentions_u64(v, n)),
        Value::String(_) | Value::Bool(_) | Value::Null => false,
    }
}

/// The entries of a map dump (`GET /maps/NAME` answers `[{"key": …, "value": …}]`).
#[must_use]
pub fn entries(dump: &Value) -> Vec<(&Value, &Value)> {
    dump.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| Some((item.get("key")?, item.get("value")?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The counter `name` (e.g. `shortcut_redirects`) in a dump of the `STATS` map, whose keys
/// are the counter names and values the totals over all CPUs.
#[must_use]
pub fn counter(stats: &Value, name: &str) -> Option<u64> {
    entries(stats)
        .into_iter()
        .find(|(key, _)| key.as_str() == Some(name))
        .and_then(|(_, value)| value.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_map_dumps() {
        let stats = json!([
            {"key": "outbound_captured", "value": 3},
            {"key": "shortcut_redirects", "value": 7},
        ]);
        let meshed = json!([
            {"key": {"netns_cookie": 4097}, "value": {"pod_ip": "10.244.0.10"}},
        ]);
        assert_eq!(counter(&stats, "shortcut_redirects"), Some(7));
        assert_eq!(counter(&stats, "missing"), None);
        assert_eq!(entries(&meshed).len(), 1);
        assert_eq!(entries(&json!({"not": "a dump"})).len(), 0);
        for (cookie, want) in [(4097, true), (4098, false)] {
            assert_eq!(mentions_u64(&meshed, cookie), want, "{cookie}");
        }
    }

    #[test]
    fn parses_workloads() {
        let entry = json!({"namespace": "mesh", "name": "a", "uid": "u", "ip": "10.244.0.10",
            "node": "node-1", "captured": true, "reason": "namespace label",
            "netns": "/run/netns/x", "netns_cookie": 12, "proxy": "ready"});
        let view = WorkloadView::from_json(&entry).unwrap();
        assert!(view.is_ready());
        assert_eq!(view.node.as_deref(), Some("node-1"));
        assert_eq!(view.netns_cookie, Some(12));
        assert!(WorkloadView::from_json(&json!({"name": "a"})).is_none());
    }
}
