//! Operator logs through aya-log, off unless the agent runs with `--bpf-log LEVEL`.
//!
//! Each macro asks [`enabled`] first. The level is in `SETTINGS`, which the agent writes at
//! every start (adopted programs follow a restarted agent's level), so a log that is off costs
//! an array lookup and a branch, and only on the paths that log: a refused direct connect, a
//! failed map insert, an original destination not found, a shortcut fallback.
//!
//! A message names what it concerns as `netns=<cookie>` or `pod_ip=<address>`, first; the
//! agent adds the pod's name (`agent/src/bpf_log.rs`).

use crate::maps::SETTINGS;

/// Whether messages of `level` (`shunt_common::LOG_*`) are wanted.
pub(crate) fn enabled(level: u32) -> bool {
    SETTINGS
        .get(0)
        .is_some_and(|settings| settings.log_level >= level)
}

macro_rules! log_error {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::logs::enabled(shunt_common::LOG_ERROR) {
            aya_log_ebpf::error!($ctx, $($arg)+);
        }
    };
}

macro_rules! log_warn {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::logs::enabled(shunt_common::LOG_WARN) {
            aya_log_ebpf::warn!($ctx, $($arg)+);
        }
    };
}

macro_rules! log_info {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::logs::enabled(shunt_common::LOG_INFO) {
            aya_log_ebpf::info!($ctx, $($arg)+);
        }
    };
}

macro_rules! log_debug {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::logs::enabled(shunt_common::LOG_DEBUG) {
            aya_log_ebpf::debug!($ctx, $($arg)+);
        }
    };
}

pub(crate) use {log_debug, log_error, log_info, log_warn};
