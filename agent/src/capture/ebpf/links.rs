//! Attaching programs as pinned bpf_links, or adopting the links an earlier agent pinned.
//!
//! A link is pinned right after it is created and its descriptor is closed at once: the pin is
//! what keeps it attached, so capture survives the agent, and unpinning detaches it.

use shunt_api::capture::{Attachment, LinkIds};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{MapData, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockopt, Program, ProgramError, SkLookup, SkMsg,
    SockOps, loaded_programs,
};
use shunt_common::{SockKey, map_names};

use super::{Error, sys};

/// A link just created, not pinned yet.
pub enum NewLink {
    Aya(FdLink),
    /// Created with `sys::link_create` (see there why).
    Raw(OwnedFd),
}

impl NewLink {
    /// Pins the link; its descriptor is closed when this returns, so the pin alone keeps it.
    fn pin(self, path: &Path) -> Result<(), Error> {
        let pinned = match self {
            Self::Aya(link) => link.pin(path).map(drop).map_err(|e| Box::new(e).into()),
            Self::Raw(fd) => sys::obj_pin(fd.as_fd(), path).map_err(|e| Box::new(e).into()),
        };
        pinned.map_err(|source| Error::Pin {
            path: path.to_owned(),
            error: source,
        })
    }
}

/// Adopts the link pinned at `pin`, or runs `attach` and pins the link it returns.
pub fn attach_or_adopt(
    pin: &Path,
    attach: impl FnOnce() -> Result<NewLink, Error>,
) -> Result<Attachment, Error> {
    if pin.symlink_metadata().is_ok() {
        // Opening it proves the pin is a live bpf object; the descriptor closes right away.
        PinnedLink::from_pin(pin).map_err(|source| Error::Adopt {
            path: pin.to_owned(),
            error: Box::new(source),
        })?;
        return Ok(Attachment::Adopted);
    }
    attach()?.pin(pin)?;
    Ok(Attachment::Attached)
}

pub fn pinned_link_ids(pin: &Path) -> Result<LinkIds, Error> {
    let link = FdLink::from(PinnedLink::from_pin(pin).map_err(|source| Error::Adopt {
        path: pin.to_owned(),
        error: Box::new(source),
    })?);
    let info = link.info().map_err(|source| Error::Adopt {
        path: pin.to_owned(),
        error: Box::new(source),
    })?;
    Ok(LinkIds {
        link_id: info.id(),
        program_id: info.program_id(),
    })
}

/// The tag (hash of the instructions) of the loaded program with this id.
pub fn program_tag(program_id: u32) -> Option<u64> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == program_id)
        .map(|info| info.tag())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { program: name })
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    program(ebpf, name)?
        .try_into()
        .map_err(|source| Error::ProgramKind {
            program: name,
            error: Box::new(source),
        })
}

/// Loads one program into the kernel; a verifier rejection carries the verifier's log.
pub fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), Error> {
    let loaded = match program(ebpf, name)? {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        other => {
            return Err(Error::UnexpectedProgramType {
                program: name,
                found: format!("{:?}", other.prog_type()),
            });
        }
    };
    loaded.map_err(|source| Error::ProgramLoad {
        program: name,
        error: Box::new(source),
    })
}

fn attach_error(program: &'static str, target: &Path) -> impl FnOnce(ProgramError) -> Error {
    let target = target.display().to_string();
    move |source| Error::Attach {
        program,
        target,
        error: Box::new(source),
    }
}

fn into_fd_link<L>(program: &'static str, link: L) -> Result<NewLink, Error>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link)
        .map(NewLink::Aya)
        .map_err(|source| Error::NotALink {
            program,
            error: Box::new(source),
        })
}

// Cgroup programs attach as bpf_links, which always run alongside other programs on the cgroup
// (the kernel rejects the legacy BPF_F_ALLOW_MULTI flag for links), hence `Single`.

pub fn attach_cgroup_sock_addr(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &Path,
) -> Result<NewLink, Error> {
    let cgroup_dir = open_cgroup(cgroup)?;
    let program: &mut CgroupSockAddr = typed(ebpf, name)?;
    let id = program
        .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
        .map_err(attach_error(name, cgroup))?;
    let link = program.take_link(id).map_err(attach_error(name, cgroup))?;
    into_fd_link(name, link)
}

pub fn attach_sock_ops(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &Path,
) -> Result<NewLink, Error> {
    let cgroup_dir = open_cgroup(cgroup)?;
    let program: &mut SockOps = typed(ebpf, name)?;
    let id = program
        .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
        .map_err(attach_error(name, cgroup))?;
    let link = program.take_link(id).map_err(attach_error(name, cgroup))?;
    into_fd_link(name, link)
}

/// Through `sys::link_create`: aya cannot turn a getsockopt link into a pinnable one.
pub fn attach_cgroup_sockopt(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &Path,
) -> Result<NewLink, Error> {
    let cgroup_dir = open_cgroup(cgroup)?;
    let program: &mut CgroupSockopt = typed(ebpf, name)?;
    let program_fd = program.fd().map_err(attach_error(name, cgroup))?;
    sys::link_create(
        program_fd.as_fd(),
        cgroup_dir.as_fd(),
        sys::BPF_CGROUP_GETSOCKOPT,
    )
    .map(NewLink::Raw)
    .map_err(|e| attach_error(name, cgroup)(ProgramError::IOError(e)))
}

/// Attaches `sk_msg` to the shortcut's sockhash (a bpf_link needs Linux 6.10).
pub fn attach_sk_msg(ebpf: &mut Ebpf, name: &'static str) -> Result<NewLink, Error> {
    let target = PathBuf::from(map_names::SHORTCUT_SOCKETS);
    let map_fd = {
        let map = ebpf
            .map(map_names::SHORTCUT_SOCKETS)
            .ok_or(Error::MissingMap {
                map: map_names::SHORTCUT_SOCKETS,
            })?;
        let sockets: SockHash<&MapData, SockKey> =
            SockHash::try_from(map).map_err(|source| Error::Map {
                map: map_names::SHORTCUT_SOCKETS,
                action: "opening",
                error: Box::new(source),
            })?;
        sockets.fd().try_clone().map_err(|e| Error::Attach {
            program: name,
            target: target.display().to_string(),
            error: Box::new(ProgramError::IOError(e)),
        })?
    };
    let program: &mut SkMsg = typed(ebpf, name)?;
    let id = program
        .attach(&map_fd)
        .map_err(attach_error(name, &target))?;
    let link = program.take_link(id).map_err(attach_error(name, &target))?;
    into_fd_link(name, link)
}

/// Attaches `sk_lookup` to one pod's network namespace.
pub fn attach_sk_lookup(
    ebpf: &mut Ebpf,
    name: &'static str,
    netns: std::os::fd::BorrowedFd<'_>,
    netns_cookie: u64,
) -> Result<NewLink, Error> {
    let target = PathBuf::from(format!("netns {netns_cookie}"));
    let program: &mut SkLookup = typed(ebpf, name)?;
    let id = program.attach(netns).map_err(attach_error(name, &target))?;
    let link = program.take_link(id).map_err(attach_error(name, &target))?;
    Ok(NewLink::Aya(FdLink::from(link)))
}

fn open_cgroup(cgroup: &Path) -> Result<std::fs::File, Error> {
    std::fs::File::open(cgroup).map_err(|source| Error::OpenCgroup {
        path: cgroup.to_owned(),
        error: source,
    })
}
