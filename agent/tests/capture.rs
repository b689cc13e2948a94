//! Privileged: the real eBPF capture programs, in a network namespace and a cgroup of each
//! test's own, with real sockets.
//!
//! Captured sockets must belong to the capture cgroup, and a socket belongs to the cgroup of
//! the process that creates it. So the app and the stand-in proxy run as child processes
//! (`python3`, for `SO_ORIGINAL_DST` and `SO_MARK` without extra crates) that enter the netns
//! and join the cgroup before they exec. Inbound steering (sk_lookup) is per netns, not per
//! cgroup, so that test makes its sockets from a thread of the test process inside the netns.
//!
//! Each test skips with a printed reason when not root, when the agent was built without the
//! eBPF object, or without python3.
#![expect(
    clippy::expect_used,
    reason = "the test helpers fail the test by panicking, with the reason"
)]

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufRead as _, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
use nix::sys::stat::Mode;
use serde_json::Value;
use shunt_agent::capture::ebpf::{BpfLogLevel, CaptureOptions, EbpfCapture, PodCapture};
use shunt_api::capture::Attachment;
use shunt_api::netns::{netns_cookie, open_netns, run_in_netns};
use shunt_common::{PROXY_MARK, map_names};

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Another address inside the pod's netns: an "elsewhere" to connect to, or to come from.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
// Bounds a hang, not a timing: under TCG emulation on a busy host a line can take long.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The app (`connect`) and the stand-in proxy and servers (`serve`).
const HELPER: &str = r#"
import hashlib, json, os, selectors, socket, struct, sys, time

def text(address):
    host = address[0].removeprefix("::ffff:")
    return f"{host}:{address[1]}"

def original_destination(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, 80, 16)
    except OSError as e:
        return {"errno": e.errno}
    return {"addr": f"{socket.inet_ntoa(raw[4:8])}:{int.from_bytes(raw[2:4], 'big')}"}

def serve(addresses):
    selector = selectors.DefaultSelector()
    for address in addresses:
        host, port = address.rsplit(":", 1)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(64)
        selector.register(listener, selectors.EVENT_READ)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        for key, _ in selector.select():
            conn, peer = key.fileobj.accept()
            with conn:
                report = {"listener": text(key.fileobj.getsockname()), "peer": text(peer),
                          "orig_dst": original_destination(conn)}
                data = bytearray()
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                report.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
                print(json.dumps(report), flush=True)

def connect(target, mark, size):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(10)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    try:
        s.connect((host, int(port)))
    except OSError as e:
        print(json.dumps({"errno": e.errno}), flush=True)
        return
    payload = os.urandom(size)
    offset, step = 0, 1
    while offset < len(payload):
        # Writes of many sizes: one sk_msg verdict each.
        s.sendall(payload[offset:offset + step])
        offset += step
        step = step * 7 % 65521 + 1
    s.shutdown(socket.SHUT_WR)
    received = bytearray()
    while chunk := s.recv(65536):
        received += chunk
    print(json.dumps({"local": text(s.getsockname()), "received": len(received),
                      "sent_sha256": hashlib.sha256(payload).hexdigest(),
                      "received_sha256": hashlib.sha256(received).hexdigest()}), flush=True)

def proxy_listener(address):
    host, port = address.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(4096)
    print(json.dumps({"ready": True}), flush=True)
    return listener

def late_proxy(address, delay):
    # Reads the original destination only after the app has sent everything and closed.
    listener = proxy_listener(address)
    while True:
        conn, peer = listener.accept()
        with conn:
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            time.sleep(delay)
            print(json.dumps({"peer": text(peer), "bytes": len(data),
                              "orig_dst": original_destination(conn)}), flush=True)

def dropping_proxy(address):
    # A proxy whose every connection fails before it asks for the original destination.
    listener = proxy_listener(address)
    while True:
        conn, _ = listener.accept()
        conn.close()

def send_and_close(target, size):
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(10)
    s.connect((host, int(port)))
    local = text(s.getsockname())
    s.sendall(os.urandom(size))
    s.close()
    print(json.dumps({"local": local}), flush=True)

def churn(target, count, seconds):
    # `count` connections, one at a time: each waits for the proxy to close first, then resets
    # (SO_LINGER 0), so that no TIME_WAIT holds the app's ports.
    host, port = target.rsplit(":", 1)
    start = time.monotonic()
    done, errors, last_errno = 0, 0, None
    while done + errors < count and time.monotonic() - start < seconds:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.settimeout(10)
        try:
            s.connect((host, int(port)))
            s.recv(1)
            done += 1
        except OSError as e:
            errors, last_errno = errors + 1, e.errno
        finally:
            s.close()
    print(json.dumps({"done": done, "errors": errors, "last_errno": last_errno,
                      "seconds": round(time.monotonic() - start, 1)}), flush=True)

