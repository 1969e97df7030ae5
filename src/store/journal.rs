//! Embedded mode's rule journal: keeps each vehicle's rule state (sites inside, charging
//! session, watch progress, latest signals) in the store, so that a restart neither fires an
//! arrival (or an entry, a charge-complete, an expiry) again nor forgets an open session.
//!
//! It is an event tap: every event the rules emit (frames and sweeps alike) marks its vehicle
//! dirty; a writer thread reads the vehicle's current rule state from the fleet and writes the
//! dirty ones in one SQLite transaction every [`BATCH_EVERY`] (group commit, off the frame
//! path), every vehicle once a minute (so signals and last-seen times stay fresh), and all of
//! them at shutdown (the sinks' flush). An expired watch is deleted from the store, so it is
//! not loaded again. The window a `kill -9` can lose is the last batch (≤ 50 ms).

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::Change;
use crate::event::{Event, EventType};
use crate::rules::Fleet;
use crate::sinks::{DeliveryTicket, PublishError, Sink, SinkRecord};
use crate::store::Store;

/// How often dirty vehicles are written.
pub const BATCH_EVERY: Duration = Duration::from_millis(50);
/// How often every vehicle is written.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

enum Note {
    Dirty(String),
    WatchGone(String),
    Flush(mpsc::Sender<()>),
}

/// The journal: an event sink that only notes which vehicles changed, and its writer thread.
pub struct RuleJournal {
    notes: Mutex<mpsc::Sender<Note>>,
}

impl RuleJournal {
    /// Starts the writer thread over `store` and `fleet`.
    pub fn start(store: Arc<Store>, fleet: Fleet) -> std::io::Result<Arc<RuleJournal>> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("rule-journal".into())
            .spawn(move || write_loop(&rx, &store, &fleet))?;
        Ok(Arc::new(RuleJournal {
            notes: Mutex::new(tx),
        }))
    }

    fn note(&self, note: Note) {
        let tx = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tx.send(note);
    }
}

fn write_loop(rx: &mpsc::Receiver<Note>, store: &Store, fleet: &Fleet) {
    let mut dirty: HashSet<String> = HashSet::new();
    let mut gone: Vec<Change> = Vec::new();
    let mut last_snapshot = Instant::now();
    let mut flushed: Vec<mpsc::Sender<()>> = Vec::new();
    loop {
        let first = match rx.recv_timeout(BATCH_EVERY) {
            Ok(n) => Some(n),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                write_all(store, fleet);
                return;
            }
        };
        let deadline = Instant::now() + BATCH_EVERY;
        let mut next = first;
        while let Some(note) = next.take() {
            match note {
                Note::Dirty(vin) => {
                    dirty.insert(vin);
                }
                Note::WatchGone(id) => gone.push(Change::DeleteWatch(id)),
                Note::Flush(done) => flushed.push(done),
            }
            if !flushed.is_empty() {
                break;
            }
            next = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok();
        }
        if !gone.is_empty() {
            if let Err(e) = store.apply(&gone) {
                tracing::error!(error = %e, "rule journal: deleting expired watches failed (they expire again after a restart, with the same event id)");
            }
            gone.clear();
        }
        if !flushed.is_empty() || last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            write_all(store, fleet);
            dirty.clear();
            last_snapshot = Instant::now();
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            continue;
        }
        if dirty.is_empty() {
            continue;
        }
        let states: Vec<_> = dirty
            .drain()
            .filter_map(|vin| fleet.rule_state(&vin).map(|s| (vin, s)))
            .collect();
        if let Err(e) = store.put_rule_states(&states) {
            tracing::error!(error = %e, vehicles = states.len(), "rule journal: writing rule state failed; a restart may fire these vehicles' last events again (same ids for the same frames)");
        }
    }
}

fn write_all(store: &Store, fleet: &Fleet) {
    let states: Vec<_> = fleet
        .vehicles
        .snapshot()
        .into_iter()
        .filter_map(|(vin, _)| fleet.rule_state(&vin).map(|s| (vin, s)))
        .collect();
    if let Err(e) = store.put_rule_states(&states) {
        tracing::error!(error = %e, vehicles = states.len(), "rule journal: writing every vehicle's rule state failed");
    }
}

impl Sink for RuleJournal {
    fn name(&self) -> &'static str {
        "rule-journal"
    }

    fn publish(&self, _: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        ticket.complete(true);
        Ok(())
    }

    fn publish_event(
        &self,
        event: &Event,
        _: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        ticket.complete(true);
        match event.kind {
            // connectivity changes no rule state
            EventType::VehicleConnected | EventType::VehicleDisconnected => return Ok(()),
            EventType::ArrivalExpired => {
                if let Some(id) = event.data.get("watch_id").and_then(|v| v.as_str()) {
                    self.note(Note::WatchGone(id.to_owned()));
                }
            }
            _ => {}
        }
        self.note(Note::Dirty(event.vin.clone()));
        Ok(())
    }

    /// Writes every vehicle's state now (shutdown).
    fn flush(&self, timeout: Duration) -> usize {
        let (tx, rx) = mpsc::channel();
        self.note(Note::Flush(tx));
        usize::from(rx.recv_timeout(timeout).is_err())
    }
}
