//! Remote JWKS (`jwksUri`): fetched by the proxy itself over HTTP or HTTPS, cached per URI
//! and shared by every pod, as Envoy's `remote_jwks` does.
//!
//! - The first request that needs a URI's keys starts the fetch ([`JwksCache::prefetch`]
//!   starts it before any request) and waits for it at most its rule's `timeout`; later
//!   requests share the same fetch. A fetch that outlasts a request's wait goes on in the
//!   background, so the next request finds the keys.
//! - Keys are refreshed every [`JwksSettings::refresh_interval`] (Istio's default 20 minutes)
//!   while they are used, in the background: a request never waits for a refresh.
//! - A failed refresh keeps the last keys. A URI never fetched fails closed: its tokens get
//!   401 ([`JwksError`]); the fetch is tried again at most every
//!   [`JwksSettings::failure_retry`].
//! - The connection is made through a [`Connector`], so the caller decides where it is dialled
//!   from (the proxy's own netns by default, [`DirectConnector`]); HTTPS is verified against
//!   the system CA bundle ([`system_tls`]) or the roots the caller gives.
//! - A URI unused for [`IDLE_FORGET`] is forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::JwksError;
use super::verify::KeySet;

/// A JWKS URI unused this long is forgotten.
pub const IDLE_FORGET: Duration = Duration::from_secs(3600);

/// Where Debian, Ubuntu, Alpine (and, second, Fedora and RHEL) keep the system's CA bundle.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// What a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// How the proxy dials a JWKS server: `host` is the URI's (a name or an IP address, without
/// brackets), `port` the URI's or the scheme's default.
pub trait Connector: Send + Sync {
    /// Opens a TCP connection to `host:port`.
    fn connect(&self, host: &str, port: u16) -> ConnectFuture;
}

impl<F> Connector for F
where
    F: Fn(&str, u16) -> ConnectFuture + Send + Sync,
{
    fn connect(&self, host: &str, port: u16) -> ConnectFuture {
        self(host, port)
    }
}

/// Dials from the proxy's own network namespace, names resolved by the system resolver.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectConnector;

impl Connector for DirectConnector {
    fn connect(&self, host: &str, port: u16) -> ConnectFuture {
        let host = host.to_owned();
        Box::pin(async move { TcpStream::connect((host.as_str(), port)).await })
    }
}

/// How the cache fetches and refreshes.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    /// How often keys in use are fetched again (Istio: 20 minutes).
    pub refresh_interval: Duration,
    /// How long after a failed fetch the next one may start.
    pub failure_retry: Duration,
    /// How long one fetch may take in the background, at least (a rule's longer `timeout`
    /// wins).
    pub fetch_timeout: Duration,
    /// The largest JWKS body read.
    pub max_body: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(20 * 60),
            failure_retry: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// What [`JwksCache::status`] reports of one URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksStatus {
    /// The URI.
    pub uri: String,
    /// How many usable keys it has; `None`: never fetched.
    pub keys: Option<usize>,
    /// How long ago the keys were fetched.
    pub age: Option<Duration>,
    /// The last fetch's failure, while it is the latest outcome.
    pub error: Option<String>,
}

/// The proxy's JWKS, by URI. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<dyn Connector>,
    /// `None`: no CA bundle could be read, so `https` URIs fail.
    tls: Option<Arc<ClientConfig>>,
    settings: JwksSettings,
    entries: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
}

struct Entry {
    uri: http::Uri,
    name: Arc<str>,
    state: Mutex<EntryState>,
    /// Woken when a fetch ends.
    fetched: Notify,
}

struct EntryState {
    keys: Option<Arc<KeySet>>,
    /// When the keys were fetched.
    fetched_at: Option<Instant>,
    /// The last fetch's failure and when, while it is the latest outcome.
    failed: Option<(Instant, JwksError)>,
    in_flight: bool,
    used: Instant,
}

