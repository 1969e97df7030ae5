//! The local placement (embedded mode): every input is applied in this process, through the
//! one runner, and its events leave through the one fan-out ([`SinkRouter`]).
//!
//! Rule state is kept by a journal when the store is durable (`fleetgate.data_dir`): a
//! thread commits the write cache ([`WriteCache`]) — every vehicle whose state changed,
//! whatever changed (a charge limit sent once, a position, an open session, watch progress) —
//! together with the watches that ended, in one store transaction, every [`COMMIT_EVERY`] or
//! [`GATHER`] after the first frame or request waiting for it (group commit). A frame of a reliably acked topic is acked only after the commit that
//! covers it, and a submitted input (manual arrival, Smartcar state) is answered only after
//! it: nothing acknowledged can be missing from the state a restart restores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::state::WriteCache;
use super::{BoxFuture, Placement, SubmitError, Submitted};
use crate::event::Event;
use crate::rules::input::{ArrivalReply, Receipt, RuleInput};
use crate::rules::{Fleet, RuleState};
use crate::sinks::{Delivery, DeliveryTicket, SinkRouter};
use crate::state::VehicleUpdate;

/// How often the journal commits the changed vehicles when nobody waits for it.
pub const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// When a frame's ack or a request waits for the journal, the commit starts this long after
/// the first waiter (group commit: the waiters that come meanwhile share it).
pub const GATHER: Duration = Duration::from_millis(2);

/// Where embedded mode's rule state is made durable (the store's journal).
pub trait StateBackend: Send + Sync {
    /// Writes `states` (None: delete) and deletes the `ended` watches, in one transaction.
    fn commit(
        &self,
        states: &[(String, Option<RuleState>)],
        ended_watches: &[String],
    ) -> Result<(), String>;
    /// Every stored rule state (restore at start).
    fn restore(&self) -> Result<Vec<(String, RuleState)>, String>;
}

/// The rules of this process: the fleet, its write cache and journal, the event fan-out.
#[derive(Clone)]
pub struct LocalRules {
    fleet: Fleet,
    cache: Arc<WriteCache>,
    sinks: SinkRouter,
    journal: Option<Arc<Journal>>,
}

/// The journal: what its thread commits next, and the thread.
struct Journal {
    backend: Arc<dyn StateBackend>,
    /// Tickets completed by the next commit (reliable acks, submitted inputs).
    waiting: Mutex<Vec<DeliveryTicket>>,
    /// Watches that ended since the last commit (deleted from the store with it).
    ended: Mutex<Vec<String>>,
    /// Asks the thread to commit now and say when it did.
    flush: Mutex<mpsc::Sender<mpsc::Sender<()>>>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The thread, to wake it when the first ticket of a commit arrives.
    wake: std::sync::OnceLock<std::thread::Thread>,
}

impl LocalRules {
    /// The rules of `fleet`, events to `sinks`, rule state kept by `backend` (None: in memory
    /// only, nothing survives a restart).
    pub fn start(
        fleet: Fleet,
        sinks: SinkRouter,
        backend: Option<Arc<dyn StateBackend>>,
    ) -> std::io::Result<LocalRules> {
        let cache = Arc::new(WriteCache::new());
        let journal = match backend {
            None => None,
            Some(backend) => {
                let (tx, rx) = mpsc::channel();
                let journal = Arc::new(Journal {
                    backend,
                    waiting: Mutex::new(Vec::new()),
                    ended: Mutex::new(Vec::new()),
                    flush: Mutex::new(tx),
                    stop: AtomicBool::new(false),
                    thread: Mutex::new(None),
                    wake: std::sync::OnceLock::new(),
                });
                let (j, f, c) = (journal.clone(), fleet.clone(), cache.clone());
                let thread = std::thread::Builder::new()
                    .name("rule-journal".into())
                    .spawn(move || j.run(&rx, &f, &c))?;
                let _ = journal.wake.set(thread.thread().clone());
                *journal.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
                Some(journal)
            }
        };
        Ok(LocalRules {
            fleet,
            cache,
            sinks,
            journal,
        })
    }

    /// The fleet the rules run on.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Puts back every vehicle's rule state the journal kept (start-up, after the admin
    /// state was replayed so the watches exist). Returns how many vehicles.
    pub fn restore(&self) -> Result<usize, String> {
        let Some(journal) = &self.journal else {
            return Ok(0);
        };
        let states = journal.backend.restore()?;
        let n = states.len();
        for (vin, state) in states {
            self.fleet.restore(&vin, state);
        }
        Ok(n)
    }

    /// True when rule state is journaled (then reliable acks wait for it: see
    /// [`LocalRules::after_commit`]).
    pub fn durable(&self) -> bool {
        self.journal.is_some()
    }

    /// A frame's signals, on the frame path: the events (allocates nothing when none fires).
    /// The vehicle is marked dirty by the rules themselves; the watches it ends are queued
    /// for the journal.
    pub fn on_signals(&self, vin: &str, update: &VehicleUpdate) -> Vec<Event> {
        let outcome = self.fleet.apply_signals(vin, update);
        self.queue_ended(&outcome.ended);
        outcome.events
    }

    /// Queues watches that ended for deletion with the next journal commit.
    fn queue_ended(&self, ended: &[String]) {
        if let (Some(j), false) = (&self.journal, ended.is_empty()) {
            j.ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(ended);
        }
    }

