//! The control plane: the admin changes (sites, watches, VIN lists), where they are made
//! durable before a write is answered, and how they reach the live fleet.
//!
//! Two homes for the changes, one way to apply them:
//! - **embedded** ([`ControlPlane::Local`]): the SQLite store; a change is committed there,
//!   then applied to this process's fleet;
//! - **cluster** ([`ControlPlane::Cluster`]): compacted Kafka topics shared by every instance
//!   of the cluster ([`crate::cluster::shared_log`]); a change is committed to Kafka in a transaction, and
//!   each instance's reader applies it — the writer answers once its own reader has applied
//!   it (read-your-writes).
//!
//! Either way [`Live::apply`] is the only code that changes the live sites, watches and VIN
//! lists from a change. Must not touch sockets or the frame path.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ingest::registry::Registry;
use crate::ingest::vins::VinPolicy;
use crate::rules::arrival::WatchSpec;
use crate::rules::sites::Site;
use crate::rules::Fleet;
use crate::store::{Store, StoreError};

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
}

/// What changes act on: the fleet (sites, watches), the VIN policy, and the open sockets
/// (closed when a list now refuses them).
#[derive(Clone)]
pub struct Live {
    /// Sites, watches, the vehicle table.
    pub fleet: Fleet,
    /// VIN allow / block lists.
    pub vins: Arc<VinPolicy>,
    /// Open sockets.
    pub registry: Arc<Registry>,
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
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka did not take the change (or it could not be read back in time).
    #[error("{0}")]
    Cluster(#[from] crate::kafka::Error),
    /// The blocking write task died.
    #[error("the write task failed: {0}")]
    Task(String),
}

/// Where admin changes are made durable.
#[derive(Clone)]
pub enum ControlPlane {
    /// Embedded mode: the SQLite store, applied to this process.
    Local(Arc<Store>),
    /// Cluster mode: the shared compacted topics.
    Cluster(Arc<crate::cluster::shared_log::SharedLog>),
}

impl ControlPlane {
    /// Makes `changes` durable (all or nothing), then returns once this instance applies them
    /// to `live`. Returns the connections closed by VIN-list changes (this instance's).
    pub async fn write(&self, live: &Live, changes: Vec<Change>) -> Result<usize, WriteError> {
        match self {
            ControlPlane::Local(store) => {
                let store = store.clone();
                let stored = changes.clone();
                tokio::task::spawn_blocking(move || store.apply(&stored))
                    .await
                    .map_err(|e| WriteError::Task(e.to_string()))??;
                Ok(live.apply(&changes))
            }
            ControlPlane::Cluster(log) => Ok(log.write(changes).await?),
        }
    }

    /// True in cluster mode.
    pub fn is_cluster(&self) -> bool {
        matches!(self, ControlPlane::Cluster(_))
    }
}
