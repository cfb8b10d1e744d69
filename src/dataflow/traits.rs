//! Profile traits (SPEC section 5): per profile and key, the value from the event greatest by
//! (timestamp, messageId with absent as "", arrival order); within one event `traits` wins
//! over `context.traits`. The greatest [`record`] decides ([`super::latest::decide`]).

use super::{EventFacts, Seq};

/// A trait record's order and value: (timestamp, messageId or "", arrival seq, source, JSON).
pub type TraitValue = (u64, String, Seq, u8, String);

/// The record of one trait value of an event: `source` is 1 for `traits`, 0 for
/// `context.traits`. Per profile and key, the greatest record holds the value.
pub fn record(facts: &EventFacts, source: u8, json: &str) -> TraitValue {
    let message_id = facts.message_id.as_deref().unwrap_or_default().to_string();
    (
        facts.timestamp_ms,
        message_id,
        facts.seq,
        source,
        json.to_string(),
    )
}
