//! The rule state store's promise, as a property: for any sequence of inputs (frames with
//! positions, jumps, late frames, SoC, a charge limit sent once, charge states, navigation;
//! manual arrivals; clock ticks), stopping after any input and starting again from what the
//! store committed gives the same events as never stopping — both for a clean restart (the
//! store committed everything applied) and for a crash (it committed up to an earlier input,
//! and the inputs after that are delivered again, as unacked frames and uncommitted offsets
//! are). The store here is what both placements use: the write cache, rule states through
//! their JSON form, restore through `Fleet::restore`.

use std::collections::BTreeMap;

use fleetgate::event::Event;
use fleetgate::rules::arrival::WatchSpec;
use fleetgate::rules::input::RuleInput;
use fleetgate::rules::sites::{Shape, Site};
use fleetgate::rules::{Fleet, RuleState};
use fleetgate::runner::state::WriteCache;
use fleetgate::state::{ChargeState, VehicleUpdate};
use proptest::prelude::*;

const T0: i64 = 1_764_000_000_000;
const CAFE: (f64, f64) = (30.2672, -97.7431);

fn sites() -> Vec<Site> {
    vec![
        Site {
            id: "cafe".into(),
            name: "Cafe".into(),
            kind: "charger".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: CAFE.0,
                lon: CAFE.1,
                radius_m: 100.0,
            },
        },
        Site {
            id: "depot".into(),
            name: "Depot".into(),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: Shape::Circle {
                lat: CAFE.0 + 0.02,
                lon: CAFE.1,
                radius_m: 150.0,
            },
        },
    ]
}

fn watches() -> Vec<WatchSpec> {
    let spec = |id: &str, vin: &str, site: &str, target: Option<f64>, expires: &str| WatchSpec {
        watch_id: id.into(),
        vin: vin.into(),
        site_id: site.into(),
        target_soc: target,
        notify_eta_minutes: Some(5.0),
        expires_at: expires.into(),
    };
    vec![
        spec("w1", "A", "cafe", Some(80.0), "2099-01-01T00:00:00Z"),
        // no target: completes at the car's own charge limit
        spec("w2", "A", "depot", None, "2099-01-01T00:00:00Z"),
        spec("w3", "B", "cafe", None, "2099-01-01T00:00:00Z"),
        // expires within the generated time span (T0 + ~1 h)
        spec("w4", "B", "depot", Some(70.0), "2025-11-24T16:40:00Z"),
    ]
}

