//! The `logger` sink: one JSON line per record on stdout, the same shape as `fleetgate decode`.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::{DeliveryTicket, PublishError, Sink, SinkRecord};
use crate::event::Event;
use crate::wire::json::PayloadJson;

/// Writes records as JSON lines to stdout (or any writer, for tests).
pub struct LoggerSink {
    out: std::sync::Mutex<Box<dyn Write + Send>>,
    /// Flush after every line (stdout, tests); a file is buffered and flushed by the caller
    /// on a timer and at shutdown instead, saving a system call per record.
    flush_each_line: bool,
}

impl Default for LoggerSink {
    fn default() -> Self {
        Self::stdout()
    }
}

impl LoggerSink {
    /// A logger writing to the process's stdout.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// A logger writing to `out`.
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: std::sync::Mutex::new(out),
            flush_each_line: true,
        }
    }

    /// A logger appending to `file` through a 64 KiB buffer; lines reach the file when the
    /// buffer fills or [`Sink::flush`] is called (`serve` does so every 100 ms and at shutdown).
    pub fn buffered_file(file: std::fs::File) -> Self {
        Self {
            out: std::sync::Mutex::new(Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                file,
            ))),
            flush_each_line: false,
        }
    }
}

/// The line written for one record.
#[derive(Serialize)]
pub struct LoggerLine<'a> {
    topic: &'static str,
    txid: std::borrow::Cow<'a, str>,
    vin: &'a str,
    device_type: std::borrow::Cow<'a, str>,
    created_at: u32,
    payload: PayloadJson<'a>,
}

impl<'a> LoggerLine<'a> {
    /// The line for `record`.
    pub fn new(record: &'a SinkRecord<'a>) -> Self {
        Self {
            topic: record.topic.as_str(),
            txid: String::from_utf8_lossy(record.txid),
            vin: record.vin,
            device_type: String::from_utf8_lossy(record.device_type),
            created_at: record.created_at,
            payload: PayloadJson {
                topic: record.topic,
                bytes: record.payload,
            },
        }
    }
}

/// The fields of a [`LoggerLine`] before the payload.
#[derive(Serialize)]
struct LineHead<'a> {
    topic: &'static str,
    txid: std::borrow::Cow<'a, str>,
    vin: &'a str,
    device_type: std::borrow::Cow<'a, str>,
    created_at: u32,
}

/// The JSON of [`LoggerLine::new`] (same fields, same order) and a newline, rendered straight
/// into one buffer: the payload's JSON is appended, not validated and copied again.
pub fn render_line(record: &SinkRecord<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = Vec::with_capacity(160 + record.payload.len() * 4);
    serde_json::to_writer(
        &mut line,
        &LineHead {
            topic: record.topic.as_str(),
            txid: String::from_utf8_lossy(record.txid),
            vin: record.vin,
            device_type: String::from_utf8_lossy(record.device_type),
            created_at: record.created_at,
        },
    )?;
    line.pop(); // the closing brace
    line.extend_from_slice(b",\"payload\":");
    match record.decoded {
        Some(decoded) => crate::wire::json::write_decoded_json(decoded, record.payload, &mut line)?,
        None => crate::wire::json::write_payload_json(record.topic, record.payload, &mut line)?,
    }
    line.extend_from_slice(b"}\n");
    Ok(line)
}

impl LoggerSink {
    /// Writes the `parts` of one line (the last ends in a newline), then completes `ticket`
    /// (a failed write is a refusal).
    fn write_line(&self, parts: &[&[u8]], ticket: DeliveryTicket) -> Result<(), PublishError> {
        let written = match self.out.lock() {
            Ok(mut out) => parts
                .iter()
                .try_for_each(|p| out.write_all(p))
                .and_then(|_| {
                    if self.flush_each_line {
                        out.flush()
                    } else {
                        Ok(())
                    }
                }),
            Err(_) => Err(std::io::Error::other("logger output lock poisoned")),
        };
        match written {
            Ok(()) => {
                ticket.complete(true);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "logger sink cannot write");
                Err(PublishError::Rejected(format!("logger output: {e}")))
            }
        }
    }
}

