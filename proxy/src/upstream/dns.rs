//! Resolves the hostnames of `resolution: DNS` ServiceEntries, as Envoy's STRICT_DNS clusters
//! do: with the system resolver (the proxy's `/etc/hosts` and `/etc/resolv.conf`), IPv4
//! answers only, cached per name and shared by every pod.
//!
//! A name is looked up on first use (bounded by the caller's timeout), then refreshed in the
//! background every [`REFRESH_PERIOD`] while it is used; a name unused for
//! [`NAME_IDLE_TIMEOUT`] is forgotten. A failed refresh keeps the last good answer (Envoy
//! does the same) and is logged once until the name resolves again. A failed first lookup is
//! remembered for [`FAILURE_RETRY`], so a name that does not resolve costs one lookup per
//! period, not one per request.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How often a name in use is looked up again.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(30);
/// How long a failed lookup of a name without a good answer stands before the next request
/// tries again.
pub const FAILURE_RETRY: Duration = Duration::from_secs(5);
/// A name no request asked for this long is forgotten (and no longer refreshed).
pub const NAME_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a background refresh may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "DNS lookup of {name} failed: {message} (check the name, and the proxy node's \
         /etc/hosts and /etc/resolv.conf)"
    )]
    Lookup { name: Arc<str>, message: String },
    #[error(
        "DNS lookup of {name} timed out after {timeout:?} (is the proxy node's DNS server \
         reachable?)"
    )]
    Timeout { name: Arc<str>, timeout: Duration },
    #[error("{name} has no IPv4 address (shunt dials IPv4 only)")]
    NoIpv4 { name: Arc<str> },
}

impl Error {
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Lookup { name, .. } | Self::Timeout { name, .. } | Self::NoIpv4 { name } => name,
        }
    }
}

type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
/// The lookup itself; the system resolver outside tests.
type LookupFn = dyn Fn(Arc<str>) -> LookupFuture + Send + Sync;

/// The per-name DNS cache of the proxy.
pub struct Resolver {
    names: Mutex<HashMap<Arc<str>, Arc<Name>>>,
    lookup: Arc<LookupFn>,
    /// Whether the refresh task runs (started on first use, inside the runtime).
    refreshing: Mutex<bool>,
}

struct Name {
    state: Mutex<NameState>,
    /// Serialises lookups of one name: concurrent first uses share one answer.
    lookup: tokio::sync::Mutex<()>,
}

struct NameState {
    /// The last good answer, kept through failed refreshes.
    answer: Option<Arc<[Ipv4Addr]>>,
    /// The last lookup's failure, while it is the latest outcome.
    error: Option<Error>,
    /// When the last lookup ended.
    looked_up: Option<Instant>,
    last_used: Instant,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    /// Resolves with the system resolver (`getaddrinfo`).
    #[must_use]
    pub fn new() -> Self {
        Self::with_lookup(Arc::new(|name: Arc<str>| -> LookupFuture {
            Box::pin(async move {
                let addrs = tokio::net::lookup_host((&*name, 0)).await?;
                Ok(addrs.map(|a| a.ip()).collect())
            })
        }))
    }

    fn with_lookup(lookup: Arc<LookupFn>) -> Self {
        Self {
            names: Mutex::default(),
            lookup,
            refreshing: Mutex::new(false),
        }
    }

