//! From records to the result: medians and ranges per row and scenario, ratios against S0
//! and S1 (and, for L7, against S4), S6's against S5 and S2, S7's against S2, the targets, the
//! markdown tables, the JSON file, and the structure check the smoke test runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::measure::{
    GATEWAY_WORKLOADS, L7_MAX_CONNECTIONS, L7_RATE_CONNECTIONS, MISSED_RATE, Record,
};
use super::plan::Plan;
use super::scenario::Scenario;

/// The heading of the second table: the L7 rows against HAProxy `mode http`.
const L7_VS_HAPROXY: &str = "L7 against HAProxy `mode http` (S4)";
/// The security-on target (authorization issue, section 5 "Bench") and its cost line.
const S7_TARGET: &str = "S7 L7 max rps ≥ 0.9 × S2's";
const S7_COST: &str = "Security on, proxy CPU / 10k req (L7 max rps)";
/// The heading of S8's table, and its targets (gateway issue, "Bench").
const S8_HEADING: &str = "Gateway (S8): shunt's gateway against HAProxy terminating the same TLS";
const S8_RPS_TARGET: &str = "S8 HTTPS keep-alive max rps ≥ 1.0 × HAProxy's";
const S8_CPU_TARGET: &str = "S8 HTTPS keep-alive proxy CPU / 10k req ≤ HAProxy's";
const S8_HANDSHAKES: &str = "S8 TLS handshake rate (a new connection per request)";

/// One row of S8's table: a metric of one gateway workload, measured on both sides.
struct GatewayRow {
    /// `<workload>.<metric>`; the records' keys are `<workload>_<side>.<metric>`.
    workload: &'static str,
    metric: &'static str,
    label: String,
    unit: &'static str,
}

impl GatewayRow {
    fn key(&self, side: &str) -> String {
        format!("{}_{side}.{}", self.workload, self.metric)
    }
}

fn gateway_rows() -> Vec<GatewayRow> {
    let mut rows = Vec::new();
    for (workload, _, _) in GATEWAY_WORKLOADS {
        let what = match workload {
            "gw_http" => "HTTP/1.1 keep-alive",
            "gw_https" => "HTTPS keep-alive",
            _ => "HTTPS, new connection per request",
        };
        for (metric, name, unit) in [
            ("rps", "max rps", "req/s"),
            ("proxy_cpu_s_per_10k", "proxy CPU / 10k req", "CPU-s"),
            ("machine_cpu_s_per_10k", "machine CPU / 10k req", "CPU-s"),
        ] {
            rows.push(GatewayRow {
                workload,
                metric,
                label: format!("{what}: {name}"),
                unit,
            });
        }
    }
    rows
}

/// Which scenarios a row has values in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every scenario.
    All,
    /// Scenarios with a forwarder ([`Scenario::has_forwarder`]): proxy CPU and RSS, which S0
    /// and S5 do not have. Across nodes, the sum of both node proxies.
    Forwarder,
    /// One node proxy of the cross-node mesh: S6 only.
    NodeProxy,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Forwarder => "forwarder",
            Self::NodeProxy => "node_proxy",
        }
    }
}

/// One row of the table: a metric of a workload.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub scope: Scope,
}

impl Row {
    pub fn applies_to(&self, scenario: Scenario) -> bool {
        // S8 has its own rows (`gateway_rows`), in its own table.
        if scenario == Scenario::Gateway {
            return false;
        }
        match self.scope {
            Scope::All => true,
            Scope::Forwarder => scenario.has_forwarder(),
            Scope::NodeProxy => scenario == Scenario::CrossMtls,
        }
    }

    /// L7 rows also get ratios against HAProxy `mode http`, as the L7 targets do.
    fn is_l7(&self) -> bool {
        self.key.starts_with("l7_")
    }

    /// A fixed-rate row, whose runs are rejected when the system under test cannot keep the
    /// rate: a timing outcome, which the smoke test must not judge.
    fn is_fixed_rate(&self) -> bool {
        self.key.starts_with("l7_fixed.") || self.key.starts_with("l7_half.")
    }

    fn workload(&self) -> &str {
        self.key.split('.').next().unwrap_or_default()
    }
}

