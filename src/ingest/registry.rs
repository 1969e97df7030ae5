//! Open vehicle connections, for the admin API (`/v1/connections`, vehicle lookups).

use dashmap::DashMap;
use serde::Serialize;

/// One open connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectionEntry {
    /// The vehicle.
    pub vin: String,
    /// Server-side connection id.
    pub connection_id: String,
    /// When the websocket opened (ms since the epoch).
    pub since_ms: i64,
    /// `X-Network-Interface` of the connection.
    pub network_interface: String,
    /// Client type from the certificate.
    pub client_type: &'static str,
}

/// Every open connection, by connection id.
#[derive(Default)]
pub struct Registry {
    open: DashMap<String, ConnectionEntry>,
}

impl Registry {
    /// Records an opened connection.
    pub fn opened(&self, entry: ConnectionEntry) {
        self.open.insert(entry.connection_id.clone(), entry);
    }

    /// Forgets a closed connection.
    pub fn closed(&self, connection_id: &str) {
        self.open.remove(connection_id);
    }

    /// Open connections, oldest first.
    pub fn list(&self) -> Vec<ConnectionEntry> {
        let mut v: Vec<ConnectionEntry> = self.open.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| {
            a.since_ms
                .cmp(&b.since_ms)
                .then_with(|| a.connection_id.cmp(&b.connection_id))
        });
        v
    }

    /// Open connections of one vehicle.
    pub fn of_vin(&self, vin: &str) -> Vec<ConnectionEntry> {
        self.list().into_iter().filter(|e| e.vin == vin).collect()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}
