//! Compiles `proto/*.proto` into Rust (prost) without a system `protoc`: protox parses the
//! schemas into a descriptor set, prost-build generates code from it, and the encoded descriptor
//! set is kept in `OUT_DIR` for proto3 JSON output (prost-reflect) and the schema tests.

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/vehicle_data.proto",
    "proto/vehicle_alert.proto",
    "proto/vehicle_error.proto",
    "proto/vehicle_connectivity.proto",
    "proto/vehicle_metric.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("telemetry_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