pub fn rows(plan: &Plan) -> Vec<Row> {
    use Scope::{All, Forwarder, NodeProxy};
    let row = |key: &str, label: String, unit, scope| Row {
        key: key.to_owned(),
        label,
        unit,
        scope,
    };
    let mut rows = Vec::new();
    for (workload, size) in [("rr_1b", "1 B"), ("rr_1k", "1 KiB")] {
        for (metric, name) in [
            ("p50_us", "p50"),
            ("p90_us", "p90"),
            ("p99_us", "p99"),
            ("p999_us", "p99.9"),
        ] {
            rows.push(row(
                &format!("{workload}.{metric}"),
                format!("L4 RR {size} {name}"),
                "µs",
                All,
            ));
        }
    }
    rows.push(row("crr.p50_us", "L4 CRR p50".into(), "µs", All));
    rows.push(row("crr.p99_us", "L4 CRR p99".into(), "µs", All));
    rows.push(row("crr.conn_per_s", "L4 CRR rate".into(), "conn/s", All));
    let size = plan.bulk_size_label();
    rows.push(row(
        "bulk_1.gbit_per_s",
        format!("L4 bulk 1 stream × {size}"),
        "Gb/s",
        All,
    ));
    rows.push(row(
        "bulk_4.gbit_per_s",
        format!("L4 bulk 4 streams × {size}"),
        "Gb/s",
        All,
    ));
    rows.push(row(
        "rr_1b.proxy_cpu_s_per_10k",
        "proxy CPU / 10k req (RR 1 B)".into(),
        "CPU-s",
        Forwarder,
    ));
    rows.push(row(
        "rr_1b.machine_cpu_s_per_10k",
        "machine CPU / 10k req (RR 1 B, all CPUs)".into(),
        "CPU-s",
        All,
    ));
    rows.push(row(
        "rr_1b.softirq_s_per_10k",
        "… of which softirq".into(),
        "CPU-s",
        All,
    ));
    rows.push(row(
        "crr.proxy_cpu_s_per_10k",
        "proxy CPU / 10k conns (CRR)".into(),
        "CPU-s",
        Forwarder,
    ));
    rows.push(row(
        "crr.src_proxy_cpu_s_per_10k",
        "… client node's proxy (CRR)".into(),
        "CPU-s",
        NodeProxy,
    ));
    rows.push(row(
        "crr.dst_proxy_cpu_s_per_10k",
        "… server node's proxy (CRR)".into(),
        "CPU-s",
        NodeProxy,
    ));
    rows.push(row(
        "crr.machine_cpu_s_per_10k",
        "machine CPU / 10k conns (CRR, all CPUs)".into(),
        "CPU-s",
        All,
    ));
    for &count in plan.idle_connections {
        rows.push(row(
            &format!("idle_{count}.rss_mib_per_1k"),
            format!("proxy RSS / 1k idle conns, at {count}"),
            "MiB",
            Forwarder,
        ));
        rows.push(row(
            &format!("idle_{count}.src_rss_mib_per_1k"),
            format!("… client node's proxy, at {count}"),
            "MiB",
            NodeProxy,
        ));
        rows.push(row(
            &format!("idle_{count}.dst_rss_mib_per_1k"),
            format!("… server node's proxy, at {count}"),
            "MiB",
            NodeProxy,
        ));
    }
    rows.push(row(
        "l7_max.rps",
        format!("L7 max rps ({L7_MAX_CONNECTIONS} conns)"),
        "req/s",
        All,
    ));
    let fixed = plan.l7_fixed_rps;
    let percentiles = [("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99")];
    for (metric, name) in percentiles {
        rows.push(row(
            &format!("l7_fixed.{metric}"),
            format!("L7 at {fixed} rps {name}"),
            "µs",
            All,
        ));
    }
    rows.push(row(
        "l7_half.target_rps",
        "L7 50% of lowest max: rate".into(),
        "req/s",
        All,
    ));
    for (metric, name) in percentiles {
        rows.push(row(
            &format!("l7_half.{metric}"),
            format!("L7 at 50% of lowest max {name}"),
            "µs",
            All,
        ));
    }
    rows.push(row(
        "l7_max.proxy_cpu_s_per_10k",
        "proxy CPU / 10k req (L7 max rps)".into(),
        "CPU-s",
        Forwarder,
    ));
    rows.push(row(
        "l7_max.machine_cpu_s_per_10k",
        "machine CPU / 10k req (L7 max rps, all CPUs)".into(),
        "CPU-s",
        All,
    ));
    rows.push(row(
        "l7_max.softirq_s_per_10k",
        "… of which softirq (L7)".into(),
        "CPU-s",
        All,
    ));
    rows
}

/// Median and range of the accepted runs of one row in one scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            f64::midpoint(values[n / 2 - 1], values[n / 2])
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
            runs: n,
        })
    }
}

/// Everything one bench run found.
pub struct Report {
    pub plan: Plan,
    pub header: Header,
    /// Scenarios that could not run, with why.
    pub unavailable: Vec<(Scenario, String)>,
    pub records: Vec<Record>,
}

/// Where and when the run happened.
pub struct Header {
    pub date: String,
    pub kernel: String,
    pub cpu_model: String,
    pub placement: String,
    pub haproxy_version: String,
}

/// A section-3 target, evaluated on this run's medians.
struct Target {
    what: &'static str,
    measured: Option<String>,
    met: Option<bool>,
}

impl Report {
    fn stats(&self, key: &str, scenario: Scenario) -> Option<Stats> {
        Stats::of(
            self.records
                .iter()
                .filter(|r| r.scenario == scenario && r.rejected.is_none())
                .flat_map(|r| r.values.iter())
                .filter(|(k, _)| k == key)
                .map(|(_, v)| *v)
                .collect(),
        )
    }

    fn median(&self, key: &str, scenario: Scenario) -> Option<f64> {
        self.stats(key, scenario).map(|s| s.median)
    }

    fn ratio(&self, key: &str, of: Scenario, against: Scenario) -> Option<f64> {
        let (a, b) = (self.median(key, of)?, self.median(key, against)?);
        (b != 0.0).then(|| a / b)
    }