impl Sink for LoggerSink {
    fn name(&self) -> &'static str {
        "logger"
    }

    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        let line = render_line(record).map_err(|e| {
            tracing::error!(error = %e, topic = %record.topic, vin = record.vin, "logger sink cannot render record");
            PublishError::Encode(e.to_string())
        })?;
        self.write_line(&[&line], ticket)
    }

    fn publish_event(
        &self,
        _event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        self.write_line(&[json, b"\n"], ticket)
    }

    fn flush(&self, _timeout: Duration) -> usize {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Topic;

    #[test]
    fn the_rendered_line_is_the_logger_line_plus_a_newline() {
        let payload = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/frames/v_typed_drive.bin"),
        )
        .unwrap();
        let frame = crate::wire::read_frame(&payload).unwrap();
        let record = frame.into_record("5YJ3E1EA7KF000001", 0).unwrap();
        let sink_record = SinkRecord {
            topic: Topic::Vehicle,
            vin: "5YJ3E1EA7KF000001",
            txid: b"tx-\"1\"",
            device_type: b"vehicle_device",
            created_at: 1_764_000_000,
            received_at_ms: 0,
            device_client_version: "",
            payload: &record.payload,
            decoded: None,
        };
        let mut expected = serde_json::to_vec(&LoggerLine::new(&sink_record)).unwrap();
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8(render_line(&sink_record).unwrap()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }

    /// The line rendered from the pipeline's decoded payload is, byte for byte, the line
    /// rendered from the payload's bytes — for every sample frame (every topic, transformed
    /// locations, unknown enum numbers) and a non-finite double (the reflective path's `"NaN"`).
    #[test]
    fn the_line_from_the_decoded_payload_is_the_line_from_its_bytes() {
        use crate::wire::proto::vehicle_data::{value::Value as V, Datum, Field, Payload, Value};
        use prost::Message as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/frames");
        let mut frames: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "bin")
                    && !p.file_name().unwrap().to_string_lossy().starts_with("bad_")
            })
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        assert!(frames.len() >= 8, "{} sample frames", frames.len());
        let not_finite = Payload {
            data: [f64::NAN, f64::INFINITY]
                .into_iter()
                .map(|v| Datum {
                    key: Field::VehicleSpeed as i32,
                    value: Some(Value {
                        value: Some(V::DoubleValue(v)),
                    }),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let envelope = crate::wire::EnvelopeWriter::new()
            .stream(
                b"tx",
                b"V",
                b"",
                &crate::wire::StreamView {
                    created_at: 1,
                    sender_id: b"vehicle_device.5YJ3E1EA7KF000001",
                    payload: &not_finite,
                    device_type: b"vehicle_device",
                    device_id: b"5YJ3E1EA7KF000001",
                    delivered_at_epoch_ms: 0,
                },
            )
            .to_vec();
        frames.push(("NaN and infinity".into(), envelope));
        for (name, bytes) in &frames {
            let record = crate::wire::read_frame(bytes)
                .unwrap()
                .into_record("5YJ3E1EA7KF000001", 0)
                .unwrap();
            let mut sink_record = SinkRecord {
                topic: record.topic,
                vin: "5YJ3E1EA7KF000001",
                txid: b"tx",
                device_type: b"vehicle_device",
                created_at: 1,
                received_at_ms: 0,
                device_client_version: "",
                payload: &record.payload,
                decoded: None,
            };
            let from_bytes = String::from_utf8(render_line(&sink_record).unwrap()).unwrap();
            sink_record.decoded = Some(&record.decoded);
            let from_decoded = String::from_utf8(render_line(&sink_record).unwrap()).unwrap();
            assert_eq!(from_decoded, from_bytes, "{name}");
            if name.starts_with("NaN") {
                assert!(
                    from_bytes.contains("\"NaN\"") && from_bytes.contains("\"Infinity\""),
                    "{from_bytes}"
                );
            }
        }
    }

    #[test]
    fn a_file_logger_buffers_until_flushed() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let sink = LoggerSink::buffered_file(file.reopen().unwrap());
        let sink_record = SinkRecord {
            topic: Topic::Vehicle,
            vin: "5YJ3E1EA7KF000001",
            txid: b"t",
            device_type: b"vehicle_device",
            created_at: 1,
            received_at_ms: 0,
            device_client_version: "",
            payload: &[],
            decoded: None,
        };
        sink.publish(&sink_record, DeliveryTicket::untracked())
            .unwrap();
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "");
        assert_eq!(sink.flush(Duration::ZERO), 0);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            text.starts_with("{\"topic\":\"V\"") && text.ends_with("}\n"),
            "{text}"
        );
    }
}
