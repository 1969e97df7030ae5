//! The control plane: the admin changes (sites, watches, VIN lists, import marks, Tesla
//! onboarding's records), the one
//! admin log they are made durable in before a write is answered, and how they reach the
//! live fleet.
//!
//! One log interface ([`AdminLog`]), two backends, one way to apply:
//! - **embedded**: the SQLite store (`store`); a change is committed there, then applied to
//!   this process's fleet;
//! - **cluster**: compacted Kafka topics shared by every instance (`cluster::shared_log`); a
//!   change is committed in a Kafka transaction and each instance's reader applies it — the
//!   writer answers once its own reader has applied it (read-your-writes).
//!
//! Start-up is the same in both modes: replay the log → [`Live::apply`], then import the
//! config's own sites and watches ([`import`]) as writes through the log, each item only when
//! it is new or changed since it was last imported (a site deleted through the API stays
//! deleted across restarts while the file's entry for it is unchanged). [`Live::apply`] is
//! the only code that changes the live sites, watches and VIN lists. Must not touch sockets
//! or the frame path, nor know a backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ingest::registry::Registry;
use crate::ingest::vins::VinPolicy;
use crate::rules::arrival::WatchSpec;
use crate::rules::sites::Site;
use crate::rules::Fleet;
use crate::runner::BoxFuture;
use crate::tesla::state::{Onboarding, TeslaRecord};

/// Which VIN list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VinList {
    /// Only these may connect (when not empty).
    Allow,
    /// These may never connect.
    Block,
}

impl VinList {
    /// `allow` / `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            VinList::Allow => "allow",
            VinList::Block => "block",
        }
    }

    /// From the path segment; None for anything else.
    pub fn parse(text: &str) -> Option<VinList> {
        match text {
            "allow" => Some(VinList::Allow),
            "block" => Some(VinList::Block),
            _ => None,
        }
    }
}

/// One admin change: what the admin API writes and every instance applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a site.
    PutSite(Site),
    /// Remove a site.
    DeleteSite(String),
    /// Create or replace a watch.
    PutWatch(WatchSpec),
    /// Remove a watch.
    DeleteWatch(String),
    /// Add a VIN to a list.
    PutVin(VinList, String),
    /// Remove a VIN from a list.
    DeleteVin(VinList, String),
    /// An item of a config file (`sites_file`, config `watches`) was imported with this
    /// content digest: imported again only when the file's entry changes.
    Imported(ImportMark),
    /// Create or replace a record of Tesla onboarding (an account, a desired vehicle, a
    /// vehicle's status, a token refresh request).
    PutTesla(TeslaRecord),
    /// Remove a record of Tesla onboarding by its key (`account/ID`, `vehicle/VIN`, …).
    DeleteTesla(String),
}

/// That an item of a config source was imported, and which version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportMark {
    /// The config source (`sites_file`, `watches`).
    pub source: String,
    /// The item's id (site id, watch id).
    pub item: String,
    /// SHA-256 (hex) of the item's content as imported.
    pub digest: String,
}

/// The digest an import mark records for an item's content.
pub fn content_digest(content: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(content).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// What changes act on: the fleet (sites, watches), the VIN policy, the open sockets
/// (closed when a list now refuses them), and the import marks.
#[derive(Clone)]
pub struct Live {
    /// Sites, watches, the vehicle table.
    pub fleet: Fleet,
    /// VIN allow / block lists.
    pub vins: Arc<VinPolicy>,
    /// Open sockets.
    pub registry: Arc<Registry>,
    /// (source, item) → digest of the version last imported.
    pub imports: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Tesla onboarding: accounts, desired vehicles, their status.
    pub onboarding: Arc<Onboarding>,
}

impl Live {
    /// Applies changes in order; returns how many connections the VIN lists now refuse and
    /// closed. Sites are re-indexed once per call, not once per site. A watch re-applied with
    /// the same spec keeps its progress.
    pub fn apply(&self, changes: &[Change]) -> usize {
        let mut sites: Option<BTreeMap<String, Site>> = None;
        let mut admin_vins = None;
        for change in changes {
            match change {
                Change::PutSite(site) => {
                    self.sites_mut(&mut sites)
                        .insert(site.id.clone(), site.clone());
                }
                Change::DeleteSite(id) => {
                    self.sites_mut(&mut sites).remove(id);
                }
                Change::PutWatch(spec) => {
                    let same = self
                        .fleet
                        .watches
                        .get(&spec.watch_id)
                        .is_some_and(|w| w.spec == *spec);
                    if same {
                        continue;
                    }
                    match spec.clone().into_watch() {
                        Ok(watch) => self.fleet.add_watch(watch),
                        Err(e) => {
                            tracing::warn!(watch_id = %spec.watch_id, error = %e, "invalid watch in the shared state skipped")
                        }
                    }
                }
                Change::DeleteWatch(id) => {
                    self.fleet.watches.remove(id);
                }
                Change::Imported(mark) => {
                    self.imports
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            (mark.source.clone(), mark.item.clone()),
                            mark.digest.clone(),
                        );
                }
                Change::PutTesla(record) => self.onboarding.put(record),
                Change::DeleteTesla(key) => self.onboarding.delete(key),
                Change::PutVin(list, vin) | Change::DeleteVin(list, vin) => {
                    let lists =
                        admin_vins.get_or_insert_with(|| (*self.vins.admin_lists()).clone());
                    let set = match list {
                        VinList::Allow => &mut lists.allow,
                        VinList::Block => &mut lists.block,
                    };
                    if matches!(change, Change::PutVin(..)) {
                        set.insert(vin.clone());
                    } else {
                        set.remove(vin);
                    }
                }
            }
        }
        if let Some(sites) = sites {
            self.fleet.sites.replace(sites.into_values().collect());
        }
        match admin_vins {
            Some(lists) => {
                self.vins.set_admin(lists);
                let vins = self.vins.clone();
                self.registry.kick(|vin| vins.refusal(vin).is_some())
            }
            None => 0,
        }
    }

    fn sites_mut<'a>(
        &self,
        sites: &'a mut Option<BTreeMap<String, Site>>,
    ) -> &'a mut BTreeMap<String, Site> {
        sites.get_or_insert_with(|| {
            self.fleet
                .sites
                .load()
                .all()
                .iter()
                .map(|s| (s.id.clone(), (**s).clone()))
                .collect()
        })
    }
}

