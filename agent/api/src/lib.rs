//! The agent's interfaces, shared by the agent, the proxy and `shuntctl`:
//! - [`control`]: the agent ↔ proxy control protocol (frames, `SCM_RIGHTS` descriptors);
//! - [`netns`]: entering a pod's network namespace from a thread, which both sides do;
//! - [`admin`], [`capture`], [`config`], [`clusters`]: the admin API's JSON types, and its
//!   client (`admin_client`, feature `client`);
//! - [`certs`]: what the proxy reports of its workload certificates (`/debug/certs`);
//! - [`flows`]: the proxy's flow events (`/flows`), which `shuntctl flows` reads;
//! - [`k8s`]: the Kubernetes objects a config source reads;
//! - [`cni`]: the `shunt-cni` plugin ↔ agent protocol (`cni.sock`);
//! - [`mounts`]: /proc/mounts parsed (the agent's bpffs and cgroup2, `shuntctl precheck`);
//! - [`run_dir`]: where an instance's sockets live (`/run/shunt/<instance>/`).
#![deny(unsafe_code)]

pub mod admin;
#[cfg(feature = "client")]
pub mod admin_client;
pub mod capture;
pub mod certs;
pub mod clusters;
pub mod cni;
pub mod config;
pub mod control;
pub mod credentials;
pub mod flows;
pub mod k8s;
pub mod mounts;
pub mod netns;
pub mod report;
pub mod run_dir;
