//! The telemetry topics fleetgate knows the schema of.

/// A topic with a known protobuf schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `V`: vehicle data (`telemetry.vehicle_data.Payload`).
    Vehicle,
    /// `alerts`: `telemetry.vehicle_alerts.VehicleAlerts`.
    Alerts,
    /// `errors`: `telemetry.vehicle_error.VehicleErrors`.
    Errors,
    /// `connectivity`: `telemetry.vehicle_connectivity.VehicleConnectivity`, made by the server.
    Connectivity,
}

impl Topic {
    /// Every topic, in a stable order.
    pub const ALL: [Topic; 4] = [
        Topic::Vehicle,
        Topic::Alerts,
        Topic::Errors,
        Topic::Connectivity,
    ];

    /// The topic for a wire name, if its schema is known.
    pub fn from_wire(name: &[u8]) -> Option<Topic> {
        match name {
            b"V" => Some(Topic::Vehicle),
            b"alerts" => Some(Topic::Alerts),
            b"errors" => Some(Topic::Errors),
            b"connectivity" => Some(Topic::Connectivity),
            _ => None,
        }
    }

    /// The wire name (`V`, `alerts`, `errors`, `connectivity`).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Vehicle => "V",
            Topic::Alerts => "alerts",
            Topic::Errors => "errors",
            Topic::Connectivity => "connectivity",
        }
    }

    /// Full protobuf name of the topic's message.
    pub fn message_name(self) -> &'static str {
        match self {
            Topic::Vehicle => "telemetry.vehicle_data.Payload",
            Topic::Alerts => "telemetry.vehicle_alerts.VehicleAlerts",
            Topic::Errors => "telemetry.vehicle_error.VehicleErrors",
            Topic::Connectivity => "telemetry.vehicle_connectivity.VehicleConnectivity",
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