    fn unavailable_reason(&self, scenario: Scenario) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(s, _)| *s == scenario)
            .map(|(_, why)| why.as_str())
    }

    fn targets(&self) -> Vec<Target> {
        use Scenario::{
            CrossDirect, CrossMtls, Direct, Ebpf, EbpfAuthz, EbpfSockmap, Haproxy, Iptables,
        };
        let mut targets = Vec::new();
        let overhead = |s| Some(self.median("crr.p50_us", s)? - self.median("crr.p50_us", Direct)?);
        let connect = overhead(Ebpf)
            .zip(overhead(Iptables))
            .map(|(ebpf, ipt)| ebpf / ipt);
        targets.push(Target {
            what: "S2 connect overhead (CRR p50 − S0) ≤ 0.5 × S1's",
            measured: connect.map(|r| format!("S2/S1 overhead = {r:.2}")),
            met: connect.map(|r| r <= 0.5),
        });
        let sockmap = self.ratio("rr_1b.p50_us", EbpfSockmap, Ebpf);
        targets.push(Target {
            what: "S3 RR p50 ≥ 15% lower than S2's",
            measured: sockmap.map(|r| format!("S3/S2 = {r:.2} ({:+.0}%)", (r - 1.0) * 100.0)),
            met: sockmap.map(|r| r <= 0.85),
        });
        for (what, scenario) in [
            ("shunt (S2) L4 RR p50 ≤ HAProxy `mode tcp`", Ebpf),
            ("shunt (S3) L4 RR p50 ≤ HAProxy `mode tcp`", EbpfSockmap),
        ] {
            let r = self.ratio("rr_1b.p50_us", scenario, Haproxy);
            targets.push(Target {
                what,
                measured: r.map(|r| format!("{}/S4 = {r:.2}", scenario.id())),
                met: r.map(|r| r <= 1.0),
            });
        }
        for (what, key) in [
            ("shunt (S2) L4 bulk 1 stream ≥ HAProxy", "bulk_1.gbit_per_s"),
            (
                "shunt (S2) L4 bulk 4 streams ≥ HAProxy",
                "bulk_4.gbit_per_s",
            ),
        ] {
            let r = self.ratio(key, Ebpf, Haproxy);
            targets.push(Target {
                what,
                measured: r.map(|r| format!("S2/S4 = {r:.2}")),
                met: r.map(|r| r >= 1.0),
            });
        }
        for scenario in [Ebpf, EbpfSockmap] {
            let r = self.ratio("l7_max.rps", scenario, Haproxy);
            targets.push(Target {
                what: if scenario == Ebpf {
                    "shunt (S2) L7 max rps ≥ HAProxy `mode http`"
                } else {
                    "shunt (S3) L7 max rps ≥ HAProxy `mode http`"
                },
                measured: r.map(|r| format!("{}/S4 = {r:.2}", scenario.id())),
                met: r.map(|r| r >= 1.0),
            });
        }
        for scenario in [Ebpf, EbpfSockmap] {
            let r = self.ratio("l7_max.proxy_cpu_s_per_10k", scenario, Haproxy);
            targets.push(Target {
                what: if scenario == Ebpf {
                    "shunt (S2) L7 CPU-seconds per 10k requests ≤ HAProxy's"
                } else {
                    "shunt (S3) L7 CPU-seconds per 10k requests ≤ HAProxy's"
                },
                measured: r.map(|r| format!("{}/S4 = {r:.2}", scenario.id())),
                met: r.map(|r| r <= 1.0),
            });
        }
        let most_idle = self.plan.idle_connections.iter().max();
        let idle_key = most_idle.map(|n| format!("idle_{n}.rss_mib_per_1k"));
        let idle = idle_key.as_deref().and_then(|key| self.median(key, Ebpf));
        targets.push(Target {
            what: "idle cost ≤ 4 MiB RSS per 1k proxied connections (S2)",
            measured: idle.map(|mib| format!("{mib:.2} MiB per 1k")),
            met: idle.map(|mib| mib <= 4.0),
        });
        // Across nodes: S6 against the same two pods with nothing between them (S5).
        for (what, key, limit, at_most) in [
            ("S6 L4 RR p50 ≤ 1.5 × S5's", "rr_1b.p50_us", 1.5, true),
            ("S6 L4 CRR p50 ≤ 3.0 × S5's", "crr.p50_us", 3.0, true),
            (
                "S6 L4 bulk 1 stream ≥ 0.3 × S5's",
                "bulk_1.gbit_per_s",
                0.3,
                false,
            ),
        ] {
            let r = self.ratio(key, CrossMtls, CrossDirect);
            targets.push(Target {
                what,
                measured: r.map(|r| format!("S6/S5 = {r:.2}")),
                met: r.map(|r| if at_most { r <= limit } else { r >= limit }),
            });
        }
        let l7 = self.ratio("l7_max.rps", CrossMtls, Ebpf);
        targets.push(Target {
            what: "S6 L7 max rps ≥ 0.8 × S2's",
            measured: l7.map(|r| format!("S6/S2 = {r:.2}")),
            met: l7.map(|r| r >= 0.8),
        });
        // The target is per node proxy: each holds one end of every connection and the
        // tunnel's, so each must stay within it.
        let per_proxy = |prefix: &str| {
            let key = most_idle.map(|n| format!("idle_{n}.{prefix}rss_mib_per_1k"))?;
            self.median(&key, CrossMtls)
        };
        let (src, dst) = (per_proxy("src_"), per_proxy("dst_"));
        targets.push(Target {
            what: "idle cost ≤ 8 MiB RSS per 1k HBONE connections, each node proxy (S6)",
            measured: src.zip(dst).map(|(src, dst)| {
                format!("client node's proxy {src:.2}, server node's {dst:.2} MiB per 1k")
            }),
            met: src.zip(dst).map(|(src, dst)| src <= 8.0 && dst <= 8.0),
        });
        // Security on (the authorization issue's bench): S7 is S2 with the policies.
        let secure = self.ratio("l7_max.rps", EbpfAuthz, Ebpf);
        targets.push(Target {
            what: S7_TARGET,
            measured: secure.map(|r| format!("S7/S2 = {r:.2}")),
            met: secure.map(|r| r >= 0.9),
        });
        targets
    }

    /// What security costs in proxy CPU: S7's L7 CPU per 10k requests next to S2's.
    fn security_cost(&self) -> String {
        let key = "l7_max.proxy_cpu_s_per_10k";
        let (s7, s2) = (
            self.median(key, Scenario::EbpfAuthz),
            self.median(key, Scenario::Ebpf),
        );
        let cell = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), number);
        let ratio = self
            .ratio(key, Scenario::EbpfAuthz, Scenario::Ebpf)
            .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        format!(
            "{S7_COST}: S7 {} CPU-s, S2 {} CPU-s (S7/S2 = {ratio})",
            cell(s7),
            cell(s2)
        )
    }

    fn gateway_ran(&self) -> bool {
        self.records.iter().any(|r| r.scenario == Scenario::Gateway)
    }

    /// S8's shunt median over its HAProxy median for one row.
    fn gateway_ratio(&self, row: &GatewayRow) -> Option<f64> {
        let shunt = self.median(&row.key("shunt"), Scenario::Gateway)?;
        let haproxy = self.median(&row.key("haproxy"), Scenario::Gateway)?;
        (haproxy != 0.0).then(|| shunt / haproxy)
    }

    fn gateway_target(&self, workload: &str, metric: &str) -> Option<f64> {
        gateway_rows()
            .iter()
            .find(|r| r.workload == workload && r.metric == metric)
            .and_then(|row| self.gateway_ratio(row))
    }

    /// S8's table and targets, when S8 ran.
    fn gateway_markdown(&self) -> Option<String> {
        if !self.gateway_ran() {
            return None;
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{S8_HEADING} (same certificate and key, `mode http`, keep-alive to a server \
             running the same program), each over {L7_MAX_CONNECTIONS} connections in a \
             closed loop from the outside pod (`shunt-httppod max`, rustls); proxy CPU is the \
             node proxy's or HAProxy's, per 10k requests of that run:\n"
        );
        let _ = writeln!(
            out,
            "| S8 workload | unit | shunt gateway | HAProxy | shunt/HAProxy |\n|---|---|---|---|---|"
        );
        for row in gateway_rows() {
            let cell = |side: &str| {
                self.stats(&row.key(side), Scenario::Gateway).map_or_else(
                    || "n/a".to_owned(),
                    |s| format!("{} ({}–{})", number(s.median), number(s.min), number(s.max)),
                )
            };
            let ratio = self
                .gateway_ratio(&row)
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {ratio} |",
                row.label,
                row.unit,
                cell("shunt"),
                cell("haproxy")
            );
        }
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let shown = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        let rps = self.gateway_target("gw_https", "rps");
        let cpu = self.gateway_target("gw_https", "proxy_cpu_s_per_10k");
        let handshakes = self.gateway_target("gw_https_new", "rps");
        let _ = writeln!(
            out,
            "\nS8 targets (gateway issue, \"Bench\"), on this run's medians:"
        );
        let _ = writeln!(
            out,
            "- {S8_RPS_TARGET}: {} (shunt/HAProxy = {})",
            verdict(rps.map(|r| r >= 1.0)),
            shown(rps)
        );
        let _ = writeln!(
            out,
            "- {S8_CPU_TARGET}: {} (shunt/HAProxy = {})",
            verdict(cpu.map(|r| r <= 1.0)),
            shown(cpu)
        );
        let _ = writeln!(
            out,
            "- {S8_HANDSHAKES}: shunt/HAProxy = {} (reported, no target)",
            shown(handshakes)
        );
        Some(out)
    }

    fn gateway_json(&self) -> Value {
        if !self.gateway_ran() {
            return Value::Null;
        }
        let stats = |key: &str| {
            self.stats(key, Scenario::Gateway).map_or(
                Value::Null,
                |st| json!({"median": st.median, "min": st.min, "max": st.max, "runs": st.runs}),
            )
        };
        let rows: Vec<Value> = gateway_rows()
            .iter()
            .map(|row| {
                json!({
                    "key": format!("{}.{}", row.workload, row.metric),
                    "label": row.label,
                    "unit": row.unit,
                    "shunt": stats(&row.key("shunt")),
                    "haproxy": stats(&row.key("haproxy")),
                    "shunt/haproxy": self.gateway_ratio(row),
                })
            })
            .collect();
        json!({"rows": rows})
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let h = &self.header;
        let _ = writeln!(
            out,
            "`cargo xtask bench` ({} plan: {} interleaved repetitions), {}\n",
            self.plan.name, self.plan.repetitions, h.date
        );
        let _ = writeln!(out, "- kernel {}, CPU {}", h.kernel, h.cpu_model);
        let _ = writeln!(out, "- CPU placement: {}", h.placement);
        let _ = writeln!(out, "- HAProxy: {}", h.haproxy_version);
        for scenario in Scenario::ALL {
            let status = self
                .unavailable_reason(scenario)
                .map_or_else(String::new, |why| format!(" — **{why}**"));
            let _ = writeln!(
                out,
                "- {} {}: {}{status}",
                scenario.id(),
                scenario.title(),
                scenario.description()
            );
        }
        let _ = writeln!(
            out,
            "\nCells: median (min–max) of the accepted runs; ratios are medians divided by \
             S0's or S1's, S6's by S5's (the same two pods, nothing between them) or S2's \
             (same-node eBPF), and S7's by S2's (the same path, security off) (for latency and \
             cost lower is better, for Gb/s and conn/s higher is). S6's proxy CPU and RSS rows are both node proxies' sum; the rows \
             under them split it per node proxy.\n"
        );
        let ratio_columns = ratio_columns();
        let mut header = String::from("| workload | unit |");
        for scenario in Scenario::MAIN {
            let _ = write!(header, " {} {} |", scenario.id(), scenario.title());
        }
        for (of, against) in &ratio_columns {
            let _ = write!(header, " {}/{} |", of.id(), against.id());
        }
        let columns = 2 + Scenario::MAIN.len() + ratio_columns.len();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "|{}", "---|".repeat(columns));
        for row in rows(&self.plan) {
            let _ = write!(out, "| {} | {} |", row.label, row.unit);
            for scenario in Scenario::MAIN {
                let cell = self.stats(&row.key, scenario).map_or_else(
                    || "n/a".to_owned(),
                    |s| format!("{} ({}–{})", number(s.median), number(s.min), number(s.max)),
                );
                let _ = write!(out, " {cell} |");
            }
            for (of, against) in &ratio_columns {
                let cell = self
                    .ratio(&row.key, *of, *against)
                    .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "\nL7: HTTP/1.1 keep-alive, a small GET answered with a 1 KiB body (in S7 with a \
             bearer token); S1–S3, S6 and S7 address a Service port named `http`, so shunt \
             routes every request at L7 (S6: on the client's node, then through the HBONE \
             tunnel). Max rps over \
             {L7_MAX_CONNECTIONS} connections (closed loop; the L7 costs come from this run); \
             the fixed rates run open loop over {L7_RATE_CONNECTIONS} connections with latency \
             corrected for coordinated omission, the second at half of the repetition's lowest \
             max rps among the same-node scenarios (S0–S4; S7 runs at that rate but does not \
             set it), or among the cross-node ones (S5, S6).\n\n{L7_VS_HAPROXY}:\n"
        );
        let vs = [Scenario::Iptables, Scenario::Ebpf, Scenario::EbpfSockmap];
        let mut header = String::from("| L7 workload | unit |");
        for of in vs {
            let _ = write!(header, " {}/S4 |", of.id());
        }
        let _ = writeln!(out, "{header}\n|{}", "---|".repeat(2 + vs.len()));
        for row in rows(&self.plan).iter().filter(|r| r.is_l7()) {
            let _ = write!(out, "| {} | {} |", row.label, row.unit);
            for of in vs {
                let cell = self
                    .ratio(&row.key, of, Scenario::Haproxy)
                    .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "\nTargets (issue section 3), on this run's medians:");
        for target in self.targets() {
            let verdict = match target.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let measured = target.measured.unwrap_or_else(|| "n/a".to_owned());
            let _ = writeln!(out, "- {}: {verdict} ({measured})", target.what);
        }
        let _ = writeln!(out, "\n{}", self.security_cost());
        if let Some(gateway) = self.gateway_markdown() {
            out.push_str(&gateway);
        }
        let rejected: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.rejected.is_some())
            .collect();
        let _ = writeln!(
            out,
            "\nRejected runs (not in the medians): {}",
            if rejected.is_empty() { "none" } else { "" }
        );
        for record in rejected {
            let _ = writeln!(
                out,
                "- {} {} repetition {}: {}",
                record.scenario.id(),
                record.workload,
                record.repetition + 1,
                record.rejected.as_deref().unwrap_or_default()
            );
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let h = &self.header;
        let rows: Vec<Value> = rows(&self.plan)
            .iter()
            .map(|row| {
                let stats: serde_json::Map<String, Value> = Scenario::MAIN
                    .iter()
                    .map(|s| {
                        let value = self.stats(&row.key, *s).map_or(Value::Null, |st| {
                            json!({
                                "median": st.median, "min": st.min, "max": st.max,
                                "runs": st.runs,
                            })
                        });
                        (s.id().to_owned(), value)
                    })
                    .collect();
                let mut pairs = ratio_columns();
                if row.is_l7() {
                    pairs.extend(
                        [Scenario::Iptables, Scenario::Ebpf, Scenario::EbpfSockmap]
                            .map(|of| (of, Scenario::Haproxy)),
                    );
                }
                let ratios: serde_json::Map<String, Value> = pairs
                    .iter()
                    .map(|(of, against)| {
                        let ratio = self.ratio(&row.key, *of, *against);
                        (format!("{}/{}", of.id(), against.id()), json!(ratio))
                    })
                    .collect();
                json!({"key": row.key, "label": row.label, "unit": row.unit,
                       "needs_forwarder": row.scope != Scope::All,
                       "scope": row.scope.name(), "stats": stats, "ratios": ratios})
            })
            .collect();
        json!({
            "plan": {
                "name": self.plan.name,
                "repetitions": self.plan.repetitions,
                "rr_ms": self.plan.rr.as_millis() as u64,
                "crr_ms": self.plan.crr.as_millis() as u64,
                "bulk_bytes_per_stream": self.plan.bulk_bytes_per_stream,
                "idle_connections": self.plan.idle_connections,
                "l7_ms": self.plan.l7.as_millis() as u64,
                "l7_warmup_ms": self.plan.l7_warmup.as_millis() as u64,
                "l7_fixed_rps": self.plan.l7_fixed_rps,
                "l7_max_connections": L7_MAX_CONNECTIONS,
                "l7_rate_connections": L7_RATE_CONNECTIONS,
            },
            "date": h.date,
            "kernel": h.kernel,
            "cpu_model": h.cpu_model,
            "cpu_placement": h.placement,
            "haproxy_version": h.haproxy_version,
            "scenarios": Scenario::ALL.iter().map(|s| json!({
                "id": s.id(), "title": s.title(), "description": s.description(),
                "available": self.unavailable_reason(*s).is_none(),
                "reason": self.unavailable_reason(*s),
            })).collect::<Vec<_>>(),
            "rows": rows,
            "gateway": self.gateway_json(),
            "records": self.records.iter().map(Record::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Every same-node scenario against S0, every one after S1 against S1; S6 against S5 (the
/// cross-node baseline) and against S2 (shunt on one node); S7 against S2 only (the same
/// path with security off).
fn ratio_columns() -> Vec<(Scenario, Scenario)> {
    use Scenario::{
        CrossDirect, CrossMtls, Direct, Ebpf, EbpfAuthz, EbpfSockmap, Haproxy, Iptables,
    };
    let same_node = [Iptables, Ebpf, EbpfSockmap, Haproxy];
    let mut columns: Vec<(Scenario, Scenario)> = same_node.iter().map(|s| (*s, Direct)).collect();
    columns.extend(same_node[1..].iter().map(|s| (*s, Iptables)));
    columns.extend([
        (CrossMtls, CrossDirect),
        (CrossMtls, Ebpf),
        (EbpfAuthz, Ebpf),
    ]);
    columns
}

/// Three significant digits or so: enough for medians that vary by a few percent.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// The smoke test's check of a finished run: the JSON has every scenario and row, every
/// available scenario has an accepted value in every row that applies to it (a fixed-rate L7
/// run may instead be rejected for missing its rate: that is timing), an unavailable one says
/// why, the main table has one well-formed line per row and the L7-against-HAProxy table one
/// per L7 row. Returns what is wrong (empty when nothing is). Timings are never judged.
pub fn check_structure(plan: &Plan, json: &Value, markdown: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let scenarios = json["scenarios"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = scenarios.iter().filter_map(|s| s["id"].as_str()).collect();
    let want_ids: Vec<&str> = Scenario::ALL.iter().map(|s| s.id()).collect();
    if ids != want_ids {
        problems.push(format!("scenarios are {ids:?}, not {want_ids:?}"));
    }
    let mut available = BTreeMap::new();
    for scenario in &scenarios {
        let id = scenario["id"].as_str().unwrap_or("?");
        let is_available = scenario["available"].as_bool() == Some(true);
        if !is_available && scenario["reason"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{id} is unavailable without a reason"));
        }
        available.insert(id.to_owned(), is_available);
    }
    let records = json["records"].as_array().cloned().unwrap_or_default();
    let missed_rate = |id: &str, workload: &str| {
        records.iter().any(|r| {
            r["scenario"] == id
                && r["workload"] == workload
                && r["rejected"]
                    .as_str()
                    .is_some_and(|why| why.starts_with(MISSED_RATE))
        })
    };
    let json_rows = json["rows"].as_array().cloned().unwrap_or_default();
    for row in rows(plan) {
        let Some(found) = json_rows.iter().find(|r| r["key"] == row.key.as_str()) else {
            problems.push(format!("the JSON has no row {}", row.key));
            continue;
        };
        for (id, is_available) in &available {
            let scenario = Scenario::ALL.into_iter().find(|s| s.id() == id);
            let applies = *is_available && scenario.is_some_and(|s| row.applies_to(s));
            let runs = found["stats"][id.as_str()]["runs"].as_u64().unwrap_or(0);
            let excused = row.is_fixed_rate() && missed_rate(id, row.workload());
            if applies && runs == 0 && !excused {
                problems.push(format!("{id} has no accepted run for {}", row.key));
            }
        }
    }
    let tables = tables(markdown);
    let main_columns = 2 + Scenario::MAIN.len() + ratio_columns().len();
    let l7_columns = 2 + 3;
    let l7_rows: Vec<Row> = rows(plan).into_iter().filter(Row::is_l7).collect();
    if l7_rows.is_empty() {
        problems.push("the plan has no L7 rows".to_owned());
    }
    let want = [
        ("the main table", rows(plan), main_columns),
        ("the L7-against-HAProxy table", l7_rows, l7_columns),
    ];
    let gateway_ran = available.get(Scenario::Gateway.id()) == Some(&true);
    if tables.len() != want.len() + usize::from(gateway_ran) {
        problems.push(format!(
            "the output has {} tables, not {}",
            tables.len(),
            want.len() + usize::from(gateway_ran)
        ));
    }
    if gateway_ran {
        problems.extend(check_gateway_structure(
            json,
            markdown,
            tables.get(want.len()),
        ));
    }
    for ((name, rows, columns), table) in want.iter().zip(&tables) {
        for line in table {
            let cells = line.matches('|').count().saturating_sub(1);
            if cells != *columns {
                problems.push(format!(
                    "{name}: a line has {cells} cells, not {columns}: {line}"
                ));
            }
        }
        // Header, separator, one line per row.
        if table.len() != rows.len() + 2 {
            problems.push(format!(
                "{name} has {} lines, not {}",
                table.len(),
                rows.len() + 2
            ));
        }
        for row in rows {
            if !table
                .iter()
                .any(|l| l.starts_with(&format!("| {} |", row.label)))
            {
                problems.push(format!("{name} has no line for {}", row.label));
            }
        }
    }
    if !markdown.contains(L7_VS_HAPROXY) {
        problems.push("the output has no L7-against-HAProxy heading".to_owned());
    }
    for line in [S7_TARGET, S7_COST] {
        if !markdown.contains(&format!("{line}: ")) {
            problems.push(format!("the output has no line {line:?}"));
        }
    }
    problems
}

/// When S8 ran: every S8 row has accepted runs on both sides in the JSON, and its table one
/// well-formed line per row; the targets are printed.
fn check_gateway_structure(json: &Value, markdown: &str, table: Option<&Vec<&str>>) -> Vec<String> {
    let mut problems = Vec::new();
    let json_rows = json["gateway"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rows = gateway_rows();
    for row in &rows {
        let key = format!("{}.{}", row.workload, row.metric);
        let found = json_rows.iter().find(|r| r["key"] == key.as_str());
        for side in ["shunt", "haproxy"] {
            let runs = found.map_or(0, |r| r[side]["runs"].as_u64().unwrap_or(0));
            if runs == 0 {
                problems.push(format!("S8 has no accepted {side} run for {key}"));
            }
        }
    }
    match table {
        None => problems.push("the output has no S8 table".to_owned()),
        Some(table) => {
            if table.len() != rows.len() + 2 {
                problems.push(format!(
                    "the S8 table has {} lines, not {}",
                    table.len(),
                    rows.len() + 2
                ));
            }
            for line in table {
                let cells = line.matches('|').count().saturating_sub(1);
                if cells != 5 {
                    problems.push(format!(
                        "the S8 table: a line has {cells} cells, not 5: {line}"
                    ));
                }
            }
        }
    }
    for line in [S8_RPS_TARGET, S8_CPU_TARGET, S8_HANDSHAKES] {
        if !markdown.contains(&format!("{line}: ")) {
            problems.push(format!("the output has no line {line:?}"));
        }
    }
    problems
}

/// The markdown's tables: runs of consecutive lines that start with `|`.
fn tables(markdown: &str) -> Vec<Vec<&str>> {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut in_table = false;
    for line in markdown.lines() {
        let is_row = line.starts_with('|');
        if is_row && !in_table {
            tables.push(Vec::new());
        }
        if let (true, Some(table)) = (is_row, tables.last_mut()) {
            table.push(line);
        }
        in_table = is_row;
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::SMOKE;

    #[test]
    fn medians_of_odd_and_even_counts() {
        let cases = [
            (vec![3.0, 1.0, 2.0], Some((2.0, 1.0, 3.0))),
            (vec![4.0, 1.0, 2.0, 3.0], Some((2.5, 1.0, 4.0))),
            (vec![], None),
        ];
        for (values, want) in cases {
            let got = Stats::of(values.clone()).map(|s| (s.median, s.min, s.max));
            assert_eq!(got, want, "{values:?}");
        }
    }

    fn report(records: Vec<Record>) -> Report {
        Report {
            plan: SMOKE,
            header: Header {
                date: "d".into(),
                kernel: "k".into(),
                cpu_model: "c".into(),
                placement: "p".into(),
                haproxy_version: "h".into(),
            },
            unavailable: vec![(Scenario::Iptables, "not available: test".into())],
            records,
        }
    }

    #[test]
    fn a_complete_run_passes_the_structure_check_and_a_missing_row_fails_it() {
        let mut records = Vec::new();
        for scenario in Scenario::ALL {
            if scenario == Scenario::Iptables {
                continue;
            }
            let mut values: Vec<(String, f64)> = rows(&SMOKE)
                .iter()
                .filter(|row| row.applies_to(scenario))
                .map(|row| (row.key.clone(), 1.0))
                .collect();
            if scenario == Scenario::Gateway {
                for row in gateway_rows() {
                    values.push((row.key("shunt"), 2.0));
                    values.push((row.key("haproxy"), 1.0));
                }
            }
            records.push(Record {
                scenario,
                repetition: 0,
                workload: "all".into(),
                values,
                rejected: None,
                raw: Value::Null,
            });
        }
        let complete = report(records.clone());
        let problems = check_structure(&SMOKE, &complete.to_json(), &complete.markdown());
        assert!(problems.is_empty(), "{problems:?}");

        // A fixed-rate L7 run rejected for missing its rate is timing, not structure.
        let mut missed = records.clone();
        for (scenario, workload) in [(Scenario::Ebpf, "l7_fixed"), (Scenario::Haproxy, "l7_half")] {
            for record in &mut missed {
                if record.scenario == scenario {
                    record
                        .values
                        .retain(|(key, _)| !key.starts_with(&format!("{workload}.")));
                }
            }
            missed.push(Record {
                scenario,
                repetition: 0,
                workload: workload.into(),
                values: Vec::new(),
                rejected: Some(format!("{MISSED_RATE}: 10 of 60 due requests completed")),
                raw: Value::Null,
            });
        }
        let slow = report(missed);
        let problems = check_structure(&SMOKE, &slow.to_json(), &slow.markdown());
        assert!(problems.is_empty(), "{problems:?}");

        records[1].rejected = Some("errors".into());
        let partial = report(records);
        let problems = check_structure(&SMOKE, &partial.to_json(), &partial.markdown());
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("S2 has no accepted run")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p == "S2 has no accepted run for l7_max.rps"),
            "{problems:?}"
        );
    }

    fn one_value(scenario: Scenario, key: &str, value: f64) -> Record {
        Record {
            scenario,
            repetition: 0,
            workload: key.split('.').next().unwrap_or_default().into(),
            values: vec![(key.to_owned(), value)],
            rejected: None,
            raw: Value::Null,
        }
    }

    /// The verdict the markdown gives the target `what`.
    fn verdict(markdown: &str, what: &str) -> String {
        let prefix = format!("- {what}: ");
        let line = markdown
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no target line {what:?} in {markdown}"));
        line.split(" (").next().unwrap_or_default().to_owned()
    }

    #[test]
    fn cross_node_targets_compare_s6_with_s5_and_s2() {
        use Scenario::{CrossDirect, CrossMtls, Ebpf};
        let rr = "S6 L4 RR p50 ≤ 1.5 × S5's";
        let crr = "S6 L4 CRR p50 ≤ 3.0 × S5's";
        let bulk = "S6 L4 bulk 1 stream ≥ 0.3 × S5's";
        let l7 = "S6 L7 max rps ≥ 0.8 × S2's";
        let cases = [
            (rr, CrossDirect, "rr_1b.p50_us", 100.0, 150.0, "met"),
            (rr, CrossDirect, "rr_1b.p50_us", 100.0, 151.0, "**not met**"),
            (crr, CrossDirect, "crr.p50_us", 100.0, 300.0, "met"),
            (crr, CrossDirect, "crr.p50_us", 100.0, 310.0, "**not met**"),
            (bulk, CrossDirect, "bulk_1.gbit_per_s", 10.0, 3.0, "met"),
            (
                bulk,
                CrossDirect,
                "bulk_1.gbit_per_s",
                10.0,
                2.9,
                "**not met**",
            ),
            (l7, Ebpf, "l7_max.rps", 1000.0, 800.0, "met"),
            (l7, Ebpf, "l7_max.rps", 1000.0, 790.0, "**not met**"),
        ];
        for (what, base, key, base_value, s6, want) in cases {
            let records = vec![
                one_value(base, key, base_value),
                one_value(CrossMtls, key, s6),
            ];
            let markdown = report(records).markdown();
            assert_eq!(
                verdict(&markdown, what),
                want,
                "{what}: {base_value} vs {s6}"
            );
            // Without S6's value the target is not measured.
            let markdown = report(vec![one_value(base, key, base_value)]).markdown();
            assert_eq!(verdict(&markdown, what), "not measured", "{what}");
        }
    }

    #[test]
    fn s7_is_held_to_0_9_of_s2s_max_rps_and_its_cpu_is_shown_next_to_s2s() {
        use Scenario::{Ebpf, EbpfAuthz};
        let cases = [(900.0, "met"), (899.0, "**not met**")];
        for (s7, want) in cases {
            let records = vec![
                one_value(Ebpf, "l7_max.rps", 1000.0),
                one_value(EbpfAuthz, "l7_max.rps", s7),
            ];
            let markdown = report(records).markdown();
            assert_eq!(verdict(&markdown, S7_TARGET), want, "{s7}");
        }
        let markdown = report(vec![one_value(Ebpf, "l7_max.rps", 1000.0)]).markdown();
        assert_eq!(verdict(&markdown, S7_TARGET), "not measured");

        let key = "l7_max.proxy_cpu_s_per_10k";
        let records = vec![one_value(Ebpf, key, 0.5), one_value(EbpfAuthz, key, 0.6)];
        let markdown = report(records).markdown();
        assert!(
            markdown.contains(&format!(
                "{S7_COST}: S7 0.600 CPU-s, S2 0.500 CPU-s (S7/S2 = 1.20)"
            )),
            "{markdown}"
        );
        assert!(ratio_columns().contains(&(EbpfAuthz, Ebpf)));
        assert!(
            ratio_columns()
                .iter()
                .all(|(of, against)| *of != EbpfAuthz || *against == Ebpf)
        );
    }

    #[test]
    fn the_cross_node_idle_target_holds_for_each_node_proxy() {
        let what = "idle cost ≤ 8 MiB RSS per 1k HBONE connections, each node proxy (S6)";
        let n = SMOKE.idle_connections.iter().max().expect("an idle count");
        let (src, dst) = (
            format!("idle_{n}.src_rss_mib_per_1k"),
            format!("idle_{n}.dst_rss_mib_per_1k"),
        );
        let cases = [
            (Some(7.9), Some(8.0), "met"),
            (Some(8.1), Some(2.0), "**not met**"),
            (Some(2.0), Some(8.5), "**not met**"),
            (Some(2.0), None, "not measured"),
        ];
        for (src_mib, dst_mib, want) in cases {
            let records = [(&src, src_mib), (&dst, dst_mib)]
                .into_iter()
                .filter_map(|(key, mib)| Some(one_value(Scenario::CrossMtls, key, mib?)))
                .collect();
            let markdown = report(records).markdown();
            assert_eq!(verdict(&markdown, what), want, "{src_mib:?} {dst_mib:?}");
        }
    }

    #[test]
    fn s6_is_divided_by_s5_and_s2_and_only_s6_has_node_proxy_rows() {
        let columns = ratio_columns();
        for pair in [
            (Scenario::CrossMtls, Scenario::CrossDirect),
            (Scenario::CrossMtls, Scenario::Ebpf),
        ] {
            assert!(columns.contains(&pair), "{columns:?}");
        }
        // Cross-node scenarios are never divided by same-node baselines' S0 or S1.
        assert!(
            columns.iter().all(|(of, against)| !(of.is_cross_node()
                && matches!(against, Scenario::Direct | Scenario::Iptables))),
            "{columns:?}"
        );
        let node_proxy: Vec<Row> = rows(&SMOKE)
            .into_iter()
            .filter(|r| r.scope == Scope::NodeProxy)
            .collect();
        assert!(!node_proxy.is_empty());
        for row in &node_proxy {
            for scenario in Scenario::ALL {
                assert_eq!(
                    row.applies_to(scenario),
                    scenario == Scenario::CrossMtls,
                    "{} in {}",
                    row.key,
                    scenario.id()
                );
            }
        }
    }

    #[test]
    fn every_l7_row_is_in_the_table_against_haproxy() {
        let complete = report(Vec::new());
        let markdown = complete.markdown();
        let tables = tables(&markdown);
        assert_eq!(tables.len(), 2, "{markdown}");
        let l7_labels: Vec<String> = rows(&SMOKE)
            .into_iter()
            .filter(Row::is_l7)
            .map(|r| r.label)
            .collect();
        assert_eq!(l7_labels.len(), 11);
        for label in &l7_labels {
            assert!(
                tables[1]
                    .iter()
                    .any(|l| l.starts_with(&format!("| {label} |"))),
                "{label}: {markdown}"
            );
        }
        assert!(
            l7_labels.contains(&"L7 at 200 rps p99".to_owned()),
            "{l7_labels:?}"
        );
    }

    #[test]
    fn s8_has_its_own_table_of_shunt_against_haproxy_and_its_targets() {
        let record = |workload: &str, metric: &str, value: f64| Record {
            scenario: Scenario::Gateway,
            repetition: 0,
            workload: workload.into(),
            values: vec![(format!("{workload}.{metric}"), value)],
            rejected: None,
            raw: Value::Null,
        };
        let records = vec![
            record("gw_https_shunt", "rps", 3000.0),
            record("gw_https_haproxy", "rps", 2000.0),
            record("gw_https_shunt", "proxy_cpu_s_per_10k", 0.4),
            record("gw_https_haproxy", "proxy_cpu_s_per_10k", 0.2),
            record("gw_https_new_shunt", "rps", 500.0),
            record("gw_https_new_haproxy", "rps", 1000.0),
        ];
        let markdown = report(records).markdown();
        let cases = [
            (S8_RPS_TARGET, "met", "(shunt/HAProxy = 1.50)"),
            (S8_CPU_TARGET, "**not met**", "(shunt/HAProxy = 2.00)"),
            (
                S8_HANDSHAKES,
                "shunt/HAProxy = 0.50",
                "(reported, no target)",
            ),
        ];
        for (line, want, ratio) in cases {
            assert_eq!(verdict(&markdown, line), want, "{markdown}");
            assert!(
                markdown.contains(&format!("- {line}: {want} {ratio}")),
                "{markdown}"
            );
        }
        let tables = tables(&markdown);
        assert_eq!(tables.len(), 3, "{markdown}");
        assert!(
            tables[2].contains(&"| HTTPS keep-alive: max rps | req/s | 3000 (3000–3000) | 2000 (2000–2000) | 1.50 |"),
            "{markdown}"
        );
        // A run without S8 prints no S8 table, and S8's records never enter the main table.
        let without = report(Vec::new()).markdown();
        assert_eq!(super::tables(&without).len(), 2, "{without}");
        assert!(!without.contains(S8_HEADING));
        assert!(!tables[0][0].contains("S8"), "{}", tables[0][0]);
    }
}
