//! `shuntctl uninstall`: the agent detaches and unpins everything of its instance, then exits.

use shunt_api::admin::Uninstalled;

use crate::output::Output;
use shunt_api::admin_client::AdminClient;

pub async fn run(agent: &AdminClient, output: Output) -> anyhow::Result<String> {
    let body = agent.post("/uninstall").await?;
    output.show(body, "/uninstall", |answer: Uninstalled| {
        uninstalled(&answer)
    })
}

fn uninstalled(answer: &Uninstalled) -> String {
    let mut out = String::from("capture uninstalled; the agent is stopping\n");
    for path in &answer.removed {
        out.push_str(&format!("removed {}\n", path.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninstall_lists_what_was_removed() {
        let answer = Uninstalled {
            removed: vec!["/sys/fs/bpf/shunt/default/links/connect4".into()],
        };
        assert_eq!(
            uninstalled(&answer),
            "capture uninstalled; the agent is stopping\n\
             removed /sys/fs/bpf/shunt/default/links/connect4\n"
        );
    }
}
