//! How much each bench run does: the full run, `--quick`, and the CI smoke run.

use std::time::Duration;

/// Sizes and durations of one bench run. Every workload is bounded by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: &'static str,
    /// Interleaved repetitions: each one runs every scenario once, in a rotated order.
    pub repetitions: usize,
    /// Measured time of each RR run (after `rr_warmup`).
    pub rr: Duration,
    pub rr_warmup: Duration,
    /// Measured time of each CRR run.
    pub crr: Duration,
    /// Bytes each bulk stream sends (the 1-stream and the 4-stream run alike).
    pub bulk_bytes_per_stream: u64,
    /// Idle proxied connections held while the proxy's RSS is sampled.
    pub idle_connections: &'static [usize],
    pub idle_hold: Duration,
    /// Measured time of each L7 run (max rps and both fixed rates), after `l7_warmup`.
    pub l7: Duration,
    pub l7_warmup: Duration,
    /// The first fixed L7 rate, requests/s (the second is half the lowest max rps).
    pub l7_fixed_rps: u32,
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

pub const FULL: Plan = Plan {
    name: "full",
    repetitions: 5,
    rr: Duration::from_secs(3),
    rr_warmup: Duration::from_millis(300),
    crr: Duration::from_secs(3),
    bulk_bytes_per_stream: GIB,
    idle_connections: &[1000, 4000],
    idle_hold: Duration::from_millis(1500),
    l7: Duration::from_secs(3),
    l7_warmup: Duration::from_millis(500),
    l7_fixed_rps: 1000,
};

/// Under 5 minutes: fewer, shorter repetitions, 128 MiB streams, 1k idle connections only,
/// 1 s L7 runs.
pub const QUICK: Plan = Plan {
    name: "quick",
    repetitions: 3,
    rr: Duration::from_secs(1),
    rr_warmup: Duration::from_millis(200),
    crr: Duration::from_secs(1),
    bulk_bytes_per_stream: 128 * MIB,
    idle_connections: &[1000],
    idle_hold: Duration::from_millis(800),
    l7: Duration::from_secs(1),
    l7_warmup: Duration::from_millis(300),
    l7_fixed_rps: 1000,
};

/// What `cargo xtask test` runs: every scenario and workload once, tiny, for the structure.
pub const SMOKE: Plan = Plan {
    name: "smoke",
    repetitions: 1,
    rr: Duration::from_millis(200),
    rr_warmup: Duration::from_millis(50),
    crr: Duration::from_millis(200),
    bulk_bytes_per_stream: 4 * MIB,
    idle_connections: &[50],
    idle_hold: Duration::from_millis(300),
    l7: Duration::from_millis(300),
    l7_warmup: Duration::from_millis(100),
    // Debug binaries on a busy machine: a rate they keep, since only the structure is judged.
    l7_fixed_rps: 200,
};

pub const ALL: [Plan; 3] = [FULL, QUICK, SMOKE];

impl Plan {
    pub fn named(name: &str) -> Option<Self> {
        ALL.into_iter().find(|plan| plan.name == name)
    }

    /// "1 GiB" / "128 MiB": how the table names the bulk size.
    pub fn bulk_size_label(&self) -> String {
        if self.bulk_bytes_per_stream % GIB == 0 {
            format!("{} GiB", self.bulk_bytes_per_stream / GIB)
        } else {
            format!("{} MiB", self.bulk_bytes_per_stream / MIB)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_found_by_name_and_label_their_bulk_size() {
        let cases = [("full", "1 GiB"), ("quick", "128 MiB"), ("smoke", "4 MiB")];
        for (name, bulk) in cases {
            let plan = Plan::named(name).expect("every plan is listed in ALL");
            assert_eq!(plan.name, name);
            assert_eq!(plan.bulk_size_label(), bulk, "{name}");
        }
        assert_eq!(Plan::named("huge"), None);
    }
}
