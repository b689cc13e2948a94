//! `shunt-loadgen`: the benchmark's load generator and its server, run inside pods by
//! `cargo xtask bench`.
//!
//! Std only. Clients print one JSON object on stdout and exit 0 (the JSON's `errors` says
//! whether the run is usable); 2 is a usage error. Every loop stops at a count or a deadline.
//! Reads and writes retry `EAGAIN` until the operation's own deadline: with the sockmap
//! shortcut the kernel's `tcp_bpf_recvmsg` can fail a blocking read with a spurious `EAGAIN`,
//! and the benchmark must measure that path rather than fail on it.
//!
//! ```text
//! shunt-loadgen serve --echo-port P --crr-port P --sink-port P [--lifetime-secs S]
//! shunt-loadgen wait  --to ADDR [--timeout-ms T]
//! shunt-loadgen rr    --to ADDR --size N --duration-ms D [--warmup-ms W] [--max-requests M]
//! shunt-loadgen crr   --to ADDR --duration-ms D [--max-connections M]
//! shunt-loadgen bulk  --to ADDR --bytes-per-stream N --streams K [--timeout-ms T]
//! shunt-loadgen idle  --to ADDR --connections N --hold-ms H
//! ```
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use shunt_tests::cli::Flags;

const USAGE: &str = "usage: shunt-loadgen <serve|wait|rr|crr|bulk|idle> [--flag value]...
  serve --echo-port P --crr-port P --sink-port P [--lifetime-secs 3600]
        echo: echo until EOF; crr: answer 1 byte then close; sink: read to EOF, then close
  wait  --to ADDR [--timeout-ms 10000]          retry connecting until the server answers
  rr    --to ADDR --size N --duration-ms D [--warmup-ms 200] [--max-requests 2000000]
        one persistent connection, N-byte request and response
  crr   --to ADDR --duration-ms D [--max-connections 200000]
        connect, 1-byte exchange, close (to the crr port)
  bulk  --to ADDR --bytes-per-stream N --streams K [--timeout-ms 120000]
        K parallel streams of N bytes each (to the sink port)
  idle  --to ADDR --connections N --hold-ms H
        N connections, one 1-byte echo each, print `holding`, hold them H ms";

/// One read or write gives up after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connects give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Server connection threads do little; a small stack keeps thousands of idle ones cheap.
const SERVER_THREAD_STACK: usize = 64 * 1024;
/// Bulk writes and sink reads use this buffer.
const BULK_CHUNK: usize = 256 * 1024;
/// Upper bounds on what a client accepts from the command line.
const MAX_SIZE: usize = 1 << 20;
const MAX_STREAMS: usize = 64;
const MAX_IDLE_CONNECTIONS: usize = 16_384;
const MAX_DURATION_MS: u64 = 600_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let flags = match Flags::parse(rest) {
        Ok(flags) => flags,
        Err(e) => return usage_error(&e),
    };
    let outcome = match command.as_str() {
        "serve" => serve(&flags),
        "wait" => wait(&flags),
        "rr" => rr(&flags),
        "crr" => crr(&flags),
        "bulk" => bulk(&flags),
        "idle" => idle(&flags),
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    };
    match outcome {
        Ok(report) => {
            if let Some(report) = report {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(e)) => usage_error(&e),
        Err(Failure::Io(e)) => {
            eprintln!("shunt-loadgen {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("shunt-loadgen: {message}\n{USAGE}");
    ExitCode::from(2)
}

enum Failure {
    Usage(String),
    Io(String),
}

type Outcome = Result<Option<serde_json::Value>, Failure>;

impl From<String> for Failure {
    fn from(usage: String) -> Self {
        Self::Usage(usage)
    }
}

fn io_failure(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::Io(format!("{what}: {e}"))
}

// ---------------------------------------------------------------- server

fn serve(flags: &Flags) -> Outcome {
    let lifetime = Duration::from_secs(flags.number("lifetime-secs", Some(3600), 86_400)?);
    let echo = flags.number::<u16>("echo-port", None, u16::MAX)?;
    let crr = flags.number::<u16>("crr-port", None, u16::MAX)?;
    let sink = flags.number::<u16>("sink-port", None, u16::MAX)?;
    let handlers: [(u16, fn(TcpStream)); 3] =
        [(echo, serve_echo), (crr, serve_crr), (sink, serve_sink)];
    for (port, handler) in handlers {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .map_err(io_failure(&format!("could not listen on port {port}")))?;
        thread::spawn(move || accept_loop(&listener, handler));
    }
    println!("ready");
    // The harness kills the server; the lifetime bounds it if the harness cannot.
    thread::sleep(lifetime);
    Ok(None)
}

fn accept_loop(listener: &TcpListener, handler: fn(TcpStream)) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let spawned = thread::Builder::new()
            .stack_size(SERVER_THREAD_STACK)
            .spawn(move || handler(stream));
        if let Err(e) = spawned {
            eprintln!("shunt-loadgen serve: could not start a connection thread: {e}");
        }
    }
}

/// Echoes until EOF, then closes.
fn serve_echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_spurious(&e) => {}
            Err(_) => break,
        }
    }
}