    /// Completes `ticket` after the next journal commit (at once when not durable); the first
    /// ticket of a commit wakes the journal, which commits [`GATHER`] later.
    pub fn after_commit(&self, ticket: DeliveryTicket) {
        match &self.journal {
            Some(j) => {
                let first = {
                    let mut waiting = j.waiting.lock().unwrap_or_else(|e| e.into_inner());
                    waiting.push(ticket);
                    waiting.len() == 1
                };
                if first {
                    if let Some(t) = j.wake.get() {
                        t.unpark();
                    }
                }
            }
            None => ticket.complete(true),
        }
    }

    /// Applies one input (the door for everything but frames): marks the vehicle for the
    /// journal and queues the watches it ended.
    fn run(&self, vin: &str, input: &RuleInput) -> crate::rules::input::Outcome {
        let outcome = self.fleet.run(vin, input);
        if outcome.changed {
            self.cache.mark(vin);
        }
        self.queue_ended(&outcome.ended);
        outcome
    }

    /// The clock (the sweeper, every few seconds): every vehicle due gets a tick; their
    /// events are published. Returns how many events.
    pub fn tick(&self, now_ms: i64) -> usize {
        let mut events = Vec::new();
        for vin in self.fleet.due(now_ms) {
            events.extend(self.run(&vin, &RuleInput::Tick { now_ms }).events);
        }
        if !events.is_empty() {
            self.sinks
                .publish_events(&events, None, DeliveryTicket::untracked);
        }
        events.len()
    }

    /// Waits until the journal committed everything applied so far (up to `timeout`).
    async fn committed(&self, timeout: Duration) -> bool {
        if self.journal.is_none() {
            return true;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.after_commit(DeliveryTicket::tracked(tx, 0, None));
        matches!(
            tokio::time::timeout(timeout, rx.recv()).await,
            Ok(Some(c)) if c.delivered
        )
    }

    /// Commits every vehicle's state now and stops the journal (shutdown). Blocking.
    pub fn stop(&self, timeout: Duration) {
        let Some(j) = &self.journal else { return };
        self.cache.mark_all(&self.fleet);
        let (tx, rx) = mpsc::channel();
        let sent = j
            .flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(tx)
            .is_ok();
        if let Some(t) = j.wake.get() {
            t.unpark();
        }
        if sent && rx.recv_timeout(timeout).is_err() {
            tracing::error!("the rule journal did not commit within the shutdown budget");
        }
        j.stop.store(true, Ordering::Relaxed);
        if let Some(t) = j.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Commits every [`COMMIT_EVERY`], or [`GATHER`] after the first waiter, or when asked.
    fn run(&self, rx: &mpsc::Receiver<mpsc::Sender<()>>, fleet: &Fleet, cache: &WriteCache) {
        loop {
            std::thread::park_timeout(COMMIT_EVERY);
            let waited = !self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if waited {
                std::thread::sleep(GATHER);
            }
            let asked: Vec<mpsc::Sender<()>> = rx.try_iter().collect();
            self.commit(fleet, cache);
            for done in asked {
                let _ = done.send(());
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// One commit: the tickets first (everything they wait for was applied before them), then
    /// the marks, then one store transaction; the tickets complete with its outcome.
    fn commit(&self, fleet: &Fleet, cache: &WriteCache) {
        let tickets = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        let ended = std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()));
        let states = cache.take(fleet);
        let ok = if states.is_empty() && ended.is_empty() {
            true
        } else {
            let started = std::time::Instant::now();
            match self.backend.commit(&states, &ended) {
                Ok(()) => {
                    metrics::histogram!(crate::metrics::RULE_STATE_COMMIT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(crate::metrics::RULE_STATE_WRITES_TOTAL)
                        .increment(states.len() as u64);
                    true
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::RULE_STATE_COMMIT_ERRORS_TOTAL).increment(1);
                    tracing::error!(error = %e, vehicles = states.len(), "rule journal: commit failed; reliable frames wait for the next one (they are not acked yet)");
                    // written again by the next commit
                    for (vin, _) in &states {
                        cache.mark(vin);
                    }
                    self.ended
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(ended);
                    false
                }
            }
        };
        for t in tickets {
            t.complete(ok);
        }
    }
}

impl Placement for LocalRules {
    fn submit<'a>(
        &'a self,
        vin: &'a str,
        input: RuleInput,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Submitted, SubmitError>> {
        Box::pin(async move {
            let at_ms = super::now_ms();
            let outcome = self.run(vin, &input);
            let delivery = if outcome.events.is_empty() {
                Delivery::Confirmed
            } else {
                self.sinks.publish_confirmed(&outcome.events, wait).await
            };
            if let (
                Delivery::Failed,
                RuleInput::ManualArrival {
                    watch_id, at_ms, ..
                },
                Some(ArrivalReply::Arrived { .. }),
            ) = (delivery, &input, &outcome.arrival)
            {
                // taken back, so that the driver's retry emits it
                if self.fleet.undo_manual_arrival(vin, watch_id, *at_ms) {
                    self.cache.mark(vin);
                }
                return Err(SubmitError::Unavailable(
                    "an event sink refused or failed to deliver the arrival; nothing changed: retry (see /healthz/sinks)".into(),
                ));
            }
            if !self.committed(wait).await {
                return Err(SubmitError::Unavailable(
                    "the rule state could not be written to the data_dir store; retry (see the server log)".into(),
                ));
            }
            Ok(Submitted {
                receipt: Receipt::of(&super::input_id(), at_ms, &outcome),
                delivered: delivery == Delivery::Confirmed,
            })
        })
    }

    fn runs_here(&self, _key: &str) -> bool {
        true
    }
}
