//! Open vehicle connections, for the admin API (`/v1/connections`, vehicle lookups), with
//! each connection's stop signal (take-over, VIN-list refusal, shutdown).

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::stop::{StopReason, StopSignal};

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
    /// Open sockets: connection id and its stop signal, oldest first.
    sockets: Vec<(String, Arc<StopSignal>)>,
    /// Bumped on every open, so a pending "gone?" check of an older close is void.
    generation: u64,
    /// The vehicle counts as connected (set on the first socket, cleared after the grace).
    connected: bool,
    /// When it became connected (ms).
    since_ms: i64,
}

/// An open connection and its stop signal.
struct Open {
    entry: ConnectionEntry,
    stop: Arc<StopSignal>,
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
    /// Stop signals of the vehicle's older open sockets (to stop as superseded).
    pub older: Vec<Arc<StopSignal>>,
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
    /// Records an opened connection with its stop signal. Returns whether the vehicle just
    /// became connected (first socket, not a reconnect within the grace) and the stop signals
    /// of the vehicle's older sockets (newest wins: the caller stops them after the hand-over
    /// grace).
    pub fn opened(&self, entry: ConnectionEntry, stop: Arc<StopSignal>) -> Opened {
        let id = entry.connection_id.clone();
        let vin = entry.vin.clone();
        let since = entry.since_ms;
        self.open.insert(
            id.clone(),
            Open {
                entry,
                stop: stop.clone(),
            },
        );
        let mut p = self.vins.entry(vin).or_default();
        let older = p.sockets.iter().map(|(_, s)| s.clone()).collect();
        p.sockets.push((id, stop));
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
        self.stop_where(refuse, StopReason::VinRefused)
    }

    /// Stops every open connection (server shutdown); returns how many. A connection
    /// registered after this call must check the shutdown itself (`serve_connection` does).
    pub fn stop_all(&self, reason: StopReason) -> usize {
        self.stop_where(|_| true, reason)
    }

    /// Signals `reason` to every open connection whose VIN `select` picks (collected first: no
    /// map guard is held while signalling).
    fn stop_where(&self, select: impl Fn(&str) -> bool, reason: StopReason) -> usize {
        let signals: Vec<_> = self
            .open
            .iter()
            .filter(|o| select(&o.entry.vin))
            .map(|o| o.stop.clone())
            .collect();
        for s in &signals {
            s.stop(reason);
        }
        signals.len()
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

    fn t() -> Arc<StopSignal> {
        StopSignal::new()
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
            r.opened(entry("V", "a"), t()).first_socket,
            "first socket: connected"
        );
        assert!(
            !r.opened(entry("V", "b"), t()).first_socket,
            "cellular while wifi is open: no new transition"
        );
        assert_eq!(r.closed("a"), Closed::StillConnected);
        let Closed::LastSocket { generation } = r.closed("b") else {
            panic!()
        };
        // a reconnect within the grace voids the pending disconnect
        assert!(!r.opened(entry("V", "c"), t()).first_socket);
        assert_eq!(r.gone("V", generation, 5000), None);
        let Closed::LastSocket { generation } = r.closed("c") else {
            panic!()
        };
        assert_eq!(r.gone("V", generation, 5000), Some(4000));
        assert!(!r.is_connected("V"));
        assert!(
            r.opened(entry("V", "d"), t()).first_socket,
            "connected again after a real disconnect"
        );
    }

    #[test]
    fn a_newer_socket_gets_the_older_ones_signals_and_kick_closes_by_vin() {
        let r = Registry::default();
        let a = t();
        assert!(r.opened(entry("V", "a"), a.clone()).older.is_empty());
        let b = t();
        let older = r.opened(entry("V", "b"), b.clone()).older;
        assert_eq!(older.len(), 1);
        older[0].stop(StopReason::Superseded);
        assert_eq!(
            a.reason(),
            Some(StopReason::Superseded),
            "the older socket's signal"
        );
        let c = t();
        r.opened(entry("W", "c"), c.clone());
        assert_eq!(r.of_vin("V").len(), 2);
        assert_eq!(r.kick(|vin| vin == "V"), 2);
        assert_eq!(b.reason(), Some(StopReason::VinRefused));
        assert_eq!(
            a.reason(),
            Some(StopReason::Superseded),
            "the first reason stays"
        );
        assert_eq!(c.reason(), None, "another vehicle is not kicked");
        assert_eq!(r.stop_all(StopReason::Shutdown), 3);
        assert_eq!(c.reason(), Some(StopReason::Shutdown));
        assert_eq!(r.len(), 3);
    }
}