/// Answers the first byte with one byte, then closes (so TIME_WAIT lands on the server side
/// and the client's ephemeral ports are not exhausted by a long CRR run).
fn serve_crr(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut byte = [0_u8; 1];
    let deadline = Instant::now() + IO_TIMEOUT;
    if read_exact_until(&mut stream, &mut byte, deadline).is_ok() {
        let _ = write_all_until(&mut stream, &byte, deadline);
    }
}

/// Reads and discards until EOF, then closes: the client's EOF means every byte arrived.
fn serve_sink(mut stream: TcpStream) {
    let mut buf = vec![0_u8; BULK_CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_spurious(&e) => {}
            Err(_) => break,
        }
    }
}

// ---------------------------------------------------------------- I/O with deadlines

fn is_spurious(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
    )
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn read_exact_until(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if is_spurious(&e) && Instant::now() < deadline => {}
            Err(e) if is_spurious(&e) => return Err(timed_out("read")),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all_until(stream: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if is_spurious(&e) && Instant::now() < deadline => {}
            Err(e) if is_spurious(&e) => return Err(timed_out("write")),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until EOF (discarding), bounded by `deadline`.
fn read_to_eof_until(stream: &mut TcpStream, deadline: Instant) -> io::Result<u64> {
    let mut buf = [0_u8; 4096];
    let mut total = 0_u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if is_spurious(&e) && Instant::now() < deadline => {}
            Err(e) if is_spurious(&e) => return Err(timed_out("read to EOF")),
            Err(e) => return Err(e),
        }
    }
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    // A bounded blocking wait per call: the deadline loops above decide when to give up.
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

// ---------------------------------------------------------------- clients

fn wait(flags: &Flags) -> Outcome {
    let to = flags.required::<SocketAddr>("to")?;
    let timeout =
        Duration::from_millis(flags.number("timeout-ms", Some(10_000), MAX_DURATION_MS)?);
    let started = Instant::now();
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(_) => {
                return Ok(Some(serde_json::json!({
                    "to": to.to_string(), "attempts": attempts,
                    "waited_ms": started.elapsed().as_millis() as u64,
                })));
            }
            Err(e) if started.elapsed() >= timeout => {
                return Err(Failure::Io(format!(
                    "{to} did not accept within {timeout:?} ({attempts} attempts): {e}"
                )));
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Latency samples in nanoseconds; bounded by the caller's request cap.
struct Samples(Vec<u64>);

impl Samples {
    fn with_capacity(cap: usize) -> Self {
        Self(Vec::with_capacity(cap.min(1 << 20)))
    }

    fn push(&mut self, elapsed: Duration) {
        self.0
            .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Percentiles in microseconds (nearest rank), as JSON fields named `p<label>_us`.
    fn percentiles(mut self, wanted: &[(&str, f64)]) -> serde_json::Map<String, serde_json::Value> {
        self.0.sort_unstable();
        let mut out = serde_json::Map::new();
        for (label, q) in wanted {
            let value = if self.0.is_empty() {
                serde_json::Value::Null
            } else {
                let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
                serde_json::json!(self.0[rank - 1] as f64 / 1000.0)
            };
            out.insert(format!("p{label}_us"), value);
        }
        out
    }
}

fn rr(flags: &Flags) -> Outcome {
    let to = flags.required::<SocketAddr>("to")?;
    let size = flags.number::<usize>("size", None, MAX_SIZE)?.max(1);
    let duration = Duration::from_millis(flags.number("duration-ms", None, MAX_DURATION_MS)?);
    let warmup = Duration::from_millis(flags.number("warmup-ms", Some(200), MAX_DURATION_MS)?);
    let max_requests = flags.number::<usize>("max-requests", Some(2_000_000), 20_000_000)?;

    let mut stream = connect(to).map_err(io_failure(&format!("connect {to}")))?;
    let request = vec![0x5a_u8; size];
    let mut response = vec![0_u8; size];
    let mut one = |stream: &mut TcpStream| -> io::Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        write_all_until(stream, &request, deadline)?;
        read_exact_until(stream, &mut response, deadline)
    };
    let mut errors = Vec::new();
    let warmup_end = Instant::now() + warmup;
    let mut warmup_requests = 0_usize;
    while Instant::now() < warmup_end && warmup_requests < max_requests {
        match one(&mut stream) {
            Ok(()) => warmup_requests += 1,
            Err(e) => {
                errors.push(format!("warm-up: {e}"));
                break;
            }
        }
    }
    let mut samples = Samples::with_capacity(max_requests);
    let started = Instant::now();
    while errors.is_empty() && samples.0.len() < max_requests && started.elapsed() < duration {
        let t = Instant::now();
        match one(&mut stream) {
            Ok(()) => samples.push(t.elapsed()),
            Err(e) => errors.push(format!("request {}: {e}", samples.0.len() + 1)),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stream.shutdown(Shutdown::Write);
    let requests = samples.0.len();
    let mut report = samples.percentiles(&[("50", 0.5), ("90", 0.9), ("99", 0.99), ("999", 0.999)]);
    report.insert("workload".into(), "rr".into());
    report.insert("size".into(), size.into());
    report.insert("requests".into(), requests.into());
    // The harness divides CPU time by every request the connection carried.
    report.insert("warmup_requests".into(), warmup_requests.into());
    report.insert("elapsed_s".into(), elapsed.into());
    report.insert("rps".into(), (requests as f64 / elapsed.max(1e-9)).into());
    report.insert("errors".into(), errors.into());
    Ok(Some(report.into()))
}

fn crr(flags: &Flags) -> Outcome {
    let to = flags.required::<SocketAddr>("to")?;
    let duration = Duration::from_millis(flags.number("duration-ms", None, MAX_DURATION_MS)?);
    let max_connections = flags.number::<usize>("max-connections", Some(200_000), 2_000_000)?;
    let one = || -> io::Result<()> {
        let mut stream = connect(to)?;
        let deadline = Instant::now() + IO_TIMEOUT;
        write_all_until(&mut stream, &[1], deadline)?;
        let mut byte = [0_u8; 1];
        read_exact_until(&mut stream, &mut byte, deadline)?;
        // The server closes first; waiting for its EOF keeps TIME_WAIT off our ports.
        read_to_eof_until(&mut stream, deadline)?;
        Ok(())
    };
    let mut samples = Samples::with_capacity(max_connections);
    let mut errors = Vec::new();
    let started = Instant::now();
    while errors.len() < 10 && samples.0.len() < max_connections && started.elapsed() < duration {
        let t = Instant::now();
        match one() {
            Ok(()) => samples.push(t.elapsed()),
            Err(e) => errors.push(format!("connection {}: {e}", samples.0.len() + 1)),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let connections = samples.0.len();
    let mut report = samples.percentiles(&[("50", 0.5), ("99", 0.99)]);
    report.insert("workload".into(), "crr".into());
    report.insert("connections".into(), connections.into());
    report.insert("elapsed_s".into(), elapsed.into());
    report.insert(
        "connections_per_s".into(),
        (connections as f64 / elapsed.max(1e-9)).into(),
    );
    report.insert("errors".into(), errors.into());
    Ok(Some(report.into()))
}

fn bulk(flags: &Flags) -> Outcome {
    let to = flags.required::<SocketAddr>("to")?;
    let per_stream = flags.number::<u64>("bytes-per-stream", None, 64 << 30)?;
    let streams = flags.number::<usize>("streams", None, MAX_STREAMS)?.max(1);
    let timeout =
        Duration::from_millis(flags.number("timeout-ms", Some(120_000), MAX_DURATION_MS)?);
    let started = Instant::now();
    let deadline = started + timeout;
    let workers: Vec<_> = (0..streams)
        .map(|_| thread::spawn(move || send_stream(to, per_stream, deadline)))
        .collect();
    let mut errors = Vec::new();
    let mut sent = 0_u64;
    for worker in workers {
        match worker.join() {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push("a stream thread panicked".to_owned()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Some(serde_json::json!({
        "workload": "bulk",
        "streams": streams,
        "bytes_per_stream": per_stream,
        "bytes": sent,
        "elapsed_s": elapsed,
        "gbit_per_s": sent as f64 * 8.0 / elapsed.max(1e-9) / 1e9,
        "errors": errors,
    })))
}

/// Sends `bytes`, half-closes, and waits for the sink's EOF: then every byte has arrived.
fn send_stream(to: SocketAddr, bytes: u64, deadline: Instant) -> io::Result<u64> {
    let mut stream = connect(to)?;
    let chunk = vec![0xa5_u8; BULK_CHUNK];
    let mut sent = 0_u64;
    while sent < bytes {
        if Instant::now() >= deadline {
            return Err(timed_out(&format!("bulk stream after {sent} bytes")));
        }
        let n = usize::try_from(bytes - sent).map_or(BULK_CHUNK, |left| left.min(BULK_CHUNK));
        write_all_until(&mut stream, &chunk[..n], deadline)?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    read_to_eof_until(&mut stream, deadline)?;
    Ok(sent)
}

fn idle(flags: &Flags) -> Outcome {
    let to = flags.required::<SocketAddr>("to")?;
    let count = flags.number::<usize>("connections", None, MAX_IDLE_CONNECTIONS)?;
    let hold = Duration::from_millis(flags.number("hold-ms", None, MAX_DURATION_MS)?);
    let mut held = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for i in 0..count {
        let opened = connect(to).and_then(|mut stream| {
            let deadline = Instant::now() + IO_TIMEOUT;
            write_all_until(&mut stream, &[1], deadline)?;
            let mut byte = [0_u8; 1];
            read_exact_until(&mut stream, &mut byte, deadline)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => held.push(stream),
            Err(e) => {
                errors.push(format!("connection {}: {e}", i + 1));
                break;
            }
        }
    }
    // The harness samples the proxy's memory between `holding` and the end of the hold.
    println!("holding");
    io::stdout().flush().map_err(io_failure("stdout"))?;
    thread::sleep(hold);
    Ok(Some(serde_json::json!({
        "workload": "idle",
        "connections": held.len(),
        "errors": errors,
    })))
}
