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
//! shunt-loadgen serve --echo-port P --crr-port P --sink-port P [--http-port P]
//!                     [--http-body-bytes N] [--lifetime-secs S]
//! shunt-loadgen wait  --to ADDR [--timeout-ms T] [--http-host H [--header "N: V"]...]
//! shunt-loadgen rr    --to ADDR --size N --duration-ms D [--warmup-ms W] [--max-requests M]
//! shunt-loadgen crr   --to ADDR --duration-ms D [--max-connections M]
//! shunt-loadgen bulk  --to ADDR --bytes-per-stream N --streams K [--timeout-ms T]
//! shunt-loadgen idle  --to ADDR --connections N --hold-ms H
//! shunt-loadgen http-max  --to ADDR --duration-ms D [--connections 64] [--warmup-ms W]
//!                         [--host H] [--body-bytes N] [--max-requests M]
//!                         [--header "Name: value"]...
//! shunt-loadgen http-rate --to ADDR --rps R --duration-ms D [--connections 16]
//!                         [--warmup-ms W] [--grace-ms G] [--host H] [--body-bytes N]
//!                         [--header "Name: value"]...
//! ```
//!
//! The HTTP modes speak HTTP/1.1 over keep-alive connections and parse every response (status
//! line, headers, `Content-Length`); a chunked or close-delimited reply is an error, never
//! mis-measured. `http-rate` is open loop and corrects for coordinated omission (see
//! [`http_rate`]).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use shunt_tests::cli::Flags;

