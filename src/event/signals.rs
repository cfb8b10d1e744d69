//! Signal matching (SPEC section 4): which of the spec's signals an event matches. A pure
//! function of the event, evaluated once at the input.

use serde_json::Value;

use super::{Event, Kind, predicate};
use crate::spec::{IntentSpec, SignalSpec};

/// Whether `event` matches `signal`: its `type` and `event` (name) equal the required
/// strings, if any, and every `where` predicate holds. Forget requests match nothing.
pub fn matches(signal: &SignalSpec, event: &Event) -> bool {
    if event.kind == Kind::Forget {
        return false;
    }
    let field = |name: &str| match event.body.get(name) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    if signal
        .event_type
        .as_deref()
        .is_some_and(|t| field("type") != Some(t))
    {
        return false;
    }
    if signal
        .event
        .as_deref()
        .is_some_and(|e| field("event") != Some(e))
    {
        return false;
    }
    predicate::all_hold(&signal.predicates, &event.body)
}

/// Indices of every signal the event matches, ascending.
pub fn matched(intent: &IntentSpec, event: &Event) -> Vec<u16> {
    intent
        .signals
        .iter()
        .enumerate()
        .filter(|(_, s)| matches(s, event))
        .map(|(i, _)| i as u16)
        .collect()
}