impl JwksCache {
    /// A cache that dials through `connector` and verifies HTTPS servers with `tls` (`None`:
    /// `https` URIs fail, [`JwksError::NoTrustRoots`]).
    #[must_use]
    pub fn new(
        connector: Arc<dyn Connector>,
        tls: Option<Arc<ClientConfig>>,
        settings: JwksSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                tls,
                settings,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The keys of `uri`: at once when it was fetched (starting a refresh in the background
    /// when they are due one); otherwise after the fetch, waiting at most `timeout`.
    pub async fn keys(&self, uri: &http::Uri, timeout: Duration) -> Result<Arc<KeySet>, JwksError> {
        let entry = self.entry(uri);
        let deadline = Instant::now() + timeout;
        loop {
            let fetched = entry.fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            {
                let now = Instant::now();
                let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.used = now;
                let retry_due = state
                    .failed
                    .as_ref()
                    .is_none_or(|(at, _)| now >= *at + self.inner.settings.failure_retry);
                if let Some(keys) = state.keys.clone() {
                    let stale = state
                        .fetched_at
                        .is_none_or(|at| now >= at + self.inner.settings.refresh_interval);
                    if stale && retry_due && !state.in_flight {
                        state.in_flight = true;
                        self.spawn_fetch(&entry, timeout);
                    }
                    return Ok(keys);
                }
                if !retry_due && let Some((_, error)) = &state.failed {
                    return Err(error.clone());
                }
                if !state.in_flight {
                    state.in_flight = true;
                    self.spawn_fetch(&entry, timeout);
                }
            }
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return Err(JwksError::Timeout {
                    uri: entry.name.clone(),
                    timeout,
                });
            }
            // A fetch ended: its keys, or its failure (now recent), decide on the next turn.
        }
    }

    /// Starts fetching `uri` unless its keys are there or a fetch is under way, so the first
    /// request does not wait. Needs a tokio runtime.
    pub fn prefetch(&self, uri: &http::Uri) {
        let entry = self.entry(uri);
        let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.keys.is_none() && !state.in_flight {
            state.in_flight = true;
            self.spawn_fetch(&entry, self.inner.settings.fetch_timeout);
        }
    }

    /// Every URI the cache holds, for `/debug`.
    #[must_use]
    pub fn status(&self) -> Vec<JwksStatus> {
        let entries: Vec<Arc<Entry>> = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut list: Vec<JwksStatus> = entries
            .iter()
            .map(|entry| {
                let state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                JwksStatus {
                    uri: entry.name.to_string(),
                    keys: state.keys.as_ref().map(|k| k.len()),
                    age: state.fetched_at.map(|at| at.elapsed()),
                    error: state.failed.as_ref().map(|(_, e)| e.to_string()),
                }
            })
            .collect();
        list.sort_by(|a, b| a.uri.cmp(&b.uri));
        list
    }

    fn entry(&self, uri: &http::Uri) -> Arc<Entry> {
        let name: Arc<str> = uri.to_string().into();
        let mut entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(&name) {
            return entry.clone();
        }
        let now = Instant::now();
        entries.retain(|_, entry| {
            let state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.in_flight || now.duration_since(state.used) < IDLE_FORGET
        });
        let entry = Arc::new(Entry {
            uri: uri.clone(),
            name: name.clone(),
            state: Mutex::new(EntryState {
                keys: None,
                fetched_at: None,
                failed: None,
                in_flight: false,
                used: now,
            }),
            fetched: Notify::new(),
        });
        entries.insert(name, entry.clone());
        entry
    }

    /// Fetches in the background; the caller has set `in_flight`.
    fn spawn_fetch(&self, entry: &Arc<Entry>, timeout: Duration) {
        let inner = self.inner.clone();
        let entry = entry.clone();
        let limit = timeout.max(inner.settings.fetch_timeout);
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(limit, fetch(&inner, &entry)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(JwksError::Timeout {
                    uri: entry.name.clone(),
                    timeout: limit,
                }),
            };
            {
                let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.in_flight = false;
                match outcome {
                    Ok(keys) => {
                        tracing::info!(jwks_uri = %entry.name, keys = keys.len(), "JWKS fetched");
                        state.keys = Some(Arc::new(keys));
                        state.fetched_at = Some(Instant::now());
                        state.failed = None;
                    }
                    Err(error) => {
                        let kept = state.keys.is_some();
                        tracing::warn!(
                            jwks_uri = %entry.name,
                            kept_last_keys = kept,
                            "{error}"
                        );
                        state.failed = Some((Instant::now(), error));
                    }
                }
            }
            entry.fetched.notify_waiters();
        });
    }
}

/// One GET of the entry's URI.
async fn fetch(inner: &Inner, entry: &Entry) -> Result<KeySet, JwksError> {
    let uri = &entry.uri;
    let name = || entry.name.clone();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(JwksError::Uri {
                uri: name(),
                why: "not an http or https URI",
            });
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(JwksError::Uri {
            uri: name(),
            why: "no host",
        });
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = inner
        .connector
        .connect(host, port)
        .await
        .map_err(|e| JwksError::Connect {
            uri: name(),
            host: host.to_owned(),
            port,
            message: e.to_string(),
        })?;
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "shunt-proxy")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| JwksError::Http {
            uri: name(),
            message: e.to_string(),
        })?;
    let body = if https {
        let Some(tls) = &inner.tls else {
            return Err(JwksError::NoTrustRoots {
                uri: name(),
                bundles: SYSTEM_BUNDLES,
            });
        };
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| JwksError::Uri {
            uri: name(),
            why: "the host is not a name TLS can verify",
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| JwksError::Tls {
                uri: name(),
                message: e.to_string(),
            })?;
        exchange(stream, request, inner.settings.max_body, &name).await?
    } else {
        exchange(tcp, request, inner.settings.max_body, &name).await?
    };
    KeySet::from_json(&body).map_err(|message| JwksError::Keys {
        uri: name(),
        message,
    })
}

/// Sends `request` over one HTTP/1.1 connection; the 200 response's body.
async fn exchange<S>(
    stream: S,
    request: http::Request<Empty<Bytes>>,
    max_body: usize,
    name: &(dyn Fn() -> Arc<str> + Sync),
) -> Result<Bytes, JwksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |e: &dyn std::fmt::Display| JwksError::Http {
        uri: name(),
        message: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_error(&e))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_error(&e))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        driver.abort();
        return Err(JwksError::Status {
            uri: name(),
            status,
        });
    }
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| http_error(&*e))?
        .to_bytes();
    driver.abort();
    Ok(body)
}

/// A TLS client config that trusts the system CA bundle (ring, TLS 1.2 and 1.3, ALPN
/// `http/1.1`); `None` when no bundle can be read (`https` JWKS URIs then fail closed).
#[must_use]
pub fn system_tls() -> Option<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for path in SYSTEM_BUNDLES {
        let Ok(pem) = std::fs::read(path) else {
            continue;
        };
        let (added, _) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if added > 0 {
            break;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            bundles = ?SYSTEM_BUNDLES,
            "no system CA bundle: https jwksUri fetches will fail (their tokens get 401)"
        );
        return None;
    }
    tls_with_roots(roots)
}

/// A TLS client config that trusts `roots` (as [`system_tls`], for other trust anchors).
#[must_use]
pub fn tls_with_roots(roots: rustls::RootCertStore) -> Option<Arc<ClientConfig>> {
    #[expect(
        deprecated,
        reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring \
                  is the provider shunt builds with (no aws-lc-rs)"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(Arc::new(config))
}
