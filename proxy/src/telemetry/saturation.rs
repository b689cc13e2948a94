//! Saturation, computed at each scrape: the process's descriptors, memory and CPU (the
//! `process_*` names every Prometheus client uses), the tokio runtime's stable gauges, each
//! listener's connections against `--max-connections-per-listener`, and
//! `shunt_saturation_ratio`, the largest of the ratios, for one alert.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path} (is /proc mounted in the proxy's mount namespace?): {source}")]
    Proc {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path} has no {field} (an unexpected kernel format)")]
    Field {
        path: &'static str,
        field: &'static str,
    },
    #[error("cannot read the process's resource usage (getrusage): {0}")]
    Rusage(#[source] nix::Error),
}

/// One process's descriptors, memory and CPU, from `/proc/self` and `getrusage`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None`: unlimited.
    pub max_fds: Option<u64>,
    pub resident_memory_bytes: u64,
    /// User plus system time.
    pub cpu_seconds: f64,
}

impl ProcessStats {
    /// The calling process's.
    pub fn read() -> Result<Self, Error> {
        const FD: &str = "/proc/self/fd";
        const STATUS: &str = "/proc/self/status";
        let proc = |path: &'static str| move |source| Error::Proc { path, source };
        // The directory's own descriptor is counted too, as other clients count it.
        let open_fds = std::fs::read_dir(FD).map_err(proc(FD))?.count() as u64;
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(Error::Rusage)?;
        let max_fds = (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft);
        let status = std::fs::read_to_string(STATUS).map_err(proc(STATUS))?;
        let resident_memory_bytes = vm_rss_bytes(&status).ok_or(Error::Field {
            path: STATUS,
            field: "VmRSS",
        })?;
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_err(Error::Rusage)?;
        let seconds = |t: nix::sys::time::TimeVal| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "CPU seconds stay far below 2^53"
            )]
            let whole = t.tv_sec() as f64;
            whole + f64::from(u32::try_from(t.tv_usec()).unwrap_or(0)) / 1e6
        };
        Ok(Self {
            open_fds,
            max_fds,
            resident_memory_bytes,
            cpu_seconds: seconds(usage.user_time()) + seconds(usage.system_time()),
        })
    }
}

/// `VmRSS:  1234 kB` of `/proc/<pid>/status`, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

/// The connections one listener holds, and its limit.
#[derive(Debug)]
pub struct ListenerLoad {
    name: &'static str,
    limit: Option<usize>,
    held: AtomicUsize,
}

/// One of a listener's connections, held until dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<ListenerLoad>);

