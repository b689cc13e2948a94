//! `shunt-agent`: loads and pins the capture programs (or, with `--capture=iptables`, installs
//! nat rules in each pod's netns), reads the local config dir, and hands captured pods to the
//! proxy. `--uninstall` removes capture.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use shunt_agent::app::{self, Options, SourceOptions};
use shunt_agent::ca::{self, CaOptions};
use shunt_agent::capture::ebpf::{BpfLogLevel, CaptureOptions};
use shunt_agent::capture::{self, Installed};
use shunt_agent::cni_install::{self, CniInstall};
use shunt_agent::config::LoadOptions;
use shunt_agent::config::mesh_config::MeshBase;
use shunt_api::admin as api;
use shunt_api::admin_client::{self as client, AdminClient};
use shunt_api::capture::CaptureMode;
use shunt_api::k8s::NodeName;
use shunt_api::run_dir::{DEFAULT_INSTANCE, RunDir};
use shunt_mesh::routing::OutboundTrafficPolicy;

// The Kubernetes source rebuilds its snapshot from tens of thousands of small objects; glibc's
// per-thread arenas kept freed ones resident (an eighth of the agent's RSS at 10k pods in
// `cargo xtask bench --kube-scale`), mimalloc returns more of them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "shunt-agent", version, about)]
struct Cli {
    /// Where the config comes from: the Kubernetes API (watched), or local mode's --config-dir
    /// [default: local with --config-dir, else kube when KUBERNETES_SERVICE_HOST is set (in a
    /// pod), else local].
    #[arg(long, value_enum, value_name = "SOURCE")]
    source: Option<SourceKind>,
    /// Local mode: Kubernetes-style YAML (Namespaces, Pods, Services, Secrets, Istio kinds) in
    /// DIR, watched for changes.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// --source kube: the kubeconfig to use [default: the pod's service account in a
    /// cluster, else $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "FILE", conflicts_with = "config_dir")]
    kubeconfig: Option<PathBuf>,
    /// The node this agent runs on; required with --source kube (the downward API's
    /// spec.nodeName). One config dir may describe a whole mesh: the agent captures only the
    /// pods whose spec.nodeName is NAME, and in local mode a pod without spec.nodeName belongs
    /// to the agent's node, so a single-node config needs no node names
    /// [local mode's default: local].
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<NodeName>,
    /// Names this agent: its pins live in <bpffs>/shunt/NAME, its sockets in /run/shunt/NAME.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INSTANCE)]
    instance: String,
    /// Where control.sock and admin.sock live [default: /run/shunt/NAME].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The bpffs mount [default: found in /proc/mounts, else mounted at /sys/fs/bpf].
    #[arg(long, value_name = "DIR")]
    bpffs: Option<PathBuf>,
    /// How pod traffic reaches the proxy: eBPF programs at the socket layer, or Istio-style
    /// iptables REDIRECT rules in each pod's netns (for kernels without sk_lookup or
    /// cgroup-bpf; no eBPF is loaded).
    #[arg(long, value_enum, default_value_t = CaptureMode::Ebpf, conflicts_with = "uninstall")]
    capture: CaptureMode,
    /// The cgroup2 folder whose processes are captured [default: the cgroup2 mount root].
    #[arg(long, value_name = "DIR", conflicts_with = "uninstall")]
    cgroup: Option<PathBuf>,
    /// Turns on the sockmap/sk_msg shortcut for the app<->proxy hop. Off by default: while an
    /// app socket is in the sockhash, the kernel's sockmap receive path can fail a blocking
    /// read with EAGAIN (see ARCHITECTURE.md, "Same-netns shortcut").
    #[arg(long, conflicts_with = "uninstall")]
    sockmap_shortcut: bool,
    /// The mesh's outbound policy for destinations outside the registry (Services and
    /// ServiceEntries): pass them, or block them (502 for HTTP, a closed connection for TCP).
    /// Wins over outboundTrafficPolicy.mode in the ConfigMap istio-system/istio.
    #[arg(long, value_enum, value_name = "MODE", conflicts_with = "uninstall")]
    outbound_traffic_policy: Option<OutboundPolicy>,
    /// The mesh config (MeshConfig YAML, e.g. the installer's meshConfig values) under the
    /// ConfigMap istio-system/istio: that ConfigMap's data.mesh is merged over it field by
    /// field, and wins. Checked at start; read once.
    #[arg(long, value_name = "FILE", conflicts_with = "uninstall")]
    mesh_config: Option<PathBuf>,
    /// Runs the mesh's CA beside the agent: istiod's IstioCertificateService (gRPC over TLS)
    /// on ADDR (IP:PORT, or an IP for port 15012; e.g. 0.0.0.0:15012). One node's agent runs
    /// it. Its key is the Secret cacerts (Istio's plug-in CA: ca-cert.pem, ca-key.pem,
    /// root-cert.pem, optional cert-chain.pem) or istio-ca-secret of the root namespace, else
    /// a self-signed root kept in --ca-state-dir. A node's proxy authenticates with its node's
    /// token from the Secret shunt-node-tokens there (data: {<node name>: <token>}) and gets
    /// only the identities of the pods scheduled on its node.
    #[arg(long, value_name = "ADDR", value_parser = ca::parse_listen, conflicts_with = "uninstall")]
    ca_listen: Option<SocketAddr>,
    /// Where the CA keeps its self-signed root (self-signed/, mode 0600, never regenerated
    /// while it exists) and writes root-cert.pem, the roots the proxies trust
    /// [default: /var/lib/shunt/<instance>/ca].
    #[arg(long, value_name = "DIR", requires = "ca_listen")]
    ca_state_dir: Option<PathBuf>,
    /// Where the CA writes its trust bundle (its root, then every --ca-extra-root), for the
    /// proxies' --ca-root-cert [default: <ca-state-dir>/root-cert.pem].
    #[arg(long, value_name = "FILE", requires = "ca_listen")]
    ca_root_out: Option<PathBuf>,
    /// Another root the mesh trusts (PEM; root rotation: the next or the previous root).
    /// Repeatable.
    #[arg(long, value_name = "FILE", requires = "ca_listen")]
    ca_extra_root: Vec<PathBuf>,
    /// A DNS name for the CA's TLS certificate, beyond istiod.istio-system.svc (what the
    /// proxies' --ca-server-name must be). Repeatable.
    #[arg(long, value_name = "NAME", requires = "ca_listen")]
    ca_dns_name: Vec<String>,
    /// INSECURE, FOR LOCAL EXPERIMENTS ONLY: the CA issues ANY identity to ANY caller with a
    /// valid CSR, without a token or a node check. Never on a shared machine or in a cluster.
    #[arg(long, requires = "ca_listen")]
    ca_allow_unauthenticated: bool,
    /// Runs only the CA, for a cluster (shunt's `shunt-ca` Deployment): no capture, no BPF,
    /// no proxy control, no admin socket. Needs --source kube and --ca-listen. It watches
    /// every pod, the mesh config and the Secrets cacerts and istio-system's
    /// istio-ca-secret, authenticates each node proxy by a TokenReview of its projected
    /// service-account token (--ca-token-audience, --ca-trusted-node-account), and publishes
    /// the trust bundle to --ca-root-config-map.
    #[arg(long, requires = "ca_listen", conflicts_with_all = ["config_dir", "install_cni"])]
    ca_only: bool,
    /// --source kube: the audience the proxies' tokens must have (istiod's: istio-ca).
    #[arg(long, value_name = "AUDIENCE", requires = "ca_listen",
          default_value = ca::token_review::DEFAULT_AUDIENCE)]
    ca_token_audience: String,
    /// --source kube: a service account (NAMESPACE/NAME) whose pods' tokens name their node,
    /// as istiod's CA_TRUSTED_NODE_ACCOUNTS. Repeatable
    /// [default: <system-namespace>/shunt-proxy].
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "ca_listen",
          value_parser = ca::token_review::ServiceAccountRef::parse)]
    ca_trusted_node_account: Vec<ca::token_review::ServiceAccountRef>,
    /// --source kube: the ConfigMap in --system-namespace that gets the trust bundle as
    /// root-cert.pem, for the proxies to mount (none when not given).
    #[arg(long, value_name = "NAME", requires = "ca_listen")]
    ca_root_config_map: Option<String>,
    /// What the eBPF programs report to this log, with the pod each message concerns: refused
    /// direct connects to 15001/15006, full maps, original destinations not found, shortcut
    /// fallbacks. Off by default, and then free: each site costs the programs a map lookup
    /// and a branch. Applies to adopted programs too (the level is in the pinned SETTINGS).
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = BpfLogLevel::Off)]
    bpf_log: BpfLogLevel,
    /// Where netns discovery's /proc scan reads processes (in a pod: the host's /proc,
    /// mounted at e.g. /host/proc).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    proc_root: PathBuf,
    /// Chains the shunt-cni plugin after the node's primary CNI: copies it into
    /// --cni-bin-dir and appends it to the first config of --cni-conf-dir (a .conf becomes a
    /// .conflist), and keeps it there. With --uninstall: removes this instance's entry (and
    /// the binary when no other entry is left).
    #[arg(long)]
    install_cni: bool,
    /// Where the runtime finds CNI plugins (GKE: /home/kubernetes/bin).
    #[arg(long, value_name = "DIR", default_value = cni_install::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// Where the runtime reads CNI network configs.
    #[arg(long, value_name = "DIR", default_value = cni_install::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// The shunt-cni binary to install [default: shunt-cni beside this executable].
    #[arg(long, value_name = "FILE")]
    cni_plugin: Option<PathBuf>,
    /// shunt's own namespace: shunt-cni lets its pods start without asking the agent (the
    /// agent and proxy must start before anything can be captured). With --source kube, at
    /// SIGTERM the agent reads its DaemonSet shunt-agent there: gone or being deleted, it
    /// removes its CNI entries and capture as it stops; else (a rollout) they stay.
    #[arg(long, value_name = "NAMESPACE", default_value = cni_install::DEFAULT_SYSTEM_NAMESPACE)]
    system_namespace: String,
    /// How long shunt-cni's ADD waits for a captured pod's proxy listeners and capture.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    cni_timeout: u64,
    /// Log format; logs go to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Detach and unpin everything of this instance (through the running agent when there is
    /// one, which then exits), remove its sockets, and print what was removed.
    #[arg(long, conflicts_with = "config_dir")]
    uninstall: bool,
    /// Probe the kernel, print as JSON what `shuntctl status` shows of it and the first
    /// feature each way of running eBPF capture lacks, and exit. Changes nothing.
    #[arg(long, conflicts_with_all = ["config_dir", "uninstall"])]
    probe_kernel: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    Kube,
    Local,
}

