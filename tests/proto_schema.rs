//! The compiled schemas match the wire facts in testdata/wire/*.tsv row by row, both ways: a
//! missing, extra or wrong field, oneof member or enum value fails here.

use std::collections::BTreeSet;
use std::path::Path;

use fleetgate::wire::proto::descriptor_pool;
use prost_reflect::{Cardinality, Kind};

fn tsv(name: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wire")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message:{}", m.full_name()),
        Kind::Enum(e) => format!("enum:{}", e.full_name()),
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_message_field_matches_messages_tsv() {
    let pool = descriptor_pool();
    let rows = tsv("messages.tsv");
    assert!(rows.len() > 100);
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (file, message, field, number, ty) = (&row[0], &row[1], &row[2], &row[3], &row[4]);
        let label = row.get(5).map(String::as_str).unwrap_or("");
        let oneof = row.get(6).map(String::as_str).unwrap_or("");
        let m = pool
            .get_message_by_name(message)
            .unwrap_or_else(|| panic!("message {message} missing"));
        assert_eq!(
            m.parent_file().name(),
            file,
            "{message} is in the wrong file"
        );
        let f = m
            .get_field_by_name(field)
            .unwrap_or_else(|| panic!("{message}.{field} missing"));
        assert_eq!(f.number().to_string(), *number, "{message}.{field} number");
        assert_eq!(kind_name(&f.kind()), *ty, "{message}.{field} type");
        let repeated = f.cardinality() == Cardinality::Repeated;
        assert_eq!(repeated, label == "repeated", "{message}.{field} label");
        let actual_oneof = f
            .containing_oneof()
            .map(|o| o.name().to_owned())
            .unwrap_or_default();
        assert_eq!(actual_oneof, oneof, "{message}.{field} oneof");
        seen.insert((message.clone(), field.clone()));
    }
    // nothing in the schema that the TSV does not list (map entry messages are implicit)
    for m in pool.all_messages() {
        if m.package_name().starts_with("telemetry.") && !m.is_map_entry() {
            for f in m.fields() {
                assert!(
                    seen.contains(&(m.full_name().to_owned(), f.name().to_owned())),
                    "{}.{} is not in messages.tsv",
                    m.full_name(),
                    f.name()
                );
            }
        }
    }
}

#[test]
fn every_enum_value_matches_enums_tsv() {
    let pool = descriptor_pool();
    let rows = tsv("enums.tsv");
    assert!(rows.len() > 500);
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (file, enum_name, value, number) = (&row[0], &row[1], &row[2], &row[3]);
        let e = pool
            .get_enum_by_name(enum_name)
            .unwrap_or_else(|| panic!("enum {enum_name} missing"));
        assert_eq!(e.parent_file().name(), file);
        let v = e
            .get_value_by_name(value)
            .unwrap_or_else(|| panic!("{enum_name}.{value} missing"));
        assert_eq!(v.number().to_string(), *number, "{enum_name}.{value}");
        seen.insert((enum_name.clone(), value.clone()));
    }
    for e in pool.all_enums() {
        if e.package_name().starts_with("telemetry.") {
            for v in e.values() {
                assert!(
                    seen.contains(&(e.full_name().to_owned(), v.name().to_owned())),
                    "{}.{} is not in enums.tsv",
                    e.full_name(),
                    v.name()
                );
            }
        }
    }
}

#[test]
fn generated_rust_types_agree_with_the_descriptors() {
    use fleetgate::wire::proto::vehicle_data::{DetailedChargeStateValue, Field};
    // spot checks of the documented field names
    for (name, number) in [
        ("VehicleSpeed", 4),
        ("Odometer", 5),
        ("Soc", 8),
        ("Gear", 10),
        ("Location", 21),
        ("DCChargingEnergyIn", 34),
        ("ACChargingEnergyIn", 36),
        ("ChargeLimitSoc", 38),
        ("BatteryLevel", 42),
        ("MilesToArrival", 109),
        ("MinutesToArrival", 110),
        ("DestinationLocation", 112),
        ("DestinationName", 163),
        ("DetailedChargeState", 179),
    ] {
        assert_eq!(
            Field::from_str_name(name).map(|f| f as i32),
            Some(number),
            "{name}"
        );
    }
    assert!(DetailedChargeStateValue::from_str_name("DetailedChargeStateCharging").is_some());
}
