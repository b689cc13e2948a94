//! `shuntctl config dump`: every object the agent loaded, and the errors of the last load.

use std::path::Path;

use shunt_api::admin::ConfigDump;
use shunt_api::config::Sourced;

use crate::output::Output;
use crate::table::{Table, count, or_dash};
use shunt_api::admin_client::AdminClient;

pub async fn dump(agent: &AdminClient, output: Output) -> anyhow::Result<String> {
    let body = agent.get("/config").await?;
    output.show(body, "/config", |dump: ConfigDump| config(&dump))
}

fn config(dump: &ConfigDump) -> String {
    let mut objects = Table::new(&["KIND", "NAMESPACE", "NAME", "FILE"]);
    let place = |file: &Path, document: usize| format!("{} (document {document})", file.display());
    for Sourced {
        file,
        document,
        object,
    } in &dump.config.namespaces
    {
        objects.row(vec![
            "Namespace".into(),
            "-".into(),
            object.metadata.name.clone(),
            place(file, *document),
        ]);
    }
    for p in &dump.config.pods {
        let meta = &p.object.metadata;
        objects.row(vec![
            "Pod".into(),
            meta.namespace().to_owned(),
            meta.name.clone(),
            place(&p.file, p.document),
        ]);
    }
    for s in &dump.config.services {
        let meta = &s.object.metadata;
        objects.row(vec![
            "Service".into(),
            meta.namespace().to_owned(),
            meta.name.clone(),
            place(&s.file, s.document),
        ]);
    }
    for raw in &dump.config.istio {
        let field = |value: &serde_json::Value| value.as_str().unwrap_or("-").to_owned();
        let object = &raw.object;
        objects.row(vec![
            format!(
                "{} ({})",
                field(&object["kind"]),
                field(&object["apiVersion"])
            ),
            field(&object["metadata"]["namespace"]),
            field(&object["metadata"]["name"]),
            place(&raw.file, raw.document),
        ]);
    }
    let mut out = format!("config dir {}\n\n", dump.dir.display());
    out.push_str(&objects.render());
    if dump.errors.is_empty() {
        out.push_str("\nno errors\n");
    } else {
        out.push_str(&format!(
            "\n{}:\n",
            count(dump.errors.len(), "error", "errors")
        ));
        let mut errors = Table::new(&["FILE", "OBJECT", "FIELD", "MESSAGE"]);
        for e in &dump.errors {
            errors.row(vec![
                e.file.display().to_string(),
                or_dash(e.object.as_ref()),
                or_dash(e.field.as_ref()),
                e.message.clone(),
            ]);
        }
        out.push_str(&errors.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_objects_by_kind_then_the_errors() {
        let object = |meta: serde_json::Value| serde_json::json!({"metadata": meta});
        let sourced = |file: &str, document: usize, object: serde_json::Value| serde_json::json!({"file": file, "document": document, "object": object});
        let dump = |errors: serde_json::Value| -> ConfigDump {
            serde_json::from_value(serde_json::json!({
                "dir": "/etc/shunt",
                "namespaces": [sourced("ns.yaml", 1, object(serde_json::json!({"name": "shop"})))],
                "pods": [sourced("pods.yaml", 2, object(serde_json::json!({"name": "cart"})))],
                "services": [sourced(
                    "svc.yaml", 1, object(serde_json::json!({"name": "cart", "namespace": "shop"})),
                )],
                "istio": [sourced("vs.yaml", 1, serde_json::json!({
                    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "cart"},
                }))],
                "errors": errors,
            }))
            .unwrap()
        };
        let objects = "config dir /etc/shunt\n\
                       \n\
                       KIND                                     NAMESPACE  NAME  FILE\n\
                       Namespace                                -          shop  ns.yaml (document 1)\n\
                       Pod                                      default    cart  pods.yaml (document 2)\n\
                       Service                                  shop       cart  svc.yaml (document 1)\n\
                       VirtualService (networking.istio.io/v1)  -          cart  vs.yaml (document 1)\n";
        for (errors, expected) in [
            (serde_json::json!([]), "\nno errors\n".to_owned()),
            (
                serde_json::json!([{
                    "file": "pods.yaml", "object": "Pod default/cart",
                    "field": "spec.containers[0].ports[0].containerPort", "message": "not a port",
                }, {
                    "file": "bad.yaml", "object": null, "field": null, "message": "not YAML",
                }]),
                "\n2 errors:\n\
                 FILE       OBJECT            FIELD                                      MESSAGE\n\
                 pods.yaml  Pod default/cart  spec.containers[0].ports[0].containerPort  not a port\n\
                 bad.yaml   -                 -                                          not YAML\n"
                    .to_owned(),
            ),
        ] {
            assert_eq!(config(&dump(errors)), format!("{objects}{expected}"));
        }
    }
}