const USAGE: &str =
    "usage: shunt-loadgen <serve|wait|rr|crr|bulk|idle|http-max|http-rate> [--flag value]...
  serve --echo-port P --crr-port P --sink-port P [--http-port P] [--http-body-bytes 1024]
        [--lifetime-secs 3600]
        echo: echo until EOF; crr: answer 1 byte then close; sink: read to EOF, then close;
        http: HTTP/1.1 keep-alive, every request answered 200 with an N-byte body
  wait  --to ADDR [--timeout-ms 10000] [--http-host H] [--header \"Name: value\"]...
        retry connecting (and with --http-host, one GET, with the headers) until the
        server answers
  rr    --to ADDR --size N --duration-ms D [--warmup-ms 200] [--max-requests 2000000]
        one persistent connection, N-byte request and response; the warm-up counts from
        the first reply
  crr   --to ADDR --duration-ms D [--max-connections 200000]
        connect, 1-byte exchange, close (to the crr port)
  bulk  --to ADDR --bytes-per-stream N --streams K [--timeout-ms 120000]
        K parallel streams of N bytes each (to the sink port)
  idle  --to ADDR --connections N --hold-ms H
        N connections, one 1-byte echo each, print `holding`, hold them H ms
  http-max  --to ADDR --duration-ms D [--connections 64] [--warmup-ms 200] [--host ADDR]
            [--body-bytes 1024] [--max-requests 5000000] [--header \"Name: value\"]...
        closed loop: C keep-alive connections, each sends its next GET when a reply is in
  http-rate --to ADDR --rps R --duration-ms D [--connections 16] [--warmup-ms 200]
            [--grace-ms 500] [--host ADDR] [--body-bytes 1024] [--header \"Name: value\"]...
        open loop at R requests/s over C keep-alive connections, latency corrected for
        coordinated omission; says whether the rate was achieved
  --header (repeatable) is added to every request, e.g. \"authorization: Bearer <JWT>\"";

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
const MAX_HTTP_BODY: usize = 1 << 20;
const MAX_HTTP_CONNECTIONS: usize = 1024;
const MAX_RPS: f64 = 1_000_000.0;
/// A request or response head longer than this is refused.
const MAX_HTTP_HEAD: usize = 16 * 1024;

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
        "http-max" => http_max(&flags),
        "http-rate" => http_rate(&flags),
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
    let http = flags.optional::<u16>("http-port")?;
    let body_bytes = flags.number::<usize>("http-body-bytes", Some(1024), MAX_HTTP_BODY)?;
    let handlers: [(u16, fn(TcpStream)); 3] =
        [(echo, serve_echo), (crr, serve_crr), (sink, serve_sink)];
    for (port, handler) in handlers {
        let listener = listen(port)?;
        thread::spawn(move || accept_loop(&listener, handler));
    }
    if let Some(port) = http {
        let listener = listen(port)?;
        let response: Arc<[u8]> = http_response(body_bytes).into();
        thread::spawn(move || {
            accept_loop(&listener, move |stream| serve_http(stream, &response));
        });
    }
    println!("ready");
    // The harness kills the server; the lifetime bounds it if the harness cannot.
    thread::sleep(lifetime);
    Ok(None)
}

fn listen(port: u16) -> Result<TcpListener, Failure> {
    TcpListener::bind(("0.0.0.0", port))
        .map_err(io_failure(&format!("could not listen on port {port}")))
}

fn accept_loop<H>(listener: &TcpListener, handler: H)
where
    H: Fn(TcpStream) + Clone + Send + 'static,
{
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let handler = handler.clone();
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
    // With a host, the server must also answer one GET: a proxy accepts connections before
    // it can route them.
    let http_host = flags.optional::<String>("http-host")?;
    let request = match &http_host {
        Some(host) => http_request(host, &headers(flags)?),
        None => Vec::new(),
    };
    let started = Instant::now();
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        let answered = match &http_host {
            None => TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map(drop),
            Some(_) => connect(to).and_then(|mut stream| {
                let mut buffer = HttpBuffer::default();
                let deadline = Instant::now() + CONNECT_TIMEOUT;
                write_all_until(&mut stream, &request, deadline)?;
                buffer.read_response(&mut stream, Some(deadline), None)
            }),
        };
        match answered {
            Ok(()) => {
                return Ok(Some(serde_json::json!({
                    "to": to.to_string(), "attempts": attempts,
                    "waited_ms": started.elapsed().as_millis() as u64,
                })));
            }
            Err(e) if started.elapsed() >= timeout => {
                return Err(Failure::Io(format!(
                    "{to} did not answer within {timeout:?} ({attempts} attempts): {e}"
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
    let mut warmup_requests = 0_usize;
    // The warm-up lasts `warmup` from the first reply: a proxy that sniffs the first request
    // may hold it for its detection timeout (once per node proxy on the way), which must not
    // use the warm-up up.
    let mut warmup_end = None;
    while warmup_end.is_none_or(|end| Instant::now() < end) && warmup_requests < max_requests {
        match one(&mut stream) {
            Ok(()) => warmup_requests += 1,
            Err(e) => {
                errors.push(format!("warm-up: {e}"));
                break;
            }
        }
        warmup_end = warmup_end.or_else(|| Some(Instant::now() + warmup));
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

// ---------------------------------------------------------------- HTTP/1.1

/// The one response the HTTP server sends: 200 with a fixed body, framed by `Content-Length`.
/// Built once, so the server's per-request work is a read, a short parse and one write: the
/// same in every scenario, which leaves the differences to what stands in between.
fn http_response(body_bytes: usize) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
         content-length: {body_bytes}\r\n\r\n"
    )
    .into_bytes();
    response.resize(response.len() + body_bytes, b'x');
    response
}

/// The bench's request: a small GET, with `headers` after the fixed ones. Built once per
/// run, so the clients' hot loops only write these bytes.
fn http_request(host: &str, headers: &[Header]) -> Vec<u8> {
    let mut request = format!(
        "GET /bench HTTP/1.1\r\nhost: {host}\r\nuser-agent: shunt-loadgen\r\naccept: */*\r\n"
    );
    for Header { name, value } in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// An extra request header, `--header "Name: value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    name: String,
    value: String,
}

impl std::str::FromStr for Header {
    type Err = String;

    /// `Name: value`: a token name (RFC 9110's `tchar`s), a colon, a value with no control
    /// characters (so no CR or LF can split the request); spaces around the value dropped.
    fn from_str(raw: &str) -> Result<Self, String> {
        let (name, value) = raw
            .split_once(':')
            .ok_or_else(|| format!("{raw:?} is not \"Name: value\""))?;
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(format!("the header name {name:?} is not an HTTP token"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!(
                "the value of header {name} has a control character"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Every `--header`.
fn headers(flags: &Flags) -> Result<Vec<Header>, Failure> {
    Ok(flags.all::<Header>("header")?)
}

/// Answers every request of a keep-alive connection with `response` until the client closes
/// or asks to; a request it cannot frame gets a 400 naming why, and the connection closes.
fn serve_http(mut stream: TcpStream, response: &[u8]) {
    let _ = stream.set_nodelay(true);
    let mut buffer = HttpBuffer::default();
    loop {
        match buffer.read_request(&mut stream) {
            Ok(Some(close)) => {
                if stream.write_all(response).is_err() || close {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let why = e.to_string();
                let refusal = format!(
                    "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{why}",
                    why.len()
                );
                let _ = stream.write_all(refusal.as_bytes());
                break;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    /// Bytes of the status line and headers, blank line included.
    head_len: usize,
    content_length: usize,
    /// The server said `connection: close`.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    head_len: usize,
    content_length: usize,
    /// The client asked to close after this request (`connection: close`, or HTTP/1.0).
    close: bool,
}

/// A message whose length its head gives.
trait Framed {
    fn message_len(&self) -> usize;
}

impl Framed for ResponseHead {
    fn message_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

impl Framed for RequestHead {
    fn message_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// The head's lines (without the blank line) and its length (with it); `None` until the
/// whole head is in.
fn split_head(buf: &[u8]) -> Result<Option<(Vec<&str>, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HTTP_HEAD {
            Err(format!("no end of the head within {MAX_HTTP_HEAD} bytes"))
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "the head is not UTF-8 text")?;
    Ok(Some((text.split("\r\n").collect(), end + 4)))
}

struct Framing {
    content_length: Option<usize>,
    close: bool,
}

/// What the headers say about the body's length and the connection's end. Transfer codings
/// are refused: the bench measures `Content-Length` messages only.
fn framing(headers: &[&str]) -> Result<Framing, String> {
    let mut framing = Framing {
        content_length: None,
        close: false,
    };
    for line in headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "`transfer-encoding: {value}`: chunked or transfer-coded messages are not \
                 supported, the bench measures Content-Length messages only"
            ));
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("content-length {value:?} is not a number"))?;
            if length > MAX_HTTP_BODY {
                return Err(format!("content-length {length} is above {MAX_HTTP_BODY}"));
            }
            if framing.content_length.is_some_and(|seen| seen != length) {
                return Err("conflicting content-length headers".to_owned());
            }
            framing.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("connection") {
            framing.close |= value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        }
    }
    Ok(framing)
}

fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let Some((lines, head_len)) = split_head(buf)? else {
        return Ok(None);
    };
    let status_line = lines.first().copied().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        return Err(format!("status line {status_line:?} is not HTTP/1.1"));
    }
    let status: u16 = parts
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?} has no status code"))?;
    if status < 200 {
        return Err(format!("unexpected interim response {status}"));
    }
    let framing = framing(lines.get(1..).unwrap_or_default())?;
    let content_length = match framing.content_length {
        Some(length) => length,
        None if status == 204 || status == 304 => 0,
        None => {
            return Err(format!(
                "the {status} response has no content-length: a close-delimited body cannot \
                 be measured on a keep-alive connection"
            ));
        }
    };
    Ok(Some(ResponseHead {
        status,
        head_len,
        content_length,
        close: framing.close,
    }))
}

fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, String> {
    let Some((lines, head_len)) = split_head(buf)? else {
        return Ok(None);
    };
    let request_line = lines.first().copied().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let version = match parts.as_slice() {
        [method, target, version] if !method.is_empty() && !target.is_empty() => *version,
        _ => return Err(format!("malformed request line {request_line:?}")),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("request line {request_line:?} is not HTTP/1.x"));
    }
    let framing = framing(lines.get(1..).unwrap_or_default())?;
    Ok(Some(RequestHead {
        head_len,
        content_length: framing.content_length.unwrap_or(0),
        close: framing.close || version == "HTTP/1.0",
    }))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The read side of a keep-alive connection: bytes read past one message stay for the next.
#[derive(Default)]
struct HttpBuffer {
    bytes: Vec<u8>,
}

impl HttpBuffer {
    const READ_CHUNK: usize = 16 * 1024;

    /// One read appended to the buffer; `Ok(0)` at EOF. Without a deadline it blocks.
    fn fill(&mut self, stream: &mut TcpStream, deadline: Option<Instant>) -> io::Result<usize> {
        let filled = self.bytes.len();
        self.bytes.resize(filled + Self::READ_CHUNK, 0);
        let read = loop {
            match stream.read(&mut self.bytes[filled..]) {
                Ok(n) => break Ok(n),
                Err(e) if is_spurious(&e) && deadline.is_none_or(|d| Instant::now() < d) => {}
                Err(e) if is_spurious(&e) => break Err(timed_out("read")),
                Err(e) => break Err(e),
            }
        };
        self.bytes.truncate(filled + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Reads one whole message (head and body) and removes it; `None` when the peer closed
    /// cleanly before a new message began.
    fn message<H: Framed>(
        &mut self,
        stream: &mut TcpStream,
        deadline: Option<Instant>,
        parse: fn(&[u8]) -> Result<Option<H>, String>,
    ) -> io::Result<Option<H>> {
        let head = loop {
            if let Some(head) = parse(&self.bytes).map_err(invalid_data)? {
                break head;
            }
            if self.fill(stream, deadline)? == 0 {
                if self.bytes.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection within a message head",
                ));
            }
        };
        let len = head.message_len();
        while self.bytes.len() < len {
            if self.fill(stream, deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the peer closed the connection {} bytes into a {len}-byte message",
                        self.bytes.len()
                    ),
                ));
            }
        }
        self.bytes.drain(..len);
        Ok(Some(head))
    }

    /// Server side: the next request, and whether the connection closes after its response.
    fn read_request(&mut self, stream: &mut TcpStream) -> io::Result<Option<bool>> {
        Ok(self
            .message(stream, None, parse_request_head)?
            .map(|head| head.close))
    }

    /// Client side: one response, which must be a keep-alive 200 (with a `body`-byte body
    /// when given) and all the server sent: the client never pipelines.
    fn read_response(
        &mut self,
        stream: &mut TcpStream,
        deadline: Option<Instant>,
        body: Option<usize>,
    ) -> io::Result<()> {
        let head = self
            .message(stream, deadline, parse_response_head)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection instead of responding",
                )
            })?;
        if head.status != 200 {
            return Err(invalid_data(format!("status {}, not 200", head.status)));
        }
        if head.close {
            return Err(invalid_data(
                "the server closes the connection after this response (connection: close): \
                 not keep-alive"
                    .to_owned(),
            ));
        }
        if let Some(want) = body.filter(|want| *want != head.content_length) {
            return Err(invalid_data(format!(
                "a {}-byte body, not {want}",
                head.content_length
            )));
        }
        if !self.bytes.is_empty() {
            return Err(invalid_data(format!(
                "{} bytes past the end of the response",
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// Sends one request on a keep-alive connection and reads its response.
fn exchange(
    stream: &mut TcpStream,
    buffer: &mut HttpBuffer,
    request: &[u8],
    body: usize,
) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    write_all_until(stream, request, deadline)?;
    buffer.read_response(stream, Some(deadline), Some(body))
}

/// Flags both HTTP clients share.
struct HttpTarget {
    to: SocketAddr,
    request: Arc<[u8]>,
    body: usize,
    connections: usize,
    duration: Duration,
    warmup: Duration,
}

impl HttpTarget {
    fn parse(flags: &Flags, default_connections: usize) -> Result<Self, Failure> {
        let to = flags.required::<SocketAddr>("to")?;
        let host = flags
            .optional::<String>("host")?
            .unwrap_or_else(|| to.to_string());
        Ok(Self {
            to,
            request: http_request(&host, &headers(flags)?).into(),
            body: flags.number("body-bytes", Some(1024), MAX_HTTP_BODY)?,
            connections: flags
                .number(
                    "connections",
                    Some(default_connections),
                    MAX_HTTP_CONNECTIONS,
                )?
                .max(1),
            duration: Duration::from_millis(flags.number("duration-ms", None, MAX_DURATION_MS)?),
            warmup: Duration::from_millis(flags.number("warmup-ms", Some(200), MAX_DURATION_MS)?),
        })
    }
}

/// One connection's share of a closed-loop run.
#[derive(Default)]
struct ClosedLoop {
    /// Requests completed outside the measured window (warm-up, or after its end).
    unmeasured: usize,
    samples: Vec<u64>,
    error: Option<String>,
}

/// Max rps: every connection sends its next request as soon as the previous response is in.
/// Requests sent after the warm-up that complete within the measured window are counted.
fn http_max(flags: &Flags) -> Outcome {
    let target = HttpTarget::parse(flags, 64)?;
    let max_requests = flags.number::<usize>("max-requests", Some(5_000_000), 50_000_000)?;
    let per_connection = max_requests.div_ceil(target.connections);
    let warmup_end = Instant::now() + target.warmup;
    let end = warmup_end + target.duration;
    let workers: Vec<_> = (0..target.connections)
        .map(|_| {
            let (to, request, body) = (target.to, target.request.clone(), target.body);
            thread::spawn(move || {
                closed_loop(to, &request, body, (warmup_end, end), per_connection)
            })
        })
        .collect();
    let mut samples = Samples(Vec::new());
    let mut unmeasured = 0;
    let mut errors = Vec::new();
    for worker in workers {
        match worker.join() {
            Ok(part) => {
                samples.0.extend(part.samples);
                unmeasured += part.unmeasured;
                errors.extend(part.error);
            }
            Err(_) => errors.push("a connection thread panicked".to_owned()),
        }
    }
    let requests = samples.0.len();
    let mut report = samples.percentiles(&[("50", 0.5), ("99", 0.99)]);
    report.insert("workload".into(), "http-max".into());
    report.insert("connections".into(), target.connections.into());
    report.insert("requests".into(), requests.into());
    // The harness divides CPU time by every request the run carried.
    report.insert("unmeasured_requests".into(), unmeasured.into());
    report.insert("elapsed_s".into(), target.duration.as_secs_f64().into());
    report.insert(
        "rps".into(),
        (requests as f64 / target.duration.as_secs_f64().max(1e-9)).into(),
    );
    report.insert("errors".into(), errors.into());
    Ok(Some(report.into()))
}

fn closed_loop(
    to: SocketAddr,
    request: &[u8],
    body: usize,
    (warmup_end, end): (Instant, Instant),
    max_requests: usize,
) -> ClosedLoop {
    let mut part = ClosedLoop::default();
    let mut stream = match connect(to) {
        Ok(stream) => stream,
        Err(e) => {
            part.error = Some(format!("connect {to}: {e}"));
            return part;
        }
    };
    let mut buffer = HttpBuffer::default();
    while part.unmeasured + part.samples.len() < max_requests {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        if let Err(e) = exchange(&mut stream, &mut buffer, request, body) {
            let n = part.unmeasured + part.samples.len() + 1;
            part.error = Some(format!("request {n}: {e}"));
            break;
        }
        let done = Instant::now();
        if sent >= warmup_end && done <= end {
            part.samples
                .push(u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX));
        } else {
            part.unmeasured += 1;
        }
    }
    part
}

/// The open-loop schedule: request `i` is due at `start + i / rps`; requests are dealt to
/// the connections in turn.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    rps: f64,
    /// Requests due within warm-up plus duration.
    total: usize,
    /// The first request due after the warm-up: latencies are kept from here.
    first_measured: usize,
    /// Nothing is sent after this: what is left is missed, and the rate was not achieved.
    give_up: Instant,
}

impl Schedule {
    fn due(&self, index: usize) -> Instant {
        self.start + Duration::from_secs_f64(index as f64 / self.rps)
    }
}

/// One connection's share of an open-loop run.
#[derive(Default)]
struct OpenLoop {
    completed: usize,
    latencies: Vec<u64>,
    /// How late each measured request was sent (its due time to its send).
    send_lags: Vec<u64>,
    last_done: Option<Instant>,
    error: Option<String>,
}

/// Fixed rate, open loop, over keep-alive connections: requests are due on a schedule that
/// does not wait for responses, so a stalled server cannot slow the load down and hide its
/// stall (coordinated omission). A request that could not be sent on time because its
/// connection was still waiting for the previous response is measured from its due time, as
/// wrk2 and `oha --latency-correction` do. A request sent late only because this client's own
/// sleep overslept (timer slack, tens of µs: the size of what the bench compares) is measured
/// from its send: that delay is the load generator's, not the system's. `send_lag_p99_us`
/// shows how late sends were.
///
/// The rate is achieved when every request due within warm-up plus duration completed, with
/// no error, before a grace period after the end.
fn http_rate(flags: &Flags) -> Outcome {
    let target = HttpTarget::parse(flags, 16)?;
    let rps: f64 = flags.required("rps")?;
    if !(rps > 0.0 && rps <= MAX_RPS) {
        return Err(Failure::Usage(format!(
            "--rps {rps} must be above 0 and at most {MAX_RPS}"
        )));
    }
    let grace = Duration::from_millis(flags.number("grace-ms", Some(500), MAX_DURATION_MS)?);
    let total = ((target.warmup + target.duration).as_secs_f64() * rps).floor() as usize;
    if total > 50_000_000 {
        return Err(Failure::Usage(format!(
            "{total} requests is too many for one run"
        )));
    }
    // Open and prime every connection first: the schedule starts on warm connections.
    let mut streams = Vec::with_capacity(target.connections);
    for c in 0..target.connections {
        let primed = connect(target.to).and_then(|mut stream| {
            let mut buffer = HttpBuffer::default();
            exchange(&mut stream, &mut buffer, &target.request, target.body)?;
            Ok(stream)
        });
        match primed {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                return Ok(Some(serde_json::json!({
                    "workload": "http-rate", "target_rps": rps, "rate_achieved": false,
                    "errors": [format!("connection {}: {e}", c + 1)],
                })));
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(10);
    let schedule = Schedule {
        start,
        rps,
        total,
        first_measured: (target.warmup.as_secs_f64() * rps).ceil() as usize,
        give_up: start + target.warmup + target.duration + grace,
    };
    let connections = streams.len();
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(first, stream)| {
            let (request, body) = (target.request.clone(), target.body);
            thread::spawn(move || open_loop(stream, first, connections, &schedule, &request, body))
        })
        .collect();
    let mut latencies = Samples(Vec::new());
    let mut send_lags = Samples(Vec::new());
    let mut completed = 0;
    let mut last_done = start;
    let mut errors = Vec::new();
    for worker in workers {
        match worker.join() {
            Ok(part) => {
                completed += part.completed;
                latencies.0.extend(part.latencies);
                send_lags.0.extend(part.send_lags);
                last_done = last_done.max(part.last_done.unwrap_or(start));
                errors.extend(part.error);
            }
            Err(_) => errors.push("a connection thread panicked".to_owned()),
        }
    }
    let requests = latencies.0.len();
    let lag = send_lags.percentiles(&[("99", 0.99)]);
    let mut report = latencies.percentiles(&[("50", 0.5), ("90", 0.9), ("99", 0.99)]);
    report.insert("workload".into(), "http-rate".into());
    report.insert("connections".into(), connections.into());
    report.insert("target_rps".into(), rps.into());
    report.insert("scheduled".into(), total.into());
    report.insert("completed".into(), completed.into());
    report.insert("requests".into(), requests.into());
    report.insert(
        "achieved_rps".into(),
        (completed as f64 / (last_done - start).as_secs_f64().max(1e-9)).into(),
    );
    report.insert(
        "rate_achieved".into(),
        (errors.is_empty() && completed == total).into(),
    );
    report.insert(
        "send_lag_p99_us".into(),
        lag.get("p99_us").cloned().unwrap_or_default(),
    );
    report.insert("errors".into(), errors.into());
    Ok(Some(report.into()))
}

fn open_loop(
    mut stream: TcpStream,
    first: usize,
    step: usize,
    schedule: &Schedule,
    request: &[u8],
    body: usize,
) -> OpenLoop {
    let mut part = OpenLoop::default();
    let mut buffer = HttpBuffer::default();
    let mut index = first;
    while index < schedule.total {
        let due = schedule.due(index);
        let now = Instant::now();
        if now >= schedule.give_up {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let sent = Instant::now();
        if let Err(e) = exchange(&mut stream, &mut buffer, request, body) {
            part.error = Some(format!("request {}: {e}", index + 1));
            break;
        }
        let done = Instant::now();
        part.completed += 1;
        if index >= schedule.first_measured {
            // Held back by the previous response: the wait counts (coordinated omission).
            let held_back = part.last_done.is_some_and(|previous| previous > due);
            let from = if held_back { due } else { sent };
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            part.latencies
                .push(nanos(done.saturating_duration_since(from)));
            part.send_lags
                .push(nanos(sent.saturating_duration_since(due)));
        }
        part.last_done = Some(done);
        index += step;
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_content_length_or_refused() {
        let ok = |status, head_len, content_length, close| {
            Ok(Some(ResponseHead {
                status,
                head_len,
                content_length,
                close,
            }))
        };
        let cases: [(&str, Result<Option<ResponseHead>, &str>); 9] = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                ok(200, 38, 5, false),
            ),
            (
                "HTTP/1.1 503 x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ok(503, 56, 0, true),
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", ok(204, 27, 0, false)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", Ok(None)),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Err("chunked"),
            ),
            (
                "HTTP/1.1 200 OK\r\nserver: x\r\n\r\n",
                Err("close-delimited"),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Err("not HTTP/1.1"),
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", Err("interim")),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Err("conflicting"),
            ),
        ];
        for (input, want) in cases {
            let got = parse_response_head(input.as_bytes());
            match (got, want) {
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{input:?}: {message}")
                }
                (got, want) => assert_eq!(got, want.map_err(str::to_owned), "{input:?}"),
            }
        }
    }

    #[test]
    fn requests_are_framed_and_say_when_to_close() {
        let head = |content_length, close| RequestHead {
            head_len: 0,
            content_length,
            close,
        };
        let cases = [
            ("GET / HTTP/1.1\r\nhost: a\r\n\r\n", Some(head(0, false))),
            (
                "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
                Some(head(3, false)),
            ),
            (
                "GET / HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\n",
                Some(head(0, true)),
            ),
            ("GET / HTTP/1.0\r\n\r\n", Some(head(0, true))),
            ("GET / HTTP/1.1\r\nhost: a\r\n", None),
        ];
        for (input, want) in cases {
            let got = parse_request_head(input.as_bytes())
                .expect("a valid request")
                .map(|h| head(h.content_length, h.close));
            assert_eq!(got, want, "{input:?}");
        }
        for bad in [
            "GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
        ] {
            assert!(parse_request_head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let endless = vec![b'a'; MAX_HTTP_HEAD + 1];
        assert!(parse_request_head(&endless).is_err());
    }

    #[test]
    fn the_server_response_frames_itself() {
        let response = http_response(1024);
        let head = parse_response_head(&response)
            .expect("parses")
            .expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.message_len(), response.len());
        let request = http_request("10.96.0.1:80", &[]);
        let head = parse_request_head(&request)
            .expect("parses")
            .expect("complete");
        assert_eq!(head.message_len(), request.len());
    }

    #[test]
    fn headers_are_added_to_every_request_in_order() {
        let header = |raw: &str| raw.parse::<Header>().expect("a valid header");
        let cases: [(&[&str], &str); 3] = [
            (
                &[],
                "GET /bench HTTP/1.1\r\nhost: h:80\r\nuser-agent: shunt-loadgen\r\n\
                 accept: */*\r\n\r\n",
            ),
            (
                &["authorization: Bearer a.b.c"],
                "GET /bench HTTP/1.1\r\nhost: h:80\r\nuser-agent: shunt-loadgen\r\n\
                 accept: */*\r\nauthorization: Bearer a.b.c\r\n\r\n",
            ),
            (
                &["X-One:1", "x-two:  two words\t"],
                "GET /bench HTTP/1.1\r\nhost: h:80\r\nuser-agent: shunt-loadgen\r\n\
                 accept: */*\r\nX-One: 1\r\nx-two: two words\r\n\r\n",
            ),
        ];
        for (raw, want) in cases {
            let headers: Vec<Header> = raw.iter().copied().map(header).collect();
            let request = http_request("h:80", &headers);
            assert_eq!(String::from_utf8_lossy(&request), want, "{raw:?}");
            let head = parse_request_head(&request)
                .expect("parses")
                .expect("complete");
            assert_eq!(head.message_len(), request.len(), "{raw:?}");
        }
        for bad in [
            "no colon",
            ": empty name",
            "bad name: x",
            "x: split\r\nhost: evil",
            "x: nul\0",
        ] {
            assert!(bad.parse::<Header>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schedule_spreads_requests_evenly() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rps: 1000.0,
            total: 10,
            first_measured: 2,
            give_up: start,
        };
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.due(5) - start, Duration::from_millis(5));
    }
}
