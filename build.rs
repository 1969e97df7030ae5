//! Compiles `proto/*.proto` into Rust (prost) without a system `protoc`: protox parses the
//! schemas into a descriptor set, prost-build generates code from it, and the encoded descriptor
//! set is kept in `OUT_DIR` for proto3 JSON output (prost-reflect) and the schema tests;
//! pbjson-build adds serde impls (proto3 JSON) for the generated types.

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
    let encoded = descriptors.encode_to_vec();
    // google.protobuf.Timestamp is crate::wire::Timestamp: prost's message with proto3 JSON serde
    prost_build::Config::new()
        .extern_path(".google.protobuf.Timestamp", "crate::wire::Timestamp")
        .compile_fds(descriptors)?;
    // serde impls in proto3 JSON form (camelCase, enum names, unpopulated fields emitted): the
    // fast path of the logger sink and `decode`
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(".google.protobuf.Timestamp", "crate::wire::Timestamp")
        .emit_fields()
        .build(&[".telemetry"])?;
    Ok(())
}
