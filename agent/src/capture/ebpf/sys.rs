//! The two bpf(2) commands capture needs beyond aya 0.16: aya attaches `cgroup/getsockopt`
//! through a bpf_link but cannot hand that link out to be pinned, so capture creates and pins
//! that one link itself.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`.
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// The `link_create` member of `union bpf_attr`, with the tail the kernel requires to be zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    tail: [u64; 4],
}

/// The `obj_pin` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// `BPF_LINK_CREATE`: attaches `program` to `target` and returns the link's descriptor.
#[expect(
    unsafe_code,
    reason = "the raw bpf(BPF_LINK_CREATE) syscall and its new descriptor"
)]
pub fn link_create(
    program: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: fd_number(program)?,
        target_fd: fd_number(target)?,
        attach_type,
        ..LinkCreateAttr::default()
    };
    // SAFETY: `attr` is a fully initialised `bpf_attr` prefix that outlives the call, and its
    // size is passed along; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const attr,
            size_of::<LinkCreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a successful BPF_LINK_CREATE returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_OBJ_PIN`: pins the bpf object behind `fd` at `path` on a bpffs.
#[expect(unsafe_code, reason = "the raw bpf(BPF_OBJ_PIN) syscall")]
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let pathname = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = ObjPinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: fd_number(fd)?,
        ..ObjPinAttr::default()
    };
    // SAFETY: `attr` and the path it points to outlive the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw const attr,
            size_of::<ObjPinAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
