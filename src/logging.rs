//! How `serve` logs, on stderr (stdout belongs to the logger sink): plain text, tracing's JSON,
//! or the JSON shape of Tesla's server (logrus: `level`, `msg`, `time` and the fields at the
//! top level), so log pipelines built for Tesla's server keep working.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The shape of log lines (`serve --log-format`, `fleetgate.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// tracing's JSON: `timestamp`, `level`, `fields.message`, `target` (what
    /// `json_log_enable: true` gives).
    Json,
    /// Tesla's server's JSON (logrus): `{"level":"info","msg":"…","time":"…",…fields}`.
    Tesla,
}

impl LogFormat {
    /// The format of a config: `fleetgate.log_format`, else `json` for Tesla's
    /// `json_log_enable: true`, else text.
    pub fn of(config: &crate::config::Config) -> LogFormat {
        match config.fleetgate.log_format {
            Some(format) => format,
            None if config.json_log_enable => LogFormat::Json,
            None => LogFormat::Text,
        }
    }
}

/// Sets up logging on stderr in `format` at the config's `log_level` (`RUST_LOG` wins).
pub fn init(config: &crate::config::Config, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = config
        .log_level
        .clone()
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase()
        .replace("warning", "warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Tesla => builder.event_format(LogrusJson).try_init(),
    };
}

/// logrus's JSON formatter's shape: `level` (`debug`, `info`, `warning`, `error`), `msg`,
/// `time` (RFC 3339 with nanoseconds), every field at the top level; a field named like one
/// of those three is written `fields.NAME`, as logrus does.
struct LogrusJson;

impl<S, N> FormatEvent<S, N> for LogrusJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = FieldsVisitor::default();
        event.record(&mut fields);
        let mut line = Map::new();
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        line.insert("level".into(), level.into());
        line.insert("msg".into(), fields.message.unwrap_or_default().into());
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("time".into(), time.into());
        line.insert("target".into(), event.metadata().target().into());
        for (name, value) in fields.fields {
            let key = if matches!(name.as_str(), "level" | "msg" | "time") {
                format!("fields.{name}")
            } else {
                name
            };
            line.insert(key, value);
        }
        writeln!(
            writer,
            "{}",
            serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?
        )
    }
}

/// An event's message and fields as JSON values.
#[derive(Default)]
struct FieldsVisitor {
    message: Option<String>,
    fields: Vec<(String, Value)>,
}

impl FieldsVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for FieldsVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
