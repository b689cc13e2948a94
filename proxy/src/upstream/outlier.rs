//! Outlier detection of one endpoint: consecutive-error counting, ejection, return.
//!
//! As Envoy: a 5xx counts toward `consecutive5xxErrors`; 502/503/504 and local-origin
//! failures (connect failure, reset, timeout, which Envoy maps to 503) also count toward
//! `consecutiveGatewayErrors`; any other response (or an established opaque TCP connection)
//! resets both. Reaching a threshold ejects at once for `baseEjectionTime × times ejected`
//! (capped at max(300 s, base) as Envoy's `max_ejection_time`), unless the ejection would
//! take the share of ejected endpoints above `maxEjectionPercent` (Envoy's
//! `(ejected + 1) / endpoints ≤ max%`, so 10 % of 2 endpoints ejects none). Either way the
//! counters start over.
#![forbid(unsafe_code)]

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use shunt_mesh::routing::OutlierDetection;

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// The result of one request, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(StatusCode),
    /// No answer: connect failure, reset, or timeout.
    GatewayError,
    /// An opaque TCP connection was established. Envoy's tcp_proxy reports it as
    /// `LocalOriginConnectSuccessFinal`, which counts as a 200: both counters start over.
    ConnectSuccess,
}

#[derive(Debug, Default)]
pub(super) struct OutlierState {
    pub(super) consecutive_5xx: u32,
    pub(super) consecutive_gateway: u32,
    pub(super) ejected_until: Option<Instant>,
    pub(super) times_ejected: u32,
}

impl OutlierState {
    pub(super) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Counts `outcome`; true when it reaches a threshold of `detection`.
    pub(super) fn count(&mut self, outcome: Outcome, detection: &OutlierDetection) -> bool {
        let (five_xx, gateway) = match outcome {
            Outcome::GatewayError => (true, true),
            Outcome::ConnectSuccess => (false, false),
            Outcome::Status(status) => (
                status.is_server_error(),
                matches!(status.as_u16(), 502..=504),
            ),
        };
        self.consecutive_5xx = if five_xx { self.consecutive_5xx + 1 } else { 0 };
        self.consecutive_gateway = if gateway {
            self.consecutive_gateway + 1
        } else {
            0
        };
        let reached =
            |threshold: Option<u32>, count: u32| threshold.is_some_and(|t| t > 0 && count >= t);
        reached(detection.consecutive_5xx_errors, self.consecutive_5xx)
            || reached(
                detection.consecutive_gateway_errors,
                self.consecutive_gateway,
            )
    }

    /// Starts the counters over after a threshold was reached (ejected or not).
    pub(super) fn reset_counters(&mut self) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
    }

    pub(super) fn eject(&mut self, now: Instant, detection: &OutlierDetection) {
        self.times_ejected += 1;
        let time = detection
            .base_ejection_time
            .saturating_mul(self.times_ejected)
            .min(MAX_EJECTION_TIME.max(detection.base_ejection_time));
        self.ejected_until = Some(now + time);
    }

    /// Ends an ejection whose time is up; true if it did.
    pub(super) fn return_if_due(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                true
            }
            _ => false,
        }
    }
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are.
pub(super) fn may_eject(ejected: usize, total: usize, max_ejection_percent: u32) -> bool {
    let (ejected, total) = (ejected as u64, total as u64);
    total > 0 && 100 * (ejected + 1) <= u64::from(max_ejection_percent.min(100)) * total
}

/// Whether the cluster is in panic mode (`minHealthPercent`): fewer healthy endpoints than
/// that share, so the balancer ignores ejections.
pub(super) fn panicking(healthy: usize, total: usize, min_health_percent: u32) -> bool {
    min_health_percent > 0 && (healthy as u64) * 100 < u64::from(min_health_percent) * total as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(five_xx: Option<u32>, gateway: Option<u32>) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: five_xx,
            consecutive_gateway_errors: gateway,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }

    #[test]
    fn thresholds_count_consecutive_errors_of_their_kind() {
        let ok = Outcome::Status(StatusCode::OK);
        let e500 = Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR);
        let e503 = Outcome::Status(StatusCode::SERVICE_UNAVAILABLE);
        let gw = Outcome::GatewayError;
        let connected = Outcome::ConnectSuccess;
        let table: &[(OutlierDetection, &[Outcome], bool)] = &[
            (detection(Some(3), None), &[e500, e500, e500], true),
            (detection(Some(3), None), &[e500, ok, e500, e500], false),
            (detection(Some(3), None), &[gw, e503, e500], true),
            (detection(None, Some(2)), &[e500, e500, e500], false),
            (detection(None, Some(2)), &[e503, gw], true),
            (detection(None, Some(2)), &[e503, e500, gw], false),
            (detection(None, None), &[gw, gw, gw, gw], false),
            (detection(None, Some(2)), &[gw, connected, gw], false),
            (detection(Some(2), None), &[gw, connected, gw], false),
            (detection(None, Some(2)), &[connected, gw, gw], true),
        ];
        for (detection, outcomes, expected) in table {
            let mut state = OutlierState::default();
            let reached = outcomes.iter().map(|&o| state.count(o, detection)).last();
            assert_eq!(reached, Some(*expected), "{outcomes:?} with {detection:?}");
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let detection = detection(Some(1), None);
        let mut state = OutlierState::default();
        let now = Instant::now();
        for (n, expected) in [(1, 30), (2, 60), (10, 300), (11, 300)] {
            while state.times_ejected < n {
                state.eject(now, &detection);
            }
            assert_eq!(
                state.ejected_until,
                Some(now + Duration::from_secs(expected)),
                "ejection {n}"
            );
        }
        assert!(state.is_ejected(now));
        assert!(!state.return_if_due(now));
        assert!(state.return_if_due(now + Duration::from_secs(300)));
        assert!(!state.is_ejected(now + Duration::from_secs(300)));
    }

    #[test]
    fn ejection_share_and_panic_follow_envoy() {
        // (ejected, total, max%) → may eject one more
        for (ejected, total, max, expected) in [
            (0, 2, 10, false),
            (0, 10, 10, true),
            (1, 10, 10, false),
            (0, 2, 50, true),
            (1, 2, 50, false),
            (1, 2, 100, true),
            (0, 0, 100, false),
        ] {
            assert_eq!(
                may_eject(ejected, total, max),
                expected,
                "{ejected}/{total} max {max}"
            );
        }
        assert!(!panicking(0, 3, 0));
        assert!(panicking(1, 3, 50));
        assert!(!panicking(2, 3, 50));
    }
}
