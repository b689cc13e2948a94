//! eBPF capture: loading the embedded object, attaching and pinning the programs, the maps.
//!
//! Everything lives under `<bpffs>/shunt/<instance>/`: `maps/<NAME>` and `links/<name>`. On
//! load, pinned maps are reused with their entries and pinned links are adopted as they are, so
//! capture is never detached across an agent restart; only [`EbpfCapture::uninstall`] removes it.
//!
//! Used by `pods.rs` (per-pod entries), `admin/` (through `capture::Capture`) (status, dumps, uninstall) and `app.rs`.

mod bpf_log;
mod links;
mod maps;
mod mounts;
mod pins;
mod probe;
mod sys;

use shunt_api::capture::{
    Attachment, CaptureStatus, KernelProbe, MapStatus, PodAttachment, ProgramStatus,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use shunt_common::{map_names, program_names};

pub use bpf_log::BpfLogLevel;
pub use mounts::{find_bpffs, find_cgroup2};
pub use probe::kernel_support;

use pins::PinDir;

use crate::proxy_cgroup::CgroupRequirement;

mod error;
pub use error::Error;

/// How and where to install capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Names the pin folder `<bpffs>/shunt/<instance>`.
    pub instance: String,
    /// bpffs mount; `None`: found in /proc/mounts, or mounted at /sys/fs/bpf.
    pub bpffs: Option<PathBuf>,
    /// cgroup2 folder the cgroup programs attach to; `None`: the cgroup2 mount root.
    pub cgroup: Option<PathBuf>,
    /// The same-netns sockmap/sk_msg shortcut.
    pub sockmap_shortcut: bool,
}

/// One captured pod, as the maps need it.
#[derive(Debug)]
pub struct PodCapture<'a> {
    pub netns_cookie: u64,
    pub netns: BorrowedFd<'a>,
    /// The netns file (`shunt.io/netns`), recorded by iptables capture for later removal.
    pub netns_path: &'a Path,
    pub pod_ip: Ipv4Addr,
    pub excluded_outbound_ports: Vec<u16>,
    pub excluded_inbound_ports: Vec<u16>,
    /// PeerAuthentication `STRICT` (on any port): with no proxy listener, inbound
    /// connections are dropped instead of reaching the app without policy.
    pub fail_closed: bool,
}

/// The programs with a link of their own, in the order they are attached on a fresh install:
/// the connect programs last, because they divert traffic, and by then the programs that
/// answer for diverted connections are in place.
const CGROUP_PROGRAMS: [CgroupProgram; 4] = [
    CgroupProgram {
        name: program_names::SOCKOPS,
        link: "sockops",
        section: "sockops",
        attach: links::attach_sock_ops,
    },
    CgroupProgram {
        name: program_names::GETSOCKOPT,
        link: "getsockopt",
        section: "cgroup/getsockopt",
        attach: links::attach_cgroup_sockopt,
    },
    CgroupProgram {
        name: program_names::CONNECT4,
        link: "connect4",
        section: "cgroup/connect4",
        attach: links::attach_cgroup_sock_addr,
    },
    CgroupProgram {
        name: program_names::CONNECT6,
        link: "connect6",
        section: "cgroup/connect6",
        attach: links::attach_cgroup_sock_addr,
    },
];

struct CgroupProgram {
    name: &'static str,
    /// Pin name under `links/`.
    link: &'static str,
    section: &'static str,
    attach: fn(&mut Ebpf, &'static str, &Path) -> Result<links::NewLink, Error>,
}
const SK_MSG_LINK: &str = "sk_msg";
const PROGRAMS: [&str; 6] = [
    program_names::SOCKOPS,
    program_names::GETSOCKOPT,
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SK_MSG,
    program_names::SK_LOOKUP,
];

pub struct EbpfCapture {
    ebpf: Ebpf,
    instance: String,
    bpffs: PathBuf,
    pins: PinDir,
    cgroup: PathBuf,
    sockmap_shortcut: bool,
    programs: Vec<ProgramStatus>,
    probe: KernelProbe,
}

// The agent shares one `Capture` between its tasks.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<EbpfCapture>();
};

#[cfg(shunt_ebpf_embedded)]
fn embedded_object() -> Result<&'static [u8], Error> {
    Ok(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/shunt-ebpf.o"
    )))
}

#[cfg(not(shunt_ebpf_embedded))]
fn embedded_object() -> Result<&'static [u8], Error> {
    Err(Error::NotEmbedded)
}

