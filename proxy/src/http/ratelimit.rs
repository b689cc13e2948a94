//! Local rate limiting: one token bucket per `RateLimitPolicy`, shared by every pod of this
//! node proxy.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::routing::{ObjectRef, RateLimit};

/// What one request gets from its policy's bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateLimitOutcome {
    /// Let through; `remaining` whole tokens are left (`x-ratelimit-remaining`).
    Allowed { limit: u32, remaining: u32 },
    /// Answer 429: the next token arrives after `reset` (`x-ratelimit-reset`, rounded up).
    Limited { limit: u32, reset: Duration },
}

/// The token buckets, keyed by policy. Time is `tokio::time::Instant`, so tests pause it.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<ObjectRef, Bucket>>,
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
        let bucket = buckets
            .entry(limit.policy.clone())
            .or_insert_with(|| Bucket::full(limit, now));
        if !bucket.matches(limit) {
            *bucket = Bucket::full(limit, now);
        }
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * bucket.requests_per_second).min(f64::from(bucket.burst));
        bucket.refilled_at = now;
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

    /// Forgets the buckets of policies that are gone from the config.
    pub fn retain(&self, keep: impl Fn(&ObjectRef) -> bool) {
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|policy, _| keep(policy));
        }
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
        limiter.retain(|p| p.name.as_ref() == "shop");
        assert_eq!(
            limiter.check(&cart),
            RateLimitOutcome::Allowed {
                limit: 1,
                remaining: 0
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
