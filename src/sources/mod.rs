//! Sources of vehicle state other than Tesla's telemetry: they turn what another system says
//! into the same typed update a `V` frame gives, and submit it as an input of the vehicle's
//! rules (wherever they run). They know no sockets or sinks; their HTTP routes are mounted on
//! the admin listener.

pub mod smartcar;
