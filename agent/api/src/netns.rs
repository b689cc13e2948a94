//! Network namespaces: sockets created inside a pod's netns from a thread that entered it.
//!
//! A socket keeps the netns it was created in, so only the `socket(2)` call has to run on a
//! thread inside the pod's netns; everything after (bind, connect, accept) works from any
//! thread. Only the calling thread enters the netns (`setns(2)` is per thread), and the mount
//! namespace is never touched, so bpffs and cgroup2 stay visible (unlike `ip netns exec`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a short-lived thread that has entered `netns`.
pub fn run_in_netns<T, F>(netns: BorrowedFd<'_>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("setns into pod network namespace failed: {e}"),
                    )
                })?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("thread inside pod network namespace panicked"))?
    })
}

/// The kernel's cookie for `netns` (`SO_NETNS_COOKIE`, Linux ≥ 5.14): the key the eBPF
/// programs use to recognise a captured pod's sockets.
pub fn netns_cookie(netns: BorrowedFd<'_>) -> io::Result<u64> {
    let probe = run_in_netns(netns, || {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
    })?;
    socket_netns_cookie(probe.as_fd())
}

/// The netns cookie of the netns `socket` lives in.
#[expect(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper in nix"
)]
pub fn socket_netns_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Opens a netns file (`/run/netns/NAME`, `/proc/PID/ns/net`) for `setns`.
pub fn open_netns(path: &std::path::Path) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(path)?;
    // A netns file is an nsfs inode; anything else would make setns fail later, less clearly.
    let fd = OwnedFd::from(file);
    let fs = nix::sys::statfs::fstatfs(&fd).map_err(io::Error::from)?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a network namespace file", path.display()),
        ));
    }
    Ok(fd)
}

/// Identity of a netns (`st_ino` of its nsfs inode), for logs and pin names.
pub fn netns_inode(netns: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(netns).map_err(io::Error::from)?;
    Ok(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_cookie_matches_a_socket_made_here() {
        let own = open_netns(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let here = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        assert_eq!(
            netns_cookie(own.as_fd()).unwrap(),
            socket_netns_cookie(here.as_fd()).unwrap()
        );
    }

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = open_netns(std::path::Path::new("/proc/self/stat")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
