//! Parsing and validation of input lines (SPEC sections 1 and 2).
//!
//! [`parse`] is the stateless part: one line to an [`Event`] or a [`Rejection`] with its
//! reason. [`admit::Admission`] is the stateful part: deduplication, the far-future rule,
//! suppression and the event-time clock.

pub mod admit;
pub mod identifiers;
pub mod json;
pub mod predicate;
pub mod profile_data;
pub mod residue;
pub mod signals;
pub mod timestamp;

use serde_json::{Map, Value};

pub use identifiers::Ident;

use crate::spec::Spec;

/// Longest accepted line in bytes (the `\n` excluded).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// An event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `track`
    Track,
    /// `page`
    Page,
    /// `screen`
    Screen,
    /// `identify`
    Identify,
    /// `alias`
    Alias,
    /// `group`
    Group,
    /// `forget`: an erasure command (SPEC section 6), not an event of any profile.
    Forget,
    /// Any other string, or no `type` at all: a generic event.
    Other,
}

impl Kind {
    fn of(type_name: Option<&str>) -> Kind {
        match type_name {
            Some("track") => Kind::Track,
            Some("page") => Kind::Page,
            Some("screen") => Kind::Screen,
            Some("identify") => Kind::Identify,
            Some("alias") => Kind::Alias,
            Some("group") => Kind::Group,
            Some("forget") => Kind::Forget,
            _ => Kind::Other,
        }
    }
}

/// A valid input line.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its kind.
    pub kind: Kind,
    /// `messageId`, the deduplication key.
    pub message_id: Option<String>,
    /// Event time, epoch ms.
    pub timestamp_ms: u64,
    /// Its identifiers, sorted by priority, each once; never empty.
    pub idents: Vec<Ident>,
    /// Blocklisted values it carried (dropped from `idents`; kept for explanations).
    pub blocked: Vec<Ident>,
    /// The whole JSON object, for the stages that read more of it.
    pub body: Map<String, Value>,
}

/// Why a line went to the dead letters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum DeadReason {
    /// Longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not valid JSON.
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// `type` present but not a string.
    BadType,
    /// `messageId` present but not a string.
    BadMessageId,
    /// No `timestamp`.
    MissingTimestamp,
    /// A `timestamp` that is not a valid time.
    BadTimestamp,
    /// No usable identifier.
    NoIdentifier,
    /// More than `max_future` ahead of the wall clock.
    FutureTimestamp,
}

impl DeadReason {
    /// Every reason, in check order.
    pub const ALL: [DeadReason; 10] = [
        DeadReason::LineTooLong,
        DeadReason::InvalidUtf8,
        DeadReason::InvalidJson,
        DeadReason::NotAnObject,
        DeadReason::BadType,
        DeadReason::BadMessageId,
        DeadReason::MissingTimestamp,
        DeadReason::BadTimestamp,
        DeadReason::NoIdentifier,
        DeadReason::FutureTimestamp,
    ];

    /// The stable code written in dead-letter records.
    pub fn code(self) -> &'static str {
        match self {
            DeadReason::LineTooLong => "line_too_long",
            DeadReason::InvalidUtf8 => "invalid_utf8",
            DeadReason::InvalidJson => "invalid_json",
            DeadReason::NotAnObject => "not_an_object",
            DeadReason::BadType => "bad_type",
            DeadReason::BadMessageId => "bad_message_id",
            DeadReason::MissingTimestamp => "missing_timestamp",
            DeadReason::BadTimestamp => "bad_timestamp",
            DeadReason::NoIdentifier => "no_identifier",
            DeadReason::FutureTimestamp => "future_timestamp",
        }
    }
}

/// A dead letter's reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason code.
    pub reason: DeadReason,
    /// What exactly was wrong.
    pub detail: String,
}

fn reject<T>(reason: DeadReason, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        detail: detail.into(),
    })
}

/// Parses and validates one line (without its `\n`; a trailing `\r` is dropped here).
/// `received_ms` is the server's receipt time for events without `receivedAt`
/// ([`timestamp::event_time`]); `None` for pipes and files.
pub fn parse(line: &[u8], spec: &Spec, received_ms: Option<u64>) -> Result<Event, Rejection> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return reject(DeadReason::LineTooLong, format!("{} bytes", line.len()));
    }
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => return reject(DeadReason::InvalidUtf8, e.to_string()),
    };
    let body = match json::parse(text) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return reject(
                DeadReason::NotAnObject,
                format!("a JSON {}", json_kind(&other)),
            );
        }
        Err(e) => return reject(DeadReason::InvalidJson, e),
    };
    let kind = match body.get("type") {
        None => Kind::Other,
        Some(Value::String(s)) => Kind::of(Some(s)),
        Some(other) => {
            return reject(
                DeadReason::BadType,
                format!("type is a JSON {}", json_kind(other)),
            );
        }
    };
    let message_id = match body.get("messageId") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return reject(
                DeadReason::BadMessageId,
                format!("messageId is a JSON {}", json_kind(other)),
            );
        }
    };
    let timestamp_ms = timestamp::event_time(&body, received_ms)?;
    let (idents, blocked) = identifiers::read(&body, &spec.identity);
    if idents.is_empty() {
        return reject(DeadReason::NoIdentifier, "no usable identifier");
    }
    Ok(Event {
        kind,
        message_id,
        timestamp_ms,
        idents,
        blocked,
        body,
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &[u8]) -> Option<DeadReason> {
        parse(line, &Spec::default_spec(), None)
            .err()
            .map(|r| r.reason)
    }

    #[test]
    fn each_dead_letter_reason() {
        use DeadReason::*;
        let ok = br#"{"type":"track","userId":"u","timestamp":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(reason(ok), None);
        assert_eq!(reason(&[b'"'; MAX_LINE_BYTES + 1]), Some(LineTooLong));
        assert_eq!(reason(b"{\"userId\":\"\xff\"}"), Some(InvalidUtf8));
        assert_eq!(reason(b"{\"userId\":"), Some(InvalidJson));
        assert_eq!(reason(b"[1,2]"), Some(NotAnObject));
        assert_eq!(
            reason(br#"{"type":7,"userId":"u","timestamp":0}"#),
            Some(BadType)
        );
        assert_eq!(
            reason(br#"{"type":null,"userId":"u","timestamp":0}"#),
            Some(BadType)
        );
        assert_eq!(
            reason(br#"{"messageId":7,"userId":"u","timestamp":0}"#),
            Some(BadMessageId)
        );
        assert_eq!(reason(br#"{"userId":"u"}"#), Some(MissingTimestamp));
        assert_eq!(
            reason(br#"{"userId":"u","timestamp":"soon"}"#),
            Some(BadTimestamp)
        );
        assert_eq!(
            reason(br#"{"userId":"null","timestamp":0}"#),
            Some(NoIdentifier)
        );
        assert_eq!(reason(b"{\"userId\":\"u\",\"timestamp\":0}\r"), None);
    }
}