    /// The IPv4 addresses of `name`, sorted: the cached answer, or a lookup bounded by
    /// `timeout` when there is none yet.
    pub async fn resolve(
        self: &Arc<Self>,
        name: &Arc<str>,
        timeout: Duration,
    ) -> Result<Arc<[Ipv4Addr]>, Error> {
        self.start_refreshing();
        let entry = {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            names
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Name {
                        state: Mutex::new(NameState {
                            answer: None,
                            error: None,
                            looked_up: None,
                            last_used: Instant::now(),
                        }),
                        lookup: tokio::sync::Mutex::new(()),
                    })
                })
                .clone()
        };
        let asked = Instant::now();
        if let Some(known) = entry.known(asked, None) {
            return known;
        }
        let _lookup = entry.lookup.lock().await;
        // Another request may have looked it up while this one waited.
        if let Some(known) = entry.known(Instant::now(), Some(asked)) {
            return known;
        }
        let outcome = lookup(&*self.lookup, name, timeout).await;
        entry.store(name, &outcome, false);
        outcome
    }

    fn start_refreshing(self: &Arc<Self>) {
        let mut refreshing = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *refreshing {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_loop(Arc::downgrade(self)));
            *refreshing = true;
        }
    }

    /// One pass of the refresh task: forgets idle names, looks up the others whose answer
    /// is [`REFRESH_PERIOD`] old.
    async fn refresh_once(&self, now: Instant) {
        let due: Vec<(Arc<str>, Arc<Name>)> = {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            names.retain(|name, entry| {
                let keep = now.duration_since(entry.state().last_used) < NAME_IDLE_TIMEOUT;
                if !keep {
                    tracing::debug!(%name, "forgot an unused DNS name");
                }
                keep
            });
            names
                .iter()
                .filter(|(_, entry)| {
                    let state = entry.state();
                    // A name without an answer is looked up by its next request instead.
                    state.answer.is_some()
                        && state
                            .looked_up
                            .is_none_or(|at| now.duration_since(at) >= REFRESH_PERIOD)
                })
                .map(|(name, entry)| (name.clone(), entry.clone()))
                .collect()
        };
        for (name, entry) in due {
            let _lookup = entry.lookup.lock().await;
            let outcome = lookup(&*self.lookup, &name, REFRESH_TIMEOUT).await;
            entry.store(&name, &outcome, true);
        }
    }

    #[cfg(test)]
    fn cached(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl Name {
    fn state(&self) -> std::sync::MutexGuard<'_, NameState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to give without a lookup: the last good one, or a failure that is recent
    /// (within [`FAILURE_RETRY`], or newer than `since`). Marks the name used.
    fn known(
        &self,
        now: Instant,
        since: Option<Instant>,
    ) -> Option<Result<Arc<[Ipv4Addr]>, Error>> {
        let mut state = self.state();
        state.last_used = now;
        if let Some(answer) = &state.answer {
            return Some(Ok(answer.clone()));
        }
        let error = state.error.as_ref()?;
        let looked_up = state.looked_up?;
        let recent = now.duration_since(looked_up) < FAILURE_RETRY
            || since.is_some_and(|since| looked_up >= since);
        recent.then(|| Err(error.clone()))
    }

    fn store(&self, name: &str, outcome: &Result<Arc<[Ipv4Addr]>, Error>, refresh: bool) {
        let mut state = self.state();
        state.looked_up = Some(Instant::now());
        match outcome {
            Ok(answer) => {
                if state.error.take().is_some() && state.answer.is_some() {
                    tracing::info!(%name, "DNS name resolves again");
                }
                if state.answer.as_ref() != Some(answer) {
                    tracing::debug!(%name, addresses = ?answer, "DNS answer");
                }
                state.answer = Some(answer.clone());
            }
            Err(error) => {
                // Logged once per failing spell; the answer it had is kept.
                if refresh && state.error.is_none() {
                    tracing::warn!(%name, %error, "DNS refresh failed; keeping the last answer");
                }
                state.error = Some(error.clone());
            }
        }
    }
}

async fn lookup(
    lookup: &LookupFn,
    name: &Arc<str>,
    timeout: Duration,
) -> Result<Arc<[Ipv4Addr]>, Error> {
    let answer = match tokio::time::timeout(timeout, lookup(name.clone())).await {
        Err(_) => {
            return Err(Error::Timeout {
                name: name.clone(),
                timeout,
            });
        }
        Ok(Err(error)) => {
            return Err(Error::Lookup {
                name: name.clone(),
                message: error.to_string(),
            });
        }
        Ok(Ok(answer)) => answer,
    };
    let mut v4: Vec<Ipv4Addr> = answer
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    v4.sort_unstable();
    v4.dedup();
    if v4.is_empty() {
        return Err(Error::NoIpv4 { name: name.clone() });
    }
    Ok(v4.into())
}

/// Refreshes the names of `resolver` until it is dropped.
async fn refresh_loop(resolver: Weak<Resolver>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        resolver.refresh_once(Instant::now()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    #[tokio::test]
    async fn localhost_resolves_through_etc_hosts() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let listed = hosts.lines().any(|line| {
            let mut fields = line.split('#').next().unwrap_or("").split_whitespace();
            fields.next() == Some("127.0.0.1") && fields.any(|f| f == "localhost")
        });
        if !listed {
            eprintln!("skipped: /etc/hosts does not map localhost to 127.0.0.1");
            return;
        }
        let resolver = Arc::new(Resolver::new());
        let answer = resolver.resolve(&"localhost".into(), TIMEOUT).await;
        assert_eq!(answer.as_deref(), Ok(&[Ipv4Addr::LOCALHOST][..]));
    }

    #[tokio::test]
    async fn an_invalid_name_fails_in_bounded_time() {
        let resolver = Arc::new(Resolver::new());
        let name: Arc<str> = "does-not-exist.invalid".into();
        let started = std::time::Instant::now();
        let error = resolver
            .resolve(&name, TIMEOUT)
            .await
            .expect_err(".invalid never resolves");
        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));
        assert!(
            matches!(error, Error::Lookup { .. } | Error::Timeout { .. }),
            "{error:?}"
        );
        assert_eq!(error.name(), "does-not-exist.invalid");
        assert!(
            error.to_string().contains("does-not-exist.invalid"),
            "{error}"
        );
    }

    /// A resolver whose answers the test scripts: `None` fails, `Some(ips)` answers.
    fn scripted(
        answers: Arc<Mutex<Option<Vec<IpAddr>>>>,
        calls: Arc<AtomicUsize>,
    ) -> Arc<Resolver> {
        Arc::new(Resolver::with_lookup(Arc::new(
            move |_name| -> LookupFuture {
                calls.fetch_add(1, Ordering::SeqCst);
                let answer = answers.lock().unwrap().clone();
                Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("SERVFAIL")) })
            },
        )))
    }

    fn ips(list: &[[u8; 4]]) -> Vec<IpAddr> {
        list.iter()
            .map(|&o| IpAddr::V4(Ipv4Addr::from(o)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn caches_refreshes_keeps_the_last_answer_and_forgets_unused_names() {
        let answers = Arc::new(Mutex::new(Some(ips(&[[10, 0, 0, 2], [10, 0, 0, 1]]))));
        let calls = Arc::new(AtomicUsize::new(0));
        let resolver = scripted(answers.clone(), calls.clone());
        let name: Arc<str> = "db.example.com".into();
        let expect = |list: &[[u8; 4]]| -> Arc<[Ipv4Addr]> {
            list.iter().map(|&o| Ipv4Addr::from(o)).collect()
        };

        // Sorted, and cached: the second request does not look up.
        let first = resolver.resolve(&name, TIMEOUT).await;
        assert_eq!(first, Ok(expect(&[[10, 0, 0, 1], [10, 0, 0, 2]])));
        assert_eq!(resolver.resolve(&name, TIMEOUT).await, first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // The background refresh picks up a change.
        *answers.lock().unwrap() = Some(ips(&[[10, 0, 0, 3]]));
        tokio::time::sleep(REFRESH_PERIOD + Duration::from_secs(2)).await;
        assert_eq!(
            resolver.resolve(&name, TIMEOUT).await,
            Ok(expect(&[[10, 0, 0, 3]]))
        );

        // A failing refresh keeps the last good answer.
        *answers.lock().unwrap() = None;
        tokio::time::sleep(REFRESH_PERIOD + Duration::from_secs(2)).await;
        assert_eq!(
            resolver.resolve(&name, TIMEOUT).await,
            Ok(expect(&[[10, 0, 0, 3]]))
        );

        // Unused long enough: forgotten, and no longer looked up.
        tokio::time::sleep(NAME_IDLE_TIMEOUT + Duration::from_secs(2)).await;
        assert!(resolver.cached().is_empty());
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(REFRESH_PERIOD * 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_lookup_is_retried_after_a_while_not_per_request() {
        let answers = Arc::new(Mutex::new(None));
        let calls = Arc::new(AtomicUsize::new(0));
        let resolver = scripted(answers.clone(), calls.clone());
        let name: Arc<str> = "db.example.com".into();
        for _ in 0..3 {
            let error = resolver.resolve(&name, TIMEOUT).await.unwrap_err();
            assert!(
                matches!(&error, Error::Lookup { message, .. } if message.contains("SERVFAIL"))
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        *answers.lock().unwrap() = Some(ips(&[[10, 0, 0, 1]]));
        tokio::time::sleep(FAILURE_RETRY).await;
        assert!(resolver.resolve(&name, TIMEOUT).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn only_ipv4_answers_count_and_slow_lookups_time_out() {
        let answers = Arc::new(Mutex::new(Some(vec!["::1".parse().unwrap()])));
        let resolver = scripted(answers, Arc::default());
        let name: Arc<str> = "v6only.example.com".into();
        assert_eq!(
            resolver.resolve(&name, TIMEOUT).await,
            Err(Error::NoIpv4 { name: name.clone() })
        );

        let slow = Arc::new(Resolver::with_lookup(Arc::new(|_name| -> LookupFuture {
            Box::pin(std::future::pending())
        })));
        assert_eq!(
            slow.resolve(&name, TIMEOUT).await,
            Err(Error::Timeout {
                name: name.clone(),
                timeout: TIMEOUT
            })
        );
    }
}