if sys.argv[1] == "serve":
    serve(sys.argv[2:])
elif sys.argv[1] == "late_proxy":
    late_proxy(sys.argv[2], float(sys.argv[3]))
elif sys.argv[1] == "dropping_proxy":
    dropping_proxy(sys.argv[2])
elif sys.argv[1] == "send_and_close":
    send_and_close(sys.argv[2], int(sys.argv[3]))
elif sys.argv[1] == "churn":
    churn(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
else:
    connect(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"#;

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (eBPF, network namespaces, cgroups)".into());
    }
    if !EbpfCapture::OBJECT_EMBEDDED {
        return Some("the eBPF object is not embedded: run `cargo xtask build-ebpf` first".into());
    }
    if Command::new("python3").arg("--version").output().is_err() {
        return Some("python3 is not installed (the test's app and proxy stand-ins)".into());
    }
    None
}

macro_rules! skip_unless_privileged {
    ($test:literal) => {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED {}: {reason}", $test);
            return;
        }
    };
}

/// Why the sockmap shortcut cannot run here, by the agent's own kernel probe (the one
/// `shuntctl status` shows), in the words `shunt_tests::kernel` skips with.
fn shortcut_missing() -> Option<String> {
    let support = shunt_agent::capture::ebpf::kernel_support();
    support.sockmap_shortcut_missing.map(|feature| {
        format!(
            "kernel {} lacks {} (Linux {}+), which the sockmap shortcut needs",
            support.probe.kernel_release, feature.name, feature.since
        )
    })
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A netns with `lo` and a veth pair holding POD_IP and OTHER_IP, a cgroup, and the capture
/// instance, all named after the test; removed on drop, even after a failure.
struct Env {
    netns: OwnedFd,
    netns_path: PathBuf,
    cgroup: PathBuf,
    options: CaptureOptions,
    children: Vec<Child>,
    /// Dropped last, after the children are gone.
    _cleanup: Cleanup,
}

/// Removes the netns, the cgroup and the pins when dropped.
struct Cleanup {
    netns: String,
    cgroup: PathBuf,
    options: CaptureOptions,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sweep(&self.netns, &self.cgroup, &self.options);
    }
}

