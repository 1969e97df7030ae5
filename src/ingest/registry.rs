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

/// A vehicle's presence across its sockets (wifi and cellular can overlap).
#[derive(Debug, Default)]
struct Presence {
    sockets: usize,
    /// Bumped on every open, so a pending "gone?" check of an older close is void.
    generation: u64,
    /// The vehicle counts as connected (set on the first socket, cleared after the grace).
    connected: bool,
    /// When it became connected (ms).
    since_ms: i64,
}

/// Every open connection, by connection id, and each vehicle's presence.
#[derive(Default)]
pub struct Registry {
    open: DashMap<String, ConnectionEntry>,
    vins: DashMap<String, Presence>,
    /// Per connection: cancelled when a newer connection of the same vehicle takes over.
    superseded: DashMap<String, tokio_util::sync::CancellationToken>,
    /// Per connection: cancelled when the VIN lists stop allowing the vehicle.
    refused: DashMap<String, tokio_util::sync::CancellationToken>,
}

/// What registering a connection found.
#[derive(Debug)]
pub struct Opened {
    /// The vehicle just became connected.
    pub first_socket: bool,
    /// Take-over tokens of the vehicle's older open sockets.
    pub older: Vec<tokio_util::sync::CancellationToken>,
}

/// What a close means for the vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Another socket of the vehicle is still open.
    StillConnected,
    /// The last socket closed: confirm with [`Registry::gone`] after the grace period.
    LastSocket {
        /// The generation to confirm.
        generation: u64,
    },
}

impl Registry {
    /// Records an opened connection with its control tokens (`superseded`: a newer socket of
    /// the vehicle took over; `refused`: the VIN lists no longer allow it). Returns whether the
    /// vehicle just became connected (first socket, not a reconnect within the grace) and the
    /// take-over tokens of the vehicle's older sockets (newest wins).
    ///
    /// The tokens are stored before the entry becomes visible in `open`, so a concurrent
    /// newer connection that sees this entry always finds its token.
    pub fn opened(
        &self,
        entry: ConnectionEntry,
        superseded: tokio_util::sync::CancellationToken,
        refused: tokio_util::sync::CancellationToken,
    ) -> Opened {
        let id = entry.connection_id.clone();
        let vin = entry.vin.clone();
        let since = entry.since_ms;
        self.superseded.insert(id.clone(), superseded);
        self.refused.insert(id.clone(), refused);
        self.open.insert(id.clone(), entry);
        let older = self
            .open
            .iter()
            .filter(|e| e.vin == vin && e.connection_id != id)
            .filter_map(|e| self.superseded.get(&e.connection_id).map(|t| t.clone()))
            .collect();
        let mut p = self.vins.entry(vin).or_default();
        p.sockets += 1;
        p.generation += 1;
        let first_socket = if p.connected {
            false
        } else {
            p.connected = true;
            p.since_ms = since;
            true
        };
        Opened {
            first_socket,
            older,
        }
    }

    /// Closes every open connection whose VIN `refuse` says no to; returns how many.
    pub fn kick(&self, refuse: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for e in self.open.iter() {
            if refuse(&e.vin) {
                if let Some(t) = self.refused.get(&e.connection_id) {
                    t.cancel();
                    n += 1;
                }
            }
        }
        n
    }

    /// Forgets a closed connection.
    pub fn closed(&self, connection_id: &str) -> Closed {
        self.superseded.remove(connection_id);
        self.refused.remove(connection_id);
        let Some((_, entry)) = self.open.remove(connection_id) else {
            return Closed::StillConnected;
        };
        let Some(mut p) = self.vins.get_mut(&entry.vin) else {
            return Closed::StillConnected;
        };
        p.sockets = p.sockets.saturating_sub(1);
        if p.sockets == 0 {
            Closed::LastSocket {
                generation: p.generation,
            }
        } else {
            Closed::StillConnected
        }
    }

    /// After the grace period: true (with the connected duration in ms) when the vehicle is
    /// still without a socket and nothing reopened since `generation`; it is then disconnected.
    pub fn gone(&self, vin: &str, generation: u64, now_ms: i64) -> Option<i64> {
        let mut p = self.vins.get_mut(vin)?;
        if p.sockets == 0 && p.generation == generation && p.connected {
            p.connected = false;
            Some(now_ms - p.since_ms)
        } else {
            None
        }
    }

    /// Whether the vehicle counts as connected.
    pub fn is_connected(&self, vin: &str) -> bool {
        self.vins.get(vin).is_some_and(|p| p.connected)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> tokio_util::sync::CancellationToken {
        tokio_util::sync::CancellationToken::new()
    }

    fn entry(vin: &str, id: &str) -> ConnectionEntry {
        ConnectionEntry {
            vin: vin.into(),
            connection_id: id.into(),
            since_ms: 1000,
            network_interface: "wifi".into(),
            client_type: "vehicle_device",
        }
    }

    #[test]
    fn hand_over_between_sockets_is_one_connection() {
        let r = Registry::default();
        assert!(
            r.opened(entry("V", "a"), t(), t()).first_socket,
            "first socket: connected"
        );
        assert!(
            !r.opened(entry("V", "b"), t(), t()).first_socket,
            "cellular while wifi is open: no new transition"
        );
        assert_eq!(r.closed("a"), Closed::StillConnected);
        let Closed::LastSocket { generation } = r.closed("b") else {
            panic!()
        };
        // a reconnect within the grace voids the pending disconnect
        assert!(!r.opened(entry("V", "c"), t(), t()).first_socket);
        assert_eq!(r.gone("V", generation, 5000), None);
        let Closed::LastSocket { generation } = r.closed("c") else {
            panic!()
        };
        assert_eq!(r.gone("V", generation, 5000), Some(4000));
        assert!(!r.is_connected("V"));
        assert!(
            r.opened(entry("V", "d"), t(), t()).first_socket,
            "connected again after a real disconnect"
        );
    }
}
