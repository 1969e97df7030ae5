//! VIN allow / block lists: from the config (`fleetgate.vins`), Tesla's `data_connectors.file`
//! (`vins_allowed`, re-read when the file changes) and the admin API (durable),
//! checked right after the handshake; a change closes the connections it now refuses.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// An allow list and a block list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VinLists {
    /// When not empty, only these VINs may connect.
    #[serde(default)]
    pub allow: BTreeSet<String>,
    /// These VINs may never connect (wins over `allow`).
    #[serde(default)]
    pub block: BTreeSet<String>,
}

impl VinLists {
    /// Why `vin` is refused, if it is (a metric label).
    pub fn refusal(&self, vin: &str) -> Option<&'static str> {
        if self.block.contains(vin) {
            Some("vin_blocked")
        } else if !self.allow.is_empty() && !self.allow.contains(vin) {
            Some("vin_not_allowed")
        } else {
            None
        }
    }

    fn union(&self, other: &VinLists) -> VinLists {
        VinLists {
            allow: self.allow.union(&other.allow).cloned().collect(),
            block: self.block.union(&other.block).cloned().collect(),
        }
    }
}

/// Reads a Tesla `data_connectors.file` VIN file: `{"vins_allowed": ["VIN", ...]}`.
pub fn read_allowed_file(path: &std::path::Path) -> Result<BTreeSet<String>, String> {
    #[derive(Deserialize)]
    struct AllowedFile {
        vins_allowed: BTreeSet<String>,
    }
    /// A VIN list is small; anything larger is not one (and is never read whole).
    const MAX_BYTES: u64 = 64 << 20;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return Err(format!(
            "{} is not a regular file of at most {MAX_BYTES} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str::<AllowedFile>(&text)
        .map(|f| f.vins_allowed)
        .map_err(|e| {
            format!(
                "{} is not {{\"vins_allowed\": [\"VIN\", ...]}}: {e}",
                path.display()
            )
        })
}

/// The effective lists: the config's, the data-connector file's and the admin API's, swapped
/// atomically on change.
pub struct VinPolicy {
    config: VinLists,
    file: ArcSwap<VinLists>,
    admin: ArcSwap<VinLists>,
    effective: ArcSwap<VinLists>,
}

impl VinPolicy {
    /// A policy from the config lists and the stored admin lists.
    pub fn new(config: VinLists, admin: VinLists) -> Self {
        let effective = config.union(&admin);
        Self {
            config,
            file: ArcSwap::from_pointee(VinLists::default()),
            admin: ArcSwap::from_pointee(admin),
            effective: ArcSwap::from_pointee(effective),
        }
    }

    fn recompute(&self) {
        let lists = self
            .config
            .union(&self.file.load())
            .union(&self.admin.load());
        self.effective.store(Arc::new(lists));
    }

    /// Replaces the allow list read from the `data_connectors.file` connector.
    pub fn set_file_allowed(&self, allow: BTreeSet<String>) {
        self.file.store(Arc::new(VinLists {
            allow,
            block: BTreeSet::new(),
        }));
        self.recompute();
    }

    /// Why `vin` is refused now, if it is.
    pub fn refusal(&self, vin: &str) -> Option<&'static str> {
        self.effective.load().refusal(vin)
    }

    /// The lists the admin API manages.
    pub fn admin_lists(&self) -> Arc<VinLists> {
        self.admin.load_full()
    }

    /// The effective lists (config ∪ admin).
    pub fn effective(&self) -> Arc<VinLists> {
        self.effective.load_full()
    }

    /// Replaces the admin lists (after they were stored).
    pub fn set_admin(&self, admin: VinLists) {
        self.admin.store(Arc::new(admin));
        self.recompute();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_wins_and_an_empty_allow_list_allows_all() {
        let lists = |allow: &[&str], block: &[&str]| VinLists {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            block: block.iter().map(|s| s.to_string()).collect(),
        };
        let p = VinPolicy::new(lists(&[], &["BAD"]), VinLists::default());
        assert_eq!(p.refusal("BAD"), Some("vin_blocked"));
        assert_eq!(p.refusal("ANY"), None);
        p.set_admin(lists(&["GOOD", "BAD"], &[]));
        assert_eq!(p.refusal("ANY"), Some("vin_not_allowed"));
        assert_eq!(p.refusal("GOOD"), None);
        assert_eq!(
            p.refusal("BAD"),
            Some("vin_blocked"),
            "config block wins over admin allow"
        );
    }
}
