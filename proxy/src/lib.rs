//! shunt's node proxy: listeners inside every captured pod's network namespace, original
//! destination recovery, Service load balancing, L4 forwarding, drain, metrics, access log.
pub mod app;
pub mod control;
pub mod drain;
pub mod http;
pub mod inpod;
pub mod proxy;
pub mod socket;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod testing;