impl SourceKind {
    /// Local mode when a config dir is given; else Kubernetes mode in a pod, where kubelet
    /// sets KUBERNETES_SERVICE_HOST.
    fn default_for(config_dir: Option<&PathBuf>) -> Self {
        match std::env::var_os("KUBERNETES_SERVICE_HOST") {
            Some(host) if !host.is_empty() && config_dir.is_none() => Self::Kube,
            _ => Self::Local,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutboundPolicy {
    AllowAny,
    RegistryOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    shunt_agent::allocator::purge_freed_memory_at_once();
    let thp = shunt_agent::allocator::disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(e) = thp {
        tracing::warn!(
            "cannot turn transparent huge pages off (prctl PR_SET_THP_DISABLE): {e}; the agent's RSS may be higher"
        );
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shunt-agent: {}", shunt_api::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.probe_kernel {
        let support = shunt_agent::capture::ebpf::kernel_support();
        println!(
            "{}",
            serde_json::to_string_pretty(&support).context("encoding the kernel probe")?
        );
        return Ok(());
    }
    let run_dir = match &cli.run_dir {
        Some(dir) => RunDir::new(dir),
        None => RunDir::for_instance(&cli.instance)?,
    };
    if cli.capture == CaptureMode::Iptables && cli.sockmap_shortcut {
        anyhow::bail!("--sockmap-shortcut is part of eBPF capture; it needs --capture=ebpf");
    }
    let capture = CaptureOptions {
        instance: cli.instance.clone(),
        bpffs: cli.bpffs.clone(),
        cgroup: cli.cgroup.clone(),
        sockmap_shortcut: cli.sockmap_shortcut,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cni = if cli.install_cni {
        let plugin = match cli.cni_plugin {
            Some(plugin) => plugin,
            None => std::env::current_exe()
                .context("finding shunt-cni beside this executable (or give --cni-plugin)")?
                .with_file_name(cni_install::PLUGIN_TYPE),
        };
        Some(CniInstall {
            bin_dir: cli.cni_bin_dir,
            conf_dir: cli.cni_conf_dir,
            plugin,
            agent_socket: std::path::absolute(run_dir.cni_socket())
                .context("making the CNI socket's path absolute")?,
            system_namespace: cli.system_namespace.clone(),
            timeout_seconds: cli.cni_timeout,
        })
    } else {
        None
    };
    if cli.uninstall {
        let installed = Installed {
            ebpf: capture,
            iptables_records: capture::iptables_records(run_dir.path()),
        };
        return runtime.block_on(uninstall(&installed, &run_dir, cni.as_ref()));
    }
    let (source, node_name) = match cli
        .source
        .unwrap_or_else(|| SourceKind::default_for(cli.config_dir.as_ref()))
    {
        SourceKind::Local => {
            if cli.kubeconfig.is_some() {
                anyhow::bail!("--kubeconfig is for --source kube; local mode reads --config-dir");
            }
            let Some(config_dir) = cli.config_dir else {
                anyhow::bail!(
                    "local mode needs --config-dir DIR (or --source kube, to read the \
                     Kubernetes API)"
                );
            };
            let node_name = cli.node_name.unwrap_or_default();
            (SourceOptions::Local { config_dir }, node_name)
        }
        SourceKind::Kube => {
            if cli.config_dir.is_some() {
                anyhow::bail!("--config-dir is local mode's; --source kube reads the API server");
            }
            let node_name = match cli.node_name {
                Some(node_name) => node_name,
                // The CA-only process runs on no node of its own: it captures nothing.
                None if cli.ca_only => NodeName::default(),
                None => anyhow::bail!(
                    "--source kube needs this node's name: give --node-name or set NODE_NAME \
                     (in a DaemonSet, from the downward API's spec.nodeName)"
                ),
            };
            (
                SourceOptions::Kube {
                    kubeconfig: cli.kubeconfig,
                },
                node_name,
            )
        }
    };
    if cli.ca_only && !matches!(source, SourceOptions::Kube { .. }) {
        anyhow::bail!("--ca-only is the CA of a cluster: it needs --source kube");
    }
    let review = ca::token_review::ReviewOptions {
        audience: cli.ca_token_audience,
        trusted: if cli.ca_trusted_node_account.is_empty() {
            vec![ca::token_review::ServiceAccountRef {
                namespace: cli.system_namespace.clone(),
                name: ca::token_review::PROXY_SERVICE_ACCOUNT.to_owned(),
            }]
        } else {
            cli.ca_trusted_node_account
        },
    };
    let root_config_map = cli
        .ca_root_config_map
        .map(|name| (cli.system_namespace.clone(), name));
    let ca_only = cli.ca_only;
    let options = Options {
        source,
        run_dir,
        capture_mode: cli.capture,
        capture,
        load: LoadOptions {
            outbound_traffic_policy: cli.outbound_traffic_policy.map(|mode| match mode {
                OutboundPolicy::AllowAny => OutboundTrafficPolicy::AllowAny,
                OutboundPolicy::RegistryOnly => OutboundTrafficPolicy::RegistryOnly,
            }),
            node_name,
            mesh_base: match &cli.mesh_config {
                Some(file) => Some(Arc::new(MeshBase::load(file)?)),
                None => None,
            },
        },
        ca_review: review,
        ca_root_config_map: root_config_map,
        ca: cli.ca_listen.map(|listen| {
            let state_dir = cli
                .ca_state_dir
                .unwrap_or_else(|| ca::default_state_dir(&cli.instance));
            CaOptions {
                root_out: cli.ca_root_out,
                extra_roots: cli.ca_extra_root,
                dns_names: cli.ca_dns_name,
                allow_unauthenticated: cli.ca_allow_unauthenticated,
                ..CaOptions::new(listen, state_dir)
            }
        }),
        bpf_log: cli.bpf_log,
        proc_root: cli.proc_root,
        cni,
        system_namespace: cli.system_namespace,
    };
    if ca_only {
        runtime.block_on(app::run_ca_only(options))?;
    } else {
        runtime.block_on(app::run(options))?;
    }
    Ok(())
}

/// Asks a running agent to uninstall (so it cannot re-create what is removed, and exits);
/// with no agent running, removes the pins and the recorded pods' iptables rules directly.
async fn uninstall(
    installed: &Installed,
    run_dir: &RunDir,
    cni: Option<&CniInstall>,
) -> anyhow::Result<()> {
    let instance = &installed.ebpf.instance;
    let agent = AdminClient::new(&run_dir.admin_socket(), Some(instance));
    let mut removed = match agent.post::<api::Uninstalled>("/uninstall").await {
        Ok(answer) => {
            println!("the running agent uninstalled capture and is stopping");
            answer.removed
        }
        Err(client::Error::NoAgent { .. }) => installed.uninstall()?,
        Err(e) => return Err(e.into()),
    };
    // The running agent removes its own entry as it stops; this covers an agent that is gone.
    if let Some(cni) = cni {
        removed.extend(
            cni_install::uninstall(&cni.bin_dir, &cni.conf_dir, &cni.agent_socket)
                .context("removing shunt-cni")?,
        );
    }
    removed.extend(run_dir.remove_sockets()?);
    if removed.is_empty() {
        println!("nothing to remove for instance {instance}");
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    // The programs' records (`--bpf-log`) come at the level they were asked for.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,shunt_agent::bpf_log=trace"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