impl EbpfCapture {
    /// Whether this build carries the eBPF object (`cargo xtask build-ebpf` before building).
    pub const OBJECT_EMBEDDED: bool = cfg!(shunt_ebpf_embedded);

    /// Loads the embedded object (a verifier rejection fails with the verifier log), creates or
    /// reuses the pinned maps, and attaches — or adopts already-pinned — cgroup links and the
    /// sk_msg link. Sets `SETTINGS` from the options.
    pub fn load(options: &CaptureOptions) -> Result<Self, Error> {
        let object = embedded_object()?;
        let bpffs = mounts::bpffs(options.bpffs.as_deref())?;
        let pins = PinDir::new(&bpffs, &options.instance)?;
        let cgroup = mounts::cgroup(options.cgroup.as_deref())?;
        let probe = probe::probe();
        if let Some(feature) = probe::first_missing(&probe, options.sockmap_shortcut) {
            return Err(Error::Unsupported {
                feature: Box::new(feature.clone()),
            });
        }
        pins.create()?;

        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, pins.map(name));
        }
        // The programs' log ring: adopted programs keep writing into it after a restart.
        loader.map_pin_path(map_names::AYA_LOGS, pins.map(map_names::AYA_LOGS));
        // Pinned for the same reason: adopted programs keep sending into it.
        loader.map_pin_path(map_names::TCP_EVENTS, pins.map(map_names::TCP_EVENTS));
        let mut ebpf = loader.load(object).map_err(|source| Error::Object {
            pin_dir: pins.root().to_owned(),
            error: Box::new(source),
        })?;
        // Every program passes the verifier before anything is attached.
        for name in PROGRAMS {
            links::load(&mut ebpf, name)?;
        }
        // Before the links, so the first socket sock_ops sees already gets the right setting.
        maps::set_settings(&mut ebpf, options.sockmap_shortcut)?;

        let mut capture = Self {
            ebpf,
            instance: options.instance.clone(),
            bpffs,
            pins,
            cgroup,
            sockmap_shortcut: options.sockmap_shortcut,
            programs: Vec::new(),
            probe,
        };
        if let Err(error) = capture.attach_all() {
            capture.roll_back_attached();
            return Err(error);
        }
        Ok(capture)
    }

    fn attach_all(&mut self) -> Result<(), Error> {
        // sk_msg first: sock_ops may start filling its sockhash as soon as it is attached.
        let sk_msg_pin = self.pins.link(SK_MSG_LINK);
        let sk_msg = if self.sockmap_shortcut {
            links::attach_or_adopt(&sk_msg_pin, || {
                links::attach_sk_msg(&mut self.ebpf, program_names::SK_MSG)
            })?
        } else if sk_msg_pin.symlink_metadata().is_ok() {
            // Kept: it only acts on sockets sock_ops registers, and with the shortcut off it
            // registers none, while live shortcut connections keep working.
            Attachment::Adopted
        } else {
            Attachment::NotAttached
        };
        self.record(
            program_names::SK_MSG,
            "sk_msg",
            map_names::SHORTCUT_SOCKETS.into(),
            sk_msg,
            Some(sk_msg_pin),
        );

        for program in CGROUP_PROGRAMS {
            let pin = self.pins.link(program.link);
            let cgroup = self.cgroup.clone();
            let attachment = links::attach_or_adopt(&pin, || {
                (program.attach)(&mut self.ebpf, program.name, &cgroup)
            })?;
            let attach_point = cgroup.display().to_string();
            self.record(
                program.name,
                program.section,
                attach_point,
                attachment,
                Some(pin),
            );
        }
        self.record(
            program_names::SK_LOOKUP,
            "sk_lookup",
            "the network namespace of each captured pod".into(),
            Attachment::PerPod,
            None,
        );
        Ok(())
    }

    fn record(
        &mut self,
        name: &'static str,
        program_type: &'static str,
        attach_point: String,
        attachment: Attachment,
        link_pin: Option<PathBuf>,
    ) {
        let note = (attachment == Attachment::Adopted)
            .then(|| {
                link_pin
                    .as_deref()
                    .and_then(|pin| self.stale_program_note(name, pin))
            })
            .flatten();
        if let Some(note) = &note {
            tracing::warn!(program = name, "{note}");
        }
        tracing::info!(program = name, ?attachment, "capture program ready");
        self.programs.push(ProgramStatus {
            name: name.into(),
            program_type: program_type.into(),
            attach_point,
            attachment,
            link_pin,
            link: None,
            note,
        });
    }

    /// Says so when an adopted link runs another build of the program than the one loaded now.
    fn stale_program_note(&self, name: &'static str, pin: &Path) -> Option<String> {
        let running = links::program_tag(links::pinned_link_ids(pin).ok()?.program_id)?;
        let loaded = self.ebpf.program(name)?.info().ok()?.tag();
        (running != loaded).then(|| {
            format!(
                "the pinned link runs another build of {name} (tag {running:016x}, this agent \
                 has {loaded:016x}); it keeps running until `shunt-agent --uninstall`"
            )
        })
    }

    /// Unpins the links this load attached (adopted ones stay): a failed start must not leave
    /// half of capture behind.
    fn roll_back_attached(&self) {
        for program in &self.programs {
            if program.attachment == Attachment::Attached
                && let Some(pin) = &program.link_pin
                && let Err(e) = pins::remove_file(pin)
            {
                tracing::warn!(pin = %pin.display(), "rolling back a failed start: {e}");
            }
        }
    }

    /// MESHED_NETNS + excluded ports + the pod's sk_lookup link (adopted if already pinned).
    /// Calling it again for the same netns updates the pod (IP, excluded ports).
    pub fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Error> {
        let invalid = |field, reason: &str| Error::InvalidPod {
            netns_cookie: pod.netns_cookie,
            field,
            reason: reason.to_owned(),
        };
        if pod.pod_ip.is_unspecified()
            || pod.pod_ip.is_loopback()
            || pod.pod_ip.is_broadcast()
            || pod.pod_ip.is_multicast()
        {
            return Err(invalid(
                "pod_ip",
                &format!("{} is not a pod address", pod.pod_ip),
            ));
        }
        for (field, ports) in [
            ("excluded_outbound_ports", &pod.excluded_outbound_ports),
            ("excluded_inbound_ports", &pod.excluded_inbound_ports),
        ] {
            if ports.contains(&0) {
                return Err(invalid(field, "contains port 0"));
            }
        }

        let previous_ip = maps::meshed(&self.ebpf, pod.netns_cookie)?
            .map(|previous| maps::ip4_from_be(previous.pod_ip4_be));
        if let Some(old_ip) = previous_ip.filter(|ip| *ip != pod.pod_ip) {
            maps::remove_inbound_listener(&mut self.ebpf, old_ip)?;
            maps::set_inbound_excluded(&mut self.ebpf, old_ip, &BTreeSet::new())?;
            maps::set_inbound_fail_closed(&mut self.ebpf, old_ip, false)?;
        }
        // Before sk_lookup can see the pod: a STRICT pod is never open, not even at start.
        maps::set_inbound_fail_closed(&mut self.ebpf, pod.pod_ip, pod.fail_closed)?;
        // Exclusions first, the MESHED_NETNS entry last: it is what turns outbound capture on.
        let outbound: BTreeSet<u16> = pod.excluded_outbound_ports.iter().copied().collect();
        let inbound: BTreeSet<u16> = pod.excluded_inbound_ports.iter().copied().collect();
        maps::set_outbound_excluded(&mut self.ebpf, pod.netns_cookie, &outbound)?;
        maps::set_inbound_excluded(&mut self.ebpf, pod.pod_ip, &inbound)?;
        // Steers nothing until the pod's listener is in INBOUND_LISTENERS.
        let pin = self.pins.sk_lookup_link(pod.netns_cookie);
        let attachment = links::attach_or_adopt(&pin, || {
            links::attach_sk_lookup(
                &mut self.ebpf,
                program_names::SK_LOOKUP,
                pod.netns,
                pod.netns_cookie,
            )
        })?;
        maps::set_meshed(&mut self.ebpf, pod.netns_cookie, pod.pod_ip)?;
        tracing::info!(
            netns_cookie = pod.netns_cookie,
            pod_ip = %pod.pod_ip,
            sk_lookup = ?attachment,
            "capture on for pod"
        );
        Ok(())
    }

    /// Puts the proxy's inbound listener for `pod_ip` in INBOUND_LISTENERS.
    pub fn set_inbound_listener(
        &mut self,
        pod_ip: Ipv4Addr,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        maps::set_inbound_listener(&mut self.ebpf, pod_ip, listener)
    }

    /// Removes every map entry of the pod (including ORIG_DST_BY_CLIENT entries of its netns)
    /// and detaches and unpins its sk_lookup link. Removing a pod that is not there is fine.
    pub fn remove_pod(&mut self, netns_cookie: u64, pod_ip: Option<Ipv4Addr>) -> Result<(), Error> {
        let pod_ip = match pod_ip {
            Some(ip) => Some(ip),
            None => {
                maps::meshed(&self.ebpf, netns_cookie)?.map(|pod| maps::ip4_from_be(pod.pod_ip4_be))
            }
        };
        maps::remove_pod_entries(&mut self.ebpf, netns_cookie, pod_ip)?;
        // No descriptor of the link is open, so removing its pin detaches it.
        pins::remove_file(&self.pins.sk_lookup_link(netns_cookie))?;
        tracing::info!(netns_cookie, pod_ip = ?pod_ip, "capture off for pod");
        Ok(())
    }

    /// Sets the programs' log level (`--bpf-log`), and with a level other than `Off` takes their
    /// ring buffer for `logger`; read it with `EbpfLogger::flush` when its descriptor is
    /// readable. `None` when off (the level is written either way, so an earlier agent's level
    /// does not linger in the pinned `SETTINGS`).
    pub fn start_bpf_log<L: log::Log>(
        &mut self,
        level: BpfLogLevel,
        logger: L,
    ) -> Result<Option<aya_log::EbpfLogger<L>>, Error> {
        bpf_log::start(&mut self.ebpf, level, logger)
    }

    /// Descriptors of `SHORTCUT_BYTES`, `SPLICED_BYTES` and `SPLICE_ROUTES`, for the proxy to
    /// splice opaque TCP connections with; none while the shortcut is off, since only shortcut
    /// sockets splice.
    pub fn splice_maps(&self) -> Result<Option<Vec<std::os::fd::OwnedFd>>, Error> {
        if !self.sockmap_shortcut {
            return Ok(None);
        }
        maps::splice_map_fds(&self.ebpf).map(Some)
    }

    /// A descriptor of `TCP_EVENTS`, for the proxy's kernel TCP telemetry.
    pub fn tcp_events(&self) -> Result<std::os::fd::OwnedFd, Error> {
        maps::tcp_events_fd(&self.ebpf)
    }

    /// Netns cookies that have state (MESHED_NETNS entry or pinned sk_lookup link), so the
    /// agent can remove pods that went away while it was down.
    pub fn captured_netns(&self) -> Vec<u64> {
        let mut cookies = BTreeSet::new();
        match maps::meshed_cookies(&self.ebpf) {
            Ok(meshed) => cookies.extend(meshed),
            Err(e) => tracing::warn!("listing captured pods: {e}"),
        }
        match self.pins.sk_lookup_cookies() {
            Ok(linked) => cookies.extend(linked),
            Err(e) => tracing::warn!("listing sk_lookup links: {e}"),
        }
        cookies.into_iter().collect()
    }

    /// Where the proxy must run for these programs to answer it (`cgroup/getsockopt`).
    #[must_use]
    pub fn proxy_cgroup(&self) -> Option<CgroupRequirement> {
        Some(CgroupRequirement {
            cgroup: self.cgroup.clone(),
            cgroup2_mount: self.probe.cgroup2_mount.clone()?,
        })
    }

    pub fn status(&self) -> CaptureStatus {
        let mut errors = Vec::new();
        let programs = self
            .programs
            .iter()
            .map(|program| {
                let mut program = program.clone();
                program.link = program.link_pin.as_deref().and_then(|pin| {
                    match (program.attachment, links::pinned_link_ids(pin)) {
                        (Attachment::NotAttached | Attachment::PerPod, _) => None,
                        (_, Ok(ids)) => Some(ids),
                        (_, Err(e)) => {
                            errors.push(e.to_string());
                            None
                        }
                    }
                });
                program
            })
            .collect();

        let pods = self
            .pins
            .sk_lookup_cookies()
            .unwrap_or_else(|e| {
                errors.push(e.to_string());
                Vec::new()
            })
            .into_iter()
            .map(|netns_cookie| {
                let link_pin = self.pins.sk_lookup_link(netns_cookie);
                let link = links::pinned_link_ids(&link_pin)
                    .map_err(|e| errors.push(e.to_string()))
                    .ok();
                let pod_ip = maps::meshed(&self.ebpf, netns_cookie)
                    .map_err(|e| errors.push(e.to_string()))
                    .ok()
                    .flatten()
                    .map(|pod| maps::ip4_from_be(pod.pod_ip4_be));
                PodAttachment {
                    netns_cookie,
                    link_pin,
                    link,
                    pod_ip,
                }
            })
            .collect();

        let maps = map_names::ALL
            .iter()
            .filter_map(|&name| match maps::size(&self.ebpf, name) {
                Ok((entries, max_entries)) => Some(MapStatus {
                    name: name.into(),
                    pin: self.pins.map(name),
                    entries,
                    max_entries,
                }),
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            })
            .collect();

        let counters = maps::counters(&self.ebpf)
            .map(|counters| {
                counters
                    .into_iter()
                    .map(|(name, n)| (name.to_owned(), n))
                    .collect()
            })
            .unwrap_or_else(|e| {
                errors.push(e.to_string());
                BTreeMap::new()
            });

        CaptureStatus {
            instance: self.instance.clone(),
            pin_dir: self.pins.root().to_owned(),
            bpffs: self.bpffs.clone(),
            cgroup: self.cgroup.clone(),
            sockmap_shortcut: self.sockmap_shortcut,
            programs,
            pods,
            maps,
            counters,
            kernel: self.probe.clone(),
            errors,
        }
    }

    /// A map's entries as JSON (keys/values decoded by type).
    pub fn dump_map(&self, name: &str) -> Result<serde_json::Value, Error> {
        maps::dump(&self.ebpf, name)
    }

    /// The instance's pin folder, when there is one: eBPF capture is installed (maybe by an
    /// agent that has since stopped).
    pub fn pinned(options: &CaptureOptions) -> Result<Option<PathBuf>, Error> {
        let Some(bpffs) = mounts::existing_bpffs(options.bpffs.as_deref())? else {
            return Ok(None);
        };
        let root = PinDir::new(&bpffs, &options.instance)?.root().to_owned();
        Ok(root.exists().then_some(root))
    }

    /// Detaches and unpins everything of `options.instance`, without loading the object.
    /// Returns what was removed; with nothing installed that is nothing, not an error.
    pub fn uninstall(options: &CaptureOptions) -> Result<Vec<PathBuf>, Error> {
        let Some(bpffs) = mounts::existing_bpffs(options.bpffs.as_deref())? else {
            return Ok(Vec::new());
        };
        let removed = PinDir::new(&bpffs, &options.instance)?.remove_all()?;
        tracing::info!(instance = %options.instance, removed = removed.len(), "capture uninstalled");
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_api::capture::Feature;

    #[test]
    fn a_verifier_rejection_names_the_program_and_carries_the_verifier_log() {
        let verifier_log =
            "0: (79) r2 = *(u64 *)(r1 +40)\ninvalid bpf_context access off=40 size=8";
        let error = Error::ProgramLoad {
            program: shunt_common::program_names::CONNECT4,
            error: Box::new(aya::programs::ProgramError::LoadError {
                io_error: std::io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: aya_obj::VerifierLog::new(verifier_log.to_owned()),
            }),
        };
        let message = error.to_string();
        assert!(message.contains("shunt_connect4"), "{message}");
        assert!(message.contains(verifier_log), "{message}");
    }

    #[cfg(not(shunt_ebpf_embedded))]
    #[test]
    fn loading_without_the_object_says_how_to_build_it() {
        let options = CaptureOptions {
            instance: "never-loaded".into(),
            bpffs: None,
            cgroup: None,
            sockmap_shortcut: true,
        };
        let error = EbpfCapture::load(&options).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("eBPF object not embedded: run `cargo xtask build-ebpf` then rebuild the agent")
        );
    }

    #[test]
    fn a_missing_kernel_feature_says_what_it_disables_and_since_when() {
        let error = Error::Unsupported {
            feature: Box::new(Feature {
                name: "sk_lookup programs".into(),
                supported: Some(false),
                since: "5.9".into(),
                missing_disables: "inbound capture".into(),
                error: None,
            }),
        };
        let message = error.to_string();
        for part in ["sk_lookup programs", "5.9", "inbound capture"] {
            assert!(message.contains(part), "{part} in {message}");
        }
    }

    #[test]
    fn every_program_is_loaded_and_every_linked_one_has_its_own_pin() {
        let linked: BTreeSet<&str> = CGROUP_PROGRAMS.iter().map(|p| p.link).collect();
        assert_eq!(linked.len(), CGROUP_PROGRAMS.len());
        assert!(!linked.contains(SK_MSG_LINK));
        for program in CGROUP_PROGRAMS {
            assert!(PROGRAMS.contains(&program.name), "{}", program.name);
        }
        assert!(PROGRAMS.contains(&program_names::SK_MSG));
        assert!(PROGRAMS.contains(&program_names::SK_LOOKUP));
    }
}
