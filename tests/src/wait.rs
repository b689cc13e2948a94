//! Polling with a deadline: every wait in the harness is bounded and says what it waited for.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("gave up waiting for {what}: {reason}")]
    Aborted { what: String, reason: String },
}

/// One look at a condition.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; stop waiting.
    Done(T),
    /// Not yet; the text says what was seen, for the timeout message.
    NotYet(String),
    /// It can no longer hold (e.g. the process that should get there exited).
    Abort(String),
}

/// Polls `check` every [`POLL_INTERVAL`] until it is done, aborts, or `timeout` passes.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Check<T>,
) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Check::Done(value) => return Ok(value),
            Check::Abort(reason) => {
                return Err(Error::Aborted {
                    what: what.to_owned(),
                    reason,
                });
            }
            Check::NotYet(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
                last,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let mut calls = 0;
        let done = until("third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Check::Done(calls)
            } else {
                Check::NotYet(format!("call {calls}"))
            }
        });
        assert_eq!(done.unwrap(), 3);

        let timeout = until::<()>("never", Duration::from_millis(120), || {
            Check::NotYet("still no".to_owned())
        });
        let message = timeout.unwrap_err().to_string();
        assert!(
            message.contains("never") && message.contains("still no"),
            "{message}"
        );

        let aborted = until::<()>("x", Duration::from_secs(5), || Check::Abort("gone".into()));
        assert!(matches!(aborted, Err(Error::Aborted { .. })));
    }
}
