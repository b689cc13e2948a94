//! `shunt-cni`: a chained CNI plugin (CNI spec 1.0; 0.3.x and 0.4.0 results read too). The
//! runtime runs it after the primary CNI for every pod sandbox:
//! - `ADD` asks the agent (`agentSocket`, the agent's `cni.sock`) whether the pod is
//!   captured; if it is, the agent captures it in `CNI_NETNS` and answers once the proxy
//!   listens there and capture is on. The plugin then prints `prevResult` as its result. If
//!   the agent cannot be reached, or the pod is not captured in time, ADD fails: the pod does
//!   not start uncaptured, and kubelet retries. Pods of `excludeNamespaces` (shunt's own,
//!   which must start before anything is captured) and sandboxes that are not Kubernetes
//!   pods pass through without asking.
//! - `DEL` tells the agent the sandbox is gone, and succeeds even when the agent is away (DEL
//!   must be idempotent).
//! - `CHECK` asks the agent whether the pod is still captured there.
//! - `VERSION` prints the versions it speaks.
#![forbid(unsafe_code)]

mod agent;
mod spec;

use std::io::Read as _;
use std::process::ExitCode;

use shunt_api::cni::{CniAnswer, CniCommand, CniRequest};

use spec::{CniError, Command, Invocation, PluginConfig, codes};

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let command = match Command::from_env(env("CNI_COMMAND").as_deref()) {
        Ok(command) => command,
        Err(e) => return fail(&e),
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(&CniError::new(
            codes::IO,
            format!("reading the network config from stdin: {e}"),
        ));
    }
    let outcome = match command {
        Command::Version => Ok(Some(spec::version_info())),
        Command::Cni(command) => run(command, &stdin, &env),
    };
    match outcome {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error as the spec wants it (JSON on stdout) and a line for the runtime's log.
fn fail(error: &CniError) -> ExitCode {
    eprintln!("shunt-cni: {}", error.msg);
    println!("{}", error.to_json());
    ExitCode::FAILURE
}

fn run(
    command: CniCommand,
    stdin: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, CniError> {
    let config = PluginConfig::parse(stdin)?;
    let invocation = Invocation::from_env(command, env)?;
    let Some(pod) = invocation.pod.clone() else {
        // Not a Kubernetes pod (no K8S_POD_NAMESPACE/NAME): nothing shunt captures.
        return pass_through(command, &config);
    };
    if config.exclude_namespaces.contains(&pod.namespace) {
        return pass_through(command, &config);
    }
    let request = CniRequest {
        command,
        container_id: invocation.container_id.clone(),
        netns: invocation.netns.clone(),
        pod,
        ips: config.prev_result_ips(),
        timeout_ms: config.timeout_seconds.saturating_mul(1000),
    };
    let answer = agent::ask(&config, &request);
    match (command, answer) {
        (CniCommand::Add, Ok(CniAnswer::Captured { detail })) => {
            eprintln!("shunt-cni: {detail}");
            pass_through(command, &config)
        }
        (CniCommand::Add | CniCommand::Check, Ok(CniAnswer::NotCaptured { .. })) => {
            pass_through(command, &config)
        }
        (CniCommand::Check, Ok(CniAnswer::Captured { .. })) => Ok(None),
        (CniCommand::Del, _) => Ok(None),
        (_, Ok(CniAnswer::Failed { error })) => Err(CniError::new(codes::TRY_AGAIN, error)),
        (_, Ok(other)) => Err(CniError::new(
            codes::PLUGIN,
            format!("the agent answered {other:?} to {command:?}"),
        )),
        (_, Err(e)) => Err(e),
    }
}

/// ADD prints `prevResult` back (a chained plugin that changes nothing); DEL and CHECK print
/// nothing.
fn pass_through(command: CniCommand, config: &PluginConfig) -> Result<Option<String>, CniError> {
    match command {
        CniCommand::Add => config.result().map(Some),
        CniCommand::Del | CniCommand::Check => Ok(None),
    }
}
