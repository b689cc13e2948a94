//! Processes the harness starts: placed in a pod's netns and/or a cgroup before they exec,
//! with stdout and stderr in files (the proxy's stdout is its access log).
//!
//! Placement happens in `pre_exec` with `setns(2)` and a write to `cgroup.procs`, not with
//! `ip netns exec`, which would remount /sys and hide cgroup2 and bpffs from the child.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::{self, Check};

/// Lines of each log shown when something about a process goes wrong.
pub const TAIL_LINES: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not open {} to place {label}: {source}", path.display())]
    Open {
        label: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not create log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start {label} ({}): {source}", program.display())]
    Spawn {
        label: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for {label} failed: {source}")]
    Wait {
        label: String,
        source: std::io::Error,
    },
    #[error("{label} did not finish within {timeout:?} and was killed\n{tail}")]
    Timeout {
        label: String,
        timeout: Duration,
        tail: String,
    },
    #[error("{label} exited ({status}) before {what}\n{tail}")]
    Exited {
        label: String,
        status: ExitStatus,
        what: String,
        tail: String,
    },
    #[error("{label}: {source}")]
    NotReady { label: String, source: wait::Error },
    #[error("{label} printed no JSON line on stdout ({source}); stdout was: {stdout:?}")]
    NotJson {
        label: String,
        stdout: String,
        source: serde_json::Error,
    },
}

/// Where a process runs: a netns (by its file, e.g. `/run/netns/X`) and a cgroup2 folder.
/// `None` leaves the harness's own.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub netns: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
}

