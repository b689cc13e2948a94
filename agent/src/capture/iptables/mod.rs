//! iptables capture (`shunt-agent --capture=iptables`): the fallback for kernels without
//! `sk_lookup` or cgroup-bpf, and the benchmarks' baseline. No eBPF is loaded.
//!
//! In each captured pod's netns the agent installs the nat rules Istio's `istio-init` would
//! ([`rules`]): outbound TCP REDIRECTed to the proxy's 15001, inbound to its 15006, the proxy's
//! own (marked) connections and loopback left alone. `iptables` runs as a child of a thread
//! that entered the pod's netns, so the mount namespace (and /sys) is never touched.
//!
//! Each captured pod has a record, `<record dir>/<netns cookie>.json`, naming its netns file:
//! after a restart the agent finds the rules it installed, and `--uninstall` removes them.
#![forbid(unsafe_code)]

pub mod rules;

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use shunt_api::capture::{IptablesStatus, PodRulesStatus};

use crate::capture::ebpf::PodCapture;
use crate::netns::open_pod_netns;
use rules::{NatTable, PodRules};

/// The folder of pod records, under the agent's run dir.
pub const RECORD_DIR: &str = "iptables";
/// Waits this long for the xtables lock (iptables-legacy) instead of failing at once.
const LOCK_WAIT_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot run `{command}`: {source} — iptables capture needs the iptables package \
         (iptables-nft or iptables-legacy) on PATH"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` in the network namespace {} failed ({status}): {stderr}", netns.display())]
    Command {
        command: String,
        netns: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot enter the network namespace {}: {source}", netns.display())]
    Netns {
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {action} the iptables pod record {}: {source}", path.display())]
    Record {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the iptables pod record {} is not valid: {source}", path.display())]
    BadRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What the agent remembers of a captured pod, so that its rules can be found again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub netns_cookie: u64,
    pub netns: PathBuf,
    pub pod_ip: Ipv4Addr,
}

/// iptables capture of this agent's pods.
#[derive(Debug)]
pub struct IptablesCapture {
    record_dir: PathBuf,
    version: String,
}

impl IptablesCapture {
    /// Checks that iptables runs and creates the record folder.
    pub fn new(record_dir: &Path) -> Result<Self, Error> {
        let version = iptables_version()?;
        std::fs::create_dir_all(record_dir).map_err(|source| Error::Record {
            action: "create the folder of",
            path: record_dir.to_owned(),
            source,
        })?;
        tracing::info!(%version, records = %record_dir.display(), "iptables capture");
        Ok(Self {
            record_dir: record_dir.to_owned(),
            version,
        })
    }

    /// Installs (or adopts, or updates in place) the pod's rules. The record is written first,
    /// so a crash halfway still leaves `--uninstall` a way to the rules.
    pub fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Error> {
        let record = PodRecord {
            netns_cookie: pod.netns_cookie,
            netns: pod.netns_path.to_owned(),
            pod_ip: pod.pod_ip,
        };
        write_record(&self.record_dir, &record)?;
        let wanted = PodRules {
            excluded_outbound_ports: pod.excluded_outbound_ports.clone(),
            excluded_inbound_ports: pod.excluded_inbound_ports.clone(),
        };
        let current = nat_table(pod.netns, pod.netns_path)?;
        match wanted.install_script(&current) {
            Some(script) => {
                iptables_restore(pod.netns, pod.netns_path, &script)?;
                tracing::info!(netns = %pod.netns_path.display(), "iptables rules installed");
            }
            None => {
                tracing::debug!(netns = %pod.netns_path.display(), "iptables rules already in place");
            }
        }
        Ok(())
    }

    /// Removes the rules of the pod whose netns has `netns_cookie`, and its record.
    pub fn remove_pod(&mut self, netns_cookie: u64) -> Result<(), Error> {
        let path = record_path(&self.record_dir, netns_cookie);
        match read_record(&path)? {
            Some(record) => remove_rules(&record, &path),
            None => Ok(()),
        }
    }

    /// Netns cookies of the recorded pods.
    pub fn captured_netns(&self) -> Result<Vec<u64>, Error> {
        Ok(records(&self.record_dir)?
            .into_iter()
            .map(|(_, record)| record.netns_cookie)
            .collect())
    }

    #[must_use]
    pub fn status(&self) -> IptablesStatus {
        let mut errors = Vec::new();
        let mut pods = Vec::new();
        match records(&self.record_dir) {
            Ok(records) => {
                for (_, record) in records {
                    let rules = in_recorded_netns(&record, |netns| nat_table(netns, &record.netns))
                        .map(|table| table.map(|table| table.shunt_rules()).unwrap_or_default());
                    match rules {
                        Ok(rules) => pods.push(PodRulesStatus {
                            netns_cookie: record.netns_cookie,
                            netns: record.netns.clone(),
                            pod_ip: record.pod_ip,
                            rules,
                        }),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        IptablesStatus {
            iptables: self.version.clone(),
            record_dir: self.record_dir.clone(),
            pods,
            errors,
        }
    }

    /// Whether any pod is recorded in `record_dir`: iptables capture is installed (maybe by an
    /// agent that has since stopped).
    pub fn installed(record_dir: &Path) -> Result<bool, Error> {
        Ok(record_dir.exists() && !records(record_dir)?.is_empty())
    }

    /// Removes the rules of every recorded pod, the records and their folder. Returns the
    /// records removed; with nothing recorded that is nothing, not an error.
    pub fn uninstall(record_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        if !record_dir.exists() {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        for (path, record) in records(record_dir)? {
            remove_rules(&record, &path)?;
            removed.push(path);
        }
        std::fs::remove_dir(record_dir).map_err(|source| Error::Record {
            action: "remove the folder of",
            path: record_dir.to_owned(),
            source,
        })?;
        removed.push(record_dir.to_owned());
        tracing::info!(pods = removed.len() - 1, "iptables capture uninstalled");
        Ok(removed)
    }
}

/// Removes a recorded pod's rules, then its record. A netns that is gone took its rules with
/// it; a netns file that now names another namespace (the pod was recreated) is left alone.
fn remove_rules(record: &PodRecord, path: &Path) -> Result<(), Error> {
    let removed = in_recorded_netns(record, |netns| {
        let current = nat_table(netns, &record.netns)?;
        if let Some(script) = rules::remove_script(&current) {
            iptables_restore(netns, &record.netns, &script)?;
            tracing::info!(netns = %record.netns.display(), "iptables rules removed");
        }
        Ok(())
    })?;
    if removed.is_none() {
        tracing::debug!(netns = %record.netns.display(), "pod netns gone; nothing to remove");
    }
    std::fs::remove_file(path).map_err(|source| Error::Record {
        action: "remove",
        path: path.to_owned(),
        source,
    })
}

/// Runs `f` with the recorded netns when it still is the one recorded; `None` otherwise.
fn in_recorded_netns<T>(
    record: &PodRecord,
    f: impl FnOnce(BorrowedFd<'_>) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    use std::os::fd::AsFd as _;
    match open_pod_netns(&record.netns) {
        Ok(netns) if netns.cookie == record.netns_cookie => f(netns.fd.as_fd()).map(Some),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Netns {
            netns: record.netns.clone(),
            source,
        }),
    }
}

fn nat_table(netns: BorrowedFd<'_>, netns_path: &Path) -> Result<NatTable, Error> {
    let listing = run_in(
        netns,
        netns_path,
        "iptables",
        &["-w", LOCK_WAIT_SECS, "-t", "nat", "-S"],
        None,
    )?;
    Ok(NatTable::parse(&listing))
}

fn iptables_restore(netns: BorrowedFd<'_>, netns_path: &Path, script: &str) -> Result<(), Error> {
    run_in(
        netns,
        netns_path,
        "iptables-restore",
        &["-w", LOCK_WAIT_SECS, "--noflush"],
        Some(script),
    )
    .map(drop)
}

/// Runs `program args` in `netns` (the child inherits the netns of the thread that spawns
/// it), with `stdin` as its input; returns its stdout.
fn run_in(
    netns: BorrowedFd<'_>,
    netns_path: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let command = match stdin {
        Some(script) => format!("{program} {} with input:\n{script}", args.join(" ")),
        None => format!("{program} {}", args.join(" ")),
    };
    let output = shunt_api::netns::run_in_netns(netns, || {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(script), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(script.as_bytes())?;
        }
        child.wait_with_output()
    })
    .map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            netns: netns_path.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn iptables_version() -> Result<String, Error> {
    let spawn_error = |source| Error::Spawn {
        command: "iptables --version".to_owned(),
        source,
    };
    let output = Command::new("iptables")
        .arg("--version")
        .output()
        .map_err(spawn_error)?;
    if !output.status.success() {
        return Err(spawn_error(std::io::Error::other(format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn record_path(record_dir: &Path, netns_cookie: u64) -> PathBuf {
    record_dir.join(format!("{netns_cookie}.json"))
}

fn write_record(record_dir: &Path, record: &PodRecord) -> Result<(), Error> {
    let path = record_path(record_dir, record.netns_cookie);
    let body = serde_json::to_vec_pretty(record).map_err(|source| Error::BadRecord {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, body).map_err(|source| Error::Record {
        action: "write",
        path,
        source,
    })
}

fn read_record(path: &Path) -> Result<Option<PodRecord>, Error> {
    let body = match std::fs::read(path) {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Record {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|source| Error::BadRecord {
            path: path.to_owned(),
            source,
        })
}

/// Every record in `record_dir`, sorted by path.
fn records(record_dir: &Path) -> Result<Vec<(PathBuf, PodRecord)>, Error> {
    let entries = std::fs::read_dir(record_dir).map_err(|source| Error::Record {
        action: "list the folder of",
        path: record_dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    let mut found = Vec::new();
    for path in paths {
        if let Some(record) = read_record(&path)? {
            found.push((path, record));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let record = PodRecord {
            netns_cookie: 4097,
            netns: "/run/netns/web".into(),
            pod_ip: Ipv4Addr::new(10, 244, 0, 7),
        };
        write_record(dir.path(), &record).unwrap();
        assert_eq!(
            records(dir.path()).unwrap(),
            [(dir.path().join("4097.json"), record)]
        );
        assert_eq!(read_record(&dir.path().join("1.json")).unwrap(), None);
    }

    #[test]
    fn a_bad_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("5.json");
        std::fs::write(&path, "not json").unwrap();
        let error = records(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn a_failed_command_names_itself_its_netns_and_its_stderr() {
        use std::os::fd::AsFd as _;
        let path = Path::new("/proc/self/ns/net");
        let own = shunt_api::netns::open_netns(path).unwrap();
        let script = "echo 'line 2 failed' >&2; exit 3";
        let error = run_in(own.as_fd(), path, "sh", &["-c", script], None).unwrap_err();
        let Error::Command {
            command,
            netns,
            status,
            stderr,
        } = &error
        else {
            panic!("{error}");
        };
        assert_eq!(command, &format!("sh -c {script}"));
        assert_eq!(netns, path);
        assert!(status.contains('3'), "{status}");
        assert_eq!(stderr, "line 2 failed");
        let ok = run_in(own.as_fd(), path, "cat", &[], Some("*nat\nCOMMIT\n")).unwrap();
        assert_eq!(ok, "*nat\nCOMMIT\n", "the script reaches stdin");
    }

    #[test]
    fn uninstall_without_records_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join(RECORD_DIR);
        assert!(!IptablesCapture::installed(&missing).unwrap());
        std::fs::create_dir(&missing).unwrap();
        assert!(!IptablesCapture::installed(&missing).unwrap());
        std::fs::remove_dir(&missing).unwrap();
        assert_eq!(
            IptablesCapture::uninstall(&missing).unwrap(),
            Vec::<PathBuf>::new()
        );
    }
}
