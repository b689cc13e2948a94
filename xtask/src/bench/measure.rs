//! Running one workload in a scenario: the load generator in the client pod (pinned to the
//! load CPU), and the cost counters read from /proc around it.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::plan::Plan;
use super::scenario::{Deployment, Forwarder, GatewaySide, Role, Scenario, gateway_client_args};
use super::selection::{Selection, Workload};

/// The CPU the load generator runs on; everything else (agents, proxies, servers, HAProxy,
/// this process) runs on [`SERVICE_CPU`].
pub const LOAD_CPU: usize = 0;
pub const SERVICE_CPU: usize = 1;
/// Slack on top of a workload's own duration before its client is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(60);
/// Time for an idle client to open its connections before the harness gives up.
const IDLE_OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Costs are reported per this many requests.
const COST_UNIT: f64 = 10_000.0;
/// Keep-alive connections of the L7 max-rps run (the 64) and of the fixed-rate runs.
pub const L7_MAX_CONNECTIONS: usize = 64;
pub const L7_RATE_CONNECTIONS: usize = 16;
/// How long after its last due request a fixed-rate run may still complete what it owes.
const L7_RATE_GRACE: Duration = Duration::from_millis(500);
/// How a fixed-rate run that fell behind its schedule is rejected (the smoke test knows it).
pub const MISSED_RATE: &str = "missed the target rate";

/// One workload run in one scenario: its metric values, or why it was rejected.
#[derive(Clone, Debug)]
pub struct Record {
    pub scenario: Scenario,
    pub repetition: usize,
    pub workload: String,
    pub values: Vec<(String, f64)>,
    pub rejected: Option<String>,
    pub raw: Value,
}

impl Record {
    fn new(deployment: &Deployment, repetition: usize, workload: &str) -> Self {
        Self {
            scenario: deployment.scenario,
            repetition,
            workload: workload.to_owned(),
            values: Vec::new(),
            rejected: None,
            raw: Value::Null,
        }
    }

    fn value(&mut self, metric: &str, value: f64) {
        self.values
            .push((format!("{}.{metric}", self.workload), value));
    }

    fn reject(&mut self, why: impl Into<String>) {
        self.values.clear();
        self.rejected = Some(why.into());
    }

    pub fn to_json(&self) -> Value {
        let values: serde_json::Map<String, Value> = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        serde_json::json!({
            "scenario": self.scenario.id(),
            "repetition": self.repetition,
            "workload": self.workload,
            "values": values,
            "rejected": self.rejected,
            "loadgen": self.raw,
        })
    }
}

/// Every workload of one repetition in one scenario but the L7 max rps ([`l7_max`], which
/// runs first in every scenario of the round), in a fixed order. `half_rate` is the round's
/// second L7 rate: half the lowest max rps of the round, or why there is none.
pub fn repetition(
    deployment: &mut Deployment,
    plan: &Plan,
    selection: &Selection,
    repetition: usize,
    half_rate: Result<f64, &str>,
) -> Vec<Record> {
    let mut records = Vec::new();
    if selection.has(Workload::Rr) {
        records.push(rr(deployment, plan, repetition, 1, "rr_1b"));
        records.push(rr(deployment, plan, repetition, 1024, "rr_1k"));
    }
    if selection.has(Workload::Crr) {
        records.push(crr(deployment, plan, repetition));
    }
    if selection.has(Workload::Bulk) {
        records.push(bulk(deployment, plan, repetition, 1));
        records.push(bulk(deployment, plan, repetition, 4));
    }
    if selection.has(Workload::L7) {
        let fixed = Ok(f64::from(plan.l7_fixed_rps));
        records.push(l7_rate(deployment, plan, repetition, "l7_fixed", fixed));
        records.push(l7_rate(deployment, plan, repetition, "l7_half", half_rate));
    }
    // S0 and S5 have no forwarder whose memory could grow.
    if selection.has(Workload::Idle) && deployment.scenario.has_forwarder() {
        for &count in plan.idle_connections {
            records.push(idle(deployment, plan, repetition, count));
        }
    }
    records
}

/// S8's workloads: (name, TLS, a new connection per request). Each runs once against the
/// shunt gateway and once against HAProxy.
pub const GATEWAY_WORKLOADS: [(&str, bool, bool); 3] = [
    ("gw_http", false, false),
    ("gw_https", true, false),
    ("gw_https_new", true, true),
];

