//! The record that decides each of a profile's consent purposes and traits (SPEC section
//! 5): both are "the greatest record among the profile's events", so one join with the
//! labels (by the event's primary identifier) attributes the records to profiles, and
//! [`decide`] reads a slot's greatest record, which [`super::profiles`] keeps per profile.
//! How records rank is each rule's own: [`super::consent::precedence`] and
//! [`super::traits::record`].

use serde::{Deserialize, Serialize};

use super::labels::Label;
use super::traits::TraitValue;
use super::views::Fact;
use super::{ByKey, Coll, EventFacts, Node};

/// What a record decides: a consent purpose (by index) or a trait key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// The consent of a purpose.
    Consent(u8),
    /// A trait key.
    Trait(String),
}

/// A record and its rank within its slot: the greatest rank decides. Records of one slot
/// are all of one kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rank {
    /// A consent record's [`super::consent::precedence`]: (timestamp, denied).
    Consent((u64, bool)),
    /// A trait record ([`super::traits::record`]); its last field is the JSON value.
    Trait(TraitValue),
}

/// Consent and trait records with the profile of their event (the label of its primary
/// identifier): `(profile, (slot, rank))`. `records` holds `(primary, (slot, rank))`, keyed
/// by the event's primary identifier.
pub fn attributed<'s>(
    records: Coll<'s, (Node, (Slot, Rank))>,
    labels: ByKey<'s, Node, Label>,
) -> Coll<'s, (Node, (Slot, Rank))> {
    records.join_core(labels, |_primary, record, label| {
        Some((Node(label.root.clone()), record.clone()))
    })
}

/// The consent and trait records an event makes, with their slots and ranks
/// ([`super::consent::precedence`], [`super::traits::record`]).
pub fn records_of(facts: &EventFacts) -> impl Iterator<Item = (Slot, Rank)> + '_ {
    let consent = facts.consent.iter().map(|&(purpose, granted)| {
        let rank = super::consent::precedence(facts.timestamp_ms, granted);
        (Slot::Consent(purpose), Rank::Consent(rank))
    });
    let traits = facts.traits.iter().map(|(key, source, json)| {
        let rank = super::traits::record(facts, *source, json);
        (Slot::Trait(key.clone()), Rank::Trait(rank))
    });
    consent.chain(traits)
}

/// What a slot's greatest record decides: the consent of a purpose, or a trait's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The purpose (by index) is granted or not.
    Consent(u8, bool),
    /// A trait key and its value's JSON text.
    Trait(&'a str, &'a str),
}

impl Decision<'_> {
    /// The decision as a profile fact.
    pub fn fact(&self) -> Fact {
        match *self {
            Decision::Consent(purpose, granted) => Fact::Consent(purpose, granted),
            Decision::Trait(key, json) => Fact::Trait(key.to_string(), json.to_string()),
        }
    }
}

/// SPEC section 5: a profile's consent for a purpose, and each of its traits, is what the
/// greatest record of its slot says (records rank by [`super::consent::precedence`] and
/// [`super::traits::record`]). `None` for a record of the other kind than its slot.
pub fn decide<'a>(slot: &'a Slot, greatest: &'a Rank) -> Option<Decision<'a>> {
    match (slot, greatest) {
        (Slot::Consent(purpose), Rank::Consent((_, denied))) => {
            Some(Decision::Consent(*purpose, !*denied))
        }
        (Slot::Trait(key), Rank::Trait((_, _, _, _, json))) => Some(Decision::Trait(key, json)),
        _ => None,
    }
}
