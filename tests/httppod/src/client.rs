//! `http` and `count`: an HTTP/1.1 or h2 (prior knowledge) client over a small connection pool,
//! reporting one JSON summary line.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{COOKIE, HOST, HeaderName, HeaderValue, SET_COOKIE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::server::{SERVED_BY, headers_json};

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many individual errors are listed.
const MAX_LISTED_ERRORS: usize = 20;
/// `--rps` runs keep at most this many requests in flight.
const MAX_IN_FLIGHT: usize = 256;
/// The most requests one run sends, whatever the flags say.
const MAX_REQUESTS: u64 = 100_000;
/// A response body larger than this is an error: the test server's bodies are small.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// `http://HOST[:PORT]/PATH?QUERY`; HOST names the authority (Host / :authority).
    #[arg(long)]
    pub url: String,
    /// Dial this address instead of HOST:PORT (pods have no DNS: for a name in the URL).
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// Requests to send (without `--rps`).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: u64,
    /// Requests in flight at once (each HTTP/1.1 one on its own connection).
    #[arg(short = 'c', long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// `-H 'name: value'`, repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// h2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// Remember Set-Cookie and send the cookies back.
    #[arg(long)]
    pub cookie_jar: bool,
    /// Requests per second (with `--duration`), started on schedule whatever the answers.
    #[arg(long, requires = "duration")]
    pub rps: Option<f64>,
    /// Seconds to run `--rps` for.
    #[arg(long, requires = "rps")]
    pub duration: Option<f64>,
    /// A request body of this many bytes.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The width of the timeline's buckets (by request start).
    #[arg(long, default_value_t = 500)]
    pub bucket_ms: u64,
}

/// Where to connect and what to send.
struct Target {
    addr: SocketAddr,
    /// Origin-form for HTTP/1.1, absolute for h2 (hyper takes `:authority` from it).
    uri: Uri,
    authority: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    http2: bool,
    timeout: Duration,
}

impl Target {
    fn new(args: &HttpArgs) -> Result<Self> {
        let url: Uri = args
            .url
            .parse()
            .with_context(|| format!("--url {:?} is not a URL", args.url))?;
        if url.scheme_str() != Some("http") {
            bail!("--url {:?}: only http:// is supported", args.url);
        }
        let authority = url
            .authority()
            .with_context(|| format!("--url {:?} has no host", args.url))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = match args.connect {
            Some(addr) => addr,
            None => {
                let ip: IpAddr = authority.host().parse().with_context(|| {
                    format!(
                        "--url host {:?} is not an IP: give --connect",
                        authority.host()
                    )
                })?;
                SocketAddr::new(ip, port)
            }
        };
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = if args.http2 {
            format!("http://{authority}{path}").parse()?
        } else {
            path.parse()?
        };
        let mut headers = Vec::new();
        for text in &args.headers {
            let (name, value) = text
                .split_once(':')
                .with_context(|| format!("-H {text:?} is not 'name: value'"))?;
            headers.push((
                HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("-H {text:?}: bad header name"))?,
                HeaderValue::from_str(value.trim())
                    .with_context(|| format!("-H {text:?}: bad header value"))?,
            ));
        }
        Ok(Self {
            addr,
            uri,
            authority: authority.to_string(),
            method: Method::from_bytes(args.method.as_bytes())
                .with_context(|| format!("-X {:?} is not a method", args.method))?,
            headers,
            body: Bytes::from(vec![b'x'; args.body_bytes]),
            http2: args.http2,
            timeout: Duration::from_millis(args.timeout_ms),
        })
    }

    fn request(&self, cookies: Option<&str>) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone());
        let has_host = self.headers.iter().any(|(name, _)| name == HOST);
        if !self.http2 && !has_host {
            builder = builder.header(HOST, &self.authority);
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        if let Some(cookies) = cookies {
            builder = builder.header(COOKIE, cookies);
        }
        Ok(builder.body(Full::new(self.body.clone()))?)
    }
}

/// Idle HTTP/1.1 connections, or the one shared h2 connection.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    opened: AtomicU64,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Pool {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    async fn dial(&self) -> Result<TokioIo<TcpStream>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connect to {} timed out", self.addr))?
            .with_context(|| format!("connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(stream))
    }

    async fn sender(&self, http2: bool) -> Result<Sender> {
        if http2 {
            let mut shared = self.h2.lock().await;
            if let Some(sender) = shared.as_ref().filter(|s| !s.is_closed()) {
                return Ok(Sender::H2(sender.clone()));
            }
            let (sender, connection) = http2::handshake(TokioExecutor::new(), self.dial().await?)
                .await
                .context("h2 handshake")?;
            tokio::spawn(connection);
            *shared = Some(sender.clone());
            return Ok(Sender::H2(sender));
        }
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            std::iter::from_fn(|| idle.pop()).find(|s| !s.is_closed())
        };
        if let Some(sender) = reused {
            return Ok(Sender::H1(sender));
        }
        let (sender, connection) = http1::handshake(self.dial().await?)
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(connection.with_upgrades());
        Ok(Sender::H1(sender))
    }

    fn give_back(&self, sender: Sender) {
        if let Sender::H1(sender) = sender
            && !sender.is_closed()
        {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sender);
        }
    }
}

