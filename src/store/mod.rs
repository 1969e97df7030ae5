//! The durable store of embedded mode for sites, watches, the admin VIN lists and the
//! vehicles' rule state (written by [`journal`]): SQLite (bundled) in WAL mode with
//! `synchronous=FULL`, so a write that returned is on disk and survives `kill -9`.
//! Sites are kept as GeoJSON features, watches as their JSON spec. Blocking: call from
//! `spawn_blocking` in async code.

pub mod journal;

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
            }
        }
        tx.commit()?;
        Ok(())
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

    /// Writes vehicles' rule states in one transaction.
    pub fn put_rule_states(
        &self,
        states: &[(String, crate::rules::RuleState)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        for (vin, state) in states {
            let record = serde_json::to_string(state).unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO rule_state (vin, record, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(vin) DO UPDATE SET record = excluded.record, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![vin, record, now])?;
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
