use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::ca::SignerOptions;
use crate::provider::{self, FetchFuture, InProcessCa};
use crate::test_support::{id, signer_with};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

/// Long enough for anything these tests wait for on a loaded machine; never a timing claim.
const PATIENCE: Duration = Duration::from_secs(60);

fn fast() -> ManagerConfig {
    ManagerConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_sleep: Duration::from_secs(60),
    }
}

/// An in-process CA that can be told to fail, counting the fetches.
struct Flaky {
    ca: InProcessCa,
    /// Fail every fetch after the first successful one, until cleared.
    fail_after_first: AtomicBool,
    fail_always: AtomicBool,
    successes: AtomicUsize,
    failures: AtomicUsize,
}

impl Flaky {
    fn new(options: SignerOptions, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ca: InProcessCa::new(signer_with(options), ttl),
            fail_after_first: AtomicBool::new(false),
            fail_always: AtomicBool::new(false),
            successes: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        })
    }
}

impl CertProvider for Flaky {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        let fail = self.fail_always.load(Ordering::SeqCst)
            || (self.fail_after_first.load(Ordering::SeqCst)
                && self.successes.load(Ordering::SeqCst) > 0);
        let result = if fail {
            self.failures.fetch_add(1, Ordering::SeqCst);
            Err(provider::Error::Other("the CA is down (test)".to_owned()))
        } else {
            self.successes.fetch_add(1, Ordering::SeqCst);
            self.ca.issue(id)
        };
        Box::pin(std::future::ready(result))
    }
}

/// Waits until `done` holds, checking at each change of the manager's counter.
async fn wait_until(manager: &CertManager, what: &str, mut done: impl FnMut() -> bool) {
    let mut changes = manager.subscribe();
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            if changes.changed().await.is_err() {
                panic!("the manager went away while waiting for {what}");
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "gave up waiting for {what}");
}

#[tokio::test]
async fn tracking_fetches_and_untracking_forgets() {
    let provider = Flaky::new(SignerOptions::default(), Duration::ZERO);
    let manager = CertManager::new(provider.clone(), fast());
    let sleep = id(SLEEP);
    assert!(manager.certificate(&sleep).is_none());

    manager.track(sleep.clone());
    manager.track(sleep.clone()); // a second pod with the same service account
    wait_until(&manager, "the first certificate", || {
        manager.certificate(&sleep).is_some()
    })
    .await;
    let cert = manager.certificate(&sleep).unwrap();
    assert_eq!(cert.identity(), &sleep);
    assert!(cert.is_valid_at(SystemTime::now()));
    assert_eq!(
        provider.successes.load(Ordering::SeqCst),
        1,
        "one fetch per identity"
    );
    assert_eq!(manager.tracked(), vec![sleep.clone()]);

    // The pod's listener resolves the same certificate.
    let current = manager.server_cert(sleep.clone()).current().unwrap();
    assert_eq!(current.cert, cert.certified_key().cert);

    manager.untrack(&sleep);
    assert!(
        manager.certificate(&sleep).is_some(),
        "one pod still has it"
    );
    manager.untrack(&sleep);
    assert!(manager.certificate(&sleep).is_none());
    assert!(manager.status().is_empty());
    assert!(manager.server_cert(sleep.clone()).current().is_none());
    // A connection that took the certificate keeps it.
    assert_eq!(cert.identity(), &sleep);
}

#[tokio::test]
async fn certificates_rotate_at_half_life() {
    // 2 s certificates, not backdated: due after 1 s.
    let options = SignerOptions {
        backdate: Duration::ZERO,
        ..SignerOptions::default()
    };
    let provider = Flaky::new(options, Duration::from_secs(2));
    let manager = CertManager::new(provider.clone(), fast());
    let sleep = id(SLEEP);
    manager.track(sleep.clone());
    wait_until(&manager, "the first certificate", || {
        manager.certificate(&sleep).is_some()
    })
    .await;
    let first = manager.certificate(&sleep).unwrap();
    let due = first.rotation_due();
    let lifetime = first
        .not_after()
        .duration_since(first.not_before())
        .unwrap();
    assert_eq!(due, first.not_before() + lifetime / 2);

    wait_until(&manager, "a rotation", || {
        manager
            .certificate(&sleep)
            .is_some_and(|cert| cert.serial() != first.serial())
    })
    .await;
    let second = manager.certificate(&sleep).unwrap();
    assert!(SystemTime::now() >= due, "not rotated before it was due");
    assert!(second.not_before() >= first.not_before());
    // The old certificate is still whole for whoever holds it.
    assert_eq!(first.identity(), &sleep);
    assert_ne!(first.certified_key().cert, second.certified_key().cert);
}

