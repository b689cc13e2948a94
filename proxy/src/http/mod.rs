//! The L7 data path of outbound connections: protocol detection, the HTTP proxy (routing,
//! policies, forwarding) and the upstream clusters it sends to.
#![forbid(unsafe_code)]

pub mod detect;
pub mod headers;
pub mod policy;
pub mod ratelimit;
pub mod replay;
pub mod rewind;
pub mod server;
pub mod upstream;
