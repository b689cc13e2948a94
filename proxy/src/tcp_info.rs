//! A TCP socket's kernel figures from user space: `SO_COOKIE` (what the eBPF programs key a
//! socket by) and `TCP_INFO` (RTT, retransmits, losses), for the kernel TCP telemetry
//! (`telemetry::tcp`).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd};

/// `SO_COOKIE` (Linux 4.12+; `asm-generic/socket.h`), which the libc crate does not export
/// for every target.
const SO_COOKIE: libc::c_int = 57;
/// `TCP_CLOSE` in `tcpi_state`.
const TCP_CLOSE: u8 = 7;

/// What `TCP_INFO` and a closed socket's `TcpEvent` both say of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFigures {
    /// The smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Segments retransmitted over the connection's life.
    pub retransmits: u32,
    /// Segments presumed lost and not yet recovered, at the moment of reading.
    pub lost: u32,
}

impl TcpFigures {
    /// From a closed socket's event, as `sock_ops` read it (`srtt_us` already shifted back).
    #[must_use]
    pub fn of_event(event: &shunt_common::TcpEvent) -> Self {
        Self {
            rtt_us: event.srtt_us,
            retransmits: event.total_retrans,
            lost: event.lost_out,
        }
    }
}

/// A socket's `TCP_INFO` figures, and whether it has reached `TCP_CLOSE` (nothing changes
/// them any more then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub figures: TcpFigures,
    pub closed: bool,
}

/// The socket's cookie, the key of its `TcpEvent`.
pub fn socket_cookie(socket: &impl AsFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    getsockopt(socket, libc::SOL_SOCKET, SO_COOKIE, &mut cookie)?;
    Ok(cookie)
}

/// `getsockopt(IPPROTO_TCP, TCP_INFO)` on the socket.
pub fn sample(socket: &impl AsFd) -> io::Result<Sample> {
    // SAFETY: all-zero bytes are a valid `tcp_info` (integers only).
    #[expect(unsafe_code, reason = "a zeroed plain-integer struct")]
    let mut info: libc::tcp_info = unsafe { MaybeUninit::zeroed().assume_init() };
    getsockopt(socket, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(Sample {
        figures: TcpFigures {
            rtt_us: info.tcpi_rtt,
            retransmits: info.tcpi_total_retrans,
            lost: info.tcpi_lost,
        },
        closed: info.tcpi_state == TCP_CLOSE,
    })
}

/// `getsockopt` into a plain-integer value; a shorter answer (an older kernel's `tcp_info`)
/// leaves the rest zero.
fn getsockopt<T: Copy>(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<()> {
    let mut len = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `value` is valid for `len` writable bytes and outlives the call; the descriptor
    // is borrowed open.
    #[expect(unsafe_code, reason = "a getsockopt syscall")]
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connected_socket_has_a_cookie_and_tcp_info() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (a, b) = (
            socket_cookie(&client).unwrap(),
            socket_cookie(&server).unwrap(),
        );
        assert!(a != 0 && b != 0 && a != b, "cookies {a} {b}");
        let sample = sample(&client).unwrap();
        assert!(!sample.closed, "{sample:?}");
        assert_eq!(sample.figures.retransmits, 0, "{sample:?}");
    }
}
