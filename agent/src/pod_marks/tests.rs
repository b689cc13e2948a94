use std::path::Path;

use super::*;
use crate::config::LoadOptions;
use crate::pods::PodState;
use crate::source::local_dir::Loader;

/// A snapshot of one pod, `file` standing for its resourceVersion.
fn snapshot(file: &str, node: &str, opted_in: bool, marked: Option<&str>) -> Snapshot {
    let labels = if opted_in {
        "{shunt.io/capture: enabled}"
    } else {
        "{}"
    };
    let annotations = marked.map_or_else(String::new, |v| format!("shunt.io/captured: '{v}'"));
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop, uid: u-web, \
         labels: {labels}, annotations: {{{annotations}}}}}\nspec: {{nodeName: {node}}}\n\
         status: {{podIP: 10.244.0.10}}\n"
    );
    let mut loader = Loader::default();
    loader.load_file(Path::new(file), &text);
    let options = LoadOptions {
        node_name: "node-0".parse().unwrap_or_else(|e| panic!("{e}")),
        ..LoadOptions::default()
    };
    loader.finish().into_snapshot(Path::new("."), &options)
}

fn view(status: Option<PodStatus>) -> NodeView {
    NodeView {
        pods: status
            .map(|status| {
                let state = PodState {
                    netns: None,
                    status,
                };
                (PodUid::from("u-web"), state)
            })
            .into_iter()
            .collect(),
        ..NodeView::default()
    }
}

#[test]
fn a_pod_is_marked_while_captured_and_unmarked_after() {
    struct Case {
        name: &'static str,
        node: &'static str,
        opted_in: bool,
        marked: Option<&'static str>,
        status: Option<PodStatus>,
        /// The write, if any: set (`true`) or remove.
        want: Option<bool>,
    }
    let failed = || Some(PodStatus::Failed("netns gone".into()));
    let cases = [
        Case {
            name: "ready and unmarked: set",
            node: "node-0",
            opted_in: true,
            marked: None,
            status: Some(PodStatus::Ready),
            want: Some(true),
        },
        Case {
            name: "ready and marked: nothing",
            node: "node-0",
            opted_in: true,
            marked: Some("true"),
            status: Some(PodStatus::Ready),
            want: None,
        },
        Case {
            name: "ready, marked with another value: set",
            node: "node-0",
            opted_in: true,
            marked: Some("false"),
            status: Some(PodStatus::Ready),
            want: Some(true),
        },
        Case {
            name: "pending and unmarked: not yet",
            node: "node-0",
            opted_in: true,
            marked: None,
            status: Some(PodStatus::Pending),
            want: None,
        },
        Case {
            name: "pending and marked (an agent restart): kept",
            node: "node-0",
            opted_in: true,
            marked: Some("true"),
            status: Some(PodStatus::Pending),
            want: None,
        },
        Case {
            name: "captured, not in the view yet (it lags the config), marked: kept",
            node: "node-0",
            opted_in: true,
            marked: Some("true"),
            status: None,
            want: None,
        },
        Case {
            name: "failed and marked: removed",
            node: "node-0",
            opted_in: true,
            marked: Some("true"),
            status: failed(),
            want: Some(false),
        },
        Case {
            name: "waiting for its netns and marked: removed",
            node: "node-0",
            opted_in: true,
            marked: Some("true"),
            status: Some(PodStatus::PendingDiscovery),
            want: Some(false),
        },
        Case {
            name: "no longer captured, still ready in the view: removed",
            node: "node-0",
            opted_in: false,
            marked: Some("true"),
            status: Some(PodStatus::Ready),
            want: Some(false),
        },
        Case {
            name: "not captured, unmarked: nothing",
            node: "node-0",
            opted_in: false,
            marked: None,
            status: None,
            want: None,
        },
        Case {
            name: "another node's pod: its agent's",
            node: "node-1",
            opted_in: true,
            marked: Some("true"),
            status: None,
            want: None,
        },
    ];
    for case in cases {
        let snapshot = snapshot("v1", case.node, case.opted_in, case.marked);
        assert_eq!(snapshot.errors, vec![], "{}", case.name);
        let got: Vec<bool> = Marks::default()
            .changes(&snapshot, &view(case.status))
            .into_iter()
            .map(|change| {
                assert_eq!(
                    (change.namespace.as_str(), change.name.as_str()),
                    ("shop", "web")
                );
                change.captured
            })
            .collect();
        assert_eq!(got, Vec::from_iter(case.want), "{}", case.name);
    }
}

#[test]
fn a_write_is_not_repeated_until_the_pod_changes_or_it_failed() {
    let ready = view(Some(PodStatus::Ready));
    let mut marks = Marks::default();
    let unmarked = snapshot("v1", "node-0", true, None);
    assert_eq!(marks.changes(&unmarked, &ready).len(), 1, "first: set");
    assert_eq!(
        marks.changes(&unmarked, &ready),
        vec![],
        "the same pod again (the watch has not brought the mark back yet)"
    );
    marks.failed(&PodUid::from("u-web"));
    assert_eq!(marks.changes(&unmarked, &ready).len(), 1, "failed: again");
    // Someone removed the mark: a new version without it.
    let changed = snapshot("v2", "node-0", true, None);
    assert_eq!(
        marks.changes(&changed, &ready).len(),
        1,
        "a new version: again"
    );
    let marked = snapshot("v3", "node-0", true, Some("true"));
    assert_eq!(marks.changes(&marked, &ready), vec![]);
    assert!(marks.asked.is_empty(), "nothing kept once done");
}

#[test]
fn uninstall_removes_every_mark_of_this_node() {
    for (node, marked, want) in [
        ("node-0", Some("true"), 1),
        ("node-0", None, 0),
        ("node-1", Some("true"), 0),
    ] {
        let removals = removals(&snapshot("v1", node, true, marked));
        assert_eq!(removals.len(), want, "{node} {marked:?}");
        assert!(removals.iter().all(|change| !change.captured));
    }
}
