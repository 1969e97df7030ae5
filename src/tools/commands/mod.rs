//! Subcommands of the `fleetgate` binary that are more than a call into one module.

pub mod decode;
pub mod demo;
pub mod sim;
