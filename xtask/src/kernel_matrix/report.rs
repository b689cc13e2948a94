//! The matrix as tables: kernel × test binary for the terminal, and the README's
//! "Requirements" table (kernel → what works), both markdown.

use std::fmt::Write as _;

use super::guest::{Accel, Ended};
use super::image::Image;
use super::results::{BinaryRun, Outcome, Probe};

/// A guest booted a second time because its kernel died under the tests.
pub struct Reboot {
    /// The first boot's Oops or panic line (`results::kernel_death`).
    pub death: String,
    /// The binaries the second boot ran: those the first did not finish.
    pub rerun: Vec<String>,
}

/// One kernel's run.
pub struct KernelRun {
    pub image: Image,
    /// How the last boot ended.
    pub ended: Ended,
    pub reboot: Option<Reboot>,
    /// How the last boot's kernel died, if it did.
    pub death: Option<String>,
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
        let cells: Vec<String> = run
            .binaries
            .iter()
            .map(|(name, b)| match &run.reboot {
                Some(reboot) if reboot.rerun.contains(name) => {
                    format!("{} (second boot)", b.cell())
                }
                _ => b.cell(),
            })
            .collect();
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
        if let Some(reboot) = &run.reboot {
            let _ = writeln!(
                out,
                "  first boot: the kernel died ({}); booted again with single-threaded TCG for {} (boot-1.* files)",
                reboot.death,
                reboot.rerun.join(", ")
            );
        }
        if let Some(death) = &run.death {
            let _ = writeln!(out, "  the kernel died: {death} (console.log)");
        }
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

/// What the passing binaries show to work on this kernel, e.g. `eBPF and iptables capture, L7
/// traffic management`; a binary that failed shows nothing.
fn works(run: &KernelRun) -> String {
    let passed = |name: &str| {
        run.binaries
            .iter()
            .any(|(n, b)| n == name && b.outcome == Outcome::Passed)
    };
    let shortcut = run.probe.as_ref().is_some_and(|p| {
        !p.missing()
            .any(|f| f.missing_disables.contains("sockmap shortcut"))
    });
    let mut parts = Vec::new();
    if passed("capture") && passed("e2e") {
        parts.push("eBPF and iptables capture");
        if shortcut {
            parts.push("the sockmap shortcut and splice");
        }
    }
    if passed("l7") {
        parts.push("L7 traffic management");
    }
    if passed("multinode") {
        parts.push("two nodes");
    }
    if parts.is_empty() {
        "— (see the failures under the matrix)".to_owned()
    } else {
        parts.join(", ")
    }
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
        let works = works(run);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_matrix::image::FAMILIES;
    use crate::kernel_matrix::results::Feature;

    fn run(shortcut_missing: bool, l7: Outcome) -> KernelRun {
        let binary = |outcome: Outcome| BinaryRun {
            outcome,
            passed: 3,
            failed: Vec::new(),
            skipped: Vec::new(),
            ignored: 0,
            unfinished: Vec::new(),
        };
        KernelRun {
            image: Image {
                family: FAMILIES[0],
                package: "linux-image-6.1.0-57-amd64".into(),
                version: "6.1.192-3".into(),
                release: "6.1.0-57-amd64".into(),
                root: "/nonexistent".into(),
            },
            ended: Ended::Exited { success: true },
            reboot: None,
            death: None,
            probe: Some(Probe {
                kernel_release: "6.1.0-57-amd64".into(),
                btf: true,
                features: vec![Feature {
                    name: "sockmap links (pinning sk_msg)".into(),
                    supported: Some(!shortcut_missing),
                    since: "6.10".into(),
                    missing_disables: "the sockmap shortcut (--sockmap-shortcut)".into(),
                }],
            }),
            binaries: vec![
                ("capture".into(), binary(Outcome::Passed)),
                ("e2e".into(), binary(Outcome::Passed)),
                ("l7".into(), binary(l7)),
            ],
        }
    }

    #[test]
    fn what_works_follows_the_probe_and_the_passing_binaries() {
        let cases = [
            (
                false,
                Outcome::Passed,
                "eBPF and iptables capture, the sockmap shortcut and splice, L7 traffic management",
            ),
            (
                true,
                Outcome::Passed,
                "eBPF and iptables capture, L7 traffic management",
            ),
            (true, Outcome::Hung, "eBPF and iptables capture"),
        ];
        for (missing, l7, want) in cases {
            assert_eq!(works(&run(missing, l7.clone())), want, "{missing} {l7:?}");
        }
    }

    #[test]
    fn the_requirements_row_names_package_missing_feature_and_totals() {
        let table = requirements(&[run(true, Outcome::Passed)], "2026-12-07");
        let row = table.lines().nth(2).unwrap();
        for part in [
            "6.1.0-57-amd64 (`linux-image-6.1.0-57-amd64` 6.1.192-3)",
            "sockmap links (pinning sk_msg) (Linux 6.10+): the sockmap shortcut",
            "9 passed, 0 skipped, 0 failed (capture, e2e, l7)",
        ] {
            assert!(row.contains(part), "{part} in {row}");
        }
        assert!(table.contains("tests (2026-12-07)"), "{table}");
    }
}
