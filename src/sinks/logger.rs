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
    crate::wire::json::write_payload_json(record.topic, record.payload, &mut line)?;
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
        };
        let mut expected = serde_json::to_vec(&LoggerLine::new(&sink_record)).unwrap();
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8(render_line(&sink_record).unwrap()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
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
