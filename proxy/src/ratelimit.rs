//! Local rate limiting: one token bucket per `RateLimitPolicy`, shared by every pod of this
//! node proxy.
//!
//! A bucket that has refilled to its burst is the same as a new one, so full buckets are
//! dropped now and then ([`SWEEP_INTERVAL`]): the buckets of policies gone from the config
//! go without the limiter being told, and the table holds only policies limiting now.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use shunt_mesh::routing::{ObjectRef, RateLimit};

/// What one request gets from its policy's bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateLimitOutcome {
    /// Let through; `remaining` whole tokens are left (`x-ratelimit-remaining`).
    Allowed { limit: u32, remaining: u32 },
    /// Answer 429: the next token arrives after `reset` (`x-ratelimit-reset`, rounded up).
    Limited { limit: u32, reset: Duration },
}

/// How often the full buckets are dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The token buckets, keyed by policy. Time is `tokio::time::Instant`, so tests pause it.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_policy: HashMap<ObjectRef, Bucket>,
    /// `None`: never swept; the first check starts the interval.
    swept_at: Option<Instant>,
}

impl Buckets {
    /// Drops the buckets that are full by now, at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        let swept_at = *self.swept_at.get_or_insert(now);
        if now.duration_since(swept_at) < SWEEP_INTERVAL {
            return;
        }
        self.swept_at = Some(now);
        self.by_policy.retain(|_, bucket| !bucket.full_at(now));
    }
}

#[derive(Debug)]
struct Bucket {
    requests_per_second: f64,
    burst: u32,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Self {
        Self {
            requests_per_second: limit.requests_per_second,
            burst: limit.burst,
            tokens: f64::from(limit.burst),
            refilled_at: now,
        }
    }

    fn matches(&self, limit: &RateLimit) -> bool {
        self.burst == limit.burst && self.requests_per_second == limit.requests_per_second
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = self.tokens_at(now);
        self.refilled_at = now;
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        (self.tokens + elapsed * self.requests_per_second).min(f64::from(self.burst))
    }

    fn full_at(&self, now: Instant) -> bool {
        self.tokens_at(now) >= f64::from(self.burst)
    }
}

impl RateLimiter {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one token from `limit.policy`'s bucket if there is one. A bucket whose numbers
    /// changed in the config starts over full.
    pub fn check(&self, limit: &RateLimit) -> RateLimitOutcome {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            // A panic elsewhere poisoned the table: fail open rather than refuse all traffic.
            return RateLimitOutcome::Allowed {
                limit: limit.burst,
                remaining: 0,
            };
        };
        buckets.sweep(now);
        let bucket = buckets
            .by_policy
            .entry(limit.policy.clone())
            .or_insert_with(|| Bucket::full(limit, now));
        if !bucket.matches(limit) {
            *bucket = Bucket::full(limit, now);
        }
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            RateLimitOutcome::Allowed {
                limit: bucket.burst,
                remaining: whole_tokens(bucket.tokens),
            }
        } else {
            let missing = 1.0 - bucket.tokens;
            let reset = if bucket.requests_per_second > 0.0 {
                Duration::try_from_secs_f64(missing / bucket.requests_per_second)
                    .unwrap_or(Duration::MAX)
            } else {
                Duration::MAX
            };
            RateLimitOutcome::Limited {
                limit: bucket.burst,
                reset,
            }
        }
    }

    #[cfg(test)]
    fn policies(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .buckets
            .lock()
            .map(|b| b.by_policy.keys().map(|p| p.name.to_string()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "tokens are within 0..=burst, a u32"
)]
fn whole_tokens(tokens: f64) -> u32 {
    tokens.floor().max(0.0) as u32
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn policy(name: &str, requests_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            policy: ObjectRef {
                kind: "RateLimitPolicy",
                namespace: Arc::from("shop"),
                name: Arc::from(name),
            },
            requests_per_second,
            burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_429_until_a_token_refills() {
        let limiter = RateLimiter::new();
        let limit = policy("cart", 2.0, 3);
        for remaining in [2, 1, 0] {
            assert_eq!(
                limiter.check(&limit),
                RateLimitOutcome::Allowed {
                    limit: 3,
                    remaining
                }
            );
        }
        let RateLimitOutcome::Limited { limit: 3, reset } = limiter.check(&limit) else {
            panic!("the fourth request in the burst must be limited");
        };
        assert_eq!(reset, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(matches!(
            limiter.check(&limit),
            RateLimitOutcome::Limited { .. }
        ));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            limiter.check(&limit),
            RateLimitOutcome::Allowed {
                limit: 3,
                remaining: 0
            }
        );
        // Refill stops at the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            limiter.check(&limit),
            RateLimitOutcome::Allowed {
                limit: 3,
                remaining: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn policies_have_their_own_buckets_and_a_changed_policy_starts_full() {
        let limiter = RateLimiter::new();
        let cart = policy("cart", 1.0, 1);
        let shop = policy("shop", 1.0, 1);
        assert!(matches!(
            limiter.check(&cart),
            RateLimitOutcome::Allowed { .. }
        ));
        assert!(matches!(
            limiter.check(&cart),
            RateLimitOutcome::Limited { .. }
        ));
        assert!(matches!(
            limiter.check(&shop),
            RateLimitOutcome::Allowed { .. }
        ));
        let raised = policy("cart", 1.0, 5);
        assert_eq!(
            limiter.check(&raised),
            RateLimitOutcome::Allowed {
                limit: 5,
                remaining: 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_dropped_and_partly_used_ones_kept() {
        let limiter = RateLimiter::new();
        // Gone from the config after one request: full again after 1 s.
        let removed = policy("removed", 1.0, 5);
        // Still limiting: emptied, 200 s to refill.
        let busy = policy("busy", 0.5, 100);
        assert!(matches!(
            limiter.check(&removed),
            RateLimitOutcome::Allowed { .. }
        ));
        for _ in 0..100 {
            limiter.check(&busy);
        }
        tokio::time::advance(SWEEP_INTERVAL - Duration::from_secs(1)).await;
        limiter.check(&busy);
        assert_eq!(limiter.policies(), ["busy", "removed"]);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The sweep must not change what a request gets: 30 refilled in 60 s, 2 used since.
        assert_eq!(
            limiter.check(&busy),
            RateLimitOutcome::Allowed {
                limit: 100,
                remaining: 28
            }
        );
        assert_eq!(limiter.policies(), ["busy"]);
        // A dropped policy that comes back starts full, as it would have been.
        assert_eq!(
            limiter.check(&removed),
            RateLimitOutcome::Allowed {
                limit: 5,
                remaining: 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fractional_rate_refills_slowly() {
        let limiter = RateLimiter::new();
        let limit = policy("slow", 0.5, 1);
        assert!(matches!(
            limiter.check(&limit),
            RateLimitOutcome::Allowed { .. }
        ));
        let RateLimitOutcome::Limited { reset, .. } = limiter.check(&limit) else {
            panic!("limited");
        };
        assert_eq!(reset, Duration::from_secs(2));
    }
}
