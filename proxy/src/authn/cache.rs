//! Tokens already verified, by the SHA-256 of the token, so a keep-alive client that sends the
//! same token on every request pays one signature check, not one per request.
//!
//! An entry holds for the rule and the key set it was verified with (the authenticator checks
//! both still apply: a changed rule or a refreshed JWKS verifies again), until the token's `exp` (plus the clock skew) or
//! [`MAX_AGE`], whichever is first. Only successes are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shunt_mesh::security::{JwtRule, RequestAuth};
use tokio::time::Instant;

use super::verify::{CLOCK_SKEW_SECS, KeySet};

/// How long a verified token is trusted without checking it again, at most.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// How many tokens are kept; past it, expired entries go, then all.
pub const CAPACITY: usize = 8192;

/// The SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// The SHA-256 of `token`.
#[must_use]
pub fn token_hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

struct Entry {
    rule: Arc<JwtRule>,
    keys: Arc<KeySet>,
    auth: Arc<RequestAuth>,
    until: Instant,
}

/// The verified tokens of the proxy.
#[derive(Default)]
pub struct VerifiedCache {
    entries: Mutex<HashMap<TokenHash, Entry>>,
}

impl VerifiedCache {
    /// What the token was verified under (the rule and the key set) and its attributes, if
    /// it is held and has not expired. The caller checks the rule and keys still hold.
    pub fn entry(&self, hash: &TokenHash) -> Option<(Arc<JwtRule>, Arc<KeySet>, Arc<RequestAuth>)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(hash)?;
        (Instant::now() < entry.until)
            .then(|| (entry.rule.clone(), entry.keys.clone(), entry.auth.clone()))
    }

    /// Records a token verified at `now` (unix seconds) whose `exp` is `exp`.
    pub fn insert(
        &self,
        hash: TokenHash,
        rule: &Arc<JwtRule>,
        keys: &Arc<KeySet>,
        auth: &Arc<RequestAuth>,
        exp: Option<u64>,
        now: u64,
    ) {
        let left = exp.map_or(MAX_AGE, |exp| {
            Duration::from_secs(exp.saturating_add(CLOCK_SKEW_SECS).saturating_sub(now))
        });
        let until = Instant::now() + left.min(MAX_AGE);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            let now = Instant::now();
            entries.retain(|_, entry| entry.until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            hash,
            Entry {
                rule: rule.clone(),
                keys: keys.clone(),
                auth: auth.clone(),
                until,
            },
        );
    }

    /// How many tokens are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