/// One generated step: which vehicle, and what happens.
#[derive(Debug, Clone)]
enum Step {
    Frame {
        vin: &'static str,
        dt_s: i64,
        late: bool,
        place: Option<u8>,
        soc: Option<f64>,
        limit: Option<f64>,
        charge: Option<u8>,
        navigating: bool,
    },
    Manual {
        watch: u8,
        dt_s: i64,
    },
    Tick {
        ahead_s: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let frame = (
        prop_oneof![Just("A"), Just("B")],
        0i64..120,
        prop::bool::weighted(0.1),
        prop::option::of(0u8..6),
        prop::option::of(40.0f64..95.0),
        prop::option::weighted(0.2, prop_oneof![Just(80.0), Just(90.0)]),
        prop::option::weighted(0.3, 0u8..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(vin, dt_s, late, place, soc, limit, charge, navigating)| Step::Frame {
                vin,
                dt_s,
                late,
                place,
                soc: soc.map(|s| (s * 2.0).round() / 2.0),
                limit,
                charge,
                navigating,
            },
        );
    prop_oneof![
        8 => frame,
        1 => (0u8..5, 0i64..60).prop_map(|(watch, dt_s)| Step::Manual { watch, dt_s }),
        1 => (0i64..2000).prop_map(|ahead_s| Step::Tick { ahead_s }),
    ]
}

/// The steps as inputs, with their clock.
fn inputs(steps: &[Step]) -> Vec<(String, RuleInput)> {
    let mut t = T0;
    let place = |p: u8| match p {
        0 => (CAFE.0 + 0.01, CAFE.1),   // far
        1 => (CAFE.0 + 0.0012, CAFE.1), // near the edge (inside the exit margin)
        2 => (CAFE.0, CAFE.1),          // inside the cafe
        3 => (CAFE.0 + 0.0003, CAFE.1), // inside, jittering
        4 => (CAFE.0 + 0.02, CAFE.1),   // inside the depot
        _ => (CAFE.0 + 1.0, CAFE.1),    // an implausible jump
    };
    steps
        .iter()
        .map(|s| match s {
            Step::Frame {
                vin,
                dt_s,
                late,
                place: p,
                soc,
                limit,
                charge,
                navigating,
            } => {
                t += dt_s * 1000;
                let at_ms = if *late { t - 90_000 } else { t };
                let update = VehicleUpdate {
                    at_ms,
                    location: p.map(place),
                    soc: *soc,
                    charge_limit_soc: *limit,
                    charge_state: charge.map(|c| match c {
                        0 => ChargeState::Charging,
                        1 => ChargeState::Complete,
                        _ => ChargeState::Idle,
                    }),
                    destination: navigating.then_some(CAFE),
                    minutes_to_arrival: navigating.then_some(3.0),
                    ..Default::default()
                };
                (vin.to_string(), RuleInput::Signals(update))
            }
            Step::Manual { watch, dt_s } => {
                t += dt_s * 1000;
                let (id, vin) = match watch {
                    0 => ("w1", "A"),
                    1 => ("w2", "A"),
                    2 => ("w3", "B"),
                    3 => ("w4", "B"),
                    _ => ("gone", "A"),
                };
                (
                    vin.to_owned(),
                    RuleInput::ManualArrival {
                        watch_id: id.into(),
                        reason: None,
                        at_ms: t,
                    },
                )
            }
            Step::Tick { ahead_s } => (
                "A".to_owned(),
                RuleInput::Tick {
                    now_ms: t + ahead_s * 1000,
                },
            ),
        })
        .collect()
}

/// A process: its fleet, its write cache, and what its store committed (the rule states as
/// JSON, the watches that remain).
struct Process {
    fleet: Fleet,
    cache: WriteCache,
    /// Watches ended since the last commit (deleted from the store with it).
    ended: std::cell::RefCell<Vec<String>>,
}

/// What the store holds.
#[derive(Default, Clone)]
struct Store {
    states: BTreeMap<String, String>,
    watches: Vec<WatchSpec>,
}

impl Process {
    /// A process started from `store` (replay the watches, restore the rule states).
    fn start(store: &Store) -> Process {
        let fleet = Fleet::new(Default::default(), sites());
        for spec in &store.watches {
            fleet.add_watch(spec.clone().into_watch().unwrap());
        }
        for (vin, json) in &store.states {
            let state: RuleState = serde_json::from_str(json).unwrap();
            fleet.restore(vin, state);
        }
        Process {
            fleet,
            cache: WriteCache::new(),
            ended: Default::default(),
        }
    }

    /// Applies an input as a placement does; the tick runs over every vehicle due.
    fn apply(&self, vin: &str, input: &RuleInput) -> Vec<Event> {
        let targets = match input {
            RuleInput::Tick { now_ms } => self.fleet.due(*now_ms),
            _ => vec![vin.to_owned()],
        };
        let mut events = Vec::new();
        for vin in targets {
            let outcome = self.fleet.run(&vin, input);
            if outcome.changed {
                self.cache.mark(&vin);
            }
            self.ended
                .borrow_mut()
                .extend(outcome.ended_watches().map(str::to_owned));
            events.extend(outcome.events);
        }
        events
    }

    /// A commit: every changed vehicle's state and the ended watches into the store.
    fn commit(&self, store: &mut Store) {
        let ended = std::mem::take(&mut *self.ended.borrow_mut());
        store.watches.retain(|w| !ended.contains(&w.watch_id));
        for (vin, state) in self.cache.take(&self.fleet) {
            match state {
                Some(s) => {
                    store.states.insert(vin, serde_json::to_string(&s).unwrap());
                }
                None => {
                    store.states.remove(&vin);
                }
            }
        }
    }
}

/// (type, id) of the events, per vehicle in order: what the order promise covers.
fn ids(events: &[Event]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for e in events {
        out.entry(e.vin.clone())
            .or_default()
            .push((e.kind.as_str().to_owned(), e.id.clone()));
    }
    out
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=20000 for a long run
    #[test]
    fn a_restart_from_the_committed_state_at_any_point_gives_the_same_events(
        steps in prop::collection::vec(step(), 1..60),
        stop_at in any::<prop::sample::Index>(),
        crash_back in 0usize..8,
    ) {
        let inputs = inputs(&steps);
        let fresh = Store { watches: watches(), ..Default::default() };

        // never stopping
        let once = Process::start(&fresh);
        let mut expected = Vec::new();
        for (vin, input) in &inputs {
            expected.extend(once.apply(vin, input));
        }

        // stop after input `k`; the store committed up to input `m` <= k (m == k: a clean
        // restart; m < k: a crash, and inputs m.. are delivered again)
        let k = stop_at.index(inputs.len() + 1);
        let m = k.saturating_sub(crash_back);
        let mut store = fresh.clone();
        let first = Process::start(&store);
        let mut committed_events = Vec::new();
        for (i, (vin, input)) in inputs[..k].iter().enumerate() {
            let events = first.apply(vin, input);
            if i < m {
                committed_events.extend(events);
            }
            if i + 1 == m {
                first.commit(&mut store);
            }
        }
        if m == 0 {
            store = fresh.clone();
        }
        // (a crash loses what was applied after the commit at m: the store stays as it was)
        let second = Process::start(&store);
        let mut after = Vec::new();
        for (vin, input) in &inputs[m..] {
            after.extend(second.apply(vin, input));
        }
        let mut got = committed_events;
        got.extend(after);
        let first_difference = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a.id != b.id)
            .unwrap_or(got.len().min(expected.len()));
        let around = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .skip(first_difference.saturating_sub(1))
                .take(3)
                .map(|e| format!("{} {} {}", e.kind.as_str(), e.time_ms, serde_json::Value::Object(e.data.clone())))
                .collect()
        };
        prop_assert_eq!(
            ids(&got),
            ids(&expected),
            "stopped after {} inputs, committed {}; first difference at event {}: with the restart {:#?}, without {:#?}",
            k,
            m,
            first_difference,
            around(&got),
            around(&expected)
        );
    }
}