#[tokio::test]
async fn a_failing_ca_keeps_the_valid_certificate_and_retries() {
    // Backdated by a minute and valid for 30 s more: rotation is due at once, so every
    // fetch after the first is a rotation attempt while the certificate is still valid.
    let options = SignerOptions {
        backdate: Duration::from_secs(60),
        ..SignerOptions::default()
    };
    let provider = Flaky::new(options, Duration::from_secs(30));
    provider.fail_after_first.store(true, Ordering::SeqCst);
    let manager = CertManager::new(provider.clone(), fast());
    let sleep = id(SLEEP);
    manager.track(sleep.clone());
    wait_until(&manager, "two failed rotations", || {
        provider.failures.load(Ordering::SeqCst) >= 2
    })
    .await;

    let held = manager
        .certificate(&sleep)
        .expect("the valid certificate is kept");
    assert_eq!(provider.successes.load(Ordering::SeqCst), 1);
    let status = manager.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, CertState::Valid);
    assert_eq!(status[0].serial.as_deref(), Some(held.serial()));
    let error = status[0].last_error.as_deref().unwrap();
    assert!(error.contains("the CA is down"), "{error}");

    // The CA comes back: the next retry rotates, and the error is cleared.
    provider.fail_after_first.store(false, Ordering::SeqCst);
    wait_until(&manager, "the rotation after recovery", || {
        manager
            .certificate(&sleep)
            .is_some_and(|cert| cert.serial() != held.serial())
    })
    .await;
    wait_until(&manager, "the error to clear", || {
        manager.status()[0].last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn status_reports_each_identity() {
    let provider = Flaky::new(SignerOptions::default(), Duration::ZERO);
    let manager = CertManager::new(provider.clone(), fast());
    let sleep = id(SLEEP);
    manager.track(sleep.clone());
    wait_until(&manager, "the first certificate", || {
        manager.certificate(&sleep).is_some()
    })
    .await;
    let cert = manager.certificate(&sleep).unwrap();

    let status = manager.status();
    let json = serde_json::to_value(&status).unwrap();
    let entry = &json[0];
    assert_eq!(entry["identity"], SLEEP);
    assert_eq!(entry["state"], "valid");
    assert_eq!(entry["serial"], cert.serial());
    assert_eq!(entry["last_error"], serde_json::Value::Null);
    for field in ["not_before", "not_after", "next_rotation"] {
        let text = entry[field].as_str().unwrap();
        OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{field} {text}: {e}"));
    }
    let chain = entry["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["subject"], "");
    assert_eq!(chain[0]["issuer"], "O=cluster.local");
    assert_eq!(chain[0]["serial"], cert.serial());
    assert_eq!(chain[1]["subject"], "O=cluster.local");
    // What shuntctl reads back is what was sent.
    let back: Vec<CertStatus> = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);

    // An identity the CA never serves: an error, no certificate.
    provider.fail_always.store(true, Ordering::SeqCst);
    let other = id("spiffe://cluster.local/ns/default/sa/other");
    manager.track(other.clone());
    wait_until(&manager, "a failed fetch", || {
        manager
            .status()
            .iter()
            .any(|s| s.identity == other && s.last_error.is_some())
    })
    .await;
    let status = manager.status();
    let failing = status.iter().find(|s| s.identity == other).unwrap();
    assert_eq!(failing.state, CertState::Error);
    assert_eq!(failing.serial, None);
    assert!(failing.chain.is_empty());
    assert!(manager.certificate(&other).is_none());
    // Sorted by identity.
    let ids: Vec<_> = status.iter().map(|s| s.identity.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[test]
fn states_follow_the_certificate_and_the_last_error() {
    let signer = signer_with(SignerOptions::default());
    let sleep = id(SLEEP);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let valid = Arc::new(crate::test_support::workload_cert(&signer, &sleep));
    let expired = Arc::new(crate::test_support::workload_cert_valid(
        &signer,
        &sleep,
        now - 2 * hour,
        now - hour,
    ));
    let cases = [
        (None, None, CertState::Pending),
        (None, Some("down"), CertState::Error),
        (Some(Arc::clone(&valid)), None, CertState::Valid),
        (Some(Arc::clone(&valid)), Some("down"), CertState::Valid),
        (Some(Arc::clone(&expired)), None, CertState::Expired),
        (Some(expired), Some("down"), CertState::Expired),
    ];
    for (cert, error, state) in cases {
        let status = cert_status(&sleep, cert.as_deref(), error, now);
        assert_eq!(status.state, state, "{error:?}");
        assert_eq!(status.last_error.as_deref(), error);
    }
}
