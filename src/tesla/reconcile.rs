//! The reconciler: for every desired vehicle whose rules run on this instance, bring Tesla's
//! side to what is desired and record what it found.
//!
//! One pass for a vehicle: `fleet_status` (is the virtual key paired? firmware?) →
//! `fleet_telemetry_config` (what the car has, synced?) → push a signed config when the car
//! has none, a different one, one near its `exp`, or a resync was asked → poll until synced →
//! read `fleet_telemetry_errors` while no frame arrives → `streaming` once fleetgate's ingest
//! sees the car's frames. A state change is announced as a `fleetgate.vehicle.onboarding`
//! event through the rules (in order with the car's other events; its id depends on the
//! change, not the instance), then written to the admin log; if either fails, the pass is
//! repeated and the same change gives the same event id.
//!
//! Errors: a 429 pauses the endpoint for every vehicle ([`super::fleet_api`]); a 401 marks
//! the access token refused and the next pass refreshes it; anything else backs the vehicle
//! off (exponentially, from `poll_interval_s` up to 10 minutes) without touching the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::fleet_api::{ApiError, FleetApi};
use super::jws::PartnerKey;
use super::state::{
    status_key, vehicle_key, Onboarding, OnboardingState, VehicleRecord, VehicleStatus,
};
use super::telemetry_config::{same_config, ConfigTemplate};
use super::tokens::{TokenBroker, TokenError};
use crate::control::{AdminLog, Change};
use crate::metrics as m;
use crate::rules::input::RuleInput;
use crate::rules::Fleet;
use crate::runner::{now_ms, Placement};

/// The oldest firmware that takes a config signed by the partner key (Tesla's documented
/// minimum for self-signed configs).
pub const MIN_FIRMWARE: (u32, u32) = (2024, 26);

/// What the reconciler needs besides its parts.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Between checks of a vehicle that streams or waits for its key.
    pub interval: Duration,
    /// Between checks of a vehicle being configured (and the first backoff step).
    pub poll: Duration,
    /// The pairing link's domain.
    pub partner_domain: String,
    /// The config's fixed parts.
    pub template: ConfigTemplate,
}

/// The reconciler of this instance.
pub struct Reconciler {
    onboarding: Arc<Onboarding>,
    api: Arc<FleetApi>,
    tokens: Arc<TokenBroker>,
    log: Arc<dyn AdminLog>,
    placement: Arc<dyn Placement>,
    fleet: Fleet,
    key: PartnerKey,
    settings: ReconcileSettings,
    schedule: Mutex<HashMap<String, Due>>,
}

/// When a vehicle is next checked, and what the last check saw of its desired record.
#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    failures: u32,
    seen_updated_ms: i64,
}

/// What one pass decided about the next one.
enum Next {
    /// Check again after this.
    After(Duration),
    /// A failure: back off.
    Failed,
    /// The vehicle is gone (removed at Tesla and forgotten).
    Gone,
}

