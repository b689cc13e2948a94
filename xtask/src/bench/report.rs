//! From records to the result: medians and ranges per row and scenario, ratios against S0
//! and S1, the section-3 targets, the markdown table, the JSON file, and the structure check
//! the smoke test runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::measure::Record;
use super::plan::Plan;
use super::scenario::Scenario;

pub const L7_NOTE: &str = "L7: needs the L7 traffic management issue";

/// One row of the table: a metric of a workload.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    /// Proxy-only rows (proxy CPU, proxy RSS) have no value in S0.
    pub needs_forwarder: bool,
}

pub fn rows(plan: &Plan) -> Vec<Row> {
    let row = |key: &str, label: String, unit, needs_forwarder| Row {
        key: key.to_owned(),
        label,
        unit,
        needs_forwarder,
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
                false,
            ));
        }
    }
    rows.push(row("crr.p50_us", "L4 CRR p50".into(), "µs", false));
    rows.push(row("crr.p99_us", "L4 CRR p99".into(), "µs", false));
    rows.push(row("crr.conn_per_s", "L4 CRR rate".into(), "conn/s", false));
    let size = plan.bulk_size_label();
    rows.push(row(
        "bulk_1.gbit_per_s",
        format!("L4 bulk 1 stream × {size}"),
        "Gb/s",
        false,
    ));
    rows.push(row(
        "bulk_4.gbit_per_s",
        format!("L4 bulk 4 streams × {size}"),
        "Gb/s",
        false,
    ));
    rows.push(row(
        "rr_1b.proxy_cpu_s_per_10k",
        "proxy CPU / 10k req (RR 1 B)".into(),
        "CPU-s",
        true,
    ));
    rows.push(row(
        "rr_1b.machine_cpu_s_per_10k",
        "machine CPU / 10k req (RR 1 B, all CPUs)".into(),
        "CPU-s",
        false,
    ));
    rows.push(row(
        "rr_1b.softirq_s_per_10k",
        "… of which softirq".into(),
        "CPU-s",
        false,
    ));
    for &count in plan.idle_connections {
        rows.push(row(
            &format!("idle_{count}.rss_mib_per_1k"),
            format!("proxy RSS / 1k idle conns, at {count}"),
            "MiB",
            true,
        ));
    }
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
        use Scenario::{Direct, Ebpf, EbpfSockmap, Haproxy, Iptables};
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
        let idle_key = self
            .plan
            .idle_connections
            .iter()
            .max()
            .map(|n| format!("idle_{n}.rss_mib_per_1k"));
        let idle = idle_key.as_deref().and_then(|key| self.median(key, Ebpf));
        targets.push(Target {
            what: "idle cost ≤ 4 MiB RSS per 1k proxied connections (S2)",
            measured: idle.map(|mib| format!("{mib:.2} MiB per 1k")),
            met: idle.map(|mib| mib <= 4.0),
        });
        targets
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
             S0's or S1's (for latency and cost lower is better, for Gb/s and conn/s higher \
             is).\n"
        );
        let ratio_columns = ratio_columns();
        let mut header = String::from("| workload | unit |");
        for scenario in Scenario::ALL {
            let _ = write!(header, " {} {} |", scenario.id(), scenario.title());
        }
        for (of, against) in &ratio_columns {
            let _ = write!(header, " {}/{} |", of.id(), against.id());
        }
        let columns = 2 + Scenario::ALL.len() + ratio_columns.len();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "|{}", "---|".repeat(columns));
        for row in rows(&self.plan) {
            let _ = write!(out, "| {} | {} |", row.label, row.unit);
            for scenario in Scenario::ALL {
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
            "\n{L7_NOTE}.\n\nTargets (issue section 3), on this run's medians:"
        );
        for target in self.targets() {
            let verdict = match target.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let measured = target.measured.unwrap_or_else(|| "n/a".to_owned());
            let _ = writeln!(out, "- {}: {verdict} ({measured})", target.what);
        }
        let _ = writeln!(
            out,
            "- L7 max rps and CPU per 10k requests against HAProxy `mode http`: not measured \
             ({L7_NOTE})"
        );
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
                let stats: serde_json::Map<String, Value> = Scenario::ALL
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
                json!({"key": row.key, "label": row.label, "unit": row.unit,
                       "needs_forwarder": row.needs_forwarder, "stats": stats})
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
            "records": self.records.iter().map(Record::to_json).collect::<Vec<_>>(),
            "l7": L7_NOTE,
        })
    }
}

/// Every scenario against S0, and every scenario after S1 against S1.
fn ratio_columns() -> Vec<(Scenario, Scenario)> {
    let mut columns: Vec<(Scenario, Scenario)> = Scenario::ALL[1..]
        .iter()
        .map(|s| (*s, Scenario::Direct))
        .collect();
    columns.extend(Scenario::ALL[2..].iter().map(|s| (*s, Scenario::Iptables)));
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
/// available scenario has an accepted value in every row that applies to it, an unavailable
/// one says why, and the markdown table has one well-formed line per row. Returns what is
/// wrong (empty when nothing is). Timings are never judged.
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
    let json_rows = json["rows"].as_array().cloned().unwrap_or_default();
    for row in rows(plan) {
        let Some(found) = json_rows.iter().find(|r| r["key"] == row.key.as_str()) else {
            problems.push(format!("the JSON has no row {}", row.key));
            continue;
        };
        for (id, is_available) in &available {
            let applies = *is_available && !(row.needs_forwarder && id == "S0");
            if applies && found["stats"][id.as_str()]["runs"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!("{id} has no accepted run for {}", row.key));
            }
        }
    }
    let table: Vec<&str> = markdown.lines().filter(|l| l.starts_with('|')).collect();
    let columns = 2 + Scenario::ALL.len() + ratio_columns().len();
    for line in &table {
        let cells = line.matches('|').count().saturating_sub(1);
        if cells != columns {
            problems.push(format!(
                "table line has {cells} cells, not {columns}: {line}"
            ));
        }
    }
    // Header, separator, one line per row.
    if table.len() != rows(plan).len() + 2 {
        problems.push(format!(
            "the table has {} lines, not {}",
            table.len(),
            rows(plan).len() + 2
        ));
    }
    for row in rows(plan) {
        if !table
            .iter()
            .any(|l| l.starts_with(&format!("| {} |", row.label)))
        {
            problems.push(format!("the table has no line for {}", row.label));
        }
    }
    if !markdown.contains(L7_NOTE) {
        problems.push("the output does not say what L7 needs".to_owned());
    }
    problems
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
            let values = rows(&SMOKE)
                .iter()
                .filter(|row| !(row.needs_forwarder && scenario == Scenario::Direct))
                .map(|row| (row.key.clone(), 1.0))
                .collect();
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

        records[1].rejected = Some("errors".into());
        let partial = report(records);
        let problems = check_structure(&SMOKE, &partial.to_json(), &partial.markdown());
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("S2 has no accepted run")),
            "{problems:?}"
        );
    }
}
