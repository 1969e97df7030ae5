//! Access tokens of Tesla accounts: refreshed by one instance per account, persisted before
//! they are used.
//!
//! Tesla rotates the refresh token on every refresh (the old one is spent), so two refreshes
//! of one account racing each other would leave one instance holding a dead token. Hence one
//! refresher per account: the instance where the account's key (`account/{id}`) is placed,
//! like a VIN ([`crate::runner::Placement::runs_here`]; every account in embedded mode),
//! refreshing one at a time per account. It writes the rotated tokens, sealed, through the
//! admin log and waits until they are durable before the new access token is used; if that
//! write fails the new tokens are kept in memory and written again before anything else
//! (never lost while the process lives). Another instance whose access token Tesla refused
//! writes a refresh request (`refresh/{id}`) and waits for the new generation to reach it
//! through the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fleet_api::{ApiError, FleetApi};
use super::seal::{SealError, TokenKey, Tokens};
use super::state::{
    account_key, refresh_key, AccountRecord, Onboarding, RefreshRequest, TeslaRecord,
};
use crate::control::{AdminLog, Change, WriteError};
use crate::metrics as m;
use crate::runner::{now_ms, Placement};

/// An access token and the generation of the account record it came from.
pub struct Access {
    /// The bearer token.
    pub token: String,
    /// The record's generation (report it back with [`TokenBroker::rejected`]).
    pub generation: u64,
}

/// Why there is no access token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No such account.
    #[error(
        "account `{0}` does not exist: PUT /v1/tesla/accounts/{0} with the driver's refresh token"
    )]
    NoAccount(String),
    /// Tesla refused the refresh token: a new grant must be PUT.
    #[error("{0}")]
    Refused(String),
    /// Another instance refreshes this account; its new token comes through the log.
    #[error("waiting for the instance that refreshes the account's tokens")]
    Waiting,
    /// The sealed tokens do not open.
    #[error("{0}")]
    Sealed(#[from] SealError),
    /// The refresh failed for now (network, Tesla's error, a rate limit).
    #[error("{0}")]
    Api(ApiError),
    /// The rotated tokens could not be made durable yet (kept in memory, written again).
    #[error("the refreshed tokens are not durable yet: {0}")]
    Store(WriteError),
}

/// Access tokens for the reconciler.
pub struct TokenBroker {
    onboarding: Arc<Onboarding>,
    key: Arc<TokenKey>,
    api: Arc<FleetApi>,
    log: Arc<dyn AdminLog>,
    placement: Arc<dyn Placement>,
    /// One refresh at a time per account.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Generations whose access token Tesla refused (refresh before the next use).
    rejected: Mutex<HashMap<String, u64>>,
    /// Refreshed records not yet durable (written again before anything else).
    unsaved: Mutex<HashMap<String, AccountRecord>>,
}

/// Seconds before its expiry an access token is no longer used.
const EXPIRY_MARGIN_MS: i64 = 60_000;

impl TokenBroker {
    /// A broker over the accounts in `onboarding`.
    pub fn new(
        onboarding: Arc<Onboarding>,
        key: Arc<TokenKey>,
        api: Arc<FleetApi>,
        log: Arc<dyn AdminLog>,
        placement: Arc<dyn Placement>,
    ) -> TokenBroker {
        TokenBroker {
            onboarding,
            key,
            api,
            log,
            placement,
            locks: Mutex::new(HashMap::new()),
            rejected: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(HashMap::new()),
        }
    }

    /// The account record for a new grant (a refresh token from the order service): sealed,
    /// the next generation, no access token yet.
    pub fn grant_record(&self, account_id: &str, refresh_token: &str) -> AccountRecord {
        let generation = self
            .onboarding
            .account(account_id)
            .map_or(1, |a| a.generation + 1);
        AccountRecord {
            id: account_id.to_owned(),
            sealed: self.key.seal(
                account_id,
                &Tokens {
                    refresh_token: refresh_token.to_owned(),
                    access_token: None,
                },
            ),
            generation,
            access_expires_ms: 0,
            refresh_error: None,
            updated_ms: now_ms(),
        }
    }

    /// A usable access token of `account_id`, refreshed first when it is missing, expiring
    /// or was refused — here if this instance is the account's refresher, else by asking it.
    pub async fn access_token(&self, account_id: &str) -> Result<Access, TokenError> {
        self.save_unsaved(account_id).await?;
        let record = self
            .onboarding
            .account(account_id)
            .ok_or_else(|| TokenError::NoAccount(account_id.to_owned()))?;
        if let Some(e) = &record.refresh_error {
            return Err(TokenError::Refused(e.clone()));
        }
        let tokens = self.key.open(account_id, &record.sealed)?;
        if !self.needs_refresh(&record, &tokens) {
            return Ok(Access {
                token: tokens.access_token.unwrap_or_default(),
                generation: record.generation,
            });
        }
        if !self.placement.runs_here(&account_key(account_id)) {
            self.request_refresh(account_id, record.generation).await;
            return Err(TokenError::Waiting);
        }
        self.refresh(account_id, record.generation).await
    }