impl Env {
    fn new(test: &str, sockmap_shortcut: bool) -> Self {
        let name = format!("shunt-cap-{test}");
        let cgroup2 = shunt_agent::capture::ebpf::find_cgroup2()
            .expect("read /proc/mounts")
            .expect("a cgroup2 mount");
        let options = CaptureOptions {
            instance: name.clone(),
            bpffs: None,
            cgroup: Some(cgroup2.join(&name)),
            sockmap_shortcut,
        };
        let cleanup = Cleanup {
            netns: name.clone(),
            cgroup: cgroup2.join(&name),
            options: options.clone(),
        };
        sweep(&cleanup.netns, &cleanup.cgroup, &cleanup.options);
        run("ip", &["netns", "add", &name]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
            ],
            vec!["addr", "add", "10.77.0.2/24", "dev", "pod0"],
            vec!["addr", "add", "10.77.0.3/24", "dev", "pod0"],
            vec!["link", "set", "pod0", "up"],
            vec!["link", "set", "pod1", "up"],
        ] {
            let mut full = vec!["-n", name.as_str()];
            full.extend(args);
            run("ip", &full);
        }
        std::fs::create_dir(cgroup2.join(&name)).expect("create cgroup");
        let netns_path = Path::new("/run/netns").join(&name);
        let netns = open_netns(&netns_path).expect("open netns");
        Self {
            netns,
            netns_path,
            cgroup: cleanup.cgroup.clone(),
            options,
            children: Vec::new(),
            _cleanup: cleanup,
        }
    }

    fn cookie(&self) -> u64 {
        netns_cookie(self.netns.as_fd()).expect("netns cookie")
    }

    fn pod(
        &self,
        excluded_outbound_ports: Vec<u16>,
        excluded_inbound_ports: Vec<u16>,
    ) -> PodCapture<'_> {
        PodCapture {
            netns_cookie: self.cookie(),
            netns: self.netns.as_fd(),
            netns_path: &self.netns_path,
            pod_ip: POD_IP,
            excluded_outbound_ports,
            excluded_inbound_ports,
            fail_closed: false,
        }
    }

    /// Runs the helper inside the netns and the cgroup; its stdout lines, parsed.
    fn helper(&mut self, args: &[&str]) -> Receiver<Value> {
        let netns = self.netns.try_clone().expect("dup netns fd");
        let procs = CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path");
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(HELPER)
            .args(args)
            .stdout(Stdio::piped());
        // SAFETY: between fork and exec the closure only makes system calls (setns, open,
        // write) on values prepared before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                setns(&netns, CloneFlags::CLONE_NEWNET)?;
                let fd = nix::fcntl::open(procs.as_c_str(), OFlag::O_WRONLY, Mode::empty())?;
                nix::unistd::write(&fd, b"0")?;
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn python3");
        let stdout = child.stdout.take().expect("piped stdout");
        self.children.push(child);
        let (lines, receiver) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if lines.send(value).is_err() {
                    break;
                }
            }
        });
        receiver
    }

    /// Kills every helper started so far (and waits for it), e.g. to free a listener's port.
    fn stop_helpers(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a helper that listens (`args[0]` names the mode) and waits until it does.
    fn listening_helper(&mut self, args: &[&str]) -> Receiver<Value> {
        let lines = self.helper(args);
        assert_eq!(next(&lines)["ready"], true, "{args:?} did not start");
        lines
    }

    /// Starts `serve` on these addresses and waits until it listens.
    fn server(&mut self, addresses: &[&str]) -> Receiver<Value> {
        let mut args = vec!["serve"];
        args.extend_from_slice(addresses);
        let lines = self.helper(&args);
        assert_eq!(
            next(&lines)["ready"],
            true,
            "server on {addresses:?} did not start"
        );
        lines
    }

    /// One app connection: sends `size` random bytes, half-closes, reads the echo.
    fn app_connect(&mut self, target: &str, mark: u32, size: usize) -> Value {
        let lines = self.helper(&["connect", target, &mark.to_string(), &size.to_string()]);
        next(&lines)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes what a test of this name may have left, this run or a crashed earlier one.
fn sweep(netns: &str, cgroup: &Path, options: &CaptureOptions) {
    let _ = EbpfCapture::uninstall(options);
    if cgroup.exists() {
        // Killed children leave the cgroup only once reaped; rmdir fails until then.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if Path::new("/run/netns").join(netns).exists() {
        let _ = Command::new("ip").args(["netns", "del", netns]).status();
    }
}

fn next(lines: &Receiver<Value>) -> Value {
    match lines.recv_timeout(LINE_TIMEOUT) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("no line within {LINE_TIMEOUT:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the helper exited without a line"),
    }
}

fn assert_quiet(lines: &Receiver<Value>, who: &str) {
    if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        panic!("{who} accepted a connection it should not have: {line}");
    }
}

fn counters(capture: &EbpfCapture) -> HashMap<String, u64> {
    capture.status().counters.into_iter().collect()
}

fn attachments(capture: &EbpfCapture) -> HashMap<String, Attachment> {
    capture
        .status()
        .programs
        .iter()
        .map(|p| (p.name.to_string(), p.attachment))
        .collect()
}

