//! One log line to an [`Entry`]: the node's `--log-format json` output, tracing-subscriber's
//! JSON with `flatten_event(true)`:
//!
//! ```json
//! {"timestamp":"2026-12-05T19:32:36.597431Z","level":"INFO","message":"ping","peer":"12D3KooW…","rtt_ms":51.2,"target":"punchgate::node::driver"}
//! ```
//!
//! Without `flatten_event` the event's fields sit under `"fields"`; both shapes are read. A line
//! that is not a JSON object with a `message` (or a `level`) is not an entry ([`ParseError`]), and the caller
//! skips and counts it.

use serde_json::{Map, Value};

use crate::time::Timestamp;

/// A log event's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// `TRACE`.
    Trace,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `WARN`.
    Warn,
    /// `ERROR`.
    Error,
}

impl Level {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_uppercase().as_str() {
            "TRACE" => Self::Trace,
            "DEBUG" => Self::Debug,
            "INFO" => Self::Info,
            "WARN" | "WARNING" => Self::Warn,
            "ERROR" => Self::Error,
            _ => return None,
        })
    }
}

/// One log event.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When it happened; `None` when the line has no readable timestamp.
    pub timestamp: Option<Timestamp>,
    /// Its level; `None` when the line has none (counted as neither warning nor error).
    pub level: Option<Level>,
    /// The event's message, the text after the fields in a text log.
    pub message: String,
    /// The module that logged it (`punchgate::node::driver`), when given.
    pub target: Option<String>,
    /// The event's other fields (`peer`, `rtt_ms`, …), as logged.
    pub fields: Map<String, Value>,
}

/// Why a line is not an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not JSON at all (a text log line, a panic message, a torn line).
    #[error("not JSON")]
    NotJson,
    /// JSON, but not an object with a `message` string (or, without a message, a `level`).
    #[error("JSON, but not a log event")]
    NotAnEvent,
}

impl Entry {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let value: Value = serde_json::from_str(line).map_err(|_| ParseError::NotJson)?;
        let Value::Object(mut object) = value else {
            return Err(ParseError::NotAnEvent);
        };
        // Not flattened: the event's own fields (and its message) are under "fields".
        if let Some(Value::Object(nested)) = object.remove("fields") {
            for (key, value) in nested {
                object.entry(key).or_insert(value);
            }
        }
        // An event may have no message (libp2p logs some with fields only), but a log event
        // has a message or at least a level.
        let message = match object.remove("message") {
            Some(Value::String(message)) => message,
            None if object.contains_key("level") => String::new(),
            _ => return Err(ParseError::NotAnEvent),
        };
        let timestamp = match object.remove("timestamp") {
            Some(Value::String(t)) => Timestamp::parse(&t),
            _ => None,
        };
        let level = match object.remove("level") {
            Some(Value::String(l)) => Level::parse(&l),
            _ => None,
        };
        let target = match object.remove("target") {
            Some(Value::String(t)) => Some(t),
            _ => None,
        };
        // Span context is not an event field.
        object.remove("span");
        object.remove("spans");
        Ok(Self {
            timestamp,
            level,
            message,
            target,
            fields: object,
        })
    }

    /// A field as text: a string as is, a number or boolean printed; `None` if absent.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.fields.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A field as an owned string, whatever its JSON type (`None` if absent or null).
    pub fn text(&self, key: &str) -> Option<String> {
        match self.fields.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// A numeric field (a JSON number, or a string holding one).
    pub fn f64(&self, key: &str) -> Option<f64> {
        match self.fields.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|n: &f64| n.is_finite())
    }

    /// A non-negative integer field (a JSON number, or a string holding one).
    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.fields.get(key)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean field (`true`/`false`, as JSON or as text).
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.fields.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The first of `keys` present as text: the node names a remote peer `peer`, `peer_id`,
    /// `remote_peer` or `target_peer` depending on the line.
    pub fn first_str(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.str(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_flattened_event() {
        let line = r#"{"timestamp":"2026-12-05T19:32:36.597431Z","level":"INFO","message":"ping","peer":"12D3KooWA","rtt_ms":51.25,"connection":"3","target":"punchgate::node::driver"}"#;
        let entry = Entry::parse(line).expect("an event");
        assert_eq!(entry.message, "ping");
        assert_eq!(entry.level, Some(Level::Info));
        assert_eq!(entry.target.as_deref(), Some("punchgate::node::driver"));
        assert_eq!(entry.str("peer"), Some("12D3KooWA"));
        assert_eq!(entry.f64("rtt_ms"), Some(51.25));
        assert_eq!(entry.u64("connection"), Some(3));
        assert_eq!(
            entry.timestamp.map(|t| t.to_string()).as_deref(),
            Some("2026-12-05T19:32:36.597431Z")
        );
        assert!(!entry.fields.contains_key("message"));
    }

    #[test]
    fn reads_fields_nested_under_fields() {
        let line = r#"{"timestamp":"2026-12-05T19:32:36Z","level":"WARN","fields":{"message":"tunnel rejected","peer_id":"P"},"target":"t","span":{"name":"s"}}"#;
        let entry = Entry::parse(line).expect("an event");
        assert_eq!(entry.message, "tunnel rejected");
        assert_eq!(entry.level, Some(Level::Warn));
        assert_eq!(entry.first_str(&["peer", "peer_id"]), Some("P"));
        assert!(!entry.fields.contains_key("span"));
    }

    #[test]
    fn tells_text_from_json_that_is_not_an_event() {
        assert_eq!(
            Entry::parse("2026-12-05T19:32:36Z  INFO punchgate: ping peer=..."),
            Err(ParseError::NotJson)
        );
        assert_eq!(Entry::parse("{\"foo\":1}"), Err(ParseError::NotAnEvent));
        assert_eq!(Entry::parse("[1,2]"), Err(ParseError::NotAnEvent));
        assert_eq!(Entry::parse("{\"message\":3}"), Err(ParseError::NotAnEvent));
        let fields_only =
            Entry::parse(r#"{"level":"INFO","local_peer_id":"P","target":"libp2p_swarm"}"#)
                .expect("an event without a message");
        assert_eq!(fields_only.message, "");
    }

    #[test]
    fn a_missing_timestamp_or_level_is_not_fatal() {
        let entry = Entry::parse(r#"{"message":"hello","level":"LOUD"}"#).expect("an event");
        assert_eq!(entry.timestamp, None);
        assert_eq!(entry.level, None);
    }
}
