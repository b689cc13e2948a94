//! A pod's network namespace as the agent holds it: the open netns file and its cookie.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;

/// An open pod netns and its cookie.
#[derive(Debug)]
pub struct PodNetns {
    pub fd: OwnedFd,
    pub cookie: u64,
}

/// Opens a pod's netns file; a seam for tests, see `crate::pods::Reconciler::with_netns_opener`.
pub type OpenNetns = fn(&Path) -> io::Result<PodNetns>;

/// Opens a netns file and reads its cookie (`setns` on a short-lived thread: needs root).
pub fn open_pod_netns(path: &Path) -> io::Result<PodNetns> {
    let fd = shunt_api::netns::open_netns(path)?;
    let cookie = shunt_api::netns::netns_cookie(fd.as_fd())?;
    Ok(PodNetns { fd, cookie })
}
