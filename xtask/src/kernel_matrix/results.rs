//! What came back from a guest: per test binary its libtest output (`<name>.out`, run with
//! `--show-output` so that a passing test's `SKIPPED <test>: <reason>` line is printed) and
//! its exit status (`<name>.rc`, written when it finished), and the agent's kernel probe.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::guest::Ended;

/// How one test binary did in one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryRun {
    pub outcome: Outcome,
    /// Tests that passed without skipping.
    pub passed: u64,
    pub failed: Vec<String>,
    /// `(test, reason)`, in the order printed.
    pub skipped: Vec<(String, String)>,
    pub ignored: u64,
    /// Tests libtest reported as running over 60 s, not finished when the guest stopped.
    pub unfinished: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0, no failed test.
    Passed,
    /// Exited with this status, or a test failed.
    Failed { status: i32 },
    /// Still running when the guest was killed at its timeout.
    Hung,
    /// Started, but the guest stopped (panicked, powered off) before it finished.
    Interrupted,
    /// Never started.
    NotRun,
}

impl BinaryRun {
    /// Reads `<name>.out` and `<name>.rc` in `dir`, for a guest that ended as `ended`.
    pub fn read(dir: &Path, name: &str, ended: Ended) -> Self {
        let output = std::fs::read_to_string(dir.join(format!("{name}.out"))).ok();
        let status = std::fs::read_to_string(dir.join(format!("{name}.rc")))
            .ok()
            .and_then(|rc| rc.trim().parse::<i32>().ok());
        Self::parse(output.as_deref(), status, ended)
    }

    fn parse(output: Option<&str>, status: Option<i32>, ended: Ended) -> Self {
        let mut run = Self {
            outcome: Outcome::NotRun,
            passed: 0,
            failed: Vec::new(),
            skipped: Vec::new(),
            ignored: 0,
            unfinished: Vec::new(),
        };
        let Some(output) = output else {
            return run;
        };
        let mut passed = BTreeSet::new();
        let mut skipped_tests = BTreeSet::new();
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix("SKIPPED ")
                && let Some((test, reason)) = rest.split_once(": ")
            {
                if skipped_tests.insert(test.to_owned()) {
                    run.skipped
                        .push((test.to_owned(), reason.trim().to_owned()));
                }
                continue;
            }
            let Some(rest) = line.strip_prefix("test ") else {
                continue;
            };
            if let Some(test) = rest.strip_suffix(" ... ok") {
                passed.insert(test.to_owned());
            } else if let Some(test) = rest.strip_suffix(" ... FAILED") {
                run.failed.push(test.to_owned());
            } else if rest.ends_with(" ... ignored") || rest.contains(" ... ignored, ") {
                run.ignored += 1;
            } else if let Some(test) = rest.strip_suffix(" has been running for over 60 seconds") {
                run.unfinished.push(test.to_owned());
            }
        }
        run.unfinished
            .retain(|test| !passed.contains(test) && !run.failed.contains(test));
        // A skipping test passes as far as libtest knows; it is counted once, as skipped.
        run.passed = (passed.len() as u64).saturating_sub(run.skipped.len() as u64);
        run.outcome = match (status, ended) {
            (Some(0), _) if run.failed.is_empty() => Outcome::Passed,
            (Some(status), _) => Outcome::Failed { status },
            (None, Ended::Killed { .. }) => Outcome::Hung,
            (None, Ended::Exited { .. }) => Outcome::Interrupted,
        };
        run
    }

    /// The table's cell, e.g. `5 passed, 1 skipped` or `FAILED: 2 of 7`.
    pub fn cell(&self) -> String {
        let mut counts = vec![format!("{} passed", self.passed)];
        if !self.skipped.is_empty() {
            counts.push(format!("{} skipped", self.skipped.len()));
        }
        if self.ignored > 0 {
            counts.push(format!("{} ignored", self.ignored));
        }
        let counts = counts.join(", ");
        let total = self.passed + self.skipped.len() as u64 + self.failed.len() as u64;
        match &self.outcome {
            Outcome::Passed => counts,
            Outcome::Failed { .. } if !self.failed.is_empty() => {
                format!("FAILED: {} of {total}", self.failed.len())
            }
            Outcome::Failed { status } => format!("FAILED (exit {status}); {counts}"),
            Outcome::Hung => format!("HUNG (killed); {counts} before"),
            Outcome::Interrupted => format!("INTERRUPTED (guest stopped); {counts} before"),
            Outcome::NotRun => "not run".to_owned(),
        }
    }
}

