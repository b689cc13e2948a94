//! The agent's admin HTTP port (issue 19 §4, §6). So far only the mesh graph's math
//! (`graph`) and its drawing (`svg`): the listener, `/metrics` and the `/graph` page are not
//! written yet.
pub mod graph;
pub mod svg;
