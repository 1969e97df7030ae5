//! Open vehicle connections, for the admin API (`/v1/connections`, vehicle lookups).

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// One open connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
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
    pub client_type: String,
    /// The client's `X-TXID` header, when it sent one (not an id: sockets may share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_txid: Option<String>,
    /// Cluster mode: the instance holding the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// A vehicle's presence across its sockets (wifi and cellular can overlap).
#[derive(Debug, Default)]
struct Presence {
    /// Open sockets: connection id and its take-over token, oldest first.
    sockets: Vec<(String, tokio_util::sync::CancellationToken)>,
    /// Bumped on every open, so a pending "gone?" check of an older close is void.
    generation: u64,
    /// The vehicle counts as connected (set on the first socket, cleared after the grace).
    connected: bool,
    /// When it became connected (ms).
    since_ms: i64,
}

/// An open connection and the token that closes it when the VIN lists refuse it.
struct Open {
    entry: ConnectionEntry,
    refused: tokio_util::sync::CancellationToken,
}

/// Every open connection, by connection id, and each vehicle's presence. Opening and closing
/// cost O(sockets of that vehicle), never a scan of all connections; no guard of one map is
/// held while another is touched.
#[derive(Default)]
pub struct Registry {
    open: DashMap<String, Open>,
    vins: DashMap<String, Presence>,
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
    pub fn opened(
        &self,
        entry: ConnectionEntry,
        superseded: tokio_util::sync::CancellationToken,
        refused: tokio_util::sync::CancellationToken,
    ) -> Opened {
        let id = entry.connection_id.clone();
        let vin = entry.vin.clone();
        let since = entry.since_ms;
        self.open.insert(id.clone(), Open { entry, refused });
        let mut p = self.vins.entry(vin).or_default();
        let older = p.sockets.iter().map(|(_, t)| t.clone()).collect();
        p.sockets.push((id, superseded));
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
        let tokens: Vec<_> = self
            .open
            .iter()
            .filter(|o| refuse(&o.entry.vin))
            .map(|o| o.refused.clone())
            .collect();
        for t in &tokens {
            t.cancel();
        }
        tokens.len()
    }

    /// Forgets a closed connection.
    pub fn closed(&self, connection_id: &str) -> Closed {
        let Some((_, open)) = self.open.remove(connection_id) else {
            return Closed::StillConnected;
        };
        let Some(mut p) = self.vins.get_mut(&open.entry.vin) else {
            return Closed::StillConnected;
        };
        p.sockets.retain(|(id, _)| id != connection_id);
        if p.sockets.is_empty() {
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
        if p.sockets.is_empty() && p.generation == generation && p.connected {
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
        let mut v: Vec<ConnectionEntry> = self.open.iter().map(|o| o.entry.clone()).collect();
        v.sort_by(|a, b| {
            a.since_ms
                .cmp(&b.since_ms)
                .then_with(|| a.connection_id.cmp(&b.connection_id))
        });
        v
    }

    /// Open connections of one vehicle, oldest first.
    pub fn of_vin(&self, vin: &str) -> Vec<ConnectionEntry> {
        let ids: Vec<String> = self
            .vins
            .get(vin)
            .map(|p| p.sockets.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.open.get(id).map(|o| o.entry.clone()))
            .collect()
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
            client_type: "vehicle_device".into(),
            instance: None,
            client_txid: None,
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

    #[test]
    fn a_newer_socket_gets_the_older_ones_tokens_and_kick_closes_by_vin() {
        let r = Registry::default();
        let (a_super, a_refused) = (t(), t());
        assert!(r
            .opened(entry("V", "a"), a_super.clone(), a_refused.clone())
            .older
            .is_empty());
        let older = r.opened(entry("V", "b"), t(), t()).older;
        assert_eq!(older.len(), 1);
        older[0].cancel();
        assert!(a_super.is_cancelled(), "the older socket's take-over token");
        r.opened(entry("W", "c"), t(), t());
        assert_eq!(r.of_vin("V").len(), 2);
        assert_eq!(r.kick(|vin| vin == "V"), 2);
        assert!(a_refused.is_cancelled());
        assert_eq!(r.len(), 3);
    }
}
