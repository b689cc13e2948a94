//! Draining: stop accepting, let in-flight connections finish, cut what is left at a deadline.
#![forbid(unsafe_code)]

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// The accept loops and connections of one pod, and the two signals that end them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    tasks: TaskTracker,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished on its own.
    Finished,
    /// The deadline passed; this many tasks were told to close at once.
    Cut { remaining: usize },
}

impl Drain {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` (an accept loop or a connection) as part of this drain.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Tells the accept loops to stop.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Resolves when accept loops must stop.
    pub async fn accepting_stopped(&self) {
        self.stop_accepting.cancelled().await;
    }

    /// Whether the accept loops were told to stop (the pod is going away).
    #[must_use]
    pub fn is_accepting_stopped(&self) -> bool {
        self.stop_accepting.is_cancelled()
    }

    /// Resolves when in-flight connections must close now.
    pub async fn force_closed(&self) {
        self.force_close.cancelled().await;
    }

    /// Counts as one of this drain's connections until dropped: work done on the pod's
    /// behalf outside its own tasks (a same-node delivery) gets the same drain deadline.
    pub fn hold(&self) -> TaskTrackerToken {
        self.tasks.token()
    }

    /// Tasks still running.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Stops accepting, waits up to `deadline` for everything to finish, then cuts the rest
    /// and waits for them to wind down (they only log and close their sockets).
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.stop_accepting();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return DrainOutcome::Finished;
        }
        let remaining = self.tasks.len();
        self.force_close.cancel();
        self.tasks.wait().await;
        DrainOutcome::Cut { remaining }
    }
}

/// Resolves when `drain` cuts its last connections; never without one.
pub async fn force_closed(drain: Option<&Drain>) {
    match drain {
        Some(drain) => drain.force_closed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn short_tasks_finish_and_long_ones_are_cut_at_the_deadline() {
        for (task_length, expected) in [
            (Duration::from_millis(10), DrainOutcome::Finished),
            (
                Duration::from_secs(3600),
                DrainOutcome::Cut { remaining: 1 },
            ),
        ] {
            let drain = Drain::new();
            let was_cut = Arc::new(AtomicBool::new(false));
            {
                let (drain2, was_cut) = (drain.clone(), was_cut.clone());
                drain.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(task_length) => {}
                        () = drain2.force_closed() => was_cut.store(true, Ordering::SeqCst),
                    }
                });
            }
            let started = std::time::Instant::now();
            let outcome = drain.drain(Duration::from_millis(200)).await;
            assert_eq!(outcome, expected, "{task_length:?}");
            assert_eq!(
                was_cut.load(Ordering::SeqCst),
                expected != DrainOutcome::Finished
            );
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(drain.in_flight(), 0);
        }
    }

    #[tokio::test]
    async fn stopping_wakes_the_accept_loops() {
        let drain = Drain::new();
        let accept_loop = {
            let drain2 = drain.clone();
            drain.spawn(async move { drain2.accepting_stopped().await })
        };
        drain.stop_accepting();
        tokio::time::timeout(Duration::from_secs(5), accept_loop)
            .await
            .unwrap()
            .unwrap();
    }
}
