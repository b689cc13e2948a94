//! `shuntctl`: the node-level debugging CLI, a client of the agent's admin socket (and, for
//! `clusters`, of the proxy's metrics endpoint).
#![deny(unsafe_code)]

mod client;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use shunt_api::admin as api;
use shunt_api::capture::IptablesStatus;
use shunt_api::config::Sourced;

use crate::client::AdminClient;
use shunt_api::run_dir::{DEFAULT_INSTANCE, RunDir};
use shunt_api::capture::CaptureMode;
use shunt_api::clusters::{ClusterDump, ClustersDump};

#[derive(Debug, Parser)]
#[command(
    name = "shuntctl",
    version,
    about = "Inspect and control a node's shunt-agent"
)]
struct Cli {
    /// The agent instance to talk to: its admin socket is /run/shunt/NAME/admin.sock.
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_INSTANCE)]
    instance: String,
    /// The agent's admin socket, instead of the instance's.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "instance")]
    admin_socket: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Programs, attach points, pins, map sizes, counters, and the kernel feature probe.
    Status,
    /// Every pod: captured or not and why, netns cookie, proxy state.
    Workloads,
    /// The loaded config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The eBPF maps.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// The effective routes of one pod: for each host and port it reaches that has a
    /// VirtualService or DestinationRule, the routes in order, their matches, destinations,
    /// weights and policies, and each subset's endpoints and traffic policy.
    Routes {
        /// The pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME")]
        pod: String,
    },
    /// A dry run of one request: the route matched and why, the destination, subset and
    /// endpoints, and the policies that would apply.
    Explain {
        /// The sending pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/POD")]
        from: String,
        /// e.g. http://cart.shop:8080/items?id=1
        url: String,
        /// A request header, 'name: value'; repeatable.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The request method [default: GET].
        #[arg(short = 'X', long = "request", value_name = "METHOD")]
        method: Option<String>,
    },
    /// The proxy's upstream clusters per pod, live: load balancer, connections, requests
    /// pending and in flight, and each endpoint's requests and outlier detection state.
    /// Read from the proxy's metrics endpoint (GET /debug/clusters), not from the agent.
    Clusters {
        /// The proxy's --metrics-addr.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15020")]
        proxy_addr: SocketAddr,
        /// Only this pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME")]
        pod: Option<String>,
    },
    /// Detach and unpin everything of this instance; the agent then exits.
    Uninstall,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Every object the agent loaded, and the errors of the last load.
    Dump,
}

