//! Which BPF programs are attached to a cgroup's connect() hooks, through the bpf syscall
//! (`BPF_PROG_QUERY`, then each program's name), so precheck needs no bpftool.

use std::fs::File;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

/// A program attached to a connect hook.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachedProgram {
    /// `connect4` or `connect6`.
    pub hook: &'static str,
    pub id: u32,
    /// The program's name as loaded (the kernel keeps 15 characters), empty if unknown.
    pub name: String,
}

/// Lists what is attached to a cgroup's connect hooks.
pub trait ConnectPrograms {
    /// The programs at `cgroup`, or why they cannot be listed.
    fn attached(&self, cgroup: &Path) -> Result<Vec<AttachedProgram>, String>;
}

/// The running kernel, asked through the bpf syscall.
pub struct Kernel;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type`.
const HOOKS: [(&str, u32); 2] = [("connect4", 10), ("connect6", 11)];
const MAX_PROGRAMS: usize = 64;

/// `bpf_attr` for `BPF_PROG_QUERY`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// `bpf_attr` for `BPF_PROG_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to and with `name` (offset 64).
#[repr(C, align(8))]
struct ProgInfoHead {
    bytes: [u8; 80],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    #[expect(
        unsafe_code,
        reason = "the bpf syscall has no safe wrapper in libc or nix"
    )]
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] bpf_attr variant of the given
    // size; any pointers inside it point to buffers that outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn program_name(id: u32) -> String {
    let mut get = GetFdAttr {
        prog_id: id,
        ..GetFdAttr::default()
    };
    let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut get) else {
        return String::new();
    };
    let Ok(fd) = i32::try_from(fd) else {
        return String::new();
    };
    #[expect(unsafe_code, reason = "wrapping the fd the kernel just returned")]
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut head = ProgInfoHead { bytes: [0; 80] };
    let mut info = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or_default(),
        info_len: 80,
        info: std::ptr::from_mut(&mut head) as u64,
    };
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut info).is_err() {
        return String::new();
    }
    let name = &head.bytes[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

impl ConnectPrograms for Kernel {
    fn attached(&self, cgroup: &Path) -> Result<Vec<AttachedProgram>, String> {
        let dir =
            File::open(cgroup).map_err(|e| format!("cannot open {}: {e}", cgroup.display()))?;
        let mut found = Vec::new();
        for (hook, attach_type) in HOOKS {
            let mut ids = [0u32; MAX_PROGRAMS];
            let mut query = QueryAttr {
                target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or_default(),
                attach_type,
                prog_ids: ids.as_mut_ptr() as u64,
                prog_cnt: MAX_PROGRAMS as u32,
                ..QueryAttr::default()
            };
            bpf(BPF_PROG_QUERY, &mut query).map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => {
                    "listing BPF programs needs root (CAP_SYS_ADMIN): run precheck as root"
                        .to_owned()
                }
                _ => format!("BPF_PROG_QUERY {hook} on {}: {e}", cgroup.display()),
            })?;
            let count = (query.prog_cnt as usize).min(MAX_PROGRAMS);
            for id in &ids[..count] {
                found.push(AttachedProgram {
                    hook,
                    id: *id,
                    name: program_name(*id),
                });
            }
        }
        Ok(found)
    }
}
