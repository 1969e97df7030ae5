//! One stop signal per vehicle connection. Three things end a connection from outside its
//! task — server shutdown, a newer socket of the same vehicle taking over, the VIN lists no
//! longer allowing it — and all three arrive through this one signal: the connection loop
//! checks it once per turn with one atomic load and one waker registration, where three
//! cancellation tokens cost a lock on each token's waiter list per turn.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Why a connection was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The server is shutting down.
    Shutdown = 1,
    /// A newer socket of the same vehicle took over (after the hand-over grace).
    Superseded = 2,
    /// The VIN lists no longer allow this vehicle.
    VinRefused = 3,
}

impl StopReason {
    fn from_u8(v: u8) -> Option<StopReason> {
        match v {
            1 => Some(StopReason::Shutdown),
            2 => Some(StopReason::Superseded),
            3 => Some(StopReason::VinRefused),
            _ => None,
        }
    }
}

/// A connection's stop signal: set by anyone holding it (the server, the registry, the
/// hand-over timer), awaited by the one connection task. The first reason set wins.
#[derive(Debug, Default)]
pub struct StopSignal {
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl StopSignal {
    /// A signal not set yet.
    pub fn new() -> Arc<StopSignal> {
        Arc::new(StopSignal::default())
    }

    /// Asks the connection to stop for `reason`; a later call with another reason changes
    /// nothing (the connection is already stopping).
    pub fn stop(&self, reason: StopReason) {
        if self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// The reason, once set.
    pub fn reason(&self) -> Option<StopReason> {
        StopReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Ready with the reason once set; otherwise registers the task to be woken.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<StopReason> {
        if let Some(reason) = self.reason() {
            return Poll::Ready(reason);
        }
        self.waker.register(cx.waker());
        // set between the check and the registration: seen now
        match self.reason() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }

    /// Waits until the signal is set. Only the connection's own task waits on it (one waker
    /// is kept).
    pub async fn stopped(&self) -> StopReason {
        poll_fn(|cx| self.poll_stopped(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_wakes_the_waiter() {
        let signal = StopSignal::new();
        assert_eq!(signal.reason(), None);
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.stopped().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        signal.stop(StopReason::Superseded);
        signal.stop(StopReason::Shutdown);
        assert_eq!(waiter.await.unwrap(), StopReason::Superseded);
        assert_eq!(signal.reason(), Some(StopReason::Superseded));
        // set before anyone waits: ready at once
        assert_eq!(signal.stopped().await, StopReason::Superseded);
    }
}
