//! Rust types generated from `proto/*.proto` by build.rs (prost), and the compiled descriptor
//! set for proto3 JSON output and schema checks. Nothing here is hand-written protocol code.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// `telemetry.vehicle_data`: the `V` topic (Payload of Datum{Field, Value}).
pub mod vehicle_data {
    include!(concat!(env!("OUT_DIR"), "/telemetry.vehicle_data.rs"));
    include!(concat!(env!("OUT_DIR"), "/telemetry.vehicle_data.serde.rs"));
}
/// `telemetry.vehicle_alerts`: the `alerts` topic.
pub mod vehicle_alerts {
    include!(concat!(env!("OUT_DIR"), "/telemetry.vehicle_alerts.rs"));
    include!(concat!(
        env!("OUT_DIR"),
        "/telemetry.vehicle_alerts.serde.rs"
    ));
}
/// `telemetry.vehicle_error`: the `errors` topic.
pub mod vehicle_error {
    include!(concat!(env!("OUT_DIR"), "/telemetry.vehicle_error.rs"));
    include!(concat!(
        env!("OUT_DIR"),
        "/telemetry.vehicle_error.serde.rs"
    ));
}
/// `telemetry.vehicle_connectivity`: server-made connect/disconnect records.
pub mod vehicle_connectivity {
    include!(concat!(
        env!("OUT_DIR"),
        "/telemetry.vehicle_connectivity.rs"
    ));
    include!(concat!(
        env!("OUT_DIR"),
        "/telemetry.vehicle_connectivity.serde.rs"
    ));
}
/// `telemetry.vehicle_metrics`: vehicle metrics (schema only; no topic is routed to it).
pub mod vehicle_metrics {
    include!(concat!(env!("OUT_DIR"), "/telemetry.vehicle_metrics.rs"));
    include!(concat!(
        env!("OUT_DIR"),
        "/telemetry.vehicle_metrics.serde.rs"
    ));
}

/// The encoded `FileDescriptorSet` of every schema in `proto/` (with google/protobuf imports).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/telemetry_descriptors.bin"));

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("build.rs wrote a descriptor set that prost-reflect can read")
});

/// The descriptor pool of the telemetry schemas.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &POOL
}
