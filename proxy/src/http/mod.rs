//! The HTTP proxy of a connection that detection found to be HTTP, inbound or outbound:
//! request phases, routing, forwarding with retries and mirrors, telemetry per request.
#![forbid(unsafe_code)]

pub mod headers;
pub mod replay;
pub mod route_policy;
pub mod server;
