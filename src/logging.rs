//! The process's log: env_logger's filter (`RUST_LOG`), in text (env_logger's own format) or
//! as one JSON object per line (`LOG_FORMAT=json`: `time`, `level`, `target`, `message`, and
//! each structured field a line carries, such as `connection_id`, `user_id`, `node`,
//! `channel` or `code`, as a top-level key). A client cannot write an ERROR line: actix-http's
//! parse errors (a malformed request) are logged at DEBUG.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

/// How each line is written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json"),
        }
    }
}

/// Installs the logger for the process; a second call changes nothing.
pub fn init(filter: &str, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(&buf.timestamp_millis().to_string(), record);
            writeln!(buf, "{line}")
        });
    }
    let logger = builder.build();
    log::set_max_level(logger.filter());
    // Only fails when a logger is set already.
    let _ = log::set_boxed_logger(Box::new(ClientFaultsAtDebug(logger)));
}

/// The keys every JSON line has; a structured field of the same name is written as
/// `field_<name>` so it cannot hide them.
const RESERVED: [&str; 4] = ["time", "level", "target", "message"];

/// One record as a JSON object, its own keys first (in that order), then its fields.
fn json_line(time: &str, record: &log::Record) -> String {
    let mut fields = serde_json::Map::new();
    let _ = record.key_values().visit(&mut Fields(&mut fields));
    let own = [
        ("time", serde_json::Value::from(time)),
        ("level", record.level().as_str().into()),
        ("target", record.target().into()),
        ("message", record.args().to_string().into()),
    ];
    let key = |key: &str| serde_json::Value::from(key).to_string();
    let pairs: Vec<String> = own
        .iter()
        .map(|(name, value)| format!("{}:{value}", key(name)))
        .chain(
            fields
                .iter()
                .map(|(name, value)| format!("{}:{value}", key(name))),
        )
        .collect();
    format!("{{{}}}", pairs.join(","))
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let name = match key.as_str() {
            reserved if RESERVED.contains(&reserved) => format!("field_{reserved}"),
            name => name.to_owned(),
        };
        let value = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(name, value);
        Ok(())
    }
}

/// actix-http logs a request it could not parse (and answered with 400) at ERROR, after the
/// answer is written. A client must not be able to write ERROR lines, so those are logged at
/// DEBUG; everything else passes through unchanged.
struct ClientFaultsAtDebug(env_logger::Logger);

impl ClientFaultsAtDebug {
    fn is_client_fault(record: &log::Record) -> bool {
        record.level() == log::Level::Error
            && record.target().starts_with("actix_http::h1")
            && record
                .args()
                .as_str()
                .map_or_else(|| record.args().to_string(), str::to_owned)
                .contains("parse error")
    }
}

impl log::Log for ClientFaultsAtDebug {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !Self::is_client_fault(record) {
            return self.0.log(record);
        }
        let lowered = log::Record::builder()
            .args(*record.args())
            .level(log::Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .key_values(record.key_values())
            .build();
        if self.0.enabled(lowered.metadata()) {
            self.0.log(&lowered);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_has_the_record_and_its_fields_at_the_top() {
        let fields = [
            ("connection_id", Value::from("c7@n1")),
            ("user_id", Value::from("alice")),
            ("code", Value::from(4401u64)),
            ("message", Value::from("shadowed")),
        ];
        let record = log::Record::builder()
            .args(format_args!("c7@n1 authenticated as user alice"))
            .level(log::Level::Info)
            .target("ticketgate::session")
            .key_values(&fields)
            .build();
        let line = json_line("2026-12-07T04:00:00.000Z", &record);
        assert!(
            line.starts_with(r#"{"time":"2026-12-07T04:00:00.000Z","level":"INFO","#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            serde_json::json!({
                "time": "2026-12-07T04:00:00.000Z",
                "level": "INFO",
                "target": "ticketgate::session",
                "message": "c7@n1 authenticated as user alice",
                "connection_id": "c7@n1",
                "user_id": "alice",
                "code": 4401,
                "field_message": "shadowed",
            })
        );
    }

    #[test]
    fn the_format_is_text_or_json() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert!(LogFormat::parse("JSON").is_err());
    }
}
