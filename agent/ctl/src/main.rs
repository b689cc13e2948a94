//! `shuntctl`: the node-level debugging CLI, a client of the agent's admin socket (and, for
//! `clusters`, `certs`, `flows` and `top`, of the proxy's metrics endpoint); the installer (`install`,
//! `profile`), and the node's `precheck`.
#![deny(unsafe_code)]

mod certs;
mod clusters;
mod config;
mod flows;
mod flows_filter;
mod install;
mod maps;
mod output;
mod policies;
mod precheck;
mod profile;
mod proxy_client;
mod routes;
mod status;
mod table;
mod top;
mod uninstall;
mod workloads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shunt_api::admin::ExplainRequest;
use shunt_api::run_dir::{DEFAULT_INSTANCE, RunDir};

use crate::output::OutputFlag;
use shunt_api::admin_client::AdminClient;

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
    /// Output format [default: table; compact for flows].
    #[arg(short, long, global = true, value_enum)]
    output: Option<OutputFlag>,
    #[command(subcommand)]
    command: Command,
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
    /// One pod's effective security policies: PeerAuthentication per port,
    /// RequestAuthentication, and AuthorizationPolicy in evaluation order (CUSTOM, DENY,
    /// ALLOW, AUDIT), as the proxy compiles them.
    Policies {
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
        /// The peer the destination's AuthorizationPolicies see: `none` (plaintext) or a
        /// principal (cluster.local/ns/NS/sa/SA) [default: the sending pod's own identity].
        #[arg(long, value_name = "PRINCIPAL")]
        principal: Option<String>,
        /// The claims of a JWT to assume valid, as JSON (e.g. '{"iss":"https://idp","sub":"u1",
        /// "groups":["admins"]}'): its request principal is iss/sub.
        #[arg(long, value_name = "JSON", value_parser = parse_claims)]
        jwt_claims: Option<serde_json::Value>,
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
    /// The workload certificates the proxy holds, per identity: each certificate of the
    /// chain up to the root, its serial and validity, the leaf's next rotation, and the last
    /// fetch error. Read from the proxy's metrics endpoint (GET /debug/certs), not from the
    /// agent.
    Certs {
        /// The proxy's --metrics-addr.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15020")]
        proxy_addr: SocketAddr,
    },
    /// The proxy's connection and request events, as `hubble observe` shows flows: source ->
    /// destination workloads and services, type, verdict, and a summary (method, path, code,
    /// latency; or bytes, RTT, retransmits, duration). Read from the proxy's flow ring
    /// (GET /flows on its metrics endpoint).
    Flows(flows::FlowsArgs),
    /// The golden signals per workload, live, from two scrapes of the proxy's /metrics: rps,
    /// error rps (5xx), p50/p90/p99 latency, TCP bytes per second.
    Top(top::TopArgs),
    /// Detach and unpin everything of this instance; the agent then exits. With --cluster:
    /// delete what `shuntctl install` created in the cluster instead.
    Uninstall {
        /// Delete, in reverse order, the objects `shuntctl install` applies with the same
        /// --profile, -f and --set (the CRDs only with --purge). Each node's agent then
        /// removes its CNI config entries and capture as it stops.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: the CustomResourceDefinitions too, and with them every object of
        /// their kinds.
        #[arg(long, requires = "cluster")]
        purge: bool,
        #[command(flatten)]
        install: install::ClusterUninstallArgs,
    },
    /// shunt's manifests for a Kubernetes cluster, from a profile, values files and --set.
    Install(install::InstallArgs),
    /// The installer's profiles.
    Profile {
        #[command(subcommand)]
        command: profile::ProfileCommand,
    },
    /// Whether this node can run shunt: kernel, BTF, cgroup2, bpffs, CNI, and other programs
    /// or meshes that capture connections. Each finding says what to do.
    Precheck(precheck::PrecheckArgs),
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
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The whole chain, as the messages mostly leave their causes to `source`.
            eprintln!("shuntctl: {}", shunt_api::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// What to print.
async fn run(cli: Cli) -> anyhow::Result<String> {
    let Cli {
        instance,
        admin_socket,
        output,
        command,
    } = cli;
    let flag = output;
    let output = OutputFlag::plain(flag);
    // Built per command, as `clusters` and `certs` talk to the proxy only and need no instance.
    let agent = || admin_client(&instance, admin_socket.as_deref());
    match command {
        Command::Status => status::run(&agent()?, output).await,
        Command::Workloads => workloads::run(&agent()?, output).await,
        Command::Config {
            command: ConfigCommand::Dump,
        } => config::dump(&agent()?, output).await,
        Command::Maps {
            command: MapsCommand::Dump { name },
        } => maps::dump(&agent()?, &name, output).await,
        Command::Routes { pod } => routes::routes(&agent()?, &pod, output).await,
        Command::Policies { pod } => policies::policies(&agent()?, &pod, output).await,
        Command::Explain {
            from,
            url,
            headers,
            method,
            principal,
            jwt_claims,
        } => {
            let request = ExplainRequest {
                url,
                method,
                headers,
                principal,
                jwt_claims,
            };
            routes::explain(&agent()?, from, request, output).await
        }
        Command::Clusters { proxy_addr, pod } => {
            clusters::run(proxy_addr, pod.as_deref(), output).await
        }
        Command::Certs { proxy_addr } => certs::run(proxy_addr, output).await,
        Command::Flows(args) => {
            let format = match flag {
                None | Some(OutputFlag::Compact) => flows::Format::Compact,
                Some(OutputFlag::Table) => flows::Format::Table,
                Some(OutputFlag::Json) => flows::Format::Json,
            };
            flows::run(&args, format).await
        }
        Command::Top(args) => top::run(&args, output).await,
        Command::Uninstall {
            cluster: true,
            purge,
            install,
        } => install::uninstall(install, purge).await,
        Command::Uninstall { install, .. } => {
            if install.is_set() {
                anyhow::bail!(
                    "--profile, -f, --set, --kubeconfig and --context are for `shuntctl \
                     uninstall --cluster`; without it, uninstall is this node's, through the agent"
                );
            }
            uninstall::run(&agent()?, output).await
        }
        Command::Install(args) => install::run(args).await,
        Command::Profile { command } => profile::run(command, output),
        Command::Precheck(args) => precheck::run(&args, output),
    }
}

/// `--jwt-claims`: a JSON object.
fn parse_claims(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(claims @ serde_json::Value::Object(_)) => Ok(claims),
        Ok(_) => Err("the claims must be a JSON object".to_owned()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// The client of `--admin-socket`, or else of the instance's socket.
fn admin_client(instance: &str, socket: Option<&Path>) -> anyhow::Result<AdminClient> {
    Ok(match socket {
        Some(socket) => AdminClient::new(socket, None),
        None => AdminClient::new(
            &RunDir::for_instance(instance)?.admin_socket(),
            Some(instance),
        ),
    })
}
