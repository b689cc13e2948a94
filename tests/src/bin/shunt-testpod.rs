//! `shunt-testpod`: the client and server processes the end-to-end tests run inside pods.
//!
//! Std only, one thread per connection. Servers print `ready` on stdout once they listen.
//! Clients print one JSON object on stdout and exit 0 when everything they checked held, 1 when
//! something failed (the JSON says what), 2 on a usage error.
//!
//! ```text
//! shunt-testpod echo-server   --port P [--hold-until-eof]
//! shunt-testpod whoami-server --port P --name NAME
//! shunt-testpod send    --to ADDR --bytes N --seed S [--retry-spurious-eagain] [--lockstep CHUNK]
//!                         [--marker TEXT]
//! shunt-testpod churn   --to ADDR --count N [--interval-ms 10] [--until-file PATH]
//! shunt-testpod hold    --to ADDR --seconds S [--interval-ms 100] [--until-file PATH]
//!                         [--retry-spurious-eagain]
//! shunt-testpod fetch   --to ADDR [--count N]
//! shunt-testpod connect --to ADDR
//! ```
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shunt_tests::cli::Flags;

const USAGE: &str = "usage: shunt-testpod <echo-server|whoami-server|send|churn|hold|fetch|connect> [--flag value]...
  echo-server   --port P [--hold-until-eof]   echo until EOF, then shut down writing
  whoami-server --port P --name NAME          reply {\"name\",\"peer\",\"local\"} and close
  send    --to ADDR --bytes N --seed S [--retry-spurious-eagain] [--lockstep CHUNK]
          [--marker TEXT]                     send N pseudo-random bytes, verify the echo
                                              (--lockstep: CHUNK bytes at a time, each
                                              only once the previous one came back;
                                              --marker: the stream starts with TEXT, for a
                                              packet capture to look for)
  churn   --to ADDR --count N [--interval-ms 10] [--until-file PATH]
                                              one short connection + 1-byte echo each
  hold    --to ADDR --seconds S [--interval-ms 100] [--until-file PATH]
          [--retry-spurious-eagain]           one long connection, pinging
  fetch   --to ADDR [--count N]               read each connection's reply until EOF
  connect --to ADDR                           one connect, report the outcome";

/// Every client operation gives up after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one short connection (churn, fetch) may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many individual errors are listed in a report.
const MAX_LISTED_ERRORS: usize = 20;
/// `--hold-until-eof` keeps the whole request in memory; this bounds it.
const MAX_HELD_BYTES: usize = 64 << 20;

/// Spurious `EAGAIN`s retried under `--retry-spurious-eagain`, during the exchange and at the
/// half-close; the clients report them (`eagain_retries_read`, `eagain_retries_close`), so a
/// run shows where the sockmap receive path returned them.
static EAGAIN_RETRIES_READ: AtomicU64 = AtomicU64::new(0);
static EAGAIN_RETRIES_CLOSE: AtomicU64 = AtomicU64::new(0);

fn retried(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds the retry counts to a client's report.
fn report_retries(report: &mut Json) {
    report
        .num(
            "eagain_retries_read",
            EAGAIN_RETRIES_READ.load(Ordering::Relaxed),
        )
        .num(
            "eagain_retries_close",
            EAGAIN_RETRIES_CLOSE.load(Ordering::Relaxed),
        );
}

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
        "echo-server" => echo_server(&flags),
        "whoami-server" => whoami_server(&flags),
        "send" => send(&flags),
        "churn" => churn(&flags),
        "hold" => hold(&flags),
        "fetch" => fetch(&flags),
        "connect" => connect(&flags),
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure::Usage(e)) => usage_error(&e),
        Err(Failure::Io(e)) => {
            eprintln!("shunt-testpod {command}: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("shunt-testpod: {message}\n{USAGE}");
    ExitCode::from(2)
}

enum Failure {
    Usage(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<String> for Failure {
    fn from(usage: String) -> Self {
        Self::Usage(usage)
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

fn listen(flags: &Flags) -> Result<TcpListener, Failure> {
    let port: u16 = flags.required("port")?;
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    // The harness waits for this line before it starts clients.
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    Ok(listener)
}

fn serve(
    listener: &TcpListener,
    handler: impl Fn(TcpStream) -> io::Result<()> + Clone + Send + 'static,
) -> Result<bool, Failure> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let handler = handler.clone();
        thread::spawn(move || {
            let peer = stream.peer_addr().ok();
            if let Err(e) = handler(stream) {
                eprintln!("connection from {peer:?}: {e}");
            }
        });
    }
    Ok(true)
}

fn echo_server(flags: &Flags) -> Result<bool, Failure> {
    let hold_until_eof = flags.switch("hold-until-eof");
    let listener = listen(flags)?;
    serve(&listener, move |mut stream| {
        if hold_until_eof {
            // Nothing goes back before the client's FIN arrives: the reply can only reach the
            // client if its half-closed connection still carries data the other way.
            let mut held = Vec::new();
            (&mut stream)
                .take(MAX_HELD_BYTES as u64)
                .read_to_end(&mut held)?;
            stream.write_all(&held)?;
        } else {
            let mut reader = stream.try_clone()?;
            io::copy(&mut reader, &mut stream)?;
        }
        stream.shutdown(Shutdown::Write)
    })
}

fn whoami_server(flags: &Flags) -> Result<bool, Failure> {
    let name: String = flags.required("name")?;
    let listener = listen(flags)?;
    serve(&listener, move |mut stream| {
        let mut reply = Json::new();
        reply
            .str("name", &name)
            .str("peer", &stream.peer_addr()?.to_string())
            .str("local", &stream.local_addr()?.to_string());
        writeln!(stream, "{}", reply.finish())?;
        stream.shutdown(Shutdown::Write)?;
        // Wait for the client's close, so the connection ends with a clean exchange of FINs.
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        io::copy(&mut stream, &mut io::sink())?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Clients

fn target(flags: &Flags) -> Result<SocketAddr, Failure> {
    Ok(flags.required("to")?)
}

fn dial(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Shuts down writing and waits for the peer's FIN, so the connection closes cleanly.
/// Half-closes and waits for the peer's EOF. With `retry_spurious_eagain`, an `EAGAIN` before
/// the read timeout is retried, as in [`read_exact`]: the half-close is exactly when the
/// sockmap receive path wakes a blocking reader without data (the ACK of our own FIN).
fn close_gracefully(mut stream: TcpStream, retry_spurious_eagain: bool) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 64];
    let closed_at = Instant::now();
    loop {
        match stream.read(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{n} unexpected bytes after the exchange"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if retry_spurious_eagain
                    && e.kind() == io::ErrorKind::WouldBlock
                    && closed_at.elapsed() < IO_TIMEOUT =>
            {
                retried(&EAGAIN_RETRIES_CLOSE);
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(flags: &Flags) -> Result<bool, Failure> {
    let to = target(flags)?;
    let bytes: u64 = flags.required("bytes")?;
    let seed: u64 = flags.required("seed")?;
    let retry_spurious_eagain = flags.switch("retry-spurious-eagain");
    let lockstep: Option<u64> = flags.optional("lockstep")?;
    if lockstep == Some(0) {
        return Err(Failure::Usage(
            "--lockstep must be at least 1 byte".to_owned(),
        ));
    }
    let marker: Vec<u8> = flags
        .optional::<String>("marker")?
        .unwrap_or_default()
        .into_bytes();
    if marker.len() as u64 > bytes {
        return Err(Failure::Usage(format!(
            "--marker is {} bytes, longer than --bytes {bytes}",
            marker.len()
        )));
    }
    let payload = Payload::new(seed).with_prefix(marker);
    let result = send_and_verify(to, bytes, &payload, retry_spurious_eagain, lockstep);
    let ok = result.error.is_none()
        && result.sent == bytes
        && result.received == bytes
        && result.first_mismatch.is_none();
    let mut report = Json::new();
    report
        .str("to", &to.to_string())
        .num("bytes", bytes)
        .num("sent", result.sent)
        .num("received", result.received)
        .str("sent_hash", &result.sent_hash)
        .str("received_hash", &result.received_hash)
        .opt_num("first_mismatch", result.first_mismatch);
    report_retries(&mut report);
    match &result.error {
        Some(error) => report.str("error", error),
        None => report.null("error"),
    };
    report.bool("ok", ok);
    println!("{}", report.finish());
    Ok(ok)
}

/// What `send` saw; counts and hashes cover what got through before an error.
struct SendResult {
    sent: u64,
    received: u64,
    sent_hash: String,
    received_hash: String,
    first_mismatch: Option<u64>,
    error: Option<String>,
}

/// Adds what was being done to an I/O error.
fn during(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// With `retry_spurious_eagain`, a read that fails with `EAGAIN` before the read timeout has
/// run out is retried. The sockmap shortcut needs it: the kernel's sockmap receive path
/// (`tcp_bpf_recvmsg`) returns `EAGAIN` to a blocking reader that is woken without data.
fn send_and_verify(
    to: SocketAddr,
    bytes: u64,
    payload: &Payload,
    retry_spurious_eagain: bool,
    lockstep: Option<u64>,
) -> SendResult {
    let mut result = SendResult {
        sent: 0,
        received: 0,
        sent_hash: String::new(),
        received_hash: Fnv1a::new().hex(),
        first_mismatch: None,
        error: None,
    };
    let connected = dial(to)
        .map_err(during("connect"))
        .and_then(|stream| Ok((stream.try_clone().map_err(during("dup"))?, stream)));
    let (mut writer, mut reader) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    // Writing and reading at once: an echo of more than the socket buffers would otherwise
    // deadlock with both sides blocked on a full buffer. In lockstep the reader tells the
    // writer each time a whole chunk has come back.
    let chunk_len = lockstep.unwrap_or(64 << 10);
    let chunks = bytes.div_ceil(chunk_len);
    let (echoed, echoes) = std::sync::mpsc::channel::<()>();
    let mut sent_payload = payload.clone();
    let sender = thread::spawn(move || -> (u64, String, io::Result<()>) {
        let payload = &mut sent_payload;
        let mut hash = Fnv1a::new();
        let mut chunk = vec![0u8; usize::try_from(chunk_len).unwrap_or(64 << 10)];
        let mut sent = 0u64;
        while sent < bytes {
            let n = usize::try_from((bytes - sent).min(chunk.len() as u64)).unwrap_or(chunk.len());
            payload.fill(&mut chunk[..n]);
            if let Err(e) = writer.write_all(&chunk[..n]) {
                return (
                    sent,
                    hash.hex(),
                    Err(during(format!("write after {sent} bytes"))(e)),
                );
            }
            hash.update(&chunk[..n]);
            sent += n as u64;
            if lockstep.is_some() && echoes.recv_timeout(IO_TIMEOUT).is_err() {
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no echo of the chunk ending at byte {sent}"),
                );
                return (sent, hash.hex(), Err(error));
            }
        }
        let shutdown = writer
            .shutdown(Shutdown::Write)
            .map_err(during("shutdown(write)"));
        (sent, hash.hex(), shutdown)
    });

    let mut expected = payload.clone();
    let mut hash = Fnv1a::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    let mut last_progress = Instant::now();
    let mut chunks_echoed = 0u64;
    let read_result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e)
                if retry_spurious_eagain
                    && e.kind() == io::ErrorKind::WouldBlock
                    && last_progress.elapsed() < IO_TIMEOUT =>
            {
                retried(&EAGAIN_RETRIES_READ);
                continue;
            }
            Err(e) => break Err(during(format!("read after {} bytes", result.received))(e)),
        };
        last_progress = Instant::now();
        hash.update(&buf[..n]);
        expected.fill(&mut want[..n]);
        if result.first_mismatch.is_none() {
            result.first_mismatch = buf[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .map(|at| result.received + at as u64);
        }
        result.received += n as u64;
        while lockstep.is_some()
            && chunks_echoed < chunks
            && result.received >= ((chunks_echoed + 1) * chunk_len).min(bytes)
        {
            chunks_echoed += 1;
            // The writer may have failed and gone; its own error is reported.
            let _ = echoed.send(());
        }
    };
    result.received_hash = hash.hex();
    let write_result = match sender.join() {
        Ok((sent, sent_hash, outcome)) => {
            result.sent = sent;
            result.sent_hash = sent_hash;
            outcome
        }
        Err(_) => Err(io::Error::other("sender thread panicked")),
    };
    let errors: Vec<String> = [write_result.err(), read_result.err()]
        .into_iter()
        .flatten()
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        result.error = Some(errors.join("; "));
    }
    result
}

/// Stops a loop at `--count` iterations, or earlier once `--until-file` exists.
struct Until {
    count: Option<u64>,
    file: Option<PathBuf>,
    deadline: Option<Instant>,
}

impl Until {
    fn done(&self, iterations: u64) -> bool {
        self.count.is_some_and(|count| iterations >= count)
            || self.file.as_deref().is_some_and(Path::exists)
            || self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
    }
}

fn churn(flags: &Flags) -> Result<bool, Failure> {
    let to = target(flags)?;
    let until = Until {
        count: Some(flags.required("count")?),
        file: flags.optional("until-file")?,
        deadline: None,
    };
    let interval = Duration::from_millis(flags.optional("interval-ms")?.unwrap_or(10));
    let started = Instant::now();
    let (mut attempted, mut succeeded) = (0u64, 0u64);
    let mut errors = Vec::new();
    while !until.done(attempted) {
        // Lower-case letters: a byte that could open an HTTP request line (upper-case, `-`,
        // `_`) or a TLS record would make a sniffing proxy wait out its protocol-detection
        // timeout for more, since this client sends one byte and waits for its echo.
        let marker = b'a' + (attempted % 26) as u8;
        match one_byte_exchange(to, marker) {
            Ok(()) => succeeded += 1,
            Err(e) => {
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(format!("#{attempted}: {e}"));
                }
            }
        }
        attempted += 1;
        thread::sleep(interval);
    }
    let failed = attempted - succeeded;
    let ok = failed == 0 && succeeded > 0;
    let mut report = Json::new();
    report
        .str("to", &to.to_string())
        .num("attempted", attempted)
        .num("succeeded", succeeded)
        .num("failed", failed)
        .num("elapsed_ms", elapsed_ms(started))
        .strs("errors", &errors)
        .bool("ok", ok);
    println!("{}", report.finish());
    Ok(ok)
}

fn one_byte_exchange(to: SocketAddr, marker: u8) -> io::Result<()> {
    let mut stream = dial(to).map_err(during("connect"))?;
    stream.write_all(&[marker]).map_err(during("write"))?;
    let mut echo = [0u8; 1];
    stream
        .read_exact(&mut echo)
        .map_err(during("read the echo"))?;
    if echo[0] != marker {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echo {} instead of {marker}", echo[0]),
        ));
    }
    close_gracefully(stream, false).map_err(during("close"))
}

fn hold(flags: &Flags) -> Result<bool, Failure> {
    let to = target(flags)?;
    let seconds: u64 = flags.required("seconds")?;
    let until = Until {
        count: None,
        file: flags.optional("until-file")?,
        deadline: Some(Instant::now() + Duration::from_secs(seconds)),
    };
    let interval = Duration::from_millis(flags.optional("interval-ms")?.unwrap_or(100));
    let retry_spurious_eagain = flags.switch("retry-spurious-eagain");
    let started = Instant::now();
    let mut pings = 0u64;
    let outcome = (|| -> io::Result<()> {
        let mut stream = dial(to).map_err(during("connect"))?;
        while !until.done(pings) {
            let ping = pings.to_be_bytes();
            stream
                .write_all(&ping)
                .map_err(during(format_args!("write ping {pings}")))?;
            let mut pong = [0u8; 8];
            read_exact(&mut stream, &mut pong, retry_spurious_eagain)
                .map_err(during(format_args!("read pong {pings}")))?;
            if pong != ping {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("ping {pings} came back as {}", u64::from_be_bytes(pong)),
                ));
            }
            pings += 1;
            thread::sleep(interval);
        }
        close_gracefully(stream, retry_spurious_eagain).map_err(during("close"))
    })();
    let mut report = Json::new();
    report
        .str("to", &to.to_string())
        .num("pings", pings)
        .num("elapsed_ms", elapsed_ms(started));
    report_retries(&mut report);
    match &outcome {
        Ok(()) => report.null("error"),
        Err(e) => report.str("error", &e.to_string()),
    };
    let ok = outcome.is_ok() && pings > 0;
    report.bool("ok", ok);
    println!("{}", report.finish());
    Ok(ok)
}

/// `read_exact`, which with `retry_spurious_eagain` retries an `EAGAIN` that comes before
/// the read timeout (see [`send_and_verify`]).
fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    retry_spurious_eagain: bool,
) -> io::Result<()> {
    let mut filled = 0;
    let mut last_progress = Instant::now();
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if retry_spurious_eagain
                    && e.kind() == io::ErrorKind::WouldBlock
                    && last_progress.elapsed() < IO_TIMEOUT =>
            {
                retried(&EAGAIN_RETRIES_READ);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn fetch(flags: &Flags) -> Result<bool, Failure> {
    let to = target(flags)?;
    let count: u64 = flags.optional("count")?.unwrap_or(1);
    let mut replies = Vec::new();
    let mut errors = Vec::new();
    for i in 0..count {
        let outcome = dial(to).and_then(|mut stream| {
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply.trim_end().to_owned())
        });
        match outcome {
            Ok(reply) => replies.push(reply),
            Err(e) => errors.push(format!("#{i}: {e}")),
        }
    }
    let ok = errors.is_empty();
    let mut report = Json::new();
    report
        .str("to", &to.to_string())
        .raw_array("replies", &replies)
        .strs("errors", &errors)
        .bool("ok", ok);
    println!("{}", report.finish());
    Ok(ok)
}

fn connect(flags: &Flags) -> Result<bool, Failure> {
    let to = target(flags)?;
    let mut report = Json::new();
    report.str("to", &to.to_string());
    let connected = match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(stream) => {
            report
                .bool("connected", true)
                .str("local", &stream.local_addr()?.to_string())
                .null("error");
            true
        }
        Err(e) => {
            report
                .bool("connected", false)
                .str("error", &e.to_string())
                .str("kind", &format!("{:?}", e.kind()))
                .opt_num(
                    "os_error",
                    e.raw_os_error().and_then(|n| u64::try_from(n).ok()),
                );
            false
        }
    };
    println!("{}", report.finish());
    Ok(connected)
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Payload, hash and JSON output

/// A deterministic byte stream (xorshift64*), after an optional fixed prefix (a marker): the
/// same seed always gives the same bytes, so sender and verifier need not share a buffer.
#[derive(Clone)]
struct Payload {
    state: u64,
    pending: [u8; 8],
    used: usize,
    prefix: Vec<u8>,
    prefix_used: usize,
}

impl Payload {
    fn new(seed: u64) -> Self {
        Self {
            // xorshift has a fixed point at 0.
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            pending: [0; 8],
            used: 8,
            prefix: Vec::new(),
            prefix_used: 0,
        }
    }

    /// The stream starts with `prefix`, then goes on as [`Payload::new`]'s.
    fn with_prefix(mut self, prefix: Vec<u8>) -> Self {
        self.prefix = prefix;
        self
    }

    fn fill(&mut self, out: &mut [u8]) {
        let from_prefix = (self.prefix.len() - self.prefix_used).min(out.len());
        let (head, out) = out.split_at_mut(from_prefix);
        head.copy_from_slice(&self.prefix[self.prefix_used..self.prefix_used + from_prefix]);
        self.prefix_used += from_prefix;
        for byte in out {
            if self.used == self.pending.len() {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.pending = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *byte = self.pending[self.used];
            self.used += 1;
        }
    }
}

/// 64-bit FNV-1a: enough to tell two byte streams apart in a test report.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A one-line JSON object, built field by field.
struct Json(String);

impl Json {
    fn new() -> Self {
        Self(String::from("{"))
    }

    fn key(&mut self, key: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_json_string(&mut self.0, key);
        self.0.push(':');
        &mut self.0
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        push_json_string(self.key(key), value);
        self
    }

    fn num(&mut self, key: &str, value: u64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "{value}");
        self
    }

    fn opt_num(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.num(key, value),
            None => self.null(key),
        }
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).push_str("null");
        self
    }

    fn strs(&mut self, key: &str, values: &[String]) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, value);
        }
        out.push(']');
        self
    }

    /// An array of values that are JSON already when they parse as such (a whoami reply),
    /// strings otherwise.
    fn raw_array(&mut self, key: &str, values: &[String]) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if value.starts_with('{') && value.ends_with('}') && !value.contains('\n') {
                out.push_str(value);
            } else {
                push_json_string(out, value);
            }
        }
        out.push(']');
        self
    }

    fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.0);
        out.push('}');
        out
    }
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_across_chunkings() {
        let mut whole = vec![0u8; 100];
        Payload::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 100];
        let mut payload = Payload::new(7);
        for chunk in pieces.chunks_mut(13) {
            payload.fill(chunk);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 100];
        Payload::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn a_marker_starts_the_stream_whatever_the_chunking() {
        let mut plain = vec![0u8; 96];
        Payload::new(7).fill(&mut plain);
        let want: Vec<u8> = b"MARK".iter().chain(&plain).copied().collect();
        for chunk_len in [1, 3, 4, 100] {
            let mut got = vec![0u8; 100];
            let mut payload = Payload::new(7).with_prefix(b"MARK".to_vec());
            for chunk in got.chunks_mut(chunk_len) {
                payload.fill(chunk);
            }
            assert_eq!(got, want, "chunks of {chunk_len}");
        }
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let cases: [(&[u8], &str); 3] = [
            (b"", "cbf29ce484222325"),
            (b"a", "af63dc4c8601ec8c"),
            (b"foobar", "85944171f73967e8"),
        ];
        for (input, want) in cases {
            let mut hash = Fnv1a::new();
            hash.update(input);
            assert_eq!(hash.hex(), want, "{input:?}");
        }
    }

    #[test]
    fn json_output_parses_back() {
        let mut json = Json::new();
        json.str("s", "a\"b\\c\n\u{1}")
            .num("n", 3)
            .bool("b", false)
            .null("z")
            .strs("l", &["x".to_owned()])
            .raw_array("r", &["{\"k\":1}".to_owned(), "plain".to_owned()]);
        let parsed: serde_json::Value = serde_json::from_str(&json.finish()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"s": "a\"b\\c\n\u{1}", "n": 3, "b": false, "z": null,
                "l": ["x"], "r": [{"k": 1}, "plain"]})
        );
    }

    #[test]
    fn echo_and_send_round_trip_over_loopback() {
        // (server echoes only after EOF, lockstep chunk); lockstep needs a streaming echo.
        for (hold_until_eof, lockstep) in [(false, None), (true, None), (false, Some(1000))] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut held = Vec::new();
                if hold_until_eof {
                    stream.read_to_end(&mut held).unwrap();
                    stream.write_all(&held).unwrap();
                } else {
                    let mut reader = stream.try_clone().unwrap();
                    io::copy(&mut reader, &mut stream).unwrap();
                }
                stream.shutdown(Shutdown::Write).unwrap();
            });
            let result = send_and_verify(addr, 300_000, &Payload::new(5), false, lockstep);
            assert_eq!(result.error, None, "lockstep {lockstep:?}");
            assert_eq!(result.sent, 300_000);
            assert_eq!(result.received, 300_000);
            assert_eq!(result.sent_hash, result.received_hash);
            assert_eq!(result.first_mismatch, None);
        }
    }
}