/// The first sign, in a guest's serial console, that its kernel died: the Oops, BUG or
/// panic line, with the `RIP:` line that follows it when there is one
/// (`Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; RIP: 0010:tcp_v4_pre_connect+0x17/0x40`).
/// `None` for a kernel that powered off by itself.
#[must_use]
pub fn kernel_death(console: &str) -> Option<String> {
    const SIGNS: [&str; 5] = [
        "Oops:",
        "BUG:",
        "Kernel panic - not syncing",
        "general protection fault",
        "kernel BUG at",
    ];
    let lines: Vec<&str> = console.lines().collect();
    let (at, first) = lines
        .iter()
        .enumerate()
        .find(|(_, line)| SIGNS.iter().any(|sign| line.contains(sign)))?;
    // The console's `[  12.345678] ` timestamps say nothing to the reader of the table.
    let strip = |line: &str| match line.trim_start().strip_prefix('[') {
        Some(rest) => rest
            .split_once("] ")
            .map_or(line, |(_, text)| text)
            .trim()
            .to_owned(),
        None => line.trim().to_owned(),
    };
    let rip = lines[at + 1..]
        .iter()
        .take(20)
        .find(|line| line.contains("RIP:"))
        .map(|line| strip(line));
    Some(match rip {
        Some(rip) => format!("{}; {rip}", strip(first)),
        None => strip(first),
    })
}

/// A feature of the agent's kernel probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    /// `None`: the probe could not tell.
    pub supported: Option<bool>,
    pub since: String,
    pub missing_disables: String,
}

/// `shunt-agent --probe-kernel` in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    pub kernel_release: String,
    pub btf: bool,
    pub features: Vec<Feature>,
}

impl Probe {
    pub fn parse(text: &str) -> Option<Self> {
        let report: Value = serde_json::from_str(text).ok()?;
        let probe = &report["probe"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(Self {
            kernel_release: probe["kernel_release"].as_str()?.to_owned(),
            btf: probe["btf_vmlinux"].as_bool().unwrap_or(false),
            features: probe["features"]
                .as_array()?
                .iter()
                .map(|f| Feature {
                    name: text(&f["name"]),
                    supported: f["supported"].as_bool(),
                    since: text(&f["since"]),
                    missing_disables: text(&f["missing_disables"]),
                })
                .collect(),
        })
    }

    /// `name ✓` or `name ✗ (6.10+)` for each feature, comma-separated.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .features
            .iter()
            .map(|f| match f.supported {
                Some(true) => format!("{} ✓", f.name),
                Some(false) => format!("{} ✗ (Linux {}+)", f.name, f.since),
                None => format!("{} ?", f.name),
            })
            .collect();
        parts.push(format!("BTF {}", if self.btf { "✓" } else { "✗" }));
        parts.join(", ")
    }

