//! The write cache of the rule state store, one for both placements (Kafka Streams' caching
//! layer over a logged store): the rules mark a vehicle dirty when its state changes (a mark
//! on its table entry, set under the lock the rules hold anyway, so the frame path pays
//! nothing); inputs that change a vehicle without a table entry (a manual arrival for a car
//! never seen) are marked here. Every commit takes the marks and writes those vehicles'
//! whole rule state — to the store's journal (embedded) or the changelog in the same
//! transaction as the consumed offsets (cluster) — so nothing a commit covers can be
//! missing from a restore.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::rules::{Fleet, RuleState};

/// Marks of vehicles whose rule state changed since the last commit.
#[derive(Default)]
pub struct WriteCache {
    marked: Mutex<HashSet<String>>,
}

impl WriteCache {
    /// An empty cache.
    pub fn new() -> WriteCache {
        WriteCache::default()
    }

    /// Marks `vin` dirty (inputs other than frames; frames mark the table entry).
    pub fn mark(&self, vin: &str) {
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        if !marked.contains(vin) {
            marked.insert(vin.to_owned());
        }
    }

    /// Takes every mark (the table's and this cache's) and returns the marked vehicles' rule
    /// state now; a vehicle with no state left (forgotten) comes with None, to be deleted.
    pub fn take(&self, fleet: &Fleet) -> Vec<(String, Option<RuleState>)> {
        let mut vins = Vec::new();
        fleet.vehicles.take_dirty(&mut vins);
        {
            let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
            for vin in marked.drain() {
                if !vins.contains(&vin) {
                    vins.push(vin);
                }
            }
        }
        vins.into_iter()
            .map(|vin| {
                let state = fleet.rule_state(&vin);
                (vin, state)
            })
            .collect()
    }

    /// Marks every vehicle of the fleet (a full write: shutdown).
    pub fn mark_all(&self, fleet: &Fleet) {
        fleet.vehicles.mark_all_dirty();
        for vin in fleet.watches.vins() {
            self.mark(&vin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::input::RuleInput;
    use crate::state::VehicleUpdate;

    #[test]
    fn a_commit_takes_exactly_the_vehicles_that_changed_since_the_last() {
        let fleet = Fleet::new(Default::default(), Vec::new());
        let cache = WriteCache::new();
        let signals = |at_ms, soc| {
            RuleInput::Signals(VehicleUpdate {
                at_ms,
                soc: Some(soc),
                ..Default::default()
            })
        };
        fleet.run("A", &signals(1000, 50.0));
        fleet.run("B", &signals(1000, 60.0));
        let first: Vec<String> = cache.take(&fleet).into_iter().map(|(v, _)| v).collect();
        assert_eq!(first.len(), 2);
        assert!(cache.take(&fleet).is_empty(), "nothing changed since");
        // an older frame changes nothing; a newer one does
        fleet.run("A", &signals(500, 10.0));
        assert!(cache.take(&fleet).is_empty());
        fleet.run("B", &signals(2000, 61.0));
        cache.mark("C");
        let second = cache.take(&fleet);
        assert_eq!(second.len(), 2);
        let b = second.iter().find(|(v, _)| v == "B").unwrap();
        assert_eq!(b.1.as_ref().unwrap().vehicle.soc, Some(61.0));
        assert!(
            second.iter().any(|(v, s)| v == "C" && s.is_none()),
            "C has no state"
        );
    }
}
