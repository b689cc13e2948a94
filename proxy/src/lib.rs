//! shunt's node proxy: listeners inside every captured pod's network namespace, original
//! destination recovery, Service load balancing, L4 forwarding, drain, metrics, access log.
//!
//! Modules depend downwards only (`cargo xtask layers` checks it):
//! `app` → `inpod`, `control` → `conn` → `http` → `context` → `telemetry`, `ratelimit`,
//! `splice` → `gateway` (gateway servers' TLS and credentials) → `upstream` → `pod`,
//! `addrs`, `orig_dst`, `peer_security`, `progress`, `response_flag`, `socket`, `tcp_info`, `drain`,
//! `state`; `ext_authz` (the CUSTOM policies' HTTP client, which dials through a seam) below
//! `http`; shunt-mesh and shunt-api below all of them.
#![deny(unsafe_code)]

pub mod addrs;
pub mod app;
pub mod authn;
pub mod authz;
pub mod conn;
pub mod context;
pub mod control;
pub mod drain;
pub mod ext_authz;
pub mod gateway;
pub mod hbone;
pub mod http;
pub mod identity;
pub mod inpod;
pub mod orig_dst;
pub mod peer_security;
pub mod pod;
pub mod progress;
pub mod ratelimit;
pub mod response_flag;
pub mod socket;
pub mod splice;
pub mod state;
pub mod tcp_info;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod upstream;
