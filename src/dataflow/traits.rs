//! Profile traits (SPEC section 5): per profile and key, the value from the event greatest by
//! (timestamp, messageId with absent as "", arrival order); within one event `traits` wins
//! over `context.traits`.

use super::{ByKey, Coll, EventFacts, Node, Seq};

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

/// Current traits: `(profile, (key, JSON value))`. `records` holds `(event, (key, value))`.
pub fn current<'s>(
    records: Coll<'s, (Seq, (String, TraitValue))>,
    attribution: ByKey<'s, Seq, Node>,
) -> Coll<'s, (Node, (String, String))> {
    records
        .join_core(attribution, |_seq, (key, value), profile: &Node| {
            Some(((profile.clone(), key.clone()), value.clone()))
        })
        .reduce(|_key, values, out| {
            if let Some(((_, _, _, _, json), _)) = values.last() {
                out.push((json.clone(), 1));
            }
        })
        .map(|((profile, key), json)| (profile, (key, json)))
}
