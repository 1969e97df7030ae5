//! Onboarding's admin state: Tesla accounts (sealed tokens), the desired vehicles, each
//! vehicle's observed status, and token refresh requests — records of the one admin log
//! (`control::Change::PutTesla` / `DeleteTesla`), kept in memory by [`Onboarding`] on every
//! instance. Records are keyed `account/{id}`, `vehicle/{vin}`, `status/{vin}`,
//! `refresh/{id}`: the SQLite table's key and the compacted topic's record key.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::config::{FieldConfig, Preset};
use super::seal::Sealed;

/// Where a vehicle is on its way to streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnboardingState {
    /// The virtual key is not paired: the driver must open the pairing link.
    PendingKey,
    /// The config is being pushed, or pushed and not yet synced to the car.
    Configuring,
    /// The car has the config, and fleetgate has not seen a frame of it yet.
    Synced,
    /// The car has the config and its frames reach fleetgate.
    Streaming,
    /// Onboarding cannot go on without a change (see `reason`).
    Error,
    /// Being removed: the config is deleted at Tesla, then the vehicle is forgotten.
    Removing,
}

impl OnboardingState {
    /// Every state.
    pub const ALL: [OnboardingState; 6] = [
        OnboardingState::PendingKey,
        OnboardingState::Configuring,
        OnboardingState::Synced,
        OnboardingState::Streaming,
        OnboardingState::Error,
        OnboardingState::Removing,
    ];

    /// The JSON / metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OnboardingState::PendingKey => "pending_key",
            OnboardingState::Configuring => "configuring",
            OnboardingState::Synced => "synced",
            OnboardingState::Streaming => "streaming",
            OnboardingState::Error => "error",
            OnboardingState::Removing => "removing",
        }
    }
}

/// A Tesla account: the driver's OAuth grant, sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The order service's id for it.
    pub id: String,
    /// The refresh token and current access token, sealed with the token key.
    pub sealed: Sealed,
    /// Bumped with every change of the tokens (a refresh, a new grant).
    pub generation: u64,
    /// When the access token expires (ms; 0 = no access token yet).
    #[serde(default)]
    pub access_expires_ms: i64,
    /// Tesla refused the refresh token (revoked, expired): a new grant must be PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_error: Option<String>,
    /// Last change (ms).
    pub updated_ms: i64,
}

/// A vehicle that should stream: the desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleRecord {
    /// The VIN.
    pub vin: String,
    /// The account whose grant covers it.
    pub account_id: String,
    /// Its own fields (else the preset's, else the config's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldConfig>>,
    /// Its own preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Bumped by `POST …/resync`: a config pushed before it is pushed again.
    #[serde(default)]
    pub resync: u64,
    /// `DELETE` was asked: remove the config at Tesla, then forget the vehicle.
    #[serde(default)]
    pub removing: bool,
    /// First PUT (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
}

impl VehicleRecord {
    /// The fields this vehicle's config carries.
    pub fn fields_or(
        &self,
        default: &BTreeMap<String, FieldConfig>,
    ) -> BTreeMap<String, FieldConfig> {
        match (&self.fields, self.preset) {
            (Some(fields), _) => fields.clone(),
            (None, Some(preset)) => preset.fields(),
            (None, None) => default.clone(),
        }
    }
}

/// One entry of Tesla's `fleet_telemetry_errors` for a vehicle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TelemetryError {
    /// The client name the car reports.
    #[serde(default)]
    pub name: String,
    /// What failed (e.g. a certificate the car refused).
    #[serde(default)]
    pub error: String,
}

/// What the reconciler last found for a vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleStatus {
    /// The VIN.
    pub vin: String,
    /// The state.
    pub state: OnboardingState,
    /// The state before (None for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<OnboardingState>,
    /// Why it is in this state (what to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tesla's `fleet_status`: the virtual key is on the car.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_paired: Option<bool>,
    /// The car's firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// The car needs signed commands (the vehicle command protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_required: Option<bool>,
    /// Tesla's `fleet_telemetry_config`: the car has the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// The car has as many configs as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_reached: Option<bool>,
    /// The last error (of Tesla's API, or what the car reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What `fleet_telemetry_errors` lists for the car.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tesla_errors: Vec<TelemetryError>,
    /// `exp` of the config pushed (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_exp: Option<i64>,
    /// Digest of the config pushed (without `exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The vehicle's `resync` when the config was pushed.
    #[serde(default)]
    pub pushed_resync: u64,
    /// When the config was pushed (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_ms: Option<i64>,
    /// The first frame fleetgate saw of the car since it was onboarded (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_frame_ms: Option<i64>,
    /// When it entered this state (ms).
    pub since_ms: i64,
    /// State changes so far (the onboarding event's id is derived from it).
    pub seq: u64,
}

impl VehicleStatus {
    /// The status of a vehicle nobody checked yet.
    pub fn new(vin: &str, now_ms: i64) -> VehicleStatus {
        VehicleStatus {
            vin: vin.to_owned(),
            state: OnboardingState::Configuring,
            previous_state: None,
            reason: Some("not checked with Tesla yet".into()),
            key_paired: None,
            firmware: None,
            protocol_required: None,
            synced: None,
            limit_reached: None,
            last_error: None,
            tesla_errors: Vec::new(),
            config_exp: None,
            config_digest: None,
            pushed_resync: 0,
            pushed_ms: None,
            first_frame_ms: None,
            since_ms: now_ms,
            seq: 0,
        }
    }
}

