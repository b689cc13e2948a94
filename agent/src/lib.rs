//! shunt's node agent: loads and pins the eBPF capture programs (or installs iptables rules),
//! reads the config, decides which pods are captured, hands them to the proxy, and serves the
//! admin API.
#![deny(unsafe_code)]
pub mod admin;
pub mod allocator;
pub mod app;
pub mod bpf_log;
pub mod ca;
pub mod capture;
pub mod cni_install;
pub mod cni_server;
pub mod config;
pub mod control;
pub mod discovery;
pub mod netns;
pub mod own_daemon_set;
pub mod pod_marks;
pub mod pods;
pub mod proxy_cgroup;
pub mod source;
pub mod web;
