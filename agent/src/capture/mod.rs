//! The loaded capture — eBPF or iptables, see [`CaptureMode`] — shared by the reconciler (pod
//! entries) and the admin API (status, map dumps, uninstall) until it is uninstalled.

pub mod ebpf;
pub mod iptables;

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use shunt_api::control::InboundBind;

use ebpf::{CaptureOptions, EbpfCapture, PodCapture};
use iptables::IptablesCapture;
use shunt_api::capture::CaptureMode;

use crate::proxy_cgroup::CgroupRequirement;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("capture was uninstalled; the agent is stopping")]
    Uninstalled,
    #[error(transparent)]
    Ebpf(#[from] ebpf::Error),
    #[error(transparent)]
    Iptables(#[from] iptables::Error),
    #[error(
        "this instance still has {installed} capture installed ({}); adding {wanted} capture \
         would capture its pods twice — remove it first with `shunt-agent --uninstall` (same \
         --instance and --run-dir)",
        at.display()
    )]
    OtherModeInstalled {
        wanted: &'static str,
        installed: &'static str,
        at: PathBuf,
    },
    #[error(
        "no map {name:?}: this agent captures with iptables and loads no eBPF; `shuntctl \
         status` lists the rules of each pod"
    )]
    NoMaps { name: String },
}

/// The loaded capture.
pub enum Backend {
    /// Boxed: the loaded object is large, and the mode never changes while the agent runs.
    Ebpf(Box<EbpfCapture>),
    Iptables(IptablesCapture),
}

impl Backend {
    /// Turns capture on for a pod; called again for a pod already captured, it updates the
    /// pod in place.
    pub fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.add_pod(pod)?),
            Self::Iptables(capture) => Ok(capture.add_pod(pod)?),
        }
    }

    /// Hands the proxy's inbound listener to `sk_lookup`. REDIRECT needs no descriptor: the
    /// listener is found by its address, so iptables capture ignores it.
    pub fn set_inbound_listener(
        &mut self,
        pod_ip: Ipv4Addr,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.set_inbound_listener(pod_ip, listener)?),
            Self::Iptables(_) => Ok(()),
        }
    }

    pub fn remove_pod(&mut self, netns_cookie: u64, pod_ip: Option<Ipv4Addr>) -> Result<(), Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.remove_pod(netns_cookie, pod_ip)?),
            Self::Iptables(capture) => Ok(capture.remove_pod(netns_cookie)?),
        }
    }

    /// Netns cookies that have capture state, from an earlier run of the agent or this one.
    pub fn captured_netns(&self) -> Result<Vec<u64>, Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.captured_netns()),
            Self::Iptables(capture) => Ok(capture.captured_netns()?),
        }
    }

    /// The splice maps for the proxy: eBPF capture with the shortcut on has them.
    pub fn splice_maps(&self) -> Result<Option<Vec<std::os::fd::OwnedFd>>, Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.splice_maps()?),
            Self::Iptables(_) => Ok(None),
        }
    }

    /// The ring buffer of closed connections' TCP figures, for the proxy: eBPF capture has it.
    pub fn tcp_events(&self) -> Result<Option<std::os::fd::OwnedFd>, Error> {
        match self {
            Self::Ebpf(capture) => Ok(Some(capture.tcp_events()?)),
            Self::Iptables(_) => Ok(None),
        }
    }

    /// A map's entries as JSON.
    pub fn dump_map(&self, name: &str) -> Result<serde_json::Value, Error> {
        match self {
            Self::Ebpf(capture) => Ok(capture.dump_map(name)?),
            Self::Iptables(_) => Err(Error::NoMaps {
                name: name.to_owned(),
            }),
        }
    }
}

/// What the agent installed and where: enough to uninstall it, with or without an agent.
#[derive(Clone, Debug)]
pub struct Installed {
    pub ebpf: CaptureOptions,
    /// The iptables pod records (`<run-dir>/iptables`).
    pub iptables_records: PathBuf,
}

impl Installed {
    /// Removes everything of the instance, whatever the mode it ran in: eBPF pins, and the
    /// iptables rules of every recorded pod. Returns what was removed.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = EbpfCapture::uninstall(&self.ebpf)?;
        removed.extend(IptablesCapture::uninstall(&self.iptables_records)?);
        Ok(removed)
    }
}

