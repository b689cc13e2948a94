//! The mesh graph drawn as SVG on the server, so the page needs no script library: nodes in
//! layers (a node one layer right of its furthest source), edges labelled with their numbers
//! and coloured by health.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::graph::{Graph, Health, Node};

const COL: f64 = 320.0;
const ROW: f64 = 90.0;
const PAD: f64 = 40.0;

fn name(n: &Node) -> String {
    match n {
        Node::Workload(ns, w) => format!("{w}.{ns}"),
        Node::Service(host) => host.clone(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(h: Health) -> &'static str {
    match h {
        Health::Healthy => "#3e8635",
        Health::Degraded => "#f0ab00",
        Health::Failure => "#c9190b",
    }
}

/// Each node's layer: 0 for nodes nothing points at, else one past its sources' furthest,
/// relaxed at most once per node so that cycles end.
fn layers(g: &Graph) -> BTreeMap<&Node, usize> {
    let mut layer: BTreeMap<&Node, usize> = g.nodes.iter().map(|n| (n, 0)).collect();
    for _ in 0..g.nodes.len() {
        let mut changed = false;
        for e in &g.edges {
            let want = layer.get(&e.source).copied().unwrap_or(0) + 1;
            if want < g.nodes.len()
                && let Some(l) = layer.get_mut(&e.destination)
                && *l < want
            {
                *l = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

/// The graph as a standalone SVG document.
pub fn render(g: &Graph) -> String {
    let layer = layers(g);
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut at: BTreeMap<&Node, (f64, f64)> = BTreeMap::new();
    for n in &g.nodes {
        let l = layer.get(n).copied().unwrap_or(0);
        let r = rows.entry(l).or_default();
        #[expect(clippy::cast_precision_loss, reason = "layer and row counts are small")]
        at.insert(n, (PAD + COL * l as f64, PAD + ROW * *r as f64));
        *r += 1;
    }
    let width = at.values().map(|p| p.0).fold(0.0, f64::max) + COL;
    let height = at.values().map(|p| p.1).fold(0.0, f64::max) + ROW + PAD;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    for e in &g.edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (at.get(&e.source), at.get(&e.destination)) else {
            continue;
        };
        let p95 = e
            .p95_ms
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.1} ms"));
        let label = format!(
            "{:.2} rps, {:.1}% 5xx, p95 {p95}, {:.0} B/s, {:.0}% mTLS",
            e.rps, e.error_pct, e.tcp_bytes_per_sec, e.mtls_pct
        );
        let _ = write!(
            out,
            r#"<g class="edge" data-source="{}" data-destination="{}" data-error-pct="{:.1}"><line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text></g>"#,
            escape(&name(&e.source)),
            escape(&name(&e.destination)),
            e.error_pct,
            colour(e.health),
            (x1 + x2) / 2.0,
            (y1 + y2) / 2.0 - 6.0,
            escape(&label),
        );
    }
    for (n, (x, y)) in &at {
        let kind = if matches!(n, Node::Service(_)) {
            "service"
        } else {
            "workload"
        };
        let _ = write!(
            out,
            r##"<g class="node {kind}"><circle cx="{x}" cy="{y}" r="10" fill="#06c"/><text x="{}" y="{}">{}</text></g>"##,
            x + 14.0,
            y + 4.0,
            escape(&name(n)),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::graph::Edge;

    fn edge(s: Node, d: Node, error_pct: f64) -> Edge {
        Edge {
            source: s,
            destination: d,
            rps: 10.0,
            error_pct,
            p95_ms: Some(12.0),
            tcp_bytes_per_sec: 0.0,
            mtls_pct: 100.0,
            health: Health::of(error_pct),
        }
    }

    #[test]
    fn draws_nodes_edges_and_health_escaped() {
        let a = Node::Workload("ns".into(), "a<b".into());
        let s = Node::Service("s.ns.svc".into());
        let g = Graph {
            nodes: vec![a.clone(), s.clone()],
            edges: vec![edge(a, s, 20.0)],
        };
        let svg = render(&g);
        for want in [
            ">a&lt;b.ns</text>",
            ">s.ns.svc</text>",
            "data-error-pct=\"20.0\"",
            "10.00 rps, 20.0% 5xx, p95 12.0 ms",
            "stroke=\"#c9190b\"",
        ] {
            assert!(svg.contains(want), "{want} in {svg}");
        }
    }

    #[test]
    fn layers_follow_edges_and_end_on_cycles() {
        let n = |w: &str| Node::Workload("ns".into(), w.into());
        for (edges, want) in [
            (
                vec![("a", "b"), ("b", "c"), ("a", "c")],
                vec![("a", 0), ("b", 1), ("c", 2)],
            ),
            (vec![("a", "b"), ("b", "a")], vec![("a", 0), ("b", 1)]),
        ] {
            let mut nodes: Vec<Node> = edges.iter().flat_map(|(s, d)| [n(s), n(d)]).collect();
            nodes.sort();
            nodes.dedup();
            let g = Graph {
                nodes,
                edges: edges.iter().map(|(s, d)| edge(n(s), n(d), 0.0)).collect(),
            };
            let got: Vec<(String, usize)> = layers(&g)
                .into_iter()
                .map(|(k, v)| (name(k).trim_end_matches(".ns").to_owned(), v))
                .collect();
            let want: Vec<(String, usize)> =
                want.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            assert_eq!(got, want, "{edges:?}");
        }
    }
}
