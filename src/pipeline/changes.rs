//! Changes-only forwarding: per vehicle, forward to the sinks only the datums of a `V` frame
//! whose value changed since the last forwarded one (numbers by a per-field minimum delta), and
//! every value again after `max_age_s`. The rules still see every frame. Off by default.

use std::collections::HashMap;

use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::wire::proto::vehicle_data::{value::Value as V, Field, Payload};

/// `fleetgate.changes_only`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesOnlyConfig {
    /// Topics it applies to (only `V` has datums; empty = off).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Minimum change per field name for numbers to count as changed (default: any change).
    #[serde(default)]
    pub min_delta: std::collections::BTreeMap<String, f64>,
    /// Forward a value again after this many seconds even if unchanged (default 300).
    #[serde(default = "ChangesOnlyConfig::default_max_age")]
    pub max_age_s: u64,
}

impl ChangesOnlyConfig {
    fn default_max_age() -> u64 {
        300
    }

    /// True when `V` frames are filtered.
    pub fn enabled_for_v(&self) -> bool {
        self.topics.iter().any(|t| t == "V")
    }

    /// Problems (key, problem) and warnings of this section.
    pub fn problems(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        for topic in &self.topics {
            if topic != "V" {
                warnings.push(format!(
                    "fleetgate.changes_only.topics: `{topic}` has no datums; only V is filtered"
                ));
            }
        }
        for (name, delta) in &self.min_delta {
            let key = format!("fleetgate.changes_only.min_delta.{name}");
            if Field::from_str_name(name).is_none() {
                issues.push((
                    key.clone(),
                    "not a telemetry field name (e.g. Soc, VehicleSpeed)".into(),
                ));
            }
            if !delta.is_finite() || *delta < 0.0 {
                issues.push((key, "must be a number >= 0".into()));
            }
        }
        (issues, warnings)
    }

    /// Field-number → minimum delta (unknown names are reported by [`Self::problems`]).
    pub fn deltas(&self) -> HashMap<i32, f64> {
        self.min_delta
            .iter()
            .filter_map(|(name, d)| Field::from_str_name(name).map(|f| (f as i32, *d)))
            .collect()
    }
}

/// What was last forwarded for one field.
#[derive(Debug, Clone, Copy)]
struct LastSent {
    number: Option<f64>,
    digest: u64,
    at_ms: i64,
}

/// Per-connection memory of forwarded values.
#[derive(Debug, Default)]
pub struct ChangeFilter {
    last: HashMap<i32, LastSent>,
}

fn digest(bytes: &[u8]) -> u64 {
    // FNV-1a: stable, fast, no allocation; collisions only cost a redundant forward or a skip
    // of an equal-looking value, bounded by max_age.
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

impl ChangeFilter {
    /// Indexes (in `p.data`) of the datums to suppress for a frame taken at `at_ms`.
    pub fn suppressed(
        &mut self,
        p: &Payload,
        at_ms: i64,
        deltas: &HashMap<i32, f64>,
        max_age_ms: i64,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (i, datum) in p.data.iter().enumerate() {
            let Some(value) = datum.value.as_ref() else {
                continue;
            };
            let number = match &value.value {
                Some(V::DoubleValue(d)) => Some(*d),
                Some(V::FloatValue(f)) => Some(f64::from(*f)),
                Some(V::IntValue(n)) => Some(f64::from(*n)),
                Some(V::LongValue(n)) => Some(*n as f64),
                _ => None,
            };
            buf.clear();
            value.encode(&mut buf).ok();
            let d = digest(&buf);
            let unchanged = self.last.get(&datum.key).is_some_and(|last| {
                let fresh = at_ms - last.at_ms < max_age_ms;
                let same = match (number, last.number, deltas.get(&datum.key)) {
                    (Some(n), Some(l), Some(min)) => (n - l).abs() < *min,
                    _ => d == last.digest,
                };
                fresh && same
            });
            if unchanged {
                out.push(i);
            } else {
                self.last.insert(
                    datum.key,
                    LastSent {
                        number,
                        digest: d,
                        at_ms,
                    },
                );
            }
        }
        out
    }
}