/// One repetition of S8: every [`GATEWAY_WORKLOADS`] entry against each side, closed loop
/// over [`L7_MAX_CONNECTIONS`] connections for the plan's L7 time, with the side's
/// forwarder CPU around it. Which side goes first alternates per repetition. Records are
/// named `<workload>_<side>`.
pub fn gateway(deployment: &mut Deployment, plan: &Plan, repetition: usize) -> Vec<Record> {
    let mut sides = [GatewaySide::Shunt, GatewaySide::Haproxy];
    if repetition % 2 == 1 {
        sides.reverse();
    }
    let mut records = Vec::new();
    for (workload, tls, new_connection) in GATEWAY_WORKLOADS {
        for side in sides {
            records.push(gateway_run(
                deployment,
                plan,
                repetition,
                &format!("{workload}_{}", side.name()),
                side,
                tls,
                new_connection,
            ));
        }
    }
    records
}

fn gateway_run(
    deployment: &mut Deployment,
    plan: &Plan,
    repetition: usize,
    workload: &str,
    side: GatewaySide,
    tls: bool,
    new_connection: bool,
) -> Record {
    let mut record = Record::new(deployment, repetition, workload);
    let Some(gateway) = deployment.gateway.as_ref() else {
        record.reject("not a gateway scenario");
        return record;
    };
    let httppod = gateway.httppod.clone();
    let mut args = gateway_client_args(
        gateway,
        side.address(tls),
        tls,
        L7_MAX_CONNECTIONS,
        plan.l7.as_millis(),
        plan.l7_warmup.as_millis(),
    );
    if new_connection {
        args.push("--new-connection".to_owned());
    }
    let Some(forwarder) = deployment.gateway_forwarder(side) else {
        record.reject(format!("the {} forwarder is not running", side.name()));
        return record;
    };
    let routed_before = (side == GatewaySide::Shunt).then(|| gateway_routed(deployment));
    let before = CpuSnapshot::take(&[forwarder]);
    let run = run_program(
        deployment,
        &httppod,
        &args,
        plan.l7 + plan.l7_warmup + CLIENT_SLACK,
    );
    let after = CpuSnapshot::take(&[forwarder]);
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    let requests = number(&report, "requests").unwrap_or(0.0);
    let Some(rps) = number(&report, "rps").filter(|_| requests >= 1.0) else {
        record.reject("no request completed");
        return record;
    };
    let carried = requests + number(&report, "unmeasured_requests").unwrap_or(0.0);
    if let Some(before) = routed_before {
        let counted = match (before, gateway_routed(deployment)) {
            (Ok(before), Ok(after)) => check_l7_path(
                "routed by the gateway (istio_requests_total)",
                before,
                after,
                carried,
            ),
            (Err(e), _) | (_, Err(e)) => Err(format!("{e:#}")),
        };
        if let Err(why) = counted {
            record.reject(why);
            return record;
        }
    }
    record.value("rps", rps);
    record_costs(&mut record, &before, &after, carried);
    record
}

/// The node proxy's requests so far: the gateway's, in S8 (no other pod sends any).
fn gateway_routed(deployment: &Deployment) -> Result<f64> {
    Ok(deployment
        .client_metrics()?
        .sum("istio_requests_total", &[]))
}

/// Runs the load generator in the client pod, pinned to [`LOAD_CPU`]; its JSON report, or why
/// there is none.
fn run_client(
    deployment: &Deployment,
    args: &[String],
    timeout: Duration,
) -> Result<Value, String> {
    run_program(deployment, &deployment.loadgen, args, timeout)
}

/// Runs `program ARGS` in the client pod, pinned to [`LOAD_CPU`]; its JSON report.
fn run_program(
    deployment: &Deployment,
    program: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> Result<Value, String> {
    let process = spawn_program(deployment, program, args).map_err(|e| e.to_string())?;
    let output = process.finish(timeout).map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "load generator failed ({}): {}",
            output.status,
            output.stderr.trim()
        ));
    }
    output.json().map_err(|e| e.to_string())
}

fn spawn_client(deployment: &Deployment, args: &[String]) -> Result<shunt_tests::Process> {
    spawn_program(deployment, &deployment.loadgen, args)
}

fn spawn_program(
    deployment: &Deployment,
    program: &std::path::Path,
    args: &[String],
) -> Result<shunt_tests::Process> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &LOAD_CPU.to_string()])
        .arg(program)
        .args(args);
    let what = args.first().map_or("loadgen", String::as_str);
    deployment.spawn_client(&format!("loadgen-{what}"), command)
}

