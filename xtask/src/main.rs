//! `cargo xtask`: setup, build-ebpf, build, test, image, kernel-matrix, layers, demo, bench,
//! render-deploy.
//!
//! xtask itself builds on whatever toolchain is the machine's default; every step that needs
//! the pinned toolchains names them (`cargo +1.99.0`, `cargo +nightly-2026-06-20`), after
//! `setup` has installed them. Steps that need root use sudo only when we are not root.
#![forbid(unsafe_code)]

mod bench;
mod build;
mod cmd;
mod demo;
mod image;
mod kernel_matrix;
mod layers;
mod render_deploy;
mod test;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "shunt's build, setup, test and demo tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: apt packages, the pinned toolchains, bpf-linker.
    Setup,
    /// Build the eBPF programs (target/ebpf/bpfel-unknown-none/release/shunt-ebpf).
    BuildEbpf,
    /// setup + build-ebpf + build every user-space binary with the eBPF object embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// setup + build + format and lint checks + unit and privileged end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
    /// setup + build, then the privileged test binaries under Debian's own kernels in qemu:
    /// a table of kernel × test binary (passed, failed, skipped) with each kernel's probe.
    KernelMatrix {
        /// Which kernel family: 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only these test binaries (e.g. `capture,e2e`); default: every privileged one.
        #[arg(long, value_delimiter = ',')]
        tests: Vec<String>,
        /// A guest still running after this long is killed and reported as hung.
        #[arg(long, value_name = "MINUTES", default_value_t = kernel_matrix::DEFAULT_TIMEOUT.as_secs() / 60)]
        timeout_minutes: u64,
        /// Arguments for every test binary (a test name filter, `--exact`, ...).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// setup + build-ebpf, then the static (musl) binaries and the image `FROM scratch`
    /// (`localhost/shunt:<version>`, Dockerfile) with podman, offline.
    Image {
        #[arg(long)]
        release: bool,
        /// Also run each binary of the image with `--version` (what `cargo xtask test` does).
        #[arg(long)]
        check: bool,
    },
    /// Fail on a module import cycle inside a crate, or a crate dependency that points up
    /// (the table is in xtask/src/layers.rs).
    Layers,
    /// Regenerate deploy/ (the kustomize base and overlays, deploy/shunt.yaml) with
    /// `shuntctl install --render`.
    RenderDeploy,
    /// setup + build, then a node of pods in network namespaces with shunt capturing their
    /// traffic; prints what the proxy saw and removes everything it made.
    Demo,
    /// The privileged half of `demo` (run as root by `demo`).
    #[command(hide = true)]
    DemoNode,
    /// setup + release build, then shunt measured against no proxy, iptables capture and
    /// HAProxy on one node, and across two nodes (HBONE) against no proxy, interleaved over
    /// repetitions; prints a markdown table, saves JSON in results/.
    Bench {
        /// A reduced run (fewer, shorter repetitions; 128 MiB bulk streams): under 5 minutes
        /// for S0–S4.
        #[arg(long)]
        quick: bool,
        /// Only the smoke run `cargo xtask test` does (debug build, every scenario once, tiny
        /// workloads, the table and JSON checked for shape; no timing judged).
        #[arg(long, conflicts_with_all = ["quick", "scenarios", "workloads"])]
        smoke: bool,
        /// Only these scenarios, S0 to S8 (e.g. `S2,S4`, `S5,S6` across nodes, `S2,S7`, or `S8`,
        /// the gateway against HAProxy, which runs only when named); the table marks the
        /// others as not selected.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Only these workloads: rr, crr, bulk, l7, idle (e.g. `l7`). For profiling and
        /// quick comparisons; a published table comes from a run of everything.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Only the Kubernetes source at scale (10k Services, 50k endpoints, 20k pods from the
        /// fake API server): the agent's RSS and the time to the first complete state, against
        /// their limits.
        #[arg(long, conflicts_with_all = ["quick", "smoke", "scenarios", "workloads"])]
        kube_scale: bool,
    },
    /// The privileged half of `bench` (run as root by `bench` and by `test`'s smoke step).
    #[command(hide = true)]
    BenchNode {
        #[arg(long)]
        plan: String,
        #[arg(long)]
        bin_dir: std::path::PathBuf,
        #[arg(long)]
        results_dir: std::path::PathBuf,
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => toolchain::setup(),
        Task::BuildEbpf => build::build_ebpf(),
        Task::Build { release } => {
            toolchain::setup()?;
            build::build_ebpf()?;
            build::build_user(release)
        }
        Task::Test { cargo_test_args } => test::run(&cargo_test_args),
        Task::Image { release, check } => {
            toolchain::setup()?;
            build::build_ebpf()?;
            image::build(release, check)
        }
        Task::KernelMatrix {
            kernel,
            tests,
            timeout_minutes,
            filter,
        } => {
            let (families, binaries) = kernel_matrix::Options::parse(&kernel, &tests)?;
            toolchain::setup()?;
            build::build_ebpf()?;
            build::build_user(false)?;
            kernel_matrix::run(&kernel_matrix::Options {
                families,
                binaries,
                filter,
                timeout: std::time::Duration::from_secs(timeout_minutes * 60),
                build: cmd::Privilege::User,
            })
        }
        Task::Layers => layers::run(),
        Task::RenderDeploy => render_deploy::run_task(),
        Task::Demo => demo::run(),
        Task::DemoNode => demo::run_node(),
        Task::Bench {
            kube_scale: true, ..
        } => bench::kube_scale::run_bench(),
        Task::Bench { smoke: true, .. } => {
            toolchain::setup()?;
            build::build_ebpf()?;
            build::build_user(false)?;
            bench::smoke()
        }
        Task::Bench {
            quick,
            scenarios,
            workloads,
            smoke: false,
            kube_scale: false,
        } => bench::run(quick, &bench::Selection::parse(&scenarios, &workloads)?),
        Task::BenchNode {
            plan,
            bin_dir,
            results_dir,
            scenarios,
            workloads,
        } => bench::run_node(
            &plan,
            &bin_dir,
            &results_dir,
            &bench::Selection::parse(&scenarios, &workloads)?,
        ),
    }
}
