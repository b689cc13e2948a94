//! One guest: qemu booting an unpacked kernel with the initramfs, the host's root as its
//! read-only root (virtio-9p, under a tmpfs overlay) and the results folder as a second 9p
//! share. No network device: the tests make their own namespaces inside the guest.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::image::Image;

/// Guest memory: the tests' namespaces, agents and proxies, and the overlay's tmpfs.
const MEMORY_MIB: u32 = 2048;
/// How often the host looks at the guest's progress.
const POLL: Duration = Duration::from_millis(500);

/// How qemu runs the guest's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulated: slow, but it boots any kernel.
    Tcg,
}

impl Accel {
    /// KVM only when the CPU offers hardware virtualisation (vmx or svm) and `/dev/kvm` opens:
    /// a PVM `/dev/kvm` (this machine's and CI's) has neither flag and cannot boot a stock
    /// kernel.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kvm_opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        Self::choose(&cpuinfo, kvm_opens)
    }

    fn choose(cpuinfo: &str, kvm_opens: bool) -> Self {
        let hardware = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| {
                line.split_whitespace()
                    .any(|flag| flag == "vmx" || flag == "svm")
            });
        if hardware && kvm_opens {
            Self::Kvm
        } else {
            Self::Tcg
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    const fn cpu(self) -> &'static str {
        match self {
            Self::Kvm => "host",
            Self::Tcg => "max",
        }
    }
}

/// How a guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// qemu exited by itself (the guest powered off, or its kernel panicked: `panic=-1` with
    /// `-no-reboot`).
    Exited { success: bool },
    /// Still running when the timeout passed; killed.
    Killed { after: Duration },
}

pub struct Guest<'a> {
    pub image: &'a Image,
    pub initramfs: &'a Path,
    /// Shared read-write: the plan in, the outputs out.
    pub results: &'a Path,
    pub accel: Accel,
    pub cpus: usize,
    /// TCG with every vCPU on one host thread (`thread=single`). Slower, but the guest's own
    /// code patching (static keys, which attaching a cgroup program flips) is then seen at
    /// once by every vCPU; multi-threaded TCG has let a vCPU run a stale `int3` here.
    pub single_threaded: bool,
    pub timeout: Duration,
}

impl Guest<'_> {
    /// Boots the guest and waits for it, printing its progress (`guest.log`) as it comes.
    pub fn run(&self) -> Result<Ended> {
        if self.results.to_string_lossy().contains(',') {
            bail!(
                "{}: qemu's -fsdev cannot take a path with a comma",
                self.results.display()
            );
        }
        let console = self.results.join("console.log");
        let mut qemu = Command::new("nice");
        // Niced: the machine is shared, and an emulated guest would take a whole core.
        qemu.args(["-n", "19", "qemu-system-x86_64"])
            .args(self.args(&console))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.results.join("qemu.stderr"))?);
        let started = Instant::now();
        let mut child = qemu
            .spawn()
            .context("could not start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
        let mut progress = Progress::new(self.results.join("guest.log"), self.image.family.name);
        loop {
            progress.print_new();
            if let Some(status) = child.try_wait()? {
                progress.print_new();
                return Ok(Ended::Exited {
                    success: status.success(),
                });
            }
            if started.elapsed() > self.timeout {
                // Our own child, by its pid: nothing else is touched.
                let _ = child.kill();
                let _: Option<ExitStatus> = child.wait().ok();
                progress.print_new();
                return Ok(Ended::Killed {
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn args(&self, console: &Path) -> Vec<String> {
        let fsdev = |id: &str, path: &Path, extra: &str| {
            [
                "-fsdev".to_owned(),
                format!(
                    "local,id={id},path={},security_model=none{extra}",
                    path.display()
                ),
                "-device".to_owned(),
                format!("virtio-9p-pci,fsdev={id},mount_tag={id}"),
            ]
        };
        let accel = match self.accel {
            Accel::Tcg if self.single_threaded => "tcg,thread=single",
            accel => accel.name(),
        };
        let mut args: Vec<String> = [
            "-accel",
            accel,
            "-cpu",
            self.accel.cpu(),
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-nic",
            "none",
        ]
        .map(str::to_owned)
        .into();
        args.extend([
            "-smp".to_owned(),
            self.cpus.to_string(),
            "-m".to_owned(),
            MEMORY_MIB.to_string(),
            "-serial".to_owned(),
            format!("file:{}", console.display()),
            "-kernel".to_owned(),
            self.image.vmlinuz().display().to_string(),
            "-initrd".to_owned(),
            self.initramfs.display().to_string(),
            "-append".to_owned(),
            "console=ttyS0 panic=-1 quiet".to_owned(),
        ]);
        // multidevs=remap: the host's root spans several filesystems, whose inode numbers
        // would otherwise collide in the guest.
        args.extend(fsdev(
            "hostroot",
            Path::new("/"),
            ",readonly=on,multidevs=remap",
        ));
        args.extend(fsdev("results", self.results, ""));
        args
    }
}

/// Follows `guest.log`, which the guest appends to as it goes.
struct Progress {
    path: PathBuf,
    label: &'static str,
    offset: u64,
}

impl Progress {
    fn new(path: PathBuf, label: &'static str) -> Self {
        Self {
            path,
            label,
            offset: 0,
        }
    }

    fn print_new(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        // Whole lines only: a line still being written is read next time.
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.ends_with('\n') {
            self.offset += line.len() as u64;
            println!("    [{}] {}", self.label, line.trim_end());
            line.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_both_the_cpu_flag_and_a_working_device() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n";
        let svm = "flags\t\t: fpu svm\n";
        let none = "flags\t\t: fpu vme de pse sse hypervisor\n";
        let cases = [
            (vmx, true, Accel::Kvm),
            (svm, true, Accel::Kvm),
            (vmx, false, Accel::Tcg),
            (none, true, Accel::Tcg),
            ("", true, Accel::Tcg),
            // A flag's name inside another word is not the flag.
            ("flags\t\t: vmxnet svmx\n", true, Accel::Tcg),
        ];
        for (cpuinfo, opens, want) in cases {
            assert_eq!(Accel::choose(cpuinfo, opens), want, "{cpuinfo:?} {opens}");
        }
    }
}