#[derive(Debug, Subcommand)]
enum MapsCommand {
    /// A map's entries (e.g. MESHED_NETNS).
    Dump { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shuntctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuntctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Clusters { proxy_addr, pod } = &cli.command {
        let body = fetch_clusters(*proxy_addr).await?;
        let pods = select_pod(body, pod.as_deref(), *proxy_addr)?;
        if cli.output == Output::Json {
            println!("{:#}", serde_json::Value::Object(pods));
        } else {
            let pods: BTreeMap<String, ClustersDump> =
                serde_json::from_value(serde_json::Value::Object(pods)).map_err(|error| {
                    anyhow::anyhow!(
                        "unexpected answer from the proxy's /debug/clusters (a shunt-proxy of \
                         another version?): {error}"
                    )
                })?;
            print!("{}", clusters(&pods));
        }
        return Ok(());
    }
    let agent = match &cli.admin_socket {
        Some(socket) => AdminClient::new(socket, None),
        None => AdminClient::new(
            &RunDir::for_instance(&cli.instance)?.admin_socket(),
            Some(&cli.instance),
        ),
    };
    if let Command::Explain {
        from,
        url,
        headers,
        method,
    } = &cli.command
    {
        let query = api::ExplainQuery {
            from: from.clone(),
            request: api::ExplainRequest {
                url: url.clone(),
                method: method.clone(),
                headers: headers.clone(),
            },
        };
        let body: serde_json::Value = agent.post_json("/explain", &query).await?;
        if cli.output == Output::Json {
            println!("{body:#}");
        } else {
            let answer = serde_json::from_value(body).context("unexpected answer from /explain")?;
            print!("{}", explanation(&answer));
        }
        return Ok(());
    }
    let (path, post) = match &cli.command {
        Command::Status => ("/status".to_owned(), false),
        Command::Workloads => ("/workloads".to_owned(), false),
        Command::Config {
            command: ConfigCommand::Dump,
        } => ("/config".to_owned(), false),
        Command::Maps {
            command: MapsCommand::Dump { name },
        } => (format!("/maps/{name}"), false),
        Command::Routes { pod } => (format!("/routes/{pod}"), false),
        Command::Uninstall => ("/uninstall".to_owned(), true),
        Command::Explain { .. } | Command::Clusters { .. } => return Ok(()),
    };
    let body: serde_json::Value = if post {
        agent.post(&path).await?
    } else {
        agent.get(&path).await?
    };
    if cli.output == Output::Json {
        println!("{body:#}");
        return Ok(());
    }
    let decode = || format!("unexpected answer from {path}");
    let text = match cli.command {
        Command::Status => status(serde_json::from_value(body).with_context(decode)?),
        Command::Workloads => {
            let list: Vec<api::Workload> = serde_json::from_value(body).with_context(decode)?;
            workloads(&list)
        }
        Command::Config { .. } => config(&serde_json::from_value(body).with_context(decode)?),
        Command::Maps { .. } => map_entries(&body),
        Command::Routes { .. } => pod_routes(&serde_json::from_value(body).with_context(decode)?),
        Command::Explain { .. } | Command::Clusters { .. } => String::new(),
        Command::Uninstall => {
            let answer: api::Uninstalled = serde_json::from_value(body).with_context(decode)?;
            uninstalled(&answer)
        }
    };
    print!("{text}");
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|&h| h.to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count() + 2;
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// The parts of `capture::CaptureStatus` that `status` shows; lenient, so an agent of another
/// version still gets a readable answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CaptureView {
    programs: Vec<ProgramView>,
    pods: Vec<PodAttachmentView>,
    maps: Vec<MapView>,
    counters: BTreeMap<String, u64>,
    kernel: KernelView,
    errors: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProgramView {
    name: String,
    program_type: String,
    attach_point: String,
    attachment: String,
    link_pin: Option<PathBuf>,
    link: Option<LinkView>,
    note: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LinkView {
    link_id: u32,
    program_id: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodAttachmentView {
    netns_cookie: u64,
    link_pin: PathBuf,
    link: Option<LinkView>,
    pod_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MapView {
    name: String,
    pin: PathBuf,
    entries: u64,
    max_entries: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KernelView {
    kernel_release: String,
    btf_vmlinux: bool,
    cgroup2_mount: Option<PathBuf>,
    bpffs_mount: Option<PathBuf>,
    features: Vec<FeatureView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FeatureView {
    name: String,
    supported: Option<bool>,
    since: String,
    missing_disables: String,
    error: Option<String>,
}

/// iptables capture: each pod's rules.
fn iptables_status(capture: &serde_json::Value) -> String {
    let status: IptablesStatus = match serde_json::from_value(capture.clone()) {
        Ok(status) => status,
        Err(e) => {
            return format!(
                "\ncapture status (not understood by this shuntctl: {e}):\n{capture:#}\n"
            );
        }
    };
    let mut out = format!(
        "\n{} ({}); rules in {} pod netns\n",
        status.iptables,
        status.record_dir.display(),
        status.pods.len()
    );
    let mut pods = Table::new(&["NETNS-COOKIE", "POD IP", "NETNS", "RULES"]);
    for pod in &status.pods {
        pods.row(vec![
            pod.netns_cookie.to_string(),
            pod.pod_ip.to_string(),
            pod.netns.display().to_string(),
            pod.rules.len().to_string(),
        ]);
    }
    out.push_str(&pods.render());
    for pod in &status.pods {
        out.push_str(&format!("\n{}:\n", pod.netns.display()));
        for rule in &pod.rules {
            out.push_str(&format!("  {rule}\n"));
        }
    }
    for error in &status.errors {
        out.push_str(&format!("error: {error}\n"));
    }
    out
}

fn status(status: api::Status) -> String {
    let mut out = String::new();
    let mut summary = Table::new(&["", ""]);
    summary.rows = vec![
        vec!["instance".into(), status.instance.clone()],
        vec!["capture".into(), status.capture_mode.name().into()],
        vec![
            "pin dir".into(),
            or_dash(status.pin_dir.as_ref().map(|p| p.display().to_string())),
        ],
        vec![
            "cgroup".into(),
            or_dash(status.cgroup.as_ref().map(|p| p.display().to_string())),
        ],
        vec![
            "sockmap shortcut".into(),
            if status.sockmap_shortcut { "on" } else { "off" }.into(),
        ],
        vec![
            "proxy".into(),
            match (status.proxy.connected, status.proxy.pid) {
                (true, Some(pid)) => format!("connected (pid {pid})"),
                (true, None) => "connected".into(),
                (false, _) => "not connected".into(),
            },
        ],
    ];
    // The header row of this two-column table is empty: skip it.
    out.extend(summary.render().lines().skip(1).map(|l| format!("{l}\n")));
    if status.capture_mode == CaptureMode::Iptables {
        out.push_str(&iptables_status(&status.capture));
        return out;
    }

    let capture: CaptureView = match serde_json::from_value(status.capture.clone()) {
        Ok(capture) => capture,
        Err(e) => {
            out.push_str(&format!(
                "\ncapture status (not understood by this shuntctl: {e}):\n{:#}\n",
                status.capture
            ));
            return out;
        }
    };

    let mut programs = Table::new(&[
        "PROGRAM",
        "TYPE",
        "ATTACH POINT",
        "ATTACHMENT",
        "LINK",
        "PROG",
        "LINK PIN",
    ]);
    for p in &capture.programs {
        programs.row(vec![
            p.name.clone(),
            p.program_type.clone(),
            p.attach_point.clone(),
            p.attachment.clone(),
            or_dash(p.link.as_ref().map(|l| l.link_id)),
            or_dash(p.link.as_ref().map(|l| l.program_id)),
            or_dash(p.link_pin.as_ref().map(|p| p.display().to_string())),
        ]);
    }
    out.push('\n');
    out.push_str(&programs.render());
    for p in &capture.programs {
        if let Some(note) = &p.note {
            out.push_str(&format!("note: {}: {note}\n", p.name));
        }
    }

    out.push_str(&format!(
        "\nsk_lookup attached in {} pod netns\n",
        capture.pods.len()
    ));
    if !capture.pods.is_empty() {
        let mut pods = Table::new(&["NETNS-COOKIE", "POD IP", "LINK", "LINK PIN"]);
        for pod in &capture.pods {
            pods.row(vec![
                pod.netns_cookie.to_string(),
                or_dash(pod.pod_ip.as_ref()),
                or_dash(pod.link.as_ref().map(|l| l.link_id)),
                pod.link_pin.display().to_string(),
            ]);
        }
        out.push_str(&pods.render());
    }

    let mut maps = Table::new(&["MAP", "ENTRIES", "MAX", "PIN"]);
    for map in &capture.maps {
        maps.row(vec![
            map.name.clone(),
            map.entries.to_string(),
            map.max_entries.to_string(),
            map.pin.display().to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&maps.render());

    let mut counters = Table::new(&["COUNTER", "VALUE"]);
    for (name, value) in &capture.counters {
        counters.row(vec![name.clone(), value.to_string()]);
    }
    out.push('\n');
    out.push_str(&counters.render());

    let kernel = &capture.kernel;
    out.push_str(&format!(
        "\nkernel {} (BTF: {}; cgroup2: {}; bpffs: {})\n",
        kernel.kernel_release,
        yes_no(kernel.btf_vmlinux),
        or_dash(
            kernel
                .cgroup2_mount
                .as_ref()
                .map(|p| p.display().to_string())
        ),
        or_dash(kernel.bpffs_mount.as_ref().map(|p| p.display().to_string())),
    ));
    let mut features = Table::new(&["FEATURE", "SUPPORTED", "SINCE", "IF MISSING, DISABLES"]);
    for f in &kernel.features {
        features.row(vec![
            f.name.clone(),
            match (f.supported, &f.error) {
                (Some(supported), _) => yes_no(supported),
                (None, Some(error)) => format!("unknown ({error})"),
                (None, None) => "unknown".into(),
            },
            f.since.clone(),
            f.missing_disables.clone(),
        ]);
    }
    out.push_str(&features.render());
    let missing: Vec<&FeatureView> = kernel
        .features
        .iter()
        .filter(|f| f.supported == Some(false))
        .collect();
    for f in missing {
        out.push_str(&format!(
            "missing: {} (Linux {}+): no {}\n",
            f.name, f.since, f.missing_disables
        ));
    }
    for error in &capture.errors {
        out.push_str(&format!("error: {error}\n"));
    }
    out
}

fn workloads(workloads: &[api::Workload]) -> String {
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "IP",
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
            yes_no(w.captured),
            or_dash(w.netns_cookie),
            w.proxy.clone(),
            w.reason.clone(),
        ]);
    }
    table.render()
}

fn config(dump: &api::ConfigDump) -> String {
    let mut objects = Table::new(&["KIND", "NAMESPACE", "NAME", "FILE"]);
    let place =
        |file: &PathBuf, document: usize| format!("{} (document {document})", file.display());
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

fn destinations(list: &[api::DestinationView]) -> String {
    list.iter()
        .map(|d| {
            let mut text = d.host.clone();
            if let Some(port) = d.port {
                text.push_str(&format!(":{port}"));
            }
            if let Some(subset) = &d.subset {
                text.push_str(&format!(" ({subset})"));
            }
            format!("{text} {}%", d.weight)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn route_lines(out: &mut String, route: &api::RouteView, indent: &str) {
    out.push_str(&format!(
        "{indent}{} [{}{}]\n",
        route.name,
        route.section,
        route
            .virtual_service
            .as_ref()
            .map(|vs| format!(", {vs}"))
            .unwrap_or_default()
    ));
    if route.matches.is_empty() {
        out.push_str(&format!("{indent}  match: everything\n"));
    }
    for (i, block) in route.matches.iter().enumerate() {
        let or = if i == 0 { "match:" } else { "   or:" };
        out.push_str(&format!("{indent}  {or} {}\n", block.join(" AND ")));
    }
    if route.destinations.is_empty() {
        out.push_str(&format!("{indent}  then: {}\n", route.action));
    } else {
        out.push_str(&format!(
            "{indent}  to: {}\n",
            destinations(&route.destinations)
        ));
    }
    for policy in &route.policies {
        out.push_str(&format!("{indent}  - {policy}\n"));
    }
}

fn cluster_lines(out: &mut String, cluster: &api::ClusterView, indent: &str) {
    out.push_str(&format!(
        "{indent}{}: {}\n",
        cluster.name, cluster.load_balancer
    ));
    let endpoints = if cluster.endpoints.is_empty() {
        "(none)".to_owned()
    } else {
        cluster.endpoints.join(", ")
    };
    out.push_str(&format!("{indent}  endpoints: {endpoints}\n"));
    if let Some(pool) = &cluster.connection_pool {
        out.push_str(&format!("{indent}  connection pool: {pool}\n"));
    }
    if let Some(outlier) = &cluster.outlier_detection {
        out.push_str(&format!("{indent}  outlier detection: {outlier}\n"));
    }
}

fn pod_routes(routes: &api::PodRoutes) -> String {
    if routes.hosts.is_empty() {
        return format!(
            "{}: no host it reaches has a VirtualService or DestinationRule (default routes only)\n",
            routes.pod
        );
    }
    let mut out = String::new();
    for host in &routes.hosts {
        out.push_str(&format!(
            "{}:{} ({})\n",
            host.host, host.port, host.protocol
        ));
        if let Some(rule) = &host.destination_rule {
            out.push_str(&format!("  policy from {rule}\n"));
        }
        out.push_str("  routes, first match wins:\n");
        for route in &host.routes {
            route_lines(&mut out, route, "    ");
        }
        out.push_str("  clusters:\n");
        for cluster in &host.clusters {
            cluster_lines(&mut out, cluster, "    ");
        }
    }
    out
}

fn explanation(answer: &api::Explanation) -> String {
    let mut out = format!("{} from {}\n", answer.request, answer.source);
    out.push_str(&format!("dials: {}\n", answer.destination));
    if let Some(host) = &answer.host {
        out.push_str(&format!("host: {host} ({})\n", answer.resolved_by));
    } else if !answer.resolved_by.is_empty() {
        out.push_str(&format!("host: none ({})\n", answer.resolved_by));
    }
    if !answer.virtual_services.is_empty() {
        out.push_str(&format!(
            "virtual services, in merge order: {}\n",
            answer.virtual_services.join(", ")
        ));
    }
    out.push_str(&format!("outcome: {}\n", answer.outcome));
    if let Some(matched) = &answer.matched {
        out.push_str(&format!("why: {matched}\n"));
    }
    if let Some(route) = &answer.route {
        out.push_str("route:\n");
        route_lines(&mut out, route, "  ");
    }
    if answer.weighted_pick {
        out.push_str("destination: a weighted pick per request among:\n");
    } else if !answer.destinations.is_empty() {
        out.push_str("destination:\n");
    }
    for d in &answer.destinations {
        out.push_str(&format!(
            "  {}\n",
            destinations(std::slice::from_ref(&d.destination))
        ));
        if let Some(cluster) = &d.cluster {
            cluster_lines(&mut out, cluster, "    ");
        }
        if let Some(key) = &d.hash_key {
            out.push_str(&format!("    hashed: {key}\n"));
        }
        if let Some(limit) = &d.rate_limit {
            out.push_str(&format!("    rate limit: {limit}\n"));
        }
        if let Some(error) = &d.error {
            out.push_str(&format!("    cannot dial: {error}\n"));
        }
    }
    out
}

/// How long `clusters` waits for the proxy, connect to last byte.
const PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /debug/clusters` from the proxy's metrics endpoint: per pod, its clusters.
async fn fetch_clusters(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    tokio::time::timeout(PROXY_TIMEOUT, get_json(addr, "/debug/clusters"))
        .await
        .with_context(|| {
            format!(
                "the proxy at {addr} did not answer within {PROXY_TIMEOUT:?} (is {addr} \
                 shunt-proxy's --metrics-addr?)"
            )
        })?
}

/// `GET path` as JSON. Errors carry their cause in the message: `main` prints only that.
async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "no proxy at {addr} ({error}): is shunt-proxy running with --metrics-addr {addr}?"
            )
        })?;
    let failed = |what: &str, error: hyper::Error| {
        anyhow::anyhow!("{what} with the proxy at {addr} failed: {error}")
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| failed("the HTTP handshake", error))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| failed(&format!("GET {path}"), error))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| failed(&format!("reading {path}"), error))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    if !status.is_success() {
        anyhow::bail!(
            "the proxy at {addr} answered {status} to GET {path} (a shunt-proxy older than \
             this shuntctl?): {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body)
        .map_err(|error| anyhow::anyhow!("{path} from the proxy at {addr} is not JSON: {error}"))
}

/// The pods of the answer, or only `pod` (an error naming the pods served if it is not).
fn select_pod(
    body: serde_json::Value,
    pod: Option<&str>,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(mut pods) = body else {
        anyhow::bail!("unexpected answer from the proxy's /debug/clusters: {body}");
    };
    let Some(pod) = pod else {
        return Ok(pods);
    };
    match pods.remove(pod) {
        Some(clusters) => Ok(serde_json::Map::from_iter([(pod.to_owned(), clusters)])),
        None => {
            let served: Vec<&str> = pods.keys().map(String::as_str).collect();
            anyhow::bail!(
                "the proxy at {addr} does not serve pod {pod} (serves: {})",
                if served.is_empty() {
                    "none".to_owned()
                } else {
                    served.join(", ")
                }
            )
        }
    }
}

fn clusters(pods: &BTreeMap<String, ClustersDump>) -> String {
    if pods.is_empty() {
        return "the proxy serves no pod\n".to_owned();
    }
    let mut out = String::new();
    for (pod, dump) in pods {
        if dump.clusters.is_empty() {
            out.push_str(&format!("{pod}: no upstream cluster in use\n"));
            continue;
        }
        out.push_str(&format!(
            "{pod}: {}\n",
            count(dump.clusters.len(), "upstream cluster", "upstream clusters")
        ));
        for (name, cluster) in &dump.clusters {
            cluster_state(&mut out, name, cluster);
        }
    }
    out
}

fn cluster_state(out: &mut String, name: &str, cluster: &ClusterDump) {
    out.push_str(&format!("  {name}\n"));
    out.push_str(&format!(
        "    load balancer {}; {}; requests: {} pending, {} active, {} retrying\n",
        cluster.load_balancer,
        count(
            usize::try_from(cluster.connections).unwrap_or(usize::MAX),
            "connection",
            "connections"
        ),
        cluster.pending_requests,
        cluster.active_requests,
        cluster.active_retries,
    ));
    if cluster.endpoints.is_empty() {
        out.push_str("    no endpoint\n");
        return;
    }
    let mut table = Table::new(&[
        "ENDPOINT",
        "WEIGHT",
        "ACTIVE",
        "EJECTED",
        "TIMES EJECTED",
        "5XX IN A ROW",
        "GATEWAY ERRORS IN A ROW",
        "IDLE CONNS",
        "H2 CONNS",
    ]);
    for endpoint in &cluster.endpoints {
        table.row(vec![
            endpoint.addr.clone(),
            endpoint.weight.to_string(),
            endpoint.active_requests.to_string(),
            match (endpoint.ejected, endpoint.ejected_until) {
                (true, Some(left)) => format!("yes, {left:.1}s left"),
                (true, None) => "yes".to_owned(),
                (false, _) => "no".to_owned(),
            },
            endpoint.times_ejected.to_string(),
            endpoint.consecutive_5xx.to_string(),
            endpoint.consecutive_gateway_errors.to_string(),
            endpoint.idle_connections.to_string(),
            endpoint.h2_connections.to_string(),
        ]);
    }
    for line in table.render().lines() {
        out.push_str(&format!("    {line}\n"));
    }
}

fn uninstalled(answer: &api::Uninstalled) -> String {
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
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let mut table = Table::new(&["A", "LONGER", "LAST"]);
        table.row(vec!["wide cell".into(), "x".into(), "end".into()]);
        table.row(vec!["y".into(), "".into(), "".into()]);
        assert_eq!(
            table.render(),
            "A          LONGER  LAST\nwide cell  x       end\ny\n"
        );
    }

    #[test]
    fn iptables_status_shows_the_mode_and_each_pods_rules() {
        let body = api::Status {
            instance: "default".into(),
            capture_mode: CaptureMode::Iptables,
            pin_dir: None,
            cgroup: None,
            sockmap_shortcut: false,
            capture: serde_json::json!({
                "iptables": "iptables v1.8.9 (nf_tables)",
                "record_dir": "/run/shunt/default/iptables",
                "pods": [{
                    "netns_cookie": 4097,
                    "netns": "/run/netns/web",
                    "pod_ip": "10.0.0.1",
                    "rules": ["-A SHUNT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"],
                }],
                "errors": [],
            }),
            proxy: api::ProxyStatus::default(),
        };
        let out = status(body);
        for part in [
            "capture           iptables",
            "pin dir           -",
            "iptables v1.8.9 (nf_tables)",
            "4097          10.0.0.1  /run/netns/web  1",
            "  -A SHUNT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(out.contains(part), "{part:?} in:\n{out}");
        }
    }

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

    fn sample_clusters() -> serde_json::Value {
        serde_json::json!({
            "shop/web-1": {"clusters": {
                "outbound|8080||cart.shop.svc.cluster.local": {
                    "load_balancer": "RoundRobin",
                    "connections": 2,
                    "pending_requests": 1,
                    "active_requests": 3,
                    "active_retries": 0,
                    "endpoints": [
                        {"addr": "10.0.0.5:8080", "weight": 1, "active_requests": 3,
                         "ejected": false, "ejected_until": null, "times_ejected": 1,
                         "consecutive_5xx": 2, "consecutive_gateway_errors": 0,
                         "idle_connections": 1, "h2_connections": 0},
                        {"addr": "10.0.0.6:8080", "weight": 1, "active_requests": 0,
                         "ejected": true, "ejected_until": 12.34, "times_ejected": 2,
                         "consecutive_5xx": 0, "consecutive_gateway_errors": 0,
                         "idle_connections": 0, "h2_connections": 0},
                    ],
                },
                "outbound|80||10.1.2.3": {
                    "load_balancer": "RoundRobin",
                    "connections": 1,
                    "pending_requests": 0,
                    "active_requests": 0,
                    "active_retries": 0,
                    "endpoints": [],
                },
            }},
            "shop/idle": {"clusters": {}},
        })
    }

    #[test]
    fn clusters_render_per_pod_cluster_and_endpoint() {
        let pods: BTreeMap<String, ClustersDump> =
            serde_json::from_value(sample_clusters()).unwrap();
        assert_eq!(
            clusters(&pods),
            "shop/idle: no upstream cluster in use\n\
             shop/web-1: 2 upstream clusters\n\
             \x20 outbound|8080||cart.shop.svc.cluster.local\n\
             \x20   load balancer RoundRobin; 2 connections; requests: 1 pending, 3 active, 0 retrying\n\
             \x20   ENDPOINT       WEIGHT  ACTIVE  EJECTED          TIMES EJECTED  5XX IN A ROW  GATEWAY ERRORS IN A ROW  IDLE CONNS  H2 CONNS\n\
             \x20   10.0.0.5:8080  1       3       no               1              2             0                        1           0\n\
             \x20   10.0.0.6:8080  1       0       yes, 12.3s left  2              0             0                        0           0\n\
             \x20 outbound|80||10.1.2.3\n\
             \x20   load balancer RoundRobin; 1 connection; requests: 0 pending, 0 active, 0 retrying\n\
             \x20   no endpoint\n"
        );
        assert_eq!(clusters(&BTreeMap::new()), "the proxy serves no pod\n");
    }

    #[test]
    fn a_pod_filter_keeps_that_pod_or_names_the_pods_served() {
        let addr: SocketAddr = "127.0.0.1:15020".parse().unwrap();
        for (pod, expected) in [
            (None, Ok(vec!["shop/idle", "shop/web-1"])),
            (Some("shop/web-1"), Ok(vec!["shop/web-1"])),
            (
                Some("shop/web-2"),
                Err(
                    "the proxy at 127.0.0.1:15020 does not serve pod shop/web-2 \
                     (serves: shop/idle, shop/web-1)",
                ),
            ),
        ] {
            let selected = select_pod(sample_clusters(), pod, addr)
                .map(|pods| pods.keys().cloned().collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            assert_eq!(
                selected,
                expected
                    .map(|pods| pods.into_iter().map(str::to_owned).collect())
                    .map_err(str::to_owned),
                "{pod:?}"
            );
        }
        let error = select_pod(serde_json::json!({}), Some("shop/web-1"), addr).unwrap_err();
        assert!(error.to_string().ends_with("(serves: none)"), "{error}");
    }

    #[tokio::test]
    async fn clusters_are_fetched_over_http_and_a_missing_proxy_names_the_flag() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                request.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"shop/idle":{"clusters":{}}}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let body = fetch_clusters(addr).await.unwrap();
        assert_eq!(body, serde_json::json!({"shop/idle": {"clusters": {}}}));
        let request = served.await.unwrap();
        assert!(
            request.starts_with("GET /debug/clusters HTTP/1.1\r\n"),
            "{request}"
        );

        // Nothing listens there any more.
        let error = fetch_clusters(addr).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "no proxy at {addr} (Connection refused (os error 111)): is shunt-proxy \
                 running with --metrics-addr {addr}?"
            )
        );
    }

    #[test]
    fn workloads_show_dashes_for_what_is_unknown() {
        let table = workloads(&[api::Workload {
            namespace: "shop".into(),
            name: "cart".into(),
            uid: "shop/cart".into(),
            ip: None,
            captured: false,
            reason: "not opted in".into(),
            netns: None,
            netns_cookie: None,
            proxy: "n/a".into(),
        }]);
        assert_eq!(
            table,
            "NAMESPACE  NAME  IP  CAPTURED  NETNS-COOKIE  PROXY  REASON\n\
             shop       cart  -   no        -             n/a    not opted in\n"
        );
    }
}
