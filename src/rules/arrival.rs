//! Watches: what an order service registers for a vehicle and a site, and the once-each
//! progression approaching → arrived → charge_complete, or expired.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// A watch as configured or posted to the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    /// Id chosen by the owner (unique).
    #[schema(min_length = 1, max_length = 200)]
    pub watch_id: String,
    /// The vehicle.
    #[schema(min_length = 1, max_length = 64)]
    pub vin: String,
    /// The site to arrive at.
    #[schema(min_length = 1)]
    pub site_id: String,
    /// SoC that makes charging "complete" (else the car's ChargeLimitSoc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub target_soc: Option<f64>,
    /// Minutes out for `arrival.approaching` (default from `fleetgate.rules.eta_notify_minutes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1440)]
    pub notify_eta_minutes: Option<f64>,
    /// RFC 3339 time after which the watch ends with `arrival.expired`.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Where a watch stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WatchProgress {
    /// `arrival.approaching` was emitted.
    pub approached: bool,
    /// When `arrival.arrived` was emitted (ms).
    pub arrived_at_ms: Option<i64>,
    /// `arrival.charge_complete` was emitted.
    pub charge_complete: bool,
    /// The source that saw the arrival first (`fleet_telemetry`, `smartcar`, `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_source: Option<String>,
    /// SoC when it arrived, as that source knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc_at_arrival: Option<f64>,
    /// Sources that reported the arrival after the first (recorded, never re-emitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later_sources: Vec<String>,
}

impl WatchProgress {
    /// Notes that `source` also saw the arrival (once per source; the first one is not noted).
    pub fn saw_arrival(&mut self, source: &str) {
        if self.arrival_source.as_deref() != Some(source)
            && !self.later_sources.iter().any(|s| s == source)
        {
            self.later_sources.push(source.to_owned());
        }
    }
}

/// A watch with its parsed expiry and progress.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Watch {
    /// The spec.
    #[serde(flatten)]
    pub spec: WatchSpec,
    /// `expires_at` in ms.
    #[serde(skip)]
    pub expires_at_ms: i64,
    /// Progress.
    pub progress: WatchProgress,
}

/// Why a watch spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WatchError {
    /// Field.
    pub field: &'static str,
    /// Problem.
    pub problem: String,
}

impl WatchSpec {
    /// Validates and parses the spec.
    pub fn into_watch(self) -> Result<Watch, WatchError> {
        let bad = |field, problem: &str| WatchError {
            field,
            problem: problem.to_owned(),
        };
        if self.watch_id.trim().is_empty() || self.watch_id.len() > 200 {
            return Err(bad("watch_id", "must be 1 to 200 characters"));
        }
        if self.vin.trim().is_empty() || self.vin.len() > 64 {
            return Err(bad("vin", "must be 1 to 64 characters"));
        }
        if self.site_id.trim().is_empty() {
            return Err(bad("site_id", "must not be empty"));
        }
        if let Some(t) = self.target_soc {
            if !t.is_finite() || !(0.0..=100.0).contains(&t) {
                return Err(bad("target_soc", "must be within [0, 100]"));
            }
        }
        if let Some(m) = self.notify_eta_minutes {
            if !m.is_finite() || !(0.0..=1440.0).contains(&m) {
                return Err(bad("notify_eta_minutes", "must be within [0, 1440]"));
            }
        }
        let expires = time::OffsetDateTime::parse(
            &self.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| WatchError {
            field: "expires_at",
            problem: format!("not an RFC 3339 time: {e}"),
        })?;
        Ok(Watch {
            expires_at_ms: (expires.unix_timestamp_nanos() / 1_000_000) as i64,
            spec: self,
            progress: WatchProgress::default(),
        })
    }
}

/// Problems (key, problem) of a list of watches (the config's `fleetgate.watches`): each spec
/// valid, no id twice.
pub fn spec_problems(specs: &[WatchSpec], key: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, w) in specs.iter().enumerate() {
        if let Err(e) = w.clone().into_watch() {
            out.push((format!("{key}[{i}].{}", e.field), e.problem));
        }
        if !ids.insert(&w.watch_id) {
            out.push((
                format!("{key}[{i}].watch_id"),
                format!("duplicate `{}`", w.watch_id),
            ));
        }
    }
    out
}

/// The live watches, by VIN. Editable at run time.
#[derive(Default)]
pub struct WatchSet {
    by_vin: DashMap<String, Vec<Watch>>,
}

impl WatchSet {
    /// Adds or replaces a watch (by id).
    pub fn upsert(&self, watch: Watch) {
        self.remove(&watch.spec.watch_id);
        self.by_vin
            .entry(watch.spec.vin.clone())
            .or_default()
            .push(watch);
    }

    /// Removes a watch; returns it when it existed.
    pub fn remove(&self, watch_id: &str) -> Option<Watch> {
        let mut found = None;
        for mut entry in self.by_vin.iter_mut() {
            if let Some(i) = entry.iter().position(|w| w.spec.watch_id == watch_id) {
                found = Some(entry.remove(i));
                break;
            }
        }
        self.by_vin.retain(|_, v| !v.is_empty());
        found
    }

    /// The progress of the VIN's watches, by watch id.
    pub fn progress_of(&self, vin: &str) -> std::collections::BTreeMap<String, WatchProgress> {
        self.by_vin
            .get(vin)
            .map(|ws| {
                ws.iter()
                    .map(|w| (w.spec.watch_id.clone(), w.progress.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets the progress of the VIN's watches from `progress` (watches not in it start over).
    pub fn set_progress_of(
        &self,
        vin: &str,
        progress: &std::collections::BTreeMap<String, WatchProgress>,
    ) {
        if let Some(mut ws) = self.by_vin.get_mut(vin) {
            for w in ws.iter_mut() {
                w.progress = progress.get(&w.spec.watch_id).cloned().unwrap_or_default();
            }
        }
    }

    /// A copy of a watch.
    pub fn get(&self, watch_id: &str) -> Option<Watch> {
        self.by_vin
            .iter()
            .find_map(|e| e.iter().find(|w| w.spec.watch_id == watch_id).cloned())
    }

    /// Copies of every watch, optionally filtered.
    pub fn list(&self, vin: Option<&str>, site_id: Option<&str>) -> Vec<Watch> {
        let mut out: Vec<Watch> = self
            .by_vin
            .iter()
            .filter(|e| vin.is_none_or(|v| e.key() == v))
            .flat_map(|e| e.value().clone())
            .filter(|w| site_id.is_none_or(|s| w.spec.site_id == s))
            .collect();
        out.sort_by(|a, b| a.spec.watch_id.cmp(&b.spec.watch_id));
        out
    }

    /// Runs `f` on the VIN's watches (if any) under that shard's lock; `f` must not touch
    /// other maps. Watches `f` marks by returning false from `retain` are removed.
    pub fn with_vin<R>(&self, vin: &str, f: impl FnOnce(&mut Vec<Watch>) -> R) -> Option<R> {
        let mut entry = self.by_vin.get_mut(vin)?;
        Some(f(&mut entry))
    }

    /// VINs with at least one watch.
    pub fn vins(&self) -> Vec<String> {
        self.by_vin.iter().map(|e| e.key().clone()).collect()
    }

    /// Number of watches.
    pub fn len(&self) -> usize {
        self.by_vin.iter().map(|e| e.len()).sum()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