impl ListenerLoad {
    #[must_use]
    pub fn new(name: &'static str, limit: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            name,
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// A slot for one more connection, unless the limit is held.
    #[must_use]
    pub fn take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let held = self.held.fetch_add(1, Ordering::AcqRel);
        if self.limit.is_some_and(|max| held >= max) {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }

    #[must_use]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every live listener (one per pod and kind), forgotten once its accept loop drops it.
#[derive(Debug, Default)]
pub struct Listeners(Mutex<Vec<Weak<ListenerLoad>>>);

impl Listeners {
    /// A new listener's count, reported until it is dropped.
    pub fn track(&self, name: &'static str, limit: Option<usize>) -> Arc<ListenerLoad> {
        let load = ListenerLoad::new(name, limit);
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|l| l.strong_count() > 0);
        all.push(Arc::downgrade(&load));
        load
    }

    /// Per listener name, in order: (connections held by all of them, the limit, the fullest
    /// one's held/limit).
    fn by_name(&self) -> Vec<(&'static str, usize, Option<usize>, f64)> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|l| l.strong_count() > 0);
        let mut out: Vec<(&'static str, usize, Option<usize>, f64)> = Vec::new();
        for load in all.iter().filter_map(Weak::upgrade) {
            let held = load.held();
            let ratio = load.limit.map_or(0.0, |limit| ratio(held, limit));
            match out.iter_mut().find(|(name, ..)| *name == load.name) {
                Some(entry) => {
                    entry.1 += held;
                    entry.3 = entry.3.max(ratio);
                }
                None => out.push((load.name, held, load.limit, ratio)),
            }
        }
        out.sort_by_key(|(name, ..)| *name);
        out
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts far below 2^53; a ratio needs no more"
)]
fn ratio(used: usize, limit: usize) -> f64 {
    if limit == 0 {
        return 1.0;
    }
    used as f64 / limit as f64
}

/// The scrape-time collector registered in the proxy's registry.
#[derive(Debug)]
pub struct Saturation {
    /// The runtime the proxy serves on; `None` outside one (unit tests of the registry).
    runtime: Option<tokio::runtime::Handle>,
    pub listeners: Arc<Listeners>,
}

impl Saturation {
    /// Reports on the current tokio runtime, if any.
    #[must_use]
    pub fn new(listeners: Arc<Listeners>) -> Self {
        Self {
            runtime: tokio::runtime::Handle::try_current().ok(),
            listeners,
        }
    }
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Saturation {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut worst = 0.0_f64;
        // A failed read leaves its series out of this scrape rather than failing the scrape.
        match ProcessStats::read() {
            Ok(process) => {
                let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                gauge(
                    &mut encoder,
                    "process_open_fds",
                    "Number of open file descriptors.",
                    to_i64(process.open_fds),
                )?;
                if let Some(max) = process.max_fds {
                    gauge(
                        &mut encoder,
                        "process_max_fds",
                        "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
                        to_i64(max),
                    )?;
                    worst = worst.max(ratio(
                        usize::try_from(process.open_fds).unwrap_or(usize::MAX),
                        usize::try_from(max).unwrap_or(usize::MAX),
                    ));
                }
                gauge(
                    &mut encoder,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    to_i64(process.resident_memory_bytes),
                )?;
                let cpu = ConstCounter::new(process.cpu_seconds);
                cpu.encode(encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    None,
                    cpu.metric_type(),
                )?)?;
            }
            Err(error) => tracing::warn!(%error, "metrics: process statistics left out"),
        }
        if let Some(runtime) = &self.runtime {
            let m = runtime.metrics();
            let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                "shunt_tokio_workers",
                "Worker threads of the proxy's tokio runtime.",
                to_i64(m.num_workers()),
            )?;
            gauge(
                &mut encoder,
                "shunt_tokio_alive_tasks",
                "Tasks alive in the proxy's tokio runtime.",
                to_i64(m.num_alive_tasks()),
            )?;
            gauge(
                &mut encoder,
                "shunt_tokio_global_queue_depth",
                "Tasks waiting in the tokio runtime's global (injection) queue.",
                to_i64(m.global_queue_depth()),
            )?;
            let busy = ConstCounter::new(0.0_f64).metric_type();
            let mut family = encoder.encode_descriptor(
                "shunt_tokio_worker_busy_seconds",
                "Time each tokio worker thread has spent busy (not parked), in seconds.",
                None,
                busy,
            )?;
            for worker in 0..m.num_workers() {
                let seconds = m.worker_total_busy_duration(worker).as_secs_f64();
                let labels = [("worker", worker.to_string())];
                ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
            }
        }
        let listeners = self.listeners.by_name();
        {
            let mut held = encoder.encode_descriptor(
                "shunt_listener_connections",
                "Connections the proxy's listeners hold, summed over pods, per listener kind.",
                None,
                ConstGauge::new(0_i64).metric_type(),
            )?;
            for (name, count, ..) in &listeners {
                let labels = [("listener", *name)];
                ConstGauge::new(i64::try_from(*count).unwrap_or(i64::MAX))
                    .encode(held.encode_family(&labels)?)?;
            }
        }
        {
            let mut fullest = encoder.encode_descriptor(
                "shunt_listener_connections_ratio",
                "The fullest listener of each kind: its connections over \
                 --max-connections-per-listener (absent when unlimited).",
                None,
                ConstGauge::new(0.0_f64).metric_type(),
            )?;
            for (name, _, limit, fill) in &listeners {
                if limit.is_some() {
                    let labels = [("listener", *name)];
                    ConstGauge::new(*fill).encode(fullest.encode_family(&labels)?)?;
                    worst = worst.max(*fill);
                }
            }
        }
        gauge(
            &mut encoder,
            "shunt_saturation_ratio",
            "The largest of the proxy's saturation ratios (open descriptors over their limit, \
             each listener's connections over their limit); alert well below 1.",
            worst,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        for (status, want) in [
            (
                "Name:\tx\nVmRSS:\t    1234 kB\nVmData: 1 kB\n",
                Some(1234 * 1024),
            ),
            ("VmRSS: 0 kB\n", Some(0)),
            ("Name: kernel thread\n", None),
            ("VmRSS: many kB\n", None),
            ("VmRSS: 12 MB\n", None),
        ] {
            assert_eq!(vm_rss_bytes(status), want, "{status:?}");
        }
    }

    #[test]
    fn this_process_is_measured() {
        let before = ProcessStats::read().unwrap();
        // Other tests of this binary open and close files meanwhile, so only a floor is
        // certain: the five files held open here.
        let extra: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let after = ProcessStats::read().unwrap();
        assert!(after.open_fds >= 5, "{after:?}");
        assert!(
            after.max_fds.is_some_and(|max| max >= after.open_fds),
            "{after:?}"
        );
        drop(extra);
        assert!(after.resident_memory_bytes > 1024 * 1024, "{after:?}");
        assert!(after.max_fds.is_none_or(|max| max >= after.open_fds));
        assert!(after.cpu_seconds >= before.cpu_seconds);
    }

    #[test]
    fn a_listener_holds_at_most_its_connection_limit() {
        let listeners = Listeners::default();
        let count = listeners.track("inbound", Some(2));
        let first = count.take().expect("room for the first");
        let second = count.take().expect("room for the second");
        assert!(count.take().is_none(), "the third is over the limit");
        drop(first);
        let third = count.take().expect("a closed connection frees its slot");
        assert!(count.take().is_none());
        let unlimited = listeners.track("outbound", None);
        let many: Vec<_> = (0..10).map(|_| unlimited.take()).collect();
        assert!(many.iter().all(Option::is_some));
        assert_eq!(
            listeners.by_name(),
            [("inbound", 2, Some(2), 1.0), ("outbound", 10, None, 0.0)]
        );
        drop((second, third, many));
        assert_eq!(count.held(), 0);
        drop(unlimited);
        assert_eq!(listeners.by_name(), [("inbound", 0, Some(2), 0.0)]);
    }

    /// Two pods' listeners of one kind: their sum, and the fuller one's ratio.
    #[test]
    fn listeners_of_a_kind_report_their_sum_and_the_fullest() {
        let listeners = Listeners::default();
        let (a, b) = (
            listeners.track("inbound", Some(4)),
            listeners.track("inbound", Some(4)),
        );
        let held: Vec<_> = [&a, &a, &a, &b].iter().map(|l| l.take()).collect();
        assert_eq!(listeners.by_name(), [("inbound", 4, Some(4), 0.75)]);
        drop(held);
    }
}