/// A running (or finished) child process with its output in files.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` at `placement`, writing `<log_dir>/<label>.stdout` and `.stderr`.
    pub fn spawn(
        label: &str,
        mut command: Command,
        placement: &Placement,
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let open = |path: &Path, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(path)
                .map_err(|source| Error::Open {
                    label: label.to_owned(),
                    path: path.to_path_buf(),
                    source,
                })
        };
        // Opened here, before fork: pre_exec may only make async-signal-safe calls.
        let netns: Option<File> = placement
            .netns
            .as_deref()
            .map(|p| open(p, false))
            .transpose()?;
        let cgroup_procs: Option<File> = placement
            .cgroup
            .as_deref()
            .map(|p| open(&p.join("cgroup.procs"), true))
            .transpose()?;
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        let procs_fd = cgroup_procs.as_ref().map(AsRawFd::as_raw_fd);

        let stdout = log_dir.join(format!("{label}.stdout"));
        let stderr = log_dir.join(format!("{label}.stderr"));
        let create = |path: &Path| {
            File::create(path).map_err(|source| Error::Log {
                path: path.to_path_buf(),
                source,
            })
        };
        command
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        place_before_exec(&mut command, netns_fd, procs_fd);
        let program = PathBuf::from(command.get_program());
        let child = command.spawn().map_err(|source| Error::Spawn {
            label: label.to_owned(),
            program,
            source,
        })?;
        drop((netns, cgroup_procs));
        Ok(Self {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    #[must_use]
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    #[must_use]
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// What the process wrote to stdout so far.
    #[must_use]
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// What the process wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The last lines of stdout and stderr, labelled.
    #[must_use]
    pub fn tail(&self) -> String {
        format!(
            "--- {label} stdout (last {TAIL_LINES} lines) ---\n{}--- {label} stderr (last {TAIL_LINES} lines) ---\n{}",
            tail_of(&self.stdout(), TAIL_LINES),
            tail_of(&self.stderr(), TAIL_LINES),
            label = self.label,
        )
    }

    /// The exit status, once the process has exited (reaps it).
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| Error::Wait {
                label: self.label.clone(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit; kills it and fails after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let waited = wait::until(&format!("{} to exit", self.label), timeout, || {
            match self.exit_status() {
                Ok(Some(status)) => Check::Done(Ok(status)),
                Ok(None) => Check::NotYet("running".to_owned()),
                Err(e) => Check::Done(Err(e)),
            }
        });
        match waited {
            Ok(result) => result,
            Err(_) => {
                self.kill();
                Err(Error::Timeout {
                    label: self.label.clone(),
                    timeout,
                    tail: self.tail(),
                })
            }
        }
    }

    /// Waits until stdout has a line equal to `line` (a server's `ready`).
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> Result<(), Error> {
        self.wait_for_output(&format!("{line:?} on stdout"), timeout, |process| {
            process.stdout().lines().any(|l| l.trim() == line)
        })
    }

    /// Waits until stderr has a line containing `text` (tcpdump's `listening on`).
    pub fn wait_for_stderr(&mut self, text: &str, timeout: Duration) -> Result<(), Error> {
        self.wait_for_output(&format!("{text:?} on stderr"), timeout, |process| {
            process.stderr().lines().any(|l| l.contains(text))
        })
    }

    fn wait_for_output(
        &mut self,
        what: &str,
        timeout: Duration,
        printed: impl Fn(&Self) -> bool,
    ) -> Result<(), Error> {
        let what = what.to_owned();
        let mut exited = None;
        let waited = wait::until(&what, timeout, || {
            if printed(self) {
                return Check::Done(());
            }
            match self.exit_status() {
                Ok(Some(status)) => {
                    exited = Some(status);
                    Check::Abort(format!("exited ({status})"))
                }
                Ok(None) => Check::NotYet("not printed yet".to_owned()),
                Err(e) => Check::Abort(e.to_string()),
            }
        });
        match (waited, exited) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(status)) => Err(Error::Exited {
                label: self.label.clone(),
                status,
                what,
                tail: self.tail(),
            }),
            (Err(source), None) => Err(Error::NotReady {
                label: self.label.clone(),
                source,
            }),
        }
    }

    /// Sends `signal` (no-op once the process has exited).
    pub fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        if self.exit_status()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        kill(pid, signal).map_err(|errno| Error::Wait {
            label: self.label.clone(),
            source: errno.into(),
        })
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Ok(None) = self.exit_status() {
            let _gone = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.signal(Signal::SIGTERM).is_ok() && self.wait(grace).is_ok() {
            return self.status;
        }
        self.kill();
        self.status
    }

    /// Waits for a one-shot command and collects its output.
    pub fn finish(mut self, timeout: Duration) -> Result<Output, Error> {
        let status = self.wait(timeout)?;
        Ok(Output {
            label: self.label.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The outcome of a one-shot command.
#[derive(Clone, Debug)]
pub struct Output {
    pub label: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last non-empty stdout line, as JSON (`shunt-testpod` clients print one).
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last).map_err(|source| Error::NotJson {
            label: self.label.clone(),
            stdout: self.stdout.clone(),
            source,
        })
    }
}

/// Makes the child enter the cgroup (by its open `cgroup.procs`) and the netns (by its open
/// file) between fork and exec.
#[expect(unsafe_code, reason = "pre_exec runs code between fork and exec")]
fn place_before_exec(command: &mut Command, netns_fd: Option<RawFd>, procs_fd: Option<RawFd>) {
    // SAFETY: the closure only makes the async-signal-safe syscalls write(2) and setns(2) on
    // descriptors the caller keeps open until `spawn` returns (they are O_CLOEXEC, so the child
    // loses them at exec), and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // "0" moves the writing process, i.e. this child, into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`, each ending in a newline.
#[must_use]
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].iter().fold(String::new(), |mut out, line| {
        out.push_str(line);
        out.push('\n');
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        for (text, lines, want) in [
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb", 5, "a\nb\n"),
            ("", 3, ""),
        ] {
            assert_eq!(tail_of(text, lines), want, "{text:?}");
        }
    }

    #[test]
    fn runs_and_collects_output() {
        let dir = std::env::temp_dir().join(format!("shunt-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo noise; echo '{\"ok\":true}'; echo err >&2; exit 3",
        ]);
        let output = Process::spawn("sh", command, &Placement::default(), &dir)
            .unwrap()
            .finish(Duration::from_secs(10))
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.json().unwrap()["ok"], true);
        assert_eq!(output.stderr, "err\n");

        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let mut process = Process::spawn("sleep", sleeper, &Placement::default(), &dir).unwrap();
        let err = process
            .wait_for_line("ready", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, Error::NotReady { .. }), "{err}");
        let status = process.stop(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
