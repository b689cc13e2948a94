//! What the running kernel offers, as the agent's own probe says (`shunt-agent --probe-kernel`,
//! the probe `shuntctl status` shows). A privileged test that needs a kernel feature skips by
//! it, with the missing feature named, instead of failing on an older kernel.

use std::process::Command;

use serde_json::Value;

use crate::binaries::{self, Binaries};

/// What a test needs of the kernel, in the agent's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// eBPF capture without the shortcut.
    EbpfCapture,
    /// eBPF capture with `--sockmap-shortcut`.
    SockmapShortcut,
}

impl Needs {
    /// The field of the agent's `KernelSupport` that answers it.
    const fn field(self) -> &'static str {
        match self {
            Self::EbpfCapture => "ebpf_capture_missing",
            Self::SockmapShortcut => "sockmap_shortcut_missing",
        }
    }

    const fn what(self) -> &'static str {
        match self {
            Self::EbpfCapture => "eBPF capture",
            Self::SockmapShortcut => "the sockmap shortcut",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binary(#[from] binaries::Error),
    #[error("could not run `shunt-agent --probe-kernel`: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`shunt-agent --probe-kernel` failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error(
        "`shunt-agent --probe-kernel` printed something else than the kernel probe \
         (is the agent older than these tests? rebuild it): {0}"
    )]
    Parse(String),
}

/// A feature the kernel lacks, as the agent's probe names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// `uname -r`.
    pub kernel_release: String,
    pub feature: String,
    /// The first Linux release that has it.
    pub since: String,
}

impl Missing {
    /// The reason a test prints when it skips.
    #[must_use]
    pub fn reason(&self, needs: Needs) -> String {
        format!(
            "kernel {} lacks {} (Linux {}+), which {} needs",
            self.kernel_release,
            self.feature,
            self.since,
            needs.what()
        )
    }
}

/// The first feature the running kernel lacks for `needs`, or `None` when it has everything.
pub fn missing(binaries: &Binaries, needs: Needs) -> Result<Option<Missing>, Error> {
    let output = Command::new(binaries.agent()?)
        .arg("--probe-kernel")
        .output()
        .map_err(Error::Spawn)?;
    if !output.status.success() {
        return Err(Error::Failed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    parse(&String::from_utf8_lossy(&output.stdout), needs)
}

fn parse(report: &str, needs: Needs) -> Result<Option<Missing>, Error> {
    let report: Value =
        serde_json::from_str(report).map_err(|e| Error::Parse(format!("{e}: {report}")))?;
    let kernel_release = report["probe"]["kernel_release"]
        .as_str()
        .ok_or_else(|| Error::Parse(format!("no probe.kernel_release in {report}")))?
        .to_owned();
    let feature = report
        .get(needs.field())
        .ok_or_else(|| Error::Parse(format!("no {} in {report}", needs.field())))?;
    if feature.is_null() {
        return Ok(None);
    }
    let text = |field: &str| {
        feature[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Parse(format!("no {}.{field} in {report}", needs.field())))
    };
    Ok(Some(Missing {
        kernel_release,
        feature: text("name")?,
        since: text("since")?,
    }))
}

/// For a privileged test that needs `needs`: true (after printing `SKIPPED <test>: <reason>`,
/// the line the kernel matrix counts skips by) when the kernel lacks it. A probe that cannot
/// run fails the test: a test that skipped on a broken build could never fail.
#[must_use]
pub fn skip_unless_supported(test_name: &str, binaries: &Binaries, needs: Needs) -> bool {
    match missing(binaries, needs) {
        Ok(None) => false,
        Ok(Some(missing)) => {
            println!("SKIPPED {test_name}: {}", missing.reason(needs));
            true
        }
        Err(e) => panic!("{test_name}: probing the kernel: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_KERNEL: &str = r#"{
        "probe": {"kernel_release": "6.1.0-57-amd64", "btf_vmlinux": true,
                  "cgroup2_mount": null, "bpffs_mount": null, "features": []},
        "ebpf_capture_missing": null,
        "sockmap_shortcut_missing": {"name": "sockmap links (pinning sk_msg)", "supported": false,
            "since": "6.10", "missing_disables": "the sockmap shortcut (--sockmap-shortcut)"}
    }"#;

    #[test]
    fn the_probe_decides_per_need() {
        let cases = [
            (OLD_KERNEL, Needs::EbpfCapture, None),
            (
                OLD_KERNEL,
                Needs::SockmapShortcut,
                Some(Missing {
                    kernel_release: "6.1.0-57-amd64".into(),
                    feature: "sockmap links (pinning sk_msg)".into(),
                    since: "6.10".into(),
                }),
            ),
        ];
        for (report, needs, want) in cases {
            assert_eq!(parse(report, needs).unwrap(), want, "{needs:?}");
        }
    }

    #[test]
    fn the_reason_names_kernel_feature_and_need() {
        let missing = parse(OLD_KERNEL, Needs::SockmapShortcut).unwrap().unwrap();
        assert_eq!(
            missing.reason(Needs::SockmapShortcut),
            "kernel 6.1.0-57-amd64 lacks sockmap links (pinning sk_msg) (Linux 6.10+), which \
             the sockmap shortcut needs"
        );
    }

    #[test]
    fn a_report_of_another_shape_is_an_error() {
        let no_answer = r#"{"probe": {"kernel_release": "6.1.0-57-amd64"}}"#;
        for report in ["", "{}", r#"{"probe": {}}"#, no_answer] {
            assert!(
                parse(report, Needs::EbpfCapture).is_err(),
                "{report:?} was accepted"
            );
        }
    }
}
