//! Draining: stop accepting, let in-flight connections finish, cut what is left at a deadline.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// The accept loops and connections of one pod, and the two signals that end them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    stop_accepting: Trigger,
    force_close: Trigger,
    tasks: TaskTracker,
}

/// A one-shot signal: a flag that a poll reads without a lock (a `CancellationToken` takes
/// its lock even to say whether it was cancelled), and the token that wakes the waiters.
#[derive(Clone, Debug, Default)]
struct Trigger {
    fired: Arc<AtomicBool>,
    wake: CancellationToken,
}

impl Trigger {
    fn fire(&self) {
        // Set before the wake-up, so a woken task reads it.
        self.fired.store(true, Ordering::Release);
        self.wake.cancel();
    }

    fn has_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
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
        self.stop_accepting.fire();
    }

    /// Resolves when accept loops must stop. Meant for a `select!` in the task that owns
    /// the connection (see [`Signal`]).
    pub fn accepting_stopped(&self) -> Signal<'_> {
        Signal::new(&self.stop_accepting)
    }

    /// Whether the accept loops were told to stop (the pod is going away).
    #[must_use]
    pub fn is_accepting_stopped(&self) -> bool {
        self.stop_accepting.has_fired()
    }

    /// Resolves when in-flight connections must close now. Meant for a `select!` in the
    /// task that owns the connection (see [`Signal`]).
    pub fn force_closed(&self) -> Signal<'_> {
        Signal::new(&self.force_close)
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
        self.force_close.fire();
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

pin_project_lite::pin_project! {
    /// One of a drain's signals, as a future for the `select!` of the task that owns a
    /// connection. That `select!` polls it on every wake of the connection, several times per
    /// request. `CancellationToken::cancelled()` takes the token's lock on each of those polls;
    /// this registers the task's waker once, on the first poll, and afterwards reads an
    /// atomic flag. A task's waker stays valid for the task's life, so the signal must stay
    /// in the task that first polled it (it does: it lives in that task's `select!`).
    #[must_use = "futures do nothing unless polled"]
    pub struct Signal<'a> {
        trigger: &'a Trigger,
        #[pin]
        registration: WaitForCancellationFuture<'a>,
        registered: bool,
    }
}

impl<'a> Signal<'a> {
    fn new(trigger: &'a Trigger) -> Self {
        Self {
            trigger,
            registration: trigger.wake.cancelled(),
            registered: false,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.trigger.has_fired() {
            return Poll::Ready(());
        }
        if *this.registered {
            return Poll::Pending;
        }
        *this.registered = true;
        this.registration.poll(cx)
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

    /// A connection's `select!` polls its signals on every wake. The signal registers the
    /// task's waker on the first poll only, so it must still wake the task after many polls.
    #[tokio::test]
    async fn a_signal_polled_on_every_wake_still_wakes_its_task_when_it_fires() {
        type Fire = fn(&Drain);
        let cases: [(&str, Fire); 2] = [
            ("force_closed", |drain| drain.force_close.fire()),
            ("accepting_stopped", Drain::stop_accepting),
        ];
        for (signal_name, fire) in cases {
            let drain = Drain::new();
            let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<()>();
            let connection = {
                let drain = drain.clone();
                tokio::spawn(async move {
                    let signal = if signal_name == "force_closed" {
                        drain.force_closed()
                    } else {
                        drain.accepting_stopped()
                    };
                    tokio::pin!(signal);
                    let mut wakes = 0;
                    loop {
                        tokio::select! {
                            biased;
                            () = &mut signal => return wakes,
                            Some(()) = woken.recv() => wakes += 1,
                        }
                    }
                })
            };
            for _ in 0..10 {
                wake.send(()).unwrap();
                tokio::task::yield_now().await;
            }
            fire(&drain);
            let wakes = tokio::time::timeout(Duration::from_secs(5), connection)
                .await
                .unwrap_or_else(|_| panic!("{signal_name}: the task was never woken"))
                .unwrap();
            assert_eq!(wakes, 10, "{signal_name}");
        }
    }
}
