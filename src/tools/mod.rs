//! Tooling around the product, grouped apart from it: the dev PKI (`certs dev`), the
//! vehicle-side client the tests and tools use, simulated vehicles, the load bench and the
//! subcommands that are more than one call (`decode`, `demo`, `sim`).
//!
//! The product modules never depend on these (the bench's bare comparison server reuses the
//! product's TLS set-up, not the other way round).

pub mod bench;
pub mod certs;
pub mod client;
pub mod commands;
pub mod sim;
