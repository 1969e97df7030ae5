//! `google.protobuf.Timestamp` for the generated types: the same prost message as
//! `prost_types::Timestamp`, plus proto3 JSON serde (RFC 3339 in UTC with `Z`, 0/3/6/9 fraction
//! digits — prost-types' own formatting) so the pbjson-generated impls render it exactly as the
//! reflective path does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second (0..1e9).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range proto3 JSON can write.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds)
            || !(0..1_000_000_000).contains(&self.nanos)
        {
            return Err(serde::ser::Error::custom(format!(
                "timestamp {}s {}ns is outside the range proto3 JSON can write",
                self.seconds, self.nanos
            )));
        }
        serializer.collect_str(&prost_types::Timestamp {
            seconds: self.seconds,
            nanos: self.nanos,
        })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        let ts: prost_types::Timestamp = text.parse().map_err(serde::de::Error::custom)?;
        Ok(Timestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_protojson_and_reads_back() {
        let ts = Timestamp {
            seconds: 1_764_000_002,
            nanos: 120_000_000,
        };
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(json, "\"2025-11-24T16:00:02.120Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), ts);
        let far = Timestamp {
            seconds: MAX_SECONDS + 1,
            nanos: 0,
        };
        assert!(serde_json::to_string(&far).is_err());
    }
}
