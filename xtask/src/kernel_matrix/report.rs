//! The matrix as tables: kernel × test binary for the terminal, and the README's
//! "Requirements" table (kernel → what works), both markdown.

use std::fmt::Write as _;

use super::guest::{Accel, Ended};
use super::image::Image;
use super::results::{BinaryRun, Outcome, Probe};

/// One kernel's run.
pub struct KernelRun {
    pub image: Image,
    pub ended: Ended,
    pub probe: Option<Probe>,
    /// `(binary name, run)`, in plan order.
    pub binaries: Vec<(String, BinaryRun)>,
}

impl KernelRun {
    pub fn passed(&self) -> bool {
        self.probe.is_some()
            && self
                .binaries
                .iter()
                .all(|(_, run)| run.outcome == Outcome::Passed)
    }

    fn label(&self) -> String {
        format!("{} ({})", self.image.family.name, self.image.release)
    }

    fn ended(&self) -> String {
        match self.ended {
            Ended::Exited { success: true } => "powered off".to_owned(),
            Ended::Exited { success: false } => "qemu failed (see qemu.stderr)".to_owned(),
            Ended::Killed { after } => {
                format!("killed at its timeout, after {} s", after.as_secs())
            }
        }
    }
}

/// The terminal's summary: the table, then per kernel its probe, skips and failures.
pub fn matrix(runs: &[KernelRun], accel: Accel, cpus: usize) -> String {
    let mut out = String::new();
    let names: Vec<&str> = runs
        .first()
        .map(|run| run.binaries.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "kernel matrix ({}, {cpus} CPUs):\n",
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG emulation",
        }
    );
    let _ = writeln!(out, "| kernel | Debian package | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
    for run in runs {
        let cells: Vec<String> = run.binaries.iter().map(|(_, b)| b.cell()).collect();
        let _ = writeln!(
            out,
            "| {} | {} {} | {} |",
            run.label(),
            run.image.package,
            run.image.version,
            cells.join(" | ")
        );
    }
    for run in runs {
        let _ = writeln!(out, "\n{}: guest {}", run.label(), run.ended());
        match &run.probe {
            Some(probe) => {
                let _ = writeln!(out, "  probe: {}", probe.summary());
            }
            None => {
                let _ = writeln!(out, "  probe: no answer (see probe.out)");
            }
        }
        for (name, binary) in &run.binaries {
            for (test, reason) in &binary.skipped {
                let _ = writeln!(out, "  {name}: skipped {test}: {reason}");
            }
            for test in &binary.failed {
                let _ = writeln!(out, "  {name}: FAILED {test}");
            }
            for test in &binary.unfinished {
                let _ = writeln!(out, "  {name}: unfinished {test}");
            }
        }
    }
    out
}

/// The README's table: per kernel, what runs, what the probe says is missing (and so
/// disabled), and the tests' totals.
pub fn requirements(runs: &[KernelRun], date: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| kernel (Debian package, version) | works | missing, so disabled | tests ({date}) |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for run in runs {
        let missing: Vec<String> = run
            .probe
            .iter()
            .flat_map(Probe::missing)
            .map(|f| format!("{} (Linux {}+): {}", f.name, f.since, f.missing_disables))
            .collect();
        let disables_shortcut_only = run.probe.as_ref().is_some_and(|p| {
            p.missing()
                .all(|f| f.missing_disables.contains("sockmap shortcut"))
        });
        let works = match (&run.probe, run.passed()) {
            (Some(_), true) if missing.is_empty() => {
                "eBPF capture (both directions), the sockmap shortcut and splice, iptables \
                 capture, L7"
            }
            (Some(_), true) if disables_shortcut_only => {
                "eBPF capture (both directions), iptables capture, L7"
            }
            (Some(_), true) => "what the tests cover, less what is missing",
            _ => "see the failures below the matrix",
        };
        let (mut passed, mut skipped, mut failed) = (0, 0, 0);
        for (_, binary) in &run.binaries {
            passed += binary.passed;
            skipped += binary.skipped.len();
            failed += binary.failed.len();
        }
        let binaries: Vec<&str> = run.binaries.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(
            out,
            "| {} (`{}` {}) | {works} | {} | {passed} passed, {skipped} skipped, {failed} failed ({}) |",
            run.image.release,
            run.image.package,
            run.image.version,
            if missing.is_empty() {
                "nothing".to_owned()
            } else {
                missing.join("; ")
            },
            binaries.join(", ")
        );
    }
    out
}