/// One answered request.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send(pool: &Pool, target: &Target, request: Request<Full<Bytes>>) -> Result<Answer> {
    let mut sender = pool.sender(target.http2).await?;
    let response = match &mut sender {
        Sender::H1(s) => {
            s.ready().await.context("connection not ready")?;
            s.send_request(request).await
        }
        Sender::H2(s) => {
            s.ready().await.context("connection not ready")?;
            s.send_request(request).await
        }
    }
    .context("sending the request")?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
        .to_bytes();
    pool.give_back(sender);
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// The outcome of one request, as the summary needs it.
struct Outcome {
    started_ms: u64,
    latency_ms: f64,
    result: Result<Answer, String>,
}

/// Everything shared by the tasks of one run.
struct Run {
    target: Target,
    pool: Pool,
    jar: Option<Mutex<BTreeMap<String, String>>>,
    start: Instant,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Run {
    fn cookies(&self) -> Option<String> {
        let jar = self
            .jar
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if jar.is_empty() {
            return None;
        }
        Some(
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    fn remember(&self, headers: &http::HeaderMap) {
        let Some(jar) = &self.jar else { return };
        let mut jar = jar.lock().unwrap_or_else(PoisonError::into_inner);
        for value in headers.get_all(SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                jar.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    async fn one(&self) {
        let started = self.start.elapsed();
        let began = Instant::now();
        let result = match self.target.request(self.cookies().as_deref()) {
            Ok(request) => {
                match tokio::time::timeout(
                    self.target.timeout,
                    send(&self.pool, &self.target, request),
                )
                .await
                {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no answer within {:?}", self.target.timeout)),
                }
            }
            Err(e) => Err(format!("{e:#}")),
        };
        if let Ok(answer) = &result {
            self.remember(&answer.headers);
        }
        let outcome = Outcome {
            started_ms: u64::try_from(started.as_millis()).unwrap_or(u64::MAX),
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
            result,
        };
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(outcome);
    }
}

pub async fn run(args: HttpArgs) -> Result<Value> {
    let target = Target::new(&args)?;
    let run = Arc::new(Run {
        pool: Pool::new(target.addr),
        target,
        jar: args.cookie_jar.then(|| Mutex::new(BTreeMap::new())),
        start: Instant::now(),
        outcomes: Mutex::new(Vec::new()),
    });
    match (args.rps, args.duration) {
        (Some(rps), Some(seconds)) => at_rate(&run, rps, seconds).await?,
        _ => {
            let next = Arc::new(AtomicU64::new(0));
            let total = args.count.min(MAX_REQUESTS);
            let workers: Vec<_> = (0..args.concurrency.max(1))
                .map(|_| {
                    let (run, next) = (Arc::clone(&run), Arc::clone(&next));
                    tokio::spawn(async move {
                        while next.fetch_add(1, Ordering::Relaxed) < total {
                            run.one().await;
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.context("a client worker")?;
            }
        }
    }
    let elapsed = run.start.elapsed();
    let outcomes =
        std::mem::take(&mut *run.outcomes.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(summarize(
        outcomes,
        elapsed,
        run.pool.opened.load(Ordering::Relaxed),
        args.bucket_ms.max(1),
    ))
}

async fn at_rate(run: &Arc<Run>, rps: f64, seconds: f64) -> Result<()> {
    if !(rps > 0.0 && seconds > 0.0) {
        bail!("--rps and --duration must be > 0");
    }
    let planned = (rps * seconds).ceil();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and capped at MAX_REQUESTS just below"
    )]
    let total = planned.min(MAX_REQUESTS as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rps);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("the in-flight limit")?;
        let run = Arc::clone(run);
        tasks.spawn(async move {
            run.one().await;
            drop(permit);
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a request task")?;
    }
    Ok(())
}

/// One timeline bucket: answers by `x-served-by`, by status, and failures.
#[derive(Default)]
struct Bucket {
    served_by: BTreeMap<String, u64>,
    status: BTreeMap<String, u64>,
    failures: u64,
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}

fn summarize(
    mut outcomes: Vec<Outcome>,
    elapsed: Duration,
    connections: u64,
    bucket_ms: u64,
) -> Value {
    outcomes.sort_by_key(|o| o.started_ms);
    let mut status = BTreeMap::new();
    let mut served_by = BTreeMap::new();
    let mut body_names = BTreeMap::new();
    let mut paths = BTreeMap::new();
    let mut errors = Vec::new();
    let mut failures = 0_u64;
    let mut first_response = Value::Null;
    let mut by_status: BTreeMap<String, Value> = BTreeMap::new();
    let mut set_cookies = Vec::new();
    let mut latencies = Vec::new();
    let mut timeline: BTreeMap<u64, Bucket> = BTreeMap::new();
    for outcome in &outcomes {
        latencies.push(outcome.latency_ms);
        let bucket = timeline.entry(outcome.started_ms / bucket_ms).or_default();
        let answer = match &outcome.result {
            Ok(answer) => answer,
            Err(e) => {
                failures += 1;
                bucket.failures += 1;
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(e.clone());
                }
                continue;
            }
        };
        let code = answer.status.to_string();
        bump(&mut status, code.clone());
        bump(&mut bucket.status, code.clone());
        let name = answer
            .headers
            .get(SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        bump(&mut served_by, name.clone());
        bump(&mut bucket.served_by, name);
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if let Some(name) = body["name"].as_str() {
            bump(&mut body_names, name.to_owned());
        }
        if let Some(path) = body["path"].as_str() {
            bump(&mut paths, path.to_owned());
        }
        let described = || {
            json!({
                "status": answer.status,
                "headers": headers_json(&answer.headers),
                "body": if body.is_null() { Value::String(String::from_utf8_lossy(&answer.body).into_owned()) } else { body.clone() },
            })
        };
        if first_response.is_null() {
            first_response = described();
        }
        by_status.entry(code).or_insert_with(described);
        for cookie in answer.headers.get_all(SET_COOKIE) {
            set_cookies.push(String::from_utf8_lossy(cookie.as_bytes()).into_owned());
        }
    }
    latencies.sort_by(f64::total_cmp);
    let timeline: Vec<Value> = timeline
        .into_iter()
        .map(|(index, bucket)| {
            json!({"from_ms": index * bucket_ms, "served_by": bucket.served_by, "status": bucket.status, "failures": bucket.failures})
        })
        .collect();
    json!({
        "requests": outcomes.len(),
        "status": status,
        "served_by": served_by,
        "body_names": body_names,
        "paths": paths,
        "failures": failures,
        "errors": errors,
        "first_response": first_response,
        "by_status": by_status,
        "set_cookies": set_cookies,
        "latency_ms": {
            "min": percentile(&latencies, 0.0),
            "p50": percentile(&latencies, 0.5),
            "p90": percentile(&latencies, 0.9),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
        "elapsed_ms": elapsed.as_millis(),
        "connections": connections,
        "timeline": timeline,
    })
}

/// Nearest-rank percentile of sorted values (null when there are none).
fn percentile(sorted: &[f64], q: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "q is in [0, 1], so the rank is within the slice"
    )]
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    json!((sorted[rank.min(sorted.len() - 1)] * 10.0).round() / 10.0)
}

#[derive(Debug, clap::Args)]
pub struct CountArgs {
    /// The server's HTTP address (from inside its pod: 127.0.0.1:PORT, which is not captured).
    #[arg(long)]
    pub addr: SocketAddr,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Forget everything seen after answering.
    #[arg(long)]
    pub reset: bool,
}

/// `GET /count` of one server; its JSON as is.
pub async fn count(args: CountArgs) -> Result<Value> {
    let mut query = Vec::new();
    if let Some(prefix) = &args.prefix {
        query.push(format!("prefix={prefix}"));
    }
    if args.reset {
        query.push("reset=1".to_owned());
    }
    let url = format!("http://{}/count?{}", args.addr, query.join("&"));
    let target = Target::new(&HttpArgs {
        url,
        connect: None,
        count: 1,
        concurrency: 1,
        method: "GET".to_owned(),
        headers: Vec::new(),
        http2: false,
        cookie_jar: false,
        rps: None,
        duration: None,
        body_bytes: 0,
        timeout_ms: 10_000,
        bucket_ms: 500,
    })?;
    let pool = Pool::new(target.addr);
    let answer = tokio::time::timeout(target.timeout, send(&pool, &target, target.request(None)?))
        .await
        .context("GET /count timed out")??;
    if answer.status != 200 {
        bail!("GET /count answered {}", answer.status);
    }
    serde_json::from_slice(&answer.body).context("GET /count did not answer JSON")
}