    fn needs_refresh(&self, record: &AccountRecord, tokens: &Tokens) -> bool {
        let refused = self
            .rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.id)
            .is_some_and(|&g| g >= record.generation)
            || self
                .onboarding
                .refresh_request(&record.id)
                .is_some_and(|r| r.generation >= record.generation);
        refused
            || tokens.access_token.is_none()
            || record.access_expires_ms <= now_ms() + EXPIRY_MARGIN_MS
    }

    /// Tesla refused the access token of `generation` (a 401): the next use refreshes.
    pub async fn rejected(&self, account_id: &str, generation: u64) {
        if self.placement.runs_here(&account_key(account_id)) {
            self.rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(account_id.to_owned(), generation);
        } else {
            self.request_refresh(account_id, generation).await;
        }
    }

    /// Writes a refresh request for `generation` unless one is there already.
    async fn request_refresh(&self, account_id: &str, generation: u64) {
        if self
            .onboarding
            .refresh_request(account_id)
            .is_some_and(|r| r.generation >= generation)
        {
            return;
        }
        let request = TeslaRecord::Refresh(RefreshRequest {
            account_id: account_id.to_owned(),
            generation,
        });
        if let Err(e) = self.log.write(vec![Change::PutTesla(request)]).await {
            tracing::warn!(account = account_id, error = %e, "could not ask for a token refresh (retried)");
        }
    }

    /// On the refresher: refreshes the accounts other instances asked for.
    pub async fn serve_refresh_requests(&self) {
        for account in self.onboarding.accounts() {
            let asked = self
                .onboarding
                .refresh_request(&account.id)
                .is_some_and(|r| r.generation >= account.generation);
            if asked
                && account.refresh_error.is_none()
                && self.placement.runs_here(&account_key(&account.id))
            {
                if let Err(e) = self.refresh(&account.id, account.generation).await {
                    tracing::warn!(account = %account.id, error = %e, "token refresh asked by another instance failed (retried)");
                }
            }
        }
    }

    /// Refreshes `account_id` unless someone did since `seen` (then uses theirs).
    async fn refresh(&self, account_id: &str, seen: u64) -> Result<Access, TokenError> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account_id.to_owned())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        self.save_unsaved(account_id).await?;
        let record = self
            .onboarding
            .account(account_id)
            .ok_or_else(|| TokenError::NoAccount(account_id.to_owned()))?;
        let tokens = self.key.open(account_id, &record.sealed)?;
        if record.generation > seen && !self.needs_refresh(&record, &tokens) {
            return Ok(Access {
                token: tokens.access_token.unwrap_or_default(),
                generation: record.generation,
            });
        }
        let count = |outcome: &'static str| {
            metrics::counter!(m::TESLA_TOKEN_REFRESHES_TOTAL, "outcome" => outcome).increment(1)
        };
        match self.api.refresh(&tokens.refresh_token).await {
            Ok(grant) => {
                count("ok");
                let fresh = Tokens {
                    refresh_token: grant.refresh_token,
                    access_token: Some(grant.access_token),
                };
                let now = now_ms();
                let next = AccountRecord {
                    id: account_id.to_owned(),
                    sealed: self.key.seal(account_id, &fresh),
                    generation: record.generation + 1,
                    access_expires_ms: now
                        + i64::try_from(grant.expires_in.min(86_400 * 30)).unwrap_or(0) * 1000,
                    refresh_error: None,
                    updated_ms: now,
                };
                // the old refresh token is spent: the new one is kept until it is durable
                self.unsaved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(account_id.to_owned(), next.clone());
                self.save_unsaved(account_id).await?;
                self.rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(account_id);
                tracing::info!(
                    account = account_id,
                    generation = next.generation,
                    "Tesla access token refreshed"
                );
                Ok(Access {
                    token: fresh.access_token.unwrap_or_default(),
                    generation: next.generation,
                })
            }
            Err(ApiError::RefreshRefused(detail)) => {
                count("refused");
                let message = ApiError::RefreshRefused(detail).to_string();
                tracing::warn!(account = account_id, error = %message, "Tesla refused the account's refresh token");
                let mut failed = record.clone();
                failed.refresh_error = Some(message.clone());
                failed.updated_ms = now_ms();
                self.log
                    .write(vec![
                        Change::PutTesla(TeslaRecord::Account(failed)),
                        Change::DeleteTesla(refresh_key(account_id)),
                    ])
                    .await
                    .map_err(TokenError::Store)?;
                Err(TokenError::Refused(message))
            }
            Err(e) => {
                count("failed");
                Err(TokenError::Api(e))
            }
        }
    }

    /// Writes a refreshed record still only in memory (and drops the refresh request it
    /// answers); an error leaves it there for the next call.
    async fn save_unsaved(&self, account_id: &str) -> Result<(), TokenError> {
        let pending = self
            .unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account_id)
            .cloned();
        let Some(record) = pending else {
            return Ok(());
        };
        if self
            .onboarding
            .account(account_id)
            .is_none_or(|current| current.generation >= record.generation)
        {
            // a new grant was PUT meanwhile (or the account deleted): it wins
            self.unsaved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(account_id);
            return Ok(());
        }
        let mut changes = vec![Change::PutTesla(TeslaRecord::Account(record.clone()))];
        if self.onboarding.refresh_request(account_id).is_some() {
            changes.push(Change::DeleteTesla(refresh_key(account_id)));
        }
        match self.log.write(changes).await {
            Ok(_) => {
                let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
                if unsaved.get(account_id) == Some(&record) {
                    unsaved.remove(account_id);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(account = account_id, error = %e, "the refreshed Tesla tokens could not be made durable: kept in memory and written again");
                Err(TokenError::Store(e))
            }
        }
    }
}