/// The run's own `errors` list, when it has any.
fn client_errors(report: &Value) -> Option<String> {
    let errors = report.get("errors")?.as_array()?;
    (!errors.is_empty()).then(|| {
        let listed: Vec<&str> = errors.iter().take(3).filter_map(Value::as_str).collect();
        format!("{} error(s): {}", errors.len(), listed.join("; "))
    })
}

/// The client's report when the run counts: a failed client or reported errors reject the
/// record instead. The raw report is kept on the record either way.
fn accepted(record: &mut Record, run: Result<Value, String>) -> Option<Value> {
    let report = match run {
        Ok(report) => report,
        Err(e) => {
            record.reject(e);
            return None;
        }
    };
    record.raw = report.clone();
    if let Some(why) = client_errors(&report) {
        record.reject(why);
        return None;
    }
    Some(report)
}

fn number(report: &Value, field: &str) -> Option<f64> {
    report.get(field).and_then(Value::as_f64)
}

fn rr(
    deployment: &mut Deployment,
    plan: &Plan,
    repetition: usize,
    size: usize,
    workload: &str,
) -> Record {
    let mut record = Record::new(deployment, repetition, workload);
    let args: Vec<String> = [
        "rr",
        "--to",
        &deployment.targets.echo.to_string(),
        "--size",
        &size.to_string(),
        "--duration-ms",
        &plan.rr.as_millis().to_string(),
        "--warmup-ms",
        &plan.rr_warmup.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    // Costs come from the 1-byte RR run: the per-request overhead, with no payload work.
    let measure_cost = size == 1;
    let forwarders = deployment.forwarders();
    let tunnels = tunnels_before(deployment);
    let before = measure_cost.then(|| CpuSnapshot::take(&forwarders));
    let run = run_client(deployment, &args, plan.rr + plan.rr_warmup + CLIENT_SLACK);
    let after = measure_cost.then(|| CpuSnapshot::take(&forwarders));
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    let requests = number(&report, "requests").unwrap_or(0.0);
    if requests < 1.0 {
        record.reject("no request completed");
        return record;
    }
    if let Err(why) = check_tunnelled(deployment, tunnels, 1.0) {
        record.reject(why);
        return record;
    }
    for metric in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        match number(&report, metric) {
            Some(value) => record.value(metric, value),
            None => {
                record.reject(format!("the report has no {metric}"));
                return record;
            }
        }
    }
    if let (Some(before), Some(after)) = (before, after) {
        let carried = requests + number(&report, "warmup_requests").unwrap_or(0.0);
        record_costs(&mut record, &before, &after, carried);
    }
    record
}

/// CPU-seconds per [`COST_UNIT`] requests (or connections) between two snapshots: the
/// forwarders' (when there are any: their sum, and across nodes each node proxy's too), the
/// whole machine's, and its softirq part.
fn record_costs(
    record: &mut Record,
    before: &Result<CpuSnapshot>,
    after: &Result<CpuSnapshot>,
    carried: f64,
) {
    let (Ok(before), Ok(after)) = (before, after) else {
        return;
    };
    let per_unit = COST_UNIT / carried;
    if !after.forwarders.is_empty() && after.forwarders.len() == before.forwarders.len() {
        let mut total = 0.0;
        for ((role, a), (_, b)) in after.forwarders.iter().zip(&before.forwarders) {
            let cost = (a - b) * per_unit;
            total += cost;
            if let Some(prefix) = role.metric_prefix() {
                record.value(&format!("{prefix}proxy_cpu_s_per_10k"), cost);
            }
        }
        record.value("proxy_cpu_s_per_10k", total);
    }
    record.value(
        "machine_cpu_s_per_10k",
        (after.machine_busy_s - before.machine_busy_s) * per_unit,
    );
    record.value(
        "softirq_s_per_10k",
        (after.machine_softirq_s - before.machine_softirq_s) * per_unit,
    );
}

