//! `shuntctl workloads`: every pod of the config, captured or not.

use shunt_api::admin::Workload;

use crate::output::Output;
use crate::table::{Table, or_dash, yes_no};
use shunt_api::admin_client::AdminClient;

pub async fn run(agent: &AdminClient, output: Output) -> anyhow::Result<String> {
    let body = agent.get("/workloads").await?;
    output.show(body, "/workloads", |list: Vec<Workload>| workloads(&list))
}

fn workloads(workloads: &[Workload]) -> String {
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "IP",
        "NODE",
        "CAPTURED",
        "NETNS-COOKIE",
        "PROXY",
        "REASON",
    ]);
    for w in workloads {
        table.row(vec![
            w.namespace.clone(),
            w.name.clone(),
            or_dash(w.ip),
            or_dash(w.node.as_deref()),
            yes_no(w.captured),
            or_dash(w.netns_cookie),
            w.proxy.clone(),
            w.reason.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_show_their_node_and_dashes_for_what_is_unknown() {
        let table = workloads(&[
            Workload {
                namespace: "shop".into(),
                name: "cart".into(),
                uid: "shop/cart".into(),
                ip: None,
                node: None,
                captured: false,
                reason: "not opted in".into(),
                netns: None,
                netns_cookie: None,
                proxy: "n/a".into(),
            },
            Workload {
                namespace: "shop".into(),
                name: "web".into(),
                uid: "shop/web".into(),
                ip: Some("10.244.1.5".parse().unwrap()),
                node: Some("node-1".into()),
                captured: true,
                reason: "opted in".into(),
                netns: None,
                netns_cookie: None,
                proxy: "n/a".into(),
            },
        ]);
        assert_eq!(
            table,
            "NAMESPACE  NAME  IP          NODE    CAPTURED  NETNS-COOKIE  PROXY  REASON\n\
             shop       cart  -           -       no        -             n/a    not opted in\n\
             shop       web   10.244.1.5  node-1  yes       -             n/a    opted in\n"
        );
    }
}
