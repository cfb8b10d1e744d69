//! Profile traits (SPEC section 5): per profile and key, the value from the event greatest by
//! (timestamp, messageId with absent as "", arrival order); within one event `traits` wins
//! over `context.traits`.

use super::{ByKey, Coll, Seq};
use crate::event::Ident;

/// A trait record's order and value: (timestamp, messageId or "", arrival seq, source, JSON).
pub type TraitValue = (u64, String, Seq, u8, String);

/// Current traits: `(profile, (key, JSON value))`. `records` holds `(event, (key, value))`.
pub fn current<'s>(
    records: Coll<'s, (Seq, (String, TraitValue))>,
    attribution: ByKey<'s, Seq, Ident>,
) -> Coll<'s, (Ident, (String, String))> {
    records
        .join_core(attribution, |_seq, (key, value), profile: &Ident| {
            Some(((profile.clone(), key.clone()), value.clone()))
        })
        .reduce(|_key, values, out| {
            if let Some(((_, _, _, _, json), _)) = values.last() {
                out.push((json.clone(), 1));
            }
        })
        .map(|((profile, key), json)| (profile, (key, json)))
}