/// L7 max rps: [`L7_MAX_CONNECTIONS`] keep-alive connections in a closed loop; the costs
/// (forwarder and machine CPU per 10k requests) come from this run, at full load.
pub fn l7_max(deployment: &mut Deployment, plan: &Plan, repetition: usize) -> Record {
    let mut record = Record::new(deployment, repetition, "l7_max");
    let http = deployment.targets.http.to_string();
    let args: Vec<String> = [
        "http-max",
        "--to",
        &http,
        "--host",
        &http,
        "--connections",
        &L7_MAX_CONNECTIONS.to_string(),
        "--duration-ms",
        &plan.l7.as_millis().to_string(),
        "--warmup-ms",
        &plan.l7_warmup.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let args = with_headers(args, deployment);
    let forwarders = deployment.forwarders();
    let shunt_l7_before = deployment
        .scenario
        .runs_shunt()
        .then(|| l7_counters(deployment));
    let before = CpuSnapshot::take(&forwarders);
    let run = run_client(deployment, &args, plan.l7 + plan.l7_warmup + CLIENT_SLACK);
    let after = CpuSnapshot::take(&forwarders);
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    let requests = number(&report, "requests").unwrap_or(0.0);
    let Some(rps) = number(&report, "rps").filter(|_| requests >= 1.0) else {
        record.reject("no request completed");
        return record;
    };
    let carried = requests + number(&report, "unmeasured_requests").unwrap_or(0.0);
    if let Some(before) = shunt_l7_before {
        if let Err(why) = check_l7_counters(before, l7_counters(deployment), carried) {
            record.reject(why);
            return record;
        }
    }
    record.value("rps", rps);
    record_costs(&mut record, &before, &after, carried);
    record
}

/// `args` with a `--header` for each of the scenario's extra request headers.
fn with_headers(mut args: Vec<String>, deployment: &Deployment) -> Vec<String> {
    for header in &deployment.http_headers {
        args.extend(["--header".to_owned(), header.clone()]);
    }
    args
}

/// The request counters a shunt scenario's L7 run must grow, with what each proves: the
/// client node's `istio_requests_total` (shunt routed the requests at L7); across nodes also
/// the server node's destination-side requests that came over mutual TLS (they were
/// tunnelled, not sent in plaintext between the proxies); in S7 the requests its ALLOW
/// policy allowed (each was authorized, and authenticated: the one rule that allows them
/// needs the token's request principal).
fn l7_counters(deployment: &Deployment) -> Result<Vec<(&'static str, f64)>> {
    let mut counters = vec![(
        "routed at L7 (istio_requests_total)",
        deployment
            .client_metrics()?
            .sum("istio_requests_total", &[]),
    )];
    if deployment.scenario == Scenario::CrossMtls {
        counters.push((
            "received over mTLS on the server's node (istio_requests_total \
             {reporter=\"destination\", connection_security_policy=\"mutual_tls\"})",
            deployment.server_metrics()?.sum(
                "istio_requests_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ),
        ));
    }
    if deployment.scenario == Scenario::EbpfAuthz {
        counters.push((
            "authorized and authenticated on the server's node (shunt_authorization_decisions_\
             total{action=\"ALLOW\", decision=\"allow\"} of its ALLOW policy)",
            deployment.authz_allowed()?,
        ));
    }
    Ok(counters)
}

fn check_l7_counters(
    before: Result<Vec<(&str, f64)>>,
    after: Result<Vec<(&str, f64)>>,
    carried: f64,
) -> Result<(), String> {
    let (before, after) = match (before, after) {
        (Ok(before), Ok(after)) => (before, after),
        (Err(e), _) | (_, Err(e)) => return Err(format!("{e:#}")),
    };
    for ((what, before), (_, after)) in before.into_iter().zip(after) {
        check_l7_path(what, before, after, carried)?;
    }
    Ok(())
}

/// A shunt scenario's L7 run must have gone through shunt's HTTP path, not been forwarded as
/// opaque TCP: the request counter grew by every request the client completed (less at most
/// one in flight per connection when the counter was read).
fn check_l7_path(what: &str, before: f64, after: f64, carried: f64) -> Result<(), String> {
    let counted = after - before;
    if counted + (L7_MAX_CONNECTIONS as f64) < carried {
        return Err(format!(
            "shunt counted {counted} requests {what} for {carried} the client completed: the \
             L7 run did not take shunt's L7 path"
        ));
    }
    Ok(())
}

/// Before an S6 L4 run: the client node's count of HBONE streams, to check afterwards that
/// the run's connections were tunnelled. `None` in every other scenario.
fn tunnels_before(deployment: &Deployment) -> Option<Result<f64>> {
    (deployment.scenario == Scenario::CrossMtls).then(|| deployment.hbone_streams_opened())
}

/// After an S6 L4 run that opened `connections` connections: each must have had its own
/// HBONE stream.
fn check_tunnelled(
    deployment: &Deployment,
    before: Option<Result<f64>>,
    connections: f64,
) -> Result<(), String> {
    let Some(before) = before else {
        return Ok(());
    };
    match (before, deployment.hbone_streams_opened()) {
        (Ok(before), Ok(after)) => tunnelled(after - before, connections),
        (Err(e), _) | (_, Err(e)) => Err(format!("{e:#}")),
    }
}

fn tunnelled(streams: f64, connections: f64) -> Result<(), String> {
    if streams < connections {
        return Err(format!(
            "the client node's proxy opened {streams} HBONE streams for the run's \
             {connections} connections: not every connection was tunnelled"
        ));
    }
    Ok(())
}

/// L7 latency at a fixed rate, open loop over [`L7_RATE_CONNECTIONS`] keep-alive
/// connections, corrected for coordinated omission by the load generator. A run that could
/// not keep the rate is rejected.
fn l7_rate(
    deployment: &mut Deployment,
    plan: &Plan,
    repetition: usize,
    workload: &str,
    rate: Result<f64, &str>,
) -> Record {
    let mut record = Record::new(deployment, repetition, workload);
    let rps = match rate {
        Ok(rps) => rps,
        Err(why) => {
            record.reject(why);
            return record;
        }
    };
    let http = deployment.targets.http.to_string();
    let args: Vec<String> = [
        "http-rate",
        "--to",
        &http,
        "--host",
        &http,
        "--rps",
        &format!("{rps:.1}"),
        "--connections",
        &L7_RATE_CONNECTIONS.to_string(),
        "--duration-ms",
        &plan.l7.as_millis().to_string(),
        "--warmup-ms",
        &plan.l7_warmup.as_millis().to_string(),
        "--grace-ms",
        &L7_RATE_GRACE.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let args = with_headers(args, deployment);
    let shunt_l7_before = deployment
        .scenario
        .runs_shunt()
        .then(|| l7_counters(deployment));
    let run = run_client(
        deployment,
        &args,
        plan.l7 + plan.l7_warmup + L7_RATE_GRACE + CLIENT_SLACK,
    );
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    if report.get("rate_achieved").and_then(Value::as_bool) != Some(true) {
        record.reject(format!(
            "{MISSED_RATE}: {} of {} due requests completed ({:.0} of {rps:.0} rps)",
            number(&report, "completed").unwrap_or(0.0),
            number(&report, "scheduled").unwrap_or(0.0),
            number(&report, "achieved_rps").unwrap_or(0.0),
        ));
        return record;
    }
    if let Some(before) = shunt_l7_before {
        // Every due request, and one per connection to warm it before the schedule.
        let carried = number(&report, "completed").unwrap_or(0.0)
            + number(&report, "connections").unwrap_or(0.0);
        if let Err(why) = check_l7_counters(before, l7_counters(deployment), carried) {
            record.reject(why);
            return record;
        }
    }
    for metric in ["p50_us", "p90_us", "p99_us"] {
        match number(&report, metric) {
            Some(value) => record.value(metric, value),
            None => {
                record.reject(format!("the report has no {metric}"));
                return record;
            }
        }
    }
    record.value("target_rps", rps);
    record
}

fn crr(deployment: &mut Deployment, plan: &Plan, repetition: usize) -> Record {
    let mut record = Record::new(deployment, repetition, "crr");
    let args: Vec<String> = [
        "crr",
        "--to",
        &deployment.targets.crr.to_string(),
        "--duration-ms",
        &plan.crr.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let forwarders = deployment.forwarders();
    let tunnels = tunnels_before(deployment);
    let before = CpuSnapshot::take(&forwarders);
    let run = run_client(deployment, &args, plan.crr + CLIENT_SLACK);
    let after = CpuSnapshot::take(&forwarders);
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    let connections = number(&report, "connections").unwrap_or(0.0);
    match (
        number(&report, "p50_us"),
        number(&report, "p99_us"),
        number(&report, "connections_per_s"),
    ) {
        (Some(p50), Some(p99), Some(rate)) if rate > 0.0 && connections >= 1.0 => {
            if let Err(why) = check_tunnelled(deployment, tunnels, connections) {
                record.reject(why);
                return record;
            }
            record.value("p50_us", p50);
            record.value("p99_us", p99);
            record.value("conn_per_s", rate);
            // Per 10k connections: what setting up and tearing down a connection costs.
            record_costs(&mut record, &before, &after, connections);
        }
        _ => record.reject("no connection completed"),
    }
    record
}

fn bulk(deployment: &mut Deployment, plan: &Plan, repetition: usize, streams: usize) -> Record {
    let mut record = Record::new(deployment, repetition, &format!("bulk_{streams}"));
    let timeout = Duration::from_secs(300);
    let args: Vec<String> = [
        "bulk",
        "--to",
        &deployment.targets.sink.to_string(),
        "--bytes-per-stream",
        &plan.bulk_bytes_per_stream.to_string(),
        "--streams",
        &streams.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let tunnels = tunnels_before(deployment);
    let run = run_client(deployment, &args, timeout + CLIENT_SLACK);
    let Some(report) = accepted(&mut record, run) else {
        return record;
    };
    if let Err(why) = check_tunnelled(deployment, tunnels, streams as f64) {
        record.reject(why);
        return record;
    }
    let want = plan.bulk_bytes_per_stream as f64 * streams as f64;
    match (number(&report, "bytes"), number(&report, "gbit_per_s")) {
        (Some(bytes), Some(rate)) if (bytes - want).abs() < 0.5 => record.value("gbit_per_s", rate),
        (bytes, _) => record.reject(format!(
            "moved {} of {want} bytes",
            bytes.unwrap_or_default()
        )),
    }
    record
}

fn idle(deployment: &mut Deployment, plan: &Plan, repetition: usize, count: usize) -> Record {
    let mut record = Record::new(deployment, repetition, &format!("idle_{count}"));
    if let Err(e) = deployment.restart_forwarder() {
        record.reject(format!("could not restart the forwarder: {e:#}"));
        return record;
    }
    let forwarders = deployment.forwarders();
    if forwarders.is_empty() {
        record.reject("the forwarder is not running");
        return record;
    }
    let tunnels = tunnels_before(deployment);
    match idle_rss_growth(deployment, plan, &forwarders, count) {
        Ok((report, growth_kib)) => {
            record.raw = report.clone();
            if let Some(why) = client_errors(&report) {
                record.reject(why);
            } else if number(&report, "connections") != Some(count as f64) {
                record.reject(format!("held fewer than {count} connections"));
            } else if let Err(why) = check_tunnelled(deployment, tunnels, count as f64) {
                record.reject(why);
            } else {
                let per_1k = |kib: f64| kib / 1024.0 * 1000.0 / count as f64;
                let mut total = 0.0;
                for (role, kib) in growth_kib {
                    total += kib;
                    if let Some(prefix) = role.metric_prefix() {
                        record.value(&format!("{prefix}rss_mib_per_1k"), per_1k(kib));
                    }
                }
                record.value("rss_mib_per_1k", per_1k(total));
            }
        }
        Err(e) => record.reject(e.to_string()),
    }
    record
}

/// Each forwarder's RSS growth (KiB) while `count` idle connections are held, against its
/// RSS just before they opened (freshly restarted, so no freed memory hides the growth); and
/// the client's report.
fn idle_rss_growth(
    deployment: &Deployment,
    plan: &Plan,
    forwarders: &[Forwarder],
    count: usize,
) -> Result<(Value, Vec<(Role, f64)>)> {
    let rss = || -> Result<Vec<f64>> { forwarders.iter().map(|f| rss_kib(f.pid)).collect() };
    let before = rss()?;
    let args: Vec<String> = [
        "idle",
        "--to",
        &deployment.targets.echo.to_string(),
        "--connections",
        &count.to_string(),
        "--hold-ms",
        &plan.idle_hold.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut client = spawn_client(deployment, &args)?;
    client.wait_for_line("holding", IDLE_OPEN_TIMEOUT)?;
    // Let the last connections' far ends finish being set up in the proxy.
    std::thread::sleep(plan.idle_hold / 3);
    let during = rss()?;
    let output = client.finish(plan.idle_hold + CLIENT_SLACK)?;
    if !output.status.success() {
        bail!(
            "load generator failed ({}): {}",
            output.status,
            output.stderr
        );
    }
    let growth = forwarders
        .iter()
        .zip(during.iter().zip(&before))
        .map(|(f, (during, before))| (f.role, during - before))
        .collect();
    Ok((output.json()?, growth))
}

/// CPU counters at one instant, in seconds.
struct CpuSnapshot {
    /// Each forwarder's, in the order of [`Deployment::forwarders`].
    forwarders: Vec<(Role, f64)>,
    machine_busy_s: f64,
    machine_softirq_s: f64,
}

impl CpuSnapshot {
    fn take(forwarders: &[Forwarder]) -> Result<Self> {
        let ticks = clock_ticks()?;
        let forwarders = forwarders
            .iter()
            .map(|f| Ok((f.role, process_cpu_ticks(f.pid)? / ticks)))
            .collect::<Result<_>>()?;
        let (busy, softirq) = machine_cpu_ticks()?;
        Ok(Self {
            forwarders,
            machine_busy_s: busy / ticks,
            machine_softirq_s: softirq / ticks,
        })
    }
}

fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("could not run getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")
}

/// utime + stime of every thread of `pid`, in clock ticks (/proc/PID/stat fields 14, 15).
fn process_cpu_ticks(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    parse_process_ticks(&stat).with_context(|| format!("{path} has no utime/stime: {stat:?}"))
}

fn parse_process_ticks(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; the fields after its ')' start at field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, softirq) clock ticks of the whole machine: busy counts user, nice, system, irq,
/// softirq and steal (everything but idle and iowait).
fn machine_cpu_ticks() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    parse_machine_ticks(&stat).context("/proc/stat has no aggregate `cpu` line")
}

fn parse_machine_ticks(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let (user, nice, system, irq, softirq, steal) = (at(0), at(1), at(2), at(5), at(6), at(7));
    Some((user + nice + system + irq + softirq + steal, softirq))
}

fn rss_kib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    parse_rss_kib(&status).with_context(|| format!("{path} has no VmRSS line"))
}

fn parse_rss_kib(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_l7_run_must_be_counted_by_shunts_http_path() {
        let cases = [
            (100.0, 1100.0, 1000.0, true),
            // One request in flight per connection when the counter was read.
            (0.0, 940.0, 1000.0, true),
            (0.0, 900.0, 1000.0, false),
            (0.0, 0.0, 1000.0, false),
        ];
        for (before, after, carried, ok) in cases {
            let what = format!("{before} {after} {carried}");
            assert_eq!(
                check_l7_path("routed", before, after, carried).is_ok(),
                ok,
                "{what}"
            );
        }
    }

    #[test]
    fn every_counter_of_an_l7_run_must_grow() {
        let counters = |a: f64, b: f64| Ok(vec![("routed", a), ("over mTLS", b)]);
        let cases = [
            (counters(0.0, 0.0), counters(1000.0, 1000.0), true),
            (counters(0.0, 0.0), counters(1000.0, 10.0), false),
            (
                counters(0.0, 0.0),
                Err(anyhow::anyhow!("no metrics")),
                false,
            ),
        ];
        for (before, after, ok) in cases {
            let what = format!("{before:?} {after:?}");
            let checked = check_l7_counters(before, after, 1000.0);
            assert_eq!(checked.is_ok(), ok, "{what}: {checked:?}");
        }
        let error = check_l7_counters(counters(0.0, 0.0), counters(1000.0, 10.0), 1000.0)
            .expect_err("the second counter did not grow");
        assert!(error.contains("over mTLS"), "{error}");
    }

    #[test]
    fn a_tunnelled_run_has_a_stream_per_connection() {
        for (streams, connections, ok) in [
            (1.0, 1.0, true),
            (5000.0, 4321.0, true),
            (0.0, 1.0, false),
            (999.0, 1000.0, false),
        ] {
            let checked = tunnelled(streams, connections);
            assert_eq!(checked.is_ok(), ok, "{streams} {connections}: {checked:?}");
        }
    }

    #[test]
    fn proc_files_are_parsed() {
        let stat = "1234 (shunt proxy) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_process_ticks(stat), Some(325.0));
        assert_eq!(parse_process_ticks("1234 (x"), None);

        let machine = "cpu  100 5 50 1000 7 3 20 2 0 0\ncpu0 50 2 25 500 3 1 10 1 0 0\n";
        assert_eq!(parse_machine_ticks(machine), Some((180.0, 20.0)));
        assert_eq!(parse_machine_ticks("intr 1 2 3\n"), None);

        let status = "Name:\tshunt-proxy\nVmRSS:\t   10240 kB\nThreads:\t2\n";
        assert_eq!(parse_rss_kib(status), Some(10240.0));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }
}
