//! Vehicle ingest: TLS with identity, the HTTP upgrade, and the per-connection loop.
//! Owns sockets, timeouts and the answers on the wire; every frame goes to the `pipeline`,
//! which decides what it means. Must not publish to sinks or run rules itself.

pub mod connection;
pub mod http;
pub mod identity;
pub mod proxy;
pub mod rate;
pub mod registry;
pub mod server;
pub mod stop;
pub mod tesla_ca;
pub mod tls;
pub mod vins;