/// A request (from an instance that is not the account's refresher) to refresh an account's
/// access token: Tesla refused the one of `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The account.
    pub account_id: String,
    /// The generation whose access token was refused.
    pub generation: u64,
}

/// One record of onboarding's admin state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TeslaRecord {
    /// An account.
    Account(AccountRecord),
    /// A desired vehicle.
    Vehicle(VehicleRecord),
    /// A vehicle's observed status.
    Status(VehicleStatus),
    /// A token refresh request.
    Refresh(RefreshRequest),
}

impl TeslaRecord {
    /// Its key.
    pub fn key(&self) -> String {
        match self {
            TeslaRecord::Account(a) => account_key(&a.id),
            TeslaRecord::Vehicle(v) => vehicle_key(&v.vin),
            TeslaRecord::Status(s) => status_key(&s.vin),
            TeslaRecord::Refresh(r) => refresh_key(&r.account_id),
        }
    }
}

/// Key of an account record.
pub fn account_key(id: &str) -> String {
    format!("account/{id}")
}
/// Key of a desired vehicle.
pub fn vehicle_key(vin: &str) -> String {
    format!("vehicle/{vin}")
}
/// Key of a vehicle's status.
pub fn status_key(vin: &str) -> String {
    format!("status/{vin}")
}
/// Key of an account's refresh request.
pub fn refresh_key(id: &str) -> String {
    format!("refresh/{id}")
}

/// True for a key this module writes (`account/…`, `vehicle/…`, `status/…`, `refresh/…`).
pub fn is_key(key: &str) -> bool {
    key.split_once('/').is_some_and(|(kind, id)| {
        matches!(kind, "account" | "vehicle" | "status" | "refresh") && !id.is_empty()
    })
}

/// Onboarding's state on this instance, as applied from the admin log.
#[derive(Debug, Default)]
pub struct Onboarding {
    accounts: RwLock<BTreeMap<String, AccountRecord>>,
    vehicles: RwLock<BTreeMap<String, VehicleRecord>>,
    statuses: RwLock<BTreeMap<String, VehicleStatus>>,
    refresh: RwLock<BTreeMap<String, RefreshRequest>>,
    changed: tokio::sync::Notify,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Onboarding {
    /// Applies a put.
    pub fn put(&self, record: &TeslaRecord) {
        match record {
            TeslaRecord::Account(a) => {
                write(&self.accounts).insert(a.id.clone(), a.clone());
            }
            TeslaRecord::Vehicle(v) => {
                write(&self.vehicles).insert(v.vin.clone(), v.clone());
            }
            TeslaRecord::Status(s) => {
                write(&self.statuses).insert(s.vin.clone(), s.clone());
            }
            TeslaRecord::Refresh(r) => {
                write(&self.refresh).insert(r.account_id.clone(), r.clone());
            }
        }
        self.changed.notify_waiters();
    }

    /// Applies a delete of `key`.
    pub fn delete(&self, key: &str) {
        if let Some((kind, id)) = key.split_once('/') {
            match kind {
                "account" => {
                    write(&self.accounts).remove(id);
                }
                "vehicle" => {
                    write(&self.vehicles).remove(id);
                }
                "status" => {
                    write(&self.statuses).remove(id);
                }
                "refresh" => {
                    write(&self.refresh).remove(id);
                }
                _ => {}
            }
        }
        self.changed.notify_waiters();
    }

    /// An account.
    pub fn account(&self, id: &str) -> Option<AccountRecord> {
        read(&self.accounts).get(id).cloned()
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<AccountRecord> {
        read(&self.accounts).values().cloned().collect()
    }

    /// A desired vehicle.
    pub fn vehicle(&self, vin: &str) -> Option<VehicleRecord> {
        read(&self.vehicles).get(vin).cloned()
    }

    /// Every desired vehicle.
    pub fn vehicles(&self) -> Vec<VehicleRecord> {
        read(&self.vehicles).values().cloned().collect()
    }

    /// How many desired vehicles name `account_id`.
    pub fn vehicles_of(&self, account_id: &str) -> usize {
        read(&self.vehicles)
            .values()
            .filter(|v| v.account_id == account_id)
            .count()
    }

    /// A vehicle's status.
    pub fn status(&self, vin: &str) -> Option<VehicleStatus> {
        read(&self.statuses).get(vin).cloned()
    }

    /// Every status.
    pub fn statuses(&self) -> Vec<VehicleStatus> {
        read(&self.statuses).values().cloned().collect()
    }

    /// An account's refresh request.
    pub fn refresh_request(&self, account_id: &str) -> Option<RefreshRequest> {
        read(&self.refresh).get(account_id).cloned()
    }

    /// Resolves when a record is put or deleted after this call.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Vehicles per state (for the metric).
    pub fn counts(&self) -> BTreeMap<OnboardingState, usize> {
        let statuses = read(&self.statuses);
        let mut counts = BTreeMap::new();
        for vin in read(&self.vehicles).keys() {
            let state = statuses
                .get(vin)
                .map(|s| s.state)
                .unwrap_or(OnboardingState::Configuring);
            *counts.entry(state).or_insert(0) += 1;
        }
        counts
    }
}

impl PartialOrd for OnboardingState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OnboardingState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}