#[derive(Clone)]
pub struct Capture {
    mode: CaptureMode,
    /// `None` once uninstalled, so that nothing re-creates a pin or a rule after `uninstall`
    /// removed them.
    inner: Arc<Mutex<Option<Backend>>>,
}

impl Capture {
    /// Loads capture in `mode`: the eBPF programs, or nothing but a check that iptables runs.
    /// Refuses while the other mode is installed for the instance.
    pub fn load(mode: CaptureMode, installed: &Installed) -> Result<Self, Error> {
        let other = match mode {
            CaptureMode::Ebpf => IptablesCapture::installed(&installed.iptables_records)?
                .then(|| (CaptureMode::Iptables, installed.iptables_records.clone())),
            CaptureMode::Iptables => {
                EbpfCapture::pinned(&installed.ebpf)?.map(|pins| (CaptureMode::Ebpf, pins))
            }
        };
        if let Some((other, at)) = other {
            return Err(Error::OtherModeInstalled {
                wanted: mode.name(),
                installed: other.name(),
                at,
            });
        }
        let backend = match mode {
            CaptureMode::Ebpf => Backend::Ebpf(Box::new(EbpfCapture::load(&installed.ebpf)?)),
            CaptureMode::Iptables => {
                Backend::Iptables(IptablesCapture::new(&installed.iptables_records)?)
            }
        };
        Ok(Self {
            mode,
            inner: Arc::new(Mutex::new(Some(backend))),
        })
    }

    /// A handle with nothing installed, as after an uninstall: for tests of its users.
    #[cfg(test)]
    pub(crate) fn uninstalled() -> Self {
        Self {
            mode: CaptureMode::Ebpf,
            inner: Arc::new(Mutex::new(None)),
        }
    }

    #[must_use]
    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    /// Where a proxy must run to be served: eBPF capture's cgroup; none under iptables.
    #[must_use]
    pub fn proxy_cgroup(&self) -> Option<CgroupRequirement> {
        match self.lock().as_ref()? {
            Backend::Ebpf(capture) => capture.proxy_cgroup(),
            Backend::Iptables(_) => None,
        }
    }

    /// Sets the eBPF programs' log level (`--bpf-log`) and hands their log ring to `logger`;
    /// `None` when off, uninstalled, or under iptables capture (no programs).
    pub fn start_bpf_log<L: log::Log>(
        &self,
        level: ebpf::BpfLogLevel,
        logger: L,
    ) -> Result<Option<aya_log::EbpfLogger<L>>, Error> {
        match self.lock().as_mut() {
            Some(Backend::Ebpf(capture)) => Ok(capture.start_bpf_log(level, logger)?),
            Some(Backend::Iptables(_)) | None => Ok(None),
        }
    }

    /// Where the proxy must open a pod's inbound listener for this mode to reach it.
    #[must_use]
    pub fn inbound_bind(&self) -> InboundBind {
        match self.mode {
            CaptureMode::Ebpf => InboundBind::Loopback,
            CaptureMode::Iptables => InboundBind::AnyAddress,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Backend>> {
        // A panic while holding the lock leaves the maps and rules as consistent as the
        // kernel made them; the next caller can carry on.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the capture; calls are short map updates or one iptables run per pod, so
    /// a plain mutex is enough.
    pub fn with<R>(&self, f: impl FnOnce(&mut Backend) -> Result<R, Error>) -> Result<R, Error> {
        let mut guard = self.lock();
        let backend = guard.as_mut().ok_or(Error::Uninstalled)?;
        f(backend)
    }

    /// Removes everything `installed` names. Afterwards every call fails with
    /// [`Error::Uninstalled`]. On failure the capture stays usable, as it was.
    pub fn uninstall(&self, installed: &Installed) -> Result<Vec<PathBuf>, Error> {
        let mut guard = self.lock();
        let backend = guard.take().ok_or(Error::Uninstalled)?;
        match installed.uninstall() {
            Ok(removed) => Ok(removed),
            Err(e) => {
                *guard = Some(backend);
                Err(e)
            }
        }
    }
}

/// The iptables record folder of a run dir.
#[must_use]
pub fn iptables_records(run_dir: &Path) -> PathBuf {
    run_dir.join(iptables::RECORD_DIR)
}
