//! Sources of vehicle state other than Tesla's telemetry: they turn what another system says
//! into the same typed update a `V` frame gives, so the same rules run on it. They know no
//! sockets or sinks; the admin API receives their deliveries.

pub mod smartcar;