    pub fn missing(&self) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(|f| f.supported == Some(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXITED: Ended = Ended::Exited { success: true };
    const KILLED: Ended = Ended::Killed {
        after: std::time::Duration::from_secs(60),
    };

    const PASSED_WITH_A_SKIP: &str = "
running 3 tests
test a ... ok
test b ... ok
test c ... ignored
successes:

---- b stdout ----
SKIPPED b: kernel 6.1.0-57-amd64 lacks sockmap links (pinning sk_msg) (Linux 6.10+), which the sockmap shortcut needs

successes:
    a
    b

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s
";

    const ONE_FAILED: &str = "
running 2 tests
test x::ebpf ... ok
test x::iptables ... FAILED
failures:

---- x::iptables stdout ----
thread 'x::iptables' panicked at tests/tests/e2e.rs:1:1:
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
";

    const STILL_RUNNING: &str = "
running 2 tests
test quick ... ok
test slow has been running for over 60 seconds
";

    #[test]
    fn outcomes_and_counts_come_from_the_output_and_the_status() {
        let cases = [
            (
                Some(PASSED_WITH_A_SKIP),
                Some(0),
                EXITED,
                Outcome::Passed,
                1,
                0,
                1,
                "1 passed, 1 skipped, 1 ignored",
            ),
            (
                Some(ONE_FAILED),
                Some(101),
                EXITED,
                Outcome::Failed { status: 101 },
                1,
                1,
                0,
                "FAILED: 1 of 2",
            ),
            (
                Some(STILL_RUNNING),
                None,
                KILLED,
                Outcome::Hung,
                1,
                0,
                0,
                "HUNG (killed); 1 passed before",
            ),
            (
                Some(STILL_RUNNING),
                None,
                EXITED,
                Outcome::Interrupted,
                1,
                0,
                0,
                "INTERRUPTED (guest stopped); 1 passed before",
            ),
            (
                Some("error: no such file"),
                Some(127),
                EXITED,
                Outcome::Failed { status: 127 },
                0,
                0,
                0,
                "FAILED (exit 127); 0 passed",
            ),
            (None, None, EXITED, Outcome::NotRun, 0, 0, 0, "not run"),
        ];
        for (output, status, ended, outcome, passed, failed, skipped, cell) in cases {
            let run = BinaryRun::parse(output, status, ended);
            assert_eq!(run.outcome, outcome, "{output:?}");
            assert_eq!(run.passed, passed, "{output:?}");
            assert_eq!(run.failed.len(), failed, "{output:?}");
            assert_eq!(run.skipped.len(), skipped, "{output:?}");
            assert_eq!(run.cell(), cell, "{output:?}");
        }
    }

    #[test]
    fn skips_keep_their_reasons_and_hung_tests_are_named() {
        let run = BinaryRun::parse(Some(PASSED_WITH_A_SKIP), Some(0), EXITED);
        assert_eq!(run.skipped[0].0, "b");
        assert!(
            run.skipped[0]
                .1
                .starts_with("kernel 6.1.0-57-amd64 lacks sockmap links")
        );
        let run = BinaryRun::parse(Some(STILL_RUNNING), None, KILLED);
        assert_eq!(run.unfinished, ["slow"]);
    }

    #[test]
    fn a_dead_guest_kernel_is_named_by_its_first_oops_and_rip() {
        let oops = "[    0.000000] Linux version 6.12.118\n\
[  512.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
[  512.1] CPU: 1 UID: 0 PID: 4242 Comm: e2e-1234\n\
[  512.1] RIP: 0010:tcp_v4_pre_connect+0x17/0x40\n\
[  512.2] Kernel panic - not syncing: Fatal exception in interrupt\n";
        let cases = [
            (
                oops,
                Some(
                    "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; RIP: 0010:tcp_v4_pre_connect+0x17/0x40",
                ),
            ),
            (
                "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
                Some("Kernel panic - not syncing: VFS: Unable to mount root fs"),
            ),
            (
                "BUG: kernel NULL pointer dereference, address: 0000000000000008\n",
                Some("BUG: kernel NULL pointer dereference, address: 0000000000000008"),
            ),
            ("[ 1.0] reboot: Power down\n", None),
            ("", None),
        ];
        for (console, want) in cases {
            assert_eq!(kernel_death(console).as_deref(), want, "{console:?}");
        }
    }

    #[test]
    fn the_probe_lists_every_feature() {
        let probe = Probe::parse(
            r#"{"probe": {"kernel_release": "6.1.0-57-amd64", "btf_vmlinux": true, "features": [
                {"name": "sk_lookup programs", "supported": true, "since": "5.9", "missing_disables": "inbound capture"},
                {"name": "sockmap links (pinning sk_msg)", "supported": false, "since": "6.10", "missing_disables": "the sockmap shortcut (--sockmap-shortcut)"}
            ]}, "ebpf_capture_missing": null}"#,
        )
        .unwrap();
        assert_eq!(
            probe.summary(),
            "sk_lookup programs ✓, sockmap links (pinning sk_msg) ✗ (Linux 6.10+), BTF ✓"
        );
        assert_eq!(probe.missing().count(), 1);
        assert!(Probe::parse("not json").is_none());
    }
}
