//! Vehicle ingest: TLS with identity, the HTTP upgrade, and the per-connection frame loop.
//! Owns sockets and the answers on the wire; hands records to `sinks` and nothing else.

pub mod connection;
pub mod http;
pub mod identity;
pub mod proxy;
pub mod rate;
pub mod registry;
pub mod server;
pub mod tesla_ca;
pub mod tls;
pub mod vins;
