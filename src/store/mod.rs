//! The durable store of embedded mode: the admin log's SQLite backend (sites, watches, the
//! admin VIN lists, import marks, Tesla onboarding's records) and the rule journal's (every
//! vehicle's rule state, written by the local placement's commits: [`crate::runner::local::StateBackend`]). SQLite (bundled)
//! in WAL mode with `synchronous=FULL`, so a write that returned is on disk and survives
//! `kill -9`. Sites are kept as GeoJSON features, watches as their JSON spec. Blocking: call
//! from `spawn_blocking` in async code.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::rules::arrival::WatchSpec;
use crate::rules::geojson::{site_from_feature, site_to_feature};
use crate::rules::sites::Site;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (disk full, I/O, corruption).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("store: row `{id}` is unreadable: {detail}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What failed.
        detail: String,
    },
    /// The data folder could not be created.
    #[error("store: cannot create {path}: {source}")]
    Dir {
        /// Folder.
        path: String,
        /// Error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the disk is full (admin writes answer 507).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

/// Sites and watches on disk.
pub struct Store {
    conn: Mutex<Connection>,
    durable: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY,
    feature TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vin_lists (
    list TEXT NOT NULL,
    vin TEXT NOT NULL,
    PRIMARY KEY (list, vin)
);
CREATE TABLE IF NOT EXISTS watches (
    watch_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS imports (
    source TEXT NOT NULL,
    item TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (source, item)
);
CREATE TABLE IF NOT EXISTS tesla (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_state (
    vin TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) `data_dir/fleetgate.db`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(data_dir.join("fleetgate.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
            durable: true,
        })
    }

    /// An in-memory store (no `data_dir`): works, but nothing survives a restart.
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
            durable: false,
        })
    }

    /// True when writes reach the disk.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes admin changes durable in one transaction (all or nothing).
    pub fn apply(&self, changes: &[crate::control::Change]) -> Result<(), StoreError> {
        use crate::control::Change;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        for change in changes {
            match change {
                Change::PutSite(site) => {
                    let feature = serde_json::to_string(&site_to_feature(site)).unwrap_or_default();
                    tx.prepare_cached(
                        "INSERT INTO sites (id, feature, updated_at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT(id) DO UPDATE SET feature = excluded.feature, updated_at_ms = excluded.updated_at_ms",
                    )?
                    .execute(params![site.id, feature, now])?;
                }
                Change::DeleteSite(id) => {
                    tx.prepare_cached("DELETE FROM sites WHERE id = ?1")?
                        .execute(params![id])?;
                }
                Change::PutWatch(spec) => {
                    let text = serde_json::to_string(spec).unwrap_or_default();
                    tx.prepare_cached(
                        "INSERT INTO watches (watch_id, spec, updated_at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT(watch_id) DO UPDATE SET spec = excluded.spec, updated_at_ms = excluded.updated_at_ms",
                    )?
                    .execute(params![spec.watch_id, text, now])?;
                }
                Change::DeleteWatch(id) => {
                    tx.prepare_cached("DELETE FROM watches WHERE watch_id = ?1")?
                        .execute(params![id])?;
                }
                Change::PutVin(list, vin) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO vin_lists (list, vin) VALUES (?1, ?2)",
                    )?
                    .execute(params![list.as_str(), vin])?;
                }
                Change::DeleteVin(list, vin) => {
                    tx.prepare_cached("DELETE FROM vin_lists WHERE list = ?1 AND vin = ?2")?
                        .execute(params![list.as_str(), vin])?;
                }
                Change::PutTesla(record) => {
                    let text = serde_json::to_string(record).unwrap_or_default();
                    tx.prepare_cached(
                        "INSERT INTO tesla (key, record) VALUES (?1, ?2)
                         ON CONFLICT(key) DO UPDATE SET record = excluded.record",
                    )?
                    .execute(params![record.key(), text])?;
                }
                Change::DeleteTesla(key) => {
                    tx.prepare_cached("DELETE FROM tesla WHERE key = ?1")?
                        .execute(params![key])?;
                }
                Change::Imported(mark) => {
                    tx.prepare_cached(
                        "INSERT INTO imports (source, item, digest) VALUES (?1, ?2, ?3)
                         ON CONFLICT(source, item) DO UPDATE SET digest = excluded.digest",
                    )?
                    .execute(params![mark.source, mark.item, mark.digest])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every admin change the store holds, as the changes that make it (start-up replays
    /// them through `Live::apply`, like cluster mode replays its topics).
    pub fn replay(&self, default_radius_m: f64) -> Result<Vec<crate::control::Change>, StoreError> {
        use crate::control::{Change, ImportMark, VinList};
        let mut changes: Vec<Change> = self
            .sites(default_radius_m)?
            .into_iter()
            .map(Change::PutSite)
            .collect();
        changes.extend(self.watches()?.into_iter().map(Change::PutWatch));
        let lists = self.vin_lists()?;
        changes.extend(
            lists
                .allow
                .into_iter()
                .map(|v| Change::PutVin(VinList::Allow, v)),
        );
        changes.extend(
            lists
                .block
                .into_iter()
                .map(|v| Change::PutVin(VinList::Block, v)),
        );
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT source, item, digest FROM imports")?;
        let rows = stmt.query_map([], |r| {
            Ok(ImportMark {
                source: r.get(0)?,
                item: r.get(1)?,
                digest: r.get(2)?,
            })
        })?;
        for row in rows {
            changes.push(Change::Imported(row?));
        }
        let mut stmt = conn.prepare("SELECT key, record FROM tesla ORDER BY key")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (key, text) = row?;
            let record: crate::tesla::state::TeslaRecord =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    id: key.clone(),
                    detail: e.to_string(),
                })?;
            changes.push(Change::PutTesla(record));
        }
        Ok(changes)
    }

    /// Every site.
    pub fn sites(&self, default_radius_m: f64) -> Result<Vec<Site>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, feature FROM sites ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            let corrupt = |detail: String| StoreError::Corrupt {
                id: id.clone(),
                detail,
            };
            let feature: geojson::Feature =
                serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            out.push(
                site_from_feature(&feature, default_radius_m)
                    .map_err(|e| corrupt(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// The VIN lists managed through the admin API.
    pub fn vin_lists(&self) -> Result<crate::ingest::vins::VinLists, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT list, vin FROM vin_lists")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut lists = crate::ingest::vins::VinLists::default();
        for row in rows {
            let (list, vin) = row?;
            match list.as_str() {
                "allow" => lists.allow.insert(vin),
                _ => lists.block.insert(vin),
            };
        }
        Ok(lists)
    }

    /// Writes vehicles' rule states (None: deletes it) and deletes the watches that ended,
    /// in one transaction.
    pub fn put_rule_states(
        &self,
        states: &[(String, Option<crate::rules::RuleState>)],
        ended_watches: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        for (vin, state) in states {
            match state {
                Some(state) => {
                    let record = serde_json::to_string(state).unwrap_or_default();
                    tx.prepare_cached(
                        "INSERT INTO rule_state (vin, record, updated_at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT(vin) DO UPDATE SET record = excluded.record, updated_at_ms = excluded.updated_at_ms",
                    )?
                    .execute(params![vin, record, now])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM rule_state WHERE vin = ?1")?
                        .execute(params![vin])?;
                }
            }
        }
        for id in ended_watches {
            tx.prepare_cached("DELETE FROM watches WHERE watch_id = ?1")?
                .execute(params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored rule state (an unreadable row is skipped with a warning: that vehicle's
    /// rules start over).
    pub fn rule_states(&self) -> Result<Vec<(String, crate::rules::RuleState)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT vin, record FROM rule_state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (vin, text) = row?;
            match serde_json::from_str(&text) {
                Ok(state) => out.push((vin, state)),
                Err(e) => {
                    tracing::warn!(vin, error = %e, "stored rule state unreadable; the vehicle's rules start over")
                }
            }
        }
        Ok(out)
    }

    /// A watch by id.
    pub fn watch(&self, watch_id: &str) -> Result<Option<WatchSpec>, StoreError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT spec FROM watches WHERE watch_id = ?1",
                params![watch_id],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
                id: watch_id.to_owned(),
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Every watch.
    pub fn watches(&self) -> Result<Vec<WatchSpec>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT watch_id, spec FROM watches ORDER BY watch_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            out.push(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    id,
                    detail: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }
}

/// The admin log's SQLite backend: a write is one store transaction, then applied to this
/// process's live fleet.
pub struct SqliteAdminLog {
    /// The store.
    pub store: std::sync::Arc<Store>,
    /// What the changes act on.
    pub live: crate::control::Live,
}

impl crate::control::AdminLog for SqliteAdminLog {
    fn write(
        &self,
        changes: Vec<crate::control::Change>,
    ) -> crate::runner::BoxFuture<'_, Result<usize, crate::control::WriteError>> {
        use crate::control::WriteError;
        Box::pin(async move {
            let store = self.store.clone();
            let stored = changes.clone();
            tokio::task::spawn_blocking(move || store.apply(&stored))
                .await
                .map_err(|e| WriteError::Unavailable {
                    backend: "store",
                    detail: format!("the store's write task failed: {e}"),
                })?
                .map_err(|e| {
                    tracing::error!(error = %e, "admin store write failed");
                    if e.is_disk_full() {
                        WriteError::DiskFull(
                            "the data_dir disk is full; nothing was written".into(),
                        )
                    } else {
                        WriteError::Unavailable {
                            backend: "store",
                            detail: format!("{e}; nothing was written"),
                        }
                    }
                })?;
            Ok(self.live.apply(&changes))
        })
    }
}

impl crate::runner::local::StateBackend for Store {
    fn commit(
        &self,
        states: &[(String, Option<crate::rules::RuleState>)],
        ended_watches: &[String],
    ) -> Result<(), String> {
        self.put_rule_states(states, ended_watches)
            .map_err(|e| e.to_string())
    }

    fn restore(&self) -> Result<Vec<(String, crate::rules::RuleState)>, String> {
        self.rule_states().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Change, VinList};
    use crate::rules::sites::Shape;

    #[test]
    fn sites_and_watches_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let site = Site {
                id: "a".into(),
                name: "A".into(),
                kind: "charger".into(),
                tags: Default::default(),
                shape: Shape::Circle {
                    lat: 1.0,
                    lon: 2.0,
                    radius_m: 30.0,
                },
            };
            store
                .apply(&[
                    Change::PutSite(site),
                    Change::PutWatch(WatchSpec {
                        watch_id: "w".into(),
                        vin: "V".into(),
                        site_id: "a".into(),
                        target_soc: Some(80.0),
                        notify_eta_minutes: None,
                        expires_at: "2030-01-01T00:00:00Z".into(),
                    }),
                    Change::PutVin(VinList::Block, "B".into()),
                ])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let sites = store.sites(250.0).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].kind, "charger");
        assert_eq!(store.watches().unwrap()[0].target_soc, Some(80.0));
        assert!(store.vin_lists().unwrap().block.contains("B"));
        store
            .apply(&[
                Change::DeleteSite("a".into()),
                Change::DeleteWatch("w".into()),
                Change::DeleteVin(VinList::Block, "B".into()),
            ])
            .unwrap();
        assert!(store.sites(250.0).unwrap().is_empty());
        assert!(store.watch("w").unwrap().is_none());
        assert!(store.vin_lists().unwrap().block.is_empty());
    }
}