impl Reconciler {
    /// A reconciler; `fleet` is the rules' fleet of this process (where a vehicle's frames
    /// land when its rules run here).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        onboarding: Arc<Onboarding>,
        api: Arc<FleetApi>,
        tokens: Arc<TokenBroker>,
        log: Arc<dyn AdminLog>,
        placement: Arc<dyn Placement>,
        fleet: Fleet,
        key: PartnerKey,
        settings: ReconcileSettings,
    ) -> Reconciler {
        Reconciler {
            onboarding,
            api,
            tokens,
            log,
            placement,
            fleet,
            key,
            settings,
            schedule: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `shutdown`: every second (or at once when the desired state changes) the
    /// vehicles due are checked, up to 8 at a time.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(
            interval_s = self.settings.interval.as_secs(),
            poll_s = self.settings.poll.as_secs(),
            "Tesla onboarding reconciler started"
        );
        loop {
            self.tokens.serve_refresh_requests().await;
            self.notice_frames().await;
            let due = self.due();
            let mut running = tokio::task::JoinSet::new();
            for vehicle in due {
                while running.len() >= 8 {
                    let _ = running.join_next().await;
                }
                let me = self.clone();
                running.spawn(async move { me.check(vehicle).await });
            }
            while running.join_next().await.is_some() {}
            self.report();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.onboarding.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The desired vehicles placed here whose check is due (or whose desired record changed).
    fn due(&self) -> Vec<VehicleRecord> {
        let now = Instant::now();
        let schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        self.onboarding
            .vehicles()
            .into_iter()
            .filter(|v| self.placement.runs_here(&v.vin))
            .filter(|v| match schedule.get(&v.vin) {
                None => true,
                Some(due) => due.at <= now || due.seen_updated_ms != v.updated_ms,
            })
            .collect()
    }

    /// Metric of vehicles per state.
    fn report(&self) {
        let counts = self.onboarding.counts();
        for state in OnboardingState::ALL {
            metrics::gauge!(m::TESLA_VEHICLES, "state" => state.as_str())
                .set(counts.get(&state).copied().unwrap_or(0) as f64);
        }
    }

    /// `synced` vehicles whose frames arrived become `streaming` now, not at their next check.
    async fn notice_frames(&self) {
        for status in self.onboarding.statuses() {
            if status.state == OnboardingState::Synced
                && self.placement.runs_here(&status.vin)
                && self.last_frame_ms(&status.vin).is_some()
            {
                if let Some(vehicle) = self.onboarding.vehicle(&status.vin) {
                    if !vehicle.removing {
                        let mut next = status.clone();
                        self.streaming(&mut next);
                        let _ = self.save(&status.vin, next).await;
                    }
                }
            }
        }
    }

    fn last_frame_ms(&self, vin: &str) -> Option<i64> {
        self.fleet
            .vehicles
            .update(vin, |s| s.last_seen_ms)
            .filter(|&ms| ms > 0)
    }

    fn streaming(&self, status: &mut VehicleStatus) {
        status.state = OnboardingState::Streaming;
        status.reason = None;
        if status.first_frame_ms.is_none() {
            status.first_frame_ms = self.last_frame_ms(&status.vin);
        }
    }

    /// One pass for one vehicle, then its next check scheduled.
    async fn check(&self, vehicle: VehicleRecord) {
        let next = self.pass(&vehicle).await;
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let failures = schedule.get(&vehicle.vin).map_or(0, |d| d.failures);
        let (wait, failures) = match next {
            Next::Gone => {
                schedule.remove(&vehicle.vin);
                return;
            }
            Next::After(wait) => (wait, 0),
            Next::Failed => {
                let step = self.settings.poll.as_secs_f64() * 2f64.powi(failures.min(10) as i32);
                let capped = step.min(600.0);
                // 50-100 % jitter: vehicles failing together do not retry together
                (
                    Duration::from_secs_f64(capped * (0.5 + fastrand::f64() * 0.5)),
                    failures + 1,
                )
            }
        };
        schedule.insert(
            vehicle.vin.clone(),
            Due {
                at: Instant::now() + wait,
                failures,
                seen_updated_ms: vehicle.updated_ms,
            },
        );
    }

    /// Records an API error on the status; 401 and 429 are handled where they say.
    async fn api_failed(
        &self,
        vin: &str,
        status: &mut VehicleStatus,
        account: &str,
        generation: u64,
        e: ApiError,
    ) -> Next {
        match &e {
            ApiError::RateLimited { retry_after, .. } => {
                return Next::After(*retry_after + Duration::from_millis(fastrand::u64(0..1000)))
            }
            ApiError::Unauthorized(_) => {
                self.tokens.rejected(account, generation).await;
                return Next::After(Duration::from_secs(1));
            }
            _ => {}
        }
        tracing::warn!(vin, error = %e, "Tesla onboarding: a Fleet API call failed (backing off)");
        status.last_error = Some(e.to_string());
        let _ = self.save(vin, status.clone()).await;
        Next::Failed
    }

    /// A Fleet API call's answer, or (its failure recorded) how the pass ends.
    async fn answer<T>(
        &self,
        vehicle: &VehicleRecord,
        generation: u64,
        status: &mut VehicleStatus,
        call: Result<T, ApiError>,
    ) -> Result<T, Next> {
        match call {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self
                .api_failed(&vehicle.vin, status, &vehicle.account_id, generation, e)
                .await),
        }
    }

    async fn pass(&self, vehicle: &VehicleRecord) -> Next {
        match self.try_pass(vehicle).await {
            Ok(next) | Err(next) => next,
        }
    }

    /// One pass; `Err` ends it early (a failed call, recorded).
    async fn try_pass(&self, vehicle: &VehicleRecord) -> Result<Next, Next> {
        let vin = vehicle.vin.as_str();
        let stored = self.onboarding.status(vin);
        let mut status = stored
            .clone()
            .unwrap_or_else(|| VehicleStatus::new(vin, now_ms()));
        if vehicle.removing && status.state != OnboardingState::Removing {
            status.state = OnboardingState::Removing;
            status.reason = Some("DELETE asked: removing the config at Tesla".into());
            if self.save(vin, status.clone()).await.is_err() {
                return Err(Next::Failed);
            }
        }
        let access = match self.tokens.access_token(&vehicle.account_id).await {
            Ok(access) => access,
            Err(TokenError::Waiting) => return Ok(Next::After(Duration::from_secs(2))),
            Err(TokenError::Api(e)) => {
                return Err(self
                    .api_failed(vin, &mut status, &vehicle.account_id, 0, e)
                    .await)
            }
            Err(TokenError::Store(e)) => {
                status.last_error = Some(e.to_string());
                return Err(Next::Failed);
            }
            Err(
                e @ (TokenError::NoAccount(_) | TokenError::Refused(_) | TokenError::Sealed(_)),
            ) => {
                if vehicle.removing {
                    // nothing can be done at Tesla without the account: forget the vehicle
                    return Ok(self.forget(vin).await);
                }
                status.state = OnboardingState::Error;
                status.reason = Some(e.to_string());
                let _ = self.save(vin, status).await;
                return Ok(Next::After(self.settings.interval));
            }
        };
        let (token, generation) = (access.token.as_str(), access.generation);
        if vehicle.removing {
            return match self.api.delete_config(token, vin).await {
                Ok(()) | Err(ApiError::Status { status: 404, .. }) => Ok(self.forget(vin).await),
                Err(e) => Err(self
                    .api_failed(vin, &mut status, &vehicle.account_id, generation, e)
                    .await),
            };
        }

        // 1. the key and the firmware
        let answered = self.api.fleet_status(token, vin).await;
        let key = self
            .answer(vehicle, generation, &mut status, answered)
            .await?;
        status.key_paired = Some(key.key_paired);
        status.firmware = key.firmware.clone();
        status.protocol_required = key.protocol_required;
        if !key.key_paired {
            return Ok(self.pending_key(vin, status).await);
        }
        if let Some(firmware) = key.firmware.as_deref().filter(|f| firmware_too_old(f)) {
            status.state = OnboardingState::Error;
            status.reason = Some(format!(
                "firmware {firmware} is older than {}.{}, the first that takes a config signed by the partner key: the car must update its software (Controls > Software)",
                MIN_FIRMWARE.0, MIN_FIRMWARE.1
            ));
            let _ = self.save(vin, status).await;
            return Ok(Next::After(self.settings.interval));
        }

        // 2. what the car has
        let answered = self.api.read_config(token, vin).await;
        let config = self
            .answer(vehicle, generation, &mut status, answered)
            .await?;
        status.synced = Some(config.synced);
        status.limit_reached = Some(config.limit_reached);
        if config.key_paired == Some(false) {
            // the car answers for a config signed by a key it does not hold
            return Ok(self.pending_key(vin, status).await);
        }
        let fields = vehicle.fields_or(&self.settings.template.default_fields);
        let wanted = self.settings.template.content(&fields);
        let reported_exp = config
            .config
            .as_ref()
            .and_then(|c| c.get("exp"))
            .and_then(serde_json::Value::as_i64)
            .or(status.config_exp);
        let renew_after_s = self.settings.template.ttl_s / 3;
        let expiring = reported_exp.is_none_or(|exp| exp - now_ms() / 1000 < renew_after_s);
        let same = config
            .config
            .as_ref()
            .is_some_and(|c| same_config(c, &wanted));
        let resync = vehicle.resync > status.pushed_resync;
        if !same || expiring || resync {
            return Ok(self.push(vehicle, status, token, generation, &fields).await);
        }
        status.config_exp = reported_exp;
        if !config.synced {
            status.state = OnboardingState::Configuring;
            status.reason = Some("Tesla holds the config; the car takes it the next time it is online (wake it, or wait)".into());
            self.read_errors(vin, &mut status, token).await;
            let _ = self.save(vin, status).await;
            return Ok(Next::After(self.settings.poll));
        }
        status.last_error = None;
        if self.last_frame_ms(vin).is_some() {
            self.streaming(&mut status);
            let _ = self.save(vin, status).await;
            return Ok(Next::After(self.settings.interval));
        }
        status.state = OnboardingState::Synced;
        status.reason = Some("the car has the config, and no frame of it reached fleetgate yet: see tesla_errors, and run `fleetgate tesla doctor`".into());
        self.read_errors(vin, &mut status, token).await;
        let _ = self.save(vin, status).await;
        Ok(Next::After(
            self.settings
                .poll
                .max(Duration::from_secs(30))
                .min(self.settings.interval),
        ))
    }

    async fn pending_key(&self, vin: &str, mut status: VehicleStatus) -> Next {
        status.state = OnboardingState::PendingKey;
        status.reason = Some(format!(
            "the virtual key is not paired: the driver opens https://tesla.com/_ak/{} on the phone with the Tesla app and approves it in the car",
            self.settings.partner_domain
        ));
        let _ = self.save(vin, status).await;
        Next::After(
            self.settings
                .poll
                .max(Duration::from_secs(30))
                .min(self.settings.interval),
        )
    }

    /// Signs and pushes the config, acting on `skipped_vehicles`.
    async fn push(
        &self,
        vehicle: &VehicleRecord,
        mut status: VehicleStatus,
        token: &str,
        generation: u64,
        fields: &std::collections::BTreeMap<String, super::config::FieldConfig>,
    ) -> Next {
        let vin = vehicle.vin.as_str();
        let exp = now_ms() / 1000 + self.settings.template.ttl_s;
        let claims = self.settings.template.claims(fields, exp);
        let jws = self.key.sign_telemetry_config(&claims);
        let result = match self.api.push_config(token, &[vin], &jws).await {
            Ok(result) => result,
            Err(e) => {
                return self
                    .api_failed(vin, &mut status, &vehicle.account_id, generation, e)
                    .await
            }
        };
        let problem = match result.skipped(vin) {
            Some("missing_key") => return self.pending_key(vin, status).await,
            Some("unsupported_hardware") => Some("Tesla skipped the car: unsupported_hardware (pre-2021 Model S and X cannot stream Fleet Telemetry)".to_owned()),
            Some("unsupported_firmware") => Some(format!("Tesla skipped the car: unsupported_firmware (it needs {}.{} or later: the car must update its software)", MIN_FIRMWARE.0, MIN_FIRMWARE.1)),
            Some("max_configs") => Some("Tesla skipped the car: max_configs (it streams to as many applications as it takes; remove another application's config, then POST …/resync)".to_owned()),
            Some(other) => Some(format!("Tesla skipped the car: {other}")),
            None if result.updated_vehicles == 0 => Some("Tesla updated no vehicle and named no reason".to_owned()),
            None => None,
        };
        if let Some(reason) = problem {
            status.state = OnboardingState::Error;
            status.reason = Some(reason.clone());
            status.last_error = Some(reason);
            let _ = self.save(vin, status).await;
            return Next::After(self.settings.interval);
        }
        metrics::counter!(m::TESLA_CONFIGS_PUSHED_TOTAL).increment(1);
        tracing::info!(vin, exp, "Tesla onboarding: signed telemetry config pushed");
        status.state = OnboardingState::Configuring;
        status.reason = Some("config pushed; waiting for the car to sync it".into());
        status.synced = Some(false);
        status.config_exp = Some(exp);
        status.config_digest = Some(self.settings.template.digest(fields));
        status.pushed_resync = vehicle.resync;
        status.pushed_ms = Some(now_ms());
        status.last_error = None;
        if self.save(vin, status).await.is_err() {
            return Next::Failed;
        }
        Next::After(self.settings.poll)
    }

    async fn read_errors(&self, vin: &str, status: &mut VehicleStatus, token: &str) {
        match self.api.errors(token, vin).await {
            Ok(errors) => {
                status.last_error = errors
                    .last()
                    .map(|e| format!("the car reports: {} ({})", e.error, e.name));
                status.tesla_errors = errors;
            }
            Err(e) => {
                tracing::debug!(vin, error = %e, "fleet_telemetry_errors not read");
            }
        }
    }

    /// The config is gone at Tesla: forget the vehicle and its status.
    async fn forget(&self, vin: &str) -> Next {
        let changes = vec![
            Change::DeleteTesla(vehicle_key(vin)),
            Change::DeleteTesla(status_key(vin)),
        ];
        match self.log.write(changes).await {
            Ok(_) => {
                tracing::info!(
                    vin,
                    "Tesla onboarding: config removed at Tesla, vehicle forgotten"
                );
                Next::Gone
            }
            Err(e) => {
                tracing::warn!(vin, error = %e, "Tesla onboarding: forgetting a removed vehicle failed (retried)");
                Next::Failed
            }
        }
    }

    /// Announces a state change (an event through the rules), then writes the status when
    /// anything in it changed. An error leaves the stored status as it was (the next pass
    /// repeats the change, with the same event id).
    async fn save(&self, vin: &str, mut status: VehicleStatus) -> Result<(), ()> {
        let stored = self.onboarding.status(vin);
        let changed_state = stored.as_ref().is_none_or(|s| s.state != status.state);
        if changed_state {
            let previous = stored.as_ref().map(|s| s.state);
            status.previous_state = previous;
            status.seq = stored.as_ref().map_or(0, |s| s.seq) + 1;
            status.since_ms = now_ms();
            let input = RuleInput::Onboarding {
                state: status.state.as_str().to_owned(),
                previous_state: previous.map(|p| p.as_str().to_owned()),
                reason: status.reason.clone(),
                seq: status.seq,
                at_ms: status.since_ms,
            };
            match self
                .placement
                .submit(vin, input, Duration::from_secs(10))
                .await
            {
                Ok(_) | Err(crate::runner::SubmitError::Pending { .. }) => {}
                Err(e) => {
                    tracing::warn!(vin, error = %e, "Tesla onboarding: the state change could not be announced (retried)");
                    return Err(());
                }
            }
            metrics::counter!(m::TESLA_STATE_CHANGES_TOTAL, "state" => status.state.as_str())
                .increment(1);
            tracing::info!(
                vin,
                state = status.state.as_str(),
                previous = previous.map_or("none", |p| p.as_str()),
                reason = status.reason.as_deref().unwrap_or(""),
                "Tesla onboarding state changed"
            );
        } else if let Some(s) = &stored {
            status.previous_state = s.previous_state;
            status.seq = s.seq;
            status.since_ms = s.since_ms;
        }
        if stored.as_ref() == Some(&status) {
            return Ok(());
        }
        match self
            .log
            .write(vec![Change::PutTesla(super::state::TeslaRecord::Status(
                status,
            ))])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(vin, error = %e, "Tesla onboarding: the vehicle's status could not be written (retried)");
                Err(())
            }
        }
    }
}

/// True when `firmware` (`2024.26.3 abcdef`) is older than [`MIN_FIRMWARE`]; an unreadable
/// version is not judged.
pub fn firmware_too_old(firmware: &str) -> bool {
    let mut parts = firmware
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(year), Some(week)) => (year, week) < MIN_FIRMWARE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_versions_are_compared_by_year_and_week() {
        assert!(firmware_too_old("2024.20.9 abc"));
        assert!(firmware_too_old("2023.44.30"));
        assert!(!firmware_too_old("2024.26"));
        assert!(!firmware_too_old("2025.2.6 1234"));
        assert!(!firmware_too_old("unknown"));
    }
}
