//! The proxy's side of the control connection to the agent.
pub mod client;
pub mod tcp_events;
