//! Kernel TCP telemetry: the RTT, retransmits and losses of the sockets that carry flows
//! across the network, labelled by source and destination workload.
//!
//! A connection's upstream socket is watched by its cookie ([`TcpWatches::watch`]). While it
//! lasts, the connection samples `TCP_INFO` every [`SAMPLE_INTERVAL`] ([`TcpWatch::sample`]);
//! when it closes, `sock_ops` sends the socket's figures at `TCP_CLOSE` through the
//! `TCP_EVENTS` ring buffer ([`TcpWatches::on_event`]), which settles the counters. Without
//! the ring buffer (iptables capture) the connection's last `TCP_INFO` reading settles them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shunt_common::TcpEvent;
use shunt_mesh::model::Workload;

use super::Reporter;
use super::peer::Peer;
use crate::tcp_info::{Sample, TcpFigures};

/// How often a long-lived connection's `TCP_INFO` is read: Istio's TCP reporting interval.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a closed connection waits for its kernel event before its last `TCP_INFO`
/// reading settles it instead (the event was lost: the ring was full, or the agent's
/// programs were replaced).
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// RTT buckets, seconds: 10 µs (a veth between pods of a node) to 1 s.
const RTT_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The workloads at both ends of a flow, and which end this proxy reports for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
}

impl FlowLabels {
    #[must_use]
    pub fn new(
        reporter: Reporter,
        source: Option<&Workload>,
        destination: Option<&Workload>,
    ) -> Self {
        let (source, destination) = (Peer::new(source), Peer::new(destination));
        Self {
            reporter: reporter.as_str(),
            source_workload: source.workload().to_owned(),
            source_workload_namespace: source.namespace().to_owned(),
            destination_workload: destination.workload().to_owned(),
            destination_workload_namespace: destination.namespace().to_owned(),
        }
    }
}

/// A watched socket's labels and what of it has been counted.
struct Pending {
    labels: FlowLabels,
    /// Retransmits already counted (by samples).
    counted_retransmits: u32,
    /// Closed by the proxy, waiting for its event: since when, and its last reading.
    closed: Option<(Instant, TcpFigures)>,
}

/// The metrics and the watched sockets.
pub struct TcpWatches {
    rtt: Family<FlowLabels, Histogram>,
    retransmits: Family<FlowLabels, Counter>,
    lost: Family<FlowLabels, Counter>,
    unmatched: Counter,
    /// Whether the agent's ring buffer is being read: then the kernel's event settles a
    /// closed connection.
    kernel_events: AtomicBool,
    pending: Mutex<HashMap<u64, Pending>>,
}