/// Why a change was not made durable (nothing was applied then).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The disk under the store is full.
    #[error("{0}")]
    DiskFull(String),
    /// The log's backend did not take the change in time (store error, Kafka unavailable).
    #[error("{detail}")]
    Unavailable {
        /// `store` or `cluster`.
        backend: &'static str,
        /// What failed and what to do.
        detail: String,
    },
    /// A change is not valid (an import item that does not parse).
    #[error("{0}")]
    Invalid(String),
}

/// Where admin changes are made durable: the one admin log, with a SQLite and a Kafka
/// backend. [`AdminLog::write`] returns after the changes are durable (all or nothing) and
/// applied to this instance's [`Live`] (read-your-writes); the connections closed by VIN-list
/// changes on this instance are its answer.
pub trait AdminLog: Send + Sync {
    /// Makes `changes` durable, then applies them here.
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<usize, WriteError>>;
}

/// An item of a config source, for [`import`].
#[derive(Debug, Clone)]
pub struct ImportItem {
    /// Its id (site id, watch id).
    pub item: String,
    /// The change that creates it.
    pub change: Change,
    /// Its content's digest ([`content_digest`]).
    pub digest: String,
}

/// Items written per admin write by [`import`] (a large `sites_file` is many transactions,
/// each durable with its marks: an import cut short goes on where it stopped).
pub const IMPORT_CHUNK: usize = 2000;

/// Imports the items of a config `source` through the log: each item that was never imported,
/// or whose content changed since, is written with its new mark, [`IMPORT_CHUNK`] items per
/// write; items imported before in this version are left alone (if one was deleted through
/// the API, it stays deleted). Returns how many items were written.
pub async fn import(
    log: &dyn AdminLog,
    live: &Live,
    source: &str,
    items: Vec<ImportItem>,
) -> Result<usize, WriteError> {
    let marks = live
        .imports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let due: Vec<ImportItem> = items
        .into_iter()
        .filter(|item| marks.get(&(source.to_owned(), item.item.clone())) != Some(&item.digest))
        .collect();
    let total = due.len();
    let mut written = 0;
    for chunk in due.chunks(IMPORT_CHUNK) {
        let mut changes = Vec::with_capacity(chunk.len() * 2);
        for item in chunk {
            changes.push(item.change.clone());
            changes.push(Change::Imported(ImportMark {
                source: source.to_owned(),
                item: item.item.clone(),
                digest: item.digest.clone(),
            }));
        }
        log.write(changes).await?;
        written += chunk.len();
        if total > IMPORT_CHUNK {
            tracing::info!(source, written, total, "importing config items");
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that applies at once (what both backends do once durable).
    struct Direct(Live);

    impl AdminLog for Direct {
        fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<usize, WriteError>> {
            Box::pin(async move { Ok(self.0.apply(&changes)) })
        }
    }

    fn site(id: &str, lat: f64) -> Site {
        Site {
            id: id.into(),
            name: id.into(),
            kind: "merchant".into(),
            tags: Default::default(),
            shape: crate::rules::sites::Shape::Circle {
                lat,
                lon: 1.0,
                radius_m: 100.0,
            },
        }
    }

    fn items(sites: &[Site]) -> Vec<ImportItem> {
        sites
            .iter()
            .map(|s| ImportItem {
                item: s.id.clone(),
                change: Change::PutSite(s.clone()),
                digest: content_digest(&crate::rules::geojson::site_to_feature(s)),
            })
            .collect()
    }

    #[tokio::test]
    async fn an_import_writes_only_new_or_changed_items_and_a_deleted_one_stays_deleted() {
        let live = Live {
            fleet: Fleet::new(Default::default(), Vec::new()),
            vins: Arc::new(VinPolicy::new(Default::default(), Default::default())),
            registry: Arc::new(Registry::default()),
            imports: Default::default(),
            onboarding: Default::default(),
        };
        let log = Direct(live.clone());
        let file = [site("a", 1.0), site("b", 2.0)];
        assert_eq!(
            import(&log, &live, "sites_file", items(&file))
                .await
                .unwrap(),
            2
        );
        assert_eq!(live.fleet.sites.load().len(), 2);
        // deleted through the API, then the same file again (a restart): not imported again
        log.write(vec![Change::DeleteSite("a".into())])
            .await
            .unwrap();
        assert_eq!(
            import(&log, &live, "sites_file", items(&file))
                .await
                .unwrap(),
            0
        );
        assert!(live.fleet.sites.load().get("a").is_none());
        // the file's entry for `a` changes: imported again; `b` unchanged stays as it is
        let edited = [site("a", 1.5), site("b", 2.0)];
        assert_eq!(
            import(&log, &live, "sites_file", items(&edited))
                .await
                .unwrap(),
            1
        );
        assert!(live.fleet.sites.load().get("a").is_some());
    }
}
