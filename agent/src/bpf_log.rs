//! `shunt-agent --bpf-log LEVEL`: the eBPF programs' aya-log records, forwarded to the agent's
//! own log (target `shunt_agent::bpf_log`) with the pod each concerns.
//!
//! The programs start each message with what it concerns, `netns=<cookie>` or
//! `pod_ip=<address>` (see `ebpf/programs/src/logs.rs`); the forwarder finds that pod among the
//! reconciler's workloads and adds it as the `pod` field (`namespace/name`, or `-` when no
//! captured pod of this node has it, e.g. one just removed).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pods::NodeView;

/// Turns the programs' records into the agent's log lines.
pub struct Forwarder {
    pods: watch::Receiver<NodeView>,
}

impl Forwarder {
    #[must_use]
    pub fn new(pods: watch::Receiver<NodeView>) -> Self {
        Self { pods }
    }

    /// `namespace/name` of the pod `message` names, if this node captures it.
    fn pod(&self, message: &str) -> Option<String> {
        let view = self.pods.borrow();
        let found = match Subject::of(message)? {
            Subject::Netns(cookie) => view
                .workloads
                .iter()
                .find(|w| w.netns_cookie == Some(cookie)),
            Subject::PodIp(ip) => view
                .workloads
                .iter()
                .find(|w| w.captured && w.netns_cookie.is_some() && w.ip == Some(ip)),
        };
        found.map(|w| format!("{}/{}", w.namespace, w.name))
    }
}

/// What a program's message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Netns(u64),
    PodIp(Ipv4Addr),
}

impl Subject {
    /// From the message's first word, `netns=<cookie>` or `pod_ip=<address>`.
    fn of(message: &str) -> Option<Self> {
        let first = message.split_whitespace().next()?;
        if let Some(cookie) = first.strip_prefix("netns=") {
            return cookie.parse().ok().map(Self::Netns);
        }
        first.strip_prefix("pod_ip=")?.parse().ok().map(Self::PodIp)
    }
}

impl log::Log for Forwarder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The programs only send what `--bpf-log` asked for.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let pod = self.pod(&message);
        let pod = pod.as_deref().unwrap_or("-");
        // The program's module, e.g. `shunt_ebpf::connect`.
        let program = record.module_path().unwrap_or_else(|| record.target());
        match record.level() {
            log::Level::Error => tracing::error!(program, pod, "{message}"),
            log::Level::Warn => tracing::warn!(program, pod, "{message}"),
            log::Level::Info => tracing::info!(program, pod, "{message}"),
            log::Level::Debug => tracing::debug!(program, pod, "{message}"),
            log::Level::Trace => tracing::trace!(program, pod, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the programs' log ring until `shutdown`, forwarding every record as it comes.
#[expect(
    unsafe_code,
    reason = "registers the ring buffer's descriptor with tokio"
)]
pub async fn forward(logger: EbpfLogger<Forwarder>, shutdown: CancellationToken) {
    let fd = logger.as_raw_fd();
    // SAFETY: the logger owns the ring buffer's map descriptor, and neither flushing nor
    // anything else closes or replaces it while the `AsyncFd` owns the logger.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!(
                fd,
                "cannot watch the programs' log ring, --bpf-log is off: {e}"
            );
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::error!("the programs' log ring failed, --bpf-log is off: {e}");
                    return;
                }
            },
        }
    }
    // What came in since the last wake.
    ring.get_mut().flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_api::admin::Workload;

    fn workload(name: &str, ip: [u8; 4], cookie: Option<u64>) -> Workload {
        Workload {
            namespace: "mesh".into(),
            name: name.into(),
            uid: format!("uid-{name}").as_str().into(),
            ip: Some(Ipv4Addr::from(ip)),
            node: None,
            captured: true,
            reason: "test".into(),
            netns: None,
            netns_cookie: cookie,
            proxy: "ready".into(),
        }
    }

    #[test]
    fn messages_name_their_pod_by_netns_or_address() {
        let view = NodeView {
            workloads: vec![
                workload("a", [10, 244, 0, 10], Some(4026532001)),
                workload("b", [10, 244, 0, 20], Some(4026532002)),
                // Another node's pod: never this node's programs' subject.
                workload("far", [10, 244, 1, 30], None),
            ],
            ..NodeView::default()
        };
        let (_tx, rx) = watch::channel(view);
        let forwarder = Forwarder::new(rx);
        let cases = [
            ("netns=4026532002 refused an app's connect", Some("mesh/b")),
            ("pod_ip=10.244.0.10 dropped a connection", Some("mesh/a")),
            ("pod_ip=10.244.1.30 dropped a connection", None),
            ("netns=1 no original destination", None),
            ("netns=x garbled", None),
            ("no subject at all", None),
            ("", None),
        ];
        for (message, want) in cases {
            assert_eq!(forwarder.pod(message).as_deref(), want, "{message:?}");
        }
    }
}
