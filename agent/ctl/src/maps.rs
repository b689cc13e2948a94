//! `shuntctl maps dump NAME`: one eBPF map's entries.

use crate::output::Output;
use crate::table::{Table, count};
use shunt_api::admin_client::AdminClient;

pub async fn dump(agent: &AdminClient, name: &str, output: Output) -> anyhow::Result<String> {
    let path = format!("/maps/{name}");
    let body = agent.get(&path).await?;
    output.show(body, &path, |body: serde_json::Value| map_entries(&body))
}

/// A map dump is `[{"key": …, "value": …}]`; anything else is shown as JSON.
fn map_entries(body: &serde_json::Value) -> String {
    let Some(entries) = body.as_array() else {
        return format!("{body:#}\n");
    };
    let mut table = Table::new(&["KEY", "VALUE"]);
    for entry in entries {
        table.row(vec![flat(&entry["key"]), flat(&entry["value"])]);
    }
    format!(
        "{}{}\n",
        table.render(),
        count(entries.len(), "entry", "entries")
    )
}

/// One line: objects as `k=v k=v`, strings without quotes.
fn flat(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", flat(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entries_render_one_per_line() {
        let body = serde_json::json!([
            {"key": {"netns_cookie": 4097}, "value": {"pod_ip": "10.0.0.1", "capture_inbound": true}},
            {"key": 0, "value": "listener socket"},
        ]);
        assert_eq!(
            map_entries(&body),
            "KEY                VALUE\n\
             netns_cookie=4097  capture_inbound=true pod_ip=10.0.0.1\n\
             0                  listener socket\n\
             2 entries\n"
        );
    }

    #[test]
    fn a_body_that_is_not_a_list_is_shown_as_json() {
        let body = serde_json::json!({"error": "odd"});
        assert_eq!(map_entries(&body), "{\n  \"error\": \"odd\"\n}\n");
    }
}