impl TcpWatches {
    /// The metrics, registered in `registry`: `shunt_tcp_rtt_seconds`,
    /// `shunt_tcp_retransmits_total`, `shunt_tcp_lost_packets_total` (each by reporter and
    /// both workloads) and `shunt_tcp_events_unmatched_total`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let watches = Self {
            rtt: Family::new_with_constructor(|| Histogram::new(RTT_BUCKETS)),
            retransmits: Family::default(),
            lost: Family::default(),
            unmatched: Counter::default(),
            kernel_events: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
        };
        registry.register(
            "shunt_tcp_rtt_seconds",
            "Smoothed RTT of the TCP connections carrying flows across the network, from the \
             kernel: every 5 s while a connection lasts and once when it closes",
            watches.rtt.clone(),
        );
        registry.register(
            "shunt_tcp_retransmits",
            "TCP segments retransmitted on the connections carrying flows across the network",
            watches.retransmits.clone(),
        );
        registry.register(
            "shunt_tcp_lost_packets",
            "TCP segments presumed lost (lost_out) when a connection carrying a flow across the \
             network closed",
            watches.lost.clone(),
        );
        registry.register(
            "shunt_tcp_events_unmatched",
            "Kernel TCP events for sockets this proxy was not watching (another proxy's, or \
             closed before they were watched)",
            watches.unmatched.clone(),
        );
        watches
    }

    /// The agent's ring buffer is read (or no longer): closed connections wait for their
    /// kernel event.
    pub fn set_kernel_events(&self, on: bool) {
        self.kernel_events.store(on, Ordering::Relaxed);
    }

    /// Watches the socket with this cookie until it closes.
    #[must_use]
    pub fn watch(self: &Arc<Self>, cookie: u64, labels: FlowLabels) -> TcpWatch {
        self.lock().insert(
            cookie,
            Pending {
                labels,
                counted_retransmits: 0,
                closed: None,
            },
        );
        TcpWatch {
            watches: Arc::clone(self),
            cookie,
        }
    }

    /// A socket's figures at `TCP_CLOSE`, from the ring buffer.
    pub fn on_event(&self, event: &TcpEvent) {
        let pending = self.lock().remove(&event.socket_cookie);
        match pending {
            Some(pending) => self.settle(&pending, TcpFigures::of_event(event)),
            None => {
                self.unmatched.inc();
            }
        }
        self.expire(Instant::now());
    }

    /// Counts a closed connection's last figures.
    fn settle(&self, pending: &Pending, last: TcpFigures) {
        self.rtt
            .get_or_create(&pending.labels)
            .observe(seconds(last.rtt_us));
        self.retransmits
            .get_or_create(&pending.labels)
            .inc_by(u64::from(
                last.retransmits.saturating_sub(pending.counted_retransmits),
            ));
        self.lost
            .get_or_create(&pending.labels)
            .inc_by(u64::from(last.lost));
    }

    /// Closed connections whose event never came are settled with their last reading.
    fn expire(&self, now: Instant) {
        let expired: Vec<(Pending, TcpFigures)> = {
            let mut pending = self.lock();
            let cookies: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.closed.is_some_and(|(at, _)| now - at >= EVENT_WAIT))
                .map(|(cookie, _)| *cookie)
                .collect();
            cookies
                .into_iter()
                .filter_map(|cookie| pending.remove(&cookie))
                .filter_map(|p| p.closed.map(|(_, last)| (p, last)))
                .collect()
        };
        for (pending, last) in expired {
            self.settle(&pending, last);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn seconds(us: u32) -> f64 {
    f64::from(us) / 1e6
}

/// One watched socket, held by its connection.
pub struct TcpWatch {
    watches: Arc<TcpWatches>,
    cookie: u64,
}

impl TcpWatch {
    /// A `TCP_INFO` reading while the connection lasts: its RTT is observed and its new
    /// retransmits counted.
    pub fn sample(&self, sample: &Sample) {
        let mut pending = self.watches.lock();
        let Some(entry) = pending.get_mut(&self.cookie) else {
            return;
        };
        let labels = entry.labels.clone();
        let new = sample
            .figures
            .retransmits
            .saturating_sub(entry.counted_retransmits);
        entry.counted_retransmits = entry.counted_retransmits.max(sample.figures.retransmits);
        drop(pending);
        self.watches
            .rtt
            .get_or_create(&labels)
            .observe(seconds(sample.figures.rtt_us));
        self.watches
            .retransmits
            .get_or_create(&labels)
            .inc_by(u64::from(new));
    }

    /// The connection is over and `last` is its final `TCP_INFO` reading: the kernel's event
    /// settles it, or `last` does when there is no event to wait for.
    pub fn finish(self, last: Option<Sample>) {
        let now = Instant::now();
        let kernel = self.watches.kernel_events.load(Ordering::Relaxed);
        let settle_now = {
            let mut pending = self.watches.lock();
            match (kernel, last) {
                (true, Some(last)) => {
                    if let Some(entry) = pending.get_mut(&self.cookie) {
                        entry.closed = Some((now, last.figures));
                    }
                    None
                }
                // No event will come, or nothing to fall back on: settle with what there is.
                (false, Some(last)) => pending
                    .remove(&self.cookie)
                    .map(|entry| (entry, last.figures)),
                // Unreadable at the end: the kernel's event alone can settle it.
                (true, None) => {
                    if let Some(entry) = pending.get_mut(&self.cookie) {
                        entry.closed = Some((now, TcpFigures::default()));
                    }
                    None
                }
                // Nothing more will be known of it than its samples counted.
                (false, None) => {
                    pending.remove(&self.cookie);
                    None
                }
            }
        };
        if let Some((entry, last)) = settle_now {
            self.watches.settle(&entry, last);
        }
        self.watches.expire(now);
    }
}

#[cfg(test)]
mod tests;
