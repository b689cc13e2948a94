//! The HTTP proxy of a connection that detection found to be HTTP, inbound or outbound:
//! request phases, routing, forwarding with retries and mirrors, telemetry per request.
//!
//! Modules depend downwards only, none on this file's own items:
//! `server` (serve loop) → `filters` (request phases, in Envoy's order) → `forward`
//! (attempts, retries, mirrors, inbound delivery) → `security` (the inbound `authn` and
//! `authz` phases) → `exchange` (one request's facts, labels,
//! log line, body wrappers) → `span` (its tracing span: begun, propagated, reported) →
//! `connection` (the connection and what its requests share) and
//! `local_reply` (answers the proxy makes itself) → `headers`, `forwarded` (the client
//! address behind `X-Forwarded-For`), `limits` (the listener's
//! limits: head scanning, request checks, what a connection's requests share), `replay`,
//! `route_policy`.
#![forbid(unsafe_code)]

pub mod connection;
pub mod exchange;
pub mod filters;
pub mod forward;
pub mod forwarded;
pub mod headers;
pub mod limits;
pub mod local_reply;
pub mod replay;
pub mod route_policy;
pub mod security;
pub mod server;
pub mod span;