/// Where one outbound connection must end up.
enum Expect {
    /// At the proxy's 127.0.0.1:15001, which learns this original destination.
    Proxy { orig_dst: &'static str },
    /// At the real server on this listener, untouched.
    Direct { listener: &'static str },
    /// `connect()` fails with this errno.
    Refused { errno: i32 },
}

struct Case {
    name: &'static str,
    target: &'static str,
    mark: u32,
    expect: Expect,
}

fn check(
    env: &mut Env,
    proxy: &Receiver<Value>,
    servers: &Receiver<Value>,
    case: &Case,
    size: usize,
) {
    let client = env.app_connect(case.target, case.mark, size);
    let name = case.name;
    match case.expect {
        Expect::Refused { errno } => {
            assert_eq!(client["errno"], errno, "{name}: {client}");
            assert_quiet(proxy, "the proxy");
        }
        Expect::Proxy { orig_dst } => {
            let seen = next(proxy);
            assert_eq!(seen["orig_dst"]["addr"], orig_dst, "{name}: {seen}");
            assert_eq!(
                seen["peer"], client["local"],
                "{name}: the proxy's peer is the app"
            );
            assert_eq!(seen["bytes"], size, "{name}: {seen}");
            assert_eq!(
                seen["sha256"], client["sent_sha256"],
                "{name}: bytes reached the proxy intact"
            );
            assert_eq!(
                client["received_sha256"], client["sent_sha256"],
                "{name}: echo intact"
            );
            assert_quiet(servers, "the real server");
        }
        Expect::Direct { listener } => {
            let seen = next(servers);
            assert_eq!(seen["listener"], listener, "{name}: {seen}");
            assert!(
                seen["orig_dst"]["errno"].is_number(),
                "{name}: not captured, no answer: {seen}"
            );
            assert_eq!(
                client["received_sha256"], client["sent_sha256"],
                "{name}: echo intact"
            );
            assert_quiet(proxy, "the proxy");
        }
    }
}

/// The cgroup programs (connect4/6, sock_ops, getsockopt), without the shortcut: which
/// connections are captured, refused or left alone, and that capture outlives the agent until
/// it is uninstalled. Runs on every kernel eBPF capture supports; the shortcut's own checks
/// are `sockmap_shortcut_takes_the_app_and_delivery_hops`.
#[test]
fn outbound_capture_survives_restart_until_uninstalled() {
    skip_unless_privileged!("outbound_capture_survives_restart_until_uninstalled");
    let mut env = Env::new("outbound", false);
    let mut capture = EbpfCapture::load(&env.options).expect("load capture");
    let fresh = attachments(&capture);
    for program in CGROUP_PROGRAMS {
        assert_eq!(fresh[program], Attachment::Attached, "{program}");
    }
    assert_eq!(
        fresh["shunt_sk_msg"],
        Attachment::NotAttached,
        "the shortcut is off"
    );

    let proxy = env.server(&["127.0.0.1:15001"]);
    let servers = env.server(&["10.77.0.3:7000", "10.77.0.3:7001", "10.77.0.2:7002"]);
    capture
        .add_pod(&env.pod(vec![7001], vec![]))
        .expect("add pod");

    let captured = captured_case();
    let cases = [
        Case {
            name: "marked (the proxy's own dial)",
            target: "10.77.0.3:7000",
            mark: PROXY_MARK,
            expect: Expect::Direct {
                listener: "10.77.0.3:7000",
            },
        },
        Case {
            name: "excluded outbound port",
            target: "10.77.0.3:7001",
            mark: 0,
            expect: Expect::Direct {
                listener: "10.77.0.3:7001",
            },
        },
        Case {
            name: "direct to the outbound listener",
            target: "127.0.0.1:15001",
            mark: 0,
            expect: Expect::Refused { errno: libc::EPERM },
        },
        Case {
            name: "dual-stack socket to an IPv4-mapped address",
            target: "::ffff:10.77.0.3:7000",
            mark: 0,
            expect: Expect::Proxy {
                orig_dst: "10.77.0.3:7000",
            },
        },
        Case {
            name: "dual-stack socket direct to the outbound listener",
            target: "::ffff:127.0.0.1:15001",
            mark: 0,
            expect: Expect::Refused { errno: libc::EPERM },
        },
        Case {
            name: "direct to the inbound port on the pod IP",
            target: "10.77.0.2:15006",
            mark: 0,
            expect: Expect::Refused { errno: libc::EPERM },
        },
        delivery_case(),
        self_dial_case(),
    ];
    // 1 MiB in writes of many sizes.
    check(&mut env, &proxy, &servers, &captured, 1 << 20);
    for case in &cases {
        check(&mut env, &proxy, &servers, case, 4096);
    }

    let stats = counters(&capture);
    for (counter, at_least) in [
        ("outbound_captured", 1),
        ("outbound_excluded", 1),
        ("direct_proxy_connect_refused", 3),
        ("orig_dst_answered", 1),
        ("orig_dst_missed", 1),
    ] {
        assert!(stats[counter] >= at_least, "{counter}: {stats:?}");
    }
    assert_eq!(
        stats["shortcut_sockets_added"], 0,
        "no shortcut while it is off: {stats:?}"
    );
    let meshed = capture.dump_map(map_names::MESHED_NETNS).expect("dump");
    assert_eq!(meshed[0]["key"]["netns_cookie"], env.cookie(), "{meshed}");
    assert_eq!(meshed[0]["value"]["pod_ip"], "10.77.0.2", "{meshed}");
    let excluded = capture
        .dump_map(map_names::OUTBOUND_EXCLUDED_PORTS)
        .expect("dump");
    assert_eq!(excluded[0]["key"]["port"], 7001, "{excluded}");
    // Every captured connection has closed, and its entry with it.
    let left = wait_for_orig_dst_entries(&capture, env.cookie(), 0, Duration::from_secs(5));
    assert!(left.is_empty(), "left in ORIG_DST_BY_CLIENT: {left:?}");

    // Agent gone: the pinned links keep capturing.
    drop(capture);
    check(&mut env, &proxy, &servers, &captured, 10_000);

    // Agent back: everything is adopted, nothing attached twice, the pod's entries kept.
    let mut capture = EbpfCapture::load(&env.options).expect("reload capture");
    let adopted = attachments(&capture);
    for program in CGROUP_PROGRAMS {
        assert_eq!(adopted[program], Attachment::Adopted, "{program}");
    }
    assert_eq!(capture.captured_netns(), vec![env.cookie()]);
    capture
        .add_pod(&env.pod(vec![7001], vec![]))
        .expect("re-add pod");
    check(&mut env, &proxy, &servers, &captured, 10_000);
    let status = capture.status();
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    assert_eq!(
        status.pods.len(),
        1,
        "one sk_lookup link: {:?}",
        status.pods
    );

    // Uninstall from inside the running agent, as `POST /uninstall` does.
    let removed = EbpfCapture::uninstall(&env.options).expect("uninstall");
    let pin_dir = status.pin_dir;
    for pin in [
        "links/connect4",
        "links/connect6",
        "links/sockops",
        "links/getsockopt",
        "maps/MESHED_NETNS",
    ] {
        assert!(removed.contains(&pin_dir.join(pin)), "{pin} in {removed:?}");
    }
    let pod_link = pin_dir.join(format!("links/sk_lookup-{}", env.cookie()));
    assert!(removed.contains(&pod_link), "{removed:?}");
    assert!(!pin_dir.exists());
    let uncaptured = Case {
        name: "after uninstall",
        target: "10.77.0.3:7000",
        mark: 0,
        expect: Expect::Direct {
            listener: "10.77.0.3:7000",
        },
    };
    check(&mut env, &proxy, &servers, &uncaptured, 4096);
    drop(capture);
}

/// The programs attached to the capture cgroup, each with a pinned link of its own.
const CGROUP_PROGRAMS: [&str; 4] = [
    "shunt_connect4",
    "shunt_connect6",
    "shunt_sockops",
    "shunt_getsockopt",
];

/// An app's connection to another address: captured, at the proxy with its destination.
fn captured_case() -> Case {
    Case {
        name: "captured",
        target: "10.77.0.3:7000",
        mark: 0,
        expect: Expect::Proxy {
            orig_dst: "10.77.0.3:7000",
        },
    }
}

/// The inbound delivery hop: the proxy's marked socket dials the pod's own IP from the pod's
/// own IP, and reaches the app untouched.
fn delivery_case() -> Case {
    Case {
        name: "proxy delivery to the app",
        target: "10.77.0.2:7002",
        mark: PROXY_MARK,
        expect: Expect::Direct {
            listener: "10.77.0.2:7002",
        },
    }
}

/// The app dialling its own pod IP: not captured.
fn self_dial_case() -> Case {
    Case {
        name: "app to its own pod IP",
        target: "10.77.0.2:7002",
        mark: 0,
        expect: Expect::Direct {
            listener: "10.77.0.2:7002",
        },
    }
}

/// The sockmap shortcut (sk_msg over `SHORTCUT_SOCKETS`), where the kernel has what it needs
/// (sockmap links: Linux 6.10): the app↔proxy hop and the proxy's delivery hop are redirected
/// byte for byte, and a socket whose peer is not registered falls back to the TCP stack.
#[test]
fn sockmap_shortcut_takes_the_app_and_delivery_hops() {
    skip_unless_privileged!("sockmap_shortcut_takes_the_app_and_delivery_hops");
    if let Some(reason) = shortcut_missing() {
        println!("SKIPPED sockmap_shortcut_takes_the_app_and_delivery_hops: {reason}");
        return;
    }
    let mut env = Env::new("shortcut", true);
    let mut capture = EbpfCapture::load(&env.options).expect("load capture");
    assert_eq!(
        attachments(&capture)["shunt_sk_msg"],
        Attachment::Attached,
        "sk_msg"
    );
    let proxy = env.server(&["127.0.0.1:15001"]);
    let servers = env.server(&["10.77.0.3:7000", "10.77.0.2:7002"]);
    capture.add_pod(&env.pod(vec![], vec![])).expect("add pod");

    // 1 MiB through the shortcut, in writes of many sizes.
    let before = counters(&capture);
    check(&mut env, &proxy, &servers, &captured_case(), 1 << 20);
    let after = counters(&capture);
    assert!(
        after["shortcut_sockets_added"] >= before["shortcut_sockets_added"] + 2,
        "app and proxy sockets: {after:?}"
    );
    assert!(
        after["shortcut_redirects"] > before["shortcut_redirects"],
        "{after:?}"
    );

    // The inbound delivery hop: both ends take the shortcut.
    let before = after;
    check(&mut env, &proxy, &servers, &delivery_case(), 256 << 10);
    let after = counters(&capture);
    assert!(
        after["shortcut_sockets_added"] >= before["shortcut_sockets_added"] + 2,
        "{after:?}"
    );
    assert!(
        after["shortcut_redirects"] > before["shortcut_redirects"],
        "{after:?}"
    );
    // Only the accepting end of an app's dial to its own pod IP is registered, so its replies
    // find no peer and stay on the TCP stack, intact.
    check(&mut env, &proxy, &servers, &self_dial_case(), 256 << 10);
    assert!(
        counters(&capture)["shortcut_fallbacks"] > after["shortcut_fallbacks"],
        "{:?}",
        counters(&capture)
    );
    let left = wait_for_orig_dst_entries(&capture, env.cookie(), 0, Duration::from_secs(5));
    assert!(left.is_empty(), "left in ORIG_DST_BY_CLIENT: {left:?}");
}

/// Collects the programs' log records (`--bpf-log`), as the agent's forwarder would get them.
#[derive(Clone, Default)]
struct Collected(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Collected {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("records")
            .push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

impl Collected {
    fn take(&self) -> Vec<(log::Level, String)> {
        std::mem::take(&mut *self.0.lock().expect("records"))
    }
}

/// `--bpf-log`: while off the programs write nothing to their log ring; at `warn` a refused
/// direct connect is reported, naming the app's netns, the address and the port.
#[test]
fn bpf_log_reports_a_refused_direct_connect_only_when_on() {
    skip_unless_privileged!("bpf_log_reports_a_refused_direct_connect_only_when_on");
    let mut env = Env::new("bpf-log", false);
    let mut capture = EbpfCapture::load(&env.options).expect("load capture");
    capture.add_pod(&env.pod(vec![], vec![])).expect("add pod");
    let refused = Case {
        name: "direct to the outbound listener",
        target: "127.0.0.1:15001",
        mark: 0,
        expect: Expect::Refused { errno: libc::EPERM },
    };
    let quiet = env.server(&["10.77.0.3:7000"]);

    let collected = Collected::default();
    let off = capture
        .start_bpf_log(BpfLogLevel::Off, collected.clone())
        .expect("log level off");
    assert!(off.is_none(), "no log ring is read while off");
    check(&mut env, &quiet, &quiet, &refused, 16);

    let mut logs = capture
        .start_bpf_log(BpfLogLevel::Warn, collected.clone())
        .expect("log level warn")
        .expect("the log ring");
    logs.flush();
    assert_eq!(collected.take(), [], "logged while off");

    check(&mut env, &quiet, &quiet, &refused, 16);
    logs.flush();
    let records = collected.take();
    let want = format!(
        "netns={} refused an app's connect to 127.0.0.1:15001, the proxy's own port",
        env.cookie()
    );
    assert_eq!(records, [(log::Level::Warn, want)]);
}

/// `ORIG_DST_BY_CLIENT`'s entries of the netns `netns_cookie`.
fn orig_dst_entries(capture: &EbpfCapture, netns_cookie: u64) -> Vec<Value> {
    let dump = capture
        .dump_map(map_names::ORIG_DST_BY_CLIENT)
        .expect("dump");
    dump.as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["key"]["netns_cookie"] == netns_cookie)
        .cloned()
        .collect()
}

/// Waits until the netns has at most `at_most` entries in `ORIG_DST_BY_CLIENT`, or `timeout`
/// passes; returns what is left.
fn wait_for_orig_dst_entries(
    capture: &EbpfCapture,
    netns_cookie: u64,
    at_most: usize,
    timeout: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = orig_dst_entries(capture, netns_cookie);
        if left.len() <= at_most || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// More captured connections than `ORIG_DST_BY_CLIENT` has room for (65536), all failed by a
/// proxy that never asks for their original destination: each entry goes when the proxy's
/// socket closes. And a connection whose app has closed before the proxy asks still has its
/// answer.
#[test]
fn orig_dst_entries_go_when_the_proxys_socket_closes() {
    const CONNECTIONS: u64 = 70_000;
    /// Only a guard against a hung app, far above what the churn takes natively or under
    /// qemu's emulation (about 5 minutes, `cargo xtask kernel-matrix`); no timing is asserted.
    const CHURN_LIMIT_SECONDS: u64 = 1800;
    /// Entries allowed to be left behind.
    const AT_MOST_LEFT: usize = 256;
    skip_unless_privileged!("orig_dst_entries_go_when_the_proxys_socket_closes");
    let mut env = Env::new("orig-dst-leak", false);
    let mut capture = EbpfCapture::load(&env.options).expect("load capture");
    capture.add_pod(&env.pod(vec![], vec![])).expect("add pod");
    // Nothing listens on the destination: only a captured connect succeeds.
    let target = "10.77.0.3:7000";

    // Every connection fails before the proxy asks.
    let _proxy = env.listening_helper(&["dropping_proxy", "127.0.0.1:15001"]);
    let before = counters(&capture);
    let churn = env.helper(&[
        "churn",
        target,
        &CONNECTIONS.to_string(),
        &CHURN_LIMIT_SECONDS.to_string(),
    ]);
    let report = match churn.recv_timeout(Duration::from_secs(CHURN_LIMIT_SECONDS + 30)) {
        Ok(report) => report,
        Err(e) => panic!("the app made no report within {CHURN_LIMIT_SECONDS} s: {e}"),
    };
    assert_eq!(
        report["done"], CONNECTIONS,
        "{CONNECTIONS} connections, none failing: {report}"
    );
    let after = counters(&capture);
    assert!(
        after["outbound_captured"] >= before["outbound_captured"] + CONNECTIONS,
        "every connection was captured: {before:?} {after:?}"
    );
    assert_eq!(
        after["orig_dst_answered"], before["orig_dst_answered"],
        "the stand-in proxy never asked"
    );
    let left = wait_for_orig_dst_entries(
        &capture,
        env.cookie(),
        AT_MOST_LEFT,
        Duration::from_secs(10),
    );
    assert!(
        left.len() <= AT_MOST_LEFT,
        "{} ORIG_DST_BY_CLIENT entries left after {CONNECTIONS} closed connections ({report}); \
         the first: {:?}",
        left.len(),
        left.first()
    );
    let by_cookie = capture
        .dump_map(map_names::ORIG_DST_BY_COOKIE)
        .expect("dump");
    assert!(
        by_cookie.as_array().expect("a list").len() <= AT_MOST_LEFT,
        "ORIG_DST_BY_COOKIE holds {} entries",
        by_cookie.as_array().expect("a list").len()
    );
    env.stop_helpers();

    // The app connects, writes and closes before the proxy asks (after 300 ms): the app's
    // close must not take the entry away.
    let proxy = env.listening_helper(&["late_proxy", "127.0.0.1:15001", "0.3"]);
    for _ in 0..3 {
        let app = env.helper(&["send_and_close", target, "4096"]);
        let app = next(&app);
        let seen = next(&proxy);
        assert_eq!(seen["peer"], app["local"], "{seen} {app}");
        assert_eq!(seen["bytes"], 4096, "{seen}");
        assert_eq!(
            seen["orig_dst"]["addr"], target,
            "asked after the app closed: {seen}"
        );
    }
    let left = wait_for_orig_dst_entries(&capture, env.cookie(), 0, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "the proxy closed its sockets, their entries stayed: {left:?}"
    );
}

/// A TCP socket made inside the netns, bound to `from`, connected to `to`.
fn connect_from(env: &Env, from: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let fd = run_in_netns(env.netns.as_fd(), || {
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(Into::into)
    })?;
    use std::os::fd::AsRawFd as _;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// Which listener took the connection, and the local address of the accepted socket.
fn accepted_by<'a>(listeners: &'a [(&'a str, TcpListener)]) -> Option<(&'a str, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for (name, listener) in listeners {
            match listener.accept() {
                Ok((stream, _)) => return Some((name, stream.local_addr().expect("local addr"))),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on {name}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn inbound_steering_follows_the_pod_until_it_is_removed() {
    skip_unless_privileged!("inbound_steering_follows_the_pod_until_it_is_removed");
    let env = Env::new("inbound", false);
    let mut capture = EbpfCapture::load(&env.options).expect("load capture");
    assert_eq!(
        attachments(&capture)["shunt_sk_msg"],
        Attachment::NotAttached
    );

    let listen = |addr: &str| {
        let addr: SocketAddr = addr.parse().expect("addr");
        let listener = run_in_netns(env.netns.as_fd(), || TcpListener::bind(addr)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        listener
    };
    let listeners = [
        ("proxy inbound", listen("127.0.0.1:15006")),
        ("app 8080", listen("0.0.0.0:8080")),
        ("app 9090", listen("0.0.0.0:9090")),
    ];
    capture
        .add_pod(&env.pod(vec![], vec![9090]))
        .expect("add pod");
    capture
        .set_inbound_listener(POD_IP, listeners[0].1.as_fd())
        .expect("register listener");

    let to = |ip, port| SocketAddrV4::new(ip, port);
    // (case, from, to, expected listener or None for refused, expected local address)
    let cases = [
        (
            "from elsewhere: steered",
            OTHER_IP,
            to(POD_IP, 8080),
            Some("proxy inbound"),
            "10.77.0.2:8080",
        ),
        (
            "excluded inbound port",
            OTHER_IP,
            to(POD_IP, 9090),
            Some("app 9090"),
            "10.77.0.2:9090",
        ),
        (
            "pod to itself (proxy delivery)",
            POD_IP,
            to(POD_IP, 8080),
            Some("app 8080"),
            "10.77.0.2:8080",
        ),
        (
            "not the pod IP",
            POD_IP,
            to(OTHER_IP, 8080),
            Some("app 8080"),
            "10.77.0.3:8080",
        ),
        (
            "direct to the inbound listener",
            OTHER_IP,
            to(POD_IP, 15006),
            None,
            "",
        ),
    ];
    for (name, from, target, listener, local) in cases {
        let connected = connect_from(&env, from, target);
        match listener {
            Some(expected) => {
                connected.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
                let (by, local_addr) =
                    accepted_by(&listeners).unwrap_or_else(|| panic!("{name}: nobody accepted"));
                assert_eq!(by, expected, "{name}");
                assert_eq!(
                    local_addr.to_string(),
                    local,
                    "{name}: the accepted socket's local address"
                );
            }
            None => {
                let error = connected.expect_err(name);
                assert_eq!(
                    error.kind(),
                    ErrorKind::ConnectionRefused,
                    "{name}: {error}"
                );
            }
        }
    }
    let stats = counters(&capture);
    assert!(stats["inbound_steered"] >= 1, "{stats:?}");
    assert_eq!(stats["inbound_steer_failed"], 0, "{stats:?}");
    let listeners_map = capture
        .dump_map(map_names::INBOUND_LISTENERS)
        .expect("dump");
    assert_eq!(
        listeners_map[0]["key"]["pod_ip"], "10.77.0.2",
        "{listeners_map}"
    );

    capture.remove_pod(env.cookie(), None).expect("remove pod");
    assert!(capture.captured_netns().is_empty());
    for map in [
        map_names::MESHED_NETNS,
        map_names::INBOUND_LISTENERS,
        map_names::INBOUND_EXCLUDED_PORTS,
    ] {
        assert_eq!(
            capture.dump_map(map).expect("dump"),
            Value::Array(vec![]),
            "{map}"
        );
    }
    assert!(
        capture.status().pods.is_empty(),
        "the sk_lookup link is gone"
    );
    connect_from(&env, OTHER_IP, to(POD_IP, 8080)).expect("connect after removal");
    assert_eq!(
        accepted_by(&listeners).map(|(by, _)| by),
        Some("app 8080"),
        "no longer steered"
    );
}

#[test]
fn uninstalling_what_was_never_installed_removes_nothing() {
    let options = CaptureOptions {
        instance: "shunt-cap-never-installed".into(),
        bpffs: None,
        cgroup: None,
        sockmap_shortcut: true,
    };
    assert_eq!(
        EbpfCapture::uninstall(&options).expect("uninstall"),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn unknown_maps_are_named_in_the_error() {
    skip_unless_privileged!("unknown_maps_are_named_in_the_error");
    let env = Env::new("unknown-map", false);
    let capture = EbpfCapture::load(&env.options).expect("load capture");
    let error = capture.dump_map("NO_SUCH_MAP").expect_err("unknown map");
    let message = error.to_string();
    assert!(
        message.contains("NO_SUCH_MAP") && message.contains(map_names::MESHED_NETNS),
        "{message}"
    );
}
