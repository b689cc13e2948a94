//! shunt's capture programs. See ARCHITECTURE.md, "The capture chain".
//!
//! One module per hook: `connect` (cgroup/connect4 and cgroup/connect6), `sockops`,
//! `getsockopt`, `sk_lookup` and `sk_msg`; every map is in `maps`, and what several programs
//! share is in `helpers`.
//!
//! IPv4 only for now, including dual-stack sockets reaching IPv4 peers through IPv4-mapped
//! addresses. The ABI (`OrigDst`, `ClientKey`) already has room for native IPv6.
//!
//! Every program is a thin entry point around a `try_*` function; an error never panics and
//! always takes the verdict that leaves the socket untouched.
//!
//! Unsafe code: the crate denies it, and each function that reads the kernel's context, calls
//! a helper or writes through a map pointer says so with `#[expect(unsafe_code)]` and keeps a
//! `SAFETY` comment on every block.
//!
//! Byte orders, as the kernel hands them over (little-endian host):
//! - IPv4 addresses are network order everywhere; they are stored as they come (`*_be`).
//! - `bpf_sock_addr.user_port`: network order in the low 16 bits.
//! - `bpf_sock_ops.remote_port`, `sk_msg_md.remote_port`: network order in the HIGH 16 bits
//!   (the kernel shifts the 16-bit value left by 16), so `u32::from_be` yields the host port.
//! - `bpf_sock_ops.local_port`, `sk_msg_md.local_port`, `bpf_sk_lookup.local_port`,
//!   `bpf_sock.src_port`: host order.
//! - `bpf_sock.dst_port`, `bpf_sk_lookup.remote_port`: a network-order 16-bit field.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod connect;
mod getsockopt;
mod helpers;
mod logs;
mod maps;
mod sk_lookup;
mod sk_msg;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}
