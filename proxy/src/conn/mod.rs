//! One accepted connection, inbound or outbound: original destination, protocol detection,
//! L4 forwarding and same-node delivery; HTTP is handed to [`crate::http`].
#![forbid(unsafe_code)]

pub mod detect;
pub mod forward;
pub mod gateway;
pub mod hbone;
pub mod inbound;
mod l4;
pub mod outbound;
mod preamble;
pub mod rewind;
